"""MLC-D: meta label correction with BOME's dynamic-barrier gradient descent (the paper, Algorithm 1).

Equations: lower loss G (Eq. 3) on the noisy batch; value-function gap Q = G(w, alpha) - G(w_k, alpha)
(Eq. 4 with G*(alpha) ~ G(w_k, alpha) after k inner SGD steps); upper loss F (Eq. 2), plain
cross-entropy on the clean batch, so grad_alpha F = 0; barrier phi = delta ||grad Q||^2 (Eq. 5);
coefficient beta (Eq. 7); update lambda = (grad_w F, 0) + beta grad Q (Eq. 6):
w <- w - eta_w (grad_w F + beta grad_w Q) with the main model's SGD, alpha <- alpha - eta_alpha beta
grad_alpha Q with the meta model's Adam.

Choices the paper leaves open:
- Inner batches: Algorithm 1 samples a noisy batch for every inner step (line 3). The first inner step
  uses this step's batch (its gradient at w is grad_w Q anyway); steps 2..k draw fresh batches of the same
  size uniformly from D' with the method's generator, labelled by g_alpha from the features at w_i. So
  w_k approximates w*(alpha), the minimiser over D', not a model that has memorised one batch. Q itself
  is measured on this step's batch at w and w_k (a difference of G on two batches would be mostly batch
  noise). The cost is that of reusing one batch: k forward+backward passes plus a forward at w_k; the
  step-cost benchmark runs this code.
- Algorithm 1 writes Q with w_{k-1}^t (line 8); we use w_k, the result of the k inner steps (line 5).
- grad_w Q (option grad_q): "bome" (default) grad_w G(w, alpha) with w_k a constant, as in BOME;
  "difference" grad_w G(w) - (grad_w G)(w_k), as the authors' public code computes (a backward more).
  The inner steps are plain SGD with the main model's current learning rate.
- BatchNorm and the ||grad Q|| = 0 guard as in EBOMLC (see ebomlc.bilevel).
"""
from __future__ import annotations

import torch
from torch import Tensor

from ebomlc.bilevel import (GRAD_Q_FORMS, barrier_coefficient, set_grads, sq_norm, update_direction, upper_loss,
                            value_gap_gradients)
from ebomlc.config import ConfigError, TrialConfig
from ebomlc.methods.base import Batch, MetaCorrectionMethod


class MLCD(MetaCorrectionMethod):
    name = "mlc_d"
    hyperparameters = {"delta": 0.25, "k": 5}
    options = {"grad_q": "bome", **MetaCorrectionMethod.options}   # grad_q: how grad_w Q treats the look-ahead
    sampling = "paired"

    @classmethod
    def validate_options(cls, config: TrialConfig) -> None:
        super().validate_options(config)
        if config.options["grad_q"] not in GRAD_Q_FORMS:
            raise ConfigError(f"option grad_q must be one of {', '.join(GRAD_Q_FORMS)}, "
                              f"got {config.options['grad_q']!r}")

    def random_noisy_batch(self) -> tuple[Tensor, Tensor]:
        """A batch of D' drawn uniformly (with replacement) from the method's generator: images, noisy labels."""
        ctx = self.ctx
        index = torch.randint(len(ctx.noisy_y), (self.config.batch_size,), generator=ctx.generator,
                              device=ctx.generator.device).to(ctx.device)
        return ctx.normalize(ctx.noisy_x[index]), ctx.noisy_y[index]

    def step(self, noisy: Batch, clean: Batch | None) -> dict[str, Tensor]:
        c = self.config
        params, meta_params = list(self.model.parameters()), list(self.meta_model.parameters())

        # lower level: k inner SGD steps, gradients of Q (Eq. 4)
        _, grad_w_q, grad_alpha_q = value_gap_gradients(self.model, self.meta_model, noisy.x, noisy.y,
                                                        lr=self.lr, steps=c.k, fresh_batch=self.random_noisy_batch,
                                                        grad_q=c.options["grad_q"])

        # upper level: plain cross-entropy on the clean batch (Eq. 2), which does not depend on alpha
        logits, _ = self.model(clean.x)
        upper = upper_loss(logits, clean.y)
        grad_w_f = torch.autograd.grad(upper, params)

        # barrier coefficient (Eqs. 5, 7) and the update of Eq. (6) / Algorithm 1 lines 12-15
        beta = barrier_coefficient(grad_w_f, None, grad_w_q, grad_alpha_q, c.delta)
        set_grads(params, update_direction(grad_w_f, grad_w_q, beta))
        set_grads(meta_params, update_direction(None, grad_alpha_q, beta))
        self.optimizer.step()
        self.meta_optimizer.step()

        grad_q_norm = (sq_norm(grad_w_q) + sq_norm(grad_alpha_q)).sqrt()
        return {"loss": upper.detach(), "beta": beta, "beta_max": beta, "grad_q_norm": grad_q_norm}

