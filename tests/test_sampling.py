"""dato.evaluation.sampling: the standalone sampler calls the UNet the way A1111 does, exactly and deterministically."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_inputs

from dato.evaluation.sampling import SAMPLERS, ddim_timesteps, euler_sigmas, sample, sd_alphas_cumprod


class Recorder:
    """Wraps a UNet and logs every call and every ``on_step`` in order."""

    def __init__(self, unet) -> None:
        self.unet = unet
        self.events: list[tuple] = []

    def __call__(self, x, t, context=None):
        self.events.append(("unet", x.shape[0], t.clone()))
        return self.unet(x, t, context=context)

    def on_step(self, i: int, n: int) -> None:
        self.events.append(("step", i, n))


class PointOracle:
    """The ideal eps-predictor for data concentrated on one point ``x0``, for the k-diffusion input scaling.

    It reads the noise level from the float timestep the way k-diffusion's
    wrapper defines it; the denoised estimate is then exactly ``x0``, so any
    mistake in ``c_in``, in sigma<->t or in the update rule shows up as a miss.
    """

    def __init__(self, x0: torch.Tensor, alphas_cumprod: torch.Tensor) -> None:
        self.x0 = x0
        self.log_sigmas = (((1 - alphas_cumprod) / alphas_cumprod) ** 0.5).log().double()

    def __call__(self, x, t, context=None):
        t = t.double()
        low, high, w = t.floor().long(), t.ceil().long(), t.frac()
        sigma = ((1 - w) * self.log_sigmas[low] + w * self.log_sigmas[high]).exp().view(-1, 1, 1, 1)
        a = 1 / (1 + sigma**2)
        return ((x.double() - a.sqrt() * self.x0) / (1 - a).sqrt()).to(x.dtype)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def unet() -> torch.nn.Module:
    """A real ldm UNetModel (ResBlocks, SpatialTransformer, skips) small enough for many sampling runs.

    The sampler does not care about SD1's depth; the engine's tests use the SD1-shaped one.
    """
    from ldm.modules.diffusionmodules.openaimodel import UNetModel

    from dato.evaluation.models import randomize_zero_init

    torch.manual_seed(0)
    model = UNetModel(
        image_size=8,
        in_channels=4,
        out_channels=4,
        model_channels=32,
        num_res_blocks=1,
        channel_mult=(1, 2),
        attention_resolutions=(1,),
        num_head_channels=8,
        use_spatial_transformer=True,
        context_dim=32,
        legacy=False,
    )
    randomize_zero_init(model, seed=0)
    return model.eval().requires_grad_(False)


def _inputs(batch=2, height=8, width=8, seed=0):
    noise, cond = make_inputs(batch, height, width, seed=seed)
    _, uncond = make_inputs(batch, height, width, seed=seed + 1)
    return noise, cond, uncond


def test_alphas_cumprod_matches_ldm_schedule():
    from ldm.modules.diffusionmodules.util import make_beta_schedule

    betas = make_beta_schedule("linear", 1000, linear_start=0.00085, linear_end=0.012)
    expected = torch.tensor(np.cumprod(1.0 - betas), dtype=torch.float32)
    assert torch.equal(sd_alphas_cumprod(), expected)


def test_euler_sigmas_are_uniform_in_timestep_and_end_at_zero():
    sigmas = euler_sigmas(sd_alphas_cumprod(), 10)
    assert sigmas.shape == (11,)
    assert sigmas[-1] == 0
    assert torch.all(sigmas[:-1] > sigmas[1:])
    assert sigmas[0].item() == pytest.approx(14.6146, abs=1e-3)  # SD's sigma_max


def test_ddim_timesteps_match_ldm_uniform_discretisation():
    from ldm.modules.diffusionmodules.util import make_ddim_timesteps

    for steps in (10, 20, 50):
        expected = make_ddim_timesteps("uniform", steps, 1000, verbose=False)
        assert ddim_timesteps(1000, steps).tolist() == expected.tolist()
    assert len(ddim_timesteps(1000, 30)) == 30  # ldm would give 31


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_sample_is_deterministic(unet, sampler):
    noise, cond, uncond = _inputs()
    a = sample(unet, noise, cond, uncond, steps=3, sampler=sampler)
    b = sample(unet, noise, cond, uncond, steps=3, sampler=sampler)
    assert torch.equal(a, b)
    assert torch.isfinite(a).all()


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_cfg_batch_and_separate_calls_agree(unet, sampler):
    noise, cond, uncond = _inputs(batch=3)
    batched = sample(unet, noise, cond, uncond, steps=3, sampler=sampler, cfg_batch=True)
    separate = sample(unet, noise, cond, uncond, steps=3, sampler=sampler, cfg_batch=False)
    torch.testing.assert_close(batched, separate, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("sampler", ["euler", "ddim"])
def test_cfg_batch_puts_cond_first_and_uncond_last(unet, sampler):
    noise, cond, uncond = _inputs(batch=3)
    seen = []

    def spy(x, t, context=None):
        seen.append(context)
        return unet(x, t, context=context)

    sample(spy, noise, cond, uncond, steps=1, sampler=sampler)
    assert torch.equal(seen[0], torch.cat([cond, uncond]))


@pytest.mark.parametrize(
    "sampler,calls_per_step",
    [("euler", [1, 1, 1]), ("ddim", [1, 1, 1]), ("euler_a", [1, 1, 1]), ("heun", [2, 2, 1])],
)
def test_on_step_runs_once_per_step_before_that_steps_unet_calls(unet, sampler, calls_per_step):
    noise, cond, uncond = _inputs()
    rec = Recorder(unet)
    sample(rec, noise, cond, uncond, steps=3, sampler=sampler, on_step=rec.on_step)
    steps = [e[1:] for e in rec.events if e[0] == "step"]
    assert steps == [(0, 3), (1, 3), (2, 3)]
    assert rec.events[0][0] == "step"
    counts: list[int] = []
    for event in rec.events:
        if event[0] == "step":
            counts.append(0)
        else:
            counts[-1] += 1
    assert counts == calls_per_step


def test_separate_cfg_calls_cond_then_uncond_each_step(unet):
    noise, cond, uncond = _inputs()
    contexts = []

    def spy(x, t, context=None):
        contexts.append(context)
        return unet(x, t, context=context)

    sample(spy, noise, cond, uncond, steps=2, cfg_batch=False)
    assert len(contexts) == 4
    assert torch.equal(contexts[0], cond) and torch.equal(contexts[1], uncond)


def test_euler_passes_float_timesteps_and_ddim_passes_ints(unet):
    noise, cond, uncond = _inputs()
    rec = Recorder(unet)
    sample(rec, noise, cond, uncond, steps=4, sampler="euler")
    t_euler = [e[2] for e in rec.events]
    assert all(t.is_floating_point() and t.shape == (4,) for t in t_euler)
    assert t_euler[0][0].item() == pytest.approx(999, abs=1e-2)
    assert t_euler[-1][0].item() == pytest.approx(0, abs=1e-2)

    rec = Recorder(unet)
    sample(rec, noise, cond, uncond, steps=4, sampler="ddim")
    t_ddim = [e[2] for e in rec.events]
    assert all(t.dtype == torch.long for t in t_ddim)
    assert [t[0].item() for t in t_ddim] == [751, 501, 251, 1]


@pytest.mark.parametrize("sampler", ["euler", "euler_a", "heun"])
def test_k_diffusion_samplers_land_on_the_point_an_ideal_denoiser_predicts(sampler):
    ac = sd_alphas_cumprod()
    x0 = torch.linspace(-1, 1, 2 * 1 * 8 * 8).view(2, 1, 8, 8)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(3))
    out = sample(PointOracle(x0, ac), noise, torch.zeros(1, 1, 4), steps=7, sampler=sampler)
    torch.testing.assert_close(out, x0, rtol=0, atol=1e-4)


def test_ddim_matches_ldm_ddim_sampler(unet):
    from ldm.models.diffusion.ddim import DDIMSampler

    ac = sd_alphas_cumprod()

    class Wrapper:  # what DDIMSampler reads from a LatentDiffusion
        num_timesteps = 1000
        alphas_cumprod = ac
        betas = 1 - ac / torch.cat([ac.new_ones(1), ac[:-1]])
        alphas_cumprod_prev = torch.cat([ac.new_ones(1), ac[:-1]])
        device = "cpu"
        parameterization = "eps"

        @staticmethod
        def apply_model(x, t, c):
            return unet(x, t, context=c)

    noise, cond, uncond = _inputs()
    expected, _ = DDIMSampler(Wrapper()).sample(
        5,
        2,
        tuple(noise.shape[1:]),
        conditioning=cond,
        x_T=noise,
        eta=0.0,
        unconditional_guidance_scale=5.0,
        unconditional_conditioning=uncond,
        verbose=False,
    )
    ours = sample(unet, noise, cond, uncond, steps=5, sampler="ddim", cfg_scale=5.0)
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_non_square_latents_keep_their_shape(unet, sampler):
    noise, cond, uncond = _inputs(batch=2, height=8, width=12)
    out = sample(unet, noise, cond, uncond, steps=2, sampler=sampler)
    assert out.shape == noise.shape and out.dtype == noise.dtype


def test_without_uncond_there_is_no_guidance_and_one_call_per_step(unet):
    noise, cond, _ = _inputs()
    rec = Recorder(unet)
    sample(rec, noise, cond, steps=2, cfg_scale=7.5)
    assert [e[1] for e in rec.events] == [2, 2]


def test_batch_one_contexts_broadcast(unet):
    noise, cond, uncond = _inputs(batch=2)
    one = sample(unet, noise, cond[:1], uncond[:1], steps=2)
    full = sample(unet, noise, cond[:1].expand(2, -1, -1), uncond[:1].expand(2, -1, -1), steps=2)
    assert torch.equal(one, full)


def test_euler_ancestral_noise_follows_the_generator(unet):
    noise, cond, uncond = _inputs()
    a = sample(
        unet, noise, cond, uncond, steps=3, sampler="euler_a", generator=torch.Generator().manual_seed(1)
    )
    b = sample(
        unet, noise, cond, uncond, steps=3, sampler="euler_a", generator=torch.Generator().manual_seed(2)
    )
    assert not torch.equal(a, b)


def test_sample_runs_without_grad(unet):
    noise, cond, uncond = _inputs()
    noise.requires_grad_(True)
    assert not sample(unet, noise, cond, uncond, steps=1).requires_grad


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"sampler": "dpm++"}, "unknown sampler"),
        ({"steps": 0}, "steps must be a positive int"),
        ({"steps": 2.5}, "steps must be a positive int"),
        ({"steps": 1001}, "exceeds"),
        ({"cfg_scale": float("nan")}, "cfg_scale"),
        ({"alphas_cumprod": torch.ones(1000)}, r"alphas_cumprod values"),
        ({"alphas_cumprod": torch.rand(10, 2)}, "alphas_cumprod must be 1-D"),
    ],
)
def test_bad_arguments_raise_clear_value_errors(unet, kwargs, match):
    noise, cond, uncond = _inputs()
    args = {"steps": 2, **kwargs}
    with pytest.raises(ValueError, match=match):
        sample(unet, noise, cond, uncond, **args)


def test_bad_shapes_raise_clear_value_errors(unet):
    noise, cond, uncond = _inputs(batch=2)
    with pytest.raises(ValueError, match="noise must be"):
        sample(unet, noise[0], cond, uncond, steps=2)
    with pytest.raises(ValueError, match="noise must be a floating-point"):
        sample(unet, noise.long(), cond, uncond, steps=2)
    with pytest.raises(ValueError, match="cond has batch 3"):
        sample(unet, noise, torch.cat([cond, cond[:1]]), uncond, steps=2)
    with pytest.raises(ValueError, match=r"cond must be \[batch, tokens, dim\]"):
        sample(unet, noise, cond[0], uncond, steps=2)
    with pytest.raises(ValueError, match="differ in tokens"):
        sample(unet, noise, cond, uncond[:, :3], steps=2)
