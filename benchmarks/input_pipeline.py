"""Input pipeline throughput: windows/s of the training stream, read by Grain threads, Grain processes
or tf.data, and with 1 or more windows per episode read.

    python benchmarks/input_pipeline.py [--data DIR] [--batch 256] [--batches 8]

Without --data it records Pong, Breakout, Qbert and Seaquest with a random policy (10k steps each)
and converts them first. Every variant reads the same batches (``TrainingData.batch(k)`` is the same
function of the seed and k for all of them); only who does the reading differs.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

GAMES = ("Pong", "Breakout", "Qbert", "Seaquest")
WARMUP_BATCHES = 8


def record_dataset(root: Path, steps: int) -> Path:
    from data_pipelines import convert, record

    for game in GAMES:
        record.record(game, steps=steps, out=root / "logs", capacity=5000, seed=0, progress=False)
    convert.convert(root / "logs", root / "rlds", progress=False)
    return root / "rlds"


def windows_per_second(batches: Iterator[dict[str, np.ndarray]], num_batches: int, batch_size: int) -> float:
    for _ in range(WARMUP_BATCHES):  # start-up and the prefetch buffers filled meanwhile are not timed
        next(batches)
    start = time.perf_counter()
    for _ in range(num_batches):
        next(batches)
    return num_batches * batch_size / (time.perf_counter() - start)


def tf_data(data) -> Iterator[dict[str, np.ndarray]]:
    """Whole batches built by tf.data's parallel map (AUTOTUNE threads) around the same reader."""
    import tensorflow as tf

    tf.config.set_visible_devices([], "GPU")
    example = data.batch(0)
    keys = sorted(example)
    dtypes = [tf.dtypes.as_dtype(example[key].dtype) for key in keys]

    def read(step):
        batch = data.batch(int(step))
        return [batch[key] for key in keys]

    dataset = tf.data.Dataset.range(1 << 40).map(
        lambda step: tf.numpy_function(read, [step], dtypes), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    )
    return (dict(zip(keys, batch)) for batch in dataset.prefetch(2).as_numpy_iterator())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, help="an RLDS dataset (default: record one)")
    parser.add_argument("--record-steps", type=int, default=10_000, help="steps per game when recording")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--batches", type=int, default=16, help="timed batches per variant")
    args = parser.parse_args()

    from absl import flags

    flags.FLAGS.mark_as_parsed()  # Grain's worker processes read absl flags
    from mgdt_jax.recipes.mgdt.pipeline import TrainingData
    from mgdt_jax.recipes.mgdt.rlds_source import find_datasets

    with tempfile.TemporaryDirectory() as scratch:
        source = args.data or record_dataset(Path(scratch), args.record_steps)
        datasets = find_datasets([source])
        episodes = sum(len(d) for d in datasets)
        print(f"{episodes} episodes of {sorted({g for d in datasets for g in d.game_ranges})}; "
              f"{os.cpu_count()} CPUs; batch {args.batch}, {args.batches} timed batches per variant")

        def stream(group: int, threads: int = 0, workers: int = 0) -> TrainingData:
            return TrainingData(datasets, global_batch_size=args.batch, num_steps=4, seed=0,
                                windows_per_episode=group, num_threads=threads, num_workers=workers)

        variants: list[tuple[str, Callable[[], Iterator]]] = []
        for group in (1, 8):
            variants += [
                (f"grain, no prefetch, {group} window(s)/episode", lambda g=group: stream(g).iterate()),
                (f"grain, 2 threads, {group} window(s)/episode", lambda g=group: stream(g, threads=2).iterate()),
                (f"grain, 2 processes, {group} window(s)/episode", lambda g=group: stream(g, 1, workers=2).iterate()),
                (f"tf.data AUTOTUNE, {group} window(s)/episode", lambda g=group: tf_data(stream(g))),
            ]
        results = {}
        for name, make in variants:
            batches = make()
            results[name] = windows_per_second(batches, args.batches, args.batch)
            if hasattr(batches, "close"):
                batches.close()
            print(f"{name:48s} {results[name]:8,.0f} windows/s")
        best = max(results, key=results.get)
        print(f"fastest: {best} ({results[best]:,.0f} windows/s = {results[best] * 156:,.0f} tokens/s)")


if __name__ == "__main__":  # Grain's worker processes re-import this module
    main()
