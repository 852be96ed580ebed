"""The paper's published Tables I (CIFAR-10) and II (CIFAR-100) as data, transcribed cell by cell.

    from analysis.paper import PAPER_TABLES
    PAPER_TABLES["cifar10"].accuracy["ebomlc"]["uniform-40%"]     # 89.58 (%)

Test accuracy in %, the mean over 3 seeds (Sec. VI-A), ResNet-32, 120 epochs, 2% clean set; the
paper's "uniform" columns were made with MLC's uniform noise (our `uniform_any`), its "flip" columns
with MLC's flip noise (our `flip`). Avg. Rank: the mean rank over the seven settings (it is reproduced
exactly by ranking the cells below, see tests/test_analysis.py). Training Time: relative to EBOMLC
(1.00x), T4 GPU.

`bold` / `underline` are the published marks of the best and second-best values. Two of them are not
what the numbers say: in Table I, L2RW's flip-40% (80.86; second best is GLC's 89.75, also underlined)
and L2RW's Avg. Rank (6.57; second best is GLC's 3.00, also underlined) are underlined. They are kept
as published and listed in `PUBLISHED_MARK_ERRORS`.
"""
from __future__ import annotations

from dataclasses import dataclass

SETTINGS = ("uniform-0%", "uniform-20%", "uniform-40%", "uniform-60%", "uniform-80%", "flip-20%", "flip-40%")
# (noise type, nominal rate) of each column, as our trials record them
SETTING_NOISE = {"uniform-0%": ("uniform_any", 0.0), "uniform-20%": ("uniform_any", 0.2),
                 "uniform-40%": ("uniform_any", 0.4), "uniform-60%": ("uniform_any", 0.6),
                 "uniform-80%": ("uniform_any", 0.8), "flip-20%": ("flip", 0.2), "flip-40%": ("flip", 0.4)}
AVG_RANK = "Avg. Rank"


@dataclass(frozen=True)
class PaperTable:
    name: str                                     # "Table I"
    dataset: str                                  # our dataset name: cifar10 | cifar100
    accuracy: dict[str, dict[str, float]]         # method -> setting -> test accuracy (%)
    avg_rank: dict[str, float]                    # method -> Avg. Rank
    training_time: dict[str, float]               # method -> training time relative to EBOMLC
    bold: frozenset[tuple[str, str]]              # (method, setting or AVG_RANK) published in bold
    underline: frozenset[tuple[str, str]]         # (method, setting or AVG_RANK) published underlined


def _table(name, dataset, rows, bold, underline) -> PaperTable:
    return PaperTable(
        name=name, dataset=dataset,
        accuracy={m: dict(zip(SETTINGS, cells)) for m, (cells, _, _) in rows.items()},
        avg_rank={m: rank for m, (_, rank, _) in rows.items()},
        training_time={m: time for m, (_, _, time) in rows.items()},
        bold=frozenset((m, c) for m, cols in bold.items() for c in cols),
        underline=frozenset((m, c) for m, cols in underline.items() for c in cols))


# method: ((uniform 0, 20, 40, 60, 80 %, flip 20, 40 %), Avg. Rank, Training Time x)
TABLE_I = _table("Table I", "cifar10", {
    "coteaching_plus": ((89.14, 85.79, 82.98, 56.37, 44.85, 77.56, 72.93), 7.43, 0.51),
    "dividemix": ((91.32, 87.15, 85.16, 82.45, 77.69, 82.90, 78.38), 4.43, 1.12),
    "glc": ((92.25, 89.31, 86.20, 74.27, 64.38, 90.97, 89.75), 3.00, 0.33),
    "l2rw": ((85.16, 82.51, 78.01, 72.19, 55.81, 84.49, 80.86), 6.57, 1.69),
    "mwnet": ((88.91, 80.61, 71.55, 64.02, 48.36, 87.11, 84.75), 6.86, 1.89),
    "pmwnet": ((90.74, 88.94, 86.80, 81.56, 45.30, 88.79, 87.36), 4.29, 1.95),
    "mlc": ((92.76, 89.01, 86.08, 82.08, 74.10, 89.39, 87.12), 3.14, 2.28),
    "mlc_d": ((67.75, 66.84, 67.56, 67.14, 67.58, 66.18, 62.57), 8.00, 2.32),
    "ebomlc": ((92.92, 92.18, 89.58, 83.51, 76.02, 90.74, 90.54), 1.29, 1.00),
}, bold={
    "dividemix": ["uniform-80%"], "glc": ["flip-20%"],
    "ebomlc": ["uniform-0%", "uniform-20%", "uniform-40%", "uniform-60%", "flip-40%", AVG_RANK],
}, underline={
    "dividemix": ["uniform-60%"], "glc": ["uniform-20%", "flip-40%", AVG_RANK], "l2rw": ["flip-40%", AVG_RANK],
    "pmwnet": ["uniform-40%"], "mlc": ["uniform-0%"], "ebomlc": ["uniform-80%", "flip-20%"],
})

TABLE_II = _table("Table II", "cifar100", {
    "coteaching_plus": ((56.28, 50.49, 46.80, 34.96, 9.14, 49.15, 36.69), 7.57, 0.51),
    "dividemix": ((66.34, 61.92, 56.14, 48.59, 11.18, 54.14, 48.12), 4.43, 1.12),
    "glc": ((68.28, 63.48, 56.82, 46.80, 23.27, 66.64, 47.59), 2.57, 0.33),
    "l2rw": ((58.84, 52.90, 45.19, 37.71, 18.96, 53.57, 48.59), 5.71, 1.69),
    "mwnet": ((63.91, 55.07, 52.55, 45.17, 18.87, 58.99, 45.41), 5.14, 1.89),
    "pmwnet": ((66.98, 63.52, 56.12, 47.12, 20.53, 56.12, 47.73), 3.43, 1.95),
    "mlc": ((65.03, 48.73, 39.06, 25.26, 15.58, 58.98, 57.46), 5.86, 2.28),
    "mlc_d": ((17.02, 13.26, 15.98, 14.91, 12.06, 15.47, 15.58), 8.71, 2.32),
    "ebomlc": ((67.13, 62.92, 58.15, 50.04, 35.41, 64.86, 58.11), 1.57, 1.00),
}, bold={
    "glc": ["uniform-0%", "flip-20%"], "pmwnet": ["uniform-20%"],
    "ebomlc": ["uniform-40%", "uniform-60%", "uniform-80%", "flip-40%", AVG_RANK],
}, underline={
    "dividemix": ["uniform-60%"], "glc": ["uniform-20%", "uniform-40%", "uniform-80%", AVG_RANK],
    "mlc": ["flip-40%"], "ebomlc": ["uniform-0%", "flip-20%"],
})

PAPER_TABLES = {table.dataset: table for table in (TABLE_I, TABLE_II)}

# Published underlines that are not second best (see the module docstring): (dataset, method, column)
PUBLISHED_MARK_ERRORS = frozenset({("cifar10", "l2rw", "flip-40%"), ("cifar10", "l2rw", AVG_RANK)})
