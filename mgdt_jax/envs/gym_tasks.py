"""The gymnasium tasks of JAT (BabyAI, Meta-World, MuJoCo), apart from the agents that play them:
each task's environment, how its observations become JAT fields, and those fields' shapes.

Task names follow JAT's (`babyai-go-to-local`, `metaworld-reach`, `mujoco-pendulum`):
- `babyai-<level>`: a BabyAI level of `minigrid` (any registered `BabyAI-*` id; "GoToLocal" ->
  "go-to-local"). discrete_observations is JAT's 148 ints: the agent's direction, then the 7x7x3
  symbolic view flattened row-major (object, colour, state); text_observations is the mission.
- `babyai-rgb-<level>`: the same level seen as an RGB image (minigrid's RGBImgPartialObsWrapper
  with 12-pixel tiles: 84x84x3, the agent's 7x7 view) plus the mission; the image task.
- `metaworld-<task>`: a Meta-World v3 task (`Meta-World/MT1`, a new goal each episode); 39-d
  observations, 4-d actions in [-1, 1], 500 steps; success is `info["success"]` at any step.
- `mujoco-pendulum`, `-doublependulum`, `-reacher`, `-swimmer`: gymnasium MuJoCo v5.

The experts that record them are in data_pipelines/jat/experts.py. Environment packages are
imported only when an environment is made, so naming tasks needs none of them.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any

import numpy as np

MUJOCO_TASKS = {
    "mujoco-pendulum": "InvertedPendulum-v5",
    "mujoco-doublependulum": "InvertedDoublePendulum-v5",
    "mujoco-reacher": "Reacher-v5",
    "mujoco-swimmer": "Swimmer-v5",
}
BABYAI_TILE_SIZE = 12  # 7 tiles x 12 pixels = 84, JAT's image size


class UnknownTaskError(ValueError):
    """A task name we cannot make."""


@dataclasses.dataclass(frozen=True)
class Task:
    """A JAT task's environment.

    domain: "babyai", "metaworld" or "mujoco"; env_id: the gymnasium (or Meta-World) id.
    packages: the packages whose versions define the environment (recorded with the references).
    shapes: JAT field -> per-step shape, e.g. {"continuous_observations": (39,),
      "continuous_actions": (4,), "rewards": ()}; text_observations and discrete_actions are ().
    make_env: seed -> a gymnasium env whose RNGs the seed fixes (reset it once with the seed).
    observe: a raw env observation -> JAT field -> one row.
    """

    name: str
    domain: str
    env_id: str
    packages: tuple[str, ...]
    shapes: dict[str, tuple[int, ...]]
    make_env: Callable[[int], Any]
    observe: Callable[[Any], dict]
    action_bounds: tuple[float, float] | None = None  # continuous actions are clipped to these


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
    shapes = {**observation_shapes, "text_observations": (), "discrete_actions": (), "rewards": ()}
    return Task(name, "babyai", env_id, ("gymnasium", "minigrid"), shapes, make_env, observe)


def _metaworld(name: str, task: str) -> Task:
    def make_env(seed: int):
        import gymnasium as gym
        import metaworld  # noqa: F401  (registers Meta-World/MT1)

        return gym.make("Meta-World/MT1", env_name=f"{task}-v3", seed=seed)

    shapes = {"continuous_observations": (39,), "continuous_actions": (4,), "rewards": ()}
    return Task(name, "metaworld", f"{task}-v3", ("gymnasium", "metaworld", "mujoco"), shapes, make_env,
                lambda observation: {"continuous_observations": observation}, action_bounds=(-1.0, 1.0))


# Observation and action sizes of the MuJoCo v5 tasks (gymnasium 1.4 defaults).
_MUJOCO_SIZES = {"InvertedPendulum-v5": (4, 1), "InvertedDoublePendulum-v5": (9, 1), "Reacher-v5": (10, 2),
                 "Swimmer-v5": (8, 2)}


def _mujoco(name: str, env_id: str) -> Task:
    def make_env(seed: int):
        import gymnasium as gym

        return gym.make(env_id)

    observation_size, action_size = _MUJOCO_SIZES[env_id]
    bound = 3.0 if env_id.startswith("InvertedPendulum") else 1.0
    shapes = {"continuous_observations": (observation_size,), "continuous_actions": (action_size,), "rewards": ()}
    return Task(name, "mujoco", env_id, ("gymnasium", "mujoco"), shapes, make_env,
                lambda observation: {"continuous_observations": observation}, action_bounds=(-bound, bound))


def get_task(name: str) -> Task:
    """The task of a JAT name; UnknownTaskError (one line) for a name we cannot make."""
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
