"""CIFAR-10N / CIFAR-100N: human-annotated noisy labels of the CIFAR training images (Wei et al., ICLR 2022).

    path = human_label_path("cifar10", "data", None)               # data/CIFAR-10_human.pt
    noisy = load_human_labels(path, "cifar10", "worse", train_y)   # (50000,) int64, official order

The published files (CIFAR-10_human.pt, CIFAR-100_human.pt from https://github.com/UCSC-REAL/cifar-10-100n,
folder data/) are `torch.save`d dicts of numpy arrays, one label per training image in the official
training order, with the clean labels under "clean_label". Label-set names map to keys as in
HUMAN_LABEL_SETS. They are not downloaded for you: there is no official checksum to check a download
against (the clean_label check below guards against a wrong or misaligned file instead).

Loading is safe: torch.load(weights_only=True), allowing only the globals that rebuild integer numpy
arrays (under their numpy 1 and numpy 2 names), so a tampered file cannot run code. (torch >= 2.6
defaults to weights_only=True and refuses these files without the allowlist; weights_only=False would
load them by running arbitrary pickle code.)
"""
from __future__ import annotations

import os

import numpy as np
import torch

from ebomlc.data.cifar import FORMATS

HUMAN_LABEL_SETS = {  # dataset -> {label-set name: key in the .pt dict}
    "cifar10": {"aggre": "aggre_label", "worse": "worse_label", "random1": "random_label1",
                "random2": "random_label2", "random3": "random_label3"},
    "cifar100": {"noisy": "noisy_label"},
}
DEFAULT_FILES = {"cifar10": "CIFAR-10_human.pt", "cifar100": "CIFAR-100_human.pt"}

# What a pickled integer numpy array refers to: the array and dtype classes (one dtype class per
# integer type), and the function that rebuilds an array. numpy 2 moved that function from
# numpy.core.multiarray to numpy._core.multiarray, and a file names the module of the numpy that wrote
# it (numpy 1 for files as old as the published ones), so it is allowed under both names.
_RECONSTRUCT = np.empty(0).__reduce__()[0]
_NUMPY_GLOBALS = [
    np.ndarray,
    np.dtype,
    *(type(np.dtype(t)) for t in (np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64)),
    (_RECONSTRUCT, "numpy.core.multiarray._reconstruct"),
    (_RECONSTRUCT, "numpy._core.multiarray._reconstruct"),
]


def human_label_path(dataset: str, data_root: str, human_label_file: str | None) -> str:
    """The CIFAR-N file: `human_label_file` if given, else <data_root>/CIFAR-10_human.pt (or -100)."""
    return human_label_file or os.path.join(data_root, DEFAULT_FILES[dataset])


def check_label_set(dataset: str, label_set: str) -> str:
    """The .pt key of `label_set`; ValueError listing the valid names when it is not one of `dataset`'s."""
    names = HUMAN_LABEL_SETS[dataset]
    if label_set not in names:
        raise ValueError(f"human_label_set for {dataset} must be one of {', '.join(names)}; got {label_set!r}")
    return names[label_set]


def load_human_labels(path: str, dataset: str, label_set: str, train_labels: np.ndarray) -> np.ndarray:
    """The (N,) int64 human labels of `label_set`, aligned with the official training order.

    train_labels: (N,) the dataset's training labels in official order; the file's "clean_label"
    must equal them (ValueError with the number of mismatches and the first index otherwise), which
    shows the file belongs to this dataset and that both are in the same order.
    """
    key = check_label_set(dataset, label_set)
    with torch.serialization.safe_globals(_NUMPY_GLOBALS):
        content = torch.load(path, weights_only=True)
    if not isinstance(content, dict):
        raise ValueError(f"{path}: expected a dict of label arrays, got {type(content).__name__}")
    train_labels = np.asarray(train_labels)
    arrays = {}
    for name in ("clean_label", key):
        if name not in content:
            raise ValueError(f"{path}: no {name!r} entry (it has: {', '.join(map(str, content))})")
        arrays[name] = np.asarray(content[name])
        if arrays[name].shape != train_labels.shape:
            raise ValueError(f"{path}: {name!r} has shape {arrays[name].shape}, expected {train_labels.shape} "
                             f"(one label per {dataset} training image)")
    mismatch = np.flatnonzero(arrays["clean_label"] != train_labels)
    if len(mismatch):
        raise ValueError(f"{path}: 'clean_label' differs from the {dataset} training labels at {len(mismatch)} "
                         f"of {len(train_labels)} images (first at index {mismatch[0]}); the file does not "
                         "match this copy of the dataset or its order")
    noisy = arrays[key].astype(np.int64)
    num_classes = FORMATS[dataset].num_classes
    if noisy.min() < 0 or noisy.max() >= num_classes:
        raise ValueError(f"{path}: {key!r} must be in [0, {num_classes}), got values in [{noisy.min()}, {noisy.max()}]")
    return noisy
