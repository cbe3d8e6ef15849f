"""The sharded train step on 8 fake CPU devices: equal to one device, accumulation, learning."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from data_pipelines.record import make_environment
from mgdt_jax import atari, sharding, tokens
from mgdt_jax.training.train_step import Trainer

BATCH = 8


@pytest.fixture(scope="module", autouse=True)
def fast_compiles():
    """Tiny models on CPU: XLA's optimisation passes cost more than they save here."""
    previous = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", previous)


def tiny_config(mesh: dict[str, int], *, dropout_rate: float = 0.1, grad_accum_steps: int = 1) -> dict:
    """A plain-dict config: the step must not need ml_collections."""
    return {
        "model": {"num_layers": 2, "d_model": 64, "num_heads": 2, "dropout_rate": dropout_rate},
        "mesh": mesh,
        "optimizer": {"learning_rate": 1e-3, "warmup_steps": 5},
        "train": {"batch_size": BATCH, "grad_accum_steps": grad_accum_steps, "num_steps": 100},
    }


@pytest.fixture(scope="module")
def breakout_windows() -> dict[str, np.ndarray]:
    """Windows of real Breakout frames: 40 random-policy steps, then every 4-step window of them."""
    game = "Breakout"
    env = make_environment(game, sticky_actions=0.0, max_episode_steps=1000)
    rng = np.random.default_rng(0)
    minimal_to_full = atari.minimal_to_full(game)
    frame, _ = env.reset(seed=0)
    frames, actions, rewards = [], [], []
    for _ in range(40):
        action = int(rng.integers(len(minimal_to_full)))
        frames.append(frame)
        actions.append(minimal_to_full[action])
        frame, reward, *_ = env.step(action)
        rewards.append(float(np.clip(reward, -1, 1)))
    env.close()
    frames, actions, rewards = np.stack(frames)[..., None], np.array(actions), np.array(rewards)
    returns = tokens.encode_return(tokens.returns_to_go(rewards))
    starts = np.arange(len(frames) - tokens.DEFAULT_NUM_STEPS + 1)
    window = starts[:, None] + np.arange(tokens.DEFAULT_NUM_STEPS)  # [N, 4] step indices
    return {
        "observations": frames[window],
        "returns_to_go": returns[window],
        "actions": actions[window].astype(np.int32),
        "rewards": tokens.encode_reward(rewards[window]),
        "step_mask": np.ones(window.shape, bool),
    }


def batch_of(windows: dict[str, np.ndarray], first: int) -> dict[str, np.ndarray]:
    return {name: value[first : first + BATCH] for name, value in windows.items()}


def run_steps(trainer: Trainer, batches: list[dict[str, np.ndarray]]) -> tuple[dict, list[dict]]:
    state = trainer.init(seed=0)
    history = []
    for batch in batches:
        state, metrics = trainer.step(state, trainer.shard_batch(batch))
        history.append(jax.tree.map(float, metrics))
    return jax.tree.map(np.asarray, state.params), history


def single_device_mesh():
    return sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:1])


def test_sharded_step_equals_single_device_step(breakout_windows):
    batches = [batch_of(breakout_windows, 0), batch_of(breakout_windows, 8)]
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    sharded = Trainer(tiny_config({"data": 2, "fsdp": 2, "tensor": 2}), mesh)

    state = sharded.init(seed=0)
    query = state.params["transformer"]["blocks"][0]["attn"]["query"]["kernel"][...]
    assert query.sharding.spec == PartitionSpec("fsdp", "tensor")
    assert len(query.addressable_shards) == 8 and query.addressable_shards[0].data.shape == (32, 32)
    assert sharded.abstract_state.params["transformer"]["blocks"][0]["attn"]["query"]["kernel"].sharding == query.sharding

    sharded_params, sharded_history = run_steps(sharded, batches)
    single_params, single_history = run_steps(Trainer(tiny_config({"data": 1, "fsdp": 1, "tensor": 1}), single_device_mesh()), batches)
    for sharded_metrics, single_metrics in zip(sharded_history, single_history):
        assert sharded_metrics.keys() == single_metrics.keys()
        for name in single_metrics:
            np.testing.assert_allclose(sharded_metrics[name], single_metrics[name], rtol=2e-5, atol=1e-6, err_msg=name)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-6), sharded_params, single_params)


def test_gradient_accumulation_equals_one_big_batch(breakout_windows):
    mesh = sharding.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
    batches = [batch_of(breakout_windows, 0)]
    # Without dropout, two micro-batches of 4 give the gradient of one batch of 8.
    whole_params, whole_history = run_steps(Trainer(tiny_config({"data": -1}, dropout_rate=0.0), mesh), batches)
    accumulated = Trainer(tiny_config({"data": -1}, dropout_rate=0.0, grad_accum_steps=2), mesh)
    accumulated_params, accumulated_history = run_steps(accumulated, batches)
    for name in ("loss", "grad_norm", "action_accuracy"):
        np.testing.assert_allclose(accumulated_history[0][name], whole_history[0][name], rtol=1e-5, err_msg=name)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), accumulated_params, whole_params)


def test_loss_falls_when_overfitting_real_frames(breakout_windows):
    mesh = sharding.make_mesh({"data": 2, "fsdp": 4, "tensor": 1})
    trainer = Trainer(tiny_config({"data": 2, "fsdp": 4, "tensor": 1}), mesh)
    batch = trainer.shard_batch(batch_of(breakout_windows, 0))
    state = trainer.init(seed=0)
    losses = []
    for _ in range(40):
        state, metrics = trainer.step(state, batch)
        losses.append(float(metrics["loss"]))
    assert int(state.step) == 40
    assert np.isfinite(losses).all()
    assert losses[-1] < 0.5 * losses[0], losses
    assert float(metrics["learning_rate"]) == pytest.approx(1e-3)


def test_mesh_sizes_resolve_and_bad_sizes_are_named():
    assert sharding.mesh_shape({"data": -1, "fsdp": 2, "tensor": 1}, 8) == (4, 2, 1)
    assert sharding.make_mesh({"data": 2, "fsdp": -1, "tensor": 2}).shape == {"data": 2, "fsdp": 2, "tensor": 2}
    with pytest.raises(ValueError, match="does not divide 8 devices"):
        sharding.mesh_shape({"data": 3, "fsdp": -1, "tensor": 1}, 8)
    with pytest.raises(ValueError, match="at most one"):
        sharding.mesh_shape({"data": -1, "fsdp": -1, "tensor": 1}, 8)
    with pytest.raises(ValueError, match="uses 4 of 8"):
        sharding.mesh_shape({"data": 2, "fsdp": 2, "tensor": 1}, 8)


def test_global_batch_is_split_over_data_and_fsdp(breakout_windows):
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    batch = sharding.global_batch(batch_of(breakout_windows, 0), mesh)
    observations = batch["observations"]
    assert observations.shape == (BATCH, 4, 84, 84, 1)
    assert observations.sharding.spec == PartitionSpec(("data", "fsdp"))
    assert {shard.data.shape[0] for shard in observations.addressable_shards} == {BATCH // 4}
    np.testing.assert_array_equal(np.asarray(observations), breakout_windows["observations"][:BATCH])
