"""JAT batches: packing episodes into rows against padding one episode a row, on recorded datasets.

    python benchmarks/jat_packing.py --data data/jat [--tasks a,b,...] [--steps 20] [--batch 16]

Prints, for each scheme, the fraction of real (non-padding) steps of the timed batches and the training
throughput of the tiny JAT (experiments/jat_tiny.py's model) on one CPU device: optimizer steps/s and
real steps/s, and the ratio packed/padded of real steps/s measured in the same run. Both schemes draw
the same groups, tasks and start steps (same seed); only the row layout differs.
"""

from __future__ import annotations

import argparse
import sys
import time

import jax
import numpy as np

from experiments import jat_tiny
from mgdt_jax.core import sharding
from mgdt_jax.core.commands import interruptible
from mgdt_jax.core.files import count_argument, path_argument
from mgdt_jax.core.train_step import Trainer
from mgdt_jax.recipes.jat import data, tokens

DEFAULT_TASKS = ("babyai-go-to-local", "babyai-pickup-loc", "metaworld-reach", "mujoco-pendulum")
WARMUP_SEARCH = 50  # batches searched for one of each group, to compile its step before timing


def measure(config, packing: bool, steps: int) -> dict[str, float]:
    """Real-step fraction and throughput over the same ``steps`` timed batches; every group's step is
    compiled first (a group first met in the timed loop made short runs measure its compilation)."""
    config.data.packing = packing
    stream = data.training_data(config, process_index=0, process_count=1)
    trainer = Trainer(config, sharding.make_mesh({"data": 1}, jax.devices()[:1]))
    state = trainer.init(0)
    first_of_group: dict[str, int] = {}
    for k in range(WARMUP_SEARCH):
        first_of_group.setdefault(tokens.batch_group(stream.batch(k)), k)
    for k in first_of_group.values():
        state, metrics = trainer.step(state, trainer.shard_batch(stream.batch(k)))
    jax.block_until_ready(metrics)
    host_batches = [stream.batch(WARMUP_SEARCH + k) for k in range(steps)]
    real_steps = float(sum(np.sum(batch["segment"] >= 0) for batch in host_batches))
    batches = [trainer.shard_batch(batch) for batch in host_batches]
    started = time.perf_counter()
    for batch in batches:
        state, metrics = trainer.step(state, batch)
    jax.block_until_ready(metrics)
    seconds = time.perf_counter() - started
    return {"real_fraction": real_steps / sum(batch["segment"].size for batch in host_batches),
            "steps_per_second": steps / seconds, "real_steps_per_second": real_steps / seconds}


@interruptible("benchmarks/jat_packing.py", errors=(ValueError, OSError))
def main() -> int | None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=path_argument, required=True,
                        help="folder of recorded JAT tasks (DATA/<task>: experiments/jat_data.py)")
    parser.add_argument("--tasks", default=",".join(DEFAULT_TASKS), help="comma list of tasks in DATA (default: %(default)s)")
    parser.add_argument("--steps", type=count_argument(), default=20, help="timed optimizer steps per scheme")
    parser.add_argument("--batch", type=count_argument(), default=16, help="rows per batch")
    args = parser.parse_args()
    config = jat_tiny.get_config()
    config.model.groups = ("discrete", "continuous")  # the default tasks have no images
    config.data.tasks = tuple({"path": str(args.data / task)} for task in args.tasks.split(","))
    config.train.batch_size = args.batch
    results = {name: measure(config, packing, args.steps) for name, packing in (("padded", False), ("packed", True))}
    for name, result in results.items():
        print(f"{name:7s} real steps {100 * result['real_fraction']:5.1f}%  {result['steps_per_second']:6.2f} steps/s  "
              f"{result['real_steps_per_second']:8.0f} real steps/s")
    ratio = results["packed"]["real_steps_per_second"] / results["padded"]["real_steps_per_second"]
    print(f"packed / padded real steps/s: {ratio:.2f}x")


if __name__ == "__main__":
    sys.exit(main())
