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
"""

from __future__ import annotations

from collections.abc import Sequence

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
def masked_attention(query: jax.Array, key: jax.Array, value: jax.Array, mask: jax.Array) -> jax.Array:
    """softmax(q k^T, masked) v for [B, H, T, K] inputs (q pre-scaled); float32 [B, H, T, K] out.

    Logits and softmax are float32 whatever the inputs' dtype (a bf16 softmax loses the mask).
    The hand-written backward pass keeps only the attention weights and uses the softmax identity
    dlogits = p * (dp - sum(dp * p)) in one pass; autodiff of softmax materialises several more
    [B, H, T, T] arrays, and those passes are memory-bound on CPU.
    """
    return _attention_forward(query, key, value, mask)[0]


def _attention_forward(query, key, value, mask):
    logits = jnp.einsum("bhqk,bhtk->bhqt", query, key, preferred_element_type=jnp.float32)
    weights = jax.nn.softmax(jnp.where(mask, logits, MASK_VALUE), axis=-1).astype(query.dtype)
    attended = jnp.einsum("bhqt,bhtk->bhqk", weights, value, preferred_element_type=jnp.float32)
    return attended, (query, key, value, mask, weights)


def _attention_backward(residuals, grad):
    # Shapes: weights and the logits' gradients [B, H, T(query), T(key)]; the rest [B, H, T, K].
    query, key, value, mask, weights = residuals
    grad = grad.astype(value.dtype)
    grad_weights = jnp.einsum("bhqk,bhtk->bhqt", grad, value, preferred_element_type=jnp.float32)
    probabilities = weights.astype(jnp.float32)
    row_dot = jnp.sum(grad_weights * probabilities, axis=-1, keepdims=True)
    grad_logits = jnp.where(mask, probabilities * (grad_weights - row_dot), 0.0).astype(query.dtype)
    grad_query = jnp.einsum("bhqt,bhtk->bhqk", grad_logits, key, preferred_element_type=jnp.float32)
    grad_key = jnp.einsum("bhqt,bhqk->bhtk", grad_logits, query, preferred_element_type=jnp.float32)
    grad_value = jnp.einsum("bhqt,bhqk->bhtk", weights, grad, preferred_element_type=jnp.float32)
    return (grad_query.astype(query.dtype), grad_key.astype(key.dtype), grad_value.astype(value.dtype), None)


masked_attention.defvjp(_attention_forward, _attention_backward)


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
    """LayerNorm in float32 (the residual stream's dtype) whatever the matmul dtype."""
    return nnx.LayerNorm(
        d_model,
        epsilon=LAYER_NORM_EPSILON,
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
        self, x: jax.Array, mask: jax.Array, queries: jax.Array | None = None, key_bias: jax.Array | None = None
    ) -> jax.Array:
        """x: [B, T, D]; mask: bool, broadcastable to [B, H, Q, T] (query, key).

        ``queries`` [B, Q, D]: attend from these instead of from every token of ``x`` (Q = T).
        ``key_bias`` float32 [B, H, T]: added to every query's logit of each key. Relative-position
        biases that are linear in the distance (ALiBi, Press et al. 2022: ``-slope_h * (i - j)``)
        reduce to it, since softmax ignores a shift shared by a query's row. It rides along as one
        extra query/key dimension (query 1, key the bias), so the attention kernel is unchanged.
        """
        batch, _, d_model = x.shape
        head_dim = d_model // self.num_heads
        queries = x if queries is None else queries

        def heads(projected: jax.Array) -> jax.Array:
            # [B, T, H*K] -> [B, H, T, K]: heads as a batch axis makes both attention matmuls plain
            # batched GEMMs (measured ~2x faster on CPU than contracting with heads in the middle).
            return projected.reshape(batch, -1, self.num_heads, head_dim).transpose(0, 2, 1, 3)

        query = heads((self.query(queries) * head_dim**-0.5).astype(self.dtype))
        key, value = heads(self.key(x).astype(self.dtype)), heads(self.value(x).astype(self.dtype))
        if key_bias is not None:
            query = jnp.concatenate([query, jnp.ones((*query.shape[:3], 1), query.dtype)], axis=-1)
            key = jnp.concatenate([key, key_bias[..., None].astype(key.dtype)], axis=-1)
        attended = masked_attention(query, key, value, mask).transpose(0, 2, 1, 3)  # [B, Q, H, K]
        return self.out(attended.reshape(batch, queries.shape[1], d_model))


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


class Block(nnx.Module):
    """One pre-LayerNorm GPT block."""

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
    ):
        kinds = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.ln_1 = layer_norm(d_model, param_dtype=param_dtype, rngs=rngs)
        self.attn = MultiHeadAttention(d_model, num_heads, kernel_init=kernel_init, **kinds)
        self.ln_2 = layer_norm(d_model, param_dtype=param_dtype, rngs=rngs)
        self.mlp = MLP(d_model, mlp_hidden, kernel_init=kernel_init, **kinds)
        self.dropout_rate = dropout_rate

    def __call__(
        self,
        x: jax.Array,
        mask: jax.Array,
        *,
        deterministic: bool,
        dropout_key: jax.Array | None,
        positions: jax.Array | None = None,
        key_bias: jax.Array | None = None,
    ) -> jax.Array:
        """x: [B, T, D] -> [B, T, D], or [B, P, D] at ``positions`` [B, P] only (mask [B, 1, T, T]).

        ``key_bias`` [B, H, T]: an additive attention bias per key (``MultiHeadAttention``).
        """

        def regularised(update: jax.Array, stream: int) -> jax.Array:
            if deterministic:
                return update
            return dropout(update, self.dropout_rate, jax.random.fold_in(dropout_key, stream))

        normalized = self.ln_1(x)
        if positions is None:
            x = x + regularised(self.attn(normalized, mask, key_bias=key_bias), 0)
        else:
            # Every token is still a key and a value; only the chosen ones query and go on.
            mask = jnp.take_along_axis(mask, positions[:, None, :, None], axis=2)  # [B, 1, P, T]
            queries = jnp.take_along_axis(normalized, positions[:, :, None], axis=1)  # [B, P, D]
            x = jnp.take_along_axis(x, positions[:, :, None], axis=1)
            x = x + regularised(self.attn(normalized, mask, queries, key_bias), 0)
        return x + regularised(self.mlp(self.ln_2(x)), 1)


class Transformer(nnx.Module):
    """A stack of pre-LN GPT blocks followed by a final LayerNorm.

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
        rngs: nnx.Rngs,
    ):
        kernel_init = nnx.initializers.variance_scaling(2.0 / num_layers, "fan_in", "truncated_normal")
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
    ) -> jax.Array:
        """x: [B, T, D] embedded tokens; mask: bool [B, T, T] (query, key), True = may attend.

        ``dropout_key`` is required unless ``deterministic``. With ``output_positions`` [B, P] the
        result is [B, P, D] at those positions only, and the last block computes nothing else: at
        inference, where a few positions are read, that saves most of a layer.
        """
        if not deterministic and dropout_key is None:
            raise ValueError("Transformer: a dropout_key is needed when deterministic=False")
        mask = mask[:, None]  # [B, 1, T, T]: the same mask for every head

        def apply_block(block: Block, x: jax.Array, key: jax.Array | None, positions: jax.Array | None) -> jax.Array:
            return block(x, mask, deterministic=deterministic, dropout_key=key, positions=positions)

        if self.remat:
            # Recompute each block's activations in the backward pass: memory O(layers) instead of
            # O(layers x activations), for ~1/3 more compute.
            apply_block = nnx.remat(apply_block)
        last = len(self.blocks) - 1
        for index, block in enumerate(self.blocks):
            key = jax.random.fold_in(dropout_key, index) if dropout_key is not None else None
            x = apply_block(block, x, key, output_positions if index == last else None)
        return self.ln_f(x)
