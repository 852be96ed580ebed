"""The trainable core: learning, exact reproducibility and resume, divergence, batch sampling."""
import dataclasses
import math

import pytest
import torch

from ebomlc.train import run_trial


def collect():
    rows, states = [], []

    def report(row, state):
        rows.append(row)
        states.append(state)

    return rows, states, report


def test_erm_learns_well_above_chance(tiny_config):
    config = dataclasses.replace(tiny_config, epochs=3, noise_rate=0.2)
    summary = run_trial(config)
    assert summary["status"] == "ok"
    assert summary["epochs_done"] == 3
    chance = 1 / config.synthetic_classes
    assert summary["test_acc_last"] > chance + 0.3, summary


def test_same_seed_same_numbers_and_other_seed_differs(tiny_config):
    rows_a, _, report_a = collect()
    rows_b, _, report_b = collect()
    run_trial(tiny_config, report_a)
    run_trial(tiny_config, report_b)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "epoch_time_s"} for r in rows]
    assert strip(rows_a) == strip(rows_b)
    rows_c, _, report_c = collect()
    run_trial(dataclasses.replace(tiny_config, seed=1), report_c)
    assert [r["train_loss"] for r in rows_c] != [r["train_loss"] for r in rows_a]


@pytest.mark.parametrize("resume_after", [0, 1])
def test_resume_from_any_epoch_equals_uninterrupted_run(tiny_config, resume_after):
    config = dataclasses.replace(tiny_config, epochs=3)
    rows, states, report = collect()
    full = run_trial(config, report)

    resumed_rows, _, resumed_report = collect()
    resumed = run_trial(config, resumed_report, resume_state=states[resume_after])
    strip = lambda rows: [{k: v for k, v in r.items() if k != "epoch_time_s"} for r in rows]
    assert strip(resumed_rows) == strip(rows[resume_after + 1:])
    for key in ("test_acc_last", "test_acc_max", "test_acc_at_best_clean_epoch", "best_clean_epoch"):
        assert resumed[key] == full[key]


def test_diverged_trial_stops_with_status_and_no_accuracy(tiny_config):
    config = dataclasses.replace(tiny_config, epochs=3, lr=1e30, momentum=0.0)
    rows, _, report = collect()
    summary = run_trial(config, report)
    assert summary["status"] == "diverged"
    assert summary["diverged_epoch"] == 0
    assert summary["test_acc_last"] is None and summary["test_acc_at_best_clean_epoch"] is None
    assert rows == []   # nothing reported as an accuracy


def test_epoch_rows_have_the_evaluation_metrics(tiny_config):
    rows, _, report = collect()
    run_trial(tiny_config, report)
    row = rows[-1]
    for name in ("test_acc", "clean_acc", "noisy_true_acc", "noisy_label_acc", "upper_loss", "train_loss", "lr"):
        assert math.isfinite(row[name]), name
    assert rows[0]["lr"] == tiny_config.lr
    assert 0 <= row["noisy_true_acc"] <= 1


def test_learning_rate_drops_at_the_milestones(tiny_config):
    config = dataclasses.replace(tiny_config, epochs=6, lr_milestones=(0.5, 5 / 6))
    rows, _, report = collect()
    run_trial(config, report)
    assert [r["lr"] for r in rows] == pytest.approx([0.1, 0.1, 0.1, 0.01, 0.01, 0.001])


def test_label_correction_diagnostics_on_a_hand_worked_set():
    """evaluate_set against counts worked out by hand: 4 samples of D', K = 3, the meta model's
    distributions fixed; samples 1 and 3 have corrupted labels."""
    from types import SimpleNamespace

    from ebomlc.methods.base import EvalOutput
    from ebomlc.train import evaluate_set

    corrected = torch.tensor([[0.7, 0.2, 0.1],     # given 0, true 0: kept (right)
                              [0.6, 0.3, 0.1],     # given 0, true 1: copied the wrong label, p(true) = 0.3
                              [0.1, 0.1, 0.8],     # given 2, true 2: kept (right)
                              [0.2, 0.5, 0.3]])    # given 2, true 1: corrected, p(true) = 0.5
    logits = torch.log(torch.tensor([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8], [0.1, 0.1, 0.8]]))
    given, true = torch.tensor([0, 0, 2, 2]), torch.tensor([0, 1, 2, 1])
    method = SimpleNamespace(evaluate=lambda x, y: EvalOutput(logits[x[:, 0].long()], corrected[x[:, 0].long()]))
    ctx = SimpleNamespace(num_classes=3, batches=lambda images: ((s, images[s:s + 3]) for s in range(0, 4, 3)))
    sums = evaluate_set(method, ctx, torch.arange(4.0)[:, None], given, true)

    assert sums["confusion"].tolist() == [[1, 0, 0], [1, 1, 0], [0, 0, 1]]     # rows: true, columns: argmax g
    assert int(sums["lc_correct_corrupted"]) == 1 and int(sums["lc_correct_uncorrupted"]) == 2
    assert int(sums["num_corrupted"]) == 2
    assert float(sums["lc_true_prob_corrupted"]) == pytest.approx(0.3 + 0.5)
    assert int(sums["correct"]) == 3 and int(sums["agree_given"]) == 3           # main model vs true / given
    expected_lower = -(corrected * logits).sum()                                 # Eq. (3), summed
    assert float(sums["lower"]) == pytest.approx(float(expected_lower))


def test_keep_freed_cpu_memory_applies_on_glibc_only():
    import platform

    from ebomlc.train import keep_freed_cpu_memory

    on_glibc = platform.libc_ver()[0] == "glibc"
    assert keep_freed_cpu_memory() is on_glibc
    assert keep_freed_cpu_memory() is on_glibc        # idempotent
