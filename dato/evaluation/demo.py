"""``python -m dato demo``: what the product does, shown in a few minutes on a CPU.

Two parts, one picture:

1. **The trained fixture** (:mod:`dato.evaluation.fixture`): the same digits
   sampled unaccelerated and under every preset, from the same noise, each
   run timed on this machine (the fastest of ``repeats`` interleaved runs);
   beside each: measured wall-time speed-up, analytic MACs speed-up, PSNR and
   SSIM to the unaccelerated samples.
2. **The SD1.5 architecture** (random weights, ``size`` px, CFG batch of 2):
   each kind of UNet call the presets use is timed once (or ``sd_repeats``
   times), and each preset's time per image is composed from them, the way
   ``python -m dato bench`` does it; random weights make this a speed figure
   only.

Both go into one PNG grid (``demo-grid.png``), a Markdown table and a JSON
report. The plan is said up front, from the first timed calls, and every
run advances a progress line with an ETA.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from dato.core.macs import trace_unet_cost
from dato.core.schedule import FULL, Schedule, find_schedules
from dato.evaluation.bench import KindTimer, StepKind, Variant, applied, sdpa_attention, step_kinds, time_kinds
from dato.evaluation.metrics import fidelity
from dato.evaluation.progress import Progress, format_duration

__all__ = ["DemoConfig", "DemoResult", "QUICK", "demo_variants", "format_markdown", "grid_image", "run_demo",
           "write_outputs"]


@dataclass
class DemoConfig:
    steps: int = 20  # sampling steps of both parts (presets resample to it)
    samples: int = 10  # fixture samples per variant: digits 0, 1, ..., 9, 0, ...
    repeats: int = 2  # timed fixture runs of each variant (the fastest counts)
    size: int = 256  # SD1.5 part: image side in pixels
    sd_repeats: int = 1  # SD1.5 part: timed calls of each kind (median)
    sd15: bool = True  # run the SD1.5 part
    sd_model: str = "sd15"  # "tiny": the tiny SD1-topology UNet, for tests
    threads: int = 0
    seed: int = 0
    out: str = "demo-results"
    quick: bool = False


# ``--quick``: every part still runs (fixture, every preset, SD1.5 timing, the grid), at the smallest sizes.
QUICK = {"steps": 10, "samples": 4, "repeats": 1, "size": 64, "sd_repeats": 1}


@dataclass
class DemoResult:
    config: dict
    rows: list[dict] = field(default_factory=list)
    images: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)  # name -> [N, 1, H, W] in [-1, 1]
    threads: int = 0
    seconds: float = 0.0


def demo_variants(steps: int) -> list[Variant]:
    """The unaccelerated run, then every built-in preset (named ones first, then DeepCache's uniform ones)."""
    variants = [Variant("unaccelerated", Schedule.full(steps, 0.0, "none"), group="baseline")]
    presets = find_schedules()
    for name in sorted(presets, key=lambda n: (n.startswith("deepcache"), n)):
        variants.append(Variant(name, Schedule.load(presets[name]).resample(steps), group="preset"))
    return variants


def run_demo(config: DemoConfig, log: Callable[[str], None] = print) -> DemoResult:
    from dato.evaluation.fixture import load_fixture

    started = time.perf_counter()
    if config.threads:
        torch.set_num_threads(config.threads)
    result = DemoResult(config=asdict(config), threads=torch.get_num_threads())
    variants = demo_variants(config.steps)

    # ---- calibration: one unaccelerated fixture run, the SD1.5 UNet and one full call
    log(f"loading the trained fixture; one unaccelerated run ({config.samples} digits, {config.steps} steps) ...")
    fx = load_fixture()
    labels = torch.arange(config.samples) % fx.num_classes
    noise = fx.noise(len(labels), config.seed)
    fx_cost = trace_unet_cost(fx.unet, context_len=fx.class_contexts([0]).shape[1])
    fh, fw = fx.latent_shape[-2:]
    fx_macs = {v.name: fx_cost.schedule_macs(v.schedule, fh, fw) for v in variants}
    runs: dict[str, list[float]] = {v.name: [] for v in variants}
    latents: dict[str, torch.Tensor] = {}
    latents["unaccelerated"], first = _sample_fixture(fx, variants[0], labels, noise, config)
    runs["unaccelerated"].append(first)

    sd = None
    if config.sd15:
        log(f"building the SD1.5-architecture UNet (860M parameters, random weights) for {config.size} px ...")
        sd = _SD15(config)
        log(f"one full SD1.5 call: {sd.t_full:.2f} s")

    # ---- the plan, from those first timed calls
    progress = Progress(log)
    fx_runs = [(r, v) for r in range(config.repeats) for v in variants if (r, v.name) != (0, "unaccelerated")]
    fx_estimate = {v.name: first * max(0.05, fx_macs[v.name] / fx_macs["unaccelerated"]) for v in variants}
    fx_total = sum(fx_estimate[v.name] for _, v in fx_runs)
    progress.plan(fx_total)
    sd_total = 0.0
    if sd is not None:
        sd_total = config.sd_repeats * sum(sd.estimates.values())
        progress.plan(sd_total)
    log(f"plan: {len(fx_runs)} fixture runs (~{format_duration(fx_total)})"
        + (f", {config.sd_repeats * len(sd.kinds)} timed SD1.5 calls (~{format_duration(sd_total)})" if sd else "")
        + f": about {format_duration(fx_total + sd_total)} more, estimated from the first timed calls")

    # ---- part 1: the fixture, every preset, interleaved repeats
    for r, variant in fx_runs:
        out, seconds = _sample_fixture(fx, variant, labels, noise, config)
        latents.setdefault(variant.name, out)
        runs[variant.name].append(seconds)
        progress.step(fx_estimate[variant.name],
                      f"fixture {variant.name} (run {r + 1}/{config.repeats}) {seconds:.2f} s")
    reference = fx.to_images(latents["unaccelerated"])
    base_seconds = min(runs["unaccelerated"])
    for variant in variants:
        images = fx.to_images(latents[variant.name])
        result.images[variant.name] = images
        fid = fidelity(images, reference, data_range=2.0, latent=latents[variant.name],
                       reference_latent=latents["unaccelerated"])
        result.rows.append({
            "name": variant.name, "group": variant.group, "preview": variant.schedule.preview(),
            "fixture_macs_speedup": fx_macs["unaccelerated"] / fx_macs[variant.name],
            "fixture_seconds": min(runs[variant.name]),
            "fixture_time_speedup": base_seconds / min(runs[variant.name]),
            "psnr": fid["psnr"], "ssim": fid["ssim"],
        })

    # ---- part 2: SD1.5 speed-ups composed from timed calls
    if sd is not None:
        times = sd.time(progress, log)
        base = sum(times[k] for k in step_kinds(variants[0]))
        for row, variant in zip(result.rows, variants, strict=True):
            seconds = sum(times[k] for k in step_kinds(variant))
            row["sd15_seconds_per_image"] = seconds / 2  # CFG batch of 2 = one image
            row["sd15_time_speedup"] = base / seconds
            row["sd15_macs_speedup"] = sd.macs(variants[0]) / sd.macs(variant)
    result.seconds = time.perf_counter() - started
    return result


def _sample_fixture(fx, variant: Variant, labels, noise, config: DemoConfig) -> tuple[torch.Tensor, float]:
    """One timed fixture run. Its ops are tiny: one thread (unless ``threads`` says otherwise) is as fast on an
    idle machine and many times faster on a busy one, where extra threads wait for each other."""
    before = torch.get_num_threads()
    torch.set_num_threads(config.threads or 1)
    try:
        with torch.no_grad(), applied(fx.unet, variant, config.seed) as on_step:
            start = time.perf_counter()
            out = fx.sample(labels, noise=noise, steps=config.steps, on_step=on_step)
            return out, time.perf_counter() - start
    finally:
        torch.set_num_threads(before)


class _SD15:
    """The SD1.5-architecture UNet, its kinds of call for the presets, and their estimated times."""

    def __init__(self, config: DemoConfig) -> None:
        from dato.evaluation.models import build_unet, sd15_unet_config, tiny_unet_config

        self.config = config
        unet_config = tiny_unet_config() if config.sd_model == "tiny" else sd15_unet_config()
        self.unet = build_unet(unet_config, seed=config.seed)
        self.latent = config.size // 8
        gen = torch.Generator().manual_seed(config.seed)
        x = torch.randn(2, unet_config["in_channels"], self.latent, self.latent, generator=gen)
        context = torch.randn(2, 77, unet_config["context_dim"], generator=gen)
        self.timer = KindTimer(self.unet, x, context, config.seed)
        self.cost = trace_unet_cost(self.unet)
        variants = demo_variants(config.steps)
        self.kinds = sorted({k for v in variants for k in step_kinds(v)},
                            key=lambda k: (k.method, k.ratio, k.action))
        with sdpa_attention(self.unet):
            self.t_full = self.timer.time(StepKind(FULL, "none", 0.0))  # a cold call: the estimates err long
        full = self.cost.call_macs(self.latent, self.latent)
        self.estimates = {k: self.t_full * max(0.02, self.cost.call_macs(self.latent, self.latent, k.action, k.ratio,
                                                                          k.method) / full) for k in self.kinds}

    def time(self, progress: Progress, log: Callable[[str], None]) -> dict[StepKind, float]:
        with sdpa_attention(self.unet):
            return time_kinds(self.timer, self.kinds, self.config.sd_repeats, log, f"SD1.5 {self.config.size}px",
                              progress=progress, estimates=self.estimates)

    def macs(self, variant: Variant) -> float:
        return self.cost.schedule_macs(variant.schedule, self.latent, self.latent)


# ------------------------------------------------------------------ output

def format_markdown(result: DemoResult) -> str:
    sd = "sd15_time_speedup" in (result.rows[0] if result.rows else {})
    head = "| variant | fixture time x | fixture MACs x | PSNR dB | SSIM |"
    sep = "|---|---:|---:|---:|---:|"
    if sd:
        head += f" SD1.5 {result.config['size']} px time x | SD1.5 MACs x | SD1.5 s/img |"
        sep += "---:|---:|---:|"
    lines = [head, sep]
    for r in result.rows:
        psnr = "inf" if r["psnr"] == float("inf") else f"{r['psnr']:.2f}"
        line = (f"| {r['name']} | {r['fixture_time_speedup']:.2f} | {r['fixture_macs_speedup']:.2f} | {psnr} | "
                f"{r['ssim']:.3f} |")
        if sd:
            line += (f" {r['sd15_time_speedup']:.2f} | {r['sd15_macs_speedup']:.2f} | "
                     f"{r['sd15_seconds_per_image']:.2f} |")
        lines.append(line)
    return "\n".join(lines) + "\n"


def legend(result: DemoResult) -> list[str]:
    c = result.config
    lines = [
        f"fixture: a small ldm UNet trained on digits, {c['samples']} samples, {c['steps']} Euler steps, seed "
        f"{c['seed']}; time x = measured wall time of the unaccelerated run / the preset's (fastest of "
        f"{c['repeats']}, {c['threads'] or 1} thread(s), this machine)",
        "MACs x = analytic UNet multiply-accumulates, unaccelerated / preset (no timing); PSNR, SSIM: to the "
        "unaccelerated samples (same noise)",
    ]
    if "sd15_time_speedup" in (result.rows[0] if result.rows else {}):
        lines.append(f"SD1.5: the SD1.5-architecture UNet with random weights at {c['size']} px, seconds composed "
                     "from timed calls (python -m dato bench); random weights: a speed figure only")
    return lines


def grid_image(result: DemoResult, scale: int = 3):
    """One PIL image: a row per variant, its labels on the left, its samples to the right."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    names = [r["name"] for r in result.rows]
    first = result.images[names[0]]
    n, tile = first.shape[0], first.shape[-1] * scale
    label_w, gap, line_h = 270, 2, 12
    sd = "sd15_time_speedup" in result.rows[0]
    row_h = max(tile, line_h * (4 if sd else 3) + 4) + 6
    title = [f"DaTo demo: {result.config['steps']} steps, unaccelerated and every preset (one row each)"]
    width = max(label_w + n * (tile + gap) + 8, 640)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    notes = [part for line in legend(result) for part in _wrap(line, lambda t: measure.textlength(t, font=font),
                                                                 width - 12)]
    head_h, foot_h = line_h * len(title) + 10, line_h * len(notes) + 10
    image = Image.new("RGB", (width, head_h + row_h * len(names) + foot_h), "white")
    draw = ImageDraw.Draw(image)
    for i, line in enumerate(title):
        draw.text((6, 4 + i * line_h), line, fill="black", font=font)
    for j, row in enumerate(result.rows):
        y = head_h + j * row_h
        if j % 2:
            draw.rectangle((0, y, width, y + row_h - 1), fill=(242, 242, 242))
        psnr = "inf" if row["psnr"] == float("inf") else f"{row['psnr']:.1f} dB"
        text = [row["name"],
                f"fixture: time {row['fixture_time_speedup']:.2f}x, MACs {row['fixture_macs_speedup']:.2f}x",
                f"PSNR {psnr}, SSIM {row['ssim']:.3f}"]
        if sd:
            text.append(f"SD1.5 {result.config['size']} px: time {row['sd15_time_speedup']:.2f}x, "
                        f"MACs {row['sd15_macs_speedup']:.2f}x")
        for i, line in enumerate(text):
            draw.text((6, y + 3 + i * line_h), line, fill="black" if i == 0 else (60, 60, 60), font=font)
        pixels = ((result.images[row["name"]].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        for k in range(n):
            cell = Image.fromarray(pixels[k, 0].numpy()).resize((tile, tile), Image.Resampling.NEAREST)
            image.paste(cell, (label_w + k * (tile + gap), y + (row_h - tile) // 2))
    y = head_h + row_h * len(names) + 4
    for i, line in enumerate(notes):
        draw.text((6, y + i * line_h), line, fill=(60, 60, 60), font=font)
    return image


def _wrap(text: str, length: Callable[[str], float], width: float) -> list[str]:
    """Greedy word wrap of ``text`` to lines whose ``length`` fits ``width``."""
    lines: list[str] = []
    for word in text.split():
        if lines and length(lines[-1] + " " + word) <= width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return lines


def write_outputs(result: DemoResult, out: str | Path) -> list[Path]:
    """``demo-grid.png``, ``demo.md`` and ``demo.json`` (no images) in ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "demo-grid.png", out / "demo.md", out / "demo.json"]
    grid_image(result).save(paths[0], optimize=True)
    paths[1].write_text(format_markdown(result) + "\n" + "\n".join(f"* {line}" for line in legend(result)) + "\n")
    paths[2].write_text(json.dumps({"config": result.config, "threads": result.threads, "seconds": result.seconds,
                                    "rows": result.rows}, indent=1, default=str) + "\n")
    return paths
