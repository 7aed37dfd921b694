"""Write a randomly initialised SDXL-base checkpoint that AUTOMATIC1111 v1.10 loads as SDXL.

Test tooling for the opt-in real-WebUI suite (``tests/webui_real``), not
product: no SDXL weights can be downloaded where the suite runs, and a real
checkpoint is not needed to show that the extension patches, caches, restores
and reports correctly on the SDXL UNet.

Usage (the WebUI's own Python, which has ``sgm``, ``open_clip`` and
``transformers``)::

    WEBUI_DIR/venv/bin/python tests/webui_real/make_random_sdxl_ckpt.py WEBUI_DIR OUT.safetensors [SEED]

What it writes: every tensor of ``configs/inference/sd_xl_base.yaml`` from the
WebUI's pinned ``repositories/generative-models`` (the sgm UNet with 9 input
blocks, middle, 9 output blocks and transformer depths 0/2/10; the VAE), the
CLIP ViT-L/14 text encoder (``conditioner.embedders.0.transformer``) and the
OpenCLIP ViT-bigG/14 text tower (``conditioner.embedders.1.model``), under the
key names of the released ``sd_xl_base_1.0.safetensors``, as fp16 safetensors.
The WebUI recognises SDXL by ``conditioner.embedders.1.model.ln_final.weight``.

How: the modules are built on PyTorch's ``meta`` device (shapes only, no
memory), then each tensor is drawn and written one at a time, so the script
needs about 1 GB of memory and no GPU. Weights (two or more dimensions) are
normal with standard deviation ``1/sqrt(fan_in)``, so that no layer is zero
(ldm and sgm zero-initialise output convolutions; a zero layer would hide
every patch from the image); norm scales are near 1, biases near 0.
Cost, measured on 2 CPU cores: about 6.9 GB of disk and one to two minutes.
The WebUI then needs about 15 GB of memory for the model in fp32
(``--no-half``).
"""

from __future__ import annotations

import json
import math
import os
import struct
import sys
import time

import torch

DTYPES = {torch.float16: "F16", torch.int64: "I64"}


def _modules(webui: str) -> dict[str, torch.nn.Module]:
    """The checkpoint's parts on the meta device, keyed by their prefix in the released file."""
    sys.path.insert(0, os.path.join(webui, "repositories", "generative-models"))
    import open_clip
    from omegaconf import OmegaConf
    from sgm.modules.diffusionmodules.openaimodel import UNetModel
    from sgm.util import instantiate_from_config
    from transformers import CLIPTextConfig, CLIPTextModel

    config = OmegaConf.load(os.path.join(webui, "repositories", "generative-models", "configs", "inference",
                                         "sd_xl_base.yaml")).model.params
    unet_params = dict(config.network_config.params)
    unet_params.update(use_checkpoint=False, spatial_transformer_attn_type="softmax")
    first_stage = config.first_stage_config
    first_stage.params.ddconfig.attn_type = "vanilla"
    clip_l = CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072, projection_dim=768,
                            num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=77,
                            hidden_act="quick_gelu")
    with torch.device("meta"):
        bigg = open_clip.create_model("ViT-bigG-14", pretrained=None, device=torch.device("meta"))
        del bigg.visual  # sgm's FrozenOpenCLIPEmbedder2 keeps the text tower only
        return {
            "model.diffusion_model.": UNetModel(**unet_params),
            "first_stage_model.": instantiate_from_config(first_stage),
            "conditioner.embedders.0.transformer.": CLIPTextModel(clip_l),
            "conditioner.embedders.1.model.": bigg,
        }


def _shapes(parts: dict[str, torch.nn.Module]) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    out = {}
    for prefix, module in parts.items():
        for key, tensor in module.state_dict().items():
            dtype = torch.float16 if tensor.is_floating_point() else torch.int64
            out[prefix + key] = (tuple(tensor.shape), dtype)
    return out


def _draw(key: str, shape: tuple[int, ...], dtype: torch.dtype, generator: torch.Generator) -> torch.Tensor:
    """One tensor: weights ~ N(0, 1/fan_in), norm scales ~ 1, biases ~ 0, position ids as counted."""
    if dtype == torch.int64:  # CLIP's position_ids buffer
        return torch.arange(shape[-1], dtype=torch.int64).expand(shape).contiguous()
    if key.endswith("logit_scale"):
        return torch.full(shape, math.log(1 / 0.07), dtype=dtype)
    if len(shape) >= 2:
        fan_in = math.prod(shape[1:])
        return (torch.randn(shape, generator=generator) / math.sqrt(fan_in)).to(dtype)
    noise = torch.randn(shape, generator=generator) * 0.02
    is_scale = key.endswith(".weight") or key.endswith(".gamma")
    return (noise + 1.0 if is_scale else noise).to(dtype)


def write(webui: str, out: str, seed: int = 0) -> dict[str, int]:
    """Write the checkpoint (deterministic bytes for a seed, so the WebUI's model hash is stable)."""
    shapes = _shapes(_modules(webui))
    names = sorted(shapes)
    header: dict = {"__metadata__": {"format": "pt", "note": f"random-init SDXL base for offline testing, seed {seed}"}}
    offset = 0
    for name in names:
        shape, dtype = shapes[name]
        size = math.prod(shape) * (2 if dtype == torch.float16 else 8)
        header[name] = {"dtype": DTYPES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    generator = torch.Generator().manual_seed(seed)
    tmp = out + ".tmp"
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for name in names:
            f.write(_draw(name, *shapes[name], generator).numpy().tobytes())
    os.replace(tmp, out)
    counts = {prefix: sum(1 for n in names if n.startswith(prefix)) for prefix in
              ("model.diffusion_model.", "first_stage_model.", "conditioner.embedders.0.", "conditioner.embedders.1.")}
    counts["bytes"] = offset
    return counts


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3):
        print(__doc__.split("\n\n")[2], file=sys.stderr)
        return 2
    start = time.monotonic()
    counts = write(argv[0], argv[1], int(argv[2]) if len(argv) == 3 else 0)
    from safetensors import safe_open  # the reader the WebUI uses accepts the file

    with safe_open(argv[1], "pt") as f:
        assert f.get_tensor("conditioner.embedders.1.model.ln_final.weight").shape == (1280,)
        assert f.get_tensor("model.diffusion_model.label_emb.0.0.weight").shape == (1280, 2816)
    print(f"wrote {argv[1]}: {counts} in {time.monotonic() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
