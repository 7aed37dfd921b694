"""``python -m dato quality``: what each method and preset costs in quality, on a model that learned something.

Runs every variant of the benchmark (token methods, the tomesd peer, cache
presets, their combinations) on the trained fixture (:mod:`dato.evaluation.fixture`):
the same classes, the same noise, the same sampler for every variant. Reports

* cost: analytic UNet MACs ratio (deterministic) and measured wall-time ratio;
* fidelity to the unaccelerated samples: PSNR, SSIM, relative L2 of the latents;
* distribution: classifier accuracy on the sampled classes, and Fréchet distance
  of the classifier's features to the real digits;

and marks the Pareto set (more MACs saved, higher SSIM). Everything but the
wall time is deterministic for a seed: ``quality.md`` holds only those
columns, so it reproduces bit for bit; ``quality-timing.md`` holds the rest.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from dato.core.clock import PassClock
from dato.core.macs import trace_unet_cost
from dato.core.patch import get_patch
from dato.core.schedule import FULL, Schedule
from dato.core.speed import TargetError, target_schedule
from dato.evaluation.bench import Variant, applied, build_variants, macs_options, token_study_variants
from dato.evaluation.metrics import fidelity

__all__ = ["QualityConfig", "run_quality", "pareto_front", "write_reports"]


@dataclass
class QualityConfig:
    steps: int = 20
    per_class: int = 8
    sampler: str = "euler"
    seed: int = 0
    out: str = "docs/quality"
    plot: bool = True
    threads: int = 0
    only: tuple[str, ...] = ()
    study: str = ""  # "" = every benchmark variant; "tokens" = the token-method study (token_study_variants)
    device: str = "cpu"
    dtype: torch.dtype = torch.float32


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points not dominated when both coordinates are to be maximised."""
    front = []
    for i, (a, b) in enumerate(points):
        dominated = any((c >= a and d >= b) and (c > a or d > b) for j, (c, d) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return front


@torch.no_grad()
def run_quality(config: QualityConfig, log: Callable[[str], None] = print) -> list[dict]:
    from dato.evaluation.fixture import FixtureScorer, load_fixture

    torch.manual_seed(config.seed)
    fx = load_fixture(device=config.device, dtype=config.dtype)
    scorer = FixtureScorer(fx)
    labels = torch.arange(fx.num_classes).repeat_interleave(config.per_class)
    noise = fx.noise(len(labels), config.seed)
    cost = trace_unet_cost(fx.unet, context_len=fx.class_contexts([0]).shape[1])
    height, width = fx.latent_shape[-2:]
    full = cost.full_step_macs(height, width) * config.steps
    if config.study == "tokens":
        pool = token_study_variants(config.steps)
    else:
        pool = build_variants(config.steps) + speed_variants(cost, config.steps, height, width)
    variants = select_variants(pool, config.only)
    rows: list[dict] = []
    reference = None
    for i, variant in enumerate(variants, 1):
        latents, seconds, decisions = _sample(fx, variant, labels, noise, config)
        images = fx.to_images(latents)
        if reference is None:
            reference = (latents, images)
        fid = fidelity(images, reference[1], data_range=2.0, latent=latents, reference_latent=reference[0])
        dist = scorer.score(images, labels)
        s = variant.schedule
        macs = cost.schedule_macs(s, height, width, **macs_options(variant))
        if decisions:  # adaptive: what ran, call by call (the preview shows each step's first call)
            macs = config.steps * sum(cost.call_macs(height, width, a, 0.0, s.method) for _, a in decisions) \
                / len(decisions)
            firsts = {}
            for step, action in decisions:
                firsts.setdefault(step, action)
            s = Schedule(s.name, tuple(firsts.get(i, FULL) for i in range(config.steps)), s.ratio, s.method)
        rows.append({
            "name": variant.name, "group": variant.group, "preview": s.preview(),
            "macs_speedup": full / macs, "seconds": seconds,
            "psnr": fid["psnr"], "ssim": fid["ssim"], "rel_l2": fid["relative_l2"],
            "accuracy": dist["accuracy"], "frechet": dist["frechet"],
        })
        log(f"[{i}/{len(variants)}] {variant.name:<36} MACs x{full / macs:5.2f}  SSIM {fid['ssim']:.4f}  "
            f"acc {dist['accuracy']:.3f}  FD {dist['frechet']:.2f}  ({seconds:.1f} s)")
    base_seconds = rows[0]["seconds"]
    for row in rows:
        row["time_speedup"] = base_seconds / row["seconds"]
    for i in pareto_front([(r["macs_speedup"], r["ssim"]) for r in rows]):
        rows[i]["pareto"] = True
    return rows


def select_variants(variants: list[Variant], only: tuple[str, ...]) -> list[Variant]:
    """The baseline plus the named variants (all when ``only`` is empty); unknown names are an error."""
    if not only:
        return variants
    known = {v.name for v in variants}
    unknown = [name for name in only if name not in known and name not in SPEED_VARIANT_NAMES]  # unreachable: left out
    if unknown:
        raise ValueError(f"unknown variant(s) {', '.join(map(repr, unknown))}; known: {', '.join(sorted(known))}")
    return [v for v in variants if v.group == "baseline" or v.name in only]


SPEED_VARIANT_NAMES = ("target 2x", "target 4x", "target 6x", "adaptive 0.1", "adaptive 0.2", "adaptive 0.3")


def speed_variants(cost, steps: int, height: int, width: int) -> list[Variant]:
    """Speed targets (priced on this model and size) and the adaptive run-time caching, for the quality rows."""
    variants = []
    for target in (2.0, 4.0, 6.0):
        try:
            s = target_schedule(cost, target, PassClock.counting_steps(steps), height, width, method="prune")
        except TargetError:  # not reachable at this step count on this model
            continue
        variants.append(Variant(f"target {target:g}x", s, group="target"))
    for threshold in (0.1, 0.2, 0.3):
        variants.append(Variant(f"adaptive {threshold:g}", Schedule.full(steps, 0.0, "none", name="adaptive"),
                                group="adaptive", adaptive=threshold))
    return variants


def _sample(fx, variant: Variant, labels: torch.Tensor, noise: torch.Tensor, config: QualityConfig):
    from dato.evaluation.device import synchronize

    device = next(fx.unet.parameters()).device
    with applied(fx.unet, variant, config.seed) as on_step:
        patch = get_patch(fx.unet) if variant.adaptive is not None else None
        synchronize(device)
        start = time.perf_counter()
        latents = fx.sample(labels, noise=noise, steps=config.steps, sampler=config.sampler, on_step=on_step)
        synchronize(device)
        return latents.float().cpu(), time.perf_counter() - start, list(patch.decisions) if patch is not None else []


def format_markdown(rows: list[dict], timing: bool) -> str:
    head = "| variant | MACs x | PSNR dB | SSIM | rel-L2 | accuracy | Fréchet | Pareto |"
    sep = "|---|---:|---:|---:|---:|---:|---:|:-:|"
    if timing:
        head = "| variant | MACs x | wall-time x | seconds |"
        sep = "|---|---:|---:|---:|"
    lines = [head, sep]
    for r in rows:
        if timing:
            lines.append(f"| {r['name']} | {r['macs_speedup']:.2f} | {r['time_speedup']:.2f} | {r['seconds']:.2f} |")
        else:
            psnr = "inf" if r["psnr"] == float("inf") else f"{r['psnr']:.2f}"
            lines.append(f"| {r['name']} | {r['macs_speedup']:.2f} | {psnr} | {r['ssim']:.4f} | {r['rel_l2']:.4f} | "
                         f"{r['accuracy']:.3f} | {r['frechet']:.2f} | {'*' if r.get('pareto') else ''} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"baseline": "black", "tokens": "tab:blue", "peer": "tab:gray", "preset": "tab:orange",
               "combo": "tab:green"}
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for group, colour in colours.items():
        pts = [r for r in rows if r["group"] == group]
        ax.scatter([r["macs_speedup"] for r in pts], [r["ssim"] for r in pts], c=colour, label=group, s=22)
    front = sorted((r for r in rows if r.get("pareto")), key=lambda r: r["macs_speedup"])
    ax.plot([r["macs_speedup"] for r in front], [r["ssim"] for r in front], c="tab:red", lw=1, label="Pareto set")
    for r in front:
        ax.annotate(r["name"], (r["macs_speedup"], r["ssim"]), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("UNet MACs saved (x fewer than baseline)")
    ax.set_ylabel("SSIM to the unaccelerated sample")
    ax.set_title("Trained fixture: quality vs cost of every variant")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_reports(rows: list[dict], config: QualityConfig) -> list[Path]:
    """Write quality.md (deterministic columns), quality-timing.md, quality.json (no timings) and the plot."""
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "quality.md").write_text(format_markdown(rows, timing=False))
    (out / "quality-timing.md").write_text(format_markdown(rows, timing=True))
    deterministic = [{k: v for k, v in r.items() if k not in ("seconds", "time_speedup")} for r in rows]
    (out / "quality.json").write_text(json.dumps({"config": asdict(config), "rows": deterministic},
                                                 indent=1, default=str) + "\n")
    written = [out / "quality.md", out / "quality-timing.md", out / "quality.json"]
    if config.plot:
        plot(rows, out / "quality.png")
        written.append(out / "quality.png")
    return written
