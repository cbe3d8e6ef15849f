"""The policies that record the JAT tasks of mgdt_jax/envs/gym_tasks.py: each domain's expert and a
uniform-random policy (for the references' random score).

- BabyAI: minigrid's `BabyAIBot`, re-planned at every step.
- Meta-World: metaworld's scripted policy for the task plus Gaussian action noise (std 0.2).
- MuJoCo: an expert trained with our PPO (ppo.py), stored in the experts directory.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np


class ExpertError(ValueError):
    """An expert that cannot be used for a task; the message names it and the fault."""


class PlanningError(RuntimeError):
    """The expert failed to choose an action in one episode (the BabyAI bot can fail to plan)."""


class Policy(Protocol):
    """Chooses actions in one environment; `begin` is called after each reset."""

    def begin(self, env: Any) -> None: ...

    def act(self, observation: Any) -> Any: ...


class RandomPolicy:
    """Uniform over the environment's action space (its own seeded sampler)."""

    def __init__(self, env: Any, seed: int):
        self._space = env.action_space
        self._space.seed(seed)

    def begin(self, env: Any) -> None:
        pass

    def act(self, observation: Any) -> Any:
        return self._space.sample()


class BabyAIBotPolicy:
    """minigrid's BabyAIBot, re-planned from the environment's state at every step."""

    def __init__(self):
        self._bot = None

    def begin(self, env: Any) -> None:
        from minigrid.utils.baby_ai_bot import BabyAIBot

        self._bot = BabyAIBot(env.unwrapped)

    def act(self, observation: Any) -> int:
        try:
            return int(self._bot.replan())
        except Exception as error:  # noqa: BLE001  (any fault of the bot's planner ends only this episode)
            raise PlanningError(f"{type(error).__name__}: {error}") from error


# Gaussian noise added to the scripted policies' actions. Noiseless, their actions change smoothly
# from step to step, so a student that sees a_{t-1} learns to repeat it: the mini-JAT's reach drifted
# off the goal with one constant action (docs/jat.md §10). With noise, a_{t-1} predicts a_t worse than
# o_t does, and the episodes show corrections. At std 0.2 the mini-JAT's recording (200 episodes a
# task) still succeeds in every reach, drawer-close and button-press-topdown episode and in 96.5% of
# push's; at std 0.3 push succeeded in 5 of 6 episodes.
METAWORLD_ACTION_NOISE = 0.2


class ScriptedMetaWorldPolicy:
    """metaworld's scripted policy for a v3 task (it reads the 39-d observation), plus
    N(0, METAWORLD_ACTION_NOISE²) on each action dimension (seeded by ``seed``, so a recording is
    repeatable; the task's expert name states the same std)."""

    def __init__(self, task: str, seed: int = 0):
        from metaworld.policies import ENV_POLICY_MAP

        self._policy = ENV_POLICY_MAP[f"{task}-v3"]()
        self._rng = np.random.default_rng(seed)

    def begin(self, env: Any) -> None:
        pass

    def act(self, observation: np.ndarray) -> np.ndarray:
        action = self._policy.get_action(observation)
        return (action + METAWORLD_ACTION_NOISE * self._rng.standard_normal(action.shape)).astype(np.float32)


EXPERT_NAMES = {  # recorded with each dataset
    "babyai": "minigrid BabyAIBot",
    "metaworld": f"metaworld scripted policy, action noise std {METAWORLD_ACTION_NOISE}",
    "mujoco": "PPO expert (data_pipelines/jat/ppo.py)",
}
