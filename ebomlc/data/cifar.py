"""A strict reader of CIFAR-10 / CIFAR-100 in their standard python-pickle format, with download.

    data = load_cifar("cifar10", "data")                  # reads data/cifar-10-batches-py/
    data = load_cifar("cifar100", "data", download=True)  # fetches data/cifar-100-python/ if missing
    data.train_x.shape, data.train_y.shape                # (50000, 3, 32, 32) uint8, (50000,) int64

Layout read (the official archives unpacked, https://www.cs.toronto.edu/~kriz/cifar.html):

    cifar-10-batches-py/  data_batch_1 .. data_batch_5 (10000 each), test_batch (10000), batches.meta
    cifar-100-python/     train (50000, labels in `fine_labels`), test (10000), meta

Each data file is a pickled dict whose "data" is an N x 3072 uint8 array (the red plane, then green,
then blue, row-major 32 x 32) with N labels in [0, K). Any deviation (shape, dtype, count, label range,
missing key) raises ValueError naming the file, e.g. "cifar-10-batches-py/data_batch_3: expected 10000
labels, got 9999". The files are pickles: read only copies you trust.

Downloading uses torchvision's utilities with the official URL and archive MD5, which, like the
official per-file MD5s, are read from torchvision's CIFAR10 / CIFAR100 classes at run time. A local
copy whose files differ from the official MD5s (a mirror, a re-encoded copy) is loaded anyway, with a
logging warning; it is never downloaded over.

Expected counts live in FORMATS (one `CifarFormat` per dataset). Tests that write small fake copies
replace the entry with smaller counts: monkeypatch.setitem(FORMATS, "cifar10",
dataclasses.replace(FORMATS["cifar10"], train_count=40, test_count=20)).
"""
from __future__ import annotations

import logging
import os
import pickle
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

logger = logging.getLogger(__name__)

IMAGE_SHAPE = (3, 32, 32)


@dataclass(frozen=True)
class CifarFormat:
    folder: str                       # folder under the data root
    train_files: tuple[str, ...]      # the training images, in the official order, split evenly over these
    test_files: tuple[str, ...]
    meta_file: str
    label_key: str                    # labels entry of each data file
    names_key: str                    # class-names entry of the meta file
    num_classes: int
    train_count: int                  # training images over all train_files
    test_count: int
    mean: tuple[float, float, float]  # per-channel mean / std of the training images, pixels in [0, 1]
    std: tuple[float, float, float]
    torchvision_class: str            # torchvision.datasets class holding the official URL and MD5s

    def files(self) -> tuple[str, ...]:
        return (*self.train_files, *self.test_files, self.meta_file)


FORMATS = {
    "cifar10": CifarFormat(
        folder="cifar-10-batches-py",
        train_files=tuple(f"data_batch_{b}" for b in range(1, 6)), test_files=("test_batch",),
        meta_file="batches.meta", label_key="labels", names_key="label_names", num_classes=10,
        train_count=50000, test_count=10000,
        mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616), torchvision_class="CIFAR10"),
    "cifar100": CifarFormat(
        folder="cifar-100-python", train_files=("train",), test_files=("test",),
        meta_file="meta", label_key="fine_labels", names_key="fine_label_names", num_classes=100,
        train_count=50000, test_count=10000,
        mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762), torchvision_class="CIFAR100"),
}


class ImageDataset(NamedTuple):
    train_x: Tensor         # (N, 3, H, W) uint8, the training images in the dataset's order
    train_y: Tensor         # (N,) int64 labels in [0, K)
    test_x: Tensor          # (T, 3, H, W) uint8
    test_y: Tensor          # (T,) int64
    class_names: list[str]  # K names; class_names[k] names label k


def missing_files(name: str, root: str) -> list[str]:
    """Paths of the files of dataset `name` that are not under `root` (empty when all are there)."""
    fmt = FORMATS[name]
    paths = [os.path.join(root, fmt.folder, file) for file in fmt.files()]
    return [path for path in paths if not os.path.isfile(path)]


def load_cifar(name: str, root: str, *, download: bool = False) -> ImageDataset:
    """Read CIFAR `name` ("cifar10" | "cifar100") from `root`, downloading it first if asked and missing.

    Raises FileNotFoundError (with the fix) when files are missing and download is False, and
    ValueError naming the file when a file does not have the standard format and counts.
    """
    fmt = FORMATS[name]
    missing = missing_files(name, root)
    if missing and download:
        _download(name, root)
        missing = missing_files(name, root)
    if missing:
        raise FileNotFoundError(f"{name}: {missing[0]} not found ({len(missing)} file(s) missing); pass "
                                f"--download or set --data-root/EBOMLC_DATA to the folder holding {fmt.folder}/")
    _warn_if_not_official(name, root)

    per_file = fmt.train_count // len(fmt.train_files)
    train = [_read_data_file(fmt, root, file, per_file) for file in fmt.train_files]
    per_file = fmt.test_count // len(fmt.test_files)
    test = [_read_data_file(fmt, root, file, per_file) for file in fmt.test_files]

    def images(parts):  # N x 3072 rows -> (N, 3, 32, 32): the row layout is channel, row, column
        return torch.from_numpy(np.concatenate([x for x, _ in parts]).reshape(-1, *IMAGE_SHAPE))

    def labels(parts):
        return torch.from_numpy(np.concatenate([y for _, y in parts]))

    return ImageDataset(images(train), labels(train), images(test), labels(test), _read_class_names(fmt, root))


def official_md5s(name: str) -> dict[str, str]:
    """File name -> official MD5 of dataset `name`, read from torchvision's dataset class."""
    tv_class = _torchvision_class(name)
    return {**dict(tv_class.train_list + tv_class.test_list), tv_class.meta["filename"]: tv_class.meta["md5"]}


# ---------------------------------------------------------------- reading

def _read_pickle(fmt: CifarFormat, root: str, file: str):
    # The official files are Python 2 pickles; latin1 decodes their str keys (and is harmless for ours).
    with open(os.path.join(root, fmt.folder, file), "rb") as f:
        entry = pickle.load(f, encoding="latin1")
    if not isinstance(entry, dict):
        raise ValueError(f"{fmt.folder}/{file}: expected a pickled dict, got {type(entry).__name__}")
    return entry


def _read_data_file(fmt: CifarFormat, root: str, file: str, count: int) -> tuple[np.ndarray, np.ndarray]:
    """(data (count, 3072) uint8, labels (count,) int64) of one data file, checked strictly."""
    where = f"{fmt.folder}/{file}"
    entry = _read_pickle(fmt, root, file)
    for key in ("data", fmt.label_key):
        if key not in entry:
            raise ValueError(f"{where}: no {key!r} entry (it has: {', '.join(map(str, entry))})")
    data, labels = entry["data"], np.asarray(entry[fmt.label_key])
    row = int(np.prod(IMAGE_SHAPE))
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.shape != (count, row):
        got = f"shape {data.shape} dtype {data.dtype}" if isinstance(data, np.ndarray) else type(data).__name__
        raise ValueError(f"{where}: expected {count} x {row} uint8 data, got {got}")
    if labels.ndim != 1 or labels.shape[0] != count:
        got = labels.shape[0] if labels.ndim == 1 else f"shape {labels.shape}"
        raise ValueError(f"{where}: expected {count} labels, got {got}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{where}: labels must be integers, got dtype {labels.dtype}")
    if labels.min() < 0 or labels.max() >= fmt.num_classes:
        raise ValueError(f"{where}: labels must be in [0, {fmt.num_classes}), "
                         f"got values in [{labels.min()}, {labels.max()}]")
    return data, labels.astype(np.int64)


def _read_class_names(fmt: CifarFormat, root: str) -> list[str]:
    where = f"{fmt.folder}/{fmt.meta_file}"
    entry = _read_pickle(fmt, root, fmt.meta_file)
    names = entry.get(fmt.names_key)
    if not isinstance(names, list) or len(names) != fmt.num_classes or not all(isinstance(n, str) for n in names):
        raise ValueError(f"{where}: expected {fmt.names_key!r} to be a list of {fmt.num_classes} class names, "
                         f"got {names!r:.200}")
    return names


# ---------------------------------------------------------------- download and integrity

def _torchvision_class(name: str):
    # Imported here, not at the top: importing torchvision takes over a second, which the synthetic
    # dataset and `import ebomlc` should not pay.
    import torchvision.datasets

    return getattr(torchvision.datasets, FORMATS[name].torchvision_class)


def _download(name: str, root: str) -> None:
    from torchvision.datasets.utils import download_and_extract_archive

    tv_class = _torchvision_class(name)
    download_and_extract_archive(tv_class.url, root, filename=tv_class.filename, md5=tv_class.tgz_md5)


def _warn_if_not_official(name: str, root: str) -> None:
    """Log a warning naming the files whose MD5 is not the official one; the copy is still used."""
    from torchvision.datasets.utils import check_integrity

    fmt, expected = FORMATS[name], official_md5s(name)
    differing = [file for file in fmt.files()
                 if not check_integrity(os.path.join(root, fmt.folder, file), expected[file])]
    if differing:
        logger.warning("%s: %s differ from the official MD5 checksums (a mirror or re-encoded copy?); "
                       "loading them anyway", os.path.join(root, fmt.folder), ", ".join(differing))
