"""L2RW: learning to reweight examples (Ren, Zeng, Yang & Urtasun, ICML 2018), their Algorithm 1.

Every step, weights for the noisy batch come from one look-ahead on the clean batch (Algorithm 1):
    l_f(eps) = sum_i eps_i l_i(w),  eps = 0               (eps-weighted per-sample CE on the noisy batch)
    w^(eps)  = w - alpha grad_w l_f(eps)                  (one SGD step)
    u        = - d/d eps  mean_j CE_clean(w^(eps)) at eps = 0
             = alpha < grad_w l_i(w), grad_w L_clean(w) >  (a gradient-alignment score)
    w~_i     = max(u_i, 0),  w_i = w~_i / (sum_j w~_j + delta(sum_j w~_j))   (all 0 if every w~ is 0)
then the real step descends sum_i w_i l_i(w) with the main optimiser (SGD with momentum, Sec. VI-A).

Computation: at eps = 0 the look-ahead point is w itself, so u_i = alpha <grad_w l_i, v> with
v = grad_w L_clean(w). That is the one-step hypergradient of `ebomlc.bilevel.lookahead_hypergradient`
with eps as the "meta parameters": one forward-mode product J v through the network on the noisy batch
(exact, no per-example gradients and no double backward). Cost: clean forward + backward, one JVP on
the noisy batch, and the noisy forward + backward of the real step (its logits also give dl_i/df).

Choices and departures:
- alpha is the main model's current learning rate. It only scales u, so it changes nothing after the
  normalisation (the all-zero case included).
- All weights zero (no example helps the clean loss): the step's loss is 0, as the paper's
  w = w~ / (sum w~ + delta(sum w~)) gives; the optimiser still steps (momentum and weight decay), as in
  their algorithm. The division is a `torch.where`, no host synchronisation.
- The clean look-ahead forward normalises with the clean batch's own BatchNorm statistics and records
  none (`ebomlc.bilevel.lookahead_forward`); only the real noisy forward updates the running statistics.
- "paired" sampling: a noisy batch from D' and a clean batch from D each step, as the paper's clean
  validation set; D is not trained on directly.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ebomlc.bilevel import lookahead_forward, lookahead_hypergradient
from ebomlc.methods.base import Batch, Method


def normalized_weights(scores: Tensor) -> Tensor:
    """L2RW's weights: clamp the alignment scores at 0 and normalise them to sum 1 (all 0 stays 0).

    scores: (B,) u_i = -d L_clean / d eps_i. Returns (B,) weights >= 0 summing to 1, or all zeros.
    """
    clipped = scores.clamp(min=0)
    total = clipped.sum()
    return clipped / torch.where(total > 0, total, torch.ones_like(total))


class L2RW(Method):
    name = "l2rw"
    sampling = "paired"

    def example_weights(self, noisy: Batch, clean: Batch, logits: Tensor) -> Tensor:
        """(B,) weights of the noisy batch from the clean batch's look-ahead; `logits` (B, K) are
        the noisy batch's scores at the current weights."""
        params = dict(self.model.named_parameters())
        clean_logits, _ = lookahead_forward(self.model, params, clean.x)          # w^(0) = w
        v = torch.autograd.grad(F.cross_entropy(clean_logits, clean.y), list(params.values()))
        eps = torch.zeros(len(noisy.y), device=noisy.y.device, requires_grad=True)

        def weighted_noisy_loss(scores: Tensor) -> Tensor:                       # l_f(eps)
            return (eps * F.cross_entropy(scores, noisy.y, reduction="none")).sum()

        (grad_eps,) = lookahead_hypergradient(self.model, params, noisy.x, logits, weighted_noisy_loss,
                                              [eps], v, self.lr)
        return normalized_weights(-grad_eps)

    def step(self, noisy: Batch, clean: Batch | None) -> dict[str, Tensor]:
        logits, _ = self.model(noisy.x)                                           # (B, K)
        weights = self.example_weights(noisy, clean, logits)                      # (B,)
        loss = (weights * F.cross_entropy(logits, noisy.y, reduction="none")).sum()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return {"loss": loss.detach(), "weight_positive_fraction": (weights > 0).float().mean()}
