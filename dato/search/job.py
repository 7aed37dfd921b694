"""A search in a background thread: start, cancel, progress; restart with the same run id to resume.

The WebUI keeps one :class:`SearchJob` per run id in a module-level registry,
so a browser refresh finds the running job again; after a WebUI restart,
starting the same settings and run id resumes from the last checkpoint.
"""

from __future__ import annotations

import threading
import traceback
from collections.abc import Callable
from typing import Any

from .engine import ScheduleSearch, SearchCancelled, SearchProgress
from .settings import SearchSettings

__all__ = ["SearchJob"]


class SearchJob:
    """Runs ``ScheduleSearch(settings, backend(), ...)`` in a daemon thread.

    ``backend`` may be the backend itself or a zero-argument factory (so a slow
    model load happens in the thread, not in the caller's request).
    """

    def __init__(self, settings: SearchSettings, backend: Any, *, scorer: Any = None,
                 scorer_loader: Callable[[], Any] | None = None, log: Callable[[str], None] | None = None) -> None:
        self._backend = backend
        self._cancel = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._log_lines: list[str] = []
        self._user_log = log
        self.search = ScheduleSearch(settings, None, scorer=scorer, scorer_loader=scorer_loader, log=self._log,
                                     cancel_event=self._cancel)
        self.result: dict[str, Any] | None = None
        self.error: str | None = None

    @property
    def run_id(self) -> str:
        return self.search.run_id

    @property
    def progress(self) -> SearchProgress:
        return self.search.progress

    def _log(self, message: str) -> None:
        with self._lock:
            self._log_lines.append(message)
            del self._log_lines[:-200]
        if self._user_log is not None:
            self._user_log(message)

    def start(self) -> SearchJob:
        if self._thread is not None:
            raise RuntimeError(f"search {self.run_id!r} was already started")
        self._thread = threading.Thread(target=self._main, name=f"dato-search-{self.run_id}", daemon=True)
        self._thread.start()
        return self

    def _main(self) -> None:
        try:
            backend = self._backend() if callable(self._backend) and not hasattr(self._backend, "generate") \
                else self._backend
            self.search.backend = backend
            self.result = self.search.run()
        except SearchCancelled:
            pass
        except Exception as exc:  # noqa: BLE001 - reported through status(), never lost
            self.error = f"{type(exc).__name__}: {exc}"
            self._log("search failed: " + "".join(traceback.format_exception_only(type(exc), exc)).strip())
            if self.search.progress.state not in ("failed",):
                self.search.progress.state = "failed"
                self.search.progress.message = self.error

    def cancel(self) -> None:
        """Stop after the evaluation in flight; the last generation's checkpoint stays for a resume."""
        self._cancel.set()
        self.search.cancel()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the job ends; ``True`` if it has ended."""
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def status(self) -> dict[str, Any]:
        """JSON-able progress for a UI or the API: state, generation g of G, evaluations, ETA, front."""
        data = self.progress.to_dict()
        data["running"] = self.running
        data["error"] = self.error
        with self._lock:
            data["log"] = list(self._log_lines[-20:])
        return data
