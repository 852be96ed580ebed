"""Tables I and II from Parquet results: rows (methods) x noise settings, mean ± std over seeds, the best
and second best of each column marked, Avg. Rank and relative Training Time.

    python analysis/tables.py --results results/table1                       # a table per dataset, markdown
    python analysis/tables.py --results results/table1 --dataset cifar10 --format latex
    python analysis/tables.py --results s3://bucket/runs/table1 --metric last --format csv
    python analysis/tables.py --results results/table1 --vs-paper            # ours, the paper's, the difference

How the numbers are made (the same text is printed under each table):
  * Only trials with status "ok" count; the others (diverged, error, ...) are counted per row under the table.
  * Rows and columns: see analysis/load.py (a method variant is its own row; uniform_any is "uniform-40%†").
  * Cell: mean ± sample std (ddof=1) over seeds of the chosen accuracy, in %. `--metric best` (default):
    test_acc_at_best_clean_epoch, `last`: test_acc_last, `max`: test_acc_max. "(n=2)" marks a cell whose
    number of seeds differs from the table's usual one. A cell without trials stays missing ("—").
  * Marks: in each column the highest mean at the shown precision (2 decimals) is best (bold) and the next
    distinct value second best (underline); tied cells share the mark. Avg. Rank is marked the same way,
    lower being better. Training Time is not marked.
  * Avg. Rank: in each setting the rows with a value there are ranked, 1 = highest mean at the shown
    precision; tied rows share the average of their ranks (two rows tied for first both get 1.5). A row's
    Avg. Rank is the mean of its ranks over the settings where it has a value, followed by "(m/S)" when
    that is fewer than all S settings. Missing cells are never filled in or ranked.
  * Training Time: for a row R and the EBOMLC row E, over the settings both have: the sum over those
    settings of R's mean train_time_s per trial, divided by the same sum for E. Missing when the results
    have no EBOMLC trials or R shares no setting with E. With several EBOMLC rows (variants), E is the one
    with the most ok trials.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

if __package__ in (None, ""):  # run as `python analysis/tables.py`: make `analysis` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from analysis.load import (DATASET_NAMES, METHOD_NAMES, PROTOCOL_FIELDS, UNIFORM_ANY_NOTE, dataset_key, load,
                           ordered_rows, ordered_settings)
from analysis.paper import AVG_RANK, PAPER_TABLES, SETTING_NOISE, SETTINGS, PaperTable

METRICS = {"best": "test_acc_at_best_clean_epoch", "last": "test_acc_last", "max": "test_acc_max"}
METRIC_TEXT = {"best": "test accuracy (%) at the best clean-validation epoch",
               "last": "test accuracy (%) after the last epoch",
               "max": "best test accuracy (%) over the epochs (optimistic)"}
DECIMALS = 2                    # shown precision of accuracies and ranks; marks and ranks use it too
TRAINING_TIME = "Training Time"
REFERENCE_METHOD = "ebomlc"     # Training Time is relative to it, as in the paper


@dataclass
class ResultTable:
    """One dataset's table. Frames are indexed rows x settings in display order."""

    dataset: str
    metric: str                               # best | last | max
    mean: pd.DataFrame                        # accuracy (%), mean over seeds; NaN = missing cell
    std: pd.DataFrame                         # sample std over seeds (NaN with one seed)
    n: pd.DataFrame                           # number of ok trials (seeds) in the cell
    rank: pd.DataFrame                        # rank in the column, 1 = best; NaN where missing
    avg_rank: pd.Series                       # row -> mean rank over its settings
    settings_ranked: pd.Series                # row -> number of settings the Avg. Rank averages
    time_ratio: pd.Series                     # row -> training time relative to the reference row
    time_reference: str | None                # the EBOMLC row Training Time is relative to
    methods: pd.Series                        # row -> method name
    setting_noise: pd.DataFrame               # setting -> noise, noise_rate
    not_counted: dict[str, dict[str, int]]    # row -> status -> number of trials left out
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- the rules

def rank_settings(mean: pd.DataFrame, decimals: int = DECIMALS) -> tuple[pd.DataFrame, pd.Series, pd.Series]:
    """Ranks per column (1 = highest, ties averaged, missing cells unranked), each row's mean rank over the
    columns where it has a value, and that number of columns."""
    rank = mean.round(decimals).rank(axis=0, ascending=False, method="average")
    return rank, rank.mean(axis=1), rank.notna().sum(axis=1)


def marks(values: pd.Series, *, higher_is_better: bool = True, decimals: int = DECIMALS) -> pd.Series:
    """"best" / "second" / "" per value: the best and the next distinct value at the shown precision."""
    rounded = values.round(decimals)
    distinct = sorted(rounded.dropna().unique(), reverse=higher_is_better)
    labels = dict(zip(distinct[:2], ("best", "second")))
    return rounded.map(lambda v: labels.get(v, "")).astype(str)


def time_ratios(ok: pd.DataFrame, reference: str | None) -> pd.Series:
    """Row -> sum of its per-setting mean train_time_s over the settings it shares with `reference`,
    divided by the reference row's sum over the same settings (module docstring)."""
    per_cell = ok.groupby(["row", "setting"])["train_time_s"].mean().unstack()
    ratios = pd.Series(float("nan"), index=per_cell.index, dtype=float)
    if reference is None or reference not in per_cell.index:
        return ratios
    base = per_cell.loc[reference]
    for row in per_cell.index:
        shared = per_cell.loc[row].notna() & base.notna()
        if shared.any():
            ratios[row] = per_cell.loc[row, shared].sum() / base[shared].sum()
    return ratios


def build_table(trials: pd.DataFrame, dataset: str, metric: str = "best") -> ResultTable:
    """The table of one dataset from labelled trials (analysis.load.load / add_labels), all statuses."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    frame = trials[trials["dataset"] == dataset]
    rows, settings = ordered_rows(frame), ordered_settings(frame)
    ok = frame[frame["status"] == "ok"].assign(value=lambda f: f[METRICS[metric]] * 100)
    cells = ok.groupby(["row", "setting"])["value"]

    def by_cell(series: pd.Series) -> pd.DataFrame:
        return series.unstack().reindex(index=rows, columns=settings)

    mean, std = by_cell(cells.mean()), by_cell(cells.std())
    n = by_cell(cells.count()).fillna(0).astype(int)
    rank, avg_rank, settings_ranked = rank_settings(mean)

    references = ok[ok["method"] == REFERENCE_METHOD]["row"].value_counts()
    reference = min(references.index, key=lambda r: (-references[r], rows.index(r))) if len(references) else None
    time_ratio = time_ratios(ok, reference).reindex(rows)

    not_counted: dict[str, dict[str, int]] = {}
    for (row, status), count in frame[frame["status"] != "ok"].groupby(["row", "status"]).size().items():
        not_counted.setdefault(row, {})[status] = int(count)
    not_counted = {row: not_counted[row] for row in rows if row in not_counted}     # display order
    firsts = frame.drop_duplicates("setting").set_index("setting")
    table = ResultTable(dataset=dataset, metric=metric, mean=mean, std=std, n=n, rank=rank, avg_rank=avg_rank,
                        settings_ranked=settings_ranked, time_ratio=time_ratio, time_reference=reference,
                        methods=frame.drop_duplicates("row").set_index("row")["method"].reindex(rows),
                        setting_noise=firsts.loc[settings, ["noise", "noise_rate"]], not_counted=not_counted)
    table.notes = _notes(table, ok)
    return table


def typical_seeds(table: ResultTable) -> int:
    """The most common number of seeds over the filled cells (0 for an empty table)."""
    counts = table.n.to_numpy().ravel()
    counts = counts[counts > 0]
    return int(pd.Series(counts).mode().min()) if len(counts) else 0


def _notes(table: ResultTable, ok: pd.DataFrame) -> list[str]:
    seeds = typical_seeds(table)
    notes = [f"Cells: mean ± std over seeds of {METRICS[table.metric]} (%), status-ok trials only; "
             f"{seeds} seed(s) per cell unless marked (n=...). Missing cells: —.",
             "Best (bold) / second best (underline) per column at 2 decimals; Avg. Rank: rank per setting among "
             "the rows with a value (ties share the average rank), averaged over the row's settings; (m/S) = "
             "ranked in m of S settings; missing cells are never filled."]
    if table.time_reference is None:
        notes.append("Training Time: missing, there are no EBOMLC trials to be relative to.")
    else:
        notes.append(f"Training Time: mean train_time_s per trial summed over the settings shared with "
                     f"{table.time_reference}, divided by its sum over the same settings.")
    if any(table.setting_noise["noise"] == "uniform_any"):
        notes.append(UNIFORM_ANY_NOTE + ".")
    pooled = [f"{f} ({', '.join(sorted(map(str, ok[f].dropna().unique())))})"
              for f in PROTOCOL_FIELDS if ok[f].nunique() > 1]
    if pooled:
        notes.append("Cells pool trials that differ in: " + "; ".join(pooled) + ".")
    devices = sorted(ok["device_name"].dropna().unique())
    if len(devices) > 1:
        notes.append(f"Training times come from several devices: {', '.join(devices)}.")
    if table.not_counted:
        notes.append("Not counted (status not ok): " + "; ".join(
            f"{row}: " + ", ".join(f"{count} {status}" for status, count in sorted(counts.items()))
            for row, counts in table.not_counted.items()) + ".")
    return notes


# ---------------------------------------------------------------- output

@dataclass(frozen=True)
class Style:
    bold: str            # format string with {} for the text
    underline: str
    plus_minus: str
    times: str
    missing: str
    escape: dict         # character -> replacement


MARKDOWN = Style(bold="**{}**", underline="<u>{}</u>", plus_minus=" ± ", times="×", missing="—",
                 escape={"|": r"\|"})
LATEX = Style(bold=r"\textbf{{{}}}", underline=r"\underline{{{}}}", plus_minus=r" $\pm$ ", times=r"$\times$",
              missing="--", escape={"\\": r"\textbackslash{}", "%": r"\%", "_": r"\_", "&": r"\&", "#": r"\#",
                                    "{": r"\{", "}": r"\}", "$": r"\$", "†": r"\textsuperscript{\dag}",
                                    "±": r"$\pm$", "×": r"$\times$", "—": "--"})


def _escape(text: str, style: Style) -> str:
    return "".join(style.escape.get(c, c) for c in text)


def _mark(text: str, mark: str, style: Style) -> str:
    return {"best": style.bold, "second": style.underline}.get(mark, "{}").format(text)


def grid(table: ResultTable, style: Style) -> list[list[str]]:
    """The table as text cells: a header row, then one row per table row."""
    settings = list(table.mean.columns)
    seeds = typical_seeds(table)
    setting_marks = {s: marks(table.mean[s]) for s in settings}
    rank_marks = marks(table.avg_rank, higher_is_better=False)
    lines = [["Method", *(_escape(s, style) for s in settings), AVG_RANK, TRAINING_TIME]]
    for row in table.mean.index:
        cells = [_escape(row, style)]
        for s in settings:
            mean, std, n = table.mean.at[row, s], table.std.at[row, s], table.n.at[row, s]
            if pd.isna(mean):
                cells.append(style.missing)
                continue
            text = f"{mean:.{DECIMALS}f}" + (f"{style.plus_minus}{std:.{DECIMALS}f}" if n > 1 else "")
            cells.append(_mark(text, setting_marks[s][row], style) + (f" (n={n})" if n != seeds else ""))
        rank, ranked = table.avg_rank[row], table.settings_ranked[row]
        if pd.isna(rank):
            cells.append(style.missing)
        else:
            partial = f" ({ranked}/{len(settings)})" if ranked < len(settings) else ""
            cells.append(_mark(f"{rank:.{DECIMALS}f}", rank_marks[row], style) + partial)
        ratio = table.time_ratio[row]
        cells.append(style.missing if pd.isna(ratio) else f"{ratio:.2f}{style.times}")
        lines.append(cells)
    return lines


def title(table: ResultTable) -> str:
    return f"{DATASET_NAMES.get(table.dataset, table.dataset)}: {METRIC_TEXT[table.metric]}"


def to_markdown(table: ResultTable) -> str:
    header, *body = grid(table, MARKDOWN)
    lines = [f"### {title(table)}", "", "| " + " | ".join(header) + " |",
             "|" + "|".join(["---"] + [":---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines + [""] + [f"- {_escape(note, MARKDOWN)}" for note in table.notes]) + "\n"


def to_latex(table: ResultTable) -> str:
    """A booktabs table (\\usepackage{booktabs})."""
    header, *body = grid(table, LATEX)
    lines = [r"\begin{table}[t]", r"\centering",
             rf"\caption{{{_escape(title(table), LATEX)}, mean $\pm$ std over seeds.}}",
             r"\begin{tabular}{l" + "c" * (len(header) - 1) + "}", r"\toprule",
             " & ".join(header) + r" \\", r"\midrule"]
    lines += [" & ".join(cells) + r" \\" for cells in body]
    lines += [r"\bottomrule", r"\end{tabular}", r"\par\footnotesize"]
    lines += [_escape(note, LATEX) + r"\par" for note in table.notes]
    return "\n".join(lines + [r"\end{table}"]) + "\n"


def to_frame(table: ResultTable) -> pd.DataFrame:
    """The table in long form: one line per (row, setting), with the row's Avg. Rank and Training Time."""
    setting_marks = {s: marks(table.mean[s]) for s in table.mean.columns}
    rank_marks = marks(table.avg_rank, higher_is_better=False)
    lines = []
    for row in table.mean.index:
        for s in table.mean.columns:
            lines.append({
                "dataset": table.dataset, "metric": METRICS[table.metric], "row": row,
                "method": table.methods[row], "setting": s, "noise": table.setting_noise.at[s, "noise"],
                "noise_rate": table.setting_noise.at[s, "noise_rate"], "mean": table.mean.at[row, s],
                "std": table.std.at[row, s], "n": table.n.at[row, s], "rank": table.rank.at[row, s],
                "mark": setting_marks[s][row], "avg_rank": table.avg_rank[row], "avg_rank_mark": rank_marks[row],
                "settings_ranked": table.settings_ranked[row], "training_time": table.time_ratio[row]})
    return pd.DataFrame(lines)


# ---------------------------------------------------------------- against the paper

def paper_setting(noise: str, noise_rate: float) -> str | None:
    """The published column a setting is compared with: the paper's uniform columns were made with
    uniform_any; plain uniform at the same rate is compared with them too (its label has no dagger)."""
    for column, (paper_noise, rate) in SETTING_NOISE.items():
        same_noise = noise == paper_noise or (noise == "uniform" and paper_noise == "uniform_any")
        if same_noise and round(noise_rate, 6) == round(rate, 6):
            return column
    return None


def vs_paper(table: ResultTable, paper: PaperTable) -> pd.DataFrame:
    """Ours, the paper's and ours - paper for every published cell, Avg. Rank and Training Time; one line
    per (published method, our row of it, our setting); lines without ours keep ours missing."""
    ours_for = {column: [s for s in table.mean.columns if paper_setting(*table.setting_noise.loc[s]) == column]
                for column in SETTINGS}
    nan = float("nan")
    lines = []
    for method in paper.accuracy:
        for row in [r for r in table.mean.index if table.methods[r] == method] or [None]:
            cells = []                                      # (column, ours, std, n, paper)
            for column in SETTINGS:
                for s in (ours_for[column] if row is not None else []) or [None]:
                    if s is None:
                        cells.append((column, nan, nan, 0, paper.accuracy[method][column]))
                    else:
                        cells.append((s, table.mean.at[row, s], table.std.at[row, s], int(table.n.at[row, s]),
                                      paper.accuracy[method][column]))
            if row is None:
                cells += [(AVG_RANK, nan, nan, 0, paper.avg_rank[method]),
                          (TRAINING_TIME, nan, nan, 0, paper.training_time[method])]
            else:
                cells += [(AVG_RANK, table.avg_rank[row], nan, int(table.settings_ranked[row]), paper.avg_rank[method]),
                          (TRAINING_TIME, table.time_ratio[row], nan, 0, paper.training_time[method])]
            lines += [{"method": METHOD_NAMES.get(method, method), "row": row, "column": column, "ours": ours,
                       "std": std, "n": n, "paper": published, "diff": ours - published}
                      for column, ours, std, n, published in cells]
    return pd.DataFrame(lines)


def vs_paper_notes(table: ResultTable, paper: PaperTable) -> list[str]:
    unmatched = [r for r in table.mean.index if table.methods[r] not in paper.accuracy]
    notes = [f"{paper.name} ({DATASET_NAMES[paper.dataset]}): ours = {METRICS[table.metric]} (%), mean over n seeds; "
             f"diff = ours - paper. Avg. Rank: ours ranks our {len(table.mean.index)} rows over our "
             f"{len(table.mean.columns)} settings (n = settings ranked), the paper its 9 methods over 7 settings; "
             "Training Time: ours relative to our EBOMLC row on our device, the paper's on a T4 GPU."]
    if unmatched:
        notes.append("Not in the paper: " + ", ".join(unmatched) + ".")
    if any(table.setting_noise["noise"] == "uniform_any"):
        notes.append(UNIFORM_ANY_NOTE + ".")
    return notes


def _number(value, signed: bool = False) -> str:
    """2 decimals; signed ones never read "-0.00" (a difference of -1e-14 is +0.00)."""
    if pd.isna(value):
        return ""
    return f"{round(value, 2) + 0.0:+.2f}" if signed else f"{value:.2f}"


def vs_paper_text(comparison: pd.DataFrame, notes: list[str], heading: str, fmt: str) -> str:
    style = LATEX if fmt == "latex" else MARKDOWN
    header = ["Method", "Row", "Column", "Ours", "±", "n", "Paper", "Diff"]
    body = [[r.method, style.missing if pd.isna(r.row) else r.row, r.column, _number(r.ours) or style.missing, _number(r.std),
             str(r.n), _number(r.paper), _number(r.diff, signed=True) or style.missing]
            for r in comparison.itertuples()]
    if fmt == "latex":
        lines = [f"% {heading}", r"\begin{tabular}{lllrrrrr}", r"\toprule", " & ".join(header[:4]) + r" & $\pm$ & "
                 + " & ".join(header[5:]) + r" \\", r"\midrule"]
        lines += [" & ".join(_escape(c, style) for c in cells) + r" \\" for cells in body]
        lines += [r"\bottomrule", r"\end{tabular}", ""] + [f"% {note}" for note in notes]
    else:
        lines = [f"### {heading}", "", "| " + " | ".join(header) + " |", "|" + "---|" * 3 + "---:|" * 5]
        lines += ["| " + " | ".join(_escape(c, style) for c in cells) + " |" for cells in body]
        lines += [""] + [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- command line

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Tables I/II from Parquet results (see the module docstring).")
    parser.add_argument("--results", required=True, help="results root: a folder or URI holding trials/ and epochs/")
    parser.add_argument("--dataset", help="only this dataset (default: a table per dataset present)")
    parser.add_argument("--format", choices=("markdown", "latex", "csv"), default="markdown")
    parser.add_argument("--metric", choices=tuple(METRICS), default="best",
                        help="best: test acc at the best clean-validation epoch (default); last; max")
    parser.add_argument("--vs-paper", action="store_true",
                        help="compare with the paper's Tables I (cifar10) and II (cifar100) cell by cell")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    trials = load(args.results, "trials", dataset=args.dataset)
    if trials.empty:
        present = sorted(load(args.results, "trials")["dataset"].unique(), key=dataset_key) if args.dataset else []
        where = f" for dataset {args.dataset!r} (present: {', '.join(present) or 'none'})" if args.dataset else ""
        print(f"error: no trials under {args.results}/trials{where}; write some with `python -m ebomlc train "
              f"--out {args.results}` or tune/sweep.py", file=sys.stderr)
        return 1
    datasets = sorted(trials["dataset"].unique(), key=dataset_key)
    tables = [build_table(trials, dataset, args.metric) for dataset in datasets]
    if args.vs_paper:
        comparisons = []
        for table in tables:
            paper = PAPER_TABLES.get(table.dataset)
            if paper is None:
                print(f"no published table for {table.dataset} (the paper has: "
                      f"{', '.join(f'{t.dataset} ({t.name})' for t in PAPER_TABLES.values())})",
                      file=sys.stderr if args.format == "csv" else sys.stdout)
                continue
            comparison, notes = vs_paper(table, paper), vs_paper_notes(table, paper)
            if args.format == "csv":
                comparisons.append(comparison.assign(dataset=table.dataset))
                print("\n".join(notes), file=sys.stderr)
            else:
                print(vs_paper_text(comparison, notes, f"{title(table)}: ours vs {paper.name}", args.format))
        if comparisons:
            pd.concat(comparisons).to_csv(sys.stdout, index=False)
        return 0
    if args.format == "csv":
        pd.concat([to_frame(t) for t in tables]).to_csv(sys.stdout, index=False)
        for table in tables:
            print("\n".join([title(table), *table.notes]), file=sys.stderr)
        return 0
    render = to_latex if args.format == "latex" else to_markdown
    print("\n".join(render(table) for table in tables))
    return 0


if __name__ == "__main__":
    sys.exit(main())
