"""Raw scores -> human-normalised scores and aggregates with stratified bootstrap 95% intervals.

Human-normalised score (HNS) = (score - random) / (human - random), with the Atari-57 random/human
table of DQN Zoo (``dqn_zoo/atari_data.py``; mgdt_jax/envs/atari_scores.csv). Of the 60 DQN
Replay games, the five outside Atari-57 (AirRaid, Carnival, ElevatorAction, JourneyEscape, Pooyan)
have no human score: they are reported raw and left out of every normalised aggregate.

The aggregates and their intervals are rliable's (Agarwal et al., 2021): IQM over all episodes of
all games, median and mean of per-game means, each with a percentile interval from the stratified
bootstrap (episodes resampled with replacement within each game, the games themselves kept).
rliable needs pandas < 3 (its `arch` dependency breaks on pandas 3), which .ci/constraints.txt pins.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
from rliable import metrics

from mgdt_jax.core import bootstrap
from mgdt_jax.core.bootstrap import BOOTSTRAP_REPS, Interval
from mgdt_jax.envs import atari

AGGREGATES: dict[str, Callable[[np.ndarray], float]] = {
    "iqm": metrics.aggregate_iqm,
    "median": metrics.aggregate_median,
    "mean": metrics.aggregate_mean,
}


def has_human_score(game: str) -> bool:
    reference = atari.reference_scores().get(atari.check_game(game))
    return reference is not None and reference.human is not None and reference.random is not None


def human_normalised(game: str, raw_scores: np.ndarray) -> np.ndarray:
    """Raw episode scores -> HNS; raises ValueError for a game without a human score (e.g. Pooyan)."""
    if not has_human_score(game):
        raise ValueError(f"{game} has no human reference score; report it raw")
    reference = atari.reference_scores()[atari.check_game(game)]
    return (np.asarray(raw_scores, np.float64) - reference.random) / (reference.human - reference.random)


def game_interval(normalised_scores: np.ndarray, *, reps: int = BOOTSTRAP_REPS, seed: int = 0) -> Interval:
    """Mean score of one game's episodes with a bootstrap 95% interval."""
    return bootstrap.interval(np.asarray(normalised_scores, np.float64)[:, None], metrics.aggregate_mean, reps=reps, seed=seed)


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
    return {name: bootstrap.interval(matrix, fn, reps=reps, seed=seed) for name, fn in AGGREGATES.items()}
