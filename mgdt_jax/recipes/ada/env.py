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
import numpy as np


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
        ``done``, ``value``, ``advantage`` (GAE), ``trial`` and ``episode_return`` (the return of
        the meta-episode that ended with the step, where ``done``; 0 elsewhere) of the rollout."""


@dataclasses.dataclass(frozen=True, eq=False)
class UniformTasks:
    """Task ids uniform over ``train_ids`` (None: all of ``[0, num_tasks)``); ``params_of(id)`` builds a
    task's parameters. ``heldout_ids`` (None: none) are never drawn; evaluation uses them."""

    num_tasks: int
    params_of: Any  # Callable[[jax.Array], task_params], pure JAX
    train_ids: np.ndarray | None = None
    heldout_ids: np.ndarray | None = None

    def init(self, key: jax.Array) -> jax.Array:
        return jnp.zeros((), jnp.int32)  # uniform sampling keeps no state

    def sample(self, state: jax.Array, key: jax.Array) -> tuple[jax.Array, Any]:
        if self.train_ids is None:
            task_id = jax.random.randint(key, (), 0, self.num_tasks, jnp.int32)
        else:
            task_id = jnp.asarray(self.train_ids, jnp.int32)[jax.random.randint(key, (), 0, len(self.train_ids))]
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


def evaluation_task_ids(tasks: TaskSource) -> tuple[np.ndarray, str]:
    """``(ids int32 [n], "held-out" | "all")``: the task source's held-out ids, or every task id when it
    holds none out. ValueError (one line) for a source that names neither."""
    heldout = getattr(tasks, "heldout_ids", None)
    if heldout is not None and len(heldout):
        return np.asarray(heldout, np.int32), "held-out"
    if hasattr(tasks, "num_tasks"):
        return np.arange(tasks.num_tasks, dtype=np.int32), "all"
    raise ValueError(f"{type(tasks).__name__}: names no held-out tasks and no num_tasks to evaluate on")


def check_same_benchmark(env: MetaEnvironment, position: Mapping[str, Any], *, benchmark: Any, checkpoint: str,
                         why: str) -> None:
    """ValueError (one line) when the benchmark ``env`` was made from (its ``describe()``'s
    ``benchmark_sha256``) is not the one the checkpoint trained on (its data position's
    ``env.benchmark_sha256``): a file regenerated or replaced would give other rulesets under the
    same ids. ``benchmark`` (the file) and ``checkpoint`` name what is compared, ``why`` what would
    go wrong. Environments without a benchmark, and checkpoints that recorded none, pass."""
    saved_env = position.get("env")
    trained = saved_env.get("benchmark_sha256") if isinstance(saved_env, Mapping) else None
    current = env.describe().get("benchmark_sha256")
    if trained and current and trained != current:
        raise ValueError(f"{benchmark}: sha256 {current[:12]}... is not {trained[:12]}..., the benchmark {checkpoint} "
                         f"trained on (regenerated or replaced since); {why}")
