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
import sys
import time

from dato.cli.common import add_model_arguments, backend_from_args, prompts_from_args, save_named
from dato.core.schedule import ScheduleError
from dato.generators.search.genome import DEFAULT_RATIO_LEVELS
from dato.generators.search.settings import MODES, SearchSettings

__all__ = ["add_arguments", "run"]



def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    samp = parser.add_argument_group("sampling")
    samp.add_argument("--steps", type=int, default=None, help="sampling steps = genome length (default 8)")
    samp.add_argument("--sampler", choices=("euler", "euler_a", "heun", "ddim"), default="euler")
    samp.add_argument("--cfg", type=float, default=None, help="CFG scale (default 7.5; with --fixture the "
                      "fixture's own, 2.0)")
    samp.add_argument("--samples", type=int, default=None, help="images per evaluation (default 1)")
    prompts = samp.add_mutually_exclusive_group()
    prompts.add_argument("--prompt", action="append", help="a prompt (repeat for several)")
    prompts.add_argument("--prompts-file", metavar="FILE", help="one prompt per line")

    srch = parser.add_argument_group("search")
    srch.add_argument("--mode", choices=MODES, default="joint",
                      help="joint: depth and ratio together; two-stage: depth then ratio (DaTo); cache; ratio")
    srch.add_argument("--method", choices=("prune", "merge", "downsample", "none"), default="prune")
    srch.add_argument("--max-depth", type=int, default=2, help="deepest cache branch searched (default 2)")
    srch.add_argument("--no-reuse", action="store_true", help="never reuse the whole previous UNet output")
    srch.add_argument("--ratios", default=",".join(str(int(r * 10)) for r in DEFAULT_RATIO_LEVELS),
                      help="ratio levels as DaTo integers (tenths): default 0,3,4,5,6,7")
    srch.add_argument("--base-schedule", help="mode ratio: the cache actions to keep (preset name or .json)")
    srch.add_argument("--quality", choices=("fidelity", "imagereward"), default="fidelity")
    srch.add_argument("--fidelity-metric", choices=("auto", "psnr", "ssim", "snr"), default="auto")
    srch.add_argument("--no-fallback", action="store_true", help="stop if ImageReward cannot load (default: "
                                                                  "fall back to fidelity)")
    srch.add_argument("--cost", choices=("macs", "time"), default="macs",
                      help="macs: analytic, noise-free (default); time: median wall time of repeats")
    srch.add_argument("--repeats", type=int, default=3, help="timing repeats for --cost time")
    srch.add_argument("--min-quality", type=float, default=None,
                      help="constraint: fidelity floor (dB/SSIM), or ImageReward change vs baseline (e.g. -0.2)")
    srch.add_argument("--population", type=int, default=None, help="population size (default 8)")
    srch.add_argument("--generations", type=int, default=None, help="generations per stage (default 4)")
    srch.add_argument("--seed", type=int, default=0)
    srch.add_argument("--no-presets", action="store_true", help="do not seed with the preset schedules")
    srch.add_argument("--run-id", help="name of the run folder; reuse it to resume an interrupted search")
    srch.add_argument("--results-dir", help="where run folders go (default schedules/searches)")
    srch.add_argument("--save-best", metavar="NAME",
                      help="save the front's cheapest schedule meeting --min-quality (or the knee) as a schedule")
    srch.add_argument("--save-dir", help="folder for --save-best (default schedules/user)")



def _settings(args: argparse.Namespace) -> SearchSettings:
    prompts = prompts_from_args(args)
    try:
        ratios = tuple(sorted({int(v) / 10 for v in args.ratios.split(",") if v.strip()}))
    except ValueError:
        raise ScheduleError(f"--ratios {args.ratios!r}: expected integers like 0,3,4,5") from None
    return SearchSettings(
        steps=args.steps or 8, mode=args.mode, method=args.method, max_depth=args.max_depth,
        allow_reuse=not args.no_reuse, ratio_levels=ratios if args.method != "none" else (0.0,),
        base_schedule=args.base_schedule, quality=args.quality, fidelity_metric=args.fidelity_metric,
        imagereward_fallback="error" if args.no_fallback else "fidelity", cost=args.cost,
        time_repeats=args.repeats, min_quality=args.min_quality, population=args.population or 8,
        generations=args.generations or 4, seed=args.seed, samples=args.samples or 1, prompts=tuple(prompts),
        seed_presets=not args.no_presets, run_id=args.run_id, results_dir=args.results_dir,
        extra={"cli": " ".join(sys.argv[1:])},
    )



def run(args: argparse.Namespace) -> int:
    from dato.generators.search.engine import ScheduleSearch, SearchCancelled
    from dato.generators.search.imagereward import ScorerUnavailable
    from dato.generators.search.results import schedule_from_result

    try:
        settings = _settings(args)
        if args.save_best:
            from dato.core.schedule import Schedule

            Schedule.full(2, name=args.save_best)  # check the name before a long search
    except (ScheduleError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    print(f"loading model ({'checkpoint ' + args.checkpoint if args.checkpoint else 'fixture' if args.fixture else 'built-in ' + args.builtin + ' UNet, latent ' + str(args.latent_size)})...", flush=True)  # noqa: E501
    try:
        backend = backend_from_args(args, settings.steps)
    except (OSError, ValueError, RuntimeError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
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
        print(f"error: {exc}", file=sys.stderr)
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
