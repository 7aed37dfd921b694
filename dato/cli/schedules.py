"""``python -m dato schedules``: list, show and validate schedule files.

Names are looked up in the shipped presets, then ``schedules/user/`` (where
``--save``/``--save-best`` write), then each ``--dir``; a later folder wins on
a name clash. Exit status: 0 when every named schedule is valid, 1 when one
is invalid (that is the validation's answer, printed on stdout), 2 when a
name or an option is wrong (one ``error:`` line on stderr, nothing shown).
"""

from __future__ import annotations

import argparse
import sys

from dato.cli.common import existing_dir, int_range, path_kind, print_error, show
from dato.core.schedule import (
    MAX_STEPS,
    Schedule,
    ScheduleError,
    builtin_schedule_dir,
    find_schedules,
    load_schedule,
    user_schedule_dir,
)

__all__ = ["add_arguments", "run", "schedule_dirs"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("names", nargs="*", help="preset or user schedule names, or .json paths, to show/validate "
                                                 "(default: list all)")
    parser.add_argument("--dir", action="append", default=[], type=existing_dir,
                        help="extra schedule folder (repeatable; schedules/user is always read)")
    parser.add_argument("--steps", type=int_range(1, MAX_STEPS), default=None,
                        help="show the schedule resampled to this many steps")


def schedule_dirs(extra: list[str]) -> list[str]:
    """The folders after the presets: ``schedules/user`` (what the commands save), then ``--dir``s."""
    return [str(user_schedule_dir()), *extra]


def run(args: argparse.Namespace) -> int:
    dirs = schedule_dirs(args.dir)
    if not args.names:
        user = user_schedule_dir().resolve()
        for name, path in find_schedules(dirs).items():
            where = "  (user)" if path.resolve().parent == user else ""
            if path.resolve().parent not in (user, builtin_schedule_dir().resolve()):
                where = f"  ({path.parent})"
            try:
                s = Schedule.load(path)
            except ScheduleError as exc:
                print(f"{name:<28} INVALID: {exc}{where}")
                continue
            print(f"{name:<28} {s.steps:>3} steps  {s.full_steps:>3} full  {s.method:<10} {s.description}{where}")
        return 0
    known = find_schedules(dirs)
    for name in args.names:  # every name must be found before anything is shown
        if name not in known and not (name.endswith(".json") and _is_file(name)):
            hint = "a .json path that does not exist" if name.endswith(".json") else "unknown schedule name"
            print_error(f"{show(name)}: {hint}; known: {', '.join(sorted(known)) or 'none'}")
            return 2
    status = 0
    for name in args.names:
        try:
            s = load_schedule(name, dirs)
            if args.steps is not None:
                s = s.resample(args.steps)
        except ScheduleError as exc:
            print(f"{show(name)}: INVALID: {exc}")
            status = 1
            continue
        print(f"{s.name} ({s.steps} steps, method {s.method}, hash {s.content_hash()})")
        print(f"  cache  {s.preview()}")
        print(f"  ratio  {' '.join(f'{r:g}' for r in s.ratio)}")
        if s.description:
            print(f"  {s.description}")
    sys.stdout.flush()
    return status


def _is_file(name: str) -> bool:
    return path_kind(name) == "file"
