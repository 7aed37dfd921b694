"""``python -m dato <command>``: the engine's headless entry points.

Each command lives in its own module exposing ``add_arguments(parser)`` and
``run(args) -> int``; this file only dispatches, so a command's imports (pymoo,
ImageReward, ...) are paid only when it runs. A bad value ends any command with one
line, ``error: --OPTION VALUE: <what is allowed>``, and exit status 2.
"""

from __future__ import annotations

import importlib
import sys

from dato.cli.common import CliError, CliParser, print_error

COMMANDS = {
    "demo": ("dato.cli.demo", "the product in minutes: presets on the trained fixture (one PNG grid), SD1.5 speed-ups"),
    "bench": ("dato.cli.bench", "time and count MACs of every method and preset against the baseline"),
    "search": ("dato.cli.search", "NSGA-II schedule search on a checkpoint or the built-in model"),
    "quality": ("dato.cli.quality", "quality-vs-speed table on the trained fixture model"),
    "calibrate": ("dato.cli.calibrate", "SmoothCache-style calibration: error curves -> schedule at a threshold"),
    "gates": ("dato.cli.gates", "DiP-GO-style gradient gates: learn a schedule at a MACs budget"),
    "compare": ("dato.cli.compare", "uniform vs calibration vs NSGA-II vs gates at equal MACs on the fixture"),
    "schedules": ("dato.cli.schedules", "list, show and validate schedule files"),
    "target": ("dato.cli.target", "make it N x faster: the best-quality schedule meeting N at a step count"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = CliParser(prog="python -m dato", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    chosen = next((a for a in argv if not a.startswith("-")), None)
    module = None
    for name, (module_name, help_text) in COMMANDS.items():
        command_parser = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:  # only the chosen command's module (and its dependencies) is imported
            module = importlib.import_module(module_name)
            module.add_arguments(command_parser)
    args = parser.parse_args(argv)
    try:
        return int(module.run(args) or 0)
    except CliError as exc:  # a value that needed the file system or several options to judge
        print_error(exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
