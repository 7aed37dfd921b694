"""``python -m dato compare``: the schedule generators at equal MACs on the trained fixture.

For each target MACs speed-up (default 3x, 5x, 8x) it takes the schedule each
generator offers closest to the target:

* ``uniform``: DeepCache's every-N at depth 0 (no cost to produce);
* ``speed-target``: the rule the accordion's speed target picks (:mod:`dato.generators.target`; prune, as
  the accordion's default; no cost to produce);
* ``calibration``: one unaccelerated run on the digit prompts, then the alpha
  whose schedule is closest (:mod:`dato.generators.calibrate`); ``calibration-noreuse`` the
  same curves without whole-output reuse;
* ``nsga2``: one NSGA-II search (fidelity vs MACs, :mod:`dato.generators.search`), the front
  point closest to the target;
* ``gates``: gates trained for that target, post-processed to it exactly (:mod:`dato.generators.gates`);

and scores it on held-out noise and classes (none of the generators saw
them): achieved MACs speed-up, PSNR/SSIM/rel-L2 to the unaccelerated samples,
classifier accuracy and Fréchet distance, plus what producing the schedule
cost in wall time. Writes ``compare.md`` and ``compare.json``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from dato.core.schedule import Schedule
from dato.generators.base import ScheduleGenerator

__all__ = ["CompareConfig", "run_compare", "GENERATORS", "write_reports"]

GENERATORS = ("uniform", "speed-target", "calibration", "calibration-noreuse", "nsga2", "gates")


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
    device: str = "cpu"
    dtype: str = "fp32"  # fp32 | fp16 | bf16 (dato.evaluation.device.DTYPES)


class Evaluator:
    """Samples the held-out set with a schedule and scores it against the unaccelerated samples."""

    def __init__(self, config: CompareConfig) -> None:
        from dato.evaluation.backends import fixture_backend, fixture_prompts
        from dato.evaluation.fixture import FixtureScorer, load_fixture

        self.config = config
        from dato.evaluation.device import DTYPES

        self.backend = fixture_backend(steps=config.steps, batch_size=10 * config.per_class, device=config.device,
                                       dtype=DTYPES[config.dtype])
        self.scorer = FixtureScorer(load_fixture())
        prompts = fixture_prompts()
        self.labels = [d for d in range(10) for _ in range(config.per_class)]
        self.pairs = [(prompts[d], config.seed + i) for i, d in enumerate(self.labels)]
        h, w = self.backend.latent_shape[-2:]
        self.cost = self.backend.unet_cost()
        self.size = (h, w)
        self.full_macs = self.cost.full_step_macs(h, w) * config.steps
        self.reference = self.backend.generate(None, self.pairs)
        self.calibration = None  # shared by both calibration rows
        self.calibration_seconds = 0.0

    def speedup(self, schedule: Schedule) -> float:
        return self.full_macs / self.cost.schedule_macs(schedule, *self.size)

    def score(self, schedule: Schedule) -> dict[str, float]:
        from dato.evaluation.metrics import fidelity

        samples = self.backend.generate(schedule, self.pairs)
        images, ref = samples.images * 2 - 1, self.reference.images * 2 - 1
        fid = fidelity(images, ref, data_range=2.0, latent=samples.latents, reference_latent=self.reference.latents)
        dist = self.scorer.score(images, self.labels)
        return {"macs_speedup": self.speedup(schedule), "psnr": fid["psnr"], "ssim": fid["ssim"],
                "rel_l2": fid["relative_l2"], "accuracy": dist["accuracy"], "frechet": dist["frechet"]}


# ------------------------------------------------------------------ generators
def build_generators(config: CompareConfig) -> dict[str, tuple[ScheduleGenerator, Callable[[Evaluator], Any]]]:
    """Each compared generator with the backend it runs on (the search samples with the default batch size)."""
    from dato.evaluation.backends import fixture_backend, fixture_prompts
    from dato.generators.calibrate import CalibrationGenerator
    from dato.generators.gates import GateConfig, GateGenerator
    from dato.generators.search import SearchSettings
    from dato.generators.search.generator import SearchGenerator
    from dato.generators.target import SpeedTargetGenerator
    from dato.generators.uniform import UniformGenerator

    c = config
    calibration = CalibrationGenerator(fixture_prompts(), lookahead=c.lookahead or None)
    search = SearchGenerator(SearchSettings(
        steps=c.steps, mode="cache", method="none", ratio_levels=(0.0,), max_depth=2, quality="fidelity",
        cost="macs", population=c.population, generations=c.generations, samples=c.search_samples,
        prompts=tuple(fixture_prompts()), seed=0, run_id="compare"))
    gates = GateGenerator(fixture_prompts(), GateConfig(iterations=c.gate_iterations, batch_size=c.gate_batch,
                                                        pool=max(8, c.gate_batch), seed=0))
    shared = lambda ev: ev.backend  # noqa: E731
    return {
        "uniform": (UniformGenerator(depth=0), shared),
        "speed-target": (SpeedTargetGenerator(), shared),
        "calibration": (calibration, shared),
        "calibration-noreuse": (calibration.variant(allow_reuse=False), shared),
        "nsga2": (search, lambda ev: fixture_backend(steps=c.steps, device=c.device, dtype=ev.backend.dtype)),
        "gates": (gates, shared),
    }


def run_compare(config: CompareConfig, log: Callable[[str], None] = print) -> dict:
    ev = Evaluator(config)
    targets = config.targets
    generators = build_generators(config)
    rows = []
    for name in config.generators:
        generator, backend_for = generators[name]
        t0 = time.perf_counter()
        schedules = generator.schedules(backend_for(ev), targets, log)
        # the two calibration rows share one measured calibration: both report what it cost
        seconds = getattr(generator, "calibration_seconds", None) or time.perf_counter() - t0
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


def write_reports(data: dict, out: str | Path) -> list[Path]:
    """Write compare.md and compare.json into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.md").write_text(format_markdown(data))
    (out / "compare.json").write_text(json.dumps(data, indent=1) + "\n")
    return [out / "compare.md", out / "compare.json"]
