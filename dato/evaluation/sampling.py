"""A standalone sampler for ldm eps-prediction UNets, shaped like the WebUI's.

The benchmark, the trained fixture and the headless search need to sample
without the WebUI, yet what they measure must transfer to it. So the samplers
here reproduce what A1111 feeds the UNet, call for call:

- ``"euler"`` and ``"heun"``: k-diffusion's samplers on the discrete eps
  wrapper (``CompVisDenoiser``, quantisation off, as A1111 ships it): sigmas
  uniformly spaced in timestep (no Karras), the UNet sees ``x / sqrt(sigma^2+1)``
  and a *float* timestep interpolated in log-sigma.
- ``"euler_a"``: k-diffusion's Euler ancestral (eta 1), A1111's default; its
  noise comes from ``generator``.
- ``"ddim"``: ldm's DDIM with eta 0 on uniform *integer* timesteps.

Classifier-free guidance batches ``[cond..., uncond...]`` in one call (A1111's
order) or, with ``cfg_batch=False``, calls cond then uncond separately, as
A1111 does for long prompts; acceleration code must give the same answer both
ways, which is why both exist here.

``on_step(i, n)`` runs at the start of step ``i`` before any UNet call of that
step: the engine's step clock must not count UNet calls (heun makes two a step).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

__all__ = ["SAMPLERS", "sd_alphas_cumprod", "sample", "euler_sigmas", "ddim_timesteps"]

SAMPLERS = ("euler", "euler_a", "heun", "ddim")

StepCallback = Callable[[int, int], None]
EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def sd_alphas_cumprod(
    num_train_timesteps: int = 1000, linear_start: float = 0.00085, linear_end: float = 0.012
) -> torch.Tensor:
    """SD1.x's noise schedule ("scaled linear": betas linear in sqrt), float32 like SD's buffer.

    Computed in float64 first, as ldm's ``make_beta_schedule`` does, so the
    values match the WebUI's ``alphas_cumprod`` to the last float32 bit.
    """
    if num_train_timesteps < 2:
        raise ValueError(f"num_train_timesteps must be >= 2, got {num_train_timesteps}")
    if not 0 < linear_start <= linear_end < 1:
        raise ValueError(f"need 0 < linear_start <= linear_end < 1, got {linear_start}, {linear_end}")
    betas = torch.linspace(linear_start**0.5, linear_end**0.5, num_train_timesteps, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0).to(torch.float32)


# --- schedules


class _DiscreteSchedule:
    """k-diffusion's ``DiscreteSchedule`` maths (sigma <-> fractional timestep, log-sigma interpolation)."""

    def __init__(self, alphas_cumprod: torch.Tensor) -> None:
        sigmas = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5
        self.log_sigmas = sigmas.log()

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        low, high, w = t.floor().long(), t.ceil().long(), t.frac()
        return ((1 - w) * self.log_sigmas[low] + w * self.log_sigmas[high]).exp()

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        log_sigma = sigma.log()
        dists = log_sigma - self.log_sigmas[:, None]
        low_idx = dists.ge(0).cumsum(dim=0).argmax(dim=0).clamp(max=self.log_sigmas.shape[0] - 2)
        high_idx = low_idx + 1
        low, high = self.log_sigmas[low_idx], self.log_sigmas[high_idx]
        w = ((low - log_sigma) / (low - high)).clamp(0, 1)
        return ((1 - w) * low_idx + w * high_idx).view(sigma.shape)


def euler_sigmas(alphas_cumprod: torch.Tensor, steps: int) -> torch.Tensor:
    """``steps + 1`` sigmas, uniform in timestep from the last to 0, then 0 (k-diffusion ``get_sigmas``)."""
    schedule = _DiscreteSchedule(alphas_cumprod.to(torch.float32))
    t = torch.linspace(len(alphas_cumprod) - 1, 0, steps, dtype=torch.float32)
    return torch.cat([schedule.t_to_sigma(t), t.new_zeros(1)])


def ddim_timesteps(num_train_timesteps: int, steps: int) -> torch.Tensor:
    """ldm's "uniform" DDIM timesteps ``0, c, 2c, ... + 1`` with ``c = T // steps``, ascending.

    ldm's ``range(0, T, c)`` yields more than ``steps`` values when ``steps``
    does not divide ``T`` (30 steps -> 31); here exactly ``steps`` are taken so
    that ``on_step`` counts what the caller asked for. Equal to ldm whenever
    ``steps`` divides ``T``.
    """
    return torch.arange(steps, dtype=torch.long) * (num_train_timesteps // steps) + 1


# --- guidance


def _match_batch(context: torch.Tensor, batch: int, name: str) -> torch.Tensor:
    """Broadcast a batch-1 context to ``batch``; anything else must already match."""
    if context.dim() != 3:
        raise ValueError(f"{name} must be [batch, tokens, dim], got shape {tuple(context.shape)}")
    if context.shape[0] == batch:
        return context
    if context.shape[0] == 1:
        return context.expand(batch, -1, -1)
    raise ValueError(f"{name} has batch {context.shape[0]}, noise has batch {batch} (use 1 or {batch})")


def _guided_eps(
    unet: Callable[..., torch.Tensor],
    cond: torch.Tensor,
    uncond: torch.Tensor | None,
    cfg_scale: float,
    cfg_batch: bool,
) -> EpsFn:
    """``eps(x, t)`` with classifier-free guidance, calling the UNet the way A1111 does."""

    def eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ts = t.expand(x.shape[0])
        if uncond is None:
            return unet(x, ts, context=cond)
        if cfg_batch:
            out = unet(torch.cat([x, x]), torch.cat([ts, ts]), context=torch.cat([cond, uncond]))
            e_cond, e_uncond = out.chunk(2)
        else:
            e_cond = unet(x, ts, context=cond)
            e_uncond = unet(x, ts, context=uncond)
        return e_uncond + (e_cond - e_uncond) * cfg_scale

    return eps


# --- samplers


def _denoiser(
    eps: EpsFn, schedule: _DiscreteSchedule
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """k-diffusion's ``DiscreteEpsDDPMDenoiser``: x0 estimate from eps at noise level sigma."""

    def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        c_in = 1 / (sigma**2 + 1) ** 0.5
        t = schedule.sigma_to_t(sigma.reshape(1)).to(x.dtype)
        return x - eps(x * c_in.to(x.dtype), t) * sigma.to(x.dtype)

    return denoise


def _run_euler(denoise, x: torch.Tensor, sigmas: torch.Tensor, on_step: StepCallback | None) -> torch.Tensor:
    n = len(sigmas) - 1
    for i in range(n):
        if on_step is not None:
            on_step(i, n)
        d = (x - denoise(x, sigmas[i])) / sigmas[i]
        x = x + d * (sigmas[i + 1] - sigmas[i])
    return x


def _run_euler_ancestral(
    denoise, x: torch.Tensor, sigmas: torch.Tensor, on_step: StepCallback | None, generator: torch.Generator
) -> torch.Tensor:
    n = len(sigmas) - 1
    for i in range(n):
        if on_step is not None:
            on_step(i, n)
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoise(x, sigma)
        sigma_up = torch.minimum(sigma_next, (sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2) ** 0.5)
        sigma_down = (sigma_next**2 - sigma_up**2) ** 0.5
        x = x + (x - denoised) / sigma * (sigma_down - sigma)
        if sigma_next > 0:
            noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=generator.device)
            x = x + noise.to(x.device) * sigma_up
    return x


def _run_heun(denoise, x: torch.Tensor, sigmas: torch.Tensor, on_step: StepCallback | None) -> torch.Tensor:
    n = len(sigmas) - 1
    for i in range(n):
        if on_step is not None:
            on_step(i, n)
        d = (x - denoise(x, sigmas[i])) / sigmas[i]
        dt = sigmas[i + 1] - sigmas[i]
        if sigmas[i + 1] == 0:
            x = x + d * dt
            continue
        x_2 = x + d * dt
        d_2 = (x_2 - denoise(x_2, sigmas[i + 1])) / sigmas[i + 1]
        x = x + (d + d_2) / 2 * dt
    return x


def _run_ddim(
    eps: EpsFn, x: torch.Tensor, alphas_cumprod: torch.Tensor, steps: int, on_step: StepCallback | None
) -> torch.Tensor:
    timesteps = ddim_timesteps(len(alphas_cumprod), steps)
    alphas_cumprod = alphas_cumprod.cpu()  # read on the host once (no float64 on MPS, no sync per step)
    a = alphas_cumprod[timesteps].to(torch.float64)
    a_prev = torch.cat([alphas_cumprod[:1].to(torch.float64), a[:-1]])
    for i in range(steps):
        if on_step is not None:
            on_step(i, steps)
        k = steps - 1 - i
        e = eps(x, timesteps[k].reshape(1).to(x.device))
        pred_x0 = (x - e * math.sqrt(1 - a[k])) / math.sqrt(a[k])
        x = pred_x0 * math.sqrt(a_prev[k]) + e * math.sqrt(1 - a_prev[k])
    return x


# --- public entry


def _validate(
    noise: torch.Tensor, steps: int, sampler: str, cfg_scale: float, alphas_cumprod: torch.Tensor
) -> None:
    """Reject bad arguments with a message naming the argument, before any UNet work."""
    if not isinstance(noise, torch.Tensor) or noise.dim() != 4:
        raise ValueError(
            f"noise must be a [batch, channels, height, width] tensor, "
            f"got {getattr(noise, 'shape', type(noise).__name__)}"
        )
    if not noise.is_floating_point():
        raise ValueError(f"noise must be a floating-point tensor, got {noise.dtype}")
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; expected one of {', '.join(SAMPLERS)}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    if alphas_cumprod.dim() != 1 or len(alphas_cumprod) < 2:
        raise ValueError(
            f"alphas_cumprod must be 1-D with >= 2 entries, got shape {tuple(alphas_cumprod.shape)}"
        )
    if not bool(((alphas_cumprod > 0) & (alphas_cumprod < 1)).all()):
        raise ValueError("alphas_cumprod values must lie in (0, 1)")
    if steps > len(alphas_cumprod):
        raise ValueError(f"steps={steps} exceeds the {len(alphas_cumprod)} training timesteps")
    if not math.isfinite(cfg_scale):
        raise ValueError(f"cfg_scale must be finite, got {cfg_scale}")


def sample(
    unet: Callable[..., torch.Tensor],
    noise: torch.Tensor,
    cond: torch.Tensor,
    uncond: torch.Tensor | None = None,
    *,
    steps: int,
    sampler: str = "euler",
    cfg_scale: float = 7.5,
    alphas_cumprod: torch.Tensor | None = None,
    on_step: StepCallback | None = None,
    cfg_batch: bool = True,
    generator: torch.Generator | None = None,
    grad: bool = False,
) -> torch.Tensor:
    """Sample from an eps-prediction UNet, starting from unit-variance ``noise``.

    ``unet(x, timesteps, context=...)`` is an ldm ``UNetModel`` or anything with
    that signature. ``cond``/``uncond`` are cross-attention contexts
    ``[batch or 1, tokens, dim]``; without ``uncond`` there is no guidance.
    ``alphas_cumprod`` defaults to SD's schedule. ``generator`` feeds only the
    ancestral sampler's noise (a fixed seed when omitted, so every call is
    deterministic). Returns the final latent, same shape and dtype as ``noise``.
    ``grad=True`` keeps autograd on through every step (gate training backpropagates
    through the whole trajectory); by default sampling runs under ``no_grad``.
    """
    with torch.set_grad_enabled(grad):
        return _sample(unet, noise, cond, uncond, steps=steps, sampler=sampler, cfg_scale=cfg_scale,
                       alphas_cumprod=alphas_cumprod, on_step=on_step, cfg_batch=cfg_batch, generator=generator)


def _sample(unet, noise, cond, uncond, *, steps, sampler, cfg_scale, alphas_cumprod, on_step, cfg_batch,
            generator) -> torch.Tensor:
    ac = sd_alphas_cumprod() if alphas_cumprod is None else torch.as_tensor(alphas_cumprod)
    _validate(noise, steps, sampler, float(cfg_scale), ac)
    ac = ac.to(device=noise.device, dtype=torch.float32)
    batch = noise.shape[0]
    cond = _match_batch(cond.to(noise.dtype), batch, "cond")
    if uncond is not None:
        uncond = _match_batch(uncond.to(noise.dtype), batch, "uncond")
        if uncond.shape[1:] != cond.shape[1:] and cfg_batch:
            raise ValueError(
                f"cond {tuple(cond.shape)} and uncond {tuple(uncond.shape)} differ in tokens/dim; "
                "pad them or pass cfg_batch=False"
            )
    eps = _guided_eps(unet, cond, uncond, float(cfg_scale), cfg_batch)

    if sampler == "ddim":
        return _run_ddim(eps, noise, ac, steps, on_step)
    sigmas = euler_sigmas(ac, steps).to(noise.device)
    denoise = _denoiser(eps, _DiscreteSchedule(ac))
    x = noise * sigmas[0].to(noise.dtype)
    if sampler == "euler":
        return _run_euler(denoise, x, sigmas, on_step)
    if sampler == "heun":
        return _run_heun(denoise, x, sigmas, on_step)
    gen = generator if generator is not None else torch.Generator(device=noise.device).manual_seed(0)
    return _run_euler_ancestral(denoise, x, sigmas, on_step, gen)
