"""``python -m dato gates``: DiP-GO-style gate training without the WebUI.

Trains per-(step, level) gates (:mod:`dato.generators.gates`) on prompts only, printing
the loss terms per iteration, writes the learned gates as JSON, and prints the
schedule post-processed to each ``--target-speedup`` (and ``--also`` ratios).
On a CPU use the fixture (``--fixture``) or the built-in tiny model; a real
SD1.x checkpoint belongs on a GPU (``--checkpoint ... --device cuda``).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import fields
from pathlib import Path

from dato.cli.common import (
    add_model_arguments,
    add_sampling_arguments,
    backend_from_args,
    bad,
    check_model_args,
    check_output_file,
    check_save,
    float_range,
    int_range,
    model_slug,
    non_negative_float,
    path_arg,
    positive_float,
    positive_int,
    print_error,
    prompts_from_args,
    save_named,
    speedup_float,
)
from dato.core.schedule import ScheduleError

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from dato.generators.gates import GateConfig

    add_model_arguments(parser)
    add_sampling_arguments(parser, steps=10)
    defaults = GateConfig()
    g = parser.add_argument_group("gates")
    g.add_argument("--target-speedup", type=speedup_float, default=defaults.target_speedup,
                   help=f"MACs speed-up the gates are trained for, >= 1 (default {defaults.target_speedup})")
    g.add_argument("--also", type=speedup_float, action="append", default=[],
                   help="also post-process the learned gates to this speed-up (repeat)")
    g.add_argument("--iterations", type=positive_int, default=defaults.iterations,
                   help=f"(default {defaults.iterations})")
    g.add_argument("--batch-size", type=positive_int, default=defaults.batch_size,
                   help=f"(default {defaults.batch_size})")
    g.add_argument("--pool", type=positive_int, default=defaults.pool,
                   help=f"(prompt, seed) pairs trained on, >= --batch-size (default {defaults.pool})")
    g.add_argument("--lr", type=positive_float, default=defaults.lr, help=f"(default {defaults.lr})")
    g.add_argument("--sparsity-weight", type=non_negative_float, default=defaults.sparsity_weight,
                   help=f"(default {defaults.sparsity_weight})")
    g.add_argument("--warm-start", choices=("uniform", "none"), default=defaults.warm_start)
    g.add_argument("--relaxed-fraction", type=float_range(0.0, 1.0), default=defaults.relaxed_fraction,
                   help="share of iterations with soft (blended) gates before straight-through, 0..1")
    g.add_argument("--no-checkpointing", action="store_true", help="keep every step's activations (faster, "
                                                                   "more memory)")
    g.add_argument("--threads", type=int_range(0, 1024), default=0, help="torch threads (default 0: torch's choice)")
    g.add_argument("--out", type=path_arg, default=None,
                   help="gates JSON (default schedules/gates/<model>-x<target>.json)")
    g.add_argument("--save", metavar="NAME", help="save the schedule at --target-speedup under this name")
    g.add_argument("--save-dir", type=path_arg, help="folder for --save (default schedules/user)")


def config_from_args(args: argparse.Namespace):
    from dato.generators.gates import GateConfig

    values = {f.name: getattr(args, f.name) for f in fields(GateConfig) if hasattr(args, f.name)}
    values["use_checkpoint"] = not args.no_checkpointing
    values["seed"] = args.seed
    return GateConfig(**values)


def run(args: argparse.Namespace) -> int:
    import torch

    from dato.generators.gates import train_gates

    if args.pool < args.batch_size:
        raise bad("--pool", args.pool, f"expected at least --batch-size ({args.batch_size})")
    check_output_file("--out", args.out)
    check_save("--save", args.save, args.save_dir)
    prompts = prompts_from_args(args)
    check_model_args("gates", args)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        config = config_from_args(args)
        config.validate(args.steps)
        backend = backend_from_args(args, args.steps)
    except (ScheduleError, OSError, ValueError, RuntimeError, ImportError) as exc:
        print_error(exc)
        return 2
    print(f"training gates: {args.steps} steps, target {config.target_speedup:g}x, {config.iterations} "
          f"iterations of {config.batch_size} from {config.pool} pairs, warm start {config.warm_start}", flush=True)
    t0 = time.perf_counter()

    def progress(stats: dict) -> None:
        print(f"[{stats['iteration']:4d}/{config.iterations}] loss {stats['loss']:.4f}  consistency "
              f"{stats['consistency']:.4f}  soft MACs {stats['soft_fraction']:.3f}  hard x{stats['hard_speedup']:.2f}"
              f"  ({stats['seconds']:.0f}s)", flush=True)

    try:
        result = train_gates(backend, prompts, config, progress=progress)
    except KeyboardInterrupt:
        print("\ninterrupted")
        return 130
    result.info["seconds"] = time.perf_counter() - t0
    result.info["prompts"] = prompts
    default_name = f"{model_slug(backend)}-x{config.target_speedup:g}.json"
    out = Path(args.out) if args.out else Path("schedules") / "gates" / default_name
    result.save(out)
    print(f"\ntrained in {result.info['seconds']:.0f}s; gates: {out}")
    print(f"{'target':>7}  {'MACs x':>6}  schedule (F full, R reuse, digit = cached depth)")
    try:
        schedules = [(t, result.schedule(t)) for t in [config.target_speedup, *args.also]]
    except ScheduleError as exc:
        print_error(exc)
        return 2
    for target, schedule in schedules:
        print(f"{target:7.2f}  {schedule.provenance['macs_speedup']:6.2f}  {schedule.preview()}")
    if args.save:
        path = save_named(schedules[0][1], args.save, args.save_dir)
        if path is None:
            return 2
        print(f"saved as {path}")
    return 0
