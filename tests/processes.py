"""Child processes as a terminal starts them, for tests that send them signals."""

from __future__ import annotations

import signal
import subprocess
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
