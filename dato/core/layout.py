"""The one place that knows the shape of an ldm ``UNetModel``.

Feature caching, token reduction, MACs counting and the search all speak of
"branch depth d" and "resolution level"; this module turns those words into
block indices so that nobody else hard-codes SD1's 12/1/12 layout.

Branch depth ``d`` (DeepCache's term): a cached step computes
``input_blocks[0..d]`` and ``output_blocks[n-1-d..n-1]``; the feature entering
``output_blocks[n-1-d]`` from below (the output of ``output_blocks[n-2-d]``, or of
the middle block when ``d = n-1``) comes from the cache, the skip connection from
``input_blocks[d]`` is fresh. SD1.x has ``n = 12``, so depths run 0..11; SDXL
(sgm) has ``n = 9``, depths 0..8.

Blocks are recognised by class *name*, never by import, so the engine works on
the WebUI's ldm copy, on ``stable-diffusion-sdkit``'s, on sgm's ``UNetModel``
(SDXL: the same forward and block classes as ldm's) and on forks alike.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch

__all__ = [
    "DEEPEST_KNOWN_DEPTH",
    "DEFAULT_LAYOUT",
    "KNOWN_LAYOUTS",
    "LAYOUT_LABELS",
    "SD1_LAYOUT",
    "SDXL_LAYOUT",
    "UNetLayout",
    "UnsupportedModelError",
    "block_modules",
    "family_of",
    "find_unet",
    "finest_attention_ds",
    "highest_resolution_transformer",
    "isinstance_str",
    "role_of",
    "transformer_blocks",
]


class UnsupportedModelError(TypeError):
    """The model is not an ldm UNet this engine knows how to patch."""


def isinstance_str(obj: object, class_name: str) -> bool:
    """True if any class in ``obj``'s MRO is called ``class_name`` (no import of host code needed)."""
    return any(cls.__name__ == class_name for cls in type(obj).__mro__)


def find_unet(model: torch.nn.Module) -> torch.nn.Module:
    """Return the ``UNetModel`` (ldm: SD1.x/2.x; sgm: SDXL) inside ``model``.

    Accepts the UNet itself, a ``DiffusionWrapper`` / sgm ``OpenAIWrapper`` (``.diffusion_model``) or a
    ``LatentDiffusion`` / sgm ``DiffusionEngine`` (``.model.diffusion_model``), the objects a WebUI user holds.
    Anything else gets a message that says what was expected, because diffusers pipelines and Forge's
    backend look similar from afar.
    """
    candidates = [model, getattr(model, "diffusion_model", None)]
    inner = getattr(model, "model", None)
    if inner is not None:
        candidates.append(getattr(inner, "diffusion_model", None))
    for cand in candidates:
        if cand is not None and isinstance_str(cand, "UNetModel") and hasattr(cand, "input_blocks") \
                and hasattr(cand, "output_blocks"):
            return cand
    kind = type(model).__module__ + "." + type(model).__name__
    raise UnsupportedModelError(
        f"sd-webui-dato supports the UNets of Stable Diffusion 1.x/2.x (ldm) and SDXL (sgm) only; got {kind}. "
        "diffusers pipelines and Forge's backend are not supported."
    )


@dataclass(frozen=True)
class UNetLayout:
    """Block structure of one UNet: how many blocks, and at which downsample factor each works.

    ``input_ds[k]`` is the downsample factor at which ``input_blocks[k]``'s
    transformer (if any) operates; ``output_ds[j]`` likewise for
    ``output_blocks[j]`` (before any ``Upsample`` in that block).
    """

    num_input_blocks: int
    num_output_blocks: int
    input_ds: tuple[int, ...]
    output_ds: tuple[int, ...]
    middle_ds: int

    @classmethod
    def from_unet(cls, unet: torch.nn.Module) -> UNetLayout:
        inputs, outputs = list(unet.input_blocks), list(unet.output_blocks)
        if len(inputs) != len(outputs) or len(inputs) < 2:
            raise UnsupportedModelError(
                f"expected a symmetric UNet, got {len(inputs)} input and {len(outputs)} output blocks"
            )
        ds, input_ds = 1, []
        for block in inputs:
            input_ds.append(ds)
            if any(isinstance_str(m, "Downsample") for m in block.children()):
                ds *= 2
        middle_ds, output_ds = ds, []
        for block in outputs:
            output_ds.append(ds)
            if any(isinstance_str(m, "Upsample") for m in block.children()):
                ds //= 2
        return cls(len(inputs), len(outputs), tuple(input_ds), tuple(output_ds), middle_ds)

    @property
    def family(self) -> str:
        """The name of this layout in :data:`KNOWN_LAYOUTS` (``sd1``, ``sdxl``), or ``custom``."""
        return family_of(self)

    @property
    def label(self) -> str:
        """How messages name this layout: ``SD1.x/2.x (12-block)``, ``SDXL (9-block)``, or its block count."""
        return LAYOUT_LABELS.get(self.family, f"{self.num_input_blocks}-block")

    @property
    def max_depth(self) -> int:
        """Deepest branch depth: everything but the middle block computed."""
        return self.num_input_blocks - 1

    def skipped_blocks(self, depth: int) -> tuple[str, ...]:
        """Block roles a cached step at ``depth`` does not compute."""
        self.check_depth(depth)
        n = self.num_input_blocks
        roles = [f"input.{k}" for k in range(depth + 1, n)] + ["middle"]
        roles += [f"output.{j}" for j in range(0, n - 1 - depth)]
        return tuple(roles)

    def cached_feature_block(self, depth: int) -> str:
        """The block whose stored output feeds ``output_blocks[n-1-depth]`` at a cached step."""
        self.check_depth(depth)
        n = self.num_input_blocks
        return "middle" if depth == n - 1 else f"output.{n - 2 - depth}"

    def computed_blocks(self, depth: int) -> tuple[str, ...]:
        n = self.num_input_blocks
        return tuple(f"input.{k}" for k in range(depth + 1)) + tuple(
            f"output.{j}" for j in range(n - 1 - depth, n)
        )

    def all_blocks(self) -> tuple[str, ...]:
        n = self.num_input_blocks
        return tuple(f"input.{k}" for k in range(n)) + ("middle",) + tuple(f"output.{j}" for j in range(n))

    def block_ds(self, role: str) -> int:
        if role == "middle":
            return self.middle_ds
        part, idx = role.split(".")
        return (self.input_ds if part == "input" else self.output_ds)[int(idx)]

    def check_depth(self, depth: int) -> None:
        if not 0 <= depth <= self.max_depth:
            raise ValueError(f"cache depth {depth} is outside 0..{self.max_depth} for this {self.label} UNet")

    def check_schedule_fits(self, schedule: Any, origin: str | None = None) -> None:
        """The one rule for a schedule deeper than this UNet (the patch, the planner and so the API check use it).

        Depths count blocks from the image side: on SD1.x and SDXL depths 0..8 cache the same resolutions, so a
        schedule runs unchanged on either; a depth the loaded UNet lacks is refused, never converted (a branch
        at another resolution is another trade-off). ``origin`` says where the schedule came from (default: its
        name and the layout it was written for); the error is a ``ValueError`` subclass from ``schedule.py``.
        """
        from dato.core.schedule import ScheduleError  # schedule.py imports nothing of the layout's: no cycle

        deepest = schedule.max_cache_depth
        if deepest <= self.max_depth:
            return
        if origin is None:
            written = schedule.provenance.get("layout")
            origin = f"schedule {schedule.name!r}" + (f", written for {written}," if written else "")
        raise ScheduleError(
            f"cache depth {deepest} is outside 0..{self.max_depth} for this {self.label} UNet: {origin} is refused, "
            f"not converted (its deepest branch has no counterpart here); use depths 0..{self.max_depth}"
        )


def block_modules(unet: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """Role name -> module for every top-level block (``input.k``, ``middle``, ``output.j``, ``out``)."""
    roles: dict[str, torch.nn.Module] = {}
    for k, block in enumerate(unet.input_blocks):
        roles[f"input.{k}"] = block
    roles["middle"] = unet.middle_block
    for j, block in enumerate(unet.output_blocks):
        roles[f"output.{j}"] = block
    roles["out"] = unet.out
    return roles


def transformer_blocks(unet: torch.nn.Module, layout: UNetLayout) -> list[tuple[str, int, torch.nn.Module]]:
    """Every ``BasicTransformerBlock`` with the role of the UNet block holding it and its downsample factor."""
    found = []
    for role, block in block_modules(unet).items():
        if role == "out":
            continue
        for module in block.modules():
            if isinstance_str(module, "BasicTransformerBlock"):
                found.append((role, layout.block_ds(role), module))
    return found


def finest_attention_ds(unet: torch.nn.Module, layout: UNetLayout | None = None) -> int:
    """Downsample factor of the highest-resolution level that has attention: 1 on SD1.x, 2 on SDXL.

    Token methods count their levels from here: ``max_downsample = 1`` means this level only.
    """
    found = transformer_blocks(unet, layout or UNetLayout.from_unet(unet))
    if not found:
        raise UnsupportedModelError("this UNet has no transformer block")
    return min(ds for _, ds, _ in found)


def highest_resolution_transformer(unet: torch.nn.Module) -> torch.nn.Module:
    """The first ``BasicTransformerBlock`` at the finest level that has attention (where token methods act)."""
    layout = UNetLayout.from_unet(unet)
    finest = finest_attention_ds(unet, layout)
    return next(block for _, ds, block in transformer_blocks(unet, layout) if ds == finest)


_ROLE_RE = re.compile(r"^(input_blocks\.(\d+)|middle_block|output_blocks\.(\d+)|out|time_embed|label_emb)")


def role_of(name: str) -> str | None:
    """The block role (``input.k``, ``middle``, ``output.j``, ``out``, ``time_embed``, ``label_emb``) owning the
    submodule called ``name`` in ``unet.named_modules()``; ``None`` for names outside every block."""
    m = _ROLE_RE.match(name)
    if not m:
        return None
    if m.group(2) is not None:
        return f"input.{m.group(2)}"
    if m.group(3) is not None:
        return f"output.{m.group(3)}"
    return {"middle_block": "middle"}.get(m.group(1), m.group(1))


#: SD1.x and SD2.x: 12 input blocks (a Downsample closes levels 1-3), middle, 12 output blocks.
#: A test checks it equals ``UNetLayout.from_unet`` of a real ldm UNet with SD1's topology.
SD1_LAYOUT = UNetLayout(
    num_input_blocks=12,
    num_output_blocks=12,
    input_ds=(1, 1, 1, 1, 2, 2, 2, 4, 4, 4, 8, 8),
    output_ds=(8, 8, 8, 4, 4, 4, 2, 2, 2, 1, 1, 1),
    middle_ds=8,
)

#: SDXL (sgm, ``sd_xl_base.yaml`` and the refiner): 9 input blocks (a Downsample closes levels 1-2), middle,
#: 9 output blocks; attention only at downsample 2 and 4. A test checks it equals ``UNetLayout.from_unet`` of
#: a UNet with SDXL base's topology.
SDXL_LAYOUT = UNetLayout(
    num_input_blocks=9,
    num_output_blocks=9,
    input_ds=(1, 1, 1, 1, 2, 2, 2, 4, 4),
    output_ds=(4, 4, 4, 2, 2, 2, 1, 1, 1),
    middle_ds=4,
)

#: The layouts this engine supports, by family. Ranges and sliders shown before a model is loaded ask this
#: table; once a model is loaded, ``UNetLayout.from_unet`` of that model decides.
KNOWN_LAYOUTS: dict[str, UNetLayout] = {"sd1": SD1_LAYOUT, "sdxl": SDXL_LAYOUT}


#: How messages name each family. SDXL's refiner (channel_mult 1/2/4/4) has the 12-block layout of SD1.x.
LAYOUT_LABELS: dict[str, str] = {"sd1": "SD1.x/2.x (12-block)", "sdxl": "SDXL (9-block)"}


def family_of(layout: UNetLayout) -> str:
    """``sd1``, ``sdxl`` or ``custom`` (a UNet of another topology: it still patches, by its own layout)."""
    return next((name for name, known in KNOWN_LAYOUTS.items() if known == layout), "custom")

#: What ranges and sliders offer before a model is loaded.
DEFAULT_LAYOUT = SD1_LAYOUT

#: The deepest branch depth of any supported UNet: the widest range a setting can accept before the model
#: that will run it is known (the patch then checks the loaded model's own range).
DEEPEST_KNOWN_DEPTH = max(layout.max_depth for layout in KNOWN_LAYOUTS.values())
