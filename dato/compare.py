"""``python -m dato compare``: four schedule generators at equal MACs on the trained fixture.

For each target MACs speed-up (default 3x, 5x, 8x) it takes the schedule each
generator offers closest to the target:

* ``uniform``: DeepCache's every-N at depth 0 (no cost to produce);
* ``calibration``: one unaccelerated run on the digit prompts, then the alpha
  whose schedule is closest (:mod:`dato.calibrate`); ``calibration-noreuse`` the
  same curves without whole-output reuse;
* ``nsga2``: one NSGA-II search (fidelity vs MACs, :mod:`dato.search`), the front
  point closest to the target;
* ``gates``: gates trained for that target, post-processed to it exactly (:mod:`dato.gates`);

and scores it on held-out noise and classes (none of the generators saw
them): achieved MACs speed-up, PSNR/SSIM/rel-L2 to the unaccelerated samples,
classifier accuracy and Fréchet distance, plus what producing the schedule
cost in wall time. Writes ``compare.md`` and ``compare.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .schedule import Schedule

__all__ = ["add_arguments", "run", "CompareConfig", "run_compare", "GENERATORS"]

GENERATORS = ("uniform", "calibration", "calibration-noreuse", "nsga2", "gates")


@dataclass
class CompareConfig:
    steps: int = 10
    targets: tuple[float, ...] = (3.0, 5.0, 8.0)
    per_class: int = 4
    seed: int = 1000
    lookahead: int = 0  # 0: steps - 1 (every reuse distance is measured)
    gate_iterations: int = 40
    gate_batch: int = 2
    population: int = 8
    generations: int = 4
    search_samples: int = 4
    generators: tuple[str, ...] = GENERATORS
    out: str = "docs/compare"


class Evaluator:
    """Samples the held-out set with a schedule and scores it against the unaccelerated samples."""

    def __init__(self, config: CompareConfig) -> None:
        from .fixture import FixtureScorer
        from .macs import trace_unet_cost
        from .search.standalone import fixture_backend, fixture_prompts

        self.config = config
        self.backend = fixture_backend(steps=config.steps, batch_size=10 * config.per_class)
        self.scorer = FixtureScorer(__import__("dato.fixture", fromlist=["load_fixture"]).load_fixture())
        prompts = fixture_prompts()
        self.labels = [d for d in range(10) for _ in range(config.per_class)]
        self.pairs = [(prompts[d], config.seed + i) for i, d in enumerate(self.labels)]
        h, w = self.backend.latent_shape[-2:]
        self.cost = trace_unet_cost(self.backend.unet, context_len=int(self.backend.null_context(1).shape[1]))
        self.size = (h, w)
        self.full_macs = self.cost.full_step_macs(h, w) * config.steps
        self.reference = self.backend.generate(None, self.pairs)
        self.calibration = None  # shared by both calibration rows
        self.calibration_seconds = 0.0

    def speedup(self, schedule: Schedule) -> float:
        return self.full_macs / self.cost.schedule_macs(schedule, *self.size)

    def score(self, schedule: Schedule) -> dict[str, float]:
        from .metrics import fidelity

        samples = self.backend.generate(schedule, self.pairs)
        images, ref = samples.images * 2 - 1, self.reference.images * 2 - 1
        fid = fidelity(images, ref, data_range=2.0, latent=samples.latents, reference_latent=self.reference.latents)
        dist = self.scorer.score(images, self.labels)
        return {"macs_speedup": self.speedup(schedule), "psnr": fid["psnr"], "ssim": fid["ssim"],
                "rel_l2": fid["relative_l2"], "accuracy": dist["accuracy"], "frechet": dist["frechet"]}


# ------------------------------------------------------------------ generators
def closest(candidates: list[Schedule], target: float, speedup: Callable[[Schedule], float]) -> Schedule:
    return min(candidates, key=lambda s: (abs(math.log(speedup(s) / target)), s.preview()))


def uniform_schedules(ev: Evaluator, targets, log) -> tuple[dict[float, Schedule], float]:
    """DeepCache's every-N at depth 0 closest to each target (the gates' warm start)."""
    from .gates import LevelCosts, uniform_start

    costs = LevelCosts.from_cost(ev.cost, *ev.size)
    return {t: uniform_start(costs, ev.config.steps, t) for t in targets}, 0.0


def calibration_schedules(ev: Evaluator, targets, log, allow_reuse: bool = True
                          ) -> tuple[dict[float, Schedule], float]:
    from .calibrate import calibrate
    from .calibrate_cli import alpha_for_speedup
    from .search.standalone import fixture_prompts

    c = ev.config
    pairs = [(p, i) for i, p in enumerate(fixture_prompts())]
    if ev.calibration is None:
        t0 = time.perf_counter()
        with torch.no_grad():
            ev.calibration = calibrate(ev.backend.unet,
                                       lambda on_step: ev.backend.sample_latents(pairs, on_step=on_step),
                                       steps=c.steps, lookahead=c.lookahead or c.steps - 1)
        ev.calibration_seconds = time.perf_counter() - t0
    out = {}
    for target in targets:
        alpha, schedule = alpha_for_speedup(ev.calibration, target, ev.speedup, allow_reuse=allow_reuse)
        out[target] = schedule
        log(f"calibration{'' if allow_reuse else ' (no reuse)'} {target:g}x: alpha {alpha:.4g} -> "
            f"{schedule.preview()}")
    return out, ev.calibration_seconds


def nsga2_schedules(ev: Evaluator, targets, log) -> tuple[dict[float, Schedule], float]:
    from .search import ScheduleSearch, SearchSettings, schedule_from_result
    from .search.standalone import fixture_backend, fixture_prompts

    c = ev.config
    with tempfile.TemporaryDirectory() as folder:
        settings = SearchSettings(steps=c.steps, mode="cache", method="none", ratio_levels=(0.0,), max_depth=2,
                                  quality="fidelity", cost="macs", population=c.population,
                                  generations=c.generations, samples=c.search_samples,
                                  prompts=tuple(fixture_prompts()), seed=0, results_dir=folder, run_id="compare")
        t0 = time.perf_counter()
        results = ScheduleSearch(settings, fixture_backend(steps=c.steps), log=lambda m: None).run()
        seconds = time.perf_counter() - t0
    front = [schedule_from_result(results, i, f"nsga2-{i}") for i in results["front"]]
    out = {t: closest(front, t, ev.speedup) for t in targets}
    log(f"nsga2: {len(results['evaluations'])} evaluations, front of {len(front)} in {seconds:.0f}s")
    return out, seconds


def gate_schedules(ev: Evaluator, targets, log) -> tuple[dict[float, Schedule], float]:
    from .gates import GateConfig, train_gates
    from .search.standalone import fixture_prompts

    c = ev.config
    out, seconds = {}, 0.0
    for target in targets:
        config = GateConfig(target_speedup=target, iterations=c.gate_iterations, batch_size=c.gate_batch,
                            pool=max(8, c.gate_batch), seed=0)
        t0 = time.perf_counter()
        result = train_gates(ev.backend, fixture_prompts(), config)
        seconds += time.perf_counter() - t0
        out[target] = result.schedule(target)
        log(f"gates {target:g}x: {out[target].preview()} (loss {result.history[0]['loss']:.4f} -> "
            f"{result.history[-1]['loss']:.4f})")
    return out, seconds


def run_compare(config: CompareConfig, log: Callable[[str], None] = print) -> dict:
    ev = Evaluator(config)
    targets = config.targets
    generators: dict[str, Callable] = {
        "uniform": uniform_schedules,
        "calibration": calibration_schedules,
        "calibration-noreuse": lambda e, t, lg: calibration_schedules(e, t, lg, allow_reuse=False),
        "nsga2": nsga2_schedules, "gates": gate_schedules,
    }
    rows = []
    for name in config.generators:
        schedules, seconds = generators[name](ev, targets, log)
        for target in targets:
            schedule = schedules[target]
            row = {"target": target, "generator": name, "schedule": schedule.preview(),
                   "generator_seconds": seconds, **ev.score(schedule)}
            rows.append(row)
            log(f"{target:4g}x {name:<12} {row['schedule']}  MACs x{row['macs_speedup']:.2f}  "
                f"PSNR {row['psnr']:.2f}  SSIM {row['ssim']:.4f}  acc {row['accuracy']:.3f}  FD {row['frechet']:.1f}")
    base = ev.scorer.score(ev.reference.images * 2 - 1, ev.labels)
    return {"config": asdict(config), "baseline": base, "rows": rows}


def format_markdown(data: dict) -> str:
    lines = ["| target | generator | schedule | MACs x | PSNR dB | SSIM | rel-L2 | accuracy | Fréchet | "
             "generator time s |", "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in sorted(data["rows"], key=lambda r: (r["target"], GENERATORS.index(r["generator"]))):
        lines.append(f"| {r['target']:g}x | {r['generator']} | `{r['schedule']}` | {r['macs_speedup']:.2f} | "
                     f"{r['psnr']:.2f} | {r['ssim']:.4f} | {r['rel_l2']:.4f} | {r['accuracy']:.3f} | "
                     f"{r['frechet']:.1f} | {r['generator_seconds']:.0f} |")
    b = data["baseline"]
    lines.append(f"\nUnaccelerated baseline on the same held-out set: accuracy {b['accuracy']:.3f}, "
                 f"Fréchet {b['frechet']:.1f}.")
    return "\n".join(lines) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = CompareConfig()
    parser.add_argument("--steps", type=int, default=d.steps, help=f"sampling steps (default {d.steps})")
    parser.add_argument("--targets", default=",".join(f"{t:g}" for t in d.targets),
                        help="MACs speed-ups to compare at (default 3,5,8)")
    parser.add_argument("--per-class", type=int, default=d.per_class, help="held-out samples per digit")
    parser.add_argument("--generators", default=",".join(GENERATORS), help="subset of " + ",".join(GENERATORS))
    parser.add_argument("--gate-iterations", type=int, default=d.gate_iterations)
    parser.add_argument("--population", type=int, default=d.population)
    parser.add_argument("--generations", type=int, default=d.generations)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (1 is fastest on a shared CPU)")
    parser.add_argument("--out", default=d.out, help="folder for compare.md and compare.json")


def run(args: argparse.Namespace) -> int:
    try:
        targets = tuple(float(t) for t in args.targets.split(",") if t.strip())
        generators = tuple(g.strip() for g in args.generators.split(",") if g.strip())
    except ValueError:
        raise SystemExit(f"error: --targets {args.targets!r}: expected numbers like 3,5,8") from None
    bad = [g for g in generators if g not in GENERATORS]
    if bad or not generators:
        raise SystemExit(f"error: --generators: unknown {bad}; choose from {', '.join(GENERATORS)}")
    if not targets or any(t < 1 for t in targets) or args.steps < 2 or args.per_class < 1:
        raise SystemExit("error: --targets must be >= 1, --steps >= 2, --per-class >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    config = CompareConfig(steps=args.steps, targets=targets, per_class=args.per_class, generators=generators,
                           gate_iterations=args.gate_iterations, population=args.population,
                           generations=args.generations, out=args.out)
    data = run_compare(config, log=lambda m: print(m, flush=True))
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.md").write_text(format_markdown(data))
    (out / "compare.json").write_text(json.dumps(data, indent=1) + "\n")
    print()
    print(format_markdown(data))
    print(f"wrote {out}/compare.md, compare.json")
    return 0
