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

from dato.core.clock import SECOND_ORDER_SAMPLERS
from dato.core.layout import find_unet
from dato.core.plan import DEFAULT_DENOISING, Geometry, HostFacts

TAG = "sd-webui-dato"


def _shared():
    from modules import shared

    return shared


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


SAME_SAMPLER = "Use same sampler"  # the hires sampler dropdown's first choice (the API sends None)


def is_second_order(sampler_name: Any) -> bool:
    """Whether a sampler calls the model twice a step (the WebUI's ``second_order`` sampler option)."""
    name = str(sampler_name or "")
    try:
        from modules import sd_samplers

        config = sd_samplers.find_sampler_config(name)
        if config is not None:
            return bool(config.options.get("second_order", False))
    except Exception:  # noqa: BLE001 - the stand-in host or an older WebUI: fall back to the known names
        pass
    return name in SECOND_ORDER_SAMPLERS


def hires_size(width: int, height: int, scale: float, resize_x: int, resize_y: int) -> tuple[int, int]:
    """The hires pass's sampling size in pixels, as v1.10.1's ``calculate_target_resolution`` and
    ``sample_hr_pass`` make it (upscale by ``scale``, or resize to ``resize_x`` x ``resize_y``, cropping the
    latent to the requested aspect). ``process`` runs before the WebUI computes it, so the glue computes it."""
    if not resize_x and not resize_y:
        up_x, up_y = int(width * scale), int(height * scale)
        return up_x // 8 * 8, up_y // 8 * 8
    if not resize_y:
        up_x, up_y, target_x, target_y = resize_x, resize_x * height // width, None, None
    elif not resize_x:
        up_x, up_y, target_x, target_y = resize_y * width // height, resize_y, None, None
    else:
        target_x, target_y = resize_x, resize_y
        if width / height < resize_x / resize_y:
            up_x, up_y = resize_x, resize_x * height // width
        else:
            up_x, up_y = resize_y * width // height, resize_y
    trunc_x = (up_x - target_x) // 8 if target_x else 0
    trunc_y = (up_y - target_y) // 8 if target_y else 0
    return (up_x // 8 - trunc_x) * 8, (up_y // 8 - trunc_y) * 8


def _hires_sampler(name: Any) -> Any:
    return None if name in (None, "", SAME_SAMPLER) else name


def geometry_of(p: Any) -> Geometry:
    """A run's :class:`~dato.core.plan.Geometry` from its processing object (at ``process``, before ``p.init``
    computes the hires size)."""
    img2img = getattr(p, "init_images", None) is not None or getattr(p, "init_latent", None) is not None
    hires = bool(getattr(p, "enable_hr", False)) and not img2img
    width, height = int(getattr(p, "width", 512) or 512), int(getattr(p, "height", 512) or 512)
    hr_width = int(getattr(p, "hr_upscale_to_x", 0) or 0)
    hr_height = int(getattr(p, "hr_upscale_to_y", 0) or 0)
    if hires and not (hr_width and hr_height):
        hr_width, hr_height = hires_size(width, height, float(getattr(p, "hr_scale", 2.0) or 2.0),
                                         int(getattr(p, "hr_resize_x", 0) or 0),
                                         int(getattr(p, "hr_resize_y", 0) or 0))
    strength = getattr(p, "denoising_strength", None)
    strength = DEFAULT_DENOISING if strength is None else float(strength)
    return Geometry(
        steps=int(getattr(p, "steps", 20) or 20), width=width, height=height,
        sampler=str(getattr(p, "sampler_name", "") or "Euler"), img2img_strength=strength if img2img else None,
        img2img_fix_steps=img2img_fix_steps(), hires=hires, hr_steps=int(getattr(p, "hr_second_pass_steps", 0) or 0),
        hr_width=hr_width, hr_height=hr_height, hr_sampler=_hires_sampler(getattr(p, "hr_sampler_name", None)),
        hr_denoising=strength)


def geometry_from_request(body: dict, img2img: bool) -> Geometry:
    """The :class:`~dato.core.plan.Geometry` of a txt2img/img2img API request, with the API's defaults
    (``StableDiffusionTxt2ImgProcessingAPI``: 50 steps, 512 px, Euler; DEFAULT_DENOISING). The accordion's
    preview sends the page's values under the same names."""
    def number(key: str, default: float) -> float:
        value = body.get(key, default)
        try:
            return float(value if value is not None else default)
        except (TypeError, ValueError):
            return float(default)

    width, height = int(number("width", 512)), int(number("height", 512))
    hires = bool(body.get("enable_hr")) and not img2img
    hr_width, hr_height = hires_size(width, height, number("hr_scale", 2.0), int(number("hr_resize_x", 0)),
                                     int(number("hr_resize_y", 0))) if hires else (0, 0)
    strength = number("denoising_strength", DEFAULT_DENOISING)
    return Geometry(
        steps=max(1, int(number("steps", 50))), width=width, height=height,
        sampler=str(body.get("sampler_name") or body.get("sampler_index") or "Euler"),
        img2img_strength=strength if img2img else None, img2img_fix_steps=img2img_fix_steps(), hires=hires,
        hr_steps=int(number("hr_second_pass_steps", 0)), hr_width=hr_width, hr_height=hr_height,
        hr_sampler=_hires_sampler(body.get("hr_sampler_name")), hr_denoising=strength)


def img2img_fix_steps() -> bool:
    opts = getattr(_shared(), "opts", None)
    return bool(getattr(opts, "img2img_fix_steps", False))


def token_merging(p: Any = None, is_img2img: bool = False, override: dict | None = None) -> tuple[float, float]:
    """The WebUI's own Token Merging ratio (first pass, hires pass): from the run's ``p`` as v1.10.1's
    ``get_token_merging_ratio`` gives it, or, before a run, from Settings and a request's ``override_settings``."""
    if p is not None and callable(getattr(p, "get_token_merging_ratio", None)):
        return float(p.get_token_merging_ratio() or 0), float(p.get_token_merging_ratio(for_hr=True) or 0)
    opts = getattr(_shared(), "opts", None)
    values = {key: getattr(opts, key, 0) for key in ("token_merging_ratio", "token_merging_ratio_img2img",
                                                      "token_merging_ratio_hr")}
    values.update({k: v for k, v in (override or {}).items() if k in values})
    base = float(values["token_merging_ratio"] or 0)
    if is_img2img:
        return float(values["token_merging_ratio_img2img"] or 0) or base, 0.0
    return base, float(values["token_merging_ratio_hr"] or 0) or base


def host_facts(p: Any = None, is_img2img: bool = False, override: dict | None = None) -> HostFacts:
    """The planner's host facts: the loaded UNet's cost model (shapes only: SD1.5's before a model is loaded or
    when the loaded one is not supported, which the run then reports), the WebUI's call-counting clock, and
    its Token Merging ratio per pass."""
    from dato.evaluation.costs import architecture_cost, unet_cost

    try:
        unet = find_unet(_shared().sd_model)
    except Exception:  # noqa: BLE001 - no model yet, or one the engine does not support
        unet = None
    cost = unet_cost(unet) if unet is not None else _default_cost(architecture_cost)
    first, hires = token_merging(p, is_img2img, override)
    return HostFacts(cost, clock="webui", token_merging=first, hr_token_merging=hires, second_order=is_second_order)


_DEFAULT_COST: list[Any] = []


def _default_cost(architecture_cost) -> Any:
    if not _DEFAULT_COST:
        _DEFAULT_COST.append(architecture_cost("sd15"))
    return _DEFAULT_COST[0]


def denoiser_step(params: Any) -> tuple[Any, int, int]:
    """``(p, step, total)`` of an ``on_cfg_denoiser`` call: the WebUI's denoiser knows its job, step and count."""
    denoiser = getattr(params, "denoiser", None)
    step = int(getattr(denoiser, "step", 0) or 0)
    total = int(getattr(denoiser, "total_steps", 0) or 0) or max(step + 1, 1)
    return getattr(denoiser, "p", None), step, total
