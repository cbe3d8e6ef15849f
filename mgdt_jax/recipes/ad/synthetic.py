"""Small Bernoulli-bandit learning histories made in memory with NumPy, for tests and design
measurements that must not depend on a dataset on disk.

Thompson sampling with Beta(1, 1) priors (Thompson 1933; Chapelle & Li 2011) on K-armed Bernoulli
bandits with arm means drawn uniformly in [0, 1], the bandit setting of Laskin et al. 2022 (§5).
The result has the fields of mgdt_jax.recipes.ad.histories.Histories (AD's in-memory contract).
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class BanditHistories:
    """H histories of T pulls (1-step episodes); the fields of the Histories contract, plus
    ``metadata["arm_means"]`` float64 [H, K]."""

    observations: np.ndarray  # int32 [H, T], all 0: a bandit has one observation
    actions: np.ndarray  # int32 [H, T]
    rewards: np.ndarray  # float32 [H, T], 0 or 1
    task_ids: np.ndarray  # int32 [H]
    env_name: str
    episode_length: int
    num_actions: int
    num_observations: int
    source: str
    metadata: dict


def thompson_bandit_histories(num_histories: int, pulls: int, num_arms: int, seed: int) -> BanditHistories:
    """``num_histories`` Thompson-sampling histories of ``pulls`` pulls, one fresh task each."""
    rng = np.random.default_rng(seed)
    means = rng.uniform(0.0, 1.0, (num_histories, num_arms))
    successes = np.ones((num_histories, num_arms))
    failures = np.ones((num_histories, num_arms))
    actions = np.zeros((num_histories, pulls), np.int32)
    rewards = np.zeros((num_histories, pulls), np.float32)
    rows = np.arange(num_histories)
    for pull in range(pulls):
        action = np.argmax(rng.beta(successes, failures), axis=1)
        reward = rng.random(num_histories) < means[rows, action]
        successes[rows, action] += reward
        failures[rows, action] += ~reward
        actions[:, pull], rewards[:, pull] = action, reward
    return BanditHistories(
        observations=np.zeros((num_histories, pulls), np.int32),
        actions=actions,
        rewards=rewards,
        task_ids=rows.astype(np.int32),
        env_name="bandit",
        episode_length=1,
        num_actions=num_arms,
        num_observations=1,
        source="thompson_sampling",
        metadata={"arm_means": means, "seed": seed},
    )
