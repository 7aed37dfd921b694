"""dato.evaluation.metrics: fidelity and distribution metrics give the textbook values and refuse malformed input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dato.evaluation.metrics import fidelity, frechet_distance, psnr, relative_l2, ssim


def _images(seed: int = 0, shape=(3, 3, 32, 32)) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    smooth = torch.nn.functional.avg_pool2d(torch.rand(shape, generator=gen), 5, stride=1, padding=2)
    return smooth * 2 - 1


def test_identical_inputs_are_perfect():
    x = _images()
    assert torch.isinf(psnr(x, x, 2.0)).all()
    torch.testing.assert_close(ssim(x, x, 2.0), torch.ones(3))
    assert torch.equal(relative_l2(x, x), torch.zeros(3))


def test_psnr_of_a_constant_offset_is_hand_computable():
    a = torch.zeros(2, 1, 8, 8)
    b = a + 0.1  # mse 0.01 on a range of 2: 10 * log10(4 / 0.01)
    expected = 10 * math.log10(4 / 0.01)
    torch.testing.assert_close(psnr(a, b, 2.0), torch.full((2,), expected))
    torch.testing.assert_close(psnr(a, b, 1.0), torch.full((2,), 20.0))


def test_psnr_is_per_item():
    a = torch.zeros(2, 4)
    b = torch.stack([torch.full((4,), 0.1), torch.zeros(4)])
    out = psnr(a, b, 1.0)
    assert out.shape == (2,)
    assert out[0].item() == pytest.approx(20.0) and math.isinf(out[1].item())


def test_ssim_of_constant_images_is_the_luminance_term():
    a, b = torch.full((1, 1, 12, 12), 0.5), torch.full((1, 1, 12, 12), 0.25)
    c1 = (0.01 * 1.0) ** 2
    expected = (2 * 0.5 * 0.25 + c1) / (0.5**2 + 0.25**2 + c1)  # contrast/structure terms are c2 / c2
    assert ssim(a, b, 1.0).item() == pytest.approx(expected, rel=1e-6)


def test_ssim_is_symmetric():
    a, b = _images(0), _images(1)
    torch.testing.assert_close(ssim(a, b, 2.0), ssim(b, a, 2.0))


def test_ssim_falls_as_noise_grows():
    x = _images()
    gen = torch.Generator().manual_seed(5)
    noise = torch.randn(x.shape, generator=gen)
    scores = [ssim(x, x + level * noise, 2.0).mean().item() for level in (0.01, 0.05, 0.2, 0.5)]
    assert scores == sorted(scores, reverse=True)
    assert scores[0] > 0.95 and scores[-1] < 0.5


def test_ssim_handles_images_smaller_than_the_window_and_any_channel_count():
    x = _images(shape=(2, 1, 6, 9))
    y = x + 0.1
    out = ssim(x, y, 2.0)
    assert out.shape == (2,) and torch.all(out < 1) and torch.all(out > 0)
    assert ssim(_images(shape=(1, 4, 16, 16)), _images(shape=(1, 4, 16, 16)), 2.0).item() == pytest.approx(
        1.0
    )


def test_relative_l2_is_relative_to_the_reference():
    ref = torch.ones(2, 4)
    torch.testing.assert_close(relative_l2(ref * 1.1, ref), torch.full((2,), 0.1))
    torch.testing.assert_close(relative_l2(ref * 3, ref), torch.full((2,), 2.0))
    assert math.isinf(relative_l2(torch.ones(1, 3), torch.zeros(1, 3)).item())
    assert relative_l2(torch.zeros(1, 3), torch.zeros(1, 3)).item() == 0


def test_frechet_distance_of_a_set_with_itself_is_zero():
    feats = torch.randn(200, 8, generator=torch.Generator().manual_seed(0))
    assert frechet_distance(feats, feats) == pytest.approx(0.0, abs=1e-8)


def test_frechet_distance_of_a_shift_is_the_squared_shift():
    feats = np.random.default_rng(0).normal(size=(300, 6))
    shift = np.arange(6, dtype=np.float64)
    assert frechet_distance(feats + shift, feats) == pytest.approx(float((shift**2).sum()), rel=1e-8)


def test_frechet_distance_of_a_scaled_set_matches_the_closed_form():
    # b = 2a: cov_b = 4 cov_a, so tr(S + 4S - 2 * 2S) = tr(S); means differ by mu_a.
    a = np.random.default_rng(1).normal(loc=0.5, size=(400, 5))
    expected = np.trace(np.cov(a, rowvar=False)) + float((a.mean(0) ** 2).sum())
    assert frechet_distance(a, 2 * a) == pytest.approx(expected, rel=1e-8)
    assert frechet_distance(a, 2 * a) == pytest.approx(frechet_distance(2 * a, a), rel=1e-10)


def test_fidelity_summarises_a_batch():
    ref = _images()
    out = fidelity(ref + 0.1, ref, data_range=2.0)
    assert out["psnr"] == pytest.approx(10 * math.log10(4 / 0.01), rel=1e-5)
    assert out["psnr_identical"] == 0
    assert 0 < out["ssim"] < 1 and out["relative_l2"] > 0
    mixed = fidelity(torch.cat([ref[:1], ref[1:] + 0.1]), ref, data_range=2.0)
    assert mixed["psnr_identical"] == 1 and math.isfinite(mixed["psnr"])


def test_metrics_are_deterministic():
    a, b = _images(0), _images(1)
    assert torch.equal(ssim(a, b, 2.0), ssim(a, b, 2.0))
    fa, fb = a.flatten(1)[:, :3], b.flatten(1)[:, :3]
    assert frechet_distance(fa, fb) == frechet_distance(fa, fb)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: psnr(torch.zeros(2, 3), torch.zeros(2, 4), 1.0), "shapes differ"),
        (lambda: psnr(torch.zeros(3), torch.zeros(3), 1.0), "at least 2 dims"),
        (lambda: psnr(torch.zeros(2, 3), torch.zeros(2, 3), 0.0), "data_range"),
        (lambda: psnr(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3), 1.0), "floating point"),
        (lambda: ssim(torch.zeros(1, 8, 8), torch.zeros(1, 8, 8), 1.0), "at least 4 dims"),
        (lambda: ssim(torch.zeros(1, 1, 1, 8, 8), torch.zeros(1, 1, 1, 8, 8), 1.0), r"\[N, C, H, W\]"),
        (lambda: ssim(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8), 1.0, win_size=4), "odd"),
        (lambda: relative_l2(torch.zeros(2, 3), torch.zeros(3, 3)), "shapes differ"),
        (lambda: frechet_distance(np.zeros(5), np.zeros(5)), r"\[N, D\]"),
        (lambda: frechet_distance(np.zeros((5, 2)), np.zeros((5, 3))), "feature dims differ"),
        (lambda: frechet_distance(np.zeros((1, 2)), np.zeros((5, 2))), "at least 2 rows"),
        (lambda: frechet_distance(np.full((3, 2), np.nan), np.zeros((5, 2))), "NaN"),
    ],
)
def test_bad_input_raises_a_clear_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()
