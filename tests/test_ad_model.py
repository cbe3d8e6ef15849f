"""Algorithm Distillation: KV-cache decoding, the model, training windows and in-context evaluation."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from mgdt_jax.core.transformer import Transformer
from mgdt_jax.recipes.ad import evaluate
from mgdt_jax.recipes.ad.data import TrainingWindows
from mgdt_jax.recipes.ad.model import ADModelConfig, AlgorithmDistillation, loss_and_metrics
from mgdt_jax.envs.bandit import BernoulliBandit, regret as pseudo_regret
from mgdt_jax.recipes.ad import sources
from mgdt_jax.recipes.ad.histories import Histories

TWO_ARMED = BernoulliBandit(num_arms=2)


def banded_causal_mask(length: int, window: int) -> jax.Array:
    """key <= query < key + window: what a sliding KV cache of `window` tokens computes."""
    index = jnp.arange(length)
    return (index[None, :] <= index[:, None]) & (index[None, :] > index[:, None] - window)


@pytest.mark.parametrize("alibi, tokens_per_call", [(True, 1), (True, 3), (False, 1)])
def test_kv_cache_decoding_equals_the_full_pass_before_and_after_the_cache_wraps(alibi, tokens_per_call):
    decoder = Transformer(num_layers=2, d_model=32, num_heads=4, mlp_ratio=4, dropout_rate=0.1, alibi=alibi,
                          rngs=nnx.Rngs(0))
    batch, window, calls = 2, 7, 9  # 9 calls x up to 3 tokens: the 9-token cache wraps several times
    length = calls * tokens_per_call
    tokens = jax.random.normal(jax.random.key(1), (batch, length, 32))
    full_pass = nnx.jit(lambda decoder, tokens, mask: decoder(tokens, mask, deterministic=True))
    full = full_pass(decoder, tokens, jnp.broadcast_to(banded_causal_mask(length, window), (batch, length, length)))
    cache = decoder.init_cache(batch, window + tokens_per_call - 1)
    decode = nnx.jit(lambda decoder, chunk, positions, cache: decoder.decode(chunk, positions, cache, window=window))
    decoded = []
    for call in range(calls):
        positions = jnp.broadcast_to(jnp.arange(tokens_per_call) + call * tokens_per_call, (batch, tokens_per_call))
        chunk = tokens[:, call * tokens_per_call:(call + 1) * tokens_per_call]
        hidden, cache = decode(decoder, chunk, positions, cache)
        decoded.append(hidden)
    decoded = jnp.concatenate(decoded, axis=1)
    np.testing.assert_allclose(decoded, full, atol=2e-5)
    # Before the window slides, the banded pass is the plain causal pass a training window sees.
    causal = full_pass(decoder, tokens[:, :window], jnp.tril(jnp.ones((batch, window, window), bool)))
    np.testing.assert_allclose(decoded[:, :window], causal, atol=2e-5)


def test_decode_rejects_a_window_the_cache_cannot_hold():
    decoder = Transformer(num_layers=1, d_model=16, num_heads=2, mlp_ratio=2, dropout_rate=0.0, rngs=nnx.Rngs(0))
    cache = decoder.init_cache(1, 4)
    with pytest.raises(ValueError, match="window 5 out of range"):
        decoder.decode(jnp.zeros((1, 1, 16)), jnp.zeros((1, 1), jnp.int32), cache, window=5)


def stream_batch(length: int, config: ADModelConfig, seed: int) -> dict[str, jax.Array]:
    rng = np.random.default_rng(seed)
    return {
        "observations": jnp.asarray(rng.integers(0, config.num_observations, (2, length)), jnp.int32),
        "actions": jnp.asarray(rng.integers(0, config.num_actions, (2, length)), jnp.int32),
        "rewards": jnp.asarray(rng.random((2, length)) < 0.3, jnp.float32),
        "previous_action": jnp.full((2,), config.num_actions, jnp.int32),
        "previous_reward": jnp.zeros((2,), jnp.float32),
    }


@pytest.mark.parametrize("token_layout, observation_embedding",
                         [("joint", "table"), ("separate", "table"), ("joint", "coordinates")])
def test_model_step_equals_the_training_pass_and_its_sliding_window(token_layout, observation_embedding):
    config = ADModelConfig(num_observations=18, num_actions=3, context_steps=5, token_layout=token_layout,
                           observation_embedding=observation_embedding, grid_size=3, num_layers=2, d_model=32,
                           num_heads=2)
    model = AlgorithmDistillation(config, rngs=nnx.Rngs(0))
    length = 13  # past the 5-step context: the cache slides
    batch = stream_batch(length, config, seed=0)
    cache = model.init_cache(2)
    model_step = nnx.jit(lambda model, *inputs: model.step(*inputs))
    stepped = []
    for step in range(length):
        previous_action = batch["actions"][:, step - 1] if step else batch["previous_action"]
        previous_reward = batch["rewards"][:, step - 1] if step else batch["previous_reward"]
        logits, cache = model_step(model, cache, batch["observations"][:, step], previous_action, previous_reward,
                                   jnp.int32(step))
        stepped.append(logits)
    stepped = jnp.stack(stepped, axis=1)  # [2, length, A]

    # Within the first context the cache holds what a training window starting there shows.
    window = {key: value[:, :config.context_steps] if value.ndim == 2 else value for key, value in batch.items()}
    training = nnx.jit(lambda model, batch: model(batch, deterministic=True))(model, window)["action_logits"]
    np.testing.assert_allclose(stepped[:, :config.context_steps], training, atol=2e-5)

    # Over the whole stream: the training computation with attention limited to config.window tokens.
    @nnx.jit
    def sliding_pass(model, batch):
        tokens = model.embed(batch)
        length = tokens.shape[1]
        mask = jnp.broadcast_to(banded_causal_mask(length, config.window), (2, length, length))
        return model.action_head(model.transformer(tokens, mask, deterministic=True)[:, ::config.tokens_per_step])

    np.testing.assert_allclose(stepped, sliding_pass(model, batch), atol=2e-5)


@pytest.mark.parametrize("token_layout", ["joint", "separate"])
def test_an_action_never_informs_its_own_prediction_or_earlier_ones(token_layout):
    config = ADModelConfig.from_config({"num_observations": 9, "num_actions": 3, "context_steps": 6,
                                        "token_layout": token_layout, "d_model": 32})
    model = AlgorithmDistillation(config, rngs=nnx.Rngs(0))
    batch = stream_batch(6, config, seed=1)
    changed = dict(batch, actions=batch["actions"].at[:, 3].set((batch["actions"][:, 3] + 1) % 3),
                   rewards=batch["rewards"].at[:, 3].set(5.0))
    forward = nnx.jit(lambda model, batch: model(batch, deterministic=True)["action_logits"])
    before, after = forward(model, batch), forward(model, changed)
    np.testing.assert_array_equal(before[:, :4], after[:, :4])
    assert not np.allclose(before[:, 4:], after[:, 4:])


def test_coordinate_embeddings_move_alike_along_every_row_and_column():
    """A step right changes the embedding by the same vector in every row (and a step down in every
    column), for either phase: what a held-out goal's cell shares with the training goals' cells."""
    config = ADModelConfig(num_observations=2 * 25, num_actions=5, observation_embedding="coordinates", grid_size=5)
    model = AlgorithmDistillation(config, rngs=nnx.Rngs(0))
    rows, columns, phases = np.meshgrid(np.arange(5), np.arange(5), np.arange(2), indexing="ij")
    embedded = np.asarray(model._observation(jnp.asarray(phases * 25 + rows * 5 + columns)))  # [row, column, phase, D]
    right, down = np.diff(embedded, axis=1), np.diff(embedded, axis=0)
    np.testing.assert_allclose(right, np.broadcast_to(right[:1, :, :1], right.shape), atol=1e-6)
    np.testing.assert_allclose(down, np.broadcast_to(down[:, :1, :1], down.shape), atol=1e-6)
    assert np.linalg.norm(right) > 0 and np.linalg.norm(down) > 0
    table = AlgorithmDistillation(dataclasses.replace(config, observation_embedding="table"), rngs=nnx.Rngs(0))
    table_right = np.diff(np.asarray(table._observation(jnp.asarray(phases * 25 + rows * 5 + columns))), axis=1)
    assert not np.allclose(table_right, np.broadcast_to(table_right[:1, :, :1], table_right.shape), atol=1e-3)


def test_model_config_rejects_unknown_choices():
    with pytest.raises(ValueError, match="token_layout 'pairs'"):
        ADModelConfig(num_observations=1, num_actions=2, token_layout="pairs")
    with pytest.raises(ValueError, match="positions 'learned'"):
        ADModelConfig(num_observations=1, num_actions=2, positions="learned")
    with pytest.raises(ValueError, match="observation_embedding 'coordinates' needs a grid world"):
        ADModelConfig(num_observations=10, num_actions=2, observation_embedding="coordinates")


def train(model: AlgorithmDistillation, windows: TrainingWindows, steps: int, learning_rate: float = 3e-3) -> list[float]:
    optimizer = nnx.Optimizer(model, optax.adam(learning_rate), wrt=nnx.Param)

    @nnx.jit
    def train_step(model, optimizer, batch, key):
        def loss_fn(model):
            return loss_and_metrics(model(batch, deterministic=False, dropout_key=key), batch)

        (loss, metrics), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
        optimizer.update(model, grads)
        return metrics

    losses = []
    for step in range(steps):
        metrics = train_step(model, optimizer, windows.batch(step), jax.random.key(step))
        losses.append(float(metrics["action_loss"]))
    return losses


@pytest.fixture(scope="module")
def two_armed_histories() -> Histories:
    """Thompson sampling on 2048 two-armed bandits, 24 pulls each."""
    thompson = sources.make_source("thompson")
    tasks = TWO_ARMED.sample_tasks(jax.random.key(0), 2048)
    return sources.to_histories(sources.rollout(TWO_ARMED, thompson, tasks, seed=0, num_episodes=24), TWO_ARMED, thompson)


@pytest.fixture(scope="module")
def trained_two_armed(two_armed_histories):
    config = ADModelConfig(num_observations=1, num_actions=2, context_steps=24, num_layers=1, d_model=32,
                           num_heads=2, dropout_rate=0.0)
    model = AlgorithmDistillation(config, rngs=nnx.Rngs(0))
    windows = TrainingWindows(two_armed_histories, context_steps=24, global_batch_size=64, seed=0)
    losses = train(model, windows, steps=120)
    return model, losses


def test_loss_falls_on_thompson_sampling_histories(trained_two_armed):
    _, losses = trained_two_armed
    assert np.mean(losses[-10:]) < 0.85 * np.mean(losses[:3]), losses


def window_histories(num_histories: int = 5, episodes: int = 6, episode_length: int = 4) -> Histories:
    """Histories whose observation at (h, t) is h * T + t, so a window tells where it was cut."""
    steps = episodes * episode_length
    rng = np.random.default_rng(0)
    return Histories(
        observations=(np.arange(num_histories)[:, None] * steps + np.arange(steps)).astype(np.int32),
        actions=rng.integers(0, 3, (num_histories, steps)).astype(np.int32),
        rewards=rng.random((num_histories, steps)).astype(np.float32),
        task_ids=np.arange(num_histories, dtype=np.int32),
        env_name="toy",
        episode_length=episode_length,
        num_actions=3,
        num_observations=num_histories * steps,
        source="random",
        metadata={},
    )


def test_training_windows_are_contiguous_slices_of_one_history_with_their_previous_step():
    histories = window_histories()
    steps = histories.observations.shape[1]
    windows = TrainingWindows(histories, context_steps=8, global_batch_size=16, seed=3)
    starts = []
    for k in range(40):
        batch = windows.batch(k)
        assert batch["observations"].shape == (16, 8) and batch["previous_action"].shape == (16,)
        history, start = np.divmod(batch["observations"][:, 0], steps)
        np.testing.assert_array_equal(batch["observations"], batch["observations"][:, :1] + np.arange(8))
        np.testing.assert_array_equal(batch["actions"], histories.actions[history[:, None], start[:, None] + np.arange(8)])
        np.testing.assert_array_equal(batch["previous_action"],
                                      np.where(start == 0, 3, histories.actions[history, np.maximum(start - 1, 0)]))
        np.testing.assert_array_equal(batch["previous_reward"],
                                      np.where(start == 0, 0.0, histories.rewards[history, np.maximum(start - 1, 0)]))
        starts.extend(start.tolist())
    assert set(starts) == set(range(steps - 8 + 1))  # every placement occurs, the two ends included


def test_training_batches_are_a_function_of_seed_and_step_and_hosts_split_them():
    histories = window_histories()
    windows = TrainingWindows(histories, context_steps=8, global_batch_size=8, seed=1)
    again = TrainingWindows(histories, context_steps=8, global_batch_size=8, seed=1)
    for key in ("observations", "actions", "rewards", "previous_action", "previous_reward"):
        np.testing.assert_array_equal(windows.batch(5)[key], again.batch(5)[key])
    assert not np.array_equal(windows.batch(5)["observations"], windows.batch(6)["observations"])
    assert not np.array_equal(windows.batch(5)["observations"],
                              TrainingWindows(histories, context_steps=8, global_batch_size=8, seed=2).batch(5)["observations"])
    resumed = next(windows.iterate(start_step=5))
    np.testing.assert_array_equal(resumed["observations"], windows.batch(5)["observations"])
    parts = [TrainingWindows(histories, context_steps=8, global_batch_size=8, seed=1, process_index=p,
                             process_count=4).batch(5)["observations"] for p in range(4)]
    assert all(part.shape == (2, 8) for part in parts)
    np.testing.assert_array_equal(np.concatenate(parts), windows.batch(5)["observations"])


def test_training_windows_reject_bad_contexts_with_one_line_errors():
    histories = window_histories()  # 4-step episodes, 24 steps per history
    with pytest.raises(ValueError, match=r"context_steps 3 is shorter than one toy episode \(4 steps\)"):
        TrainingWindows(histories, context_steps=3, global_batch_size=4, seed=0)
    with pytest.raises(ValueError, match="context_steps 25 is longer than the 24 steps"):
        TrainingWindows(histories, context_steps=25, global_batch_size=4, seed=0)
    with pytest.raises(ValueError, match="does not split evenly over 3 host"):
        TrainingWindows(histories, context_steps=8, global_batch_size=4, seed=0, process_count=3)
    with pytest.raises(ValueError, match="tail_episodes 7 outside 1..6"):
        TrainingWindows(histories, context_steps=8, global_batch_size=4, seed=0, tail_episodes=7)


def test_tail_episodes_cut_windows_from_the_converged_end_only():
    histories = window_histories()
    windows = TrainingWindows(histories, context_steps=8, global_batch_size=32, seed=0, tail_episodes=3)
    first_steps = windows.batch(0)["observations"][:, 0] % histories.observations.shape[1]
    assert first_steps.min() >= 24 - 12 and first_steps.max() <= 24 - 8


def test_in_context_loop_runs_every_task_in_one_compiled_loop(trained_two_armed):
    model, _ = trained_two_armed
    tasks = TWO_ARMED.sample_tasks(jax.random.key(7), 64)
    run = evaluate.evaluate_in_context(model, TWO_ARMED, tasks, num_episodes=30, seed=0, greedy=True,
                                       regret=pseudo_regret, name="AD argmax")
    assert run.returns.shape == (64, 30) and set(np.unique(run.returns)) <= {0.0, 1.0}
    assert run.regret.shape == (64, 30) and (np.diff(run.regret, axis=1) >= -1e-9).all()
    assert run.env_steps_per_s > 0 and run.compile_s > 0
    again = evaluate.evaluate_in_context(model, TWO_ARMED, tasks, num_episodes=30, seed=0, greedy=True,
                                         regret=pseudo_regret)
    np.testing.assert_array_equal(again.regret, run.regret)


def test_frozen_ad_trained_on_thompson_sampling_beats_random_in_context(trained_two_armed):
    model, _ = trained_two_armed
    tasks = TWO_ARMED.sample_tasks(jax.random.key(11), 256)
    run = evaluate.evaluate_in_context(model, TWO_ARMED, tasks, num_episodes=24, seed=1, greedy=False,
                                       regret=pseudo_regret)
    random_regret = 24 * float(jnp.mean(jnp.max(tasks.means, axis=1) - jnp.mean(tasks.means, axis=1)))
    assert run.regret[:, -1].mean() < 0.6 * random_regret, (run.regret[:, -1].mean(), random_regret)


def test_in_context_loop_rejects_episodes_of_another_length(trained_two_armed):
    model, _ = trained_two_armed

    class Mislabelled(BernoulliBandit):
        episode_length = 2  # but every pull ends an episode

    tasks = TWO_ARMED.sample_tasks(jax.random.key(0), 2)
    with pytest.raises(ValueError, match="episode_length=2"):
        evaluate.evaluate_in_context(model, Mislabelled(num_arms=2), tasks, num_episodes=2, seed=0, greedy=True)


def test_bootstrap_curve_brackets_the_mean_and_collapses_on_constant_values():
    values = np.random.default_rng(0).normal(size=(200, 3)) + np.array([0.0, 1.0, 2.0])
    curve = evaluate.bootstrap_curve(values)
    assert (curve.low < curve.mean).all() and (curve.mean < curve.high).all()
    assert (curve.high - curve.low < 0.5).all()
    constant = evaluate.bootstrap_curve(np.ones((10, 2)))
    np.testing.assert_allclose([constant.low, constant.high], np.ones((2, 2)))
    with pytest.raises(ValueError, match="tasks >= 1"):
        evaluate.bootstrap_curve(np.ones((0, 2)))


def test_report_has_json_csv_and_png_for_every_run(tmp_path):
    rng = np.random.default_rng(0)
    runs = [
        evaluate.InContextRun("AD argmax", rng.random((8, 5)), np.cumsum(rng.random((8, 5)), axis=1), 1000.0, 1.0),
        evaluate.InContextRun("source", rng.random((8, 5))),
    ]
    path = evaluate.write_report(runs, tmp_path / "report", {"env": "two_armed_bandit"})
    report = json.loads(path.read_text())
    assert set(report["runs"]) == {"AD argmax", "source"}
    assert set(report["runs"]["AD argmax"]["final"]) == {"return", "cumulative_regret"}
    assert set(report["runs"]["source"]["final"]) == {"return"}
    assert len(report["runs"]["source"]["curves"]["return"]["mean"]) == 5
    rows = (tmp_path / "report" / evaluate.CURVES_CSV).read_text().splitlines()
    assert len(rows) == 1 + 5 + 5 + 5
    assert (tmp_path / "report" / evaluate.CURVES_PNG).stat().st_size > 0
    assert not list((tmp_path / "report").glob("*.partial*"))
    with pytest.raises(ValueError, match="distinct"):
        evaluate.write_report([runs[1], runs[1]], tmp_path / "again", {})


def test_a_report_stopped_while_written_leaves_none_of_its_files(tmp_path, monkeypatch):
    # A Ctrl-C while the plot was drawn left curves.csv, finished-looking, beside no report.
    def stopped(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluate, "_plot", stopped)
    runs = [evaluate.InContextRun("source", np.random.default_rng(0).random((8, 5)))]
    with pytest.raises(KeyboardInterrupt):
        evaluate.write_report(runs, tmp_path / "report", {})
    assert list((tmp_path / "report").iterdir()) == []
