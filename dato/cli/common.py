"""What the commands share: argument checks, model and sampling arguments, the backend, prompts, saving by name.

``search``, ``calibrate`` and ``gates`` load a model the same way and save
their schedule the same way; this module is that one way. It also holds the
one way a bad command line is reported: every value is checked before
anything heavy starts, and a bad one ends the command with a single line
``error: --OPTION VALUE: <what is allowed>`` on stderr and exit status 2
(:class:`CliParser` for what argparse sees, :class:`CliError` for the checks
that need several options or the file system).

Length: every command's shared option checks live here so that one bad value reads the same everywhere;
the device and dtype options (one checker each) took it past 420 lines.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import math
import re
import sys
from collections.abc import Callable
from pathlib import Path

from dato.core.schedule import MAX_STEPS, Schedule, ScheduleError, short_repr, user_schedule_dir

__all__ = ["BadValue", "CliError", "CliParser", "add_cfg_argument", "add_device_arguments", "add_model_arguments",
           "add_prompt_arguments", "add_sampling_arguments", "backend_from_args", "bad", "check_model_args",
           "check_output_dir", "check_output_file", "check_save", "choice_list", "device_arg", "dtype_arg",
           "existing_dir", "existing_file", "finite_float",
           "float_range", "int_range", "latent_size", "model_slug", "non_negative_float", "non_negative_int",
           "path_arg", "path_kind", "pixel_size", "positive_float", "positive_int", "print_error", "prompts_from_args",
           "require", "save_named", "seed_int", "show", "speedup_float", "steps_int", "text",
           "torch_dtype"]

_MESSAGE_LIMIT = 400


class CliError(Exception):
    """A bad command-line value found after parsing: ``main`` prints ``error: <message>`` and exits 2."""


def show(value: object, limit: int = 200) -> str:
    """A command-line value as the message quotes it: bare when plain, quoted when empty or spaced, cut when long."""
    text = str(value)
    if not text or any(c.isspace() for c in text) or not text.isprintable():
        return short_repr(text, limit)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def bad(option: str, value: object, allowed: str) -> CliError:
    """``--OPTION VALUE: allowed`` as a :class:`CliError` to raise."""
    return CliError(f"{option} {show(value)}: {allowed}")


class BadValue(argparse.ArgumentTypeError):
    """Raised by the ``type=`` checks below; :class:`CliParser` puts the option name in front."""

    def __init__(self, value: object, allowed: str) -> None:
        super().__init__(f"{show(value)}: {allowed}")


class CliParser(argparse.ArgumentParser):
    """An ArgumentParser whose every error is one line, ``error: --OPTION VALUE: ...``, and exit status 2."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("exit_on_error", False)  # ArgumentErrors reach parse_known_args below with their option
        super().__init__(*args, **kwargs)

    def parse_known_args(self, args=None, namespace=None):
        try:
            return super().parse_known_args(args, namespace)
        except argparse.ArgumentError as err:
            self.error(_one_line(err))

    def error(self, message: str):  # type: ignore[override]
        print_error(message)
        sys.exit(2)


def print_error(message: object) -> None:
    """``error: <message>`` as one line on stderr, cut to a readable length."""
    line = " ".join(str(message).splitlines())
    line = line if len(line) <= _MESSAGE_LIMIT else line[:_MESSAGE_LIMIT] + "..."
    print(f"error: {line}", file=sys.stderr, flush=True)


def _one_line(err: argparse.ArgumentError) -> str:
    name = err.argument_name or ""
    message = err.message
    if isinstance(err.__context__, BadValue):  # our own check: "VALUE: allowed"
        return f"{name} {message}" if name else message
    choice = re.match(r"invalid choice: (.*) \(choose from (.*)\)$", message, re.S)
    if choice:
        value = choice.group(1) if len(choice.group(1)) <= 62 else choice.group(1)[:62] + "..."
        return f"{name} {value}: choose from {choice.group(2).replace(chr(39), '')}"
    return f"{name}: {message}" if name else message


# ------------------------------------------------------------------ value checks (argparse type= functions)
def int_range(lo: int | None = None, hi: int | None = None, what: str = "") -> Callable[[str], int]:
    """``type=`` for an integer in ``lo..hi`` (either end open when ``None``)."""
    if lo is not None and hi is not None:
        allowed = f"expected an integer {lo}..{hi}"
    elif lo is not None:
        allowed = f"expected an integer >= {lo}"
    elif hi is not None:
        allowed = f"expected an integer <= {hi}"
    else:
        allowed = "expected an integer"
    allowed += f" {what}" if what else ""

    def check(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise BadValue(value, allowed) from None
        if (lo is not None and number < lo) or (hi is not None and number > hi):
            raise BadValue(value, allowed)
        return number

    check.__name__ = "int"
    return check


def float_range(lo: float | None = None, hi: float | None = None, lo_open: bool = False,
                what: str = "") -> Callable[[str], float]:
    """``type=`` for a finite number in ``[lo, hi]`` (``(lo, hi]`` with ``lo_open``); NaN and inf never pass."""
    parts = []
    if lo is not None:
        parts.append(f"{'>' if lo_open else '>='} {lo:g}")
    if hi is not None:
        parts.append(f"<= {hi:g}")
    allowed = "expected a finite number" + (f" {' and '.join(parts)}" if parts else "") + (f" {what}" if what else "")

    def check(value: str) -> float:
        try:
            number = float(value)
        except ValueError:
            raise BadValue(value, allowed) from None
        if not math.isfinite(number) or (lo is not None and (number <= lo if lo_open else number < lo)) \
                or (hi is not None and number > hi):
            raise BadValue(value, allowed)
        return number

    check.__name__ = "float"
    return check


positive_int = int_range(1)
non_negative_int = int_range(0)
seed_int = int_range(0, 2**32 - 1)
finite_float = float_range()
positive_float = float_range(0.0, lo_open=True)
non_negative_float = float_range(0.0)
speedup_float = float_range(1.0, what="(a speed-up; 1 = none)")


def device_arg(value: str) -> str:
    """``type=`` for ``--device``: cpu, cuda, cuda:N or mps, and present on this machine."""
    if value == "cpu":  # the default: no torch import just to parse
        return value
    from dato.evaluation.device import check_device

    try:
        return str(check_device(value.strip()))
    except ValueError as exc:
        raise BadValue(value, str(exc)) from None


DTYPE_NAMES = ("fp32", "fp16", "bf16")


def dtype_arg(value: str) -> str:
    """``type=`` for ``--dtype``: fp32, fp16 or bf16."""
    if value not in DTYPE_NAMES:
        raise BadValue(value, f"expected one of {', '.join(DTYPE_NAMES)}")
    return value


def torch_dtype(args: argparse.Namespace):
    """The ``torch.dtype`` that ``--dtype`` (or the older ``--half``) asks for."""
    from dato.evaluation.device import DTYPES

    return DTYPES["fp16" if getattr(args, "half", False) else getattr(args, "dtype", "fp32")]


def add_device_arguments(parser) -> None:
    """``--device`` and ``--dtype``, the same for every command that runs a model."""
    parser.add_argument("--device", type=device_arg, default="cpu",
                        help="torch device: cpu, cuda, cuda:N or mps (default cpu)")
    parser.add_argument("--dtype", type=dtype_arg, default="fp32",
                        help="weights and activations: fp32, fp16 or bf16 (default fp32)")


def steps_int(lo: int = 2) -> Callable[[str], int]:
    """``type=`` for sampling steps: ``lo`` .. :data:`~dato.core.schedule.MAX_STEPS`, the one step limit."""
    return int_range(lo, MAX_STEPS)


def _multiple(value: str, step: int, lo: int, hi: int, unit: str) -> int:
    allowed = f"expected a multiple of {step}{unit} ({lo}, {lo + step}, ..., {hi})"
    try:
        number = int(value)
    except ValueError:
        raise BadValue(value, allowed) from None
    if not lo <= number <= hi or number % step:
        raise BadValue(value, allowed)
    return number


def pixel_size(value: str) -> int:
    """``type=`` for an image side: a multiple of 64 pixels (the UNet halves the latent three times)."""
    return _multiple(value, 64, 64, 4096, " pixels")


def latent_size(value: str) -> int:
    """``type=`` for the built-in model's latent side: a multiple of 8 (the UNet halves it three times)."""
    return _multiple(value, 8, 8, 512, "")


def path_kind(value: str | Path) -> str:
    """'file', 'dir', 'other' or 'missing' (a name the file system refuses, e.g. too long, counts as missing)."""
    try:
        path = Path(value)
        if path.is_file():
            return "file"
        if path.is_dir():
            return "dir"
        return "other" if path.exists() else "missing"
    except (OSError, ValueError):  # ENAMETOOLONG, embedded NUL
        return "missing"


def path_arg(value: str) -> str:
    """``type=`` for a path to write to: not empty (an empty one would quietly become the default)."""
    if not value.strip():
        raise BadValue(value, "expected a path")
    return value


def existing_file(value: str) -> str:
    """``type=`` for a file that must exist (checkpoints, prompt files)."""
    kind = path_kind(value) if value.strip() else "missing"
    if kind != "file":
        raise BadValue(value, "is a folder, expected a file" if kind == "dir" else "no such file")
    return value


def existing_dir(value: str) -> str:
    """``type=`` for a folder that must exist."""
    if not value.strip() or path_kind(value) != "dir":
        raise BadValue(value, "no such folder")
    return value


def text(value: str) -> str:
    """``type=`` for a non-blank string (a prompt)."""
    if not value.strip():
        raise BadValue(value, "expected a non-empty text")
    return value


def choice_list(choices: tuple[str, ...]) -> Callable[[str], tuple[str, ...]]:
    """``type=`` for a comma-separated subset of ``choices``, in the order given."""
    allowed = f"expected a comma-separated subset of {','.join(choices)}"

    def check(value: str) -> tuple[str, ...]:
        items = tuple(v.strip() for v in value.split(",") if v.strip())
        if not items or any(v not in choices for v in items):
            raise BadValue(value, allowed)
        return items

    check.__name__ = "list"
    return check


# --------------------------------------------------------------- checks that need the file system or options
def check_output_dir(option: str, value: str | None) -> None:
    """An output folder may exist already (it is reused) but must not be a file."""
    if value is not None and path_kind(value) in ("file", "other"):
        raise bad(option, value, "exists and is not a folder")


def check_output_file(option: str, value: str | None) -> None:
    """An output file may not be a folder, and its parent must not be a file."""
    if value is None:
        return
    path = Path(value)
    if path_kind(path) == "dir":
        raise bad(option, value, "is a folder, expected a file path")
    for parent in path.parents:
        kind = path_kind(parent)
        if kind != "missing":
            if kind != "dir":
                raise bad(option, value, f"{parent} is not a folder")
            break


def check_save(option: str, name: str | None, save_dir: str | None, dir_option: str = "--save-dir") -> None:
    """A name to save a schedule under: valid, and not taken in the folder :func:`save_named` will write to."""
    if name is None:
        return
    try:
        Schedule.full(2, name=name)
    except ScheduleError:
        raise bad(option, name, "use 1-64 letters, digits, space, '_', '-' or '.' (a schedule name)") from None
    check_output_dir(dir_option, save_dir)
    target = (Path(save_dir) if save_dir else user_schedule_dir()) / f"{name}.json"
    if path_kind(target) != "missing":
        raise bad(option, name, f"{target} already exists; choose another name")


def require(command: str, module: str, package: str, purpose: str = "", find_only: bool = False) -> None:
    """An optional dependency, imported now (or only found, ``find_only``); missing: one line on what to install."""
    try:
        found = importlib.util.find_spec(module) is not None if find_only else bool(importlib.import_module(module))
    except (ImportError, ValueError):
        found = False
    if not found:
        raise CliError(f"python -m dato {command} needs {package}{' ' + purpose if purpose else ''}: "
                       f"pip install {package}")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Which model to load: shared by ``search``, ``calibrate`` and ``gates``."""
    model = parser.add_argument_group("model (default: built-in random SD1.5-shaped UNet, no weights needed)")
    src = model.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", metavar="PATH", type=existing_file,
                     help="SD1.x .safetensors/.ckpt (UNet, CLIP, VAE from it)")
    src.add_argument("--fixture", action="store_true", help="the trained tiny digits model (dato.evaluation.fixture)")
    model.add_argument("--builtin", choices=("sd15", "tiny"), default="sd15",
                       help="built-in model: SD1.5-shaped (default) or tiny SD1-topology (smoke tests)")
    model.add_argument("--latent-size", type=latent_size, default=16,
                       help="built-in model: latent side, a multiple of 8 (16 = 128 px; default 16)")
    model.add_argument("--size", type=pixel_size, default=512,
                       help="checkpoint: image side in pixels, a multiple of 64 (default 512)")
    add_device_arguments(model)
    model.add_argument("--half", action="store_true", help=argparse.SUPPRESS)  # older spelling of --dtype fp16
    model.add_argument("--tokenizer", default="openai/clip-vit-large-patch14",
                       help="checkpoint: CLIP tokenizer name or local folder")


def add_sampling_arguments(parser: argparse.ArgumentParser, steps: int) -> None:
    """Sampler, steps, CFG and prompts: shared by ``calibrate`` and ``gates``."""
    samp = parser.add_argument_group("sampling")
    samp.add_argument("--steps", type=steps_int(2), default=steps, help=f"sampling steps (default {steps})")
    samp.add_argument("--sampler", choices=("euler", "euler_a", "heun", "ddim"), default="euler")
    add_cfg_argument(samp)
    add_prompt_arguments(samp)
    samp.add_argument("--seed", type=seed_int, default=0, help="noise seed of the first prompt (+1 per prompt)")


def add_cfg_argument(group) -> None:
    group.add_argument("--cfg", type=positive_float, default=None,
                       help="CFG scale, > 0 (default 7.5; with --fixture the fixture's own, 2.0)")


def add_prompt_arguments(group) -> None:
    prompts = group.add_mutually_exclusive_group()
    prompts.add_argument("--prompt", action="append", type=text, help="a prompt (repeat for several)")
    prompts.add_argument("--prompts-file", metavar="FILE", type=existing_file, help="one prompt per line")


def prompts_from_args(args: argparse.Namespace) -> list[str]:
    """``--prompts-file``, ``--prompt``s, or the model's default set (digit prompts for ``--fixture``).

    Raises :class:`CliError` for an unreadable or empty prompts file, and with ``--fixture`` for a
    prompt that does not name exactly one digit.
    """
    if args.prompts_file:
        try:
            lines = Path(args.prompts_file).read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise bad("--prompts-file", args.prompts_file, f"cannot read it ({exc.strerror})") from None
        except UnicodeDecodeError:
            raise bad("--prompts-file", args.prompts_file, "is not UTF-8 text") from None
        prompts = [ln.strip() for ln in lines if ln.strip()]
        if not prompts:
            raise bad("--prompts-file", args.prompts_file, "has no prompts (one per line expected)")
        option = "--prompts-file"
    elif args.prompt:
        prompts, option = list(args.prompt), "--prompt"
    elif getattr(args, "fixture", False):
        from dato.evaluation.backends import fixture_prompts

        return fixture_prompts()
    else:
        return list(_DEFAULT_PROMPTS)
    if getattr(args, "fixture", False):
        for prompt in prompts:
            if sum(c.isdigit() for c in prompt) != 1:
                raise bad(option, prompt, "with --fixture each prompt names one digit 0-9, e.g. "
                                          "'a handwritten digit 3'")
    return prompts


# The search's headless default set (dato.generators.search.settings.DEFAULT_PROMPTS, which imports pymoo through
# its package; tests/test_cli_args.py checks that the two agree).
_DEFAULT_PROMPTS = (
    "a photo of a red fox in the snow", "a watercolor painting of a lighthouse at dusk",
    "a bowl of ramen on a wooden table, studio lighting", "an astronaut riding a horse on the moon",
    "a cozy living room with a fireplace, interior design", "a portrait of an old fisherman, dramatic light",
    "a futuristic city skyline at night, neon lights", "a macro photo of a dew-covered spider web",
)


def check_model_args(command: str, args: argparse.Namespace) -> None:
    """The device and the optional packages the chosen model needs, checked before anything is loaded."""
    if getattr(args, "checkpoint", None):
        require(command, "transformers", "transformers", "for --checkpoint (the CLIP text encoder)")
        if str(args.checkpoint).endswith(".safetensors"):
            require(command, "safetensors", "safetensors", "for a .safetensors checkpoint")
    if getattr(args, "fixture", False):
        require(command, "safetensors", "safetensors", "for --fixture (its weights)")


def backend_from_args(args: argparse.Namespace, steps: int):
    """The :class:`~dato.evaluation.backends.StandaloneBackend` that the model arguments ask for."""
    from dato.evaluation import backends as standalone

    where = {"device": args.device, "dtype": torch_dtype(args)}
    if args.checkpoint:
        return standalone.checkpoint_backend(
            args.checkpoint, steps=steps, sampler=args.sampler,
            cfg_scale=7.5 if args.cfg is None else args.cfg, size=args.size, tokenizer=args.tokenizer, **where)
    if args.fixture:
        return standalone.fixture_backend(steps=steps, sampler=args.sampler, cfg_scale=args.cfg, **where)
    return standalone.builtin_backend(latent_size=args.latent_size, steps=steps, sampler=args.sampler,
                                      cfg_scale=7.5 if args.cfg is None else args.cfg, model=args.builtin, **where)


def model_slug(backend) -> str:
    """A file-name-safe name for the backend's model (hash, else name), for default output paths."""
    info = backend.describe()
    raw = str(info.get("model_hash") or info.get("model_name") or "model")
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in raw)[:64]


def save_named(schedule: Schedule, name: str, save_dir: str | None = None) -> Path | None:
    """Save ``schedule`` as ``name`` (default folder ``schedules/user``, which ``schedules`` reads) for ``--save``.

    Returns the path, or ``None`` after printing the reason (bad name, file exists) to stderr.
    """
    folder = Path(save_dir) if save_dir else user_schedule_dir()
    try:
        named = Schedule.from_dict({**schedule.to_dict(), "name": name})
        return named.save(folder / f"{name}.json")
    except ScheduleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None
