"""Worker pools leave Ctrl-C to their parent, from the first instruction of each worker."""

import os
import signal

from mgdt_jax.core import processes


def _sigint_state() -> tuple[int, bool]:
    return os.getpid(), signal.getsignal(signal.SIGINT) == signal.SIG_IGN


def test_spawned_workers_ignore_ctrl_c_without_setting_it_themselves():
    before = signal.getsignal(signal.SIGINT)
    with processes.spawn_pool(2) as pool:  # no initializer: the ignored SIGINT is inherited at the start
        states = [pool.submit(_sigint_state).result() for _ in range(6)]
        assert len(pool._processes) == 2  # both started by spawn_pool itself
    assert all(ignored for _, ignored in states) and os.getpid() not in {pid for pid, _ in states}
    assert signal.getsignal(signal.SIGINT) is before  # the parent's own Ctrl-C handling is back
    assert signal.SIGINT not in signal.pthread_sigmask(signal.SIG_BLOCK, set())  # and not blocked
