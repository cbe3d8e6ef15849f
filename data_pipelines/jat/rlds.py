"""JAT tasks as RLDS datasets in TFDS format (array_record shards), one dataset directory per task.

Layout of an episode (open with `tfds.builder_from_directory(DIR).as_data_source("train")`):

    episode["task"], episode["episode_id"], episode["episode_return"]
    steps = episode["steps"]                  # T + 1 steps
    steps[t]["observation"][<field>]          # the task's observation fields (recipes/jat/fields.py)
    steps[t]["action"][<field>]               # its one action field
    steps[t]["reward"], ["discount"], ["is_first"], ["is_last"], ["is_terminal"]

Step t holds observation o_t, the action a_t taken there and the reward r_t it earned, as in
`rlu_atari` and our Atari datasets. The last step (is_last) holds the final observation with a zero
action and reward; is_terminal is True when the episode ended in a terminal state and False when a
time limit cut it. JAT's published rows omit the final observation: imported episodes repeat the last
one (`final_observation` in metadata.json says which).

A dataset directory also holds `references.json` (the task's expert and random references, see
mgdt_jax/recipes/jat/references.py) and `metadata.json` (how it was made). `dataset_info.json` is
written last, so a directory without it is incomplete.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path

import cv2
import numpy as np
import tensorflow_datasets as tfds

from data_pipelines import rlds_writer
from mgdt_jax.core import files
from mgdt_jax.recipes.jat import fields as jat_fields
from mgdt_jax.recipes.jat import references as jat_references
from mgdt_jax.recipes.jat.fields import METADATA_FILE, DatasetError, TaskSpec

VERSION = "1.0.0"
SPLIT = "train"
SHARD_DIGESTS = "shard_sha256"  # in a dataset's summary: each shard's SHA-256 as written, in order
WRITERS = "another mgdt-jat-record or mgdt-jat-import"  # what holds a task's writing claim


def writing_claim(out_dir: Path, task: str) -> Path:
    """``OUT/<task>.writing``, held while a task is recorded or imported into OUT: a second writer of
    that task at once is refused (``files.held``); other tasks may be written into OUT beside it."""
    return Path(out_dir) / f"{task}.writing"


@dataclasses.dataclass
class Episode:
    """One episode of T actions.

    observations: field -> T + 1 rows (the last is the final observation); arrays of the field's
      dtype, or a list of str for text_observations.
    actions: [T] int64 (discrete) or [T, A] float32 (continuous).
    rewards: float32 [T].
    terminated: ended in a terminal state (False: cut by a time limit, or unknown).
    success: the environment's success flag at the end, where it has one.
    """

    observations: dict[str, np.ndarray | list[str]]
    actions: np.ndarray
    rewards: np.ndarray
    terminated: bool
    success: bool | None = None

    @property
    def num_steps(self) -> int:
        return len(self.rewards)

    @property
    def episode_return(self) -> float:
        return float(np.sum(self.rewards, dtype=np.float64))


def dataset_name(task: str) -> str:
    """TFDS name of a task's dataset: "babyai-go-to-local" -> "jat_babyai_go_to_local"."""
    return "jat_" + task.replace("-", "_")


def _field_feature(name: str, shape: tuple[int, ...]) -> tfds.features.FeatureConnector:
    modality, dtype = jat_fields.FIELDS[name].modality, jat_fields.FIELDS[name].dtype
    if modality == "image":
        return tfds.features.Image(shape=shape, dtype=np.uint8, encoding_format="png")
    if modality == "text":
        return tfds.features.Text()
    return tfds.features.Scalar(dtype) if shape == () else tfds.features.Tensor(shape=shape, dtype=dtype)


def features(spec: TaskSpec) -> tfds.features.FeaturesDict:
    """The RLDS episode spec of a task (numpy dtypes: building it needs no TensorFlow)."""
    return tfds.features.FeaturesDict({
        "steps": tfds.features.Dataset({
            "observation": tfds.features.FeaturesDict(
                {name: _field_feature(name, spec.shapes[name]) for name in spec.observation_fields}),
            "action": tfds.features.FeaturesDict(
                {spec.action_field: _field_feature(spec.action_field, spec.shapes[spec.action_field])}),
            "reward": tfds.features.Scalar(np.float32, doc="JAT `rewards`: the reward of this step's action."),
            "discount": tfds.features.Scalar(np.float32),
            "is_first": tfds.features.Scalar(np.bool_),
            "is_last": tfds.features.Scalar(np.bool_),
            "is_terminal": tfds.features.Scalar(np.bool_),
        }),
        "episode_id": tfds.features.Scalar(np.int64, doc="Index of the episode in the dataset."),
        "episode_return": tfds.features.Scalar(np.float32, doc="Sum of the episode's rewards."),
        "task": tfds.features.Text(doc="JAT task name, e.g. babyai-go-to-local."),
    })


def _encode_png(image: np.ndarray) -> bytes:
    # OpenCV writes BGR(A): swap so the PNG holds the RGB(A) channels in order.
    channels = image.shape[-1]
    if channels in (3, 4):
        image = image[..., [2, 1, 0, 3][:channels]]
    ok, encoded = cv2.imencode(".png", image)
    if not ok:
        raise DatasetError(f"PNG encoding failed for an image of shape {image.shape}")
    return encoded.tobytes()


def _check_rows(spec: TaskSpec, name: str, rows, expected: int) -> np.ndarray | list[bytes]:
    if len(rows) != expected:
        raise DatasetError(f"{spec.task}: {name} has {len(rows)} rows, expected {expected}")
    if jat_fields.FIELDS[name].modality == "text":
        return [str(row).encode() for row in rows]
    array = np.asarray(rows)
    if array.shape[1:] != spec.shapes[name]:
        raise DatasetError(f"{spec.task}: {name} rows have shape {array.shape[1:]}, expected {spec.shapes[name]}")
    if jat_fields.FIELDS[name].modality == "image":
        return [_encode_png(np.asarray(row, np.uint8)) for row in array]
    return array.astype(jat_fields.FIELDS[name].dtype)


def episode_to_example(spec: TaskSpec, episode: Episode, episode_id: int) -> dict:
    """An episode of T actions -> a features(spec) example with T + 1 steps, the step fields already
    stacked (images as PNG bytes, text as UTF-8 bytes) for `serialize_episode`."""
    num_steps = episode.num_steps + 1
    if set(episode.observations) != set(spec.observation_fields):
        raise DatasetError(f"{spec.task}: episode has observation fields {sorted(episode.observations)}, "
                           f"expected {sorted(spec.observation_fields)}")
    actions = _check_rows(spec, spec.action_field, episode.actions, episode.num_steps)
    last_action = np.zeros((1, *spec.shapes[spec.action_field]), actions.dtype)
    is_last = np.arange(num_steps) == num_steps - 1
    return {
        "steps": {
            "observation": {name: _check_rows(spec, name, episode.observations[name], num_steps)
                            for name in spec.observation_fields},
            "action": {spec.action_field: np.concatenate([actions, last_action])},
            "reward": np.append(np.asarray(episode.rewards, np.float32), np.float32(0)),
            "discount": (~is_last).astype(np.float32),
            "is_first": np.arange(num_steps) == 0,
            "is_last": is_last,
            "is_terminal": is_last & bool(episode.terminated),
        },
        "episode_id": episode_id,
        "episode_return": np.float32(episode.episode_return),
        "task": spec.task,
    }


@functools.cache
def _serializer(spec_json: str) -> rlds_writer.RecordSerializer:
    return rlds_writer.RecordSerializer(features(TaskSpec.from_json(json.loads(spec_json))))


def serialize_episode(spec: TaskSpec, episode: Episode, episode_id: int) -> bytes:
    """An episode as one record of a shard: the Example of `features(spec).serialize_example`, with
    the per-step encoding skipped (the step fields are stacked arrays of their final dtypes already),
    as bytes that do not depend on the process (`rlds_writer.RecordSerializer`)."""
    return _serializer(json.dumps(spec.to_json(), sort_keys=True))(episode_to_example(spec, episode, episode_id))


def write_dataset(out_dir: Path, spec: TaskSpec, episodes: Iterable[Episode], metadata: dict,
                  episodes_per_shard: int = 1000, description: str = "",
                  on_episode: Callable[[Episode], None] = lambda episode: None) -> dict:
    """Writes the episodes as a TFDS dataset into the empty directory out_dir; returns its summary.

    Shards hold `episodes_per_shard` episodes each and are named once their count is known;
    metadata.json (with `metadata` and the summary) and, last, dataset_info.json follow.
    Raises DatasetError for an episode that does not match spec.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pending, lengths, returns, steps = [], [], [], 0
    writer = None
    try:
        for episode_id, episode in enumerate(episodes):
            if writer is None:
                pending.append(out_dir / f"shard{len(pending):05d}.partial")
                writer = rlds_writer.ShardFile(pending[-1])
                lengths.append(0)
            writer.write(serialize_episode(spec, episode, episode_id))
            lengths[-1] += 1
            returns.append(episode.episode_return)
            steps += episode.num_steps
            on_episode(episode)
            if lengths[-1] == episodes_per_shard:
                writer.close()
                writer = None
    finally:
        if writer is not None:
            writer.close()
    if not lengths:
        raise DatasetError(f"{spec.task}: no episodes to write")
    num_bytes, digests = 0, []
    for index, path in enumerate(pending):
        final = rlds_writer.shard_path(out_dir, dataset_name(spec.task), SPLIT, index, len(pending))
        os.replace(path, final)
        num_bytes += final.stat().st_size
        digests.append(files.sha256(final))
    summary = {"task": spec.task, "episodes": len(returns), "steps": steps, "shards": len(pending),
               "num_bytes": num_bytes, "mean_return": float(np.mean(returns)), SHARD_DIGESTS: digests}
    files.write_json(out_dir / METADATA_FILE, {**metadata, "spec": spec.to_json(), "summary": summary})
    rlds_writer.write_dataset_info(  # last: the dataset is complete
        out_dir, name=dataset_name(spec.task), version=VERSION, module_name=__name__, features=features(spec),
        split=SPLIT, shard_lengths=lengths, num_bytes=num_bytes,
        description=description or f"JAT task {spec.task} as RLDS episodes.")
    return summary


def shard_fault(out_dir: Path, task: str, summary: dict) -> str | None:
    """Why the shard files of a dataset `write_dataset` completed differ from what it wrote (its
    `summary`: shard count, total bytes and each shard's SHA-256), or None: a shard deleted, cut
    short or damaged in place (a rerun told "already recorded" of a dataset training then refused).
    Datasets written before the digests were recorded are checked by size."""
    paths = [rlds_writer.shard_path(out_dir, dataset_name(task), SPLIT, index, summary["shards"])
             for index in range(summary["shards"])]
    if missing := [path.name for path in paths if not path.is_file()]:
        return f"shard {missing[0]} is missing"
    if (size := sum(path.stat().st_size for path in paths)) != summary["num_bytes"]:
        return f"its shards hold {size:,} bytes, {summary['num_bytes']:,} were written"
    for path, digest in zip(paths, summary.get(SHARD_DIGESTS) or [None] * len(paths)):
        if digest is not None and files.sha256(path) != digest:
            return f"shard {path.name} is not the one written: its SHA-256 differs"
    return None


class ObservationMoments:
    """Running per-dimension mean and variance of the continuous observations of the episodes added.

    Counts the T rows of an episode that carry an action (as `episode_fields` reads them back), in
    the stored float32 values, merged episode by episode in float64 with Chan, Golub & LeVeque's
    pairwise update (numerically stable where the mean dwarfs the spread, e.g. a quaternion ~1).
    """

    def __init__(self) -> None:
        self.steps, self._mean, self._m2 = 0, None, None

    def add(self, episode: Episode) -> None:
        if "continuous_observations" not in episode.observations or episode.num_steps == 0:
            return
        rows = np.asarray(episode.observations["continuous_observations"][: episode.num_steps], np.float32)
        rows = rows.astype(np.float64)
        count, mean = len(rows), rows.mean(axis=0)
        m2 = ((rows - mean) ** 2).sum(axis=0)
        if self._mean is None:
            self.steps, self._mean, self._m2 = count, mean, m2
            return
        total = self.steps + count
        delta = mean - self._mean
        self._mean = self._mean + delta * (count / total)
        self._m2 = self._m2 + m2 + delta**2 * (self.steps * count / total)
        self.steps = total

    def stats(self) -> jat_references.ObservationStats | None:
        """The mean and population std so far; None if no continuous observations were added."""
        if self._mean is None:
            return None
        std = np.sqrt(self._m2 / self.steps)
        return jat_references.ObservationStats(mean=tuple(float(v) for v in self._mean),
                                               std=tuple(float(v) for v in std), steps=self.steps)
