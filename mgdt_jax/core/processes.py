"""Worker processes that leave Ctrl-C to their parent.

A terminal's Ctrl-C reaches every process of the foreground group. A spawned worker that set
``SIGINT`` to ignored in its initializer is still exposed while it imports the parent's modules
(seconds, for TensorFlow or JAX), and dies there with a traceback of its own, which can also break
the pool so that the parent's clean-up hangs or leaves processes behind. ``spawn_pool`` starts
every worker with ``SIGINT`` ignored from its first instruction: an ignored signal stays ignored
across ``exec``, and Python then keeps it so. The parent alone answers Ctrl-C.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import multiprocessing
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any


@contextlib.contextmanager
def _sigint_ignored_for_children() -> Iterator[None]:
    """Processes started inside inherit an ignored SIGINT; a Ctrl-C meanwhile is held (blocked, so
    Linux keeps it pending even while ignored) and reaches this process when the block ends."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread handles signals
        yield
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    handler = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, handler)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def spawn_pool(workers: int, initializer: Callable[..., Any] | None = None,
               initargs: tuple = ()) -> concurrent.futures.ProcessPoolExecutor:
    """A pool of ``workers`` spawned processes (TensorFlow, array_record and XLA hold threads: no
    fork), all started now, each ignoring SIGINT from its start."""
    pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                                  initializer=initializer, initargs=initargs)
    with _sigint_ignored_for_children():
        for _ in range(workers):  # each submit starts one more process while none is idle
            pool.submit(int)
    return pool
