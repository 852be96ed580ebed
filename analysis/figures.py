"""The paper's figures from Parquet results, as PNG files (matplotlib, Agg backend).

    python analysis/figures.py --results results/table1 --out figures
    python analysis/figures.py --results results/ablation --out figures --dataset cifar10

Written per dataset; a figure whose data is absent is skipped with a printed note, never an error:

  dynamics_<dataset>_<setting>.png            Figs. 1, 4, 5: per epoch, the upper loss F on D (Eq. 2,
                                              `upper_loss`), the lower loss G on D' (Eq. 3, `lower_loss`; only
                                              methods with a meta model have it) and the test accuracy; one
                                              line per row (method or variant), mean over seeds, band ± std.
  label_correction_<dataset>_<setting>.png    Figs. 2, 6: the meta model's corrected label (argmax) against the
                                              true label on D' after the last epoch; counts summed over seeds,
                                              each true-label row normalised to sum to 1.
  sensitivity_<p>_<dataset>_<method>.png      Figs. 7b, 8, 9 (right): final test accuracy (test_acc_last) against
                                              p in {k, rho, xi}; one line per noise setting, mean ± std over seeds.
  sensitivity_<p>_epochs_<dataset>_<method>.png  Figs. 7a, 9 (left): loss on the clean set D (`upper_loss`) and
                                              test accuracy per epoch, one line per value of p, a column per setting.

A sensitivity figure uses the trials whose other hyper-parameters sit at their most common values (the
baseline of a one-at-a-time ablation), so a grid over rho and xi is never averaged over the other one;
the number of trials this leaves out is printed. Rows and settings are labelled as in analysis/load.py.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

if __package__ in (None, ""):  # run as `python analysis/figures.py`: make `analysis` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from analysis.load import (DATASET_NAMES, HYPER_FIELDS, METHOD_NAMES, dataset_key, load, ordered_rows,  # noqa: E402
                           ordered_settings, setting_slug)

DYNAMICS_PANELS = (("upper_loss", "upper loss F on D (Eq. 2)", 1.0),
                   ("lower_loss", "lower loss G on D' (Eq. 3)", 1.0),
                   ("test_acc", "test accuracy (%)", 100.0))
SENSITIVITY_PANELS = (("upper_loss", "loss on the clean set D", 1.0), ("test_acc", "test accuracy (%)", 100.0))
SENSITIVITY_PARAMETERS = ("k", "rho", "xi")
ANNOTATE_UP_TO = 12   # write the values into heatmap cells up to this many classes


def _save(fig, path: Path, written: list[Path]) -> None:
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")
    written.append(path)


def _slugs(trials: pd.DataFrame) -> dict[str, str]:
    firsts = trials.drop_duplicates("setting")
    return {s: setting_slug(n, r, h) for s, n, r, h in
            zip(firsts["setting"], firsts["noise"], firsts["noise_rate"], firsts["human_label_set"])}


def _epoch_curves(ax, epochs: pd.DataFrame, by: str, order: list, metric: str, scale: float, label) -> None:
    """One line per value of `by` (in `order`): the mean over seeds per epoch, a band of ± std."""
    drawn = False
    for value in order:
        per_epoch = epochs[epochs[by] == value].groupby("epoch")[metric].agg(["mean", "std"]).dropna(subset=["mean"])
        if per_epoch.empty:
            continue
        mean, std = per_epoch["mean"] * scale, per_epoch["std"] * scale
        line, = ax.plot(per_epoch.index, mean, label=label(value))
        ax.fill_between(per_epoch.index, mean - std, mean + std, color=line.get_color(), alpha=0.2, linewidth=0)
        drawn = True
    if not drawn:
        ax.text(0.5, 0.5, f"no {metric} recorded", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


# ---------------------------------------------------------------- Figs. 1, 4, 5

def dynamics_figures(trials: pd.DataFrame, epochs: pd.DataFrame, out: Path) -> list[Path]:
    written: list[Path] = []
    if epochs.empty:
        print("skip training dynamics: no epochs of status-ok trials")
        return written
    slugs = _slugs(trials)
    for dataset in sorted(epochs["dataset"].astype(str).unique(), key=dataset_key):
        of_dataset = trials[trials["dataset"] == dataset]
        for setting in ordered_settings(of_dataset):
            rows_here = epochs[(epochs["dataset"] == dataset) & (epochs["setting"] == setting)]
            if rows_here.empty:
                print(f"skip training dynamics {dataset} {setting}: no epochs of status-ok trials")
                continue
            rows = [r for r in ordered_rows(of_dataset) if r in set(rows_here["row"])]
            fig, axes = plt.subplots(1, len(DYNAMICS_PANELS), figsize=(5 * len(DYNAMICS_PANELS), 4),
                                     layout="constrained")
            for ax, (metric, ylabel, scale) in zip(axes, DYNAMICS_PANELS):
                _epoch_curves(ax, rows_here, "row", rows, metric, scale, label=str)
                ax.set_ylabel(ylabel)
            axes[-1].legend(fontsize="small")
            fig.suptitle(f"{DATASET_NAMES.get(dataset, dataset)}, {setting}: training dynamics (mean over seeds)")
            _save(fig, out / f"dynamics_{dataset}_{slugs[setting]}.png", written)
    return written


# ---------------------------------------------------------------- Figs. 2, 6

def label_correction_matrix(flat_matrices: list) -> tuple[np.ndarray, np.ndarray]:
    """Flattened K x K confusion matrices of several seeds (rows: true label, columns: corrected label) ->
    (summed counts, counts with each row divided by its total; NaN for a class absent from D'), both (K, K)."""
    k = math.isqrt(len(flat_matrices[0]))
    counts = np.sum([np.asarray(m, dtype=float).reshape(k, k) for m in flat_matrices], axis=0)
    totals = counts.sum(axis=1, keepdims=True)
    return counts, np.divide(counts, totals, out=np.full_like(counts, np.nan), where=totals > 0)


def label_correction_figures(trials: pd.DataFrame, out: Path) -> list[Path]:
    written: list[Path] = []
    ok = trials[(trials["status"] == "ok") & trials["label_correction_confusion"].notna()]
    if ok.empty:
        print("skip label-correction heatmaps: no status-ok trial has a label_correction_confusion "
              "(only methods with a meta model record one)")
        return written
    slugs = _slugs(trials)
    for dataset in sorted(ok["dataset"].unique(), key=dataset_key):
        of_dataset = ok[ok["dataset"] == dataset]
        for setting in ordered_settings(of_dataset):
            here = of_dataset[of_dataset["setting"] == setting]
            rows = ordered_rows(here)
            fig, axes = plt.subplots(1, len(rows), figsize=(5 * len(rows) + 1, 5), squeeze=False, layout="constrained")
            for ax, row in zip(axes[0], rows):
                matrices = list(here.loc[here["row"] == row, "label_correction_confusion"])
                if len({len(m) for m in matrices}) > 1:
                    print(f"skip label correction of {row} ({dataset} {setting}): its trials' confusion matrices "
                          f"differ in size (different class counts)")
                    ax.set_axis_off()
                    continue
                counts, normalised = label_correction_matrix(matrices)
                k = len(counts)
                image = ax.imshow(normalised, vmin=0, vmax=1, cmap="Blues")
                if k <= ANNOTATE_UP_TO:
                    for i, j in np.ndindex(k, k):
                        if not np.isnan(normalised[i, j]):
                            ax.text(j, i, f"{normalised[i, j]:.2f}", ha="center", va="center", fontsize="x-small",
                                    color="white" if normalised[i, j] > 0.5 else "black")
                ax.set_title(f"{row}\n{np.trace(counts) / counts.sum():.1%} corrected to the true label, "
                             f"{len(matrices)} seed(s)", fontsize="small")
                if k <= ANNOTATE_UP_TO:
                    ax.set_xticks(range(k))
                    ax.set_yticks(range(k))
                ax.set_xlabel("corrected label (meta model)")
                ax.set_ylabel("true label")
            fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8)
            fig.suptitle(f"{DATASET_NAMES.get(dataset, dataset)}, {setting}: label correction on D' "
                         f"(rows normalised)")
            _save(fig, out / f"label_correction_{dataset}_{slugs[setting]}.png", written)
    return written


# ---------------------------------------------------------------- Figs. 7, 8, 9

def sensitivity_trials(trials: pd.DataFrame, parameter: str) -> pd.DataFrame:
    """The trials of one (dataset, method) group whose hyper-parameters other than `parameter` equal their
    most common combination (ties: the first in sorted order)."""
    others = [f for f in HYPER_FIELDS if f != parameter]
    key = trials[others].astype(str).agg("|".join, axis=1)
    return trials[key == key.mode().iloc[0]]


def _value_label(parameter: str):
    return lambda v: f"{parameter}={v:g}"


def sensitivity_figures(trials: pd.DataFrame, epochs: pd.DataFrame, out: Path) -> list[Path]:
    written: list[Path] = []
    ok = trials[trials["status"] == "ok"]
    for parameter in SENSITIVITY_PARAMETERS:
        found = False
        for (dataset, method), group in ok.groupby(["dataset", "method"]):
            if group[parameter].nunique() < 2:
                continue
            chosen = sensitivity_trials(group, parameter)
            values = sorted(chosen[parameter].dropna().unique())
            if len(values) < 2:
                continue
            found = True
            name = METHOD_NAMES.get(method, method)
            if len(chosen) < len(group):
                print(f"sensitivity to {parameter} ({dataset}, {name}): {len(group) - len(chosen)} trial(s) "
                      f"with other hyper-parameters left out")
            settings = ordered_settings(chosen)

            # final test accuracy against the parameter, one line per setting
            fig, ax = plt.subplots(figsize=(6, 4), layout="constrained")
            for setting in settings:
                final = (chosen[chosen["setting"] == setting].groupby(parameter)["test_acc_last"]
                         .agg(["mean", "std"]) * 100)
                ax.errorbar(final.index, final["mean"], yerr=final["std"], marker="o", capsize=3, label=setting)
            if values[0] > 0 and values[-1] / values[0] >= 10:
                ax.set_xscale("log")
            ax.set_xticks(values, [f"{v:g}" for v in values])
            ax.set_xlabel(parameter)
            ax.set_ylabel("final test accuracy (%)")
            ax.legend(fontsize="small")
            ax.set_title(f"{name} on {DATASET_NAMES.get(dataset, dataset)}: test accuracy vs {parameter}")
            _save(fig, out / f"sensitivity_{parameter}_{dataset}_{method}.png", written)

            # epoch curves: clean loss and test accuracy, one line per value, a column per setting
            value_of = chosen.set_index("trial_id")[parameter]       # the trial's value, not the epoch row's copy
            chosen_epochs = epochs[epochs["trial_id"].isin(value_of.index)]
            chosen_epochs = chosen_epochs.assign(**{parameter: chosen_epochs["trial_id"].map(value_of)})
            if chosen_epochs.empty:
                print(f"skip sensitivity epoch curves of {parameter} ({dataset}, {name}): no epochs")
                continue
            fig, axes = plt.subplots(len(SENSITIVITY_PANELS), len(settings), squeeze=False,
                                     figsize=(5 * len(settings), 3.5 * len(SENSITIVITY_PANELS)), layout="constrained")
            for column, setting in enumerate(settings):
                here = chosen_epochs[chosen_epochs["setting"] == setting]
                for line, (metric, ylabel, scale) in enumerate(SENSITIVITY_PANELS):
                    ax = axes[line, column]
                    _epoch_curves(ax, here, parameter, values, metric, scale, label=_value_label(parameter))
                    ax.set_ylabel(ylabel)
                    ax.set_title(setting, fontsize="small")
            axes[0, -1].legend(fontsize="small")
            fig.suptitle(f"{name} on {DATASET_NAMES.get(dataset, dataset)}: training dynamics vs {parameter} "
                         f"(mean over seeds)")
            _save(fig, out / f"sensitivity_{parameter}_epochs_{dataset}_{method}.png", written)
        if not found:
            print(f"skip sensitivity to {parameter}: no method's status-ok trials take two or more values of "
                  f"{parameter} with the other hyper-parameters fixed")
    return written


# ---------------------------------------------------------------- command line

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The paper's figures from Parquet results (module docstring).")
    parser.add_argument("--results", required=True, help="results root: a folder or URI holding trials/ and epochs/")
    parser.add_argument("--out", required=True, help="folder for the PNG files (created if missing)")
    parser.add_argument("--dataset", help="only this dataset (default: every dataset present)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    trials = load(args.results, "trials", dataset=args.dataset)
    epochs = load(args.results, "epochs", dataset=args.dataset, trials=trials)
    written = (dynamics_figures(trials, epochs, out) + label_correction_figures(trials, out)
               + sensitivity_figures(trials, epochs, out))
    print(f"{len(written)} figure(s) in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
