"""Token plans on their own, and ``merge`` against the real tomesd package as the reference."""

from __future__ import annotations

import pytest
import torch
from conftest import UNetHolder, make_inputs

import dato
from dato.core import tokens
from dato.core.schedule import Schedule


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_prune_keeps_one_base_token_per_patch_and_prunes_the_requested_count():
    grid = (8, 6)
    metric = rand(2, 48, 16)
    plan = tokens.prune_plan(metric, grid, 0.5, None, rand(2, 48, seed=1))
    assert plan.kept_tokens == 48 - 24
    kept = plan.kept[0].tolist()
    rows, cols = torch.tensor(kept) // 6, torch.tensor(kept) % 6
    patches = set(zip((rows // 2).tolist(), (cols // 2).tolist(), strict=True))
    assert len(patches) == 12  # every 2x2 patch still has a kept token


def test_prune_restores_kept_tokens_in_place_and_copies_a_kept_token_into_pruned_ones():
    x = rand(2, 64, 8)
    plan = tokens.prune_plan(x, (8, 8), 0.6, None, rand(2, 64, seed=3))
    restored = plan.restore(plan.reduce(x))
    kept_mask = torch.zeros(2, 64, dtype=torch.bool).scatter_(1, plan.kept, True)
    assert torch.equal(restored[kept_mask], x[kept_mask])
    for b in range(2):
        kept_rows = x[b, plan.kept[b]]
        for n in torch.nonzero(~kept_mask[b]).flatten().tolist():
            assert any(torch.equal(restored[b, n], row) for row in kept_rows)


def test_prune_restores_each_pruned_token_from_its_most_similar_base_token():
    x = rand(1, 16, 8)
    plan = tokens.prune_plan(x, (4, 4), 0.25, None, torch.zeros(1, 16))
    base = plan.kept[0, -4:]  # base tokens come last, top-left cell of each patch with zero noise
    assert sorted(base.tolist()) == [0, 2, 8, 10]
    normed = x[0] / x[0].norm(dim=-1, keepdim=True)
    restored = plan.restore(plan.reduce(x))[0]
    kept = set(plan.kept[0].tolist())
    for n in set(range(16)) - kept:
        best = base[(normed[n] @ normed[base].T).argmax()]
        assert torch.equal(restored[n], x[0, best])


def test_prune_base_token_follows_temporal_dynamics_and_halves_align():
    dyn = torch.zeros(2, 4, 4)
    dyn[0, 1, 1] = dyn[0, 0, 3] = dyn[0, 3, 0] = dyn[0, 3, 3] = 1.0  # bottom-right/top-right/... cells
    plan = tokens.prune_plan(rand(2, 16, 8), (4, 4), 0.5, dyn, torch.zeros(2, 16), align_halves=True)
    assert sorted(plan.kept[0, -4:].tolist()) == [3, 5, 12, 15]
    assert torch.equal(plan.kept[1, -4:], plan.kept[0, -4:])


def test_prune_at_ratio_zero_is_no_plan_and_odd_grids_work():
    assert tokens.prune_plan(rand(1, 16, 4), (4, 4), 0.0, None, torch.zeros(1, 16)) is None
    plan = tokens.prune_plan(rand(1, 35, 4), (7, 5), 0.7, None, torch.zeros(1, 35))
    assert plan.kept_tokens == 35 - min(int(35 * 0.7), 35 - 6)


def test_merge_plan_equals_tomesd_bipartite_matching():
    merge = pytest.importorskip("tomesd.merge")
    x = rand(2, 64, 16)
    m, u = merge.bipartite_soft_matching_random2d(x, 8, 8, 2, 2, int(64 * 0.5), no_rand=True)
    plan = tokens.merge_plan(x, (8, 8), 0.5)
    ours = plan.restore(plan.reduce(x) * 2.0)
    theirs = u(m(x) * 2.0)
    torch.testing.assert_close(ours, theirs)


def test_merged_tokens_are_averaged_into_their_destination():
    x = rand(1, 16, 4)
    plan = tokens.merge_plan(x, (4, 4), 0.25)
    reduced = plan.reduce(x)
    dst_rows = reduced[0, -4:]
    for d in range(4):
        sources = plan.merged_src[0][plan.merged_dst[0] == d]
        expected = torch.cat([x[0, plan.dst[0, d]][None], x[0, sources]]).mean(0)
        torch.testing.assert_close(dst_rows[d], expected)


def test_downsample_plan_gives_todo_grid_sizes():
    plan = tokens.downsample_plan((64, 64), 0.75)
    assert plan.size == (32, 32)
    assert tokens.downsample_plan((64, 64), 0.0) is None
    h = rand(1, 16, 3)
    kv = tokens.DownsamplePlan((4, 4), (2, 2)).keys_values(h)
    grid = h[0].T.reshape(3, 4, 4)
    want = torch.nn.functional.interpolate(grid[None], size=(2, 2), mode="nearest-exact").flatten(2).transpose(1, 2)
    assert torch.equal(kv, want)


@pytest.mark.parametrize("ratio", [0.3, 0.5])
def test_merge_on_the_unet_matches_the_tomesd_package(tiny_unet, ratio):
    tomesd = pytest.importorskip("tomesd")
    unet = tiny_unet
    x, c = make_inputs(2)
    t = torch.full((2,), 500.0)
    holder = UNetHolder(unet)
    tomesd.apply_patch(holder, ratio=ratio, use_rand=False, max_downsample=1)
    try:
        with torch.no_grad():
            want = unet(x, t, context=c)
    finally:
        tomesd.remove_patch(holder)
    dato.apply_patch(unet, Schedule.full(1, ratio, "merge"), use_rand=False)
    try:
        with torch.no_grad():
            got = unet(x, t, context=c)
            dato.remove_patch(unet)
            plain = unet(x, t, context=c)
    finally:
        dato.remove_patch(unet)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(got, plain, atol=1e-4)  # the merge really changed something


def test_prune_is_deterministic_for_a_seed_and_changes_with_it(tiny_unet):
    unet = tiny_unet
    x, c = make_inputs(2)
    outs = []
    for seed in (1, 1, 2):
        dato.apply_patch(unet, Schedule.full(1, 0.5, "prune"), seed=seed)
        with torch.no_grad():
            outs.append(unet(x, torch.full((2,), 500.0), context=c))
        dato.remove_patch(unet)
    assert torch.equal(outs[0], outs[1]) and not torch.equal(outs[0], outs[2])
