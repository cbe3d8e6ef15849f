"""Worker processes that leave Ctrl-C to their parent.

A terminal's Ctrl-C reaches every process of the foreground group. A spawned worker that set
``SIGINT`` to ignored in its initializer is still exposed while it imports the parent's modules
(seconds, for TensorFlow or JAX), and dies there with a traceback of its own, which can also break
the pool so that the parent's clean-up is skipped or leaves processes behind. ``spawn_pool``
starts every worker with ``SIGINT`` blocked from its first instruction: a thread's signal mask
is inherited through fork and kept across ``exec``, and Python leaves it as it finds it, so a
Ctrl-C stays pending in the worker, never delivered. The parent alone answers it.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import multiprocessing
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any


_STOPS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def _ctrl_c_held() -> Iterator[None]:
    """Processes this thread starts inside inherit a blocked SIGINT and SIGTERM, and a Ctrl-C or
    SIGTERM meanwhile is held until the block ends, then answered by the handler that was in place.
    Held, not raised where it lands: a KeyboardInterrupt between a worker's start and its
    registration in the pool would leave a worker the pool does not know, which takes another's
    shut-down message and leaves that one running."""
    if threading.current_thread() is not threading.main_thread():  # the others never run Python's handler
        yield
        return
    pressed: list[int] = []
    previous = {signum: signal.signal(signum, lambda signum, frame: pressed.append(signum)) for signum in _STOPS}
    signal.pthread_sigmask(signal.SIG_BLOCK, _STOPS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOPS)  # a pending signal is recorded here
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if pressed:
            signal.raise_signal(pressed[0])  # the previous handler answers it: KeyboardInterrupt, exit or nothing


def spawn_pool(workers: int, initializer: Callable[..., Any] | None = None,
               initargs: tuple = ()) -> concurrent.futures.ProcessPoolExecutor:
    """A pool of ``workers`` spawned processes (TensorFlow, array_record and XLA hold threads: no
    fork), all started now, each with SIGINT blocked from its start (SIGTERM until its imports are
    done: the pool stops a broken pool's workers with it). A Ctrl-C or SIGTERM while they start is
    answered once all have started: the pool is shut down and the KeyboardInterrupt raised here."""
    pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                                  initializer=_started, initargs=(initializer, initargs))
    try:
        with _ctrl_c_held():
            for _ in range(workers):  # each submit starts one more process while none is idle
                pool.submit(int)
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    return pool


def _started(initializer: Callable[..., Any] | None, initargs: tuple) -> None:
    """A worker's first call, its imports done: SIGTERM reaches it again, then ``initializer`` runs."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    if initializer is not None:
        initializer(*initargs)
