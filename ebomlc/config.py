"""TrialConfig: everything that defines one trial, validated in one place.

A trial is one method trained once on one dataset/noise setting with one seed. The same dataclass is
built from the CLI (`python -m ebomlc train ...`), from a Ray Tune config dict, or from a preset row, and
`asdict(config)` travels with every checkpoint and every result row.

    config = TrialConfig.from_dict({"method": "ebomlc", "dataset": "synthetic", "epochs": 3})
    config = config.validated()      # ConfigError (one line: field, value, allowed values) if bad

Method hyper-parameters (rho, xi, delta, k, mixture, and the baselines' own `options`) default to
None, meaning "the method's own default" (see each method's `hyperparameters`); `validated()` fills
them in, and rejects a hyper-parameter that the chosen method does not use, so a sweep can never run
erm "once per rho".
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

DATASETS = ("synthetic", "cifar10", "cifar100")
NOISE_TYPES = ("uniform", "uniform_any", "flip", "pairflip", "human", "matrix")
MODELS = ("resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110")
DEVICES = ("auto", "cpu", "cuda")
MIXTURES = ("probs", "logits")


class ConfigError(ValueError):
    """A bad trial configuration. The message is one line: the field, the value and the rule."""


@dataclass
class TrialConfig:
    # what to train
    method: str = "erm"                  # a name from ebomlc.methods.METHODS
    model: str = "resnet32"              # CIFAR ResNet-(6n+2)
    width: int = 16                      # channels of the first stage (16/32/64 for ResNet-32)
    # data
    dataset: str = "synthetic"           # synthetic | cifar10 | cifar100
    data_root: str | None = None         # folder holding cifar-10-batches-py/ etc.; default $EBOMLC_DATA or ./data
    download: bool = False               # fetch CIFAR with torchvision's downloader (official MD5) if missing
    train_subset: int | None = None      # class-balanced subset of the training images (None: all of them)
    synthetic_train: int = 2000          # synthetic dataset: training images
    synthetic_test: int = 1000           # synthetic dataset: test images
    synthetic_classes: int = 10          # synthetic dataset: number of classes
    synthetic_image_size: int = 16       # synthetic dataset: images are 3 x S x S
    clean_fraction: float = 0.02         # |D| / |training set|; class-balanced, disjoint from D'
    validation_fraction: float = 0.0     # part of D held out for validation only (hyper-parameter search)
    # noise on D' (labels only; the true labels are kept for diagnostics)
    noise: str = "uniform"               # uniform | uniform_any | flip | pairflip | human | matrix
    noise_rate: float = 0.4              # nominal corruption rate r in [0, 1)
    noise_matrix: list | None = None     # noise="matrix": K x K row-stochastic P(noisy = j | true = i)
    human_label_set: str = "worse"       # noise="human": which CIFAR-N label set (aggre, worse, random1, ...)
    human_label_file: str | None = None  # noise="human": path of CIFAR-10_human.pt / CIFAR-100_human.pt
    # optimisation (paper, Sec. VI-A)
    epochs: int = 120
    batch_size: int = 100                # noisy (D') batch
    clean_batch_size: int = 100          # clean (D) batch; equal to batch_size as in the paper's cost model
    lr: float = 0.1                      # main model SGD learning rate
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_milestones: tuple = (2 / 3, 5 / 6)  # fractions of the epochs where lr is multiplied by lr_gamma (80/100 of 120)
    lr_gamma: float = 0.1
    meta_lr: float = 3e-4                # Adam learning rate of the meta model g_alpha
    # method hyper-parameters: None = the method's default; a method rejects the ones it does not use
    rho: float | None = None             # EBOMLC mixture weight of the main model in Eq. (9), in (0, 1)
    xi: float | None = None              # EBOMLC scale of the barrier coefficient, Eq. (12), in (0, 1]
    delta: float | None = None           # dynamic-barrier constant of Eqs. (5)/(10), > 0
    k: int | None = None                 # look-ahead (inner) steps, >= 1
    mixture: str | None = None           # EBOMLC Eq. (9) form: "probs" (paper) | "logits" (a public variant)
    options: dict = field(default_factory=dict)  # other method-specific hyper-parameters (see the method)
    # running
    seed: int = 0
    device: str = "auto"                 # auto | cpu | cuda
    eval_batch_size: int = 500           # images per forward in evaluation: memory, not results (not in trial_id)

    # ---------------------------------------------------------------- construction

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrialConfig":
        """Build from a plain dict (Ray config, YAML row, CLI); unknown keys are an error, not ignored."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown config field {unknown[0]!r}; known fields: {', '.join(sorted(known))}")
        values = dict(values)
        if isinstance(values.get("lr_milestones"), list):
            values["lr_milestones"] = tuple(values["lr_milestones"])
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def resolved_data_root(self) -> str:
        return self.data_root or os.environ.get("EBOMLC_DATA") or "data"

    # ---------------------------------------------------------------- validation

    def validated(self) -> "TrialConfig":
        """Check every field and fill the method's default hyper-parameters; returns a new config.

        Raises ConfigError with one line naming the field, the value and what is allowed. Nothing is
        loaded or built here, so a bad config fails before any work starts.
        """
        from ebomlc.methods import METHODS  # the registry; imported here to keep config importable alone

        _choice("method", self.method, tuple(METHODS))
        _choice("dataset", self.dataset, DATASETS)
        _choice("noise", self.noise, NOISE_TYPES)
        _choice("model", self.model, MODELS)
        _choice("device", self.device, DEVICES)
        _number("noise_rate", self.noise_rate, 0.0, 1.0, "must be in [0, 1)", lo_open=False, hi_open=True)
        _number("clean_fraction", self.clean_fraction, 0.0, 1.0, "must be in (0, 1)")
        _number("validation_fraction", self.validation_fraction, 0.0, 1.0, "must be in [0, 1)",
                lo_open=False, hi_open=True)
        for name in ("epochs", "batch_size", "clean_batch_size", "eval_batch_size", "width",
                     "synthetic_train", "synthetic_test"):
            _integer(name, getattr(self, name), 1)
        _integer("synthetic_classes", self.synthetic_classes, 2)
        _integer("synthetic_image_size", self.synthetic_image_size, 8)
        if self.train_subset is not None:
            _integer("train_subset", self.train_subset, 2)
        _integer("seed", self.seed, 0)
        for name in ("lr", "meta_lr"):
            _number(name, getattr(self, name), 0.0, math.inf, "must be > 0")
        _number("momentum", self.momentum, 0.0, 1.0, "must be in [0, 1)", lo_open=False, hi_open=True)
        _number("weight_decay", self.weight_decay, 0.0, math.inf, "must be >= 0", lo_open=False)
        _number("lr_gamma", self.lr_gamma, 0.0, 1.0, "must be in (0, 1]", hi_open=False)
        milestones = tuple(self.lr_milestones)
        if any(not isinstance(m, (int, float)) or not 0 < m < 1 for m in milestones) or list(milestones) != sorted(milestones):
            raise ConfigError(f"lr_milestones must be increasing fractions of the epochs in (0, 1), got {milestones}")
        if self.noise == "matrix":
            _check_matrix(self.noise_matrix)
        elif self.noise_matrix is not None:
            raise ConfigError(f"noise_matrix is only used with noise='matrix', got noise={self.noise!r}")
        if self.noise == "human" and self.dataset == "synthetic":
            raise ConfigError("noise='human' needs dataset cifar10 or cifar100 (CIFAR-N labels), got dataset='synthetic'")
        if not isinstance(self.options, dict):
            raise ConfigError(f"options must be a dict of method hyper-parameters, got {self.options!r}")

        method = METHODS[self.method]
        values = dataclasses.replace(self, lr_milestones=milestones)
        allowed = method.hyperparameters
        for name in ("rho", "xi", "delta", "k", "mixture"):
            value = getattr(values, name)
            if value is not None and name not in allowed:
                raise ConfigError(f"{name} is not a hyper-parameter of method {self.method!r} "
                                  f"(it uses: {', '.join(allowed) or 'none'}); leave it unset")
            if value is None and name in allowed:
                values = dataclasses.replace(values, **{name: allowed[name]})
        options = dict(values.options)
        for name, value in options.items():
            if name not in method.options:
                raise ConfigError(f"option {name!r} is not an option of method {self.method!r} "
                                  f"(its options: {', '.join(method.options) or 'none'})")
        values = dataclasses.replace(values, options={**method.options, **options})

        if values.rho is not None:
            _number("rho", values.rho, 0.0, 1.0, "must be in (0, 1)")
        if values.xi is not None:
            _number("xi", values.xi, 0.0, 1.0, "must be in (0, 1]", hi_open=False)
        if values.delta is not None:
            _number("delta", values.delta, 0.0, math.inf, "must be > 0")
        if values.k is not None:
            _integer("k", values.k, 1)
        if values.mixture is not None:
            _choice("mixture", values.mixture, MIXTURES)
        method.validate_options(values)
        return values

    def trial_id(self) -> str:
        """A stable id derived from everything that changes the result (not device, data_root, download or
        eval_batch_size)."""
        import hashlib

        identity = {k: v for k, v in self.to_dict().items()
                    if k not in ("device", "data_root", "download", "eval_batch_size")}
        text = json.dumps(identity, sort_keys=True, default=list)
        return hashlib.sha1(text.encode()).hexdigest()[:12]


# ---------------------------------------------------------------- checks with one-line messages

def _choice(name: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")


def _number(name, value, lo, hi, rule, *, lo_open=True, hi_open=True) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)
    if ok:
        ok = (value > lo if lo_open else value >= lo) and (value < hi if hi_open else value <= hi)
    if not ok:
        raise ConfigError(f"{name} {rule}, got {value!r}")


def _integer(name: str, value: Any, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _check_matrix(matrix) -> None:
    import numpy as np

    if matrix is None:
        raise ConfigError("noise='matrix' needs noise_matrix: a K x K row-stochastic list of lists")
    try:
        array = np.asarray(matrix, dtype=float)
    except (TypeError, ValueError):
        raise ConfigError(f"noise_matrix must be a K x K list of numbers, got {matrix!r}") from None
    if array.ndim != 2 or array.shape[0] != array.shape[1]:
        raise ConfigError(f"noise_matrix must be square (K x K), got shape {array.shape}")
    if (array < 0).any() or not np.allclose(array.sum(axis=1), 1.0, atol=1e-6):
        raise ConfigError("noise_matrix rows must be probabilities: entries >= 0 and each row summing to 1")
