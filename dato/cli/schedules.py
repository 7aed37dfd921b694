"""``python -m dato schedules``: list, show and validate schedule files."""

from __future__ import annotations

import argparse

from dato.core.schedule import Schedule, ScheduleError, find_schedules, load_schedule

__all__ = ["add_arguments", "run"]



def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("names", nargs="*", help="preset names or .json paths to show/validate (default: list all)")
    parser.add_argument("--dir", action="append", default=[], help="extra schedule folder (repeatable)")
    parser.add_argument("--steps", type=int, help="show the schedule resampled to this many steps")


def run(args: argparse.Namespace) -> int:
    if not args.names:
        for name, path in find_schedules(args.dir).items():
            try:
                s = Schedule.load(path)
            except ScheduleError as exc:
                print(f"{name:<28} INVALID: {exc}")
                continue
            print(f"{name:<28} {s.steps:>3} steps  {s.full_steps:>3} full  {s.method:<10} {s.description}")
        return 0
    status = 0
    for name in args.names:
        try:
            s = load_schedule(name, args.dir)
            if args.steps:
                s = s.resample(args.steps)
        except ScheduleError as exc:
            print(f"{name}: {exc}")
            status = 1
            continue
        print(f"{s.name} ({s.steps} steps, method {s.method}, hash {s.content_hash()})")
        print(f"  cache  {s.preview()}")
        print(f"  ratio  {' '.join(f'{r:g}' for r in s.ratio)}")
        if s.description:
            print(f"  {s.description}")
    return status
