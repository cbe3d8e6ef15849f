"""A generic pre-LayerNorm GPT decoder over already-embedded tokens with a caller-given attention mask.

Nothing here knows about Atari or about MGDT's token layout: callers embed their own tokens, build
their own boolean mask (causal, block-bidirectional, padded...) and read their own positions, so
other token layouts (multi-modal, in-context RL, memory tokens) reuse the same core.

Every parameter carries logical axis names (``out_sharding`` metadata) that mgdt_jax/core/sharding.py
maps onto the mesh. ``eager_sharding=False`` keeps model construction mesh-free: the train step
places parameters through jit ``out_shardings`` instead.

Block layout follows the released MGDT (Haiku GPT-2 style): ``x + Dropout(MHA(LN(x)))`` then
``x + Dropout(MLP(LN(x)))``, GELU with the tanh approximation, LayerNorm eps 1e-5, a final LayerNorm.
Query/key/value/output projections are separate ``(D, D)`` kernels with biases so a released
checkpoint maps onto them one-to-one.

Positions are the caller's business (MGDT adds learned absolute embeddings to its tokens), except
for ALiBi (``alibi=True``): a per-head linear penalty on the query-key distance added to the
attention logits, which depends only on distances and so lets a KV cache slide over an unbounded
stream (``Transformer.decode``; docs/algorithm_distillation.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

LAYER_NORM_EPSILON = 1e-5
# Added to masked attention logits. Finite on purpose: a fully masked row (a padded query) then
# softmaxes to a uniform distribution instead of NaN.
MASK_VALUE = -1e30


def _mix32(bits: jax.Array) -> jax.Array:
    """MurmurHash3's 32-bit finaliser: every input bit flips each output bit with probability ~1/2."""
    bits ^= bits >> 16
    bits *= jnp.uint32(0x85EBCA6B)
    bits ^= bits >> 13
    bits *= jnp.uint32(0xC2B2AE35)
    return bits ^ (bits >> 16)


def dropout(x: jax.Array, rate: float, key: jax.Array) -> jax.Array:
    """Inverted dropout whose mask is a counter-based hash of (element index, key).

    Drawing the mask with jax.random (threefry) cost ~9% of a CPU training step; hashing the
    element index with two key-derived seeds costs ~0.1% and is ample randomness for dropout. The
    mask depends on global element indices only, so it is the same on every mesh.
    """
    if rate == 0.0:
        return x
    seed_in, seed_out = jax.random.bits(key, (2,), jnp.uint32)
    index = jnp.zeros(x.shape, jnp.uint32)
    stride = 1
    for axis in reversed(range(x.ndim)):  # row-major flat index, wrapping past 2**32
        index += jax.lax.broadcasted_iota(jnp.uint32, x.shape, axis) * jnp.uint32(stride % 2**32)
        stride *= x.shape[axis]
    bits = _mix32(_mix32(index * jnp.uint32(0x9E3779B1) ^ seed_in) ^ seed_out)
    keep = bits >= jnp.uint32(min(int(rate * 2**32), 2**32 - 1))
    return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)


_GELU_C = (2.0 / 3.141592653589793) ** 0.5


@jax.custom_vjp
def gelu(x: jax.Array) -> jax.Array:
    """GELU, tanh approximation (GPT-2's ``gelu_new``), whose backward pass recomputes tanh.

    Autodiff of ``jax.nn.gelu`` keeps tanh's output as a residual: XLA then writes and re-reads an
    extra [tokens, 4D] array and splits the forward into two passes over the pre-activation. Saving
    only the input reads it once per pass, which is what these memory-bound passes cost on CPU.
    """
    return 0.5 * x * (1.0 + _gelu_tanh(x))


def _gelu_tanh(x: jax.Array) -> jax.Array:
    return jnp.tanh(_GELU_C * (x + 0.044715 * x**3))


def _gelu_forward(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    return gelu(x), x


def _gelu_backward(x: jax.Array, grad: jax.Array) -> tuple[jax.Array]:
    x = jax.lax.optimization_barrier(x)  # else XLA merges this tanh with the forward's and stores it
    tanh = _gelu_tanh(x)
    slope = 0.5 * (1.0 + tanh) + 0.5 * x * (1.0 - tanh**2) * _GELU_C * (1.0 + 3 * 0.044715 * x**2)
    return (grad * slope,)


gelu.defvjp(_gelu_forward, _gelu_backward)


@jax.custom_vjp
def masked_attention(
    query: jax.Array, key: jax.Array, value: jax.Array, mask: jax.Array, bias: jax.Array | None = None
) -> jax.Array:
    """softmax(q k^T + bias, masked) v for [B, H, Q, K] queries and [B, H, T, K] keys/values (q
    pre-scaled); float32 [B, H, Q, K] out. ``bias``: float32, broadcastable to [B, H, Q, T], a
    constant (it gets a zero gradient), e.g. ALiBi's distance penalty.

    Logits and softmax are float32 whatever the inputs' dtype (a bf16 softmax loses the mask).
    The hand-written backward pass keeps only the attention weights and uses the softmax identity
    dlogits = p * (dp - sum(dp * p)) in one pass; autodiff of softmax materialises several more
    [B, H, T, T] arrays, and those passes are memory-bound on CPU.
    """
    return _attention_forward(query, key, value, mask, bias)[0]


def _attention_forward(query, key, value, mask, bias=None):
    logits = jnp.einsum("bhqk,bhtk->bhqt", query, key, preferred_element_type=jnp.float32)
    if bias is not None:
        logits = logits + bias
    weights = jax.nn.softmax(jnp.where(mask, logits, MASK_VALUE), axis=-1).astype(query.dtype)
    attended = jnp.einsum("bhqt,bhtk->bhqk", weights, value, preferred_element_type=jnp.float32)
    return attended, (query, key, value, mask, weights, bias is not None)


def _attention_backward(residuals, grad):
    # Shapes: weights and the logits' gradients [B, H, T(query), T(key)]; the rest [B, H, T, K].
    query, key, value, mask, weights, has_bias = residuals
    grad = grad.astype(value.dtype)
    grad_weights = jnp.einsum("bhqk,bhtk->bhqt", grad, value, preferred_element_type=jnp.float32)
    probabilities = weights.astype(jnp.float32)
    row_dot = jnp.sum(grad_weights * probabilities, axis=-1, keepdims=True)
    grad_logits = jnp.where(mask, probabilities * (grad_weights - row_dot), 0.0).astype(query.dtype)
    grad_query = jnp.einsum("bhqt,bhtk->bhqk", grad_logits, key, preferred_element_type=jnp.float32)
    grad_key = jnp.einsum("bhqt,bhqk->bhtk", grad_logits, query, preferred_element_type=jnp.float32)
    grad_value = jnp.einsum("bhqt,bhqk->bhtk", weights, grad, preferred_element_type=jnp.float32)
    # The bias is a constant of positions: its zero gradient is dead code that XLA drops.
    grad_bias = jnp.zeros(grad_logits.shape, jnp.float32) if has_bias else None
    return (grad_query.astype(query.dtype), grad_key.astype(key.dtype), grad_value.astype(value.dtype), None, grad_bias)


masked_attention.defvjp(_attention_forward, _attention_backward)


def alibi_slopes(num_heads: int) -> jax.Array:
    """ALiBi's per-head slopes m_h (Press, Smith & Lewis 2022, "Train Short, Test Long", §3).

    For a power of two n: the geometric sequence 2^(-8/n), 2^(-16/n), ..., 2^(-8). Otherwise the
    paper's rule: the slopes of the largest power of two below n, then every other slope of the
    next power of two. float32 [num_heads].
    """

    def powers_of_two(n: int) -> list[float]:
        start = 2.0 ** (-8.0 / n)
        return [start ** (index + 1) for index in range(n)]

    below = 2 ** (num_heads.bit_length() - 1)
    slopes = powers_of_two(below)
    if below < num_heads:
        slopes += powers_of_two(2 * below)[0::2][: num_heads - below]
    return jnp.asarray(slopes, jnp.float32)


def alibi_bias(slopes: jax.Array, query_positions: jax.Array, key_positions: jax.Array) -> jax.Array:
    """-m_h * (query position - key position): float32 [B, H, Q, T] from [B, Q] and [B, T] positions."""
    distance = (query_positions[:, :, None] - key_positions[:, None, :]).astype(jnp.float32)
    return -slopes[None, :, None, None] * distance[:, None]


def sharded(initializer: nnx.Initializer, logical_axes: Sequence[str | None]) -> nnx.Initializer:
    """Tags an initializer's parameter with logical axis names, without needing a mesh to build it."""
    return nnx.with_partitioning(initializer, tuple(logical_axes), eager_sharding=False)


def dense(
    in_features: int,
    out_features: int,
    logical_axes: tuple[str | None, str | None],
    *,
    kernel_init: nnx.Initializer,
    dtype: jnp.dtype,
    param_dtype: jnp.dtype,
    rngs: nnx.Rngs,
) -> nnx.Linear:
    """A Linear layer with a (in, out) kernel and a bias, both named for sharding.

    Inputs and kernel are cast to ``dtype`` for the matmul, which accumulates and returns float32:
    bf16 matmuls at full speed (2x float32 on AVX512-BF16 CPUs, tensor cores on GPUs) while the
    residual stream, LayerNorms, softmax and GELU stay float32.
    """
    return nnx.Linear(
        in_features,
        out_features,
        kernel_init=sharded(kernel_init, logical_axes),
        bias_init=sharded(nnx.initializers.zeros_init(), logical_axes[1:]),
        dtype=dtype,
        param_dtype=param_dtype,
        preferred_element_type=jnp.float32,
        rngs=rngs,
    )


def layer_norm(d_model: int, *, param_dtype: jnp.dtype, rngs: nnx.Rngs) -> nnx.LayerNorm:
    """LayerNorm in float32 (the residual stream's dtype) whatever the matmul dtype.

    The variance is two-pass, mean((x - mean)^2), as Haiku's LayerNorm (``jnp.var``) in the released
    model; Flax's default E[x^2] - E[x]^2 cancels catastrophically once |mean| >> std.
    """
    return nnx.LayerNorm(
        d_model,
        epsilon=LAYER_NORM_EPSILON,
        use_fast_variance=False,
        scale_init=sharded(nnx.initializers.ones_init(), ("embed",)),
        bias_init=sharded(nnx.initializers.zeros_init(), ("embed",)),
        dtype=jnp.float32,
        param_dtype=param_dtype,
        rngs=rngs,
    )


class MultiHeadAttention(nnx.Module):
    """Multi-head self-attention with a boolean mask (True = may attend)."""

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        *,
        kernel_init: nnx.Initializer,
        dtype: jnp.dtype,
        param_dtype: jnp.dtype,
        rngs: nnx.Rngs,
    ):
        if d_model % num_heads:
            raise ValueError(f"d_model {d_model} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.dtype = dtype
        projection = dict(kernel_init=kernel_init, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        # The output axis of q/k/v is head-major (heads x head_dim), as in Haiku's MultiHeadAttention.
        self.query = dense(d_model, d_model, ("embed", "heads"), **projection)
        self.key = dense(d_model, d_model, ("embed", "heads"), **projection)
        self.value = dense(d_model, d_model, ("embed", "heads"), **projection)
        self.out = dense(d_model, d_model, ("heads", "embed"), **projection)

    def __call__(
        self, x: jax.Array, mask: jax.Array, queries: jax.Array | None = None, bias: jax.Array | None = None
    ) -> jax.Array:
        """x: [B, T, D]; mask: bool, broadcastable to [B, H, Q, T] (query, key).

        ``queries`` [B, Q, D]: attend from these instead of from every token of ``x`` (Q = T).
        ``bias``: float32 added to the logits, broadcastable to [B, H, Q, T] (ALiBi).
        """
        # Queries first: the order of the three projections sets the order in which their input
        # gradients are summed, and this one keeps the MGDT's gradients bit-identical.
        query = self.project_queries(x if queries is None else queries)
        key, value = self.keys_and_values(x)
        return self.attend(query, key, value, mask, bias)

    def _heads(self, projected: jax.Array) -> jax.Array:
        # [B, T, H*K] -> [B, H, T, K]: heads as a batch axis makes both attention matmuls plain
        # batched GEMMs (measured ~2x faster on CPU than contracting with heads in the middle).
        batch, _, d_model = projected.shape
        return projected.reshape(batch, -1, self.num_heads, d_model // self.num_heads).transpose(0, 2, 1, 3)

    def project_queries(self, queries: jax.Array) -> jax.Array:
        """[B, Q, D] -> scaled queries [B, H, Q, K] in the compute dtype."""
        head_dim = queries.shape[-1] // self.num_heads
        return self._heads((self.query(queries) * head_dim**-0.5).astype(self.dtype))

    def keys_and_values(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """[B, T, D] -> keys and values [B, H, T, K] in the compute dtype (what a KV cache holds)."""
        return self._heads(self.key(x).astype(self.dtype)), self._heads(self.value(x).astype(self.dtype))

    def attend(
        self, query: jax.Array, key: jax.Array, value: jax.Array, mask: jax.Array, bias: jax.Array | None
    ) -> jax.Array:
        """Projected queries [B, H, Q, K] over keys/values [B, H, T, K] -> [B, Q, D]."""
        batch, _, num_queries, head_dim = query.shape
        attended = masked_attention(query, key, value, mask, bias).transpose(0, 2, 1, 3)  # [B, Q, H, K]
        return self.out(attended.reshape(batch, num_queries, self.num_heads * head_dim))


class MLP(nnx.Module):
    def __init__(
        self,
        d_model: int,
        hidden: int,
        *,
        kernel_init: nnx.Initializer,
        dtype: jnp.dtype,
        param_dtype: jnp.dtype,
        rngs: nnx.Rngs,
    ):
        projection = dict(kernel_init=kernel_init, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.linear_in = dense(d_model, hidden, ("embed", "mlp"), **projection)
        self.linear_out = dense(hidden, d_model, ("mlp", "embed"), **projection)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.linear_out(gelu(self.linear_in(x)))


class GRUGate(nnx.Module):
    """GTrXL's GRU-type gate in place of a residual sum (Parisotto et al. 2020, §3, "Gated-Recurrent-Unit-type
    gating"): for the stream x and a sublayer's output y, both [..., D],

        r = σ(W_r y + U_r x),  z = σ(W_z y + U_z x − b_g),  h = tanh(W_g y + U_g (r ⊙ x)),
        g(x, y) = (1 − z) ⊙ x + z ⊙ h.

    ``GATE_BIAS`` b_g = 2 (the paper's) starts z near σ(−2) = 0.12, so a gated block begins close to
    the identity map, which the paper credits for learning reactive behaviour before memory.
    """

    GATE_BIAS = 2.0

    def __init__(self, d_model: int, *, kernel_init: nnx.Initializer, dtype: jnp.dtype, param_dtype: jnp.dtype,
                 rngs: nnx.Rngs):
        kinds = dict(kernel_init=kernel_init, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.from_update = dense(d_model, 3 * d_model, ("embed", None), **kinds)  # W_r, W_z, W_g
        self.from_stream = dense(d_model, 2 * d_model, ("embed", None), **kinds)  # U_r, U_z
        self.candidate = dense(d_model, d_model, ("embed", None), **kinds)  # U_g

    def __call__(self, x: jax.Array, y: jax.Array) -> jax.Array:
        w_r, w_z, w_g = jnp.split(self.from_update(y), 3, axis=-1)
        u_r, u_z = jnp.split(self.from_stream(x), 2, axis=-1)
        reset = jax.nn.sigmoid(w_r + u_r)
        update = jax.nn.sigmoid(w_z + u_z - self.GATE_BIAS)
        candidate = jnp.tanh(w_g + self.candidate(reset * x))
        return (1.0 - update) * x + update * candidate


class Block(nnx.Module):
    """One pre-LayerNorm GPT block; ``gated``: GTrXL's blocks, each residual sum x + y replaced by
    ``GRUGate``(x, ReLU(y)) (Parisotto et al. 2020, §3)."""

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        mlp_hidden: int,
        dropout_rate: float,
        *,
        kernel_init: nnx.Initializer,
        dtype: jnp.dtype,
        param_dtype: jnp.dtype,
        rngs: nnx.Rngs,
        gated: bool = False,
    ):
        kinds = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.ln_1 = layer_norm(d_model, param_dtype=param_dtype, rngs=rngs)
        self.attn = MultiHeadAttention(d_model, num_heads, kernel_init=kernel_init, **kinds)
        self.ln_2 = layer_norm(d_model, param_dtype=param_dtype, rngs=rngs)
        self.mlp = MLP(d_model, mlp_hidden, kernel_init=kernel_init, **kinds)
        self.dropout_rate = dropout_rate
        self.gates = nnx.List([GRUGate(d_model, kernel_init=kernel_init, **kinds) for _ in range(2)]) if gated else None

    def _residual(self, x: jax.Array, update: jax.Array, sublayer: int) -> jax.Array:
        if self.gates is None:
            return x + update
        return self.gates[sublayer](x, jax.nn.relu(update))

    def __call__(
        self,
        x: jax.Array,
        mask: jax.Array,
        *,
        deterministic: bool,
        dropout_key: jax.Array | None,
        positions: jax.Array | None = None,
        bias: jax.Array | None = None,
    ) -> jax.Array:
        """x: [B, T, D] -> [B, T, D], or [B, P, D] at ``positions`` [B, P] only (mask [B, 1, T, T];
        ``bias`` None or float32 [B, H, T, T] added to the attention logits)."""

        def regularised(update: jax.Array, stream: int) -> jax.Array:
            if deterministic:
                return update
            return dropout(update, self.dropout_rate, jax.random.fold_in(dropout_key, stream))

        normalized = self.ln_1(x)
        if positions is None:
            x = self._residual(x, regularised(self.attn(normalized, mask, bias=bias), 0), 0)
        else:
            # Every token is still a key and a value; only the chosen ones query and go on.
            mask = jnp.take_along_axis(mask, positions[:, None, :, None], axis=2)  # [B, 1, P, T]
            if bias is not None:
                bias = jnp.take_along_axis(bias, positions[:, None, :, None], axis=2)  # [B, H, P, T]
            queries = jnp.take_along_axis(normalized, positions[:, :, None], axis=1)  # [B, P, D]
            x = jnp.take_along_axis(x, positions[:, :, None], axis=1)
            x = self._residual(x, regularised(self.attn(normalized, mask, queries, bias), 0), 0)
        return self._residual(x, regularised(self.mlp(self.ln_2(x)), 1), 1)

    def decode(
        self, x: jax.Array, keys: jax.Array, values: jax.Array, slots: jax.Array, mask: jax.Array, bias: jax.Array | None
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """One inference step over a KV cache: the new tokens x [B, N, D] write their keys and values
        into ``slots`` [B, N] of this layer's cache (keys, values [B, H, C, K]) and attend over the
        whole cache under ``mask`` [B, 1, N, C]. Returns (x [B, N, D], keys, values)."""
        normalized = self.ln_1(x)
        query = self.attn.project_queries(normalized)
        new_keys, new_values = self.attn.keys_and_values(normalized)  # [B, H, N, K]

        def write(cache_row: jax.Array, slots_row: jax.Array, new_row: jax.Array) -> jax.Array:
            return cache_row.at[:, slots_row].set(new_row)

        keys = jax.vmap(write)(keys, slots, new_keys)
        values = jax.vmap(write)(values, slots, new_values)
        x = self._residual(x, self.attn.attend(query, keys, values, mask, bias), 0)
        return self._residual(x, self.mlp(self.ln_2(x)), 1), keys, values


class KVCache(NamedTuple):
    """Keys and values of the last ``capacity`` tokens of every layer, a ring buffer indexed by
    token position modulo capacity (so it slides over an unbounded stream).

    ``keys``, ``values``: one [B, H, C, K] array per layer, in the compute dtype (separate arrays:
    a step writes each layer's own, with no restacking of all layers); ``positions``: int32 [B, C],
    the stream position of each slot's token, -1 while empty.
    """

    keys: tuple[jax.Array, ...]
    values: tuple[jax.Array, ...]
    positions: jax.Array


def check_decoder_arguments(*, num_layers: int, d_model: int, num_heads: int, mlp_ratio: int, dropout_rate: float,
                            prefix: str = "") -> None:
    """ValueError (one line) for decoder sizes no model can have: a count under 1, ``d_model`` not a
    multiple of ``num_heads``, a dropout rate outside [0, 1) (1.5 trained on garbage: the kept
    activations were scaled by a negative factor). ``prefix`` names where they come from ("model.")."""
    for name, value in (("num_layers", num_layers), ("d_model", d_model), ("num_heads", num_heads),
                        ("mlp_ratio", mlp_ratio)):
        if value < 1:
            raise ValueError(f"{prefix}{name} must be at least 1, got {value}")
    if d_model % num_heads:
        raise ValueError(f"{prefix}d_model {d_model} is not a multiple of {prefix}num_heads {num_heads}")
    if not 0 <= dropout_rate < 1:
        raise ValueError(f"{prefix}dropout_rate must be in [0, 1), got {dropout_rate}")


class Transformer(nnx.Module):
    """A stack of pre-LN GPT blocks followed by a final LayerNorm.

    ``alibi``: add ALiBi's distance penalty to every layer's attention logits, distances counted in
    units of ``alibi_unit`` tokens.

    Attention/MLP kernels use MGDT's init, variance scaling 2 / num_layers (fan-in, truncated normal),
    which keeps the residual stream's variance flat with depth.
    """

    def __init__(
        self,
        *,
        num_layers: int,
        d_model: int,
        num_heads: int,
        mlp_ratio: int,
        dropout_rate: float,
        dtype: jnp.dtype = jnp.float32,
        param_dtype: jnp.dtype = jnp.float32,
        remat: bool = False,
        alibi: bool = False,
        alibi_unit: int = 1,
        rngs: nnx.Rngs,
    ):
        check_decoder_arguments(num_layers=num_layers, d_model=d_model, num_heads=num_heads, mlp_ratio=mlp_ratio,
                                dropout_rate=dropout_rate)
        kernel_init = nnx.initializers.variance_scaling(2.0 / num_layers, "fan_in", "truncated_normal")
        self.num_heads = num_heads
        self.dtype = dtype
        self.alibi = alibi
        self.alibi_unit = alibi_unit
        self.blocks = nnx.List(
            [
                Block(
                    d_model,
                    num_heads,
                    mlp_ratio * d_model,
                    dropout_rate,
                    kernel_init=kernel_init,
                    dtype=dtype,
                    param_dtype=param_dtype,
                    rngs=rngs,
                )
                for _ in range(num_layers)
            ]
        )
        self.ln_f = layer_norm(d_model, param_dtype=param_dtype, rngs=rngs)
        self.remat = remat

    def __call__(
        self,
        x: jax.Array,
        mask: jax.Array,
        *,
        deterministic: bool,
        dropout_key: jax.Array | None = None,
        output_positions: jax.Array | None = None,
        positions: jax.Array | None = None,
    ) -> jax.Array:
        """x: [B, T, D] embedded tokens; mask: bool [B, T, T] (query, key), True = may attend.

        ``dropout_key`` is required unless ``deterministic``. With ``output_positions`` [B, P] the
        result is [B, P, D] at those positions only, and the last block computes nothing else: at
        inference, where a few positions are read, that saves most of a layer. ``positions``
        int [B, T]: each token's position for ALiBi (default 0..T-1); unused without ALiBi.
        """
        if not deterministic and dropout_key is None:
            raise ValueError("Transformer: a dropout_key is needed when deterministic=False")
        mask = mask[:, None]  # [B, 1, T, T]: the same mask for every head
        bias = None
        if self.alibi:
            if positions is None:
                positions = jnp.broadcast_to(jnp.arange(x.shape[1]), x.shape[:2])
            bias = alibi_bias(self._alibi_slopes(), positions, positions)

        def apply_block(block: Block, x: jax.Array, key: jax.Array | None, positions: jax.Array | None) -> jax.Array:
            return block(x, mask, deterministic=deterministic, dropout_key=key, positions=positions, bias=bias)

        if self.remat:
            # Recompute each block's activations in the backward pass: memory O(layers) instead of
            # O(layers x activations), for ~1/3 more compute.
            apply_block = nnx.remat(apply_block)
        last = len(self.blocks) - 1
        for index, block in enumerate(self.blocks):
            key = jax.random.fold_in(dropout_key, index) if dropout_key is not None else None
            x = apply_block(block, x, key, output_positions if index == last else None)
        return self.ln_f(x)

    def _alibi_slopes(self) -> jax.Array:
        # Distances count in units of alibi_unit tokens (e.g. one per timestep of a 3-token step).
        return alibi_slopes(self.num_heads) / self.alibi_unit

    def init_cache(self, batch_size: int, capacity: int) -> KVCache:
        """An empty KVCache for ``batch_size`` streams of ``capacity`` tokens each."""
        first = self.blocks[0].attn
        head_dim = first.query.kernel.shape[0] // self.num_heads
        shape = (batch_size, self.num_heads, capacity, head_dim)
        return KVCache(
            keys=tuple(jnp.zeros(shape, self.dtype) for _ in self.blocks),
            values=tuple(jnp.zeros(shape, self.dtype) for _ in self.blocks),
            positions=jnp.full((batch_size, capacity), -1, jnp.int32),
        )

    def decode(
        self, x: jax.Array, positions: jax.Array, cache: KVCache, *, window: int | None = None
    ) -> tuple[jax.Array, KVCache]:
        """Incremental inference: the next tokens x [B, N, D] at stream ``positions`` int [B, N]
        (consecutive, continuing the cache's) -> (outputs [B, N, D], updated cache).

        Each token attends to itself and the tokens at most ``window - 1`` positions before it
        (default and maximum: capacity - N + 1, all that the cache can hold beside the N new ones)
        that the cache holds, so the result equals ``self(all tokens, mask)`` with the banded causal
        mask ``key <= query < key + window``, the window sliding once the stream outgrows it; before
        that, the plain causal pass. Negative positions are written but never attended (a caller can
        pad a fixed-size step with them). No dropout: inference only.
        """
        batch_size, num_new, _ = x.shape
        capacity = cache.positions.shape[1]
        largest = capacity - num_new + 1
        window = largest if window is None else window
        if not 1 <= window <= largest:
            raise ValueError(
                f"decode window {window} out of range: a cache of {capacity} tokens serves windows of 1..{largest} "
                f"when {num_new} token(s) arrive per call"
            )
        slots = positions % capacity
        key_positions = jax.vmap(lambda row, slot, new: row.at[slot].set(new))(cache.positions, slots, positions)
        query_positions = positions[:, :, None]
        visible = (
            (key_positions[:, None, :] >= 0)
            & (key_positions[:, None, :] <= query_positions)
            & (key_positions[:, None, :] > query_positions - window)
        )  # [B, N, C]
        mask = visible[:, None]
        bias = alibi_bias(self._alibi_slopes(), positions, key_positions) if self.alibi else None
        keys, values = [], []
        for index, block in enumerate(self.blocks):
            x, layer_keys, layer_values = block.decode(x, cache.keys[index], cache.values[index], slots, mask, bias)
            keys.append(layer_keys)
            values.append(layer_values)
        return self.ln_f(x), KVCache(tuple(keys), tuple(values), key_positions)
