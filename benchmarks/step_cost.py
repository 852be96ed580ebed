"""Step cost: median wall time of one training step of each method, and its ratio to plain training (erm).

    python benchmarks/step_cost.py                                  # ResNet-32, batch 100, CPU, 2 threads
    python benchmarks/step_cost.py --steps 20 --json step_cost.json
    python benchmarks/step_cost.py --glibc-default                  # glibc's own malloc settings
    python benchmarks/step_cost.py --model resnet8 --steps 3        # a smoke run in seconds

Every method is built through the same MethodContext the trainer uses, on random 32x32 images with 10
classes, and steps on batches of `--batch-size`: erm on one batch (its "union" sampling), the paired
methods on one noisy and one clean batch of that size each (the paper's cost model). Steps are timed
round-robin over the methods (one step of each per repetition, the order rotated every repetition) after
`--warmup` untimed repetitions, so a load change on the machine hits every method alike. The JSON has
the medians; the table adds the fastest step of each method, the one least disturbed by other load (on
a shared machine the two can differ a lot). On CUDA each step is synchronised before its clock stops.

Paper's cost model (Sec. V, DESIGN.md): EBOMLC (k = 1) does 7 forward-units per step against erm's 3,
2.33x; each extra look-ahead step adds 3 units; MLC-D (k = 5) should cost at least twice EBOMLC.

Memory on CPU: the trainer (ebomlc.train.keep_freed_cpu_memory) makes glibc keep freed memory in the
process, so a step reuses the memory of the one before instead of paying page faults for it; this
benchmark does the same, so it times what training runs. `--glibc-default` leaves glibc's settings,
under which every step re-faults the activations it frees (EBOMLC: 50-100k faults per ResNet-32 step,
erm almost none), which raises the ratios of the methods with more passes.

Add a method (or a variant with other hyper-parameters) to VARIANTS to benchmark it too.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

from ebomlc.config import TrialConfig
from ebomlc.methods import METHODS, Batch, Method, MethodContext
from ebomlc.models import MetaLabelCorrector, build_resnet
from ebomlc.train import keep_freed_cpu_memory

# benchmark name -> (method, config overrides)
VARIANTS: dict[str, tuple[str, dict]] = {
    "erm": ("erm", {}),
    "ebomlc": ("ebomlc", {"k": 1}),
    "ebomlc_k2": ("ebomlc", {"k": 2}),
    "ebomlc_k5": ("ebomlc", {"k": 5}),
    "ebomlc_difference": ("ebomlc", {"options": {"grad_q": "difference"}}),   # grad_w Q at both points
    "mlc_d": ("mlc_d", {}),
    "mlc": ("mlc", {}),
    "glc": ("glc", {}),                    # phase-1 step (plain CE on D'); phase 2 costs the same
    "l2rw": ("l2rw", {}),
    "mwnet": ("mwnet", {}),
    "pmwnet": ("pmwnet", {}),
    "coteaching_plus": ("coteaching_plus", {}),   # one step updates both networks
    "dividemix": ("dividemix", {"options": {"warmup_epochs": 0}}),   # a MixMatch step of both networks
}
NUM_CLASSES = 10
IMAGE_SIZE = 32


def build_method(method: str, overrides: dict, args, device: torch.device) -> tuple[Method, Batch, Batch]:
    """A method on random data through a MethodContext as the trainer builds it, with one noisy and one
    clean batch (normalised, on the device)."""
    config = TrialConfig(method=method, model=args.model, width=args.width, batch_size=args.batch_size,
                         clean_batch_size=args.batch_size, device=device.type, **overrides).validated()
    g = torch.Generator().manual_seed(0)
    n_noisy, n_clean = 10 * args.batch_size, 2 * args.batch_size
    images = torch.randint(0, 256, (n_noisy + n_clean, 3, IMAGE_SIZE, IMAGE_SIZE), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, NUM_CLASSES, (n_noisy + n_clean,), generator=g)
    images, labels = images.to(device), labels.to(device)

    def normalize(x):
        return (x.float() - 127.5) / 64.0

    torch.manual_seed(0)
    ctx = MethodContext(
        config=config, num_classes=NUM_CLASSES, device=device, steps_per_epoch=n_noisy // args.batch_size,
        noisy_x=images[:n_noisy], noisy_y=labels[:n_noisy], clean_x=images[n_noisy:], clean_y=labels[n_noisy:],
        normalize=normalize,
        build_model=lambda: build_resnet(config.model, NUM_CLASSES, config.width).to(device),
        build_meta_model=lambda: MetaLabelCorrector(4 * config.width, NUM_CLASSES).to(device),
        generator=torch.Generator(device=device).manual_seed(0),
    )
    method_object = METHODS[method](ctx)
    method_object.on_epoch_start(0)      # as the trainer does before an epoch's steps (DivideMix's split)
    method_object.train(True)
    b = args.batch_size
    noisy = Batch(normalize(images[:b]), labels[:b], torch.arange(b, device=device))
    clean = Batch(normalize(images[n_noisy:n_noisy + b]), labels[n_noisy:n_noisy + b], torch.arange(b, device=device))
    return method_object, noisy, clean


def timed_step(method: Method, noisy: Batch, clean: Batch, device: torch.device) -> float:
    """Milliseconds of one step."""
    start = time.perf_counter()
    method.step(noisy, clean if method.sampling == "paired" else None)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return 1000 * (time.perf_counter() - start)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet32")
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per method")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per method first")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--glibc-default", action="store_true",
                        help="leave glibc's malloc settings (the trainer keeps freed memory; this measures without)")
    parser.add_argument("--methods", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--json", help="write {'ms': ..., 'ratio_to_erm': ...} here")
    args = parser.parse_args(argv)
    if "erm" not in args.methods:
        parser.error("--methods must include erm (the ratios are to erm)")

    if args.device == "cpu" and not args.glibc_default and not keep_freed_cpu_memory():
        print("note: not glibc, malloc settings left as they are", file=sys.stderr)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    runs = {name: build_method(*VARIANTS[name], args, device) for name in args.methods}
    times: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    for repetition in range(args.warmup + args.steps):
        shift = repetition % len(names)
        for name in names[shift:] + names[:shift]:
            elapsed = timed_step(*runs[name], device)
            if repetition >= args.warmup:
                times[name].append(elapsed)
        print(f"repetition {repetition + 1}/{args.warmup + args.steps}", file=sys.stderr, flush=True)

    ms = {name: statistics.median(values) for name, values in times.items()}
    result = {"ms": ms, "ratio_to_erm": {name: value / ms["erm"] for name, value in ms.items()}}
    print(f"{args.model} width {args.width}, batch {args.batch_size} (+{args.batch_size} clean for paired methods), "
          f"{device.type}, {args.threads} threads, median of {args.steps} steps after {args.warmup} warm-up"
          + (", glibc malloc defaults (--glibc-default)" if args.glibc_default else ""))
    # the fastest step is the one least disturbed by other load on the machine: a second estimate
    fastest = {name: min(values) for name, values in times.items()}
    print(f"{'method':<16}{'ms/step':>10}{'x erm':>8}{'IQR ms':>10}{'min ms':>10}{'min x erm':>11}")
    for name in names:
        q = statistics.quantiles(times[name], n=4) if len(times[name]) > 1 else [ms[name]] * 3
        print(f"{name:<16}{ms[name]:>10.1f}{result['ratio_to_erm'][name]:>8.2f}{q[2] - q[0]:>10.1f}"
              f"{fastest[name]:>10.1f}{fastest[name] / fastest['erm']:>11.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
