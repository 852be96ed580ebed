"""PMW-Net: a probabilistic formulation for Meta-Weight-Net (Zhao, Shu, Yuan, Liu & Meng, IEEE TNNLS
34(3), 2023; online 2021).

MW-Net (`ebomlc.methods.mwnet`) with a random example weight: each noisy sample's weight follows
    v_i ~ Beta(a(l_i; psi_a), b(l_i; psi_b))
where a and b are two MLPs 1 -> 100 -> 1 with ReLU and a softplus output, reading the per-sample loss
l_i. The virtual step uses a reparameterised sample of the v_i, so the clean loss after it is
differentiable in (psi_a, psi_b), and the meta objective adds a KL term to a prior:
    meta loss = CE_clean(w^(psi)) + kl_weight * eta * mean_i KL( Beta(a_i, b_i) || Beta(a0, b0) ),
the real step draws new weights from the updated networks (no gradient to psi).

Definition used: the authors' released code (xjtushujun/Probabilistic-MW-Net, cifar/PMWN.py and
resnet.py `VNet`), which is where the details live; each of its choices is kept:
- two separate weight networks for a and b (softplus outputs), each trained by Adam (lr 1e-3, weight
  decay 1e-4); here one Adam over both, which is the same update since Adam acts per parameter;
- the KL weight is 0.001 times the main model's current learning rate (their `0.001*meta_lr*kl(...)`),
  averaged over the batch: option `kl_weight` = 1e-3 is that factor;
- the prior Beta(a0, b0) is an empirical one: after each real step it becomes Beta(mean_i a_i,
  mean_i b_i) of that step's (detached) parameters, and it restarts from Beta(1, 1) (uniform) at the
  start of every epoch (their `train()` receives the global uniform prior each epoch and reassigns a
  local copy step by step); it is saved with the state, so a resume between steps is exact too;
- the virtual step is the plain SGD step of MW-Net with the current lr, the real step the main optimiser;
  weighted losses are batch means. Everything MW-Net's docstring lists about BatchNorm, the meta
  gradient (exact one-step hypergradient through a forward-mode product) and sampling holds here too.
Departures: the Beta samples are drawn as G_a / (G_a + G_b) with G ~ Gamma(a, 1), Gamma(b, 1) from the
method's own generator (`torch._standard_gamma`, differentiable by implicit reparameterisation). That is
the Beta distribution with an unbiased pathwise gradient, as torch's Beta.rsample (which differentiates
a Dirichlet draw instead: a different estimator with the same expectation), but seeded, so a trial
resumes exactly. The denominator is clamped at the smallest float so that two underflowing Gamma draws
give a weight of 0 instead of NaN.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Beta, kl_divergence

from ebomlc.config import ConfigError, TrialConfig
from ebomlc.methods.base import MethodContext
from ebomlc.methods.mwnet import MWNet, WeightNet


def sample_beta(a: Tensor, b: Tensor, generator: torch.Generator) -> Tensor:
    """Reparameterised draws v ~ Beta(a, b) (elementwise; differentiable in a and b) from `generator`."""
    x = torch._standard_gamma(a, generator=generator)
    y = torch._standard_gamma(b, generator=generator)
    return x / (x + y).clamp_min(torch.finfo(x.dtype).tiny)


class BetaWeightNet(nn.Module):
    """Losses (B,) -> the parameters (a, b), each (B,) and > 0, of the weights' Beta distributions."""

    def __init__(self, hidden: int = 100):
        super().__init__()
        self.alpha = WeightNet(hidden, F.softplus)
        self.beta = WeightNet(hidden, F.softplus)

    def forward(self, losses: Tensor) -> tuple[Tensor, Tensor]:
        return self.alpha(losses), self.beta(losses)


class PMWNet(MWNet):
    name = "pmwnet"
    options = {"weight_net_lr": 1e-3,   # Adam learning rate of both weighting networks (their code)
               "kl_weight": 1e-3}       # KL factor; the meta loss adds kl_weight * current lr * mean KL

    def __init__(self, ctx: MethodContext):
        super().__init__(ctx)
        self.prior = (torch.ones((), device=ctx.device), torch.ones((), device=ctx.device))   # (a0, b0)

    @classmethod
    def validate_options(cls, config: TrialConfig) -> None:
        super().validate_options(config)
        weight = config.options["kl_weight"]
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 <= weight < math.inf:
            raise ConfigError(f"option kl_weight must be >= 0, got {weight!r}")

    def build_weight_net(self) -> nn.Module:
        return BetaWeightNet()

    def on_epoch_start(self, epoch: int) -> None:
        self.prior = (torch.ones((), device=self.ctx.device), torch.ones((), device=self.ctx.device))

    def lookahead_weights(self, losses: Tensor) -> tuple[Tensor, Tensor]:
        a, b = self.weight_net(losses)                                        # (B,), (B,)
        weights = sample_beta(a, b, self.ctx.generator)
        posterior = Beta(a, b, validate_args=False)
        prior = Beta(*self.prior, validate_args=False)
        penalty = self.config.options["kl_weight"] * self.lr * kl_divergence(posterior, prior).mean()
        return weights, penalty

    @torch.no_grad()
    def step_weights(self, losses: Tensor) -> Tensor:
        a, b = self.weight_net(losses)
        self.prior = (a.mean(), b.mean())
        return sample_beta(a, b, self.ctx.generator)

    def extra_state(self) -> dict[str, Any]:
        return {"prior": self.prior}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.prior = state["prior"]
