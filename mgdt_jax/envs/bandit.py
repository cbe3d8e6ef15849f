"""Bernoulli multi-armed bandits, as in Algorithm Distillation (Laskin et al. 2022, §4.1).

A task is one bandit: `means[k]` is the probability that arm k pays 1 (else 0). An episode is one
pull (`episode_length` 1); there is one observation, id 0, so a learner can tell arms apart only by
what its history paid. Regret is the pseudo-regret (Lattimore and Szepesvári, "Bandit Algorithms",
§4.5): pulling arm a costs `max(means) - means[a]`, in expectation over the reward draw.

Two task distributions:

* ``bandit``: every arm's mean uniform in [0, 1], independently.
* ``adversarial_bandit``: the paper's adversarial split, read from its text (quoted in public
  reimplementations; the paper gives no formula): "the reward is more likely under odd arms 95% of
  the time" in training and "under even arms 95% of the time" at evaluation. Here a task draws K
  means uniform in [0, 1] and gives the K/2 largest to the arms of one parity (in random order),
  the rest to the other; in training tasks the favoured parity is odd (arms 1, 3, 5, ... counting
  from 0) with probability 0.95, in held-out tasks it is even with probability 0.95. A learner that
  merely prefers the training parity therefore fails on held-out tasks; each arm's mean is still
  uniform in [0, 1] overall. (Another public reading scales odd and even arms' uniform means by
  0.95 and 0.05; ours keeps the means' range and changes only where the good arms are.)
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from mgdt_jax.envs.base import EnvError

# Held-out bandit task ids start here, so train and held-out ids never collide in a dataset.
HELDOUT_ID_BASE = 1 << 30
FAVOURED_PARITY_PROBABILITY = 0.95


class BanditTask(NamedTuple):
    id: jax.Array  # int32 []: index of the task in its seeded stream (+ HELDOUT_ID_BASE if held out)
    means: jax.Array  # float32 [num_arms]: P(reward = 1) of each arm


class BanditState(NamedTuple):
    t: jax.Array  # int32 []: pulls made in this episode (0 or 1)


@dataclasses.dataclass(frozen=True)
class BernoulliBandit:
    """K-armed Bernoulli bandit; `adversarial` selects the paper's odd/even split (module doc)."""

    name: str = "bandit"
    num_arms: int = 10
    adversarial: bool = False
    num_train: int = 10_000
    num_heldout: int = 1_024

    num_observations = 1
    episode_length = 1

    def __post_init__(self):
        if self.num_arms < 2 or (self.adversarial and self.num_arms % 2):
            raise EnvError(f"{self.name}: num_arms {self.num_arms} must be >= 2 (and even if adversarial)")

    @property
    def num_actions(self) -> int:
        return self.num_arms

    def _task(self, key: jax.Array, index: jax.Array, heldout: jax.Array) -> BanditTask:
        key = jax.random.fold_in(key, index)
        uniform_key, parity_key, high_key, low_key = jax.random.split(key, 4)
        means = jax.random.uniform(uniform_key, (self.num_arms,))
        if self.adversarial:
            half = self.num_arms // 2
            ordered = jnp.sort(means)[::-1]
            high = ordered[:half][jnp.argsort(jax.random.uniform(high_key, (half,)))]  # random order
            low = ordered[half:][jnp.argsort(jax.random.uniform(low_key, (half,)))]
            odd_probability = jnp.where(heldout, 1.0 - FAVOURED_PARITY_PROBABILITY, FAVOURED_PARITY_PROBABILITY)
            odd_favoured = jax.random.bernoulli(parity_key, odd_probability)
            odd, even = jnp.where(odd_favoured, high, low), jnp.where(odd_favoured, low, high)
            means = jnp.stack([even, odd], axis=1).reshape(self.num_arms)
        return BanditTask(jnp.where(heldout, HELDOUT_ID_BASE, 0) + index.astype(jnp.int32), means.astype(jnp.float32))

    def sample_tasks(self, key: jax.Array, n: int, heldout: bool = False) -> BanditTask:
        """n tasks of one seeded stream: task i depends only on (key, i), so a longer draw extends
        a shorter one. `heldout` draws from the evaluation distribution (adversarial: even arms
        favoured) and numbers the tasks from HELDOUT_ID_BASE."""
        return self._sample(key, n, jnp.bool_(heldout))

    @functools.partial(jax.jit, static_argnames=("self", "n"))
    def _sample(self, key: jax.Array, n: int, heldout: jax.Array) -> BanditTask:
        return jax.vmap(lambda i: self._task(key, i, heldout))(jnp.arange(n, dtype=jnp.int32))

    def task_split(self, seed: int, num_train: int | None = None,
                   num_heldout: int | None = None) -> tuple[BanditTask, BanditTask]:
        """Two independent seeded streams (training and held-out distribution); bandit tasks are
        continuous, so they overlap only in their ids, which are disjoint by construction."""
        num_train = self.num_train if num_train is None else num_train
        num_heldout = self.num_heldout if num_heldout is None else num_heldout
        if min(num_train, num_heldout) < 0 or max(num_train, num_heldout) >= HELDOUT_ID_BASE:
            raise EnvError(f"{self.name}: split sizes {num_train}/{num_heldout} must be in [0, {HELDOUT_ID_BASE})")
        key = jax.random.key(seed)
        return (self.sample_tasks(jax.random.fold_in(key, 0), num_train),
                self.sample_tasks(jax.random.fold_in(key, 1), num_heldout, heldout=True))

    def reset(self, task: BanditTask, key: jax.Array) -> tuple[BanditState, jax.Array]:
        return BanditState(jnp.int32(0)), jnp.int32(0)

    def step(self, task: BanditTask, state: BanditState, action: jax.Array,
             key: jax.Array) -> tuple[BanditState, jax.Array, jax.Array, jax.Array]:
        reward = jax.random.bernoulli(key, task.means[action]).astype(jnp.float32)
        return BanditState(state.t + 1), jnp.int32(0), reward, jnp.bool_(True)

    def terminated(self, state: BanditState) -> jax.Array:
        return state.t >= 1

    def optimal_action(self, task: BanditTask, observation: jax.Array) -> jax.Array:
        return jnp.argmax(task.means).astype(jnp.int32)

    def optimal_return(self, task: BanditTask) -> jax.Array:
        return jnp.max(task.means)

    def config(self) -> dict:
        return {"name": self.name, "num_arms": self.num_arms, "adversarial": self.adversarial,
                "favoured_parity_probability": FAVOURED_PARITY_PROBABILITY if self.adversarial else None}


def regret(task: BanditTask, actions: jax.Array) -> jax.Array:
    """Pseudo-regret of each pull: `max(means) - means[actions]`, float32 with the shape of actions
    (one task; vmap for many). Cumulative regret is its cumulative sum over pulls."""
    return jnp.max(task.means) - task.means[actions]


BANDIT = BernoulliBandit()
ADVERSARIAL_BANDIT = BernoulliBandit(name="adversarial_bandit", adversarial=True)
