"""Thin command-line entry points; the work is in the core and the recipes."""

from __future__ import annotations

import contextlib
import functools
import importlib
import inspect
import os
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Callable

from mgdt_jax.core import files

INTERRUPTED = 130  # 128 + SIGINT: the exit status a shell gives a command stopped by Ctrl-C


def interruptible(program: str) -> Callable[[Callable[..., int | None]], Callable[..., int | None]]:
    """Decorates a CLI's ``main`` so Ctrl-C ends it with ``PROGRAM: interrupted`` on stderr instead
    of Python's KeyboardInterrupt traceback.

    Started as the command (its console script, ``python -m`` or the module's file), the process
    then kills itself with SIGINT, as Python ends a program stopped by Ctrl-C (a shell reads exit
    status 130), so a calling shell loop stops too: bash goes on after a child that merely exits
    130. It does so at once, without Python's finalisation, which can crash when XLA's threads are
    stopped mid-compilation (the interrupted command's own clean-up has run by then). Called from
    Python (tests, other code), ``main`` returns 130 instead.

    A Ctrl-C whose KeyboardInterrupt Python swallows (raised inside a garbage-collector callback,
    such as JAX's, it would be printed as "Exception ignored" and dropped) is remembered, without
    that print: the command goes on to its end, which is then reported as interrupted. What an
    interrupted command leaves on disk is each command's own design (partial names renamed when
    complete, reports written last, created run folders removed); docs/troubleshooting.md.
    """

    def decorate(main: Callable[..., int | None]) -> Callable[..., int | None]:
        @functools.wraps(main)
        def wrapped(*args, **kwargs) -> int | None:
            with _watching_ctrl_c() as seen:
                try:
                    status = main(*args, **kwargs)
                    if not seen:
                        return status
                except SystemExit:  # absl's app.run ends every run so
                    if not seen:
                        raise
                except KeyboardInterrupt:
                    pass
            print(f"{program}: interrupted", file=sys.stderr, flush=True)
            if not _started_as(program, main):
                return INTERRUPTED
            return _end_as_interrupted()

        return wrapped

    return decorate


@contextlib.contextmanager
def _watching_ctrl_c() -> Iterator[list[int]]:
    """Yields a list that gets an entry for every Ctrl-C (SIGINT) while the block runs, including
    one whose KeyboardInterrupt Python drops (raised in a callback: the "Exception ignored" report
    of those is left out). Only in the main thread, and only where SIGINT is handled as Python's
    default (an ignored SIGINT, as in a shell's background job, stays ignored)."""
    seen: list[int] = []
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield seen
        return

    def on_ctrl_c(signum: int, frame: object) -> None:
        seen.append(signum)
        raise KeyboardInterrupt

    def unraisable(report: object) -> None:
        if not (seen and isinstance(report.exc_value, KeyboardInterrupt)):
            previous_hook(report)

    previous_hook, sys.unraisablehook = sys.unraisablehook, unraisable
    previous = signal.signal(signal.SIGINT, on_ctrl_c)
    try:
        yield seen
    finally:
        signal.signal(signal.SIGINT, previous)
        sys.unraisablehook = previous_hook


def _end_as_interrupted() -> int:
    """Ends the process by SIGINT, as Python ends a program stopped by Ctrl-C (see ``interruptible``)."""
    sys.stdout.flush()
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGINT)
    return INTERRUPTED  # not reached


class ConsoleScript:
    """What a console script calls (``pyproject.toml``): imports the command's module, then runs its
    ``main``. The import itself (JAX, TensorFlow: 1-3 s) is where an early Ctrl-C lands, before
    ``interruptible`` is in place; here it too ends with ``PROGRAM: interrupted`` and SIGINT, not a
    KeyboardInterrupt traceback. Arguments are passed on to ``main`` (tests call it with argv)."""

    def __init__(self, program: str, module: str) -> None:
        self.program, self.module = program, module

    def __call__(self, *args: object) -> int | None:
        with _watching_ctrl_c() as seen:
            try:
                main = importlib.import_module(self.module).main
            except KeyboardInterrupt:
                pass
        if seen:
            print(f"{self.program}: interrupted", file=sys.stderr, flush=True)
            return _end_as_interrupted()
        return main(*args)


def _started_as(program: str, main: Callable[..., object]) -> bool:
    started = Path(sys.argv[0])
    return started.name == program or started.resolve() == Path(inspect.getfile(main)).resolve()


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


CLAIM_FILE = ".evaluating"  # in --out while an evaluation CLI runs: the process id of the one writing there


@contextlib.contextmanager
def claimed_out_dir(out: Path, report_name: str) -> Iterator[None]:
    """``check_out_dir``, then holds ``out`` for this process while the block runs, so that two
    evaluations given the same ``--out`` cannot both pass the check and the later one replace the
    earlier one's report: ``OUT/.evaluating`` is created exclusively with this process's id (a file
    left by a process no longer running is taken over). OSError (one line) when another evaluation
    holds it or finished a report there meanwhile. Folders made for ``out`` are removed again if the
    block fails."""
    check_out_dir(out, report_name)
    with files.removing_created_folders(out):
        out.mkdir(parents=True, exist_ok=True)
        with files.held(out / CLAIM_FILE, "another evaluation"):
            if (out / report_name).exists():  # finished by another process after the check above
                raise OSError(f"--out {out}: already holds a report ({report_name}); choose another directory or remove it")
            yield
