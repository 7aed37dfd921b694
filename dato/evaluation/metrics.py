"""Quality metrics for accelerated sampling: fidelity to the unaccelerated sample, and distribution distance.

Fidelity compares an accelerated sample with the baseline sample from the same
noise: PSNR and SSIM in image space, relative L2 in latent or eps space (where
no decoder is needed and the scale is the model's own). Fidelity alone misses
acceleration that drifts off the data manifold while staying near the
baseline, so ``frechet_distance`` compares feature distributions (of the
fixture's classifier, see ``dato.evaluation.fixture``).

Everything here is torch + numpy, deterministic, and takes a batch first:
per-item scores come back as a ``[N]`` tensor so callers choose how to average.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["psnr", "ssim", "relative_l2", "frechet_distance", "fidelity"]


def _check_pair(a: torch.Tensor, b: torch.Tensor, min_dim: int, what: str) -> None:
    """Same shape, floating point, at least ``min_dim`` dims, else a ValueError naming the problem."""
    for name, t in (("a", a), ("b", b)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{what}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise ValueError(f"{what}: {name} must be floating point, got {t.dtype}")
    if a.shape != b.shape:
        raise ValueError(f"{what}: shapes differ, {tuple(a.shape)} vs {tuple(b.shape)}")
    if a.dim() < min_dim:
        raise ValueError(
            f"{what}: expected at least {min_dim} dims with the batch first, got {tuple(a.shape)}"
        )
    if a.numel() == 0:
        raise ValueError(f"{what}: empty input {tuple(a.shape)}")


def _check_range(data_range: float, what: str) -> float:
    data_range = float(data_range)
    if not (data_range > 0 and math.isfinite(data_range)):
        raise ValueError(
            f"{what}: data_range must be a positive number (2.0 for [-1, 1], 1.0 for [0, 1]), "
            f"got {data_range}"
        )
    return data_range


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per item ``[N]``; ``inf`` where the items are identical.

    ``data_range`` is the span of valid values (2 for images in [-1, 1]);
    inputs are not clamped, so pass decoded images clipped to that range.
    """
    _check_pair(a, b, 2, "psnr")
    data_range = _check_range(data_range, "psnr")
    mse = (a.double() - b.double()).pow(2).flatten(1).mean(1)
    return (10 * torch.log10(data_range**2 / mse)).to(torch.float32)


def _gaussian_window(size: int, sigma: float, channels: int) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(channels, 1, size, size).contiguous()


def ssim(
    a: torch.Tensor, b: torch.Tensor, data_range: float, *, win_size: int = 11, sigma: float = 1.5
) -> torch.Tensor:
    """Structural similarity per item ``[N]`` of ``[N, C, H, W]`` images (Wang et al. 2004).

    Gaussian window (11 x 11, sigma 1.5), statistics per channel, "valid"
    positions only, averaged over positions and channels. Images smaller than
    the window use the largest odd window that fits, so the fixture's 16 x 16
    digits and SD's 512 x 512 images share one definition. Symmetric in
    ``a``/``b``; 1 for identical items.
    """
    _check_pair(a, b, 4, "ssim")
    if a.dim() != 4:
        raise ValueError(f"ssim: expected [N, C, H, W], got {tuple(a.shape)}")
    data_range = _check_range(data_range, "ssim")
    if win_size < 1 or win_size % 2 == 0:
        raise ValueError(f"ssim: win_size must be a positive odd int, got {win_size}")
    size = min(win_size, a.shape[-1], a.shape[-2])
    size -= 1 - size % 2
    window = _gaussian_window(size, sigma, a.shape[1])
    x, y = a.double(), b.double()

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, window, groups=a.shape[1])

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim_map.flatten(1).mean(1).to(torch.float32)


def relative_l2(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``||a - b|| / ||b||`` per item ``[N]``: ``b`` is the reference (the unaccelerated latent or eps).

    0 for identical items; ``inf`` when the reference is all zeros and ``a`` is not.
    """
    _check_pair(a, b, 2, "relative_l2")
    diff = (a.double() - b.double()).flatten(1).norm(dim=1)
    ref = b.double().flatten(1).norm(dim=1)
    out = torch.where(diff == 0, torch.zeros_like(diff), diff / ref)
    return out.to(torch.float32)


def _as_features(feats: torch.Tensor | np.ndarray, name: str) -> np.ndarray:
    arr = (
        feats.detach().cpu().double().numpy()
        if isinstance(feats, torch.Tensor)
        else np.asarray(feats, np.float64)
    )
    if arr.ndim != 2:
        raise ValueError(f"frechet_distance: {name} must be [N, D] features, got shape {arr.shape}")
    if arr.shape[0] < 2:
        raise ValueError(
            f"frechet_distance: {name} needs at least 2 rows for a covariance, got {arr.shape[0]}"
        )
    if not np.isfinite(arr).all():
        raise ValueError(f"frechet_distance: {name} contains NaN or inf")
    return arr


def _sqrt_psd(mat: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix via eigh (tiny negative eigenvalues -> 0)."""
    vals, vecs = np.linalg.eigh((mat + mat.T) / 2)
    return (vecs * np.sqrt(np.clip(vals, 0, None))) @ vecs.T


def frechet_distance(feats_a: torch.Tensor | np.ndarray, feats_b: torch.Tensor | np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets ``[N, D]`` (the FID formula).

    ``|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2))``. The trace of the
    matrix square root is computed as ``tr((S_a^(1/2) S_b S_a^(1/2))^(1/2))``,
    a symmetric form whose eigenvalues are real, so no complex ``sqrtm``
    round-off and the same answer on every run. With fewer rows than feature
    dimensions the covariances are rank-deficient; the value is still
    defined but biased upwards, so compare distances at equal ``N``.
    """
    a, b = _as_features(feats_a, "feats_a"), _as_features(feats_b, "feats_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"frechet_distance: feature dims differ, {a.shape[1]} vs {b.shape[1]}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = (
        np.cov(a, rowvar=False).reshape(a.shape[1], -1),
        np.cov(b, rowvar=False).reshape(b.shape[1], -1),
    )
    root_a = _sqrt_psd(cov_a)
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(root_a @ cov_b @ root_a), 0, None)).sum()
    value = float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * cross)
    return max(value, 0.0)


def fidelity(
    sample: torch.Tensor,
    reference: torch.Tensor,
    *,
    data_range: float,
    latent: torch.Tensor | None = None,
    reference_latent: torch.Tensor | None = None,
) -> dict[str, float]:
    """Batch means of PSNR, SSIM and relative L2 of an accelerated ``sample`` against its ``reference``.

    Images go to PSNR/SSIM; relative L2 uses the latents when given (else the
    images). PSNR of identical pairs is ``inf`` and averages as such; the mean
    is over finite values when some pairs are identical and others are not,
    with ``psnr_identical`` counting the rest, so one exact item does not
    hide the others' error.
    """
    p = psnr(sample, reference, data_range)
    finite = p[torch.isfinite(p)]
    rel = relative_l2(
        latent if latent is not None else sample,
        reference_latent if reference_latent is not None else reference,
    )
    return {
        "psnr": float(finite.mean()) if len(finite) else math.inf,
        "psnr_identical": int((~torch.isfinite(p)).sum()),
        "ssim": float(ssim(sample, reference, data_range).mean()),
        "relative_l2": float(rel.mean()),
    }
