"""Stand-in for ``modules/fifo_lock.py`` (v1.10.1): same interface (``acquire(blocking)``, context manager)."""

import threading


class FIFOLock:
    def __init__(self):
        self._lock = threading.Lock()

    def acquire(self, blocking=True):
        return self._lock.acquire(blocking)

    def release(self):
        self._lock.release()

    def locked(self):
        return self._lock.locked()

    __enter__ = acquire

    def __exit__(self, t, v, tb):
        self.release()
