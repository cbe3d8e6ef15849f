"""`mgdt-ad-histories`: learning histories of a source algorithm -> an RLDS dataset for AD.

Runs a source algorithm (mgdt_jax.recipes.ad.sources) from scratch on every task of one side of an
environment's seeded task split, several histories per task, and writes each RL episode as one RLDS
episode (layout: mgdt_jax/recipes/ad/histories.py), a shard per chunk of histories. Everything is
written into `<out>.partial` and renamed to `<out>` at the end, so a directory named `<out>` is
always complete; read it with `read_histories(<out>)`.
"""

from __future__ import annotations

import argparse
import collections
import functools
import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import jax
import numpy as np
import tensorflow_datasets as tfds
import tqdm

from data_pipelines import rlds_writer
from mgdt_jax import envs
from mgdt_jax.core.commands import interruptible
from mgdt_jax.core import files, processes
from mgdt_jax.core.files import path_argument, seed_argument
from mgdt_jax.envs.base import Environment, EnvError
from mgdt_jax.recipes.ad import histories as history_format
from mgdt_jax.recipes.ad import sources
from mgdt_jax.recipes.ad.histories import HistoryError


@functools.cache
def features() -> tfds.features.FeaturesDict:
    """The RLDS episode of a learning history (histories.py describes the fields)."""
    scalar = tfds.features.Scalar
    return tfds.features.FeaturesDict({
        "steps": tfds.features.Dataset({
            "observation": scalar(np.int32, doc="Observation id the action was taken at; on the is_last step, "
                                                "the observation after the episode's last action."),
            "action": scalar(np.int32),
            "reward": scalar(np.float32),
            "discount": scalar(np.float32),
            "is_first": scalar(np.bool_),
            "is_last": scalar(np.bool_),
            "is_terminal": scalar(np.bool_),
        }),
        "task_id": scalar(np.int64, doc="The environment's task id (e.g. the Dark Room goal cell)."),
        "history_id": scalar(np.int64, doc="The learning history (one learner from scratch on one task)."),
        "episode_index": scalar(np.int64, doc="Index of the episode within its history, from 0."),
        "episode_return": scalar(np.float32),
        "env_name": tfds.features.Text(),
        "source": tfds.features.Text(doc="The source algorithm."),
    })


def episode_examples(rollout: sources.Rollout, env_name: str, source_name: str) -> Iterator[dict]:
    """Every RL episode of a rollout (numpy leaves) as a features() example, history by history."""
    num_histories, num_episodes, length = rollout.observations.shape
    is_last = np.arange(length + 1) == length
    steps_common = {"discount": (~is_last).astype(np.float32), "is_first": np.arange(length + 1) == 0,
                    "is_last": is_last}
    for h in range(num_histories):
        for e in range(num_episodes):
            yield {
                "steps": {
                    "observation": np.append(rollout.observations[h, e], rollout.final_observations[h, e]),
                    "action": np.append(rollout.actions[h, e], 0).astype(np.int32),
                    "reward": np.append(rollout.rewards[h, e], 0).astype(np.float32),
                    "is_terminal": is_last & bool(rollout.terminated[h, e]),
                    **steps_common,
                },
                "task_id": int(rollout.task_ids[h]), "history_id": int(rollout.history_ids[h]),
                "episode_index": e, "episode_return": np.float32(rollout.rewards[h, e].sum(dtype=np.float64)),
                "env_name": env_name, "source": source_name,
            }


def _chunks(tasks, size: int) -> Iterator[tuple[int, int, object]]:
    """(first task, number of real tasks, chunk padded to `size` tasks with copies of its last, so
    every chunk has one shape and the rollout compiles once)."""
    total = int(tasks.id.shape[0])
    for start in range(0, total, size):
        count = min(size, total - start)
        index = np.minimum(np.arange(start, start + size), start + count - 1)
        yield start, count, jax.tree.map(lambda leaf: leaf[index], tasks)


def write_shard(path: Path, rollout: sources.Rollout, env_name: str, source_name: str) -> int:
    """Writes every episode of `rollout` (numpy leaves) into the array_record shard `path`; its bytes."""
    serialize = _serializer()
    with rlds_writer.shard_writer(path) as write:
        for example in episode_examples(rollout, env_name, source_name):
            write(serialize(example))
    return path.stat().st_size


@functools.cache
def _serializer() -> rlds_writer.RecordSerializer:
    return rlds_writer.RecordSerializer(features())


def write_histories(env: Environment, source: sources.Source, tasks, out_dir: Path, *, seed: int,
                    episodes_per_history: int, histories_per_task: int = 1, histories_per_shard: int = 256,
                    split: dict | None = None, progress: bool = True, workers: int = 1) -> dict:
    """Generates and writes the histories of `source` on every task (leaves [N, ...]); returns a
    summary. HistoryError if out_dir exists; EnvError/SourceError for an impossible request.

    The source runs in this process (one jitted rollout per shard); with ``workers`` > 1, that many
    processes serialise and write the shards meanwhile (serialising is ~0.2 ms an episode in Python,
    most of the time for short episodes). The shards hold the same examples for any ``workers``."""
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise HistoryError(f"{out_dir}: already exists; choose a new --out")
    source.check(env)
    num_tasks = int(tasks.id.shape[0])
    if num_tasks == 0:
        raise EnvError(f"{env.name}: no tasks to run on (the split is empty)")
    # Held beside OUT: a second run into the same --out at once deleted this one's OUT.partial
    with files.writing_into(out_dir.parent, f".{out_dir.name}.writing", "another mgdt-ad-histories", output=out_dir):
        if out_dir.exists():  # finished meanwhile by a run that held it
            raise HistoryError(f"{out_dir}: already exists; choose a new --out")
        tasks_per_shard = max(1, histories_per_shard // histories_per_task)
        num_shards = -(-num_tasks // tasks_per_shard)
        partial = out_dir.with_name(out_dir.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)  # a crashed earlier run of this same output
        partial.mkdir(parents=True)
        first_returns, last_returns, shard_lengths, num_bytes = [], [], [], 0
        started = time.perf_counter()
        pool, workers = None, min(workers, num_shards)
        pending: collections.deque = collections.deque()  # (future, histories, episodes), in shard order
        shard_paths: list[Path] = []
        try:
            if workers > 1:
                pool = processes.spawn_pool(workers)
            with tqdm.tqdm(total=num_tasks * histories_per_task, unit="history", disable=not progress) as bar:

                def finish_oldest() -> None:
                    nonlocal num_bytes
                    written, histories, episodes = pending.popleft()
                    num_bytes += written.result() if pool is not None else written
                    shard_lengths.append(episodes)
                    bar.update(histories)
                    steps = sum(shard_lengths) * env.episode_length
                    bar.set_postfix_str(f"{steps:,} steps, {steps / (time.perf_counter() - started):,.0f} steps/s")

                for index, (start, count, chunk) in enumerate(_chunks(tasks, tasks_per_shard)):
                    generated = sources.rollout(env, source, chunk, seed, episodes_per_history, histories_per_task,
                                                first_history_id=start * histories_per_task)
                    kept = count * histories_per_task
                    generated = sources.Rollout(*(np.asarray(leaf)[:kept] for leaf in generated))
                    path = rlds_writer.shard_path(partial, history_format.DATASET_NAME, history_format.SPLIT,
                                                  index, num_shards)
                    shard_paths.append(path)
                    if pool is None:
                        written = write_shard(path, generated, env.name, source.name)
                    else:
                        written = pool.submit(write_shard, path, generated, env.name, source.name)
                    pending.append((written, kept, kept * episodes_per_history))
                    returns = generated.rewards.sum(-1)
                    first_returns.append(returns[:, 0])
                    last_returns.append(returns[:, -1])
                    while len(pending) > (2 * workers if pool is not None else 0):  # bounded memory
                        finish_oldest()
                while pending:
                    finish_oldest()
            settings = {
                "env_name": env.name, "source_name": source.name, "env": env.config(), "source": source.config(),
                "seed": seed, "episodes_per_history": episodes_per_history, "histories_per_task": histories_per_task,
                "episode_length": env.episode_length, "num_actions": env.num_actions,
                "num_observations": env.num_observations, "num_tasks": num_tasks,
                "num_histories": num_tasks * histories_per_task, "split": split or {},
                "task_ids": np.asarray(tasks.id).tolist(), "format_version": history_format.VERSION,
                # Read back by read_histories: a shard swapped in from another recording of the same
                # environment and source (another seed) passes every other check.
                history_format.SHARD_DIGESTS: {path.name: files.sha256(path) for path in shard_paths},
            }
            rlds_writer.write_dataset_info(
                partial, name=history_format.DATASET_NAME, version=history_format.VERSION,
                module_name=__name__, features=features(), split=history_format.SPLIT, shard_lengths=shard_lengths,
                num_bytes=num_bytes, metadata=settings,
                description=f"Learning histories of {source.name} on {env.name} for Algorithm Distillation; "
                            "one RLDS episode per RL episode.")
            partial.rename(out_dir)
        except BaseException:
            # The folder goes first: a second Ctrl-C while waiting for the workers must not leave it.
            shutil.rmtree(partial, ignore_errors=True)
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)  # a worker may be in the middle of a shard
                shutil.rmtree(partial, ignore_errors=True)  # and what it wrote meanwhile
            raise
        finally:
            if pool is not None:
                pool.shutdown()
        return {"histories": num_tasks * histories_per_task, "episodes": sum(shard_lengths),
                "steps": sum(shard_lengths) * env.episode_length, "shards": num_shards, "num_bytes": num_bytes,
                "seconds": time.perf_counter() - started,
                "first_episode_return": float(np.concatenate(first_returns).mean()),
                "last_episode_return": float(np.concatenate(last_returns).mean())}


def _settings(pairs: list[str]) -> dict[str, str]:
    settings = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise sources.SourceError(f"--param {pair!r}: expected KEY=VALUE")
        settings[key] = value
    return settings


@interruptible("mgdt-ad-histories")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mgdt-ad-histories", description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", required=True, choices=sorted(envs.ENVS), help="the task family")
    parser.add_argument("--source", required=True, choices=sorted(sources.SOURCES),
                        help="the learning algorithm whose histories are written")
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                        help="a source setting, e.g. --param learning_rate=0.3 (repeatable)")
    parser.add_argument("--split", choices=("train", "heldout"), default="train",
                        help="which side of the task split to run on")
    parser.add_argument("--num-train", type=int, default=None, help="training tasks in the split (env default)")
    parser.add_argument("--num-heldout", type=int, default=None, help="held-out tasks in the split (env default)")
    parser.add_argument("--split-seed", type=seed_argument, default=0, help="fixes the task split")
    parser.add_argument("--histories-per-task", type=int, default=1, help="learners run from scratch on each task")
    parser.add_argument("--episodes", type=int, required=True, help="episodes per history")
    parser.add_argument("--seed", type=seed_argument, default=0, help="fixes the learners' randomness")
    parser.add_argument("--histories-per-shard", type=int, default=256,
                        help="histories in one array_record shard, at most (a shard holds whole tasks: at least "
                             "--histories-per-task)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="processes serialising and writing shards; default: all cores")
    parser.add_argument("--out", type=path_argument, required=True, help="dataset directory to create")
    args = parser.parse_args(argv)
    for flag in ("histories_per_task", "episodes", "histories_per_shard", "workers"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be positive")
    for flag in ("num_train", "num_heldout"):
        if (value := getattr(args, flag)) is not None and value < 0:
            parser.error(f"--{flag.replace('_', '-')} {value}: must not be negative")
    try:
        files.check_folder(args.out, "--out")  # before any rollout: a path under a file said only where .partial failed
        env = envs.get(args.env)
        source = sources.make_source(args.source, **_settings(args.param))
        train, heldout = env.task_split(args.split_seed, args.num_train, args.num_heldout)
        tasks = train if args.split == "train" else heldout
        split = {"side": args.split, "seed": args.split_seed, "num_train": int(train.id.shape[0]),
                 "num_heldout": int(heldout.id.shape[0])}
        summary = write_histories(env, source, tasks, args.out, seed=args.seed, episodes_per_history=args.episodes,
                                  histories_per_task=args.histories_per_task,
                                  histories_per_shard=args.histories_per_shard, split=split, workers=args.workers)
    except (EnvError, sources.SourceError, HistoryError, OSError) as error:
        print(f"mgdt-ad-histories: error: {files.error_line(error, args.out)}", file=sys.stderr)
        return 1
    except (MemoryError, jax.errors.JaxRuntimeError) as error:  # a task split of a billion tasks
        line = files.first_line(error)
        if isinstance(error, jax.errors.JaxRuntimeError) and not any(
                mark in line.lower() for mark in ("out of memory", "resource_exhausted")):
            raise
        print(f"mgdt-ad-histories: error: out of memory ({line[:200]}): ask for fewer tasks (--num-train, "
              "--num-heldout) or histories", file=sys.stderr)
        return 1
    print(f"wrote {summary['histories']} histories x {args.episodes} episodes ({summary['steps']:,} steps, "
          f"{summary['shards']} shards, {summary['num_bytes'] / 2**20:.1f} MiB) of {source.name} on {env.name} "
          f"({args.split} split, {int(tasks.id.shape[0])} tasks) to {args.out} in {summary['seconds']:.1f} s; "
          f"mean return: first episode {summary['first_episode_return']:.3f}, "
          f"last episode {summary['last_episode_return']:.3f}")
    return 0


if __name__ == "__main__":
    # Run the importable module's main, so that dataset_info.json names data_pipelines.ad_histories.
    from data_pipelines import ad_histories as importable

    sys.exit(importable.main())
