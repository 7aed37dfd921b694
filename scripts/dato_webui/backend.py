"""The live model for the Search tab's generators: the one place where the search, calibration and gates sample it.

* :class:`WebUIBackend` makes images with the WebUI's own processing
  (``process_images`` on a private txt2img with the user's sampler, steps,
  size and CFG; nothing saved, no AlwaysOn script, a stale accordion patch
  taken off first). The search evaluates schedules with
  :meth:`~WebUIBackend.generate`: the patch goes on just before an image and
  comes off right after, so between evaluations the UNet is unpatched.
  Calibration records features with :meth:`~WebUIBackend.render` and its own
  step callback. Every image is made inside ``modules.call_queue.queue_lock``,
  so user generations queue between images instead of colliding.
* One step clock (``on_cfg_denoiser``) serves both: the WebUI's denoiser knows
  the step of the image in flight and the step count of this pass (counting
  UNet calls does not: second-order samplers call it more often).
* Gate training cannot use the WebUI's samplers (they run under ``no_grad``):
  :func:`gate_backend` wraps the live UNet in a
  :class:`~dato.evaluation.backends.StandaloneBackend` (dato's own sampler)
  whose every sampling takes the :class:`QueueTurn`: ``queue_lock`` from the
  start of a training iteration to its end.
* What the routes check before they start (:func:`usable_model`,
  :func:`check_token_merging`, :func:`check_sampler`), the model's name and
  hash, and its MACs table (traced once per UNet, inside ``queue_lock``).
* :func:`private_state`: a job's image leaves ``shared.state`` (progress bar, Interrupt/Skip) as it found it.

Length: the three generators' one contact with the live model (images, gate turns, the state a job's image
must not take over) kept together, so the locking rules live in one file.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import dato
from dato.core.arguments import ARG_BY_NAME
from dato.core.macs import trace_unet_cost
from dato.core.schedule import Schedule, short_repr
from dato.generators.search import SearchCancelled
from dato.generators.search.objectives import Samples

from .host import STATE_LOCK, denoiser_step, hand_on
from .requests import RequestError, Sampling
from .runtime import RUNTIME

STEP_CLOCK = "dato_search_step_clock"
TURN_GAP = 0.05  # seconds the gate thread waits after an iteration before taking queue_lock again
#: WebUI sampler name -> dato's own sampler (gate training cannot use the WebUI's samplers: they run no_grad)
GATE_SAMPLERS = {"Euler": "euler", "Euler a": "euler_a", "Heun": "heun", "DDIM": "ddim"}
_ACTIVE: dict[str, Any] = {"p": None, "on_step": None}  # the image in flight, and who hears its steps
_COSTS: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
#: ``shared.state`` fields a job's image must leave as it found them: the progress bar, the live preview and the
#: Interrupt/Skip buttons belong to the user's generations.
STATE_FIELDS = ("job", "job_no", "job_count", "job_timestamp", "processing_has_refined_job_count", "sampling_step",
                "sampling_steps", "interrupted", "skipped", "stopping_generation", "time_start", "textinfo",
                "current_latent", "current_image")
RETRIES = 3  # times a background image interrupted by a user's Interrupt/Skip is made again


# ------------------------------------------------------------------ the step clock
def on_cfg_denoiser(params: Any) -> None:
    """The step clock of our own images: the denoiser of the image in flight says which step comes next."""
    p, step, total = denoiser_step(params)
    on_step = _ACTIVE["on_step"]
    if on_step is not None and p is not None and p is _ACTIVE["p"]:
        on_step(step, total)


def ensure_step_clock() -> None:
    """Register the step clock unless it is there ("Reload UI" clears callbacks; this module stays imported)."""
    from modules import script_callbacks

    registered = getattr(script_callbacks, "callback_map", {}).get("callbacks_cfg_denoiser", [])
    if not any(str(getattr(c, "name", "")).endswith(STEP_CLOCK) for c in registered):
        script_callbacks.on_cfg_denoiser(on_cfg_denoiser, name=STEP_CLOCK)


# ------------------------------------------------------------------ images through the WebUI
class WebUIBackend:
    """Images of the live model through the WebUI's processing (see the module docstring)."""

    def __init__(self, steps: int, sampler_name: str = "Euler", width: int = 512, height: int = 512,
                 cfg_scale: float = 7.0, negative_prompt: str = "",
                 max_downsample: int = ARG_BY_NAME["max_downsample"].default) -> None:
        self.steps = int(steps)
        self.sampler_name = str(sampler_name)
        self.width, self.height = int(width), int(height)
        self.cfg_scale = float(cfg_scale)
        self.negative_prompt = str(negative_prompt)
        self.max_downsample = int(max_downsample)

    @classmethod
    def of(cls, sampling: Sampling) -> WebUIBackend:
        return cls(sampling.steps, sampling.sampler_name, sampling.width, sampling.height, sampling.cfg_scale,
                   sampling.negative_prompt)

    def describe(self) -> dict[str, Any]:
        from modules import shared

        return {
            "backend": "webui", "steps": self.steps, "sampler": self.sampler_name, "cfg_scale": self.cfg_scale,
            "width": self.width, "height": self.height, "negative_prompt": self.negative_prompt,
            "latent_shape": [4, self.height // 8, self.width // 8], **model_info(),
            "device": str(next(dato.find_unet(shared.sd_model).parameters()).device),
        }

    def macs(self, schedule: Schedule) -> float:
        from modules import shared

        return unet_cost(shared.sd_model).schedule_macs(schedule.resample(self.steps), self.height // 8,
                                                        self.width // 8, self.max_downsample)

    def generate(self, schedule: Schedule | None, pairs) -> Samples:
        """The search's evaluation: one image per (prompt, seed) with ``schedule`` (``None``: unaccelerated)."""
        from modules import call_queue

        arrays, images, seconds = [], [], 0.0
        for prompt, seed in pairs:
            for _attempt in range(RETRIES + 1):
                with call_queue.queue_lock:  # one image at a time: user jobs interleave between them
                    # an Interrupt/Skip pressed during our image was meant for the user's queued generation:
                    # it is handed on to that generation, and our image is made again
                    result = self.render(str(prompt), int(seed), "dato_search", None, schedule=schedule)
                if result is not None:
                    break
            else:
                raise SearchCancelled(f"interrupted from the WebUI {RETRIES + 1} times in a row")
            processed, elapsed = result
            array, image = _to_tensors(processed.images[0])
            arrays.append(array)
            if image is not None:
                images.append(image)
            seconds += elapsed
        latents = _stack(arrays)
        return Samples([(str(p), int(s)) for p, s in pairs], latents,
                       _stack(images) if len(images) == len(arrays) else None, seconds)

    def render(self, prompt: str, seed: int, job: str, interrupted: Exception | None,
               schedule: Schedule | None = None,
               on_step: Callable[[int, int], None] | None = None) -> tuple[Any, float] | None:
        """One image, the caller holding ``queue_lock``: ``(processed, seconds)``.

        With ``schedule`` the UNet is patched for this image only and the step clock drives the patch; else
        ``on_step(step, total)`` hears the steps. ``shared.state`` is left as it was found (see
        :func:`private_state`). After Interrupt or Skip in the WebUI, ``interrupted`` is raised; with
        ``interrupted=None`` (a background job) the press is handed on to the user's next generation and the
        answer is ``None`` (make the image again).
        """
        from modules import processing, shared

        ensure_step_clock()
        RUNTIME.remove(job)  # a stale accordion patch must not touch what is measured
        p = processing.StableDiffusionProcessingTxt2Img(
            prompt=prompt, negative_prompt=self.negative_prompt, seed=seed, steps=self.steps,
            cfg_scale=self.cfg_scale, width=self.width, height=self.height, batch_size=1, n_iter=1,
            sampler_name=self.sampler_name)
        p.do_not_save_samples = True
        p.do_not_save_grid = True
        p.scripts = None  # no AlwaysOn script (the accordion included) touches our images
        unet = dato.find_unet(shared.sd_model)
        with private_state() as pressed:
            result = self._render(p, unet, seed, schedule, on_step)
        if pressed:
            if interrupted is not None:
                raise interrupted
            hand_on(pressed)
            return None
        return result

    def _render(self, p: Any, unet: Any, seed: int, schedule: Schedule | None,
                on_step: Callable[[int, int], None] | None) -> tuple[Any, float]:
        from modules import processing, shared

        try:
            patch = None
            if schedule is not None:
                patch = dato.apply_patch(unet, schedule, clock="manual", max_downsample=self.max_downsample,
                                         seed=seed % (2**31))
                on_step = functools.partial(dato.set_step, unet)
            _ACTIVE["p"], _ACTIVE["on_step"] = p, on_step
            t0 = time.perf_counter()
            processed = processing.process_images(p)
            elapsed = time.perf_counter() - t0
            if shared.state.interrupted or shared.state.skipped:
                return None, elapsed
            if patch is not None and patch.stats["calls"] == 0:
                raise RuntimeError("the step clock never reached the patch (on_cfg_denoiser did not run), so the "
                                   "evaluation was not accelerated; is another extension replacing the sampler?")
        finally:
            _ACTIVE["p"], _ACTIVE["on_step"] = None, None
            if schedule is not None:
                dato.remove_patch(unet)
            close = getattr(p, "close", None)
            if callable(close):
                close()
        return processed, elapsed


@contextlib.contextmanager
def private_state() -> Iterator[list[str]]:
    """Run a job's image without taking over ``shared.state``: every field in :data:`STATE_FIELDS` is put back.

    Yields a list that names what was pressed during the image (``"interrupt"``, ``"skip"``); the image's
    sampler saw it and stopped early. The caller holds ``queue_lock``, so no user generation runs meanwhile.
    """
    from modules import shared

    state = shared.state
    with STATE_LOCK:
        saved = {name: getattr(state, name, None) for name in STATE_FIELDS}
        state.interrupted = state.skipped = state.stopping_generation = False
    pressed: list[str] = []
    try:
        yield pressed
    finally:
        with STATE_LOCK:
            pressed += [name for name, flag in (("interrupt", state.interrupted), ("skip", state.skipped)) if flag]
            for name, value in saved.items():
                setattr(state, name, value)




def _to_tensors(image: Any):
    """(array to compare, image in [0, 1] or None): a PIL image gives both; a tensor (no VAE) is the array."""
    import torch

    if isinstance(image, torch.Tensor):
        return image.detach().float().cpu(), None
    import numpy as np

    arr = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)
    return arr, arr


def _stack(tensors: list):
    import torch

    return torch.stack(tensors)


# ------------------------------------------------------------------ the host
def model_info() -> dict[str, str]:
    """Name and hash of the loaded checkpoint (what results are keyed and labelled by)."""
    from modules import shared

    model = shared.sd_model
    info = getattr(model, "sd_checkpoint_info", None)
    return {"model_name": str(getattr(info, "name_for_extra", None) or getattr(info, "title", None) or ""),
            "model_hash": str(getattr(model, "sd_model_hash", None) or getattr(info, "shorthash", None) or "")}


def model_key() -> str:
    info = model_info()
    return info["model_hash"] or info["model_name"]


def usable_model(purpose: str, status: int = 409) -> tuple[Any, Any]:
    """(the loaded model, its UNet) if dato can patch it; else a ``status`` error naming ``purpose``."""
    from modules import shared

    model = shared.sd_model
    try:
        return model, dato.find_unet(model)
    except (dato.UnsupportedModelError, AttributeError) as exc:
        raise RequestError(f"the loaded model cannot be used for {purpose}: {exc}", status) from None


def check_token_merging(purpose: str) -> None:
    """The WebUI's Token Merging (applied inside ``process_images``) would change every image we measure."""
    from modules import shared

    tome = float(getattr(shared.opts, "token_merging_ratio", 0) or 0)
    if tome > 0:
        raise RequestError(f"the WebUI's Token merging ratio is {tome:g}: it would change what {purpose} measures. "
                           "Set Settings > Optimizations > Token merging ratio to 0 first.", 409)


def visible_samplers() -> list[str]:
    """The WebUI's sampler names ([] where it cannot say: stand-ins and old versions)."""
    try:
        from modules import sd_samplers

        return list(sd_samplers.visible_sampler_names())
    except Exception:  # noqa: BLE001 - stand-ins and old versions
        return []


def check_sampler(name: str) -> None:
    names = visible_samplers()
    if names and name not in names:
        raise RequestError(f"sampler_name = {short_repr(name)} is not available; known: {', '.join(names)}")


def unet_cost(model: Any) -> Any:
    """The UNet's MACs table; traced once per UNet inside ``queue_lock`` (the trace runs the UNet)."""
    unet = dato.find_unet(model)
    cost = _COSTS.get(unet)
    if cost is None:
        from modules import call_queue

        with call_queue.queue_lock:
            cost = trace_unet_cost(unet)
        _COSTS[unet] = cost
    return cost


def macs_speedup(schedule: Schedule, width: int, height: int) -> float:
    """Analytic UNet MACs of all-full sampling over the schedule's (one UNet pass per step, same size)."""
    from modules import shared

    cost = unet_cost(shared.sd_model)
    h, w = height // 8, width // 8
    return cost.full_step_macs(h, w) * schedule.steps / cost.schedule_macs(schedule, h, w)


# ------------------------------------------------------------------ gate training
class QueueTurn:
    """``queue_lock`` held by the gate thread from the start of an iteration to its end.

    :meth:`iteration` wraps every training iteration (the engine's ``step_context``): it holds the lock before
    the gated UNet's hooks go on and releases it after the optimiser step. :meth:`hold` is also called, as a
    backstop, before each sampling of the UNet (a no-op within a turn), and :meth:`release` when the job ends
    however it ends. Taking the turn also removes a stale accordion patch (gate training needs the bare UNet)
    and notices a checkpoint change. Only the thread that first took it (the job's) takes it again.
    """

    def __init__(self, model: Any) -> None:
        self.model = model
        self.held = False
        self.owner: threading.Thread | None = None

    def hold(self) -> None:
        if self.held:
            return
        from modules import call_queue, shared

        call_queue.queue_lock.acquire()
        self.held = True
        self.owner = threading.current_thread()
        if shared.sd_model is not self.model:
            raise RuntimeError("the checkpoint changed during gate training; start it again")
        RUNTIME.remove("gate training")

    def release(self) -> None:
        if self.held:
            from modules import call_queue

            self.held = False
            call_queue.queue_lock.release()

    @contextlib.contextmanager
    def iteration(self) -> Iterator[None]:
        """One training iteration's turn: user generations wait for it, and run between iterations.

        ``queue_lock`` is a plain ``threading.Lock``, which is not fair: released and taken again a few
        statements later by the same thread, it kept a waiting generation out for up to 66 iterations in a
        CPython 3.11 check (loop with GIL-bound work). A short pause after the release lets the woken waiter
        take it first.
        """
        self.hold()
        try:
            yield
        finally:
            was_held = self.held
            self.release()
            if was_held:
                time.sleep(TURN_GAP)


def gate_sampler(name: str) -> str | None:
    """dato's sampler for a WebUI sampler name (or dato's own name), None when gates cannot use it."""
    if name in GATE_SAMPLERS:
        return GATE_SAMPLERS[name]
    return name if name in GATE_SAMPLERS.values() else None


def check_gate_model(model: Any, unet: Any) -> None:
    if not callable(getattr(model, "get_learned_conditioning", None)):
        raise RequestError("the loaded model has no text encoder (get_learned_conditioning)", 409)
    if int(getattr(unet, "in_channels", 4)) != 4:
        raise RequestError("gate training needs a 4-channel latent UNet (not an inpainting model)", 409)


def _locked_backend_class() -> type:
    from dato.evaluation.backends import StandaloneBackend

    class LockedBackend(StandaloneBackend):
        """Every sampling of the UNet (targets and gated trajectories) takes the queue turn first."""

        turn: QueueTurn

        def sample_latents(self, *args: Any, **kwargs: Any) -> Any:
            self.turn.hold()
            return super().sample_latents(*args, **kwargs)

    return LockedBackend


def _encoder(model: Any) -> Any:
    """Prompts -> conditioning with the WebUI's text encoder, no autograd (only the gates learn)."""
    import torch

    try:
        from modules import devices

        autocast = devices.autocast
    except (ImportError, AttributeError):
        autocast = contextlib.nullcontext

    def encode(prompts: list[str]) -> Any:
        with torch.no_grad(), autocast():
            return model.get_learned_conditioning(list(prompts))

    return encode


def gate_backend(sampling: Sampling, turn: QueueTurn) -> Any:
    """A StandaloneBackend around the live UNet (built in the job thread, inside the queue turn)."""
    turn.hold()
    model = turn.model
    unet = dato.find_unet(model)
    encode = _encoder(model)
    null = encode([sampling.negative_prompt])
    alphas = getattr(model, "alphas_cumprod", None)
    backend = _locked_backend_class()(
        unet, steps=sampling.steps, latent_shape=(4, sampling.height // 8, sampling.width // 8), encode=encode,
        null_context=lambda n: null.expand(n, -1, -1), sampler=gate_sampler(sampling.sampler_name),
        cfg_scale=sampling.cfg_scale, alphas_cumprod=None if alphas is None else alphas.detach().float().cpu(),
        info=model_info())
    backend.turn = turn
    trace_unet_cost(unet, context_len=int(null.shape[1]))  # train_gates prices levels with it: trace it here
    return backend
