"""Analytic MACs: hand counts on the tiny UNet, and the orderings every schedule decision relies on."""

from __future__ import annotations

import pytest
import torch

from dato.core.macs import trace_unet_cost
from dato.core.schedule import FULL, REUSE, Schedule


def hand_count(unet, height, width, context_len=77, **forward_kwargs):
    """Count conv/linear/attention MACs with hooks during a real forward at the target size (``forward_kwargs``:
    e.g. SDXL's size vector ``y``)."""
    total = [0.0]
    handles = []
    for module in unet.modules():
        if isinstance(module, torch.nn.Conv2d):
            def conv_hook(m, a, out):
                total[0] += out.shape[-2] * out.shape[-1] * m.out_channels * m.in_channels // m.groups * \
                    m.kernel_size[0] * m.kernel_size[1]
            handles.append(module.register_forward_hook(conv_hook))
        elif isinstance(module, torch.nn.Linear):
            def lin_hook(m, a, out):
                total[0] += out.numel() // out.shape[-1] * m.in_features * m.out_features
            handles.append(module.register_forward_hook(lin_hook))
        elif hasattr(module, "to_q") and hasattr(module, "to_k"):
            def attn_hook(m, args, kwargs, out):
                ctx = kwargs.get("context")
                keys = ctx.shape[1] if ctx is not None else args[0].shape[1]
                total[0] += 2 * args[0].shape[1] * keys * m.to_q.out_features
            handles.append(module.register_forward_hook(attn_hook, with_kwargs=True))
    with torch.no_grad():
        unet(torch.zeros(1, 4, height, width), torch.zeros(1), context=torch.zeros(1, context_len, 32),
             **forward_kwargs)
    for h in handles:
        h.remove()
    return total[0]


@pytest.mark.parametrize("size", [(16, 16), (24, 16), (32, 32)])
def test_full_call_macs_equal_a_hand_count_at_any_size(tiny_unet, size):
    cost = trace_unet_cost(tiny_unet)
    assert cost.call_macs(*size) == pytest.approx(hand_count(tiny_unet, *size), rel=1e-9)


def test_cached_depths_cost_less_the_shallower_they_are_and_reuse_costs_almost_nothing(tiny_unet):
    cost = trace_unet_cost(tiny_unet)
    full = cost.call_macs(32, 32)
    by_depth = [cost.call_macs(32, 32, d) for d in range(12)]
    assert all(a < b for a, b in zip(by_depth, by_depth[1:], strict=False))
    assert by_depth[-1] < full
    assert cost.call_macs(32, 32, REUSE) < 0.01 * full


@pytest.mark.parametrize("method", ["prune", "merge", "downsample"])
def test_token_reduction_lowers_macs_monotonically(tiny_unet, method):
    cost = trace_unet_cost(tiny_unet)
    values = [cost.call_macs(32, 32, FULL, r, method) for r in (0.0, 0.3, 0.5, 0.7)]
    assert all(a > b for a, b in zip(values, values[1:], strict=False))
    assert cost.call_macs(32, 32, FULL, 0.5, "none") == values[0]


def test_schedule_macs_is_the_sum_of_its_steps(tiny_unet):
    cost = trace_unet_cost(tiny_unet)
    s = Schedule.uniform(10, 5, 0, 0.5, "prune")
    expected = 2 * cost.call_macs(16, 16, FULL, 0.5, "prune") + 8 * cost.call_macs(16, 16, 0, 0.5, "prune")
    assert cost.schedule_macs(s, 16, 16) == pytest.approx(expected)
    assert cost.schedule_macs(Schedule.full(10), 16, 16) == pytest.approx(10 * cost.full_step_macs(16, 16))


def test_the_trace_is_memoised_per_unet(tiny_unet):
    assert trace_unet_cost(tiny_unet) is trace_unet_cost(tiny_unet)
