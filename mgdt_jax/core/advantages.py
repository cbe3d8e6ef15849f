"""Generalized advantage estimation, the one used by every learner that needs it: the AdA recipe's
PPO (on device, inside the train step), the AD sources' actor-critic and the JAT MuJoCo experts' PPO.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def generalized_advantages(
    rewards: jax.Array,
    values: jax.Array,
    next_values: jax.Array,
    terminated: jax.Array,
    ends: jax.Array,
    discount: float,
    gae_lambda: float,
) -> jax.Array:
    """GAE(lambda) (Schulman et al. 2016, "High-Dimensional Continuous Control Using Generalized
    Advantage Estimation", eq. 16) over time-major arrays [T, ...] (any trailing batch axes):

        delta_t = r_t + discount * V(s_{t+1}) * (1 - terminated_t) - V(s_t)
        A_t     = delta_t + discount * gae_lambda * (1 - end_t) * A_{t+1},   A_T = 0

    ``next_values[t]`` is V(s_{t+1}), the value of the state step t led to (before any reset), so a
    step cut by a time limit (``ends`` but not ``terminated``) still bootstraps; ``terminated``: no
    value past the step; ``ends``: the trace stops (a terminal state or a time limit). Returns the
    advantages, float32 [T, ...]; the value targets are ``advantages + values``.
    """
    terminated = terminated.astype(jnp.float32)
    continues = discount * gae_lambda * (1.0 - ends.astype(jnp.float32))
    deltas = rewards + discount * next_values * (1.0 - terminated) - values

    def backward(following: jax.Array, inputs: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        delta, carry_on = inputs
        advantage = delta + carry_on * following
        return advantage, advantage

    _, advantages = jax.lax.scan(backward, jnp.zeros_like(deltas[0]), (deltas, continues), reverse=True)
    return advantages.astype(jnp.float32)
