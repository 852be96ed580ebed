"""The Ray Tune sweep runner (tune/): grid expansion and presets without Ray, then sweeps on one real local
Ray cluster shared by the module: the smoke preset, a crashed trial retried from its checkpoint, a killed
driver resumed with --resume, and a diverged trial."""
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray
import yaml

from ebomlc.config import ConfigError, TrialConfig
from ebomlc.methods import METHODS
from ebomlc.results import read_table
from ebomlc.train import run_trial
from tune import sweep
from tune.grid import expand, preset_names, preset_path, read_spec
from tune.trainable import numeric

REPO = Path(__file__).resolve().parent.parent
SWEEP = [sys.executable, str(REPO / "tune" / "sweep.py")]

# a trial of about a second per epoch on one CPU thread
TINY = {"dataset": "synthetic", "synthetic_train": 600, "synthetic_test": 200, "synthetic_classes": 4,
        "synthetic_image_size": 8, "clean_fraction": 0.1, "model": "resnet8", "width": 8, "epochs": 3,
        "batch_size": 32, "clean_batch_size": 32, "device": "cpu"}


def write_spec(folder: Path, name: str, spec: dict) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def run_sweep_process(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*SWEEP, *args], capture_output=True, text=True, cwd=REPO, timeout=300,
                          env={**os.environ, **(env or {})})


# ---------------------------------------------------------------- grids (no Ray)

def test_method_hyperparameters_expand_only_for_the_methods_that_use_them():
    spec = {"base": TINY, "methods": ["erm", "glc", "mlc", "ebomlc"], "seeds": [0, 1],
            "rho": [0.1, 0.3], "k": [1, 2], "options": [{"phase1_fraction": 0.3}, {"phase1_fraction": 0.6}]}
    configs = expand(spec)
    by_method = {name: [c for c in configs if c.method == name] for name in spec["methods"]}
    for name, trials in by_method.items():
        cls = METHODS[name]
        expected = 2 * (2 if "rho" in cls.hyperparameters else 1) * (2 if "k" in cls.hyperparameters else 1) \
            * (2 if "phase1_fraction" in cls.options else 1)
        assert len(trials) == expected, name
    assert len(by_method["erm"]) == 2                                   # once per seed, never once per rho
    assert {c.rho for c in by_method["erm"] + by_method["glc"]} == {None}
    assert {(c.rho, c.k) for c in by_method["ebomlc"]} == {(0.1, 1), (0.1, 2), (0.3, 1), (0.3, 2)}
    assert {c.options["phase1_fraction"] for c in by_method["glc"]} == {0.3, 0.6}
    assert len({c.trial_id() for c in configs}) == len(configs)


def test_trials_equal_after_validation_are_kept_once():
    glc_default = METHODS["glc"].options["phase1_fraction"]
    spec = {"base": TINY, "methods": ["erm", "glc", "erm"], "seeds": [0, 0, 1],
            "options": [{}, {"phase1_fraction": glc_default}]}      # {} is glc's default, spelled out
    configs = expand(spec)
    assert [(c.method, c.seed) for c in configs] == [("erm", 0), ("erm", 1), ("glc", 0), ("glc", 1)]


@pytest.mark.parametrize("spec, message", [
    ({"methods": ["erm", "glc"], "rho": [0.1]}, "rho is listed but none of the methods (erm, glc) uses it"),
    ({"methods": ["erm"], "options": [{"nope": 1}]}, "option 'nope' is listed but none of the methods"),
    ({"methods": ["no_such_method"]}, "unknown method 'no_such_method'; known methods: erm"),
    ({"base": {**TINY, "seed": 0}, "seeds": [1]}, "seed is set both in base and by the 'seeds' axis"),
    ({"noise": [{"noise": "flip", "noise_rate": 1.5}]}, "noise_rate must be in [0, 1), got 1.5"),
    ({"seeds": 3}, "seeds must be a non-empty list, got 3"),
])
def test_bad_specs_name_the_problem(spec, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        expand({"base": TINY, **spec})


PRESET_SIZES = {"smoke": 6, "quick": 8, "table1": 210, "table2": 210, "ablation-k": 9, "rho": 48, "xi": 4,
                "cifar10n": 90}


@pytest.mark.parametrize("name", sorted(PRESET_SIZES))
def test_every_preset_validates_with_its_trial_count(name):
    assert len(expand(read_spec(preset_path(name)))) == PRESET_SIZES[name]


def test_every_preset_file_is_tested():
    assert sorted(preset_names()) == sorted(PRESET_SIZES)


def test_table1_dry_run_counts_210(tmp_path, capsys):
    assert sweep.main(["--preset", "table1", "--dry-run", "--storage", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[-1].startswith("preset table1: 210 trials (0 already finished")
    assert out.count(" cifar10 ") == 210
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("args, message", [
    (["--preset", "nope"], "error: preset nope: unknown preset 'nope'; presets: "),
    (["--config", "BAD"], "error: config BAD: noise_rate must be in [0, 1), got 1.5"),
    (["--preset", "smoke", "--name", "a/b"], "error: --name must be a plain folder name, got 'a/b'"),
])
def test_bad_sweep_returns_2_with_one_line_before_ray_starts(tmp_path, capsys, monkeypatch, args, message):
    bad = write_spec(tmp_path, "bad", {"base": TINY, "noise": [{"noise": "flip", "noise_rate": 1.5}]})
    monkeypatch.setattr(sweep, "run", lambda *a: pytest.fail("Ray was about to start"))
    assert sweep.main([str(bad) if a == "BAD" else a for a in args] + ["--storage", str(tmp_path / "out")]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(message.replace("BAD", str(bad))) and captured.err.count("\n") == 1
    assert captured.out == "" and not (tmp_path / "out").exists()


def test_bad_preset_exits_with_status_2_from_the_command_line(tmp_path):
    done = run_sweep_process("--preset", "nope", "--storage", str(tmp_path))
    assert done.returncode == 2 and done.stderr.startswith("error: preset nope: unknown preset")
    assert done.stderr.count("\n") == 1 and done.stdout == ""


def test_tune_sees_the_numbers_of_an_epoch_row_or_only_the_named_ones():
    row = {"trial_id": "abc", "method": "erm", "epoch": 2, "rho": None, "val_acc": 0.5, "test_acc": 0.6}
    assert numeric(row) == {"epoch": 2, "val_acc": 0.5, "test_acc": 0.6}
    assert numeric(row, ["epoch", "val_acc"]) == {"epoch": 2, "val_acc": 0.5}     # a searcher never sees test_acc


# ---------------------------------------------------------------- sweeps on one local Ray cluster

@pytest.fixture(scope="module")
def cluster():
    """A local Ray cluster with 2 CPUs and one logical GPU (so trials default to 0.25 GPU, none real: they
    run on the CPU); in-process sweeps use it directly, sweep.py subprocesses join it by address."""
    ray.init(address="local", num_cpus=2, num_gpus=1, include_dashboard=False,
             logging_config=ray.LoggingConfig(log_level="WARNING"))
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def trial_rows(results: Path):
    return read_table(str(results), "trials"), read_table(str(results), "epochs")


def test_smoke_sweep_writes_every_trial_once_and_a_rerun_starts_nothing(cluster, tmp_path, capsys):
    assert sweep.main(["--storage", str(tmp_path)]) == 0           # the README's `python tune/sweep.py`
    out = capsys.readouterr().out
    assert "1 CPU and 0.25 GPU per trial" in out and "GPU-hours" in out
    trials, epochs = trial_rows(tmp_path / "smoke")
    expected = {c.trial_id() for c in expand(read_spec(preset_path("smoke")))}
    assert sorted(trials["trial_id"]) == sorted(expected)
    assert set(trials["status"]) == {"ok"} and set(trials["experiment"]) == {"smoke"}
    assert trials["node_id"].notna().all()
    assert len(epochs) == len(expected) * 3 and not epochs.duplicated(["trial_id", "epoch"]).any()
    partitions = set(zip(trials["dataset"], trials["method"]))       # compacted when the sweep ended
    for table in ("trials", "epochs"):
        assert len(list((tmp_path / "smoke" / table).rglob("*.parquet"))) == len(partitions) < len(expected)
    written = {p: p.stat().st_mtime_ns for p in (tmp_path / "smoke").rglob("*.parquet")}

    assert sweep.main(["--storage", str(tmp_path), "--resume"]) == 0
    out = capsys.readouterr().out
    assert "0 done, 0 failed, 0 diverged in this run; 6 skipped" in out and "started" not in out
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "smoke").rglob("*.parquet")} == written
    assert len(list((tmp_path / "smoke" / "tune").iterdir())) == 1   # no second Tune run


def test_crashed_trial_resumes_from_its_checkpoint_with_the_numbers_of_an_uninterrupted_run(cluster, tmp_path):
    spec = write_spec(tmp_path, "crash", {"base": TINY, "methods": ["erm"], "seeds": [3]})
    marker = tmp_path / "crashed"
    done = run_sweep_process("--config", str(spec), "--storage", str(tmp_path), "--address", cluster,
                             env={"EBOMLC_SWEEP_TEST_CRASH": f"1:{marker}"})
    assert done.returncode == 0, done.stdout + done.stderr
    assert marker.exists() and "crashed; retrying from its last checkpoint" in done.stdout

    reference_rows = []
    reference = run_trial(TrialConfig.from_dict({**TINY, "method": "erm", "seed": 3}),
                          lambda row, state: reference_rows.append(row))
    trials, epochs = trial_rows(tmp_path / "crash")
    assert len(trials) == 1
    row = trials.iloc[0]
    for key in ("status", "test_acc_at_best_clean_epoch", "best_clean_epoch", "test_acc_last", "test_acc_max",
                "epochs_done"):
        assert row[key] == reference[key], key
    epochs = epochs.sort_values("epoch")
    assert list(epochs["epoch"]) == [0, 1, 2]
    for name in ("train_loss", "test_acc", "test_loss", "clean_acc", "noisy_true_acc", "lr"):
        assert list(epochs[name]) == [r[name] for r in reference_rows], name


def test_killed_driver_is_resumed_and_every_trial_is_written_once(cluster, tmp_path):
    spec = write_spec(tmp_path, "kill", {"base": TINY, "methods": ["erm"], "seeds": [0, 1],
                                         "noise": [{"noise": "uniform_any", "noise_rate": 0.4},
                                                   {"noise": "flip", "noise_rate": 0.2}]})
    expected = {c.trial_id() for c in expand(read_spec(spec))}
    files = tmp_path / "kill" / "trials"
    driver = subprocess.Popen([*SWEEP, "--config", str(spec), "--storage", str(tmp_path), "--address", cluster],
                              cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while len(list(files.rglob("*.parquet"))) < 2 and driver.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert driver.poll() is None, "the sweep ended before it could be killed"
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    assert 2 <= len(list(files.rglob("*.parquet"))) < len(expected)

    done = run_sweep_process("--config", str(spec), "--storage", str(tmp_path), "--address", cluster, "--resume")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "--resume: restoring" in done.stdout
    trials, epochs = trial_rows(tmp_path / "kill")
    assert sorted(trials["trial_id"]) == sorted(expected) and set(trials["status"]) == {"ok"}
    assert len(epochs) == 3 * len(expected) and not epochs.duplicated(["trial_id", "epoch"]).any()


def test_diverged_trial_is_written_as_diverged_and_not_retried(cluster, tmp_path, capsys):
    spec = write_spec(tmp_path, "diverge", {"base": {**TINY, "lr": 1e30, "momentum": 0.0}, "methods": ["erm"]})
    assert sweep.main(["--config", str(spec), "--storage", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "0 done, 0 failed, 1 diverged in this run" in out and "at epoch 0" in out and "crashed" not in out
    trials, epochs = trial_rows(tmp_path / "diverge")
    row = trials.iloc[0]
    assert row["status"] == "diverged" and row["diverged_epoch"] == 0 and row["epochs_done"] == 1
    assert row[["test_acc_at_best_clean_epoch", "test_acc_last", "test_acc_max"]].isna().all()
    assert len(epochs) == 0
