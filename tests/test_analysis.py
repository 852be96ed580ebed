"""analysis/: tables (cells, ranks, marks, time ratio, formats), the paper's numbers, figures.

Real trials come from the CLI on tiny synthetic configs (erm, and ebomlc when it is registered); the rank,
time and paper checks use hand-made trial rows whose expected values are worked out by hand here.
"""
import hashlib
import math

import numpy as np
import pandas as pd
import pytest

from analysis import figures, tables
from analysis.load import add_labels, load
from analysis.paper import AVG_RANK, PAPER_TABLES, PUBLISHED_MARK_ERRORS, SETTING_NOISE, SETTINGS
from ebomlc.cli import main as ebomlc_cli
from ebomlc.methods import METHODS
from ebomlc.results import TRIAL_SCHEMA, write_trial

TINY = ["--dataset", "synthetic", "--model", "resnet8", "--width", "8", "--epochs", "2", "--batch-size", "32",
        "--clean-batch-size", "32", "--synthetic-train", "400", "--synthetic-test", "100",
        "--synthetic-classes", "4", "--synthetic-image-size", "8", "--clean-fraction", "0.1",
        "--device", "cpu", "--no-progress"]
CLI_METHODS = ["erm"] + (["ebomlc"] if "ebomlc" in METHODS else [])
CLI_SETTINGS = [("uniform_any", 0.4), ("flip", 0.2)]


@pytest.fixture(scope="module")
def cli_results(tmp_path_factory):
    """Real trials: CLI_METHODS x 2 noise settings x 2 seeds, 2 epochs each."""
    root = str(tmp_path_factory.mktemp("cli_results"))
    for method in CLI_METHODS:
        for noise, rate in CLI_SETTINGS:
            for seed in (0, 1):
                assert ebomlc_cli(["train", "--method", method, *TINY, "--noise", noise, "--noise-rate", str(rate),
                                   "--seed", str(seed), "--out", root]) == 0
    return root


def trial(method, noise, rate, value, *, seed=0, dataset="synthetic", time=1.0, status="ok", **fields):
    """One hand-made trials row: every schema column, `value` as all three accuracies."""
    row = dict.fromkeys(TRIAL_SCHEMA.names)
    identity = repr((dataset, method, noise, rate, seed, sorted(fields.items())))
    row.update(trial_id=hashlib.sha1(identity.encode()).hexdigest()[:12], dataset=dataset, method=method,
               noise=noise, noise_rate=rate, seed=seed, status=status, train_time_s=time, options="{}",
               experiment="test", test_acc_at_best_clean_epoch=value, test_acc_last=value, test_acc_max=value)
    if status != "ok":
        row.update(test_acc_at_best_clean_epoch=None, test_acc_last=None, test_acc_max=None)
    row.update(fields)
    return row


def frame(rows):
    return add_labels(pd.DataFrame(rows, columns=TRIAL_SCHEMA.names))


# ---------------------------------------------------------------- cells from real trials

def test_cells_are_mean_and_std_over_seeds(cli_results):
    table = tables.build_table(load(cli_results), "synthetic")
    raw = pd.read_parquet(cli_results + "/trials")
    raw["method"] = raw["method"].astype(str)
    expected = (raw[raw["status"] == "ok"].groupby(["method", "noise", "noise_rate"])
                ["test_acc_at_best_clean_epoch"].agg(["mean", "std", "count"]))
    assert len(expected) == len(CLI_METHODS) * len(CLI_SETTINGS)
    labels = {("uniform_any", 0.4): "uniform-40%†", ("flip", 0.2): "flip-20%"}
    names = {"erm": "ERM", "ebomlc": "EBOMLC"}
    for (method, noise, rate), cell in expected.iterrows():
        row, setting = names[method], labels[(noise, rate)]
        assert table.mean.at[row, setting] == pytest.approx(100 * cell["mean"], abs=1e-9)
        assert table.std.at[row, setting] == pytest.approx(100 * cell["std"], abs=1e-9)
        assert table.n.at[row, setting] == cell["count"] == 2
    assert list(table.mean.columns) == ["uniform-40%†", "flip-20%"]
    assert list(table.mean.index) == [names[m] for m in sorted(CLI_METHODS, key=["ebomlc", "erm"].index)]


def test_metric_flag_picks_the_column(cli_results):
    trials = load(cli_results)
    ok = trials[trials["status"] == "ok"]
    for metric, column in tables.METRICS.items():
        table = tables.build_table(trials, "synthetic", metric)
        erm = ok[(ok["method"] == "erm") & (ok["noise"] == "flip")][column]
        assert table.mean.at["ERM", "flip-20%"] == pytest.approx(100 * erm.mean(), abs=1e-9)


def test_markdown_of_real_trials_prints_every_cell(cli_results, capsys):
    assert tables.main(["--results", cli_results]) == 0
    out = capsys.readouterr().out
    assert tables.main(["--results", "file://" + cli_results]) == 0       # a URI reads the same
    assert capsys.readouterr().out == out
    assert "### synthetic: test accuracy (%) at the best clean-validation epoch" in out
    assert "| Method | uniform-40%† | flip-20% | Avg. Rank | Training Time |" in out
    assert "† uniform_any" in out and " ± " in out
    if "ebomlc" in CLI_METHODS:
        assert "| 1.00× |" in out


# ---------------------------------------------------------------- ranks, marks, time (hand-worked)

RANK_ROWS = [  # percent: glc, mlc, ebomlc, erm (erm has no uniform-40%)
    trial("glc", "uniform", 0.2, 0.900001), trial("mlc", "uniform", 0.2, 0.80),
    trial("ebomlc", "uniform", 0.2, 0.90), trial("erm", "uniform", 0.2, 0.70),
    trial("glc", "uniform", 0.4, 0.60), trial("mlc", "uniform", 0.4, 0.70), trial("ebomlc", "uniform", 0.4, 0.80),
    trial("glc", "flip", 0.2, 0.85), trial("mlc", "flip", 0.2, 0.75),
    trial("ebomlc", "flip", 0.2, 0.80), trial("erm", "flip", 0.2, 0.50),
]


def test_avg_rank_ties_and_missing_cells():
    # uniform-20%: glc 90.0001 and ebomlc 90.00 tie at 2 decimals -> both (1 + 2) / 2 = 1.5; mlc 3; erm 4
    # uniform-40%: ebomlc 1, mlc 2, glc 3; erm has no trial there: not ranked, not filled
    # flip-20%:    glc 1, ebomlc 2, mlc 3, erm 4
    table = tables.build_table(frame(RANK_ROWS), "synthetic")
    assert table.rank.loc["GLC"].tolist() == [1.5, 3.0, 1.0]
    assert table.rank.loc["ERM"].tolist()[0] == 4.0 and math.isnan(table.rank.at["ERM", "uniform-40%"])
    assert table.avg_rank.to_dict() == pytest.approx(
        {"GLC": (1.5 + 3 + 1) / 3, "MLC": (3 + 2 + 3) / 3, "EBOMLC": (1.5 + 1 + 2) / 3, "ERM": (4 + 4) / 2})
    assert table.settings_ranked.to_dict() == {"GLC": 3, "MLC": 3, "EBOMLC": 3, "ERM": 2}
    assert math.isnan(table.mean.at["ERM", "uniform-40%"])
    # marks: the tie shares bold, the next distinct value is second; Avg. Rank: lower is better
    assert tables.marks(table.mean["uniform-20%"]).to_dict() == {"GLC": "best", "MLC": "second", "EBOMLC": "best",
                                                                 "ERM": ""}
    assert tables.marks(table.avg_rank, higher_is_better=False).to_dict() == {
        "GLC": "second", "MLC": "", "EBOMLC": "best", "ERM": ""}


def test_markdown_and_latex_show_marks_missing_cells_and_partial_ranks():
    table = tables.build_table(frame(RANK_ROWS), "synthetic")
    markdown = tables.to_markdown(table)
    assert "| GLC | **90.00** | 60.00 | **85.00** | <u>1.83</u> | 1.00× |" in markdown
    assert "| ERM | 70.00 | — | 50.00 | 4.00 (2/3) | 1.00× |" in markdown
    assert "| EBOMLC | **90.00** | **80.00** | <u>80.00</u> | **1.50** | 1.00× |" in markdown
    latex = tables.to_latex(table)
    assert r"GLC & \textbf{90.00} & 60.00 & \textbf{85.00} & \underline{1.83} & 1.00$\times$ \\" in latex
    assert r"ERM & 70.00 & -- & 50.00 & 4.00 (2/3) & 1.00$\times$ \\" in latex
    assert latex.startswith(r"\begin{table}") and r"\toprule" in latex and "—" not in latex


def test_training_time_is_relative_to_ebomlc_over_shared_settings():
    rows = [trial("ebomlc", "uniform", 0.2, 0.9, time=10.0),
            trial("ebomlc", "uniform", 0.4, 0.8, seed=0, time=18.0),
            trial("ebomlc", "uniform", 0.4, 0.8, seed=1, time=22.0),     # mean 20
            trial("mlc", "uniform", 0.2, 0.9, time=25.0), trial("mlc", "uniform", 0.4, 0.8, time=50.0),
            trial("mlc", "flip", 0.2, 0.8, time=1000.0),                  # EBOMLC has no flip: not counted
            trial("glc", "flip", 0.2, 0.8, time=5.0)]                     # shares no setting: missing
    table = tables.build_table(frame(rows), "synthetic")
    assert table.time_reference == "EBOMLC"
    assert table.time_ratio["MLC"] == pytest.approx((25 + 50) / (10 + 20))
    assert table.time_ratio["EBOMLC"] == 1.0 and math.isnan(table.time_ratio["GLC"])
    without = tables.build_table(frame([r for r in rows if r["method"] != "ebomlc"]), "synthetic")
    assert without.time_ratio.isna().all() and without.time_reference is None
    assert any("no EBOMLC trials" in note for note in without.notes)


def test_status_not_ok_is_counted_below_not_in_cells():
    rows = RANK_ROWS + [trial("mlc", "flip", 0.2, None, seed=1, status="diverged"),
                        trial("mlc", "flip", 0.2, None, seed=2, status="error")]
    table = tables.build_table(frame(rows), "synthetic")
    assert table.n.at["MLC", "flip-20%"] == 1 and table.mean.at["MLC", "flip-20%"] == pytest.approx(75.0)
    assert table.not_counted == {"MLC": {"diverged": 1, "error": 1}}
    assert "Not counted (status not ok): MLC: 1 diverged, 1 error." in table.notes


def test_a_table_without_ok_trials_shows_missing_cells():
    table = tables.build_table(frame([trial("mlc", "flip", 0.2, None, status="diverged")]), "synthetic")
    assert table.mean.isna().all().all() and table.n.at["MLC", "flip-20%"] == 0
    assert "| MLC | — | — | — |" in tables.to_markdown(table)


def test_variants_are_separate_rows_and_uniform_any_is_marked():
    rows = [trial("ebomlc", "uniform_any", 0.4, 0.8, k=1), trial("ebomlc", "uniform_any", 0.4, 0.7, k=2),
            trial("ebomlc", "uniform", 0.4, 0.75, k=2), trial("erm", "uniform", 0.4, 0.6)]
    table = tables.build_table(frame(rows), "synthetic")
    assert list(table.mean.index) == ["EBOMLC (k=1)", "EBOMLC (k=2)", "ERM"]
    assert list(table.mean.columns) == ["uniform-40%", "uniform-40%†"]
    assert table.mean.at["EBOMLC (k=2)", "uniform-40%†"] == pytest.approx(70.0)
    # the reference is the EBOMLC variant with the most ok trials
    assert table.time_reference == "EBOMLC (k=2)"


# ---------------------------------------------------------------- the paper's numbers

def paper_rows(paper):
    """One trial per published cell: accuracy = the cell / 100, train time = the published ratio."""
    return [trial(method, *SETTING_NOISE[s], paper.accuracy[method][s] / 100, dataset=paper.dataset,
                  time=paper.training_time[method]) for method in paper.accuracy for s in SETTINGS]


@pytest.mark.parametrize("dataset", sorted(PAPER_TABLES))
def test_paper_numbers_give_zero_differences_and_the_published_ranks(dataset):
    paper = PAPER_TABLES[dataset]
    table = tables.build_table(frame(paper_rows(paper)), dataset)
    comparison = tables.vs_paper(table, paper)
    assert len(comparison) == 9 * (7 + 2) and comparison["ours"].notna().all()
    cells = comparison[~comparison["column"].isin([AVG_RANK, tables.TRAINING_TIME])]
    assert cells["diff"].abs().max() < 1e-9
    times = comparison[comparison["column"] == tables.TRAINING_TIME]
    assert times["diff"].abs().max() < 1e-9
    ranks = comparison[comparison["column"] == AVG_RANK]
    assert ranks["diff"].abs().max() < 0.005     # the published Avg. Rank has 2 decimals


@pytest.mark.parametrize("dataset", sorted(PAPER_TABLES))
def test_our_marks_reproduce_the_published_marks_but_its_two_errors(dataset):
    paper = PAPER_TABLES[dataset]
    table = tables.build_table(frame(paper_rows(paper)), dataset)
    method_of = {row: method for row, method in table.methods.items()}
    ours = {"best": set(), "second": set()}
    for setting in table.mean.columns:         # uniform_any columns carry the dagger: "uniform-40%†"
        for row, mark in tables.marks(table.mean[setting]).items():
            if mark:
                ours[mark].add((method_of[row], setting.rstrip("†")))
    for row, mark in tables.marks(table.avg_rank, higher_is_better=False).items():
        if mark:
            ours[mark].add((method_of[row], AVG_RANK))
    errors = {(m, c) for d, m, c in PUBLISHED_MARK_ERRORS if d == dataset}
    assert ours["best"] == set(paper.bold)
    assert ours["second"] == set(paper.underline) - errors


@pytest.fixture(scope="module")
def paper_results(tmp_path_factory):
    """The published numbers written as Parquet trials (cifar10 and cifar100), plus one synthetic trial."""
    root = str(tmp_path_factory.mktemp("paper_results"))
    for paper in PAPER_TABLES.values():
        for row in paper_rows(paper):
            write_trial(root, row, [])
    write_trial(root, trial("erm", "uniform", 0.2, 0.5), [])
    return root


def test_vs_paper_command_prints_ours_paper_and_zero_differences(paper_results, capsys):
    assert tables.main(["--results", paper_results, "--vs-paper"]) == 0
    out = capsys.readouterr().out
    assert "ours vs Table I" in out and "ours vs Table II" in out and "no published table for synthetic" in out
    assert "| EBOMLC | EBOMLC | uniform-40%† | 89.58 |  | 1 | 89.58 | +0.00 |" in out
    assert "| GLC | GLC | Avg. Rank | 3.00 |  | 7 | 3.00 | +0.00 |" in out
    assert "| MLC-D | MLC-D | Training Time | 2.32 |  | 0 | 2.32 | +0.00 |" in out
    assert "-0.0" not in out and "+0.01" not in out


def test_vs_paper_keeps_published_cells_we_lack_as_missing():
    rows = [trial("ebomlc", "uniform_any", 0.4, 0.88, dataset="cifar10"), trial("ebomlc", "uniform", 0.4, 0.86,
                                                                               dataset="cifar10")]
    table = tables.build_table(frame(rows), "cifar10")
    comparison = tables.vs_paper(table, PAPER_TABLES["cifar10"])
    ours = comparison.dropna(subset=["ours"]).set_index("column")["diff"]
    # both our uniform and uniform_any 40% are compared with the paper's uniform-40% (89.58)
    assert ours.to_dict() == pytest.approx({"uniform-40%": 86 - 89.58, "uniform-40%†": 88 - 89.58,
                                            AVG_RANK: 1 - 1.29, tables.TRAINING_TIME: 0.0})
    glc = comparison[comparison["method"] == "GLC"]
    assert len(glc) == 7 + 2 and glc["ours"].isna().all() and glc["paper"].notna().all()
    text = tables.vs_paper_text(comparison, tables.vs_paper_notes(table, PAPER_TABLES["cifar10"]), "t", "markdown")
    assert "| GLC | — | flip-40% | — |  | 0 | 89.75 | — |" in text
    assert "| EBOMLC | EBOMLC | uniform-40% | 86.00 |  | 1 | 89.58 | -3.58 |" in text


def test_vs_paper_csv_parses(paper_results, capsys):
    assert tables.main(["--results", paper_results, "--vs-paper", "--format", "csv"]) == 0
    comparison = pd.read_csv(pd.io.common.StringIO(capsys.readouterr().out))
    assert set(comparison["dataset"]) == {"cifar10", "cifar100"} and len(comparison) == 2 * 9 * 9
    assert comparison["diff"].abs().max() < 0.005


def test_csv_output_parses_and_carries_the_marks(paper_results, capsys):
    assert tables.main(["--results", paper_results, "--dataset", "cifar100", "--format", "csv"]) == 0
    captured = capsys.readouterr()
    long = pd.read_csv(pd.io.common.StringIO(captured.out))
    assert len(long) == 9 * 7 and set(long["dataset"]) == {"cifar100"}
    best = long[long["mark"] == "best"].set_index("setting")["method"].to_dict()
    assert best == {"uniform-0%†": "glc", "uniform-20%†": "pmwnet", "uniform-40%†": "ebomlc",
                    "uniform-60%†": "ebomlc", "uniform-80%†": "ebomlc", "flip-20%": "glc", "flip-40%": "ebomlc"}
    assert set(long.loc[long["avg_rank_mark"] == "second", "method"]) == {"glc"}
    assert "Cells: mean ± std" in captured.err


def test_latex_and_markdown_commands_mark_best_and_second(paper_results, capsys):
    assert tables.main(["--results", paper_results, "--dataset", "cifar10", "--format", "latex"]) == 0
    latex = capsys.readouterr().out
    assert r"EBOMLC & \textbf{92.92} & \textbf{92.18} & \textbf{89.58} & \textbf{83.51} & \underline{76.02}" in latex
    assert r"uniform-0\%\textsuperscript{\dag}" in latex
    assert tables.main(["--results", paper_results, "--dataset", "cifar10"]) == 0
    markdown = capsys.readouterr().out
    assert "| GLC | 92.25 | <u>89.31</u> | 86.20 | 74.27 | 64.38 | **90.97** | <u>89.75</u> | <u>3.00</u> | 0.33× |" \
        in markdown


def test_missing_results_exit_1_with_the_datasets_present(paper_results, tmp_path, capsys):
    assert tables.main(["--results", paper_results, "--dataset", "cifar1000"]) == 1
    assert "present: cifar10, cifar100, synthetic" in capsys.readouterr().err
    assert tables.main(["--results", str(tmp_path)]) == 1
    assert "no trials under" in capsys.readouterr().err


# ---------------------------------------------------------------- figures

@pytest.fixture(scope="module")
def sweep_results(tmp_path_factory):
    """Hand-made EBOMLC ablation trials with epochs and confusion matrices: k, rho and xi each varied
    one at a time from (k=1, rho=0.2, xi=0.5), 2 settings x 2 seeds, 3 epochs, 3 classes."""
    root = str(tmp_path_factory.mktemp("sweep_results"))
    base = {"k": 1, "rho": 0.2, "xi": 0.5, "delta": 0.25, "mixture": "probs"}
    variants = [base, {**base, "k": 2}, {**base, "rho": 0.8}, {**base, "xi": 1.0}, {**base, "xi": 0.05}]
    for variant in variants:
        for noise, rate in (("uniform_any", 0.4), ("uniform_any", 0.8)):
            for seed in (0, 1):
                final = 0.9 - rate / 4 - variant["k"] / 20 - variant["rho"] / 10 - variant["xi"] / 10
                row = trial("ebomlc", noise, rate, final, seed=seed, **variant,
                            label_correction_confusion=[30, 5, 5, 4, 32, 4, 6, 6, 28 + seed])
                epochs = [{"trial_id": row["trial_id"], "dataset": "synthetic", "method": "ebomlc", "noise": noise,
                           "noise_rate": rate, "seed": seed, **{p: variant[p] for p in ("rho", "xi", "delta", "k")},
                           "epoch": e, "upper_loss": variant["xi"] / (e + 1), "lower_loss": 1.5 / (e + 1),
                           "test_acc": final - (2 - e) / 10} for e in range(3)]
                write_trial(root, row, epochs)
    return root


def test_figures_of_real_trials(cli_results, tmp_path, capsys):
    assert figures.main(["--results", cli_results, "--out", str(tmp_path)]) == 0
    for slug in ("uniform_any-40", "flip-20"):
        assert (tmp_path / f"dynamics_synthetic_{slug}.png").stat().st_size > 1000
    out = capsys.readouterr().out
    assert "skip sensitivity to rho" in out
    if "ebomlc" in CLI_METHODS:
        assert (tmp_path / "label_correction_synthetic_flip-20.png").stat().st_size > 1000


def test_heatmaps_and_sensitivity_figures(sweep_results, tmp_path, capsys):
    assert figures.main(["--results", sweep_results, "--out", str(tmp_path)]) == 0
    expected = ["dynamics_synthetic_uniform_any-40.png", "dynamics_synthetic_uniform_any-80.png",
                "label_correction_synthetic_uniform_any-40.png", "label_correction_synthetic_uniform_any-80.png"]
    expected += [f"sensitivity_{p}{kind}_synthetic_ebomlc.png" for p in ("k", "rho", "xi") for kind in ("", "_epochs")]
    for name in expected:
        assert (tmp_path / name).stat().st_size > 1000, name
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(expected)
    out = capsys.readouterr().out
    # the xi curve leaves out the k=2 and rho=0.8 variants: 2 variants x 2 settings x 2 seeds
    assert "sensitivity to xi (synthetic, EBOMLC): 8 trial(s) with other hyper-parameters left out" in out


def test_sensitivity_holds_the_other_parameters_at_their_common_values(sweep_results):
    trials = load(sweep_results)
    chosen = figures.sensitivity_trials(trials, "xi")
    assert sorted(chosen["xi"].unique()) == [0.05, 0.5, 1.0]
    assert set(chosen["k"]) == {1} and set(chosen["rho"]) == {0.2}


def test_heatmap_sums_counts_over_seeds_then_normalises_rows():
    counts, normalised = figures.label_correction_matrix([[3, 1, 0, 0], np.array([1, 3, 0, 0])])
    assert counts.tolist() == [[4, 4], [0, 0]]
    assert normalised[0].tolist() == [0.5, 0.5] and np.isnan(normalised[1]).all()   # class 1 absent from D'


def test_figures_skip_absent_data_with_notes(tmp_path, capsys):
    assert figures.main(["--results", str(tmp_path / "empty"), "--out", str(tmp_path / "figs")]) == 0
    out = capsys.readouterr().out
    assert "skip training dynamics" in out and "skip label-correction heatmaps" in out
    assert "skip sensitivity to k" in out and "0 figure(s)" in out
