"""Token reduction for self-attention: DaTo pruning, ToMe merging, ToDo downsampling.

Each method builds a *plan* for one token grid and one step; a patched
transformer block then reads like the method's equations::

    x = plan.self_attention(block.attn1, block.norm1(x)) + x

* :class:`GatherPlan` (``prune``): attention runs on the kept tokens only; each
  pruned token takes the output of the base token it is most similar to.
* :class:`MergePlan` (``merge``): ToMe's bipartite soft matching, mean-merge,
  unmerge by copy (tomesd 0.1.3's algorithm, written afresh).
* :class:`DownsamplePlan` (``downsample``): queries stay whole, keys and values
  come from a nearest-neighbour downsampled grid (ToDo).

Cost rules (the performance rules in docs/design.md): similarities are bipartite (N/4 base x 3N/4 others),
never N x N; no Python loops over tokens; no host syncs.
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
]


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
        return x.gather(1, _expand_idx(self.kept, x.shape[-1]))

    def restore(self, y: torch.Tensor) -> torch.Tensor:
        return y.gather(1, _expand_idx(self.source, y.shape[-1]))

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
        kept = x.gather(1, _expand_idx(self.kept, channels))
        if self.merged_src.shape[1] == 0:
            return kept
        n_unm = kept.shape[1] - self.dst.shape[1]
        unm, dst = kept[:, :n_unm], kept[:, n_unm:]
        src = x.gather(1, _expand_idx(self.merged_src, channels))
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


_PATCH_POSITIONS: dict[tuple[int, int, torch.device], torch.Tensor] = {}


def _patch_positions(grid_h: int, grid_w: int, device: torch.device) -> torch.Tensor:
    """Token index of each of the 4 cells of every whole 2x2 patch: ``(hp*wp, 4)`` (row-major cells).

    Depends only on the grid, so it is built once per shape and device.
    """
    key = (grid_h, grid_w, torch.device(device))
    if key not in _PATCH_POSITIONS:
        _PATCH_POSITIONS[key] = _build_patch_positions(grid_h, grid_w, device)
    return _PATCH_POSITIONS[key]


def _build_patch_positions(grid_h: int, grid_w: int, device: torch.device) -> torch.Tensor:
    hp, wp = grid_h // 2, grid_w // 2
    py = torch.arange(hp, device=device).view(hp, 1, 1, 1)
    px = torch.arange(wp, device=device).view(1, wp, 1, 1)
    cy = torch.tensor([0, 0, 1, 1], device=device).view(1, 1, 1, 4)
    cx = torch.tensor([0, 1, 0, 1], device=device).view(1, 1, 1, 4)
    return ((2 * py + cy) * grid_w + (2 * px + cx)).reshape(hp * wp, 4)


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


def _bipartite_match(metric: torch.Tensor, src: torch.Tensor, dst: torch.Tensor):
    """Cosine similarity of every src token to every dst token; best dst per src and its score."""
    channels = metric.shape[-1]
    if metric.dtype in (torch.float16, torch.bfloat16):  # the squared norm overflows fp16 (65504) at |x| ~ 15
        wide = metric.float()
        metric = (wide / wide.norm(dim=-1, keepdim=True)).to(metric.dtype)  # cosines in [-1, 1] fit any dtype
    else:
        metric = metric / metric.norm(dim=-1, keepdim=True)
    a = metric.gather(1, _expand_idx(src, channels))
    b = metric.gather(1, _expand_idx(dst, channels))
    scores = a @ b.transpose(-1, -2)
    return scores.max(dim=-1)


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
) -> GatherPlan | None:
    """DaTo's pruning on a ``grid``-shaped token sequence ``metric`` (``(B, N, C)``).

    * one *base* token per 2x2 patch: the cell with the largest temporal dynamics
      (|eps_t - eps_t-1| pooled to this grid, normalised per image) plus ``noise``
      (``(B, N)``, already scaled); with no dynamics yet (first step), noise alone;
    * the ``N * ratio`` non-base tokens most similar to some base token are pruned,
      each restored from that base token's output;
    * ``align_halves``: the second half of the batch reuses the first half's base
      cells (DaTo's ``align_cfg``: cond and uncond of one image prune alike).

    Returns ``None`` when nothing would be pruned.
    """
    batch, num_tokens, _ = metric.shape
    grid_h, grid_w = grid
    num_dst = (grid_h // 2) * (grid_w // 2)
    num_prune = min(int(num_tokens * ratio), num_tokens - num_dst)
    if num_prune <= 0 or num_dst == 0:
        return None
    with torch.no_grad():
        score = noise
        if dynamics is not None:
            dyn = dynamics.reshape(batch, num_tokens).to(noise.dtype)
            score = dyn / dyn.mean(dim=1, keepdim=True).clamp_min(1e-12) + noise
        choice = patch_grid_choice(score, grid_h, grid_w)
        if align_halves and batch % 2 == 0:
            choice = torch.cat([choice[: batch // 2], choice[: batch // 2]])
        cells = _patch_positions(grid_h, grid_w, metric.device)
        dst = cells.unsqueeze(0).expand(batch, -1, -1).gather(2, choice.unsqueeze(-1)).squeeze(-1)
        src = _split_dst_src(dst, num_tokens)
        best, best_dst = _bipartite_match(metric, src, dst)
        order = best.argsort(dim=-1, descending=True)
        pruned, unpruned = order[:, :num_prune], order[:, num_prune:]
        kept = torch.cat([src.gather(1, unpruned), dst], dim=1)
        n_unm = unpruned.shape[1]
        target = n_unm + best_dst.gather(1, pruned)
        source = _source_map(batch, num_tokens, kept, src.gather(1, pruned), target)
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
    num_dst = (grid_h // 2) * (grid_w // 2)
    num_merge = min(int(num_tokens * ratio), num_tokens - num_dst)
    if num_merge <= 0 or num_dst == 0:
        return None
    with torch.no_grad():
        cells = _patch_positions(grid_h, grid_w, metric.device)
        if generator is None:
            choice = torch.zeros(num_dst, 1, dtype=torch.long, device=metric.device)
        else:
            choice = torch.randint(4, (num_dst, 1), generator=generator, device=generator.device)
            choice = choice.to(metric.device)
        dst = cells.gather(1, choice).squeeze(-1).unsqueeze(0).expand(batch, -1)
        src = _split_dst_src(dst, num_tokens)
        best, best_dst = _bipartite_match(metric, src, dst)
        order = best.argsort(dim=-1, descending=True)
        merged, unmerged = order[:, :num_merge], order[:, num_merge:]
        kept = torch.cat([src.gather(1, unmerged), dst], dim=1)
        merged_dst = best_dst.gather(1, merged)
        merged_src = src.gather(1, merged)
        source = _source_map(batch, num_tokens, kept, merged_src, unmerged.shape[1] + merged_dst)
    return MergePlan(kept, source, dst=dst, merged_src=merged_src, merged_dst=merged_dst)


def downsample_plan(grid: tuple[int, int], ratio: float) -> DownsamplePlan | None:
    """ToDo: keys/values on a grid with ``1 - ratio`` of the tokens (ratio 0.75 = ToDo's factor 2)."""
    if ratio <= 0:
        return None
    scale = math.sqrt(1.0 - ratio)
    size = (max(1, round(grid[0] * scale)), max(1, round(grid[1] * scale)))
    if size == tuple(grid):
        return None
    return DownsamplePlan(tuple(grid), size)
