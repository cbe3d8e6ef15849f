"""The DQN Replay on-disk format: writing logs the way Dopamine (2019) did, and reading them back as
temporally ordered episodes.

A run directory (`<Game>/<run>/replay_logs/`) holds one dump of a circular replay buffer of capacity
C per checkpoint N, six gzip'd `.npy` files each:

    $store$_observation_ckpt.N.gz  uint8 [C, 84, 84]   one preprocessed frame per row
    $store$_action_ckpt.N.gz       int32 [C]           index into the game's minimal action set
    $store$_reward_ckpt.N.gz       float32 [C]         reward clipped to [-1, 1]
    $store$_terminal_ckpt.N.gz     uint8 [C]           1 on the last row of an episode
    add_count_ckpt.N.gz            int64 []            rows added so far (the cursor, final dump)
    invalid_range_ckpt.N.gz        int64 [5]           rows around the cursor

Row t is (o_t, a_t, r_t, terminal_t); the observation after the last action is never stored, and
every episode is preceded by 3 all-zero padding rows. Why reading is not a plain loop over rows:

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

Memory stays bounded by one episode: observations are decompressed as a stream and only the rows of
the episode at hand are kept (a 1M-row dump holds 7 GB of frames).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import gzip
import os
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
_INVALID_RANGE_SIZE = 5  # stack_size + update_horizon
_GZIP_LEVEL = 1  # the format does not depend on it; level 1 makes 1M-row dumps quick to write
_STREAM_CHUNK_ROWS = 2048  # rows inflated per read while streaming observations (~14 MB)

STORE_DTYPES = {
    "observation": np.dtype(np.uint8),
    "action": np.dtype(np.int32),
    "reward": np.dtype(np.float32),
    "terminal": np.dtype(np.uint8),
}
_FILE_NAMES = tuple(f"$store$_{name}" for name in STORE_DTYPES) + ("add_count", "invalid_range")
_SUFFIX_PATTERN = re.compile(r"^(?P<name>.+)_ckpt\.(?P<suffix>\d+)\.gz$")


class ReplayLogError(ValueError):
    """Logs that cannot be read; the message names the file and the fault."""


def log_file(log_dir: Path, name: str, suffix: int) -> Path:
    """`$store$_observation` and 3 -> log_dir/$store$_observation_ckpt.3.gz."""
    return Path(log_dir) / f"{name}_ckpt.{suffix}.gz"


def _write_array(path: Path, array: np.ndarray) -> None:
    """np.save into gzip, as Dopamine did; written under a temporary name so a crash leaves no
    file that looks complete."""
    partial = path.with_name(path.name + ".partial")
    with open(partial, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=_GZIP_LEVEL) as f:
        np.save(f, array, allow_pickle=False)
    os.replace(partial, path)


def _invalid_range(cursor: int, capacity: int) -> np.ndarray:
    """Rows whose 4-frame stack or next row straddles the cursor (Dopamine's invalid_range)."""
    return np.array([(cursor - 1 + i) % capacity for i in range(_INVALID_RANGE_SIZE)], dtype=np.int64)


class LoggedReplayBuffer:
    """A circular buffer that dumps itself like batch_rl's logged buffer over Dopamine's 2019 add().

    `add()` inserts 3 zero rows first when the buffer is empty or the previous row was terminal, and
    the dump trigger is checked once afterwards, so chunks can be skipped exactly as in the dataset.
    """

    def __init__(self, log_dir: Path, capacity: int = DEFAULT_CAPACITY):
        if capacity < PADDING_ROWS + 2:
            raise ValueError(f"capacity {capacity} is too small: at least {PADDING_ROWS + 2} rows")
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.capacity = capacity
        self.add_count = 0
        self.num_dumps = 0
        self._store = {name: np.zeros((capacity, *FRAME_SHAPE) if name == "observation" else capacity, dtype)
                       for name, dtype in STORE_DTYPES.items()}
        self._invalid_range = _invalid_range(0, capacity)

    def _cursor(self) -> int:
        return self.add_count % self.capacity

    def add(self, observation: np.ndarray, action: int, reward: float, terminal: bool) -> None:
        if self.add_count == 0 or self._store["terminal"][self._cursor() - 1] == 1:
            for _ in range(PADDING_ROWS):
                self._add(np.zeros(FRAME_SHAPE, np.uint8), 0, 0.0, False)
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
        # add_count last: a checkpoint is complete once all six files exist.
        _write_array(log_file(self.log_dir, "add_count", self.num_dumps), np.array(add_count, np.int64))
        self.num_dumps += 1


# ---------------------------------------------------------------------------------------------
# Reading


def list_checkpoints(log_dir: Path) -> list[int]:
    """Checkpoint suffixes present in a replay_logs directory, each checked to have all six files."""
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
    for suffix, names in sorted(found.items()):
        for name in _FILE_NAMES:
            if name not in names:
                raise ReplayLogError(f"{log_file(log_dir, name, suffix)}: missing (checkpoint {suffix} is incomplete)")
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


def _load_array(path: Path, dtype: np.dtype, shape: tuple[int, ...] | None) -> np.ndarray:
    with _gzip_errors_as(path), gzip.open(path, "rb") as f:
        array = np.load(f, allow_pickle=False)
    if array.dtype != dtype or (shape is not None and array.shape != shape):
        raise ReplayLogError(f"{path}: expected {dtype} {list(shape or [])}, found {array.dtype} {list(array.shape)}")
    return array


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
    stale_rows: np.ndarray  # [m, 3] (action, reward, terminal) of a final dump's stale slots

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

    @property
    def starts_logging(self) -> bool:
        """Its first row is the first row ever added (only the first dump, unless its trigger was skipped)."""
        return self.suffix == 0 and self.add_count < self.capacity


def temporal_slots(suffix: int, add_count: int, capacity: int) -> np.ndarray:
    """Buffer slots of a dump's valid rows, oldest first (see the module docstring)."""
    if add_count >= capacity:  # a full dump, taken when the cursor was at C-1
        return np.concatenate([[capacity - 1], np.arange(capacity - 1)])
    if suffix == 0:  # the first dump (full at C-1, or the only one): slot C-1 never written
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
    capacity = len(actions)
    rewards = _load_array(log_file(log_dir, "$store$_reward", suffix), STORE_DTYPES["reward"], (capacity,))
    terminals = _load_array(log_file(log_dir, "$store$_terminal", suffix), STORE_DTYPES["terminal"], (capacity,))
    add_count_path = log_file(log_dir, "add_count", suffix)
    with _gzip_errors_as(add_count_path), gzip.open(add_count_path, "rb") as f:
        add_count = np.load(f, allow_pickle=False)
    if add_count.shape != () or add_count.dtype.kind not in "iu" or int(add_count) < 0:
        raise ReplayLogError(f"{add_count_path}: expected a non-negative integer scalar, found {add_count!r}")
    _load_array(log_file(log_dir, "invalid_range", suffix), np.dtype(np.int64), (_INVALID_RANGE_SIZE,))
    _observation_header(log_file(log_dir, "$store$_observation", suffix), capacity)
    slots = temporal_slots(suffix, int(add_count), capacity)
    stale = np.arange(int(add_count), capacity - 1) if suffix > 0 and add_count < capacity else np.arange(0)
    stale_rows = np.stack([actions[stale], rewards[stale], terminals[stale] > 0], axis=1).astype(np.float64)
    return Checkpoint(log_dir, suffix, capacity, int(add_count), slots,
                      actions[slots], rewards[slots], terminals[slots].astype(bool), stale_rows)


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


@dataclasses.dataclass(frozen=True)
class Piece:
    """Temporal rows [start, stop) of one checkpoint that belong to an episode."""

    suffix: int
    start: int
    stop: int


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

    def _rows_since_last_terminal(self, suffix: int) -> int | None:
        """Rows between the last terminal before checkpoint `suffix` and its first row, counting
        the start of logging as a terminal; None when a discontinuity hides it."""
        rows = 0
        current = suffix
        while True:
            if not self.contiguous_with_previous(current):
                return rows if self.checkpoint(current).starts_logging else None
            previous = self.checkpoint(current - 1)
            ends = np.flatnonzero(previous.terminals)
            if len(ends):
                return rows + previous.num_rows - 1 - int(ends[-1])
            rows += previous.num_rows
            current -= 1

    def _tail(self, suffix: int) -> list[Piece] | None:
        """Pieces of an episode continuing after checkpoint `suffix`, up to its terminal row; None
        when the logs end or break before it."""
        pieces = []
        current = suffix + 1
        while current in self.suffixes and self.contiguous_with_previous(current):
            checkpoint = self.checkpoint(current)
            ends = np.flatnonzero(checkpoint.terminals)
            if len(ends):
                pieces.append(Piece(current, 0, int(ends[0]) + 1))
                return pieces
            pieces.append(Piece(current, 0, checkpoint.num_rows))
            current += 1
        return None

    def episodes(self, suffix: int, report: CheckpointReport | None = None) -> Iterator[Episode]:
        """Complete episodes starting in checkpoint `suffix`, in temporal order."""
        report = report if report is not None else CheckpointReport(suffix)
        checkpoint = self.checkpoint(suffix)
        report.discontinuous_with_previous = not checkpoint.starts_logging and not self.contiguous_with_previous(suffix)
        ends = np.flatnonzero(checkpoint.terminals)
        since_terminal = self._rows_since_last_terminal(suffix)
        if since_terminal is None or since_terminal >= PADDING_ROWS:
            # The first rows finish an episode begun earlier: in the previous checkpoint's shard,
            # or lost behind a discontinuity (then it is incomplete and dropped).
            if since_terminal is None and not self.contiguous_with_previous(suffix) and checkpoint.num_rows:
                report.dropped_partial_episodes += 1
            if not len(ends):
                return
            start = int(ends[0]) + 1 + PADDING_ROWS
            ends = ends[1:]
        else:
            start = PADDING_ROWS - since_terminal
        stream = ObservationStream(log_file(self.log_dir, "$store$_observation", suffix), checkpoint.capacity)
        try:
            yield from self._episodes_from(checkpoint, start, ends, stream, report)
        finally:
            stream.close()

    def _episodes_from(self, checkpoint: Checkpoint, start: int, ends: np.ndarray,
                       stream: ObservationStream, report: CheckpointReport) -> Iterator[Episode]:
        for end in [*ends.tolist(), None]:
            if start >= checkpoint.num_rows:
                return
            pieces = [Piece(checkpoint.suffix, start, checkpoint.num_rows if end is None else end + 1)]
            if end is None:
                tail = self._tail(checkpoint.suffix)
                if tail is None:
                    report.dropped_partial_episodes += 1
                    return
                pieces += tail
            episode = self._assemble(pieces, stream, report.episodes)
            report.episodes += 1
            report.steps += episode.num_steps
            report.truncated_episodes += episode.truncated
            yield episode
            if end is not None:
                start = end + 1 + PADDING_ROWS

    def _assemble(self, pieces: list[Piece], stream: ObservationStream, episode_id: int) -> Episode:
        own = pieces[0]
        frames = [read_frames(self.checkpoint(own.suffix), own.start, own.stop, stream)]
        frames += [read_frames(self.checkpoint(p.suffix), p.start, p.stop) for p in pieces[1:]]
        actions = np.concatenate([self.checkpoint(p.suffix).actions[p.start:p.stop] for p in pieces])
        rewards = np.concatenate([self.checkpoint(p.suffix).rewards[p.start:p.stop] for p in pieces])
        return Episode(
            checkpoint_id=own.suffix,
            last_checkpoint_id=pieces[-1].suffix,
            episode_id=episode_id,
            observations=np.concatenate(frames) if len(frames) > 1 else frames[0],
            actions=actions,
            rewards=rewards,
            truncated=len(actions) == self.max_episode_steps,
        )


def read_run(log_dir: Path, max_episode_steps: int = DEFAULT_MAX_EPISODE_STEPS) -> Iterator[Episode]:
    """Every complete episode of a run, in temporal order."""
    reader = RunReader(log_dir, max_episode_steps)
    for suffix in reader.suffixes:
        yield from reader.episodes(suffix)
