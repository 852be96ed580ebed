"""DivideMix: noisy labels as semi-supervised learning (Li, Socher & Hoi, ICLR 2020), their Algorithm 1.

Two networks. After `warmup_epochs` of plain cross-entropy, every epoch starts with co-divide:
  - each network's per-sample CE on D' (evaluation mode), min-max normalised to [0, 1], is fitted by a
    two-component 1-D Gaussian mixture; w_i = posterior of the lower-mean component ("clean probability",
    `gmm_clean_probability`);
  - samples with w_i > p_threshold form the labelled set X, the others the unlabelled set U; network 1
    trains on network 2's division and vice versa.
Each step then trains each network k once on a labelled batch (x, y, w) and an unlabelled batch u:
  - label co-refinement: p_x = w * onehot(y) + (1 - w) * softmax(f_k(x)), sharpened with temperature T;
  - label co-guessing: q_u = mean of softmax(f_1(u)), softmax(f_2(u)), sharpened with T;
  - MixMatch: lambda ~ Beta(alpha, alpha), lambda' = max(lambda, 1 - lambda); the batch [x; u] with
    targets [p_x; q_u] is mixed with a random permutation of itself: x~ = lambda' a + (1 - lambda') b;
  - loss = L_X (soft CE on the mixed labelled part) + lambda_u(t) L_U (mean squared error on the mixed
    unlabelled part) + sum_k pi_k log(pi_k / mean softmax_k) (uniform prior pi, the penalty of their code),
    with lambda_u(t) = lambda_u * clip((t - warmup_epochs) / 16, 0, 1), t = epoch + step / steps_per_epoch.
Evaluation: the ensemble, log of the mean of the two networks' softmax.

Facts from the authors' code (LiJunnan1992/DivideMix, Train_CIFAR.py) and the choices made here:
- Defaults: warm-up 10 epochs on CIFAR-10 (and the synthetic data), 30 on CIFAR-100 (None selects
  these); lambda_u = 25 (their code's default; their README uses 0-150 per noise setting), p_threshold
  0.5, T = 0.5, alpha = 4. The warm-up adds the negative-entropy confidence penalty for asymmetric noise
  (their `conf_penalty`): `confidence_penalty` None turns it on for noise flip/pairflip only.
- GMM: a 1-D EM written in torch on the device (`gmm_clean_probability`), run once per epoch per network
  on the N losses, in float64: initial responsibilities from splitting at the mean (a one-step 2-means;
  sklearn starts from k-means), then 10 EM iterations with 5e-4 added to the variances, as their
  GaussianMixture(max_iter=10, reg_covar=5e-4), without its early stop at tol=1e-2. Why not sklearn: it
  is deterministic (sklearn's k-means start is unseeded in their code), needs no copy to the host and no
  extra dependency. Their averaging of the last 5 epochs' losses for 90% noise is not done.
- No data augmentation (Sec. VI-A of the paper under reproduction). DivideMix's two augmented views of
  an image are then the same image, so one view is used: co-refinement averages one prediction instead
  of two, co-guessing two (one per network) instead of four, and the mixed batch is [x; u] (2B) instead
  of [x; x2; u; u2] (4B), whose duplicates would only repeat identical rows with other mix partners.
- Trusted set: DivideMix has none; here the clean set D joins the labelled set of every epoch with
  w = 1 (its labels are known to be right), and the GMM is fitted on D' only. Warm-up trains on D ∪ D'
  ("union" sampling, one batch shared by both networks; their warm-up loader is shuffled once per network).
- Steps: one step trains both networks once (net 1 then net 2, net 2 seeing the already updated net 1, as
  in their epoch order), and an epoch has the trainer's |D ∪ D'| / B steps whatever the split (they run
  |X| / B + 1 iterations per network). Labelled and unlabelled batches (B each) are drawn in
  `on_epoch_start` as consecutive slices of permutations of each pool, cycled as needed, with the
  method's generator; the trainer's batch is only used during warm-up.
- An empty unlabelled pool (every sample of D' above the threshold, which their loaders cannot handle)
  falls back to drawing unlabelled batches from all of D'.
- The network being trained is in training mode for its no-gradient forwards (so its BatchNorm records
  them) and the other network in evaluation mode, as in their `train()`.
- The split is recomputed in `on_epoch_start` from the networks and the generator, so a trial resumed at
  an epoch boundary redraws it exactly; it is also in the state, for a resume between two steps.
- Their test sums the two networks' logits; the mean of the softmaxes used here has the same argmax
  except for near-ties and gives a proper probability for the test loss.
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ebomlc.config import ConfigError, TrialConfig
from ebomlc.methods.base import Batch, EvalOutput, Method, MethodContext

RAMPUP_EPOCHS = 16     # lambda_u ramp length after the warm-up (their `linear_rampup`)
GMM_ITERATIONS = 10    # EM iterations (their max_iter)
GMM_REG_COVAR = 5e-4   # added to the variances (their reg_covar)


def gmm_clean_probability(values: Tensor, iterations: int = GMM_ITERATIONS, reg_covar: float = GMM_REG_COVAR) -> Tensor:
    """(N,) posterior probability of the lower-mean component of a two-Gaussian mixture fitted to `values`.

    values: (N,) float, here normalised losses in [0, 1]. EM from responsibilities given by a split at the
    mean, `iterations` E/M rounds after the first M-step, then the posterior under the final parameters.
    """
    x = values.double()[:, None]                                             # (N, 1)
    low = (x <= x.mean()).double()
    resp = torch.cat([low, 1 - low], dim=1)                                  # (N, 2)
    eps = 10 * torch.finfo(torch.float64).eps
    for _ in range(iterations + 1):
        counts = resp.sum(0) + eps                                           # (2,)  M-step
        means = (resp * x).sum(0) / counts
        variances = (resp * (x - means) ** 2).sum(0) / counts + reg_covar
        log_joint = (torch.log(counts / len(x)) - 0.5 * torch.log(2 * math.pi * variances)
                     - 0.5 * (x - means) ** 2 / variances)                   # (N, 2)  E-step
        resp = torch.softmax(log_joint, dim=1)
    return resp.gather(1, means.argmin().expand(len(x), 1)).squeeze(1).to(values.dtype)


def sharpen(probs: Tensor, temperature: float) -> Tensor:
    """(B, K) distributions raised to 1/T and renormalised (MixMatch's sharpening)."""
    powered = probs ** (1 / temperature)
    return powered / powered.sum(dim=1, keepdim=True)


class Division(NamedTuple):
    """One network's training division for an epoch; indices point into D ∪ D' (D' first)."""
    labelled: Tensor      # (steps, B) int64: labelled batches
    unlabelled: Tensor    # (steps, B) int64: unlabelled batches
    weight: Tensor        # (N + M,) clean probability w (1 on D)


class DivideMix(Method):
    name = "dividemix"
    options = {"warmup_epochs": None,       # epochs of plain CE first; None: 10 (CIFAR-10, synthetic), 30 (CIFAR-100)
               "lambda_u": 25.0,            # weight of the unlabelled loss after its ramp
               "p_threshold": 0.5,          # clean-probability threshold of the labelled set
               "temperature": 0.5,          # sharpening temperature T
               "alpha": 4.0,                # Beta(alpha, alpha) of MixMatch's mixup
               "confidence_penalty": None}  # warm-up negative-entropy penalty; None: on for flip/pairflip noise
    sampling = "union"

    def __init__(self, ctx: MethodContext):
        super().__init__(ctx)
        c, o = self.config, self.config.options
        self.model2 = ctx.build_model()
        self.optimizer2 = ctx.main_optimizer(self.model2.parameters())
        self.scheduler2 = ctx.main_scheduler(self.optimizer2)
        self.warmup_epochs = o["warmup_epochs"]
        if self.warmup_epochs is None:
            self.warmup_epochs = 30 if c.dataset == "cifar100" else 10
        self.confidence_penalty = o["confidence_penalty"]
        if self.confidence_penalty is None:
            self.confidence_penalty = c.noise in ("flip", "pairflip")
        self.union_x = torch.cat([ctx.noisy_x, ctx.clean_x])                  # (N + M, C, H, W) uint8
        self.union_y = torch.cat([ctx.noisy_y, ctx.clean_y])
        self.divisions: tuple[Division, Division] | None = None              # (net 1's, net 2's); None in warm-up
        self.split_fraction = 0.0                                             # share of D' labelled, both nets
        self.epoch = 0
        self.step_in_epoch = 0

    @classmethod
    def validate_options(cls, config: TrialConfig) -> None:
        o = config.options
        warmup = o["warmup_epochs"]
        if warmup is not None and (isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0):
            raise ConfigError(f"option warmup_epochs must be an integer >= 0 or None (the dataset's default), got {warmup!r}")
        rules = {"lambda_u": (lambda v: v >= 0, ">= 0"), "p_threshold": (lambda v: 0 < v < 1, "in (0, 1)"),
                 "temperature": (lambda v: v > 0, "> 0"), "alpha": (lambda v: v > 0, "> 0")}
        for name, (rule, text) in rules.items():
            value = o[name]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not rule(value):
                raise ConfigError(f"option {name} must be {text}, got {value!r}")
        if o["confidence_penalty"] not in (None, True, False):
            raise ConfigError(f"option confidence_penalty must be true, false or None (on for flip noise), "
                              f"got {o['confidence_penalty']!r}")

    # ---------------------------------------------------------------- co-divide (once per epoch)

    def on_epoch_start(self, epoch: int) -> None:
        self.epoch, self.step_in_epoch = epoch, 0
        if epoch < self.warmup_epochs:
            self.divisions = None
            return
        probs = [self.clean_probability(net) for net in (self.model, self.model2)]     # (N,) each
        threshold = self.config.options["p_threshold"]
        self.divisions = (self.divide(probs[1]), self.divide(probs[0]))                  # co-divide
        self.split_fraction = torch.stack([(p > threshold).double().mean() for p in probs]).mean().item()

    @torch.no_grad()
    def clean_probability(self, net: nn.Module) -> Tensor:
        """(N,) GMM clean probability of every sample of D' from `net`'s normalised CE (evaluation mode)."""
        net.train(False)
        losses = torch.cat([F.cross_entropy(net(x)[0], self.ctx.noisy_y[start:start + len(x)], reduction="none")
                            for start, x in self.ctx.batches(self.ctx.noisy_x)])
        net.train(True)
        losses = (losses - losses.min()) / (losses.max() - losses.min()).clamp_min(torch.finfo(losses.dtype).tiny)
        return gmm_clean_probability(losses)

    def divide(self, prob: Tensor) -> Division:
        """The epoch's labelled/unlabelled batches from one network's clean probabilities on D'."""
        n, m = len(self.ctx.noisy_y), len(self.ctx.clean_y)
        selected = prob > self.config.options["p_threshold"]
        labelled = torch.cat([selected.nonzero().squeeze(1), torch.arange(n, n + m, device=prob.device)])
        unlabelled = (~selected).nonzero().squeeze(1)
        if len(unlabelled) == 0:
            unlabelled = torch.arange(n, device=prob.device)
        weight = torch.cat([prob, torch.ones(m, dtype=prob.dtype, device=prob.device)])
        return Division(self.draws(labelled), self.draws(unlabelled), weight)

    def draws(self, pool: Tensor) -> Tensor:
        """(steps, B) samples of `pool`: consecutive slices of fresh permutations of it, cycled as needed."""
        steps, size = self.ctx.steps_per_epoch, self.config.batch_size
        rounds = -(-steps * size // len(pool))
        g = self.ctx.generator
        order = torch.cat([pool[torch.randperm(len(pool), generator=g, device=pool.device)] for _ in range(rounds)])
        return order[:steps * size].view(steps, size)

    def on_epoch_end(self, epoch: int) -> dict[str, float]:
        self.scheduler.step()
        self.scheduler2.step()
        return {} if self.divisions is None else {"clean_split_fraction": self.split_fraction}

    # ---------------------------------------------------------------- training

    def step(self, noisy: Batch, clean: Batch | None) -> dict[str, Tensor]:
        if self.divisions is None:
            return self.warmup_step(noisy)
        i = self.step_in_epoch % self.ctx.steps_per_epoch      # wraps if stepped more often (the step-cost benchmark)
        self.step_in_epoch += 1
        progress = self.epoch + i / self.ctx.steps_per_epoch
        loss1 = self.train_network(self.model, self.model2, self.optimizer, self.divisions[0], i, progress)
        loss2 = self.train_network(self.model2, self.model, self.optimizer2, self.divisions[1], i, progress)
        return {"loss": (loss1 + loss2) / 2}

    def warmup_step(self, batch: Batch) -> dict[str, Tensor]:
        """Cross-entropy on the given labels for both networks (plus the confidence penalty if on)."""
        total, ce = 0.0, 0.0
        for net in (self.model, self.model2):
            logits, _ = net(batch.x)                                          # (B, K)
            loss = F.cross_entropy(logits, batch.y)
            ce = ce + loss.detach() / 2
            if self.confidence_penalty:                                       # mean negative entropy
                loss = loss + (F.softmax(logits, 1) * F.log_softmax(logits, 1)).sum(1).mean()
            total = total + loss
        self.optimizer.zero_grad(set_to_none=True)
        self.optimizer2.zero_grad(set_to_none=True)
        total.backward()
        self.optimizer.step()
        self.optimizer2.step()
        return {"loss": ce}

    def train_network(self, net: nn.Module, other: nn.Module, optimizer: torch.optim.Optimizer, division: Division,
                      i: int, progress: float) -> Tensor:
        """One MixMatch step of `net` on its division's i-th labelled and unlabelled batches; returns the loss."""
        o, k, g = self.config.options, self.ctx.num_classes, self.ctx.generator
        labelled, unlabelled = division.labelled[i], division.unlabelled[i]        # (B,), (B,)
        x, u = self.ctx.normalize(self.union_x[labelled]), self.ctx.normalize(self.union_x[unlabelled])
        w = division.weight[labelled][:, None]                                     # (B, 1) clean probability
        size = len(labelled)

        with torch.no_grad():
            other.train(False)
            guess = (F.softmax(net(u)[0], 1) + F.softmax(other(u)[0], 1)) / 2    # co-guessing, (B, K)
            other.train(True)
            refined = w * F.one_hot(self.union_y[labelled], k) + (1 - w) * F.softmax(net(x)[0], 1)   # co-refinement
            targets = torch.cat([sharpen(refined, o["temperature"]), sharpen(guess, o["temperature"])])  # (2B, K)

        # MixMatch: mix [x; u] and its targets with a permutation of themselves, lambda' = max(lambda, 1 - lambda)
        gammas = torch._standard_gamma(torch.full((2,), float(o["alpha"]), device=x.device), generator=g)
        lam = gammas[0] / gammas.sum()                                             # ~ Beta(alpha, alpha)
        lam = torch.maximum(lam, 1 - lam)
        inputs = torch.cat([x, u])                                                 # (2B, C, H, W)
        partner = torch.randperm(2 * size, generator=g, device=x.device)
        mixed_inputs = lam * inputs + (1 - lam) * inputs[partner]
        mixed_targets = lam * targets + (1 - lam) * targets[partner]

        logits, _ = net(mixed_inputs)                                              # (2B, K)
        labelled_loss = -(mixed_targets[:size] * F.log_softmax(logits[:size], 1)).sum(1).mean()
        unlabelled_loss = ((F.softmax(logits[size:], 1) - mixed_targets[size:]) ** 2).mean()
        ramp = min(max((progress - self.warmup_epochs) / RAMPUP_EPOCHS, 0.0), 1.0)
        mean_prediction = F.softmax(logits, 1).mean(0)                              # (K,)
        penalty = (torch.log(1 / (k * mean_prediction)) / k).sum()                 # sum_k pi_k log(pi_k / p_k)
        loss = labelled_loss + o["lambda_u"] * ramp * unlabelled_loss + penalty

        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()

    # ---------------------------------------------------------------- state

    def extra_state(self) -> dict[str, Any]:
        """The epoch's divisions and position: `on_epoch_start` recomputes them from the networks, so only a
        resume between two steps of an epoch needs them."""
        divisions = None if self.divisions is None else [tuple(d) for d in self.divisions]   # plain tensors
        return {"divisions": divisions, "split_fraction": self.split_fraction, "epoch": self.epoch,
                "step_in_epoch": self.step_in_epoch}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        divisions = state["divisions"]
        self.divisions = None if divisions is None else tuple(Division(*d) for d in divisions)
        self.split_fraction, self.epoch, self.step_in_epoch = state["split_fraction"], state["epoch"], state["step_in_epoch"]

    # ---------------------------------------------------------------- evaluation

    @torch.no_grad()
    def evaluate(self, x: Tensor, y: Tensor) -> EvalOutput:
        log_probs = torch.stack([F.log_softmax(self.model(x)[0], 1), F.log_softmax(self.model2(x)[0], 1)])
        return EvalOutput(torch.logsumexp(log_probs, 0) - math.log(2), None)    # log of the mean softmax
