"""The interface every JAX-native environment of mgdt_jax.envs follows.

An environment is a frozen (hashable) dataclass whose methods are pure functions of their
arguments, so they jit (the environment is a static argument or a closure) and vmap over tasks: one
task's leaves carry no batch axis, `jax.vmap` adds it. Observations are int32 ids in
[0, num_observations); every episode lasts exactly `episode_length` steps, so that a learning
history of E episodes is E * episode_length steps (what Algorithm Distillation's context counts in).
"""

from __future__ import annotations

from typing import Any, Protocol

import jax

Task = Any  # a NamedTuple of arrays; its `id` leaf is an int32 task id
State = Any  # a NamedTuple of arrays


class EnvError(ValueError):
    """A request no environment can meet (unknown name, a task split that overlaps); the message
    names the value and the fault."""


class Environment(Protocol):
    name: str
    num_actions: int
    num_observations: int
    episode_length: int

    def sample_tasks(self, key: jax.Array, n: int) -> Task:
        """n tasks drawn from the environment's training distribution (leaves [n, ...])."""

    def task_split(self, seed: int, num_train: int | None = None,
                   num_heldout: int | None = None) -> tuple[Task, Task]:
        """(train tasks, held-out tasks), disjoint and fixed by the seed; EnvError if the sizes
        asked for make the two overlap."""

    def reset(self, task: Task, key: jax.Array) -> tuple[State, jax.Array]:
        """Start of an episode: (state, observation int32 [])."""

    def step(self, task: Task, state: State, action: jax.Array,
             key: jax.Array) -> tuple[State, jax.Array, jax.Array, jax.Array]:
        """(state, observation int32 [], reward float32 [], done bool []); done is True on the
        episode's last step (step `episode_length`)."""

    def terminated(self, state: State) -> jax.Array:
        """bool []: whether the episode has reached a terminal state (the goal of a reward-once
        task, a bandit's pull) rather than only running out of time. Learners stop bootstrapping
        there; RLDS marks such an episode `is_terminal`."""

    def optimal_action(self, task: Task, observation: jax.Array) -> jax.Array:
        """int32 []: an optimal action at `observation` for `task` (the demonstrator of AD^epsilon
        and of Expert Distillation)."""

    def optimal_return(self, task: Task) -> jax.Array:
        """float32 []: the expected return of an optimal policy over one episode, in closed form."""

    def config(self) -> dict:
        """The settings that define the environment (JSON-ready), recorded with every history."""
