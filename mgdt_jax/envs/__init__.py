"""Environments, apart from the agents that play them: Atari tables (atari.py) and JAX-native
environments (pure functions; jit and vmap over tasks; interface in base.py)."""

from __future__ import annotations

from mgdt_jax.envs.bandit import ADVERSARIAL_BANDIT, BANDIT
from mgdt_jax.envs.base import Environment, EnvError
from mgdt_jax.envs.darkroom import DARKROOM, DARKROOM_HARD
from mgdt_jax.envs.key_to_door import KEY_TO_DOOR

ENVS: dict[str, Environment] = {env.name: env for env in
                                (BANDIT, ADVERSARIAL_BANDIT, DARKROOM, DARKROOM_HARD, KEY_TO_DOOR)}


def get(name: str) -> Environment:
    """The environment registered under `name`; EnvError naming the known ones otherwise."""
    try:
        return ENVS[name]
    except KeyError:
        raise EnvError(f"unknown environment {name!r}; known: {', '.join(ENVS)}") from None
