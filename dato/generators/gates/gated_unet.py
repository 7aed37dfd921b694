"""The gated UNet: forward hooks that blend each level's fresh feature with its stored copy by a gate."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint

from dato.core.layout import UNetLayout, block_modules, find_unet


# --------------------------------------------------------------------------- the gated UNet
class GatedUNet:
    """Forward hooks that blend each level's feature with its stored copy by a per-step gate.

    Use as a context manager around sampling; pass :meth:`__call__` as the
    sampler's UNet and :meth:`set_step` as its step callback. ``keep_for_step``
    maps a step index to the ``[levels]`` keep vector (with grad).
    """

    OUT = "out"

    def __init__(self, model: torch.nn.Module, keep_for_step: Callable[[int], torch.Tensor],
                 use_checkpoint: bool = True) -> None:
        from dato.core.patch import get_patch

        self.unet = find_unet(model)
        if get_patch(self.unet) is not None:
            raise RuntimeError("gate training needs the unpatched UNet: remove the dato patch first")
        self.layout = UNetLayout.from_unet(self.unet)
        self.num_levels = self.layout.max_depth + 2
        self.keep_for_step = keep_for_step
        self.use_checkpoint = use_checkpoint
        # role -> index of the keep entry that decides whether its output is fresh
        self.level_of_role = {self.layout.cached_feature_block(d): d + 1 for d in range(self.layout.max_depth + 1)}
        self.level_of_role[self.OUT] = 0
        self.roles = sorted(self.level_of_role, key=self.level_of_role.get)
        self.caches: dict[tuple[int, str], torch.Tensor] = {}
        self.step = 0
        self._ordinal = -1
        self._frame: dict[str, Any] | None = None
        self._hooks: list[Any] = []

    def __enter__(self) -> GatedUNet:
        blocks = block_modules(self.unet)
        for role in self.roles:
            self._hooks.append(blocks[role].register_forward_hook(self._hook(role)))
        return self

    def __exit__(self, *exc: Any) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()
        self.caches.clear()
        self._frame = None

    def reset(self) -> None:
        """Forget stored features (a new trajectory begins)."""
        self.caches.clear()
        self.step, self._ordinal = 0, -1

    def set_step(self, step: int, total: int | None = None) -> None:
        if step < self.step:
            self.caches.clear()
        self.step, self._ordinal = step, -1

    def __call__(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        self._ordinal += 1
        keep = self.keep_for_step(self.step).to(x.dtype)
        stored = [self.caches.get((self._ordinal, role)) for role in self.roles]
        complete = all(s is not None for s in stored)
        if self.use_checkpoint and complete and torch.is_grad_enabled():
            outs = checkpoint(self._call, x, timesteps, context, keep, *stored, use_reentrant=False)
        else:
            outs = self._call(x, timesteps, context, keep, *stored)
        for role, value in zip(self.roles, outs[1:], strict=True):
            self.caches[(self._ordinal, role)] = value
        return outs[0]

    def _call(self, x, timesteps, context, keep, *stored):
        self._frame = {"keep": keep, "stored": dict(zip(self.roles, stored, strict=True)), "new": {}}
        try:
            eps = self.unet(x, timesteps, context=context)
            new = self._frame["new"]
            return (eps, *[new[role] for role in self.roles])
        finally:
            self._frame = None

    def _hook(self, role: str):
        level = self.level_of_role[role]

        def hook(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
            frame = self._frame
            if frame is None:
                return None
            stored = frame["stored"].get(role)
            if stored is None or stored.shape != output.shape:
                blended = output
            else:
                m = frame["keep"][level]
                blended = m * output + (1 - m) * stored
            frame["new"][role] = blended
            return blended

        return hook
