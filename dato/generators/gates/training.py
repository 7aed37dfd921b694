"""Gate training: targets from the full model, straight-through gates, MACs hinge; the background job."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from dato.core.layout import find_unet
from dato.core.schedule import Schedule
from dato.generators.gates.gated_unet import GatedUNet
from dato.generators.gates.levels import LevelCosts, extent_from_action, schedule_from_gates, uniform_start
from dato.generators.jobs import BackgroundJob


class GateCancelled(Exception):
    """Gate training was cancelled."""


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
        from dato.core.fileio import atomic_write_bytes

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, (json.dumps(self.to_dict(), indent=1) + "\n").encode())
        return path

    @classmethod
    def load(cls, path: str | Path) -> GateResult:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def schedule(self, target_speedup: float, name: str | None = None) -> Schedule:
        return schedule_from_gates(self.logits, self.costs, target_speedup, name=name, info=self.info)


class GateTrainer:
    """Optimises gate logits for one model and sampler. ``backend`` is a
    :class:`dato.evaluation.backends.StandaloneBackend` (or anything with its
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
    from dato.core.macs import trace_unet_cost

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


# --------------------------------------------------------------------------- background job
class GateJob(BackgroundJob):
    """:func:`train_gates` in a daemon thread with progress, ETA and cancel (see :class:`BackgroundJob`)."""

    cancelled_exceptions = (GateCancelled,)

    def __init__(self, backend: Any, prompts: Sequence[str], config: GateConfig,
                 on_done: Callable[[GateResult], None] | None = None,
                 step_context: Callable[[], AbstractContextManager] | None = None) -> None:
        super().__init__(backend, name="dato-gates")
        self.step_context = step_context
        self.prompts = list(prompts)
        self.config = config
        self.on_done = on_done
        self.latest: dict[str, Any] = {}
        self.result: GateResult | None = None

    def work(self, backend: Any) -> None:
        self.result = train_gates(backend, self.prompts, self.config, progress=self._progress,
                                  should_stop=self.cancel_requested, step_context=self.step_context)
        if self.on_done is not None:
            self.on_done(self.result)

    def _progress(self, stats: dict[str, Any]) -> None:
        self.latest = dict(stats)

    def status(self) -> dict[str, Any]:
        done = int(self.latest.get("iteration", 0))
        eta = None
        if done and self.state == "running":
            eta = self.latest["seconds"] / done * (self.config.iterations - done)
        return {"state": self.state, "running": self.running, "iteration": done,
                "iterations": self.config.iterations, "eta_seconds": eta, "error": self.error,
                "latest": dict(self.latest), "config": asdict(self.config)}


class GateGenerator:
    """Gate training as a :class:`~dato.generators.base.ScheduleGenerator`: one training run per target.

    Args:
        prompts: training prompts.
        config: training settings; its ``target_speedup`` is replaced by each target.
    """

    name = "gates"

    def __init__(self, prompts: Sequence[str], config: GateConfig | None = None) -> None:
        self.prompts = list(prompts)
        self.config = config or GateConfig()

    def schedules(self, backend: Any, targets: Sequence[float], log: Callable[[str], None] = print
                  ) -> dict[float, Schedule]:
        out = {}
        for target in targets:
            result = train_gates(backend, self.prompts, replace(self.config, target_speedup=target))
            out[target] = result.schedule(target)
            log(f"gates {target:g}x: {out[target].preview()} (loss {result.history[0]['loss']:.4f} -> "
                f"{result.history[-1]['loss']:.4f})")
        return out
