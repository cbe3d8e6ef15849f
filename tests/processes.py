"""Child processes as a terminal starts them, for tests that send them signals, and a process
holding a folder's claim file."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def popen_as_from_a_terminal(command: list[str], **kwargs: Any) -> subprocess.Popen:
    """``subprocess.Popen`` with Ctrl-C (SIGINT) handled in the child as a shell would leave it.

    Test runners' worker processes (pytest-xdist's) ignore SIGINT, and an ignored signal stays
    ignored across exec, so a child would never see the Ctrl-C a test sends: a handled signal, by
    contrast, is reset to its default in the child, which is what Python expects at start.
    """
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return subprocess.Popen(command, **kwargs)
    finally:
        signal.signal(signal.SIGINT, previous)


_HOLDER = """
import sys, time
from pathlib import Path
from mgdt_jax.core import files
with files.held(Path(sys.argv[1]), "a test's writer"):
    print("held", flush=True)
    time.sleep(600)
"""


@contextlib.contextmanager
def another_process_holding(claim: Path) -> Iterator[subprocess.Popen]:
    """A process holding ``claim`` (``files.held``) until the block ends, as a command writing there
    would; the process is killed at the end (its claim file stays, as a killed command's does)."""
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(claim)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(
                                  filter(None, [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH")]))})
    try:
        assert holder.stdout.readline().strip() == "held"
        yield holder
    finally:
        holder.kill()
        holder.wait()
