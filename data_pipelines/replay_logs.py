"""The DQN Replay on-disk format: writing logs the way Dopamine did (2019, and its 2021 and 2022
changes), and reading them back as temporally ordered episodes.

A run directory (`<Game>/<run>/replay_logs/`) holds one dump of a circular replay buffer of capacity
C per checkpoint N, six gzip'd `.npy` files each:

    $store$_observation_ckpt.N.gz  uint8 [C, 84, 84]   one preprocessed frame per row
    $store$_action_ckpt.N.gz       int32 [C]           index into the game's minimal action set
    $store$_reward_ckpt.N.gz       float32 [C]         reward clipped to [-1, 1]
    $store$_terminal_ckpt.N.gz     uint8 [C]           1 on the last row of an episode (see layouts)
    add_count_ckpt.N.gz            int64 []            rows added so far (the cursor, final dump)
    invalid_range_ckpt.N.gz        int64 [5]           rows around the cursor

and, in the 2022 layout, a seventh: `episode_end_indices_ckpt.N.gz`, a pickled set of the buffer
slots that end an episode.

Row t is (o_t, a_t, r_t, terminal_t); the observation after the last action is never stored, and
every episode is preceded by 3 all-zero padding rows (zero frame, action 0, reward 0, terminal 0).

Layouts (`LAYOUTS`), all read by `RunReader`:

* "2019" (the DQN Replay Dataset; Dopamine `circular_replay_buffer.py` of 2019): every episode end,
  game over or the time limit, is logged as terminal = 1; padding follows terminal rows.
* "2021" (Dopamine c443e88, Jan 2021, with its JAX agents): an end by the time limit is logged with
  terminal = 0 and passed to the buffer as `episode_end`; padding follows every episode end. The
  buffer's end set is private, so no file shows those ends.
* "2022" (Dopamine 9e8c66a, Apr 2022, to date): as 2021, and the end set is a public member, so
  each dump also pickles it to `episode_end_indices_ckpt.N.gz` (a set of NumPy int64 slots).

Why reading is not a plain loop over rows:

* A dump is taken when `add_count % C == C - 1`, so the oldest row of dump k >= 1 sits in slot C-1:
  temporal order is [C-1, 0, 1, ..., C-2]. Dump 0 never wrote slot C-1.
* The final dump is partial: its add_count is the cursor c, its new rows are slot C-1 and slots
  0..c-1, and the rest are stale copies of the previous dump.
* The trigger is checked once per `add()`, which can append 4 rows (3 padding + 1); when the padding
  straddles the trigger a whole chunk of C rows is never dumped. Consecutive full dumps whose
  add_count differ by more than C are therefore not stitched together; nor is a final dump whose
  stale slots no longer match the previous dump (the chunk before it was skipped).
* Episodes run across dumps. An episode belongs to the checkpoint holding its first real row; its
  tail is read from the following checkpoints while they are contiguous.
* An episode ends at a terminal row, at a slot of episode_end_indices, or, when neither marks it
  (a time limit in the 2021 layout), after exactly `max_episode_steps` rows. Every end must be
  followed by the 3 padding rows (checked on actions, rewards, terminals and frames); padding-like
  rows inside an episode, or a real row where padding must be, stop the reading with an error that
  names the row: the logs' time limit is not `max_episode_steps`. So no episode ever holds a
  padding row and none longer than `max_episode_steps` is read.

Memory stays bounded by one episode: observations are decompressed as a stream and only the rows of
the episode at hand are kept (a 1M-row dump holds 7 GB of frames).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import gzip
import io
import os
import pickle
import re
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

DEFAULT_CAPACITY = 1_000_000
DEFAULT_MAX_EPISODE_STEPS = 27_000  # Dopamine's max_steps_per_episode, in agent steps
PADDING_ROWS = 3  # stack_size - 1 zero rows before every episode
FRAME_SHAPE = (84, 84)
FRAME_BYTES = FRAME_SHAPE[0] * FRAME_SHAPE[1]
LAYOUTS = ("2019", "2021", "2022")  # see the module docstring
EPISODE_END_INDICES = "episode_end_indices"
_INVALID_RANGE_SIZE = 5  # stack_size + update_horizon
_GZIP_LEVEL = 1  # the format does not depend on it; level 1 makes 1M-row dumps quick to write
_STREAM_CHUNK_ROWS = 2048  # rows inflated per read while streaming observations (~14 MB)
_PICKLE_PROTOCOL = 4  # what Dopamine's plain pickle.dump wrote on Python 3.8-3.13
_PICKLED_BYTES_PER_SLOT = 64  # a pickled NumPy int64 in a set takes ~30 bytes

STORE_DTYPES = {
    "observation": np.dtype(np.uint8),
    "action": np.dtype(np.int32),
    "reward": np.dtype(np.float32),
    "terminal": np.dtype(np.uint8),
}
ROW_BYTES = sum(dtype.itemsize * (FRAME_BYTES if name == "observation" else 1) for name, dtype in STORE_DTYPES.items())
_FILE_NAMES = tuple(f"$store$_{name}" for name in STORE_DTYPES) + ("add_count", "invalid_range")
_SUFFIX_PATTERN = re.compile(r"^(?P<name>.+)_ckpt\.(?P<suffix>\d+)\.gz$")


class ReplayLogError(ValueError):
    """Logs that cannot be read; the message names the file and the fault."""


def log_file(log_dir: Path, name: str, suffix: int) -> Path:
    """`$store$_observation` and 3 -> log_dir/$store$_observation_ckpt.3.gz."""
    return Path(log_dir) / f"{name}_ckpt.{suffix}.gz"


def _write_gzip(path: Path, write) -> None:
    """Calls write(file) on a gzip stream; written under a temporary name so a crash leaves no
    file that looks complete."""
    partial = path.with_name(path.name + ".partial")
    with open(partial, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=_GZIP_LEVEL) as f:
        write(f)
    os.replace(partial, path)


def _write_array(path: Path, array: np.ndarray) -> None:
    """np.save into gzip, as Dopamine did."""
    _write_gzip(path, lambda f: np.save(f, array, allow_pickle=False))


def _invalid_range(cursor: int, capacity: int) -> np.ndarray:
    """Rows whose 4-frame stack or next row straddles the cursor (Dopamine's invalid_range)."""
    return np.array([(cursor - 1 + i) % capacity for i in range(_INVALID_RANGE_SIZE)], dtype=np.int64)


class LoggedReplayBuffer:
    """A circular buffer that dumps itself like batch_rl's logged buffer over Dopamine's add() of
    the given layout (see the module docstring).

    `add()` inserts 3 zero rows first when an episode begins (2019: the buffer is empty or the
    previous row was terminal; 2021/2022: the previous add ended an episode), and the dump trigger
    is checked once afterwards, so chunks can be skipped exactly as in the dataset.
    """

    def __init__(self, log_dir: Path, capacity: int = DEFAULT_CAPACITY, layout: str = "2019"):
        if capacity < PADDING_ROWS + 2:
            raise ValueError(f"capacity {capacity} is too small: at least {PADDING_ROWS + 2} rows")
        if layout not in LAYOUTS:
            raise ValueError(f"layout {layout!r}: expected one of {', '.join(LAYOUTS)}")
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.capacity = capacity
        self.layout = layout
        self.add_count = 0
        self.num_dumps = 0
        self._store = {name: np.zeros((capacity, *FRAME_SHAPE) if name == "observation" else capacity, dtype)
                       for name, dtype in STORE_DTYPES.items()}
        self._invalid_range = _invalid_range(0, capacity)
        self._next_row_starts_episode = True
        # Dopamine's cursor() is add_count (a 0-d array) % capacity: NumPy int64 slots, pickled as such.
        self._episode_end_slots: set[np.int64] = set()

    def _cursor(self) -> int:
        return self.add_count % self.capacity

    def add(self, observation: np.ndarray, action: int, reward: float, terminal: bool,
            episode_end: bool = False) -> None:
        """One agent step: `terminal` for game over, `episode_end` for any end (game over or the
        time limit). The 2019 layout logs every end as terminal, as Dopamine's 2019 runner did."""
        if self.layout == "2019":
            terminal = terminal or episode_end
            starts = self.add_count == 0 or self._store["terminal"][self._cursor() - 1] == 1
        else:
            starts = self._next_row_starts_episode
        if starts:
            for _ in range(PADDING_ROWS):
                self._episode_end_slots.discard(np.int64(self._cursor()))
                self._add(np.zeros(FRAME_SHAPE, np.uint8), 0, 0.0, False)
        self._next_row_starts_episode = terminal or episode_end
        if self._next_row_starts_episode:
            self._episode_end_slots.add(np.int64(self._cursor()))
        else:
            self._episode_end_slots.discard(np.int64(self._cursor()))
        self._add(observation, action, reward, terminal)
        if self.add_count % self.capacity == self.capacity - 1:
            self._dump(self.add_count)

    def _add(self, observation: np.ndarray, action: int, reward: float, terminal: bool) -> None:
        cursor = self._cursor()
        self._store["observation"][cursor] = observation
        self._store["action"][cursor] = action
        self._store["reward"][cursor] = reward
        self._store["terminal"][cursor] = terminal
        self.add_count += 1
        self._invalid_range = _invalid_range(self._cursor(), self.capacity)

    def log_final_buffer(self) -> None:
        """The final partial dump: add_count is replaced by the cursor, as batch_rl did."""
        self._dump(self._cursor())

    def _dump(self, add_count: int) -> None:
        for name, array in self._store.items():
            _write_array(log_file(self.log_dir, f"$store$_{name}", self.num_dumps), array)
        _write_array(log_file(self.log_dir, "invalid_range", self.num_dumps), self._invalid_range)
        if self.layout == "2022":
            slots = set(self._episode_end_slots)
            _write_gzip(log_file(self.log_dir, EPISODE_END_INDICES, self.num_dumps),
                        lambda f: pickle.dump(slots, f, protocol=_PICKLE_PROTOCOL))
        # add_count last: a checkpoint is complete once all its files exist.
        _write_array(log_file(self.log_dir, "add_count", self.num_dumps), np.array(add_count, np.int64))
        self.num_dumps += 1


# ---------------------------------------------------------------------------------------------
# Reading


def list_checkpoints(log_dir: Path) -> list[int]:
    """Checkpoint suffixes present in a replay_logs directory, each checked to have all six files,
    and the seventh (episode_end_indices) in all of them or in none."""
    log_dir = Path(log_dir)
    if not log_dir.is_dir():
        raise ReplayLogError(f"{log_dir}: not a directory")
    found: dict[int, set[str]] = {}
    for path in log_dir.iterdir():
        match = _SUFFIX_PATTERN.match(path.name)
        if match:
            found.setdefault(int(match["suffix"]), set()).add(match["name"])
    if not found:
        raise ReplayLogError(f"{log_dir}: no replay logs (*_ckpt.N.gz files) found")
    with_end_indices = sorted(suffix for suffix, names in found.items() if EPISODE_END_INDICES in names)
    for suffix, names in sorted(found.items()):
        for name in _FILE_NAMES + ((EPISODE_END_INDICES,) if with_end_indices else ()):
            if name not in names:
                also = f"; checkpoint {with_end_indices[0]} has one" if name == EPISODE_END_INDICES else ""
                raise ReplayLogError(
                    f"{log_file(log_dir, name, suffix)}: missing (checkpoint {suffix} is incomplete{also})")
    return sorted(found)


@contextlib.contextmanager
def _gzip_errors_as(path: Path) -> Iterator[None]:
    """Turns the ways a gzip'd .npy can be broken into one ReplayLogError naming the file."""
    try:
        yield
    except ReplayLogError:
        raise
    except (OSError, EOFError, zlib.error, ValueError) as error:
        raise ReplayLogError(f"{path}: unreadable ({type(error).__name__}: {error})") from error


def _load_npy(path: Path) -> np.ndarray:
    """The array of a gzip'd .npy, read to the end of the stream: only there does gzip check the
    CRC-32 and length that catch a flipped bit which still inflates (np.load stops at the array's end)."""
    with _gzip_errors_as(path), gzip.open(path, "rb") as f:
        array = np.load(f, allow_pickle=False)
        if f.read(1):
            raise ReplayLogError(f"{path}: unreadable (bytes after the array)")
    return array


def _load_array(path: Path, dtype: np.dtype, shape: tuple[int, ...] | None, rows_of: Path | None = None) -> np.ndarray:
    """The array of ``path``, checked: ``shape`` None takes any shape (the caller checks it);
    ``rows_of`` names the file whose row count ``shape`` was taken from."""
    array = _load_npy(path)
    if array.dtype != dtype or (shape is not None and array.shape != shape):
        expected = "[rows]" if shape is None else str(list(shape)) + (f" (the rows of {rows_of.name})" if rows_of else "")
        raise ReplayLogError(f"{path}: expected {dtype} {expected}, found {array.dtype} {list(array.shape)}")
    return array


class _EpisodeEndUnpickler(pickle.Unpickler):
    """Admits only what Dopamine pickles into episode_end_indices: a set whose items are NumPy
    integer scalars (`numpy.core` before NumPy 2, `numpy._core` after) or ints. Anything else, such
    as a callable that would run code, is refused before it is looked up."""

    def find_class(self, module: str, name: str):
        if (module, name) in (("builtins", "set"), ("__builtin__", "set")):
            return set
        if (module, name) == ("numpy", "dtype"):
            return _integer_dtype
        if name == "scalar" and module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            return _integer_scalar
        raise pickle.UnpicklingError(f"refusing {module}.{name}: only a set of integers is expected")


def _integer_dtype(spec: object, align: bool = False, copy: bool = False) -> np.dtype:
    dtype = np.dtype(spec, align=False, copy=True) if isinstance(spec, str) else None
    if dtype is None or dtype.kind not in "iu":
        raise pickle.UnpicklingError(f"refusing dtype {spec!r}: only integer scalars are expected")
    return dtype


def _integer_scalar(dtype: object, data: object = None) -> int:
    if not (isinstance(dtype, np.dtype) and dtype.kind in "iu" and isinstance(data, bytes)
            and len(data) == dtype.itemsize):
        raise pickle.UnpicklingError("refusing a NumPy scalar that is not an integer")
    return int(np.frombuffer(data, dtype)[0])


def load_episode_end_slots(path: Path, capacity: int) -> np.ndarray:
    """The buffer slots listed in an episode_end_indices file, sorted int64 [k], each in [0, C).

    The file is a pickle, so it is read by a restricted unpickler (`_EpisodeEndUnpickler`) and
    its size is bounded by the capacity; anything else is a ReplayLogError naming the file.
    """
    limit = _PICKLED_BYTES_PER_SLOT * capacity + 1024
    with _gzip_errors_as(path), gzip.open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ReplayLogError(f"{path}: more than {limit} bytes, too large for a set of {capacity} slots")
    try:
        value = _EpisodeEndUnpickler(io.BytesIO(data)).load()
    except Exception as error:  # any fault of untrusted bytes (bad opcodes, memo, types) is one error
        raise ReplayLogError(f"{path}: not a pickled set of slots ({type(error).__name__}: {error})") from None
    if not isinstance(value, set) or not all(type(item) is int for item in value):
        raise ReplayLogError(f"{path}: expected a pickled set of integer slots, found {type(value).__name__}")
    slots = np.array(sorted(value), np.int64)
    if len(slots) and (slots[0] < 0 or slots[-1] >= capacity):
        raise ReplayLogError(f"{path}: slot {slots[0] if slots[0] < 0 else slots[-1]} is outside [0, {capacity})")
    return slots


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """The small arrays of one dump, rows in temporal order (observations stay on disk)."""

    log_dir: Path
    suffix: int
    capacity: int
    add_count: int
    slots: np.ndarray  # [n] int64: buffer slot of each temporal row
    actions: np.ndarray  # [n] int32
    rewards: np.ndarray  # [n] float32
    terminals: np.ndarray  # [n] bool
    ends: np.ndarray  # [n] bool: terminal, or listed in episode_end_indices
    has_end_indices: bool  # an episode_end_indices file was read (the 2022 layout)
    starts_logging: bool  # its first row is the first row ever added
    stale_rows: np.ndarray  # [m, 3] (action, reward, terminal) of a final dump's stale slots

    @functools.cached_property
    def blank(self) -> np.ndarray:
        """[n] bool: rows that may be padding as far as the small arrays tell (no end, action 0,
        reward 0); padding rows also have all-zero frames."""
        return ~self.ends & (self.actions == 0) & (self.rewards == 0)

    @property
    def num_rows(self) -> int:
        return len(self.slots)

    def rows_at(self, slots: np.ndarray) -> np.ndarray:
        """(action, reward, terminal) of the given buffer slots, [len(slots), 3]."""
        temporal = np.full(self.capacity, -1)
        temporal[self.slots] = np.arange(self.num_rows)
        rows = temporal[slots]
        return np.stack([self.actions[rows], self.rewards[rows], self.terminals[rows]], axis=1).astype(np.float64)

    @property
    def is_full(self) -> bool:
        """A dump taken by the add_count trigger (not the final partial one)."""
        return self.add_count >= self.capacity or (self.starts_logging and self.add_count == self.capacity - 1)


def temporal_slots(add_count: int, capacity: int, starts_logging: bool) -> np.ndarray:
    """Buffer slots of a dump's valid rows, oldest first (see the module docstring)."""
    if add_count >= capacity:  # a full dump, taken when the cursor was at C-1
        return np.concatenate([[capacity - 1], np.arange(capacity - 1)])
    if starts_logging:  # the first dump (full at C-1, or the only one): slot C-1 never written
        return np.arange(min(add_count, capacity - 1))
    if add_count == capacity - 1:  # a final dump right after a full one: no new rows
        return np.arange(0)
    return np.concatenate([[capacity - 1], np.arange(add_count)])  # final: C-1, then 0..cursor-1


def load_checkpoint(log_dir: Path, suffix: int) -> Checkpoint:
    """Reads and checks the small arrays of checkpoint `suffix`; observations are only checked."""
    log_dir = Path(log_dir)
    actions = _load_array(log_file(log_dir, "$store$_action", suffix), STORE_DTYPES["action"], None)
    if actions.ndim != 1 or len(actions) < PADDING_ROWS + 2:
        raise ReplayLogError(f"{log_file(log_dir, '$store$_action', suffix)}: expected a 1-d array of rows, "
                             f"found shape {list(actions.shape)}")
    capacity, actions_path = len(actions), log_file(log_dir, "$store$_action", suffix)
    rewards = _load_array(log_file(log_dir, "$store$_reward", suffix), STORE_DTYPES["reward"], (capacity,), actions_path)
    terminals = _load_array(log_file(log_dir, "$store$_terminal", suffix), STORE_DTYPES["terminal"], (capacity,),
                            actions_path)
    add_count_path = log_file(log_dir, "add_count", suffix)
    add_count = _load_npy(add_count_path)
    if add_count.shape != () or add_count.dtype.kind not in "iu" or int(add_count) < 0:
        raise ReplayLogError(f"{add_count_path}: expected a non-negative integer scalar, found {add_count!r}")
    _load_array(log_file(log_dir, "invalid_range", suffix), np.dtype(np.int64), (_INVALID_RANGE_SIZE,))
    _observation_header(log_file(log_dir, "$store$_observation", suffix), capacity)
    add_count = int(add_count)
    # Dump 0 holds the rows from the first one added, unless its trigger was skipped and the
    # buffer wrapped before the final dump: then the slots past the cursor were written too.
    starts_logging = suffix == 0 and (add_count == capacity - 1 or (add_count < capacity - 1 and not (
        actions[add_count:].any() or rewards[add_count:].any() or terminals[add_count:].any())))
    slots = temporal_slots(add_count, capacity, starts_logging)
    stale = np.arange(add_count, capacity - 1) if not starts_logging and add_count < capacity else np.arange(0)
    stale_rows = np.stack([actions[stale], rewards[stale], terminals[stale] > 0], axis=1).astype(np.float64)
    end_indices_path = log_file(log_dir, EPISODE_END_INDICES, suffix)
    has_end_indices = end_indices_path.exists()
    ends = terminals[slots] > 0
    if has_end_indices:
        ends |= np.isin(slots, load_episode_end_slots(end_indices_path, capacity))
    return Checkpoint(log_dir, suffix, capacity, add_count, slots, actions[slots], rewards[slots],
                      terminals[slots] > 0, ends, has_end_indices, starts_logging, stale_rows)


def _read_npy_header(f, path: Path) -> tuple[tuple[int, ...], np.dtype]:
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
    else:
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    if fortran:
        raise ReplayLogError(f"{path}: Fortran-ordered arrays are not part of the format")
    return shape, dtype


def _observation_header(path: Path, capacity: int) -> None:
    with _gzip_errors_as(path), gzip.open(path, "rb") as f:
        shape, dtype = _read_npy_header(f, path)
    if dtype != STORE_DTYPES["observation"] or tuple(shape) != (capacity, *FRAME_SHAPE):
        raise ReplayLogError(f"{path}: expected uint8 {[capacity, *FRAME_SHAPE]}, found {dtype} {list(shape)}")


class ObservationStream:
    """Frames of one dump, inflated forward only; memory is what the caller keeps."""

    def __init__(self, path: Path, capacity: int):
        self.path = path
        self._capacity = capacity
        with _gzip_errors_as(path):
            self._file = gzip.open(path, "rb")
            _read_npy_header(self._file, path)
        self._position = 0

    def read(self, start: int, stop: int) -> np.ndarray:
        """Frames of slots [start, stop) as uint8 [stop - start, 84, 84]; start >= last stop."""
        if start < self._position or stop > self._capacity:
            raise ValueError(f"slots [{start}, {stop}) are behind the stream ({self._position}) or past its end")
        with _gzip_errors_as(self.path):
            while self._position < start:
                skip = min(start - self._position, _STREAM_CHUNK_ROWS)
                self._read_exactly(skip * FRAME_BYTES)
                self._position += skip
            data = self._read_exactly((stop - start) * FRAME_BYTES)
        self._position = stop
        return np.frombuffer(data, np.uint8).reshape(stop - start, *FRAME_SHAPE)

    def _read_exactly(self, num_bytes: int) -> bytes:
        data = self._file.read(num_bytes)
        if len(data) != num_bytes:
            raise ReplayLogError(f"{self.path}: truncated (observation rows end early)")
        return data

    def check_to_end(self) -> None:
        """Inflates the rest of the file, so that gzip checks its CRC-32 and length (ReplayLogError
        if they differ): a flipped bit can inflate to wrong frames without any zlib error."""
        with _gzip_errors_as(self.path):
            while self._file.read(_STREAM_CHUNK_ROWS * FRAME_BYTES):
                pass

    def close(self) -> None:
        self._file.close()


def read_frames(checkpoint: Checkpoint, start: int, stop: int,
                stream: ObservationStream | None = None) -> np.ndarray:
    """Frames of temporal rows [start, stop) of a checkpoint, [stop - start, 84, 84] uint8.

    Temporal rows are in increasing slot order except a leading slot C-1, which sits at the end of
    the file: that one frame is read by a stream of its own so `stream` (if given, positioned at or
    before the rows asked for) can go on forward.
    """
    slots = checkpoint.slots[start:stop]
    path = log_file(checkpoint.log_dir, "$store$_observation", checkpoint.suffix)
    own_stream = stream is None
    stream = ObservationStream(path, checkpoint.capacity) if own_stream else stream
    try:
        frames = []
        if len(slots) and slots[0] == checkpoint.capacity - 1:
            last_slot = ObservationStream(path, checkpoint.capacity)
            try:
                frames.append(last_slot.read(checkpoint.capacity - 1, checkpoint.capacity))
            finally:
                last_slot.close()
            slots = slots[1:]
        if len(slots):
            frames.append(stream.read(int(slots[0]), int(slots[-1]) + 1))
    finally:
        if own_stream:
            stream.close()
    return np.concatenate(frames) if len(frames) != 1 else frames[0]


# ---------------------------------------------------------------------------------------------
# Episodes


@dataclasses.dataclass
class Episode:
    """One episode: its real rows (padding removed) in temporal order."""

    checkpoint_id: int  # the checkpoint holding its first row
    last_checkpoint_id: int  # the checkpoint holding its last row
    episode_id: int  # index among the episodes of checkpoint_id
    observations: np.ndarray  # [T, 84, 84] uint8
    actions: np.ndarray  # [T] int32, minimal-action-set indices
    rewards: np.ndarray  # [T] float32, clipped
    truncated: bool  # ended by the time limit, not by game over

    @property
    def num_steps(self) -> int:
        return len(self.actions)


@dataclasses.dataclass
class CheckpointReport:
    """What reading one checkpoint found."""

    suffix: int
    episodes: int = 0
    steps: int = 0
    truncated_episodes: int = 0
    dropped_partial_episodes: int = 0
    discontinuous_with_previous: bool = False


class RunReader:
    """Reads one run's replay_logs directory as episodes, one checkpoint at a time.

    `episodes(suffix)` yields the episodes whose first row is in that checkpoint, continued into
    the following checkpoints while they are contiguous; so checkpoints can be converted in
    parallel, each by its own reader, and together give every complete episode exactly once.
    """

    def __init__(self, log_dir: Path, max_episode_steps: int = DEFAULT_MAX_EPISODE_STEPS):
        if max_episode_steps < 1:
            raise ValueError(f"max_episode_steps {max_episode_steps}: must be positive")
        self.log_dir = Path(log_dir)
        self.max_episode_steps = max_episode_steps
        self.suffixes = list_checkpoints(self.log_dir)

    @functools.lru_cache(maxsize=4)
    def checkpoint(self, suffix: int) -> Checkpoint:
        checkpoint = load_checkpoint(self.log_dir, suffix)
        if not checkpoint.is_full and suffix != self.suffixes[-1]:
            raise ReplayLogError(f"{log_file(self.log_dir, 'add_count', suffix)}: add_count {checkpoint.add_count} "
                                 f"marks a final partial dump, but later checkpoints exist")
        return checkpoint

    def contiguous_with_previous(self, suffix: int) -> bool:
        """True when checkpoint suffix-1 exists and its last row is directly followed by this one's
        first. Full dumps are then C adds apart. A final dump saved only its cursor, but its stale
        slots still hold the previous dump's rows, unless a skipped chunk overwrote them."""
        if suffix - 1 not in self.suffixes:
            return False
        current, previous = self.checkpoint(suffix), self.checkpoint(suffix - 1)
        if not current.is_full:
            stale_slots = np.arange(current.add_count, current.capacity - 1)
            return np.array_equal(previous.rows_at(stale_slots), current.stale_rows)
        return current.add_count - previous.add_count == current.capacity

    def _rows_since_last_end(self, suffix: int) -> int | None:
        """Rows between the last marked end (terminal or episode_end_indices) before checkpoint
        `suffix` and its first row, counting the start of logging as an end; None when a
        discontinuity hides it."""
        rows = 0
        current = suffix
        while True:
            if not self.contiguous_with_previous(current):
                return rows if self.checkpoint(current).starts_logging else None
            previous = self.checkpoint(current - 1)
            ends = np.flatnonzero(previous.ends)
            if len(ends):
                return rows + previous.num_rows - 1 - int(ends[-1])
            rows += previous.num_rows
            current -= 1

    def episodes(self, suffix: int, report: CheckpointReport | None = None) -> Iterator[Episode]:
        """Complete episodes starting in checkpoint `suffix`, in temporal order.

        Raises ReplayLogError when a row where padding must be is not padding, or padding rows sit
        inside an episode (see the module docstring).
        """
        report = report if report is not None else CheckpointReport(suffix)
        checkpoint = self.checkpoint(suffix)
        contiguous = self.contiguous_with_previous(suffix)
        report.discontinuous_with_previous = not checkpoint.starts_logging and not contiguous
        rows = _Rows(self, suffix)
        since_end = self._rows_since_last_end(suffix)
        if since_end is None:
            # The rows before the first end finish an episode lost behind a discontinuity.
            if not contiguous and checkpoint.num_rows:
                report.dropped_partial_episodes += 1
            first_end = rows.first_end(0, checkpoint.num_rows)
            if first_end is None:
                return
            padding_start, after_time_limit = first_end + 1, False
        else:
            # After a marked end, padding and episodes alternate; an episode that nothing ends
            # stops at the time limit, so the cycle of padding + max steps places this checkpoint.
            cycle = PADDING_ROWS + self.max_episode_steps
            padding_start, after_time_limit = -(since_end % cycle), since_end >= cycle
        stream = ObservationStream(log_file(self.log_dir, "$store$_observation", suffix), checkpoint.capacity)
        try:
            yield from self._episodes_from(rows, padding_start, after_time_limit, stream, report)
            stream.check_to_end()  # before the caller finishes what it wrote from these frames
        finally:
            stream.close()

    def _episodes_from(self, rows: _Rows, padding_start: int, after_time_limit: bool,
                       stream: ObservationStream, report: CheckpointReport) -> Iterator[Episode]:
        """Walks padding, episode, padding, ... from row `padding_start` (negative: in the previous
        checkpoints) and yields the episodes that start in rows' own checkpoint."""
        own = rows.checkpoints[0]
        while True:
            self._check_padding(rows, padding_start, after_time_limit, stream)
            start = padding_start + PADDING_ROWS
            if start >= own.num_rows:
                return
            end = rows.first_end(max(start, 0), start + self.max_episode_steps)
            time_limit = end is None
            if time_limit:
                end = start + self.max_episode_steps - 1
                # Nothing marks this end: only the padding after it shows it, so it must be there.
                if not rows.has(end + PADDING_ROWS):
                    if start >= 0:
                        self._check_no_padding_in_partial(own, start, stream)
                        report.dropped_partial_episodes += 1
                    return
            if start >= 0:
                episode = self._assemble(rows, start, end, time_limit, stream, report.episodes)
                report.episodes += 1
                report.steps += episode.num_steps
                report.truncated_episodes += episode.truncated
                yield episode
            padding_start, after_time_limit = end + 1, time_limit

    def _check_padding(self, rows: _Rows, padding_start: int, after_time_limit: bool,
                       stream: ObservationStream) -> None:
        """The rows [padding_start, +3) that exist must be padding: small arrays everywhere, frames
        in the own checkpoint (the rows of the next one are checked by its own reading)."""
        stop = padding_start + PADDING_ROWS
        rows.has(stop - 1)
        for checkpoint, _, lo, hi in rows.segments(padding_start, stop):
            bad = np.flatnonzero(~checkpoint.blank[lo:hi])
            if len(bad):
                row = lo + int(bad[0])
                found = (f"action {checkpoint.actions[row]}, reward {checkpoint.rewards[row]:g}, "
                         f"{'an end' if checkpoint.ends[row] else 'no end'}")
                raise self._not_padding(checkpoint, row, after_time_limit, found)
        own = rows.checkpoints[0]
        lo, hi = max(padding_start, 0), min(stop, own.num_rows)
        if lo < hi:
            frames = read_frames(own, lo, hi, stream)
            bad = np.flatnonzero(frames.reshape(hi - lo, -1).any(axis=1))
            if len(bad):
                raise self._not_padding(own, lo + int(bad[0]), after_time_limit, "a frame that is not all zero")

    def _not_padding(self, checkpoint: Checkpoint, row: int, after_time_limit: bool, found: str) -> ReplayLogError:
        where = (f"{self.log_dir} checkpoint {checkpoint.suffix}: row {row} (slot {checkpoint.slots[row]}) "
                 f"is not padding ({found})")
        if after_time_limit:
            return ReplayLogError(
                f"{where}, so the episode before it runs past --max-episode-steps {self.max_episode_steps}; "
                f"pass the time limit these logs were written with")
        return ReplayLogError(
            f"{where}, but follows an episode end, after which Dopamine writes {PADDING_ROWS} padding rows")

    def _assemble(self, rows: _Rows, start: int, end: int, time_limit: bool, stream: ObservationStream,
                  episode_id: int) -> Episode:
        """The episode of rows [start, end]; frames of the own checkpoint come from `stream`."""
        own = rows.checkpoints[0]
        segments = list(rows.segments(start, end + 1))
        frames = [read_frames(c, lo, hi, stream if c is own else None) for c, _, lo, hi in segments]
        actions = np.concatenate([c.actions[lo:hi] for c, _, lo, hi in segments])
        rewards = np.concatenate([c.rewards[lo:hi] for c, _, lo, hi in segments])
        observations = np.concatenate(frames) if len(frames) > 1 else frames[0]
        self._check_no_padding_inside(own, start, observations, actions, rewards)
        last, _, _, last_stop = segments[-1]
        game_over = not time_limit and bool(last.terminals[last_stop - 1])
        # Without episode_end_indices the logs may be 2019's, which log the time limit as terminal:
        # then only the length tells it from game over.
        truncated = not game_over or (len(actions) == self.max_episode_steps and not last.has_end_indices)
        return Episode(checkpoint_id=own.suffix, last_checkpoint_id=last.suffix, episode_id=episode_id,
                       observations=observations, actions=actions, rewards=rewards, truncated=truncated)

    def _check_no_padding_inside(self, own: Checkpoint, start: int, observations: np.ndarray,
                                 actions: np.ndarray, rewards: np.ndarray) -> None:
        """Padding rows inside an episode are an end that nothing marks and the time limit did not
        place: the logs' time limit is shorter than max_episode_steps (2021 layout)."""
        blank_runs = _padding_length_runs((actions == 0) & (rewards == 0))
        if not len(blank_runs):
            return
        candidates = np.unique(blank_runs[:, None] + np.arange(PADDING_ROWS))
        zero = np.zeros(len(actions), bool)
        zero[candidates] = ~observations[candidates].reshape(len(candidates), -1).any(axis=1)
        padding_runs = np.intersect1d(blank_runs, _padding_length_runs(zero))
        if len(padding_runs):
            raise self._padding_inside(own, start, int(padding_runs[0]))

    def _check_no_padding_in_partial(self, own: Checkpoint, start: int, stream: ObservationStream) -> None:
        """The same check on the unfinished episode from row ``start`` to the checkpoint's end, which
        is dropped: where the logs' time limit is shorter than max_episode_steps and no episode is
        marked as ended, every episode reads as this one, so only here does the time limit show. Frames
        are read only for runs of 3 blank rows (action 0, reward 0, no end), in order (the stream goes
        forward). Only the rows in this checkpoint are checked: one whose capacity is below the time
        limit may hold no whole time limit, and a later checkpoint does not check an episode begun before it."""
        runs = _padding_length_runs(own.blank[start:])
        if not len(runs):
            return
        # Overlapping runs read as one block of rows, so each frame is read once and in order.
        breaks = np.flatnonzero(np.diff(runs) > PADDING_ROWS) + 1
        for group in np.split(runs, breaks):
            lo, hi = start + int(group[0]), start + int(group[-1]) + PADDING_ROWS
            zero = ~read_frames(own, lo, hi, stream).reshape(hi - lo, -1).any(axis=1)
            for run in group:
                if zero[start + run - lo:start + run - lo + PADDING_ROWS].all():
                    raise self._padding_inside(own, start, int(run))

    def _padding_inside(self, own: Checkpoint, start: int, steps: int) -> ReplayLogError:
        return ReplayLogError(
            f"{self.log_dir} checkpoint {own.suffix}: the episode starting at row {start} holds "
            f"{PADDING_ROWS} padding rows (zero frames, action 0, reward 0) after {steps} steps, where "
            f"no end is marked: an end by a time limit of {steps} steps? (pass --max-episode-steps {steps})")


def _padding_length_runs(rows: np.ndarray) -> np.ndarray:
    """The first rows of every run of PADDING_ROWS True rows in ``rows`` (bool [n]; runs overlap)."""
    return np.flatnonzero(np.convolve(rows, np.ones(PADDING_ROWS, int), "valid") == PADDING_ROWS)


class _Rows:
    """The rows of one checkpoint followed by those of the checkpoints contiguous after it,
    numbered on from its first row (0..n-1, then n.. for the next); a following checkpoint is
    loaded only when one of its rows is asked for."""

    def __init__(self, reader: RunReader, suffix: int):
        self._reader = reader
        self.checkpoints = [reader.checkpoint(suffix)]
        self._offsets = [0]
        self._length = self.checkpoints[0].num_rows
        self._more = True

    def has(self, row: int) -> bool:
        """Whether rows 0..row all exist (False when the logs end or break before it)."""
        while row >= self._length and self._more:
            following = self.checkpoints[-1].suffix + 1
            if following not in self._reader.suffixes or not self._reader.contiguous_with_previous(following):
                self._more = False
                break
            checkpoint = self._reader.checkpoint(following)
            self.checkpoints.append(checkpoint)
            self._offsets.append(self._length)
            self._length += checkpoint.num_rows
        return row < self._length

    def segments(self, start: int, stop: int) -> Iterator[tuple[Checkpoint, int, int, int]]:
        """(checkpoint, its first row's number, local start, local stop) for the loaded rows of
        [start, stop)."""
        for checkpoint, offset in zip(self.checkpoints, self._offsets):
            lo, hi = max(start - offset, 0), min(stop - offset, checkpoint.num_rows)
            if lo < hi:
                yield checkpoint, offset, lo, hi

    def first_end(self, start: int, stop: int) -> int | None:
        """The first row of [start, stop) marked as an end, among those that exist."""
        self.has(stop - 1)
        for checkpoint, offset, lo, hi in self.segments(start, stop):
            ends = np.flatnonzero(checkpoint.ends[lo:hi])
            if len(ends):
                return offset + lo + int(ends[0])
        return None


def read_run(log_dir: Path, max_episode_steps: int = DEFAULT_MAX_EPISODE_STEPS) -> Iterator[Episode]:
    """Every complete episode of a run, in temporal order."""
    reader = RunReader(log_dir, max_episode_steps)
    for suffix in reader.suffixes:
        yield from reader.episodes(suffix)
