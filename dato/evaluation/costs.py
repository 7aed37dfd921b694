"""What a UNet costs, from its shapes only: the analytic cost model of a built-in architecture or of a live UNet.

The planner (:mod:`dato.core.plan`) prices every pass with a :class:`~dato.core.macs.UNetCost`. Tracing the live
UNet would run it, with every hook other extensions put on it; instead its construction config is read off its
attributes and module shapes (:func:`config_of`) and a network of the same construction is traced on the meta
device, once per config: no weights, no forward of the live model, the same answer before, during and after a run.
"""

from __future__ import annotations

import json
from typing import Any

import torch

from dato.core.layout import UNetLayout, UnsupportedModelError, block_modules, find_unet
from dato.core.macs import UNetCost, trace_unet_cost
from dato.evaluation.models import ARCHITECTURES, construct_unet

__all__ = ["architecture_cost", "config_of", "unet_cost"]


def architecture_cost(arch: str = "sd15") -> UNetCost:
    """The analytic cost model (:class:`~dato.core.macs.UNetCost`) of a built-in architecture's UNet.

    Traced on the meta device: shapes only, no weights, a second or two even for SDXL's 2.6G parameters.
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"architecture {arch!r}: expected one of {', '.join(ARCHITECTURES)}")
    with torch.device("meta"):
        return trace_unet_cost(construct_unet(ARCHITECTURES[arch]()))


def config_of(unet: torch.nn.Module) -> dict[str, Any]:
    """The construction config of a live ldm/sgm ``UNetModel``, read from its attributes and module shapes only
    (no forward, no weights touched): what :func:`unet_cost` rebuilds on the meta device.

    Read: channels, levels, residual blocks and attention resolutions as the UNet stores them; the context
    width from the first cross-attention's key projection; the transformer depth per level (and in the middle)
    by counting transformer blocks; linear or convolutional transformer projections; the width of the size
    vector (``label_emb``). Head counts do not change the MACs, so they are taken as stored.
    """
    layout = UNetLayout.from_unet(unet)
    blocks = block_modules(unet)
    levels = len(unet.channel_mult)
    depths, middle_depth, context_dim, linear = [0] * levels, 0, None, False
    for role, block in blocks.items():
        for module in block.children():
            if type(module).__name__ != "SpatialTransformer":
                continue
            count = len(module.transformer_blocks)
            linear = type(module.proj_in).__name__ == "Linear"
            if context_dim is None and count:
                context_dim = module.transformer_blocks[0].attn2.to_k.in_features
            if role == "middle":
                middle_depth = count
            elif role.startswith("input."):
                level = layout.block_ds(role).bit_length() - 1
                depths[level] = max(depths[level], count)
    if context_dim is None:
        raise UnsupportedModelError("this UNet has no cross-attention; its cost cannot be priced")
    num_res = unet.num_res_blocks
    config: dict[str, Any] = dict(
        image_size=int(getattr(unet, "image_size", 32) or 32),
        in_channels=int(unet.input_blocks[0][0].in_channels), out_channels=int(unet.out[-1].out_channels),
        model_channels=int(unet.model_channels),
        attention_resolutions=sorted(int(r) for r in unet.attention_resolutions),
        num_res_blocks=int(num_res[0]) if isinstance(num_res, (list, tuple)) and len(set(num_res)) == 1
        else (list(num_res) if isinstance(num_res, (list, tuple)) else int(num_res)),
        channel_mult=[int(m) for m in unet.channel_mult], use_spatial_transformer=True,
        use_linear_in_transformer=linear, context_dim=int(context_dim), use_checkpoint=False, legacy=False,
    )
    heads = int(getattr(unet, "num_head_channels", -1) or -1)
    if heads > 0:
        config["num_head_channels"] = heads
    else:
        config["num_heads"] = int(unet.num_heads)
    label = getattr(unet, "label_emb", None)
    if label is not None:
        if getattr(unet, "num_classes", None) != "sequential":
            raise UnsupportedModelError(f"label_emb of kind {unet.num_classes!r}: only SDXL's size vector is known")
        config.update(num_classes="sequential", adm_in_channels=int(label[0][0].in_features),
                      transformer_depth=depths, transformer_depth_middle=middle_depth)
    elif len(set(d for d in depths if d)) <= 1 and middle_depth in (max(depths), 0):
        config["transformer_depth"] = max(depths) or 1
    else:
        config.update(transformer_depth=depths, transformer_depth_middle=middle_depth)
    return config


_COSTS: dict[str, Any] = {}  # shape-only cost models by construction config (one per architecture in practice)


def unet_cost(unet: torch.nn.Module) -> UNetCost:
    """The analytic cost model (:class:`~dato.core.macs.UNetCost`) of a live UNet, from its shapes only.

    The UNet itself never runs: a network of the same construction (:func:`config_of`) is built and traced on the
    meta device, so no hook another extension put on the live UNet fires, no weight is touched, and the answer
    is the same before, during and after a run. Memoised per config.
    """
    config = config_of(find_unet(unet))
    key = json.dumps(config, sort_keys=True)
    if key not in _COSTS:
        with torch.device("meta"):
            _COSTS[key] = trace_unet_cost(construct_unet(config))
    return _COSTS[key]
