"""Evaluating a JAT model: its environments stepped together, a KV-cached policy, normalised scores.

For each task, ``episodes`` environments (``envs_per_task`` at a time, all by default) are reset
with seeds ``seed, seed + 1, ...`` and stepped together; the model acts for all of them in one call
per step, decoding two new tokens ``[a_{t-1}, o_t]`` against a key/value cache of the episode so far
(``JatModel.decode``). As in JAT's ``get_next_action``, the agent conditions only on its own
history (no prompt). The context is ``model.num_steps`` steps: when an episode outgrows it, its cache
is rebuilt from its last ``num_steps // 2`` steps at positions 0.. (a training row also starts
mid-episode at position 0), and decoding continues. Discrete actions are sampled from the softmax
over the environment's actions (JAT's default) or taken greedily; continuous ones are the head's
real dimensions clipped to the action space. A model trained with ``model.normalize_observations``
gets each continuous observation standardised with the task's statistics from its references.json,
through the same ``tokens.step_arrays`` as its training rows.

Scores: each episode's return is normalised with the references recorded with the task's
dataset, (return - random) / (expert - random) (references.py; JAT ``jat/utils.py``), after
checking that the installed environment packages are the versions they were measured with. Each
domain (BabyAI, BabyAI-RGB, Meta-World, MuJoCo) gets the IQM over its tasks' episodes with a
stratified-bootstrap 95% interval (rliable; Agarwal et al. 2021), as JAT's model card reports.
``write_report`` writes report.json, scores.csv and scores.png.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import time
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mgdt_jax.core import bootstrap, files
from mgdt_jax.core.bootstrap import BOOTSTRAP_REPS, Interval
from mgdt_jax.envs import gym_tasks
from mgdt_jax.recipes.jat import references as jat_references
from mgdt_jax.recipes.jat import tokens
from mgdt_jax.recipes.jat.model import JatModel

REPORT_JSON = "report.json"  # written last: its presence marks a complete report


def domain_of(task: str) -> str:
    """"babyai-rgb-go-to-local" -> "babyai-rgb"; "metaworld-reach" -> "metaworld"."""
    return "babyai-rgb" if task.startswith("babyai-rgb-") else task.split("-", 1)[0]


@dataclasses.dataclass(frozen=True)
class TaskInputs:
    """What the policy needs of a task to build the model's inputs like the training rows."""

    group: str
    continuous_observation_size: int
    continuous_action_size: int
    num_discrete_actions: int

    @classmethod
    def of(cls, task: str, shapes: Mapping[str, tuple[int, ...]], action_space: Any) -> TaskInputs:
        return cls(group=tokens.task_group(task, shapes),
                   continuous_observation_size=int(shapes.get("continuous_observations", (0,))[0]),
                   continuous_action_size=int(shapes.get("continuous_actions", (0,))[0]),
                   num_discrete_actions=int(getattr(action_space, "n", 0)))


class VectorPolicy:
    """The JAT model acting in ``num_envs`` environments of one task at once, with a KV cache.

    Call ``reset(i)`` when environment i starts an episode, then ``act(fields, rewards)`` every step
    with each environment's JAT fields of o_t (a list of dicts, gym_tasks.Task.observe) and r_{t-1}.
    ``observation_stats`` (the task's, references.observation_stats) is required by a model trained
    with ``model.normalize_observations`` on a continuous task and ignored otherwise.
    """

    def __init__(self, model: JatModel, task: TaskInputs, num_envs: int, *, image_shape: tuple[int, ...] | None,
                 greedy: bool = False, seed: int = 0,
                 observation_stats: jat_references.ObservationStats | None = None):
        config = model.config
        if task.group not in config.groups:
            raise ValueError(f"the model has no {task.group} encoder (model.groups {list(config.groups)})")
        standardize = config.normalize_observations and task.group == "continuous"
        if standardize and observation_stats is None:
            raise ValueError("the model standardises continuous observations (model.normalize_observations) "
                             "but no observation statistics were given")
        self._observation_stats = observation_stats if standardize else None
        self.config, self.task, self.num_envs, self.greedy = config, task, num_envs, greedy
        self._group = task.group
        self._graphdef, self._state = nnx.split(model)
        self._image_shape = image_shape
        self._context = config.num_steps
        self._kept = max(config.num_steps // 2, 1)
        self._capacity = 2 * config.num_steps + 2
        self._cache = model.init_cache(num_envs, self._capacity)
        self._lengths = np.zeros(num_envs, np.int32)  # cache slots written
        self._starts = np.zeros(num_envs, np.int32)  # first slot a query may read
        self._window_step = np.zeros(num_envs, np.int32)  # position of the next observation
        empty = self._arrays([{}] * num_envs)
        self._window = {name: np.zeros((num_envs, self._context + 1, *value.shape[1:]), value.dtype)
                        for name, value in empty.items()}  # inputs of the steps in the context
        self._rng = np.random.default_rng(seed)
        self.last_output: np.ndarray | None = None  # the head's output at the last o_t: logits or continuous

    def _arrays(self, fields: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
        rows = [tokens.step_arrays({name: [value] if name == "text_observations" else np.asarray(value)[None]
                                    for name, value in row.items()}, 1,
                                   continuous_width=self.config.continuous_width,
                                   discrete_width=self.config.discrete_width, text_length=self.config.text_length,
                                   image_shape=self._image_shape, observation_stats=self._observation_stats)
                for row in fields]
        out = {name: np.concatenate([row[name] for row in rows]) for name in rows[0]}
        out["rewards"] = np.zeros(len(fields), np.float32)
        return out

    def _scalars(self) -> dict[str, np.ndarray]:
        task = self.task
        return {"continuous_observation_size": np.full(self.num_envs, task.continuous_observation_size, np.int32),
                "continuous_action_size": np.full(self.num_envs, task.continuous_action_size, np.int32),
                "num_discrete_actions": np.full(self.num_envs, task.num_discrete_actions, np.int32)}

    def reset(self, env: int) -> None:
        # A placeholder token fills slot 0 (the absent a_{-1}); starting reads at slot 1 hides it.
        self._lengths[env], self._starts[env], self._window_step[env] = 0, 1, 0

    def act(self, fields: Sequence[Mapping[str, Any]], rewards: np.ndarray) -> np.ndarray:
        """Actions for o_t of every environment: int [N] or float32 [N, action size]."""
        current = self._arrays(fields)
        current["rewards"] = np.asarray(rewards, np.float32)
        full = self._window_step >= self._context
        if full.any():
            self._refill(full)
        rows = np.arange(self.num_envs)
        step = self._window_step
        for name, value in current.items():
            self._window[name][rows, step] = value
        previous = np.maximum(step - 1, 0)
        pair = {name: np.stack([value[rows, previous], value[rows, step]], axis=1) for name, value in self._window.items()}
        pair["position"] = np.stack([previous, step], axis=1).astype(np.int32)
        pair.update(self._scalars())
        # Copies: JAX may read a host buffer after the call returns, and these are updated in place below.
        logits, continuous, self._cache = _decode_step(self._graphdef, self._group, self._state, self._cache, pair,
                                                       self._lengths.copy(), self._starts.copy())
        self._lengths += 2
        self._window_step += 1
        self.last_output = np.asarray(continuous if self.task.group == "continuous" else logits)
        if self.task.group == "continuous":
            actions = np.asarray(continuous)[:, : self.task.continuous_action_size]
        else:
            logits = np.asarray(logits, np.float64)[:, : self.task.num_discrete_actions]
            if self.greedy:
                actions = logits.argmax(-1)
            else:
                probabilities = np.exp(logits - logits.max(-1, keepdims=True))
                probabilities /= probabilities.sum(-1, keepdims=True)
                actions = np.array([self._rng.choice(len(p), p=p) for p in probabilities])
        self._record_actions(actions)
        return actions

    def _record_actions(self, actions: np.ndarray) -> None:
        rows, step = np.arange(self.num_envs), self._window_step - 1
        if self.task.group == "continuous":
            self._window["continuous_actions"][rows, step, : actions.shape[1]] = actions
        else:
            self._window["discrete_actions"][rows, step] = actions

    def _refill(self, full: np.ndarray) -> None:
        """Rebuilds the caches of the ``full`` environments from their last ``kept`` steps."""
        kept, context = self._kept, self._context
        recent = {name: value[:, context - kept : context].copy() for name, value in self._window.items()}
        recent["position"] = np.tile(np.arange(kept, dtype=np.int32), (self.num_envs, 1))
        recent.update(self._scalars())
        self._cache = _refill(self._graphdef, self._group, self._capacity, self._state, self._cache, recent,
                              full.copy())
        for name, value in self._window.items():
            value[full, :kept] = value[full, context - kept : context]
        self._lengths[full], self._starts[full], self._window_step[full] = 2 * kept - 1, 0, kept


@partial(jax.jit, static_argnums=(0, 1))
def _decode_step(graphdef, group, state, cache, pair, lengths, starts):
    model = nnx.merge(graphdef, state)
    observations, actions = model.step_tokens(pair, group)
    new = jnp.stack([actions[:, 0], observations[:, 1]], axis=1)  # [a_{t-1}, o_t]
    hidden, cache = model.decode(new, cache, lengths, starts)
    at_observation = hidden[:, 1]
    return (model.discrete_action_logits(at_observation, pair["num_discrete_actions"]),
            model.continuous_actions(at_observation), cache)


@partial(jax.jit, static_argnums=(0, 1, 2))
def _refill(graphdef, group, capacity, state, cache, recent, full):
    model = nnx.merge(graphdef, state)
    observations, actions = model.step_tokens(recent, group)
    num, kept, d_model = observations.shape
    sequence = jnp.stack([observations, actions], axis=2).reshape(num, 2 * kept, d_model)[:, :-1]
    zeros = jnp.zeros(num, jnp.int32)
    _, rebuilt = model.decode(sequence, model.init_cache(num, capacity), zeros, zeros)
    pick = full[:, None, None, None]
    return [(jnp.where(pick, new_keys, keys), jnp.where(pick, new_values, values))
            for (keys, values), (new_keys, new_values) in zip(cache, rebuilt)]


@dataclasses.dataclass
class TaskResult:
    task: str
    domain: str
    returns: list[float]
    normalized: list[float]
    env_steps: int
    seconds: float


def play_task(model: JatModel, task_name: str, refs: jat_references.TaskReferences, *, episodes: int,
              envs_per_task: int | None = None, seed: int = 0, greedy: bool = False,
              max_steps: int | None = None) -> TaskResult:
    """Plays ``episodes`` episodes of a task, ``envs_per_task`` environments at a time (default: all).

    ``max_steps`` cuts episodes (for smoke runs); otherwise the environment's own limit ends them.
    Raises ReferenceError (one line) when the installed environment is not the one the references
    were measured on or lack the observation statistics a model with ``model.normalize_observations``
    needs, and ValueError when the model cannot read the task.
    """
    jat_references.check_versions(refs)
    shapes = gym_tasks.get_task(task_name).shapes
    stats = None
    if model.config.normalize_observations and tokens.task_group(task_name, shapes) == "continuous":
        stats = jat_references.observation_stats(refs, int(shapes["continuous_observations"][0]), task_name)
    returns, env_steps, seconds = play_episodes(model, task_name, episodes=episodes, envs_per_task=envs_per_task,
                                                seed=seed, greedy=greedy, max_steps=max_steps,
                                                observation_stats=stats)
    normalized = [jat_references.normalized_score(value, refs) for value in returns]
    return TaskResult(task_name, domain_of(task_name), returns, normalized, env_steps, seconds)


def play_episodes(model: JatModel, task_name: str, *, episodes: int, envs_per_task: int | None = None, seed: int = 0,
                  greedy: bool = False, max_steps: int | None = None,
                  observation_stats: jat_references.ObservationStats | None = None) -> tuple[list[float], int, float]:
    """``play_task`` without references: (returns of the episodes, environment steps, seconds).

    ``observation_stats``: the task's, for a model with ``model.normalize_observations`` on a
    continuous task (ValueError without them); ignored otherwise.

    The seconds cover making, resetting and stepping the environments and the policy's calls
    (including any compilation the first call of a shape needs).
    """
    task = gym_tasks.get_task(task_name)
    model_config = model.config
    image_shape = model_config.image_shape if model_config.has_images else None
    tokens.check_widths(task_name, task.shapes, continuous_width=model_config.continuous_width,
                        discrete_width=model_config.discrete_width)
    batch = envs_per_task or episodes
    returns: list[float] = []
    env_steps, started = 0, time.perf_counter()
    for first in range(0, episodes, batch):
        count = min(batch, episodes - first)
        envs = [task.make_env(seed + first + index) for index in range(count)]
        inputs = TaskInputs.of(task_name, task.shapes, envs[0].action_space)
        policy = VectorPolicy(model, inputs, count, image_shape=image_shape, greedy=greedy, seed=seed + first,
                              observation_stats=observation_stats)
        observations = []
        for index, env in enumerate(envs):
            with contextlib.redirect_stdout(io.StringIO()):  # minigrid prints its level-sampling retries
                observation, _ = env.reset(seed=seed + first + index)
            observations.append(task.observe(observation))
            policy.reset(index)
        rewards, totals = np.zeros(count, np.float32), np.zeros(count)
        active, steps = np.ones(count, bool), 0
        while active.any() and (max_steps is None or steps < max_steps):
            actions = policy.act(observations, rewards)
            for index in np.flatnonzero(active):
                action = actions[index]
                if task.action_bounds is not None:
                    action = np.clip(np.asarray(action, np.float32), *task.action_bounds)
                observation, reward, terminated, truncated, _ = envs[index].step(action)
                observations[index] = task.observe(observation)
                rewards[index] = reward
                totals[index] += reward
                env_steps += 1
                active[index] = not (terminated or truncated)
            steps += 1
        for env in envs:
            env.close()
        returns.extend(float(total) for total in totals)
    return returns, env_steps, time.perf_counter() - started


def domain_iqm(results: Sequence[TaskResult], *, reps: int = BOOTSTRAP_REPS, seed: int = 0) -> dict[str, Interval]:
    """Per domain: the IQM of its tasks' normalised episode scores, with rliable's stratified-bootstrap
    95% interval (episodes as runs, tasks as tasks; a domain's tasks need equal episode counts)."""
    from rliable import metrics  # noqa: PLC0415  (report dependencies: only when scoring)

    out = {}
    for domain in sorted({result.domain for result in results}):
        members = [result for result in results if result.domain == domain]
        if len({len(result.normalized) for result in members}) != 1:
            raise ValueError(f"domain {domain}: tasks have different episode counts")
        matrix = np.stack([np.asarray(result.normalized, np.float64) for result in members], axis=1)
        out[domain] = bootstrap.interval(matrix, metrics.aggregate_iqm, reps=reps, seed=seed)
    return out


def write_report(results: Sequence[TaskResult], aggregates: Mapping[str, Interval], out_dir: Path,
                 settings: Mapping[str, Any]) -> None:
    """OUT/report.json (settings, tasks, domains), OUT/scores.csv (one row an episode), OUT/scores.png."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = {
        "settings": dict(settings),
        "tasks": {r.task: {"domain": r.domain, "mean_return": float(np.mean(r.returns)),
                           "mean_normalized": float(np.mean(r.normalized)), "returns": r.returns,
                           "normalized": r.normalized, "env_steps": r.env_steps,
                           "env_steps_per_second": r.env_steps / max(r.seconds, 1e-9)} for r in results},
        "domains": {name: dataclasses.asdict(interval) for name, interval in aggregates.items()},
    }

    def write_csv(path: Path) -> None:
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["task", "domain", "episode", "return", "normalized_score"])
            for r in results:
                for episode, (value, score) in enumerate(zip(r.returns, r.normalized)):
                    writer.writerow([r.task, r.domain, episode, f"{value:.6g}", f"{score:.6g}"])

    # report.json last: its presence means complete; a failed write leaves none of them
    files.write_together(out_dir, {"scores.csv": write_csv, "scores.png": lambda path: _plot(results, aggregates, path),
                                   REPORT_JSON: lambda path: path.write_text(json.dumps(report, indent=1) + "\n")})


def _plot(results: Sequence[TaskResult], aggregates: Mapping[str, Interval], path: Path) -> None:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4), gridspec_kw={"width_ratios": [1, 2]})
    names = list(aggregates)
    values = [aggregates[n].value for n in names]
    errors = [[aggregates[n].value - aggregates[n].low for n in names], [aggregates[n].high - aggregates[n].value for n in names]]
    left.bar(names, values, yerr=errors, capsize=4, color="tab:blue")
    left.axhline(1.0, color="grey", linestyle="--", linewidth=1)
    left.set_ylabel("expert-normalised score (IQM, 95% CI)")
    right.bar([r.task for r in results], [float(np.mean(r.normalized)) for r in results], color="tab:orange")
    right.axhline(1.0, color="grey", linestyle="--", linewidth=1)
    right.set_ylabel("mean expert-normalised score")
    right.tick_params(axis="x", rotation=60)
    figure.tight_layout()
    try:
        figure.savefig(path, format="png", dpi=100)
    finally:
        plt.close(figure)


def load_model(workdir: Path, step: int | None = None) -> tuple[JatModel, Any, int]:
    """(model, run config, step) of a JAT run's checkpoint (the newest complete one by default, as
    every reader picks it: ``checkpointing.load_checkpoint``).

    Raises CheckpointError (one line) for a missing or unreadable config or checkpoint, a run of
    another recipe, or a config that does not fit the weights.
    """
    from mgdt_jax.core import checkpointing, sharding  # noqa: PLC0415
    from mgdt_jax.core.loop import CONFIG_FILE  # noqa: PLC0415
    from mgdt_jax.core.recipe import recipe_name  # noqa: PLC0415
    from mgdt_jax.core.train_step import Trainer  # noqa: PLC0415

    config_path = Path(workdir) / CONFIG_FILE
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as error:
        raise checkpointing.CheckpointError(f"{config_path}: not a readable run config ({error})") from None
    if recipe_name(config) != "jat":
        raise checkpointing.CheckpointError(f"{config_path}: a run of the {recipe_name(config)!r} recipe, not JAT")
    if not isinstance(config.get("model"), dict):  # the default model's weights would read as missing
        raise checkpointing.CheckpointError(f"{config_path}: no model section: not the config a training run wrote")
    config = {**config, "mesh": {"data": 1, "fsdp": 1, "tensor": 1}}
    trainer = Trainer(config, sharding.make_mesh(config["mesh"], jax.devices()[:1]))
    params, _, step = checkpointing.load_checkpoint(workdir, target=trainer.abstract_state.params, step=step)
    return nnx.merge(trainer.graphdef, params), config, step
