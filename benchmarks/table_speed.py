"""How long the tables take on a large results folder: 100,000 epoch rows and their trials.

    python benchmarks/table_speed.py                          # 1,000 trials x 100 epochs, temporary folder
    python benchmarks/table_speed.py --trials-per-cell 20 --epochs 120 --keep results/bench

Writes synthetic rows (2 datasets x 10 methods x 5 noise settings x `--trials-per-cell` seeds, each with
`--epochs` epoch rows; MLC, MLC-D and EBOMLC trials carry their K x K label-correction confusion matrix,
K = 10 / 100, as real ones do) with ebomlc.results.write_trial, one file per trial and table as a sweep writes
them, then times, each on its own: reading the trials, building and printing every dataset's table
(what `python analysis/tables.py --results DIR` does after start-up), reading the epochs (what the figures
read), and the whole `python analysis/tables.py` command in a fresh process; first on the files as a
running sweep leaves them (one per trial), then after `ebomlc.results.compact` (what a finished sweep
leaves: one file per partition). Target: trials + tables < 2 s.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: make `analysis` importable

from analysis import tables  # noqa: E402
from analysis.load import METHOD_NAMES, load  # noqa: E402
from ebomlc.results import compact, write_trial  # noqa: E402

DATASETS = ("cifar10", "cifar100")
CLASSES = {"cifar10": 10, "cifar100": 100}
META_METHODS = ("mlc", "mlc_d", "ebomlc")    # they store a K x K label-correction confusion matrix
RATES = (0.0, 0.2, 0.4, 0.6, 0.8)


class Lap:
    def __init__(self, wall: float, cpu: float):
        self.wall, self.cpu = wall, cpu

    def __add__(self, other: "Lap") -> "Lap":
        return Lap(self.wall + other.wall, self.cpu + other.cpu)

    def __str__(self) -> str:
        return f"{self.wall:.3f}s ({self.cpu:.3f}s CPU)"


class Clock:
    """Wall and process CPU time since the last lap (CPU time shows the cost on a busy machine)."""

    def __init__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def lap(self) -> Lap:
        wall, cpu = time.perf_counter(), time.process_time()
        lap = Lap(wall - self.wall, cpu - self.cpu)
        self.wall, self.cpu = wall, cpu
        return lap


def write_results(root: str, trials_per_cell: int, epochs: int) -> int:
    """Synthetic trials and epochs under `root`; returns the number of epoch rows."""
    rng = np.random.default_rng(0)
    rows = 0
    for dataset in DATASETS:
        for method in METHOD_NAMES:
            hyper = {"rho": 0.2, "xi": 0.5, "delta": 0.25, "k": 1, "mixture": "probs"} if method == "ebomlc" else {}
            for rate in RATES:
                for seed in range(trials_per_cell):
                    trial_id = f"{dataset}-{method}-{rate}-{seed}"
                    acc = rng.uniform(0.3, 0.9, epochs)
                    k = CLASSES[dataset]
                    confusion = rng.integers(0, 500, k * k).tolist() if method in META_METHODS else None
                    trial = {"trial_id": trial_id, "experiment": "bench", "status": "ok", "dataset": dataset,
                             "method": method, "noise": "uniform_any", "noise_rate": rate, "seed": seed,
                             "epochs": epochs, "options": "{}", **hyper,
                             "test_acc_at_best_clean_epoch": float(acc[-10:].mean()), "best_clean_epoch": epochs - 5,
                             "test_acc_last": float(acc[-1]), "test_acc_max": float(acc.max()),
                             "num_classes": k, "label_correction_confusion": confusion, "epochs_done": epochs,
                             "train_time_s": float(rng.uniform(100, 300)), "device_name": "cpu"}
                    epoch_rows = [{"trial_id": trial_id, "experiment": "bench", "dataset": dataset, "method": method,
                                   "noise": "uniform_any", "noise_rate": rate, "seed": seed, "epoch": e, "lr": 0.1,
                                   "train_loss": 2.0 / (e + 1), "test_acc": float(acc[e]), "test_loss": 1.0,
                                   "clean_acc": 0.9, "upper_loss": 1.0 / (e + 1), "lower_loss": 1.5 / (e + 1),
                                   "noisy_true_acc": 0.7, "noisy_label_acc": 0.6, "epoch_time_s": 2.0}
                                  for e in range(epochs)]
                    write_trial(root, trial, epoch_rows)
                    rows += epochs
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials-per-cell", type=int, default=10, help="seeds per (dataset, method, setting)")
    parser.add_argument("--epochs", type=int, default=100, help="epoch rows per trial")
    parser.add_argument("--keep", help="write the results here and keep them (default: a temporary folder)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        root = args.keep or scratch
        started = time.perf_counter()
        rows = write_results(root, args.trials_per_cell, args.epochs)
        trials_written = len(DATASETS) * len(METHOD_NAMES) * len(RATES) * args.trials_per_cell
        print(f"wrote {trials_written} trials and {rows} epoch rows in {time.perf_counter() - started:.1f}s")

        text = None
        for layout in ("one file per trial (a running sweep)", "compacted (a finished sweep)"):
            if layout.startswith("compacted"):
                started = time.perf_counter()
                compact(root)
                print(f"compacted in {time.perf_counter() - started:.1f}s")
            text = time_reads(root, rows, layout, text)
    return 0


def time_reads(root: str, rows: int, layout: str, expected_text: str | None) -> str:
    """Time reading and printing the tables of `root` (see the module docstring); returns the tables' text."""
    clock = Clock()
    trials = load(root, "trials")
    read_trials = clock.lap()
    text = "\n".join(tables.to_markdown(tables.build_table(trials, d)) for d in DATASETS)
    if expected_text is None:
        print(text)
    build = clock.lap()
    epochs = load(root, "epochs", trials=trials)
    read_epochs = clock.lap()
    script = Path(__file__).resolve().parent.parent / "analysis" / "tables.py"
    command = subprocess.run([sys.executable, str(script), "--results", root], capture_output=True, text=True,
                             check=True)
    fresh = clock.lap()
    assert len(epochs) == rows and command.stdout.strip() == text.strip()
    assert expected_text is None or text == expected_text, "compaction changed the tables"
    print(f"\n{layout}: wall seconds (CPU seconds of this process, all threads; the fresh process: wall only)")
    print(f"read trials ({len(trials)} rows): {read_trials}")
    print(f"build + print {len(DATASETS)} tables: {build}")
    print(f"read trials + tables: {read_trials + build} (target < 2 s wall)")
    print(f"read epochs ({len(epochs)} rows, joined to trials): {read_epochs}")
    print(f"`python analysis/tables.py` in a fresh process (start-up and imports included): {fresh.wall:.3f}s")
    return text
    return 0


if __name__ == "__main__":
    sys.exit(main())
