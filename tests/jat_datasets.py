"""Small JAT datasets the tests write with the real RLDS writer (data_pipelines/jat/rlds.py).

Two tasks whose expert is a fixed rule, so a tiny model learns them in tens of steps:
``synthetic-discrete`` (BabyAI's fields: 148 symbols, a mission, 7 actions; the action is the
agent's direction, the first symbol) and ``synthetic-continuous`` (5-d observations, 2-d actions
``tanh(W o)``). Episode lengths vary (3 to 20 steps), so rows pack several episodes. Each has a
references.json with its expert reference and, for the continuous task, its observation
statistics, as mgdt-jat-record writes them (no random reference: these tasks have no environment).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from data_pipelines.jat import rlds
from mgdt_jax.recipes.jat import fields as jat_fields
from mgdt_jax.recipes.jat import references

MISSIONS = ("go to the red ball", "pick up a blue key", "open the yellow door, then go to the grey box")


def _discrete_episode(rng: np.random.Generator) -> rlds.Episode:
    length = int(rng.integers(3, 21))
    symbols = rng.integers(0, 11, size=(length + 1, 148))
    symbols[:, 0] = rng.integers(0, 4, size=length + 1)
    mission = MISSIONS[int(rng.integers(len(MISSIONS)))]
    rewards = np.zeros(length, np.float32)
    rewards[-1] = 1.0
    return rlds.Episode({"discrete_observations": symbols.astype(np.int64), "text_observations": [mission] * (length + 1)},
                        symbols[:-1, 0].astype(np.int64), rewards, terminated=True, success=True)


def _continuous_episode(rng: np.random.Generator, weights: np.ndarray) -> rlds.Episode:
    length = int(rng.integers(3, 21))
    observations = rng.normal(size=(length + 1, 5)).astype(np.float32)
    actions = np.tanh(observations[:-1] @ weights).astype(np.float32)
    rewards = -np.abs(actions).sum(-1).astype(np.float32)
    return rlds.Episode({"continuous_observations": observations}, actions, rewards, terminated=False)


def write(root: Path, episodes: int = 40, seed: int = 0) -> dict[str, Path]:
    """Writes both tasks under ``root``; returns task name -> dataset directory."""
    rng = np.random.default_rng(seed)
    weights = rng.normal(size=(5, 2))
    discrete = jat_fields.TaskSpec("synthetic-discrete", {"discrete_observations": (148,), "text_observations": (),
                                                    "discrete_actions": (), "rewards": ()})
    continuous = jat_fields.TaskSpec("synthetic-continuous", {"continuous_observations": (5,), "continuous_actions": (2,),
                                                        "rewards": ()})
    out = {}
    for spec, make in ((discrete, lambda: _discrete_episode(rng)), (continuous, lambda: _continuous_episode(rng, weights))):
        out[spec.task] = Path(root) / spec.task
        moments = rlds.ObservationMoments()
        summary = rlds.write_dataset(out[spec.task], spec, (make() for _ in range(episodes)), {"task": spec.task},
                                     on_episode=moments.add)
        expert = references.Reference(summary["mean_return"], 0.0, summary["episodes"])
        references.save(references.TaskReferences(spec.task, "", expert, None, {}, moments.stats()), out[spec.task])
    return out
