"""The window index: every step of an RLDS dataset, readable one window at a time.

Reading a training window from the RLDS episodes means parsing its whole episode record (up to
27,000 steps in the DQN Replay Dataset). The window index is derived from those episodes once, so
that a window costs two small reads and the decompression of its own frames, whatever the length
of its episode. The RLDS episodes stay the dataset of record; the index is rebuilt from them
(``mgdt-index``) whenever they change, and a reader refuses an index that no longer matches them.

Layout, in ``<dataset>/window_index/``, one part per RLDS shard (episodes never span shards):

* ``<shard>.steps``: the shard's frames, each the raw 84x84 uint8 image as one zstd frame (level 3,
  about 2-3x smaller than the PNG in the shard and 10x faster to decode), in step order, then one
  ``STEP_RECORD`` (24 bytes) per step. Only steps that carry an action are stored: an RLDS
  episode's final ``is_last`` observation is left out, as it never belongs to a window.
* ``<shard>.json``: written after its ``.steps`` file: the shard's fingerprint, its game and the
  part's counts and sizes.
* ``index.json``: written last, when every part is current: the hash of ``dataset_info.json``
  and every part's entry. Without it (a build that did not finish) there is no index.

A shard's fingerprint is its file name, its size and the SHA-256 of its last 128 KiB. An
array_record file ends with the offset of every chunk (one per episode in RLDS shards), then a
postscript padded to a 64 KiB block, so the last 128 KiB hold that whole chunk index for shards of
up to a few thousand episodes: a shard rewritten with other episodes, or the same ones in another
order, differs there even at the same size. (An edit inside an episode that keeps every chunk's
compressed size would not show; rebuild by hand after editing shards in place.) Copying a dataset
with its index keeps both valid; file times are not used, since copies change them.

Each step record holds the byte offset and size of the step's frame, its return-to-go (float32,
the sum of the clipped rewards from the step to the episode's end, ``tokens.returns_to_go``), its
clipped reward, its action (full 18-action-set id) and its position in the episode (capped at
65,535), which tells how many of the steps before it belong to the same episode. A window ending
at step ``t`` reads the records ``t - S + 1 .. t`` of its part, then the bytes of their frames, both
contiguous. All files go through ``etils.epath``, the file API of TFDS, so an index in a ``gs://``
bucket reads like a local one.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import tqdm
import zstandard
from etils import epath

from mgdt_jax.core import files, processes
from mgdt_jax.recipes.mgdt import tokens
from mgdt_jax.recipes.mgdt import windows
from mgdt_jax.recipes.mgdt.rlds_source import (DataError, Episode, RldsDataset, check_array_record, check_atari_frames,
                                               shard_paths, shard_num_records, stored_observation_shape)

FORMAT_VERSION = 1
INDEX_DIR = "window_index"
MANIFEST = "index.json"
STEPS_SUFFIX = ".steps"
ENTRY_SUFFIX = ".json"
REBUILD_COMMAND = "mgdt-index"
STEP_RECORD = np.dtype([
    ("frame_offset", "<u8"),  # byte offset of the step's zstd frame in its .steps file
    ("frame_size", "<u4"),
    ("return_to_go", "<f4"),
    ("reward", "<f4"),  # clipped to [-1, 1]
    ("action", "<u2"),  # full 18-action-set id
    ("step_in_episode", "<u2"),  # capped at MAX_STEP_IN_EPISODE
])
MAX_STEP_IN_EPISODE = np.iinfo(np.uint16).max
FRAME_BYTES = int(np.prod(tokens.FRAME_SHAPE))
ZSTD_LEVEL = 3
FINGERPRINT_TAIL_BYTES = 1 << 17
_DATASET_INFO = "dataset_info.json"
_FINGERPRINT_THREADS = 32  # shards fingerprinted at once (each costs a round trip on a bucket)


def index_dir(dataset_dir: str | os.PathLike) -> epath.Path:
    """Where a dataset's window index lives: ``<dataset_dir>/window_index``."""
    return epath.Path(dataset_dir) / INDEX_DIR


def rebuild_hint(dataset_dir: str | os.PathLike) -> str:
    return f"`{REBUILD_COMMAND} {dataset_dir}`"


def part_rebuild_hint(part: Part) -> str:
    """The command that rebuilds the index a part file belongs to (``<dataset>/window_index/<part>``)."""
    return rebuild_hint(epath.Path(part.path).parent.parent)


def shard_fingerprint(path: epath.Path) -> dict[str, Any]:
    """Name, size and SHA-256 of the last 128 KiB of a shard file (see the module docstring)."""
    with path.open("rb") as file:
        size = file.seek(0, os.SEEK_END)
        file.seek(max(0, size - FINGERPRINT_TAIL_BYTES))
        tail = file.read()
    return {"name": path.name, "size": size, "tail_sha256": hashlib.sha256(tail).hexdigest()}


def _fingerprints(paths: Sequence[epath.Path]) -> list[dict[str, Any]]:
    try:
        with concurrent.futures.ThreadPoolExecutor(min(_FINGERPRINT_THREADS, max(len(paths), 1))) as pool:
            return list(pool.map(shard_fingerprint, paths))
    except OSError as error:
        raise DataError(f"cannot read a shard: {error}") from None


def _dataset_info_sha256(dataset_dir: epath.Path) -> str:
    return hashlib.sha256((dataset_dir / _DATASET_INFO).read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------------
# Writing


class PartWriter:
    """Writes one shard's ``.steps`` file: episodes are added in order, frames streamed to the file.

    The step records are kept until ``close`` (24 bytes per step of the shard: 24 MB for the 1M
    steps of a DQN Replay checkpoint) and appended after the frames. The file is written under a
    temporary name and renamed by ``close``; ``abort`` removes it.
    """

    def __init__(self, path: epath.Path):
        self.path = path
        self._partial = path.with_name(path.name + ".partial")
        self._file = self._partial.open("wb")
        self._compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
        self._records: list[np.ndarray] = []
        self._frame_bytes = 0
        self.game: str | None = None
        self.episodes = 0

    def add_episode(self, game: str, actions: np.ndarray, rewards: np.ndarray, frames: Iterable[np.ndarray]) -> None:
        """One episode's steps that carry an action: ``actions`` [T] full 18-action-set ids, ``rewards``
        [T] (clipped here to [-1, 1]), ``frames`` T uint8 84x84 images (any shape of 7,056 pixels)."""
        if self.game not in (None, game):
            raise DataError(f"{self.path.name}: its shard holds episodes of {self.game} and {game}; one game per shard")
        self.game = game
        self.episodes += 1
        num_steps = len(actions)
        if num_steps == 0:
            return
        rewards = np.clip(np.asarray(rewards, np.float32), -1.0, 1.0)
        records = np.zeros(num_steps, STEP_RECORD)
        sizes = np.zeros(num_steps, np.int64)
        count = 0
        for count, frame in enumerate(frames, start=1):
            frame = np.asarray(frame)
            if count > num_steps or frame.dtype != np.uint8 or frame.size != FRAME_BYTES:
                raise DataError(f"{self.path.name}: step {count - 1} of episode {self.episodes - 1} is not one "
                                f"uint8 84x84 frame per step ({frame.dtype} {frame.shape})")
            compressed = self._compressor.compress(np.ascontiguousarray(frame).tobytes())
            self._file.write(compressed)
            sizes[count - 1] = len(compressed)
        if count != num_steps:
            raise DataError(f"{self.path.name}: episode {self.episodes - 1} has {count} frames for {num_steps} steps")
        records["frame_offset"] = self._frame_bytes + np.cumsum(sizes) - sizes
        records["frame_size"] = sizes
        records["return_to_go"] = tokens.returns_to_go(rewards)
        records["reward"] = rewards
        records["action"] = actions
        records["step_in_episode"] = np.minimum(np.arange(num_steps), MAX_STEP_IN_EPISODE)
        self._records.append(records)
        self._frame_bytes += int(sizes.sum())

    def close(self) -> dict[str, Any]:
        """Appends the step records, renames the file into place; returns the part's entry (no fingerprint)."""
        records = np.concatenate(self._records) if self._records else np.zeros(0, STEP_RECORD)
        self._file.write(records.tobytes())
        self._file.close()
        self._partial.replace(self.path)
        return {
            "file": self.path.name, "game": self.game, "episodes": self.episodes, "steps": len(records),
            "frame_bytes": self._frame_bytes, "file_size": self._frame_bytes + records.nbytes,
        }

    def abort(self) -> None:
        self._file.close()
        self._partial.unlink(missing_ok=True)


def write_entry(directory: epath.Path, shard_path: epath.Path, part: dict[str, Any]) -> dict[str, Any]:
    """Writes a part's ``.json`` entry (after its ``.steps`` file) with the shard's fingerprint."""
    entry = {"shard": shard_fingerprint(shard_path), **part}
    files.write_json(directory / (shard_path.name + ENTRY_SUFFIX), entry)
    return entry


def _read_entry(directory: epath.Path, shard_name: str) -> dict[str, Any] | None:
    try:
        entry = json.loads((directory / (shard_name + ENTRY_SUFFIX)).read_text())
        steps_file = directory / entry["file"]
        return entry if steps_file.exists() and steps_file.stat().length == entry["file_size"] else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def build_part(dataset: RldsDataset, shard: int, directory: epath.Path,
               on_episode: Callable[[int], None] = lambda steps: None) -> dict[str, Any]:
    """Writes the part of one shard of ``dataset`` from its episodes (frames decoded, then recompressed)."""
    shard_path = dataset.shard_paths[shard]
    first = sum(dataset.shard_lengths[:shard])
    _check_episode_count(shard_path, dataset.shard_lengths[shard])
    writer = PartWriter(directory / (shard_path.name + STEPS_SUFFIX))
    try:
        for index in range(first, first + dataset.shard_lengths[shard]):
            try:
                episode = dataset[index]
            except DataError:
                raise
            except (RuntimeError, ValueError, OSError) as error:  # what array_record and the parser raise
                raise DataError(f"{shard_path}: cannot read episode {index - first} ({error})") from None
            writer.add_episode(episode.game, episode.actions, episode.rewards,
                               _decoded_frames(episode, shard_path, index - first))
            on_episode(len(episode))
    except BaseException:
        writer.abort()
        raise
    return write_entry(directory, shard_path, writer.close())


def _check_episode_count(shard_path: epath.Path, expected: int) -> None:
    """DataError unless the shard holds the episodes dataset_info.json counts for it: episodes are read
    by their index over all shards, so a shard with another count (replaced by another shard, cut
    short) would hand out other shards' episodes under its name."""
    found = shard_num_records(shard_path)
    if found is None:
        raise DataError(f"{shard_path}: not a readable array_record shard (damaged or replaced); convert the logs again")
    if found != expected:
        raise DataError(f"{shard_path}: holds {found} episodes where dataset_info.json counts {expected}: replaced or "
                        "damaged; convert the logs again")


def _decoded_frames(episode: Episode, shard_path: epath.Path, number: int) -> Iterator[np.ndarray]:
    """The episode's frames decoded one at a time (a 27,000-step episode decoded at once is 190 MB)."""
    for step, frame in enumerate(episode.encoded_frames):
        try:
            yield episode.decode_frame(frame)
        except (AttributeError, ValueError, RuntimeError) as error:  # OpenCV gives None for non-images
            raise DataError(f"{shard_path}: episode {number}, step {step}: not a decodable frame ({error})") from None


@dataclasses.dataclass(frozen=True)
class IndexReport:
    directory: epath.Path
    episodes: int
    steps: int
    parts_built: int
    parts_current: int  # parts an earlier build or the conversion wrote, found up to date
    seconds: float


_worker_dataset: RldsDataset | None = None


def _open_in_worker(dataset_dir: str) -> None:
    global _worker_dataset
    _worker_dataset = RldsDataset(dataset_dir)


def _build_in_worker(shard: int, directory: str) -> dict[str, Any]:
    assert _worker_dataset is not None
    return build_part(_worker_dataset, shard, epath.Path(directory))


def _remove_orphans(directory: epath.Path, shard_names: set[str]) -> None:
    """Removes the parts of shards the dataset no longer has, and files of builds that did not finish."""
    for path in directory.iterdir():
        name = path.name
        if name.endswith(".partial"):
            path.unlink(missing_ok=True)
        elif name != MANIFEST and name.removesuffix(STEPS_SUFFIX).removesuffix(ENTRY_SUFFIX) not in shard_names:
            path.unlink(missing_ok=True)


def build_index(dataset_dir: str | os.PathLike, *, workers: int = 1, progress: bool = False) -> IndexReport:
    """Builds (or brings up to date) the window index of one RLDS dataset; returns what it did.

    Parts whose entry matches their shard's fingerprint are kept; the others are built from the
    episodes, in ``workers`` processes (one shard each at a time). ``index.json`` is removed before
    anything is rebuilt and written last. Raises DataError for a dataset that cannot be indexed.
    """
    started = time.perf_counter()
    dataset = RldsDataset(dataset_dir)
    directory = index_dir(dataset.directory)
    directory.mkdir(parents=True, exist_ok=True)
    fingerprints = _fingerprints(dataset.shard_paths)
    entries = [_read_entry(directory, fingerprint["name"]) for fingerprint in fingerprints]
    stale = [shard for shard, (entry, fingerprint) in enumerate(zip(entries, fingerprints))
             if entry is None or entry["shard"] != fingerprint]
    if stale:
        (directory / MANIFEST).unlink(missing_ok=True)
    _remove_orphans(directory, {fingerprint["name"] for fingerprint in fingerprints})
    total_episodes = sum(dataset.shard_lengths[shard] for shard in stale)
    with tqdm.tqdm(total=total_episodes, unit="episode", desc=f"index {dataset.directory.name}",
                   disable=not progress or not stale) as bar:
        steps = 0

        def count(episode_steps: int) -> None:
            nonlocal steps
            steps += episode_steps
            bar.update()
            bar.set_postfix_str(f"{steps:,} steps, {steps / (time.perf_counter() - started):,.0f} steps/s")

        if workers <= 1 or len(stale) <= 1:
            for shard in stale:
                entries[shard] = build_part(dataset, shard, directory, count)
        else:
            with processes.spawn_pool(min(workers, len(stale)), _open_in_worker, (str(dataset.directory),)) as pool:
                futures = {pool.submit(_build_in_worker, shard, str(directory)): shard for shard in stale}
                for future in concurrent.futures.as_completed(futures):
                    entries[futures[future]] = entry = future.result()
                    steps += entry["steps"]
                    bar.update(entry["episodes"])
                    bar.set_postfix_str(f"{steps:,} steps, {steps / (time.perf_counter() - started):,.0f} steps/s")
    manifest = {
        "format": FORMAT_VERSION,
        "dataset_info_sha256": _dataset_info_sha256(dataset.directory),
        "frame_codec": "zstd", "frame_shape": list(tokens.FRAME_SHAPE),
        "step_record": [[name, STEP_RECORD[name].str] for name in STEP_RECORD.names],
        "parts": entries,
    }
    files.write_json(directory / MANIFEST, manifest)
    return IndexReport(directory, sum(e["episodes"] for e in entries), sum(e["steps"] for e in entries),
                       len(stale), len(entries) - len(stale), time.perf_counter() - started)


# ---------------------------------------------------------------------------------------------
# Reading


@dataclasses.dataclass(frozen=True)
class Part:
    """One shard's steps in the index."""

    path: str  # the .steps file
    game: str | None  # None for a shard without episodes
    episodes: int
    steps: int
    records_offset: int  # where the step records start (after the frames)
    file_size: int


@dataclasses.dataclass(frozen=True)
class WindowIndex:
    """A dataset's window index, checked against the dataset's shards when opened (``open_index``)."""

    dataset_dir: epath.Path
    parts: tuple[Part, ...]

    @property
    def num_episodes(self) -> int:
        return sum(part.episodes for part in self.parts)


def open_index(dataset_dir: str | os.PathLike) -> WindowIndex:
    """Opens a dataset's window index after checking it was built from the dataset as it is now.

    Reads ``index.json``, ``dataset_info.json`` and the last 128 KiB of every shard (in parallel;
    no episode is read). Raises DataError, naming the dataset and the command that rebuilds the
    index, when it is missing, of another format, or stale.
    """
    dataset_dir = epath.Path(dataset_dir)
    manifest_path = index_dir(dataset_dir) / MANIFEST
    hint = rebuild_hint(dataset_dir)
    try:
        manifest = json.loads(manifest_path.read_text())
    except FileNotFoundError:
        try:  # a folder the index command cannot read either: building an index would not help
            json.loads((dataset_dir / _DATASET_INFO).read_text())
        except (OSError, ValueError) as error:
            raise DataError(f"{dataset_dir / _DATASET_INFO}: unreadable ({files.first_line(error)}): not an RLDS "
                            "dataset, or a damaged one") from None
        check_array_record(dataset_dir)  # TFRecord (rlu_atari): convert first; mgdt-index would say so
        shape = stored_observation_shape(dataset_dir)
        if shape is not None:  # mgdt-index cannot build an index of what is not Atari frames
            check_atari_frames(dataset_dir, shape)
        raise DataError(f"{dataset_dir}: has no window index ({manifest_path} is missing); build it once with {hint}") from None
    except (OSError, ValueError) as error:
        raise DataError(f"{manifest_path}: unreadable ({error}); rebuild it with {hint}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_VERSION:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise DataError(f"{dataset_dir}: its window index has format {found}, this version reads "
                        f"{FORMAT_VERSION}; rebuild it with {hint}")
    directory = index_dir(dataset_dir)
    try:
        reason = _staleness(dataset_dir, manifest)
        parts = tuple(Part(os.fspath(directory / entry["file"]), entry["game"], entry["episodes"], entry["steps"],
                           entry["frame_bytes"], entry["file_size"]) for entry in manifest["parts"])
    except (KeyError, TypeError) as error:
        raise DataError(f"{manifest_path}: not a window index manifest (no {error}); rebuild it with {hint}") from None
    if reason:
        raise DataError(f"{dataset_dir}: the window index is stale ({reason}); rebuild it with {hint}")
    return WindowIndex(dataset_dir, parts)


def _staleness(dataset_dir: epath.Path, manifest: dict[str, Any]) -> str | None:
    """Why the manifest no longer describes the dataset, or None."""
    if manifest.get("dataset_info_sha256") != _dataset_info_sha256(dataset_dir):
        return f"{_DATASET_INFO} changed since it was built"
    recorded = [entry["shard"] for entry in manifest["parts"]]
    paths = shard_paths(dataset_dir)
    if [path.name for path in paths] != [shard["name"] for shard in recorded]:
        return "the dataset's shards are not those it was built from"
    for shard, now in zip(recorded, _fingerprints(paths)):
        if shard != now:
            return f"shard {shard['name']} changed since it was built"
    return None


class StepReader:
    """Reads windows from the ``.steps`` files of a window index.

    Each thread keeps its own open files (``max_open_files``, least recently used closed first)
    and zstd decompressor; pickling (to worker processes) drops them. A file is checked against the
    size its entry records when it is opened.
    """

    def __init__(self, max_open_files: int = 64):
        self._max_open_files = max_open_files
        self._local = threading.local()

    def __getstate__(self) -> dict[str, Any]:
        return {"max_open_files": self._max_open_files}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["max_open_files"])

    def _file(self, part: Part):
        files = getattr(self._local, "files", None)
        if files is None:
            files = self._local.files = collections.OrderedDict()
        file = files.get(part.path)
        if file is not None:
            files.move_to_end(part.path)
            return file
        try:
            file = epath.Path(part.path).open("rb")
            size = file.seek(0, os.SEEK_END)
        except FileNotFoundError as error:
            raise DataError(f"{part.path}: cannot read the window index ({error}); rebuild it with {part_rebuild_hint(part)}") from None
        except OSError as error:  # permissions, open files, a remote store: a rebuild would not help
            raise DataError(f"{part.path}: cannot read the window index ({error})") from None
        if size != part.file_size:
            file.close()
            raise DataError(f"{part.path}: {size} bytes where the window index recorded {part.file_size}; rebuild "
                            f"it with {part_rebuild_hint(part)}")
        files[part.path] = file
        if len(files) > self._max_open_files:
            files.popitem(last=False)[1].close()
        return file

    def read(self, parts: Sequence[Part], ends: Sequence[int], num_steps: int) -> dict[str, np.ndarray]:
        """The windows of ``num_steps`` steps ending at step ``ends[i]`` of ``parts[i]``, in the batch contract."""
        count = len(ends)
        observations = np.zeros((count, num_steps, *tokens.FRAME_SHAPE), np.uint8)
        flat_frames = observations.reshape(count * num_steps, FRAME_BYTES)
        values = np.zeros((count * num_steps, 3), np.float64)  # return-to-go, reward, action of each slot
        step_mask = np.zeros(count * num_steps, bool)
        decompress = self._decompressor().decompress
        for row, (part, end) in enumerate(zip(parts, ends)):
            file = self._file(part)
            first = max(0, end - num_steps + 1)
            file.seek(part.records_offset + first * STEP_RECORD.itemsize)
            records = np.frombuffer(_read_exactly(file, part, (end - first + 1) * STEP_RECORD.itemsize),
                                    STEP_RECORD).tolist()
            real = min(len(records), records[-1][5] + 1)  # the steps of the window's own episode
            records = records[len(records) - real:]
            start = records[0][0]
            file.seek(start)
            frames = memoryview(_read_exactly(file, part, records[-1][0] + records[-1][1] - start))
            slot = row * num_steps + num_steps - real
            for offset, size, return_to_go, reward, action, _ in records:
                try:
                    frame = decompress(frames[offset - start:offset - start + size])
                except zstandard.ZstdError as error:  # bytes changed in place: the file's size still matches
                    raise DataError(f"{part.path}: a frame cannot be decompressed ({error}): damaged; delete it and "
                                    f"rebuild the window index with {part_rebuild_hint(part)}") from None
                if len(frame) != FRAME_BYTES:
                    raise DataError(f"{part.path}: a frame of {len(frame)} bytes, not {FRAME_BYTES}: damaged; delete it "
                                    f"and rebuild the window index with {part_rebuild_hint(part)}")
                flat_frames[slot] = np.frombuffer(frame, np.uint8)
                values[slot] = return_to_go, reward, action
                step_mask[slot] = True
                slot += 1
        values = values.reshape(count, num_steps, 3)
        return windows.tokenize(observations, values[..., 0], values[..., 2].astype(np.int32), values[..., 1],
                                step_mask.reshape(count, num_steps))

    def _decompressor(self) -> zstandard.ZstdDecompressor:
        decompressor = getattr(self._local, "decompressor", None)
        if decompressor is None:
            decompressor = self._local.decompressor = zstandard.ZstdDecompressor()
        return decompressor


def _read_exactly(file, part: Part, size: int) -> bytes:
    data = file.read(size)
    if len(data) != size:
        raise DataError(f"{part.path}: ends early; rebuild the window index with {part_rebuild_hint(part)}")
    return data
