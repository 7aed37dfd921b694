"""DiP-GO-style gradient gates: learn which (step, branch level) a sampler can skip.

The unit is what the Schedule can express: the UNet's nested branch levels.
Level 0 is the shallowest branch (``input_blocks[0]``, ``output_blocks[n-1]``,
``out``), level ``j`` adds ``input_blocks[j]`` and ``output_blocks[n-1-j]``,
level ``n`` is the middle block. A step computes levels ``0..e-1`` for some
extent ``e``: ``e = n + 1`` is a full step, ``e = d + 1`` a cached step at
depth ``d``, ``e = 0`` whole-output reuse. So one gate per (step, level),
nested: ``keep[t][j] = g[t][0] * ... * g[t][j]``.

Relaxation: ``g = hard + sigmoid(logit) - sigmoid(logit).detach()`` with
``hard = sigmoid(logit) > 0.5`` (straight-through): the forward pass is
exactly the patched UNet of that schedule, the backward pass sees a smooth
gate. Forward hooks blend the feature each level feeds upwards with the copy
stored when it was last computed (``keep * fresh + (1 - keep) * stored``), as
:mod:`dato.patch` does with a Schedule. Every block still runs in training so
that the gradient of a closed gate (fresh minus stored) exists.

Training needs prompts only: targets are the full model's samples from the
same noise; the loss is the relative squared error of the gated sample to the
target plus ``sparsity_weight * max(0, expected MACs fraction - target)``.
Gradient checkpointing per UNet call keeps memory at one call's activations
plus the trajectory.

Post-processing (:func:`schedule_from_gates`) turns the learned logits into a
Schedule at an exact MACs budget: from the learned hard gates, close the
least-needed open levels (lowest logit) until the budget is met, then open the
most-needed closed levels that still fit, so the result lands within one
level's cost of the target.
"""

from __future__ import annotations

import json
import math
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint

from .layout import UNetLayout, block_modules, find_unet
from .macs import UNetCost
from .schedule import FULL, REUSE, Schedule, ScheduleError

__all__ = [
    "LevelCosts",
    "GateConfig",
    "GateResult",
    "GatedUNet",
    "GateCancelled",
    "GateJob",
    "train_gates",
    "schedule_from_gates",
    "action_from_extent",
]


class GateCancelled(Exception):
    """Gate training was cancelled."""


# --------------------------------------------------------------------------- costs
@dataclass(frozen=True)
class LevelCosts:
    """MACs of one UNet call split by nested level (per image): ``base`` runs at every step, even reuse."""

    base: float
    levels: tuple[float, ...]

    @classmethod
    def from_cost(cls, cost: UNetCost, height: int, width: int) -> LevelCosts:
        layout = cost.layout
        n = layout.max_depth + 1
        marks = [cost.call_macs(height, width, REUSE)]
        marks += [cost.call_macs(height, width, d) for d in range(n)]
        marks.append(cost.call_macs(height, width, FULL))
        return cls(marks[0], tuple(b - a for a, b in zip(marks, marks[1:], strict=False)))

    @property
    def full(self) -> float:
        return self.base + sum(self.levels)

    def step_macs(self, extent: int) -> float:
        return self.base + sum(self.levels[:extent])

    def schedule_macs(self, extents: Sequence[int]) -> float:
        return sum(self.step_macs(e) for e in extents)


def action_from_extent(extent: int, num_levels: int) -> int:
    """Open levels ``0..extent-1`` -> Schedule action (``REUSE``, depth, ``FULL``)."""
    if extent <= 0:
        return REUSE
    if extent >= num_levels:
        return FULL
    return extent - 1


def extent_from_action(action: int, num_levels: int) -> int:
    if action == FULL:
        return num_levels
    if action == REUSE:
        return 0
    return action + 1


# --------------------------------------------------------------------------- the gated UNet
class GatedUNet:
    """Forward hooks that blend each level's feature with its stored copy by a per-step gate.

    Use as a context manager around sampling; pass :meth:`__call__` as the
    sampler's UNet and :meth:`set_step` as its step callback. ``keep_for_step``
    maps a step index to the ``[levels]`` keep vector (with grad).
    """

    OUT = "out"

    def __init__(self, model: torch.nn.Module, keep_for_step: Callable[[int], torch.Tensor],
                 use_checkpoint: bool = True) -> None:
        from .patch import get_patch

        self.unet = find_unet(model)
        if get_patch(self.unet) is not None:
            raise RuntimeError("gate training needs the unpatched UNet: remove the dato patch first")
        self.layout = UNetLayout.from_unet(self.unet)
        self.num_levels = self.layout.max_depth + 2
        self.keep_for_step = keep_for_step
        self.use_checkpoint = use_checkpoint
        # role -> index of the keep entry that decides whether its output is fresh
        self.level_of_role = {self.layout.cached_feature_block(d): d + 1 for d in range(self.layout.max_depth + 1)}
        self.level_of_role[self.OUT] = 0
        self.roles = sorted(self.level_of_role, key=self.level_of_role.get)
        self.caches: dict[tuple[int, str], torch.Tensor] = {}
        self.step = 0
        self._ordinal = -1
        self._frame: dict[str, Any] | None = None
        self._hooks: list[Any] = []

    def __enter__(self) -> GatedUNet:
        blocks = block_modules(self.unet)
        for role in self.roles:
            self._hooks.append(blocks[role].register_forward_hook(self._hook(role)))
        return self

    def __exit__(self, *exc: Any) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()
        self.caches.clear()
        self._frame = None

    def reset(self) -> None:
        """Forget stored features (a new trajectory begins)."""
        self.caches.clear()
        self.step, self._ordinal = 0, -1

    def set_step(self, step: int, total: int | None = None) -> None:
        if step < self.step:
            self.caches.clear()
        self.step, self._ordinal = step, -1

    def __call__(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        self._ordinal += 1
        keep = self.keep_for_step(self.step).to(x.dtype)
        stored = [self.caches.get((self._ordinal, role)) for role in self.roles]
        complete = all(s is not None for s in stored)
        if self.use_checkpoint and complete and torch.is_grad_enabled():
            outs = checkpoint(self._call, x, timesteps, context, keep, *stored, use_reentrant=False)
        else:
            outs = self._call(x, timesteps, context, keep, *stored)
        for role, value in zip(self.roles, outs[1:], strict=True):
            self.caches[(self._ordinal, role)] = value
        return outs[0]

    def _call(self, x, timesteps, context, keep, *stored):
        self._frame = {"keep": keep, "stored": dict(zip(self.roles, stored, strict=True)), "new": {}}
        try:
            eps = self.unet(x, timesteps, context=context)
            new = self._frame["new"]
            return (eps, *[new[role] for role in self.roles])
        finally:
            self._frame = None

    def _hook(self, role: str):
        level = self.level_of_role[role]

        def hook(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
            frame = self._frame
            if frame is None:
                return None
            stored = frame["stored"].get(role)
            if stored is None or stored.shape != output.shape:
                blended = output
            else:
                m = frame["keep"][level]
                blended = m * output + (1 - m) * stored
            frame["new"][role] = blended
            return blended

        return hook


# --------------------------------------------------------------------------- training
@dataclass
class GateConfig:
    """Settings of one gate optimisation (see the module docstring)."""

    target_speedup: float = 3.0
    iterations: int = 100
    batch_size: int = 4
    pool: int = 16
    lr: float = 0.1
    sparsity_weight: float = 1.0
    init_logit: float = 1.0
    use_checkpoint: bool = True
    seed: int = 0
    relaxed_fraction: float = 0.0
    warm_start: str = "uniform"

    def validate(self, steps: int) -> None:
        checks = [
            ("target_speedup", self.target_speedup, self.target_speedup >= 1.0 and math.isfinite(self.target_speedup)),
            ("iterations", self.iterations, isinstance(self.iterations, int) and self.iterations >= 1),
            ("batch_size", self.batch_size, isinstance(self.batch_size, int) and self.batch_size >= 1),
            ("pool", self.pool, isinstance(self.pool, int) and self.pool >= self.batch_size),
            ("lr", self.lr, self.lr > 0 and math.isfinite(self.lr)),
            ("sparsity_weight", self.sparsity_weight, self.sparsity_weight >= 0),
            ("relaxed_fraction", self.relaxed_fraction, 0 <= self.relaxed_fraction <= 1),
            ("warm_start", self.warm_start, self.warm_start in ("uniform", "none")),
        ]
        for name, value, ok in checks:
            if not ok:
                raise ValueError(f"gate setting {name} = {value!r} is out of range")
        if steps < 2:
            raise ValueError(f"steps = {steps}: gates need at least 2 sampling steps")


@dataclass
class GateResult:
    """Learned logits ``[steps][levels]`` (step 0 is always computed) and the training curve."""

    logits: list[list[float]]
    costs: LevelCosts
    history: list[dict[str, float]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"logits": self.logits, "costs": {"base": self.costs.base, "levels": list(self.costs.levels)},
                "history": self.history, "info": self.info}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GateResult:
        costs = LevelCosts(float(data["costs"]["base"]), tuple(float(v) for v in data["costs"]["levels"]))
        return cls([list(map(float, row)) for row in data["logits"]], costs, list(data.get("history", [])),
                   dict(data.get("info", {})))

    def save(self, path: str | Path) -> Path:
        from .fileio import atomic_write_bytes

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, (json.dumps(self.to_dict(), indent=1) + "\n").encode())
        return path

    @classmethod
    def load(cls, path: str | Path) -> GateResult:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def schedule(self, target_speedup: float, name: str | None = None) -> Schedule:
        return schedule_from_gates(self.logits, self.costs, target_speedup, name=name, info=self.info)


def uniform_start(costs: LevelCosts, steps: int, target_speedup: float) -> Schedule:
    """DeepCache's uniform schedule (a full step every ``n``, depth 0 between) closest to the target speed-up."""
    best, best_gap = None, math.inf
    n_levels = len(costs.levels)
    for interval in range(2, steps + 1):
        candidate = Schedule.uniform(steps, interval, 0)
        extents = [extent_from_action(a, n_levels) for a in candidate.cache]
        gap = abs(math.log(costs.full * steps / costs.schedule_macs(extents) / target_speedup))
        if gap < best_gap - 1e-12:
            best, best_gap = candidate, gap
    return best


class GateTrainer:
    """Optimises gate logits for one model and sampler. ``backend`` is a
    :class:`dato.search.standalone.StandaloneBackend` (or anything with its
    ``unet``, ``steps``, ``sampler``, ``null_context``, ``encode`` and
    ``sample_latents(pairs, unet=, on_step=, grad=)``)."""

    def __init__(self, backend: Any, prompts: Sequence[str], config: GateConfig, costs: LevelCosts) -> None:
        config.validate(backend.steps)
        if not prompts:
            raise ValueError("gate training needs at least one prompt")
        self.backend, self.config, self.costs = backend, config, costs
        self.steps = backend.steps
        self.num_levels = len(costs.levels)
        self.pairs = [(prompts[i % len(prompts)], config.seed * 100_003 + i) for i in range(config.pool)]
        gen = torch.Generator().manual_seed(config.seed)
        self.order = torch.randperm(config.pool, generator=gen).tolist()
        self.start_schedule: Schedule | None = None
        self.logits = self.initial_logits().requires_grad_(True)
        self.optimizer = torch.optim.Adam([self.logits], lr=config.lr)
        weights = torch.tensor(costs.levels, dtype=torch.float64)
        self.level_fraction = (weights / costs.full).float()
        self.base_fraction = costs.base / costs.full
        self._targets: dict[int, torch.Tensor] = {}
        self._noise = torch.Generator().manual_seed(config.seed + 1)
        self.training = True
        self.relaxed = False
        self.history: list[dict[str, float]] = []

    def initial_logits(self) -> torch.Tensor:
        """All gates open (``warm_start="none"``), or open exactly where the uniform schedule closest to
        the target speed-up computes (``"uniform"``, DeepCache's every-N at depth 0..2)."""
        c = float(self.config.init_logit)
        logits = torch.full((self.steps, self.num_levels), c)
        if self.config.warm_start == "none":
            return logits
        start = uniform_start(self.costs, self.steps, self.config.target_speedup)
        for t, action in enumerate(start.cache):
            extent = extent_from_action(action, self.num_levels)
            logits[t, extent:] = -c
        self.start_schedule = start
        return logits

    # gates ---------------------------------------------------------------
    def keep(self, step: int) -> torch.Tensor:
        """Nested keep vector of ``step``: stochastic hard gates forward, sigmoid gradient backward.

        The hard gate is drawn with logistic noise (Gumbel-sigmoid), so gates
        that the sparsity loss pushes down together still close at different
        iterations and the consistency loss can tell the needed from the idle.
        """
        if step == 0:
            return torch.ones(self.num_levels)
        soft = torch.sigmoid(self.logits[step])
        if self.relaxed:
            return torch.cumprod(soft, 0)
        if self.training:
            u = torch.rand(self.num_levels, generator=self._noise).clamp(1e-6, 1 - 1e-6)
            hard = ((self.logits[step].detach() + torch.log(u) - torch.log1p(-u)) > 0).to(soft.dtype)
        else:
            hard = (soft > 0.5).to(soft.dtype)
        return torch.cumprod(hard + soft - soft.detach(), 0)

    def expected_fraction(self) -> torch.Tensor:
        """Soft MACs of the gated schedule as a fraction of all-full (step 0 counts as full)."""
        soft_keep = torch.cumprod(torch.sigmoid(self.logits[1:]), 1)
        per_step = self.base_fraction + (soft_keep * self.level_fraction).sum(1)
        return (1.0 + per_step.sum()) / self.steps

    def hard_extents(self) -> list[int]:
        extents = [self.num_levels]
        for t in range(1, self.steps):
            row = (torch.sigmoid(self.logits[t]) > 0.5).tolist()
            e = 0
            while e < self.num_levels and row[e]:
                e += 1
            extents.append(e)
        return extents

    # sampling --------------------------------------------------------------
    def _sample(self, indices: Sequence[int], unet: Callable | None, on_step: Callable | None,
                grad: bool) -> torch.Tensor:
        return self.backend.sample_latents([self.pairs[i] for i in indices], unet=unet, on_step=on_step, grad=grad)

    def targets(self, indices: Sequence[int]) -> torch.Tensor:
        missing = [i for i in indices if i not in self._targets]
        if missing:
            out = self._sample(missing, None, None, grad=False)
            for i, x in zip(missing, out, strict=True):
                self._targets[i] = x.detach()
        return torch.stack([self._targets[i] for i in indices])

    def train_step(self, indices: Sequence[int]) -> dict[str, float]:
        """One optimiser step on the pairs ``indices``; returns the loss terms before the step.

        The backward pass runs while the hooks are still installed: checkpointed
        calls recompute their forward through them.
        """
        target = self.targets(indices)
        self.optimizer.zero_grad()
        with GatedUNet(self.backend.unet, self.keep, self.config.use_checkpoint) as gated:
            out = self._sample(indices, gated, gated.set_step, grad=True)
            consistency = ((out.float() - target.float()) ** 2).mean() / (target.float() ** 2).mean().clamp_min(1e-12)
            fraction = self.expected_fraction()
            sparsity = torch.relu(fraction - 1.0 / self.config.target_speedup)
            total = consistency + self.config.sparsity_weight * sparsity
            total.backward()
        hard_fraction = self.costs.schedule_macs(self.hard_extents()) / (self.costs.full * self.steps)
        self.optimizer.step()
        return {"loss": total.item(), "consistency": consistency.item(), "soft_fraction": fraction.item(),
                "hard_speedup": 1.0 / hard_fraction}

    def batch(self, iteration: int) -> list[int]:
        size, pool = self.config.batch_size, self.config.pool
        start = (iteration * size) % pool
        return [self.order[(start + k) % pool] for k in range(size)]

    def run(self, progress: Callable[[dict[str, Any]], None] | None = None,
            should_stop: Callable[[], bool] | None = None,
            step_context: Callable[[], AbstractContextManager] | None = None) -> GateResult:
        """Train; ``step_context()`` wraps each iteration (a host's model lock, taken before the hooks go on)."""
        started = time.perf_counter()
        for it in range(self.config.iterations):
            if should_stop is not None and should_stop():
                raise GateCancelled()
            self.relaxed = it < self.config.iterations * self.config.relaxed_fraction
            with step_context() if step_context is not None else nullcontext():
                stats = self.train_step(self.batch(it))
            stats["relaxed"] = float(self.relaxed)
            stats["iteration"] = it + 1
            stats["seconds"] = time.perf_counter() - started
            self.history.append(stats)
            if progress is not None:
                progress(stats)
        return self.result()

    def result(self) -> GateResult:
        return GateResult([[float(v) for v in row] for row in self.logits.detach().tolist()], self.costs,
                          list(self.history), {"generator": "gates", "config": asdict(self.config),
                                               "steps": self.steps, "sampler": self.backend.sampler})


def train_gates(backend: Any, prompts: Sequence[str], config: GateConfig | None = None, *,
                progress: Callable[[dict[str, Any]], None] | None = None,
                should_stop: Callable[[], bool] | None = None, context_len: int | None = None,
                step_context: Callable[[], AbstractContextManager] | None = None) -> GateResult:
    """Optimise gates for ``backend``'s model and sampler on ``prompts`` (see the module docstring).

    ``step_context()`` is entered around every training iteration, including the
    full-model targets it samples: the WebUI passes its queue lock so that user
    generations and training interleave instead of colliding.
    """
    from .macs import trace_unet_cost

    config = config or GateConfig()
    if context_len is None:
        context_len = int(backend.null_context(1).shape[1]) if backend.null_context is not None \
            else int(backend.encode([prompts[0]]).shape[1])
    cost = trace_unet_cost(backend.unet, context_len=context_len)
    costs = LevelCosts.from_cost(cost, backend.latent_shape[-2], backend.latent_shape[-1])
    unet = find_unet(backend.unet)
    previous = [p.requires_grad for p in unet.parameters()]
    unet.requires_grad_(False)
    try:
        return GateTrainer(backend, prompts, config, costs).run(progress, should_stop, step_context)
    finally:
        for p, flag in zip(unet.parameters(), previous, strict=True):
            p.requires_grad_(flag)


# --------------------------------------------------------------------------- post-processing
def schedule_from_gates(logits: Sequence[Sequence[float]], costs: LevelCosts, target_speedup: float, *,
                        name: str | None = None, info: dict[str, Any] | None = None) -> Schedule:
    """The Schedule with MACs at most ``full / target_speedup``, within one level's cost of it.

    Start from the learned hard gates (open where ``logit > 0``, nested, step 0
    full). Over budget: close, least needed first (lowest logit), each step's
    deepest open level. Then fill the slack: open, most needed first, each
    step's shallowest closed level whose cost still fits. What is left of the
    budget is smaller than any level that could still be opened.
    """
    steps = len(logits)
    num_levels = len(costs.levels)
    if steps < 2 or any(len(row) != num_levels for row in logits):
        raise ScheduleError(f"gate logits must be [steps >= 2][{num_levels}], got {steps} rows")
    if isinstance(target_speedup, bool) or not isinstance(target_speedup, (int, float)) \
            or not math.isfinite(target_speedup) or target_speedup < 1:
        raise ScheduleError(f"target_speedup = {target_speedup!r}, expected a number >= 1")
    budget = costs.full * steps / target_speedup * (1 + 1e-12)
    floor = costs.full + (steps - 1) * costs.base
    if floor > budget:
        reachable = math.floor(costs.full * steps / floor * 100) / 100  # rounded down: never promise more
        raise ScheduleError(f"target_speedup = {target_speedup:g} is out of reach: at most {reachable:.2f}x "
                            "with step 0 full and every other step reused")
    extents = [num_levels] + [_leading_open(row) for row in logits[1:]]
    total = costs.schedule_macs(extents)
    while total > budget:
        t = min((t for t in range(1, steps) if extents[t] > 0), key=lambda t: (logits[t][extents[t] - 1], t))
        extents[t] -= 1
        total -= costs.levels[extents[t]]
    while True:
        fits = [t for t in range(1, steps) if extents[t] < num_levels and total + costs.levels[extents[t]] <= budget]
        if not fits:
            break
        t = max(fits, key=lambda t: (logits[t][extents[t]], -t))
        total += costs.levels[extents[t]]
        extents[t] += 1
    actions = tuple(action_from_extent(e, num_levels) for e in extents)
    label = name or f"gates-x{target_speedup:g}"
    schedule = Schedule(name=label, cache=actions, ratio=(0.0,) * steps, method="none",
                        description=f"DiP-GO-style gradient gates at {target_speedup:g}x fewer UNet MACs")
    provenance = {**(info or {}), "generator": "gates", "target_speedup": float(target_speedup),
                  "macs_speedup": costs.full * steps / total}
    return schedule.with_provenance(**provenance)


def _leading_open(row: Sequence[float]) -> int:
    extent = 0
    while extent < len(row) and row[extent] > 0:
        extent += 1
    return extent


# --------------------------------------------------------------------------- background job
class GateJob:
    """:func:`train_gates` in a daemon thread with progress, ETA and cancel (like the search job)."""

    def __init__(self, backend: Any, prompts: Sequence[str], config: GateConfig,
                 on_done: Callable[[GateResult], None] | None = None,
                 step_context: Callable[[], AbstractContextManager] | None = None) -> None:
        self._backend = backend
        self.step_context = step_context
        self.prompts = list(prompts)
        self.config = config
        self.on_done = on_done
        self._cancel = threading.Event()
        self._thread: threading.Thread | None = None
        self.state = "pending"
        self.latest: dict[str, Any] = {}
        self.result: GateResult | None = None
        self.error: str | None = None
        self.started: float | None = None

    def start(self) -> GateJob:
        if self._thread is not None:
            raise RuntimeError("this gate job was already started")
        self.started = time.time()
        self.state = "running"
        self._thread = threading.Thread(target=self._main, name="dato-gates", daemon=True)
        self._thread.start()
        return self

    def _main(self) -> None:
        try:
            backend = self._backend() if callable(self._backend) and not hasattr(self._backend, "unet") \
                else self._backend
            self.result = train_gates(backend, self.prompts, self.config, progress=self._progress,
                                      should_stop=self._cancel.is_set, step_context=self.step_context)
            if self.on_done is not None:
                self.on_done(self.result)
            self.state = "done"
        except GateCancelled:
            self.state = "cancelled"
        except Exception as exc:  # noqa: BLE001 - reported through status()
            self.error = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            self.state = "failed"

    def _progress(self, stats: dict[str, Any]) -> None:
        self.latest = dict(stats)

    def cancel(self) -> None:
        self._cancel.set()

    def wait(self, timeout: float | None = None) -> bool:
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def status(self) -> dict[str, Any]:
        done = int(self.latest.get("iteration", 0))
        eta = None
        if done and self.state == "running":
            eta = self.latest["seconds"] / done * (self.config.iterations - done)
        return {"state": self.state, "running": self.running, "iteration": done,
                "iterations": self.config.iterations, "eta_seconds": eta, "error": self.error,
                "latest": dict(self.latest), "config": asdict(self.config)}
