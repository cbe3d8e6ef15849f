"""The training stream: games mixed by weight, episodes globally shuffled, each host's part of the batch.

Built from Grain ``MapDataset``s, which are lazy and indexable, so the whole stream is one indexable
sequence and global batch ``k`` is a pure function of ``(seed, k)``:

1. per game, its episodes in all datasets are concatenated, globally shuffled (an index
   permutation, no buffer, reshuffled every epoch) and repeated forever; each episode read gives a
   group of ``windows_per_episode`` windows ending at distinct uniformly drawn steps
   (``windows.random_windows``, seeded by the element's index). Reading an episode costs far more
   than cutting a window from it, so groups of more than one window multiply the throughput, at the
   price of batches holding several windows of one episode;
2. the games are interleaved in proportion to their weights (uniform by default), so every global
   batch holds each game in that proportion;
3. global batch ``k`` is groups ``[k * G, (k + 1) * G)`` of that sequence (``G`` = batch size /
   windows per episode); host ``p`` of ``P`` takes every ``P``-th of them, starting at ``p``.

A resumed run therefore needs only the step to continue exactly where it stopped, and a run on a
different number of hosts still sees the same global batches. Memory is bounded by Grain's prefetch
buffer: episodes are read one at a time and nothing else is cached.
"""

from __future__ import annotations

import sys
import zlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import grain
import numpy as np

from mgdt_jax.recipes.mgdt import windows
from mgdt_jax.recipes.mgdt.rlds_source import DataError, Episode, RldsDataset, find_datasets

_MAX_REDRAWS = 100  # draws of another episode when one has no step that can end a window


class _GameWindows:
    """Grain random map from an episode to a group of random windows of it.

    An episode without any step (a lone terminal observation) is swapped for another episode of the
    same game drawn with the same generator, so every element stays a full group and batch
    positions never shift.
    """

    def __init__(self, episodes: grain.MapDataset, game: str, num_steps: int, count: int):
        self._episodes = episodes
        self._game = game
        self._num_steps = num_steps
        self._count = count

    def __call__(self, episode: Episode, rng: np.random.Generator) -> dict[str, np.ndarray]:
        for _ in range(_MAX_REDRAWS):
            if episode.game != self._game:
                raise DataError(f"an episode of {episode.game} is stored among {self._game}'s: one game per shard")
            if len(episode):
                return windows.random_windows(episode, rng, self._num_steps, self._count)
            episode = self._episodes[int(rng.integers(len(self._episodes)))]
        raise DataError(f"{self._game}: {_MAX_REDRAWS} episodes drawn in a row have no steps")


class TrainingData:
    """This host's part of every global batch of the training stream, addressable by step."""

    def __init__(
        self,
        datasets: Sequence[RldsDataset],
        *,
        global_batch_size: int,
        num_steps: int,
        seed: int,
        game_weights: Mapping[str, float] | str | None = None,
        windows_per_episode: int = 1,
        process_index: int = 0,
        process_count: int = 1,
        num_threads: int = 2,
        num_workers: int = 0,
    ):
        if windows_per_episode < 1 or global_batch_size % (windows_per_episode * process_count):
            raise DataError(
                f"global batch {global_batch_size} does not split into groups of {windows_per_episode} "
                f"windows per episode over {process_count} host(s)"
            )
        self.local_batch_size = global_batch_size // process_count
        self._groups_per_batch = self.local_batch_size // windows_per_episode
        self.num_threads = num_threads
        self.num_workers = num_workers
        self.num_episodes = sum(len(dataset) for dataset in datasets)
        by_game: dict[str, list[grain.MapDataset]] = {}
        for dataset in datasets:
            for game, index_ranges in dataset.game_ranges.items():
                episodes = grain.MapDataset.source(dataset)
                by_game.setdefault(game, []).extend(episodes[r.start : r.stop] for r in index_ranges)
        self.game_weights = _resolve_weights(sorted(by_game), game_weights)
        per_game = []
        for game in self.game_weights:
            episodes = grain.MapDataset.concatenate(by_game[game])
            seed_of_game = _game_seed(seed, game)
            group = _GameWindows(episodes, game, num_steps, windows_per_episode)
            per_game.append(episodes.shuffle(seed=seed_of_game).repeat().random_map(group, seed=seed_of_game))
        mixed = grain.MapDataset.mix(per_game, list(self.game_weights.values()))
        self._groups = mixed[process_index::process_count]

    def batch(self, step: int) -> dict[str, np.ndarray]:
        """This host's part of global batch ``step``, read synchronously (tests, inspection)."""
        first = step * self._groups_per_batch
        groups = [self._groups[i] for i in range(first, first + self._groups_per_batch)]
        return _flatten_groups({key: np.stack([group[key] for group in groups]) for key in groups[0]})

    def iterate(self, start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
        """This host's parts of global batches ``start_step, start_step + 1, ...``, built ahead of use.

        Each batch is built whole by one of ``num_threads`` threads, in each of ``num_workers``
        worker processes if there are any. Decoding holds Python's GIL, so only processes read in
        parallel (docs/input_pipeline.md); building whole batches keeps every batch the same for
        any number of threads or workers. Close the iterator when done to stop the workers.
        """
        batches = grain.MapDataset.range(start_step, sys.maxsize).map(self.batch)
        read_options = grain.ReadOptions(num_threads=self.num_threads, prefetch_buffer_size=2 * max(self.num_threads, 1))
        stream = batches.to_iter_dataset(read_options)
        if self.num_workers:
            stream = stream.mp_prefetch(grain.MultiprocessingOptions(num_workers=self.num_workers, per_worker_buffer_size=2))
        return iter(stream)


def _flatten_groups(batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """[G, W, ...] groups of windows -> [G * W, ...] windows."""
    return {key: value.reshape(-1, *value.shape[2:]) for key, value in batch.items()}


def training_data(config: Any, *, process_index: int = 0, process_count: int = 1) -> TrainingData:
    """The training stream a config describes (``data.*``, ``train.batch_size``, ``model.num_steps``)."""
    if not config.data.sources:
        raise DataError("config.data.sources is empty: give one or more RLDS dataset directories")
    return TrainingData(
        find_datasets(list(config.data.sources)),
        global_batch_size=config.train.batch_size,
        num_steps=config.model.num_steps,
        seed=config.data.seed,
        game_weights=config.data.game_weights,
        windows_per_episode=config.data.windows_per_episode,
        process_index=process_index,
        process_count=process_count,
        num_threads=config.data.num_threads,
        num_workers=config.data.num_workers,
    )


def stream_identity(config: Any) -> dict[str, Any]:
    """The config values that fix the stream, saved with checkpoints: with them, batch ``k`` is known."""
    weights = config.data.game_weights
    return {
        "sources": [str(source) for source in config.data.sources],
        "game_weights": weights if isinstance(weights, str) else {k: float(v) for k, v in dict(weights).items()},
        "seed": config.data.seed,
        "global_batch_size": config.train.batch_size,
        "windows_per_episode": config.data.windows_per_episode,
        "num_steps": config.model.num_steps,
    }


def parse_game_weights(text: str) -> dict[str, float]:
    """``"Pong=2,Breakout=1"`` (the command-line form of ``data.game_weights``) -> a mapping."""
    weights = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        game, _, weight = item.partition("=")
        try:
            weights[game.strip()] = float(weight)
        except ValueError:
            raise DataError(f"game_weights: {item!r} is not Game=weight (e.g. 'Pong=2,Breakout=1')") from None
    return weights


def _resolve_weights(games: Sequence[str], weights: Mapping[str, float] | str | None) -> dict[str, float]:
    """Game -> mixing weight: uniform when none are given, else only the games given (> 0)."""
    if isinstance(weights, str):
        weights = parse_game_weights(weights)
    if not weights:
        return {game: 1.0 for game in games}
    unknown = sorted(set(weights) - set(games))
    if unknown:
        raise DataError(f"game_weights names {unknown}, which no data source holds (found {list(games)})")
    bad = {game: weight for game, weight in weights.items() if not weight >= 0}
    if bad or not any(weights.values()):
        raise DataError(f"game_weights must be >= 0 with at least one > 0, got {dict(weights)}")
    return {game: float(weights[game]) for game in games if weights.get(game, 0) > 0}


def _game_seed(seed: int, game: str) -> int:
    """A per-game seed that does not depend on which other games are mixed in."""
    return int(np.random.SeedSequence([seed, zlib.crc32(game.encode())]).generate_state(1)[0])
