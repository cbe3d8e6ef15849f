"""Thin command-line entry points; the work is in the core and the recipes."""

from __future__ import annotations

import functools
import inspect
import os
import sys
from pathlib import Path
from typing import Callable

INTERRUPTED = 130  # 128 + SIGINT: the exit status a shell gives a command stopped by Ctrl-C


def interruptible(program: str) -> Callable[[Callable[..., int | None]], Callable[..., int | None]]:
    """Decorates a CLI's ``main`` so Ctrl-C ends it with ``PROGRAM: interrupted`` on stderr instead
    of Python's KeyboardInterrupt traceback.

    Started as the command (its console script, ``python -m`` or the module's file), the process
    then ends as Python ends one stopped by Ctrl-C, killed by SIGINT (a shell reads exit status 130),
    so a calling shell loop stops too: bash goes on after a child that merely exits 130. Called
    from Python (tests, other code), ``main`` returns 130 instead. What an interrupted command leaves
    on disk is each command's own design (partial names renamed when complete, reports written
    last, created run folders removed); docs/troubleshooting.md.
    """

    def decorate(main: Callable[..., int | None]) -> Callable[..., int | None]:
        @functools.wraps(main)
        def wrapped(*args, **kwargs) -> int | None:
            try:
                return main(*args, **kwargs)
            except KeyboardInterrupt:
                print(f"{program}: interrupted", file=sys.stderr, flush=True)
                if not _started_as(program, main):
                    return INTERRUPTED
                sys.excepthook = _quiet_on_interrupt(sys.excepthook)
                raise  # uncaught, Python finalises and then kills itself with SIGINT

        return wrapped

    return decorate


def _started_as(program: str, main: Callable[..., object]) -> bool:
    started = Path(sys.argv[0])
    return started.name == program or started.resolve() == Path(inspect.getfile(main)).resolve()


def _quiet_on_interrupt(hook: Callable[..., object]) -> Callable[..., object]:
    def excepthook(kind, value, traceback) -> None:
        if not issubclass(kind, KeyboardInterrupt):  # its one line is printed already
            hook(kind, value, traceback)

    return excepthook


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
