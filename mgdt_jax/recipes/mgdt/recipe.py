"""The MGDT recipe: the Multi-Game Decision Transformer, its loss, its RLDS windows and its Atari evaluation.

Trains with ``config.recipe = "mgdt"`` (the default of configs without the field); the config
sections it reads are in docs/architecture.md (model, data, train.eval_*). The input pipeline
(Grain, TFDS) and the evaluation (ALE) are imported only when a run asks for them, so the model and
the train step stay importable without them.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mgdt_jax.core.config_sections import field_names, read_section, section
from mgdt_jax.recipes.mgdt.model import HEAD_NAMES, ModelConfig, MultiGameDecisionTransformer, loss_and_metrics
from mgdt_jax.core.recipe import Evaluator, Recipe, StepCost, recipe_name
from mgdt_jax.recipes.mgdt.flops import training_flops

if TYPE_CHECKING:
    from mgdt_jax.recipes.mgdt.pipeline import TrainingData


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """The fields of the ``train`` config section the periodic evaluation reads."""

    eval_every: int = 0
    eval_games: tuple[str, ...] = ()
    eval_episodes: int = 16


class MgdtRecipe(Recipe):
    name = "mgdt"

    def __init__(self, config: Any):
        super().__init__(config)
        self.model_config = ModelConfig.from_config(section(config, "model", {}))

    def model(self, rngs: nnx.Rngs) -> MultiGameDecisionTransformer:
        return MultiGameDecisionTransformer(self.model_config, rngs=rngs)

    def loss(
        self, model: MultiGameDecisionTransformer, batch: Mapping[str, jax.Array], dropout_key: jax.Array
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """The mean of the heads' cross-entropies; ``<head>_loss`` and ``<head>_accuracy`` per head."""
        logits = model(batch, deterministic=False, dropout_key=dropout_key)
        return loss_and_metrics(logits, batch, self.model_config)

    def training_data(self, *, process_index: int, process_count: int) -> RldsWindows:
        from mgdt_jax.recipes.mgdt import pipeline  # Grain and TFDS: only when training

        data = pipeline.training_data(self.config, process_index=process_index, process_count=process_count)
        return RldsWindows(data, pipeline.stream_identity(self.config, data))

    def config_fields(self) -> dict[str, tuple[str, ...]]:
        return {"model": field_names(ModelConfig), "train": field_names(EvalConfig),
                "data": ("sources", "game_weights", "seed", "num_threads", "num_workers")}  # pipeline.training_data's

    def step_cost(self, batch_size: int) -> StepCost:
        analytic = training_flops(self.model_config, batch_size)
        return StepCost(flops=analytic.total, tokens=analytic.tokens, compute_dtype=self.model_config.dtype)

    def summary(self, metrics: Mapping[str, float]) -> str:
        heads = " ".join(
            f"{head} {metrics[f'{head}_loss']:.3f}/{metrics[f'{head}_accuracy']:.2f}"
            for head in HEAD_NAMES
            if f"{head}_loss" in metrics
        )
        return f"loss/acc {heads}"

    def evaluator(self, workdir: Path) -> Evaluator | None:
        """Plays ``train.eval_games`` every ``train.eval_every`` steps, when both are set."""
        train = read_section(EvalConfig, section(self.config, "train", {}))
        if not (train.eval_every and train.eval_games):
            return None
        if isinstance(train.eval_episodes, bool) or not isinstance(train.eval_episodes, int) or train.eval_episodes < 1:
            # else refused at the first evaluation, eval_every steps in, under another name
            raise ValueError(f"config.train.eval_episodes must be an integer >= 1, got {train.eval_episodes!r}")
        from mgdt_jax.recipes.mgdt.evaluate import training_evaluator  # plays ALE: imported only when used

        return training_evaluator(train, workdir)


def load_model(workdir: Path, step: int | None = None) -> tuple[MultiGameDecisionTransformer, int]:
    """The model of a run's checkpoint (the newest complete one by default), built from the run's config.json.

    Raises CheckpointError naming the file when the config or the checkpoint is missing, corrupt,
    or the config does not fit the saved weights (naming the first parameter that differs). The
    shapes are compared before anything is placed on a device, so a wrong config costs no restore.
    """
    from mgdt_jax.core import checkpointing  # Orbax: only for loading a run, not for the train step
    from mgdt_jax.core.loop import CONFIG_FILE

    config_path = Path(workdir) / CONFIG_FILE
    try:
        run_config = json.loads(config_path.read_text())
        if not isinstance(run_config.get("model"), dict):  # the default model's weights would read as missing
            raise checkpointing.CheckpointError(f"{config_path}: no model section: not the config a training run wrote")
        config = ModelConfig.from_config(run_config["model"])
    except (OSError, ValueError, KeyError, AttributeError, TypeError) as error:
        raise checkpointing.CheckpointError(f"{config_path}: not a readable run config ({error})") from None
    if (recipe := recipe_name(run_config)) != MgdtRecipe.name:
        raise checkpointing.CheckpointError(f"{config_path}: a run of the {recipe!r} recipe, not an MGDT")
    directory = checkpointing.checkpoint_directory(workdir)
    try:
        params_read, _, step = checkpointing.load_checkpoint(workdir, step=step)
        saved = _without_variable_level(params_read)
    except checkpointing.CheckpointError:
        raise
    except Exception as error:  # a damaged checkpoint surfaces as anything from TensorStore to JSON
        where = directory if step is None else directory / str(step)  # the step asked for or read, where known
        raise checkpointing.CheckpointError(f"{where}: unreadable checkpoint ({error})") from None
    abstract = nnx.eval_shape(lambda: MultiGameDecisionTransformer(config, rngs=nnx.Rngs(0)))
    graphdef, params = nnx.split(abstract)
    expected, found = _shapes(nnx.to_pure_dict(params)), _shapes(saved)
    for name, shape in expected.items():
        if found.get(name) != shape:
            raise checkpointing.CheckpointError(
                f"{config_path} does not fit the weights of {directory / str(step)}: parameter {name} should be "
                f"{shape} for this config, the checkpoint has {found.get(name, 'none')}"
            )
    nnx.replace_by_pure_dict(params, jax.tree.map(jnp.asarray, saved))
    return nnx.merge(graphdef, params), step


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    """{"transformer/blocks/0/ln_1/scale": shape, ...}; list indices and dict keys alike."""
    def name(path) -> str:
        return "/".join(str(getattr(key, "key", getattr(key, "idx", key))) for key in path)

    return {name(path): tuple(leaf.shape) for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def _without_variable_level(tree: Any) -> Any:
    """A saved nnx.State ({..., "kernel": {"value": array}}) -> the pure-dict layout ({"kernel": array})."""
    if isinstance(tree, Mapping):
        if set(tree) == {"value"} and not isinstance(tree["value"], Mapping):
            return tree["value"]
        return {key: _without_variable_level(value) for key, value in tree.items()}
    return tree


class RldsWindows:
    """The MGDT training stream (mgdt_jax/recipes/mgdt/pipeline.py) as the core's ``TrainingData``."""

    def __init__(self, data: TrainingData, identity: dict[str, Any]):
        self._data = data
        self._identity = identity

    def batch(self, step: int) -> dict[str, np.ndarray]:
        return self._data.batch(step)

    def iterate(self, start_step: int) -> Iterator[dict[str, np.ndarray]]:
        return self._data.iterate(start_step)

    def describe(self) -> str:
        return f"{self._data.num_episodes} episodes, game weights {self._data.game_weights}"

    def identity(self) -> dict[str, Any]:
        return self._identity

    def upgrade_identity(self, saved: Mapping[str, Any]) -> dict[str, Any]:
        from mgdt_jax.recipes.mgdt import pipeline

        return pipeline.upgrade_identity(saved, list(self._data.content))


RECIPE = MgdtRecipe
