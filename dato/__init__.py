"""sd-webui-dato engine: training-free acceleration of ldm Stable Diffusion 1.x UNets.

Public API (everything else is an implementation detail)::

    import dato
    patch = dato.apply_patch(model, "balanced", method="prune")   # or a Schedule, or None
    dato.set_step(model, step, total)                             # when clock="manual"
    dato.remove_patch(model)                                      # exact restore

The engine imports no WebUI code; ``scripts/`` is the thin glue.
"""

from dato.core.layout import UNetLayout, UnsupportedModelError, find_unet
from dato.core.patch import PatchConflictError, apply_patch, clear_step, get_patch, remove_patch, set_step
from dato.core.schedule import FULL, METHODS, REUSE, Schedule, ScheduleError, find_schedules, load_schedule

__version__ = "0.1.0"

__all__ = [
    "FULL",
    "METHODS",
    "REUSE",
    "PatchConflictError",
    "Schedule",
    "ScheduleError",
    "UNetLayout",
    "UnsupportedModelError",
    "apply_patch",
    "clear_step",
    "find_schedules",
    "find_unet",
    "get_patch",
    "load_schedule",
    "remove_patch",
    "set_step",
]
