"""Worker pools leave Ctrl-C to their parent, from the first instruction of each worker."""

import concurrent.futures
import os
import signal

import pytest

from mgdt_jax.core import processes


def _sigint_state() -> tuple[int, bool]:
    return os.getpid(), signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, set())


def test_spawned_workers_never_see_ctrl_c_without_setting_it_themselves():
    with processes.spawn_pool(2) as pool:  # no initializer: the blocked SIGINT is inherited at the start
        states = [pool.submit(_sigint_state).result() for _ in range(6)]
        assert len(pool._processes) == 2  # both started by spawn_pool itself
    assert all(blocked for _, blocked in states) and os.getpid() not in {pid for pid, _ in states}
    assert signal.SIGINT not in signal.pthread_sigmask(signal.SIG_BLOCK, set())  # this process's is not


def test_a_ctrl_c_while_workers_start_is_raised_and_shuts_them_down(monkeypatch):
    workers, submit = [], concurrent.futures.ProcessPoolExecutor.submit

    def submit_then_ctrl_c(pool, *args, **kwargs):
        future = submit(pool, *args, **kwargs)
        workers.extend(process for process in pool._processes.values() if process not in workers)
        os.kill(os.getpid(), signal.SIGINT)
        return future

    monkeypatch.setattr(concurrent.futures.ProcessPoolExecutor, "submit", submit_then_ctrl_c)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a command (a test runner may differ)
    try:
        with pytest.raises(KeyboardInterrupt):
            processes.spawn_pool(2)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert workers
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode is not None  # the pool was shut down, no worker left behind
