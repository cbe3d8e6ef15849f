"""Thin command-line entry points; the work is in the core and the recipes."""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Callable

INTERRUPTED = 130  # 128 + SIGINT: the exit status a shell gives a command stopped by Ctrl-C


def interruptible(program: str) -> Callable[[Callable[..., int | None]], Callable[..., int | None]]:
    """Decorates a CLI's ``main`` so Ctrl-C ends it with ``PROGRAM: interrupted`` on stderr and exit
    status 130 instead of Python's KeyboardInterrupt traceback.

    What an interrupted command leaves on disk is each command's own design (partial names renamed
    when complete, reports written last, created run folders removed); docs/troubleshooting.md.
    """

    def decorate(main: Callable[..., int | None]) -> Callable[..., int | None]:
        @functools.wraps(main)
        def wrapped(*args, **kwargs) -> int | None:
            try:
                return main(*args, **kwargs)
            except KeyboardInterrupt:
                print(f"{program}: interrupted", file=sys.stderr)
                return INTERRUPTED

        return wrapped

    return decorate


def check_out_dir(out: Path, report_name: str) -> None:
    """Checks an evaluation CLI's ``--out`` before any playing, so a bad path costs no scores.

    ``report_name`` is the recipe's report file, written last: its presence marks a finished report.
    Raises OSError (one line, naming the path) when ``out`` is not a directory, holds a finished
    report (which the run would replace: another shard's or an earlier run's), or cannot be created.
    """
    if out.is_symlink() and not out.exists():
        raise OSError(f"--out {out}: a symlink to nothing")
    if out.exists():
        if not out.is_dir():
            raise OSError(f"--out {out}: exists and is not a directory")
        if (out / report_name).exists():
            raise OSError(f"--out {out}: already holds a report ({report_name}); choose another directory or remove it")
        return
    parent = out.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise OSError(f"--out {out}: cannot be created ({parent} is not a writable directory)")
