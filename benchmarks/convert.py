"""Conversion speed and memory: mgdt-convert against the naive loader, on one checkpoint.

For each size (rows of one checkpoint, 100k and 1M by default) it writes a DQN Replay checkpoint
whose frames repeat a real Pong recording, then converts it twice, each in a child process whose
peak RSS is measured:

* ours: `data_pipelines.convert` (observations streamed, one episode in memory);
* naive: gzip + np.load of every whole array, then a Python loop over the rows, writing the same
  RLDS records.

    python benchmarks/convert.py [--sizes 100000,1000000] [--work DIR]

Targets: >= 10,000 steps/s per core end to end; peak RSS <= 2 GB for a 1M-step checkpoint.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from data_pipelines import convert, record, replay_logs, rlds_format
from mgdt_jax.core.commands import interruptible
from mgdt_jax.core.files import path_argument

GAME = "Pong"
EPISODE_LENGTHS = (820, 1130, 640, 950)  # rows per synthetic episode, cycled (random Pong is ~800-1000)


def synthesize_checkpoint(log_dir: Path, rows: int, frames: np.ndarray) -> None:
    """A first dump (checkpoint 0) of capacity rows + 1: episodes of recorded frames, each after 3
    padding rows, written chunk by chunk so that 1M rows never sit in memory."""
    capacity = rows + 1
    terminal = np.zeros(capacity, np.uint8)
    is_padding = np.zeros(capacity, bool)
    position, episode = 0, 0
    while position < rows:
        is_padding[position:position + replay_logs.PADDING_ROWS] = True
        position += replay_logs.PADDING_ROWS + EPISODE_LENGTHS[episode % len(EPISODE_LENGTHS)]
        if position <= rows:
            terminal[position - 1] = 1
        episode += 1
    terminal[rows:] = 0
    rng = np.random.default_rng(0)
    actions = np.where(is_padding, 0, rng.integers(0, 6, capacity)).astype(np.int32)
    rewards = np.where(is_padding, 0, rng.choice([-1.0, 0.0, 0.0, 0.0, 1.0], capacity)).astype(np.float32)
    log_dir.mkdir(parents=True)
    for name, array in [("$store$_action", actions), ("$store$_reward", rewards), ("$store$_terminal", terminal),
                        ("add_count", np.array(capacity - 1, np.int64)),
                        ("invalid_range", np.arange(capacity - 2, capacity + 3, dtype=np.int64) % capacity)]:
        with gzip.open(replay_logs.log_file(log_dir, name, 0), "wb", compresslevel=1) as f:
            np.save(f, array, allow_pickle=False)
    with gzip.open(replay_logs.log_file(log_dir, "$store$_observation", 0), "wb", compresslevel=1) as f:
        header = {"descr": "|u1", "fortran_order": False, "shape": (capacity, *replay_logs.FRAME_SHAPE)}
        np.lib.format.write_array_header_1_0(f, header)
        chunk = 4096
        for start in range(0, capacity, chunk):
            slots = np.arange(start, min(start + chunk, capacity))
            block = frames[slots % len(frames)]
            block[is_padding[slots]] = 0
            f.write(block.tobytes())


def naive_convert(log_dir: Path, out_dir: Path) -> int:
    """The usual loader: whole arrays in memory, one Python iteration per row."""
    from array_record.python.array_record_module import ArrayRecordWriter

    def load(name):
        with gzip.open(replay_logs.log_file(log_dir, name, 0), "rb") as f:
            return np.load(f)

    observations, actions = load("$store$_observation"), load("$store$_action")
    rewards, terminals = load("$store$_reward"), load("$store$_terminal")
    out_dir.mkdir(parents=True)
    writer = ArrayRecordWriter(str(out_dir / "naive.array_record"), "group_size:1")
    steps, rows, padding = 0, [], replay_logs.PADDING_ROWS
    for i in range(len(actions) - 1):
        if padding:
            padding -= 1
            continue
        rows.append(i)
        if terminals[i]:
            episode = replay_logs.Episode(0, 0, 0, observations[rows], actions[rows], rewards[rows], truncated=False)
            writer.write(rlds_format.serialize_episode(episode, GAME, 1))
            steps, rows, padding = steps + len(rows), [], replay_logs.PADDING_ROWS
    writer.close()
    return steps


def child(kind: str, log_root: Path, out_dir: Path) -> None:
    """Runs one conversion and prints its steps and seconds as JSON."""
    started = time.perf_counter()
    if kind == "ours":
        steps = convert.convert(log_root, out_dir, progress=False)["totals"]["steps"]
    else:
        steps = naive_convert(log_root / GAME / "1" / "replay_logs", out_dir)
    print(json.dumps({"steps": steps, "seconds": time.perf_counter() - started}))


def measure(kind: str, log_root: Path, out_dir: Path) -> dict:
    """Runs `child` in a fresh process; adds its peak RSS (from wait4, this child only)."""
    with tempfile.TemporaryFile() as errors:  # a file, not a pipe: a child writing much to both cannot block
        process = subprocess.Popen([sys.executable, __file__, "--child", kind, "--logs", str(log_root),
                                    "--out", str(out_dir)], stdout=subprocess.PIPE, stderr=errors)
        output = process.stdout.read()
        _, status, usage = os.wait4(process.pid, 0)
        if status != 0:
            errors.seek(0)
            last = ([line for line in errors.read().decode(errors="replace").splitlines() if line.strip()] or [""])[-1]
            raise SystemExit(f"{kind} conversion of {log_root} failed (exit status "
                             f"{os.waitstatus_to_exitcode(status)}): {last.strip()}")
    result = json.loads(output.decode().strip().splitlines()[-1])
    return {**result, "steps_per_s": result["steps"] / result["seconds"], "peak_rss_gb": usage.ru_maxrss / 2**20}


@interruptible("benchmarks/convert.py", errors=(ValueError, OSError))
def main() -> int | None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100000,1000000", help="rows per checkpoint, comma-separated")
    parser.add_argument("--work", type=path_argument, help="keeps the synthetic logs here between runs (default: a temp dir)")
    parser.add_argument("--child", choices=("ours", "naive"), help=argparse.SUPPRESS)
    parser.add_argument("--logs", type=path_argument, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=path_argument, help=argparse.SUPPRESS)
    args = parser.parse_args()
    try:
        sizes = [int(size) for size in args.sizes.split(",")]
    except ValueError:
        parser.error(f"--sizes {args.sizes}: not a comma-separated list of whole numbers")
    if min(sizes) < 1:
        parser.error(f"--sizes {args.sizes}: every size must be at least 1 row")
    if args.work is not None and args.work.exists() and not args.work.is_dir():
        parser.error(f"--work {args.work}: is a file, not a folder")
    if args.child:
        child(args.child, args.logs, args.out)
        return
    with tempfile.TemporaryDirectory() as scratch:
        work = args.work or Path(scratch)
        recording = work / "recording"
        if not recording.exists():
            record.record(GAME, steps=3000, out=recording, capacity=4000, progress=False)
        frames = next(replay_logs.read_run(recording / GAME / "1" / "replay_logs")).observations
        for size in sizes:
            log_root = work / f"logs_{size}"
            if not log_root.exists():
                print(f"writing a {size:,}-row checkpoint of {len(frames)} recorded frames, repeated ...", flush=True)
                synthesize_checkpoint(log_root / GAME / "1" / "replay_logs", size, frames)
            results = {}
            for kind in ("ours", "naive"):
                out_dir = Path(tempfile.mkdtemp(dir=work, prefix=f"out_{kind}_{size}_"))
                out_dir.rmdir()
                results[kind] = measure(kind, log_root, out_dir)
                shutil.rmtree(out_dir)
                r = results[kind]
                print(f"{size:>9,} rows  {kind:5}  {r['steps']:,} steps in {r['seconds']:.1f} s = "
                      f"{r['steps_per_s']:,.0f} steps/s, peak RSS {r['peak_rss_gb']:.2f} GB", flush=True)
            print(f"{size:>9,} rows  ours/naive: {results['ours']['steps_per_s'] / results['naive']['steps_per_s']:.2f}x "
                  f"steps/s, {results['naive']['peak_rss_gb'] / results['ours']['peak_rss_gb']:.1f}x less memory",
                  flush=True)
    print(f"benchmarked sizes {args.sizes} (1 core each: the conversion runs in a single process)")


if __name__ == "__main__":
    sys.exit(main())
