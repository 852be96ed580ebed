"""MLC: meta label correction (Zheng, Awadallah & Dumais, AAAI 2021), the k-step look-ahead hypergradient.

Bilevel problem of Eq. (1): the main model minimises G (Eq. 3) on the noisy batch with the labels
y~ = g_alpha(h(x').detach(), y'); the meta model descends the clean loss F (Eq. 2) after one look-ahead
step of the main model, grad_alpha F(w'(alpha)) with w'(alpha) the next SGD iterate. One step:
  1. noisy batch: forward at w, y~, G, grad_w G (one backward);
  2. w' = the main optimiser's next iterate from grad_w G: w - eta (mu b + grad_w G + lambda w), with its
     momentum buffer b, momentum mu and weight decay lambda (ebomlc.bilevel.sgd_lookahead);
  3. clean batch: forward and backward at w' (without touching the model), v = grad F(w');
  4. hypergradient grad_alpha F(w'(alpha)) = -eta grad_alpha <grad_w G(w, alpha), v>: a Hessian-vector
     product, computed as one forward-mode product J v through the network plus a backward through g_alpha
     (ebomlc.bilevel.lookahead_hypergradient; tested against the unrolled create_graph computation);
  5. the meta model's Adam steps with it; the main model's SGD steps with grad_w G of step 1.

Facts taken from the authors' public code (microsoft/MLC, mlc.py `step_hmlc_K`, main.py) where the paper
leaves them open:
- The look-ahead is the real optimiser's step: momentum buffer and weight decay included (their
  `update_params_sgd`); both are constant in alpha, so the derivative of w' is -eta d(grad_w G)/d alpha.
- eta is the main model's current learning rate (their `main_schdlr.get_lr()[0]`; here the scheduler's
  last learning rate, the one the optimiser uses this epoch).
- The main model steps with the gradient of G computed in step 1, i.e. with the labels of the meta model
  *before* its update: their code computes `f_param_grads` before the meta step and sets
  `param.grad = f_param_grads` after it. So no second forward or backward is needed.
- k > 1 (their `gradient_steps`): the one-step hypergradients are accumulated over k main-model steps and
  the meta model steps once every k steps; each step's new hypergradient is added to the previous sum
  discounted by gamma = (1 - eta) <v, grad_w F(w)> / ||grad_w F(w)||^2, with grad_w F(w) the clean-batch
  gradient at the current w (their identity-Hessian approximation). That needs one more clean forward
  and backward, at w, for k > 1 only. Default k = 1 (their default) makes the discount irrelevant.
- Option clean_mix (default True): their default variant `hmlc_K_mix`, which the published MLC numbers
  come from. Each clean batch is split in two halves: the first is the meta batch of F (steps 3-4), the
  second is added to the main model's training loss, L = (B G + B_c CE(f_w(x_c2), y_c2)) / (B + B_c) with
  B, B_c the two batch sizes; w' and the main step use grad_w L, and the hypergradient is that of the
  noisy share B / (B + B_c) of L (the clean part does not depend on alpha). With clean_mix False it is
  their `hmlc_K`, the plain form of Eq. (1): G on the noisy batch only, the whole clean batch for F. Without
  the clean half the main model learns only from the meta model's labels, which start as a random
  network's: at 60% noise on small data it then trails plain training by far.
- BatchNorm: only the forwards at w that train the main model (the noisy batch, and the clean half with
  clean_mix) update the running statistics, each batch on its own as in their code; the look-ahead passes
  record nothing (ebomlc.bilevel.lookahead_forward). Their code swapped the weights in place, so its
  look-ahead forward also updated the running statistics.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ebomlc.bilevel import (GRAD_Q_EPS, dot, lookahead_forward, lookahead_hypergradient, lower_loss, set_grads,
                            sgd_lookahead, sq_norm, upper_loss)
from ebomlc.config import ConfigError, TrialConfig
from ebomlc.methods.base import Batch, MetaCorrectionMethod, MethodContext


class MLC(MetaCorrectionMethod):
    name = "mlc"
    hyperparameters = {"k": 1}
    options = {"clean_mix": True, **MetaCorrectionMethod.options}   # clean_mix: half of each clean batch in the main loss
    sampling = "paired"

    @classmethod
    def validate_options(cls, config: TrialConfig) -> None:
        super().validate_options(config)
        if not isinstance(config.options["clean_mix"], bool):
            raise ConfigError(f"option clean_mix must be true or false, got {config.options['clean_mix']!r}")
        if config.options["clean_mix"] and config.clean_batch_size < 2:
            raise ConfigError(f"option clean_mix splits each clean batch in two, so clean_batch_size must be "
                              f">= 2, got {config.clean_batch_size}; raise it or set clean_mix=false")

    def __init__(self, ctx: MethodContext):
        super().__init__(ctx)
        self.accumulated: list[Tensor] | None = None   # k > 1: discounted sum of this round's hypergradients
        self.accumulated_steps = 0                     # main-model steps since the last meta step

    def step(self, noisy: Batch, clean: Batch | None) -> dict[str, Tensor]:
        c, lr = self.config, self.lr
        params, meta_params = list(self.model.parameters()), list(self.meta_model.parameters())
        names = [name for name, _ in self.model.named_parameters()]

        # lower level, noisy batch: G(w, alpha) with the current corrections (Eq. 3); with clean_mix the
        # main model's loss also has the second half of the clean batch, F uses the first
        logits, features = self.model(noisy.x)                         # (B, K), (B, F)
        corrected = self.meta_model(features.detach(), noisy.y)        # (B, K) y~
        lower = lower_loss(logits, corrected)
        noisy_share, train_loss = 1.0, lower
        if c.options["clean_mix"]:
            half = len(clean.y) // 2
            mix_x, mix_y = clean.x[half:], clean.y[half:]
            clean = Batch(clean.x[:half], clean.y[:half], clean.index[:half])
            noisy_share = len(noisy.y) / (len(noisy.y) + len(mix_y))
            train_loss = noisy_share * lower + (1 - noisy_share) * F.cross_entropy(self.model(mix_x)[0], mix_y)
        grad_w_g = torch.autograd.grad(train_loss, params)

        # look-ahead w': the main optimiser's next iterate
        state = self.optimizer.state
        has_buffers = all("momentum_buffer" in state[p] for p in params)      # not before the first step
        buffers = [state[p]["momentum_buffer"] for p in params] if has_buffers else None
        lookahead = sgd_lookahead([p.detach() for p in params], grad_w_g, lr, momentum=c.momentum,
                                  weight_decay=c.weight_decay, momentum_buffers=buffers)
        lookahead = [w.requires_grad_() for w in lookahead]

        # clean loss at w' (Eq. 2) and v = grad F(w')
        lookahead_logits, _ = lookahead_forward(self.model, dict(zip(names, lookahead)), clean.x)
        v = torch.autograd.grad(upper_loss(lookahead_logits, clean.y), lookahead)

        # hypergradient grad_alpha F(w'(alpha)) (Hessian-vector product)
        hypergradient = lookahead_hypergradient(self.model, dict(zip(names, params)), noisy.x, logits,
                                                lambda scores: noisy_share * lower_loss(scores, corrected),
                                                meta_params, v, lr)
        if c.k > 1:
            hypergradient = self.accumulate(hypergradient, v, clean, lr)
        self.accumulated_steps += 1
        if self.accumulated_steps == c.k:
            set_grads(meta_params, hypergradient)
            self.meta_optimizer.step()
            self.accumulated, self.accumulated_steps = None, 0

        # main model: SGD on its loss with the labels used above (before the meta update), as in the public code
        set_grads(params, grad_w_g)
        self.optimizer.step()
        return {"loss": lower.detach()}

    def accumulate(self, hypergradient: list[Tensor], v: list[Tensor], clean: Batch, lr: float) -> list[Tensor]:
        """k > 1: this step's hypergradient plus the round's sum so far discounted by MLC's gamma (v = grad F(w'))."""
        params = list(self.model.parameters())
        names = [name for name, _ in self.model.named_parameters()]
        logits, _ = lookahead_forward(self.model, dict(zip(names, params)), clean.x)   # at w, records no BN stats
        grad_w_f = torch.autograd.grad(upper_loss(logits, clean.y), params)
        gamma = (1 - lr) * dot(v, grad_w_f) / (sq_norm(grad_w_f) + GRAD_Q_EPS)
        if self.accumulated is not None:
            torch._foreach_add_(hypergradient, torch._foreach_mul(self.accumulated, gamma))
        self.accumulated = hypergradient
        return hypergradient


    def extra_state(self) -> dict[str, Any]:
        return {"accumulated": self.accumulated, "accumulated_steps": self.accumulated_steps}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.accumulated = state["accumulated"]
        self.accumulated_steps = state["accumulated_steps"]
