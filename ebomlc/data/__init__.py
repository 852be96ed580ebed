"""The data of one trial: dataset -> class-balanced disjoint split (D, its validation part, D') -> noise on D'.

    check_data(config)                 # during validation: ConfigError if files are missing; loads nothing
    data = build_trial_data(config)    # TrialData, all on the CPU; same config and seed, same tensors

`config` is an `ebomlc.config.TrialConfig`. Randomness comes from numpy Generators seeded with
[config.seed, stream], one stream per stage (SUBSET_STREAM, SPLIT_STREAM, NOISE_STREAM), so that
changing, say, the noise kind leaves the split unchanged. The synthetic dataset itself is drawn from
default_rng(config.seed) (which is also why no stream is 0: default_rng([s, 0]) equals default_rng(s)).

Sets (the paper, Sec. VI-A1): D is `clean_fraction` of the training images, the same share of every
class; `validation_fraction` of D is held out as its validation part (the trainer selects epochs on it,
never on test); D' is the rest and gets noisy labels. No training image is in two sets.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ebomlc.config import ConfigError
from ebomlc.data import cifar, cifar_n
from ebomlc.data.noise import corrupt_labels, empirical_transition, realised_noise_rate, transition_matrix
from ebomlc.data.split import class_balanced_subset, clean_sizes, split_clean_noisy
from ebomlc.data.synthetic import make_synthetic

SUBSET_STREAM, SPLIT_STREAM, NOISE_STREAM = 1, 2, 3

__all__ = ["TrialData", "build_trial_data", "check_data"]


@dataclass
class TrialData:
    """Everything a trial trains and evaluates on, on the CPU (the trainer moves it to the device).

    The training images are one tensor, D' then D then D's validation part, and `noisy_x`, `clean_x`,
    `val_x` are slices of it: D' and D together (what plain training samples from) are a slice too, so a
    trial holds each training image once.
    """

    train_x: Tensor                     # (N + M + V, C, H, W) uint8: D', then D, then its validation part
    clean_y: Tensor                     # (M,) int64 true labels
    val_y: Tensor                       # (V,) int64
    noisy_y: Tensor                     # (N,) int64 noisy labels
    noisy_true_y: Tensor                # (N,) int64 true labels of D' (diagnostics only, never to a method)
    test_x: Tensor                      # (T, C, H, W) uint8
    test_y: Tensor                      # (T,) int64
    num_classes: int                    # K
    class_names: list[str]              # K names
    mean: tuple[float, float, float]    # per-channel mean of the training images, pixels in [0, 1]
    std: tuple[float, float, float]     # per-channel standard deviation, same units
    transition: np.ndarray              # (K, K) P(noisy = j | true = i): nominal, or empirical on D' for human noise
    realised_noise_rate: float          # fraction of D' whose noisy label != true label

    @property
    def noisy_x(self) -> Tensor:
        """(N, C, H, W) uint8: the noisy set D'."""
        return self.train_x[:len(self.noisy_y)]

    @property
    def clean_x(self) -> Tensor:
        """(M, C, H, W) uint8: the training part of the clean set D."""
        n = len(self.noisy_y)
        return self.train_x[n:n + len(self.clean_y)]

    @property
    def val_x(self) -> Tensor:
        """(V, C, H, W) uint8: the validation part of D (V = 0 without one)."""
        return self.train_x[len(self.noisy_y) + len(self.clean_y):]


def check_data(config) -> None:
    """Cheap checks that the data a validated config names can be built; loads nothing.

    Raises ConfigError (one line: what, where, the fix) when CIFAR files are missing and download is
    off, the CIFAR-N file is missing, the human label set is unknown, noise_matrix or train_subset do
    not fit the dataset, or the split would leave a class without clean (or validation) samples.
    """
    root = config.resolved_data_root()
    if config.dataset != "synthetic":
        missing = cifar.missing_files(config.dataset, root)
        if missing and not config.download:
            raise ConfigError(f"dataset {config.dataset}: {missing[0]} not found; pass --download or set "
                              f"--data-root/EBOMLC_DATA to the folder holding {cifar.FORMATS[config.dataset].folder}/")
    if config.noise == "human":
        try:
            cifar_n.check_label_set(config.dataset, config.human_label_set)
        except ValueError as error:
            raise ConfigError(str(error)) from None
        path = cifar_n.human_label_path(config.dataset, root, config.human_label_file)
        if not os.path.isfile(path):
            raise ConfigError(f"noise=human: {path} not found; download {cifar_n.DEFAULT_FILES[config.dataset]} "
                              "from https://github.com/UCSC-REAL/cifar-10-100n (folder data/) into the data root, "
                              "or set human_label_file")

    num_classes, train_size = _dataset_size(config)
    if config.noise == "matrix" and np.shape(config.noise_matrix) != (num_classes, num_classes):
        raise ConfigError(f"noise_matrix must be {num_classes} x {num_classes} for dataset {config.dataset}, "
                          f"got shape {np.shape(config.noise_matrix)}")
    if config.train_subset is not None:
        if not num_classes <= config.train_subset <= train_size:
            raise ConfigError(f"train_subset must be between the number of classes ({num_classes}) and the "
                              f"{config.dataset} training set size ({train_size}), got {config.train_subset}")
        train_size = config.train_subset
    try:  # the smallest class of a class-balanced training set has train_size // K images
        clean_sizes(train_size // num_classes, config.clean_fraction, config.validation_fraction,
                    which=f"the smallest class of {config.dataset}")
    except ValueError as error:
        raise ConfigError(str(error)) from None


def build_trial_data(config) -> TrialData:
    """Load the dataset, take the train_subset, split into D / validation / D', put noise on D'.

    config: a validated TrialConfig (see `check_data` for what validation does not cover).
    """
    # dataset: training images in the official order (CIFAR-N labels index this order)
    if config.dataset == "synthetic":
        data = make_synthetic(config.synthetic_train, config.synthetic_test, config.synthetic_classes,
                              config.synthetic_image_size, config.seed)
        mean, std = _channel_stats(data.train_x)
    else:
        data = cifar.load_cifar(config.dataset, config.resolved_data_root(), download=config.download)
        mean, std = cifar.FORMATS[config.dataset].mean, cifar.FORMATS[config.dataset].std
    train_y = data.train_y.numpy()
    num_classes = len(data.class_names)

    # subset and split; `keep`, `clean`, `val` and `noisy` are positions in the full training set
    keep = np.arange(len(train_y))
    if config.train_subset is not None:
        keep = class_balanced_subset(train_y, config.train_subset, num_classes, _rng(config.seed, SUBSET_STREAM))
    clean, val, noisy = (keep[part] for part in split_clean_noisy(
        train_y[keep], config.clean_fraction, num_classes, _rng(config.seed, SPLIT_STREAM),
        config.validation_fraction))

    # noise on D' only
    true_y = train_y[noisy]
    if config.noise == "human":
        path = cifar_n.human_label_path(config.dataset, config.resolved_data_root(), config.human_label_file)
        noisy_y = cifar_n.load_human_labels(path, config.dataset, config.human_label_set, train_y)[noisy]
        transition = empirical_transition(true_y, noisy_y, num_classes)
    else:
        rng = _rng(config.seed, NOISE_STREAM)
        transition = transition_matrix(config.noise, config.noise_rate, num_classes, rng, matrix=config.noise_matrix)
        noisy_y = corrupt_labels(true_y, transition, rng)

    return TrialData(
        train_x=data.train_x[torch.from_numpy(np.concatenate([noisy, clean, val]))],   # one gather, one copy
        clean_y=torch.from_numpy(train_y[clean]), val_y=torch.from_numpy(train_y[val]),
        noisy_y=torch.from_numpy(noisy_y), noisy_true_y=torch.from_numpy(true_y),
        test_x=data.test_x, test_y=data.test_y, num_classes=num_classes, class_names=data.class_names,
        mean=mean, std=std, transition=transition, realised_noise_rate=realised_noise_rate(true_y, noisy_y))


def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, stream])


def _dataset_size(config) -> tuple[int, int]:
    """(number of classes, number of training images) of the configured dataset, without loading it."""
    if config.dataset == "synthetic":
        return config.synthetic_classes, config.synthetic_train
    fmt = cifar.FORMATS[config.dataset]
    return fmt.num_classes, fmt.train_count


def _channel_stats(images: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of (N, C, H, W) uint8 images, in [0, 1] pixel units."""
    pixels = images.to(torch.float64).div(255).transpose(0, 1).flatten(1)   # (C, N*H*W)
    return tuple(pixels.mean(1).tolist()), tuple(pixels.std(1, correction=0).tolist())
