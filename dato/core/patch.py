"""``apply_patch`` / ``remove_patch``: put a Schedule onto a live ldm UNet, and take it off exactly.

How the patch is built, and why:

* Nothing replaces ``UNetModel.forward``: the WebUI already swaps it at class
  level (``sd_unet``) and ControlNet at instance level. A forward *pre-hook* on
  the UNet reads the step clock and decides this call's action; a forward hook
  records the output (for ``reuse`` and for DaTo's temporal dynamics).
* Each top-level block (``input_blocks[k]``, ``middle_block``,
  ``output_blocks[j]``, ``out``) gets a per-instance ``forward`` that either runs
  the block or, at a cached step, returns its stored output (the one feature a
  branch needs) or a placeholder of the right shape (features the skipped
  blocks would pass to each other, which nothing reads; not free: ldm still
  concatenates the skip connections of the skipped output blocks).
* Each ``BasicTransformerBlock`` at the chosen levels gets a per-instance
  ``_forward`` running self-attention through a token plan (:mod:`dato.core.tokens`).
* Caches live per pass and are keyed by (call ordinal within the step, input
  shape, dtype, device), so cond/uncond halves in separate calls, second-order
  samplers' extra calls and calls of another batch size never read each
  other's features. A missing cache entry means "compute fully", never an error.
* ``remove_patch`` restores every attribute it set, but only where the value is
  still its own; a wrapper someone put on top is left alone and ours turns inert.

Length: one mechanism (hooks, block forwards, transformer forwards, caches,
the step clock and exact removal) whose parts share the ``Patch`` state; split
across files, every part would reach into the others' private state.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from dato.core import tokens
from dato.core.layout import UNetLayout, block_modules, find_unet, transformer_blocks
from dato.core.schedule import FULL, METHODS, REUSE, Schedule, ScheduleError, load_schedule, ratio_allowed, ratio_range

__all__ = [
    "apply_patch",
    "remove_patch",
    "set_step",
    "clear_step",
    "get_patch",
    "DatoPatch",
    "PatchConflictError",
]

_MISSING = object()
#: DaTo's weight of the temporal dynamics in the base-token score (``diff_gema``).
DYNAMICS_WEIGHT = 0.1
_ATTR = "_dato_patch"
#: Per-call feature caches kept per pass (one per UNet call of a step: cond/uncond halves, batch shapes) and
#: resampled schedules kept per patch; bounded so that a patch left on for a long session stays small.
CALL_CACHES_MAX = 32
RESAMPLED_MAX = 8


class PatchConflictError(RuntimeError):
    """Another accelerator already changed the blocks this patch would change."""


@dataclass
class StepClock:
    """Which sampling step and pass the next UNet call belongs to.

    ``manual``: the caller says so with :meth:`set` (the WebUI from
    ``on_cfg_denoiser``, a standalone sampler from its loop); until it does, the
    patch is inert. ``auto``: derived from the timesteps the UNet receives — a
    new value is a new step, a larger one a new pass (one host read per call).
    """

    mode: str = "auto"
    steps: int = 0
    step: int | None = None
    total: int = 0
    pass_index: int = 0
    ordinal: int = 0
    _last_t: float | None = None
    _fresh_step: bool = True
    _new_pass: bool = True

    def set(self, step: int, total: int, pass_index: int = 0) -> None:
        if self.step is None or pass_index != self.pass_index or total != self.total or step < self.step:
            self._new_pass = True
        if step != self.step or self._new_pass:
            self._fresh_step = True
        self.step, self.total, self.pass_index = step, total, pass_index

    def clear(self) -> None:
        self.step = None
        self._last_t = None
        self._new_pass = True

    def tick(self, timesteps: Any) -> tuple[int, int, bool] | None:
        """Advance for one UNet call; ``(step, total, new_pass)`` or ``None`` when inert."""
        if self.mode == "auto":
            self._tick_auto(timesteps)
        if self.step is None:
            return None
        if self._fresh_step:
            self.ordinal, self._fresh_step = 0, False
        else:
            self.ordinal += 1
        new_pass, self._new_pass = self._new_pass, False
        return self.step, self.total, new_pass

    def _tick_auto(self, timesteps: Any) -> None:
        if timesteps is None:
            return
        t = float(timesteps.reshape(-1)[0]) if torch.is_tensor(timesteps) else float(timesteps)
        last = self._last_t
        if last is None or t > last + 1e-6:
            self.set(0, self.steps, self.pass_index + (last is not None))
        elif t < last - 1e-6:
            self.set((self.step or 0) + 1, self.steps, self.pass_index)
        self._last_t = t


@dataclass
class CallCache:
    """What one call key remembers across steps within a pass."""

    outputs: dict[str, torch.Tensor] = field(default_factory=dict)
    shapes: dict[str, torch.Size] = field(default_factory=dict)
    last_output: torch.Tensor | None = None
    dynamics: torch.Tensor | None = None
    probe: torch.Tensor | None = None  # adaptive mode: the probe block's output at the last full call
    cached_run: int = 0  # adaptive mode: cached calls since that full one


@dataclass
class CallContext:
    """The decision for the UNet call in flight."""

    action: int
    ratio: float
    step: int
    size: tuple[int, int]
    entry: CallCache
    skipped: frozenset[str]
    feature_block: str | None
    zero: torch.Tensor
    generator: torch.Generator | None
    level_plans: dict[Any, Any] = field(default_factory=dict)
    pending: bool = False  # adaptive mode: cached unless the probe block's output changed too much


@dataclass(frozen=True)
class PatchOptions:
    """Validated options of one patch (see :func:`apply_patch`)."""

    method: str
    max_downsample: int = 1
    seed: int = 0
    noise_alpha: float = 0.1
    align_cfg: bool = True
    use_rand: bool = True
    clock: str = "auto"
    steps: int | None = None
    prune_variant: str = tokens.SHARED_PLAN
    downsample_factor: float = 0.0
    downsample_factor2: float = 0.0
    downsample_stop: float = 1.0
    adaptive: float | None = None
    adaptive_depth: int = 0
    adaptive_cap: int = 3

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ScheduleError(f"method = {self.method!r}, expected one of {', '.join(METHODS)}")
        if self.max_downsample not in (1, 2, 4, 8):
            raise ScheduleError(f"max_downsample = {self.max_downsample!r}, expected 1, 2, 4 or 8")
        if self.clock not in ("auto", "manual"):
            raise ScheduleError(f"clock = {self.clock!r}, expected 'auto' or 'manual'")
        if not (isinstance(self.seed, int) and not isinstance(self.seed, bool)):
            raise ScheduleError(f"seed = {self.seed!r}, expected an integer")
        if not (math.isfinite(self.noise_alpha) and self.noise_alpha >= 0):
            raise ScheduleError(f"noise_alpha = {self.noise_alpha!r}, expected a number >= 0")
        if self.steps is not None and (isinstance(self.steps, bool) or not isinstance(self.steps, int)
                                       or self.steps < 1):
            raise ScheduleError(f"steps = {self.steps!r}, expected an integer >= 1")
        if self.prune_variant not in tokens.PRUNE_VARIANTS:
            raise ScheduleError(f"prune_variant = {self.prune_variant!r}, expected one of "
                                f"{', '.join(tokens.PRUNE_VARIANTS)}")
        for name in ("downsample_factor", "downsample_factor2"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                    value == 0 or (math.isfinite(value) and 1 <= value <= 16)):
                raise ScheduleError(f"{name} = {value!r}, expected 0 (from the ratio) or a number 1..16")
        stop = self.downsample_stop
        if isinstance(stop, bool) or not isinstance(stop, (int, float)) or not 0 <= stop <= 1:
            raise ScheduleError(f"downsample_stop = {stop!r}, expected a fraction of the steps 0..1")
        if self.adaptive is not None and (isinstance(self.adaptive, bool) or not isinstance(self.adaptive, (int, float))
                                          or not math.isfinite(self.adaptive) or self.adaptive < 0):
            raise ScheduleError(f"adaptive = {self.adaptive!r}, expected a threshold >= 0 (or None = off)")
        if isinstance(self.adaptive_cap, bool) or not isinstance(self.adaptive_cap, int) or self.adaptive_cap < 1:
            raise ScheduleError(f"adaptive_cap = {self.adaptive_cap!r}, expected an integer >= 1")
        if isinstance(self.adaptive_depth, bool) or not isinstance(self.adaptive_depth, int):
            raise ScheduleError(f"adaptive_depth = {self.adaptive_depth!r}, expected an integer depth")


_DEFAULTS = PatchOptions("none")  # the engine's option defaults, written once (above) for apply_patch too


class DatoPatch:
    """The live patch on one UNet. Created by :func:`apply_patch`; read it with :func:`get_patch`."""

    def __init__(self, unet: torch.nn.Module, schedule: Schedule, options: PatchOptions) -> None:
        self.unet_ref = weakref.ref(unet)
        self.layout = UNetLayout.from_unet(unet)
        self.schedule = schedule
        self.options = options
        self.clock = StepClock(mode=options.clock, steps=options.steps or schedule.steps)
        self.calls: dict[tuple, CallCache] = {}
        self.current: CallContext | None = None
        self.active = True
        self.stats = {"calls": 0, "full": 0, "cached": 0, "reuse": 0}
        self._installed: list[tuple[torch.nn.Module, str, Any, Any]] = []
        self._hooks: list[Any] = []
        self._resampled: dict[int, Schedule] = {}
        self._generators: dict[torch.device, torch.Generator] = {}
        self._zeros: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}  # kept: no allocation per call
        self.layout.check_schedule_fits(schedule)
        self.stored_blocks = {self.layout.cached_feature_block(a) for a in schedule.cache if a >= 0}
        if REUSE in schedule.cache:
            self.stored_blocks.add("out")
        self.probe_block: str | None = None
        self.decisions: list[tuple[int, int]] = []  # adaptive mode: (step, action) of each call
        if options.adaptive is not None:
            self.layout.check_depth(options.adaptive_depth)
            self.stored_blocks.add(self.layout.cached_feature_block(options.adaptive_depth))
            self.probe_block = f"input.{options.adaptive_depth}"  # the deepest block a cached call computes anyway
        found = transformer_blocks(unet, self.layout)
        # token levels count from the finest level that has attention: ds 1 on SD1.x, 2 on SDXL (sgm)
        finest = min((ds for _, ds, _ in found), default=1)
        self.token_blocks = [(role, ds, block) for role, ds, block in found if ds <= finest * options.max_downsample]
        self.uses_tokens = options.method != "none" and any(r > 0 for r in schedule.ratio)

    # ------------------------------------------------------------ install
    def install(self, unet: torch.nn.Module) -> None:
        if self.uses_tokens:
            self._check_token_conflicts()
        self._hooks.append(unet.register_forward_pre_hook(self._before_unet, with_kwargs=True))
        self._hooks.append(unet.register_forward_hook(self._after_unet, with_kwargs=True))
        if any(a != FULL for a in self.schedule.cache) or self.probe_block is not None:
            for role, module in block_modules(unet).items():
                self._set(module, "forward", self._block_forward(role, module.forward))
        if self.uses_tokens:
            for _, ds, block in self.token_blocks:
                self._set(block, "_forward", self._transformer_forward(block, ds, block._forward))
        setattr(unet, _ATTR, self)

    def _check_token_conflicts(self) -> None:
        for role, _, block in self.token_blocks:
            if type(block).__name__ != "BasicTransformerBlock" and (
                hasattr(block, "_tome_info") or hasattr(type(block), "_parent")
            ):
                raise PatchConflictError(
                    f"{role}: this UNet is already patched by tomesd (the WebUI's Token Merging setting). "
                    "Set Token Merging to 0, or use token method 'none' to combine caching with it."
                )
            if "_forward" in vars(block):
                raise PatchConflictError(
                    f"{role}: a transformer block's _forward is already replaced by another extension; "
                    "use token method 'none' to combine caching with it."
                )

    def _set(self, module: torch.nn.Module, attr: str, value: Any) -> None:
        previous = vars(module).get(attr, _MISSING)
        setattr(module, attr, value)
        self._installed.append((module, attr, previous, value))

    def uninstall(self) -> None:
        self.active = False
        self.current = None
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()
        for module, attr, previous, ours in reversed(self._installed):
            if vars(module).get(attr, _MISSING) is not ours:
                continue  # someone wrapped on top of us; our wrapper stays, inert
            if previous is _MISSING:
                delattr(module, attr)
            else:
                setattr(module, attr, previous)
        self._installed.clear()
        self.calls.clear()
        unet = self.unet_ref()
        if unet is not None and vars(unet).get(_ATTR) is self:
            delattr(unet, _ATTR)

    # ------------------------------------------------------------- clock
    def schedule_for(self, total: int) -> Schedule:
        """The schedule resampled to ``total`` steps (memoised per step count, the last few only)."""
        if total not in self._resampled:
            while len(self._resampled) >= RESAMPLED_MAX:
                del self._resampled[next(iter(self._resampled))]
            self._resampled[total] = self.schedule.resample(total)
        return self._resampled[total]

    def _generator(self, device: torch.device, step: int, ordinal: int) -> torch.Generator:
        gen = self._generators.get(device)
        if gen is None:
            gen = self._generators[device] = torch.Generator(device=device)
        gen.manual_seed((self.options.seed * 1_000_003 + step * 1009 + ordinal) % (2**63))
        return gen

    def _before_unet(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        self.current = None
        if not self.active:
            return
        x = args[0] if args else kwargs.get("x")
        timesteps = args[1] if len(args) > 1 else kwargs.get("timesteps")
        tick = self.clock.tick(timesteps)
        if tick is None or x is None:
            return
        step, total, new_pass = tick
        if new_pass:
            self.calls.clear()
        schedule = self.schedule_for(max(total, 1))
        action, ratio = (schedule.cache[step], schedule.ratio[step]) if step < schedule.steps else (FULL, 0.0)
        if self.options.method == "downsample" and step >= int(self.options.downsample_stop * max(total, 1)):
            ratio = 0.0  # ToDo's "disable after": token reduction stops for the rest of the pass
        key = (self.clock.ordinal, tuple(x.shape), x.dtype, x.device)
        entry = self.calls.get(key)
        if entry is None:  # bounded: a dropped entry only makes that call's next step full (see _ready)
            while len(self.calls) >= CALL_CACHES_MAX:
                del self.calls[next(iter(self.calls))]
            entry = self.calls[key] = CallCache()
        pending = False
        if self.probe_block is not None:  # adaptive: cached if ready, under the cap, and the probe says so
            action = self.options.adaptive_depth
            pending = entry.probe is not None and entry.cached_run < self.options.adaptive_cap
        if not self._ready(entry, action) or (self.probe_block is not None and not pending):
            action, pending = FULL, False
        if action == FULL:
            skipped, feature = frozenset(), None
        elif action == REUSE:
            skipped, feature = frozenset(entry.shapes), "out"
        else:
            skipped, feature = frozenset(self.layout.skipped_blocks(action)), self.layout.cached_feature_block(action)
        use_gen = self.uses_tokens and ratio > 0 and self.options.method in ("prune", "merge")
        self.current = CallContext(
            action=action, ratio=ratio if self.uses_tokens else 0.0, step=step,
            size=(x.shape[-2], x.shape[-1]), entry=entry, skipped=skipped, feature_block=feature,
            zero=self._zero(x), generator=self._generator(x.device, step, self.clock.ordinal) if use_gen else None,
            pending=pending,
        )
        self.stats["calls"] += 1
        if not pending:
            self._count(action)

    def _count(self, action: int) -> None:
        self.stats["full" if action == FULL else "reuse" if action == REUSE else "cached"] += 1

    def _zero(self, x: torch.Tensor) -> torch.Tensor:
        """A 0-d zero of ``x``'s device and dtype, made once (skipped blocks return views of it)."""
        key = (x.device, x.dtype)
        zero = self._zeros.get(key)
        if zero is None:
            zero = self._zeros[key] = x.new_zeros(())
        return zero

    def _decide(self, ctx: CallContext, probe: torch.Tensor) -> None:
        """Adaptive mode: stay cached only if the probe moved less than the threshold since the last full call."""
        ctx.pending = False
        last = ctx.entry.probe
        change = float((probe - last).abs().mean() / last.abs().mean().clamp_min(1e-12)) \
            if last is not None and last.shape == probe.shape else math.inf
        if change < self.options.adaptive:
            ctx.entry.cached_run += 1
        else:
            ctx.action, ctx.skipped, ctx.feature_block = FULL, frozenset(), None
        self._count(ctx.action)

    def _ready(self, entry: CallCache, action: int) -> bool:
        """A cached action needs its feature stored by an earlier call of this key (a full one came first)."""
        if action == FULL:
            return True
        feature = "out" if action == REUSE else self.layout.cached_feature_block(action)
        return feature in entry.outputs

    def _after_unet(self, module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        ctx, self.current = self.current, None
        if ctx is None or not torch.is_tensor(output):
            return
        if self.probe_block is not None:
            self.decisions.append((ctx.step, ctx.action))
        entry = ctx.entry
        if ctx.action == REUSE or not (self.uses_tokens and self.options.method == "prune"):
            return
        if entry.last_output is not None:
            entry.dynamics = (output - entry.last_output).abs().mean(dim=1)
        entry.last_output = output

    # ------------------------------------------------------------ blocks
    def _block_forward(self, role: str, original):
        patch = self

        def forward(*args, **kwargs):
            ctx = patch.current
            if ctx is None or role not in ctx.skipped:
                out = original(*args, **kwargs)
                if ctx is not None:
                    ctx.entry.shapes[role] = out.shape
                    if role in patch.stored_blocks:
                        ctx.entry.outputs[role] = out
                    if role == patch.probe_block:
                        if ctx.pending:
                            patch._decide(ctx, out)
                        if ctx.action == FULL:
                            ctx.entry.probe, ctx.entry.cached_run = out, 0
                return out
            if role == ctx.feature_block:
                stored = ctx.entry.outputs[role]
                return stored.clone() if role == "out" else stored
            return ctx.zero.expand(ctx.entry.shapes[role])

        return forward

    def _transformer_forward(self, block: torch.nn.Module, ds: int, original):
        patch = self

        def _forward(x, context=None):
            ctx = patch.current
            plan = patch._plan(ctx, ds, x) if ctx is not None and ctx.ratio > 0 else None
            if plan is None:
                return original(x, context)
            self_context = context if block.disable_self_attn else None
            h = block.norm1(x)
            if self_context is None:
                x = plan.self_attention(block.attn1, h) + x
            else:
                x = block.attn1(h, context=self_context) + x
            x = block.attn2(block.norm2(x), context=context) + x
            return block.ff(block.norm3(x)) + x

        return _forward

    def _plan(self, ctx: CallContext, ds: int, x: torch.Tensor):
        """The token plan for this block: per block for merge and per-block prune variants, else per level."""
        height, width = ctx.size
        grid = (-(-height // ds), -(-width // ds))
        if grid[0] * grid[1] != x.shape[1]:
            return None
        method = self.options.method
        if method == "merge":
            return tokens.merge_plan(x, grid, ctx.ratio, ctx.generator if self.options.use_rand else None)
        if method == "prune" and self.options.prune_variant != tokens.SHARED_PLAN:
            return self._prune_plan(ctx, ds, grid, x)
        key = (ds, x.shape[1])
        if key not in ctx.level_plans:
            if method == "downsample":
                ctx.level_plans[key] = tokens.downsample_plan(grid, ctx.ratio, self._downsample_factor(ds))
            else:
                ctx.level_plans[key] = self._prune_plan(ctx, ds, grid, x)
        return ctx.level_plans[key]

    def _downsample_factor(self, ds: int) -> float | None:
        """ToDo's fixed factor for this level (first level, then second), or ``None``: from the ratio."""
        first, second = self.options.downsample_factor, self.options.downsample_factor2
        factor = first if ds == 1 else (second or first) if ds == 2 else 0
        return float(factor) if factor else None

    def _prune_plan(self, ctx: CallContext, ds: int, grid: tuple[int, int], x: torch.Tensor):
        batch = x.shape[0]
        dynamics = ctx.entry.dynamics
        if dynamics is not None:
            dynamics = dynamics.unsqueeze(1)
            if ds > 1:
                dynamics = F.avg_pool2d(dynamics, ds, ceil_mode=True)
            if dynamics.shape[0] != batch or dynamics.shape[-2:] != grid:
                dynamics = None
        gen = ctx.generator
        noise = torch.randn(batch, x.shape[1], generator=gen, device=gen.device)
        noise = noise.to(device=x.device, dtype=x.dtype) * self.options.noise_alpha
        variant = self.options.prune_variant
        weight = None
        if variant != tokens.SHARED_PLAN:  # DaTo: 0.1 * dynamics, its sign flipped at random on every call
            flip = torch.rand((), generator=gen, device=gen.device) < 0.5
            weight = torch.where(flip, -DYNAMICS_WEIGHT, DYNAMICS_WEIGHT).to(device=x.device, dtype=x.dtype)
        return tokens.prune_plan(x, grid, ctx.ratio, dynamics, noise, align_halves=self.options.align_cfg,
                                 restore="kept" if variant == "faithful" else "base", dynamics_weight=weight)


def get_patch(model: torch.nn.Module) -> DatoPatch | None:
    """The live :class:`DatoPatch` on ``model``'s UNet, or ``None``."""
    return getattr(find_unet(model), _ATTR, None)


def apply_patch(
    model: torch.nn.Module,
    schedule: Schedule | str | None = None,
    *,
    method: str | None = None,
    ratio: float | Sequence[float] | None = None,
    steps: int | None = None,
    max_downsample: int = _DEFAULTS.max_downsample,
    seed: int = _DEFAULTS.seed,
    noise_alpha: float = _DEFAULTS.noise_alpha,
    align_cfg: bool = _DEFAULTS.align_cfg,
    use_rand: bool = _DEFAULTS.use_rand,
    clock: str = _DEFAULTS.clock,
    prune_variant: str = _DEFAULTS.prune_variant,
    downsample_factor: float = _DEFAULTS.downsample_factor,
    downsample_factor2: float = _DEFAULTS.downsample_factor2,
    downsample_stop: float = _DEFAULTS.downsample_stop,
    adaptive: float | None = _DEFAULTS.adaptive,
    adaptive_depth: int = _DEFAULTS.adaptive_depth,
    adaptive_cap: int = _DEFAULTS.adaptive_cap,
) -> DatoPatch:
    """Patch ``model``'s ldm UNet (the UNet, a ``DiffusionWrapper`` or a ``LatentDiffusion``).

    * ``schedule``: a :class:`~dato.core.schedule.Schedule`, a preset name, a ``.json``
      path, or ``None`` (every step full: token reduction only).
    * ``method``: ``prune`` (DaTo), ``merge`` (ToMe), ``downsample`` (ToDo) or
      ``none``; default: the schedule's.
    * ``ratio``: a constant or per-step token ratio replacing the schedule's.
    * ``steps``: step count for the ``auto`` clock (default: the schedule's).
    * ``max_downsample``: token reduction on the finest level that has attention (1; 64x64 at 512 px on SD1.x,
      at 1024 px on SDXL) and on levels up to this factor coarser (2, 4, 8).
    * ``seed``, ``noise_alpha``, ``align_cfg``: DaTo base-token noise and cond/uncond alignment;
      ``use_rand``: ToMe's random dst cell (off = top-left, as tomesd's ``use_rand=False``).
    * ``clock``: ``auto`` (derived from timesteps) or ``manual`` (call :func:`set_step`).
    * ``prune_variant``: how ``prune`` follows DaTo: ``faithful`` (per block, restoration from the most
      similar kept token, the reference's score), ``base-restore`` (per block, copy of the matched base
      token) or ``shared-plan`` (one plan per level and call); see :data:`dato.core.tokens.PRUNE_VARIANTS`.
    * ``downsample_factor``, ``downsample_factor2``: ToDo's fixed factor for the first and second level
      (keys/values on an ``int(h / factor)`` grid at every step whose ratio is > 0; 0 = from the ratio;
      the second level defaults to the first's); ``downsample_stop``: ToDo's "disable after", the
      fraction of each pass's steps after which ``downsample`` stops (1 = never).
    * ``adaptive``: run-time caching (first-block-cache style) instead of the schedule's cache actions: a call
      is cached at ``adaptive_depth`` when the output of ``input_blocks[adaptive_depth]`` (computed anyway)
      changed by less than this relative mean-absolute threshold since the last full call, at most
      ``adaptive_cap`` calls in a row; ``0`` = every call full (bit-identical); ``None`` = off.

    Applying again replaces the previous patch; it never stacks.
    """
    unet = find_unet(model)
    if schedule is None:
        base = Schedule.full(steps or 1, method=method or "prune")
    else:
        base = load_schedule(schedule)
    if method is not None:
        base = base.with_method(method)
    if ratio is not None:
        if isinstance(ratio, (int, float)) and not isinstance(ratio, bool):
            if not ratio_allowed(base.method, float(ratio)):
                raise ScheduleError(f"ratio = {ratio!r}: {base.method!r} needs {ratio_range(base.method)}")
            base = base.with_ratio(float(ratio))
        else:
            ratios = list(ratio)
            if len(ratios) != base.steps:
                base = base.resample(len(ratios))
            base = base.with_ratio(ratios)
    elif schedule is None:
        base = base.with_ratio(0.0)
    options = PatchOptions(
        method=base.method, max_downsample=max_downsample, seed=seed, noise_alpha=float(noise_alpha),
        align_cfg=bool(align_cfg), use_rand=bool(use_rand), clock=clock, steps=steps,
        prune_variant=prune_variant, downsample_factor=downsample_factor, downsample_factor2=downsample_factor2,
        downsample_stop=downsample_stop,
        adaptive=adaptive, adaptive_depth=adaptive_depth, adaptive_cap=adaptive_cap,
    )
    remove_patch(unet)
    patch = DatoPatch(unet, base, options)
    patch.install(unet)
    return patch


def remove_patch(model: torch.nn.Module) -> bool:
    """Take the patch off ``model``'s UNet; ``True`` if there was one. Safe to call any time."""
    unet = find_unet(model)
    patch = getattr(unet, _ATTR, None)
    if patch is None:
        return False
    patch.uninstall()
    return True


def set_step(model: torch.nn.Module, step: int, total: int, pass_index: int = 0) -> None:
    """Tell a ``manual``-clock patch that the next UNet calls belong to ``step`` of ``total`` in ``pass_index``."""
    patch = get_patch(model)
    if patch is None:
        return
    if not (isinstance(step, int) and isinstance(total, int) and 0 <= step and total >= 1):
        raise ValueError(f"set_step: step = {step!r}, total = {total!r}; expected 0 <= step and total >= 1")
    patch.clock.set(step, total, pass_index)


def clear_step(model: torch.nn.Module) -> None:
    """Make a ``manual``-clock patch inert until the next :func:`set_step` (no run in progress)."""
    patch = get_patch(model)
    if patch is not None:
        patch.clock.clear()
        patch.calls.clear()

