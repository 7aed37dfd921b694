"""Analytic MACs on the SDXL topology: a hand count with hooks during real forwards, size vector included."""

from __future__ import annotations

import pytest
import torch

from dato.core.macs import trace_unet_cost
from dato.core.schedule import FULL, REUSE

pytestmark = pytest.mark.usefixtures("one_thread")


def hand_count(unet, height, width, context_len=77):
    """Conv/linear/attention MACs counted by hooks during a real SDXL forward (``y`` = the size vector)."""
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
             y=torch.zeros(1, 16))
    for h in handles:
        h.remove()
    return total[0]


@pytest.mark.parametrize("size", [(16, 16), (24, 16), (32, 32)])
def test_full_call_macs_equal_a_hand_count_at_any_size(tiny_sdxl_unet, size):
    cost = trace_unet_cost(tiny_sdxl_unet)
    assert cost.call_macs(*size) == pytest.approx(hand_count(tiny_sdxl_unet, *size), rel=1e-9)


def test_cached_depths_cost_less_the_shallower_they_are(tiny_sdxl_unet):
    cost = trace_unet_cost(tiny_sdxl_unet)
    full = cost.call_macs(32, 32)
    by_depth = [cost.call_macs(32, 32, d) for d in range(9)]
    assert all(a < b for a, b in zip(by_depth, by_depth[1:], strict=False))
    assert by_depth[-1] < full and cost.call_macs(32, 32, REUSE) < 0.01 * full


@pytest.mark.parametrize("method", ["prune", "merge", "downsample"])
def test_token_reduction_prices_the_finest_attention_level_first(tiny_sdxl_unet, method):
    """SDXL has no attention at ds 1: max_downsample=1 means ds 2, the level the patch reduces."""
    cost = trace_unet_cost(tiny_sdxl_unet)
    assert cost.finest_ds == 2
    plain = cost.call_macs(32, 32, FULL)
    finest = cost.call_macs(32, 32, FULL, 0.5, method, max_downsample=1)
    both = cost.call_macs(32, 32, FULL, 0.5, method, max_downsample=2)
    assert plain > finest > both
