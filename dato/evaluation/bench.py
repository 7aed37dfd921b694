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

from dato.core import macs as macs_mod
from dato.core import tokens
from dato.core.layout import find_unet, finest_attention_ds, highest_resolution_transformer, isinstance_str
from dato.core.patch import apply_patch, remove_patch, set_step
from dato.core.schedule import FULL, REUSE, Schedule, find_schedules
from dato.evaluation import device as dev
from dato.evaluation.progress import Progress, format_duration
from dato.evaluation.sampling import sample

__all__ = ["BenchConfig", "Variant", "applied", "build_variants", "run_benchmark",
           "sdpa_attention", "token_study_variants", "macs_options"]

TOKEN_RATIOS = {"prune": (0.3, 0.5, 0.7), "merge": (0.3, 0.5), "downsample": (0.5, 0.75)}
TOMESD_RATIOS = (0.3, 0.5)


# ------------------------------------------------------------------ configuration

@dataclass
class BenchConfig:
    model: str = "sd15"  # sd15 | tiny | sdxl | tiny-sdxl | a checkpoint path (SD1.x or SDXL base)
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
    device: str = "cpu"  # cpu | cuda | cuda:N | mps
    dtype: str = "fp32"  # fp32 | fp16 | bf16
    overhead: bool = True  # time the patch's own per-call cost at a tiny size

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
    options: dict = field(default_factory=dict)  # extra apply_patch options (prune_variant, downsample_*)
    adaptive: float | None = None  # run-time caching threshold (dato.apply_patch's ``adaptive``), depth 0, cap 3


@dataclass
class BenchReport:
    config: dict
    machine: dict
    rows: list[dict] = field(default_factory=list)
    step_kinds: dict = field(default_factory=dict)
    token_overhead: list[dict] = field(default_factory=list)
    confirmation: dict = field(default_factory=dict)
    peak_memory: dict = field(default_factory=dict)  # attention -> step kind -> bytes (None off CUDA/MPS)
    patch_overhead: dict = field(default_factory=dict)


# ------------------------------------------------------------------ attention paths

def _sdpa_forward(self, x, context=None, mask=None):
    from dato.evaluation.models import sdpa_forward

    return sdpa_forward(self, x, context, mask)


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


STUDY_RATIOS = (0.3, 0.5, 0.7)
STUDY_CACHE = "deepcache-every5-d0"


def token_study_variants(steps: int) -> list[Variant]:
    """DaTo as the paper does it against each shortcut, merge and downsample, alone and with caching.

    Baseline; then at each of :data:`STUDY_RATIOS`, with every step full and on :data:`STUDY_CACHE`:
    ``prune`` in each of :data:`dato.core.tokens.PRUNE_VARIANTS`, ``merge`` and ``downsample``.
    """
    variants = [Variant("baseline", Schedule.full(steps, 0.0, "none"), group="baseline")]
    cached = Schedule.load(find_schedules()[STUDY_CACHE]).resample(steps)
    for base_name, base in (("", Schedule.full(steps, 0.0, "none")), (f"{STUDY_CACHE} + ", cached)):
        group = "combo" if base_name else "tokens"
        for r in STUDY_RATIOS:
            sched = base.with_method("prune").with_ratio(r)
            for pv in tokens.PRUNE_VARIANTS:
                variants.append(Variant(f"{base_name}prune[{pv}] {r:g}", sched, group=group,
                                        options={"prune_variant": pv}))
            for method in ("merge", "downsample"):
                variants.append(Variant(f"{base_name}{method} {r:g}", base.with_method(method).with_ratio(r),
                                        group=group))
    return variants


def macs_options(variant: Variant) -> dict:
    """The :meth:`UNetCost.schedule_macs` keywords that a variant's patch options change."""
    o = variant.options
    return {"prune_variant": o.get("prune_variant", tokens.SHARED_PLAN),
            "downsample_factors": (o.get("downsample_factor", 0.0), o.get("downsample_factor2", 0.0)),
            "downsample_stop": o.get("downsample_stop", 1.0)}


def step_kinds(variant: Variant) -> list[StepKind]:
    s = variant.schedule
    return [StepKind(a, s.method if r > 0 else "none", r if s.method != "none" else 0.0, variant.peer if r > 0 else "")
            for a, r in zip(s.cache, s.ratio, strict=True)]


# ------------------------------------------------------------------ timing

class KindTimer:
    """Times one UNet call of a given kind; the cache is primed by an untimed full call first."""

    def __init__(self, unet: torch.nn.Module, x: torch.Tensor, context: torch.Tensor, seed: int) -> None:
        self.unet, self.x, self.context, self.seed = unet, x, context, seed
        self.device = x.device
        self.t_full = torch.full((x.shape[0],), 999.0, device=x.device)
        self.t_step = torch.full((x.shape[0],), 980.0, device=x.device)
        self.peak: dict[StepKind, int | None] = {}  # device memory at the peak of each kind's timed call
        self._last_peak: int | None = None

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

    def _timed(self, fn: Callable[[], object]) -> float:
        dev.reset_peak_memory(self.device)
        seconds = dev.timed(fn, self.device)
        self._last_peak = dev.peak_memory(self.device)
        return seconds


class _Holder(torch.nn.Module):
    """tomesd wants ``model.model.diffusion_model``."""

    def __init__(self, unet: torch.nn.Module) -> None:
        super().__init__()
        self.model = torch.nn.Module()
        self.model.diffusion_model = unet  # registered, so tomesd.remove_patch finds the blocks


def time_kinds(timer: KindTimer, kinds: list[StepKind], repeats: int, log: Callable[[str], None],
               tag: str, progress: Progress | None = None,
               estimates: dict[StepKind, float] | None = None) -> dict[StepKind, float]:
    """Median time of each kind; repeats are interleaved (round-robin) so drift hits every kind alike.

    With ``progress``, each timed call advances it by its entry in ``estimates`` (planned by the caller).
    """
    samples: dict[StepKind, list[float]] = {k: [] for k in kinds}
    log(f"[{tag}] warm-up")
    timer.time(StepKind(FULL, "none", 0.0))
    if timer.device.type != "cpu":  # first calls of a shape compile/autotune kernels on a GPU
        for kind in kinds:
            timer.time(kind)
    total = repeats * len(kinds)
    done = 0
    for _ in range(repeats):
        for kind in kinds:
            samples[kind].append(timer.time(kind))
            peak = timer._last_peak
            timer.peak[kind] = peak if timer.peak.get(kind) is None else max(peak or 0, timer.peak[kind])
            done += 1
            _advance(progress, estimates, kind, f"[{tag}] {done}/{total} {kind.label():<26} {samples[kind][-1]:8.3f} s",
                     log)
    return {k: statistics.median(v) for k, v in samples.items()}


# ------------------------------------------------------------------ token overhead

def _median_time(fn: Callable[[], object], repeats: int, device: torch.device | str = "cpu") -> float:
    return dev.median_time(fn, repeats, device)


@torch.no_grad()
def token_overhead(unet: torch.nn.Module | None, latent: int, batch: int, ratio: float, repeats: int,
                   blocks_per_level: int, block: torch.nn.Module | None = None) -> list[dict]:
    """Selection + restoration cost per UNet call against the self-attention time it saves (level 1).

    ``prune`` is measured in each of :data:`dato.core.tokens.PRUNE_VARIANTS`: ``shared-plan`` builds
    one plan per level and call, the others one per block (``faithful`` with its pruned x kept restoration).
    """
    block = block if block is not None else highest_resolution_transformer(unet)
    channels = block.norm1.normalized_shape[0]
    param = next(block.parameters())
    where = {"device": param.device, "dtype": param.dtype}
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, latent * latent, channels, generator=gen).to(**where)
    h = block.norm1(x)
    grid = (latent, latent)
    full_attn = _median_time(lambda: block.attn1(h), repeats, param.device)
    rows = []
    noise = (torch.randn(batch, latent * latent, generator=gen) * 0.1).to(**where)
    builders = {
        "prune[shared-plan]": (lambda: tokens.prune_plan(x, grid, ratio, None, noise), 1),
        "prune[base-restore]": (lambda: tokens.prune_plan(x, grid, ratio, None, noise, dynamics_weight=0.1),
                                blocks_per_level),
        "prune[faithful]": (lambda: tokens.prune_plan(x, grid, ratio, None, noise, restore="kept",
                                                      dynamics_weight=0.1), blocks_per_level),
        "merge": (lambda: tokens.merge_plan(x, grid, ratio, None if param.device.type != "cpu" else gen),
                  blocks_per_level),
        "downsample": (lambda: tokens.downsample_plan(grid, ratio if ratio <= 0.75 else 0.75), 0),
    }
    for method, (build, plans_per_call) in builders.items():
        plan = build()
        select = _median_time(build, repeats, param.device)
        if method == "downsample":
            reduced_attn = _median_time(lambda plan=plan: block.attn1(h, context=plan.keys_values(h)), repeats,
                                        param.device)
            move = _median_time(lambda plan=plan: plan.keys_values(h), repeats, param.device)
        else:
            reduced = plan.reduce(h)
            reduced_attn = _median_time(lambda reduced=reduced: block.attn1(reduced), repeats, param.device)
            move = _median_time(lambda plan=plan, reduced=reduced: plan.restore(plan.reduce(h)), repeats,
                                param.device)
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
            apply_patch(unet, variant.schedule, clock="manual", seed=seed, adaptive=variant.adaptive,
                        **variant.options)
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
    a, b = a.float(), b.float()
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


@torch.no_grad()
def patch_overhead(unet: torch.nn.Module, context: torch.Tensor, repeats: int, latent: int = 8,
                   steps: int = 10) -> dict:
    """What the patch itself costs per UNet call: hooks, block wrappers and the step clock, nothing scheduled.

    At a tiny latent (``latent`` x ``latent``, 64 px by default) the UNet's arithmetic is small, so the
    difference between a patched call (a schedule of full steps, ratio 0: every hook and wrapper runs,
    nothing is skipped or reduced) and the unpatched call is the Python and bookkeeping overhead that a
    GPU's 20-40 ms UNet call has to carry.
    """
    param = next(unet.parameters())
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(context.shape[0], unet.in_channels, latent, latent, generator=gen).to(param.device, param.dtype)
    t = torch.full((x.shape[0],), 999.0, device=param.device)
    call = lambda: unet(x, t, context=context)  # noqa: E731
    plain = dev.median_time(call, repeats, param.device)
    schedule = Schedule.full(steps, 0.0, "none")
    apply_patch(unet, schedule, clock="manual")
    try:
        state = {"i": 0}

        def patched_call():
            set_step(unet, state["i"] % steps, steps)  # the step clock moves as it does in sampling
            state["i"] += 1
            return call()

        patched = dev.median_time(patched_call, repeats, param.device)
    finally:
        remove_patch(unet)
    return {"latent": latent, "batch": int(x.shape[0]), "unpatched_ms": plain * 1e3, "patched_ms": patched * 1e3,
            "overhead_ms": (patched - plain) * 1e3, "overhead_pct": 100.0 * (patched - plain) / plain}


# ------------------------------------------------------------------ main

def load_model(config: BenchConfig) -> tuple[torch.nn.Module, int]:
    """The UNet to benchmark (on ``config.device`` in ``config.dtype``) and its context width."""
    from dato.evaluation import models

    where = {"device": config.device, "dtype": dev.DTYPES[config.dtype]}
    builtin = {"sd15": models.sd15_unet_config, "tiny": models.tiny_unet_config, "sdxl": models.sdxl_unet_config,
               "tiny-sdxl": models.tiny_sdxl_unet_config}
    if config.model in builtin:
        unet = models.build_unet(builtin[config.model](), seed=config.seed, **where)
    else:
        unet = models.load_unet_from_checkpoint(config.model, **where)
    width = models.size_vector_width(unet)
    if width is not None:  # SDXL: every call in the benchmark gets the size vector of the benchmark size
        models.supply_size_vector(unet, models.sdxl_size_vector(width, config.size, config.size, config.seed))
    return unet, _context_width(unet)


def _context_width(unet: torch.nn.Module) -> int:
    """Cross-attention context width: 768 (SD1.x), 2048 (SDXL base), whatever a tiny config has."""
    for module in unet.modules():
        if hasattr(module, "to_k") and hasattr(module, "to_q") and module.to_k.in_features != module.to_q.in_features:
            return module.to_k.in_features
    return 768


def run_benchmark(config: BenchConfig, log: Callable[[str], None] = print,
                  checkpoint: Callable[[BenchReport], None] | None = None) -> BenchReport:
    if config.threads:
        torch.set_num_threads(config.threads)
    log(f"building the UNet ({config.model}) ...")
    unet, context_dim = load_model(config)
    unet = find_unet(unet)
    report = BenchReport(config=asdict(config), machine=_machine(config.device, config.dtype))
    variants = build_variants(config.steps, config.quick)
    finest = finest_attention_ds(unet)  # 1 on SD1.x; 2 on SDXL, where tomesd (ds 1 only) does nothing
    variants = [v for v in variants if not (v.peer == "tomesd" and finest > 1)]
    kinds = sorted({k for v in variants for k in step_kinds(v)}, key=lambda k: (k.peer, k.method, k.ratio, k.action))
    gen = torch.Generator().manual_seed(config.seed)
    where = {"device": config.device, "dtype": dev.DTYPES[config.dtype]}
    x = torch.randn(2, unet.in_channels, config.latent, config.latent, generator=gen).to(**where)
    context = torch.randn(2, 77, context_dim, generator=gen).to(**where)
    cost = macs_mod.trace_unet_cost(unet)
    progress, estimates = _plan(unet, kinds, variants, cost, config, x, context, log)
    timers = {}
    for attention in config.attention:
        with sdpa_attention(unet, attention == "sdpa"):
            timer = KindTimer(unet, x, context, config.seed)
            timers[attention] = time_kinds(timer, kinds, config.repeats, log, attention, progress, estimates)
            report.peak_memory[attention] = {k.label(): timer.peak.get(k) for k in kinds}
            if config.overhead:
                report.patch_overhead[attention] = patch_overhead(unet, context, max(5, config.repeats))
                o = report.patch_overhead[attention]
                log(f"[{attention}] patch overhead at {o['latent'] * 8} px: {o['overhead_ms']:+.2f} ms per call")
            levels = sum(1 for m in unet.modules() if isinstance_str(m, "BasicTransformerBlock")
                         and _level_of(unet, m) == finest)
            rows = token_overhead(unet, -(-config.latent // finest), 2, 0.5, config.repeats, levels)
            for row in rows:
                row["attention"] = attention
            report.token_overhead.extend(rows)
    report.step_kinds = {att: {k.label(): t for k, t in times.items()} for att, times in timers.items()}

    _fill_rows(report, variants, timers, cost, config, {})
    if checkpoint is not None:  # the timings alone took a while: keep them even if a later phase is stopped
        checkpoint(report)
    if config.fidelity:
        _fill_rows(report, variants, timers, cost, config,
                   _fidelity(unet, variants, config, context_dim, log, progress, estimates))
        if checkpoint is not None:
            checkpoint(report)
    if config.confirm:
        report.confirmation = _confirm(unet, variants, timers, config, context, log, progress, estimates)
    return report


def _plan(unet, kinds, variants, cost, config: BenchConfig, x, context, log) -> tuple[Progress, dict]:
    """Say up front how long the run will take, from one timed full call per size; the estimates per task."""
    timer = KindTimer(unet, x, context, config.seed)
    log(f"[plan] timing one full call at {config.size} px ...")
    with sdpa_attention(unet, config.attention[0] == "sdpa"):
        t_full = timer.time(StepKind(FULL, "none", 0.0))  # cold: the estimates err long
    full = cost.call_macs(config.latent, config.latent)
    estimates: dict = {k: t_full * max(0.02, cost.call_macs(config.latent, config.latent, k.action, k.ratio,
                                                               k.method) / full) for k in kinds}
    timing = len(config.attention) * config.repeats * sum(estimates.values())
    fidelity = confirm = 0.0
    if config.fidelity:
        f = config.fidelity_size // 8
        small = KindTimer(unet, x.new_zeros(*x.shape[:2], f, f), context, config.seed)
        with sdpa_attention(unet, "sdpa" in config.attention):
            t_small = small.time(StepKind(FULL, "none", 0.0))
        for v in variants:
            estimates[v.name] = t_small * max(0.02, cost.schedule_macs(v.schedule, f, f) / cost.call_macs(f, f))
        fidelity = sum(estimates[v.name] for v in variants)
    if config.confirm:
        v = next(v for v in variants if v.name == config.confirm_schedule)
        estimates["confirm"] = t_full * cost.schedule_macs(v.schedule, config.latent, config.latent) / full
        confirm = estimates["confirm"]
    log(f"[plan] {len(kinds)} kinds of call x {config.repeats} repeat(s) x {len(config.attention)} attention "
        f"path(s) ~{format_duration(timing)}"
        + (f"; fidelity: {len(variants)} sampling runs at {config.fidelity_size} px ~{format_duration(fidelity)}"
           if config.fidelity else "")
        + (f"; end-to-end check ~{format_duration(confirm)}" if config.confirm else "")
        + f": about {format_duration(timing + fidelity + confirm)} in all (estimated from the first timed calls;"
        " --quick for a short run)")
    progress = Progress(log)
    progress.plan(timing + fidelity + confirm)
    return progress, estimates


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
            peaks = [report.peak_memory.get(attention, {}).get(k.label()) for k in set(step_kinds(variant))]
            row[f"peak_mib_{attention}"] = max(peaks) / 2**20 if peaks and None not in peaks else None
        report.rows.append(row)


def _level_of(unet: torch.nn.Module, block: torch.nn.Module) -> int:
    from dato.core.layout import UNetLayout, transformer_blocks

    for _, ds, b in transformer_blocks(unet, UNetLayout.from_unet(unet)):
        if b is block:
            return ds
    return 0


def _advance(progress: Progress | None, estimates: dict | None, key, line: str, log: Callable[[str], None]) -> None:
    if progress is None:
        log(line)
    else:
        progress.step((estimates or {}).get(key, 0.0), line)


def _fidelity(unet, variants, config, context_dim, log, progress=None, estimates=None) -> dict[str, float]:
    """Relative L2 of each variant's final latent to the baseline's (real sampling, small size)."""
    latent = config.fidelity_size // 8
    gen = torch.Generator().manual_seed(config.seed + 1)
    where = {"device": config.device, "dtype": dev.DTYPES[config.dtype]}
    noise = torch.randn(1, unet.in_channels, latent, latent, generator=gen).to(**where)
    cond = torch.randn(1, 77, context_dim, generator=gen).to(**where)
    uncond = torch.randn(1, 77, context_dim, generator=gen).to(**where)
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
            line = (f"[fidelity {config.fidelity_size}px] {i}/{len(variants)} {variant.name:<34} rel-L2 "
                    f"{results[variant.name]:.4f} ({time.perf_counter() - start:.1f} s)")
            _advance(progress, estimates, variant.name, line, log)
    return results


def _confirm(unet, variants, timers, config, context, log, progress=None, estimates=None) -> dict:
    """One real end-to-end run at the benchmark size: does the composed time hold?"""
    variant = next(v for v in variants if v.name == config.confirm_schedule)
    attention = "sdpa" if "sdpa" in timers else next(iter(timers))
    composed = sum(timers[attention][k] for k in step_kinds(variant))
    gen = torch.Generator().manual_seed(config.seed + 2)
    noise = torch.randn(1, unet.in_channels, config.latent, config.latent, generator=gen).to(context.device,
                                                                                                context.dtype)
    log(f"[confirm] sampling {variant.name!r} end to end ({config.steps} steps, {attention}) ...")
    with sdpa_attention(unet, attention == "sdpa"):
        measured = dev.timed(lambda: sample_variant(unet, variant, noise, context[:1], context[1:], config.steps,
                                                    config.sampler, config.seed), context.device)
    error = 100.0 * (measured - composed) / composed
    line = f"[confirm] measured {measured:.1f} s, composed {composed:.1f} s ({error:+.1f} %)"
    _advance(progress, estimates, "confirm", line, log)
    return {"schedule": variant.name, "attention": attention, "measured_s": measured, "composed_s": composed,
            "error_pct": error}


def _machine(device: str = "cpu", dtype: str = "fp32") -> dict:
    where = torch.device(device)
    name = torch.cuda.get_device_name(where) if where.type == "cuda" else \
        "Apple MPS" if where.type == "mps" else platform.processor() or platform.machine()
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "python": sys.version.split()[0], "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "device": str(where), "device_name": name, "dtype": dtype}


# ------------------------------------------------------------------ output

def legend(report: BenchReport) -> list[str]:
    """What the table's columns mean, printed above it."""
    c = report.config
    return [
        "legend:",
        "  MACs x    analytic UNet multiply-accumulates per image, baseline / variant: deterministic, no timing",
        f"  s/img     seconds per image ({c['size']} px, {c['steps']} steps, CFG batch of 2), composed from "
        "timed calls of each kind of step (median of "
        f"{c['repeats']}), not one run end to end; the end-to-end check below compares one with its composition",
        "  x         composed seconds of the baseline / of the variant, per attention path (ldm's own, PyTorch SDPA)",
        f"  rel-L2    distance of the final latent to the baseline's in real sampling at {c['fidelity_size']} px",
        "  " + ("random weights (the built-in SD1.5-architecture UNet): the speed figures hold for any SD1.5 "
                "checkpoint; rel-L2 says nothing of image quality (python -m dato demo and quality measure it on "
                "the trained fixture)" if c["model"] in ("sd15", "tiny") else "weights from the checkpoint"),
    ]


def format_table(report: BenchReport) -> str:
    attentions = list(report.step_kinds)
    m = report.machine
    lines = [f"device: {m.get('device', 'cpu')} ({m.get('device_name', '?')}), dtype {m.get('dtype', 'fp32')}, "
             f"torch {m.get('torch', '?')}"]
    head = f"{'variant':<36}{'MACs x':>8}" + "".join(f"{'s/img ' + a:>14}{'x ' + a:>9}{'MiB ' + a:>10}"
                                                     for a in attentions)
    head += f"{'rel-L2':>9}  schedule"
    lines = legend(report) + ["", *lines, head, "-" * len(head)]
    for row in report.rows:
        line = f"{row['name']:<36}{row['macs_speedup']:>8.2f}"
        for a in attentions:
            peak = row.get(f"peak_mib_{a}")
            line += f"{row[f'seconds_per_image_{a}']:>14.2f}{row[f'speedup_{a}']:>9.2f}"
            line += f"{peak:>10.0f}" if peak is not None else f"{'n/a':>10}"
        fid = row["fidelity_rel_l2"]
        line += f"{fid:>9.4f}" if fid is not None else f"{'-':>9}"
        preview = row["preview"]
        line += "  " + (preview if len(preview) <= 50 else preview[:47] + "...")
        lines.append(line)
    lines.append("")
    lines.append("token selection + restoration per UNet call (level 1) vs self-attention time saved:")
    for row in report.token_overhead:
        lines.append(f"  {row['attention']:<5} {row['method']:<19} r={row['ratio']:.2f} kept {row['kept']:>5}/"
                     f"{row['tokens']}: select {row['select_ms']:7.2f} ms x{row['plans_per_call']}, "
                     f"gather {row['reduce_restore_ms']:6.2f} ms/block, saved {row['saved_ms_per_call']:8.1f} ms "
                     f"-> overhead {row['overhead_pct_of_saved']:5.1f} % of saved")
    for attention, o in report.patch_overhead.items():
        lines.append(f"patch overhead ({attention}, {o['latent'] * 8} px, batch {o['batch']}, nothing scheduled): "
                     f"unpatched {o['unpatched_ms']:.2f} ms, patched {o['patched_ms']:.2f} ms per UNet call: "
                     f"{o['overhead_ms']:+.2f} ms ({o['overhead_pct']:+.1f} %)")
    if report.confirmation:
        c = report.confirmation
        lines.append(f"end-to-end check: {c['schedule']} ({c['attention']}) measured {c['measured_s']:.1f} s vs "
                     f"composed {c['composed_s']:.1f} s: {c['error_pct']:+.1f} %")
    return "\n".join(lines)
