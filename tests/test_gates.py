"""DiP-GO-style gates: the gated forward is the patched UNet, post-processing hits the budget, training works."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import make_inputs

from dato.core.layout import UNetLayout
from dato.core.macs import trace_unet_cost
from dato.core.patch import apply_patch, remove_patch
from dato.core.schedule import FULL, REUSE, Schedule, ScheduleError
from dato.evaluation.backends import builtin_backend
from dato.evaluation.sampling import sample
from dato.generators.gates import (
    GateConfig,
    GatedUNet,
    GateJob,
    GateResult,
    GateTrainer,
    LevelCosts,
    action_from_extent,
    extent_from_action,
    schedule_from_gates,
    train_gates,
    uniform_start,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def costs(tiny_unet) -> LevelCosts:
    return LevelCosts.from_cost(trace_unet_cost(tiny_unet, context_len=7), 16, 16)


def keep_from_schedule(schedule: Schedule, levels: int):
    rows = [torch.tensor([1.0] * extent_from_action(a, levels) + [0.0] * (levels - extent_from_action(a, levels)))
            for a in schedule.cache]
    return lambda step: rows[step]


# ------------------------------------------------------------------ costs and extents
def test_level_costs_add_up_to_every_action(tiny_unet, costs):
    cost = trace_unet_cost(tiny_unet, context_len=7)
    levels = UNetLayout.from_unet(tiny_unet).max_depth + 2
    assert len(costs.levels) == levels
    for action in [REUSE, FULL, *range(levels - 1)]:
        assert costs.step_macs(extent_from_action(action, levels)) == pytest.approx(cost.call_macs(16, 16, action))
        assert action_from_extent(extent_from_action(action, levels), levels) == action
    assert costs.full == pytest.approx(cost.full_step_macs(16, 16))


# ------------------------------------------------------------------ exactness of the gated forward
def run(unet_call, on_step, x, context, steps=6):
    return sample(unet_call, x, context, torch.zeros_like(context), steps=steps, cfg_scale=2.0, on_step=on_step)


def test_all_open_gates_are_bit_identical_to_the_unet(tiny_unet):
    x, context = make_inputs(batch=2)
    levels = UNetLayout.from_unet(tiny_unet).max_depth + 2
    reference = run(tiny_unet, None, x, context)
    with GatedUNet(tiny_unet, lambda step: torch.ones(levels)) as gated:
        out = run(gated, gated.set_step, x, context)
    assert torch.equal(out, reference)
    assert not tiny_unet.output_blocks[0]._forward_hooks  # hooks gone


@pytest.mark.parametrize("preview", ["F0R2F1", "FRR0F3", "F1111F"])
def test_hard_gates_equal_the_patched_schedule(tiny_unet, preview):
    cache = tuple({"F": FULL, "R": REUSE}.get(c, None) if c in "FR" else int(c) for c in preview)
    schedule = Schedule(name="g", cache=cache, ratio=(0.0,) * 6, method="none")
    x, context = make_inputs(batch=2, seed=4)
    levels = UNetLayout.from_unet(tiny_unet).max_depth + 2
    apply_patch(tiny_unet, schedule, steps=6)
    try:
        patched = run(tiny_unet, None, x, context)
    finally:
        remove_patch(tiny_unet)
    with GatedUNet(tiny_unet, keep_from_schedule(schedule, levels)) as gated:
        out = run(gated, gated.set_step, x, context)
    assert torch.allclose(out, patched, rtol=0, atol=1e-6)
    assert not torch.allclose(out, run(tiny_unet, None, x, context), atol=1e-4)  # the schedule did something


def test_checkpointing_gives_the_same_gradient(tiny_unet):
    x, context = make_inputs(batch=1, seed=2)
    levels = UNetLayout.from_unet(tiny_unet).max_depth + 2
    grads = []
    for use_checkpoint in (False, True):
        logits = torch.linspace(-1, 2, 4 * levels).reshape(4, levels).requires_grad_(True)

        def keep(step, logits=logits):
            soft = torch.sigmoid(logits[step])
            return torch.cumprod((soft > 0.5).float() + soft - soft.detach(), 0) if step else torch.ones(levels)

        with GatedUNet(tiny_unet, keep, use_checkpoint=use_checkpoint) as gated:
            out = sample(gated, x, context, None, steps=4, on_step=gated.set_step, grad=True)
            out.square().mean().backward()
        grads.append(logits.grad.clone())
    assert grads[0].abs().sum() > 0
    assert torch.allclose(grads[0], grads[1], rtol=1e-4, atol=1e-8)


def test_gates_refuse_a_patched_unet(tiny_unet):
    apply_patch(tiny_unet, "deepcache-every2-d0")
    try:
        with pytest.raises(RuntimeError, match="unpatched UNet"):
            GatedUNet(tiny_unet, lambda step: torch.ones(3))
    finally:
        remove_patch(tiny_unet)


# ------------------------------------------------------------------ post-processing
def test_post_processing_by_hand():
    costs = LevelCosts(base=1.0, levels=(10.0, 5.0, 4.0))  # full = 20 per step, 60 for 3 steps
    logits = [[9, 9, 9], [3.0, 1.0, -1.0], [2.0, 0.5, 0.0]]
    # learned hard gates: step 1 opens levels 0,1 (extent 2), step 2 levels 0,1 (0.0 is closed): 20+16+16 = 52
    assert schedule_from_gates(logits, costs, 60 / 52).cache == (FULL, 1, 1)
    # budget 40: close (2, level 1) @0.5 -> 47, (1, level 1) @1.0 -> 42, (2, level 0) @2.0 -> 32;
    # fill the slack of 8: (1, level 1) costs 5 and fits -> 37; nothing else fits (level 2: 4 > 3, level 0: 10)
    s = schedule_from_gates(logits, costs, 1.5)
    assert s.cache == (FULL, 1, REUSE)
    assert s.provenance["macs_speedup"] == pytest.approx(60 / 37)
    # a loose budget opens the most needed first: 57 allows step 2's level 2 (logit 0.0) and not step 1's (-1)
    assert schedule_from_gates(logits, costs, 60 / 56).cache == (FULL, 1, FULL)


@pytest.mark.parametrize("target", [1.3, 2.0, 3.0, 5.0, 8.0])
def test_post_processing_hits_the_target_within_one_level(tiny_unet, costs, target):
    steps = 12
    gen = torch.Generator().manual_seed(int(target * 10))
    logits = torch.randn(steps, len(costs.levels), generator=gen).tolist()
    s = schedule_from_gates(logits, costs, target)
    macs = trace_unet_cost(tiny_unet, context_len=7).schedule_macs(s, 16, 16)
    budget = costs.full * steps / target
    assert macs <= budget * (1 + 1e-9)
    assert budget - macs < max(costs.levels) + 1e-6
    assert s.cache[0] == FULL and s.provenance["macs_speedup"] == pytest.approx(costs.full * steps / macs)


def test_unreachable_and_bad_targets(costs):
    logits = [[0.0] * len(costs.levels)] * 4
    with pytest.raises(ScheduleError, match="out of reach"):
        schedule_from_gates(logits, costs, 100.0)
    for bad in (0.5, math.nan, "3"):
        with pytest.raises(ScheduleError, match="target_speedup"):
            schedule_from_gates(logits, costs, bad)
    with pytest.raises(ScheduleError, match="gate logits"):
        schedule_from_gates([[0.0]] * 4, costs, 2.0)


def test_uniform_warm_start(costs):
    start = uniform_start(costs, 10, 2.0)
    assert start.rule["kind"] == "uniform" and start.rule["depth"] == 0
    extents = [extent_from_action(a, len(costs.levels)) for a in start.cache]
    speedup = costs.full * 10 / costs.schedule_macs(extents)
    for interval in range(2, 11):
        other = Schedule.uniform(10, interval, 0)
        e = [extent_from_action(a, len(costs.levels)) for a in other.cache]
        assert abs(math.log(speedup / 2.0)) <= abs(math.log(costs.full * 10 / costs.schedule_macs(e) / 2.0)) + 1e-12


# ------------------------------------------------------------------ training
@pytest.fixture(scope="module")
def tiny_backend():
    return builtin_backend(latent_size=8, steps=4, cfg_scale=2.0, model="tiny")


def test_trainer_starts_from_the_uniform_schedule_and_result_round_trips(tiny_backend, tmp_path):
    cost = trace_unet_cost(tiny_backend.unet, context_len=7)
    costs = LevelCosts.from_cost(cost, 8, 8)
    trainer = GateTrainer(tiny_backend, ["a", "b"], GateConfig(target_speedup=1.5, iterations=1, batch_size=1,
                                                                pool=2), costs)
    levels = len(costs.levels)
    assert [action_from_extent(e, levels) for e in trainer.hard_extents()] == list(trainer.start_schedule.cache)
    result = trainer.result()
    again = GateResult.load(result.save(tmp_path / "g.json"))
    assert again.logits == result.logits and again.costs == result.costs
    assert again.schedule(1.5).cache == result.schedule(1.5).cache


@pytest.mark.parametrize("field, value", [("target_speedup", 0.5), ("iterations", 0), ("batch_size", 0),
                                          ("pool", 0), ("lr", -1.0), ("sparsity_weight", -1.0),
                                          ("relaxed_fraction", 2.0), ("warm_start", "calibration")])
def test_bad_gate_settings(tiny_backend, field, value):
    with pytest.raises(ValueError, match=f"gate setting {field}"):
        train_gates(tiny_backend, ["a"], GateConfig(**{field: value}))


def test_training_leaves_the_unet_as_it_was(tiny_backend):
    unet = tiny_backend.unet
    flags = [p.requires_grad for p in unet.parameters()]
    seen = []
    result = train_gates(tiny_backend, ["a cat", "a dog"], GateConfig(iterations=2, batch_size=1, pool=2),
                         progress=seen.append)
    assert [s["iteration"] for s in seen] == [1, 2] and len(result.history) == 2
    assert [p.requires_grad for p in unet.parameters()] == flags
    assert all(not m._forward_hooks for m in unet.modules())
    assert all(p.grad is None for p in unet.parameters())


def test_job_progress_and_cancel(tiny_backend):
    job = GateJob(tiny_backend, ["a"], GateConfig(iterations=500, batch_size=1, pool=1)).start()
    deadline = 120
    while job.status()["iteration"] < 1 and deadline > 0 and job.running:
        job.wait(0.5)
        deadline -= 0.5
    status = job.status()
    assert status["state"] == "running" and status["iterations"] == 500 and status["eta_seconds"] > 0
    job.cancel()
    assert job.wait(120)
    assert job.status()["state"] == "cancelled" and job.result is None
    assert all(not m._forward_hooks for m in tiny_backend.unet.modules())


def test_job_reports_failure(tiny_backend):
    job = GateJob(tiny_backend, [], GateConfig(iterations=1, batch_size=1, pool=1)).start()
    assert job.wait(60)
    assert job.status()["state"] == "failed" and "at least one prompt" in job.status()["error"]


# ------------------------------------------------------------------ on the trained fixture
@pytest.fixture(scope="module")
def digits():
    from dato.evaluation.backends import fixture_backend, fixture_prompts

    return fixture_backend(steps=6, batch_size=20), fixture_prompts()


def test_short_optimisation_on_the_fixture_lowers_the_loss(digits):
    backend, prompts = digits
    seen = []
    config = GateConfig(target_speedup=2.0, iterations=8, batch_size=2, pool=4, warm_start="none",
                        relaxed_fraction=0.5, init_logit=2.0, sparsity_weight=2.0)
    train_gates(backend, prompts, config, progress=seen.append)
    losses = [s["loss"] for s in seen]
    assert losses[0] > 0.3  # all gates open: the whole sparsity penalty
    assert max(losses[-3:]) < 0.9 * losses[0]  # measured: 0.494 -> about 0.36


def test_gates_are_at_least_as_faithful_as_uniform_caching_at_equal_macs(digits):
    backend, prompts = digits
    cost = trace_unet_cost(backend.unet, context_len=int(backend.null_context(1).shape[1]))
    h, w = backend.latent_shape[-2:]
    costs = LevelCosts.from_cost(cost, h, w)
    result = train_gates(backend, prompts, GateConfig(target_speedup=2.0, iterations=6, batch_size=2, pool=4))
    uniform = uniform_start(costs, 6, 2.0)
    uniform_macs = cost.schedule_macs(uniform, h, w)
    gated = result.schedule(costs.full * 6 / uniform_macs)
    assert cost.schedule_macs(gated, h, w) <= uniform_macs * (1 + 1e-9)
    held_out = [(prompts[d], 9000 + d) for d in range(10)]  # noise the gates never saw
    full = backend.generate(None, held_out).latents

    def error(schedule):
        out = backend.generate(schedule, held_out).latents
        return float((out - full).norm() / full.norm())

    assert error(gated) <= error(uniform) + 1e-6
