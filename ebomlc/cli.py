"""Command line: one trial, no Ray.

    python -m ebomlc train --method erm --dataset synthetic --epochs 3 --out results/try
    python -m ebomlc train --method ebomlc --dataset cifar10 --data-root data --noise uniform_any \\
        --noise-rate 0.4 --rho 0.2 --xi 0.5 --epochs 120 --out results/cifar10
    python -m ebomlc methods            # the registered methods and their hyper-parameters
    python -m ebomlc compact results/cifar10   # merge a results folder's per-trial files (faster reads)

Every TrialConfig field is a flag (`--noise-rate`, `--clean-fraction`, ...); method options that are
not common fields go in `--option NAME=VALUE` (repeatable). The trial's rows are written to --out in the
Parquet layout of ebomlc.results (read them with `pandas.read_parquet("OUT/trials")`). A bad config
exits with status 2 and one line naming the problem, before any data is loaded.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing

from ebomlc.config import ConfigError, TrialConfig

_SKIP = {"options", "noise_matrix", "lr_milestones", "download"}
# None means "the method's default" for these; for the other fields it means unset (see TrialConfig)
_METHOD_DEFAULTED = {"rho", "xi", "delta", "k", "mixture"}
_UNSET_HELP = {"data_root": "$EBOMLC_DATA, else ./data", "train_subset": "all training images",
               "human_label_file": "<data root>/CIFAR-10_human.pt or CIFAR-100_human.pt"}


def _parse_value(text: str):
    """`--option` values: JSON when it parses (numbers, booleans, lists), else the string itself."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ebomlc", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train one trial and write its Parquet rows")
    hints = typing.get_type_hints(TrialConfig)
    defaults = TrialConfig()
    for f in dataclasses.fields(TrialConfig):
        if f.name in _SKIP:
            continue
        kind = hints[f.name]
        base = next((t for t in typing.get_args(kind) if t is not type(None)), kind)
        default = getattr(defaults, f.name)
        if default is not None:
            help_text = f"default: {default!r}"
        elif f.name in _METHOD_DEFAULTED:
            help_text = "default: the method's (python -m ebomlc methods)"
        else:
            help_text = f"default: {_UNSET_HELP.get(f.name, 'none')}"
        train.add_argument("--" + f.name.replace("_", "-"), dest=f.name, type=base, default=None, help=help_text)
    train.add_argument("--download", action="store_true", help="download CIFAR if missing (official MD5)")
    train.add_argument("--noise-matrix", dest="noise_matrix", type=json.loads, default=None,
                       help="noise=matrix: K x K JSON list of rows P(noisy = j | true = i)")
    train.add_argument("--lr-milestones", dest="lr_milestones", type=json.loads, default=None,
                       help="JSON list of fractions of the epochs where lr drops (default [0.667, 0.833])")
    train.add_argument("--option", dest="options", action="append", default=[], metavar="NAME=VALUE",
                       help="a method option (see `python -m ebomlc methods`); repeatable")
    train.add_argument("--out", default="results/cli", help="results folder or URI (default: results/cli)")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    commands.add_parser("methods", help="list the methods and their hyper-parameters")
    compact = commands.add_parser("compact", help="merge a results folder's per-trial Parquet files, one per "
                                                  "partition (reads get faster; safe while trials are written)")
    compact.add_argument("results", help="results folder or URI (the one holding trials/ and epochs/)")
    return parser


def config_from_args(args: argparse.Namespace) -> TrialConfig:
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrialConfig)
              if f.name not in ("options", "download") and getattr(args, f.name) is not None}
    values["download"] = args.download
    options = {}
    for item in args.options:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ConfigError(f"--option must look like NAME=VALUE, got {item!r}")
        options[name] = _parse_value(value)
    values["options"] = options
    return TrialConfig.from_dict(values)


def _train(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ebomlc.results import write_trial
    from ebomlc.train import prepare, run_trial

    config = prepare(config_from_args(args))   # every check before any data is loaded
    bar = tqdm(desc=f"{config.method} {config.dataset}", unit="step", disable=args.no_progress, file=sys.stderr)
    epochs = []

    def report(row, state):
        epochs.append(row)
        bar.set_postfix(epoch=row["epoch"] + 1, loss=f"{row.get('train_loss', float('nan')):.3f}",
                        test=f"{row['test_acc']:.3f}")

    summary = run_trial(config, report, progress=bar.update)
    bar.close()
    write_trial(args.out, {**summary, "experiment": "cli"}, [{**r, "experiment": "cli"} for r in epochs])
    if summary["status"] == "ok":
        print(f"{config.method} on {config.dataset} ({config.noise} {config.noise_rate:g}, seed {config.seed}): "
              f"test acc {summary['test_acc_last']:.4f} last, {summary['test_acc_at_best_clean_epoch']:.4f} at best "
              f"clean epoch {summary['best_clean_epoch']}, {summary['test_acc_max']:.4f} max; "
              f"{summary['train_time_s']:.1f}s training; rows in {args.out}")
    else:
        print(f"{config.method} on {config.dataset}: {summary['status']} at epoch {summary['diverged_epoch']}; "
              f"rows in {args.out}")
    return 0


def _methods() -> int:
    from ebomlc.methods import METHODS

    for name, cls in METHODS.items():
        hyper = ", ".join(f"{k}={v}" for k, v in {**cls.hyperparameters, **cls.options}.items()) or "none"
        print(f"{name:16s} {hyper}")
    return 0


def _compact(args: argparse.Namespace) -> int:
    import pyarrow.fs as pafs

    from ebomlc.results import compact, filesystem

    fs, base = filesystem(args.results)
    if not any(fs.get_file_info(f"{base}/{table}").type == pafs.FileType.Directory for table in ("trials", "epochs")):
        raise ConfigError(f"{args.results} holds no trials/ or epochs/ folder; give the folder a sweep or "
                          f"`train --out` wrote")
    merged = compact(args.results)
    print(f"compacted {args.results}: {merged['trials']} trial files and {merged['epochs']} epoch files merged away")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    commands = {"train": _train, "methods": lambda _: _methods(), "compact": _compact}
    try:
        return commands[args.command](args)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
