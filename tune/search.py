"""Search EBOMLC's rho and xi (optionally delta) with Optuna on Ray Tune, judging trials on validation data only.

    python tune/search.py --preset search-smoke                       # seconds per trial, synthetic images
    python tune/search.py --preset rho-xi --data-root /tmp/cifar      # CIFAR-10, uniform noise 40% and 80%
    python tune/search.py --preset rho-xi --resume                    # continue the studies to their budget
    python tune/search.py --preset rho-xi --resume --final-seeds 3    # then the best of each on 3 new seeds
    optuna-dashboard sqlite:///results/rho-xi/study.db                # look at the studies

A search spec (tune/presets/search-smoke.yaml, rho-xi.yaml, or `--config FILE`):

    base:      {method: ebomlc, epochs: 120, ...}    TrialConfig fields shared by every trial
    settings:  [{dataset: cifar10, noise: uniform_any, noise_rate: 0.4}, ...]   one study each
    search:    {rho: {low: 0.05, high: 0.8}, xi: {low: 0.01, high: 1.0, log: true}}   (delta too)
    num_samples, max_concurrent, grace_period, reduction_factor, validation_fraction, sampler_seed

Each setting (one dataset and noise: the fields of tune.grid.NOISE_FIELDS and `dataset`) gets its own
Optuna study, `<name>/<setting>` (e.g. rho-xi/cifar10-uniform_any-0.4), run one after the other. The
command-line options override the spec's values (`--rho LOW HIGH` etc. replace or add a range).

What the search may look at: every trial holds out `validation_fraction` of the clean set D
(class-balanced; the trial never trains on it) and the searcher (OptunaSearch, seeded TPE) maximises
`val_acc`, the validation accuracy after the trial's last epoch. Only the metrics in SEARCH_METRICS reach
Tune (the trainable's `report_metrics`), so neither the searcher, the ASHA scheduler nor Tune's logs ever
see a test metric. Test accuracy is still recorded in the Parquet rows, and `--final-seeds N` is the one
place it is summarised: the best configuration of each study re-run on N seeds the search never used,
its test accuracy at the epoch of best validation accuracy (`test_acc_at_best_clean_epoch`), mean ± std.

ASHA (time = epochs done) may stop a trial at its rungs (grace_period, x reduction_factor, ...) before
its last epoch, never at it, so a trial that reaches its last epoch always finishes and writes its own
Parquet rows. Optuna records an early-stopped trial as complete with the validation accuracy at which it
stopped (Ray's OptunaSearch), so the sampler learns from it; the best configuration is chosen among the
trials that trained all their epochs.

Storage and resume: each study lives in an Optuna storage, by default the SQLite file
`<storage>/<name>/study.db` (a local `--storage` only), else any SQLAlchemy URL given by
`--study-storage` (e.g. postgresql://user:password@host/db on a cluster). A study that exists already
is continued only with `--resume`: finished trials stay, trials left running by a killed driver are
marked failed, and new trials are drawn (the sampler sees all the old ones) until the study has
`num_samples` finished trials; a larger `--num-samples` extends a finished search.

Outputs under `<storage>/<name>/`: study.db, best_params.json (per setting: the best rho, xi, delta, its
validation accuracy, the number of trials), trials/ and epochs/ (Parquet, the sweep schema; trials stopped
by ASHA have status "stopped" and their epochs up to the stop), tune/ (Ray Tune's state), and with
`--final-seeds` final.json; the final runs' Parquet rows are in `<storage>/<name>-final/`.
Ray, resources, `--storage` and Parquet work as in tune/sweep.py.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import statistics
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):   # run as a script (python tune/search.py): import tune.* and ebomlc from this checkout
    sys.path.insert(0, str(REPO))

import pyarrow.fs as pafs  # noqa: E402
import yaml  # noqa: E402
from ray.tune import Callback  # noqa: E402

from ebomlc.config import ConfigError, TrialConfig  # noqa: E402
from ebomlc.results import compact, config_columns, filesystem, read_table, write_trial  # noqa: E402
from ebomlc.train import prepare  # noqa: E402
from tune.grid import NOISE_FIELDS, PRESETS  # noqa: E402
from tune.sweep import run as run_grid  # noqa: E402
from tune.sweep import experiment_root, finished_ids, trial_id_of, worker_environment, write_failed_trials  # noqa: E402
from tune.trainable import STATE_FILE, train_trial, trial_name  # noqa: E402

OBJECTIVE = "val_acc"        # maximised; the validation part of D, after the trial's last epoch
SEARCH_METRICS = ("epoch", "val_acc", "val_loss", "train_loss", "epoch_time_s")   # all that reaches Tune
SEARCHABLE = {"rho": False, "xi": True, "delta": True}   # name -> log scale unless the spec says otherwise
SETTING_FIELDS = ("dataset", *NOISE_FIELDS)
SPEC_DEFAULTS = {"num_samples": 20, "max_concurrent": 4, "grace_period": 1, "reduction_factor": 3,
                 "validation_fraction": 0.2, "sampler_seed": 0}
SPEC_KEYS = ("base", "settings", "search", *SPEC_DEFAULTS)


@dataclass(frozen=True)
class Range:
    """A searched hyper-parameter: uniform on [low, high], or log-uniform."""
    low: float
    high: float
    log: bool


@dataclass(frozen=True)
class StudyPlan:
    """One study: one setting, the TrialConfig fields of its trials less the searched ones, the ranges."""
    name: str                     # Optuna study name: <experiment>/<setting>
    setting: str                  # e.g. cifar10-uniform_any-0.4
    setting_fields: dict          # e.g. {"dataset": "cifar10", "noise": "uniform_any", "noise_rate": 0.4}
    trial: dict                   # TrialConfig.to_dict() of a validated trial, searched fields left out
    ranges: dict                  # name -> Range


@dataclass(frozen=True)
class SearchSpace:
    """Optuna's define-by-run space for OptunaSearch: draws the searched hyper-parameters of one trial.

    OptunaSearch merges the returned dict into the trial's Tune config, so `trial` carries the whole
    TrialConfig to the trainable; the draws also land at the top level of the config (rho=..., as Optuna
    names them). A class, not a closure: Tune pickles the searcher with its experiment state."""
    trial: dict
    ranges: dict

    def __call__(self, optuna_trial) -> dict[str, Any]:
        drawn = {name: optuna_trial.suggest_float(name, r.low, r.high, log=r.log) for name, r in self.ranges.items()}
        return {"trial": {**self.trial, **drawn}}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python tune/search.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--preset", help=f"a search preset in tune/presets/ ({', '.join(search_preset_names())})")
    source.add_argument("--config", type=Path, help="a search spec YAML file (format: this module's docstring)")
    parser.add_argument("--setting", action="append",
                        help="run only this setting of the spec, e.g. cifar10-uniform_any-0.4 (repeatable)")
    parser.add_argument("--storage", default="results", help="results folder or s3:// gs:// URI (default: ./results)")
    parser.add_argument("--name", help="experiment name: results go to <storage>/<name> (default: the preset name)")
    parser.add_argument("--study-storage",
                        help="Optuna storage, any SQLAlchemy URL, e.g. postgresql://user:pw@host/db "
                             "(default: sqlite:///<storage>/<name>/study.db; required when --storage is a URI)")
    parser.add_argument("--resume", action="store_true",
                        help="continue existing studies (and unfinished final runs) up to their budget")
    for name in SEARCHABLE:
        parser.add_argument(f"--{name}", nargs=2, type=float, metavar=("LOW", "HIGH"),
                            help=f"search {name} in [LOW, HIGH] (replaces or adds the spec's range)")
    parser.add_argument("--num-samples", type=int, help="finished trials per study (default: the spec's)")
    parser.add_argument("--max-concurrent", type=int, help="at most this many trials at once (default: the spec's)")
    parser.add_argument("--grace-period", type=int, help="ASHA: epochs a trial trains before it may be stopped")
    parser.add_argument("--reduction-factor", type=float, help="ASHA: keep 1/this of the trials at each rung")
    parser.add_argument("--validation-fraction", type=float,
                        help="part of D held out for validation, in (0, 1) (default: the spec's, else 0.2)")
    parser.add_argument("--sampler-seed", type=int,
                        help="seed of the TPE sampler, plus the study's trial count when resumed so that no draw "
                             "repeats (default: the spec's, else 0)")
    parser.add_argument("--final-seeds", type=int, default=0,
                        help="re-run each study's best configuration on N seeds the search did not use and "
                             "report its test accuracy, mean ± std (default: 0, none)")
    parser.add_argument("--address", help="Ray cluster: HOST:PORT, auto or local (as in tune/sweep.py)")
    parser.add_argument("--gpus-per-trial", type=float,
                        help="GPUs per trial (default: 0.25 when the cluster has GPUs, else 0)")
    parser.add_argument("--cpus-per-trial", type=float, default=1.0, help="CPUs (torch threads) per trial (default: 1)")
    parser.add_argument("--max-failures", type=int, default=2,
                        help="retries of a crashed trial, each from its last checkpoint (default: 2)")
    parser.add_argument("--data-root",
                        help="folder holding the CIFAR data (default: the spec's, $EBOMLC_DATA or ./data)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    name = args.name or args.preset or args.config.stem
    try:
        path = search_preset_path(args.preset) if args.preset else args.config
        try:
            spec = search_spec(read_search_spec(path), args)
            plans = study_plans(spec, name, args.data_root)
        except ConfigError as error:
            raise ConfigError(f"{args.preset or path}: {error}") from None
        plans = select_settings(plans, args.setting)
        if not name or "/" in name or name.startswith("."):
            raise ConfigError(f"--name must be a plain folder name, got {name!r}")
        if args.final_seeds < 0:
            raise ConfigError(f"--final-seeds must be >= 0, got {args.final_seeds}")
        results = experiment_root(args.storage, name)
        storage = open_study_storage(args.study_storage or default_study_storage(args.storage, results))
        check_studies_exist(storage, plans, args.resume)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    import ray

    owns_ray = not ray.is_initialized()
    if owns_ray:
        ray.init(address=args.address, runtime_env={"env_vars": worker_environment()},
                 logging_config=ray.LoggingConfig(log_level="WARNING"))
    # Tune warns when checkpoints come faster than it snapshots its state (short synthetic epochs)
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    try:
        cluster = ray.cluster_resources()
        gpus = args.gpus_per_trial
        if gpus is None:
            gpus = 0.25 if cluster.get("GPU", 0) > 0 else 0.0
        print(f"Ray: {cluster.get('CPU', 0):g} CPUs, {cluster.get('GPU', 0):g} GPUs; "
              f"{args.cpus_per_trial:g} CPU and {gpus:g} GPU per trial")
        statuses = [search_setting(args, spec, plan, name, results, storage, gpus) for plan in plans]   # one by one
    finally:
        if owns_ray:
            ray.shutdown()
    for root in (results, experiment_root(args.storage, f"{name}-final")):
        compact(root)                              # one file per partition: fast reads (ebomlc.results)
    print_outputs(results, storage.url, args.final_seeds, experiment_root(args.storage, f"{name}-final"))
    return max(statuses)


def search_setting(args: argparse.Namespace, spec: dict[str, Any], plan: StudyPlan, name: str, results: str,
                   storage, gpus: float) -> int:
    """One study: its trials, its best configuration into best_params.json, with --final-seeds the final runs
    into final.json. Returns 0, or 1 if a trial failed or there is no best configuration yet."""
    status = 0 if run_study(args, spec, plan, name, results, storage, gpus) else 1
    best = best_params(storage, plan)
    if best is None:
        print(f"study {plan.name}: no trial has trained all {plan.trial['epochs']} epochs yet, so no best "
              f"configuration (run more trials with --resume --num-samples N)")
        return 1
    update_json(results, "best_params.json", plan.setting, best)
    print(f"study {plan.name}: best {OBJECTIVE} {best[OBJECTIVE]:.4f} at {parameter_text(best['params'])} "
          f"(trial {best['trial_number']}; {best['trials']} trials, {best['trials_full_length']} trained all epochs)")
    if args.final_seeds:
        final = run_final(args, plan, best, name, experiment_root(args.storage, f"{name}-final"))
        update_json(results, "final.json", plan.setting, final)
        status = max(status, 1 if final["not_ok"] else 0)
    return status


# ---------------------------------------------------------------- the spec

def search_preset_names() -> list[str]:
    """Presets with a `search` section (the others are sweeps, for tune/sweep.py)."""
    return sorted(path.stem for path in PRESETS.glob("*.yaml")
                  if isinstance(spec := yaml.safe_load(path.read_text()), dict) and "search" in spec)


def search_preset_path(name: str) -> Path:
    if name not in search_preset_names():
        raise ConfigError(f"unknown search preset {name!r}; search presets: {', '.join(search_preset_names())} "
                          f"(or pass --config FILE)")
    return PRESETS / f"{name}.yaml"


def read_search_spec(path: Path) -> dict[str, Any]:
    """The spec in a YAML file; ConfigError (one line) if it is unreadable or has unknown keys."""
    if not path.is_file():
        raise ConfigError(f"config file {path} not found")
    try:
        spec = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}: invalid YAML{where}: {getattr(error, 'problem', None) or error}") from None
    if not isinstance(spec, dict):
        raise ConfigError(f"{path}: must be a mapping with keys from {', '.join(SPEC_KEYS)}")
    unknown = sorted(set(spec) - set(SPEC_KEYS))
    if unknown:
        raise ConfigError(f"unknown key {unknown[0]!r}; a search spec has {', '.join(SPEC_KEYS)}")
    return spec


def search_spec(spec: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """The spec with its defaults filled in and the command-line overrides applied; ranges as Range."""
    spec = {**SPEC_DEFAULTS, **spec}
    for key in SPEC_DEFAULTS:
        value = getattr(args, key)
        if value is not None:
            spec[key] = value
    search = spec.get("search") or {}
    if not isinstance(search, dict):
        raise ConfigError(f"search must be a mapping of name -> {{low, high, log}}, got {search!r}")
    ranges = {name: parse_range(name, value) for name, value in search.items()}
    for name in SEARCHABLE:
        given = getattr(args, name)
        if given is not None:
            log = ranges[name].log if name in ranges else SEARCHABLE[name]
            ranges[name] = Range(given[0], given[1], log)
    if not ranges:
        raise ConfigError(f"nothing to search: give `search` ranges for some of {', '.join(SEARCHABLE)}")
    spec["search"] = ranges

    for key in ("num_samples", "max_concurrent", "grace_period", "sampler_seed"):
        minimum = 0 if key == "sampler_seed" else 1
        if not isinstance(spec[key], int) or isinstance(spec[key], bool) or spec[key] < minimum:
            raise ConfigError(f"{key} must be an integer >= {minimum}, got {spec[key]!r}")
    if not _is_number(spec["reduction_factor"]) or spec["reduction_factor"] <= 1:
        raise ConfigError(f"reduction_factor must be a number > 1, got {spec['reduction_factor']!r}")
    fraction = spec["validation_fraction"]
    if not _is_number(fraction) or not 0 < fraction < 1:
        raise ConfigError(f"validation_fraction must be in (0, 1) for a search (its objective is {OBJECTIVE} "
                          f"on the validation part of D), got {fraction!r}")
    return spec


def parse_range(name: str, value: Any) -> Range:
    if name not in SEARCHABLE:
        raise ConfigError(f"search: {name!r} cannot be searched; searchable: {', '.join(SEARCHABLE)}")
    if not isinstance(value, dict) or not {"low", "high"} <= set(value) <= {"low", "high", "log"}:
        raise ConfigError(f"search: {name} must be a mapping {{low: L, high: H}} (log: true optional), got {value!r}")
    if not isinstance(value.get("log", False), bool):
        raise ConfigError(f"search: {name}.log must be true or false, got {value['log']!r}")
    return Range(value["low"], value["high"], value.get("log", SEARCHABLE[name]))


def study_plans(spec: dict[str, Any], experiment: str, data_root: str | None) -> list[StudyPlan]:
    """One validated study plan per setting. Both ends of every range are validated as trial configs
    (TrialConfig's rules: rho in (0, 1), xi in (0, 1], delta > 0) and the data is checked, before Ray."""
    base = spec.get("base") or {}
    if not isinstance(base, dict):
        raise ConfigError(f"base must be a mapping of TrialConfig fields, got {base!r}")
    ranges: dict[str, Range] = spec["search"]
    fixed = [name for name in (*ranges, "validation_fraction") if name in base]
    if fixed:
        raise ConfigError(f"{fixed[0]} is set in base and by the search; keep it out of base")
    for name, r in ranges.items():
        if not _is_number(r.low) or not _is_number(r.high) or not r.low < r.high:
            raise ConfigError(f"search: {name} needs numbers low < high, got [{r.low}, {r.high}] (to fix a value, "
                              f"put it in base instead)")
    settings = spec.get("settings")
    if not isinstance(settings, list) or not settings:
        raise ConfigError(f"settings must be a non-empty list of dataset/noise mappings, got {settings!r}")

    plans: dict[str, StudyPlan] = {}
    for number, setting in enumerate(settings, 1):
        if not isinstance(setting, dict) or not setting:
            raise ConfigError(f"setting {number} must be a mapping of {', '.join(SETTING_FIELDS)}, got {setting!r}")
        for field, value in setting.items():
            if field not in SETTING_FIELDS:
                raise ConfigError(f"setting {number} sets {field!r}; a setting may set {', '.join(SETTING_FIELDS)} "
                                  f"(other fields go in base)")
            if field in base:
                raise ConfigError(f"{field} is set both in base and by setting {number}; keep one")
            if isinstance(value, list) and field != "noise_matrix":
                raise ConfigError(f"setting {number}: {field} has several values {value}; a study searches one "
                                  f"setting, so list each value as its own entry of settings")
        values = {"method": "ebomlc", **base, **setting, "validation_fraction": spec["validation_fraction"]}
        for end in ("low", "high"):
            ends = {name: getattr(r, end) for name, r in ranges.items()}
            try:
                config = TrialConfig.from_dict({**values, **ends}).validated()
            except ConfigError as error:
                raise ConfigError(f"search range ({end} end): {error}") from None
        if spec["grace_period"] >= config.epochs:
            raise ConfigError(f"grace_period must be below the trials' epochs ({config.epochs}) so that ASHA can "
                              f"stop a trial, got {spec['grace_period']}")
        root = os.path.abspath(data_root or config.resolved_data_root())   # trials run in their own folders
        config = prepare(dataclasses.replace(config, data_root=root))
        trial = {k: v for k, v in config.to_dict().items() if k not in ranges}
        slug = setting_name(config)
        if slug in plans:
            raise ConfigError(f"settings {list(plans).index(slug) + 1} and {number} are both {slug}; one study each")
        plans[slug] = StudyPlan(f"{experiment}/{slug}", slug, dict(setting), trial, dict(ranges))
    return list(plans.values())


def setting_name(config: TrialConfig) -> str:
    """The study's setting as a name, e.g. cifar10-uniform_any-0.4 or cifar10-human-worse-0.4021."""
    parts = [config.dataset, config.noise, *([config.human_label_set] if config.noise == "human" else []),
             f"{config.noise_rate:g}"]
    return "-".join(parts)


def select_settings(plans: list[StudyPlan], wanted: list[str] | None) -> list[StudyPlan]:
    if not wanted:
        return plans
    names = [plan.setting for plan in plans]
    unknown = [name for name in wanted if name not in names]
    if unknown:
        raise ConfigError(f"--setting {unknown[0]!r} is not in the spec; its settings: {', '.join(names)}")
    return [plan for plan in plans if plan.setting in wanted]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# ---------------------------------------------------------------- the Optuna storage

def default_study_storage(storage: str, results: str) -> str:
    """sqlite:///<results>/study.db, for a local --storage."""
    if "://" in storage:
        raise ConfigError(f"--storage {storage} is not a local folder, so the study cannot be a SQLite file there; "
                          f"pass --study-storage URL (e.g. postgresql://user:password@host/db)")
    return f"sqlite:///{results}/study.db"


def open_study_storage(url: str):
    """The Optuna RDB storage at `url` (a SQLite file's folder is created); ConfigError if it cannot open."""
    import optuna
    import sqlalchemy.exc

    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    try:
        return optuna.storages.RDBStorage(url)
    except (ImportError, ValueError, sqlalchemy.exc.SQLAlchemyError) as error:
        raise ConfigError(f"cannot open the study storage {url}: {' '.join(str(error).split())}") from None


def check_studies_exist(storage, plans: list[StudyPlan], resume: bool) -> None:
    import optuna

    existing = set(optuna.study.get_all_study_names(storage))
    for plan in plans:
        if plan.name in existing and not resume:
            raise ConfigError(f"study {plan.name} already exists in {storage.url}; pass --resume to continue it, "
                              f"or --name for a new search")


# ---------------------------------------------------------------- the search

def run_study(args: argparse.Namespace, spec: dict[str, Any], plan: StudyPlan, experiment: str, results: str,
              storage, gpus: float) -> bool:
    """Run the study's missing trials on Ray Tune; returns False if a trial failed after its retries."""
    import optuna
    from optuna.trial import TrialState
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)   # not "Using an existing study" at each (re)load
    study = optuna.create_study(study_name=plan.name, storage=storage, direction="maximize", load_if_exists=True)
    ranges = {name: dataclasses.asdict(r) for name, r in plan.ranges.items()}
    for key, value in (("setting", plan.setting_fields), ("objective", f"{OBJECTIVE} after the last epoch"),
                       ("trial_config", plan.trial), ("ranges", ranges)):
        study.set_user_attr(key, value)   # shown by optuna-dashboard
    # trials left running by a killed driver will never report: mark them failed, draw new ones instead
    for stale in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(stale.number, state=TrialState.FAIL)
        print(f"study {plan.name}: trial {stale.number} was left running by an earlier driver; marked failed")
    finished = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))
    remaining = spec["num_samples"] - finished
    print(f"study {plan.name}: {finished} finished trials, {max(remaining, 0)} to run "
          f"(num_samples {spec['num_samples']})")
    if remaining <= 0:
        return True

    epochs = plan.trial["epochs"]
    # seeded, offset by the study's size: a resumed study must not draw its first random points again
    sampler = optuna.samplers.TPESampler(seed=spec["sampler_seed"] + len(study.trials))
    searcher = OptunaSearch(SearchSpace(plan.trial, plan.ranges), metric=OBJECTIVE, mode="max", sampler=sampler,
                            study_name=plan.name, storage=storage)
    # max_t = epochs - 1: no rung at the last epoch, so a trial that reaches it finishes and writes its rows
    scheduler = ASHAScheduler(time_attr="training_iteration", metric=OBJECTIVE, mode="max", max_t=epochs - 1,
                              grace_period=spec["grace_period"], reduction_factor=spec["reduction_factor"],
                              stop_last_trials=False)
    tuner = tune.Tuner(
        tune.with_resources(train_trial, {"cpu": args.cpus_per_trial, "gpu": gpus}),
        param_space={"experiment": experiment, "results": results, "report_metrics": list(SEARCH_METRICS)},
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=remaining,
                                    max_concurrent_trials=spec["max_concurrent"], reuse_actors=True,
                                    trial_name_creator=trial_name, trial_dirname_creator=trial_name),
        run_config=tune.RunConfig(
            name=time.strftime(f"{plan.setting}-run-%Y%m%d-%H%M%S"), storage_path=f"{results}/tune", verbose=0,
            callbacks=[SearchLines(plan, remaining)],
            failure_config=tune.FailureConfig(max_failures=args.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2)),
    )
    grid = tuner.fit()
    write_failed_trials([grid], experiment, results)
    write_stopped_trials(grid, experiment, results)
    return not grid.errors


class SearchLines(Callback):
    """One line per finished search trial: its draws, its validation accuracy and how far it trained."""

    def __init__(self, plan: StudyPlan, total: int):
        self.plan, self.total, self.finished = plan, total, 0

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.finished += 1
        result, epochs = trial.last_result, self.plan.trial["epochs"]
        done = result.get("training_iteration", 0)
        how = "trained all epochs" if done >= epochs else f"stopped after {done}/{epochs} epochs"
        draws = {name: trial.config[name] for name in self.plan.ranges}
        print(f"{time.strftime('%H:%M:%S')}  {self.plan.name}  {self.finished}/{self.total}  "
              f"{parameter_text(draws)}  {OBJECTIVE} {result.get(OBJECTIVE, math.nan):.4f}  {how}", flush=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        print(f"{time.strftime('%H:%M:%S')}  {self.plan.name}  {trial_name(trial)} failed after its retries "
              f"(the error goes into its trial row)", flush=True)


def write_stopped_trials(grid, experiment: str, results: str) -> None:
    """Rows for the trials ASHA stopped (status "stopped", accuracies empty) and their epochs, from the
    trial's last checkpoint: a stopped trial's process ends before it can write its own."""
    import torch

    finished = finished_ids(results)
    for result in grid:
        if result.error is not None or result.checkpoint is None or trial_id_of(result.config) in finished:
            continue
        with result.checkpoint.as_directory() as folder:
            saved = torch.load(os.path.join(folder, STATE_FILE), weights_only=False)   # written by train_trial
        state = saved["state"]
        row = {"trial_id": trial_id_of(result.config), "experiment": experiment, "status": "stopped",
               **config_columns(state["config"]), "epochs_done": len(state["history"]),
               "train_time_s": state["train_time_s"], "wall_time_s": saved["wall_time_s"]}
        write_trial(results, row, [{**epoch_row, "experiment": experiment} for epoch_row in state["history"]])


def best_params(storage, plan: StudyPlan) -> dict[str, Any] | None:
    """The study's best trial among those that trained all their epochs (None if there is none yet)."""
    import optuna
    from optuna.trial import TrialState

    study = optuna.load_study(study_name=plan.name, storage=storage)
    epochs = plan.trial["epochs"]
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    full_length = [t for t in complete if epochs in t.intermediate_values]   # Tune's step: epochs done
    if not full_length:
        return None
    best = max(full_length, key=lambda t: t.value)
    config = TrialConfig.from_dict({**plan.trial, **best.params}).validated()
    finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL))
    return {
        "study": plan.name, "setting": plan.setting_fields,
        "params": {"rho": config.rho, "xi": config.xi, "delta": config.delta}, "searched": list(plan.ranges),
        OBJECTIVE: best.value, "objective": f"{OBJECTIVE} after the last epoch (validation part of D)",
        "trial_number": best.number, "trial_id": config.trial_id(),
        "trials": len(finished), "trials_full_length": len(full_length),
        "validation_fraction": config.validation_fraction, "epochs": epochs, "seed": config.seed,
    }


# ---------------------------------------------------------------- the final runs

def fresh_seeds(used: int, count: int) -> list[int]:
    """The first `count` seeds (from 0) other than the one the search used."""
    return [seed for seed in range(count + 1) if seed != used][:count]


def run_final(args: argparse.Namespace, plan: StudyPlan, best: dict[str, Any], name: str, final_root: str) -> dict:
    """Re-run the best configuration on fresh seeds (a plain Tune grid, tune/sweep.py's runner) and
    summarise its test accuracy at the epoch of best validation accuracy."""
    base = {**plan.trial, **{k: v for k, v in best["params"].items() if k in plan.ranges}}
    seeds = fresh_seeds(best["seed"], args.final_seeds)
    configs = [TrialConfig.from_dict({**base, "seed": seed}).validated() for seed in seeds]
    done = finished_ids(final_root)
    pending = [config for config in configs if config.trial_id() not in done]
    print(f"final {plan.setting}: {parameter_text(best['params'])} on seeds {', '.join(map(str, seeds))} "
          f"({len(configs) - len(pending)} already done)")
    if pending:
        run_grid(args, f"{name}-final", final_root, pending)

    trials = read_table(final_root, "trials")
    trials = trials[trials["trial_id"].isin([config.trial_id() for config in configs])]
    ok = trials[trials["status"] == "ok"]
    accuracies = dict(zip(ok["seed"].astype(int), ok["test_acc_at_best_clean_epoch"].astype(float)))
    values = [accuracies[seed] for seed in seeds if seed in accuracies]
    mean = statistics.fmean(values) if values else None
    std = statistics.stdev(values) if len(values) > 1 else None
    final = {
        "study": plan.name, "setting": plan.setting_fields, "params": best["params"], "seeds": seeds,
        "test_acc_at_best_clean_epoch": {"mean": mean, "std": std,
                                         "per_seed": {str(seed): accuracies.get(seed) for seed in seeds}},
        "epoch_selection": f"the epoch of best {OBJECTIVE} (validation part of D, validation_fraction "
                           f"{best['validation_fraction']:g})",
        "not_ok": len(seeds) - len(values), "results": final_root,
    }
    shown = "no finished run" if mean is None else f"{mean:.4f}" + (f" ± {std:.4f}" if std is not None else "")
    print(f"final {plan.setting}: test accuracy {shown} over {len(values)} of {len(seeds)} seeds "
          f"(test_acc_at_best_clean_epoch; {parameter_text(best['params'])})")
    return final


# ---------------------------------------------------------------- outputs

def update_json(root: str, file_name: str, key: str, entry: dict[str, Any]) -> None:
    """Set `key` in the JSON object `<root>/<file_name>` (written whole to a temporary name, then renamed)."""
    fs, base = filesystem(root)
    path = f"{base}/{file_name}"
    content = {}
    if fs.get_file_info(path).type == pafs.FileType.File:
        with fs.open_input_stream(path) as stream:
            content = json.loads(stream.read())
    content[key] = entry
    fs.create_dir(base, recursive=True)
    temporary = f"{base}/.{file_name}.{uuid.uuid4().hex}.tmp"
    with fs.open_output_stream(temporary) as stream:
        stream.write(json.dumps(content, indent=2, default=list).encode())
    fs.move(temporary, path)


def parameter_text(params: dict[str, Any]) -> str:
    return " ".join(f"{name}={value:.4g}" for name, value in params.items() if value is not None)


def print_outputs(results: str, study_url: str, final_seeds: int, final_root: str) -> None:
    print(f"\nresults: {results}  (best_params.json{', final.json' if final_seeds else ''}; trials/ and epochs/ "
          f"as Parquet; Ray Tune state in tune/)")
    if final_seeds:
        print(f"final runs: {final_root}  (trials/ and epochs/ as Parquet)")
    print(f"studies: {study_url}   open them with: optuna-dashboard {study_url}")


if __name__ == "__main__":
    sys.exit(main())
