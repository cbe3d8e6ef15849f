"""The MGDT model: token layout, attention masks, where heads read, causality, padding, BC, loss."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mgdt_jax.recipes.mgdt import model as model_module
from mgdt_jax.recipes.mgdt import tokens
from mgdt_jax.recipes.mgdt.model import (
    ModelConfig,
    MultiGameDecisionTransformer,
    attention_mask,
    loss_and_metrics,
    patchify,
    visible_tokens,
)
from mgdt_jax.core.transformer import MASK_VALUE, dropout, gelu, layer_norm, masked_attention

TINY = ModelConfig(num_layers=2, d_model=64, num_heads=2, dropout_rate=0.1)
STEPS = tokens.DEFAULT_NUM_STEPS
PER_STEP = tokens.TOKENS_PER_STEP


def random_batch(batch_size: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "observations": rng.integers(0, 256, (batch_size, STEPS, *tokens.FRAME_SHAPE), dtype=np.uint8),
        "returns_to_go": rng.integers(0, tokens.NUM_RETURNS, (batch_size, STEPS), dtype=np.int32),
        "actions": rng.integers(0, tokens.NUM_ACTIONS, (batch_size, STEPS), dtype=np.int32),
        "rewards": rng.choice([0, 1, 3], (batch_size, STEPS)).astype(np.int32),
        "step_mask": np.ones((batch_size, STEPS), bool),
    }


def expected_mask(step_mask: list[bool], single_return_token: bool) -> np.ndarray:
    """The mask written out token by token from the reference's rules, for one window."""
    length = STEPS * PER_STEP
    first_real = step_mask.index(True) if any(step_mask) else None
    mask = np.zeros((length, length), bool)
    for query in range(length):
        for key in range(length):
            query_step, query_offset = divmod(query, PER_STEP)
            key_step, key_offset = divmod(key, PER_STEP)
            both_patches_of_one_frame = (
                query_step == key_step and query_offset < tokens.NUM_PATCHES and key_offset < tokens.NUM_PATCHES
            )
            hidden_return = (
                single_return_token and key_offset == tokens.RETURN_OFFSET and key_step != first_real
            )
            mask[query, key] = (
                (key <= query or both_patches_of_one_frame) and step_mask[key_step] and not hidden_return
            )
    return mask


@pytest.fixture(scope="module")
def model() -> MultiGameDecisionTransformer:
    return MultiGameDecisionTransformer(TINY, rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def apply(model):
    """Deterministic forward pass, jitted once for the module."""
    graphdef, params = nnx.split(model)

    @jax.jit
    def forward(params, batch):
        return nnx.merge(graphdef, params)(batch, deterministic=True)

    return lambda batch: jax.tree.map(np.asarray, forward(params, batch))


@pytest.mark.parametrize(
    "step_mask, single_return_token",
    [([True] * 4, True), ([True] * 4, False), ([False, False, True, True], True), ([False, True, True, True], False)],
)
def test_attention_mask_matches_reference_rules_token_by_token(step_mask, single_return_token):
    config = ModelConfig(single_return_token=single_return_token)
    mask = np.asarray(attention_mask(jnp.array([step_mask]), config))[0]
    np.testing.assert_array_equal(mask, expected_mask(step_mask, single_return_token))


def test_attention_mask_spot_checks():
    mask = np.asarray(attention_mask(jnp.ones((1, STEPS), bool), ModelConfig()))[0]
    first_patch, last_patch = 0, tokens.NUM_PATCHES - 1
    assert mask[first_patch, last_patch]  # patches of one frame see each other both ways
    assert not mask[first_patch, PER_STEP]  # ...but not the next frame's patches
    assert mask[PER_STEP, tokens.RETURN_OFFSET]  # the first return-to-go is visible later
    assert not mask[3 * PER_STEP, PER_STEP + tokens.RETURN_OFFSET]  # later ones are hidden
    assert not mask[tokens.RETURN_OFFSET, tokens.ACTION_OFFSET]  # the return token cannot see its action
    assert mask.shape == (156, 156)


def test_a_window_whose_attention_layout_cannot_be_built_is_refused_in_one_line(monkeypatch):
    # model.num_steps 2000 built a 78,000-token [T, T] layout on the host and got killed compiling it.
    config = ModelConfig(num_steps=STEPS)
    monkeypatch.setattr(model_module.host_memory, "available_bytes", lambda: 4 * 156**2)
    assert attention_mask(jnp.ones((1, STEPS), bool), config).shape == (1, 156, 156)
    monkeypatch.setattr(model_module.host_memory, "available_bytes", lambda: 4 * 156**2 - 1)
    with pytest.raises(ValueError, match=r"^model.num_steps 4: its 156 tokens make an attention layout of 23.8 KiB, "
                                         r"and compiling the step takes about four copies of it; the host has 95.1 KiB "
                                         r"free. Lower model.num_steps \(the released models use 4\)$"):
        attention_mask(jnp.ones((1, STEPS), bool), config)


def test_patchify_is_row_major_over_the_six_by_six_grid():
    frame = np.zeros((1, 1, 84, 84, 1), np.uint8)
    frame[0, 0, 14:28, 70:84, 0] = 255  # grid row 1, column 5 -> patch 1 * 6 + 5 = 11
    patches = np.asarray(patchify(jnp.asarray(frame)))
    assert patches.shape == (1, 1, 36, 196)
    assert np.flatnonzero(patches[0, 0].sum(axis=1)).tolist() == [11]
    np.testing.assert_allclose(patches[0, 0, 11], 1.0)


def test_output_shapes_and_parameter_tree(model, apply):
    logits = apply(random_batch())
    assert {name: value.shape for name, value in logits.items()} == {
        "return_logits": (2, STEPS, 120),
        "action_logits": (2, STEPS, 18),
        "reward_logits": (2, STEPS, 4),
    }
    # The tree the checkpoint importer maps the released names onto (module docstring).
    params = nnx.state(model)
    assert params["image_emb"]["kernel"].shape == (196, TINY.d_model)
    assert params["image_pos_enc"].shape == (36, TINY.d_model)
    assert params["positional_embeddings"].shape == (156, TINY.d_model)
    assert params["transformer"]["blocks"][1]["attn"]["query"]["kernel"].shape == (TINY.d_model, TINY.d_model)
    assert params["transformer"]["blocks"][1]["mlp"]["linear_in"]["kernel"].shape == (TINY.d_model, 4 * TINY.d_model)


def changed(before: dict[str, np.ndarray], after: dict[str, np.ndarray], head: str, step: int) -> bool:
    return not np.array_equal(before[f"{head}_logits"][:, step], after[f"{head}_logits"][:, step])


def perturbed(batch: dict[str, np.ndarray], key: str, step: int) -> dict[str, np.ndarray]:
    batch = {name: value.copy() for name, value in batch.items()}
    if key == "observations":
        batch[key][:, step] = 255 - batch[key][:, step]
    else:
        batch[key][:, step] = (batch[key][:, step] + 1) % 3  # stays a valid token of every vocabulary
    return batch


def test_heads_read_the_released_positions_and_the_model_is_causal(apply):
    # Return logits come from the frame's last patch, action logits from the return token and reward
    # logits from the action token: each head sees its own step's inputs up to that position only.
    batch = random_batch()
    base = apply(batch)
    step = 1
    after_frame = apply(perturbed(batch, "observations", step))
    after_action = apply(perturbed(batch, "actions", step))
    after_reward = apply(perturbed(batch, "rewards", step))
    assert changed(base, after_frame, "return", step)
    assert not changed(base, after_action, "action", step)
    assert changed(base, after_action, "reward", step)
    assert not changed(base, after_reward, "reward", step)
    assert changed(base, after_reward, "return", step + 1)
    for later in (after_frame, after_action, after_reward):
        for head in ("return", "action", "reward"):
            assert not changed(base, later, head, step - 1)


def test_return_token_sets_the_action_logits_when_visible(apply):
    batch = random_batch()
    base = apply(batch)
    # single_return_token: step 0's return-to-go is an input, step 2's is hidden and ignored.
    assert changed(base, apply(perturbed(batch, "returns_to_go", 0)), "action", 0)
    after_hidden = apply(perturbed(batch, "returns_to_go", 2))
    for head in ("return", "action", "reward"):
        for step in range(STEPS):
            assert not changed(base, after_hidden, head, step)


def test_hidden_tokens_enter_the_transformer_as_exactly_zero():
    """The released order: (token embedding + position embedding) x token mask (mgdt.md §5).

    A hidden return token's position embedding must not reach the transformer: the action logits of
    steps 1..3 are read at those tokens.
    """
    model = MultiGameDecisionTransformer(TINY, rngs=nnx.Rngs(2))
    batch = random_batch()
    batch["step_mask"][1, 0] = False  # row 1 starts at step 1
    step_mask = jnp.asarray(batch["step_mask"])
    hidden = np.zeros((2, STEPS, PER_STEP), bool)
    hidden[0, 1:, tokens.RETURN_OFFSET] = True  # single_return_token: only step 0's return is visible
    hidden[1, 0] = True  # a padding step
    hidden[1, 2:, tokens.RETURN_OFFSET] = True  # the first real step is 1
    hidden = hidden.reshape(2, STEPS * PER_STEP)
    np.testing.assert_array_equal(~np.asarray(visible_tokens(step_mask, TINY)), hidden)
    embedded = np.asarray(model.embed(batch, step_mask))
    assert (embedded[hidden] == 0).all() and (np.abs(embedded[~hidden]).max(-1) > 0).all()

    before = model(batch, deterministic=True)
    positions = model.positional_embeddings[...]
    model.positional_embeddings[...] = positions.at[np.flatnonzero(hidden[0])].add(1.0)
    after = model(batch, deterministic=True)
    for name in before:
        np.testing.assert_array_equal(before[name][0], after[name][0], err_msg=name)


def test_layer_norm_variance_is_two_pass_as_released():
    """Haiku's LayerNorm computes mean((x - mean)^2); E[x^2] - E[x]^2 loses it when |mean| >> std."""
    x = 300.0 + 0.05 * np.random.default_rng(0).normal(size=(4, 64))
    expected = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5)
    norm = layer_norm(64, param_dtype=jnp.float32, rngs=nnx.Rngs(0))
    np.testing.assert_allclose(norm(jnp.asarray(x, jnp.float32)), expected, atol=5e-3)


def test_left_padding_is_ignored(apply):
    batch = random_batch()
    batch["step_mask"][:, :2] = False
    base = apply(batch)
    garbage = random_batch(seed=1)
    for key in ("observations", "returns_to_go", "actions", "rewards"):
        batch[key][:, :2] = garbage[key][:, :2]
    after = apply(batch)
    for head in ("return", "action", "reward"):
        np.testing.assert_allclose(base[f"{head}_logits"][:, 2:], after[f"{head}_logits"][:, 2:], atol=1e-5)
        assert np.isfinite(after[f"{head}_logits"]).all()


def test_fully_padded_window_gives_finite_logits_and_zero_loss(apply):
    batch = random_batch()
    batch["step_mask"][:] = False
    logits = apply(batch)
    assert all(np.isfinite(value).all() for value in logits.values())
    loss, _ = loss_and_metrics(logits, batch, TINY)
    assert float(loss) == 0.0


def log_softmax_ce(logits: np.ndarray, target: np.ndarray) -> np.ndarray:
    logits = logits - logits.max(-1, keepdims=True)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    return -np.take_along_axis(log_probs, target[..., None], -1)[..., 0]


def test_loss_is_mean_of_per_token_cross_entropies_over_real_steps(apply):
    batch = random_batch()
    batch["step_mask"][0, 0] = False  # row 0 starts one step later
    logits = apply(batch)
    loss, metrics = loss_and_metrics(logits, batch, TINY)
    real = batch["step_mask"]
    action = log_softmax_ce(logits["action_logits"], batch["actions"])[real].mean()
    reward = log_softmax_ce(logits["reward_logits"], batch["rewards"])[real].mean()
    # single_return_token: only the visible return (the first real step of each row) is a target.
    returns = log_softmax_ce(logits["return_logits"], batch["returns_to_go"])
    first_return = np.array([returns[0, 1], returns[1, 0]]).mean()
    np.testing.assert_allclose(float(metrics["action_loss"]), action, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["reward_loss"]), reward, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["return_loss"]), first_return, rtol=1e-5)
    np.testing.assert_allclose(float(loss), (action + reward + first_return) / 3, rtol=1e-5)


def test_dropout_changes_outputs_only_when_training(model):
    batch = random_batch()
    key = jax.random.key(3)
    training = model(batch, deterministic=False, dropout_key=key)["action_logits"]
    again = model(batch, deterministic=False, dropout_key=key)["action_logits"]
    evaluation = model(batch, deterministic=True)["action_logits"]
    np.testing.assert_array_equal(training, again)
    assert not np.allclose(training, evaluation)
    with pytest.raises(ValueError, match="dropout_key"):
        model(batch, deterministic=False)


def test_dropout_drops_the_configured_fraction_independently_per_key():
    ones = jnp.ones((32, 156, 128))
    first, second = dropout(ones, 0.1, jax.random.key(0)), dropout(ones, 0.1, jax.random.key(1))
    dropped_first, dropped_second = np.asarray(first) == 0, np.asarray(second) == 0
    assert abs(dropped_first.mean() - 0.1) < 0.002
    np.testing.assert_allclose(np.asarray(first)[~dropped_first], 1 / 0.9, rtol=1e-6)
    assert abs((dropped_first & dropped_second).mean() - 0.01) < 0.001  # masks of two keys are independent
    assert abs((dropped_first[:, :, 1:] & dropped_first[:, :, :-1]).mean() - 0.01) < 0.001  # and so are neighbours


@pytest.mark.parametrize("behaviour_cloning", [False, True])
def test_step_logits_equal_the_full_forward_pass_at_the_read_position(behaviour_cloning):
    """The inference path that runs the last layer at one position per window changes no logit."""
    config = ModelConfig(num_layers=2, d_model=64, num_heads=2, behaviour_cloning=behaviour_cloning)
    model = MultiGameDecisionTransformer(config, rngs=nnx.Rngs(1))
    batch = random_batch(batch_size=3, seed=5)
    batch["step_mask"][1, :2] = False  # a window at an episode start
    full = model(batch, deterministic=True)
    steps = jnp.array([3, 2, 0])
    for name in full:
        head = name.removesuffix("_logits")
        np.testing.assert_allclose(
            model.step_logits(batch, head, steps), full[name][jnp.arange(3), steps], rtol=1e-5, atol=1e-5
        )


def test_hand_written_gradients_equal_autodiff_of_the_plain_formulas():
    """GELU and attention have custom backward passes (speed); their values and gradients must not move."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(0, 3, (4, 64)), jnp.float32)
    plain_gelu = lambda v: jax.nn.gelu(v, approximate=True)  # noqa: E731
    np.testing.assert_allclose(gelu(x), plain_gelu(x), rtol=1e-6, atol=1e-6)
    weights = jnp.asarray(rng.normal(size=(4, 64)), jnp.float32)
    np.testing.assert_allclose(
        jax.grad(lambda v: (gelu(v) * weights).sum())(x),
        jax.grad(lambda v: (plain_gelu(v) * weights).sum())(x),
        rtol=1e-5,
        atol=1e-5,
    )

    def plain_attention(query, key, value, mask):
        logits = jnp.einsum("bhqk,bhtk->bhqt", query, key)
        return jnp.einsum("bhqt,bhtk->bhqk", jax.nn.softmax(jnp.where(mask, logits, MASK_VALUE), axis=-1), value)

    query, key, value = (jnp.asarray(rng.normal(size=(2, 3, 10, 8)), jnp.float32) for _ in range(3))
    mask = jnp.asarray(rng.random((2, 1, 10, 10)) < 0.6).at[0, 0, 4].set(False)  # row 4: a fully masked query
    cotangent = jnp.asarray(rng.normal(size=(2, 3, 10, 8)), jnp.float32)
    ours = jax.vjp(lambda q, k, v: masked_attention(q, k, v, mask), query, key, value)
    reference = jax.vjp(lambda q, k, v: plain_attention(q, k, v, mask), query, key, value)
    np.testing.assert_allclose(ours[0], reference[0], rtol=1e-5, atol=1e-5)
    for got, expected in zip(ours[1](cotangent), reference[1](cotangent)):
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_behaviour_cloning_variant():
    config = ModelConfig(num_layers=1, d_model=64, num_heads=1, behaviour_cloning=True)
    model = MultiGameDecisionTransformer(config, rngs=nnx.Rngs(0))
    params = nnx.state(model)
    assert "return_emb" not in params and "reward_head" not in params
    assert params["positional_embeddings"].shape == (STEPS * 37, 64)  # [36 patches, action] per step
    batch = random_batch()
    base = model(batch, deterministic=True)
    assert set(base) == {"action_logits"}
    # Actions are predicted from the frame's last patch, before the action token.
    after_action = model(perturbed(batch, "actions", 1), deterministic=True)
    assert not changed(base, after_action, "action", 1)
    assert changed(base, after_action, "action", 2)
    # Returns and rewards are not inputs at all.
    after_return = model(perturbed(perturbed(batch, "returns_to_go", 0), "rewards", 0), deterministic=True)
    np.testing.assert_array_equal(base["action_logits"], after_return["action_logits"])
    loss, metrics = loss_and_metrics(base, batch, config)
    assert set(metrics) == {"action_loss", "action_accuracy"}
    np.testing.assert_allclose(float(loss), float(metrics["action_loss"]))


def test_bfloat16_compute_keeps_float32_params_and_logits():
    config = ModelConfig(num_layers=1, d_model=64, num_heads=1, dtype="bfloat16")
    model = MultiGameDecisionTransformer(config, rngs=nnx.Rngs(0))
    assert {leaf.dtype for leaf in jax.tree.leaves(nnx.state(model))} == {jnp.dtype("float32")}
    reference = MultiGameDecisionTransformer(ModelConfig(num_layers=1, d_model=64, num_heads=1), rngs=nnx.Rngs(0))
    batch = random_batch()
    low, full = model(batch, deterministic=True), reference(batch, deterministic=True)
    assert low["action_logits"].dtype == jnp.float32
    np.testing.assert_allclose(low["action_logits"], full["action_logits"], atol=0.1)


@pytest.mark.parametrize("field, value, expected", [
    ("num_layers", 0, "model.num_layers must be at least 1, got 0"),
    ("dtype", "float8", "model.dtype must be one of float32, bfloat16, float16, got 'float8'"),
])
def test_a_model_config_no_model_can_have_is_one_line(field, value, expected):
    with pytest.raises(ValueError, match=f"^{re.escape(expected)}$"):
        ModelConfig(**{field: value})
