"""The faithful DaTo prune mode against a direct, readable re-implementation of the paper's algorithm.

The reference below is written from the DaTo paper's description (and the
behaviour of its released ``prune_and_recover_tokens``), one token at a time,
with Python loops and no tricks:

1. score every token: ``w * dynamics + noise`` (``w = +-0.1``, its sign flipped at
   random per call; ``noise`` already scaled by 0.1);
2. per whole 2x2 patch, the cell with the highest score is the *base* token
   (with ``align_cfg`` and an even batch, the second half copies the first half's);
3. every other token's similarity to the base tokens is its best cosine
   similarity to any base token; the ``int(N * ratio)`` most similar are pruned;
4. attention runs on the kept tokens (unpruned others + base);
5. each pruned token is restored from the output of its most similar token (cosine)
   in the whole kept set.
"""

from __future__ import annotations

import pytest
import torch
from conftest import make_inputs

import dato
from dato.core import tokens
from dato.core.schedule import Schedule

pytestmark = pytest.mark.usefixtures("one_thread")


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a @ b / (a.norm() * b.norm()))


def reference_prune(x, grid, ratio, score, align_cfg):
    """Kept token indices (a set per image) and the restoration map {pruned token: kept token}."""
    batch, n, _ = x.shape
    h, w = grid
    num_prune = int(n * ratio)
    bases = []
    for b in range(batch):
        if align_cfg and batch % 2 == 0 and b >= batch // 2:
            bases.append(bases[b - batch // 2])
            continue
        base = []
        for py in range(h // 2):
            for px in range(w // 2):
                cells = [(2 * py + dy) * w + 2 * px + dx for dy in (0, 1) for dx in (0, 1)]
                base.append(max(cells, key=lambda c: float(score[b, c])))
        bases.append(base)
    kept_sets, restore_maps = [], []
    for b in range(batch):
        base = bases[b]
        others = [t for t in range(n) if t not in base]
        best = {t: max(cosine(x[b, t], x[b, d]) for d in base) for t in others}
        pruned = sorted(others, key=lambda t: -best[t])[:num_prune]
        kept = [t for t in others if t not in pruned] + base
        restore = {p: max(kept, key=lambda k: cosine(x[b, p], x[b, k])) for p in pruned}
        kept_sets.append(set(kept))
        restore_maps.append(restore)
    return kept_sets, restore_maps


def check_against_reference(x, grid, ratio, dynamics, noise, weight, align_cfg):
    plan = tokens.prune_plan(x, grid, ratio, dynamics, noise, align_halves=align_cfg, restore="kept",
                             dynamics_weight=weight)
    score = noise if dynamics is None else weight * dynamics.reshape(noise.shape) + noise
    kept_sets, restore_maps = reference_prune(x, grid, ratio, score, align_cfg)
    y = torch.tanh(x * 3.0) + torch.arange(x.shape[1]).view(1, -1, 1)  # any per-token "attention output"
    restored = plan.restore(plan.reduce(y))
    for b in range(x.shape[0]):
        assert set(plan.kept[b].tolist()) == kept_sets[b]
        for t in range(x.shape[1]):
            source = restore_maps[b].get(t, t)
            assert torch.equal(restored[b, t], y[b, source]), (b, t, source)
    return plan


@pytest.mark.parametrize("grid,batch,ratio", [((7, 5), 3, 0.5), ((6, 6), 1, 0.3), ((5, 9), 3, 0.7),
                                              ((8, 8), 2, 0.6)])
@pytest.mark.parametrize("sign", [0.1, -0.1])
def test_faithful_prune_equals_the_reference_on_odd_grids_and_batches(grid, batch, ratio, sign):
    n = grid[0] * grid[1]
    x = rand(batch, n, 12, seed=n + batch)
    dynamics = rand(batch, *grid, seed=7).abs()
    noise = rand(batch, n, seed=8) * 0.1
    check_against_reference(x, grid, ratio, dynamics, noise, sign, align_cfg=False)


def test_faithful_prune_first_step_scores_by_noise_alone():
    x, noise = rand(3, 35, 8, seed=1), rand(3, 35, seed=2) * 0.1
    check_against_reference(x, (7, 5), 0.5, None, noise, 0.1, align_cfg=False)


def test_faithful_prune_cond_and_uncond_together_with_align_cfg_and_split():
    grid, n = (7, 5), 35
    x = rand(4, n, 8, seed=3)
    dynamics, noise = rand(4, *grid, seed=4).abs(), rand(4, n, seed=5) * 0.1
    together = check_against_reference(x, grid, 0.5, dynamics, noise, 0.1, align_cfg=True)
    base_first = set(together.kept[0, -(3 * 2):].tolist())
    assert base_first == set(together.kept[2, -(3 * 2):].tolist())  # mirrored base cells
    for half in (slice(0, 2), slice(2, 4)):  # cond and uncond as separate calls: each on its own
        check_against_reference(x[half], grid, 0.5, dynamics[half], noise[half], 0.1, align_cfg=True)


def test_restoration_from_kept_is_chunked_and_equals_the_unchunked_result(monkeypatch):
    x, noise = rand(2, 64, 8, seed=9), rand(2, 64, seed=10) * 0.1
    whole = tokens.prune_plan(x, (8, 8), 0.6, None, noise, restore="kept")
    monkeypatch.setattr(tokens, "RESTORE_CHUNK_ELEMENTS", 7)  # one or a few pruned tokens per chunk
    chunked = tokens.prune_plan(x, (8, 8), 0.6, None, noise, restore="kept")
    assert torch.equal(whole.source, chunked.source) and torch.equal(whole.kept, chunked.kept)


def test_a_bad_restore_mode_is_named():
    with pytest.raises(ValueError, match="restore = 'nearest'"):
        tokens.prune_plan(rand(1, 16, 4), (4, 4), 0.5, None, torch.zeros(1, 16), restore="nearest")


# ------------------------------------------------------------------ on the UNet

@pytest.mark.parametrize("variant", tokens.PRUNE_VARIANTS)
def test_ratio_zero_is_bit_identical_to_the_unpatched_unet(unet, variant):
    x, c = make_inputs(3, 16, 24)
    t = torch.full((3,), 500.0)
    with torch.no_grad():
        want = unet(x, t, context=c)
        dato.apply_patch(unet, Schedule.full(2, 0.0, "prune"), prune_variant=variant)
        got = unet(x, t, context=c)
        got2 = unet(x, torch.full((3,), 400.0), context=c)
    dato.remove_patch(unet)
    assert torch.equal(got, want)
    with torch.no_grad():
        assert torch.equal(got2, unet(x, torch.full((3,), 400.0), context=c))


def test_faithful_plans_per_block_on_its_own_features_and_restores_from_kept(unet, monkeypatch):
    calls = []
    original = tokens.prune_plan

    def spy(metric, grid, ratio, dynamics, noise, align_halves=False, restore="base", dynamics_weight=None):
        calls.append((metric, restore, dynamics is not None, dynamics_weight))
        return original(metric, grid, ratio, dynamics, noise, align_halves, restore, dynamics_weight)

    monkeypatch.setattr(tokens, "prune_plan", spy)
    x, c = make_inputs(2)
    dato.apply_patch(unet, Schedule.full(3, 0.5, "prune"), prune_variant="faithful", seed=3)
    with torch.no_grad():
        unet(x, torch.full((2,), 500.0), context=c)
        first = len(calls)
        unet(x, torch.full((2,), 400.0), context=c)
        unet(x, torch.full((2,), 300.0), context=c)
    patch = dato.get_patch(unet)
    blocks = len(patch.token_blocks)
    assert first == blocks and len(calls) == 3 * blocks  # one plan per block and call
    assert len({id(m) for m, *_ in calls[:first]}) == blocks  # each on its own block's features
    assert all(r == "kept" for _, r, _, _ in calls)
    # dynamics |eps_t - eps_t-1| exist once two outputs do: from the third call on, as in the reference
    assert not any(d for _, _, d, _ in calls[:2 * first]) and all(d for _, _, d, _ in calls[2 * first:])
    weights = {round(float(w), 6) for *_, w in calls}
    assert weights <= {0.1, -0.1}


def test_shared_plan_builds_one_plan_per_level(unet, monkeypatch):
    calls = []
    original = tokens.prune_plan
    monkeypatch.setattr(tokens, "prune_plan", lambda *a, **k: calls.append(1) or original(*a, **k))
    x, c = make_inputs(2)
    dato.apply_patch(unet, Schedule.full(1, 0.5, "prune"), prune_variant="shared-plan")
    with torch.no_grad():
        unet(x, torch.full((2,), 500.0), context=c)
    assert len(calls) == 1  # max_downsample 1: one level


@pytest.mark.parametrize("variant", tokens.PRUNE_VARIANTS)
def test_every_variant_is_reproducible_for_a_seed(unet, variant):
    x, c = make_inputs(3, 16, 24)
    outs = []
    for _ in range(2):
        dato.apply_patch(unet, Schedule.full(2, 0.5, "prune"), prune_variant=variant, seed=5)
        with torch.no_grad():
            unet(x, torch.full((3,), 500.0), context=c)
            outs.append(unet(x, torch.full((3,), 400.0), context=c))
        dato.remove_patch(unet)
    assert torch.equal(outs[0], outs[1])


def test_a_bad_prune_variant_is_refused_by_name(unet):
    with pytest.raises(dato.ScheduleError, match="prune_variant = 'exact'"):
        dato.apply_patch(unet, Schedule.full(1, 0.5, "prune"), prune_variant="exact")
    assert dato.get_patch(unet) is None
