"""One background-job base for the generators that run for minutes: the search and the gate training.

A job owns one daemon thread. The WebUI keeps jobs in registries so that a
browser refresh finds a running job again; the CLIs run the same work in the
foreground. The base does the thread bookkeeping (start once, cancel flag,
wait, running, failure capture); a subclass says what the work is and what
its status looks like.
"""

from __future__ import annotations

import threading
import time
import traceback
from typing import Any

__all__ = ["BackgroundJob"]


class BackgroundJob:
    """Runs :meth:`work` in a daemon thread: ``pending -> running -> done | cancelled | failed``.

    Args:
        backend: the model backend, or a zero-argument factory for it, so that a
            slow model load happens in the job's thread and not in the caller's
            request. A callable without ``generate``/``unet`` is taken for a factory.
        name: the thread's name (shows in stack dumps of a busy WebUI).
    """

    #: exceptions that mean "stopped because cancel() was called", not failure
    cancelled_exceptions: tuple[type[BaseException], ...] = ()

    def __init__(self, backend: Any, name: str) -> None:
        self._backend = backend
        self._name = name
        self._cancel = threading.Event()
        self._thread: threading.Thread | None = None
        self.state = "pending"
        self.error: str | None = None
        self.started: float | None = None

    def work(self, backend: Any) -> None:
        """The job itself; raise one of :attr:`cancelled_exceptions` when :meth:`cancel_requested`."""
        raise NotImplementedError

    def failed(self, message: str) -> None:
        """Called in the job's thread after :meth:`work` raised; ``message`` is its one-line form."""

    def start(self) -> BackgroundJob:
        if self._thread is not None:
            raise RuntimeError(f"job {self._name!r} was already started")
        self.started = time.time()
        self.state = "running"
        self._thread = threading.Thread(target=self._main, name=self._name, daemon=True)
        self._thread.start()
        return self

    def _main(self) -> None:
        try:
            self.work(self._resolve_backend())
            self.state = "done"
        except self.cancelled_exceptions:
            self.state = "cancelled"
        except Exception as exc:  # noqa: BLE001 - reported through status(), never lost
            self.error = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            self.state = "failed"
            self.failed(self.error)

    def _resolve_backend(self) -> Any:
        backend = self._backend
        is_factory = callable(backend) and not (hasattr(backend, "generate") or hasattr(backend, "unet"))
        return backend() if is_factory else backend

    def cancel(self) -> None:
        """Ask the work to stop at its next check; returns at once (use :meth:`wait`)."""
        self._cancel.set()

    def cancel_requested(self) -> bool:
        return self._cancel.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the job ends; ``True`` if it has ended (or never started)."""
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()
