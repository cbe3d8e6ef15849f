"""Raw scores -> human-normalised scores and aggregates with stratified bootstrap 95% intervals.

Human-normalised score (HNS) = (score - random) / (human - random), with the DQN Zoo random/human
table (mgdt_jax/atari.py). Carnival and Pooyan are not in Atari-57 and have no human score: they are
reported raw and left out of every normalised aggregate.

The aggregates are rliable's (IQM over all episodes of all games, median and mean of per-game means).
The intervals come from the stratified bootstrap of Agarwal et al. (2021): episodes are resampled
with replacement within each game, the games themselves are kept. It is written here with NumPy
because `rliable.library` cannot be imported with the pinned stack (it imports `arch` 7, which
breaks on pandas 3, and `arch` 8 no longer accepts the `random_state` rliable passes).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import numpy as np
from rliable import metrics

from mgdt_jax import atari

BOOTSTRAP_REPS = 2000
CONFIDENCE = 0.95

AGGREGATES: dict[str, Callable[[np.ndarray], float]] = {
    "iqm": metrics.aggregate_iqm,
    "median": metrics.aggregate_median,
    "mean": metrics.aggregate_mean,
}


@dataclasses.dataclass(frozen=True)
class Interval:
    """A point estimate with its bootstrap confidence interval."""

    value: float
    low: float
    high: float


def has_human_score(game: str) -> bool:
    reference = atari.reference_scores().get(atari.check_game(game))
    return reference is not None and reference.human is not None and reference.random is not None


def human_normalised(game: str, raw_scores: np.ndarray) -> np.ndarray:
    """Raw episode scores -> HNS; raises for a game without a human score (Carnival, Pooyan)."""
    if not has_human_score(game):
        raise ValueError(f"{game} has no human reference score; report it raw")
    reference = atari.reference_scores()[atari.check_game(game)]
    return (np.asarray(raw_scores, np.float64) - reference.random) / (reference.human - reference.random)


def _bootstrap_interval(
    scores: np.ndarray, statistic: Callable[[np.ndarray], float], reps: int, seed: int
) -> Interval:
    """Percentile interval of `statistic` over resamples of the runs (rows) within each task (column).

    scores: [num_runs, num_tasks].
    """
    num_runs, num_tasks = scores.shape
    rng = np.random.default_rng(seed)
    columns = np.arange(num_tasks)[None, :]  # [1, num_tasks]
    replicates = np.array(
        [statistic(scores[rng.integers(0, num_runs, size=scores.shape), columns]) for _ in range(reps)]
    )
    tail = (1.0 - CONFIDENCE) / 2 * 100
    low, high = np.percentile(replicates, [tail, 100 - tail])
    return Interval(float(statistic(scores)), float(low), float(high))


def game_interval(normalised_scores: np.ndarray, *, reps: int = BOOTSTRAP_REPS, seed: int = 0) -> Interval:
    """Mean score of one game's episodes with a bootstrap 95% interval."""
    return _bootstrap_interval(np.asarray(normalised_scores, np.float64)[:, None], metrics.aggregate_mean, reps, seed)


def aggregate(
    normalised_by_game: Mapping[str, np.ndarray], *, reps: int = BOOTSTRAP_REPS, seed: int = 0
) -> dict[str, Interval]:
    """IQM, median and mean over games of their normalised episode scores, with 95% intervals.

    Every game must have the same number of episodes (the stratified bootstrap's runs x tasks).
    """
    counts = {game: len(scores) for game, scores in normalised_by_game.items()}
    if not counts:
        raise ValueError("no game with a human-normalised score to aggregate")
    if len(set(counts.values())) != 1:
        raise ValueError(f"aggregates need the same number of episodes for every game, got {counts}")
    matrix = np.stack([np.asarray(s, np.float64) for s in normalised_by_game.values()], axis=1)  # [runs, games]
    return {name: _bootstrap_interval(matrix, fn, reps, seed) for name, fn in AGGREGATES.items()}
