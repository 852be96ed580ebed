"""How much wall time the sweep runner (Ray Tune, checkpoints, Parquet) adds to the trials it runs.

    python benchmarks/sweep_overhead.py                        # 16 short erm trials on a new local Ray
    python benchmarks/sweep_overhead.py --trials 32 --epochs 6 --address auto

Runs a smoke-like sweep (plain training on synthetic images, `--trials` seeds x 1 noise setting) through
`tune.sweep.main` and compares its wall time with the ideal: the sum of the trials' own wall times (the
`wall_time_s` of their rows: data, training, evaluation and the per-epoch checkpoints) divided by the
number of trials that fit at once (the cluster's CPUs / --cpus-per-trial). Ray's start-up is reported
apart, and in a second ratio. Target: sweep wall time <= 1.2 x ideal.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import ray  # noqa: E402
import yaml  # noqa: E402

from ebomlc.results import read_table  # noqa: E402
from tune import sweep  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=16, help="number of trials (seeds), >= 16 for the target")
    parser.add_argument("--epochs", type=int, default=16, help="epochs per trial (16: about 10 s on one core)")
    parser.add_argument("--cpus-per-trial", type=float, default=1.0)
    parser.add_argument("--address", default="local", help="Ray address (default: a new local Ray)")
    args = parser.parse_args()

    spec = {"base": {"dataset": "synthetic", "synthetic_train": 1000, "synthetic_test": 500, "synthetic_classes": 4,
                     "synthetic_image_size": 12, "clean_fraction": 0.1, "model": "resnet8", "width": 8,
                     "epochs": args.epochs, "batch_size": 50, "clean_batch_size": 50, "device": "cpu"},
            "noise": [{"noise": "uniform_any", "noise_rate": 0.4}], "methods": ["erm"],
            "seeds": list(range(args.trials))}
    with tempfile.TemporaryDirectory() as folder:
        config = Path(folder) / "overhead.yaml"
        config.write_text(yaml.safe_dump(spec))

        started = time.perf_counter()
        ray.init(address=args.address, runtime_env={"env_vars": sweep.worker_environment()},
                 logging_config=ray.LoggingConfig(log_level="WARNING"))
        startup = time.perf_counter() - started
        slots = int(ray.cluster_resources()["CPU"] // args.cpus_per_trial)

        started = time.perf_counter()
        status = sweep.main(["--config", str(config), "--storage", folder, "--cpus-per-trial", str(args.cpus_per_trial)])
        wall = time.perf_counter() - started
        ray.shutdown()
        trials = read_table(f"{folder}/overhead", "trials")

    assert status == 0 and (trials["status"] == "ok").all() and len(trials) == args.trials
    work = trials["wall_time_s"].sum()
    ideal = work / min(slots, args.trials)
    print(f"\n{args.trials} trials of {args.epochs} epochs, {slots} at once ({args.cpus_per_trial:g} CPU each): "
          f"trial wall times {trials['wall_time_s'].min():.1f}-{trials['wall_time_s'].max():.1f} s, sum {work:.1f} s "
          f"-> ideal {ideal:.1f} s")
    print(f"sweep wall time {wall:.1f} s = {wall / ideal:.2f} x ideal (target <= 1.2); Ray start-up {startup:.1f} s "
          f"more ({(wall + startup) / ideal:.2f} x ideal with it)")
    print(f"command: python benchmarks/sweep_overhead.py {' '.join(sys.argv[1:])}".rstrip())


if __name__ == "__main__":
    main()
