"""The Optuna search (tune/search.py): specs and bad input without Ray, then on one real local Ray cluster
shared by the module: the search-smoke study (3 trials) written to SQLite, continued with --resume to 4
trials and followed by --final-seeds 2. What the searcher received is recorded by wrapping OptunaSearch's
on_trial_result / on_trial_complete in the test process (the Tune driver), so the test sees exactly the
results that could have steered the search."""
import json
import math
import re
import statistics
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import ray
import yaml
from ray.tune.search.optuna import OptunaSearch

from ebomlc.results import read_table
from tune import search
from tune.sweep import worker_environment

REPO = Path(__file__).resolve().parent.parent
STUDY = "search-smoke/synthetic-uniform_any-0.4"
EPOCHS = 3   # search-smoke.yaml


# ---------------------------------------------------------------- specs and bad input (no Ray)

def test_rho_xi_preset_is_one_study_per_setting(monkeypatch):
    monkeypatch.setattr(search, "prepare", lambda config: config)     # no CIFAR files here
    args = search.build_parser().parse_args(["--preset", "rho-xi"])
    spec = search.search_spec(search.read_search_spec(search.search_preset_path("rho-xi")), args)
    plans = search.study_plans(spec, "rho-xi", None)
    assert [plan.name for plan in plans] == ["rho-xi/cifar10-uniform_any-0.4", "rho-xi/cifar10-uniform_any-0.8"]
    for plan in plans:
        assert plan.trial["method"] == "ebomlc" and plan.trial["epochs"] == 120
        assert plan.trial["validation_fraction"] == 0.2 and "rho" not in plan.trial and "xi" not in plan.trial
        assert plan.ranges == {"rho": search.Range(0.05, 0.8, False), "xi": search.Range(0.01, 1.0, True)}
    assert search.search_preset_names() == ["rho-xi", "search-smoke"]


def test_fresh_seeds_skip_the_search_seed():
    assert search.fresh_seeds(0, 3) == [1, 2, 3]
    assert search.fresh_seeds(2, 3) == [0, 1, 3]


def write_spec(folder: Path, name: str, **changes) -> Path:
    """search-smoke.yaml with some keys changed, as <folder>/<name>.yaml."""
    spec = yaml.safe_load(search.search_preset_path("search-smoke").read_text())
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**spec, **changes}))
    return path


@pytest.mark.parametrize("args, message", [
    (["--preset", "nope"], "error: unknown search preset 'nope'; search presets: rho-xi, search-smoke"),
    (["--preset", "smoke"], "error: unknown search preset 'smoke'"),
    (["--preset", "search-smoke", "--rho", "0", "0.5"],
     "error: search-smoke: search range (low end): rho must be in (0, 1), got 0.0"),
    (["--preset", "search-smoke", "--rho", "0.2", "1"],
     "error: search-smoke: search range (high end): rho must be in (0, 1), got 1.0"),
    (["--preset", "search-smoke", "--xi", "0.5", "1.5"],
     "error: search-smoke: search range (high end): xi must be in (0, 1], got 1.5"),
    (["--preset", "search-smoke", "--delta", "0.5", "0.1"],
     "error: search-smoke: search: delta needs numbers low < high"),
    (["--preset", "search-smoke", "--validation-fraction", "0"],
     "error: search-smoke: validation_fraction must be in (0, 1) for a search"),
    (["--preset", "search-smoke", "--grace-period", "3"], "error: search-smoke: grace_period must be below"),
    (["--preset", "search-smoke", "--setting", "cifar10-flip-0.2"],
     "error: --setting 'cifar10-flip-0.2' is not in the spec; its settings: synthetic-uniform_any-0.4"),
    (["--preset", "search-smoke", "--storage", "s3://bucket/prefix"],
     "error: --storage s3://bucket/prefix is not a local folder, so the study cannot be a SQLite"),
    (["--config", "TWO_RATES"], "error: TWO_RATES: setting 1: noise_rate has several values [0.4, 0.8]; a study "
                                "searches one setting"),
    (["--config", "SEARCH_SEED"], "error: SEARCH_SEED: search: 'seed' cannot be searched; searchable: rho, xi, delta"),
])
def test_bad_input_returns_2_with_one_line_before_ray_starts(tmp_path, capsys, monkeypatch, args, message):
    files = {"TWO_RATES": write_spec(tmp_path, "two_rates", settings=[{"dataset": "synthetic", "noise": "uniform_any",
                                                          "noise_rate": [0.4, 0.8]}]),
             "SEARCH_SEED": write_spec(tmp_path, "search_seed", search={"seed": {"low": 0, "high": 9}})}
    monkeypatch.setattr(search, "run_study", lambda *a: pytest.fail("Ray was about to start"))
    argv = [str(files.get(a, a)) for a in args]
    assert search.main(argv + ([] if "--storage" in argv else ["--storage", str(tmp_path / "out")])) == 2
    captured = capsys.readouterr()
    expected = message
    for key, path in files.items():
        expected = expected.replace(key, str(path))
    assert captured.err.startswith(expected) and captured.err.count("\n") == 1
    assert captured.out == "" and not (tmp_path / "out").exists()


def test_bad_preset_exits_with_status_2_from_the_command_line(tmp_path):
    done = subprocess.run([sys.executable, str(REPO / "tune" / "search.py"), "--preset", "nope", "--storage",
                           str(tmp_path)], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 2 and done.stderr.startswith("error: unknown search preset 'nope'")
    assert done.stderr.count("\n") == 1 and done.stdout == "" and not any(tmp_path.iterdir())


# ---------------------------------------------------------------- a search on one local Ray cluster

@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """search-smoke with 3 trials, then --resume to 4 trials and --final-seeds 2; what the searcher got."""
    storage = tmp_path_factory.mktemp("search")
    received = []   # (hook, result) for every result handed to OptunaSearch

    def recording(hook):
        original = getattr(OptunaSearch, hook)

        def wrapper(self, trial_id, result=None, **kwargs):
            if result is not None:
                received.append((hook, dict(result)))
            return original(self, trial_id, result, **kwargs)
        return wrapper

    ray.init(address="local", num_cpus=2, include_dashboard=False, runtime_env={"env_vars": worker_environment()},
             logging_config=ray.LoggingConfig(log_level="WARNING"))
    try:
        with pytest.MonkeyPatch.context() as patch:
            for hook in ("on_trial_result", "on_trial_complete"):
                patch.setattr(OptunaSearch, hook, recording(hook))
            argv = ["--preset", "search-smoke", "--storage", str(storage)]
            first = search.main(argv + ["--num-samples", "3"])
            url = f"sqlite:///{storage}/search-smoke/study.db"
            after_first = [(t.number, t.params) for t in optuna.load_study(study_name=STUDY, storage=url).trials]
            second = search.main(argv + ["--num-samples", "4", "--resume", "--final-seeds", "2"])
    finally:
        ray.shutdown()
    yield {"storage": storage, "results": storage / "search-smoke", "url": url, "status": (first, second),
           "after_first": after_first, "received": received}


def test_the_study_is_stored_in_sqlite_and_resume_adds_trials_to_it(searched):
    assert searched["status"] == (0, 0)
    assert (searched["results"] / "study.db").is_file()
    assert [number for number, _ in searched["after_first"]] == [0, 1, 2]
    study = optuna.load_study(study_name=STUDY, storage=searched["url"])
    assert [t.number for t in study.trials] == [0, 1, 2, 3]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    assert [t.params for t in study.trials[:3]] == [params for _, params in searched["after_first"]]
    # the resumed sampler is not the first one again: trial 3 is a new draw, not a repeat of trial 0
    assert study.trials[3].params not in [t.params for t in study.trials[:3]]
    assert study.user_attrs["setting"] == {"dataset": "synthetic", "noise": "uniform_any", "noise_rate": 0.4}


def test_best_params_are_the_best_full_length_trial_by_validation_accuracy(searched):
    best = json.loads((searched["results"] / "best_params.json").read_text())["synthetic-uniform_any-0.4"]
    study = optuna.load_study(study_name=STUDY, storage=searched["url"])
    full_length = [t for t in study.trials if EPOCHS in t.intermediate_values]
    top = max(full_length, key=lambda t: t.value)
    assert best["trial_number"] == top.number and best["val_acc"] == top.value
    assert best["trials"] == 4 and best["trials_full_length"] == len(full_length) >= 1
    assert 0.05 <= best["params"]["rho"] <= 0.8 and 0.01 <= best["params"]["xi"] <= 1.0
    assert best["params"] == {**top.params, "delta": 0.25} and best["searched"] == ["rho", "xi"]
    assert best["setting"] == {"dataset": "synthetic", "noise": "uniform_any", "noise_rate": 0.4}
    trials = read_table(str(searched["results"]), "trials").set_index("trial_id")
    assert trials.loc[best["trial_id"], "status"] == "ok"
    assert trials.loc[best["trial_id"], "rho"] == best["params"]["rho"]


def test_only_validation_metrics_reach_the_searcher_and_tune(searched):
    received = searched["received"]
    assert {hook for hook, _ in received} == {"on_trial_result", "on_trial_complete"}
    for _, result in received:
        assert search.OBJECTIVE in result
        assert not [key for key in result if key.startswith("test") or "/test" in key], result.keys()
    logged = [json.loads(line) for path in (searched["results"] / "tune").rglob("result.json")
              for line in path.read_text().splitlines()]
    assert len(logged) >= 4 and all(not [k for k in row if k.startswith("test")] for row in logged)

    # the study's values are the validation accuracies of the Parquet epoch rows; test accuracy is recorded
    study = optuna.load_study(study_name=STUDY, storage=searched["url"])
    trials = read_table(str(searched["results"]), "trials")
    epochs = read_table(str(searched["results"]), "epochs")
    assert epochs["test_acc"].notna().all() and epochs["val_acc"].notna().all()
    for trial in study.trials:
        trial_id = trials.loc[(trials["rho"] == trial.params["rho"]) & (trials["xi"] == trial.params["xi"]),
                              "trial_id"].item()
        rows = epochs[epochs["trial_id"] == trial_id].set_index("epoch")
        for step, value in trial.intermediate_values.items():
            assert value == rows.loc[step - 1, "val_acc"]
        assert trial.value == rows["val_acc"].iloc[-1]


def test_every_search_trial_has_a_parquet_row_stopped_ones_up_to_their_stop(searched):
    trials = read_table(str(searched["results"]), "trials")
    epochs = read_table(str(searched["results"]), "epochs")
    assert len(trials) == 4 and set(trials["status"]) <= {"ok", "stopped"} and "ok" in set(trials["status"])
    assert (trials["validation_fraction"] == 0.2).all() and set(trials["experiment"]) == {"search-smoke"}
    for row in trials.itertuples():
        assert (epochs["trial_id"] == row.trial_id).sum() == row.epochs_done
        assert (row.epochs_done == EPOCHS) == (row.status == "ok")
        assert math.isnan(row.test_acc_at_best_clean_epoch) == (row.status == "stopped")


def test_final_seeds_rerun_the_best_on_fresh_seeds_and_summarise_test_accuracy(searched):
    best = json.loads((searched["results"] / "best_params.json").read_text())["synthetic-uniform_any-0.4"]
    final = json.loads((searched["results"] / "final.json").read_text())["synthetic-uniform_any-0.4"]
    assert final["seeds"] == [1, 2] and final["params"] == best["params"] and final["not_ok"] == 0
    trials = read_table(str(searched["storage"] / "search-smoke-final"), "trials")
    assert sorted(trials["seed"]) == [1, 2] and set(trials["status"]) == {"ok"}
    assert (trials["rho"] == best["params"]["rho"]).all() and (trials["xi"] == best["params"]["xi"]).all()
    assert (trials["validation_fraction"] == 0.2).all()
    accuracies = trials.set_index("seed")["test_acc_at_best_clean_epoch"]
    summary = final["test_acc_at_best_clean_epoch"]
    assert summary["per_seed"] == {"1": accuracies[1], "2": accuracies[2]}
    assert summary["mean"] == pytest.approx(statistics.fmean(accuracies))
    assert summary["std"] == pytest.approx(statistics.stdev(accuracies))


def test_an_existing_study_is_not_continued_without_resume(searched, capsys, monkeypatch):
    monkeypatch.setattr(search, "run_study", lambda *a: pytest.fail("Ray was about to start"))
    assert search.main(["--preset", "search-smoke", "--storage", str(searched["storage"])]) == 2
    err = capsys.readouterr().err
    assert re.fullmatch(rf"error: study {STUDY} already exists in sqlite:///\S+/study.db; pass --resume to "
                        r"continue it, or --name for a new search\n", err)
