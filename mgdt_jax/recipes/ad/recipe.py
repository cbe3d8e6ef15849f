"""The Algorithm Distillation recipe: the AD model, its action loss, training windows over learning
histories and periodic in-context evaluation on held-out tasks.

Trains with ``config.recipe = "ad"`` (experiments/ad_*.py). Config sections it reads:

* ``model``: the fields of ``ADModelConfig`` except ``num_observations``, ``num_actions`` and
  ``grid_size``, which come from ``data.env`` (the histories' metadata is checked against it);
* ``data``: ``env`` (an environment of mgdt_jax.envs), ``sources`` (directories written by
  ``mgdt-ad-histories``, all of ``env``), ``seed`` (the window order), ``tail_episodes`` (0: whole
  histories; N: only the last N episodes of each, the Expert Distillation baseline of §5 of
  Laskin et al. 2022);
* ``evaluation``: ``split_seed``, ``num_heldout`` (0: the environment's default) and ``episodes``
  (0: 100 pulls for bandits, 40 episodes otherwise) fix the held-out tasks and the in-context
  horizon; ``seed``; ``train.eval_every`` sets how often training evaluates.

Training histories holding a held-out task of that split are refused (the split overlaps), as are
histories of another environment and a context shorter than an episode, each in one line.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx

from mgdt_jax import envs
from mgdt_jax.core import files
from mgdt_jax.core.config_sections import field_names, read_section, section
from mgdt_jax.core.recipe import Evaluator, Recipe, StepCost
from mgdt_jax.envs.base import Environment, EnvError
from mgdt_jax.recipes.ad.data import TrainingWindows
from mgdt_jax.recipes.ad.histories import Histories, HistoryError
from mgdt_jax.recipes.ad.model import ADModelConfig, AlgorithmDistillation, loss_and_metrics, training_flops

METADATA_FILE = "metadata.json"  # the generator settings mgdt-ad-histories writes beside the shards
BANDIT_PULLS, GRID_EPISODES = 100, 40  # the paper's in-context horizons (§5)


@dataclasses.dataclass(frozen=True)
class DataConfig:
    env: str = ""
    sources: tuple[str, ...] = ()
    seed: int = 0
    tail_episodes: int = 0


@dataclasses.dataclass(frozen=True)
class EvaluationConfig:
    split_seed: int = 0
    num_heldout: int = 0
    episodes: int = 0
    seed: int = 0


def _config_model_fields() -> tuple[str, ...]:
    """The model fields a config sets: the rest come from the environment (``ADRecipe._model_config``)."""
    return tuple(name for name in field_names(ADModelConfig) if name not in ("num_observations", "num_actions", "grid_size"))


def data_config(config: Any) -> DataConfig:
    data = read_section(DataConfig, section(config, "data", {}))
    sources = (data.sources,) if isinstance(data.sources, str) else tuple(str(s) for s in data.sources)
    if not data.env:
        raise ValueError("config.data.env is not set: name the environment the histories are of")
    files.check_each_folder_once(sources, "config.data.sources")
    return dataclasses.replace(data, sources=sources)


def evaluation_config(config: Any) -> EvaluationConfig:
    return read_section(EvaluationConfig, section(config, "evaluation", {}))


def heldout_tasks(env: Environment, evaluation: EvaluationConfig) -> Any:
    """The held-out side of the environment's task split the config names (leaves [n, ...])."""
    return env.task_split(evaluation.split_seed, None, evaluation.num_heldout or None)[1]


def in_context_episodes(env: Environment, evaluation: EvaluationConfig) -> int:
    return evaluation.episodes or (BANDIT_PULLS if env.episode_length == 1 else GRID_EPISODES)


def regret_function(env: Environment):
    """The per-pull pseudo-regret of a bandit, None for other environments."""
    from mgdt_jax.envs import bandit

    return bandit.regret if isinstance(env, bandit.BernoulliBandit) else None


def read_metadata(directory: str | Path) -> dict[str, Any]:
    """The generator settings of a history dataset (its metadata.json), without reading any episode."""
    path = Path(directory) / METADATA_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        if not Path(directory).is_dir():  # a misspelt or unset path, more often than another kind of folder
            raise HistoryError(f"{directory}: no such dataset directory") from None
        raise HistoryError(f"{directory}: no {METADATA_FILE}: not a dataset written by mgdt-ad-histories") from None
    except (OSError, json.JSONDecodeError) as error:
        raise HistoryError(f"{path}: unreadable ({error})") from None


def check_metadata(directory: str | Path, env: Environment) -> dict[str, Any]:
    """The metadata of ``directory``; HistoryError if its histories are not of ``env`` (name,
    observations or actions)."""
    metadata = read_metadata(directory)
    if not isinstance(metadata, dict) or "source_name" not in metadata:  # another dataset's metadata.json (JAT's, say)
        raise HistoryError(f"{directory}: its {METADATA_FILE} is not one written by mgdt-ad-histories (no source_name)")
    if metadata.get("env_name") != env.name:
        raise HistoryError(f"{directory}: histories of {metadata.get('env_name')!r}, and config.data.env is {env.name!r}")
    for name in ("num_observations", "num_actions"):
        if metadata.get(name) != getattr(env, name):
            raise HistoryError(f"{directory}: {name} {metadata.get(name)} in its metadata, {getattr(env, name)} in {env.name}")
    return metadata


def overlap_error(where: str, training_task_ids: Sequence[int], heldout_task_ids: Sequence[int]) -> str | None:
    """A one-line fault when training tasks include held-out ones, else None."""
    leaked = np.intersect1d(np.asarray(training_task_ids, np.int64), np.asarray(heldout_task_ids, np.int64))
    if not leaked.size:
        return None
    return (f"{where}: trained on {leaked.size} of the held-out tasks (e.g. {leaked[:4].tolist()}): the task split "
            "overlaps the training split; pick the split_seed the histories were generated with")


class ADRecipe(Recipe):
    """AD over ``config``; ``histories`` (optional) trains on in-memory histories instead of
    ``data.sources`` (experiment scripts that generate data in the same process)."""

    name = "ad"

    def __init__(self, config: Any, histories: Histories | None = None):
        super().__init__(config)
        self.data = data_config(config)
        self.evaluation = evaluation_config(config)
        try:
            self.env = envs.get(self.data.env)
        except EnvError as error:
            raise ValueError(f"config.data.env: {error}") from None
        self._histories = histories
        if histories is not None and histories.env_name != self.env.name:
            raise ValueError(f"in-memory histories of {histories.env_name!r}, and config.data.env is {self.env.name!r}")
        for directory in self.data.sources:
            check_metadata(directory, self.env)
        self.model_config = self._model_config(section(config, "model", {}))

    def _model_config(self, model: Any) -> ADModelConfig:
        from_env = {"num_observations": self.env.num_observations, "num_actions": self.env.num_actions,
                    "grid_size": getattr(self.env, "size", 0)}
        values = {name: section(model, name) for name in _config_model_fields() if section(model, name) is not None}
        return ADModelConfig(**from_env, **values)

    def model(self, rngs: nnx.Rngs) -> AlgorithmDistillation:
        return AlgorithmDistillation(self.model_config, rngs=rngs)

    def loss(
        self, model: AlgorithmDistillation, batch: Mapping[str, jax.Array], dropout_key: jax.Array
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Mean action cross-entropy over every window step; ``action_loss``, ``action_accuracy``."""
        return loss_and_metrics(model(batch, deterministic=False, dropout_key=dropout_key), batch)

    def histories(self) -> Histories:
        """The training histories: the in-memory ones, or every ``data.sources`` directory read and
        stacked (one episode length and history length across them)."""
        if self._histories is not None:
            return self._histories
        if not self.data.sources:
            raise ValueError("config.data.sources is empty: give history directories written by mgdt-ad-histories")
        from mgdt_jax.recipes.ad.histories import read_histories  # TFDS: only when reading

        heldout = np.asarray(heldout_tasks(self.env, self.evaluation).id)
        parts = [read_histories(d, env_name=self.env.name, exclude_task_ids=heldout) for d in self.data.sources]
        if len({part.num_steps for part in parts}) > 1:
            raise HistoryError(f"config.data.sources: histories of different lengths "
                               f"{[part.num_steps for part in parts]} steps; use one --episodes for all")
        first = parts[0]
        self._histories = Histories(
            observations=np.concatenate([p.observations for p in parts]),
            actions=np.concatenate([p.actions for p in parts]),
            rewards=np.concatenate([p.rewards for p in parts]),
            task_ids=np.concatenate([p.task_ids for p in parts]),
            env_name=first.env_name, episode_length=first.episode_length, num_actions=first.num_actions,
            num_observations=first.num_observations, source="+".join(sorted({p.source for p in parts})),
            metadata={"sources": list(self.data.sources)},
        )
        return self._histories

    def training_data(self, *, process_index: int, process_count: int) -> ADWindows:
        histories = self.histories()
        heldout = np.asarray(heldout_tasks(self.env, self.evaluation).id)
        if fault := overlap_error(f"{self.env.name} training histories", histories.task_ids, heldout):
            raise ValueError(fault)
        windows = TrainingWindows(
            histories,
            context_steps=self.model_config.context_steps,
            global_batch_size=int(section(section(self.config, "train", {}), "batch_size", 0)),
            seed=self.data.seed,
            process_index=process_index,
            process_count=process_count,
            tail_episodes=self.data.tail_episodes or None,
        )
        return ADWindows(windows, self.data)

    def config_fields(self) -> dict[str, tuple[str, ...]]:
        return {"model": _config_model_fields(), "data": field_names(DataConfig),
                "evaluation": field_names(EvaluationConfig)}

    def step_cost(self, batch_size: int) -> StepCost:
        return StepCost(flops=training_flops(self.model_config, batch_size),
                        tokens=batch_size * self.model_config.sequence_length, compute_dtype=self.model_config.dtype)

    def summary(self, metrics: Mapping[str, float]) -> str:
        return f"action loss {metrics['action_loss']:.3f} acc {metrics['action_accuracy']:.3f}"

    def evaluator(self, workdir: Path) -> Evaluator | None:
        """Every ``train.eval_every`` steps: sampled and argmax in-context runs on the held-out tasks;
        logs the last episode's mean return (and, on bandits, the cumulative regret at the end)."""
        if not section(section(self.config, "train", {}), "eval_every", 0):
            return None
        from mgdt_jax.recipes.ad import evaluate

        tasks = heldout_tasks(self.env, self.evaluation)
        episodes = in_context_episodes(self.env, self.evaluation)
        regret = regret_function(self.env)

        def run(model: nnx.Module, step: int) -> dict[str, float]:
            scores = {}
            for greedy in (False, True):
                result = evaluate.evaluate_in_context(model, self.env, tasks, num_episodes=episodes,
                                                      seed=self.evaluation.seed, greedy=greedy, regret=regret)
                scores[f"{result.name}_last_return"] = float(result.returns[:, -1].mean())
                if result.regret is not None:
                    scores[f"{result.name}_regret"] = float(result.regret[:, -1].mean())
            return scores

        return run


def load_trained(workdir: str | Path, step: int | None = None) -> tuple[Any, nnx.Module, int]:
    """``(recipe, model, step)`` of an AD run: its config.json and the parameters of its checkpoint
    (the latest by default), restored onto one device. ValueError (one line) for a workdir without
    config.json or its model and data sections, a run of another recipe, or histories that no longer
    match the config; CheckpointError for a missing checkpoint or parameters that do not fit."""
    from mgdt_jax.core import checkpointing
    from mgdt_jax.core.loop import check_paths_found, read_run_config

    config = read_run_config(workdir, ADRecipe.name, sections=("model", "data"))
    check_paths_found(workdir, data_config(config).sources, "history directory")
    recipe = ADRecipe(config)
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: recipe.model(nnx.Rngs(0))))
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=device),
                          jax.eval_shape(lambda: nnx.state(recipe.model(nnx.Rngs(0)))))
    params, _, step = checkpointing.load_checkpoint(workdir, target=target, step=step, recipe=ADRecipe.name)
    return recipe, nnx.merge(graphdef, params), step


def training_task_ids(recipe: Any) -> np.ndarray:
    """Every task id the recipe's history directories were generated on (from their metadata)."""
    if not recipe.data.sources:
        raise ValueError("the run trained on in-memory histories (no config.data.sources): pass its training task ids")
    return np.concatenate([np.asarray(read_metadata(d).get("task_ids", []), np.int64) for d in recipe.data.sources])


class ADWindows:
    """TrainingWindows as the core's ``TrainingData``."""

    def __init__(self, windows: TrainingWindows, data: DataConfig):
        self._windows = windows
        self._data = data

    def batch(self, step: int) -> dict[str, np.ndarray]:
        return self._windows.batch(step)

    def iterate(self, start_step: int):
        return self._windows.iterate(start_step)

    def describe(self) -> str:
        histories = self._windows.histories
        tail = f", windows from the last {self._data.tail_episodes} episodes" if self._data.tail_episodes else ""
        return (f"{histories.num_histories} {histories.source} histories of {histories.episodes_per_history} "
                f"{histories.env_name} episodes on {len(np.unique(histories.task_ids))} tasks{tail}")

    def identity(self) -> dict[str, Any]:
        # The histories by their metadata's digest (it lists every shard's SHA-256), not their paths:
        # a folder spelt otherwise is the same stream, other histories under the same path are not.
        return {"seed": self._data.seed, "global_batch_size": self._windows.global_batch_size,
                "histories": [files.sha256(Path(source) / METADATA_FILE) for source in self._data.sources],
                "tail_episodes": self._data.tail_episodes}


RECIPE = ADRecipe
