"""Worker pools leave Ctrl-C to their parent, from the first instruction of each worker, and hold a
Ctrl-C or SIGTERM that comes while they start."""

import concurrent.futures
import multiprocessing.context
import os
import signal
import time

import pytest

from mgdt_jax.core import processes
from mgdt_jax.core.commands import Terminated


def _blocked_signals() -> tuple[int, set[int]]:
    return os.getpid(), set(signal.pthread_sigmask(signal.SIG_BLOCK, set()))


def test_spawned_workers_never_see_ctrl_c_without_setting_it_themselves():
    with processes.spawn_pool(2) as pool:  # no initializer: the blocked SIGINT is inherited at the start
        states = [pool.submit(_blocked_signals).result() for _ in range(6)]
        assert len(pool._processes) == 2  # both started by spawn_pool itself
    assert os.getpid() not in {pid for pid, _ in states}
    # SIGTERM reaches them once started: a broken pool stops its workers with it
    assert all(signal.SIGINT in blocked and signal.SIGTERM not in blocked for _, blocked in states)
    assert not {signal.SIGINT, signal.SIGTERM} & set(signal.pthread_sigmask(signal.SIG_BLOCK, set()))  # this process's


def _terminated(signum, frame):
    raise Terminated


@pytest.mark.parametrize("stop, handler, raised", [(signal.SIGINT, signal.default_int_handler, KeyboardInterrupt),
                                                   (signal.SIGTERM, _terminated, Terminated)])
@pytest.mark.parametrize("moment", ["after_start", "after_submit"])
def test_a_ctrl_c_or_sigterm_while_workers_start_is_raised_and_shuts_them_all_down(monkeypatch, moment, stop, handler,
                                                                                   raised):
    """Right after a worker's start, before the pool has recorded it, is where a raised Ctrl-C left
    a worker the pool never told to stop."""
    workers = []
    start, submit = multiprocessing.context.SpawnProcess.start, concurrent.futures.ProcessPoolExecutor.submit

    def start_then_ctrl_c(process):
        start(process)
        workers.append(process)
        if moment == "after_start":
            os.kill(os.getpid(), stop)

    def submit_then_ctrl_c(pool, *args, **kwargs):
        future = submit(pool, *args, **kwargs)
        if moment == "after_submit":
            os.kill(os.getpid(), stop)
        return future

    monkeypatch.setattr(multiprocessing.context.SpawnProcess, "start", start_then_ctrl_c)
    monkeypatch.setattr(concurrent.futures.ProcessPoolExecutor, "submit", submit_then_ctrl_c)
    previous = signal.signal(stop, handler)  # as in a command (a test runner may differ)
    try:
        with pytest.raises(raised):
            processes.spawn_pool(2)
    finally:
        signal.signal(stop, previous)
    assert len(workers) == 2  # the signal waited for the starts
    deadline = time.monotonic() + 60
    for worker in workers:
        worker.join(timeout=60)
        # The pool's own thread reaps its workers too; when it wins the race, this join's waitpid
        # finds no child and reads None until that thread has recorded the exit code.
        while worker.exitcode is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert worker.exitcode is not None  # the pool was shut down, no worker left behind
