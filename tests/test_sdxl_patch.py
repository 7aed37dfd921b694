"""apply_patch / remove_patch on an SDXL-topology (sgm) UNet: the SD1 exactness suite, with the size vector ``y``.

The UNet comes from ``dato.evaluation.models.build_unet(tiny_sdxl_unet_config())``: sgm's classes when the
``sgm`` package is importable, else the same network assembled from ldm's classes (no PyPI package ships sgm;
see that module's docstring).
"""

from __future__ import annotations

import pytest
import torch
from conftest import UNetHolder, make_sdxl_inputs
from test_patch import module_state, reference_cached_step  # SD1's helpers; the reference takes y

import dato
from dato.core.layout import (
    KNOWN_LAYOUTS,
    SDXL_LAYOUT,
    UNetLayout,
    UnsupportedModelError,
    finest_attention_ds,
    transformer_blocks,
)
from dato.core.schedule import FULL, REUSE, Schedule
from dato.evaluation.models import build_unet, sdxl_unet_config, tiny_sdxl_unet_config

pytestmark = pytest.mark.usefixtures("one_thread")

T = [999.0, 800.0, 600.0, 400.0, 200.0, 100.0, 50.0, 10.0]


@pytest.fixture()
def xl(tiny_sdxl_unet):
    dato.remove_patch(tiny_sdxl_unet)
    yield tiny_sdxl_unet
    dato.remove_patch(tiny_sdxl_unet)


def run_steps(unet, x, context, y, steps, manual=False):
    outs = []
    with torch.no_grad():
        for i in range(steps):
            if manual:
                dato.set_step(unet, i, steps)
            outs.append(unet(x, torch.full((x.shape[0],), T[i % len(T)]), context=context, y=y))
    return outs


def baseline(unet, x, c, y, steps):
    dato.remove_patch(unet)
    return run_steps(unet, x, c, y, steps)


# ------------------------------------------------------------------ layout

def test_the_sdxl_layout_table_matches_a_unet_built_from_sd_xl_base_yaml():
    with torch.device("meta"):  # the full 2.6G-parameter network, without memory
        base = build_unet(sdxl_unet_config(), randomize=False)
    assert UNetLayout.from_unet(base) == SDXL_LAYOUT is KNOWN_LAYOUTS["sdxl"]
    assert sum(p.numel() for p in base.parameters()) == 2_567_463_684  # SDXL base's UNet
    depths = {}
    for role, ds, _ in transformer_blocks(base, SDXL_LAYOUT):
        depths[(role, ds)] = depths.get((role, ds), 0) + 1
    assert depths[("input.4", 2)] == 2 and depths[("input.7", 4)] == 10 and depths[("middle", 4)] == 10
    assert finest_attention_ds(base) == 2


def test_the_tiny_config_has_sdxls_topology(tiny_sdxl_unet):
    layout = UNetLayout.from_unet(tiny_sdxl_unet)
    assert layout == SDXL_LAYOUT and layout.family == "sdxl" and layout.max_depth == 8
    assert layout.skipped_blocks(6) == ("input.7", "input.8", "middle", "output.0", "output.1")
    assert layout.cached_feature_block(8) == "middle" and layout.cached_feature_block(0) == "output.7"
    assert {ds for _, ds, _ in transformer_blocks(tiny_sdxl_unet, layout)} == {2, 4}
    assert tiny_sdxl_unet.label_emb[0][0].in_features == 16


def test_sgm_unets_are_accepted_and_other_models_get_a_clear_error(tiny_sdxl_unet):
    sgm_named = type("UNetModel", (type(tiny_sdxl_unet),), {"__module__": "sgm.modules.diffusionmodules.openaimodel"})
    unet = build_unet(tiny_sdxl_unet_config(), seed=1)
    unet.__class__ = sgm_named
    assert dato.find_unet(UNetHolder(unet)) is unet
    dato.apply_patch(UNetHolder(unet), "balanced")
    assert dato.remove_patch(unet) is True
    with pytest.raises(UnsupportedModelError, match=r"1\.x/2\.x \(ldm\) and SDXL \(sgm\) only; got .*Linear"):
        dato.apply_patch(torch.nn.Linear(2, 2))
    diffusers_like = type("UNet2DConditionModel", (torch.nn.Module,), {"__module__": "diffusers.models"})()
    with pytest.raises(UnsupportedModelError, match="diffusers pipelines and Forge's backend are not supported"):
        dato.apply_patch(diffusers_like)


# --------------------------------------------------------------- exactness

def test_nothing_scheduled_is_bit_identical(xl):
    x, c, y = make_sdxl_inputs()
    ref = baseline(xl, x, c, y, 4)
    dato.apply_patch(xl, None, steps=4)
    assert all(torch.equal(a, b) for a, b in zip(ref, run_steps(xl, x, c, y, 4), strict=True))


@pytest.mark.parametrize("method", ["prune", "merge", "downsample"])
def test_ratio_zero_with_an_all_full_schedule_is_bit_identical(xl, method):
    x, c, y = make_sdxl_inputs()
    ref = baseline(xl, x, c, y, 3)
    dato.apply_patch(xl, Schedule.full(3, 0.0, method))
    assert all(torch.equal(a, b) for a, b in zip(ref, run_steps(xl, x, c, y, 3), strict=True))


def test_remove_patch_restores_the_unet_exactly(xl):
    before = module_state(xl)
    x, c, y = make_sdxl_inputs()
    ref = baseline(xl, x, c, y, 3)
    dato.apply_patch(xl, Schedule.uniform(3, 2, 1, 0.5, "prune"))
    run_steps(xl, x, c, y, 3)
    assert module_state(xl) != before
    assert dato.remove_patch(xl) is True
    assert module_state(xl) == before
    assert all(torch.equal(a, b) for a, b in zip(ref, run_steps(xl, x, c, y, 3), strict=True))


@pytest.mark.parametrize("depth", range(9))
def test_a_cached_step_equals_the_hand_built_reference_at_every_depth(xl, depth):
    x, c, y = make_sdxl_inputs()
    n = len(xl.input_blocks)
    feature = xl.middle_block if depth == n - 1 else xl.output_blocks[n - 2 - depth]
    stored = {}
    handle = feature.register_forward_hook(lambda m, a, out: stored.__setitem__("h", out))
    with torch.no_grad():
        xl(x, torch.full((2,), 999.0), context=c, y=y)
    handle.remove()
    x2, y2 = torch.randn_like(x), torch.randn_like(y)  # the size vector of the cached call is the fresh one
    with torch.no_grad():
        want = reference_cached_step(xl, x2, torch.full((2,), 800.0), c, depth, stored["h"], y=y2)
    dato.apply_patch(xl, Schedule("s", (FULL, depth), (0.0, 0.0), "none"))
    with torch.no_grad():
        xl(x, torch.full((2,), 999.0), context=c, y=y)
        got = xl(x2, torch.full((2,), 800.0), context=c, y=y2)
    assert torch.equal(got, want)


def test_a_depth_the_sdxl_unet_does_not_have_is_refused(xl):
    with pytest.raises(ValueError, match="cache depth 9 is outside 0..8"):
        dato.apply_patch(xl, Schedule("deep", (FULL, 9), (0.0, 0.0), "none"))
    assert dato.get_patch(xl) is None


def test_reuse_returns_the_previous_output_whole(xl):
    x, c, y = make_sdxl_inputs()
    dato.apply_patch(xl, Schedule("s", (FULL, 0, REUSE), (0.0,) * 3, "none"))
    out = run_steps(xl, x, c, y, 3)
    assert torch.equal(out[2], out[1]) and out[2] is not out[1]


# ------------------------------------------------------------ token levels

def test_token_methods_act_at_the_highest_resolution_level_that_has_attention(xl):
    patch = dato.apply_patch(xl, Schedule.full(2, 0.5, "prune"))
    assert {ds for _, ds, _ in patch.token_blocks} == {2}
    assert {role for role, _, _ in patch.token_blocks} == {"input.4", "input.5", "output.3", "output.4", "output.5"}
    patch = dato.apply_patch(xl, Schedule.full(2, 0.5, "prune"), max_downsample=2)
    assert {ds for _, ds, _ in patch.token_blocks} == {2, 4}


# ------------------------------------------------------------ call patterns

@pytest.mark.parametrize("method", ["prune", "merge", "downsample", "none"])
@pytest.mark.parametrize("shape", [(2, 16, 24), (3, 16, 16), (1, 24, 16)])
def test_every_method_runs_on_non_square_latents_and_odd_batches(xl, method, shape):
    batch, h, w = shape
    x, c, y = make_sdxl_inputs(batch, h, w)
    ref = baseline(xl, x, c, y, 4)
    dato.apply_patch(xl, Schedule.uniform(4, 2, 1, 0.5 if method != "none" else 0.0, method))
    out = run_steps(xl, x, c, y, 4)
    for a, b in zip(ref, out, strict=True):
        assert a.shape == b.shape and torch.isfinite(b).all()
    if method != "none":  # step 0 is full: only token reduction can change it
        assert not torch.equal(out[0], ref[0])
    assert not torch.equal(out[1], ref[1])


def test_separate_cond_and_uncond_calls_match_one_batched_call(xl):
    x, c, y = make_sdxl_inputs(2)
    schedule = Schedule.uniform(6, 3, 4, 0.0, "none")
    dato.apply_patch(xl, schedule, clock="manual")
    batched = run_steps(xl, x, c, y, 6, manual=True)
    dato.apply_patch(xl, schedule, clock="manual")
    split = []
    with torch.no_grad():
        for i in range(6):
            dato.set_step(xl, i, 6)
            t = torch.full((1,), T[i])
            split.append(torch.cat([xl(x[k:k + 1], t, context=c[k:k + 1], y=y[k:k + 1]) for k in (0, 1)]))
    for a, b in zip(batched, split, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert dato.get_patch(xl).stats["cached"] == 8


def test_an_exception_mid_forward_leaves_the_unet_exact(xl):
    x, c, y = make_sdxl_inputs(1)
    ref = baseline(xl, x, c, y, 1)[0]
    before = module_state(xl)
    dato.apply_patch(xl, Schedule.uniform(4, 2, 0, 0.5, "prune"))
    with pytest.raises((RuntimeError, AssertionError)):
        with torch.no_grad():
            xl(x, torch.full((1,), 999.0), context=c, y=None)  # an SDXL UNet without its size vector
    dato.remove_patch(xl)
    assert module_state(xl) == before
    with torch.no_grad():
        assert torch.equal(xl(x, torch.full((1,), 999.0), context=c, y=y), ref)


# ------------------------------------------------------- across architectures

def test_depths_up_to_8_mean_the_same_resolutions_on_sd1_and_sdxl():
    """Why a schedule runs unchanged across architectures: the cached branch works at the same resolutions."""
    from dato.core.layout import SD1_LAYOUT

    for depth in range(SDXL_LAYOUT.max_depth + 1):
        sd1, sdxl = ([lay.block_ds(r) for r in lay.computed_blocks(depth)] for lay in (SD1_LAYOUT, SDXL_LAYOUT))
        assert sd1 == sdxl


def test_an_sd1_schedule_deeper_than_sdxl_is_refused_with_both_architectures_named(xl):
    deep = Schedule("sd1-deep", (FULL, 10, 0), (0.0,) * 3, "none", provenance={"layout": "sd1"})
    with pytest.raises(ValueError, match=r"cache depth 10 is outside 0..8 for this SDXL \(9-block\) UNet: schedule "
                                         r"'sd1-deep', written for sd1, is refused, not converted"):
        dato.apply_patch(xl, deep)
    assert dato.get_patch(xl) is None
    for preset in dato.find_schedules():  # every shipped preset runs on SDXL as written
        dato.apply_patch(xl, preset)
        dato.remove_patch(xl)
