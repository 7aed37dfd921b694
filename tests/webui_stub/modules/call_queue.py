"""Stand-in for ``modules/call_queue.py`` (v1.10.1): the GPU ``queue_lock``."""

from modules import fifo_lock

queue_lock = fifo_lock.FIFOLock()
