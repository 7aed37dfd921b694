"""ldm UNets to run the engine on when no Stable Diffusion weights are at hand.

``sd15_unet_config`` is the UNet of SD1.x's ``v1-inference.yaml``; ``tiny_unet_config``
keeps its block topology (12 input blocks, middle, 12 output blocks, attention at
downsample 1/2/4) at a size tests can run in milliseconds. ``randomize_zero_init``
re-randomises the weights ldm initialises to zero (output convs, proj_out):
with them at zero every block is an identity and no patch could be seen.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["sd15_unet_config", "tiny_unet_config", "build_unet", "randomize_zero_init", "load_unet_from_checkpoint",
           "place_unet"]


def sd15_unet_config() -> dict[str, Any]:
    """``model.params.unet_config.params`` of SD1.x ``v1-inference.yaml`` (860M parameters)."""
    return dict(
        image_size=32, in_channels=4, out_channels=4, model_channels=320, attention_resolutions=[4, 2, 1],
        num_res_blocks=2, channel_mult=[1, 2, 4, 4], num_heads=8, use_spatial_transformer=True,
        transformer_depth=1, context_dim=768, use_checkpoint=False, legacy=False,
    )


def tiny_unet_config(model_channels: int = 32, context_dim: int = 32, in_channels: int = 4) -> dict[str, Any]:
    """SD1's block topology at toy size."""
    return dict(
        image_size=16, in_channels=in_channels, out_channels=in_channels, model_channels=model_channels,
        attention_resolutions=[4, 2, 1], num_res_blocks=2, channel_mult=[1, 2, 4, 4], num_head_channels=8,
        use_spatial_transformer=True, transformer_depth=1, context_dim=context_dim, use_checkpoint=False,
        legacy=False,
    )


def build_unet(config: Mapping[str, Any], seed: int = 0, randomize: bool = True,
               dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> torch.nn.Module:
    """A real ldm ``UNetModel`` with seeded random weights (drawn in fp32 on the CPU), in eval mode."""
    from ldm.modules.diffusionmodules.openaimodel import UNetModel

    torch.manual_seed(seed)
    unet = UNetModel(**dict(config))
    if randomize:
        randomize_zero_init(unet, seed)
    return place_unet(unet, device, dtype)


def _cast_to_weights(module: torch.nn.Module, args: tuple) -> tuple:
    weight = next(module.parameters())
    return (args[0].to(weight.dtype), *args[1:])


def sdpa_forward(self, x, context=None, mask=None):
    """ldm ``CrossAttention`` through PyTorch SDPA, as the WebUI's 'sdp' optimisation does."""
    heads = self.heads
    context = x if context is None else context
    q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)
    batch, n_q, inner = q.shape
    q, k, v = (t.view(batch, -1, heads, inner // heads).transpose(1, 2) for t in (q, k, v))
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    out = out.transpose(1, 2).reshape(batch, n_q, inner)
    return self.to_out(out)


def place_unet(unet: torch.nn.Module, device: torch.device | str = "cpu",
               dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """``unet`` on ``device`` in ``dtype``, eval, no grad, and able to run in half precision.

    ldm's UNet casts its input to ``unet.dtype`` but builds the timestep embedding in fp32; the WebUI
    casts it in its own hijack (``sd_hijack_unet``), standalone this does: ``unet.dtype`` is set and the
    embedding is cast to the weights' dtype on the way into ``time_embed``. ldm's ``GroupNorm32`` normalises
    in fp32 (``x.float()``), which a CPU refuses with half-precision parameters: those stay fp32 (a few KB).
    ldm's own attention upcasts q and k to fp32 and then multiplies by v in half precision, which fails;
    the WebUI replaces it, and so does this: every ``CrossAttention`` runs through SDPA (:func:`sdpa_forward`).
    In fp32 nothing is added.
    """
    unet = unet.to(device, dtype).eval().requires_grad_(False)
    if dtype != torch.float32:
        for module in unet.modules():
            if type(module).__name__ == "GroupNorm32":
                module.float()
            elif type(module).__name__ == "CrossAttention" and "forward" not in vars(module):
                module.forward = sdpa_forward.__get__(module)
        if hasattr(unet, "dtype"):
            unet.dtype = dtype
        embed = getattr(unet, "time_embed", None)
        if embed is not None and not getattr(embed, "_dato_casts", False):
            embed.register_forward_pre_hook(_cast_to_weights)
            embed._dato_casts = True
    return unet


@torch.no_grad()
def randomize_zero_init(unet: torch.nn.Module, seed: int = 0, std: float = 0.02) -> None:
    """Give every all-zero weight (ldm's ``zero_module``) small random values."""
    gen = torch.Generator().manual_seed(seed + 1)
    for param in unet.parameters():
        if param.dim() > 1 and not param.any():
            param.copy_(torch.randn(param.shape, generator=gen) * std)
        elif param.dim() == 1 and not param.any():
            param.copy_(torch.randn(param.shape, generator=gen) * std)


def load_unet_from_checkpoint(path: str, config: Mapping[str, Any] | None = None,
                              dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"
                              ) -> torch.nn.Module:
    """The UNet of an SD1.x ``.safetensors``/``.ckpt`` (keys ``model.diffusion_model.*``)."""
    from ldm.modules.diffusionmodules.openaimodel import UNetModel

    if str(path).endswith(".safetensors"):
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
        state = state.get("state_dict", state)
    prefix = "model.diffusion_model."
    unet_state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not unet_state:
        raise ValueError(f"{path}: no 'model.diffusion_model.*' weights; is this an SD1.x checkpoint?")
    if "input_blocks.1.1.proj_in.weight" in unet_state and unet_state["input_blocks.1.1.proj_in.weight"].dim() == 2:
        raise ValueError(f"{path}: looks like SD2.x (linear proj_in); pass its UNet config explicitly")
    with torch.device("meta"):
        unet = UNetModel(**dict(config or sd15_unet_config()))
    missing, unexpected = unet.load_state_dict(unet_state, strict=False, assign=True)
    if missing or unexpected:
        raise ValueError(f"{path}: UNet weights do not match the config (missing {len(missing)}, "
                         f"unexpected {len(unexpected)}; e.g. {(missing or unexpected)[:3]})")
    return place_unet(unet, device, dtype)
