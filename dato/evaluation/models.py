"""ldm UNets to run the engine on when no Stable Diffusion weights are at hand.

``sd15_unet_config`` is the UNet of SD1.x's ``v1-inference.yaml``; ``tiny_unet_config``
keeps its block topology (12 input blocks, middle, 12 output blocks, attention at
downsample 1/2/4) at a size tests can run in milliseconds. ``randomize_zero_init``
re-randomises the weights ldm initialises to zero (output convs, proj_out):
with them at zero every block is an identity and no patch could be seen.

SDXL: ``sdxl_unet_config`` is ``network_config.params`` of generative-models'
``configs/inference/sd_xl_base.yaml`` (the file A1111 v1.10.1 builds SDXL from),
``tiny_sdxl_unet_config`` its topology (3 levels, 9/1/9 blocks, attention at
downsample 2 and 4 only, per-level transformer depth, ``label_emb`` for the size
vector) at toy size. ``build_unet`` builds them with sgm's ``UNetModel`` when the
``sgm`` package is importable (inside the WebUI, or with ``repositories/generative-models``
on ``sys.path``). No PyPI package ships ``sgm``, so elsewhere the same network is
assembled from ldm's classes: sgm's ``UNetModel.forward`` and block classes are
ldm's (SD2 branch) plus two construction features ldm lacks, a per-level
``transformer_depth`` list and ``num_classes="sequential"`` (``label_emb`` =
Linear-SiLU-Linear on ``adm_in_channels``); both are added here with sgm's
parameter names, so SDXL checkpoints load into either.
"""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Mapping
from typing import Any

import torch

from dato.core.layout import UNetLayout, block_modules

__all__ = ["sd15_unet_config", "tiny_unet_config", "sdxl_unet_config", "tiny_sdxl_unet_config", "build_unet",
           "randomize_zero_init", "load_unet_from_checkpoint", "is_sdxl_config", "size_vector_width",
           "sdxl_size_vector", "supply_size_vector", "place_unet", "ARCHITECTURES",
           "CheckpointError", "check_checkpoint", "construct_unet"]


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


def sdxl_unet_config() -> dict[str, Any]:
    """``network_config.params`` of SDXL's ``sd_xl_base.yaml`` (2.6G parameters; checkpointing and xformers off)."""
    return dict(
        adm_in_channels=2816, num_classes="sequential", use_checkpoint=False, in_channels=4, out_channels=4,
        model_channels=320, attention_resolutions=[4, 2], num_res_blocks=2, channel_mult=[1, 2, 4],
        num_head_channels=64, use_spatial_transformer=True, use_linear_in_transformer=True,
        transformer_depth=[1, 2, 10], context_dim=2048, legacy=False,
    )


def tiny_sdxl_unet_config(model_channels: int = 32, context_dim: int = 32, adm_in_channels: int = 16,
                          in_channels: int = 4) -> dict[str, Any]:
    """SDXL base's block topology at toy size: transformer depth (0, 1, 2) per level, 2 in the middle."""
    return dict(
        adm_in_channels=adm_in_channels, num_classes="sequential", use_checkpoint=False, in_channels=in_channels,
        out_channels=in_channels, model_channels=model_channels, attention_resolutions=[4, 2], num_res_blocks=2,
        channel_mult=[1, 2, 4], num_head_channels=8, use_spatial_transformer=True, use_linear_in_transformer=True,
        transformer_depth=[0, 1, 2], context_dim=context_dim, legacy=False,
    )


#: built-in architectures by the name the CLI takes (``--arch``)
ARCHITECTURES = {"sd15": sd15_unet_config, "sdxl": sdxl_unet_config}


def is_sdxl_config(config: Mapping[str, Any]) -> bool:
    """sgm-only construction features: a per-level depth list or the ``sequential`` size-vector embedding."""
    return config.get("num_classes") == "sequential" or isinstance(config.get("transformer_depth"), (list, tuple))


def _sgm_unet_class():
    try:
        from sgm.modules.diffusionmodules.openaimodel import UNetModel
    except ImportError:
        return None
    return UNetModel


_SPATIAL: dict[type, type] = {}


def _sgm_spatial_transformer(ldm_class: type) -> type:
    """ldm's ``SpatialTransformer`` with sgm's one behaviour change: every transformer block of a
    depth > 1 stack attends to the same context (ldm indexes a list of contexts per block).
    Same name and parameters, so the engine and checkpoints see sgm's class."""
    if ldm_class not in _SPATIAL:
        def forward(self, x, context=None):
            if isinstance(context, list):
                context = context[0]
            b, c, h, w = x.shape
            x_in = x
            x = self.norm(x)
            if not self.use_linear:
                x = self.proj_in(x)
            x = x.permute(0, 2, 3, 1).reshape(b, h * w, -1).contiguous()
            if self.use_linear:
                x = self.proj_in(x)
            for block in self.transformer_blocks:
                x = block(x, context=context)
            if self.use_linear:
                x = self.proj_out(x)
            x = x.reshape(b, h, w, -1).permute(0, 3, 1, 2).contiguous()
            if not self.use_linear:
                x = self.proj_out(x)
            return x + x_in

        _SPATIAL[ldm_class] = type("SpatialTransformer", (ldm_class,), {
            "forward": forward, "__module__": __name__, "__qualname__": "SpatialTransformer"})
    return _SPATIAL[ldm_class]


def _ldm_built_sgm_unet(config: Mapping[str, Any]) -> torch.nn.Module:
    """sgm's SDXL ``UNetModel`` assembled from ldm's classes (see the module docstring)."""
    from ldm.modules.diffusionmodules.openaimodel import UNetModel

    cfg = dict(config)
    adm = cfg.pop("adm_in_channels", None)
    num_classes = cfg.pop("num_classes", None)
    depth = cfg.pop("transformer_depth", 1)
    depth_middle = cfg.pop("transformer_depth_middle", None)
    cfg.pop("spatial_transformer_attn_type", None)
    cfg.setdefault("image_size", 32)  # required by ldm, unused by both
    levels = len(cfg["channel_mult"])
    depths = list(depth) if isinstance(depth, (list, tuple)) else [depth] * levels
    depth_middle = depths[-1] if depth_middle is None else depth_middle
    deepest = max([*depths, depth_middle, 1])
    context_dim = cfg.pop("context_dim")
    unet = UNetModel(transformer_depth=deepest, context_dim=[context_dim] * deepest, **cfg)
    layout = UNetLayout.from_unet(unet)
    for role, block in block_modules(unet).items():
        if role == "out":
            continue
        keep = depth_middle if role == "middle" else depths[layout.block_ds(role).bit_length() - 1]
        for module in block.children():
            if type(module).__name__ == "SpatialTransformer":
                module.transformer_blocks = module.transformer_blocks[:keep]
                module.__class__ = _sgm_spatial_transformer(type(module))
    if num_classes is not None:
        if num_classes != "sequential" or adm is None:
            raise ValueError(f"num_classes = {num_classes!r}: only 'sequential' with adm_in_channels is supported")
        width = unet.time_embed[0].out_features
        unet.label_emb = torch.nn.Sequential(torch.nn.Sequential(
            torch.nn.Linear(adm, width), torch.nn.SiLU(), torch.nn.Linear(width, width)))
        unet.num_classes = "sequential"
    return unet


def construct_unet(config: Mapping[str, Any]) -> torch.nn.Module:
    """The network of ``config`` (under a ``torch.device("meta")`` context: shapes only), weights as built."""
    if not is_sdxl_config(config):
        from ldm.modules.diffusionmodules.openaimodel import UNetModel

        return UNetModel(**dict(config))
    sgm_class = _sgm_unet_class()
    return sgm_class(**dict(config)) if sgm_class is not None else _ldm_built_sgm_unet(config)


def build_unet(config: Mapping[str, Any], seed: int = 0, randomize: bool = True,
               dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> torch.nn.Module:
    """A real ldm (SD1.x/2.x) or sgm-topology (SDXL) ``UNetModel`` with seeded random weights (drawn in fp32
    on the CPU), in eval mode."""
    torch.manual_seed(seed)
    unet = construct_unet(config)
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
    on_meta = any(p.is_meta for p in unet.parameters())  # shape-only builds (layout, MACs) stay where they are
    unet = (unet.to(dtype) if on_meta else unet.to(device, dtype)).eval().requires_grad_(False)
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


class CheckpointError(ValueError):
    """A file that cannot be read as a Stable Diffusion checkpoint; the message names it and says why."""


UNET_PREFIX = "model.diffusion_model."


def _read_errors() -> tuple[type[BaseException], ...]:
    """What reading a damaged or foreign checkpoint raises (safetensors' own error where it is installed)."""
    errors = (OSError, RuntimeError, ValueError, EOFError, UnicodeDecodeError, pickle.UnpicklingError)
    try:
        from safetensors import SafetensorError
    except ImportError:
        return errors
    return (*errors, SafetensorError)


def _read_state(path: str, mmap: bool) -> Mapping[str, Any]:
    """The checkpoint's tensors by key (``mmap``: lazily, for a quick look); :class:`CheckpointError` if unreadable."""
    try:
        if str(path).endswith(".safetensors"):
            from safetensors.torch import load_file, safe_open

            if mmap:
                with safe_open(str(path), framework="pt") as f:
                    return dict.fromkeys(f.keys())
            return load_file(str(path))
        state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=mmap and zipfile.is_zipfile(path))
    except _read_errors() as exc:
        kind = "safetensors" if str(path).endswith(".safetensors") else "torch (.ckpt)"
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: not a readable {kind} checkpoint ({reason}); is the file complete?") from None
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path}: holds a {type(state).__name__}, not a state dict")
    return state.get("state_dict", state)


def _without_unet(path: str) -> CheckpointError:
    return CheckpointError(f"{path}: no '{UNET_PREFIX}*' weights; is this an SD1.x, SD2.x or SDXL checkpoint?")


def check_checkpoint(path: str) -> None:
    """Before anything heavy: the file reads as a checkpoint and has UNet weights (header/lazy read only)."""
    if not any(str(k).startswith(UNET_PREFIX) for k in _read_state(path, mmap=True)):
        raise _without_unet(path)


def load_unet_from_checkpoint(path: str, config: Mapping[str, Any] | None = None,
                              dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"
                              ) -> torch.nn.Module:
    """The UNet of an SD1.x or SDXL ``.safetensors``/``.ckpt`` (keys ``model.diffusion_model.*``).

    Without ``config``, SDXL base is recognised by its size-vector embedding (``label_emb``).
    """
    state = _read_state(path, mmap=False)
    unet_state = {k[len(UNET_PREFIX):]: v for k, v in state.items() if k.startswith(UNET_PREFIX)}
    if not unet_state:
        raise _without_unet(path)
    if config is None and "label_emb.0.0.weight" in unet_state:
        if unet_state["label_emb.0.0.weight"].shape[1] != 2816:
            raise ValueError(f"{path}: an sgm UNet but not SDXL base (adm_in_channels "
                             f"{unet_state['label_emb.0.0.weight'].shape[1]}, e.g. the refiner); pass its config")
        config = sdxl_unet_config()
    elif (config is None and "input_blocks.1.1.proj_in.weight" in unet_state
          and unet_state["input_blocks.1.1.proj_in.weight"].dim() == 2):
        raise ValueError(f"{path}: looks like SD2.x (linear proj_in); pass its UNet config explicitly")
    with torch.device("meta"):
        unet = construct_unet(config or sd15_unet_config())
    missing, unexpected = unet.load_state_dict(unet_state, strict=False, assign=True)
    if missing or unexpected:
        raise ValueError(f"{path}: UNet weights do not match the config (missing {len(missing)}, "
                         f"unexpected {len(unexpected)}; e.g. {(missing or unexpected)[:3]})")
    return place_unet(unet, device, dtype)


def size_vector_width(unet: torch.nn.Module) -> int | None:
    """``adm_in_channels`` of an SDXL-style UNet (the width of ``y``), ``None`` for a UNet without a size vector."""
    if getattr(unet, "num_classes", None) != "sequential":
        return None
    return next(m for m in unet.label_emb.modules() if isinstance(m, torch.nn.Linear)).in_features


def sdxl_size_vector(width: int, height: int, image_width: int, seed: int = 0) -> torch.Tensor:
    """A ``(1, width)`` ``y`` for a model without its text encoders.

    For SDXL base (``width`` 2816) it is laid out as sgm's conditioner makes it: 256-wide sinusoidal embeddings
    of original size (h, w), crop (0, 0) and target size (h, w) (1536), then the pooled CLIP-G text embedding
    (1280), here a fixed seeded vector. Any other width (toy configs) is one seeded random vector.
    """
    gen = torch.Generator().manual_seed(seed + 2816)
    if width != 2816:
        return torch.randn(1, width, generator=gen)
    from ldm.modules.diffusionmodules.util import timestep_embedding

    sizes = torch.tensor([height, image_width, 0, 0, height, image_width], dtype=torch.float32)
    fourier = timestep_embedding(sizes, 256).reshape(1, -1)
    return torch.cat([fourier, torch.randn(1, 1280, generator=gen)], dim=1)


def supply_size_vector(unet: torch.nn.Module, vector: torch.Tensor):
    """Give every call of ``unet`` that passes no ``y`` this ``(1, width)`` size vector (expanded to the batch).

    The samplers, the benchmark and the generators call ``unet(x, t, context=...)`` as for SD1.x; SDXL's
    UNet also needs ``y``. Returns the hook handle (``.remove()`` takes it off).
    """

    def hook(module: torch.nn.Module, args: tuple, kwargs: dict):
        if kwargs.get("y") is not None or len(args) > 3:
            return None
        x = args[0] if args else kwargs["x"]
        y = vector.to(device=x.device, dtype=x.dtype).expand(x.shape[0], -1)
        return args, {**kwargs, "y": y}

    return unet.register_forward_pre_hook(hook, with_kwargs=True)
