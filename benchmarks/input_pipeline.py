"""Input pipeline throughput: windows/s per core from the window index against today's reader (whole
episodes), for episodes of about 200, 2,000 and 27,000 steps, with 1, 2 and all cores; and mgdt-train
tiny on a small recording of random play against its train step fed a fixed batch.

    python benchmarks/input_pipeline.py [--seconds 4] [--train-steps 400] [--json results.json]

1. Real Pong frames are recorded (random policy), then repeated into DQN-replay logs of episodes of
   each length (--steps-per-dataset steps each) and converted with mgdt-convert, which writes the
   RLDS shards and the window index.
2. Each reader runs in a child process of its own (so its peak RSS is its own) for --seconds after a
   warm-up: the window index through ``TrainingData.iterate`` (1 core: in the process; N cores: N
   Grain worker processes), and today's reader, which parses a whole episode record per window
   (uniform episode, then uniform step, ``windows.cut_windows``) through the same prefetching. The
   baseline is today's per-window work without its Grain shuffle and mixing, so it is if anything
   faster than the reader it stands for.
3. mgdt-train (experiments/tiny.py) trains on a small recording of random play (Breakout, Pong,
   Boxing, 4,000 steps each, as mgdt-demo recorded before it played experts) for --train-steps; its tokens/s (median over the intervals of metrics.jsonl, the first
   left out) is compared with the same compiled step fed one fixed batch, timed over the same
   intervals (reading the loss at each, as mgdt-train does), in a child process started the same way.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from mgdt_jax.core.commands import interruptible
from mgdt_jax.core.files import count_argument, output_file_argument

REPO = Path(__file__).resolve().parents[1]
EPISODE_STEPS = (200, 2_000, 27_000)
DEMO_GAMES = ["Breakout", "Pong", "Boxing"]
DEMO_RECORD_STEPS = 4_000
TARGETS = {"per_core": 2_000, "flat": 0.8, "speedup_27k": 20.0, "end_to_end": 0.85}


# ---------------------------------------------------------------------------------------------
# Data


def recorded_frames(root: Path, steps: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Frames, actions and rewards of real Pong play (random policy), concatenated over episodes."""
    from data_pipelines import record, replay_logs

    report = record.record("Pong", steps=steps, out=root, capacity=max(steps // 2, 100), seed=0, progress=False)
    episodes = list(replay_logs.read_run(report.log_dir))
    return (np.concatenate([e.observations for e in episodes]), np.concatenate([e.actions for e in episodes]),
            np.concatenate([e.rewards for e in episodes]))


def synthetic_dataset(root: Path, episode_steps: int, total_steps: int,
                      source: tuple[np.ndarray, np.ndarray, np.ndarray]) -> Path:
    """DQN-replay logs of Pong episodes of ``episode_steps`` rows repeating the recorded ones,
    converted by mgdt-convert (RLDS shards and window index)."""
    from data_pipelines import convert, replay_logs

    frames, actions, rewards = source
    buffer = replay_logs.LoggedReplayBuffer(root / "logs" / "Pong" / "1" / "replay_logs", capacity=20_000)
    for episode in range(max(1, total_steps // episode_steps)):
        rows = (episode * 997 + np.arange(episode_steps)) % len(frames)  # each episode starts elsewhere
        for step, row in enumerate(rows):
            buffer.add(frames[row], int(actions[row]), float(rewards[row]), step == episode_steps - 1)
    buffer.log_final_buffer()
    convert.convert(root / "logs", root / "rlds", max_episode_steps=max(EPISODE_STEPS), progress=False)
    return root / "rlds"


# ---------------------------------------------------------------------------------------------
# Readers (run in child processes)


class TodaysReader:
    """The reader before the window index: each window parses its whole episode record, then cuts
    one window at a uniform step of it; batch ``k`` is a function of ``(seed, k)``."""

    def __init__(self, dataset_dir: str, batch_size: int, num_steps: int = 4, seed: int = 0):
        from mgdt_jax.recipes.mgdt.rlds_source import RldsDataset

        self.dataset = RldsDataset(dataset_dir)
        self.batch_size, self.num_steps, self.seed = batch_size, num_steps, seed

    def batch(self, step: int) -> dict[str, np.ndarray]:
        from mgdt_jax.recipes.mgdt import windows

        rng = np.random.default_rng([self.seed, step])
        cut = []
        while len(cut) < self.batch_size:
            episode = self.dataset[int(rng.integers(len(self.dataset)))]
            if len(episode):
                cut.append(windows.cut_windows(episode, rng.integers(len(episode), size=1), self.num_steps))
        return {key: np.concatenate([window[key] for window in cut]) for key in cut[0]}


def reader_stream(reader: str, dataset_dir: str, batch_size: int, cores: int) -> Iterator[dict[str, np.ndarray]]:
    """1 core: batches built in this process; N cores: by N worker processes (one thread each)."""
    from mgdt_jax.recipes.mgdt import pipeline, step_store

    threads, workers = (0, 0) if cores == 1 else (1, cores)
    if reader == "index":
        data = pipeline.TrainingData([step_store.open_index(dataset_dir)], global_batch_size=batch_size, num_steps=4,
                                     seed=0, num_threads=threads, num_workers=workers)
        return data.iterate()
    return pipeline.prefetch(TodaysReader(dataset_dir, batch_size).batch, 0, threads, workers)


def peak_rss_mb(pid: int) -> float:
    """A live process's peak resident memory (VmHWM: unlike ru_maxrss, not inherited across fork and exec)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / 1e6
    return float("nan")


def descendants(pid: int) -> list[int]:
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended meanwhile
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, frontier = [], [pid]
    while frontier:
        frontier = [child for parent in frontier for child in parents.get(parent, [])]
        found += frontier
    return found


def measure_reader(spec: dict) -> dict:
    """Windows/s of one reader after a warm-up, for at least ``seconds``; peak RSS of this process
    and of its largest worker process (read before the workers stop)."""
    stream = reader_stream(spec["reader"], spec["dataset"], spec["batch"], spec["cores"])
    try:  # closed however it ends: a Ctrl-C left Grain's worker processes running
        for _ in range(2 * spec["cores"] + 1):  # start-up; each worker's first batch
            next(stream)
        batches, started = 0, time.perf_counter()
        while batches < 2 or time.perf_counter() - started < spec["seconds"]:
            next(stream)
            batches += 1
        seconds = time.perf_counter() - started
        workers = []
        for pid in descendants(os.getpid()):
            try:
                workers.append(peak_rss_mb(pid))
            except OSError:
                continue
    finally:
        getattr(stream, "close", lambda: None)()
    return {**spec, "windows_per_s": batches * spec["batch"] / seconds, "rss_main_mb": peak_rss_mb(os.getpid()),
            "rss_worker_mb": max(workers, default=float("nan"))}


def fixed_batch_rate(spec: dict) -> dict:
    """Steps/s of mgdt-train's compiled step on one fixed batch of the same data, mesh and config."""
    from mgdt_jax.core import host_memory

    host_memory.reexec_with_huge_page_malloc()  # as mgdt-train does
    import jax

    from mgdt_jax.core import sharding
    from mgdt_jax.recipes.mgdt import pipeline
    from mgdt_jax.core.train_step import Trainer

    config = _load_config(spec["config"])
    trainer = Trainer(config, sharding.make_mesh(config.mesh))
    batch = trainer.shard_batch(pipeline.training_data(config).batch(0))
    shapes = {name: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding) for name, a in batch.items()}
    step = trainer.lower_step(shapes).compile()
    state = trainer.init(config.train.seed)
    for _ in range(3):
        state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    rates = []
    for _ in range(spec["steps"] // config.train.log_every):  # intervals as mgdt-train logs them
        started = time.perf_counter()
        for _ in range(config.train.log_every):
            state, metrics = step(state, batch)
        float(metrics["loss"])  # mgdt-train reads the loss on log steps
        rates.append(config.train.log_every / (time.perf_counter() - started))
    return {"steps_per_s": statistics.median(rates),
            "tokens_per_step": trainer.recipe.step_cost(config.train.batch_size).tokens}


def _load_config(path: str):
    import importlib.util

    module_spec = importlib.util.spec_from_file_location("benchmark_config", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config()


def run_child(kind: str, spec: dict) -> dict:
    command = [sys.executable, __file__, "--child", kind, json.dumps(spec)]
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run(command, capture_output=True, text=True, env=environment)
    if result.returncode:
        raise RuntimeError(f"{kind} {spec} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------
# End to end


TRAIN_CONFIG = """
from experiments import tiny


def get_config():
    config = tiny.get_config()
    config.data.sources = ({source!r},)
    config.train.num_steps = {steps}
    config.train.log_every = {log_every}
    config.train.checkpoint_every = {steps}
    return config
"""


def end_to_end(root: Path, train_steps: int) -> dict:
    from data_pipelines import convert, record
    from mgdt_jax.core.metric_writer import read_metrics

    for seed, game in enumerate(DEMO_GAMES):
        record.record(game, DEMO_RECORD_STEPS, root / "logs", capacity=DEMO_RECORD_STEPS // 3, seed=seed, progress=False)
    convert.convert(root / "logs", root / "rlds", progress=False)
    log_every = max(train_steps // 10, 1)
    config_file = root / "tiny_demo.py"
    config_file.write_text(TRAIN_CONFIG.format(source=str(root / "rlds"), steps=train_steps, log_every=log_every))
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, "-m", "mgdt_jax.cli.train", "--config", str(config_file), "--workdir", str(root / "train")]
    result = subprocess.run(command, capture_output=True, text=True, env=environment)
    if result.returncode:
        raise RuntimeError(f"mgdt-train failed:\n{result.stderr[-3000:]}")
    reports = read_metrics(root / "train")
    rates = [r["perf/steps_per_second"] for r in reports if "perf/steps_per_second" in r][1:]  # first: warm-up
    trained_steps_per_s = statistics.median(rates)
    fixed = run_child("fixed", {"config": str(config_file), "steps": train_steps})
    return {"train_tokens_per_s": trained_steps_per_s * fixed["tokens_per_step"],
            "fixed_tokens_per_s": fixed["steps_per_s"] * fixed["tokens_per_step"],
            "ratio": trained_steps_per_s / fixed["steps_per_s"]}


# ---------------------------------------------------------------------------------------------


def measure_readers(root: Path, args: argparse.Namespace, cores: list[int]) -> list[dict]:
    """Every reader on every synthetic dataset and core count, each in its own child process; prints the table."""
    measured = []
    started = time.perf_counter()
    source = recorded_frames(root / "recorded", 2_000)
    datasets = {steps: synthetic_dataset(root / f"episodes_{steps}", steps, args.steps_per_dataset, source)
                for steps in EPISODE_STEPS}
    print(f"datasets written in {time.perf_counter() - started:.0f} s", flush=True)
    print(f"\n{'episode steps':>13} {'reader':>8} {'cores':>5} {'windows/s':>10} {'per core':>9} "
          f"{'RSS main':>9} {'RSS worker':>10}")
    for steps, directory in datasets.items():
        for reader in ("index", "today"):
            for count in cores:
                batch = args.batch if reader == "index" else args.baseline_batch
                result = run_child("reader", {"reader": reader, "dataset": str(directory), "batch": batch,
                                              "cores": count, "seconds": args.seconds, "episode_steps": steps})
                measured.append(result)
                worker = f"{result['rss_worker_mb']:8,.0f} MB" if count > 1 else f"{'-':>10}"
                print(f"{steps:>13,} {reader:>8} {count:>5} {result['windows_per_s']:>10,.0f} "
                      f"{result['windows_per_s'] / count:>9,.0f} {result['rss_main_mb']:>6,.0f} MB {worker}",
                      flush=True)
    return measured


@interruptible("benchmarks/input_pipeline.py", errors=(ValueError, OSError))
def main() -> int | None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps-per-dataset", type=count_argument(), default=54_000, help="steps of each synthetic dataset")
    parser.add_argument("--batch", type=count_argument(), default=64, help="windows per batch (window index)")
    parser.add_argument("--baseline-batch", type=count_argument(), default=16, help="windows per batch (today's reader)")
    parser.add_argument("--seconds", type=float, default=4.0, help="timed seconds per reader variant")
    parser.add_argument("--cores", default=f"1,2,{os.cpu_count()}", help="core counts (deduplicated)")
    parser.add_argument("--train-steps", type=count_argument(0), default=400, help="mgdt-train steps (0: skip end to end)")
    parser.add_argument("--skip-readers", action="store_true", help="only the end-to-end measurement")
    parser.add_argument("--json", type=output_file_argument, help="also write the results here")
    args = parser.parse_args()
    try:
        asked = {int(c) for c in args.cores.split(",")}
    except ValueError:
        parser.error(f"--cores {args.cores}: not a comma-separated list of whole numbers")
    cores = sorted(c for c in asked if 0 < c <= (os.cpu_count() or 1))
    if not cores:
        parser.error(f"--cores {args.cores}: none is from 1 to this machine's {os.cpu_count()} CPUs")
    if args.train_steps == 1:  # its one logged rate is the warm-up one, which is left out: nothing to take
        parser.error("--train-steps 1: give 0 (skip the end-to-end run) or at least 2")
    if not 0 < args.seconds < math.inf:  # nan ended each timed loop at once; inf never
        parser.error(f"--seconds {args.seconds:g}: must be a positive finite number")
    if args.skip_readers and not args.train_steps:
        parser.error("--skip-readers with --train-steps 0 measures nothing")
    print(f"{os.cpu_count()} CPUs; datasets of {args.steps_per_dataset:,} steps; cores {cores}; "
          f"{args.seconds:g} s per variant; {args.train_steps} mgdt-train steps", flush=True)

    results: dict = {"readers": [], "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        if not args.skip_readers:
            results["readers"] = measure_readers(root, args, cores)
        if args.train_steps:
            results["end_to_end"] = end_to_end(root / "demo", args.train_steps)

    rate = {(r["episode_steps"], r["reader"], r["cores"]): r["windows_per_s"] for r in results["readers"]}
    print("\nratios (targets in brackets):")
    for count in cores if results["readers"] else ():
        per_core = min(rate[steps, "index", count] / count for steps in EPISODE_STEPS)
        flat = rate[EPISODE_STEPS[-1], "index", count] / rate[EPISODE_STEPS[0], "index", count]
        speedup = rate[EPISODE_STEPS[-1], "index", count] / rate[EPISODE_STEPS[-1], "today", count]
        print(f"  {count} core(s): lowest windows/s per core {per_core:,.0f} [>= {TARGETS['per_core']:,}]; "
              f"27k-step / 200-step episodes {flat:.2f} [>= {TARGETS['flat']}]; index / today's reader on 27k-step "
              f"episodes {speedup:,.1f}x [>= {TARGETS['speedup_27k']:g}x]")
    if "end_to_end" in results:
        e2e = results["end_to_end"]
        print(f"  mgdt-train tiny on random play (Breakout, Pong, Boxing): {e2e['train_tokens_per_s']:,.0f} tokens/s; fixed batch "
              f"{e2e['fixed_tokens_per_s']:,.0f} tokens/s; ratio {e2e['ratio']:.2f} [>= {TARGETS['end_to_end']}]")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":  # Grain's worker processes re-import this module
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        from absl import flags

        flags.FLAGS.mark_as_parsed()  # Grain's worker processes read absl flags
        measure = {"reader": measure_reader, "fixed": fixed_batch_rate}[sys.argv[2]]
        print(json.dumps(measure(json.loads(sys.argv[3]))))
    else:
        sys.exit(main())
