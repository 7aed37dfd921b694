"""``python -m dato schedules``: list, show and validate schedule files."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .schedule import Schedule, ScheduleError, builtin_schedule_dir, find_schedules, load_schedule

__all__ = ["add_arguments", "run", "save_named"]


def save_named(schedule: Schedule, name: str, save_dir: str | None = None) -> Path | None:
    """Save ``schedule`` as ``name`` (default folder ``schedules/user``) for the CLIs' ``--save`` options.

    Returns the path, or ``None`` after printing the reason (bad name, file exists) to stderr.
    """
    folder = Path(save_dir) if save_dir else builtin_schedule_dir() / "user"
    try:
        named = Schedule.from_dict({**schedule.to_dict(), "name": name})
        return named.save(folder / f"{name}.json")
    except ScheduleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None


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
