"""Where training metrics go: TensorBoard, a JSON-lines file and one console line per log step.

Only the primary process (index 0) writes; the others keep the same calls as no-ops, so the loop
needs no branches. TensorBoard event files are written from TensorBoard's own protos and record
framing: its ``summary.Writer`` imports TensorFlow whenever TensorFlow is installed, which would
cost seconds at start and could claim accelerator memory.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import math
import socket
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, TextIO

import numpy as np
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.record_writer import RecordWriter

TENSORBOARD_DIR = "tensorboard"
METRICS_FILE = "metrics.jsonl"  # one {"step": ..., name: value, ...} object per log step
EARLIER_RUNS_DIR = "earlier_runs"  # logs of runs that started over from step 0 in the same workdir


class _EventFile:
    """One TensorBoard event file of scalar summaries."""

    def __init__(self, directory: Path, session_start: int | None):
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}"
        self._records = RecordWriter(open(path, "ab"))
        self._write(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))
        if session_start is not None:  # TensorBoard drops the run's events from this step on read before it
            self._write(event_pb2.Event(wall_time=time.time(), step=session_start,
                                        session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START)))

    def scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        values = [summary_pb2.Summary.Value(tag=name, simple_value=value) for name, value in scalars.items()]
        self._write(event_pb2.Event(wall_time=time.time(), step=step, summary=summary_pb2.Summary(value=values)))

    def _write(self, event: event_pb2.Event) -> None:
        self._records.write(event.SerializeToString())
        self._records.flush()

    def close(self) -> None:
        self._records.close()


def _ends_a_line(path: Path) -> bool:
    with open(path, "rb") as file:
        file.seek(-1, 2)
        return file.read(1) == b"\n"


def _set_aside_earlier_logs(workdir: Path) -> Path | None:
    """Moves ``workdir``'s metrics file and TensorBoard folder into ``earlier_runs/<n>/`` (n = 1, 2,
    ...: the first free number) and returns that folder; None when there is neither."""
    present = [name for name in (METRICS_FILE, TENSORBOARD_DIR) if (workdir / name).exists()]
    if not present:
        return None
    earlier = workdir / EARLIER_RUNS_DIR
    taken = [int(path.name) for path in earlier.glob("*") if path.name.isascii() and path.name.isdigit()]
    target = earlier / str(max(taken, default=0) + 1)
    target.mkdir(parents=True)
    for name in present:
        (workdir / name).rename(target / name)
    return target


def read_metrics(workdir: str | Path) -> list[dict[str, Any]]:
    """The entries of ``workdir``'s ``METRICS_FILE`` in step order, one per step.

    A step's lines (training scalars, then evaluation scalars on evaluation steps) are merged into
    one entry. A resumed run logs again the steps between the checkpoint it resumed from and where
    the earlier run stopped; its values replace the earlier ones, so a curve never goes back in
    steps. A line a kill cut short is skipped. A value the file holds as null (written for NaN and
    infinities, which strict JSON has not) reads as NaN. FileNotFoundError when the run logged nothing.
    """
    by_step: dict[int, dict[str, Any]] = {}
    for line in (Path(workdir) / METRICS_FILE).read_text().splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        entry = {name: math.nan if value is None else value for name, value in entry.items()}
        by_step[entry["step"]] = {**by_step.get(entry["step"], {}), **entry}
    return [by_step[step] for step in sorted(by_step)]


def _scalar(name: str, value: Any, step: int) -> float:
    try:
        return float(np.asarray(value).item())
    except (TypeError, ValueError):  # several elements, or not a number
        shape = getattr(np.asarray(value, dtype=object), "shape", ())
        raise ValueError(f"{name} at step {step}: not one number ({type(value).__name__}"
                         f"{f' of shape {shape}' if shape else ''}); a metric is a scalar") from None


class MetricWriter:
    """Scalars per step to ``<workdir>/tensorboard`` and ``<workdir>/metrics.jsonl``.

    The files are opened at the first ``write``, so a run refused at start leaves the workdir as it was.
    """

    def __init__(self, workdir: Path, *, enabled: bool = True):
        self.enabled = enabled
        self._workdir = workdir
        self._tensorboard: _EventFile | None = None
        self._jsonl: TextIO | None = None
        self._starting_over = False
        self._session_start: int | None = None

    def start_over(self) -> None:
        """Marks a run that starts from step 0, with no checkpoint to resume from.

        At the first ``write`` the logs an earlier run left in the workdir (one killed before its
        first save, or whose checkpoints were deleted) move to ``earlier_runs/<n>/``, with a console
        line saying so, so that the new run's steps do not mix with the old ones.
        """
        self._starting_over = True
        self._session_start = 0

    def resume(self, step: int) -> None:
        """Marks a run resumed from the checkpoint of ``step``: the steps after it that an earlier run
        logged before it was killed are logged again. TensorBoard is told (a ``SessionLog.START`` event
        at ``step + 1``, as TensorFlow's supervisor wrote) to drop the earlier run's events from there,
        so its curves hold each step once; ``read_metrics`` keeps the later entry of a step likewise."""
        self._session_start = step + 1

    def write(self, step: int, scalars: Mapping[str, float]) -> None:
        """Appends one step's scalars to both files (NaN and infinities as null in the JSONL, which
        is strict JSON). ValueError naming the value for one that is not a number (an array of
        several elements: an evaluator's vector); OSError naming the workdir when the files cannot
        be written (a full disk's error from a flush names no file)."""
        checked = {name: _scalar(name, value, step) for name, value in scalars.items()}  # on every host: all stop
        if not self.enabled:
            return
        with self._naming_the_workdir():
            self._write(step, checked)

    @contextlib.contextmanager
    def _naming_the_workdir(self) -> Iterator[None]:
        try:
            yield
        except OSError as error:
            raise OSError(f"{self._workdir}: cannot write the run's metrics ({error.strerror or error})") from None

    def _write(self, step: int, scalars: Mapping[str, float]) -> None:
        if self._tensorboard is None:
            if self._starting_over and (moved := _set_aside_earlier_logs(self._workdir)) is not None:
                self.print(f"{self._workdir}: no checkpoint to resume from, so this run starts at step 0; "
                           f"the logs of the earlier run here were moved to {moved}")
            tensorboard = _EventFile(self._workdir / TENSORBOARD_DIR, self._session_start)
            try:
                self._jsonl = open(self._workdir / METRICS_FILE, "a")  # a resumed run appends
            except BaseException:
                tensorboard.close()
                raise
            self._tensorboard = tensorboard  # both open, or neither: close() closes what is
            if self._jsonl.tell() and not _ends_a_line(self._workdir / METRICS_FILE):
                self._jsonl.write("\n")  # a kill cut the last line short: end it, so readers skip it alone
        self._tensorboard.scalars(step, scalars)
        strict = {name: value if math.isfinite(value) else None for name, value in scalars.items()}
        self._jsonl.write(json.dumps({"step": step, **strict}, allow_nan=False) + "\n")
        self._jsonl.flush()

    def print(self, line: str) -> None:
        if self.enabled:
            print(line, flush=True)

    def close(self) -> None:
        if self._tensorboard is not None:
            tensorboard, jsonl, self._tensorboard, self._jsonl = self._tensorboard, self._jsonl, None, None
            with self._naming_the_workdir():
                try:
                    tensorboard.close()
                finally:
                    jsonl.close()


class Throughput:
    """Rates over the steps since the last report, and the ETA from the average since the first.

    The clock starts after the first step of a run has finished, so compilation is not counted, and
    stops while checkpoints are saved and evaluations run (``paused``), as in big_vision. Each timed
    step is ``count``-ed with its own tokens and FLOPs (a recipe's batch layouts may differ in cost).
    """

    def __init__(self, *, num_devices: int, peak_flops_per_device: float | None):
        self._num_devices = num_devices
        self._peak = peak_flops_per_device
        self._start_time = self._last_time = 0.0
        self._start_step = self._last_step = 0
        self._tokens = self._flops = 0.0  # of the steps counted since the last report

    def start(self, step: int) -> None:
        self._start_time = self._last_time = time.perf_counter()
        self._start_step = self._last_step = step
        self._tokens = self._flops = 0.0

    def count(self, tokens: int, flops: float) -> None:
        """One timed step's tokens and model FLOPs (the global batch's), for the next report."""
        self._tokens += tokens
        self._flops += flops

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Time spent inside is not training time: it shifts both clocks forward."""
        began = time.perf_counter()
        try:
            yield
        finally:
            spent = time.perf_counter() - began
            self._start_time += spent
            self._last_time += spent

    def report(self, step: int, last_step: int) -> tuple[dict[str, float], str]:
        """Scalars (tokens/s, TFLOP/s per device, MFU) and an ETA text, for steps since the last report."""
        now = time.perf_counter()
        steps, seconds = step - self._last_step, now - self._last_time
        tokens, flops, self._tokens, self._flops = self._tokens, self._flops, 0.0, 0.0
        self._last_time, self._last_step = now, step
        if steps <= 0 or seconds <= 0:
            return {}, "ETA ?"
        flops_per_device = flops / seconds / self._num_devices
        scalars = {
            "perf/steps_per_second": steps / seconds,
            "perf/tokens_per_second": tokens / seconds,
            "perf/tflops_per_second_per_device": flops_per_device / 1e12,
        }
        if self._peak:
            scalars["perf/mfu"] = flops_per_device / self._peak
        per_step = (now - self._start_time) / max(step - self._start_step, 1)
        eta = datetime.timedelta(seconds=math.ceil(per_step * (last_step - step)))
        return scalars, f"ETA {eta}"
