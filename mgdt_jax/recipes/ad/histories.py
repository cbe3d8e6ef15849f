"""Learning histories: what Algorithm Distillation trains on, in memory and on disk.

In memory, `Histories` holds H histories of T steps each (T = episodes per history * episode
length), in time order. On disk, `mgdt-ad-histories` writes them as an RLDS dataset in TFDS format
(array_record shards), one RLDS episode per RL episode, and `read_histories` reads such a directory
back without TensorFlow. The episode layout (field names below) is RLDS's:

    steps/observation int32, steps/action int32, steps/reward float32, steps/discount float32,
    steps/is_first, steps/is_last, steps/is_terminal (bool)
    task_id, history_id, episode_index int64; episode_return float32; env_name, source text

An RL episode of L steps is L + 1 RLDS steps: the last holds the observation after the last action,
with action 0, reward 0, discount 0 and is_last; is_terminal says whether the episode ended in a
terminal state (env.terminated) rather than at its time limit. The generator's settings (the
environment's and the source's, the seed, the split) are the dataset's metadata (metadata.json,
`builder.info.metadata`).

This module imports TensorFlow Datasets only inside `read_histories`: the model and the train step
need `Histories` but not the data stack.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mgdt_jax.core import files

DATASET_NAME = "ad_histories"
VERSION = "1.0.0"
SPLIT = "train"
SHARD_DIGESTS = "shard_sha256"  # in metadata.json: each shard's file name -> the SHA-256 of its bytes as written
EPISODE_FIELDS = ("task_id", "history_id", "episode_index", "episode_return", "env_name", "source")
STEP_FIELDS = ("observation", "action", "reward", "discount", "is_first", "is_last", "is_terminal")


class HistoryError(ValueError):
    """Histories that cannot be used as asked; the message names the directory or value and the fault."""


@dataclasses.dataclass(frozen=True)
class Histories:
    """H learning histories of T steps, T = episodes_per_history * episode_length (numpy).

    observations int32 [H, T]: observation each action was taken at, in [0, num_observations);
    actions int32 [H, T] in [0, num_actions); rewards float32 [H, T]; task_ids int32 [H];
    env_name, source (the algorithm's name); metadata: the generator's settings and
    "history_ids" (int64 [H]). Arrays are converted to these dtypes; HistoryError on a shape or
    value that breaks the layout.
    """

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    task_ids: np.ndarray
    env_name: str
    episode_length: int
    num_actions: int
    num_observations: int
    source: str
    metadata: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        for name, dtype in (("observations", np.int32), ("actions", np.int32), ("rewards", np.float32),
                            ("task_ids", np.int32)):
            object.__setattr__(self, name, np.asarray(getattr(self, name), dtype))
        shape = self.observations.shape
        if len(shape) != 2 or self.actions.shape != shape or self.rewards.shape != shape:
            raise HistoryError(f"observations, actions and rewards must share one [H, T] shape; got "
                               f"{shape}, {self.actions.shape}, {self.rewards.shape}")
        if self.task_ids.shape != shape[:1]:
            raise HistoryError(f"task_ids has shape {self.task_ids.shape}, expected ({shape[0]},)")
        if self.episode_length < 1 or shape[1] % self.episode_length:
            raise HistoryError(f"T = {shape[1]} steps is not a whole number of {self.episode_length}-step episodes")
        for name, bound in (("observations", self.num_observations), ("actions", self.num_actions)):
            values = getattr(self, name)
            if values.size and (values.min() < 0 or values.max() >= bound):
                raise HistoryError(f"{name} outside [0, {bound}) in {self.env_name} histories")

    @property
    def num_histories(self) -> int:
        return self.observations.shape[0]

    @property
    def num_steps(self) -> int:
        return self.observations.shape[1]

    @property
    def episodes_per_history(self) -> int:
        return self.num_steps // self.episode_length

    def episode_returns(self) -> np.ndarray:
        """float32 [H, episodes_per_history]: the return of each episode of each history."""
        return self.rewards.reshape(self.num_histories, -1, self.episode_length).sum(-1)


def _check_shard_digests(directory: Path, paths: Sequence[Any], digests: Any) -> None:
    """HistoryError naming the shard whose bytes are not those mgdt-ad-histories wrote (metadata.json's
    ``shard_sha256``): a shard of another recording of the same environment and source (another
    seed) passes every other check and would be trained on. Datasets written before the digests
    were recorded have none to check."""
    if digests is None:
        return
    if not isinstance(digests, dict):
        raise HistoryError(f"{directory}: its metadata.json's {SHARD_DIGESTS} is not a table of shard digests")
    for path in paths:
        name = Path(os.fspath(path)).name
        if name not in digests:
            raise HistoryError(f"{directory}: its metadata.json records no digest of shard {name}; regenerate the dataset")
        try:
            digest = files.sha256(path)
        except OSError as error:
            raise HistoryError(f"{Path(os.fspath(path))}: unreadable ({error.strerror or error})") from None
        if digest != digests[name]:
            raise HistoryError(f"{Path(os.fspath(path))}: not the shard mgdt-ad-histories wrote here (its SHA-256 differs "
                               "from metadata.json's): replaced or damaged; regenerate the dataset")


def read_histories(directory: str | Path, *, env_name: str | None = None, source: str | None = None,
                   exclude_task_ids: Iterable[int] | None = None) -> Histories:
    """Reads a dataset written by `mgdt-ad-histories` (no TensorFlow needed).

    Histories come in ascending history id (metadata["history_ids"]). Given `env_name` or
    `source`, data of another environment or source algorithm is refused; given
    `exclude_task_ids` (e.g. the held-out tasks of a split), a dataset holding any of them is
    refused. Every fault (missing directory, another dataset, incomplete histories, out-of-range
    values) raises HistoryError with a one-line message naming the directory.
    """
    if not str(directory).strip():  # Path("") is the current folder
        raise HistoryError("an empty dataset path (an unset shell variable?)")
    directory = Path(directory)
    if not directory.is_dir():
        raise HistoryError(f"{directory}: no such directory")
    import tensorflow_datasets as tfds
    from google.protobuf.message import DecodeError
    from tensorflow_datasets.proto import tf_example_pb2

    def cannot_open(error: Exception) -> HistoryError:
        first_line = (str(error).strip().splitlines() or [""])[0]
        return HistoryError(f"{directory}: cannot open as a learning-history dataset ({type(error).__name__}: {first_line})")

    try:
        builder = tfds.builder_from_directory(directory)
    except Exception as error:  # noqa: BLE001  (TFDS raises many types, protobuf's ParseError among them, for a damaged dataset_info.json)
        raise cannot_open(error) from None
    if builder.info.name != DATASET_NAME:
        raise HistoryError(f"{directory}: holds the {builder.info.name!r} dataset, not {DATASET_NAME!r} "
                           "learning histories")
    try:
        records = builder.as_data_source(SPLIT, deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)
    except Exception as error:  # noqa: BLE001  (as above; array_record raises RuntimeError for a damaged shard)
        raise cannot_open(error) from None
    settings = dict(builder.info.metadata or {})
    try:
        env, algorithm = settings["env_name"], settings["source_name"]
        episode_length, num_episodes = int(settings["episode_length"]), int(settings["episodes_per_history"])
        num_actions, num_observations = int(settings["num_actions"]), int(settings["num_observations"])
    except (KeyError, TypeError, ValueError) as error:
        raise HistoryError(f"{directory}: metadata.json lacks the generator settings ({error})") from None
    if env_name is not None and env != env_name:
        raise HistoryError(f"{directory}: histories of {env!r}, not of the {env_name!r} asked for")
    if source is not None and algorithm != source:
        raise HistoryError(f"{directory}: histories of source {algorithm!r}, not of the {source!r} asked for")

    count = len(records)
    if count == 0 or count % num_episodes:
        raise HistoryError(f"{directory}: {count} episodes is not a whole number of "
                           f"{num_episodes}-episode histories")
    num_histories = count // num_episodes
    keys = np.empty((count, 3), np.int64)  # history id, episode index, task id
    steps = {name: np.empty((count, episode_length + 1), dtype)
             for name, dtype in (("observation", np.int32), ("action", np.int32), ("reward", np.float32),
                                 ("is_last", bool))}
    names = set()
    split = builder.info.splits[SPLIT]
    chunk = 4096
    for start in range(0, count, chunk):
        end = min(start + chunk, count)
        try:
            chunk_records = records.__getitems__(range(start, end))
        except (RuntimeError, OSError) as error:
            _check_shard_digests(directory, split.filepaths, settings.get(SHARD_DIGESTS))  # names the damaged one
            raise HistoryError(files.unreadable_episodes(directory, split.filepaths, split.shard_lengths, start,
                                                         end - 1, error)) from None
        for offset, record in enumerate(chunk_records):
            i = start + offset
            try:  # a shard cut short can yield records that parse as nothing or as part of one
                feature = tf_example_pb2.Example.FromString(record).features.feature
                keys[i] = (feature["history_id"].int64_list.value[0], feature["episode_index"].int64_list.value[0],
                           feature["task_id"].int64_list.value[0])
                names.add((feature["env_name"].bytes_list.value[0], feature["source"].bytes_list.value[0]))
            except (DecodeError, IndexError) as error:
                _check_shard_digests(directory, split.filepaths, settings.get(SHARD_DIGESTS))
                raise HistoryError(files.unreadable_episodes(directory, split.filepaths, split.shard_lengths, i, i,
                                                             error)) from None
            for name, values in steps.items():
                field = feature[f"steps/{name}"]
                stored = field.float_list.value if name == "reward" else field.int64_list.value
                if len(stored) != episode_length + 1:
                    raise HistoryError(f"{directory}: episode {i} has {len(stored) - 1} steps, expected "
                                       f"{episode_length}")
                values[i] = stored
    _check_shard_digests(directory, split.filepaths, settings.get(SHARD_DIGESTS))  # after reading: a damaged shard is named as such
    if names != {(env.encode(), algorithm.encode())}:
        raise HistoryError(f"{directory}: episodes of {sorted(names)} in a dataset of {env}/{algorithm}")

    order = np.lexsort((keys[:, 1], keys[:, 0]))
    keys = keys[order]
    history_ids = keys[::num_episodes, 0]
    if not (np.array_equal(keys[:, 0], np.repeat(history_ids, num_episodes))
            and np.array_equal(keys[:, 1], np.tile(np.arange(num_episodes), num_histories))
            and np.all(keys.reshape(num_histories, num_episodes, 3)[:, :, 2] == keys[::num_episodes, None, 2])):
        raise HistoryError(f"{directory}: histories are incomplete or mixed (each history id needs episodes "
                           f"0..{num_episodes - 1} of one task)")
    if not np.all(steps["is_last"][:, -1]) or np.any(steps["is_last"][:, :-1]):
        raise HistoryError(f"{directory}: an episode does not end with exactly one is_last step")
    task_ids = keys[::num_episodes, 2]
    if exclude_task_ids is not None:
        leaked = np.intersect1d(task_ids, np.fromiter(exclude_task_ids, np.int64))
        if leaked.size:
            raise HistoryError(f"{directory}: holds histories of excluded (held-out) tasks "
                               f"{leaked[:8].tolist()}{' ...' if leaked.size > 8 else ''}: the task split overlaps")

    def layout(name: str) -> np.ndarray:
        return steps[name][order, :-1].reshape(num_histories, num_episodes * episode_length)

    try:
        return Histories(
            observations=layout("observation"), actions=layout("action"), rewards=layout("reward"),
            task_ids=task_ids, env_name=env, episode_length=episode_length, num_actions=num_actions,
            num_observations=num_observations, source=algorithm,
            metadata={**settings, "history_ids": history_ids, "directory": str(directory)})
    except HistoryError as error:
        raise HistoryError(f"{directory}: {error}") from None
