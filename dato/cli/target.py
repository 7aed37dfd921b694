"""``python -m dato target N``: "make it N x faster" -> the schedule that meets N with the best expected quality.

The WebUI's planner (:func:`dato.core.plan.plan_run`) with the WebUI's step clock, priced on the SD1.x
UNet, or SDXL's with ``--arch sdxl`` (analytic MACs, traced on the meta device: no weights), at the given
step count, sampler order, image size and token levels: the schedule the accordion's speed target runs.
``--save NAME`` writes it to ``schedules/user`` (a rule: it regenerates at any step count). Exit status 2
with one ``error:`` line for a bad value or an unreachable target (the
message says the nearest reachable speed-up).
"""

from __future__ import annotations

import argparse

from dato.cli.common import (
    BadValue,
    CliError,
    check_save,
    int_range,
    path_arg,
    pixel_size,
    save_named,
    steps_int,
)
from dato.core.arguments import DatoArgs
from dato.core.plan import Geometry, HostFacts, plan_run
from dato.core.schedule import METHODS, load_schedule
from dato.core.speed import TargetError, check_target
from dato.evaluation.costs import architecture_cost
from dato.evaluation.models import ARCHITECTURES

__all__ = ["add_arguments", "run"]

#: the WebUI's names of the samplers ``--sampler`` stands for
SAMPLERS = {"euler": "Euler", "heun": "Heun"}


def _target(value: str) -> float:
    try:
        return check_target(float(value), "target")
    except (ValueError, TargetError):
        raise BadValue(value, "expected a speed-up factor 1 <= N <= 100 (1 = every step full)") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", type=_target, help="speed-up factor, e.g. 1.5, 3 or 6 (analytic MACs)")
    parser.add_argument("--steps", type=steps_int(1), default=20, help="sampling steps (default 20)")
    parser.add_argument("--sampler", choices=("euler", "heun"), default="euler",
                        help="first-order (euler, ddim, ...) or second-order (heun: two UNet calls a step)")
    parser.add_argument("--width", type=pixel_size, default=512, help="image width in pixels (default 512)")
    parser.add_argument("--height", type=pixel_size, default=512, help="image height in pixels (default 512)")
    parser.add_argument("--method", choices=METHODS, default="prune", help="token method (none = caching only)")
    parser.add_argument("--max-downsample", type=int_range(1, 8), default=1, choices=(1, 2, 4, 8),
                        help="token reduction on levels with at most this downsample factor")
    parser.add_argument("--arch", choices=tuple(ARCHITECTURES), default="sd15",
                        help="the UNet to price: sd15 (SD1.x/2.x) or sdxl (SDXL base; its finest attention level "
                             "is the first token level)")
    parser.add_argument("--save", default=None, help="save the schedule under this name in schedules/user")
    parser.add_argument("--save-dir", type=path_arg, default=None, help="folder for --save (default schedules/user)")


def run(args: argparse.Namespace) -> int:
    check_save("--save", args.save, args.save_dir)
    request = DatoArgs(enabled=True, method=args.method, speed_target=args.target, max_downsample=args.max_downsample)
    geometry = Geometry(steps=args.steps, width=args.width, height=args.height, sampler=SAMPLERS[args.sampler])
    plan = plan_run(request, geometry, HostFacts(architecture_cost(args.arch), clock="webui"), load_schedule).first
    if plan.off is not None:
        raise CliError(plan.off)
    schedule = plan.schedule
    calls = f", {plan.clock.total} model calls" if plan.clock.total != plan.steps else ""
    print(f"{schedule.name}: {plan.speedup:.2f}x MACs at {args.steps} steps{calls} ({args.arch}, {args.sampler}, "
          f"{args.width}x{args.height}), hash {schedule.content_hash()}")
    print(f"  cache  {plan.applied.preview()}")
    print(f"  ratio  {schedule.method} {schedule.ratio[0]:g}")
    print(f"  rule   {dict(schedule.rule) if schedule.rule else None}")
    if args.save:
        path = save_named(schedule, args.save, args.save_dir)
        if path is None:
            return 2
        print(f"saved {path}")
    return 0
