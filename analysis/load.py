"""Reading results for the analysis scripts, and the two labels everything is grouped by.

    from analysis.load import load
    trials = load("results/table1", "trials", dataset="cifar10")   # adds the `setting` and `row` columns
    epochs = load("results/table1", "epochs", trials=trials)       # status-ok trials' epochs, same labels

A *setting* is a table column: noise type + nominal rate ("uniform-40%", "flip-20%"; "human-worse" for
CIFAR-N labels). `uniform_any` (MLC's code: the new label may equal the true one, the noise the published
tables were made with) is labelled like uniform with a dagger ("uniform-40%†"), so both can sit side by side.

A *row* is a method, or a method variant when its trials in the dataset differ in a hyper-parameter
(rho, xi, delta, k, mixture, options): then each variant is its own row, "EBOMLC (k=2)", and trials with
different hyper-parameters are never pooled into one cell.
"""
from __future__ import annotations

import json
import numbers

import pandas as pd
import pyarrow.dataset as ds

from ebomlc.results import read_table

# The paper's row order (Tables I and II); methods it does not have come after, alphabetically.
PAPER_METHOD_ORDER = ("coteaching_plus", "dividemix", "glc", "l2rw", "mwnet", "pmwnet", "mlc", "mlc_d", "ebomlc")
METHOD_NAMES = {
    "coteaching_plus": "Co-teaching+", "dividemix": "DivideMix", "glc": "GLC", "l2rw": "L2RW", "mwnet": "MW-Net",
    "pmwnet": "PMW-Net", "mlc": "MLC", "mlc_d": "MLC-D", "ebomlc": "EBOMLC", "erm": "ERM",
}
DATASET_NAMES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "synthetic": "synthetic"}
DATASET_ORDER = ("cifar10", "cifar100", "synthetic")
NOISE_ORDER = ("uniform", "uniform_any", "flip", "pairflip", "human", "matrix")
HYPER_FIELDS = ("rho", "xi", "delta", "k", "mixture", "options")
# Config fields that change what a number means; when they vary inside one table, its notes say so.
PROTOCOL_FIELDS = ("model", "width", "epochs", "batch_size", "clean_batch_size", "clean_fraction",
                   "validation_fraction", "train_subset", "lr", "momentum", "weight_decay", "lr_milestones",
                   "lr_gamma", "meta_lr", "synthetic_train", "synthetic_test", "synthetic_classes",
                   "synthetic_image_size")
UNIFORM_ANY_MARK = "†"
UNIFORM_ANY_NOTE = (f"{UNIFORM_ANY_MARK} uniform_any: MLC's uniform noise, where the new label may equal the true "
                    "one (the noise the published tables were made with); plain uniform always changes the label")


def setting_label(noise: str, noise_rate: float, human_label_set: str | None = None) -> str:
    """Column label of a noise setting: "uniform-40%", "uniform-40%†" (uniform_any), "human-worse"."""
    if noise == "human":
        return f"human-{human_label_set}"
    if noise == "uniform_any":
        return f"uniform-{noise_rate * 100:g}%{UNIFORM_ANY_MARK}"
    return f"{noise}-{noise_rate * 100:g}%"


def setting_slug(noise: str, noise_rate: float, human_label_set: str | None = None) -> str:
    """A file-name-safe form of the setting: "uniform_any-40", "flip-20", "human-worse"."""
    if noise == "human":
        return f"human-{human_label_set}"
    return f"{noise}-{noise_rate * 100:g}"


def setting_key(noise: str, noise_rate: float) -> tuple:
    """Sort key of settings: the noise types in NOISE_ORDER (unknown ones last), then the rate."""
    position = NOISE_ORDER.index(noise) if noise in NOISE_ORDER else len(NOISE_ORDER)
    return position, noise, noise_rate


def method_key(method: str) -> tuple:
    """Sort key of methods: the paper's order, then the others alphabetically."""
    if method in PAPER_METHOD_ORDER:
        return 0, PAPER_METHOD_ORDER.index(method), method
    return 1, 0, method


def dataset_key(dataset: str) -> tuple:
    return (DATASET_ORDER.index(dataset), dataset) if dataset in DATASET_ORDER else (len(DATASET_ORDER), dataset)


def display_value(value) -> str:
    """A hyper-parameter value as it reads in a label: 0.2, 2 (not 2.0), probs, {"t": 1}."""
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, str) and value.startswith("{"):
        return json.dumps(json.loads(value), sort_keys=True, separators=(",", ":"))
    return str(value)


def add_labels(trials: pd.DataFrame) -> pd.DataFrame:
    """A copy of `trials` with `setting` and `row` columns (see the module docstring)."""
    frame = trials.copy()
    for name in ("dataset", "method", "noise"):
        frame[name] = frame[name].astype(str)
    frame["setting"] = [setting_label(n, r, h) for n, r, h in
                        zip(frame["noise"], frame["noise_rate"], frame["human_label_set"])]
    frame["row"] = frame["method"].map(lambda m: METHOD_NAMES.get(m, m))
    for (_, method), group in frame.groupby(["dataset", "method"], sort=False):
        varying = [f for f in HYPER_FIELDS if group[f].nunique(dropna=False) > 1]
        if varying:
            name = METHOD_NAMES.get(method, method)
            frame.loc[group.index, "row"] = [
                f"{name} ({', '.join(f'{f}={display_value(v)}' for f, v in zip(varying, values))})"
                for values in group[varying].itertuples(index=False)]
    return frame


def ordered_rows(frame: pd.DataFrame) -> list[str]:
    """Row labels in display order: method order, then the variants' hyper-parameter values."""
    firsts = frame.drop_duplicates("row")
    keyed = [(method_key(m), tuple(_sortable(getattr(r, f)) for f in HYPER_FIELDS), r.row)
             for m, r in zip(firsts["method"], firsts.itertuples())]
    return [label for *_, label in sorted(keyed)]


def ordered_settings(frame: pd.DataFrame) -> list[str]:
    firsts = frame.drop_duplicates("setting")
    keyed = sorted((setting_key(n, r), s) for n, r, s in zip(firsts["noise"], firsts["noise_rate"], firsts["setting"]))
    return [label for _, label in keyed]


def _sortable(value) -> tuple:
    """Hyper-parameter values of any type (None/NaN, numbers, text) in one sort order."""
    if value is None or (isinstance(value, float) and value != value):
        return 0, 0.0, ""
    if isinstance(value, numbers.Real):                 # numpy scalars too
        return 1, float(value), ""
    return 2, 0.0, str(value)


def load(root: str, table: str = "trials", *, dataset: str | None = None,
         trials: pd.DataFrame | None = None) -> pd.DataFrame:
    """Read `trials` or `epochs` under `root` (a folder or a URI), optionally only one dataset.

    trials: labelled with `setting` and `row` (all statuses; filter `status == "ok"` yourself).
    epochs: pass the labelled `trials`; returns the epochs of its status-ok trials with their labels.
    """
    where = ds.field("dataset") == dataset if dataset is not None else None
    frame = read_table(root, table, filter=where)
    if table == "trials":
        return add_labels(frame)
    if trials is None:
        raise ValueError("load(root, 'epochs') needs trials=load(root, 'trials') for the row and setting labels")
    ok = trials.loc[trials["status"] == "ok", ["trial_id", "row", "setting"]]
    return frame.merge(ok, on="trial_id", how="inner")
