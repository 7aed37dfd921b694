"""The trained fixture: it loads, it learned to denoise, its samples are recognisably the digits asked for.

Figures measured when the weights were trained are in ``dato/evaluation/fixture/weights/config.json``
and the README; the bars here sit well below them and far above chance.
"""

from __future__ import annotations

import pytest
import torch

from dato.evaluation.fixture import Fixture, FixtureScorer, load_fixture
from dato.evaluation.fixture.nets import load_digit_images, split_indices
from dato.evaluation.fixture.train import TrainOptions, eps_mse, train_diffusion

BASELINE_LABELS = torch.arange(10).repeat(3)  # 3 samples per digit


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="session")
def fx() -> Fixture:
    return load_fixture()


@pytest.fixture(scope="session")
def scorer(fx) -> FixtureScorer:
    return FixtureScorer(fx)


@pytest.fixture(scope="session")
def baseline(fx) -> torch.Tensor:
    """20 Euler steps with the default CFG from seed 0: the unaccelerated reference."""
    return fx.sample(BASELINE_LABELS, seed=0, steps=20)


@pytest.fixture(scope="session")
def digits():
    return load_digit_images()


def test_weights_load_into_an_sd1_shaped_ldm_unet(fx):
    from ldm.modules.diffusionmodules.openaimodel import UNetModel

    assert isinstance(fx.unet, UNetModel)
    assert len(fx.unet.input_blocks) == 12 and len(fx.unet.output_blocks) == 12
    transformers = [
        i
        for i, block in enumerate(fx.unet.input_blocks)
        if any(type(m).__name__ == "SpatialTransformer" for m in block)
    ]
    assert transformers == [1, 2, 4, 5, 7, 8]  # SD1.x: attention at downsample factors 1, 2 and 4
    assert not fx.unet.training
    assert all(p.dtype == torch.float32 and not p.requires_grad for p in fx.unet.parameters())
    assert fx.latent_shape == (1, 16, 16)
    # the weights were trained when the script was dato/fixture/train.py; it now lives in dato/evaluation/fixture
    assert fx.config["command"].split()[:3] in (["python", "-m", "dato.fixture.train"],
                                                ["python", "-m", "dato.evaluation.fixture.train"])


def test_fixture_is_loaded_once_per_process(fx):
    assert load_fixture() is fx


def test_contexts_have_the_shape_cross_attention_expects(fx):
    ctx = fx.class_contexts([0, 9, 3])
    assert ctx.shape == (3, 4, fx.unet.input_blocks[1][1].transformer_blocks[0].attn2.to_k.in_features)
    assert fx.null_context(2).shape == (2, *ctx.shape[1:])
    assert not torch.equal(fx.null_context(1)[0], ctx[0])
    with pytest.raises(ValueError, match="labels must lie in 0..9"):
        fx.class_contexts([10])


@pytest.mark.parametrize("timestep", [300, 500, 700])
def test_model_denoises_far_better_than_predicting_zeros(fx, digits, timestep):
    images, labels = digits
    idx = torch.arange(0, len(images), 28)  # 65 digits of every class
    mse = eps_mse(fx.unet, fx.class_contexts(labels[idx]), images[idx], timestep, fx.alphas_cumprod)
    assert mse < 0.15  # measured 0.05 / 0.03 / 0.013; predicting zeros scores 1.0


def test_class_context_helps_denoising(fx, digits):
    images, labels = digits
    idx = torch.arange(0, len(images), 28)
    right = eps_mse(fx.unet, fx.class_contexts(labels[idx]), images[idx], 800, fx.alphas_cumprod)
    wrong = eps_mse(fx.unet, fx.class_contexts((labels[idx] + 5) % 10), images[idx], 800, fx.alphas_cumprod)
    assert right < wrong


def test_decoder_drops_brightness_and_keeps_real_digits(fx, digits):
    images, _ = digits
    decoded = fx.to_images(images[:50])
    assert (decoded - images[:50]).abs().mean() < 0.1
    torch.testing.assert_close(fx.to_images(images[:50] + 0.7), decoded)


def test_scorer_recognises_real_held_out_digits(fx, scorer, digits):
    images, labels = digits
    _, test_idx = split_indices(len(images), fx.config["options"]["seed"])
    assert scorer.accuracy(fx.to_images(images[test_idx]), labels[test_idx]) > 0.9
    assert scorer.frechet(fx.to_images(images)) == pytest.approx(0.0, abs=1e-6)


def test_baseline_samples_are_the_digits_asked_for(scorer, baseline, fx):
    accuracy = scorer.accuracy(fx.to_images(baseline), BASELINE_LABELS)
    assert accuracy >= 0.8  # measured 0.94 on 50 samples (python -m dato.evaluation.fixture); chance is 0.1


def test_baseline_samples_are_closer_to_real_digits_than_noise_is(scorer, baseline, fx):
    noise_images = fx.to_images(fx.noise(len(BASELINE_LABELS), seed=1))
    assert scorer.frechet(fx.to_images(baseline)) < 0.5 * scorer.frechet(noise_images)


def test_sampling_the_fixture_is_deterministic(fx):
    a = fx.sample([1, 7], seed=3, steps=4)
    b = fx.sample([1, 7], seed=3, steps=4)
    assert torch.equal(a, b)
    assert not torch.equal(a, fx.sample([1, 7], seed=4, steps=4))


def test_scorer_rejects_mismatched_labels(scorer, digits):
    images, _ = digits
    with pytest.raises(ValueError, match="3 images but 2 labels"):
        scorer.accuracy(images[:3], [0, 1])


def test_cli_reports_sample_and_real_scores(capsys):
    import json

    from dato.evaluation.fixture.__main__ import main

    assert main(["--per-class", "1", "--steps", "2"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["samples"]["n"] == 10 and 0 <= report["samples"]["accuracy"] <= 1
    assert report["real_held_out"]["accuracy"] > 0.9


def test_training_is_deterministic_for_a_seed(digits):
    images, labels = digits
    opts = TrainOptions(seed=5, steps=2, batch_size=4, warmup=1)
    first = train_diffusion(images[:64], labels[:64], opts, log=lambda _: None)
    second = train_diffusion(images[:64], labels[:64], opts, log=lambda _: None)
    assert first[2] == second[2]
    for p, q in zip(first[0].parameters(), second[0].parameters(), strict=True):
        assert torch.equal(p, q)
