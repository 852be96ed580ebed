"""run_trial: the trainable core. One method, one dataset/noise setting, one seed; CPU or GPU.

    from ebomlc.config import TrialConfig
    from ebomlc.train import run_trial
    summary = run_trial(TrialConfig(method="ebomlc", dataset="synthetic", epochs=5))

`report(metrics, state)` is called after every epoch with that epoch's row and everything needed to
continue exactly (`run_trial(config, report, resume_state=state)`); the CLI prints it, the Ray
trainable turns it into `tune.report` + a checkpoint. Reproducibility: the batch order of an epoch is
a function of (seed, epoch) alone, model initialisation of the seed, and a method's own randomness of
its generator, which travels in the state; so the same seed gives the same numbers on CPU, with or
without a resume at any epoch.
"""
from __future__ import annotations

import copy
import ctypes
import ctypes.util
import math
import time
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor

import ebomlc
from ebomlc.config import ConfigError, TrialConfig
from ebomlc.data import TrialData, build_trial_data, check_data
from ebomlc.methods import METHODS, Batch, Method, MethodContext
from ebomlc.models import MetaLabelCorrector, build_resnet
from ebomlc.results import check_epoch_row, config_columns

Report = Callable[[dict[str, Any], dict[str, Any]], None]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device='cuda' but no CUDA device is visible; use --device cpu or auto")
    return torch.device(name)


def keep_freed_cpu_memory() -> bool:
    """CPU training: make glibc keep freed memory in the process instead of handing it back to the OS.

    Every step frees and re-allocates its activations (tens of MB). With glibc's defaults, large blocks
    get fresh mappings and the heap is trimmed, so each step pays tens of thousands of page faults, more
    for methods with more passes (8% of an EBOMLC ResNet-32 step on 2 cores: benchmarks/step_cost.py).
    A 32 MiB mmap threshold and a 1 GiB trim threshold keep the memory for reuse, as a GPU's caching
    allocator does. Process-wide and idempotent; returns False (nothing changed) without glibc.
    """
    name = ctypes.util.find_library("c")
    if name is None or "libc.so" not in name:
        return False
    libc = ctypes.CDLL(name)
    if not hasattr(libc, "mallopt"):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(libc.mallopt(m_mmap_threshold, 32 * 2**20) and libc.mallopt(m_trim_threshold, 2**30))


def prepare(config: TrialConfig) -> TrialConfig:
    """Validate the config and check that its data exists: every cheap check, before any work."""
    config = config.validated()
    check_data(config)
    resolve_device(config.device)
    return config


# ---------------------------------------------------------------- batches (all on the device)

def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(1_000_003 * seed + epoch)


def epoch_batches(method: Method, data: "DeviceData", epoch: int, seed: int):
    """Yield (noisy, clean) batches for one epoch as the method's sampling mode asks.

    One permutation per epoch is drawn on the host from (seed, epoch) and moved to the device once;
    batches are slices of it, so there is no per-batch host work. Batches have equal sizes (the last
    incomplete one is dropped; a set smaller than a batch gives one batch of all of it).
    """
    config = method.config
    g = _epoch_generator(seed, epoch)
    if method.sampling == "union":
        n, m = len(data.noisy_y), len(data.clean_y)
        order = torch.randperm(n + m, generator=g).to(data.device)
        union_x, union_y = data.union()
        for index in _slices(order, config.batch_size):
            yield Batch(data.normalize(union_x[index]), union_y[index], index, index >= n), None
        return
    order = torch.randperm(len(data.noisy_y), generator=g).to(data.device)
    noisy_slices = list(_slices(order, config.batch_size))
    clean_order = None
    if method.sampling == "paired":
        # clean batches cycle through fresh permutations of D for as long as the epoch needs
        m, size = len(data.clean_y), min(config.clean_batch_size, len(data.clean_y))
        per_perm = m // size
        perms = -(-len(noisy_slices) // per_perm)
        clean_order = torch.cat([torch.randperm(m, generator=g)[:per_perm * size] for _ in range(perms)]).to(data.device)
    for i, index in enumerate(noisy_slices):
        noisy = Batch(data.normalize(data.noisy_x[index]), data.noisy_y[index], index)
        clean = None
        if clean_order is not None:
            clean_index = clean_order[i * size:(i + 1) * size]
            clean = Batch(data.normalize(data.clean_x[clean_index]), data.clean_y[clean_index], clean_index)
        yield noisy, clean


def _slices(order: Tensor, size: int):
    if len(order) <= size:
        yield order
        return
    for start in range(0, len(order) - size + 1, size):
        yield order[start:start + size]


def steps_per_epoch(method_sampling: str, num_noisy: int, num_clean: int, batch_size: int) -> int:
    n = num_noisy + num_clean if method_sampling == "union" else num_noisy
    return max(1, n // batch_size)


class DeviceData:
    """TrialData moved to the device once, with the normaliser (uint8 -> float, per-channel).

    The training images move as one tensor (D', D, validation part; see TrialData) and the sets are
    slices of it, D' and D together too (`union`), so no image is held twice on the device.
    """

    def __init__(self, data: TrialData, device: torch.device):
        self.device = device
        n, m = len(data.noisy_y), len(data.clean_y)
        self.train_x = data.train_x.to(device)
        self.noisy_x, self.clean_x, self.val_x = self.train_x[:n], self.train_x[n:n + m], self.train_x[n + m:]
        for name in ("clean_y", "val_y", "noisy_y", "noisy_true_y", "test_x", "test_y"):
            setattr(self, name, getattr(data, name).to(device))
        self.mean = torch.tensor(data.mean, device=device).view(1, -1, 1, 1) * 255
        self.std = torch.tensor(data.std, device=device).view(1, -1, 1, 1) * 255

    def union(self) -> tuple[Tensor, Tensor]:
        """Images and given labels of D' followed by D (the images a slice, the labels built once)."""
        if not hasattr(self, "_union_y"):
            self._union_y = torch.cat([self.noisy_y, self.clean_y])
        return self.train_x[:len(self._union_y)], self._union_y

    def normalize(self, x: Tensor) -> Tensor:
        return (x.float() - self.mean) / self.std


# ---------------------------------------------------------------- evaluation

@torch.no_grad()
def evaluate_set(method: Method, ctx: MethodContext, x: Tensor, y_given: Tensor, y_true: Tensor | None = None,
                 with_clean_metrics: bool = False) -> dict[str, Tensor]:
    """Sums over one set: correct predictions (vs y_true, default y_given), CE, and with a meta model the
    lower loss G (Eq. 3) and the corrected labels. Values stay on the device."""
    y_true = y_given if y_true is None else y_true
    k = ctx.num_classes
    sums: dict[str, Tensor] = {}
    corrected_labels = []

    def add(name, value):
        sums[name] = sums[name] + value if name in sums else value

    for start, xb in ctx.batches(x):
        yb, tb = y_given[start:start + len(xb)], y_true[start:start + len(xb)]
        out = method.evaluate(xb, yb)
        add("correct", (out.logits.argmax(1) == tb).sum())
        add("agree_given", (out.logits.argmax(1) == yb).sum())
        add("ce", F.cross_entropy(out.logits, tb, reduction="sum"))
        if out.corrected is not None:
            # Eq. (3): soft cross-entropy between the main model and the corrected label distribution
            add("lower", -(out.corrected * F.log_softmax(out.logits, 1)).sum())
            corrected_labels.append(out.corrected.argmax(1))
            # soft correction: the probability g_alpha gives the true label, summed over corrupted samples
            add("lc_true_prob_corrupted", (out.corrected.gather(1, tb[:, None]).squeeze(1) * (yb != tb)).sum())
        if with_clean_metrics:
            for name, value in method.clean_metrics(out.logits, out.corrected, yb).items():
                add("extra:" + name, value)
    if corrected_labels:
        corrected = torch.cat(corrected_labels)
        sums["confusion"] = torch.bincount(y_true * k + corrected, minlength=k * k).view(k, k)  # rows: true
        corrupted = y_given != y_true
        right = corrected == y_true
        sums["lc_correct_corrupted"] = (right & corrupted).sum()
        sums["lc_correct_uncorrupted"] = (right & ~corrupted).sum()
        sums["num_corrupted"] = corrupted.sum()
    return sums


def evaluate_epoch(method: Method, ctx: MethodContext, data: DeviceData) -> tuple[dict[str, float], Tensor | None]:
    """The epoch's evaluation metrics (one host sync at the end) and the label-correction confusion."""
    method.train(False)
    test = evaluate_set(method, ctx, data.test_x, data.test_y)
    clean = evaluate_set(method, ctx, data.clean_x, data.clean_y, with_clean_metrics=True)
    noisy = evaluate_set(method, ctx, data.noisy_x, data.noisy_y, data.noisy_true_y)
    val = evaluate_set(method, ctx, data.val_x, data.val_y) if len(data.val_y) else None
    method.train(True)

    n_test, n_clean, n_noisy = len(data.test_y), len(data.clean_y), len(data.noisy_y)
    row = {
        "test_acc": test["correct"] / n_test, "test_loss": test["ce"] / n_test,
        "clean_acc": clean["correct"] / n_clean, "upper_loss": clean["ce"] / n_clean,
        "noisy_true_acc": noisy["correct"] / n_noisy, "noisy_label_acc": noisy["agree_given"] / n_noisy,
    }
    for name, value in clean.items():
        if name.startswith("extra:"):
            row[name[len("extra:"):]] = value / n_clean    # method extras, e.g. EBOMLC's mixture loss
    if val is not None:
        row["val_acc"], row["val_loss"] = val["correct"] / len(data.val_y), val["ce"] / len(data.val_y)
    confusion = None
    if "confusion" in noisy:
        confusion = noisy["confusion"]
        corrupted = noisy["num_corrupted"]
        row["lower_loss"] = noisy["lower"] / n_noisy
        row["lc_acc"] = confusion.diagonal().sum() / n_noisy
        row["lc_acc_corrupted"] = noisy["lc_correct_corrupted"] / corrupted.clamp(min=1)
        row["lc_acc_uncorrupted"] = noisy["lc_correct_uncorrupted"] / (n_noisy - corrupted).clamp(min=1)
        row["lc_true_prob_corrupted"] = noisy["lc_true_prob_corrupted"] / corrupted.clamp(min=1)
    values = torch.stack([torch.as_tensor(v, dtype=torch.float64, device=data.device) for v in row.values()]).tolist()
    return dict(zip(row, values)), (confusion.cpu() if confusion is not None else None)


# ---------------------------------------------------------------- the trial

def _step_summary(sums: dict[str, Tensor], maxes: dict[str, Tensor], steps: int) -> dict[str, float]:
    """Step metrics of an epoch: `loss` -> train_loss, `*_max` -> max over steps, others -> `<name>_mean`."""
    names = [("train_loss" if k == "loss" else f"{k}_mean") for k in sums] + list(maxes)
    values = [v / steps for v in sums.values()] + list(maxes.values())
    if not values:
        return {}
    return dict(zip(names, torch.stack([v.double() for v in values]).tolist()))


def select_best_epoch(history: list[dict[str, Any]]) -> dict[str, Any]:
    """MLC's protocol: the epoch of best clean-validation accuracy (the validation part of D when there is
    one, else D), ties broken by the lower clean loss; returns that epoch's row."""
    key = "val_acc" if history[0].get("val_acc") is not None else "clean_acc"
    loss = "val_loss" if key == "val_acc" else "upper_loss"
    return max(history, key=lambda row: (row[key], -row[loss]))


def run_trial(config: TrialConfig, report: Report | None = None,
              resume_state: dict[str, Any] | None = None, progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Train one trial; returns its summary row (the `trials` schema of ebomlc.results, less node/experiment).

    `progress(n)` is called with the number of steps done (for progress bars). A trial whose training loss
    becomes NaN/inf stops with status "diverged" and the epoch; its accuracies are left empty.
    """
    started = time.perf_counter()
    config = prepare(config)
    device = resolve_device(config.device)
    trial_data = build_trial_data(config)
    data = DeviceData(trial_data, device)
    if device.type == "cpu":
        keep_freed_cpu_memory()        # after loading: its temporaries go back to the OS, not into the heap

    torch.manual_seed(config.seed)  # model initialisation
    method_class = METHODS[config.method]
    num_classes = trial_data.num_classes

    def build_model():
        return build_resnet(config.model, num_classes, config.width).to(device)

    def build_meta_model():
        return MetaLabelCorrector(4 * config.width, num_classes,
                                  embedding_init=config.options["meta_embedding_init"]).to(device)

    ctx = MethodContext(
        config=config, num_classes=num_classes, device=device,
        steps_per_epoch=steps_per_epoch(method_class.sampling, len(data.noisy_y), len(data.clean_y), config.batch_size),
        noisy_x=data.noisy_x, noisy_y=data.noisy_y, clean_x=data.clean_x, clean_y=data.clean_y,
        normalize=data.normalize, build_model=build_model, build_meta_model=build_meta_model,
        generator=torch.Generator(device=device).manual_seed(config.seed),
    )
    method = method_class(ctx)

    history: list[dict[str, Any]] = []
    start_epoch, train_time, confusion = 0, 0.0, None
    if resume_state is not None:
        method.load_state_dict(resume_state["method"])
        history = list(resume_state["history"])
        start_epoch = resume_state["epoch"] + 1
        train_time = resume_state["train_time_s"]
        confusion = resume_state["confusion"]
        torch.set_rng_state(resume_state["torch_rng"])

    identity = {"trial_id": config.trial_id(), "dataset": config.dataset, "method": config.method,
                "noise": config.noise, "noise_rate": config.noise_rate, "seed": config.seed,
                "rho": config.rho, "xi": config.xi, "delta": config.delta, "k": config.k}
    status, diverged_epoch = "ok", None
    for epoch in range(start_epoch, config.epochs):
        # train
        t0 = time.perf_counter()
        method.on_epoch_start(epoch)
        lr = method.lr
        method.train(True)
        sums: dict[str, Tensor] = {}
        maxes: dict[str, Tensor] = {}
        steps = 0
        for noisy, clean in epoch_batches(method, data, epoch, config.seed):
            for name, value in method.step(noisy, clean).items():
                if name.endswith("_max"):
                    maxes[name] = torch.maximum(maxes[name], value) if name in maxes else value
                else:
                    sums[name] = sums[name] + value if name in sums else value
            steps += 1
            if progress is not None:
                progress(1)
        epoch_extra = method.on_epoch_end(epoch)
        row = {**identity, "epoch": epoch, "lr": lr, **_step_summary(sums, maxes, steps), **epoch_extra}
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        row["epoch_time_s"] = time.perf_counter() - t0
        train_time += row["epoch_time_s"]

        # a diverged trial stops here: its numbers are not accuracies
        if not math.isfinite(row.get("train_loss", 0.0)):
            status, diverged_epoch = "diverged", epoch
            history.append(row)
            break

        # evaluate
        metrics, epoch_confusion = evaluate_epoch(method, ctx, data)
        confusion = epoch_confusion if epoch_confusion is not None else confusion
        row.update(metrics)
        check_epoch_row(row)
        history.append(row)

        # report
        if report is not None:
            # a snapshot: module state_dicts alias the live tensors, which the next epoch changes
            state = copy.deepcopy({"epoch": epoch, "method": method.state_dict(), "history": history,
                                   "train_time_s": train_time, "confusion": confusion,
                                   "torch_rng": torch.get_rng_state(), "config": config.to_dict()})
            report(row, state)

    summary = summarize(config, trial_data, history, status, diverged_epoch, confusion, train_time, device)
    summary["wall_time_s"] = time.perf_counter() - started
    return summary


def summarize(config: TrialConfig, data: TrialData, history: list[dict[str, Any]], status: str,
              diverged_epoch: int | None, confusion: Tensor | None, train_time: float, device: torch.device) -> dict:
    """The trial's row of the `trials` table."""
    row: dict[str, Any] = {
        "trial_id": config.trial_id(), "status": status, "error": None, "diverged_epoch": diverged_epoch,
        **config_columns(config.to_dict()),
        "num_classes": data.num_classes, "num_clean": len(data.clean_y), "num_val": len(data.val_y),
        "num_noisy": len(data.noisy_y), "realised_noise_rate": data.realised_noise_rate,
        "epochs_done": len(history), "train_time_s": train_time,
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "ebomlc_version": ebomlc.__version__, "torch_version": torch.__version__,
        "label_correction_confusion": confusion.flatten().tolist() if confusion is not None else None,
        "test_acc_at_best_clean_epoch": None, "best_clean_epoch": None, "test_acc_last": None,
        "test_acc_max": None, "lc_acc_last": None,
    }
    if status == "ok" and history:
        best = select_best_epoch(history)
        row.update(test_acc_at_best_clean_epoch=best["test_acc"], best_clean_epoch=best["epoch"],
                   test_acc_last=history[-1]["test_acc"], test_acc_max=max(r["test_acc"] for r in history),
                   lc_acc_last=history[-1].get("lc_acc"))
    return row
