"""What a search measures: samples from a backend, turned into quality and cost.

A *backend* makes images for a schedule (the standalone sampler in
:mod:`dato.evaluation.backends`, or the WebUI's own processing in the Search
tab); everything here is independent of where the samples came from:

* **fidelity** to the unaccelerated sample of the same prompt and seed: PSNR
  or SSIM in pixel space (when the backend decodes images), or the latent
  signal-to-error ratio ``-20 log10(relative L2)`` in dB (always available);
* **ImageReward** of each (prompt, image) pair, averaged — prompts and images
  travel together in one :class:`Samples`, so they cannot drift apart;
* **cost**: analytic UNet MACs relative to the unaccelerated run (noise-free),
  or measured wall time (median over repeats) relative to the baseline's.

Every quality value is "higher is better"; the search minimises ``-quality``
and ``cost``.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import numpy as np
import torch

from dato.evaluation.backends import SampleBackend, Samples  # noqa: F401  (re-exported)
from dato.evaluation.metrics import psnr, ssim

__all__ = [
    "FIDELITY_METRICS",
    "QUALITY_CHOICES",
    "COST_CHOICES",
    "Samples",
    "SampleBackend",
    "Scorer",
    "fidelity",
    "imagereward_quality",
    "to_pil",
    "PSNR_CAP",
]

FIDELITY_METRICS = ("psnr", "ssim", "snr")
QUALITY_CHOICES = ("fidelity", "imagereward")
COST_CHOICES = ("macs", "time")
PSNR_CAP = 100.0  # dB given to an image identical to its reference, so every objective stays finite


class Scorer(Protocol):
    """ImageReward's interface: ``score(prompt, [PIL images]) -> list of rewards`` (a float for one image)."""

    def score(self, prompt: str, images: list) -> Any: ...


# ------------------------------------------------------------------ fidelity
def _snr_db(x: torch.Tensor, ref: torch.Tensor) -> float:
    err = (x - ref).flatten().norm().item()
    scale = ref.flatten().norm().item()
    if err == 0.0:
        return PSNR_CAP
    if scale == 0.0:
        return -PSNR_CAP
    return min(PSNR_CAP, -20.0 * math.log10(err / scale))


def _relative_l2(x: torch.Tensor, ref: torch.Tensor) -> float:
    scale = ref.flatten().norm().item()
    return (x - ref).flatten().norm().item() / scale if scale > 0 else float("inf")


def fidelity(samples: Samples, reference: Samples, metric: str) -> tuple[float, dict[str, float]]:
    """Mean per-sample fidelity of ``samples`` to ``reference`` (same pairs); ``(quality, details)``."""
    if metric not in FIDELITY_METRICS:
        raise ValueError(f"fidelity metric = {metric!r}, expected one of {', '.join(FIDELITY_METRICS)}")
    if samples.pairs != reference.pairs:
        raise ValueError("samples and reference were made from different (prompt, seed) pairs")
    details: dict[str, float] = {}
    rel = [_relative_l2(a, b) for a, b in zip(samples.latents, reference.latents, strict=True)]
    details["latent_rel_l2"] = float(np.mean(rel))
    snr = [_snr_db(a, b) for a, b in zip(samples.latents, reference.latents, strict=True)]
    details["latent_snr_db"] = float(np.mean(snr))
    if samples.images is not None and reference.images is not None:
        details["psnr_db"] = float(np.mean([_psnr(a, b) for a, b in zip(samples.images, reference.images,
                                                                           strict=True)]))
        if metric == "ssim":
            details["ssim"] = float(np.mean([_ssim(a, b) for a, b in zip(samples.images, reference.images,
                                                                           strict=True)]))
    elif metric in ("psnr", "ssim"):
        raise ValueError(f"fidelity metric {metric!r} needs decoded images; this backend makes latents only "
                         "(use 'snr', the latent-space signal-to-error ratio)")
    key = {"psnr": "psnr_db", "ssim": "ssim", "snr": "latent_snr_db"}[metric]
    return details[key], details


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of two images in [0, 1], capped at ``PSNR_CAP`` (identical images give the cap, not inf)."""
    value = float(psnr(a.unsqueeze(0), b.unsqueeze(0), data_range=1.0))
    return min(PSNR_CAP, value) if math.isfinite(value) or value > 0 else -PSNR_CAP


def _ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(ssim(a.unsqueeze(0), b.unsqueeze(0), data_range=1.0))


# --------------------------------------------------------------- ImageReward
def to_pil(images: torch.Tensor) -> list:
    """``(B, 3, H, W)`` floats in [0, 1] -> PIL images."""
    from PIL import Image

    arr = (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    if arr.shape[-1] == 1:
        return [Image.fromarray(a[..., 0], mode="L").convert("RGB") for a in arr]
    return [Image.fromarray(a) for a in arr]


def imagereward_quality(samples: Samples, scorer: Scorer) -> tuple[float, dict[str, Any]]:
    """Mean reward over the samples, each image scored with the prompt it was made from."""
    if samples.images is None:
        raise ValueError("ImageReward needs decoded images; this backend makes latents only "
                         "(choose the fidelity objective)")
    pil = to_pil(samples.images)
    by_prompt: dict[str, list[int]] = {}
    for i, (prompt, _seed) in enumerate(samples.pairs):
        by_prompt.setdefault(prompt, []).append(i)
    rewards = np.zeros(len(pil))
    with torch.no_grad():
        for prompt, idx in by_prompt.items():
            out = scorer.score(prompt, [pil[i] for i in idx])
            values = np.atleast_1d(np.asarray(out, dtype=float)).reshape(-1)
            if values.shape[0] != len(idx):
                raise ValueError(f"scorer returned {values.shape[0]} rewards for {len(idx)} images")
            rewards[idx] = values
    if not np.all(np.isfinite(rewards)):
        raise ValueError("scorer returned a non-finite reward")
    return float(rewards.mean()), {"imagereward": float(rewards.mean()), "rewards": rewards.round(5).tolist()}
