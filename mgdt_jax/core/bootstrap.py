"""Point estimates with stratified-bootstrap confidence intervals, as rliable computes them.

rliable (Agarwal et al., 2021) resamples runs with replacement within each task, keeping the tasks
(``StratifiedBootstrap``), and takes percentile intervals. Its resampling draws from NumPy's global
random state (``np.random.choice`` in ``rliable/library.py``), not from the ``random_state`` it is
given, so the same scores gave other intervals from run to run; ``interval`` seeds that global state
for the draw and puts it back after.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable

import numpy as np

BOOTSTRAP_REPS = 2000
CONFIDENCE = 0.95


@dataclasses.dataclass(frozen=True)
class Interval:
    """A point estimate with its bootstrap confidence interval."""

    value: float
    low: float
    high: float


def interval(scores: np.ndarray, statistic: Callable[[np.ndarray], float], *, reps: int = BOOTSTRAP_REPS,
             seed: int = 0) -> Interval:
    """``statistic`` of ``scores`` [num_runs, num_tasks] with rliable's stratified-bootstrap 95%
    percentile interval; the same scores and seed give the same interval."""
    from rliable import library  # noqa: PLC0415  (a report dependency: only when scoring)

    saved = np.random.get_state()
    np.random.seed(seed)
    try:
        with warnings.catch_warnings():  # arch deprecates the random_state that rliable passes it
            warnings.simplefilter("ignore", FutureWarning)
            points, intervals = library.get_interval_estimates(
                {"scores": np.asarray(scores, np.float64)}, lambda sample: np.array([statistic(sample)]), reps=reps,
                confidence_interval_size=CONFIDENCE, random_state=np.random.RandomState(seed))
    finally:
        np.random.set_state(saved)
    (low,), (high,) = intervals["scores"]
    return Interval(float(points["scores"][0]), float(low), float(high))
