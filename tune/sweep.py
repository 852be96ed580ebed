"""Run a sweep of trials on Ray Tune: a preset (or config YAML) -> validated trials -> Parquet results.

    python tune/sweep.py                                      # the smoke preset on local Ray, seconds per trial
    python tune/sweep.py --preset quick --data-root /tmp/cifar
    python tune/sweep.py --preset table1 --dry-run            # list the 210 trials, run nothing
    python tune/sweep.py --preset table1 --storage s3://bucket/ebomlc    # on the head of a Ray cluster
    python tune/sweep.py --preset table1 --resume             # continue a sweep whose driver was killed

Trials come from tune/presets/<name>.yaml or `--config FILE` (the format: tune/grid.py). All of them are
validated before Ray starts (a bad preset exits with status 2 and one line naming the problem), and a
trial whose id already has a row in `<storage>/<name>/trials` (status ok or diverged) is skipped, so a
repeated or resumed sweep never runs a finished trial twice; failed trials run again.

Ray: `--address` HOST:PORT or auto joins a cluster; by default this joins the cluster named by RAY_ADDRESS
or one started on this machine with `ray start`, else starts Ray here. Every trial gets `--cpus-per-trial`
CPUs (its torch threads) and `--gpus-per-trial` GPUs (default 0.25 when the cluster has GPUs: four
trials share a GPU, each capped at its share of the GPU memory). Workers import `tune` and `ebomlc`
from this checkout (same path on every node, as `ray up` file mounts give) or from the installed package;
EBOMLC_* environment variables (EBOMLC_DATA, ...) are passed on to them.

Results (ebomlc/results.py): `<storage>/<name>/trials/` and `.../epochs/`, one Parquet file per trial,
written by the trial's own process when it finishes; failed trials get a row with status "failed" and
the error. Ray Tune's own state (checkpoints every epoch, for retries and --resume) lives in
`<storage>/<name>/tune/run-<time>/`. On a multi-node cluster `--storage` must be shared by all nodes
(s3://, gs:// or a shared file system). Exit status: 0; 1 if a trial failed; 2 for a bad preset or data.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):   # run as a script (python tune/sweep.py): import tune.* and ebomlc from this checkout
    sys.path.insert(0, str(REPO))

import pyarrow.fs as pafs  # noqa: E402
import ray  # noqa: E402
from ray import tune  # noqa: E402  (Ray Tune; this folder's own modules are imported as tune.grid, ...)
from ray.tune import Callback  # noqa: E402

from ebomlc.config import ConfigError, TrialConfig  # noqa: E402
from ebomlc.results import compact, config_columns, filesystem, read_table, write_trial  # noqa: E402
from ebomlc.train import prepare  # noqa: E402
from tune.grid import expand, hyperparameter_text, preset_path, read_spec  # noqa: E402
from tune.trainable import train_trial, trial_name  # noqa: E402

DEFAULT_PRESET = "smoke"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python tune/sweep.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--preset", help=f"a preset in tune/presets/ (default: {DEFAULT_PRESET})")
    source.add_argument("--config", type=Path, help="a sweep YAML file (format: tune/grid.py)")
    parser.add_argument("--storage", default="results", help="results folder or s3:// gs:// URI (default: ./results)")
    parser.add_argument("--name", help="experiment name: results go to <storage>/<name> (default: the preset name)")
    parser.add_argument("--address", help="Ray cluster: HOST:PORT, auto (a running one), or local (always a new "
                                          "local Ray) (default: RAY_ADDRESS or a cluster started on this "
                                          "machine with `ray start`, else a new local Ray)")
    parser.add_argument("--gpus-per-trial", type=float,
                        help="GPUs per trial (default: 0.25 when the cluster has GPUs, else 0)")
    parser.add_argument("--cpus-per-trial", type=float, default=1.0, help="CPUs (torch threads) per trial (default: 1)")
    parser.add_argument("--max-concurrent", type=int, help="at most this many trials at once (default: as resources allow)")
    parser.add_argument("--max-failures", type=int, default=2,
                        help="retries of a crashed trial, each from its last checkpoint (default: 2)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the last Ray Tune run of this experiment: unfinished and errored trials "
                             "from their checkpoints, then any trial of the preset still without a result")
    parser.add_argument("--dry-run", action="store_true", help="print the trials and their count; run nothing")
    parser.add_argument("--data-root", help="folder holding the CIFAR data (default: the preset's, $EBOMLC_DATA or ./data)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    preset = args.preset or (None if args.config else DEFAULT_PRESET)
    name = args.name or preset or args.config.stem
    try:
        source = f"preset {preset}" if preset else f"config {args.config}"
        try:
            configs = expand(read_spec(preset_path(preset) if preset else args.config))
        except ConfigError as error:
            raise ConfigError(f"{source}: {error}") from None
        if not name or "/" in name or name.startswith("."):
            raise ConfigError(f"--name must be a plain folder name, got {name!r}")
        results = experiment_root(args.storage, name)
        finished = finished_ids(results)
        pending = [config for config in configs if config.trial_id() not in finished]
        if args.dry_run:
            print_trials(configs, finished)
            print(f"{source}: {len(configs)} trials ({len(configs) - len(pending)} already finished in {results}, "
                  f"{len(pending)} to run)")
            return 0
        # every cheap check (data present, ...) before Ray starts; worker processes run in their trial
        # folders, so the data root they get is absolute
        pending = [prepare(dataclasses.replace(config, data_root=os.path.abspath(
            args.data_root or config.resolved_data_root()))) for config in pending]
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    started = time.perf_counter()
    run_ids: set[str] = set()
    gpus = args.gpus_per_trial or 0.0
    if pending:
        run_ids, gpus = run(args, name, results, pending)
        compact(results)                           # one file per partition: fast reads (ebomlc.results)
    return print_summary(name, results, configs, finished, run_ids - finished, gpus, args.cpus_per_trial,
                         time.perf_counter() - started)


# ---------------------------------------------------------------- running on Ray

def run(args: argparse.Namespace, name: str, results: str, pending: list[TrialConfig]) -> tuple[set[str], float]:
    """Run the pending trials on Ray Tune (after restoring the last run, with --resume); returns the ids of
    the trials it ran and the GPUs per trial."""
    owns_ray = not ray.is_initialized()
    if owns_ray:
        ray.init(address=args.address, runtime_env={"env_vars": worker_environment()},
                 logging_config=ray.LoggingConfig(log_level="WARNING"))
    # Tune warns when checkpoints come faster than it snapshots its state (short synthetic epochs)
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    try:
        cluster = ray.cluster_resources()
        gpus = args.gpus_per_trial
        note = ""
        if gpus is None:
            gpus = 0.25 if cluster.get("GPU", 0) > 0 else 0.0
            if not gpus:
                note = " (no GPU in the cluster now; an autoscaling cluster whose GPU nodes are not up yet needs " \
                       "--gpus-per-trial)"
        print(f"Ray: {cluster.get('CPU', 0):g} CPUs, {cluster.get('GPU', 0):g} GPUs; "
              f"{args.cpus_per_trial:g} CPU and {gpus:g} GPU per trial{note}")
        trainable = tune.with_resources(train_trial, {"cpu": args.cpus_per_trial, "gpu": gpus})
        tune_root = f"{results}/tune"
        grids = []
        if args.resume:
            last = last_run(tune_root)
            if last is None:
                print(f"--resume: no Ray Tune run to restore in {tune_root}; starting the pending trials afresh")
            else:
                print(f"--resume: restoring {last}")
                grids.append(tune.Tuner.restore(last, trainable, resume_unfinished=True, resume_errored=True).fit())
        attempted = {trial_id_of(result.config) for grid in grids for result in grid}
        finished = finished_ids(results)
        remaining = [c for c in pending if c.trial_id() not in finished | attempted]
        if remaining:
            tuner = tune.Tuner(
                trainable,
                param_space={"trial": tune.grid_search([c.to_dict() for c in remaining]),
                             "experiment": name, "results": results},
                tune_config=tune.TuneConfig(max_concurrent_trials=args.max_concurrent, reuse_actors=True,
                                            trial_name_creator=trial_name, trial_dirname_creator=trial_name),
                run_config=tune.RunConfig(
                    name=time.strftime("run-%Y%m%d-%H%M%S"), storage_path=tune_root, verbose=0,
                    callbacks=[TrialLines()],
                    failure_config=tune.FailureConfig(max_failures=args.max_failures),
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=2)),
            )
            grids.append(tuner.fit())
        write_failed_trials(grids, name, results)
        return {trial_id_of(result.config) for grid in grids for result in grid}, gpus
    finally:
        if owns_ray:
            ray.shutdown()


class TrialLines(Callback):
    """Progress as one line per trial event (start, retry, finish, failure) instead of Tune's tables."""

    def say(self, trial, text: str) -> None:
        print(f"{time.strftime('%H:%M:%S')}  {trial_name(trial)}  {text}", flush=True)

    def on_trial_start(self, iteration, trials, trial, **info):
        self.say(trial, "started" if trial.checkpoint is None else "continues from its last checkpoint")

    def on_trial_recover(self, iteration, trials, trial, **info):
        self.say(trial, "crashed; retrying from its last checkpoint")

    def on_trial_complete(self, iteration, trials, trial, **info):
        done = sum(t.status == "TERMINATED" or t is trial for t in trials)
        self.say(trial, f"finished ({done}/{len(trials)} of this Tune run)")

    def on_trial_error(self, iteration, trials, trial, **info):
        self.say(trial, "failed after its retries (the error goes into its trial row)")


def worker_environment() -> dict[str, str]:
    """Environment for the trial processes: this checkout on the Python path, and the EBOMLC_* variables."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    return {"PYTHONPATH": path, **{k: v for k, v in os.environ.items() if k.startswith("EBOMLC_")}}


def last_run(tune_root: str) -> str | None:
    """The newest restorable Ray Tune run (run-<time>) under `tune_root`, or None."""
    fs, base = filesystem(tune_root)
    if fs.get_file_info(base).type != pafs.FileType.Directory:
        return None
    runs = sorted(info.base_name for info in fs.get_file_info(pafs.FileSelector(base))
                  if info.type == pafs.FileType.Directory and info.base_name.startswith("run-"))
    for run_name in reversed(runs):
        if tune.Tuner.can_restore(f"{tune_root}/{run_name}"):
            return f"{tune_root}/{run_name}"
    return None


def write_failed_trials(grids: list, name: str, results: str) -> None:
    """A trial row with status "failed" and the error for each trial that failed after all its retries."""
    finished = finished_ids(results)
    for grid in grids:
        for result in grid:
            trial_id = trial_id_of(result.config)
            if result.error is None or trial_id in finished:
                continue
            metrics = result.metrics or {}
            row = {"trial_id": trial_id, "experiment": name, "status": "failed", "error": str(result.error),
                   **config_columns(result.config["trial"]),
                   "epochs_done": metrics["epoch"] + 1 if "epoch" in metrics else 0,
                   "wall_time_s": metrics.get("time_total_s")}
            write_trial(results, row, [])


# ---------------------------------------------------------------- results

def experiment_root(storage: str, name: str) -> str:
    """<storage>/<name>: an absolute folder, or a URI."""
    if "://" in storage:
        return f"{storage.rstrip('/')}/{name}"
    return os.path.abspath(os.path.join(storage, name))


def finished_ids(results: str) -> set[str]:
    """Trials with a result (ok or diverged) under `results`; failed ones are run again."""
    trials = read_table(results, "trials", columns=["trial_id", "status"])
    return set(trials.loc[trials["status"] != "failed", "trial_id"])


def trial_id_of(tune_config: dict) -> str:
    return TrialConfig.from_dict(tune_config["trial"]).trial_id()


def print_trials(configs: list[TrialConfig], finished: set[str]) -> None:
    print(f"{'#':>4}  {'trial_id':12}  {'dataset':9}  {'noise':11}  {'rate':>5}  {'method':15}  {'seed':>4}  "
          f"{'epochs':>6}  hyper-parameters")
    for i, c in enumerate(configs, 1):
        mark = "  (finished)" if c.trial_id() in finished else ""
        print(f"{i:>4}  {c.trial_id():12}  {c.dataset:9}  {c.noise:11}  {c.noise_rate:>5g}  {c.method:15}  "
              f"{c.seed:>4}  {c.epochs:>6}  {hyperparameter_text(c)}{mark}")


def print_summary(name: str, results: str, configs: list[TrialConfig], finished_before: set[str],
                  run_ids: set[str], gpus: float, cpus: float, elapsed: float) -> int:
    """One summary of the sweep (`run_ids`: the trials this invocation ran, not those finished before it);
    returns the exit status, 1 if a trial failed."""
    trials = read_table(results, "trials", columns=["trial_id", "status", "error", "diverged_epoch", "dataset", "method",
                                                    "noise", "noise_rate", "seed", "wall_time_s"])
    ran = trials[trials["trial_id"].isin(run_ids)]
    counts = ran["status"].value_counts()
    failed = int(counts.get("failed", 0))
    skipped = sum(config.trial_id() in finished_before for config in configs)
    print(f"\nsweep {name}: {len(configs)} trials: {int(counts.get('ok', 0))} done, {failed} failed, "
          f"{int(counts.get('diverged', 0))} diverged in this run; {skipped} skipped (finished before); "
          f"{elapsed / 60:.1f} min")
    for row in ran[ran["status"] == "diverged"].itertuples():
        print(f"  diverged: {row.method} {row.dataset} {row.noise} {row.noise_rate:g} seed {row.seed} "
              f"({row.trial_id}) at epoch {row.diverged_epoch}")
    for row in ran[ran["status"] == "failed"].itertuples():
        print(f"  failed: {row.method} {row.dataset} {row.noise} {row.noise_rate:g} seed {row.seed} "
              f"({row.trial_id}): {str(row.error).strip().splitlines()[-1][:200]}")
    if run_ids:
        hours = ran["wall_time_s"].fillna(0).sum() / 3600
        unit, per_trial = ("GPU", gpus) if gpus else ("CPU", cpus)
        print(f"device time: {hours * per_trial:.3f} {unit}-hours (sum of trial wall times {hours:.3f} h "
              f"x {per_trial:g} {unit} per trial)")
    shown = results if "://" in results or os.path.relpath(results).startswith("..") else os.path.relpath(results)
    print(f"results: {results}  (trials/ and epochs/ as Parquet; Ray Tune state in tune/)")
    print(f"""read them: python -c "import pandas as pd; t = pd.read_parquet('{shown}/trials'); """
          f"""print(t.groupby(['dataset', 'noise', 'noise_rate', 'method'], observed=True)"""
          f"""['test_acc_at_best_clean_epoch'].agg(['mean', 'std', 'count']))\"""")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
