"""The one RLDS feature spec of our datasets, and episode -> example.

Reading a converted dataset (no TensorFlow needed; array_record gives random access):

    import tensorflow_datasets as tfds
from tensorflow_datasets.core import example_serializer
    source = tfds.builder_from_directory(DATA_DIR).as_data_source("train")
    episode = source[i]            # dict: "steps" plus the episode metadata below
    steps = episode["steps"]       # a lazy sequence of step dicts, len = T + 1
    steps[t]["observation"]        # uint8 [84, 84, 1]; also "action", "reward", "discount",
                                   # "is_first", "is_last", "is_terminal"
    episode["game"].decode(), episode["minimal_action_set"][steps[t]["action"]]  # full-set id

The step fields and `checkpoint_id`, `episode_id`, `episode_return` are those of TFDS `rlu_atari` /
`rlu_atari_checkpoints_ordered` (v1.3 / v1.1), so a reader of one reads the other; our datasets add
`game`, `run`, `last_checkpoint_id` and `minimal_action_set`, which rlu_atari leaves to the config
name. Every logged row is one step; each episode ends with one extra observation-only step
(is_last=True; is_terminal=True for game over, False for a time-limit truncation) whose observation
repeats the last logged frame and whose action, reward and discount are 0, because the frame after
the last action was never logged.
"""

from __future__ import annotations

import functools

import cv2
import numpy as np
import tensorflow_datasets as tfds

from data_pipelines import rlds_writer
from data_pipelines.replay_logs import FRAME_SHAPE, Episode
from mgdt_jax.envs import atari

DATASET_NAME = "dqn_replay"
VERSION = "1.0.0"
SPLIT = "train"


@functools.cache
def features() -> tfds.features.FeaturesDict:
    """rlu_atari's episode spec plus our episode metadata (numpy dtypes: building it needs no TF)."""
    return tfds.features.FeaturesDict({
        "steps": tfds.features.Dataset({
            "observation": tfds.features.Image(shape=(*FRAME_SHAPE, 1), dtype=np.uint8, encoding_format="png"),
            "action": tfds.features.Scalar(np.int64, doc="Index into the game's minimal action set."),
            "reward": tfds.features.Scalar(np.float32, doc="Clipped reward, value range [-1, 1]."),
            "discount": tfds.features.Scalar(np.float32),
            "is_first": tfds.features.Scalar(np.bool_),
            "is_last": tfds.features.Scalar(np.bool_),
            "is_terminal": tfds.features.Scalar(np.bool_),
        }),
        "checkpoint_id": tfds.features.Scalar(np.int64, doc="Checkpoint holding the episode's first step."),
        "episode_id": tfds.features.Scalar(np.int64, doc="Index of the episode within checkpoint_id."),
        "episode_return": tfds.features.Scalar(np.float32, doc="Sum of the clipped rewards."),
        "game": tfds.features.Text(doc="DQN Replay game name, e.g. Pong."),
        "run": tfds.features.Scalar(np.int64, doc="Run (agent seed) of the logs, 1..5 in DQN Replay."),
        "last_checkpoint_id": tfds.features.Scalar(np.int64, doc="Checkpoint holding the last logged step."),
        "minimal_action_set": tfds.features.Tensor(
            shape=(None,), dtype=np.int64, doc="Full 18-action ALE id of each minimal-set action index."),
    })


def encode_png(frame: np.ndarray) -> bytes:
    """uint8 [84, 84] -> PNG bytes (as rlu_atari stores frames; the Image feature takes bytes as is)."""
    ok, encoded = cv2.imencode(".png", frame)
    if not ok:
        raise ValueError("PNG encoding failed")
    return encoded.tobytes()


def episode_to_example(episode: Episode, game: str, run: int) -> dict:
    """An episode of T logged rows -> a features() example with T + 1 steps."""
    num_steps = episode.num_steps + 1
    frames = [encode_png(frame) for frame in episode.observations]
    is_last = np.zeros(num_steps, bool)
    is_last[-1] = True
    return {
        "steps": {
            "observation": frames + frames[-1:],  # the final observation repeats the last logged one
            "action": np.append(episode.actions, 0).astype(np.int64),
            "reward": np.append(episode.rewards, 0).astype(np.float32),
            "discount": (~is_last).astype(np.float32),
            "is_first": np.arange(num_steps) == 0,
            "is_last": is_last,
            "is_terminal": is_last & (not episode.truncated),
        },
        "checkpoint_id": episode.checkpoint_id,
        "episode_id": episode.episode_id,
        "episode_return": np.float32(episode.rewards.sum(dtype=np.float64)),
        "game": game,
        "run": run,
        "last_checkpoint_id": episode.last_checkpoint_id,
        "minimal_action_set": np.asarray(atari.MINIMAL_ACTION_SETS[game], np.int64),
    }


@functools.cache
def _serializer() -> rlds_writer.RecordSerializer:
    return rlds_writer.RecordSerializer(features())


def serialize_episode(episode: Episode, game: str, run: int) -> bytes:
    """An episode as one serialized record of a shard.

    The Example `features().serialize_example` gives, five times faster: the step fields are
    already stacked arrays of their final dtypes (and PNG bytes), so TFDS's per-step encoding, half
    of the conversion time, is skipped (rlds_writer.RecordSerializer).
    """
    return _serializer()(episode_to_example(episode, game, run))
