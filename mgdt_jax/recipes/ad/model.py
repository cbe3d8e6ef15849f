"""The Algorithm Distillation model (Laskin et al. 2022, arXiv 2210.14215, §4) on the generic decoder.

A causal transformer reads a learning history across episodes and predicts each step's action from
the observation and everything before it; with frozen weights it then improves in context on a new
task (mgdt_jax/recipes/ad/evaluate.py). docs/algorithm_distillation.md gives the measurements behind each choice.

Tokens per history step t (``token_layout``):

* ``"joint"`` (the default): one token, the sum of three embeddings, observation o_t + previous
  action a_{t-1} + previous reward r_{t-1}; the action head reads that same token. The layout of
  the XLand-100B AD baseline (which concatenates the three and projects), here summed.
* ``"separate"``: three tokens ``[o_t, a_t, r_t]`` (the paper's and the public PyTorch code's); the
  action head reads the observation token, which sees a_{t-1} and r_{t-1} two and one tokens back.

Both see the same information. The joint layout is 3x shorter, so it costs about a third per step
and its attention a ninth, and in our measurement it also learned faster at equal updates
(docs/algorithm_distillation.md).

The previous action of a window's first step comes from the history (the step before the window), or
is ``START`` (= num_actions, an extra row of the action table) at a history's first step; its
previous reward is then 0.

Positions (``positions``): ALiBi (Press et al. 2022), a per-head penalty on the query-key distance
in tokens, and no position embedding. It depends only on distances, so the KV cache of in-context
evaluation slides over the unbounded stream of evaluation steps with no re-encoding (absolute
positions would have to be recomputed for every window); XLand-100B's AD uses ALiBi with a KV cache
for the same reason. ``"none"`` (no positional information but the causal mask) is kept for
comparison: once the window slides every token sees equally many keys, so it cannot tell old steps
from new ones.

Observations (``observation_embedding``): ``"table"`` gives each observation id its own vector.
``"coordinates"`` is for the square grid worlds (Dark Room, Key-to-Door), whose ids are
phase * size^2 + row * size + column (mgdt_jax/envs/grid.py; the phase counts Key-to-Door's key
held, or Dark Room Hard's terminal id): the vector is the sum of a phase, a row and a column
embedding, as the paper's agent observes its (x, y) position (Laskin et al. 2022, §5). A cell never
rewarded in training then shares its row and its column with cells that were, so "return to where the
reward was" can carry over to held-out goals (docs/algorithm_distillation.md).

Loss: the mean cross-entropy of the action logits over every step of the window (AD trains on all
of them); the metrics are that loss and the argmax accuracy.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from mgdt_jax.core.config_sections import read_section
from mgdt_jax.core.transformer import KVCache, Transformer, dense, sharded

TOKEN_LAYOUTS = ("joint", "separate")
POSITIONS = ("alibi", "none")
OBSERVATION_EMBEDDINGS = ("table", "coordinates")


@dataclasses.dataclass(frozen=True)
class ADModelConfig:
    """The AD model's settings. ``context_steps``: history steps per training window (the context
    the model learns from; >= 4 episodes for in-context RL, which data.py checks against the
    histories' episode length). ``grid_size``: the side of the square grid the observation ids
    number (0: not a grid world); ``"coordinates"`` needs it."""

    num_observations: int
    num_actions: int
    context_steps: int = 80
    token_layout: str = "joint"
    positions: str = "alibi"
    observation_embedding: str = "table"
    grid_size: int = 0
    num_layers: int = 2
    d_model: int = 64
    num_heads: int = 2
    mlp_ratio: int = 4
    dropout_rate: float = 0.1
    dtype: str = "float32"  # matmul input dtype; accumulation, softmax and LayerNorm stay float32
    param_dtype: str = "float32"

    def __post_init__(self):
        if self.token_layout not in TOKEN_LAYOUTS:
            raise ValueError(f"token_layout {self.token_layout!r}: choose one of {', '.join(TOKEN_LAYOUTS)}")
        if self.positions not in POSITIONS:
            raise ValueError(f"positions {self.positions!r}: choose one of {', '.join(POSITIONS)}")
        if self.observation_embedding not in OBSERVATION_EMBEDDINGS:
            raise ValueError(f"observation_embedding {self.observation_embedding!r}: choose one of "
                             f"{', '.join(OBSERVATION_EMBEDDINGS)}")
        if self.observation_embedding == "coordinates" and self.grid_size < 1:
            raise ValueError("observation_embedding 'coordinates' needs a grid world's observations (grid_size 0)")
        for name in ("num_observations", "num_actions", "context_steps", "num_layers", "d_model", "num_heads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")

    @classmethod
    def from_config(cls, config: Any) -> ADModelConfig:
        return read_section(cls, config)

    @property
    def tokens_per_step(self) -> int:
        return 1 if self.token_layout == "joint" else 3

    @property
    def sequence_length(self) -> int:
        """Tokens per training window."""
        return self.context_steps * self.tokens_per_step

    @property
    def window(self) -> int:
        """Tokens the action prediction of a window's last step sees in training, its own included:
        the in-context KV cache keeps exactly this many, so inference sees what training showed."""
        return self.tokens_per_step * (self.context_steps - 1) + 1


class AlgorithmDistillation(nnx.Module):
    """AD over the batch of mgdt_jax/recipes/ad/data.py.

    ``model(batch, deterministic=True)`` -> ``{"action_logits": float32 [B, S, num_actions]}`` for a
    batch of ``observations`` int32 [B, S], ``actions`` int32 [B, S], ``rewards`` float32 [B, S],
    ``previous_action`` int32 [B] and ``previous_reward`` float32 [B]. Inference goes step by step
    through a KV cache: ``init_cache`` then ``step``.
    """

    def __init__(self, config: Any, *, rngs: nnx.Rngs):
        config = ADModelConfig.from_config(config)
        self.config = config
        dtype, param_dtype = jnp.dtype(config.dtype), jnp.dtype(config.param_dtype)

        def embedding(vocabulary: int) -> nnx.Embed:
            return nnx.Embed(
                vocabulary,
                config.d_model,
                # Replicated tables (tiny), truncated N(0, 1) as the MGDT's.
                embedding_init=sharded(nnx.initializers.truncated_normal(1.0), ("vocab", None)),
                dtype=jnp.float32,
                param_dtype=param_dtype,
                rngs=rngs,
            )

        unit_fan_in = nnx.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")
        if config.observation_embedding == "table":
            self.observation_emb = embedding(config.num_observations)
        else:
            self.phase_emb = embedding(-(-config.num_observations // config.grid_size**2))
            self.row_emb = embedding(config.grid_size)
            self.column_emb = embedding(config.grid_size)
        self.action_emb = embedding(config.num_actions + 1)  # the last row: START, no previous action
        # Rewards are real numbers (a bandit's 0/1, a grid world's per-step reward): a linear embedding.
        self.reward_emb = dense(
            1, config.d_model, (None, "embed"), kernel_init=unit_fan_in, dtype=jnp.float32,
            param_dtype=param_dtype, rngs=rngs,
        )
        if config.token_layout == "joint":
            # r_{t-1} also scales a vector of a_{t-1}'s own: a sum of tokens (what attention takes) then
            # holds each action's reward total, not only the action counts and the overall reward.
            self.action_reward_emb = embedding(config.num_actions + 1)
        self.transformer = Transformer(
            num_layers=config.num_layers,
            d_model=config.d_model,
            num_heads=config.num_heads,
            mlp_ratio=config.mlp_ratio,
            dropout_rate=config.dropout_rate,
            dtype=dtype,
            param_dtype=param_dtype,
            alibi=config.positions == "alibi",
            alibi_unit=config.tokens_per_step,  # the distance penalty counts history steps in both layouts
            rngs=rngs,
        )
        self.action_head = dense(
            config.d_model, config.num_actions, ("embed", "vocab"), kernel_init=unit_fan_in,
            dtype=jnp.float32, param_dtype=param_dtype, rngs=rngs,
        )

    @property
    def start_action(self) -> int:
        """The previous-action id of a history's (or an evaluation's) first step."""
        return self.config.num_actions

    def _observation(self, observations: jax.Array) -> jax.Array:
        """int32 [...] observation ids -> [..., D] (``observation_embedding``, module docstring)."""
        if self.config.observation_embedding == "table":
            return self.observation_emb(observations)
        size = self.config.grid_size
        phase, cell = observations // size**2, observations % size**2
        return self.phase_emb(phase) + self.row_emb(cell // size) + self.column_emb(cell % size)

    def _reward(self, rewards: jax.Array) -> jax.Array:
        return self.reward_emb(rewards.astype(jnp.float32)[..., None])

    def _previous_step(self, actions: jax.Array, rewards: jax.Array) -> jax.Array:
        """The joint token's part for (a_{t-1}, r_{t-1}): E_a[a] + r w + r E_ar[a]."""
        rewards = rewards.astype(jnp.float32)
        return self.action_emb(actions) + self._reward(rewards) + rewards[..., None] * self.action_reward_emb(actions)

    def embed(self, batch: Mapping[str, jax.Array]) -> jax.Array:
        """Batch -> token embeddings [B, S * tokens_per_step, D] in the module docstring's layout."""
        observations, actions, rewards = batch["observations"], batch["actions"], batch["rewards"]
        batch_size, num_steps = observations.shape
        if self.config.token_layout == "joint":
            previous_actions = jnp.concatenate([batch["previous_action"][:, None], actions[:, :-1]], axis=1)
            previous_rewards = jnp.concatenate([batch["previous_reward"][:, None], rewards[:, :-1]], axis=1)
            return self._observation(observations) + self._previous_step(previous_actions, previous_rewards)
        per_step = jnp.stack([self._observation(observations), self.action_emb(actions), self._reward(rewards)], axis=2)
        return per_step.reshape(batch_size, num_steps * 3, self.config.d_model)

    def __call__(
        self,
        batch: Mapping[str, jax.Array],
        *,
        deterministic: bool,
        dropout_key: jax.Array | None = None,
    ) -> dict[str, jax.Array]:
        """Action logits for every step of the window. ``dropout_key`` is required unless ``deterministic``."""
        batch_size, num_steps = batch["observations"].shape
        tokens = self.embed(batch)
        length = tokens.shape[1]
        causal = jnp.tril(jnp.ones((1, length, length), bool))
        read = None
        if self.config.token_layout == "separate":
            # Only the observation tokens are read: the last block runs at those alone.
            read = jnp.broadcast_to(jnp.arange(num_steps) * 3, (batch_size, num_steps))
        hidden = self.transformer(
            tokens, causal, deterministic=deterministic, dropout_key=dropout_key, output_positions=read
        )  # [B, S, D]
        return {"action_logits": self.action_head(hidden)}

    def init_cache(self, batch_size: int) -> KVCache:
        """An empty KV cache for ``batch_size`` in-context streams (holds ``config.window`` tokens
        plus the ones a step adds)."""
        return self.transformer.init_cache(batch_size, self.config.window + self.config.tokens_per_step - 1)

    def step(
        self,
        cache: KVCache,
        observation: jax.Array,
        previous_action: jax.Array,
        previous_reward: jax.Array,
        step: jax.Array,
    ) -> tuple[jax.Array, KVCache]:
        """One in-context step of every stream: observation int32 [B], previous_action int32 [B]
        (``start_action`` at step 0), previous_reward float32 [B] (0 at step 0), ``step`` int32 []
        the stream's step index from 0 -> (action logits float32 [B, num_actions], cache).

        Equal to the training forward pass over the stream with attention limited to the last
        ``config.window`` tokens (docs/algorithm_distillation.md): the KV cache slides, nothing is re-encoded.
        """
        batch_size = observation.shape[0]
        observation_token = self._observation(observation)
        if self.config.token_layout == "joint":
            tokens = (observation_token + self._previous_step(previous_action, previous_reward))[:, None]
            offsets = jnp.zeros((1,), jnp.int32)
        else:
            # [a_{t-1}, r_{t-1}, o_t] at positions 3t-2, 3t-1, 3t; at t = 0 the first two are negative
            # and never attended, so step 0 sees o_0 alone, as a window's first step in training.
            tokens = jnp.stack([self.action_emb(previous_action), self._reward(previous_reward), observation_token], axis=1)
            offsets = jnp.array([-2, -1, 0], jnp.int32)
        positions = jnp.broadcast_to(step * self.config.tokens_per_step + offsets, (batch_size, offsets.shape[0]))
        hidden, cache = self.transformer.decode(tokens, positions, cache, window=self.config.window)
        return self.action_head(hidden[:, -1]), cache


def loss_and_metrics(logits: Mapping[str, jax.Array], batch: Mapping[str, jax.Array]) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Mean action cross-entropy over every step of every window, and ``{"action_loss",
    "action_accuracy"}`` (argmax accuracy)."""
    action_logits, targets = logits["action_logits"], batch["actions"]
    cross_entropy = optax.softmax_cross_entropy_with_integer_labels(action_logits, targets)
    loss = cross_entropy.mean()
    accuracy = (jnp.argmax(action_logits, axis=-1) == targets).astype(jnp.float32).mean()
    return loss, {"action_loss": loss, "action_accuracy": accuracy}


def training_flops(config: Any, batch_size: int) -> float:
    """Analytic FLOPs of one training step (forward + backward), the PyTorch AD peer's formula:
    6 N B T + 12 L D T^2 B with N = 12 D^2 + 13 D per block + 2 D (the decoder's non-embedding
    parameters at mlp_ratio 4), T tokens per window; QK^T and AV over the full square."""
    config = ADModelConfig.from_config(config)
    d, layers, tokens = config.d_model, config.num_layers, config.sequence_length
    hidden = config.mlp_ratio * d
    per_block = 4 * d * d + 4 * d + 2 * d * hidden + hidden + d + 4 * d  # attention, MLP, 2 LayerNorms
    non_embedding = layers * per_block + 2 * d
    return 6.0 * non_embedding * batch_size * tokens + 12.0 * layers * d * tokens**2 * batch_size
