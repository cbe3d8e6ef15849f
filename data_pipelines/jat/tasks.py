"""JAT tasks we can record here: their environments, observation fields and experts.

Task names follow JAT's (`babyai-go-to-local`, `metaworld-reach`, `mujoco-pendulum`):
- `babyai-<level>`: a BabyAI level of `minigrid` (any registered `BabyAI-*` id; "GoToLocal" ->
  "go-to-local"), played by minigrid's `BabyAIBot`. discrete_observations is JAT's 148 ints:
  the agent's direction, then the 7x7x3 symbolic view flattened row-major (object, colour, state);
  text_observations is the mission.
- `babyai-rgb-<level>`: the same level seen as an RGB image (minigrid's RGBImgPartialObsWrapper
  with 12-pixel tiles: 84x84x3, the agent's 7x7 view) plus the mission; the image task.
- `metaworld-<task>`: a Meta-World v3 task (`Meta-World/MT1`, a new goal each episode), played
  by metaworld's scripted policy for it plus Gaussian action noise (std 0.2), clipped to [-1, 1];
  39-d observations, 4-d actions, 500 steps; success is `info["success"]` at any step.
- `mujoco-pendulum`, `-doublependulum`, `-reacher`, `-swimmer`: gymnasium MuJoCo v5, played by
  an expert trained with our PPO (ppo.py) and stored in the experts directory.

Environment packages are imported only when a task is made, so listing tasks needs none of them.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from data_pipelines.jat.rlds import TaskSpec

MUJOCO_TASKS = {
    "mujoco-pendulum": "InvertedPendulum-v5",
    "mujoco-doublependulum": "InvertedDoublePendulum-v5",
    "mujoco-reacher": "Reacher-v5",
    "mujoco-swimmer": "Swimmer-v5",
}
BABYAI_TILE_SIZE = 12  # 7 tiles x 12 pixels = 84, JAT's image size


class UnknownTaskError(ValueError):
    """A task name we cannot record."""


class ExpertError(ValueError):
    """An expert that cannot be used for a task; the message names it and the fault."""


class PlanningError(RuntimeError):
    """The expert failed to choose an action in one episode (the BabyAI bot can fail to plan)."""


class Policy(Protocol):
    """Chooses actions in one environment; `begin` is called after each reset."""

    def begin(self, env: Any) -> None: ...

    def act(self, observation: Any) -> Any: ...


@dataclasses.dataclass(frozen=True)
class Task:
    """A recordable task.

    make_env: seed -> a gymnasium env whose RNGs the seed fixes (reset it once with the seed).
    observe: a raw env observation -> JAT field -> one row.
    expert: (env, experts_dir) -> the expert Policy; random: (env, seed) -> a uniform-random Policy.
    packages: the packages whose versions define the environment (recorded with the references).
    """

    name: str
    domain: str
    env_id: str
    expert_name: str
    packages: tuple[str, ...]
    spec: TaskSpec
    make_env: Callable[[int], Any]
    observe: Callable[[Any], dict]
    expert: Callable[[Any, Path | None], Policy]
    action_bounds: tuple[float, float] | None = None  # continuous actions are clipped to these


class RandomPolicy:
    """Uniform over the environment's action space (its own seeded sampler)."""

    def __init__(self, env: Any, seed: int):
        self._space = env.action_space
        self._space.seed(seed)

    def begin(self, env: Any) -> None:
        pass

    def act(self, observation: Any) -> Any:
        return self._space.sample()


def _kebab(camel: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "-", camel).lower()


def babyai_levels() -> dict[str, str]:
    """JAT-style level name ("go-to-local") -> registered BabyAI env id."""
    import gymnasium as gym
    import minigrid  # noqa: F401  (registers the BabyAI levels)

    levels = {}
    for env_id in sorted(gym.registry):
        match = re.fullmatch(r"BabyAI-(\w+)-v\d+", env_id)
        if match:
            levels[_kebab(match.group(1))] = env_id
    return levels


def metaworld_tasks() -> list[str]:
    """Meta-World v3 task names without the version ("reach", "pick-place", ...)."""
    from metaworld.policies import ENV_POLICY_MAP

    return sorted(name.removesuffix("-v3") for name in ENV_POLICY_MAP)


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


def _babyai(name: str, level: str, env_id: str, rgb: bool) -> Task:
    def make_env(seed: int):
        import gymnasium as gym
        import minigrid  # noqa: F401
        from minigrid.wrappers import RGBImgPartialObsWrapper

        env = gym.make(env_id)
        return RGBImgPartialObsWrapper(env, tile_size=BABYAI_TILE_SIZE) if rgb else env

    def observe(observation: dict) -> dict:
        if rgb:
            return {"image_observations": observation["image"], "text_observations": observation["mission"]}
        symbols = np.concatenate([[observation["direction"]], observation["image"].reshape(-1)])
        return {"discrete_observations": symbols.astype(np.int64), "text_observations": observation["mission"]}

    observation_shapes = ({"image_observations": (7 * BABYAI_TILE_SIZE, 7 * BABYAI_TILE_SIZE, 3)} if rgb
                          else {"discrete_observations": (1 + 7 * 7 * 3,)})
    spec = TaskSpec(name, {**observation_shapes, "text_observations": (), "discrete_actions": (), "rewards": ()})
    return Task(name, "babyai", env_id, "minigrid BabyAIBot", ("gymnasium", "minigrid"), spec, make_env, observe,
                lambda env, experts_dir: BabyAIBotPolicy())


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


def _metaworld(name: str, task: str) -> Task:
    def make_env(seed: int):
        import gymnasium as gym
        import metaworld  # noqa: F401  (registers Meta-World/MT1)

        return gym.make("Meta-World/MT1", env_name=f"{task}-v3", seed=seed)

    spec = TaskSpec(name, {"continuous_observations": (39,), "continuous_actions": (4,), "rewards": ()})
    return Task(name, "metaworld", f"{task}-v3", f"metaworld scripted policy, action noise std {METAWORLD_ACTION_NOISE}",
                ("gymnasium", "metaworld", "mujoco"),
                spec, make_env, lambda observation: {"continuous_observations": observation},
                lambda env, experts_dir: ScriptedMetaWorldPolicy(task), action_bounds=(-1.0, 1.0))


# Observation and action sizes of the MuJoCo v5 tasks (gymnasium 1.4 defaults).
_MUJOCO_SIZES = {"InvertedPendulum-v5": (4, 1), "InvertedDoublePendulum-v5": (9, 1), "Reacher-v5": (10, 2),
                 "Swimmer-v5": (8, 2)}


def _mujoco(name: str, env_id: str) -> Task:
    def make_env(seed: int):
        import gymnasium as gym

        return gym.make(env_id)

    def expert(env: Any, experts_dir: Path | None) -> Policy:
        from data_pipelines.jat import ppo

        return ppo.load_expert(name, experts_dir, env_id)

    observation_size, action_size = _MUJOCO_SIZES[env_id]
    bound = 3.0 if env_id.startswith("InvertedPendulum") else 1.0
    spec = TaskSpec(name, {"continuous_observations": (observation_size,), "continuous_actions": (action_size,),
                           "rewards": ()})
    return Task(name, "mujoco", env_id, "PPO expert (data_pipelines/jat/ppo.py)", ("gymnasium", "mujoco"), spec,
                make_env, lambda observation: {"continuous_observations": observation}, expert,
                action_bounds=(-bound, bound))


def get_task(name: str) -> Task:
    """The task of a JAT name; UnknownTaskError (one line) for a name we cannot record."""
    if name in MUJOCO_TASKS:
        return _mujoco(name, MUJOCO_TASKS[name])
    if name.startswith("metaworld-"):
        task = name.removeprefix("metaworld-")
        if task not in metaworld_tasks():
            raise UnknownTaskError(f"{name}: no Meta-World v3 task {task!r} (known: {', '.join(metaworld_tasks())})")
        return _metaworld(name, task)
    if name.startswith("babyai-"):
        rgb = name.startswith("babyai-rgb-")
        level = name.removeprefix("babyai-rgb-" if rgb else "babyai-")
        levels = babyai_levels()
        if level not in levels:
            raise UnknownTaskError(f"{name}: no BabyAI level {level!r} (known: {', '.join(levels)})")
        return _babyai(name, level, levels[level], rgb)
    raise UnknownTaskError(f"{name}: unknown task; expected babyai-<level>, babyai-rgb-<level>, "
                           f"metaworld-<task> or one of {', '.join(MUJOCO_TASKS)}")
