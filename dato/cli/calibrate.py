"""``python -m dato calibrate``: SmoothCache-style calibration without the WebUI.

One unaccelerated sampling run per prompt records the error curves
(:mod:`dato.generators.calibrate`); each ``--alpha`` (or the alpha that best meets
``--target-speedup``) becomes a schedule, printed with its MACs speed-up. The
curves go to a JSON file; ``--save NAME`` stores a schedule for the accordion.
Model arguments are the search's: built-in random SD1.5-shaped UNet by
default, ``--fixture`` for the trained digits model, ``--checkpoint`` for SD1.x.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from dato.cli.common import (
    add_model_arguments,
    add_sampling_arguments,
    backend_from_args,
    bad,
    check_model_args,
    check_output_file,
    check_save,
    int_range,
    model_slug,
    non_negative_float,
    path_arg,
    positive_int,
    print_error,
    prompts_from_args,
    save_named,
    speedup_float,
)
from dato.core.layout import DEEPEST_KNOWN_DEPTH
from dato.core.schedule import Schedule, ScheduleError

__all__ = ["add_arguments", "run"]



def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    add_sampling_arguments(parser, steps=20)
    cal = parser.add_argument_group("calibration")
    cal.add_argument("--lookahead", type=positive_int, default=3,
                     help="steps a feature may be reused ahead, 1..steps-1 (default 3)")
    cal.add_argument("--max-prompts", type=positive_int, default=4, help="use at most this many prompts (default 4)")
    cal.add_argument("--alpha", type=non_negative_float, action="append",
                     help="error threshold, >= 0 (repeat for several)")
    cal.add_argument("--target-speedup", type=speedup_float, help="pick the alpha whose schedule is closest to this "
                                                                  "MACs speed-up (>= 1)")
    cal.add_argument("--no-reuse", action="store_true", help="never reuse the whole previous UNet output")
    cal.add_argument("--max-depth", type=int_range(0, DEEPEST_KNOWN_DEPTH), default=None,
                     help="deepest cache branch used (default: all)")
    cal.add_argument("--out", type=path_arg, default=None,
                     help="calibration JSON (default schedules/calibrations/<model>.json)")
    cal.add_argument("--save", metavar="NAME", help="save the (last) schedule under this name")
    cal.add_argument("--save-dir", type=path_arg, help="folder for --save (default schedules/user)")



def run(args: argparse.Namespace) -> int:
    import torch

    from dato.core.macs import trace_unet_cost
    from dato.generators.calibrate import alpha_for_speedup, calibrate, schedule_from_calibration

    if not args.lookahead < args.steps:
        raise bad("--lookahead", args.lookahead, f"expected 1..{args.steps - 1} (steps - 1)")
    check_output_file("--out", args.out)
    check_save("--save", args.save, args.save_dir)
    prompts = prompts_from_args(args)[: args.max_prompts]
    check_model_args("calibrate", args)
    try:
        backend = backend_from_args(args, args.steps)
    except (ScheduleError, OSError, ValueError, RuntimeError, ImportError) as exc:
        print_error(exc)
        return 2
    pairs = [(p, args.seed + i) for i, p in enumerate(prompts)]
    t0 = time.perf_counter()
    with torch.no_grad():
        cal = calibrate(backend.unet, lambda on_step: backend.sample_latents(pairs, on_step=on_step),
                        steps=args.steps, lookahead=args.lookahead, prompts=prompts, sampler=backend.sampler,
                        model_name=backend.describe().get("model_name", ""))
    seconds = time.perf_counter() - t0
    print(f"calibrated on {len(prompts)} prompt(s), {args.steps} steps, in {seconds:.1f}s")
    _print_curves(cal)
    h, w = backend.latent_shape[-2:]
    context_len = backend.null_context(1).shape[1] if backend.null_context else backend.encode([prompts[0]]).shape[1]
    cost = trace_unet_cost(backend.unet, context_len=int(context_len))
    full = cost.full_step_macs(h, w) * args.steps

    def speedup(schedule: Schedule) -> float:
        return full / cost.schedule_macs(schedule, h, w)

    rule = {"allow_reuse": not args.no_reuse, "max_depth": args.max_depth}
    try:
        chosen = [(a, schedule_from_calibration(cal, a, **rule)) for a in (args.alpha or [])]
        if args.target_speedup is not None:
            chosen.append(alpha_for_speedup(cal, args.target_speedup, speedup, **rule))
        if not chosen:
            chosen = [(a, schedule_from_calibration(cal, a, **rule)) for a in _default_alphas(cal)]
    except ScheduleError as exc:
        print_error(exc)
        return 2
    print(f"\n{'alpha':>10}  {'MACs x':>6}  schedule (F full, R reuse, digit = cached depth)")
    for alpha, schedule in chosen:
        print(f"{alpha:10.4g}  {speedup(schedule):6.2f}  {schedule.preview()}")
    out = Path(args.out) if args.out else Path("schedules") / "calibrations" / f"{model_slug(backend)}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    from dato.core.fileio import atomic_write_bytes

    atomic_write_bytes(out, cal.to_json().encode())
    print(f"curves: {out}")
    if args.save:
        alpha, schedule = chosen[-1]
        path = save_named(schedule, args.save, args.save_dir)
        if path is None:
            return 2
        print(f"saved alpha {alpha:.4g} as {path}")
    return 0


def _default_alphas(cal) -> list[float]:
    from dato.generators.calibrate import alpha_range

    lo, hi = alpha_range(cal)
    return [lo + (hi - lo) * f for f in (0.0, 0.02, 0.05, 0.1, 0.2)] if hi > lo else [lo]



def _print_curves(cal) -> None:
    print(f"\nrelative L1 change to the next step, per unit (lookahead {cal.lookahead} recorded):")
    header = "step " + " ".join(f"{u[-7:]:>7}" for u in cal.errors)
    print(header)
    for s in range(cal.steps - 1):
        print(f"{s:4d} " + " ".join(f"{cal.error(u, s, 1):7.4f}" for u in cal.errors))
