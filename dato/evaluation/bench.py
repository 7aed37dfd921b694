"""``python -m dato bench``: what each method and preset costs and saves, against a baseline in the same run.

A full SD1.5 step at 512 px takes seconds on a CPU, so 50-step runs of every
variant would take hours. The benchmark therefore times each *kind* of UNet
call (full, each cache depth, each token method and ratio, the ``tomesd``
package as a peer) over a few interleaved repeats after a warm-up, composes
each schedule's time from them, and confirms the composition with one real
end-to-end sampling run. Beside wall time it prints analytic MACs (noise-free),
the per-call cost of token selection/restoration against the attention time it
saves, and — from real sampling at a small size — how far each variant's final
latent is from the baseline's (relative L2), a first fidelity signal.

No timing is ever asserted: speed claims come from this command's output.

Length: the variants, the per-kind timer, the token-overhead probe, the
fidelity and end-to-end checks and the report are the steps of one run that
share its config and model; the command line lives in :mod:`dato.cli.bench`.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F

from dato.core import macs as macs_mod
from dato.core import tokens
from dato.core.layout import find_unet, highest_resolution_transformer, isinstance_str
from dato.core.patch import apply_patch, remove_patch, set_step
from dato.core.schedule import FULL, REUSE, Schedule, find_schedules
from dato.evaluation.sampling import sample

__all__ = ["BenchConfig", "Variant", "applied", "build_variants", "run_benchmark",
           "sdpa_attention"]

TOKEN_RATIOS = {"prune": (0.3, 0.5, 0.7), "merge": (0.3, 0.5), "downsample": (0.5, 0.75)}
TOMESD_RATIOS = (0.3, 0.5)


# ------------------------------------------------------------------ configuration

@dataclass
class BenchConfig:
    model: str = "sd15"  # sd15 | tiny | a checkpoint path
    size: int = 512  # pixels (latent = size // 8)
    steps: int = 50
    sampler: str = "euler"
    repeats: int = 3
    attention: tuple[str, ...] = ("ldm", "sdpa")
    fidelity_size: int = 128
    fidelity: bool = True
    confirm: bool = True
    confirm_schedule: str = "fast"
    threads: int = 0
    seed: int = 0
    out: str = "bench-results"
    quick: bool = False

    @property
    def latent(self) -> int:
        return self.size // 8


@dataclass(frozen=True)
class StepKind:
    """One kind of UNet call, timed on its own."""

    action: int
    method: str
    ratio: float
    peer: str = ""  # "tomesd" for the package run as a peer

    def label(self) -> str:
        action = "full" if self.action == FULL else "reuse" if self.action == REUSE else f"depth {self.action}"
        tok = f" {self.peer or self.method} {self.ratio:g}" if self.ratio > 0 else ""
        return action + tok


@dataclass
class Variant:
    name: str
    schedule: Schedule
    peer: str = ""
    group: str = ""
    adaptive: float | None = None  # run-time caching threshold (dato.apply_patch's ``adaptive``), depth 0, cap 3


@dataclass
class BenchReport:
    config: dict
    machine: dict
    rows: list[dict] = field(default_factory=list)
    step_kinds: dict = field(default_factory=dict)
    token_overhead: list[dict] = field(default_factory=list)
    confirmation: dict = field(default_factory=dict)


# ------------------------------------------------------------------ attention paths

def _sdpa_forward(self, x, context=None, mask=None):
    """ldm ``CrossAttention`` through PyTorch SDPA, as the WebUI's 'sdp' optimisation does."""
    heads = self.heads
    context = x if context is None else context
    q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)
    batch, n_q, inner = q.shape
    q, k, v = (t.view(batch, -1, heads, inner // heads).transpose(1, 2) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v)
    out = out.transpose(1, 2).reshape(batch, n_q, inner)
    return self.to_out(out)


@contextlib.contextmanager
def sdpa_attention(unet: torch.nn.Module, enabled: bool = True) -> Iterator[None]:
    """Route every ldm ``CrossAttention`` of ``unet`` through SDPA while inside the block."""
    swapped = []
    if enabled:
        for module in unet.modules():
            if isinstance_str(module, "CrossAttention") and "forward" not in vars(module):
                module.forward = _sdpa_forward.__get__(module)
                swapped.append(module)
    try:
        yield
    finally:
        for module in swapped:
            del module.forward


# ------------------------------------------------------------------ variants

def build_variants(steps: int, quick: bool = False) -> list[Variant]:
    """Baseline, token methods alone, the tomesd peer, every preset, and caching+token combinations."""
    variants = [Variant("baseline", Schedule.full(steps, 0.0, "none"), group="baseline")]
    ratios = {"prune": (0.5,), "merge": (0.5,), "downsample": (0.75,)} if quick else TOKEN_RATIOS
    for method, rs in ratios.items():
        for r in rs:
            variants.append(Variant(f"{method} {r:g}", Schedule.full(steps, r, method, name=f"{method}-{r:g}"),
                                    group="tokens"))
    for r in (TOMESD_RATIOS[-1:] if quick else TOMESD_RATIOS):
        variants.append(Variant(f"tomesd {r:g}", Schedule.full(steps, r, "merge", name=f"tomesd-{r:g}"),
                                peer="tomesd", group="peer"))
    for name, path in find_schedules().items():
        preset = Schedule.load(path).resample(steps)
        variants.append(Variant(name, preset, group="preset"))
    combos = [("deepcache-every3-d0", "merge", 0.5), ("deepcache-every3-d0", "downsample", 0.75),
              ("deepcache-every5-d0", "prune", 0.5), ("deepcache-every10-d0", "prune", 0.5)]
    presets = find_schedules()
    for base, method, r in ([] if quick else combos):
        sched = Schedule.load(presets[base]).resample(steps).with_method(method).with_ratio(r)
        variants.append(Variant(f"{base} + {method} {r:g}", sched, group="combo"))
    return variants


def step_kinds(variant: Variant) -> list[StepKind]:
    s = variant.schedule
    return [StepKind(a, s.method if r > 0 else "none", r if s.method != "none" else 0.0, variant.peer if r > 0 else "")
            for a, r in zip(s.cache, s.ratio, strict=True)]


# ------------------------------------------------------------------ timing

class KindTimer:
    """Times one UNet call of a given kind; the cache is primed by an untimed full call first."""

    def __init__(self, unet: torch.nn.Module, x: torch.Tensor, context: torch.Tensor, seed: int) -> None:
        self.unet, self.x, self.context, self.seed = unet, x, context, seed
        self.t_full = torch.full((x.shape[0],), 999.0)
        self.t_step = torch.full((x.shape[0],), 980.0)

    @torch.no_grad()
    def time(self, kind: StepKind) -> float:
        holder = _Holder(self.unet)
        try:
            if kind.peer == "tomesd":
                import tomesd

                tomesd.apply_patch(holder, ratio=kind.ratio, max_downsample=1)
                return self._timed(lambda: self.unet(self.x, self.t_full, context=self.context))
            method = kind.method if kind.ratio > 0 else "none"
            schedule = Schedule("k", (FULL, kind.action) if kind.action != FULL else (FULL,),
                                (kind.ratio,) * (1 if kind.action == FULL else 2), method)
            apply_patch(self.unet, schedule, clock="manual", seed=self.seed)
            set_step(self.unet, 0, schedule.steps)
            if kind.action == FULL:
                return self._timed(lambda: self.unet(self.x, self.t_full, context=self.context))
            self.unet(self.x, self.t_full, context=self.context)
            set_step(self.unet, 1, schedule.steps)
            return self._timed(lambda: self.unet(self.x, self.t_step, context=self.context))
        finally:
            remove_patch(self.unet)
            if kind.peer == "tomesd":
                import tomesd

                tomesd.remove_patch(holder)

    @staticmethod
    def _timed(fn: Callable[[], object]) -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start


class _Holder(torch.nn.Module):
    """tomesd wants ``model.model.diffusion_model``."""

    def __init__(self, unet: torch.nn.Module) -> None:
        super().__init__()
        self.model = torch.nn.Module()
        self.model.diffusion_model = unet  # registered, so tomesd.remove_patch finds the blocks


def time_kinds(timer: KindTimer, kinds: list[StepKind], repeats: int, log: Callable[[str], None],
               tag: str) -> dict[StepKind, float]:
    """Median time of each kind; repeats are interleaved (round-robin) so drift hits every kind alike."""
    samples: dict[StepKind, list[float]] = {k: [] for k in kinds}
    log(f"[{tag}] warm-up")
    timer.time(StepKind(FULL, "none", 0.0))
    total = repeats * len(kinds)
    done = 0
    for _ in range(repeats):
        for kind in kinds:
            samples[kind].append(timer.time(kind))
            done += 1
            log(f"[{tag}] {done}/{total} {kind.label():<26} {samples[kind][-1]:8.3f} s")
    return {k: statistics.median(v) for k, v in samples.items()}


# ------------------------------------------------------------------ token overhead

def _median_time(fn: Callable[[], object], repeats: int) -> float:
    fn()
    times = []
    for _ in range(max(3, repeats)):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@torch.no_grad()
def token_overhead(unet: torch.nn.Module, latent: int, batch: int, ratio: float, repeats: int,
                   blocks_per_level: int) -> list[dict]:
    """Selection + restoration cost per UNet call against the self-attention time it saves (level 1)."""
    block = highest_resolution_transformer(unet)
    channels = block.norm1.normalized_shape[0]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, latent * latent, channels, generator=gen)
    h = block.norm1(x)
    grid = (latent, latent)
    full_attn = _median_time(lambda: block.attn1(h), repeats)
    rows = []
    noise = torch.randn(batch, latent * latent, generator=gen) * 0.1
    builders = {
        "prune": (lambda: tokens.prune_plan(x, grid, ratio, None, noise), 1),
        "merge": (lambda: tokens.merge_plan(x, grid, ratio, gen), blocks_per_level),
        "downsample": (lambda: tokens.downsample_plan(grid, ratio if ratio <= 0.75 else 0.75), 0),
    }
    for method, (build, plans_per_call) in builders.items():
        plan = build()
        select = _median_time(build, repeats)
        if method == "downsample":
            reduced_attn = _median_time(lambda plan=plan: block.attn1(h, context=plan.keys_values(h)), repeats)
            move = _median_time(lambda plan=plan: plan.keys_values(h), repeats)
        else:
            reduced = plan.reduce(h)
            reduced_attn = _median_time(lambda reduced=reduced: block.attn1(reduced), repeats)
            move = _median_time(lambda plan=plan, reduced=reduced: plan.restore(plan.reduce(h)), repeats)
        overhead = plans_per_call * select + blocks_per_level * move
        saved = blocks_per_level * (full_attn - reduced_attn)
        rows.append({
            "method": method, "ratio": ratio, "tokens": latent * latent, "kept": plan.kept_tokens,
            "select_ms": select * 1e3, "reduce_restore_ms": move * 1e3, "attn_full_ms": full_attn * 1e3,
            "attn_reduced_ms": reduced_attn * 1e3, "plans_per_call": plans_per_call,
            "overhead_ms_per_call": overhead * 1e3, "saved_ms_per_call": saved * 1e3,
            "overhead_pct_of_saved": 100.0 * overhead / saved if saved > 0 else math.inf,
        })
    return rows


# ------------------------------------------------------------------ fidelity

@contextlib.contextmanager
def applied(unet: torch.nn.Module, variant: Variant, seed: int = 0) -> Iterator[Callable[[int, int], None] | None]:
    """``variant`` on ``unet`` for the block (dato with a manual clock, or the tomesd package).

    Yields the ``on_step`` callback a sampler must call (``None`` for tomesd,
    which needs no clock); the UNet is unpatched afterwards, also on error.
    """
    holder = _Holder(unet)
    try:
        if variant.peer == "tomesd":
            import tomesd

            tomesd.apply_patch(holder, ratio=variant.schedule.ratio[0], max_downsample=1)
            yield None
        else:
            apply_patch(unet, variant.schedule, clock="manual", seed=seed, adaptive=variant.adaptive)
            yield lambda i, n: set_step(unet, i, n)
    finally:
        remove_patch(unet)
        if variant.peer == "tomesd":
            import tomesd

            tomesd.remove_patch(holder)


@torch.no_grad()
def sample_variant(unet: torch.nn.Module, variant: Variant, noise: torch.Tensor, cond: torch.Tensor,
                   uncond: torch.Tensor, steps: int, sampler: str, seed: int) -> torch.Tensor:
    """Real end-to-end sampling with the variant applied."""
    with applied(unet, variant, seed) as on_step:
        return sample(unet, noise, cond, uncond, steps=steps, sampler=sampler, on_step=on_step)


def relative_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


# ------------------------------------------------------------------ main

def load_model(config: BenchConfig) -> tuple[torch.nn.Module, int]:
    """The UNet to benchmark and its context width."""
    from dato.evaluation.models import build_unet, load_unet_from_checkpoint, sd15_unet_config, tiny_unet_config

    if config.model == "sd15":
        return build_unet(sd15_unet_config(), seed=config.seed), 768
    if config.model == "tiny":
        return build_unet(tiny_unet_config(), seed=config.seed), 32
    return load_unet_from_checkpoint(config.model), 768


def run_benchmark(config: BenchConfig, log: Callable[[str], None] = print,
                  checkpoint: Callable[[BenchReport], None] | None = None) -> BenchReport:
    if config.threads:
        torch.set_num_threads(config.threads)
    log(f"building the UNet ({config.model}) ...")
    unet, context_dim = load_model(config)
    unet = find_unet(unet)
    report = BenchReport(config=asdict(config), machine=_machine())
    variants = build_variants(config.steps, config.quick)
    kinds = sorted({k for v in variants for k in step_kinds(v)}, key=lambda k: (k.peer, k.method, k.ratio, k.action))
    gen = torch.Generator().manual_seed(config.seed)
    x = torch.randn(2, unet.in_channels, config.latent, config.latent, generator=gen)
    context = torch.randn(2, 77, context_dim, generator=gen)
    cost = macs_mod.trace_unet_cost(unet)
    timers = {}
    for attention in config.attention:
        with sdpa_attention(unet, attention == "sdpa"):
            timers[attention] = time_kinds(KindTimer(unet, x, context, config.seed), kinds, config.repeats, log,
                                           attention)
            levels = sum(1 for m in unet.modules() if isinstance_str(m, "BasicTransformerBlock")
                         and _level_of(unet, m) == 1)
            rows = token_overhead(unet, config.latent, 2, 0.5, config.repeats, levels)
            for row in rows:
                row["attention"] = attention
            report.token_overhead.extend(rows)
    report.step_kinds = {att: {k.label(): t for k, t in times.items()} for att, times in timers.items()}

    _fill_rows(report, variants, timers, cost, config, {})
    if checkpoint is not None:  # the timings alone took a while: keep them even if a later phase is stopped
        checkpoint(report)
    if config.fidelity:
        _fill_rows(report, variants, timers, cost, config, _fidelity(unet, variants, config, context_dim, log))
        if checkpoint is not None:
            checkpoint(report)
    if config.confirm:
        report.confirmation = _confirm(unet, variants, timers, config, context, log)
    return report


def _fill_rows(report: BenchReport, variants: list[Variant], timers: dict, cost, config: BenchConfig,
               fidelity: dict[str, float]) -> None:
    """One row per variant: composed time per image and speed-up per attention path, MACs, fidelity."""
    report.rows = []
    full_macs = cost.call_macs(config.latent, config.latent)
    for variant in variants:
        s = variant.schedule
        variant_macs = sum(cost.call_macs(config.latent, config.latent, a, r, s.method) for a, r in
                           zip(s.cache, s.ratio, strict=True))
        row = {"name": variant.name, "group": variant.group, "preview": s.preview(),
               "gmacs_per_image": variant_macs / 1e9, "macs_speedup": config.steps * full_macs / variant_macs,
               "fidelity_rel_l2": fidelity.get(variant.name)}
        for attention, times in timers.items():
            seconds = sum(times[k] for k in step_kinds(variant)) / 2  # batch of 2 = one image with CFG
            base = sum(times[k] for k in step_kinds(variants[0])) / 2
            row[f"seconds_per_image_{attention}"] = seconds
            row[f"speedup_{attention}"] = base / seconds
        report.rows.append(row)


def _level_of(unet: torch.nn.Module, block: torch.nn.Module) -> int:
    from dato.core.layout import UNetLayout, transformer_blocks

    for _, ds, b in transformer_blocks(unet, UNetLayout.from_unet(unet)):
        if b is block:
            return ds
    return 0


def _fidelity(unet, variants, config, context_dim, log) -> dict[str, float]:
    """Relative L2 of each variant's final latent to the baseline's (real sampling, small size)."""
    latent = config.fidelity_size // 8
    gen = torch.Generator().manual_seed(config.seed + 1)
    noise = torch.randn(1, unet.in_channels, latent, latent, generator=gen)
    cond = torch.randn(1, 77, context_dim, generator=gen)
    uncond = torch.randn(1, 77, context_dim, generator=gen)
    attention = "sdpa" if "sdpa" in config.attention else config.attention[0]
    results = {}
    with sdpa_attention(unet, attention == "sdpa"):
        reference = None
        for i, variant in enumerate(variants, 1):
            start = time.perf_counter()
            latent_out = sample_variant(unet, variant, noise, cond, uncond, config.steps, config.sampler, config.seed)
            if reference is None:
                reference = latent_out
            results[variant.name] = relative_l2(latent_out, reference)
            log(f"[fidelity {config.fidelity_size}px] {i}/{len(variants)} {variant.name:<34} rel-L2 "
                f"{results[variant.name]:.4f} ({time.perf_counter() - start:.1f} s)")
    return results


def _confirm(unet, variants, timers, config, context, log) -> dict:
    """One real end-to-end run at the benchmark size: does the composed time hold?"""
    variant = next(v for v in variants if v.name == config.confirm_schedule)
    attention = "sdpa" if "sdpa" in timers else next(iter(timers))
    composed = sum(timers[attention][k] for k in step_kinds(variant))
    gen = torch.Generator().manual_seed(config.seed + 2)
    noise = torch.randn(1, unet.in_channels, config.latent, config.latent, generator=gen)
    log(f"[confirm] sampling {variant.name!r} end to end ({config.steps} steps, {attention}) ...")
    with sdpa_attention(unet, attention == "sdpa"):
        start = time.perf_counter()
        sample_variant(unet, variant, noise, context[:1], context[1:], config.steps, config.sampler, config.seed)
        measured = time.perf_counter() - start
    error = 100.0 * (measured - composed) / composed
    log(f"[confirm] measured {measured:.1f} s, composed {composed:.1f} s ({error:+.1f} %)")
    return {"schedule": variant.name, "attention": attention, "measured_s": measured, "composed_s": composed,
            "error_pct": error}


def _machine() -> dict:
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "python": sys.version.split()[0], "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}


# ------------------------------------------------------------------ output

def format_table(report: BenchReport) -> str:
    attentions = list(report.step_kinds)
    head = f"{'variant':<36}{'MACs x':>8}" + "".join(f"{'s/img ' + a:>14}{'x ' + a:>9}" for a in attentions)
    head += f"{'rel-L2':>9}  schedule"
    lines = [head, "-" * len(head)]
    for row in report.rows:
        line = f"{row['name']:<36}{row['macs_speedup']:>8.2f}"
        for a in attentions:
            line += f"{row[f'seconds_per_image_{a}']:>14.2f}{row[f'speedup_{a}']:>9.2f}"
        fid = row["fidelity_rel_l2"]
        line += f"{fid:>9.4f}" if fid is not None else f"{'-':>9}"
        preview = row["preview"]
        line += "  " + (preview if len(preview) <= 50 else preview[:47] + "...")
        lines.append(line)
    lines.append("")
    lines.append("token selection + restoration per UNet call (level 1) vs self-attention time saved:")
    for row in report.token_overhead:
        lines.append(f"  {row['attention']:<5} {row['method']:<10} r={row['ratio']:.2f} kept {row['kept']:>5}/"
                     f"{row['tokens']}: select {row['select_ms']:7.2f} ms x{row['plans_per_call']}, "
                     f"gather {row['reduce_restore_ms']:6.2f} ms/block, saved {row['saved_ms_per_call']:8.1f} ms "
                     f"-> overhead {row['overhead_pct_of_saved']:5.1f} % of saved")
    if report.confirmation:
        c = report.confirmation
        lines.append(f"end-to-end check: {c['schedule']} ({c['attention']}) measured {c['measured_s']:.1f} s vs "
                     f"composed {c['composed_s']:.1f} s: {c['error_pct']:+.1f} %")
    return "\n".join(lines)
