"""The JAT recipe: one transformer over BabyAI, Meta-World, MuJoCo and image tasks, imitating experts.

Trains with ``config.recipe = "jat"`` (experiments/jat_tiny.py); the config sections it reads are
``model`` (model.ModelConfig), ``data`` (data.DataConfig) and ``train``; docs/jat.md describes them.
The data (TFDS) is imported only when training asks for it, so the model and the train step stay
importable without TensorFlow, TFDS or any environment package.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import jax
from flax import nnx

from mgdt_jax.core.config_sections import field_names, section
from mgdt_jax.core.flops import decoder_flops
from mgdt_jax.core.recipe import Recipe, StepCost
from mgdt_jax.recipes.jat import tokens
from mgdt_jax.recipes.jat.model import JatModel, ModelConfig, image_codec_macs, loss_and_metrics

if TYPE_CHECKING:
    from mgdt_jax.recipes.jat.data import JatBatches


class JatRecipe(Recipe):
    name = "jat"

    def __init__(self, config: Any):
        super().__init__(config)
        self.model_config = ModelConfig.from_config(section(config, "model", {}))

    def model(self, rngs: nnx.Rngs) -> JatModel:
        return JatModel(self.model_config, rngs=rngs)

    def loss(self, model: JatModel, batch: Mapping[str, jax.Array],
             dropout_key: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
        """kappa * next-observation loss + (1 - kappa) * action loss (model.loss_and_metrics)."""
        return loss_and_metrics(model, batch, deterministic=False, dropout_key=dropout_key)

    def training_data(self, *, process_index: int, process_count: int) -> JatBatches:
        from mgdt_jax.recipes.jat import data  # TFDS: only when training

        return data.training_data(self.config, process_index=process_index, process_count=process_count)

    def config_fields(self) -> dict[str, tuple[str, ...]]:
        from mgdt_jax.recipes.jat.data import DataConfig

        return {"model": field_names(ModelConfig), "data": field_names(DataConfig)}

    def step_cost(self, batch_size: int) -> StepCost:
        """The decoder over 2 * num_steps tokens per row plus the linear encoders and heads: the cost
        of a discrete or continuous batch (``batch_cost`` adds an image batch's convolutions)."""
        config = self.model_config
        length = 2 * config.num_steps
        blocks, attention = decoder_flops(num_layers=config.num_layers, d_model=config.d_model,
                                          mlp_ratio=config.mlp_ratio, sequence_length=length, batch_size=batch_size)
        width, d_model = config.continuous_width, config.d_model
        discrete_in = (config.discrete_width + config.text_length) * config.discrete_embed_dim
        # Multiply-adds per step of each encoder and head; the group's encoder runs, so take the largest.
        encoders = max((width + 1) * d_model, discrete_in * (d_model - 1)) + width * d_model
        heads = d_model * (config.num_discrete_actions + 2 * width)
        linear = 6.0 * (encoders + heads) * batch_size * config.num_steps
        return StepCost(flops=blocks + attention + linear, tokens=batch_size * length, compute_dtype=config.dtype)

    def batch_cost(self, batch_size: int, batch: Mapping[str, Any]) -> StepCost:
        """``step_cost``, plus for an image batch the image encoder and decoder on each of its
        ``batch_size * num_steps`` frames (model.image_codec_macs; 6 FLOPs a multiply-add forward and
        backward, 4 for the first convolution, whose input needs no gradient)."""
        cost = self.step_cost(batch_size)
        if tokens.batch_group(batch) != "image":
            return cost
        first, rest = image_codec_macs(self.model_config.image_shape, self.model_config.d_model)
        frames = batch_size * self.model_config.num_steps
        return dataclasses.replace(cost, flops=cost.flops + (4.0 * first + 6.0 * rest) * frames)

    def summary(self, metrics: Mapping[str, float]) -> str:
        return (f"action {metrics.get('action_loss', float('nan')):.4f} "
                f"next-obs {metrics.get('observation_loss', float('nan')):.4f} "
                f"real steps {metrics.get('real_step_fraction', float('nan')):.2f}")


RECIPE = JatRecipe
