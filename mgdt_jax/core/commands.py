"""What every command (console scripts, data pipelines, experiment scripts) shares: Ctrl-C ends it
with one line ``PROGRAM: interrupted`` and SIGINT, not a KeyboardInterrupt traceback, and SIGTERM
(a scheduler's stop, ``kill``) with ``PROGRAM: terminated (SIGTERM)`` and SIGTERM after the same
clean-up, from its first imports (``ConsoleScript``) through its ``main`` (``interruptible``)."""

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

INTERRUPTED = 130  # 128 + SIGINT: the exit status a shell gives a command stopped by Ctrl-C
TERMINATED = 143  # 128 + SIGTERM


class Terminated(KeyboardInterrupt):
    """SIGTERM while a command runs (``interruptible``). A KeyboardInterrupt, so that every clean-up
    written for Ctrl-C (claims let go, partial files removed, worker pools shut down) runs for it
    too; Python's default action for SIGTERM ended the process at once and left them all."""


def interruptible(program: str, *, errors: tuple[type[Exception], ...] = ()
                  ) -> Callable[[Callable[..., int | None]], Callable[..., int | None]]:
    """Decorates a CLI's ``main`` so Ctrl-C ends it with ``PROGRAM: interrupted`` on stderr instead
    of Python's KeyboardInterrupt traceback. An exception of ``errors`` escaping ``main`` ends it with
    ``PROGRAM: error: <its first line>`` and status 1: for scripts whose arguments go straight to the
    library functions that check them (the benchmarks: the project's own faults are ValueErrors with
    one-line messages, a missing or unwritable file an OSError).

    Started as the command (its console script, ``python -m`` or the module's file), the process
    then kills itself with SIGINT, as Python ends a program stopped by Ctrl-C (a shell reads exit
    status 130), so a calling shell loop stops too: bash goes on after a child that merely exits
    130. It does so at once, without Python's finalisation, which can crash when XLA's threads are
    stopped mid-compilation (the interrupted command's own clean-up has run by then). Called from
    Python (tests, other code), ``main`` returns 130 instead.

    SIGTERM, where the process has Python's default action for it, is answered the same way:
    ``Terminated`` raised where it lands, the line ``PROGRAM: terminated (SIGTERM)``, then the
    process ended by SIGTERM (or 143 returned). A command that saves on SIGTERM (training's
    preemption save) sets its own handler meanwhile.

    A Ctrl-C whose KeyboardInterrupt Python swallows (raised inside a garbage-collector callback,
    such as JAX's, it would be printed as "Exception ignored" and dropped) is remembered, without
    that print: the command goes on to its end, which is then reported as interrupted. What an
    interrupted command leaves on disk is each command's own design (partial names renamed when
    complete, reports written last, created run folders removed); docs/troubleshooting.md.
    """

    def decorate(main: Callable[..., int | None]) -> Callable[..., int | None]:
        @functools.wraps(main)
        def wrapped(*args, **kwargs) -> int | None:
            command = _started_as(program, main)
            with _watching_stops() as seen:
                try:
                    status = main(*args, **kwargs)
                    if not seen:
                        if command:
                            _exit_on_stop(status)
                        return status
                except SystemExit as exit:  # absl's app.run ends every run so
                    if not seen:
                        if command:
                            _exit_on_stop(exit.code)
                        raise
                except KeyboardInterrupt:
                    pass
                except errors as error:
                    if not seen:
                        print(f"{program}: error: {(str(error).strip().splitlines() or [type(error).__name__])[0]}",
                              file=sys.stderr, flush=True)
                        if command:
                            _exit_on_stop(1)
                        return 1
            signum = _report_stop(program, seen)
            if not command:
                return 128 + signum
            return _end_by(signum)

        return wrapped

    return decorate


@contextlib.contextmanager
def _watching_stops(raising: bool = True) -> Iterator[list[int]]:
    """Yields a list that gets the signal number of every Ctrl-C (SIGINT) and SIGTERM while the block
    runs, including one whose KeyboardInterrupt Python drops (raised in a callback: the "Exception
    ignored" report of those is left out); ``raising`` False only records them, for a block that must
    not be broken off (imports: a KeyboardInterrupt raised inside a C extension's initialisation
    crashed the process or left the extension half made). Only in the main thread, and only for a
    signal handled as Python's default (an ignored SIGINT, as in a shell's background job, stays
    ignored)."""
    seen: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield seen
        return

    def on_signal(signum: int, frame: object) -> None:
        seen.append(signum)
        if raising:
            raise Terminated if signum == signal.SIGTERM else KeyboardInterrupt

    def unraisable(report: object) -> None:
        if not (seen and isinstance(report.exc_value, KeyboardInterrupt)):
            previous_hook(report)

    defaults = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: signal.SIG_DFL}
    previous = {signum: signal.getsignal(signum) for signum, default in defaults.items()
                if signal.getsignal(signum) is default}
    previous_hook, sys.unraisablehook = sys.unraisablehook, unraisable
    for signum in previous:
        signal.signal(signum, on_signal)
    try:
        yield seen
    finally:
        for signum, handler in previous.items():
            if signal.getsignal(signum) is on_signal:  # else set meanwhile for what follows (_exit_on_stop)
                signal.signal(signum, handler)
        if sys.unraisablehook is unraisable:  # else a hook installed meanwhile wraps it and stays (checkpointing's)
            sys.unraisablehook = previous_hook


def _exit_on_stop(status: object) -> None:
    """From here on, in a process whose command has ended and printed its last line, a Ctrl-C or
    SIGTERM ends the process at once with the command's own exit status (``status``: main's return
    value or SystemExit's code). Raised as a KeyboardInterrupt during Python's shutdown, a stop
    turned a finished command's success into status 130 with no line of its own, and once left it
    waiting in a thread's lock; a shutdown that waits (on a thread, an atexit call) is still cut
    short by it."""
    if threading.current_thread() is not threading.main_thread():
        return
    code = status if isinstance(status, int) else 0 if status is None else 1  # as sys.exit reads it

    def finish(signum: int, frame: object) -> None:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, finish)


def _report_stop(program: str, seen: list[int]) -> int:
    """Prints the stop's one line; returns its signal (SIGINT unless SIGTERM came first: a
    KeyboardInterrupt with none seen is a Ctrl-C a training loop took to save first)."""
    signum = seen[0] if seen else signal.SIGINT
    stop = "terminated (SIGTERM)" if signum == signal.SIGTERM else "interrupted"
    print(f"{program}: {stop}", file=sys.stderr, flush=True)
    return signum


def _end_by(signum: int) -> int:
    """Ends the process by ``signum``, as Python ends a program stopped by Ctrl-C (see ``interruptible``)."""
    sys.stdout.flush()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)
    return 128 + signum  # not reached


class ConsoleScript:
    """What a console script calls (``pyproject.toml``): imports the command's module, then runs its
    ``main``. The import itself (JAX, TensorFlow: 1-3 s) is where an early Ctrl-C or SIGTERM lands,
    before ``interruptible`` is in place; it is noted, the imports finish (raised inside one, it
    crashed the process or gave an ImportError traceback), and the command ends with its one line
    and its signal without running ``main``. Arguments are passed on to ``main`` (tests call it with argv)."""

    def __init__(self, program: str, module: str) -> None:
        self.program, self.module = program, module

    def __call__(self, *args: object) -> int | None:
        with _watching_stops(raising=False) as seen:  # imports run to their end: 1-3 s
            main = importlib.import_module(self.module).main
        if seen:
            return _end_by(_report_stop(self.program, seen))
        return main(*args)


def _started_as(program: str, main: Callable[..., object]) -> bool:
    started = Path(sys.argv[0])
    return started.name == program or started.resolve() == Path(inspect.getfile(main)).resolve()
