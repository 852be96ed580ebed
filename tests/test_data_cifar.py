"""CIFAR reader, download and MD5 paths, CIFAR-N human labels, and a human-noise trial, on small fake copies.

The fakes are written in the official layout and pickle format with small counts (5 x 8 training and
20 test images for CIFAR-10), and the `small_counts` fixture lowers the expected counts to match.
"""
import dataclasses
import hashlib
import logging
import pickle

import numpy as np
import pytest
import torch

from ebomlc.config import ConfigError, TrialConfig
from ebomlc.data import build_trial_data, check_data, cifar
from ebomlc.data.cifar import load_cifar
from ebomlc.data.cifar_n import load_human_labels
from ebomlc.data.noise import empirical_transition, realised_noise_rate

NAMES_10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
FILES_10 = [f"data_batch_{b}" for b in range(1, 6)] + ["test_batch", "batches.meta"]


@pytest.fixture
def small_counts(monkeypatch):
    monkeypatch.setitem(cifar.FORMATS, "cifar10",
                        dataclasses.replace(cifar.FORMATS["cifar10"], train_count=40, test_count=20))
    monkeypatch.setitem(cifar.FORMATS, "cifar100",
                        dataclasses.replace(cifar.FORMATS["cifar100"], train_count=200, test_count=100))


def dump(path, content):
    with open(path, "wb") as f:
        pickle.dump(content, f, protocol=2)   # the official files are Python 2 pickles


def rewrite(path, **changes):
    with open(path, "rb") as f:
        content = pickle.load(f)
    dump(path, {**content, **changes})


def write_cifar10(root, seed=0):
    """A fake cifar-10-batches-py/ under root; returns (training rows (40, 3072), training labels (40,))."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rows = rng.integers(0, 256, (40, 3072), dtype=np.uint8)
    labels = rng.permutation(np.arange(40) % 10)
    for b in range(5):
        part = slice(8 * b, 8 * (b + 1))
        dump(folder / f"data_batch_{b + 1}", {"batch_label": f"training batch {b + 1} of 5", "data": rows[part],
                                              "labels": labels[part].tolist()})
    dump(folder / "test_batch", {"data": rng.integers(0, 256, (20, 3072), dtype=np.uint8),
                                 "labels": (np.arange(20) % 10).tolist()})
    dump(folder / "batches.meta", {"label_names": NAMES_10, "num_cases_per_batch": 8, "num_vis": 3072})
    return rows, labels


def write_cifar100(root):
    rng = np.random.default_rng(0)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for name, count in (("train", 200), ("test", 100)):
        dump(folder / name, {"data": rng.integers(0, 256, (count, 3072), dtype=np.uint8),
                             "fine_labels": (np.arange(count) % 100).tolist(),
                             "coarse_labels": (np.arange(count) % 20).tolist()})
    dump(folder / "meta", {"fine_label_names": [f"fine{k}" for k in range(100)],
                           "coarse_label_names": [f"coarse{k}" for k in range(20)]})


# ---------------------------------------------------------------- reader

def test_reads_cifar10_in_official_order_and_layout(tmp_path, small_counts):
    rows, labels = write_cifar10(tmp_path)
    data = load_cifar("cifar10", str(tmp_path))
    assert data.train_x.shape == (40, 3, 32, 32) and data.train_x.dtype == torch.uint8
    assert data.test_x.shape == (20, 3, 32, 32)
    assert data.train_y.dtype == torch.int64 and data.test_y.dtype == torch.int64
    np.testing.assert_array_equal(data.train_y, labels)
    # a row is the red plane, then green, then blue, each 32 x 32 row-major
    np.testing.assert_array_equal(data.train_x[9, 1], rows[9, 1024:2048].reshape(32, 32))
    np.testing.assert_array_equal(data.train_x[9, 2, 0], rows[9, 2048:2080])
    assert data.class_names == NAMES_10


def test_reads_cifar100_fine_labels(tmp_path, small_counts):
    write_cifar100(tmp_path)
    data = load_cifar("cifar100", str(tmp_path))
    assert data.train_x.shape == (200, 3, 32, 32) and data.test_x.shape == (100, 3, 32, 32)
    np.testing.assert_array_equal(data.train_y, np.arange(200) % 100)
    assert data.class_names[:2] == ["fine0", "fine1"] and len(data.class_names) == 100


@pytest.mark.parametrize("file, changes, message", [
    ("data_batch_3", {"labels": [0] * 7}, "cifar-10-batches-py/data_batch_3: expected 8 labels, got 7"),
    ("data_batch_1", {"data": np.zeros((8, 3072), np.float32)},
     "cifar-10-batches-py/data_batch_1: expected 8 x 3072 uint8 data, got shape \\(8, 3072\\) dtype float32"),
    ("test_batch", {"data": np.zeros((20, 1024), np.uint8)}, "test_batch: expected 20 x 3072 uint8 data"),
    ("data_batch_5", {"labels": [10] * 8}, "data_batch_5: labels must be in \\[0, 10\\), got values in \\[10, 10\\]"),
    ("data_batch_2", {"labels": [0.5] * 8}, "data_batch_2: labels must be integers"),
    ("batches.meta", {"label_names": NAMES_10[:9]}, "batches.meta: expected 'label_names' to be a list of 10"),
])
def test_bad_files_are_named(tmp_path, small_counts, file, changes, message):
    write_cifar10(tmp_path)
    rewrite(tmp_path / "cifar-10-batches-py" / file, **changes)
    with pytest.raises(ValueError, match=message):
        load_cifar("cifar10", str(tmp_path))


def test_missing_entry_is_named(tmp_path, small_counts):
    write_cifar10(tmp_path)
    dump(tmp_path / "cifar-10-batches-py" / "data_batch_4", {"data": np.zeros((8, 3072), np.uint8)})
    with pytest.raises(ValueError, match="data_batch_4: no 'labels' entry \\(it has: data\\)"):
        load_cifar("cifar10", str(tmp_path))


def test_missing_files_say_how_to_fix(tmp_path, small_counts):
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "test_batch").unlink()
    with pytest.raises(FileNotFoundError, match="test_batch not found .*pass --download or set --data-root"):
        load_cifar("cifar10", str(tmp_path))


# ---------------------------------------------------------------- official checksums and download

def test_official_md5s_come_from_torchvision():
    import torchvision.datasets

    md5s = cifar.official_md5s("cifar10")
    assert sorted(md5s) == sorted(FILES_10)
    assert md5s["data_batch_1"] == dict(torchvision.datasets.CIFAR10.train_list)["data_batch_1"]
    assert sorted(cifar.official_md5s("cifar100")) == ["meta", "test", "train"]


def test_copy_with_other_md5s_is_loaded_with_a_warning(tmp_path, small_counts, caplog):
    write_cifar10(tmp_path)
    with caplog.at_level(logging.WARNING, logger="ebomlc.data.cifar"):
        data = load_cifar("cifar10", str(tmp_path))
    assert len(data.train_y) == 40
    assert "data_batch_1, data_batch_2" in caplog.text and "differ from the official MD5" in caplog.text


def test_copy_with_official_md5s_loads_silently(tmp_path, small_counts, caplog, monkeypatch):
    write_cifar10(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    md5s = {file: hashlib.md5((folder / file).read_bytes()).hexdigest() for file in FILES_10}
    monkeypatch.setattr(cifar, "official_md5s", lambda name: md5s)
    with caplog.at_level(logging.WARNING, logger="ebomlc.data.cifar"):
        load_cifar("cifar10", str(tmp_path))
    assert caplog.text == ""


def test_download_uses_the_official_archive_once(tmp_path, small_counts, monkeypatch):
    import torchvision.datasets
    import torchvision.datasets.utils

    calls = []

    def fake_download(url, download_root, filename, md5):
        calls.append((url, filename, md5))
        write_cifar10(tmp_path)

    monkeypatch.setattr(torchvision.datasets.utils, "download_and_extract_archive", fake_download)
    load_cifar("cifar10", str(tmp_path), download=True)
    official = torchvision.datasets.CIFAR10
    assert calls == [(official.url, official.filename, official.tgz_md5)]
    load_cifar("cifar10", str(tmp_path), download=True)   # a local copy (even with other MD5s) is kept
    assert len(calls) == 1


# ---------------------------------------------------------------- CIFAR-N human labels

def write_human(path, clean, worse, *, numpy1_names=False):
    """A fake CIFAR-10_human.pt. With numpy1_names, in torch's legacy (plain pickle) format, where the
    arrays' rebuild function can be renamed to numpy.core.multiarray, as numpy 1 wrote it."""
    content = {"clean_label": clean, "worse_label": worse, "aggre_label": clean.copy(),
               "random_label1": worse.copy(), "random_label2": clean.copy(), "random_label3": worse.copy()}
    if numpy1_names:
        torch.save(content, path, _use_new_zipfile_serialization=False)
        path.write_bytes(path.read_bytes().replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    else:
        torch.save(content, path)


def worse_labels(labels):
    worse = labels.copy()
    worse[::3] = (labels[::3] + 1) % 10
    return worse


@pytest.mark.parametrize("numpy1_names", [False, True])
def test_human_labels_load_safely(tmp_path, numpy1_names):
    labels = np.arange(40) % 10
    write_human(tmp_path / "h.pt", labels, worse_labels(labels), numpy1_names=numpy1_names)
    if numpy1_names:
        assert b"numpy.core.multiarray" in (tmp_path / "h.pt").read_bytes()
    noisy = load_human_labels(str(tmp_path / "h.pt"), "cifar10", "worse", labels)
    assert noisy.dtype == np.int64
    np.testing.assert_array_equal(noisy, worse_labels(labels))


def test_human_clean_labels_must_match_the_dataset(tmp_path):
    labels = np.arange(40) % 10
    clean = labels.copy()
    clean[[3, 7]] = (clean[[3, 7]] + 1) % 10
    write_human(tmp_path / "h.pt", clean, labels)
    with pytest.raises(ValueError, match="differs from the cifar10 training labels at 2 of 40 images "
                                         "\\(first at index 3\\)"):
        load_human_labels(str(tmp_path / "h.pt"), "cifar10", "worse", labels)


def test_human_labels_of_the_wrong_length(tmp_path):
    labels = np.arange(40) % 10
    write_human(tmp_path / "h.pt", labels[:30], labels[:30])
    with pytest.raises(ValueError, match="'clean_label' has shape \\(30,\\), expected \\(40,\\)"):
        load_human_labels(str(tmp_path / "h.pt"), "cifar10", "worse", labels)


def human_config(root, **changes):
    values = dict(dataset="cifar10", data_root=str(root), noise="human", human_label_set="worse",
                  clean_fraction=0.25, seed=0)
    return TrialConfig(**{**values, **changes})


@pytest.mark.parametrize("changes", [{}, {"train_subset": 20, "clean_fraction": 0.5, "validation_fraction": 0.0},
                                     {"validation_fraction": 0.5, "clean_fraction": 0.5}])
def test_human_noise_trial_indexes_the_label_file_consistently(tmp_path, small_counts, changes):
    rows, labels = write_cifar10(tmp_path)
    worse = worse_labels(labels)
    write_human(tmp_path / "CIFAR-10_human.pt", labels, worse)
    config = human_config(tmp_path, **changes)
    check_data(config)
    data = build_trial_data(config)

    # find each image of D' in the training set by its pixels (the fake's images are all different)
    position = {row.tobytes(): n for n, row in enumerate(rows)}
    noisy_positions = [position[image.numpy().tobytes()] for image in data.noisy_x]
    np.testing.assert_array_equal(data.noisy_y, worse[noisy_positions])
    np.testing.assert_array_equal(data.noisy_true_y, labels[noisy_positions])
    np.testing.assert_array_equal(data.transition, empirical_transition(data.noisy_true_y, data.noisy_y, 10))
    assert data.realised_noise_rate == realised_noise_rate(data.noisy_true_y.numpy(), data.noisy_y.numpy()) > 0
    assert (data.mean, data.std) == (cifar.FORMATS["cifar10"].mean, cifar.FORMATS["cifar10"].std)
    # D keeps its true labels
    clean_positions = [position[image.numpy().tobytes()] for image in data.clean_x]
    np.testing.assert_array_equal(data.clean_y, labels[clean_positions])
    total = len(data.clean_y) + len(data.val_y) + len(data.noisy_y)
    assert total == changes.get("train_subset", 40)


# ---------------------------------------------------------------- check_data (no loading)

def test_check_data_missing_cifar(tmp_path):
    with pytest.raises(ConfigError, match="dataset cifar10: .*data_batch_1 not found; pass --download or set "
                                          "--data-root/EBOMLC_DATA to the folder holding cifar-10-batches-py/"):
        check_data(TrialConfig(dataset="cifar10", data_root=str(tmp_path)))
    check_data(TrialConfig(dataset="cifar100", data_root=str(tmp_path), download=True))


def test_check_data_human_label_set_and_file(tmp_path, small_counts):
    write_cifar10(tmp_path)
    with pytest.raises(ConfigError, match="human_label_set for cifar10 must be one of aggre, worse, random1, "
                                          "random2, random3; got 'noisy'"):
        check_data(human_config(tmp_path, human_label_set="noisy"))
    with pytest.raises(ConfigError, match="noise=human: .*CIFAR-10_human.pt not found; download CIFAR-10_human.pt "
                                          "from https://github.com/UCSC-REAL/cifar-10-100n"):
        check_data(human_config(tmp_path))
    labels = np.arange(40) % 10
    write_human(tmp_path / "elsewhere.pt", labels, labels)
    check_data(human_config(tmp_path, human_label_file=str(tmp_path / "elsewhere.pt")))


def test_check_data_cifar100_label_set(tmp_path):
    with pytest.raises(ConfigError, match="must be one of noisy; got 'worse'"):
        check_data(TrialConfig(dataset="cifar100", data_root=str(tmp_path), download=True, noise="human"))
