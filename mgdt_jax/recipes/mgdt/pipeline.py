"""The training stream: games mixed by weight, windows drawn uniformly over each game's steps.

Every window of every global batch is an independent draw, a pure function of the data seed and
its position in the stream, so global batch ``k`` is a function of ``(seed, k)`` and a host builds
only its own rows:

1. **Mixing.** Position ``i`` of the stream (window ``r`` of global batch ``k`` is ``i = k * B + r``)
   is given to a game and a draw number ``j`` within that game by interleaving the games in
   proportion to their weights (``mix_games``), so every global batch holds each game in that
   proportion, not just on average.
2. **Draw.** Draw ``j`` of a game is a window whose end step is uniform over all steps of that
   game in all sources: SplitMix64 of ``(game seed, j)`` picks the step (``uniform_draws``).
3. **Reading.** The window's steps are read from the window index (``step_store.py``): two reads
   and at most ``S`` frame decompressions, whatever the length of the episode.
4. **Hosts.** Host ``p`` of ``P`` builds rows ``[p * B / P, (p + 1) * B / P)`` of every global batch.

A resumed run therefore needs only the step to continue exactly where it stopped, and a run on a
different number of hosts, threads or worker processes sees the same global batches. Memory holds
a few integers per shard of the sources (nothing per episode or step) plus the prefetched batches.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import grain
import numpy as np

from mgdt_jax.recipes.mgdt.rlds_source import DataError, find_dataset_dirs
from mgdt_jax.recipes.mgdt.step_store import Part, StepReader, WindowIndex, open_index

SAMPLING = "window end uniform over each game's steps"  # recorded in stream_identity

_MIN_PROPORTION = 100  # weights become integer proportions, the smallest scaled to this
# Largest / smallest game weight: the proportions then sum to ~1e8, and position x sum stays in int64
# for 2e10 positions (the paper's 10M steps of 2,048 windows)
MAX_WEIGHT_RATIO = 1e6


def mix_games(positions: np.ndarray, proportions: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Which game, and which draw of it, each position of the mixed stream is.

    The interleaving is nested and exact: of the first ``n`` positions, game 0 gets
    ``ceil(n * p_0 / R)`` (``R`` the sum of the proportions) and the others share the rest the same
    way among themselves, so any ``n`` consecutive positions hold each game within a few windows of
    ``n * p_g / R``. This is the interleaving of Grain's ``MapDataset.mix`` (what this stream used
    before the window index), vectorized. Takes int64 positions; returns (game, draw) int64 arrays.
    """
    positions = np.asarray(positions, np.int64)
    remaining = int(sum(proportions))
    if positions.size and int(positions.max()) + 1 >= np.iinfo(np.int64).max // remaining:
        raise DataError(f"stream position {int(positions.max())} is too large to mix proportions {list(proportions)}")
    before, after = positions.copy(), positions + 1  # the positions before and up to each one, among the games left
    games = np.full(positions.shape, -1, np.int64)
    draws = np.zeros(positions.shape, np.int64)
    for game, proportion in enumerate(proportions):
        others = remaining - proportion
        before_others, after_others = before * others // remaining, after * others // remaining
        here = (games < 0) & ((before - before_others) != (after - after_others))
        games[here] = game
        draws[here] = (before - before_others)[here]
        before, after, remaining = before_others, after_others, others
    return games, draws


_GOLDEN_GAMMA = np.uint64(0x9E3779B97F4A7C15)


def _splitmix64(state: np.ndarray) -> np.ndarray:
    """SplitMix64's output function (Steele, Lea and Flood, OOPSLA 2014); uint64 arithmetic wraps."""
    z = state
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def uniform_draws(seed: int, draws: np.ndarray, count: int) -> np.ndarray:
    """Draw ``j`` of a SplitMix64 stream seeded with ``seed`` -> an integer uniform in ``[0, count)``.

    The ``j``-th output of SplitMix64 is its output function at ``key + (j + 1) * gamma``, so any
    draw is computed on its own; its top 53 bits are scaled to ``[0, count)`` (bias below
    ``count / 2**53``).
    """
    with np.errstate(over="ignore"):
        key = _splitmix64(np.array([seed], np.uint64))[0]
        bits = _splitmix64(key + (np.asarray(draws).astype(np.uint64) + np.uint64(1)) * _GOLDEN_GAMMA)
    uniform = (bits >> np.uint64(11)).astype(np.float64) * 2.0**-53
    return np.minimum((uniform * count).astype(np.int64), count - 1)


class _Game:
    """One game's steps in all sources: its parts and where each starts in the game's step count."""

    def __init__(self, seed: int, parts: list[Part]):
        self.seed = seed
        self.parts = parts
        self.starts = np.cumsum([0] + [part.steps for part in parts])  # int64 [len(parts) + 1]

    @property
    def num_steps(self) -> int:
        return int(self.starts[-1])

    def window_ends(self, draws: np.ndarray) -> tuple[list[Part], np.ndarray]:
        steps = uniform_draws(self.seed, draws, self.num_steps)
        part_numbers = np.searchsorted(self.starts, steps, side="right") - 1
        return [self.parts[n] for n in part_numbers.tolist()], steps - self.starts[part_numbers]


class TrainingData:
    """This host's part of every global batch of the training stream, addressable by step."""

    def __init__(
        self,
        indexes: Sequence[WindowIndex],
        *,
        global_batch_size: int,
        num_steps: int,
        seed: int,
        game_weights: Mapping[str, float] | str | None = None,
        process_index: int = 0,
        process_count: int = 1,
        num_threads: int = 2,
        num_workers: int = 0,
    ):
        if global_batch_size < 1 or global_batch_size % process_count:
            raise DataError(f"global batch {global_batch_size} does not split evenly over {process_count} host(s)")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:  # NumPy's line named no field
            raise DataError(f"data.seed {seed!r}: must be a whole number >= 0")
        if num_threads < 0 or num_workers < 0:  # named here: Grain's own error named num_threads for either
            raise DataError(f"data.num_threads {num_threads} and data.num_workers {num_workers} must be >= 0")
        self.global_batch_size = global_batch_size
        self.local_batch_size = global_batch_size // process_count
        self._first_row = process_index * self.local_batch_size
        self.num_steps = num_steps
        self.num_threads = num_threads
        self.num_workers = num_workers
        parts_by_game: dict[str, list[Part]] = {}
        for index in indexes:
            for part in index.parts:
                if part.steps:
                    parts_by_game.setdefault(part.game, []).append(part)
        if not parts_by_game:
            raise DataError(f"the data sources hold no steps: {[str(index.dataset_dir) for index in indexes]}")
        # What the sources hold, per game: [episodes, steps] (saved with checkpoints: data changed
        # under the same paths shows here)
        self.content = {game: [sum(part.episodes for part in parts), sum(part.steps for part in parts)]
                        for game, parts in sorted(parts_by_game.items())}
        self.game_weights = _resolve_weights(sorted(parts_by_game), game_weights)
        # the episodes batches are drawn from: the games of weight 0 are left out
        self.num_episodes = sum(part.episodes for game in self.game_weights for part in parts_by_game[game])
        self._games = [_Game(_game_seed(seed, game), parts_by_game[game]) for game in self.game_weights]
        self.proportions = drawn_proportions(self.game_weights)
        self._mix = list(self.proportions.values())  # per batch, in the games' order
        self._reader = StepReader()

    def window_ends(self, step: int) -> tuple[list[Part], np.ndarray]:
        """Which windows this host's rows of global batch ``step`` are: their parts and end steps in them."""
        positions = step * self.global_batch_size + self._first_row + np.arange(self.local_batch_size)
        game_numbers, draws = mix_games(positions, self._mix)
        parts: list[Part] = [None] * self.local_batch_size  # type: ignore[list-item]
        ends = np.zeros(self.local_batch_size, np.int64)
        for number in np.unique(game_numbers).tolist():
            rows = np.flatnonzero(game_numbers == number)
            game_parts, ends[rows] = self._games[number].window_ends(draws[rows])
            for row, part in zip(rows.tolist(), game_parts):
                parts[row] = part
        return parts, ends

    def batch(self, step: int) -> dict[str, np.ndarray]:
        """This host's rows of global batch ``step``, read synchronously (also what ``iterate`` calls)."""
        parts, ends = self.window_ends(step)
        return self._reader.read(parts, ends.tolist(), self.num_steps)

    def iterate(self, start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
        """This host's parts of global batches ``start_step, start_step + 1, ...``, built ahead of use.

        Each batch is built whole by one of ``num_threads`` threads, in each of ``num_workers``
        worker processes if there are any (the way to use more cores: reading holds Python's GIL
        for much of its time), so every batch is the same for any number of threads or workers.
        Close the iterator when done to stop the workers.
        """
        return prefetch(self.batch, start_step, self.num_threads, self.num_workers)


def prefetch(batch: Callable[[int], dict[str, np.ndarray]], start_step: int, num_threads: int,
             num_workers: int) -> Iterator[dict[str, np.ndarray]]:
    """``batch(start_step), batch(start_step + 1), ...`` built ahead by threads and worker processes (Grain)."""
    batches = grain.MapDataset.range(start_step, sys.maxsize).map(batch)
    read_options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=2 * max(num_threads, 1))
    stream = batches.to_iter_dataset(read_options)
    if num_workers:
        from absl import flags

        if not flags.FLAGS.is_parsed():  # Grain's workers read its absl flags: from a plain script, unparsed
            flags.FLAGS.mark_as_parsed()
        stream = stream.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers, per_worker_buffer_size=2),
                                    worker_init_fn=_leave_ctrl_c_to_the_trainer)
    return iter(stream)


def _leave_ctrl_c_to_the_trainer(worker_index: int, worker_count: int) -> None:
    # Ctrl-C reaches the whole process group; the trainer saves and then stops the workers itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def training_data(config: Any, *, process_index: int = 0, process_count: int = 1) -> TrainingData:
    """The training stream a config describes (``data.*``, ``train.batch_size``, ``model.num_steps``).

    Raises DataError when a source has no current window index (the message gives the command
    that builds it).
    """
    if not config.data.sources:
        raise DataError("config.data.sources is empty: give one or more RLDS dataset directories")
    sources = [config.data.sources] if isinstance(config.data.sources, str) else config.data.sources
    if not isinstance(sources, Sequence) or (bad := [s for s in sources if not isinstance(s, (str, os.PathLike))]):
        raise DataError(f"config.data.sources: {(bad or [sources])[0]!r} is not a dataset path (e.g. "
                        "--config.data.sources=data/rlds)")
    return TrainingData(
        [open_index(directory) for directory in find_dataset_dirs(list(sources))],
        global_batch_size=config.train.batch_size,
        num_steps=config.model.num_steps,
        seed=config.data.seed,
        game_weights=config.data.game_weights,
        process_index=process_index,
        process_count=process_count,
        num_threads=config.data.num_threads,
        num_workers=config.data.num_workers,
    )


def stream_identity(config: Any, data: TrainingData) -> dict[str, Any]:
    """What fixes the stream, saved with checkpoints: with it, batch ``k`` is known. The games'
    proportions as drawn (``Pong=2,Breakout=1`` and ``{"Breakout": 2, "Pong": 4}`` are one stream)
    and what the sources hold per game, [episodes, steps] (data replaced under the same paths), not
    the paths: one folder by two spellings, or data moved, is the same stream."""
    return {
        "proportions": data.proportions,
        "games": data.content,
        "seed": config.data.seed,
        "global_batch_size": config.train.batch_size,
        "num_steps": config.model.num_steps,
        "sampling": SAMPLING,
    }


def upgrade_identity(saved: Mapping[str, Any], games: Sequence[str]) -> dict[str, Any]:
    """An identity saved before it held ``proportions`` (it held the weights as written, and
    ``games``, when saved, the games then found; else ``games`` is today's) with the proportions
    those weights drew, so a change of weights against an older checkpoint still warns."""
    if "proportions" in saved or "game_weights" not in saved:
        return dict(saved)
    try:
        weights = _resolve_weights(sorted(saved.get("games") or games), saved["game_weights"])
    except DataError:
        return dict(saved)  # weights no stream could draw: nothing to compare
    return {**saved, "proportions": drawn_proportions(weights)}


def drawn_proportions(weights: Mapping[str, float]) -> dict[str, int]:
    """Game -> how many windows of it each cycle of the mix draws (``mix_games``), from weights > 0."""
    smallest = min(weights.values())
    return {game: int(weight * _MIN_PROPORTION / smallest) for game, weight in weights.items()}


def parse_game_weights(text: str) -> dict[str, float]:
    """``"Pong=2,Breakout=1"`` (the command-line form of ``data.game_weights``) -> a mapping."""
    weights = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        game, _, weight = item.partition("=")
        try:
            value = float(weight)
        except ValueError:
            raise DataError(f"game_weights: {item!r} is not Game=weight (e.g. 'Pong=2,Breakout=1')") from None
        if game.strip() in weights:  # the later one silently won
            raise DataError(f"game_weights: {game.strip()} is given twice in {text!r}")
        weights[game.strip()] = value
    return weights


def _resolve_weights(games: Sequence[str], weights: Mapping[str, float] | str | None) -> dict[str, float]:
    """Game -> mixing weight: uniform when none are given, else only the games given (> 0)."""
    if isinstance(weights, str):
        weights = parse_game_weights(weights)
    if weights is not None and not hasattr(weights, "items"):  # a number from the command line (ConfigDicts have items)
        raise DataError(f"game_weights: {weights!r} is neither 'Game=weight,...' (e.g. 'Pong=2,Breakout=1') nor a "
                        "mapping of games to weights")
    if not weights:
        return {game: 1.0 for game in games}
    unknown = sorted(set(weights) - set(games))
    if unknown:
        raise DataError(f"game_weights names {unknown}, which no data source holds (found {list(games)})")
    bad = {game: weight for game, weight in weights.items()
           if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 <= weight < math.inf}
    if bad or not any(weights.values()):
        raise DataError(f"game_weights must be finite and >= 0 with at least one > 0, got {dict(weights)}")
    used = {game: float(weights[game]) for game in games if weights.get(game, 0) > 0}
    if max(used.values()) / min(used.values()) > MAX_WEIGHT_RATIO:  # each game's share is a whole count per cycle
        raise DataError(f"game_weights {dict(weights)}: the largest is more than {MAX_WEIGHT_RATIO:.0e} times the "
                        "smallest; give the smallest game weight 0 instead")
    return used


def _game_seed(seed: int, game: str) -> int:
    """A per-game seed that does not depend on which other games are mixed in."""
    return int(np.random.SeedSequence([seed, zlib.crc32(game.encode())]).generate_state(1)[0])
