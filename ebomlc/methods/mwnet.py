"""MW-Net: Meta-Weight-Net (Shu, Xie, Yi, Zhao, Zhou, Xu & Meng, NeurIPS 2019), their Algorithm 1.

A weighting network V(l; psi) (MLP 1 -> 100 -> 1, ReLU, sigmoid) maps each noisy sample's loss to its
weight. One step, with l_i(w) the per-sample CE on the noisy batch and eta the main lr:
    w^(psi) = w - eta grad_w (1/B) sum_i V(l_i(w); psi) l_i(w)          (virtual step)
    psi    <- psi - beta grad_psi (1/M) sum_j CE_clean(w^(psi))          (meta step)
    w      <- w - eta grad_w (1/B) sum_i V(l_i(w); psi_new) l_i(w)      (real step; weights detached)
The weighting network reads the loss values only (detached), as in their code (`vnet(cost_v.data)`).

Computation: the meta gradient is the one-step hypergradient
    grad_psi CE_clean(w^(psi)) = -eta grad_psi < grad_w (1/B) sum_i V(l_i; psi) l_i(w), v >,  v = grad CE_clean(w^),
evaluated by `ebomlc.bilevel.lookahead_hypergradient` (one forward-mode product through the network on the
noisy batch, no double backward; tested against the unrolled create_graph computation). Per step: noisy
forward + backward (virtual step), clean forward + backward at w^, one JVP on the noisy batch, and a
second backward of the noisy graph for the real step.

Facts from the authors' released code (xjtushujun/meta-weight-net, MW-Net.py) and choices:
- Virtual step: plain SGD (their `update_params`: no momentum, no weight decay) with the main model's
  current learning rate (their `meta_lr`); the real step uses the main optimiser (SGD 0.1, momentum 0.9,
  weight decay 5e-4 and the trial's schedule, as in their code and Sec. VI-A).
- Weighting network optimiser: Adam, lr `weight_net_lr` = 1e-3, weight decay 1e-4, no schedule (their
  code). The trial's `meta_lr` (Adam 3e-4 for the label-correction meta model g_alpha of MLC/EBOMLC) is
  not used. Initialisation: PyTorch's default for nn.Linear (their MetaLinear copies nn.Linear's).
- Weighted losses are means over the batch (their `torch.sum(cost_v * v_lambda) / len(cost_v)`), not
  normalised by the sum of the weights.
- The real step re-uses the noisy forward of the virtual step (same w, same batch, so the same losses;
  their code runs the forward again, which in train mode gives identical values).
- BatchNorm: the real noisy forward updates the running statistics once per step; the clean look-ahead
  forward uses the clean batch's statistics and records nothing (their code runs it on a throw-away
  copy of the model, whose statistics are discarded too).
- "paired" sampling: D' batches for the weighted loss, D batches as their meta set (1,000 clean images).
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ebomlc.bilevel import lookahead_forward, lookahead_hypergradient, set_grads, sgd_lookahead
from ebomlc.config import ConfigError, TrialConfig
from ebomlc.methods.base import Batch, Method, MethodContext


class WeightNet(nn.Module):
    """V(l; psi): per-sample loss (B,) -> (B,) through an MLP 1 -> hidden -> 1 with ReLU and `output`."""

    def __init__(self, hidden: int = 100, output: Callable[[Tensor], Tensor] = torch.sigmoid):
        super().__init__()
        self.hidden = nn.Linear(1, hidden)
        self.out = nn.Linear(hidden, 1)
        self.output = output

    def forward(self, losses: Tensor) -> Tensor:
        return self.output(self.out(F.relu(self.hidden(losses[:, None])))).squeeze(1)


class MWNet(Method):
    name = "mwnet"
    options = {"weight_net_lr": 1e-3}    # Adam learning rate of the weighting network (their code)
    sampling = "paired"

    def __init__(self, ctx: MethodContext):
        super().__init__(ctx)
        self.weight_net = self.build_weight_net().to(ctx.device)
        self.weight_optimizer = torch.optim.Adam(self.weight_net.parameters(), lr=self.config.options["weight_net_lr"],
                                                 weight_decay=1e-4)

    @classmethod
    def validate_options(cls, config: TrialConfig) -> None:
        lr = config.options["weight_net_lr"]
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < math.inf:
            raise ConfigError(f"option weight_net_lr must be > 0, got {lr!r}")

    def build_weight_net(self) -> nn.Module:
        return WeightNet()

    def lookahead_weights(self, losses: Tensor) -> tuple[Tensor, Tensor | None]:
        """(B,) weights for the virtual step, differentiable in psi, and a penalty added to the meta
        objective (None: MW-Net has none). `losses` are detached."""
        return self.weight_net(losses), None

    @torch.no_grad()
    def step_weights(self, losses: Tensor) -> Tensor:
        """(B,) weights of the real step, from the updated weighting network."""
        return self.weight_net(losses)

    def step(self, noisy: Batch, clean: Batch | None) -> dict[str, Tensor]:
        lr = self.lr
        names = [name for name, _ in self.model.named_parameters()]
        params = list(self.model.parameters())
        meta_params = list(self.weight_net.parameters())

        # noisy batch at w: per-sample losses l_i(w) and the weights V(l_i; psi)
        logits, _ = self.model(noisy.x)                                       # (B, K)
        losses = F.cross_entropy(logits, noisy.y, reduction="none")           # (B,)
        weights, penalty = self.lookahead_weights(losses.detach())            # (B,), graph to psi

        # virtual step w^ = w - eta grad_w mean_i V_i l_i (its value; the psi-dependence enters below)
        grad_w = torch.autograd.grad((weights.detach() * losses).mean(), params, retain_graph=True)
        lookahead = [w.requires_grad_() for w in sgd_lookahead([p.detach() for p in params], grad_w, lr)]

        # clean loss at w^ and its gradient v; meta gradient through the virtual step
        clean_logits, _ = lookahead_forward(self.model, dict(zip(names, lookahead)), clean.x)
        clean_loss = F.cross_entropy(clean_logits, clean.y)
        v = torch.autograd.grad(clean_loss, lookahead)
        penalty_grads = None if penalty is None else torch.autograd.grad(penalty, meta_params, retain_graph=True)
        meta_grads = lookahead_hypergradient(
            self.model, dict(zip(names, params)), noisy.x, logits,
            lambda scores: (weights * F.cross_entropy(scores, noisy.y, reduction="none")).mean(),
            meta_params, v, lr)
        if penalty_grads is not None:
            torch._foreach_add_(meta_grads, penalty_grads)
        set_grads(meta_params, meta_grads)
        self.weight_optimizer.step()

        # real step with the updated weighting network's weights, detached
        new_weights = self.step_weights(losses.detach())
        loss = (new_weights * losses).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return {"loss": loss.detach(), "weight": new_weights.mean()}
