"""JAT: per-modality encoders into one sequence of two tokens per step, the core decoder, and its heads.

Gallouédec et al. 2024, "Jack of All Trades, Master of Some" (arXiv 2402.09844; released code
``jat/modeling_jat.py``). Step t of an episode becomes two tokens, ``[o_t, a_t]``:

* **observation token** o_t, by the encoder of the task's group (tokens.py):

  - continuous: the observation tiled cyclically to ``continuous_width`` (``cyclic_tile``; JAT's
    ``cyclic_expand_dim``, width 377 there), the reward r_{t-1} appended, one linear layer;
  - discrete: BabyAI's 148 symbols (direction, 7x7x3 grid) and the mission's ``text_length`` word
    ids, each embedded (``discrete_embed_dim``), flattened, one linear layer to d_model - 1, the
    reward as the last dimension (JAT: shared GPT-2 embedding, Linear(H, H/50), then to H - 1);
  - image: JAT's ``ImageEncoder``: three 3x3 stride-2 convolutions (32, 64, 128 channels), each with
    instance norm, LeakyReLU and a squeeze-excitation channel attention (reduction 8), flattened,
    one linear layer; images get no reward (as JAT's Atari). BabyAI-RGB's mission text is added
    through the discrete encoder (with empty symbols), since the goal is often not visible.

* **action token** a_t: discrete actions through an embedding table; continuous actions tiled to
  ``continuous_width`` through one linear layer (JAT shares the observation's layer; ours is its own).

Both tokens of step t get the learned position embedding of t (the step within the sequence's
episode, 0 where a sequence or a packed episode starts) and a token-type embedding. Attention is
causal and, for packed sequences, stays inside one episode (``segment``).

**Heads and loss** (JAT ``modeling_jat.py`` L537-604): the hidden state at o_t predicts a_t
(cross-entropy over the task's real actions, or MSE over the real action dimensions only, not
JAT's tiled 377-d vector); the hidden state at a_t predicts o_{t+1} (MSE over the real
dimensions of a continuous observation; MSE of a decoded image in [-1, 1]; none for discrete
observations, which JAT also skips as too expensive). The loss is
``kappa * observation_loss + (1 - kappa) * action_loss``, kappa = ``observation_loss_coef``
(0.005), each term a mean over real steps of the per-step loss times the row's task loss weight.

Each batch holds one group (data.py) and carries only that group's keys (tokens.batch_keys), so
the train step compiles once per group and no row pays for another modality's encoder or loss.
``decode`` is incremental decoding over a key/value cache for evaluation, equal to the full pass
on the same tokens.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from mgdt_jax.core.config_sections import read_section
from mgdt_jax.core.transformer import MASK_VALUE, Transformer, dense, masked_attention, sharded
from mgdt_jax.recipes.jat.tokens import GROUPS, TEXT_VOCABULARY_SIZE, batch_group

IMAGE_CHANNELS = (32, 64, 128)  # JAT's ImageEncoder
ATTENTION_REDUCTION = 8
LEAKY_SLOPE = 0.01  # torch.nn.LeakyReLU's default, as JAT uses it


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The ``model`` config section of the JAT recipe."""

    num_layers: int = 2
    d_model: int = 128
    num_heads: int = 4
    mlp_ratio: int = 4
    dropout_rate: float = 0.1
    dtype: str = "float32"  # matmul compute dtype
    param_dtype: str = "float32"
    remat: bool = False
    num_steps: int = 32  # steps per training sequence (2 tokens each) and the evaluation context
    continuous_width: int = 64  # tiling width of continuous vectors (JAT: 377)
    discrete_width: int = 148  # symbol slots of discrete observations (BabyAI: 148)
    max_discrete_value: int = 32  # symbols take values in [0, max_discrete_value)
    text_length: int = 64  # mission words per step (JAT: 64 GPT-2 tokens)
    discrete_embed_dim: int = 8  # per-slot embedding width of the discrete encoder
    num_discrete_actions: int = 18  # logits of the discrete action head (the largest action space)
    image_shape: tuple[int, int, int] = (84, 84, 3)  # height, width, channels of image observations
    groups: tuple[str, ...] = GROUPS  # the encoders built (tokens.py); each batch is of one of them
    observation_loss_coef: float = 0.005  # kappa; the action loss is weighted 1 - kappa
    normalize_observations: bool = False  # data and policy standardise continuous observations (tokens.py)

    @classmethod
    def from_config(cls, config: Any) -> ModelConfig:
        model = read_section(cls, config)
        model = dataclasses.replace(model, image_shape=tuple(model.image_shape), groups=tuple(model.groups))
        unknown = [group for group in model.groups if group not in GROUPS]
        if unknown or not model.groups:
            raise ValueError(f"model.groups {list(model.groups)}: each must be one of {list(GROUPS)}")
        if not 0.0 <= model.observation_loss_coef <= 1.0:
            raise ValueError(f"model.observation_loss_coef {model.observation_loss_coef} is not in [0, 1]")
        return model

    @property
    def has_images(self) -> bool:
        return "image" in self.groups


def cyclic_tile(values: jax.Array, size: jax.Array, width: int) -> jax.Array:
    """[..., W] vectors whose first ``size`` entries are real -> [..., width] repeating them cyclically.

    ``size`` broadcasts against ``values.shape[:-1]``; JAT's ``cyclic_expand_dim`` (modeling_jat.py
    L104-129): [1, 2] -> [1, 2, 1, 2, 1] at width 5. A size of 0 gives zeros.
    """
    size = jnp.broadcast_to(jnp.asarray(size, jnp.int32), values.shape[:-1])
    index = jnp.arange(width) % jnp.maximum(size, 1)[..., None]
    tiled = jnp.take_along_axis(values, jnp.minimum(index, values.shape[-1] - 1), axis=-1)
    return jnp.where(size[..., None] > 0, tiled, 0.0)


def real_dimensions(size: jax.Array, width: int) -> jax.Array:
    """bool [..., width]: True on the first ``size`` entries (the real dimensions of a padded vector)."""
    return jnp.arange(width) < jnp.asarray(size)[..., None]


def _leaky_relu(x: jax.Array) -> jax.Array:
    return jax.nn.leaky_relu(x, LEAKY_SLOPE)


class ChannelAttention(nnx.Module):
    """Squeeze-excitation: channels scaled by a sigmoid gate of their spatial means (JAT's AttentionLayer)."""

    def __init__(self, channels: int, *, rngs: nnx.Rngs):
        hidden = max(channels // ATTENTION_REDUCTION, 1)
        init = nnx.initializers.lecun_normal()
        self.squeeze = nnx.Linear(channels, hidden, kernel_init=sharded(init, (None, None)), rngs=rngs)
        self.excite = nnx.Linear(hidden, channels, kernel_init=sharded(init, (None, None)), rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        gate = jax.nn.sigmoid(self.excite(jax.nn.relu(self.squeeze(x.mean(axis=(-3, -2))))))
        return x * gate[..., None, None, :]


def _conv_init() -> nnx.Initializer:
    return sharded(nnx.initializers.lecun_normal(), (None, None, None, None))


def conv_as_matmul(padded: jax.Array, kernel: jax.Array, stride: int, out_height: int, out_width: int) -> jax.Array:
    """A convolution of an already padded ``padded`` [N, H, W, C_in] with ``kernel`` [kh, kw, C_in, C_out]
    at ``stride`` -> [N, out_height, out_width, C_out], as patches times the flattened kernel (im2col).

    Same numbers as ``lax.conv_general_dilated`` (VALID, no dilation). Why: XLA on CPU runs the
    convolutions of a gradient inside a ``lax.cond``/``lax.switch`` branch (as the image encoder
    and decoder once ran) or a ``scan`` through a generic loop, not its convolution library: one
    weight gradient of the image decoder took 16 s for 128 images, while a matmul runs at library
    speed wherever it is (docs/jat.md §9).
    """
    kh, kw, c_in, c_out = kernel.shape
    patches = [padded[:, dy : dy + stride * (out_height - 1) + 1 : stride, dx : dx + stride * (out_width - 1) + 1 : stride]
               for dy in range(kh) for dx in range(kw)]
    patches = jnp.concatenate(patches, axis=-1) if len(patches) > 1 else patches[0]  # [N, h, w, kh*kw*C_in]
    return jnp.einsum("nhwk,ko->nhwo", patches, kernel.reshape(kh * kw * c_in, c_out))


def conv_stride2(x: jax.Array, kernel: jax.Array, bias: jax.Array) -> jax.Array:
    """float32 [N, H, W, C_in] -> [N, ceil(H/2), ceil(W/2), C_out]: the 3x3, stride-2 convolution with
    one pixel of zero padding on each side of ``kernel`` [3, 3, C_in, C_out] and ``bias`` [C_out]
    (``nnx.Conv(..., strides=2, padding=1)``; JAT's ``Conv2d(3, stride 2, padding 1)``), as a matmul."""
    _, height, width, _ = x.shape
    out_height, out_width = (height + 1) // 2, (width + 1) // 2
    padded = jnp.pad(x, ((0, 0), (1, 2 * out_height - height), (1, 2 * out_width - width), (0, 0)))
    return conv_as_matmul(padded, kernel, 2, out_height, out_width) + bias


def conv_transpose_stride2(x: jax.Array, kernel: jax.Array, bias: jax.Array) -> jax.Array:
    """float32 [N, h, w, C_in] -> [N, 2h, 2w, C_out]: the 3x3, stride-2, "SAME" transposed convolution
    of ``kernel`` [3, 3, C_in, C_out] and ``bias`` [C_out] (``nnx.ConvTranspose``, i.e.
    ``lax.conv_transpose`` without kernel flip), computed per output parity (sub-pixel form; Shi et
    al. 2016, arXiv 1609.05158) with ``conv_as_matmul``.

    Output row 2i reads input rows i-1 and i through kernel rows 0 and 2, row 2i+1 reads row i
    through kernel row 1 (columns alike), so each parity is a small dense convolution and no tap
    multiplies one of the zeros a transposed convolution inserts. Same numbers as
    ``lax.conv_transpose``, whose gradient (input-dilated convolutions) XLA on CPU computes 2.5-3x
    slower even outside a ``lax.cond`` (docs/jat.md §9).
    """
    _, height, width, _ = x.shape
    padded = jnp.pad(x, ((0, 0), (1, 0), (1, 0), (0, 0)))  # input row/column -1 is zero
    even_even = conv_as_matmul(padded, kernel[0::2, 0::2], 1, height, width)
    even_odd = conv_as_matmul(padded[:, :, 1:], kernel[0::2, 1:2], 1, height, width)
    odd_even = conv_as_matmul(padded[:, 1:], kernel[1:2, 0::2], 1, height, width)
    odd_odd = conv_as_matmul(x, kernel[1:2, 1:2], 1, height, width)
    rows = jnp.stack([jnp.stack([even_even, even_odd], axis=3), jnp.stack([odd_even, odd_odd], axis=3)], axis=2)
    return rows.reshape(x.shape[0], 2 * height, 2 * width, kernel.shape[-1]) + bias


def image_codec_macs(image_shape: Sequence[int], d_model: int) -> tuple[int, int]:
    """Multiply-adds per frame of ``ImageEncoder`` and ``ImageDecoder`` at ``image_shape`` (H, W, C):
    their convolutions (3x3, stride 2; a transposed one's 9 taps per input pixel, each once, as
    ``conv_transpose_stride2`` computes them) and linear layers, as (first convolution, the rest).
    The first is apart because training needs no gradient of its input, the data."""
    height, width, channels = image_shape
    convolutions = []
    for out_channels in IMAGE_CHANNELS:
        height, width = (height + 1) // 2, (width + 1) // 2
        convolutions.append(height * width * 9 * channels * out_channels)
        channels = out_channels
    flat = height * width * channels
    for out_channels in (*IMAGE_CHANNELS[::-1][1:], image_shape[-1]):
        convolutions.append(height * width * 9 * channels * out_channels)  # at the input's resolution
        height, width, channels = 2 * height, 2 * width, out_channels
    return convolutions[0], sum(convolutions[1:]) + 2 * flat * d_model


class ImageEncoder(nnx.Module):
    """uint8 [..., H, W, C] images -> float32 [..., d_model] (JAT ``ImageEncoder``, modeling_jat.py L198-233)."""

    def __init__(self, image_shape: Sequence[int], d_model: int, *, rngs: nnx.Rngs):
        height, width, channels = image_shape
        self.convs, self.norms, self.attentions = nnx.List(), nnx.List(), nnx.List()
        for out_channels in IMAGE_CHANNELS:
            self.convs.append(nnx.Conv(channels, out_channels, (3, 3), strides=2, padding=1,
                                       kernel_init=_conv_init(), rngs=rngs))
            # Instance norm: one group per channel, statistics over the image's pixels.
            self.norms.append(nnx.GroupNorm(out_channels, num_groups=out_channels, epsilon=1e-5, rngs=rngs))
            self.attentions.append(ChannelAttention(out_channels, rngs=rngs))
            channels, height, width = out_channels, (height + 1) // 2, (width + 1) // 2
        self.flat_shape = (height, width, channels)
        self.linear = dense(height * width * channels, d_model, (None, "embed"),
                            kernel_init=nnx.initializers.lecun_normal(), dtype=jnp.float32,
                            param_dtype=jnp.float32, rngs=rngs)

    def __call__(self, images: jax.Array) -> jax.Array:
        leading = images.shape[:-3]
        x = images.reshape(-1, *images.shape[-3:]).astype(jnp.float32) / 127.5 - 1.0  # [-1, 1], as JAT
        for conv, norm, attention in zip(self.convs, self.norms, self.attentions):
            x = attention(_leaky_relu(norm(conv_stride2(x, conv.kernel[...], conv.bias[...]))))  # = conv(x)
        return self.linear(x.reshape(*leading, -1))


class ImageDecoder(nnx.Module):
    """float32 [..., d_model] -> images in [-1, 1], [..., H, W, C] (JAT ``ImageDecoder``, L236-269)."""

    def __init__(self, image_shape: Sequence[int], flat_shape: Sequence[int], d_model: int, *, rngs: nnx.Rngs):
        self.image_shape, self.flat_shape = tuple(image_shape), tuple(flat_shape)
        self.linear = dense(d_model, math.prod(flat_shape), ("embed", None),
                            kernel_init=nnx.initializers.lecun_normal(), dtype=jnp.float32,
                            param_dtype=jnp.float32, rngs=rngs)
        channels = (*IMAGE_CHANNELS[::-1][1:], image_shape[-1])
        self.deconvs = nnx.List()
        previous = IMAGE_CHANNELS[-1]
        for out_channels in channels:
            self.deconvs.append(nnx.ConvTranspose(previous, out_channels, (3, 3), strides=2, padding="SAME",
                                                  kernel_init=_conv_init(), rngs=rngs))
            previous = out_channels

    def __call__(self, hidden: jax.Array) -> jax.Array:
        leading = hidden.shape[:-1]
        x = self.linear(hidden).reshape(-1, *self.flat_shape)
        for index, deconv in enumerate(self.deconvs):
            x = conv_transpose_stride2(x, deconv.kernel[...], deconv.bias[...])  # = deconv(x), faster gradient
            x = jnp.tanh(x) if index == len(self.deconvs) - 1 else _leaky_relu(x)
        height, width, _ = self.image_shape
        return x[:, :height, :width].reshape(*leading, *self.image_shape)


class DiscreteEncoder(nnx.Module):
    """Symbols [..., S] and word ids [..., L] (int) with the reward [...] -> float32 [..., d_model].

    Every slot is embedded, the slots are flattened and one linear layer maps them to d_model - 1;
    the reward is the last dimension (JAT ``multi_discrete_encoder``, modeling_jat.py L382-388, L457).
    """

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        embed = config.discrete_embed_dim
        init = sharded(nnx.initializers.normal(1.0), ("vocab", None))
        self.symbols = nnx.Embed(config.max_discrete_value, embed, embedding_init=init, rngs=rngs)
        self.words = nnx.Embed(TEXT_VOCABULARY_SIZE, embed, embedding_init=init, rngs=rngs)
        # d_model - 1 outputs divide no mesh axis: replicated (the layer is small).
        self.linear = dense((config.discrete_width + config.text_length) * embed, config.d_model - 1,
                            (None, None), kernel_init=nnx.initializers.lecun_normal(), dtype=jnp.float32,
                            param_dtype=jnp.float32, rngs=rngs)

    def __call__(self, symbols: jax.Array, words: jax.Array, rewards: jax.Array) -> jax.Array:
        slots = jnp.concatenate([self.symbols(symbols), self.words(words)], axis=-2)
        encoded = self.linear(slots.reshape(*slots.shape[:-2], -1))
        return jnp.concatenate([encoded, rewards[..., None].astype(jnp.float32)], axis=-1)


class JatModel(nnx.Module):
    """The JAT model of ``config`` (module docstring); ``__call__`` is the training pass."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.config = config
        d_model, width = config.d_model, config.continuous_width
        linear = dict(kernel_init=nnx.initializers.lecun_normal(), dtype=jnp.float32, param_dtype=jnp.float32,
                      rngs=rngs)
        head_init = dict(linear, kernel_init=nnx.initializers.variance_scaling(1.0, "fan_in", "truncated_normal"))
        self.continuous_observation_encoder = dense(width + 1, d_model, (None, "embed"), **linear)
        self.continuous_action_encoder = dense(width, d_model, (None, "embed"), **linear)
        self.discrete_encoder = DiscreteEncoder(config, rngs=rngs)
        self.discrete_action_embed = nnx.Embed(
            config.num_discrete_actions, d_model,
            embedding_init=sharded(nnx.initializers.normal(1.0), ("vocab", "embed")), rngs=rngs)
        if config.has_images:
            self.image_encoder = ImageEncoder(config.image_shape, d_model, rngs=rngs)
            self.image_decoder = ImageDecoder(config.image_shape, self.image_encoder.flat_shape, d_model, rngs=rngs)
        embedding_init = nnx.initializers.normal(0.02)
        self.position_embed = nnx.Param(
            sharded(embedding_init, ("position", "embed"))(rngs.params(), (config.num_steps, d_model)))
        self.token_type_embed = nnx.Param(sharded(embedding_init, (None, "embed"))(rngs.params(), (2, d_model)))
        self.transformer = Transformer(
            num_layers=config.num_layers, d_model=d_model, num_heads=config.num_heads, mlp_ratio=config.mlp_ratio,
            dropout_rate=config.dropout_rate, dtype=jnp.dtype(config.dtype), param_dtype=jnp.dtype(config.param_dtype),
            remat=config.remat, rngs=rngs)
        self.discrete_action_head = dense(d_model, config.num_discrete_actions, ("embed", "vocab"), **head_init)
        self.continuous_action_head = dense(d_model, width, ("embed", None), **head_init)
        self.continuous_observation_head = dense(d_model, width, ("embed", None), **head_init)

    # -- tokens ------------------------------------------------------------------------------------

    def _observation_tokens(self, inputs: Mapping[str, jax.Array], group: str) -> jax.Array:
        config = self.config
        if group == "continuous":
            observations = cyclic_tile(inputs["continuous_observations"],
                                       inputs["continuous_observation_size"][:, None], config.continuous_width)
            return self.continuous_observation_encoder(
                jnp.concatenate([observations, inputs["rewards"][..., None]], axis=-1))
        if group == "discrete":
            return self.discrete_encoder(inputs["discrete_observations"], inputs["text_observations"],
                                         inputs["rewards"])
        images = self.image_encoder(inputs["image_observations"])
        no_symbols = jnp.zeros((*images.shape[:-1], config.discrete_width), jnp.int32)
        return images + self.discrete_encoder(no_symbols, inputs["text_observations"], jnp.zeros_like(inputs["rewards"]))

    def step_tokens(self, inputs: Mapping[str, jax.Array], group: str) -> tuple[jax.Array, jax.Array]:
        """Observation and action tokens [B, S, D] (position and type embeddings added).

        ``inputs`` holds at least the keys of a ``group`` batch (tokens.batch_keys) of S steps;
        ``group`` (one of ``config.groups``, static) picks the encoders.
        """
        if group not in self.config.groups:
            raise ValueError(f"a {group} batch, but model.groups is {list(self.config.groups)}")
        observations = self._observation_tokens(inputs, group)
        if group == "continuous":
            actions = self.continuous_action_encoder(
                cyclic_tile(inputs["continuous_actions"], inputs["continuous_action_size"][:, None],
                            self.config.continuous_width))
        else:
            actions = self.discrete_action_embed(jnp.clip(inputs["discrete_actions"], 0,
                                                          self.config.num_discrete_actions - 1))
        position = self.position_embed[...][jnp.clip(inputs["position"], 0, self.config.num_steps - 1)]
        token_type = self.token_type_embed[...]
        return observations + position + token_type[0], actions + position + token_type[1]

    # -- passes ------------------------------------------------------------------------------------

    def __call__(self, batch: Mapping[str, jax.Array], *, deterministic: bool,
                 dropout_key: jax.Array | None = None) -> jax.Array:
        """A batch of B sequences of S steps -> hidden states [B, 2S, D] at [o_0, a_0, o_1, a_1, ...].

        ``segment`` [B, S] numbers the episodes packed in a row (-1: padding); attention is causal
        within a segment.
        """
        observations, actions = self.step_tokens(batch, batch_group(batch))
        batch_size, num_steps, d_model = observations.shape
        tokens = jnp.stack([observations, actions], axis=2).reshape(batch_size, 2 * num_steps, d_model)
        segment = jnp.repeat(batch["segment"], 2, axis=1)
        causal = jnp.tril(jnp.ones((2 * num_steps, 2 * num_steps), bool))
        mask = causal & (segment[:, :, None] == segment[:, None, :]) & (segment[:, None, :] >= 0)
        mask = mask | jnp.eye(2 * num_steps, dtype=bool)  # padding attends to itself, not to nothing
        return self.transformer(tokens, mask, deterministic=deterministic, dropout_key=dropout_key)

    def init_cache(self, batch_size: int, capacity: int) -> list[tuple[jax.Array, jax.Array]]:
        """An empty key/value cache of ``capacity`` tokens: per layer ([N, H, C, K], [N, H, C, K])."""
        config = self.config
        shape = (batch_size, config.num_heads, capacity, config.d_model // config.num_heads)
        return [(jnp.zeros(shape, jnp.dtype(config.dtype)), jnp.zeros(shape, jnp.dtype(config.dtype)))
                for _ in range(config.num_layers)]

    def decode(self, tokens: jax.Array, cache: list[tuple[jax.Array, jax.Array]], lengths: jax.Array,
               starts: jax.Array) -> tuple[jax.Array, list[tuple[jax.Array, jax.Array]]]:
        """Incremental decoding: ``tokens`` [N, n, D] written at cache slots lengths..lengths+n-1.

        Each new token attends to the cached slots ``starts <= j`` up to itself (causal); the result
        is the final-LayerNormed hidden states [N, n, D] and the updated cache, the same numbers as
        the training pass over the whole sequence (deterministic). The caller keeps
        ``lengths + n <= capacity``.
        """
        num, new, d_model = tokens.shape
        capacity = cache[0][0].shape[2]
        query_index = lengths[:, None] + jnp.arange(new)
        key_index = jnp.arange(capacity)
        mask = (key_index >= starts[:, None, None]) & (key_index <= query_index[:, :, None])  # [N, n, C]
        x, updated = tokens, []
        write = jax.vmap(lambda slots, values, at: jax.lax.dynamic_update_slice(slots, values, (0, at, 0)))
        for block, (key_cache, value_cache) in zip(self.transformer.blocks, cache):
            attention = block.attn
            head_dim = d_model // attention.num_heads

            def heads(projected: jax.Array) -> jax.Array:
                return projected.reshape(num, new, attention.num_heads, head_dim).transpose(0, 2, 1, 3)

            normalized = block.ln_1(x)
            query = heads((attention.query(normalized) * head_dim**-0.5).astype(attention.dtype))
            key_cache = write(key_cache, heads(attention.key(normalized).astype(attention.dtype)), lengths)
            value_cache = write(value_cache, heads(attention.value(normalized).astype(attention.dtype)), lengths)
            attended = masked_attention(query, key_cache, value_cache, mask[:, None]).transpose(0, 2, 1, 3)
            x = x + attention.out(attended.reshape(num, new, d_model))
            x = x + block.mlp(block.ln_2(x))
            updated.append((key_cache, value_cache))
        return self.transformer.ln_f(x), updated

    # -- heads -------------------------------------------------------------------------------------

    def discrete_action_logits(self, hidden: jax.Array, num_actions: jax.Array) -> jax.Array:
        """[..., D] -> float32 [..., num_discrete_actions], actions >= ``num_actions`` [...] masked out."""
        logits = self.discrete_action_head(hidden)
        return jnp.where(jnp.arange(logits.shape[-1]) < num_actions[..., None], logits, MASK_VALUE)

    def continuous_actions(self, hidden: jax.Array) -> jax.Array:
        """[..., D] -> float32 [..., continuous_width]; the first action-size entries are the action."""
        return self.continuous_action_head(hidden)


def loss_and_metrics(model: JatModel, batch: Mapping[str, jax.Array], *, deterministic: bool,
                     dropout_key: jax.Array | None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """``kappa * observation_loss + (1 - kappa) * action_loss`` of a batch (module docstring).

    Metrics: ``action_loss``, ``observation_loss`` and ``real_step_fraction`` (steps that are not
    padding). Per-step losses are multiplied by the row's ``loss_weight`` and averaged over real
    steps (action loss) or real steps whose next step is in the same episode (observation loss).
    """
    config = model.config
    hidden = model(batch, deterministic=deterministic, dropout_key=dropout_key)
    at_observations, at_actions = hidden[:, 0::2], hidden[:, 1::2]
    group = batch_group(batch)
    segment = batch["segment"]
    real = segment >= 0
    has_next = jnp.concatenate([real[:, :-1] & (segment[:, 1:] == segment[:, :-1]),
                                jnp.zeros_like(real[:, :1])], axis=1)
    weight = batch["loss_weight"][:, None].astype(jnp.float32)

    # Actions: MSE over the task's real action dimensions, or cross-entropy over its actions.
    # Next observations, read at the action tokens: continuous MSE on real dimensions, or images.
    if group == "continuous":
        action_dims = real_dimensions(batch["continuous_action_size"][:, None], config.continuous_width)
        action_error = jnp.where(action_dims, model.continuous_actions(at_observations) - batch["continuous_actions"], 0.0)
        action_step_loss = (action_error**2).sum(-1) / jnp.maximum(action_dims.sum(-1), 1)
        observation_dims = real_dimensions(batch["continuous_observation_size"][:, None], config.continuous_width)
        next_observations = jnp.roll(batch["continuous_observations"], -1, axis=1)
        observation_error = jnp.where(
            observation_dims, model.continuous_observation_head(at_actions) - next_observations, 0.0)
        observation_step_loss = (observation_error**2).sum(-1) / jnp.maximum(observation_dims.sum(-1), 1)
    else:
        logits = model.discrete_action_logits(at_observations, batch["num_discrete_actions"][:, None])
        action_step_loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["discrete_actions"])
        if group == "image":
            target = jnp.roll(batch["image_observations"], -1, axis=1).astype(jnp.float32) / 127.5 - 1.0
            observation_step_loss = ((model.image_decoder(at_actions) - target) ** 2).mean(axis=(-3, -2, -1))
        else:
            observation_step_loss = jnp.zeros(real.shape, jnp.float32)  # JAT predicts no discrete observations
    action_loss = (weight * real * action_step_loss).sum() / jnp.maximum(real.sum(), 1)
    observation_loss = (weight * has_next * observation_step_loss).sum() / jnp.maximum(has_next.sum(), 1)

    kappa = config.observation_loss_coef
    loss = kappa * observation_loss + (1.0 - kappa) * action_loss
    metrics = {"action_loss": action_loss, "observation_loss": observation_loss,
               "real_step_fraction": real.mean(dtype=jnp.float32)}
    return loss, metrics
