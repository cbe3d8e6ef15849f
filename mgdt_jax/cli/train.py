"""``mgdt-train``: train the recipe an experiment config names (``config.recipe``, default the MGDT),
from scratch or a checkpoint, resuming if the workdir has one.

    mgdt-train --config experiments/mgdt_40m.py --workdir DIR [--config.field=value ...]

Run the same command on every host of a multi-host job (see docs/training.md).
"""

from __future__ import annotations

import ast
import contextlib
import runpy
import signal
import sys
import traceback
from typing import Any
from pathlib import Path

import jax
from absl import app, flags, logging
import ml_collections
from ml_collections import config_flags

from mgdt_jax.core.commands import interruptible
from mgdt_jax.core import files, host_memory, sharding
from mgdt_jax.core.checkpointing import CHECKPOINTS, CheckpointError
from mgdt_jax.core import loop
from mgdt_jax.core.metric_writer import METRICS_FILE, TENSORBOARD_DIR
from mgdt_jax.core.train_step import remat_hint

_CONFIG = config_flags.DEFINE_config_file("config", None, "experiment config file, e.g. experiments/mgdt_40m.py")
_WORKDIR = flags.DEFINE_string("workdir", None, "run directory: checkpoints, TensorBoard events, metrics")
PREEMPTED = 128 + signal.SIGTERM  # the exit status of a run stopped by a preemption notice, as a shell reports one


def _train(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not flags.FLAGS["verbosity"].present:
        # Library INFO logs (Orbax writes a dozen lines per checkpoint) would bury the progress
        # lines; --verbosity=0 brings them back.
        logging.set_verbosity(logging.WARNING)
    try:
        sharding.maybe_initialize_distributed()  # before any JAX computation
    except (ValueError, jax.errors.JaxRuntimeError) as error:
        print(f"mgdt-train: error: cannot join the multi-host job: {str(error).splitlines()[0]}", file=sys.stderr)
        return 1
    config_file = config_flags.get_config_filename(flags.FLAGS["config"])
    if not Path(_config_path(config_file)).is_file():  # ml_collections' own message spans five lines
        print(f"mgdt-train: error: --config {_config_path(config_file)}: no such file", file=sys.stderr)
        return 1
    config = _CONFIG.value
    if not isinstance(config, ml_collections.ConfigDict):  # a plain dict has no config.train to read
        print(f"mgdt-train: error: --config {config_file}: get_config() returned a {type(config).__name__}, not an "
              "ml_collections ConfigDict", file=sys.stderr)
        return 1
    # Until the loop takes SIGTERM over (its preemption save), a notice ends the start-up cleanly: the
    # loop removes a workdir it created and its claim, where Python's default action left both.
    previous = signal.signal(signal.SIGTERM, _terminate) if jax.process_count() == 1 else None
    try:
        result = loop.train(config, _WORKDIR.value)
    except _Terminated:
        print("mgdt-train: terminated (SIGTERM) before the first step; nothing was saved", file=sys.stderr)
        return PREEMPTED
    except (CheckpointError, loop.TrainingDiverged, ValueError, OSError) as error:  # bad data is a ValueError
        # First line only: JAX appends its traceback-filtering notice to an error raised while tracing.
        print(f"mgdt-train: error: {files.error_line(error, _WORKDIR.value)}", file=sys.stderr)
        return 1
    except MemoryError as error:  # a host array (the batch, the data) larger than the host's memory
        print(f"mgdt-train: error: out of host memory ({(str(error).splitlines() or ['MemoryError'])[0]}); lower "
              "train.batch_size or the data held in memory", file=sys.stderr)
        return 1
    except jax.errors.JaxRuntimeError as error:
        if "RESOURCE_EXHAUSTED" not in str(error):
            raise
        print(
            f"mgdt-train: error: the step does not fit in device memory ({str(error).splitlines()[0]}); "
            "lower train.batch_size, raise train.grad_accum_steps or shard with mesh.fsdp"
            f"{remat_hint(jax.devices()[0].platform)}",
            file=sys.stderr,
        )
        return 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    checkpoint = "none" if result.last_checkpoint is None else f"latest step {result.last_checkpoint}"
    stopped = f"{result.stopped_by} at" if result.stopped_by else "reached"
    print(
        f"trained steps {result.first_step}..{result.last_step} ({stopped} step {result.last_step}); "
        f"checkpoints in {result.workdir / CHECKPOINTS} ({checkpoint}), TensorBoard events in "
        f"{result.workdir / TENSORBOARD_DIR}, metrics in {result.workdir / METRICS_FILE}"
    )
    if result.stopped_by == "interrupted":
        raise KeyboardInterrupt  # saved, yet the command was stopped: `mgdt-train ... && mgdt-eval ...` must stop too
    if result.stopped_by == "preempted":
        return PREEMPTED  # saved, not finished: a following command must not take the run as done
    return 0


class _Terminated(BaseException):  # not an Exception: no handler of the start-up may take it for a fault
    """SIGTERM during mgdt-train's start-up (``_terminate``)."""


def _terminate(signum: int, frame: Any) -> None:
    raise _Terminated


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's parsing, with every fault in the flags as one line ``mgdt-train: error: ...`` and exit
    status 1: a value of the wrong type or a missing flag (absl's own report is two lines under
    "FATAL Flags parsing error"), and a ``--config.FIELD=value`` naming no field of the config
    (ml_collections raises it as an AttributeError or KeyError that absl does not catch)."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as error:
        text = str(error).strip()
        if "Traceback (most recent call last):" in text:
            # ml_collections re-raises the config file's TypeError or ValueError with the traceback in its message.
            frames, cause = _traceback_parts(text)
            called = [line for line in frames if line.lstrip().startswith("File ")]
            # A TypeError at ml_collections' own call of get_config: the argument after ':' does not fit it.
            hint = (" (FILE:ARGUMENT passes ARGUMENT to get_config)" if ":" in _config_argument(argv) and called
                    and "config_flags" in called[-1] and cause.startswith("TypeError") else "")
            print(f"mgdt-train: error: --config {_config_argument(argv)}: "
                  f"{'get_config() failed' if hint else _failed(frames)}: {cause}{hint}",
                  file=sys.stderr)
        else:
            print(f"mgdt-train: error: {' '.join(text.split())}", file=sys.stderr)
        sys.exit(1)
    except SyntaxError as error:  # in the config file, loaded while the flags are parsed
        where = f": line {error.lineno}" if error.lineno else ""  # no line for a file of null bytes
        print(f"mgdt-train: error: --config {error.filename or _config_argument(argv)}{where}: {error.msg}",
              file=sys.stderr)
        sys.exit(1)
    except OSError as error:  # an override makes ml_collections load the file while parsing
        config_file = _config_argument(argv)
        if not Path(_config_path(config_file)).is_file():
            print(f"mgdt-train: error: --config {_config_path(config_file)}: no such file", file=sys.stderr)
        else:
            print(f"mgdt-train: error: --config {config_file}: cannot be loaded ({str(error).splitlines()[0]})",
                  file=sys.stderr)
        sys.exit(1)
    except ImportError as error:  # the config file's own imports, e.g. a recipe's package not on PYTHONPATH
        print(f"mgdt-train: error: --config {_config_argument(argv)}: its imports failed: {type(error).__name__}: "
              f"{error} (a package not installed, or a recipe of your own whose folder is not on PYTHONPATH)",
              file=sys.stderr)
        sys.exit(1)
    except (AttributeError, KeyError) as error:
        text = str(error)
        with contextlib.suppress(ValueError, SyntaxError):
            text = str(ast.literal_eval(text))  # ml_collections nests the message in a repr
        if "has no attribute 'get_config'" in text:
            print(f"mgdt-train: error: --config {_config_argument(argv)}: defines no get_config() (an experiment config "
                  "is a Python file whose get_config() returns an ml_collections ConfigDict)", file=sys.stderr)
        elif not any(argument.startswith("--config.") for argument in argv):  # raised by the file's own code
            print(f"mgdt-train: error: --config {_config_argument(argv)}: get_config() failed: {type(error).__name__}: "
                  f"{' '.join(text.split())}", file=sys.stderr)
        elif (returned := type(loaded := _config_object(_config_argument(argv))).__name__) not in ("NoneType", "ConfigDict"):
            # An override of a config that is no ConfigDict fails as a field it cannot find.
            print(f"mgdt-train: error: --config {_config_argument(argv)}: get_config() returned a {returned}, not an "
                  "ml_collections ConfigDict", file=sys.stderr)
        else:  # ml_collections names the last part only: 'model' of --config.mesh.model, a field of the config too
            missing = _unknown_override(loaded, argv) if loaded is not None else None
            print(f"mgdt-train: error: {f'--config.{missing}' if missing else 'a --config override'} names no field "
                  f"of the config ({' '.join(text.split())})", file=sys.stderr)
        sys.exit(1)
    except Exception as error:  # noqa: BLE001 (the config file is the user's code: a NameError, a JSON file run as Python)
        frames = [f'  File "{frame.filename}", line {frame.lineno}, in {frame.name}'
                  for frame in traceback.extract_tb(error.__traceback__)]
        print(f"mgdt-train: error: --config {_config_argument(argv)}: {_failed(frames)}: {type(error).__name__}: "
              f"{' '.join(str(error).split())}", file=sys.stderr)
        sys.exit(1)


def _config_path(config_argument: str) -> str:
    """FILE of ``--config FILE[:ARGUMENT]`` (ml_collections passes ARGUMENT to get_config)."""
    return config_argument.split(":", 1)[0]


def _config_object(config_argument: str) -> Any:
    """What FILE[:ARGUMENT]'s get_config returns (run again, on this error path only); None if it
    cannot be run."""
    argument = config_argument.split(":", 1)[1:]
    with contextlib.suppress(Exception):
        return runpy.run_path(_config_path(config_argument))["get_config"](*argument)
    return None


def _unknown_override(config: Any, argv: list[str]) -> str | None:
    """The dotted name of the first ``--config.NAME=VALUE`` in ``argv`` that names no field of ``config``."""
    for argument in argv:
        if argument.startswith("--config."):
            name, node = argument.removeprefix("--config.").split("=", 1)[0], config
            for part in name.split("."):
                try:
                    node = node[part]
                except (KeyError, TypeError, AttributeError, IndexError):
                    return name
    return None


def _traceback_parts(text: str) -> tuple[list[str], str]:
    """(frame lines, the exception in one line) of the formatted traceback in an error message."""
    lines = text.split("Traceback (most recent call last):", 1)[1].strip("\n").splitlines()
    first = next((i for i, line in enumerate(lines) if line and not line.startswith(" ")), len(lines))
    return lines[:first], " ".join(" ".join(lines[first:]).split())


def _failed(frames: list[str]) -> str:
    """What failed, from a traceback's frame lines: the config's get_config() or loading the file itself."""
    if any(line.rstrip().endswith(", in get_config") for line in frames):
        return "get_config() failed"
    return "cannot be loaded as an experiment config"


def _config_argument(argv: list[str]) -> str:
    """The value of ``--config`` in ``argv`` (``--config FILE`` or ``--config=FILE``)."""
    for index, argument in enumerate(argv):
        if argument.startswith("--config="):
            return argument.split("=", 1)[1]
        if argument == "--config" and index + 1 < len(argv):
            return argv[index + 1]
    return "(none given)"


@interruptible("mgdt-train")
def main() -> int | None:
    host_memory.reexec_with_huge_page_malloc()
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(_train, flags_parser=_parse_flags)


if __name__ == "__main__":
    sys.exit(main())
