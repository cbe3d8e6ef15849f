"""The agents: a Transformer-XL memory built from the core's decoder blocks, and a GRU (RL²).

Both read the same per-step inputs and keep memory across trials (only a meta-episode's first
step, ``reset``, clears it) and expose one interface to the rollout and the PPO loss:

* ``initial_memory(batch)``: the empty memory (leaves batch-first, [B, ...]);
* ``sequence(inputs, memory, ...)``: the learner's pass over a segment [B, T] from the memory held
  at its start -> ``(logits [B, T, A], values [B, T])``;
* ``begin_segment(memory, T)`` / ``act(inputs_t, cache, t)`` / ``end_segment(cache)``: the actor's
  step-by-step pass over the same segment, equal to ``sequence`` (tests/test_ada.py checks it).

Inputs (dict, [B, T] leading axes): ``observation`` (int32 ids [B, T], or int32 [B, T, H, W, 2]
grid views of (tile, colour) ids), ``previous_action`` int32 (``num_actions`` after a reset),
``previous_reward`` float32, ``extras`` float32 [B, T, F] (trial index, time, goal encoding, ...),
``reset`` bool (the first step of a meta-episode).

**Transformer-XL** (Dai et al. 2019, §3.2): each layer attends over its cached inputs of the last
``memory_length`` steps (computed by earlier segments, no gradient through them) and the current
segment, causally. Layers are the core's pre-LayerNorm decoder blocks, the ordering GTrXL (Parisotto
et al. 2020, §3) calls TrXL-I, which trains far more stably in RL than post-LN; ``gated=True`` adds
GTrXL's GRU-type gates in place of the residual sums (``core.transformer.GRUGate``). Positions are
relative, as ALiBi linear biases (Press et al. 2022, §3: head h of H adds
``-2^(-8(h+1)/H) * distance`` to its logits), so the memory needs no position bookkeeping and a
segment can be any length. ``alibi=False`` drops the bias, and with it every position: ALiBi's
steeper heads barely see a step one trial back (with 4 heads the steepest slope is 1/4: -7.5 on the
logit 30 steps back), while the trial index and the time within the trial, inputs of every step,
already say where a step lies. Tokens of an earlier meta-episode are masked out.

**GRU** as in XLand-MiniGrid's RL² baseline (Nikulin et al. 2023, training/nn.py): the encoded
step goes through one GRU cell whose state carries over trials and segments; actor and critic are
tanh MLP heads.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from mgdt_jax.core.transformer import Block, alibi_slopes, check_decoder_arguments, dense, layer_norm, sharded

AGENTS = ("trxl", "gru")
OBSERVATIONS = ("discrete", "grid")
GRID_CHANNELS = (16, 32, 64)  # the grid encoder's 2x2 convolutions (XLand-MiniGrid's training/nn.py)


@dataclasses.dataclass(frozen=True)
class AgentConfig:
    """The ``model`` section of an AdA experiment."""

    agent: str = "trxl"  # "trxl" | "gru"
    num_layers: int = 2
    d_model: int = 64
    num_heads: int = 2
    mlp_ratio: int = 4
    dropout_rate: float = 0.0
    memory_length: int = 16  # Transformer-XL: cached steps each layer attends to beyond its segment
    gated: bool = False  # Transformer-XL: GTrXL's GRU-type gates in place of the residual sums
    alibi: bool = True  # Transformer-XL: ALiBi's recency bias; False: no positional bias (trial and time are inputs)
    gru_hidden: int = 64
    head_hidden: int = 64
    observation: str = "discrete"  # "discrete" ids or "grid" (xminigrid's (tile, colour) views)
    num_tiles: int = 13  # grid observations: xminigrid's tile and colour vocabularies
    num_colors: int = 12
    grid_embedding: int = 16

    def __post_init__(self) -> None:
        for name in ("gru_hidden", "head_hidden", "num_tiles", "num_colors", "grid_embedding"):
            if getattr(self, name) < 1:
                raise ValueError(f"model.{name} must be at least 1, got {getattr(self, name)}")
        if self.memory_length < 0:
            raise ValueError(f"model.memory_length must be >= 0 (0: no memory beyond the segment), got {self.memory_length}")
        check_decoder_arguments(num_layers=self.num_layers, d_model=self.d_model,
                                num_heads=self.num_heads if self.agent == "trxl" else 1,  # the GRU has no heads
                                mlp_ratio=self.mlp_ratio, dropout_rate=self.dropout_rate, prefix="model.")


@dataclasses.dataclass(frozen=True)
class EnvShapes:
    """What an agent needs to know of its environment, read by the recipe from the environment."""

    num_actions: int
    num_observations: int = 0  # discrete observations only
    extras_size: int = 0
    grid_shape: tuple[int, ...] = ()  # grid observations only: (H, W, 2)


def grid_channels(config: AgentConfig) -> tuple[int, ...]:
    """Channels in and out of the grid encoder's convolutions: the tile and colour embeddings, then
    ``GRID_CHANNELS``."""
    return (2 * config.grid_embedding, *GRID_CHANNELS)


def _kernel_init(scale: float = 1.0) -> nnx.Initializer:
    return nnx.initializers.variance_scaling(scale, "fan_in", "truncated_normal")


def _valid_conv_2x2(conv: nnx.Conv, x: jax.Array) -> jax.Array:
    """``conv(x)`` for a 2x2 VALID convolution, as one matmul over the four shifted views (im2col).

    The same parameters and result as ``nnx.Conv``; XLA:CPU runs a convolution's gradient inside a
    ``lax.scan`` (PPO's minibatch loop) several times slower than this matmul."""
    height, width = x.shape[-3] - 1, x.shape[-2] - 1
    patches = jnp.concatenate([x[..., i:i + height, j:j + width, :] for i in (0, 1) for j in (0, 1)], axis=-1)
    kernel = conv.kernel[...].reshape(-1, conv.kernel.shape[-1])
    return patches @ kernel + conv.bias[...]


class InputEncoder(nnx.Module):
    """One step's inputs -> float32 [..., d_model]: the sum of each input's embedding."""

    def __init__(self, config: AgentConfig, shapes: EnvShapes, d_out: int, *, rngs: nnx.Rngs):
        self.observation_kind = config.observation
        embed_init = sharded(nnx.initializers.normal(1.0), ("vocab", "embed"))
        linear = dict(kernel_init=_kernel_init(), dtype=jnp.float32, param_dtype=jnp.float32, rngs=rngs)
        if config.observation == "discrete":
            self.observation = nnx.Embed(shapes.num_observations, d_out, embedding_init=embed_init, rngs=rngs)
        elif config.observation == "grid":
            # XLand-MiniGrid baseline encoder (training/nn.py): tile and colour embeddings, three
            # 2x2 convolutions (GRID_CHANNELS), flattened.
            self.tiles = nnx.Embed(config.num_tiles, config.grid_embedding, rngs=rngs)
            self.colors = nnx.Embed(config.num_colors, config.grid_embedding, rngs=rngs)
            channels = grid_channels(config)
            self.convs = nnx.List([nnx.Conv(c_in, c_out, (2, 2), padding="VALID", rngs=rngs) for c_in, c_out in zip(channels, channels[1:])])
            height, width = shapes.grid_shape[0] - len(GRID_CHANNELS), shapes.grid_shape[1] - len(GRID_CHANNELS)
            self.observation = dense(height * width * GRID_CHANNELS[-1], d_out, (None, "embed"), **linear)
        else:
            raise ValueError(f"model.observation {config.observation!r} is not one of {OBSERVATIONS}")
        self.previous_action = nnx.Embed(shapes.num_actions + 1, d_out, embedding_init=embed_init, rngs=rngs)
        self.previous_reward = dense(1, d_out, (None, "embed"), **linear)
        self.extras = dense(shapes.extras_size, d_out, (None, "embed"), **linear) if shapes.extras_size else None

    def __call__(self, inputs: dict[str, jax.Array]) -> jax.Array:
        observation = inputs["observation"]
        if self.observation_kind == "discrete":
            encoded = self.observation(observation)
        else:
            lead = observation.shape[:-3]
            grid = jnp.concatenate([self.tiles(observation[..., 0]), self.colors(observation[..., 1])], axis=-1)
            grid = grid.reshape(-1, *grid.shape[-3:])
            for conv in self.convs:
                grid = jax.nn.relu(_valid_conv_2x2(conv, grid))
            encoded = self.observation(grid.reshape(*lead, -1))
        encoded = encoded + self.previous_action(inputs["previous_action"])
        encoded = encoded + self.previous_reward(inputs["previous_reward"][..., None])
        if self.extras is not None:
            encoded = encoded + self.extras(inputs["extras"])
        return encoded


class PolicyValueHeads(nnx.Module):
    """Actor and critic MLPs (one tanh hidden layer each) -> (logits [..., A], value [...])."""

    def __init__(self, d_in: int, hidden: int, num_actions: int, *, rngs: nnx.Rngs):
        linear = dict(dtype=jnp.float32, param_dtype=jnp.float32, rngs=rngs)
        self.actor_hidden = dense(d_in, hidden, ("embed", "mlp"), kernel_init=_kernel_init(2.0), **linear)
        # A near-uniform first policy (PPO practice: Andrychowicz et al. 2021, §3.2 "policy init").
        self.actor_out = dense(hidden, num_actions, ("mlp", None), kernel_init=_kernel_init(1e-4), **linear)
        self.critic_hidden = dense(d_in, hidden, ("embed", "mlp"), kernel_init=_kernel_init(2.0), **linear)
        self.critic_out = dense(hidden, 1, ("mlp", None), kernel_init=_kernel_init(1.0), **linear)

    def __call__(self, features: jax.Array) -> tuple[jax.Array, jax.Array]:
        logits = self.actor_out(jnp.tanh(self.actor_hidden(features)))
        value = self.critic_out(jnp.tanh(self.critic_hidden(features)))[..., 0]
        return logits, value


class TransformerXL(nnx.Module):
    """Transformer-XL over embedded steps: core decoder blocks attending to a cached memory."""

    def __init__(self, config: AgentConfig, *, rngs: nnx.Rngs):
        kernel_init = nnx.initializers.variance_scaling(2.0 / config.num_layers, "fan_in", "truncated_normal")
        self.blocks = nnx.List(
            [
                Block(config.d_model, config.num_heads, config.mlp_ratio * config.d_model, config.dropout_rate,
                      kernel_init=kernel_init, dtype=jnp.float32, param_dtype=jnp.float32, rngs=rngs,
                      gated=config.gated)
                for _ in range(config.num_layers)
            ]
        )
        self.ln_f = layer_norm(config.d_model, param_dtype=jnp.float32, rngs=rngs)
        self.num_heads = config.num_heads
        self.alibi = config.alibi

    def _key_bias(self, context: int) -> jax.Array | None:
        """ALiBi as a per-key bias, float32 [1, H, 1, C] (linear in the key's slot: softmax ignores
        each query row's shift); None without ALiBi, so no bias is built or added."""
        if not self.alibi:
            return None
        offsets = (jnp.arange(context) - (context - 1)).astype(jnp.float32)
        return (alibi_slopes(self.num_heads)[:, None] * offsets)[None, :, None, :]

    def attend(
        self,
        layer_inputs: jax.Array,
        cached: jax.Array,
        episode: jax.Array,
        positions: jax.Array,
        *,
        deterministic: bool,
        dropout_key: jax.Array | None,
    ) -> tuple[jax.Array, jax.Array]:
        """One pass of the stack for the query tokens at ``positions`` of a context.

        layer_inputs: [B, P, D] embedded query tokens; cached: [B, L, C, D] each layer's inputs over
        the context (the query slots are overwritten here); episode: int32 [B, C], the meta-episode
        of each context slot (-1 = empty); positions: int32 [B, P] the query slots, increasing.
        Returns (features [B, P, D] after the final LayerNorm, cached with the queries' inputs).
        """
        context = cached.shape[2]
        index = jnp.arange(context)
        # Query i sees key j iff j <= i and both belong to the same meta-episode.
        query_episode = jnp.take_along_axis(episode, positions, axis=1)
        mask = (index[None, None, :] <= positions[:, :, None]) & (episode[:, None, :] == query_episode[:, :, None])
        full_mask = jnp.zeros((positions.shape[0], 1, context, context), bool)
        full_mask = full_mask.at[jnp.arange(positions.shape[0])[:, None], 0, positions].set(mask)
        key_bias = self._key_bias(context)
        if key_bias is not None:
            key_bias = jnp.broadcast_to(key_bias, (positions.shape[0], self.num_heads, context, context))
        rows = jnp.arange(positions.shape[0])[:, None]
        x = layer_inputs
        for layer, block in enumerate(self.blocks):
            cached = cached.at[rows, layer, positions].set(x)
            key = jax.random.fold_in(dropout_key, layer) if dropout_key is not None else None
            x = block(cached[:, layer], full_mask, deterministic=deterministic, dropout_key=key,
                      positions=positions, bias=key_bias)
        return self.ln_f(x), cached

    def keys_and_values(self, cached: jax.Array) -> tuple[tuple[jax.Array, ...], tuple[jax.Array, ...]]:
        """Each layer's keys and values [B, H, C, K] of its cached inputs [B, L, C, D] (the actor's
        KV cache: parameters are fixed during a rollout, so they are projected once per segment)."""
        projected = [block.attn.keys_and_values(block.ln_1(cached[:, layer])) for layer, block in enumerate(self.blocks)]
        return tuple(k for k, _ in projected), tuple(v for _, v in projected)

    def decode(
        self, x: jax.Array, cached: jax.Array, keys: tuple[jax.Array, ...], values: tuple[jax.Array, ...],
        episode: jax.Array, position: jax.Array,
    ) -> tuple[jax.Array, jax.Array, tuple[jax.Array, ...], tuple[jax.Array, ...]]:
        """One query step at context slot ``position`` (int32 [], the same for the whole batch) over the
        KV cache: x [B, 1, D] embedded step; cached [B, L, C, D] layer inputs (the step's are written,
        for the memory the segment leaves); keys, values per layer [B, H, C, K]; episode int32 [B, C].
        Equals ``attend`` at that position. Returns (features [B, 1, D], cached, keys, values)."""
        batch, context = episode.shape[0], cached.shape[2]
        index = jnp.arange(context)
        query_episode = jax.lax.dynamic_index_in_dim(episode, position, axis=1)  # [B, 1]
        mask = ((index <= position)[None, :] & (episode == query_episode))[:, None, None, :]  # [B, 1, 1, C]
        bias = self._key_bias(context)
        slots = jnp.full((batch, 1), position, jnp.int32)
        keys, values = list(keys), list(values)
        for layer, block in enumerate(self.blocks):
            cached = cached.at[:, layer, position].set(x[:, 0])
            x, keys[layer], values[layer] = block.decode(x, keys[layer], values[layer], slots, mask, bias)
        return self.ln_f(x), cached, tuple(keys), tuple(values)


class TransformerXLAgent(nnx.Module):
    """Input encoder, Transformer-XL memory, actor and critic heads.

    Memory between segments: ``{"hidden": [B, L, M, D] each layer's inputs of the last M steps,
    "episode_valid": bool [B, M] (the slot holds a step of the meta-episode still running)}``.
    """

    def __init__(self, config: AgentConfig, shapes: EnvShapes, *, rngs: nnx.Rngs):
        self.config = config
        self.encoder = InputEncoder(config, shapes, config.d_model, rngs=rngs)
        self.transformer = TransformerXL(config, rngs=rngs)
        self.heads = PolicyValueHeads(config.d_model, config.head_hidden, shapes.num_actions, rngs=rngs)

    def initial_memory(self, batch: int) -> dict[str, jax.Array]:
        config = self.config
        return {
            "hidden": jnp.zeros((batch, config.num_layers, config.memory_length, config.d_model), jnp.float32),
            "episode_valid": jnp.zeros((batch, config.memory_length), bool),
        }

    def _context(self, memory: dict[str, jax.Array], resets: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Cache [B, L, M+T, D] (memory, then room for the segment) and meta-episode ids [B, M+T]."""
        batch, length = resets.shape
        hidden = memory["hidden"]
        segment = jnp.zeros((batch, hidden.shape[1], length, hidden.shape[3]), hidden.dtype)
        episode = jnp.concatenate(
            [jnp.where(memory["episode_valid"], 0, -1), jnp.cumsum(resets.astype(jnp.int32), axis=1)], axis=1
        )
        return jnp.concatenate([hidden, segment], axis=2), episode

    def sequence(
        self, inputs: dict[str, jax.Array], memory: dict[str, jax.Array], *, deterministic: bool = True,
        dropout_key: jax.Array | None = None,
    ) -> tuple[jax.Array, jax.Array]:
        """The learner's pass: logits [B, T, A] and values [B, T] of a segment."""
        resets = inputs["reset"]
        cached, episode = self._context(memory, resets)
        memory_length = memory["hidden"].shape[2]
        positions = jnp.broadcast_to(memory_length + jnp.arange(resets.shape[1]), resets.shape)
        features, _ = self.transformer.attend(self.encoder(inputs), cached, episode, positions,
                                              deterministic=deterministic, dropout_key=dropout_key)
        return self.heads(features)

    def begin_segment(self, memory: dict[str, jax.Array], length: int) -> dict[str, jax.Array]:
        """The actor's cache for a segment of ``length`` steps."""
        batch = memory["episode_valid"].shape[0]
        cached, episode = self._context(memory, jnp.zeros((batch, length), bool))
        keys, values = self.transformer.keys_and_values(cached)
        return {"hidden": cached, "keys": keys, "values": values, "episode": episode}

    def act(self, inputs: dict[str, jax.Array], cache: dict[str, jax.Array], t: jax.Array) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
        """Step ``t`` of the segment: inputs [B, ...] -> (logits [B, A], value [B], cache)."""
        position = self.config.memory_length + t
        episode = cache["episode"]
        previous = jnp.where(t == 0, 0, jnp.take(episode, position - 1, axis=1))
        episode = jax.lax.dynamic_update_index_in_dim(episode, previous + inputs["reset"].astype(jnp.int32), position, axis=1)
        step_inputs = jax.tree.map(lambda leaf: leaf[:, None], inputs)
        features, hidden, keys, values = self.transformer.decode(
            self.encoder(step_inputs), cache["hidden"], cache["keys"], cache["values"], episode, position)
        logits, value = self.heads(features[:, 0])
        return logits, value, {"hidden": hidden, "keys": keys, "values": values, "episode": episode}

    def end_segment(self, cache: dict[str, jax.Array]) -> dict[str, jax.Array]:
        """The memory after the segment: the last M steps, valid if in the running meta-episode."""
        memory_length = self.config.memory_length
        episode = cache["episode"][:, -memory_length:]
        return {
            "hidden": cache["hidden"][:, :, -memory_length:],
            "episode_valid": episode == cache["episode"][:, -1:],
        }


class GRUAgent(nnx.Module):
    """Input encoder, one GRU cell, actor and critic heads (XLand-MiniGrid's RL² baseline)."""

    def __init__(self, config: AgentConfig, shapes: EnvShapes, *, rngs: nnx.Rngs):
        self.config = config
        self.encoder = InputEncoder(config, shapes, config.d_model, rngs=rngs)
        self.cell = nnx.GRUCell(config.d_model, config.gru_hidden, rngs=rngs)
        self.heads = PolicyValueHeads(config.gru_hidden, config.head_hidden, shapes.num_actions, rngs=rngs)

    def initial_memory(self, batch: int) -> dict[str, jax.Array]:
        return {"hidden": jnp.zeros((batch, self.config.gru_hidden), jnp.float32)}

    def _step(self, hidden: jax.Array, encoded: jax.Array, reset: jax.Array) -> tuple[jax.Array, jax.Array]:
        hidden, _ = self.cell(jnp.where(reset[:, None], 0.0, hidden), encoded)
        return hidden, hidden

    def sequence(
        self, inputs: dict[str, jax.Array], memory: dict[str, jax.Array], *, deterministic: bool = True,
        dropout_key: jax.Array | None = None,
    ) -> tuple[jax.Array, jax.Array]:
        encoded = self.encoder(inputs)  # [B, T, D]
        _, hiddens = jax.lax.scan(
            lambda hidden, xs: self._step(hidden, *xs), memory["hidden"], (jnp.swapaxes(encoded, 0, 1), inputs["reset"].T)
        )
        return self.heads(jnp.swapaxes(hiddens, 0, 1))

    def begin_segment(self, memory: dict[str, jax.Array], length: int) -> dict[str, jax.Array]:
        return memory

    def act(self, inputs: dict[str, jax.Array], cache: dict[str, jax.Array], t: jax.Array) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
        hidden, _ = self._step(cache["hidden"], self.encoder(inputs), inputs["reset"])
        logits, value = self.heads(hidden)
        return logits, value, {"hidden": hidden}

    def end_segment(self, cache: dict[str, jax.Array]) -> dict[str, jax.Array]:
        return cache


def make_agent(config: AgentConfig, shapes: EnvShapes, rngs: nnx.Rngs) -> TransformerXLAgent | GRUAgent:
    """The agent ``config.agent`` names; ValueError (one line) for another name."""
    if config.agent == "trxl":
        return TransformerXLAgent(config, shapes, rngs=rngs)
    if config.agent == "gru":
        return GRUAgent(config, shapes, rngs=rngs)
    raise ValueError(f"model.agent {config.agent!r} is not one of {AGENTS}")
