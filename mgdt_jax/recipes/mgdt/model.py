"""The Multi-Game Decision Transformer: embedders, attention mask, heads and loss over the generic decoder.

Token layout per timestep (mgdt_jax/recipes/mgdt/tokens.py): ``[36 patches, return-to-go, action, reward]`` = 39
tokens, 4 steps = 156 tokens. The behaviour-cloning variant (``behaviour_cloning=True``) drops the
return and reward tokens: ``[36 patches, action]`` = 37 tokens per step, and predicts actions only.

Heads read the positions of the released model: return logits from the last patch of each frame,
action logits from the return-to-go token, reward logits from the action token (BC: action logits
from the last patch).

Loss reduction (a deliberate choice): the mean of the three heads' cross-entropies, each the mean
per-token cross-entropy over the real (``step_mask``) steps. The released Colab's ``cross_entropy``
also averages over the class axis, i.e. divides each term by its vocabulary size (120, 18, 4), which
reweights the heads; we do not, since the paper states a standard cross-entropy. With
``single_return_token`` the return loss uses only the step whose return token is visible (step 0 of
the window, as in the Colab; with left padding, the first real step).

Parameter tree and the released Haiku checkpoint (mgdt.md §15), one-to-one, ``i`` = layer index:

==========================================================  ==============================================
released Haiku name (``decision_transformer/...``)           attribute path here
==========================================================  ==============================================
``~_embed_inputs/image_emb`` ``w (14,14,1,D)``, ``b``        ``image_emb.kernel (196,D)`` (= ``w.reshape(196, D)``), ``image_emb.bias``
``image_pos_enc (1,1,36,D)``                                 ``image_pos_enc (36,D)``
``positional_embeddings (156,D)``                            ``positional_embeddings (156,D)``
``~_embed_inputs/embed`` ``embeddings (120,D)``              ``return_emb.embedding``
``~_embed_inputs/embed_1`` ``embeddings (18,D)``             ``action_emb.embedding``
``~_embed_inputs/embed_2`` ``embeddings (4,D)``              ``reward_emb.embedding``
``~/sequence/h{i}_ln_1`` ``scale``, ``offset``               ``transformer.blocks[i].ln_1.scale``, ``.bias``
``~/sequence/h{i}_attn/query|key|value`` ``w``, ``b``        ``transformer.blocks[i].attn.query|key|value.kernel``, ``.bias``
``~/sequence/h{i}_attn/linear`` ``w``, ``b``                 ``transformer.blocks[i].attn.out.kernel``, ``.bias``
``~/sequence/h{i}_ln_2`` ``scale``, ``offset``               ``transformer.blocks[i].ln_2.scale``, ``.bias``
``~/sequence/h{i}_mlp/linear`` ``w (D,4D)``, ``b``           ``transformer.blocks[i].mlp.linear_in.kernel``, ``.bias``
``~/sequence/h{i}_mlp/linear_1`` ``w (4D,D)``, ``b``         ``transformer.blocks[i].mlp.linear_out.kernel``, ``.bias``
``~/sequence/ln_f`` ``scale``, ``offset``                    ``transformer.ln_f.scale``, ``.bias``
``ret_linear`` ``w (D,120)``, ``b``                          ``return_head.kernel``, ``.bias``
``act_linear`` ``w (D,18)``, ``b``                           ``action_head.kernel``, ``.bias``
``rew_linear`` ``w (D,4)``, ``b``                            ``reward_head.kernel``, ``.bias``
==========================================================  ==============================================

Every kernel is ``(in, out)`` like Haiku's ``w``, so values copy without transposes. The BC variant
has no ``return_emb``, ``reward_emb``, ``return_head`` or ``reward_head``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from mgdt_jax.recipes.mgdt import tokens
from mgdt_jax.core import host_memory
from mgdt_jax.core.config_sections import read_section
from mgdt_jax.core.transformer import Transformer, check_decoder_arguments, dense, sharded

HEAD_NAMES = ("return", "action", "reward")
FLOAT_DTYPES = ("float32", "bfloat16", "float16")  # model.dtype (matmuls) and model.param_dtype


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The model section of the experiment config, as a typed value.

    Built with ``ModelConfig.from_config`` from a ConfigDict, a plain dict or any object with these
    attributes (see mgdt_jax/core/config_sections.py).
    """

    num_layers: int = 2
    d_model: int = 128
    num_heads: int = 2
    mlp_ratio: int = 4
    dropout_rate: float = 0.1
    num_steps: int = tokens.DEFAULT_NUM_STEPS
    single_return_token: bool = True
    behaviour_cloning: bool = False
    dtype: str = "float32"  # matmul input dtype ("bfloat16": 2x faster); accumulation stays float32
    param_dtype: str = "float32"
    remat: bool = False

    def __post_init__(self) -> None:
        check_decoder_arguments(num_layers=self.num_layers, d_model=self.d_model, num_heads=self.num_heads,
                                mlp_ratio=self.mlp_ratio, dropout_rate=self.dropout_rate, prefix="model.")
        if self.num_steps < 1:
            raise ValueError(f"model.num_steps must be at least 1, got {self.num_steps}")
        for name in ("dtype", "param_dtype"):
            if getattr(self, name) not in FLOAT_DTYPES:
                raise ValueError(f"model.{name} must be one of {', '.join(FLOAT_DTYPES)}, got {getattr(self, name)!r}")

    @classmethod
    def from_config(cls, config: Any) -> ModelConfig:
        return read_section(cls, config)

    @property
    def tokens_per_step(self) -> int:
        return tokens.NUM_PATCHES + (1 if self.behaviour_cloning else 3)

    @property
    def sequence_length(self) -> int:
        return self.num_steps * self.tokens_per_step


def patchify(observations: jax.Array) -> jax.Array:
    """uint8 frames [B, S, 84, 84, 1] -> float patches [B, S, 36, 196] in row-major grid order.

    Each patch is flattened (row, column, channel), the order of a (14, 14, 1, D) HWIO conv kernel
    reshaped to (196, D), so a linear layer on patches equals the released stride-14 convolution.
    """
    batch, steps, height, width, channels = observations.shape
    size = tokens.PATCH_SIZE
    grid_h, grid_w = height // size, width // size
    pixels = observations.astype(jnp.float32) / 255.0
    patches = pixels.reshape(batch, steps, grid_h, size, grid_w, size, channels)
    patches = patches.transpose(0, 1, 2, 4, 3, 5, 6)  # [B, S, 6, 6, 14, 14, 1]
    return patches.reshape(batch, steps, grid_h * grid_w, size * size * channels)


def visible_return_steps(step_mask: jax.Array, single_return_token: bool) -> jax.Array:
    """bool [B, S]: steps whose return-to-go token the model sees (and whose return is a target).

    With ``single_return_token`` only the first real step of each window (step 0 without padding).
    """
    if not single_return_token:
        return step_mask
    return step_mask & (jnp.cumsum(step_mask, axis=1) == 1)


def visible_tokens(step_mask: jax.Array, config: ModelConfig) -> jax.Array:
    """bool [B, T]: tokens the model sees, i.e. those not of a left-padding step and, with
    ``single_return_token``, not a return-to-go token other than the visible one.

    The released model's token mask (mgdt.md §5): it hides these tokens as attention keys and zeroes
    their whole input vector.
    """
    per_step = config.tokens_per_step
    visible = jnp.repeat(step_mask, per_step, axis=1)  # [B, T]
    if not config.behaviour_cloning:
        is_return = np.arange(config.sequence_length) % per_step == tokens.RETURN_OFFSET
        return_visible = visible_return_steps(step_mask, config.single_return_token)
        visible &= ~is_return[None, :] | jnp.repeat(return_visible, per_step, axis=1)
    return visible


def attention_mask(step_mask: jax.Array, config: ModelConfig) -> jax.Array:
    """bool [B, T, T] (query, key): causal, OR bidirectional among one frame's patches, AND visible keys.

    Keys of left-padding steps are hidden, and with ``single_return_token`` so are the return-to-go
    tokens of every step but the visible one (``visible_tokens``).
    """
    # The layout part is a compile-time constant (NumPy): computed on device, XLA fuses the integer
    # div/mod into every layer's attention and recomputes it B x H x T x T times per layer.
    length, per_step = config.sequence_length, config.tokens_per_step
    _check_layout_fits(config)
    allowed = np.tri(length, dtype=bool)  # causal: key position <= query position
    for start in range(0, length, per_step):
        allowed[start:start + tokens.NUM_PATCHES, start:start + tokens.NUM_PATCHES] = True  # one frame's patches
    return allowed[None, :, :] & visible_tokens(step_mask, config)[:, None, :]


def _check_layout_fits(config: ModelConfig) -> None:
    """ValueError (one line) when ``model.num_steps`` makes the [T, T] layout constant too large to
    build: it is made on the host and copied through XLA's compilation (a 6.1 GB one, num_steps
    2000, took over 16 GB before the process was killed), so four copies must fit in the host's
    available memory. What the step itself needs is checked once it is compiled
    (``train_step.check_step_fits``)."""
    constant = config.sequence_length**2  # bytes: one bool per (query, key)
    available = host_memory.available_bytes()
    if available is not None and 4 * constant > available:
        raise ValueError(
            f"model.num_steps {config.num_steps}: its {config.sequence_length:,} tokens make an attention layout "
            f"of {host_memory.describe_bytes(constant)}, and compiling the step takes about four copies of it; the host "
            f"has {host_memory.describe_bytes(available)} free. Lower model.num_steps (the released models use {tokens.DEFAULT_NUM_STEPS})")


class MultiGameDecisionTransformer(nnx.Module):
    """MGDT over the batch contract of docs/architecture.md.

    ``model(batch, deterministic=True)`` returns ``{"return_logits": [B,S,120], "action_logits":
    [B,S,18], "reward_logits": [B,S,4]}`` (BC: only ``action_logits``), always float32.
    """

    def __init__(self, config: Any, *, rngs: nnx.Rngs):
        config = ModelConfig.from_config(config)
        self.config = config
        dtype, param_dtype = jnp.dtype(config.dtype), jnp.dtype(config.param_dtype)
        d_model = config.d_model
        patch_pixels = tokens.PATCH_SIZE**2 * tokens.FRAME_SHAPE[-1]

        # Initialisers of the released Haiku model: fan-in variance scaling for the patch conv,
        # N(0, 0.02) position encodings, truncated N(0, 1) embedding tables, Haiku Linear's
        # truncated N(0, 1/fan_in) for the heads.
        self.image_emb = dense(
            patch_pixels,
            d_model,
            ("patch", "embed"),
            kernel_init=nnx.initializers.variance_scaling(1.0, "fan_in", "truncated_normal"),
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=rngs,
        )
        self.image_pos_enc = nnx.Param(
            sharded(nnx.initializers.normal(0.02), ("patch", "embed"))(
                rngs.params(), (tokens.NUM_PATCHES, d_model), param_dtype
            )
        )
        self.positional_embeddings = nnx.Param(
            sharded(nnx.initializers.truncated_normal(0.02), ("position", "embed"))(
                rngs.params(), (config.sequence_length, d_model), param_dtype
            )
        )

        def embedding(vocabulary: int) -> nnx.Embed:
            return nnx.Embed(
                vocabulary,
                d_model,
                # Replicated: tiny tables, and a sharded one turns the lookup's gradient (a
                # batch-sharded scatter-add) into an all-to-all XLA can only do by rematerialising.
                embedding_init=sharded(nnx.initializers.truncated_normal(1.0), ("vocab", None)),
                dtype=jnp.float32,  # a lookup: the residual stream is float32
                param_dtype=param_dtype,
                rngs=rngs,
            )

        def head(vocabulary: int) -> nnx.Linear:
            return dense(
                d_model,
                vocabulary,
                ("embed", "vocab"),
                kernel_init=nnx.initializers.variance_scaling(1.0, "fan_in", "truncated_normal"),
                dtype=jnp.float32,  # small: logits and the loss entirely in float32
                param_dtype=param_dtype,
                rngs=rngs,
            )

        self.action_emb = embedding(tokens.NUM_ACTIONS)
        self.action_head = head(tokens.NUM_ACTIONS)
        if not config.behaviour_cloning:
            self.return_emb = embedding(tokens.NUM_RETURNS)
            self.reward_emb = embedding(tokens.NUM_REWARDS)
            self.return_head = head(tokens.NUM_RETURNS)
            self.reward_head = head(tokens.NUM_REWARDS)
        self.transformer = Transformer(
            num_layers=config.num_layers,
            d_model=d_model,
            num_heads=config.num_heads,
            mlp_ratio=config.mlp_ratio,
            dropout_rate=config.dropout_rate,
            dtype=dtype,
            param_dtype=param_dtype,
            remat=config.remat,
            rngs=rngs,
        )

    def embed(self, batch: Mapping[str, jax.Array], step_mask: jax.Array) -> jax.Array:
        """Batch -> the transformer's input [B, T, D] in the layout of the module docstring.

        In the released order: token embeddings, plus the position embedding, then the whole input
        vector of every hidden token (``visible_tokens``) set to exactly zero. The release multiplies
        by the token mask; a select gives the same for finite values and keeps a NaN out.
        """
        config = self.config
        observations = batch["observations"]
        batch_size = observations.shape[0]
        patches = self.image_emb(patchify(observations)) + self.image_pos_enc[...]  # [B, S, 36, D]
        per_step = [patches, self.action_emb(batch["actions"])[:, :, None]]
        if not config.behaviour_cloning:
            returns = self.return_emb(batch["returns_to_go"])[:, :, None]  # [B, S, 1, D]
            rewards = self.reward_emb(batch["rewards"])[:, :, None]
            per_step = [patches, returns, per_step[1], rewards]
        sequence = jnp.concatenate(per_step, axis=2)
        sequence = sequence.reshape(batch_size, config.sequence_length, config.d_model)  # [B, T, D]
        sequence = sequence + self.positional_embeddings[...]
        return jnp.where(visible_tokens(step_mask, config)[:, :, None], sequence, 0.0)

    def __call__(
        self,
        batch: Mapping[str, jax.Array],
        *,
        deterministic: bool,
        dropout_key: jax.Array | None = None,
    ) -> dict[str, jax.Array]:
        """Logits for every step of the window. ``dropout_key`` is required unless ``deterministic``."""
        config = self.config
        batch_size, num_steps = batch["actions"].shape
        if num_steps != config.num_steps:
            raise ValueError(f"batch has {num_steps} steps per window, the model expects {config.num_steps}")
        step_mask = _step_mask(batch)
        hidden = self.transformer(
            self.embed(batch, step_mask),
            attention_mask(step_mask, config),
            deterministic=deterministic,
            dropout_key=dropout_key,
        )
        hidden = hidden.reshape(batch_size, num_steps, config.tokens_per_step, config.d_model)
        return {
            f"{head}_logits": getattr(self, f"{head}_head")(hidden[:, :, offset])
            for head, offset in self._read_offsets().items()
        }

    def step_logits(self, batch: Mapping[str, jax.Array], head: str, steps: jax.Array) -> jax.Array:
        """[B, vocabulary] logits of one head at window step ``steps`` [B], for inference.

        Equal to ``self(batch, deterministic=True)[f"{head}_logits"][rows, steps]``, but the last
        layer runs only at the position the head reads: a policy reads one position per window.
        """
        config = self.config
        step_mask = _step_mask(batch)
        offset = self._read_offsets()[head]
        positions = (steps * config.tokens_per_step + offset)[:, None]  # [B, 1]
        hidden = self.transformer(
            self.embed(batch, step_mask),
            attention_mask(step_mask, config),
            deterministic=True,
            output_positions=positions,
        )  # [B, 1, D]
        return getattr(self, f"{head}_head")(hidden[:, 0])

    def _read_offsets(self) -> dict[str, int]:
        """Head -> the offset within a step of the token whose output it reads."""
        if self.config.behaviour_cloning:
            return {"action": tokens.NUM_PATCHES - 1}
        return {"return": tokens.NUM_PATCHES - 1, "action": tokens.RETURN_OFFSET, "reward": tokens.ACTION_OFFSET}

    def visible_frame_return_logits(self, batch: Mapping[str, jax.Array], steps: jax.Array) -> jax.Array:
        """[B, 120] return logits of window step ``steps`` [B] from that frame's 36 patch tokens alone.

        For a single-return-token model at its visible step (the first real one) this equals the
        full forward pass at the step's last patch for a quarter of its cost: every earlier position
        is padding hidden from attention, and patches attend only to earlier tokens and their own
        frame. The policy samples returns this way at every environment step.
        """
        embedded = self.embed(batch, _step_mask(batch))  # [B, T, D]
        positions = steps[:, None] * self.config.tokens_per_step + jnp.arange(tokens.NUM_PATCHES)  # [B, 36]
        frame = jnp.take_along_axis(embedded, positions[:, :, None], axis=1)  # [B, 36, D]
        within_frame = jnp.ones((1, tokens.NUM_PATCHES, tokens.NUM_PATCHES), bool)
        last_patch = jnp.full((frame.shape[0], 1), tokens.NUM_PATCHES - 1)
        hidden = self.transformer(frame, within_frame, deterministic=True, output_positions=last_patch)  # [B, 1, D]
        return self.return_head(hidden[:, 0])


def _step_mask(batch: Mapping[str, jax.Array]) -> jax.Array:
    """The batch's step_mask, or all steps real when the caller (e.g. a policy) gives none."""
    if "step_mask" in batch:
        return batch["step_mask"].astype(bool)
    return jnp.ones(batch["actions"].shape, bool)


def loss_and_metrics(
    logits: Mapping[str, jax.Array], batch: Mapping[str, jax.Array], config: Any
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The training loss (see the module docstring for the reduction) and per-head loss/accuracy.

    Returns ``(loss, {"<head>_loss", "<head>_accuracy" for each head present})``.
    """
    config = ModelConfig.from_config(config)
    step_mask = _step_mask(batch)
    targets = {"return": "returns_to_go", "action": "actions", "reward": "rewards"}
    weights = {name: step_mask for name in HEAD_NAMES}
    weights["return"] = visible_return_steps(step_mask, config.single_return_token)

    metrics = {}
    for name in HEAD_NAMES:
        if f"{name}_logits" not in logits:
            continue
        head_logits, target = logits[f"{name}_logits"], batch[targets[name]]
        weight = weights[name].astype(jnp.float32)
        count = jnp.maximum(weight.sum(), 1.0)
        cross_entropy = optax.softmax_cross_entropy_with_integer_labels(head_logits, target)
        correct = (jnp.argmax(head_logits, axis=-1) == target).astype(jnp.float32)
        metrics[f"{name}_loss"] = (cross_entropy * weight).sum() / count
        metrics[f"{name}_accuracy"] = (correct * weight).sum() / count
    head_losses = [value for key, value in metrics.items() if key.endswith("_loss")]
    return sum(head_losses) / len(head_losses), metrics
