"""Where a jitted step's device time goes: a JAX profiler trace, summed by kernel.

    python benchmarks/trace_summary.py TRACE.xplane.pb [--steps N] [--top K]

`traced_steps` runs a compiled step a few times under ``jax.profiler.trace`` and returns the
summary; gpu_check.sh's ``train_200m`` records it, so an accelerator run says which kernels hold
the MFU down without a profiler UI. The trace is read with ``jax.profiler.ProfileData`` (jaxlib's
own XSpace reader: no TensorFlow or TensorBoard).

On a GPU the busy time is the kernels' on the device's ``Stream`` lines; matmul kernels are those
whose name holds one of `MATMUL_MARKERS` (cuBLAS, cuBLASLt and CUTLASS kernel names, Triton gemm
fusions; on a CPU XLA's ``dot`` thunks and the YNNPACK/XNNPACK fusions that hold its dots). On a
CPU (the dry run) it is XLA's thread-pool work, summed over threads, so it can exceed the wall time. The GPU reading is written from XSpace's
layout and has not yet met a real GPU trace: ``planes`` in the summary names what the trace held.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
from jax.profiler import ProfileData

from mgdt_jax.core.commands import interruptible
from mgdt_jax.core.files import count_argument, path_argument

MATMUL_MARKERS = ("gemm", "nvjet", "cutlass", "xmma", "cublas", "wgmma", "dot", "ynn", "xnn")
# Events that enclose or wait for the work rather than being it (they would count it twice).
CPU_BOOKKEEPING = ("ThreadpoolListener", "Await", "ThunkExecutor")


def summarise(path: Path, steps: int, top: int = 20) -> dict[str, Any]:
    """Busy time per step, the matmul kernels' share of it, and the ``top`` kernels by time.

    Raises ValueError (naming the file) where the trace holds no device or XLA CPU work.
    """
    data = ProfileData.from_file(str(path))
    gpu_lines = [line for plane in data.planes if plane.name.startswith("/device:GPU")
                 for line in plane.lines if line.name.startswith("Stream")]
    if gpu_lines:
        source, lines = "GPU streams", gpu_lines
    else:
        source = "XLA CPU threads (CPU time, summed over threads)"
        lines = [line for plane in data.planes if plane.name == "/host:CPU" for line in plane.lines
                 if line.name.startswith("tf_XLA")]
    seconds, calls = collections.Counter(), collections.Counter()
    for line in lines:
        for event in line.events:
            if source != "GPU streams" and (event.name.startswith("end: ")
                                            or any(mark in event.name for mark in CPU_BOOKKEEPING)):
                continue
            seconds[event.name] += event.duration_ns / 1e9
            calls[event.name] += 1
    busy = sum(seconds.values())
    if not busy:
        raise ValueError(f"{path}: the trace holds no device kernels or XLA CPU work")
    matmul = sum(value for name, value in seconds.items() if any(mark in name.lower() for mark in MATMUL_MARKERS))
    return {
        "source": source,
        "planes": [plane.name for plane in data.planes],
        "steps": steps,
        "busy_s_per_step": busy / steps,
        "matmul_share": matmul / busy,
        "top": [{"name": name[:160], "s_per_step": value / steps, "share": value / busy, "calls_per_step": calls[name] / steps}
                for name, value in seconds.most_common(top)],
    }


def traced_steps(step: Callable, state: Any, batch: Any, steps: int = 3) -> tuple[Any, dict[str, Any]]:
    """Runs ``step(state, batch)`` ``steps`` times under the profiler; (state, `summarise`'s dict + wall time)."""
    with tempfile.TemporaryDirectory(prefix="trace_") as scratch:
        with jax.profiler.trace(scratch):
            start = time.perf_counter()
            for _ in range(steps):
                state, metrics = step(state, batch)
            jax.block_until_ready(metrics)
            wall = time.perf_counter() - start
        (path,) = Path(scratch).rglob("*.xplane.pb")
        summary = summarise(path, steps)
    return state, {**summary, "wall_s_per_step": wall / steps}


@interruptible("benchmarks/trace_summary.py", errors=(ValueError, OSError))
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("trace", type=path_argument, help="a .xplane.pb written by jax.profiler.trace")
    parser.add_argument("--steps", type=count_argument(), default=1, help="steps the trace holds (figures are per step)")
    parser.add_argument("--top", type=count_argument(), default=20, help="kernels listed, the busiest first")
    args = parser.parse_args(argv)
    if not args.trace.exists():
        raise SystemExit(f"trace_summary: {args.trace} does not exist")
    if not args.trace.is_file() or args.trace.stat().st_size == 0:
        raise SystemExit(f"trace_summary: {args.trace} is {'empty' if args.trace.is_file() else 'not a file'}, "
                         "not a profiler trace (give the .xplane.pb file)")
    try:
        summary = summarise(args.trace, args.steps, args.top)
    except ValueError as error:
        raise SystemExit(f"trace_summary: {error}") from None
    except Exception as error:  # jaxlib's reader raises its own types on a file that is not an XSpace
        raise SystemExit(f"trace_summary: {args.trace}: not a readable profiler trace ({type(error).__name__})") from None
    json.dump(summary, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
