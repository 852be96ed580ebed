"""The interface every training method implements, and the context the trainer hands it.

A method owns its models and optimisers and does one training iteration per `step`. The trainer
(`ebomlc.train.run_trial`) owns the data, the batch order, evaluation, reporting and resume.

    class MyMethod(Method):
        name = "my_method"
        hyperparameters = {"rho": 0.2}        # which of rho/xi/delta/k/mixture it uses, with defaults
        options = {"warmup_epochs": 10}       # its other hyper-parameters, with defaults

        def step(self, noisy, clean):         # one iteration; returns 0-dim tensors, never .item()
            ...
            return {"loss": loss.detach()}

Batches (`Batch`) hold normalised float images already on the device. With `sampling == "paired"` a
step gets a noisy batch from D' and a clean batch from D; with "noisy" only the D' batch (clean is
None); with "union" one batch drawn from D ∪ D' whose `trusted` mask marks the clean samples (clean is
None). A method may change `self.sampling` between epochs (GLC's two phases do). The true labels of D'
never reach a method.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar, NamedTuple

import torch
from torch import Tensor, nn

from ebomlc.config import ConfigError, TrialConfig
from ebomlc.models.meta import EMBEDDING_INITS

SAMPLING_MODES = ("paired", "noisy", "union")


class Batch(NamedTuple):
    x: Tensor                       # (B, C, H, W) float, normalised, on the device
    y: Tensor                       # (B,) int64: the given label (noisy for D', clean for D)
    index: Tensor                   # (B,) int64: position in D' (paired/noisy), in D ∪ D' (union: D' first)
    trusted: Tensor | None = None   # (B,) bool, union sampling only: True for samples of the clean set D


class EvalOutput(NamedTuple):
    logits: Tensor                  # (B, K) the method's prediction (an ensemble for two-network methods)
    corrected: Tensor | None        # (B, K) meta model's corrected-label distribution g(h(x), y), or None


@dataclass
class MethodContext:
    """What a method may use: the validated config, data without the true labels of D', factories."""

    config: TrialConfig
    num_classes: int
    device: torch.device
    steps_per_epoch: int
    noisy_x: Tensor                 # (N, C, H, W) uint8 images of D' on the device
    noisy_y: Tensor                 # (N,) noisy labels of D'
    clean_x: Tensor                 # (M, C, H, W) uint8 images of D (training part)
    clean_y: Tensor                 # (M,) clean labels
    normalize: Callable[[Tensor], Tensor]   # uint8 images -> normalised float on the device
    build_model: Callable[[], nn.Module]    # a fresh main model (ResNet) on the device
    build_meta_model: Callable[[], nn.Module]  # a fresh meta model g_alpha on the device
    generator: torch.Generator      # the method's own random stream (saved with its state)

    def main_optimizer(self, params) -> torch.optim.Optimizer:
        """SGD with the paper's momentum and weight decay (Sec. VI-A)."""
        c = self.config
        return torch.optim.SGD(params, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay)

    def main_scheduler(self, optimizer, epochs: int | None = None) -> torch.optim.lr_scheduler.MultiStepLR:
        """lr x lr_gamma at the configured fractions of the epochs (80 and 100 of 120), stepped per epoch;
        `epochs` (default: the trial's) lets a phase of a method have a schedule of its own."""
        c = self.config
        milestones = sorted({max(1, round(f * (epochs or c.epochs))) for f in c.lr_milestones})
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=c.lr_gamma)

    def meta_optimizer(self, params) -> torch.optim.Optimizer:
        """Adam with the meta learning rate (3e-4 in the paper)."""
        return torch.optim.Adam(params, lr=self.config.meta_lr)

    def batches(self, images: Tensor, batch_size: int | None = None):
        """Yield (start, normalised float batch) over uint8 `images` in order, for full-data passes."""
        size = batch_size or self.config.eval_batch_size
        for start in range(0, len(images), size):
            yield start, self.normalize(images[start:start + size])


class Method:
    """Base class: one main model trained with SGD + MultiStepLR; subclasses add what they need."""

    name: ClassVar[str] = ""
    hyperparameters: ClassVar[dict[str, Any]] = {}   # subset of rho, xi, delta, k, mixture -> default
    options: ClassVar[dict[str, Any]] = {}           # other hyper-parameters -> default
    sampling: str = "paired"

    def __init__(self, ctx: MethodContext):
        self.ctx = ctx
        self.config = ctx.config
        self.model = ctx.build_model()
        self.optimizer = ctx.main_optimizer(self.model.parameters())
        self.scheduler = ctx.main_scheduler(self.optimizer)

    @classmethod
    def validate_options(cls, config: TrialConfig) -> None:
        """Check method-specific values in `config` (after defaults are filled); raise ConfigError."""

    # ---------------------------------------------------------------- training

    def step(self, noisy: Batch, clean: Batch | None) -> dict[str, Tensor]:
        """One iteration. Returns 0-dim tensors (a `loss` at least); keys ending in `_max` are maxed
        over the epoch, the others averaged. Must not synchronise with the host."""
        raise NotImplementedError

    def on_epoch_start(self, epoch: int) -> None:
        """Called before the epoch's first step (epoch counts from 0)."""

    def on_epoch_end(self, epoch: int) -> dict[str, float]:
        """Called after the epoch's last step; steps the learning-rate schedule. May return metrics."""
        self.scheduler.step()
        return {}

    @property
    def lr(self) -> float:
        """The main model's current learning rate (eta_w in the paper)."""
        return self.scheduler.get_last_lr()[0]

    # ---------------------------------------------------------------- evaluation

    def modules(self) -> dict[str, nn.Module]:
        """Every network of the method (for train/eval mode and state)."""
        return {name: value for name, value in vars(self).items() if isinstance(value, nn.Module)}

    def train(self, mode: bool = True) -> None:
        for module in self.modules().values():
            module.train(mode)

    @torch.no_grad()
    def evaluate(self, x: Tensor, y: Tensor) -> EvalOutput:
        """Prediction on a batch (eval mode is set by the trainer); `y` is the given label, used by a
        meta model's corrected label."""
        logits, _ = self.model(x)
        return EvalOutput(logits, None)

    def clean_metrics(self, logits: Tensor, corrected: Tensor | None, y: Tensor) -> dict[str, Tensor]:
        """Extra per-batch sums over the clean set D (e.g. EBOMLC's mixture loss). Sums, not means."""
        return {}

    # ---------------------------------------------------------------- state

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly: networks, optimisers, schedules, random stream."""
        state = {name: module.state_dict() for name, module in self.modules().items()}
        for name, value in vars(self).items():
            if isinstance(value, (torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler)):
                state[name] = value.state_dict()
        state["generator"] = self.ctx.generator.get_state()
        state["sampling"] = self.sampling
        state["extra"] = self.extra_state()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, module in self.modules().items():
            module.load_state_dict(state[name])
        for name, value in vars(self).items():
            if isinstance(value, (torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler)):
                value.load_state_dict(state[name])
        self.ctx.generator.set_state(state["generator"])
        self.sampling = state["sampling"]
        self.load_extra_state(state["extra"])

    def extra_state(self) -> dict[str, Any]:
        """Method state that is not a module/optimiser/scheduler attribute (e.g. GLC's C-hat)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        pass


class MetaCorrectionMethod(Method):
    """Base of the methods with a meta model g_alpha (ebomlc, mlc_d, mlc): builds it with its Adam, and
    evaluates with its corrected labels (the label-correction diagnostics of the trainer)."""

    options: ClassVar[dict[str, Any]] = {"meta_embedding_init": "xavier"}   # see ebomlc.models.meta

    @classmethod
    def validate_options(cls, config: TrialConfig) -> None:
        if config.options["meta_embedding_init"] not in EMBEDDING_INITS:
            raise ConfigError(f"option meta_embedding_init must be one of {', '.join(EMBEDDING_INITS)}, "
                              f"got {config.options['meta_embedding_init']!r}")

    def __init__(self, ctx: MethodContext):
        super().__init__(ctx)
        self.meta_model = ctx.build_meta_model()
        self.meta_optimizer = ctx.meta_optimizer(self.meta_model.parameters())

    @torch.no_grad()
    def evaluate(self, x: Tensor, y: Tensor) -> EvalOutput:
        logits, features = self.model(x)
        return EvalOutput(logits, self.meta_model(features, y))
