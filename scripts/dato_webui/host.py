"""What the glue reads from the host about a run, and hands back to it.

The WebUI's shared state and its Interrupt/Skip hand-on (guarded by one lock,
since job threads touch them), another accelerator that owns the UNet, the
sampler's order, a pass's steps and latent size, the denoiser's step: small
facts of v1.10.1 (and the loaded model's UNet layout), each read in one place so the runtime and the background
jobs agree on them.
"""

from __future__ import annotations

import threading
from typing import Any

from dato.core.layout import DEFAULT_LAYOUT, UNetLayout, find_unet

TAG = "sd-webui-dato"


def _shared():
    from modules import shared

    return shared


def loaded_layout() -> UNetLayout:
    """The loaded model's UNet layout; :data:`DEFAULT_LAYOUT` (SD1.x) when none is loaded or it is not ours."""
    try:
        return UNetLayout.from_unet(find_unet(_shared().sd_model))
    except Exception:  # noqa: BLE001 - no model yet, or one the engine does not support (the run then says so)
        return DEFAULT_LAYOUT


def tell(p: Any, message: str) -> None:
    """Say something the user must see: in the console and under the image (the run's comments)."""
    print(f"[{TAG}] {message}")
    comment = getattr(p, "comment", None)
    if callable(comment):
        comment(f"{TAG}: {message}")


STATE_LOCK = threading.RLock()  # job threads that touch shared.state, and the hand-on below
_HANDED_ON: list[str] = []


def hand_on(pressed: list[str]) -> None:
    """An Interrupt/Skip hit a background job's image: keep it for the user's generation that waits for the GPU.

    The WebUI's buttons act on ``shared.state``, whatever runs; a user who presses Interrupt while their
    generation waits behind a search image means their own generation. With no generation waiting (the
    WebUI's ``progress.pending_tasks`` is empty) the press is dropped.
    """
    try:
        from modules import progress

        waiting = bool(getattr(progress, "pending_tasks", None))
    except ImportError:  # a host without the progress module: assume a generation waits
        waiting = True
    with STATE_LOCK:
        _HANDED_ON[:] = pressed if waiting else []
    print(f"[{TAG}] {' and '.join(pressed)} pressed during a background job's image: "
          + ("handed on to the generation that waits; " if waiting else "no generation waits; ")
          + "the job makes that image again")


def take_handed_on() -> None:
    """At the start of a user's generation (``process``, after the WebUI's ``state.begin``): apply a handed-on
    Interrupt/Skip, so the generation it was meant for stops."""
    with STATE_LOCK:
        pressed, _HANDED_ON[:] = list(_HANDED_ON), []
    if pressed:
        state = _shared().state
        if "interrupt" in pressed:
            state.interrupt()
        if "skip" in pressed:
            state.skip()


def other_accelerator(unet: Any) -> str | None:
    """Another extension that has replaced the UNet's forward with its own step cache, by name, or ``None``.

    The DeepCache extension (sd-webui-deepcache-standalone) sets an instance ``forward`` and
    ``_deepcache_hooked = True`` on the UNet in ``process_batch``/``before_hr`` and undoes both in
    ``postprocess_batch``. (ControlNet also sets an instance ``forward`` but runs every block through it, so a
    replaced forward alone is not taken as a conflict.)
    """
    if getattr(unet, "_deepcache_hooked", False):
        return "the DeepCache extension"
    return None


SECOND_ORDER = frozenset({"Heun", "DPM2", "DPM2 a", "DPM++ 2S a", "DPM++ SDE"})


def is_second_order(p: Any) -> bool:
    """Whether the run's sampler calls the model twice a step (the WebUI's ``second_order`` sampler option)."""
    name = str(getattr(p, "sampler_name", "") or "")
    try:
        from modules import sd_samplers

        config = sd_samplers.find_sampler_config(name)
        if config is not None:
            return bool(config.options.get("second_order", False))
    except Exception:  # noqa: BLE001 - the stand-in host or an older WebUI: fall back to the known names
        pass
    return name in SECOND_ORDER


def pass_geometry(p: Any, for_hr: bool) -> tuple[int, int, int]:
    """(sampler steps, latent height, latent width) of a pass, as the WebUI runs it."""
    steps = int(getattr(p, "steps", 20) or 20)
    height, width = int(getattr(p, "height", 512) or 512), int(getattr(p, "width", 512) or 512)
    if for_hr:
        steps = int(getattr(p, "hr_second_pass_steps", 0) or 0) or steps
        height = int(getattr(p, "hr_upscale_to_y", 0) or 0) or height
        width = int(getattr(p, "hr_upscale_to_x", 0) or 0) or width
    elif getattr(p, "init_images", None) is not None and not _img2img_fix_steps():
        strength = float(getattr(p, "denoising_strength", 0.75) or 0.75)
        steps = int(min(strength, 0.999) * steps) + 1
    return max(1, steps), max(1, height // 8), max(1, width // 8)


def _img2img_fix_steps() -> bool:
    opts = getattr(_shared(), "opts", None)
    return bool(getattr(opts, "img2img_fix_steps", False))


def denoiser_step(params: Any) -> tuple[Any, int, int]:
    """``(p, step, total)`` of an ``on_cfg_denoiser`` call: the WebUI's denoiser knows its job, step and count."""
    denoiser = getattr(params, "denoiser", None)
    step = int(getattr(denoiser, "step", 0) or 0)
    total = int(getattr(denoiser, "total_steps", 0) or 0) or max(step + 1, 1)
    return getattr(denoiser, "p", None), step, total
