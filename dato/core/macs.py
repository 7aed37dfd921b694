"""Analytic multiply-accumulates of a UNet call under a Schedule: noise-free cost for benchmarks and search.

The UNet is traced once, at a small latent size, with hooks on every
``Conv2d``, ``Linear`` and attention module; each record keeps its cost per
output position and the downsample factor it works at. Any latent size, batch,
cache action and token ratio is then priced by arithmetic alone. Only
convolutions, linear layers and the two attention products (QK^T and AV) are
counted — norms and element-wise ops are a few percent and scale alike.
"""

from __future__ import annotations

import math
import re
import weakref
from dataclasses import dataclass

import torch

from dato.core.layout import UNetLayout, find_unet, role_of
from dato.core.schedule import FULL, REUSE, Schedule
from dato.core.tokens import SHARED_PLAN, reduction_counts, todo_size

__all__ = ["UNetCost", "trace_unet_cost"]

_CONTEXT_LINEAR_RE = re.compile(r"attn2\.to_[kv]$")
_ATTN1_RE = re.compile(r"transformer_blocks\.\d+\.attn1(\.|$)")


@dataclass(frozen=True)
class _Op:
    role: str
    kind: str  # conv | linear | attn
    per_position: float  # MACs per output position (per batch item); attn: per (query x key) pair
    ds: int  # 0 = does not scale with image size
    self_attn_part: str  # "" | "q" | "k" | "v" | "out" | "core" (attn1 only)
    key_len: int  # attn: keys per query when not self-attention
    channels: int  # input width (linear) - the width token matching works at


class UNetCost:
    """Prices UNet calls: ``call_macs(h, w, action, ratio, ...)`` for one image (batch 1)."""

    def __init__(self, ops: list[_Op], layout: UNetLayout) -> None:
        self.ops = ops
        self.layout = layout
        # token levels count from the finest level that has attention (ds 1 on SD1.x, 2 on SDXL), as in the patch
        self.finest_ds = min((op.ds for op in ops if op.self_attn_part == "core"), default=1)

    def call_macs(self, height: int, width: int, action: int = FULL, ratio: float = 0.0,
                  method: str = "none", max_downsample: int = 1, prune_variant: str = SHARED_PLAN,
                  downsample_factors: tuple[float, float] = (0.0, 0.0)) -> float:
        """MACs of one UNet call on a ``height x width`` latent (per image).

        ``prune_variant`` and ``downsample_factors`` (first, second level; 0 = from the ratio) are
        :func:`dato.core.patch.apply_patch`'s options of the same names.
        """
        if action == REUSE:
            computed = {"time_embed", "label_emb"}
        elif action == FULL:
            computed = set(self.layout.all_blocks()) | {"out", "time_embed", "label_emb"}
        else:
            computed = set(self.layout.computed_blocks(action)) | {"out", "time_embed", "label_emb"}
        total = 0.0
        matched_levels: set[int] = set()
        for op in self.ops:
            if op.role not in computed:
                continue
            n = _positions(height, width, op.ds)
            reduce = ratio > 0 and method != "none" and op.self_attn_part != "" \
                and 0 < op.ds <= self.finest_ds * max_downsample
            if not reduce:
                keys = n if op.self_attn_part else op.key_len
                total += op.per_position * n * (keys if op.kind == "attn" else 1)
                continue
            kept, kv = _reduced_tokens(height, width, op.ds, ratio, method, _level_factor(downsample_factors, op.ds))
            queries = n if method == "downsample" else kept
            if op.kind == "attn":
                total += op.per_position * queries * kv
            else:
                total += op.per_position * (kv if op.self_attn_part in ("k", "v") else queries)
            # token matching: once per level and call for the shared prune plan, once per block otherwise;
            # faithful prune adds the pruned x kept similarity of its restoration
            if op.self_attn_part == "q" and method in ("prune", "merge"):
                shared = method == "prune" and prune_variant == SHARED_PLAN
                if not shared or op.ds not in matched_levels:
                    total += _matching_macs(height, width, op)
                    matched_levels.add(op.ds)
                if method == "prune" and prune_variant == "faithful":
                    total += (_positions(height, width, op.ds) - kept) * kept * op.channels
        return total

    def schedule_macs(self, schedule: Schedule, height: int, width: int, max_downsample: int = 1,
                      calls_per_step: int = 1, prune_variant: str = SHARED_PLAN,
                      downsample_factors: tuple[float, float] = (0.0, 0.0), downsample_stop: float = 1.0) -> float:
        """Sum over the schedule's steps (per image, times ``calls_per_step`` UNet evaluations)."""
        stop = int(downsample_stop * schedule.steps) if schedule.method == "downsample" else schedule.steps
        return calls_per_step * sum(
            self.call_macs(height, width, a, r if i < stop else 0.0, schedule.method, max_downsample,
                           prune_variant, downsample_factors)
            for i, (a, r) in enumerate(zip(schedule.cache, schedule.ratio, strict=True))
        )

    def full_step_macs(self, height: int, width: int) -> float:
        return self.call_macs(height, width, FULL)


def _matching_macs(height: int, width: int, op: _Op) -> float:
    """Bipartite cosine similarity: (N - N/4) x N/4 dot products at the block's channel width."""
    grid_h, grid_w = math.ceil(height / op.ds), math.ceil(width / op.ds)
    n_dst = (grid_h // 2) * (grid_w // 2)
    return (grid_h * grid_w - n_dst) * n_dst * op.channels


def _positions(height: int, width: int, ds: int) -> int:
    if ds == 0:
        return 1
    return math.ceil(height / ds) * math.ceil(width / ds)


def _level_factor(factors: tuple[float, float], ds: int) -> float:
    first, second = factors
    return first if ds == 1 else (second or first) if ds == 2 else 0.0


def _reduced_tokens(height: int, width: int, ds: int, ratio: float, method: str,
                    factor: float = 0.0) -> tuple[int, int]:
    """(queries kept, keys/values kept) for one self-attention at level ``ds``."""
    grid_h, grid_w = math.ceil(height / ds), math.ceil(width / ds)
    n = grid_h * grid_w
    if method == "downsample" and factor:
        return n, todo_size((grid_h, grid_w), factor)[0] * todo_size((grid_h, grid_w), factor)[1]
    if method == "downsample":
        scale = math.sqrt(1.0 - ratio)
        kv = max(1, round(grid_h * scale)) * max(1, round(grid_w * scale))
        return n, kv
    kept = n - reduction_counts(n, (grid_h, grid_w), ratio)[1]
    return kept, kept


_TRACES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
TRACES_PER_UNET_MAX = 8  # (context length, trace size) pairs kept per UNet; the oldest goes first


def trace_unet_cost(model: torch.nn.Module, context_len: int = 77, trace_size: int = 16) -> UNetCost:
    """Trace ``model``'s UNet once (a real forward at ``trace_size`` latent pixels) into a :class:`UNetCost`.

    Memoised per UNet object, so the search can price thousands of schedules for free.
    """
    unet = find_unet(model)
    per_unet = _TRACES.setdefault(unet, {})
    key = (context_len, trace_size)
    if key not in per_unet:
        while len(per_unet) >= TRACES_PER_UNET_MAX:
            del per_unet[next(iter(per_unet))]
        per_unet[key] = _trace(unet, context_len, trace_size)
    return per_unet[key]


def _trace(unet: torch.nn.Module, context_len: int, trace_size: int) -> UNetCost:
    layout = UNetLayout.from_unet(unet)
    ops: list[_Op] = []
    handles = []
    param = next(unet.parameters())
    in_channels = unet.in_channels

    def hook_for(name: str, module: torch.nn.Module):
        role = role_of(name)
        attn1_part = ""
        on_context = bool(_CONTEXT_LINEAR_RE.search(name))
        m = _ATTN1_RE.search(name)
        if m:
            tail = name[m.end():]
            attn1_part = {"to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "out", "": "core"}.get(tail, "")

        def hook(mod, args, kwargs, output):
            if role is None:
                return
            if isinstance(mod, torch.nn.Conv2d):
                k = mod.kernel_size[0] * mod.kernel_size[1]
                per = mod.out_channels * mod.in_channels // mod.groups * k
                ops.append(_Op(role, "conv", per, trace_size // output.shape[-2], "", 0, mod.in_channels))
            elif isinstance(mod, torch.nn.Linear):
                tokens = output.shape[1] if output.dim() == 3 else 0
                per = mod.in_features * mod.out_features
                if on_context:  # cross-attention keys/values: as many as the prompt has, whatever the image size
                    ds, per = 0, per * tokens
                else:
                    ds = _ds_from_tokens(tokens, trace_size) if tokens else 0
                ops.append(_Op(role, "linear", per, ds, attn1_part, 0, mod.in_features))
            else:  # attention module: count QK^T and AV
                x = args[0]
                context = kwargs.get("context", args[1] if len(args) > 1 else None)
                inner = mod.to_q.out_features
                ds = _ds_from_tokens(x.shape[1], trace_size)
                keys = context.shape[1] if context is not None else 0
                ops.append(_Op(role, "attn", 2 * inner, ds, "core" if attn1_part == "core" else "", keys, inner))

        return hook

    for name, module in unet.named_modules():
        is_attn = hasattr(module, "to_q") and hasattr(module, "to_k") and hasattr(module, "to_v")
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)) or is_attn:
            handles.append(module.register_forward_hook(hook_for(name, module), with_kwargs=True))
    try:
        with torch.no_grad():
            x = torch.zeros(1, in_channels, trace_size, trace_size, dtype=param.dtype, device=param.device)
            t = torch.zeros(1, device=param.device)
            ctx_dim = _context_dim(unet)
            context = torch.zeros(1, context_len, ctx_dim, dtype=param.dtype, device=param.device)
            kwargs = {"context": context}
            kwargs.update(_class_input(unet, param))
            unet(x, t, **kwargs)
    finally:
        for h in handles:
            h.remove()
    return UNetCost(ops, layout)


def _class_input(unet: torch.nn.Module, param: torch.Tensor) -> dict:
    """The ``y`` a class-conditional UNet needs: SDXL's size vector (sgm ``num_classes='sequential'``) or a label."""
    num_classes = getattr(unet, "num_classes", None)
    if num_classes is None:
        return {}
    if num_classes == "sequential":
        width = next(m for m in unet.label_emb.modules() if isinstance(m, torch.nn.Linear)).in_features
        return {"y": torch.zeros(1, width, dtype=param.dtype, device=param.device)}
    return {"y": torch.zeros(1, dtype=torch.long, device=param.device)}


def _ds_from_tokens(tokens: int, trace_size: int) -> int:
    return max(1, round(math.sqrt(trace_size * trace_size / tokens)))


def _context_dim(unet: torch.nn.Module) -> int:
    for module in unet.modules():
        if hasattr(module, "to_k") and hasattr(module, "to_q"):
            if module.to_k.in_features != module.to_q.in_features:
                return module.to_k.in_features
    return 768
