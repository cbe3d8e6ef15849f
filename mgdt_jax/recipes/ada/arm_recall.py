"""Arm recall: a small meta-RL task where only memory across trials pays (tests, the tiny experiment).

A task is a hidden good arm among ``num_arms``. A meta-episode is ``num_trials`` trials of
``trial_length`` steps: on a trial's first step (observation 0) the agent pulls an arm (actions
1..num_arms pay 1 for the good arm, 0 otherwise; action 0 waits and pays 0); on the trial's other
steps (observation 1) it should wait: any other action costs ``wait_penalty``. The reward of a pull
reaches the agent one step later (its previous reward input), and the next pull comes
``trial_length`` steps after the last. So a memoryless policy earns 0.5 per trial in expectation
with two arms (signalling the arm through its own wait actions costs more than it gains when
``wait_penalty * (trial_length - 1) > 0.5``), while an agent that remembers earns 0.5 in trial 1
and 1 in every later trial. The agent also sees the trial index (one-hot) and the elapsed fraction
of the meta-episode as extra inputs, as AdA's agent does.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from mgdt_jax.core.config_sections import read_section
from mgdt_jax.recipes.ada.env import TimeStep, UniformTasks

WAIT = 0  # the action that waits; arm a is action a + 1


class ArmRecallState(NamedTuple):
    good_arm: jax.Array  # int32 []
    t: jax.Array  # int32 []: steps taken in this meta-episode


@dataclasses.dataclass(frozen=True)
class ArmRecall:
    num_arms: int = 2
    num_trials: int = 4
    trial_length: int = 2
    wait_penalty: float = 0.5
    max_trials: int = 0  # width of the trial one-hot (0: num_trials); evaluation may run up to it

    def __post_init__(self):
        if self.num_arms < 2 or self.num_trials < 1 or self.trial_length < 1:
            raise ValueError(
                f"arm recall: num_arms {self.num_arms} must be >= 2, num_trials {self.num_trials} and "
                f"trial_length {self.trial_length} >= 1"
            )
        if self.max_trials and self.max_trials < self.num_trials:
            raise ValueError(f"arm recall: max_trials {self.max_trials} below num_trials {self.num_trials}")

    @property
    def num_actions(self) -> int:
        return self.num_arms + 1

    @property
    def num_observations(self) -> int:
        return 2  # 0: pull, 1: wait

    @property
    def episode_length(self) -> int:
        return self.num_trials * self.trial_length

    def _timestep(self, t: jax.Array, reward: jax.Array, done: jax.Array, trial: jax.Array) -> TimeStep:
        next_trial = jnp.minimum(t // self.trial_length, self.num_trials - 1)
        return TimeStep(
            observation=(t % self.trial_length != 0).astype(jnp.int32),
            reward=reward.astype(jnp.float32),
            done=done,
            trial=trial.astype(jnp.int32),
            extras={
                "trial": jax.nn.one_hot(next_trial, self.max_trials or self.num_trials, dtype=jnp.float32),
                "time": (t / self.episode_length).astype(jnp.float32)[None],
            },
        )

    def reset(self, key: jax.Array, task_params: jax.Array) -> tuple[ArmRecallState, TimeStep]:
        t = jnp.zeros((), jnp.int32)
        return ArmRecallState(good_arm=jnp.asarray(task_params, jnp.int32), t=t), self._timestep(
            t, jnp.zeros(()), jnp.zeros((), bool), t
        )

    def step(self, state: ArmRecallState, action: jax.Array) -> tuple[ArmRecallState, TimeStep]:
        pull = state.t % self.trial_length == 0
        reward = jnp.where(
            pull, (action == state.good_arm + 1).astype(jnp.float32), -self.wait_penalty * (action != WAIT)
        )
        t = state.t + 1
        return state._replace(t=t), self._timestep(t, reward, t >= self.episode_length, state.t // self.trial_length)

    def optimal_trial_returns(self) -> list[float]:
        """Expected return of each trial for an agent that remembers (closed form)."""
        # Trial k (0-based) pulls an arm not tried yet until the good one is found: the good arm has
        # been found by trial k (and pays) with probability min(k + 1, A) / A.
        return [min(k + 1, self.num_arms) / self.num_arms for k in range(self.num_trials)]

    def describe(self) -> dict[str, Any]:
        return {"name": "arm_recall", **dataclasses.asdict(self)}


def make(env_config: Any) -> tuple[ArmRecall, UniformTasks]:
    """The ``env.factory`` of arm recall: the environment and uniform good arms."""
    env = read_section(ArmRecall, env_config)
    return env, UniformTasks(num_tasks=env.num_arms, params_of=lambda task_id: task_id)
