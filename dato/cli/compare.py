"""``python -m dato compare``: the schedule generators side by side at equal MACs on the fixture.

Writes into ``compare-results/`` (untracked) unless ``--out`` says otherwise;
the checked-in report under ``docs/compare/`` is refreshed only on purpose,
with ``--out docs/compare``.
"""

from __future__ import annotations

import argparse

from dato.cli.common import (
    BadValue,
    add_device_arguments,
    check_output_dir,
    choice_list,
    int_range,
    path_arg,
    positive_int,
    require,
    steps_int,
)

DEFAULT_OUT = "compare-results"
# dato.generators.compare.GENERATORS, kept here so --help imports nothing heavy (tests/test_cli_args.py checks it)
GENERATORS = ("uniform", "speed-target", "calibration", "calibration-noreuse", "nsga2", "gates")


def targets(value: str) -> tuple[float, ...]:
    """``type=`` for ``--targets``: comma-separated MACs speed-ups, each a finite number >= 1."""
    allowed = "expected comma-separated speed-ups >= 1, e.g. 3,5,8"
    try:
        numbers = tuple(float(t) for t in value.split(",") if t.strip())
    except ValueError:
        raise BadValue(value, allowed) from None
    if not numbers or any(not (1.0 <= t < float("inf")) for t in numbers):
        raise BadValue(value, allowed)
    return numbers


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=steps_int(2), default=10, help="sampling steps (default 10)")
    parser.add_argument("--targets", type=targets, default=(3.0, 5.0, 8.0),
                        help="MACs speed-ups to compare at (default 3,5,8)")
    parser.add_argument("--per-class", type=positive_int, default=4, help="held-out samples per digit (default 4)")
    parser.add_argument("--generators", type=choice_list(GENERATORS), default=GENERATORS,
                        help="subset of " + ",".join(GENERATORS))
    parser.add_argument("--gate-iterations", type=positive_int, default=40, help="(default 40)")
    parser.add_argument("--population", type=int_range(4, 1000), default=8, help="(default 8)")
    parser.add_argument("--generations", type=int_range(1, 10_000), default=4, help="(default 4)")
    parser.add_argument("--threads", type=int_range(0, 1024), default=0,
                        help="torch threads (default 0: torch's choice; 1 is fastest on a shared CPU)")
    parser.add_argument("--out", type=path_arg, default=DEFAULT_OUT,
                        help=f"folder for compare.md and compare.json (default {DEFAULT_OUT}; the README's report "
                             "lives in docs/compare)")
    add_device_arguments(parser)


def run(args: argparse.Namespace) -> int:
    check_output_dir("--out", args.out)
    require("compare", "sklearn", "scikit-learn", "for the fixture's digits and classifier")
    require("compare", "safetensors", "safetensors", "for the fixture's weights")
    if "nsga2" in args.generators:
        require("compare", "pymoo", "pymoo", "for the nsga2 generator (or leave it out of --generators)")

    import torch

    from dato.generators.compare import CompareConfig, format_markdown, run_compare, write_reports

    if args.threads:
        torch.set_num_threads(args.threads)
    config = CompareConfig(steps=args.steps, targets=args.targets, per_class=args.per_class,
                           generators=args.generators, gate_iterations=args.gate_iterations,
                           population=args.population, generations=args.generations, out=args.out,
                           device=args.device, dtype=args.dtype)
    print(f"writing into {args.out}/ (compare.md, compare.json)", flush=True)
    data = run_compare(config, log=lambda m: print(m, flush=True))
    written = write_reports(data, config.out)
    print()
    print(format_markdown(data))
    print("wrote " + ", ".join(str(p) for p in written))
    return 0
