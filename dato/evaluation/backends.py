"""A search backend without the WebUI: an ldm UNet, the engine's standalone sampler, optional decoder.

:class:`StandaloneBackend` makes the samples of one evaluation: noise from each
pair's seed, the prompts' conditioning, ``dato.evaluation.sampling.sample`` with the
patch's manual clock driven by ``on_step``, the patch removed afterwards (the
UNet is unpatched between evaluations). ``schedule=None`` samples with no
patch at all: that is the baseline the reference and the time ratio use.

Three ways to get one: :func:`builtin_backend` (random SD1.5-shaped UNet, no
text encoder or VAE: prompts become fixed pseudo-embeddings, quality is
latent fidelity), :func:`fixture_backend` (the trained tiny digits model) and
:func:`checkpoint_backend` (an SD1.x ``.safetensors``/``.ckpt``: UNet, CLIP
text encoder via ``transformers``, VAE decoder via ldm).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from dato.core.macs import UNetCost, trace_unet_cost
from dato.core.patch import apply_patch, remove_patch, set_step
from dato.core.schedule import Schedule

__all__ = ["SampleBackend", "Samples", "StandaloneBackend", "builtin_backend", "fixture_backend", "checkpoint_backend",
           "file_hash"]

SAMPLERS = ("euler", "euler_a", "heun", "ddim")  # dato.evaluation.sampling.SAMPLERS


@dataclass
class Samples:
    """The output of one evaluation: one entry per (prompt, seed) pair, in the pairs' order."""

    pairs: list[tuple[str, int]]
    latents: torch.Tensor  # (B, C, h, w) on the CPU, float32
    images: torch.Tensor | None = None  # (B, 3, H, W) in [0, 1] on the CPU, float32, when the backend decodes
    seconds: float = 0.0  # wall time of the sampling call(s)
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.latents.shape[0] != len(self.pairs):
            raise ValueError(f"{self.latents.shape[0]} latents for {len(self.pairs)} (prompt, seed) pairs")
        if self.images is not None and self.images.shape[0] != len(self.pairs):
            raise ValueError(f"{self.images.shape[0]} images for {len(self.pairs)} (prompt, seed) pairs")


class SampleBackend(Protocol):
    """What every schedule generator samples through: a model, its sampler and step count, its conditioning.

    :class:`StandaloneBackend` is the headless one; the WebUI glue has one over the live model.
    ``generate(None, pairs)`` is the unaccelerated baseline (no patch).
    """

    unet: torch.nn.Module
    steps: int
    sampler: str

    def generate(self, schedule: Schedule | None, pairs: Sequence[tuple[str, int]]) -> Samples: ...

    def macs(self, schedule: Schedule) -> float: ...

    def describe(self) -> dict[str, Any]: ...



class StandaloneBackend:
    """Samples for a schedule with ``dato.evaluation.sampling.sample``. See the module docstring."""

    def __init__(
        self,
        unet: torch.nn.Module,
        *,
        steps: int,
        latent_shape: Sequence[int],
        encode: Callable[[list[str]], torch.Tensor],
        null_context: Callable[[int], torch.Tensor] | None = None,
        decode: Callable[[torch.Tensor], torch.Tensor] | None = None,
        sampler: str = "euler",
        cfg_scale: float = 7.5,
        alphas_cumprod: torch.Tensor | None = None,
        max_downsample: int = 1,
        batch_size: int = 4,
        patch_seed: int = 0,
        info: dict[str, Any] | None = None,
        sample_fn: Callable[..., torch.Tensor] | None = None,
        size_vector: torch.Tensor | None = None,
    ) -> None:
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler = {sampler!r}, expected one of {', '.join(SAMPLERS)}")
        if cfg_scale != 1.0 and null_context is None:
            raise ValueError("cfg_scale != 1 needs null_context (the unconditional conditioning)")
        self.unet = unet
        self.steps = int(steps)
        self.latent_shape = tuple(int(v) for v in latent_shape)
        self.encode = encode
        self.null_context = null_context
        self.decode = decode
        self.sampler = sampler
        self.cfg_scale = float(cfg_scale)
        self.alphas_cumprod = alphas_cumprod
        self.max_downsample = max_downsample
        self.batch_size = max(1, int(batch_size))
        self.patch_seed = patch_seed
        self.info = dict(info or {})
        self.sample_fn = sample_fn  # default: dato.evaluation.sampling.sample (same signature)
        # SDXL: the ``y`` every call of this backend's UNet gets when its caller passes none (cond and uncond
        # alike, as A1111 does unless a negative size is set). A hook on the UNet for the backend's lifetime, so
        # it also reaches a gated UNet's calls and their recomputation during backward (gate training).
        self.size_vector = size_vector
        if size_vector is not None:
            from dato.evaluation.models import supply_size_vector

            self._size_hook = supply_size_vector(unet, size_vector)
        param = next(unet.parameters())
        self.device, self.dtype = param.device, param.dtype
        self._context_len: int | None = None

    def describe(self) -> dict[str, Any]:
        return {
            "backend": "standalone", "steps": self.steps, "sampler": self.sampler, "cfg_scale": self.cfg_scale,
            "latent_shape": list(self.latent_shape), "decodes": self.decode is not None, "device": str(self.device),
            "dtype": str(self.dtype).replace("torch.", ""), "max_downsample": self.max_downsample, **self.info,
        }

    def unet_cost(self) -> UNetCost:
        """The UNet's analytic cost model at this backend's prompt length (traced once per UNet)."""
        if self._context_len is None:
            # the unconditional context has the prompt length and exists for every backend (an empty prompt
            # does not: the fixture's prompts must name a digit)
            context = self.null_context(1) if self.null_context is not None else self.encode([""])
            self._context_len = int(context.shape[1])
        return trace_unet_cost(self.unet, context_len=self._context_len)

    def macs(self, schedule: Schedule) -> float:
        """Analytic UNet MACs of sampling one image with ``schedule`` (one UNet pass per step)."""
        return self.unet_cost().schedule_macs(schedule.resample(self.steps), self.latent_shape[-2],
                                              self.latent_shape[-1], self.max_downsample)

    def sample_latents(self, pairs: Sequence[tuple[str, int]], *, unet: Callable[..., torch.Tensor] | None = None,
                       on_step: Callable[[int, int], None] | None = None, grad: bool = False) -> torch.Tensor:
        """Final latents of ``(prompt, seed)`` pairs in one batch: seeded noise, the prompts' conditioning, CFG.

        ``unet`` replaces the model call (gate training passes its gated UNet); ``on_step(i, n)`` runs
        before each step; ``grad`` keeps autograd on. Calibration, gates and :meth:`generate` share it.
        """
        if self.sample_fn is not None:
            sample = self.sample_fn
        else:
            from dato.evaluation.sampling import sample
        noise = torch.stack([
            torch.randn(self.latent_shape, generator=torch.Generator().manual_seed(int(seed))) for _, seed in pairs
        ]).to(self.device, self.dtype)
        cond = self.encode([str(p) for p, _ in pairs]).to(self.device, self.dtype)
        uncond = self.null_context(len(pairs)).to(self.device, self.dtype) if self.null_context else None
        extra = {"grad": True} if grad else {}
        return sample(self.unet if unet is None else unet, noise, cond, uncond, steps=self.steps,
                      sampler=self.sampler, cfg_scale=self.cfg_scale, alphas_cumprod=self.alphas_cumprod,
                      on_step=on_step, **extra)

    @torch.no_grad()
    def generate(self, schedule: Schedule | None, pairs: Sequence[tuple[str, int]]) -> Samples:
        pairs = [(str(p), int(s)) for p, s in pairs]
        latents, images, seconds = [], [], 0.0
        for start in range(0, len(pairs), self.batch_size):
            chunk = pairs[start:start + self.batch_size]
            on_step = None
            if schedule is not None:
                apply_patch(self.unet, schedule, clock="manual", max_downsample=self.max_downsample,
                            seed=self.patch_seed)
                on_step = self._on_step
            try:
                _sync(self.device)
                t0 = time.perf_counter()
                out = self.sample_latents(chunk, on_step=on_step)
                _sync(self.device)
                seconds += time.perf_counter() - t0
            finally:
                if schedule is not None:
                    remove_patch(self.unet)
            latents.append(out.float().cpu())
            if self.decode is not None:
                images.append(self.decode(out).float().clamp(0, 1).cpu())
        return Samples(pairs, torch.cat(latents), torch.cat(images) if images else None, seconds)


    def _on_step(self, step: int, total: int) -> None:
        set_step(self.unet, step, total)


def _sync(device: torch.device) -> None:
    from dato.evaluation.device import synchronize

    synchronize(device)


# ------------------------------------------------------------------ builders
def _pseudo_embedding(text: str, length: int, dim: int) -> torch.Tensor:
    """A fixed random (length, dim) tensor per text: conditioning for a model without a text encoder."""
    seed = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little") % (2**63)
    return torch.randn(length, dim, generator=torch.Generator().manual_seed(seed))


def builtin_backend(latent_size: int = 16, steps: int = 8, sampler: str = "euler", cfg_scale: float = 7.5,
                    model_seed: int = 0, batch_size: int = 4, max_downsample: int = 1, model: str = "sd15",
                    sample_fn: Callable[..., torch.Tensor] | None = None, device: str | torch.device = "cpu",
                    dtype: torch.dtype = torch.float32) -> StandaloneBackend:
    """A random-weight ldm UNet at a small latent size; no text encoder, no VAE.

    ``model="sd15"``: SD1.5's UNet (860M parameters); ``"tiny"``: the same topology at toy width (tests);
    ``"sdxl"``: SDXL base's UNet (2.6G parameters, 77 x 2048 context, size vector ``y``); ``"tiny-sdxl"``:
    SDXL's topology at toy width.
    Prompts become fixed pseudo-embeddings, so different prompts still condition differently; quality is
    latent fidelity (there are no pixels). It shows the whole search path, not image quality.
    """
    from dato.evaluation import models

    configs = {"sd15": models.sd15_unet_config, "tiny": models.tiny_unet_config, "sdxl": models.sdxl_unet_config,
               "tiny-sdxl": models.tiny_sdxl_unet_config}
    if model not in configs:
        raise ValueError(f"built-in model = {model!r}, expected one of {', '.join(configs)}")
    config = configs[model]()
    unet = models.build_unet(config, seed=model_seed, device=device, dtype=dtype)
    length, dim = (77, int(config["context_dim"])) if model in ("sd15", "sdxl") else (7, int(config["context_dim"]))
    y_width = models.size_vector_width(unet)
    size_vector = None if y_width is None else models.sdxl_size_vector(y_width, latent_size * 8, latent_size * 8)
    names = {"sd15": "SD1.5-shaped", "tiny": "tiny SD1-topology", "sdxl": "SDXL-base-shaped",
             "tiny-sdxl": "tiny SDXL-topology"}
    return StandaloneBackend(
        unet, steps=steps, latent_shape=(4, latent_size, latent_size),
        encode=lambda prompts: torch.stack([_pseudo_embedding(p, length, dim) for p in prompts]),
        null_context=lambda n: _pseudo_embedding("", length, dim).expand(n, length, dim),
        sampler=sampler, cfg_scale=cfg_scale, alphas_cumprod=_sd_alphas(), batch_size=batch_size,
        max_downsample=max_downsample, sample_fn=sample_fn, size_vector=size_vector,
        info={"model_name": f"built-in random {names[model]} UNet",
              "model_hash": f"builtin-{model}-seed{model_seed}", "conditioning": "pseudo-embeddings (no text encoder)"},
    )


def _sd_alphas() -> torch.Tensor | None:
    try:
        from dato.evaluation.sampling import sd_alphas_cumprod
    except ImportError:
        return None
    return sd_alphas_cumprod()


FIXTURE_PROMPT = "a handwritten digit {}"


def fixture_prompts() -> list[str]:
    return [FIXTURE_PROMPT.format(d) for d in range(10)]


def fixture_backend(steps: int = 8, sampler: str = "euler", cfg_scale: float | None = None, batch_size: int = 8,
                    device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> StandaloneBackend:
    """The trained tiny ldm UNet of :mod:`dato.evaluation.fixture` (class prompts "a handwritten digit N").

    It works in pixel space: its "decoder" (:func:`dato.evaluation.fixture.nets.decode`) only drops each sample's mean
    brightness, adds the data's mean and clips to [-1, 1], so its samples are images and fidelity is PSNR in
    pixels. ``cfg_scale=None`` takes the fixture's own guidance,
    :data:`dato.evaluation.fixture.DEFAULT_CFG_SCALE` (2.0), not SD's 7.5.
    """
    import json

    from dato.evaluation import fixture as fixture_module

    fx = fixture_module.load_fixture(device=device, dtype=dtype)

    def label(prompt: str) -> int:
        digits = [c for c in prompt if c.isdigit()]
        if len(digits) != 1:
            raise ValueError(f"fixture prompt {prompt!r}: expected one digit 0-9 (e.g. {FIXTURE_PROMPT.format(3)!r})")
        return int(digits[0])

    config_hash = hashlib.sha256(json.dumps(fx.config, sort_keys=True, default=str).encode()).hexdigest()[:10]
    cfg = fixture_module.DEFAULT_CFG_SCALE if cfg_scale is None else cfg_scale
    return StandaloneBackend(
        fx.unet, steps=steps, latent_shape=tuple(fx.latent_shape),
        encode=lambda prompts: fx.class_contexts([label(p) for p in prompts]),
        null_context=fx.null_context, decode=lambda latents: (fx.to_images(latents) + 1) / 2,
        sampler=sampler, cfg_scale=cfg, alphas_cumprod=fx.alphas_cumprod, batch_size=batch_size,
        info={"model_name": "dato fixture (tiny ldm UNet trained on digits)", "model_hash": f"fixture-{config_hash}"},
    )


def file_hash(path: str | Path, chunk: int = 1 << 24) -> str:
    """sha256 of a file (the WebUI's model hash; its short form is the first 10 hex digits)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def checkpoint_backend(path: str, steps: int = 20, sampler: str = "euler", cfg_scale: float = 7.5,
                       size: int = 512, device: str = "cpu", dtype: torch.dtype = torch.float32,
                       tokenizer: str = "openai/clip-vit-large-patch14", batch_size: int = 2,
                       decode: bool = True) -> StandaloneBackend:
    """An SD1.x checkpoint: its UNet (``load_unet_from_checkpoint``), CLIP text encoder (``transformers``;
    the tokenizer from the hub cache or a local folder) and, with ``decode``, its VAE decoder (ldm)."""
    from dato.evaluation.models import load_unet_from_checkpoint

    ckpt = Path(path)
    if not ckpt.is_file():
        raise FileNotFoundError(f"checkpoint {str(ckpt)!r} does not exist")
    if size % 8:
        raise ValueError(f"size = {size}: must be a multiple of 8")
    unet = load_unet_from_checkpoint(str(ckpt), dtype=dtype, device=device)
    state = _load_state(ckpt)
    encode, null = _clip_text_encoder(state, tokenizer, device, dtype, ckpt.name)
    decoder = _vae_decoder(state, device, dtype) if decode else None
    del state
    return StandaloneBackend(
        unet, steps=steps, latent_shape=(4, size // 8, size // 8), encode=encode, null_context=null,
        decode=decoder, sampler=sampler, cfg_scale=cfg_scale, alphas_cumprod=_sd_alphas(), batch_size=batch_size,
        info={"model_name": ckpt.name, "model_hash": file_hash(ckpt)[:10], "checkpoint": str(ckpt)},
    )


def _load_state(ckpt: Path) -> dict[str, torch.Tensor]:
    if ckpt.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(ckpt))
    state = torch.load(str(ckpt), map_location="cpu", weights_only=True)
    return state.get("state_dict", state)


def _clip_text_encoder(state, tokenizer_name: str, device, dtype, name: str):
    try:
        from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer
    except ImportError as exc:
        raise RuntimeError("encoding prompts for a checkpoint needs the `transformers` package "
                           "(pip install transformers)") from exc
    prefix = "cond_stage_model.transformer."
    text_state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not text_state:
        raise ValueError(f"{name}: no 'cond_stage_model.transformer.*' weights (not an SD1.x checkpoint?)")
    if not any(k.startswith("text_model.") for k in text_state):
        text_state = {"text_model." + k: v for k, v in text_state.items()}
    config = CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                            num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
                            projection_dim=768)
    model = CLIPTextModel(config)
    text_state.pop("text_model.embeddings.position_ids", None)
    model.load_state_dict(text_state, strict=False)
    model = model.to(device, dtype).eval().requires_grad_(False)
    try:
        tok = CLIPTokenizer.from_pretrained(tokenizer_name)
    except OSError as exc:
        raise RuntimeError(f"the CLIP tokenizer {tokenizer_name!r} could not be loaded ({exc}); download it once "
                           "or pass --tokenizer with a local folder") from exc

    @torch.no_grad()
    def encode(prompts: list[str]) -> torch.Tensor:
        ids = tok(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        return model(ids.to(device)).last_hidden_state

    return encode, lambda n: encode([""] * n)


def _vae_decoder(state, device, dtype):
    from ldm.modules.diffusionmodules.model import Decoder

    ddconfig = dict(double_z=True, z_channels=4, resolution=256, in_channels=3, out_ch=3, ch=128,
                    ch_mult=[1, 2, 4, 4], num_res_blocks=2, attn_resolutions=[], dropout=0.0)
    decoder = Decoder(**ddconfig)
    post_quant = torch.nn.Conv2d(4, 4, 1)
    dec_state = {k[len("first_stage_model.decoder."):]: v for k, v in state.items()
                 if k.startswith("first_stage_model.decoder.")}
    pq_state = {k[len("first_stage_model.post_quant_conv."):]: v for k, v in state.items()
                if k.startswith("first_stage_model.post_quant_conv.")}
    if not dec_state or not pq_state:
        return None
    decoder.load_state_dict(dec_state)
    post_quant.load_state_dict(pq_state)
    decoder = decoder.to(device, dtype).eval().requires_grad_(False)
    post_quant = post_quant.to(device, dtype).eval().requires_grad_(False)

    @torch.no_grad()
    def decode(latents: torch.Tensor) -> torch.Tensor:
        x = decoder(post_quant(latents.to(device, dtype) / 0.18215))
        return ((x.float() + 1) / 2).clamp(0, 1)

    return decode
