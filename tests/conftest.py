"""Shared fixtures: real ldm UNets (from stable-diffusion-sdkit) at toy size with random weights.

Owned by the engine; other suites add their own conftest in a subfolder or
fixtures in their own files.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from dato.evaluation.models import build_unet, tiny_unet_config  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="module")
def one_thread():
    """Small ops: one thread is about as fast on an idle machine and many times faster on a busy one.

    A module opts in with ``pytestmark = pytest.mark.usefixtures("one_thread")``; the count is restored after.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_unet() -> torch.nn.Module:
    """SD1 block topology (12/1/12, attention at ds 1/2/4), 32 channels, zero-init weights re-randomised."""
    return build_unet(tiny_unet_config(), seed=0)


class UNetHolder(torch.nn.Module):
    """Shaped like ldm's LatentDiffusion: ``holder.model.diffusion_model`` is the UNet."""

    def __init__(self, unet: torch.nn.Module) -> None:
        super().__init__()
        self.model = torch.nn.Module()
        self.model.diffusion_model = unet


@pytest.fixture()
def unet(tiny_unet):
    """The session UNet, guaranteed unpatched before and after each test."""
    import dato

    dato.remove_patch(tiny_unet)
    yield tiny_unet
    dato.remove_patch(tiny_unet)


def make_inputs(batch: int = 2, height: int = 16, width: int = 16, seed: int = 0, context_len: int = 7):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, height, width, generator=gen)
    context = torch.randn(batch, context_len, 32, generator=gen)
    return x, context


@pytest.fixture(scope="session")
def tiny_sdxl_unet() -> torch.nn.Module:
    """SDXL base's block topology (9/1/9, attention at ds 2/4 only, transformer depth 0/1/2, size vector ``y``)."""
    from dato.evaluation.models import tiny_sdxl_unet_config

    return build_unet(tiny_sdxl_unet_config(), seed=0)


def make_sdxl_inputs(batch: int = 2, height: int = 16, width: int = 16, seed: int = 0, context_len: int = 7):
    """Latent, context and the size vector ``y`` (``adm_in_channels`` = 16 in the tiny config)."""
    x, context = make_inputs(batch, height, width, seed, context_len)
    y = torch.randn(batch, 16, generator=torch.Generator().manual_seed(seed + 7))
    return x, context, y
