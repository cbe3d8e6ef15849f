"""The JAT model (mgdt_jax/recipes/jat/model.py) on known inputs: tiling, reward folding, the image
encoder, masks of real actions and dimensions, the loss weighting and the KV cache."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mgdt_jax.recipes.jat import tokens
from mgdt_jax.recipes.jat.model import (JatModel, ModelConfig, conv_stride2, conv_transpose_stride2, cyclic_tile,
                                        loss_and_metrics)

CONFIG = ModelConfig(num_layers=2, d_model=32, num_heads=2, num_steps=6, continuous_width=8, image_shape=(12, 12, 3),
                     dropout_rate=0.0)
B, S = 2, 6


@pytest.fixture(scope="module")
def model() -> JatModel:
    return JatModel(CONFIG, rngs=nnx.Rngs(0))


def make_batch(group: str, seed: int = 0, config: ModelConfig = CONFIG) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    width = config.continuous_width
    batch = {
        "loss_weight": np.ones(B, np.float32),
        "segment": np.zeros((B, S), np.int32),
        "position": np.tile(np.arange(S, dtype=np.int32), (B, 1)),
        "rewards": rng.normal(size=(B, S)).astype(np.float32),
        "continuous_observations": np.zeros((B, S, width), np.float32),
        "continuous_observation_size": np.full(B, 3, np.int32),
        "continuous_actions": np.zeros((B, S, width), np.float32),
        "continuous_action_size": np.full(B, 2, np.int32),
        "discrete_observations": rng.integers(0, 11, (B, S, 148)).astype(np.int32),
        "text_observations": np.stack([tokens.tokenize("go to the red ball", 64)] * S)[None].repeat(B, 0),
        "discrete_actions": rng.integers(0, 7, (B, S)).astype(np.int32),
        "num_discrete_actions": np.full(B, 7, np.int32),
        "image_observations": rng.integers(0, 256, (B, S, *config.image_shape)).astype(np.uint8),
    }
    batch["continuous_observations"][..., :3] = rng.normal(size=(B, S, 3))
    batch["continuous_actions"][..., :2] = rng.uniform(-1, 1, size=(B, S, 2))
    return {name: batch[name] for name in tokens.batch_keys(group)}  # a batch carries its group's keys


@nnx.jit
def _loss(model: JatModel, batch: dict) -> tuple[jax.Array, dict]:
    return loss_and_metrics(model, batch, deterministic=True, dropout_key=None)


def loss(model: JatModel, batch: dict) -> tuple[float, dict]:
    value, metrics = _loss(model, batch)
    return float(value), {name: float(metric) for name, metric in metrics.items()}


def test_cyclic_tiling_repeats_the_real_entries():
    values = jnp.array([[1.0, 2.0, 0.0, 0.0, 0.0], [3.0, 4.0, 5.0, 0.0, 0.0], [7.0, 0.0, 0.0, 0.0, 0.0]])
    tiled = cyclic_tile(values, jnp.array([2, 3, 0]), 7)
    np.testing.assert_array_equal(tiled, [[1, 2, 1, 2, 1, 2, 1], [3, 4, 5, 3, 4, 5, 3], [0] * 7])


def test_continuous_observation_token_is_one_linear_layer_of_the_tiled_vector_and_the_reward(model):
    batch = make_batch("continuous")
    observations, _ = model.step_tokens(batch, "continuous")
    tiled = np.resize(batch["continuous_observations"][0, 0, :3], CONFIG.continuous_width)  # numpy's resize tiles
    layer = model.continuous_observation_encoder
    expected = (np.concatenate([tiled, [batch["rewards"][0, 0]]]) @ np.asarray(layer.kernel[...]) + np.asarray(layer.bias[...])
                + np.asarray(model.position_embed[...][0]) + np.asarray(model.token_type_embed[...][0]))
    np.testing.assert_allclose(observations[0, 0], expected, rtol=1e-5, atol=1e-5)
    # Entries past the real size are never read; the reward is.
    padded = {**batch, "continuous_observations": batch["continuous_observations"] + np.where(np.arange(8) >= 3, 9.0, 0.0)}
    np.testing.assert_array_equal(model.step_tokens(padded, "continuous")[0], observations)
    rewarded = {**batch, "rewards": batch["rewards"] + 1.0}
    assert not np.allclose(model.step_tokens(rewarded, "continuous")[0], observations)


def test_discrete_observation_token_carries_the_reward_as_its_last_dimension(model):
    batch = make_batch("discrete")
    encoded = model.discrete_encoder(batch["discrete_observations"], batch["text_observations"], batch["rewards"])
    assert encoded.shape == (B, S, CONFIG.d_model)
    np.testing.assert_array_equal(encoded[..., -1], batch["rewards"])
    other_mission = {**batch, "text_observations": np.zeros_like(batch["text_observations"])}
    assert not np.allclose(model.step_tokens(other_mission, "discrete")[0], model.step_tokens(batch, "discrete")[0])


def test_image_encoder_halves_the_image_three_times_and_images_get_no_reward():
    config = dataclasses.replace(CONFIG, image_shape=(84, 84, 3))
    model = JatModel(config, rngs=nnx.Rngs(1))
    assert model.image_encoder.flat_shape == (11, 11, 128)  # JAT: 128 x 11 x 11 from 84 x 84
    batch = make_batch("image", config=config)
    tokens_, _ = model.step_tokens(batch, "image")
    assert tokens_.shape == (B, S, config.d_model) and np.isfinite(tokens_).all()
    rewarded = {**batch, "rewards": batch["rewards"] + 5.0}
    np.testing.assert_array_equal(model.step_tokens(rewarded, "image")[0], tokens_)
    assert model.image_decoder(tokens_).shape == (B, S, 84, 84, 3)


@pytest.mark.parametrize("size", [7, 12])
def test_image_convolutions_as_matmuls_equal_the_library_convolutions(size):
    # The encoder's and decoder's layers keep nnx.Conv / nnx.ConvTranspose parameters and compute them as
    # matmuls (faster gradients on CPU); odd sizes check the padding.
    rngs = nnx.Rngs(0)
    bias = nnx.initializers.normal(1.0)
    conv = nnx.Conv(3, 5, (3, 3), strides=2, padding=1, bias_init=bias, rngs=rngs)
    deconv = nnx.ConvTranspose(5, 4, (3, 3), strides=2, padding="SAME", bias_init=bias, rngs=rngs)
    x = jax.random.normal(jax.random.key(1), (2, size, size, 3))
    hidden = jax.random.normal(jax.random.key(2), (2, size, size, 5))
    np.testing.assert_allclose(conv_stride2(x, conv.kernel[...], conv.bias[...]), conv(x), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(conv_transpose_stride2(hidden, deconv.kernel[...], deconv.bias[...]), deconv(hidden),
                               rtol=1e-5, atol=1e-5)


def test_discrete_logits_beyond_the_tasks_actions_are_masked(model):
    logits = model.discrete_action_logits(jnp.ones((2, CONFIG.d_model)), jnp.array([3, 7]))
    assert (logits[0, 3:] < -1e29).all() and (logits[0, :3] > -1e29).all() and (logits[1, :7] > -1e29).all()


def test_continuous_action_loss_reads_only_the_real_action_dimensions(model):
    batch = make_batch("continuous")
    _, metrics = loss(model, batch)
    beyond = {**batch, "continuous_actions": batch["continuous_actions"] + np.where(np.arange(8) >= 2, 3.0, 0.0)}
    assert loss(model, beyond)[1]["action_loss"] == pytest.approx(metrics["action_loss"], rel=1e-6)
    within = {**batch, "continuous_actions": batch["continuous_actions"] + np.where(np.arange(8) < 2, 3.0, 0.0)}
    assert loss(model, within)[1]["action_loss"] > metrics["action_loss"] + 1.0
    # The MSE is a mean over the real dimensions: by hand from the head's output.
    hidden = model(batch, deterministic=True)
    predicted = np.asarray(model.continuous_actions(hidden[:, 0::2]))[..., :2]
    assert metrics["action_loss"] == pytest.approx(np.mean((predicted - batch["continuous_actions"][..., :2]) ** 2), rel=1e-5)


def test_loss_is_kappa_weighted_and_scaled_by_task_loss_weights(model):
    batch = make_batch("continuous")
    total, metrics = loss(model, batch)
    assert total == pytest.approx(0.005 * metrics["observation_loss"] + 0.995 * metrics["action_loss"], rel=1e-6)
    assert metrics["observation_loss"] > 0
    heavier = {**batch, "loss_weight": np.array([3.0, 3.0], np.float32)}
    _, heavy = loss(model, heavier)
    assert heavy["action_loss"] == pytest.approx(3 * metrics["action_loss"], rel=1e-5)
    assert heavy["observation_loss"] == pytest.approx(3 * metrics["observation_loss"], rel=1e-5)
    no_kappa = JatModel(dataclasses.replace(CONFIG, observation_loss_coef=0.0), rngs=nnx.Rngs(0))
    total, metrics = loss(no_kappa, batch)
    assert total == pytest.approx(metrics["action_loss"], rel=1e-6)


def test_padded_steps_change_no_loss(model):
    batch = make_batch("continuous")
    batch["segment"][:] = [0, 0, 0, 1, 1, -1]  # two packed episodes, then one padded step
    total, metrics = loss(model, batch)
    assert metrics["real_step_fraction"] == pytest.approx(5 / 6)
    changed = {**batch, "continuous_actions": batch["continuous_actions"].copy(),
               "continuous_observations": batch["continuous_observations"].copy(), "rewards": batch["rewards"].copy()}
    for name in ("continuous_actions", "continuous_observations", "rewards"):
        changed[name][:, 5] += 10.0  # neither a target (masked) nor a key (other segment) of any real step
    assert loss(model, changed)[0] == pytest.approx(total, rel=1e-6)


def test_incremental_decoding_with_the_cache_equals_the_full_pass(model):
    batch = make_batch("discrete")
    full = model(batch, deterministic=True)  # [B, 2S, D]
    observations, actions = model.step_tokens(batch, "discrete")
    sequence = jnp.stack([observations, actions], axis=2).reshape(B, 2 * S, CONFIG.d_model)
    cache = model.init_cache(B, 2 * S + 2)
    lengths, starts = jnp.zeros(B, jnp.int32), jnp.zeros(B, jnp.int32)
    outputs = []
    for first in range(0, 2 * S, 3):  # 3 tokens a call: the cache does not care about chunk boundaries
        hidden, cache = model.decode(sequence[:, first:first + 3], cache, lengths, starts)
        outputs.append(hidden)
        lengths = lengths + 3
    np.testing.assert_allclose(jnp.concatenate(outputs, axis=1), full, rtol=2e-5, atol=2e-5)


def test_word_tokenizer_needs_no_download_and_maps_unknown_words():
    ids = tokens.tokenize("Pick up the red ball, then open a door", 10)
    words = ["pick", "up", "the", "red", "ball", ",", "then", "open", "a", "door"]
    np.testing.assert_array_equal(ids, [tokens.VOCABULARY[word] for word in words])
    np.testing.assert_array_equal(tokens.tokenize("fetch the ball", 4), [tokens.UNKNOWN_WORD, tokens.VOCABULARY["the"],
                                                                         tokens.VOCABULARY["ball"], tokens.PAD_WORD])


def test_a_batch_carries_only_its_groups_fields_and_trains_that_groups_losses():
    # One compiled step per group: nothing of another modality is carried or computed.
    config = dataclasses.replace(CONFIG, image_shape=(8, 8, 3))
    model = JatModel(config, rngs=nnx.Rngs(0))
    image = make_batch("image", config=config)
    assert not {"discrete_observations", "continuous_observations", "continuous_actions"} & set(image)
    total, metrics = loss(model, image)
    assert metrics["observation_loss"] > 0 and np.isfinite(total)  # the next frame is predicted
    assert loss(model, make_batch("discrete", config=config))[1]["observation_loss"] == 0.0  # JAT: no symbol loss
    without_frames = {name: value for name, value in image.items() if name != "image_observations"}
    with pytest.raises(tokens.InputError, match="observations of no group"):
        loss(model, without_frames)


def test_an_image_batchs_cost_counts_the_convolutions_xla_counts():
    """``JatRecipe.batch_cost`` (logged TFLOP/s and MFU, the GPU check's JAT figures) of an image
    batch is within a few percent of XLA's count of the compiled train step: its 84x84 frames'
    convolutions are most of the work (``step_cost`` alone, without them, reads ~200x too few)."""
    from mgdt_jax.core import sharding
    from mgdt_jax.core.flops import compiled_flops
    from mgdt_jax.core.train_step import Trainer
    from mgdt_jax.recipes.jat.recipe import JatRecipe

    image_shape = (84, 84, 3)
    config = {"recipe": "jat", "mesh": {"data": 1, "fsdp": 1, "tensor": 1},
              "model": {"num_layers": 1, "d_model": 64, "num_heads": 2, "num_steps": S, "continuous_width": 8,
                        "image_shape": image_shape, "dropout_rate": 0.0},
              "optimizer": {"learning_rate": 1e-3, "warmup_steps": 5},
              "train": {"batch_size": B, "grad_accum_steps": 1, "num_steps": 10}}
    recipe = JatRecipe(config)
    trainer = Trainer(config, sharding.make_mesh(config["mesh"], jax.devices()[:1]), recipe)
    batch = make_batch("image", config=dataclasses.replace(CONFIG, image_shape=image_shape))
    lowered = trainer.lower_step(jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), batch))
    ratio = compiled_flops(lowered.compile()) / recipe.batch_cost(B, batch).flops
    assert 1.0 <= ratio <= 1.1, ratio  # XLA also counts the optimizer's and elementwise work
    assert recipe.batch_cost(B, make_batch("discrete")) == recipe.step_cost(B)
