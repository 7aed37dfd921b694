"""``python -m dato search``: the Search tab's search without the WebUI.

With no model argument it runs on the built-in random SD1.5-shaped UNet at a
small latent size with the fidelity objective (a few minutes on a CPU), so the
whole path can be tried anywhere; ``--fixture`` uses the trained tiny digits
model; ``--checkpoint`` an SD1.x ``.safetensors``/``.ckpt`` (for a GPU server).
Progress is printed; results go to ``schedules/searches/<run_id>/results.json``.
Interrupt with Ctrl+C and run the same command with ``--run-id`` to resume.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

from dato.cli.common import (
    BadValue,
    CliError,
    add_cfg_argument,
    add_model_arguments,
    add_prompt_arguments,
    backend_from_args,
    bad,
    check_model_args,
    check_output_dir,
    check_save,
    finite_float,
    int_range,
    path_arg,
    path_kind,
    print_error,
    prompts_from_args,
    require,
    save_named,
    seed_int,
    steps_int,
)
from dato.core.layout import DEEPEST_KNOWN_DEPTH
from dato.core.schedule import ScheduleError, find_schedules, load_schedule, short_repr, user_schedule_dir

__all__ = ["add_arguments", "run"]

# dato.generators.search imports pymoo as a package, so ``--help`` cannot read these from it; the values are
# dato.generators.search.settings.MODES and genome.DEFAULT_RATIO_LEVELS (tests/test_cli_args.py checks they agree).
MODES = ("joint", "two-stage", "cache", "ratio")
DEFAULT_RATIOS = "0,3,4,5,6,7"
_RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,79}$")


def ratio_codes(value: str) -> tuple[int, ...]:
    """``type=`` for ``--ratios``: DaTo ratio codes, integers 0..7 in tenths (0.7 is the largest allowed ratio)."""
    allowed = "expected comma-separated integers 0..7 (tenths of a token ratio), e.g. 0,3,4,5"
    try:
        codes = tuple(sorted({int(v) for v in value.split(",") if v.strip()}))
    except ValueError:
        raise BadValue(value, allowed) from None
    if not codes or any(not 0 <= c <= 7 for c in codes):
        raise BadValue(value, allowed)
    return codes


def run_id(value: str) -> str:
    if not _RUN_ID_RE.match(value):
        raise BadValue(value, "use 1-80 letters, digits, '_', '-' or '.' (a folder name)")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    samp = parser.add_argument_group("sampling")
    samp.add_argument("--steps", type=steps_int(2), default=8, help="sampling steps = genome length (default 8)")
    samp.add_argument("--sampler", choices=("euler", "euler_a", "heun", "ddim"), default="euler")
    add_cfg_argument(samp)
    samp.add_argument("--samples", type=int_range(1, 1024), default=1, help="images per evaluation (default 1)")
    add_prompt_arguments(samp)

    srch = parser.add_argument_group("search")
    srch.add_argument("--mode", choices=MODES, default="joint",
                      help="joint: depth and ratio together; two-stage: depth then ratio (DaTo); cache; ratio")
    srch.add_argument("--method", choices=("prune", "merge", "downsample", "none"), default="prune")
    srch.add_argument("--max-depth", type=int_range(0, DEEPEST_KNOWN_DEPTH), default=2,
                      help="deepest cache branch searched (default 2)")
    srch.add_argument("--no-reuse", action="store_true", help="never reuse the whole previous UNet output")
    srch.add_argument("--ratios", type=ratio_codes, default=ratio_codes(DEFAULT_RATIOS),
                      help=f"ratio levels as DaTo integers (tenths): default {DEFAULT_RATIOS}")
    srch.add_argument("--base-schedule", type=path_arg,
                      help="mode ratio: the cache actions to keep (preset or user schedule name, or .json)")
    srch.add_argument("--quality", choices=("fidelity", "imagereward"), default="fidelity")
    srch.add_argument("--fidelity-metric", choices=("auto", "psnr", "ssim", "snr"), default="auto")
    srch.add_argument("--no-fallback", action="store_true", help="stop if ImageReward cannot load (default: "
                                                                  "fall back to fidelity)")
    srch.add_argument("--cost", choices=("macs", "time"), default="macs",
                      help="macs: analytic, noise-free (default); time: median wall time of repeats")
    srch.add_argument("--repeats", type=int_range(1, 20), default=3, help="timing repeats for --cost time")
    srch.add_argument("--min-quality", type=finite_float, default=None,
                      help="constraint: fidelity floor (dB/SSIM), or ImageReward change vs baseline (e.g. -0.2)")
    srch.add_argument("--population", type=int_range(4, 1000), default=8, help="population size (default 8)")
    srch.add_argument("--generations", type=int_range(1, 10_000), default=4,
                      help="generations per stage (default 4)")
    srch.add_argument("--seed", type=seed_int, default=0)
    srch.add_argument("--no-presets", action="store_true", help="do not seed with the preset schedules")
    srch.add_argument("--run-id", type=run_id, help="name of the run folder; reuse it to resume an interrupted "
                                                    "search")
    srch.add_argument("--results-dir", type=path_arg, help="where run folders go (default schedules/searches)")
    srch.add_argument("--save-best", metavar="NAME",
                      help="save the front's cheapest schedule meeting --min-quality (or the knee) as a schedule")
    srch.add_argument("--save-dir", type=path_arg, help="folder for --save-best (default schedules/user)")


def check_args(args: argparse.Namespace) -> tuple[list[str], str | None]:
    """Every check that needs several options, a file or a package; before the model loads.

    Returns the prompts and the base schedule as the settings take it (a preset name, or a file path).
    """
    if args.method == "none" and args.mode in ("joint", "two-stage", "ratio"):
        raise bad("--method", "none", f"--mode {args.mode} searches token ratios; use --mode cache or a token method")
    if args.method == "none" and args.ratios != ratio_codes(DEFAULT_RATIOS):
        raise bad("--ratios", ",".join(map(str, args.ratios)), "not used with --method none")
    base = None
    if args.mode == "ratio" and not args.base_schedule:
        raise bad("--mode", "ratio", "needs --base-schedule (the cache actions to keep while ratios are searched)")
    if args.base_schedule and args.mode != "ratio":
        raise bad("--base-schedule", args.base_schedule, "only used with --mode ratio")
    if args.base_schedule and args.base_schedule.endswith(".json") and path_kind(args.base_schedule) != "file":
        raise bad("--base-schedule", args.base_schedule, "no such file")
    if args.base_schedule:
        try:
            load_schedule(args.base_schedule, [user_schedule_dir()])
        except (ScheduleError, OSError) as exc:
            raise bad("--base-schedule", args.base_schedule, str(exc)) from None
        # a user schedule is passed on as its file (the search itself looks in the presets only)
        base = args.base_schedule
        if args.base_schedule not in find_schedules() and not args.base_schedule.endswith(".json"):
            base = str(find_schedules([user_schedule_dir()])[args.base_schedule])
    latents_only = not args.checkpoint and not args.fixture
    if latents_only and args.fidelity_metric in ("psnr", "ssim"):
        raise bad("--fidelity-metric", args.fidelity_metric,
                  "needs decoded images; the built-in model makes latents only (use snr or auto)")
    if latents_only and args.quality == "imagereward":
        raise bad("--quality", args.quality, "needs decoded images; the built-in model makes latents only "
                                             "(use --fixture or --checkpoint)")
    check_output_dir("--results-dir", args.results_dir)
    if args.run_id and args.results_dir:
        check_output_dir("--run-id", str(Path(args.results_dir) / args.run_id))
    check_save("--save-best", args.save_best, args.save_dir)
    prompts = prompts_from_args(args)
    check_model_args("search", args)
    return prompts, base


def _settings(args: argparse.Namespace, prompts: list[str], base: str | None):
    from dato.generators.search.settings import SearchSettings

    ratios = tuple(c / 10 for c in args.ratios)
    return SearchSettings(
        steps=args.steps, mode=args.mode, method=args.method, max_depth=args.max_depth,
        allow_reuse=not args.no_reuse, ratio_levels=ratios if args.method != "none" else (0.0,),
        base_schedule=base, quality=args.quality, fidelity_metric=args.fidelity_metric,
        imagereward_fallback="error" if args.no_fallback else "fidelity", cost=args.cost,
        time_repeats=args.repeats, min_quality=args.min_quality, population=args.population,
        generations=args.generations, seed=args.seed, samples=args.samples, prompts=tuple(prompts),
        seed_presets=not args.no_presets, run_id=args.run_id, results_dir=args.results_dir,
        extra={"cli": " ".join(short_repr(a, 200) if len(a) > 200 else a for a in sys.argv[1:])},
    )


_OPTION_OF = {"time_repeats": "--repeats", "ratio_levels": "--ratios", "base_schedule": "--base-schedule",
              "imagereward_fallback": "--no-fallback", "seed_presets": "--no-presets", "allow_reuse": "--no-reuse"}


def _as_option(message: str) -> str:
    """``search setting steps = 5000: expected ...`` (the settings' words) as ``--steps 5000: expected ...``."""
    found = re.match(r"search setting (\w+) = (.*?): (expected .*)$", message, re.S)
    if not found:
        return message
    field, value, allowed = found.groups()
    option = _OPTION_OF.get(field, "--" + field.replace("_", "-"))
    return f"{option} {value.strip(chr(39))}: {allowed}"


def run(args: argparse.Namespace) -> int:
    prompts, base = check_args(args)
    require("search", "pymoo", "pymoo")
    if args.quality == "imagereward" and args.no_fallback:
        # found, not imported: the engine imports only the model module when the package's own imports fail
        require("search", "ImageReward", "image-reward", "for --quality imagereward --no-fallback", find_only=True)
    from dato.generators.search.engine import ScheduleSearch, SearchCancelled
    from dato.generators.search.imagereward import ScorerUnavailable
    from dato.generators.search.results import schedule_from_result

    try:
        settings = _settings(args, prompts, base)
    except ScheduleError as exc:  # what the settings refuse beyond the checks above, said as the option
        raise CliError(_as_option(str(exc))) from None
    t0 = time.perf_counter()
    print(f"loading model ({'checkpoint ' + args.checkpoint if args.checkpoint else 'fixture' if args.fixture else 'built-in ' + args.builtin + ' UNet, latent ' + str(args.latent_size)})...", flush=True)  # noqa: E501
    try:
        backend = backend_from_args(args, settings.steps)
    except (OSError, ValueError, RuntimeError, ImportError) as exc:
        print_error(exc)
        return 2
    print(f"model ready in {time.perf_counter() - t0:.1f}s; search: mode {settings.mode}, {settings.steps} steps, "
          f"population {settings.population}, {settings.generations} generations, {settings.samples} sample(s), "
          f"quality {settings.quality}, cost {settings.cost}", flush=True)
    search = ScheduleSearch(settings, backend, log=lambda m: print(m, flush=True))
    print(f"run {search.run_id}: {search.run_dir}", flush=True)
    try:
        results = search.run()
    except SearchCancelled:
        print(f"cancelled; resume with --run-id {search.run_id}")
        return 130
    except KeyboardInterrupt:
        print(f"\ninterrupted; resume with --run-id {search.run_id}")
        return 130
    except (ScheduleError, ScorerUnavailable) as exc:
        print_error(exc)
        return 2
    _print_front(results)
    print(f"{len(results['evaluations'])} schedules evaluated in {results['wall_seconds']:.0f}s; "
          f"results: {search.results_path}")
    if args.save_best:
        pick = _pick(results)
        path = save_named(schedule_from_result(results, pick["id"], args.save_best), args.save_best, args.save_dir)
        if path is None:
            return 2
        print(f"saved #{pick['id']} as {path}")
    return 0


def _pick(results: dict) -> dict:
    by_id = {e["id"]: e for e in results["evaluations"]}
    front = [by_id[i] for i in results["front"]]
    cheaper = [e for e in front if e["cost"] < 1.0 - 1e-9] or front
    if results["objectives"].get("min_quality") is not None:
        return min(cheaper, key=lambda e: e["cost"])
    q = [e["quality"] for e in cheaper]
    c = [e["cost"] for e in cheaper]
    qs, cs = (max(q) - min(q)) or 1.0, (max(c) - min(c)) or 1.0
    return min(cheaper, key=lambda e: ((max(q) - e["quality"]) / qs) ** 2 + ((e["cost"] - min(c)) / cs) ** 2)


def _print_front(results: dict) -> None:
    q = results["objectives"]["quality"]
    by_id = {e["id"]: e for e in results["evaluations"]}
    base = results["baseline"]
    print(f"\nPareto front ({q['name']}, {q['unit']}; cost = {results['objectives']['cost']['name']} relative to "
          f"the baseline; baseline quality {base['quality']:.4g}, {base['time_s']:.2f}s):")
    print(f"  {'id':>4} {'quality':>9} {'cost':>7} {'speedup':>8}  schedule (F full, R reuse, digit = depth) / "
          "ratio codes")
    for i in results["front"]:
        e = by_id[i]
        speed = 1.0 / e["cost"] if e["cost"] > 0 else float("inf")
        codes = "".join(str(c) for c in e["ratio_codes"])
        origin = f" [{e['seed_name']}]" if e.get("seed_name") else ""
        print(f"  {i:>4} {e['quality']:>9.4g} {e['cost']:>7.3f} {speed:>7.2f}x  {e['preview']} / {codes}{origin}")
