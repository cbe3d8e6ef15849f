"""What the AdA recipe needs of its tasks: a multi-trial meta-environment and a task source.

A **meta-environment** runs episodes of k trials of one task: the world resets between trials, the
agent's memory does not (AdA, Adaptive Agent Team 2023, §2). Its methods are pure JAX functions of
one environment (the rollout vmaps them over thousands):

* ``reset(key, task_params) -> (state, TimeStep)``: the first step of a meta-episode of a task;
* ``step(state, action) -> (state, TimeStep)``; ``TimeStep.done`` is True on the meta-episode's
  last step, after which the rollout draws a new task and resets (and the agent's memory starts
  empty). Trial ends inside a meta-episode are not ``done``.

A **task source** (a curriculum, or uniform sampling) is a pytree-state sampler: ``init(key)``,
``sample(state, key) -> (task_id, task_params)`` for one environment (the rollout vmaps it), and
``update(state, trajectory) -> state`` once per rollout, seeing what the agent did on the tasks it
sampled. Its state lives in the recipe's ``RolloutState.shared``, hence in every checkpoint.

An experiment names both with ``config.env.factory = "module:function"``; ``function(config.env)``
returns ``(meta_environment, task_source)``.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Mapping
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp


class TimeStep(NamedTuple):
    """What the agent sees after a reset or a step of one environment."""

    observation: Any  # a pytree of arrays (an int32 id, an int32 [5, 5, 2] grid view, ...)
    reward: jax.Array  # float32 []: the reward of the action just taken (0 after a reset)
    done: jax.Array  # bool []: the meta-episode ended with this step
    trial: jax.Array  # int32 []: the trial this step's reward belongs to, 0 .. num_trials - 1
    extras: Mapping[str, jax.Array]  # float32 [F] vectors fed to the agent (trial index, time, goal ...)


class MetaEnvironment(Protocol):
    num_actions: int
    num_trials: int  # trials per meta-episode (k)

    def reset(self, key: jax.Array, task_params: Any) -> tuple[Any, TimeStep]:
        """The first step of a meta-episode of ``task_params`` (reward 0, done False, trial 0)."""

    def step(self, state: Any, action: jax.Array) -> tuple[Any, TimeStep]:
        """One step; the environment keeps its own randomness in ``state``."""

    def describe(self) -> dict[str, Any]:
        """JSON settings that define the environment (saved with checkpoints)."""


class TaskSource(Protocol):
    def init(self, key: jax.Array) -> Any:
        """The sampler's state (a pytree of plain arrays; no typed PRNG keys)."""

    def sample(self, state: Any, key: jax.Array) -> tuple[jax.Array, Any]:
        """``(task_id int32 [], task_params)`` for one environment."""

    def update(self, state: Any, trajectory: Mapping[str, jax.Array]) -> Any:
        """The state after a rollout. ``trajectory`` holds [E, T] arrays ``task_id``, ``reward``,
        ``done``, ``value``, ``advantage`` (GAE) and ``trial`` of the rollout just taken."""


@dataclasses.dataclass(frozen=True)
class UniformTasks:
    """Task ids uniform over ``[0, num_tasks)``; ``params_of(id)`` builds a task's parameters."""

    num_tasks: int
    params_of: Any  # Callable[[jax.Array], task_params], pure JAX

    def init(self, key: jax.Array) -> jax.Array:
        return jnp.zeros((), jnp.int32)  # uniform sampling keeps no state

    def sample(self, state: jax.Array, key: jax.Array) -> tuple[jax.Array, Any]:
        task_id = jax.random.randint(key, (), 0, self.num_tasks, jnp.int32)
        return task_id, self.params_of(task_id)

    def update(self, state: jax.Array, trajectory: Mapping[str, jax.Array]) -> jax.Array:
        return state


def make(env_config: Any) -> tuple[MetaEnvironment, TaskSource]:
    """``(meta_environment, task_source)`` from ``config.env`` (its ``factory``, see above).

    Raises ValueError (one line) for a factory that is not ``module:function`` or cannot be found.
    """
    factory = env_config["factory"] if isinstance(env_config, Mapping) else getattr(env_config, "factory", None)
    module_name, _, function_name = str(factory).partition(":")
    if not module_name or not function_name:
        raise ValueError(f"env.factory {factory!r} is not 'module:function'")
    try:
        function = getattr(importlib.import_module(module_name), function_name)
    except (ModuleNotFoundError, AttributeError) as error:
        raise ValueError(f"env.factory {factory!r}: {error}") from None
    return function(env_config)
