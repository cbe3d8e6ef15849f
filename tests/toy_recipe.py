"""A toy recipe for the generic training tests: next-token prediction on the core decoder.

Its sequences follow a fixed random permutation of a small vocabulary from a random first token
(``x[t+1] = successor[x[t]]``), so a one-layer model learns them in tens of steps. It shares
nothing with the built-in recipes but the core (decoder, trainer, loop, checkpoints): it is the
recipe outside ``mgdt_jax.recipes`` that tests/test_recipe_contract.py trains through the loop,
as a user's own would be. Selected by ``config.recipe = "tests.toy_recipe"`` (a module path), its
name.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from mgdt_jax.core.config_sections import read_section, section
from mgdt_jax.core.transformer import Transformer, dense, sharded
from mgdt_jax.core.recipe import Recipe, StepCost
from mgdt_jax.core.flops import decoder_flops

PERMUTATION_SEED = 1234  # the rule every sequence follows, fixed for all runs


@dataclasses.dataclass(frozen=True)
class ToyModelConfig:
    num_layers: int = 1
    d_model: int = 32
    num_heads: int = 2
    mlp_ratio: int = 4
    dropout_rate: float = 0.1
    vocab_size: int = 16
    sequence_length: int = 12
    dtype: str = "float32"


class NextTokenModel(nnx.Module):
    """Token and position embeddings, the generic decoder with a causal mask, a vocabulary head."""

    def __init__(self, config: ToyModelConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.embed = nnx.Embed(
            config.vocab_size,
            config.d_model,
            embedding_init=sharded(nnx.initializers.normal(1.0), ("vocab", None)),
            rngs=rngs,
        )
        self.positions = nnx.Param(
            sharded(nnx.initializers.normal(0.02), ("position", "embed"))(
                rngs.params(), (config.sequence_length, config.d_model)
            )
        )
        self.transformer = Transformer(
            num_layers=config.num_layers,
            d_model=config.d_model,
            num_heads=config.num_heads,
            mlp_ratio=config.mlp_ratio,
            dropout_rate=config.dropout_rate,
            dtype=jnp.dtype(config.dtype),
            rngs=rngs,
        )
        self.head = dense(
            config.d_model,
            config.vocab_size,
            ("embed", "vocab"),
            kernel_init=nnx.initializers.variance_scaling(1.0, "fan_in", "truncated_normal"),
            dtype=jnp.float32,
            param_dtype=jnp.float32,
            rngs=rngs,
        )

    def __call__(self, tokens: jax.Array, *, deterministic: bool, dropout_key: jax.Array | None = None) -> jax.Array:
        """int32 tokens [B, T] -> float32 logits [B, T, V] of each next token."""
        length = tokens.shape[1]
        causal = jnp.tril(jnp.ones((1, length, length), bool))
        hidden = self.transformer(
            self.embed(tokens) + self.positions[...][:length], causal, deterministic=deterministic, dropout_key=dropout_key
        )
        return self.head(hidden)


class PermutationSequences:
    """Global batch ``step`` drawn from ``(data.seed, step)``; this host takes its block of rows."""

    def __init__(self, *, seed: int, global_batch_size: int, vocab_size: int, sequence_length: int,
                 process_index: int, process_count: int):
        if global_batch_size % process_count:
            raise ValueError(f"train.batch_size {global_batch_size} does not split over {process_count} hosts")
        self._seed, self._global_batch_size = seed, global_batch_size
        self._vocab_size, self._sequence_length = vocab_size, sequence_length
        local = global_batch_size // process_count
        self._rows = slice(process_index * local, (process_index + 1) * local)
        self._successor = np.random.default_rng(PERMUTATION_SEED).permutation(vocab_size)

    def batch(self, step: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self._seed, step])
        tokens = np.empty((self._global_batch_size, self._sequence_length), np.int32)
        tokens[:, 0] = rng.integers(self._vocab_size, size=self._global_batch_size)
        for position in range(1, self._sequence_length):
            tokens[:, position] = self._successor[tokens[:, position - 1]]
        return {"tokens": tokens[self._rows]}

    def iterate(self, start_step: int) -> Iterator[dict[str, np.ndarray]]:
        step = start_step
        while True:
            yield self.batch(step)
            step += 1

    def describe(self) -> str:
        return f"permutation sequences of {self._sequence_length} tokens over {self._vocab_size}"

    def identity(self) -> dict[str, Any]:
        return {"seed": self._seed, "global_batch_size": self._global_batch_size}


class ToyRecipe(Recipe):
    name = "tests.toy_recipe"  # a recipe outside mgdt_jax.recipes is named by its module path

    def __init__(self, config: Any):
        super().__init__(config)
        self.model_config = read_section(ToyModelConfig, section(config, "model", {}))

    def model(self, rngs: nnx.Rngs) -> NextTokenModel:
        return NextTokenModel(self.model_config, rngs=rngs)

    def loss(
        self, model: NextTokenModel, batch: Mapping[str, jax.Array], dropout_key: jax.Array
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        tokens = batch["tokens"]
        logits = model(tokens[:, :-1], deterministic=False, dropout_key=dropout_key)
        targets = tokens[:, 1:]
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()
        return loss, {"accuracy": (jnp.argmax(logits, axis=-1) == targets).mean()}

    def training_data(self, *, process_index: int, process_count: int) -> PermutationSequences:
        return PermutationSequences(
            seed=section(section(self.config, "data", {}), "seed", 0),
            global_batch_size=section(section(self.config, "train", {}), "batch_size", 32),
            vocab_size=self.model_config.vocab_size,
            sequence_length=self.model_config.sequence_length,
            process_index=process_index,
            process_count=process_count,
        )

    def step_cost(self, batch_size: int) -> StepCost:
        config = self.model_config
        length = config.sequence_length - 1  # the model reads all but the last token
        blocks, attention = decoder_flops(
            num_layers=config.num_layers, d_model=config.d_model, mlp_ratio=config.mlp_ratio,
            sequence_length=length, batch_size=batch_size,
        )
        head = 6.0 * config.d_model * config.vocab_size * batch_size * length
        return StepCost(flops=blocks + attention + head, tokens=batch_size * length, compute_dtype=config.dtype)


RECIPE = ToyRecipe


def get_config() -> ml_collections.ConfigDict:
    """A complete experiment config of the toy recipe, as the loop and ``mgdt-train`` read one."""
    return ml_collections.ConfigDict(
        {
            "recipe": "tests.toy_recipe",
            "model": dataclasses.asdict(ToyModelConfig()),
            "mesh": {"data": -1, "fsdp": 1, "tensor": 1},
            "optimizer": {"name": "adamw", "learning_rate": 1e-2, "warmup_steps": 4},
            "data": {"seed": 0},
            "train": {
                "batch_size": 16, "grad_accum_steps": 1, "num_steps": 100, "seed": 0, "log_every": 10,
                "checkpoint_every": 50, "keep_checkpoints": 3, "eval_every": 0, "init_from": "", "profile_steps": 0,
            },
        }
    )
