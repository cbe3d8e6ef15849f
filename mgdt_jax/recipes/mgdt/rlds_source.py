"""Random access to the episodes of RLDS Atari datasets, without TensorFlow.

Reads TFDS datasets prepared as ``array_record`` (ours, written by ``mgdt-convert``, and TFDS
``rlu_atari``): ``tfds.builder_from_directory`` opens a dataset version directory, its
``as_data_source`` gives the raw records by index, and TFDS's NumPy example parser turns one record
into arrays. Frames stay PNG-encoded until they are asked for (decoded with OpenCV, as TFDS does).

Games: a TFDS ``rlu_atari`` dataset holds one game, named by its config (``Pong_run_1`` -> ``Pong``).
Ours hold many, with a ``game`` episode metadata field and one game per shard (a shard is one
(game, run, checkpoint)). Actions are stored as indices into the game's minimal action set (as in
the DQN Replay logs) and are mapped to the full 18-action set here.

Paths go through ``etils.epath``, the file API of TFDS, so a ``gs://`` dataset is opened as a local
one.

Training does not read episodes: it reads windows from the window index built from them once
(``step_store.py``). This reader builds that index and is the reference it is tested against.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
from collections.abc import Callable, Sequence

import numpy as np
import tensorflow_datasets as tfds
from array_record.python.array_record_module import ArrayRecordReader
from etils import epath
from google.protobuf import json_format
from tensorflow_datasets.core import example_parser

from mgdt_jax.core.files import folder_of
from mgdt_jax.envs import atari
from mgdt_jax.recipes.mgdt import tokens

_DATASET_INFO = "dataset_info.json"
_CONFIG_NAME = re.compile(r"^(?P<game>[A-Za-z]+)_run_\d+$")


class DataError(ValueError):
    """A dataset that cannot be used as MGDT training data; the message names it and the problem."""


@dataclasses.dataclass(frozen=True)
class Episode:
    """One episode's steps that carry an action and a reward, with frames still encoded.

    An RLDS episode ends with an ``is_last`` step whose action and reward mean nothing (the final
    observation), so that step is left out here.
    """

    game: str
    actions: np.ndarray  # int32 [T], full 18-action-set ids
    rewards: np.ndarray  # float32 [T], clipped to [-1, 1]
    encoded_frames: np.ndarray  # object [T], one encoded 84x84x1 frame per step
    decode_frame: Callable[[bytes], np.ndarray]

    def __len__(self) -> int:
        return len(self.actions)

    def frames(self, steps: Sequence[int]) -> np.ndarray:
        """Decodes the frames of the given steps: uint8 [len(steps), 84, 84, 1]."""
        return np.stack([self.decode_frame(self.encoded_frames[step]) for step in steps])


def check_atari_frames(directory: str | os.PathLike, observation_shape: tuple[int, ...] | str) -> None:
    """DataError (naming ``directory``) unless the dataset's observations are Atari frames
    [84, 84, 1], the only input of the MGDT recipe (another recipe's dataset, e.g. Algorithm
    Distillation's histories or JAT's dict of features, is refused here rather than deeper in the
    pipeline). ``observation_shape``: a shape, or a description of observations that have none."""
    if observation_shape != tokens.FRAME_SHAPE:
        found = tuple(observation_shape) if not isinstance(observation_shape, str) else observation_shape
        raise DataError(f"{directory}: observations are {found}, expected {tokens.FRAME_SHAPE} "
                        "(84x84 grayscale Atari frames): not an MGDT dataset (another recipe's? its config sets "
                        "config.recipe)")


def stored_observation_shape(directory: str | os.PathLike) -> tuple[int, ...] | str | None:
    """The shape of ``steps/observation`` as the dataset's TFDS ``features.json`` records it, read
    without TensorFlow ("a dict of features" for observations of several fields, as JAT's); None
    when the file is missing or not laid out as TFDS writes it."""
    try:
        features = json.loads((epath.Path(directory) / "features.json").read_text())
        steps = features["featuresDict"]["features"]["steps"]["sequence"]["feature"]["featuresDict"]["features"]
        if "featuresDict" in steps["observation"]:
            return "a dict of features"
        # The feature's kind ("tensor", "image", ...) is the key of the entry that holds its shape.
        (shape,) = [kind["shape"] for kind in steps["observation"].values() if isinstance(kind, dict) and "shape" in kind]
        dimensions = shape.get("dimensions", [])
        return tuple(int(size) for size in dimensions)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def check_array_record(directory: str | os.PathLike) -> None:
    """DataError naming the conversion command for a dataset stored otherwise than as array_record
    (TFDS's default, TFRecord, as ``rlu_atari``): training reads episodes by index. Says nothing
    where dataset_info.json cannot be read (the reader names that)."""
    try:
        stored = json.loads((epath.Path(directory) / "dataset_info.json").read_text()).get("fileFormat") or "tfrecord"
    except (OSError, ValueError, AttributeError):
        return
    if stored != "array_record":
        raise _not_array_record(directory)


def _not_array_record(directory: str | os.PathLike) -> DataError:
    return DataError(f"{directory}: not stored as array_record (training reads episodes by index); convert it with "
                     f"`mgdt-convert --from-tfds {directory} --out NEW_DIR` and train on NEW_DIR")


class RldsDataset(Sequence[Episode]):
    """One RLDS dataset (a TFDS version directory) as a random-access sequence of episodes."""

    def __init__(self, directory: str | os.PathLike, split: str = "train"):
        self.directory = epath.Path(directory)
        try:
            builder = tfds.builder_from_directory(self.directory)
            self._records = builder.as_data_source(
                split=split, deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES
            )
        except NotImplementedError:
            raise _not_array_record(self.directory) from None
        except (KeyError, ValueError, OSError, json_format.ParseError) as error:  # ParseError: damaged metadata
            raise DataError(f"{self.directory}: cannot open as an RLDS dataset ({error})") from None
        features = builder.info.features
        if "steps" not in features or "observation" not in features["steps"]:
            raise DataError(f"{self.directory}: not an RLDS dataset (no steps/observation feature)")
        observation = features["steps"]["observation"]
        check_atari_frames(self.directory, tuple(observation.shape))
        self._decode_frame = observation.decode_example_np
        self._parser = example_parser.ExampleParserNp(features.get_serialized_info())
        self._has_game_metadata = "game" in features
        match = _CONFIG_NAME.match(builder.info.config_name or "")
        self._config_game = self._checked_game(match["game"]) if match else None
        if not self._has_game_metadata and self._config_game is None:
            raise DataError(
                f"{self.directory}: cannot tell the game: no `game` episode metadata and the config "
                f"name {builder.info.config_name!r} is not like 'Pong_run_1'"
            )
        if len(self._records) == 0:
            raise DataError(f"{self.directory}: the {split!r} split has no episodes")
        split_info = builder.info.splits[split]
        self.shard_paths: list[epath.Path] = list(split_info.filepaths)
        self.shard_lengths: list[int] = list(split_info.shard_lengths)

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index: int) -> Episode:  # type: ignore[override]
        if not -len(self) <= index < len(self):  # IndexError ends a for loop over the episodes
            raise IndexError(f"{self.directory}: episode {index} of {len(self)}")
        example = self._parser.parse_example(self._records[index % len(self)])
        steps = example["steps"]
        game = self._episode_game(example)
        num_steps = len(steps["action"]) - bool(len(steps["is_last"]) and steps["is_last"][-1])
        actions = np.asarray(steps["action"][:num_steps])
        full_action_ids = np.asarray(atari.minimal_to_full(game), dtype=np.int32)
        if actions.size and (actions.min() < 0 or actions.max() >= len(full_action_ids)):
            raise DataError(
                f"{self.directory}: episode {index} has action {int(actions.max())}, outside "
                f"{game}'s {len(full_action_ids)} minimal actions"
            )
        return Episode(
            game=game,
            actions=full_action_ids[actions],
            rewards=np.clip(np.asarray(steps["reward"][:num_steps], np.float32), -1.0, 1.0),
            encoded_frames=steps["observation"][:num_steps],
            decode_frame=self._decode_frame,
        )

    def _episode_game(self, example: dict) -> str:
        if not self._has_game_metadata:
            return self._config_game  # type: ignore[return-value]
        game = example["game"]
        return self._checked_game(game.decode() if isinstance(game, bytes) else str(game))

    def _checked_game(self, game: str) -> str:
        try:
            return atari.check_game(game)
        except atari.UnknownGameError as error:
            raise DataError(f"{self.directory}: {error}") from None


def shard_paths(directory: str | os.PathLike, split: str = "train") -> list[epath.Path]:
    """The shard files of a dataset's split, as its ``dataset_info.json`` names them (episodes not read)."""
    try:
        return list(tfds.builder_from_directory(epath.Path(directory)).info.splits[split].filepaths)
    except (KeyError, ValueError, OSError, json_format.ParseError) as error:
        raise DataError(f"{directory}: cannot open as an RLDS dataset ({error})") from None


def find_dataset_dirs(sources: Sequence[str | os.PathLike]) -> list[epath.Path]:
    """Every dataset version directory under the given paths, in a stable order, without duplicates
    (one folder reached by two paths is read once, under the first).

    A path is either a dataset version directory (it holds ``dataset_info.json``) or any directory
    above such directories, e.g. a TFDS data dir holding ``rlu_atari/<Game>_run_<r>/1.3.0``.
    """
    directories: list[epath.Path] = []
    for source in sources:
        if not str(source).strip():  # epath.Path("") is the current folder
            raise DataError("an empty dataset path (an unset shell variable?)")
        path = epath.Path(source).expanduser()
        if not path.is_dir():
            raise DataError(f"{path}: {'a file, not a dataset directory' if path.exists() else 'no such dataset directory'}")
        found = sorted(_dataset_dirs_below(path))
        if not found:
            raise DataError(f"{path}: holds no RLDS dataset (no {_DATASET_INFO} below it)")
        directories.extend(found)
    first_path: dict[str, epath.Path] = {}
    for directory in directories:
        first_path.setdefault(folder_of(directory), directory)
    return list(first_path.values())


def _dataset_dirs_below(path: epath.Path) -> list[epath.Path]:
    """The directories holding ``dataset_info.json`` at or below ``path``; none is looked into further,
    nor any folder a writer has not finished (``*.partial``)."""
    found = []
    for directory, subdirectories, files in path.walk(top_down=True):
        subdirectories[:] = [name for name in subdirectories if not name.endswith(".partial")]
        if _DATASET_INFO in files:
            found.append(directory)
            subdirectories.clear()
    return found


def find_datasets(sources: Sequence[str | os.PathLike]) -> list[RldsDataset]:
    """Opens every dataset under the given paths (``find_dataset_dirs``) as episodes."""
    return [RldsDataset(directory) for directory in find_dataset_dirs(sources)]


def shard_num_records(path: str | os.PathLike) -> int | None:
    """The records (episodes) of an array_record shard; None where array_record cannot read it
    (missing, damaged, another format: its reader then reports 0 records, or raises a bare
    RuntimeError, on opening or on closing a file cut short)."""
    try:
        reader = ArrayRecordReader(str(path))
    except RuntimeError:  # "should be at least 64KB big": an empty or truncated copy
        return None
    try:
        return reader.num_records() if reader.ok() else None
    finally:
        with contextlib.suppress(RuntimeError):  # "chunk header hash mismatch": a file cut short
            reader.close()
