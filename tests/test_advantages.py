"""GAE (mgdt_jax/core/advantages.py), shared by AdA's PPO, AD's actor-critic and the JAT experts' PPO:
hand-computed values at a time limit, at a terminal state and past both, over a batch axis."""

import numpy as np

from mgdt_jax.core.advantages import generalized_advantages


def test_advantages_bootstrap_at_a_time_limit_and_stop_at_a_terminal_state():
    # Steps 0-1 of one episode cut by a time limit at step 1; step 2 starts a new one and ends in a
    # terminal state; step 3 is cut by the end of the rollout (bootstrapped).
    rewards = np.array([1.0, 1.0, 1.0, 2.0], np.float32)[:, None]
    values = np.array([0.5, 0.5, 0.5, 0.25], np.float32)[:, None]
    next_values = np.array([0.5, 3.0, 9.0, 2.0], np.float32)[:, None]  # V(s_{t+1}) before any reset
    terminated = np.array([0, 0, 1, 0], np.float32)[:, None]
    ends = np.array([0, 1, 1, 0], np.float32)[:, None]
    gamma, lam = 0.9, 0.5
    advantages = np.asarray(generalized_advantages(rewards, values, next_values, terminated, ends, gamma, lam))

    last = 2 + gamma * 2.0 - 0.25  # the rollout's end: bootstraps, nothing after it
    terminal = 1 - 0.5  # no value past a terminal state (9.0 is ignored), and the trace stops
    time_limit = 1 + gamma * 3.0 - 0.5  # bootstraps from the state it was cut at; the trace stops
    first = (1 + gamma * 0.5 - 0.5) + gamma * lam * time_limit
    np.testing.assert_allclose(advantages[:, 0], [first, time_limit, terminal, last], rtol=1e-6)
    assert advantages.dtype == np.float32


def test_trailing_axes_are_independent_streams():
    rng = np.random.default_rng(0)
    shape = (6, 3, 2)
    rewards, values, next_values = (rng.normal(size=shape).astype(np.float32) for _ in range(3))
    terminated = rng.random(shape) < 0.3
    ends = terminated | (rng.random(shape) < 0.2)
    together = np.asarray(generalized_advantages(rewards, values, next_values, terminated, ends, 0.99, 0.95))
    for i in range(3):
        for j in range(2):
            alone = generalized_advantages(rewards[:, i, j], values[:, i, j], next_values[:, i, j],
                                           terminated[:, i, j], ends[:, i, j], 0.99, 0.95)
            np.testing.assert_allclose(together[:, i, j], alone, rtol=1e-6)
