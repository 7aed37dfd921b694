"""This WebUI session's background jobs of one kind (searches, gate trainings), by id.

A browser refresh finds a running job again through its registry; after a
restart the jobs are gone and their result files speak for them. One job of a
kind runs at a time: both kinds hold the GPU between the user's generations.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from dato.core.schedule import short_repr

from .requests import RequestError


class JobRegistry(dict):
    """``{id: job}`` of one kind; ``what`` names the kind in messages, ``id_of`` and ``state_of`` read a job.

    Finished jobs are kept for the status routes (their result files outlive them), the newest
    ``keep_finished`` only: a WebUI session that runs for days does not pile them up.
    """

    def __init__(self, what: str, id_of: Callable[[Any], str],
                 state_of: Callable[[Any], str] = lambda job: job.state, keep_finished: int = 16) -> None:
        super().__init__()
        self.keep_finished = keep_finished
        self.what = what
        self.id_of = id_of
        self.state_of = state_of
        self._lock = threading.Lock()

    def start(self, make: Callable[[], Any]) -> Any:
        """Make, register and start a job unless one of this kind is still running (409)."""
        with self._lock:
            running = next((i for i, j in self.items() if j.running), None)
            if running is not None:
                raise RequestError(f"{self.what} {short_repr(running)} is still running; cancel it first", 409)
            self.prune()
            job = make()
            self[self.id_of(job)] = job
            job.start()
        return job

    def prune(self) -> None:
        """Forget the oldest finished jobs beyond ``keep_finished`` (insertion order is start order)."""
        finished = [i for i, j in self.items() if not j.running]
        for job_id in finished[:max(0, len(finished) - self.keep_finished)]:
            del self[job_id]

    def find(self, job_id: Any) -> Any:
        """The job of this session called ``job_id``, or ``None``."""
        return self.get(job_id) if isinstance(job_id, str) else None

    def cancel(self, job_id: Any) -> Any:
        """Ask a running job to stop (404 when there is none of that id, 409 when it has ended)."""
        job = self.find(job_id)
        if job is None:
            raise RequestError(f"no {self.what} named {short_repr(job_id)} in this WebUI session", 404)
        if not job.running:
            raise RequestError(f"{self.what} {short_repr(job_id)} is not running (state {self.state_of(job)})", 409)
        job.cancel()
        return job
