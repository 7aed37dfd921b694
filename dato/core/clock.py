"""The step clock model: how many steps a pass's clock reports, and how many UNet calls fall on each.

The patch lays a schedule over the clock's steps, so every price of a schedule (the preview's expected
speed-up, the speed target, the search's cost) must count the same calls the sampler makes. The WebUI's
denoiser counts model calls (``on_cfg_denoiser``: ``denoiser.step`` of ``denoiser.total_steps``); the headless
samplers (:mod:`dato.evaluation.sampling`) count sampler steps. :func:`webui_clock` is what v1.10.1's samplers
do, read from their code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["PassClock", "PassSteps", "SECOND_ORDER_SAMPLERS", "TIMESTEP_SAMPLERS", "webui_clock"]

#: samplers whose ``second_order`` option is set in the WebUI (v1.10.1): two model calls a step
SECOND_ORDER_SAMPLERS = frozenset({"Heun", "DPM2", "DPM2 a", "DPM++ 2S a", "DPM++ SDE", "Restart"})
#: the WebUI's CompVis-style timestep samplers (``sd_samplers_timesteps``): one call per timestep after the first
TIMESTEP_SAMPLERS = frozenset({"DDIM", "DDIM CFG++", "PLMS"})


@dataclass(frozen=True)
class PassClock:
    """A pass's step clock: ``total`` clock steps (the schedule is laid over them) and ``calls[i]`` UNet calls (per
    cond/uncond batch) at clock step ``i``. A sampler that calls the model more often than its clock's total (the
    WebUI's DDIM at some step counts) has more entries than ``total``: the patch runs those calls full."""

    total: int
    calls: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.total < 1 or len(self.calls) < self.total or not any(self.calls):
            raise ValueError(f"a pass clock needs total >= 1, a call count for every step and one call; got {self}")

    @classmethod
    def counting_calls(cls, steps: int, second_order: bool = False) -> PassClock:
        """The WebUI's clock (``denoiser.step`` / ``total_steps``) for its k-diffusion samplers: one clock step per
        model call; a second-order sampler reports twice its steps and uses all but the last (its last step has
        one evaluation)."""
        if not second_order:
            return cls(steps, (1,) * steps)
        return cls(2 * steps, (1,) * (2 * steps - 1) + (0,))

    @classmethod
    def counting_steps(cls, steps: int, second_order: bool = False) -> PassClock:
        """The headless samplers' clock (``dato.evaluation.sampling``): one clock step per sampler step; a
        second-order step calls the UNet twice, the last once."""
        return cls(steps, (2,) * (steps - 1) + (1,) if second_order else (1,) * steps)

    @classmethod
    def with_calls(cls, total: int, calls: int, first: int = 1) -> PassClock:
        """One call per clock step for ``calls`` steps (``first`` on the first), whatever ``total`` says: a
        sampler whose loop runs another number of times than the step count it reports."""
        counts = [1] * max(calls, total)
        counts[calls:] = [0] * (len(counts) - calls)
        if counts:
            counts[0] = first if calls else 0
        return cls(total, tuple(counts))


@dataclass(frozen=True)
class PassSteps:
    """How a pass's sampler is started (the WebUI's ``setup_img2img_steps`` and ``launch_sampling``): ``launch``
    steps (what the denoiser counts to), the sampler's own step count ``n`` (its sigmas or timesteps are made
    for ``n``) and ``t_enc`` for an img2img-style pass (``None`` for txt2img's first pass)."""

    launch: int
    n: int
    t_enc: int | None = None


def webui_clock(sampler: str, steps: PassSteps, second_order: Callable[[str], bool] | None = None) -> PassClock:
    """The WebUI's step clock for one pass (v1.10.1, read from its samplers): the denoiser counts model calls up
    to ``launch`` (twice that for a second-order sampler, whose last step has one call); the timestep samplers
    (DDIM, PLMS) run ``len(range(0, 1000, 1000 // n)) - 1`` loop turns (at most ``t_enc - 1`` in img2img),
    whatever ``launch`` says, and PLMS's first turn calls the model twice."""
    if sampler in TIMESTEP_SAMPLERS:
        timesteps = len(range(0, 1000, max(1, 1000 // max(1, steps.n))))
        turns = (timesteps if steps.t_enc is None else min(steps.t_enc, timesteps)) - 1
        return PassClock.with_calls(steps.launch, max(0, turns), first=2 if sampler == "PLMS" else 1)
    is_second = second_order(sampler) if second_order is not None else sampler in SECOND_ORDER_SAMPLERS
    return PassClock.counting_calls(steps.launch, is_second)
