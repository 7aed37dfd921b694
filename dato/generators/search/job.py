"""A search in a background thread: start, cancel, progress; restart with the same run id to resume.

The WebUI keeps one :class:`SearchJob` per run id in a module-level registry,
so a browser refresh finds the running job again; after a WebUI restart,
starting the same settings and run id resumes from the last checkpoint.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from dato.generators.jobs import BackgroundJob
from dato.generators.search.engine import ScheduleSearch, SearchCancelled, SearchProgress
from dato.generators.search.settings import SearchSettings

__all__ = ["SearchJob"]


class SearchJob(BackgroundJob):
    """Runs ``ScheduleSearch(settings, backend, ...)`` in a daemon thread (see :class:`BackgroundJob`)."""

    cancelled_exceptions = (SearchCancelled,)

    def __init__(self, settings: SearchSettings, backend: Any, *, scorer: Any = None,
                 scorer_loader: Callable[[], Any] | None = None, log: Callable[[str], None] | None = None) -> None:
        self._log_lock = threading.Lock()
        self._log_lines: list[str] = []
        self._user_log = log
        self.search = ScheduleSearch(settings, None, scorer=scorer, scorer_loader=scorer_loader, log=self._log)
        super().__init__(backend, name=f"dato-search-{self.search.run_id}")
        self.search.cancel_event = self._cancel
        self.result: dict[str, Any] | None = None

    @property
    def run_id(self) -> str:
        return self.search.run_id

    @property
    def progress(self) -> SearchProgress:
        return self.search.progress

    def _log(self, message: str) -> None:
        with self._log_lock:
            self._log_lines.append(message)
            del self._log_lines[:-200]
        if self._user_log is not None:
            self._user_log(message)

    def work(self, backend: Any) -> None:
        self.search.backend = backend
        self.result = self.search.run()

    def failed(self, message: str) -> None:
        self._log("search failed: " + message)
        if self.search.progress.state != "failed":
            self.search.progress.state = "failed"
            self.search.progress.message = message

    def cancel(self) -> None:
        """Stop after the evaluation in flight; the last generation's checkpoint stays for a resume."""
        super().cancel()
        self.search.cancel()

    def status(self) -> dict[str, Any]:
        """JSON-able progress for a UI or the API: state, generation g of G, evaluations, ETA, front."""
        data = self.progress.to_dict()
        data["running"] = self.running
        data["error"] = self.error
        with self._log_lock:
            data["log"] = list(self._log_lines[-20:])
        return data
