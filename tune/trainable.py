"""The Ray Tune trainable: one `ebomlc.train.run_trial`, checkpointed every epoch, its rows written to Parquet.

Tune calls `train_trial(config)` in a worker process with

    config = {"trial": TrialConfig.to_dict(), "experiment": NAME, "results": "<storage>/<NAME>",
              "report_metrics": [NAMES]}     # optional: only these epoch metrics reach tune.report

Every epoch's numeric metrics go to `tune.report` (Tune's tables, loggers, schedulers and searchers),
or only those named in `report_metrics`: a search (tune/search.py) names validation metrics alone, so
that its searcher and scheduler never see test accuracy. The Parquet rows always hold every metric.

Every epoch the trainer's resume state is saved (torch.save) into a `tune.Checkpoint` that goes with
`tune.report`, so a trial whose process dies continues from its last epoch with the same numbers (Tune
retries it under FailureConfig(max_failures)), and `sweep.py --resume` continues a killed driver's
trials. When the trial ends, ok or diverged, this process writes its trial row and all its epoch rows
(the epochs before a resume included, from the state's history) with `ebomlc.results.write_trial`, so a
finished trial is on disk even if the driver dies a second later. A diverged trial is a result, not a
failure: it returns normally (status "diverged") and Tune does not retry it.
"""
from __future__ import annotations

import os
import tempfile
import time
from typing import Any

import ray
import torch
from ray import tune

from ebomlc.config import TrialConfig
from ebomlc.results import write_trial
from ebomlc.train import run_trial

STATE_FILE = "trial_state.pt"
TEST_CRASH = "EBOMLC_SWEEP_TEST_CRASH"   # tests only: "EPOCH:MARKER_FILE", see crash_once_for_tests


def train_trial(config: dict[str, Any]) -> None:
    started = time.perf_counter()
    trial = TrialConfig.from_dict(config["trial"])
    limit_process_to_trial_resources()
    resume_state, earlier_wall_time = load_checkpoint()
    history = list(resume_state["history"]) if resume_state else []   # epoch rows, those before a resume too
    shown = config.get("report_metrics")

    def report(row: dict[str, Any], state: dict[str, Any]) -> None:
        history[:] = state["history"]
        saved = {"state": state, "wall_time_s": earlier_wall_time + time.perf_counter() - started}
        with tempfile.TemporaryDirectory() as folder:
            torch.save(saved, os.path.join(folder, STATE_FILE))
            tune.report(numeric(row, shown), checkpoint=tune.Checkpoint.from_directory(folder))
        crash_once_for_tests(row["epoch"])

    summary = run_trial(trial, report, resume_state=resume_state)
    summary["wall_time_s"] = earlier_wall_time + time.perf_counter() - started   # all attempts of the trial
    experiment = config["experiment"]
    write_trial(config["results"],
                {**summary, "experiment": experiment, "node_id": ray.get_runtime_context().get_node_id()},
                [{**row, "experiment": experiment} for row in history])


def limit_process_to_trial_resources() -> None:
    """Torch threads = the trial's CPUs; on CUDA, its GPU memory share = its GPU fraction, so that trials
    packed onto one GPU (0.25 each: four per GPU) cannot starve each other of memory."""
    resources = tune.get_context().get_trial_resources().required_resources
    torch.set_num_threads(max(1, int(resources.get("CPU", 1))))
    gpus = resources.get("GPU", 0)
    if 0 < gpus < 1 and torch.cuda.is_available():
        torch.cuda.set_per_process_memory_fraction(gpus)


def load_checkpoint() -> tuple[dict[str, Any] | None, float]:
    """(resume state, wall time of the earlier attempts) from Tune's latest checkpoint, or (None, 0)."""
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return None, 0.0
    with checkpoint.as_directory() as folder:
        # written by train_trial's report above (not weights only: the state holds the trainer's history)
        saved = torch.load(os.path.join(folder, STATE_FILE), weights_only=False)
    return saved["state"], saved["wall_time_s"]


def numeric(row: dict[str, Any], names: list[str] | None = None) -> dict[str, float]:
    """The numbers of an epoch row, for Tune's progress table and loggers (ids and names stay out);
    only those in `names` when it is given."""
    return {k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
            and (names is None or k in names)}


def trial_name(trial) -> str:
    """Tune's name and folder for a trial: method, dataset and the stable trial id."""
    config = trial.config["trial"]
    return f"{config['method']}_{config['dataset']}_{TrialConfig.from_dict(config).trial_id()}"


def crash_once_for_tests(epoch: int) -> None:
    """Test hook: with EBOMLC_SWEEP_TEST_CRASH="N:PATH" set for the workers, the first trial process to
    checkpoint epoch N creates PATH and dies (os._exit, as a killed or pre-empted worker would); once PATH
    exists the hook is disarmed, so it fires once per PATH."""
    spec = os.environ.get(TEST_CRASH)
    if not spec:
        return
    crash_epoch, marker = spec.split(":", 1)
    if epoch != int(crash_epoch):
        return
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        return
    os._exit(1)
