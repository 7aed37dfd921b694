"""Token reduction for self-attention: DaTo pruning, ToMe merging, ToDo downsampling.

Each method builds a *plan* for one token grid and one step; a patched
transformer block then reads like the method's equations::

    x = plan.self_attention(block.attn1, block.norm1(x)) + x

* :class:`GatherPlan` (``prune``): attention runs on the kept tokens only; each
  pruned token takes the output of its most similar token in the whole kept set
  (``restore="kept"``, DaTo's ``recover_tokens``) or of the base token it was
  matched to (``restore="base"``, our cheaper shortcut).
* :class:`MergePlan` (``merge``): ToMe's bipartite soft matching, mean-merge,
  unmerge by copy (tomesd 0.1.3's algorithm, written afresh).
* :class:`DownsamplePlan` (``downsample``): queries stay whole, keys and values
  come from a nearest-neighbour downsampled grid (ToDo).

Cost rules (the performance rules in docs/design.md): similarities are bipartite (N/4 base x 3N/4 others,
and pruned x kept for DaTo's restoration, in chunks), never N x N; no Python loops over tokens; no host syncs.

Every gather goes through :func:`gather`, which on Apple MPS (where ``torch.gather``
is wrong for some shapes; tomesd works around it too) uses plain advanced indexing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = [
    "GatherPlan",
    "MergePlan",
    "DownsamplePlan",
    "prune_plan",
    "merge_plan",
    "downsample_plan",
    "patch_grid_choice",
    "gather",
    "PRUNE_VARIANTS",
    "SHARED_PLAN",
    "todo_size",
]

#: How ``prune`` follows the DaTo paper (see docs/design.md#token-methods):
#: ``faithful``: per block, on that block's features; each pruned token restored from its most similar
#: kept token; base-token score ``0.1 * (+-dynamics) + 0.1 * noise`` (sign flipped at random per call).
#: ``base-restore``: the same, but a pruned token copies the base token it was matched to.
#: ``shared-plan``: one plan per level and call (first block's features), base-token restoration,
#: score ``dynamics / mean + 0.1 * noise`` (the engine's behaviour before the faithful mode).
SHARED_PLAN = "shared-plan"  # the default prune variant: one plan per resolution level and call
PRUNE_VARIANTS = ("faithful", "base-restore", SHARED_PLAN)

#: Force the MPS-safe gather everywhere (tests set it to check the fallback on CPU).
FORCE_GATHER_FALLBACK = False
#: Pruned-vs-kept similarity rows computed at once per batch item (bounds the memory of restoration).
RESTORE_CHUNK_ELEMENTS = 1 << 22


def gather(x: torch.Tensor, dim: int, index: torch.Tensor) -> torch.Tensor:
    """``torch.gather``, or on MPS (or with :data:`FORCE_GATHER_FALLBACK`) the same by advanced indexing."""
    if not (FORCE_GATHER_FALLBACK or x.device.type == "mps"):
        return x.gather(dim, index)
    dim = dim % x.dim()
    where = []
    for d in range(x.dim()):
        if d == dim:
            where.append(index)
        else:
            shape = [1] * x.dim()
            shape[d] = index.shape[d]
            where.append(torch.arange(index.shape[d], device=x.device).view(shape))
    return x[tuple(where)]


def _expand_idx(idx: torch.Tensor, channels: int) -> torch.Tensor:
    return idx.unsqueeze(-1).expand(-1, -1, channels)


@dataclass
class GatherPlan:
    """Keep ``kept`` tokens; rebuild all ``N`` from the kept outputs via ``source``.

    ``kept`` is ``(B, K)`` token indices, ``source`` is ``(B, N)`` positions into
    the kept sequence: a kept token points at itself, a pruned one at the kept
    token it copies. Restoring is one gather, no zero-fill and no scatter.
    """

    kept: torch.Tensor
    source: torch.Tensor

    def reduce(self, x: torch.Tensor) -> torch.Tensor:
        return gather(x, 1, _expand_idx(self.kept, x.shape[-1]))

    def restore(self, y: torch.Tensor) -> torch.Tensor:
        return gather(y, 1, _expand_idx(self.source, y.shape[-1]))

    def self_attention(self, attn: torch.nn.Module, h: torch.Tensor) -> torch.Tensor:
        return self.restore(attn(self.reduce(h)))

    @property
    def kept_tokens(self) -> int:
        return self.kept.shape[1]


@dataclass
class MergePlan(GatherPlan):
    """ToMe: like :class:`GatherPlan`, but merged tokens are averaged into their destination first.

    The kept sequence is ``[unmerged src..., dst...]``; ``merged_src`` are the
    src tokens folded into ``dst`` slot ``merged_dst``.
    """

    dst: torch.Tensor = None  # type: ignore[assignment]
    merged_src: torch.Tensor = None  # type: ignore[assignment]
    merged_dst: torch.Tensor = None  # type: ignore[assignment]

    def reduce(self, x: torch.Tensor) -> torch.Tensor:
        channels = x.shape[-1]
        kept = gather(x, 1, _expand_idx(self.kept, channels))
        if self.merged_src.shape[1] == 0:
            return kept
        n_unm = kept.shape[1] - self.dst.shape[1]
        unm, dst = kept[:, :n_unm], kept[:, n_unm:]
        src = gather(x, 1, _expand_idx(self.merged_src, channels))
        dst = dst.scatter_reduce(1, _expand_idx(self.merged_dst, channels), src, reduce="mean")
        return torch.cat([unm, dst], dim=1)


@dataclass
class DownsamplePlan:
    """ToDo: keys/values from a ``size``-shaped nearest-neighbour resampling of the ``grid``."""

    grid: tuple[int, int]
    size: tuple[int, int]

    def keys_values(self, h: torch.Tensor) -> torch.Tensor:
        batch, _, channels = h.shape
        image = h.transpose(1, 2).reshape(batch, channels, *self.grid)
        small = F.interpolate(image, size=self.size, mode="nearest-exact")
        return small.flatten(2).transpose(1, 2)

    def self_attention(self, attn: torch.nn.Module, h: torch.Tensor) -> torch.Tensor:
        return attn(h, context=self.keys_values(h))

    @property
    def kept_tokens(self) -> int:
        return self.size[0] * self.size[1]


#: Bounded (least recently used out): a WebUI session that runs for days sees many image sizes.
PATCH_POSITIONS_MAX = 32
_PATCH_POSITIONS: dict[tuple[int, int, torch.device], torch.Tensor] = {}


def _patch_positions(grid_h: int, grid_w: int, device: torch.device) -> torch.Tensor:
    """Token index of each of the 4 cells of every whole 2x2 patch: ``(hp*wp, 4)`` (row-major cells).

    Depends only on the grid, so it is built once per shape and device.
    """
    key = (grid_h, grid_w, torch.device(device))
    found = _PATCH_POSITIONS.pop(key, None)  # re-inserted last: the dict's order is the recency order
    if found is None:
        found = _build_patch_positions(grid_h, grid_w, device)
        while len(_PATCH_POSITIONS) >= PATCH_POSITIONS_MAX:
            del _PATCH_POSITIONS[next(iter(_PATCH_POSITIONS))]
    _PATCH_POSITIONS[key] = found
    return found


def _build_patch_positions(grid_h: int, grid_w: int, device: torch.device) -> torch.Tensor:
    hp, wp = grid_h // 2, grid_w // 2
    py = torch.arange(hp, device=device).view(hp, 1, 1, 1)
    px = torch.arange(wp, device=device).view(1, wp, 1, 1)
    cy = torch.tensor([0, 0, 1, 1], device=device).view(1, 1, 1, 4)
    cx = torch.tensor([0, 1, 0, 1], device=device).view(1, 1, 1, 4)
    return ((2 * py + cy) * grid_w + (2 * px + cx)).reshape(hp * wp, 4)


def reduction_counts(num_tokens: int, grid: tuple[int, int], ratio: float) -> tuple[int, int]:
    """(base tokens: one per whole 2x2 patch, tokens removed at ``ratio``): the one rule ``prune``, ``merge``
    and the MACs model (:mod:`dato.core.macs`) share; every base token is kept."""
    grid_h, grid_w = grid
    num_dst = (grid_h // 2) * (grid_w // 2)
    return num_dst, min(int(num_tokens * ratio), num_tokens - num_dst)


def patch_grid_choice(score: torch.Tensor, grid_h: int, grid_w: int) -> torch.Tensor:
    """Per 2x2 patch, which of its 4 cells has the highest ``score`` (``(B, N)`` -> ``(B, hp*wp)``)."""
    batch = score.shape[0]
    hp, wp = grid_h // 2, grid_w // 2
    cells = score.view(batch, grid_h, grid_w)[:, : 2 * hp, : 2 * wp]
    cells = cells.reshape(batch, hp, 2, wp, 2).permute(0, 1, 3, 2, 4).reshape(batch, hp * wp, 4)
    return cells.argmax(dim=-1)


def _split_dst_src(dst: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """Indices of all tokens that are not in ``dst`` (``(B, Nd)`` -> ``(B, N - Nd)``), ascending."""
    batch = dst.shape[0]
    is_dst = torch.zeros(batch, num_tokens, dtype=torch.bool, device=dst.device)
    is_dst.scatter_(1, dst, True)
    order = torch.sort(is_dst.to(torch.uint8), dim=1, stable=True).indices
    return order[:, : num_tokens - dst.shape[1]]


def _unit(metric: torch.Tensor) -> torch.Tensor:
    """Each token scaled to unit length, normalised in fp32 for half types: their squared norm overflows fp16
    (65504) at |x| ~ 15 on backends whose half ``norm`` does not accumulate in fp32; cosines fit any dtype."""
    if metric.dtype in (torch.float16, torch.bfloat16):
        wide = metric.float()
        return (wide / wide.norm(dim=-1, keepdim=True)).to(metric.dtype)
    return metric / metric.norm(dim=-1, keepdim=True)


def _bipartite_match(metric: torch.Tensor, src: torch.Tensor, dst: torch.Tensor):
    """Cosine similarity of every src token to every dst token; best dst per src and its score."""
    channels = metric.shape[-1]
    metric = _unit(metric)
    a = gather(metric, 1, _expand_idx(src, channels))
    b = gather(metric, 1, _expand_idx(dst, channels))
    scores = a @ b.transpose(-1, -2)
    return scores.max(dim=-1)


def _most_similar_kept(metric: torch.Tensor, kept: torch.Tensor, pruned: torch.Tensor) -> torch.Tensor:
    """Position in ``kept`` of each pruned token's most similar kept token (cosine), ``(B, P)``.

    Pruned x kept similarities, computed ``RESTORE_CHUNK_ELEMENTS`` at a time: never N x N in memory.
    """
    channels = metric.shape[-1]
    metric = _unit(metric)
    k = gather(metric, 1, _expand_idx(kept, channels)).transpose(-1, -2)
    step = max(1, RESTORE_CHUNK_ELEMENTS // max(1, kept.shape[1]))
    parts = []
    for start in range(0, pruned.shape[1], step):
        a = gather(metric, 1, _expand_idx(pruned[:, start:start + step], channels))
        parts.append((a @ k).argmax(dim=-1))
    return torch.cat(parts, dim=1)


def _source_map(batch: int, num_tokens: int, kept: torch.Tensor, dropped: torch.Tensor,
                dropped_target: torch.Tensor) -> torch.Tensor:
    source = torch.empty(batch, num_tokens, dtype=torch.long, device=kept.device)
    positions = torch.arange(kept.shape[1], device=kept.device).expand(batch, -1)
    source.scatter_(1, kept, positions)
    if dropped.shape[1]:
        source.scatter_(1, dropped, dropped_target)
    return source


def prune_plan(
    metric: torch.Tensor,
    grid: tuple[int, int],
    ratio: float,
    dynamics: torch.Tensor | None,
    noise: torch.Tensor,
    align_halves: bool = False,
    restore: str = "base",
    dynamics_weight: float | None = None,
) -> GatherPlan | None:
    """DaTo's pruning on a ``grid``-shaped token sequence ``metric`` (``(B, N, C)``).

    * one *base* token per 2x2 patch: the cell with the highest score. With
      ``dynamics_weight`` ``None`` the score is the temporal dynamics (|eps_t - eps_t-1|
      pooled to this grid) normalised per image plus ``noise`` (``(B, N)``, already
      scaled); with a number it is DaTo's ``dynamics_weight * dynamics + noise`` (the
      caller flips the weight's sign at random). With no dynamics yet (first step), noise alone;
    * the ``N * ratio`` non-base tokens most similar to some base token are pruned;
    * ``restore``: ``"kept"`` restores each pruned token from its most similar token in the
      whole kept set (DaTo), ``"base"`` from the base token it was matched to;
    * ``align_halves``: the second half of the batch reuses the first half's base
      cells (DaTo's ``align_cfg``: cond and uncond of one image prune alike).

    Returns ``None`` when nothing would be pruned.
    """
    if restore not in ("base", "kept"):
        raise ValueError(f"restore = {restore!r}, expected 'base' or 'kept'")
    batch, num_tokens, _ = metric.shape
    grid_h, grid_w = grid
    num_dst, num_prune = reduction_counts(num_tokens, grid, ratio)
    if num_prune <= 0 or num_dst == 0:
        return None
    with torch.no_grad():
        score = noise
        if dynamics is not None:
            dyn = dynamics.reshape(batch, num_tokens).to(noise.dtype)
            if dynamics_weight is None:
                score = dyn / dyn.mean(dim=1, keepdim=True).clamp_min(1e-12) + noise
            else:
                score = dynamics_weight * dyn + noise
        choice = patch_grid_choice(score, grid_h, grid_w)
        if align_halves and batch % 2 == 0:
            choice = torch.cat([choice[: batch // 2], choice[: batch // 2]])
        cells = _patch_positions(grid_h, grid_w, metric.device)
        dst = gather(cells.unsqueeze(0).expand(batch, -1, -1), 2, choice.unsqueeze(-1)).squeeze(-1)
        src = _split_dst_src(dst, num_tokens)
        best, best_dst = _bipartite_match(metric, src, dst)
        order = best.argsort(dim=-1, descending=True)
        pruned, unpruned = order[:, :num_prune], order[:, num_prune:]
        kept = torch.cat([gather(src, 1, unpruned), dst], dim=1)
        pruned_tokens = gather(src, 1, pruned)
        if restore == "kept":
            target = _most_similar_kept(metric, kept, pruned_tokens)
        else:
            target = unpruned.shape[1] + gather(best_dst, 1, pruned)
        source = _source_map(batch, num_tokens, kept, pruned_tokens, target)
    return GatherPlan(kept, source)


def merge_plan(
    metric: torch.Tensor,
    grid: tuple[int, int],
    ratio: float,
    generator: torch.Generator | None = None,
) -> MergePlan | None:
    """ToMe for SD: dst = one token per 2x2 patch (random cell if ``generator``, else top-left);
    the ``N * ratio`` src tokens closest to a dst token are mean-merged into it."""
    batch, num_tokens, _ = metric.shape
    grid_h, grid_w = grid
    num_dst, num_merge = reduction_counts(num_tokens, grid, ratio)
    if num_merge <= 0 or num_dst == 0:
        return None
    with torch.no_grad():
        cells = _patch_positions(grid_h, grid_w, metric.device)
        if generator is None:
            choice = torch.zeros(num_dst, 1, dtype=torch.long, device=metric.device)
        else:
            choice = torch.randint(4, (num_dst, 1), generator=generator, device=generator.device)
            choice = choice.to(metric.device)
        dst = gather(cells, 1, choice).squeeze(-1).unsqueeze(0).expand(batch, -1)
        src = _split_dst_src(dst, num_tokens)
        best, best_dst = _bipartite_match(metric, src, dst)
        order = best.argsort(dim=-1, descending=True)
        merged, unmerged = order[:, :num_merge], order[:, num_merge:]
        kept = torch.cat([gather(src, 1, unmerged), dst], dim=1)
        merged_dst = gather(best_dst, 1, merged)
        merged_src = gather(src, 1, merged)
        source = _source_map(batch, num_tokens, kept, merged_src, unmerged.shape[1] + merged_dst)
    return MergePlan(kept, source, dst=dst, merged_src=merged_src, merged_dst=merged_dst)


def todo_size(grid: tuple[int, int], factor: float) -> tuple[int, int]:
    """The ToDo extension's key/value grid for a level grid and a factor: truncation, ``int(h / factor)``."""
    return max(1, int(grid[0] / factor)), max(1, int(grid[1] / factor))


def downsample_plan(grid: tuple[int, int], ratio: float, factor: float | None = None) -> DownsamplePlan | None:
    """ToDo: keys/values on a smaller grid.

    With ``factor`` (>= 1) the grid is the ToDo extension's, ``int(h / factor) x int(w / factor)``;
    without, it keeps ``1 - ratio`` of the tokens (each side scaled by ``sqrt(1 - ratio)`` and
    rounded; ratio 0.75 = ToDo's factor 2).
    """
    if factor is not None:
        size = todo_size(grid, factor)
    else:
        if ratio <= 0:
            return None
        scale = math.sqrt(1.0 - ratio)
        size = (max(1, round(grid[0] * scale)), max(1, round(grid[1] * scale)))
    if size == tuple(grid):
        return None
    return DownsamplePlan(tuple(grid), size)
