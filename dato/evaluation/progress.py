"""Progress lines with a bar and an ETA for the long headless jobs (``demo``, ``bench``).

Work is counted in *estimated seconds*: each task enters the plan with an
estimate made from the first timed calls, and the ETA scales the estimates
still to come by how the finished ones turned out (measured / estimated), so
a loaded machine slows the ETA down with it. One plain line per task (no
carriage returns), so CI logs and pipes read as well as a terminal.
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["Progress", "format_duration"]


def format_duration(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``1 h 12 min``."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


class Progress:
    """A plan of estimated seconds, advanced task by task; each step logs ``[####....]  42 % message  ETA 1 min``."""

    def __init__(self, log: Callable[[str], None], width: int = 20,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.log, self.width, self.clock = log, width, clock
        self.planned = 0.0  # estimated seconds of all tasks in the plan
        self.done_estimate = 0.0  # estimated seconds of the finished tasks
        self.started = clock()

    def plan(self, estimate_s: float) -> None:
        """Add ``estimate_s`` seconds of work to the plan."""
        self.planned += max(0.0, estimate_s)

    def eta(self) -> float:
        """Seconds still to go: the remaining estimates scaled by measured/estimated so far."""
        elapsed = self.clock() - self.started
        rate = elapsed / self.done_estimate if self.done_estimate > 0 else 1.0
        return max(0.0, self.planned - self.done_estimate) * rate

    def step(self, estimate_s: float, message: str) -> None:
        """One task of the plan (``estimate_s`` as planned) finished: log it with the bar and the ETA."""
        self.done_estimate = min(self.planned, self.done_estimate + max(0.0, estimate_s))
        fraction = self.done_estimate / self.planned if self.planned > 0 else 1.0
        filled = round(self.width * fraction)
        bar = "#" * filled + "." * (self.width - filled)
        self.log(f"[{bar}] {100 * fraction:3.0f} %  {message}  ETA {format_duration(self.eta())}")
