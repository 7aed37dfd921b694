"""Analytic MACs on the SDXL topology: a hand count with hooks during real forwards, size vector included."""

from __future__ import annotations

import pytest
import torch
from test_macs import hand_count  # the same hook-based count as SD1's, with the size vector

from dato.core.macs import trace_unet_cost
from dato.core.schedule import FULL, REUSE

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("size", [(16, 16), (24, 16), (32, 32)])
def test_full_call_macs_equal_a_hand_count_at_any_size(tiny_sdxl_unet, size):
    cost = trace_unet_cost(tiny_sdxl_unet)
    assert cost.call_macs(*size) == pytest.approx(hand_count(tiny_sdxl_unet, *size, y=torch.zeros(1, 16)), rel=1e-9)


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
