"""GLC: the gold loss correction of Hendrycks, Mazeika, Wilson & Gimpel (NeurIPS 2018).

Two phases (their Algorithm 1):
  1. train the network on the untrusted set D' with its noisy labels y~ (plain cross-entropy), so that
     softmax(f(x)) estimates p(y~ | x);
  2. estimate the corruption matrix on the trusted set D:
         C-hat[i, j] = mean over the trusted x with (clean) label i of p-hat(y~ = j | x),
     i.e. C-hat[i, j] ~ P(noisy label = j | true label = i)  (`estimate_corruption_matrix`);
     then train again from the *initial* weights on D ∪ D' with
         trusted (x, y):    -log softmax(f(x))_y
         untrusted (x, y~): -log sum_j softmax(f(x))_j C-hat[j, y~]
     (`gold_corrected_loss`), so the network models p(y | x) and C-hat maps it to p(y~ | x).

Choices and departures (with the reasons):
- Epoch budget: the original trains each phase for the full schedule (twice the epochs of the others);
  here the trial's `epochs` are split, `phase1_fraction` of them (rounded, at least 1, default 0.5) for
  phase 1 and the rest for phase 2, so GLC gets the same number of epochs as every other method.
- Each phase has its own learning-rate schedule: a fresh SGD (momentum and weight decay of Sec. VI-A,
  momentum buffers reset) and MultiStepLR with the trial's milestone fractions applied to the phase's own
  length, restarting at the trial's lr. (The restart is what "train again from the initial weights"
  means: phase 2 is a new training run.)
- The initial weights are the main model's weights at construction (the trial's seed), saved then and
  restored at the start of phase 2 (their code builds a fresh network; with a fixed seed that is the
  same as re-using the first initialisation, which also keeps a resumed trial exact).
- Phase 1 uses "noisy" sampling (D' only, as in their code), phase 2 "union" sampling (one batch from
  D ∪ D' with the trusted mask; their code draws gold and silver batches separately and sums the two
  losses divided by the batch size, which is the per-sample mean we take over the mixed batch).
- C-hat is computed in evaluation mode (BatchNorm running statistics), as their `get_C_hat_transpose`.
  A class with no trusted sample gets a zero row (their code would produce NaN); with the class-balanced
  split of D that never happens.
- The untrusted loss is computed as logsumexp_j(log softmax_j + log C-hat[j, y~]), equal to the formula
  above but finite when a probability underflows to 0 in float32.
- The evaluation rows of phase 1 are the phase-1 network's (trained on noisy labels); they count for the
  best-clean-epoch selection like any other epoch.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ebomlc.config import ConfigError, TrialConfig
from ebomlc.methods.base import Batch, Method, MethodContext


def estimate_corruption_matrix(probs: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """GLC's C-hat: (K, K), row i the mean of `probs` over the trusted samples whose clean label is i.

    probs: (M, K) softmax outputs p-hat(y~ | x) of the phase-1 network on the trusted set D, rows summing
    to 1; labels: (M,) their clean labels. C-hat[i, j] estimates P(noisy label = j | true label = i); every
    row with at least one sample sums to 1, a class without samples gets a zero row.
    """
    one_hot = F.one_hot(labels, num_classes).to(probs.dtype)              # (M, K)
    counts = one_hot.sum(dim=0).clamp(min=1)                                 # (K,)
    return (one_hot.T @ probs) / counts[:, None]


def gold_corrected_loss(logits: Tensor, y: Tensor, trusted: Tensor, corruption: Tensor) -> Tensor:
    """Mean over the batch of GLC's phase-2 loss: CE on trusted samples, the C-hat-corrected CE otherwise.

    logits: (B, K) scores f(x); y: (B,) given labels (clean where trusted, noisy elsewhere); trusted: (B,)
    bool; corruption: (K, K) C-hat. Untrusted sample: -log sum_j softmax(f(x))_j C-hat[j, y], the
    likelihood of the noisy label under p(y~ | x) = sum_j p(y = j | x) P(y~ | y = j).
    """
    log_probs = F.log_softmax(logits, dim=1)                                 # (B, K)
    clean_loss = -log_probs.gather(1, y[:, None]).squeeze(1)                 # (B,)
    log_columns = torch.log(corruption.T[y])                                 # (B, K): log C-hat[j, y_b]
    noisy_loss = -torch.logsumexp(log_probs + log_columns, dim=1)            # (B,)
    return torch.where(trusted, clean_loss, noisy_loss).mean()


class GLC(Method):
    name = "glc"
    options = {"phase1_fraction": 0.5}   # share of the epochs spent in phase 1 (training on D' alone)
    sampling = "noisy"                   # phase 1; phase 2 switches to "union"

    def __init__(self, ctx: MethodContext):
        super().__init__(ctx)
        c = self.config
        self.phase1_epochs = min(max(1, round(c.options["phase1_fraction"] * c.epochs)), c.epochs - 1)
        self.scheduler = self.ctx.main_scheduler(self.optimizer, self.phase1_epochs)
        self.initial_weights: dict[str, Tensor] | None = {k: v.clone() for k, v in self.model.state_dict().items()}
        self.corruption: Tensor | None = None    # C-hat, (K, K), from the start of phase 2

    @classmethod
    def validate_options(cls, config: TrialConfig) -> None:
        fraction = config.options["phase1_fraction"]
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
            raise ConfigError(f"option phase1_fraction must be in (0, 1), got {fraction!r}")
        if config.epochs < 2:
            raise ConfigError(f"glc needs epochs >= 2 (one per phase at least), got {config.epochs}")

    def on_epoch_start(self, epoch: int) -> None:
        if epoch == self.phase1_epochs:
            self.start_phase2()

    def start_phase2(self) -> None:
        """C-hat from the phase-1 network on D, then restart from the initial weights with a fresh schedule."""
        self.model.train(False)
        with torch.no_grad():
            probs = torch.cat([F.softmax(self.model(x)[0], dim=1) for _, x in self.ctx.batches(self.ctx.clean_x)])
        self.corruption = estimate_corruption_matrix(probs, self.ctx.clean_y, self.ctx.num_classes)
        self.model.load_state_dict(self.initial_weights)
        self.model.train(True)
        self.initial_weights = None
        self.optimizer = self.ctx.main_optimizer(self.model.parameters())
        self.scheduler = self.ctx.main_scheduler(self.optimizer, self.config.epochs - self.phase1_epochs)
        self.sampling = "union"

    def step(self, noisy: Batch, clean: Batch | None) -> dict[str, Tensor]:
        logits, _ = self.model(noisy.x)                                       # (B, K)
        if self.corruption is None:                                           # phase 1: noisy labels as given
            loss = F.cross_entropy(logits, noisy.y)
        else:                                                                 # phase 2: D ∪ D' with C-hat
            loss = gold_corrected_loss(logits, noisy.y, noisy.trusted, self.corruption)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return {"loss": loss.detach()}

    def extra_state(self) -> dict[str, Any]:
        return {"initial_weights": self.initial_weights, "corruption": self.corruption}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.initial_weights = state["initial_weights"]
        self.corruption = state["corruption"]
