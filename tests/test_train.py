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
