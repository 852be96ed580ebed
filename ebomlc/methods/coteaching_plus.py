"""Co-teaching+: disagreement plus small-loss cross-update of two networks (Yu, Han, Yao, Niu, Tsang &
Sugiyama, "How does disagreement help generalization against label corruption?", ICML 2019), Algorithm 1.

Two networks f1, f2 see the same batch. Each epoch e has a forget rate
    lambda(e) = forget_rate * min(e / (num_gradual - 1), 1)      (their linspace(0, forget_rate, num_gradual))
and each step:
  1. disagreement: keep the samples where argmax f1(x) != argmax f2(x) (from epoch `init_epoch` on;
     before it, every sample: plain Co-teaching, as their code's `init_epoch`);
  2. small loss: among those n samples, each network picks its floor((1 - lambda(e)) n) samples of
     smallest cross-entropy (all n if that floor is 0, as their code);
  3. cross update: f1 descends the CE of f2's picks and f2 that of f1's picks, each summed over the picks
     and divided by the batch size B (see the departures for why B).
`kept_fraction` (a step metric) is the number of picks over the batch size.

Fixed shapes without host synchronisation: the disagreement set's size varies per batch, so picks are
a mask, not an index list: losses outside the candidate set become +inf, one stable sort gives every
sample its rank, and a sample is picked when its rank is below the count computed on the device
(`small_loss_mask`). The forget rate and whether disagreement is on are host numbers of the epoch.

Facts from the authors' code (xingruiyu/coteaching_plus, main.py, loss.py) and departures:
- forget_rate defaults to the nominal noise rate (their `forget_rate = noise_rate`), num_gradual = 10,
  init_epoch = 20 on CIFAR-10 and 5 on CIFAR-100 (the synthetic data takes CIFAR-10's value); None
  selects these defaults.
- Loss scale: their loss passes softmax outputs where cross_entropy expects scores (a softmax applied
  twice) and divides the mean CE over the picks by the number of picks again, under Adam, which undoes
  most of any scale. Ours is the common SGD (lr 0.1, Sec. VI-A), which does not: with the mean over the
  picks, a batch with few disagreements (a handful of mostly mislabelled picks) takes a full-size step
  on them, and in our runs at 60% noise (synthetic data) both networks collapsed to predicting one
  class within two epochs of the disagreement phase (then they agree everywhere and stop learning). We
  therefore use the CE of the logits summed over the picks and divided by B: the batch mean with 0/1
  example weights, like the reweighting baselines, so the step shrinks with the number of picks. In the
  Co-teaching phase this is the mean over the picks times (1 - lambda(e)).
- No disagreement in a batch: no update (zero loss; the optimisers still step, as theirs do). Their code
  updated on the whole batch in that case while a miscounted "step < 5000" held; we drop that quirk.
- The two networks are the common ResNet, each with its own SGD and schedule (Sec. VI-A) instead of
  their Adam with a linear decay; their first epoch (evaluation only) is not repeated.
- Sampling "union": Co-teaching+ has no trusted set; the clean set D is used as ordinary labelled data
  alongside D', so it sees the same training images as erm.
- Evaluation: network 1 (their code reports both networks; Co-teaching+ does not ensemble).
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ebomlc.config import ConfigError, TrialConfig
from ebomlc.methods.base import Batch, Method, MethodContext


def forget_rate_schedule(epoch: int, forget_rate: float, num_gradual: int) -> float:
    """lambda(epoch): linear from 0 (epoch 0) to `forget_rate` (epoch num_gradual - 1), then constant."""
    if epoch >= num_gradual:
        return forget_rate
    return forget_rate * epoch / max(num_gradual - 1, 1)


def small_loss_mask(losses: Tensor, candidates: Tensor, remember_rate: float) -> Tensor:
    """(B,) bool: the floor(remember_rate * n) candidates with the smallest losses, n = number of candidates.

    losses: (B,) per-sample losses; candidates: (B,) bool. If the floor is 0, every candidate is picked
    (the authors' rule); with no candidate, nothing is. Ties are broken by position (stable sort).
    """
    n = candidates.sum()
    count = torch.floor(remember_rate * n.double()).long()
    count = torch.where(count == 0, n, count)
    keyed = torch.where(candidates, losses, torch.full_like(losses, math.inf))
    order = torch.sort(keyed, stable=True).indices
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(losses), device=losses.device)            # rank[i]: position of i in order
    return candidates & (rank < count)


class CoteachingPlus(Method):
    name = "coteaching_plus"
    options = {"forget_rate": None,   # final forget rate; None: the nominal noise rate
               "num_gradual": 10,     # epochs of the linear ramp of the forget rate (their E_k)
               "init_epoch": None}    # first epoch with disagreement; None: 20 (CIFAR-10, synthetic), 5 (CIFAR-100)
    sampling = "union"

    def __init__(self, ctx: MethodContext):
        super().__init__(ctx)
        c = self.config
        self.model2 = ctx.build_model()
        self.optimizer2 = ctx.main_optimizer(self.model2.parameters())
        self.scheduler2 = ctx.main_scheduler(self.optimizer2)
        options = c.options
        self.forget_rate = c.noise_rate if options["forget_rate"] is None else options["forget_rate"]
        self.init_epoch = options["init_epoch"]
        if self.init_epoch is None:
            self.init_epoch = 5 if c.dataset == "cifar100" else 20
        self.remember_rate = 1.0      # 1 - lambda(epoch), set per epoch
        self.disagreement = False     # epoch >= init_epoch, set per epoch

    @classmethod
    def validate_options(cls, config: TrialConfig) -> None:
        rate, gradual, init = (config.options[k] for k in ("forget_rate", "num_gradual", "init_epoch"))
        if rate is not None and (isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate < 1):
            raise ConfigError(f"option forget_rate must be in [0, 1) or None (the noise rate), got {rate!r}")
        if isinstance(gradual, bool) or not isinstance(gradual, int) or gradual < 1:
            raise ConfigError(f"option num_gradual must be an integer >= 1, got {gradual!r}")
        if init is not None and (isinstance(init, bool) or not isinstance(init, int) or init < 0):
            raise ConfigError(f"option init_epoch must be an integer >= 0 or None (the dataset's default), got {init!r}")

    def on_epoch_start(self, epoch: int) -> None:
        rate = forget_rate_schedule(epoch, self.forget_rate, self.config.options["num_gradual"])
        self.remember_rate = 1.0 - rate
        self.disagreement = epoch >= self.init_epoch

    def step(self, noisy: Batch, clean: Batch | None) -> dict[str, Tensor]:
        logits1, _ = self.model(noisy.x)                                      # (B, K)
        logits2, _ = self.model2(noisy.x)
        losses1 = F.cross_entropy(logits1, noisy.y, reduction="none")         # (B,)
        losses2 = F.cross_entropy(logits2, noisy.y, reduction="none")
        if self.disagreement:
            candidates = logits1.argmax(1) != logits2.argmax(1)
        else:
            candidates = torch.ones_like(noisy.y, dtype=torch.bool)
        picks1 = small_loss_mask(losses1.detach(), candidates, self.remember_rate)   # f1's small-loss samples
        picks2 = small_loss_mask(losses2.detach(), candidates, self.remember_rate)
        loss1 = (losses1 * picks2).mean()                                     # f1 learns from f2's picks
        loss2 = (losses2 * picks1).mean()
        self.optimizer.zero_grad(set_to_none=True)
        self.optimizer2.zero_grad(set_to_none=True)
        (loss1 + loss2).backward()
        self.optimizer.step()
        self.optimizer2.step()
        return {"loss": ((loss1 + loss2) / 2).detach(), "kept_fraction": picks1.float().mean()}

    def on_epoch_end(self, epoch: int) -> dict[str, float]:
        self.scheduler.step()
        self.scheduler2.step()
        return {}

    def extra_state(self) -> dict[str, Any]:
        return {"remember_rate": self.remember_rate, "disagreement": self.disagreement}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.remember_rate, self.disagreement = state["remember_rate"], state["disagreement"]
