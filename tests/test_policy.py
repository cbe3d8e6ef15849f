"""Sampling modes against closed-form distributions on fixed logits, and the rolling context."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mgdt_jax.recipes.mgdt import tokens
from experiments import tiny
from mgdt_jax.recipes.mgdt.model import ModelConfig, MultiGameDecisionTransformer
from mgdt_jax.recipes.mgdt.policy import (
    Policy,
    advance_context,
    initial_context,
    keep_above_percentile,
    return_slots,
    sample_actions,
    sample_expert_returns,
    sample_max_returns,
    sampling_preset,
)

NUM_SAMPLES = 40_000
TOLERANCE = 0.015  # ~6 standard deviations of a frequency estimated from 40k samples


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits[np.isfinite(logits)].max())
    return shifted / shifted.sum()


def _frequencies(samples: jax.Array, num_classes: int) -> np.ndarray:
    return np.bincount(np.asarray(samples).ravel(), minlength=num_classes) / np.size(samples)


def _return_logits() -> np.ndarray:
    """Mass on four returns only (-10, 20, 50, 80): probabilities 0.1, 0.2, 0.3, 0.4."""
    logits = np.full(tokens.NUM_RETURNS, -np.inf, np.float32)
    logits[[10, 40, 70, 100]] = np.log([0.1, 0.2, 0.3, 0.4])
    return logits


def _batch(row: np.ndarray) -> jax.Array:
    return jnp.tile(jnp.asarray(row), (NUM_SAMPLES, 1))


def test_expert_with_kappa_zero_reproduces_the_model_return_distribution():
    samples = sample_expert_returns(jax.random.key(0), _batch(_return_logits()), kappa=0.0)
    np.testing.assert_allclose(_frequencies(samples, 120), _softmax(_return_logits()), atol=TOLERANCE)


def test_expert_tilts_returns_by_exp_kappa_times_normalised_return():
    kappa = 3.0
    samples = sample_expert_returns(jax.random.key(1), _batch(_return_logits()), kappa=kappa)
    normalised = (np.arange(120) - 0) / 119  # (R - R_low) / (R_high - R_low) per class
    expected = _softmax(_return_logits() + kappa * normalised)
    np.testing.assert_allclose(_frequencies(samples, 120), expected, atol=TOLERANCE)


def test_expert_with_large_kappa_picks_the_highest_return_with_mass():
    samples = sample_expert_returns(jax.random.key(2), _batch(_return_logits())[:1000], kappa=1e4)
    assert set(np.asarray(samples).tolist()) == {100}  # return 80, the highest class with mass


def test_colab_keeps_the_max_of_128_samples_at_inverse_temperature():
    logits = np.full(tokens.NUM_RETURNS, -np.inf, np.float32)
    logits[[5, 30, 60]] = [4.0, 0.0, -3.0]  # the top return is rare enough that the max varies
    rows = _batch(logits)[:5000]  # 128 draws per row: fewer rows keep it fast
    samples = sample_max_returns(jax.random.key(3), rows, num_samples=128, inverse_temperature=0.75)
    cdf = np.cumsum(_softmax(0.75 * logits))
    expected = np.diff(np.concatenate([[0.0], cdf**128]))  # P(max = k) = F(k)^n - F(k-1)^n
    np.testing.assert_allclose(_frequencies(samples, 120), expected, atol=0.04)
    assert 0.05 < expected[60] < 0.95  # the test distinguishes max-of-128 from a single sample


def test_percentile_filter_keeps_the_top_half_of_18_action_logits():
    logits = np.random.default_rng(0).normal(size=tokens.NUM_ACTIONS).astype(np.float32)
    kept = np.isfinite(np.asarray(keep_above_percentile(jnp.asarray(logits), 50.0)))
    assert kept.sum() == 9 and set(np.flatnonzero(kept)) == set(np.argsort(logits)[9:])
    samples = sample_actions(jax.random.key(4), _batch(logits), sampling_preset("colab"))
    expected = _softmax(np.where(kept, logits, -np.inf))
    np.testing.assert_allclose(_frequencies(samples, 18), expected, atol=TOLERANCE)


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="unknown sampling mode 'greedy'"):
        sampling_preset("greedy")


class _FixedLogits(nnx.Module):
    """A model with fixed return logits whose action reveals the return it is conditioned on.

    Action logits put (almost) all mass on action ``newest return class % 18`` (every step's
    return is visible: no single return token), so the sampled action tells which return the
    policy wrote where. The single-return-token path is checked on the real model below.
    """

    def __init__(self, return_logits: np.ndarray, action_logits: np.ndarray | None = None, **config):
        self.config = ModelConfig(single_return_token=False, **config)
        self.return_logits = nnx.Variable(jnp.asarray(return_logits))
        self.action_logits = None if action_logits is None else nnx.Variable(jnp.asarray(action_logits))

    def step_logits(self, batch, head, steps):
        batch_size = steps.shape[0]
        if head == "return":
            return jnp.broadcast_to(self.return_logits[...], (batch_size, 120))
        if self.action_logits is None:
            return 30.0 * jax.nn.one_hot(batch["returns_to_go"][:, -1] % 18, 18)
        return jnp.broadcast_to(self.action_logits[...], (batch_size, 18))


def _frames(batch_size: int, value: int) -> np.ndarray:
    return np.full((batch_size, 84, 84, 1), value, np.uint8)


def _play(policy: Policy, batch_size: int, steps: int, seed: int = 0):
    context = policy.initial_context(batch_size)
    actions = []
    for t in range(steps):
        starts = np.full(batch_size, t == 0)
        action, context = policy.act(
            context, _frames(batch_size, t + 1), starts, np.zeros(batch_size, np.int32), jax.random.key(seed + t)
        )
        actions.append(np.asarray(action))
    return np.stack(actions), jax.device_get(context)


def test_expert_policy_writes_the_sampled_return_where_the_model_sees_it():
    model = _FixedLogits(_return_logits())
    actions, context = _play(Policy(model, sampling_preset("expert", kappa=1e4)), batch_size=3, steps=5)
    assert (actions == 100 % 18).all()  # every step conditioned on the highest return with mass
    # After 5 steps the window is full and every step kept the return sampled for it.
    assert context["step_mask"].all()
    assert (context["returns_to_go"] == 100).all()
    np.testing.assert_array_equal(context["actions"][:, -1], actions[-1])


def test_target_policy_conditions_on_the_fixed_target_return():
    model = _FixedLogits(_return_logits())
    actions, context = _play(Policy(model, sampling_preset("target", target_return=35)), batch_size=2, steps=2)
    target_class = int(tokens.encode_return(np.asarray(35)))
    assert (actions == target_class % 18).all()
    assert (context["returns_to_go"] == target_class).all()


def test_bc_policy_samples_actions_from_the_model_distribution():
    action_logits = np.log(np.array([0.5, 0.3, 0.2] + [1e-9] * 15, np.float32))
    model = _FixedLogits(_return_logits(), action_logits, behaviour_cloning=True)
    actions, _ = _play(Policy(model, sampling_preset("bc")), batch_size=500, steps=20)  # 10k samples
    np.testing.assert_allclose(_frequencies(actions, 18), _softmax(action_logits), atol=0.03)


def test_modes_must_fit_the_model_kind():
    with pytest.raises(ValueError, match="does not fit a return-conditioned model"):
        Policy(_FixedLogits(_return_logits()), sampling_preset("bc"))
    with pytest.raises(ValueError, match="does not fit a behaviour-cloning model"):
        Policy(_FixedLogits(_return_logits(), behaviour_cloning=True), sampling_preset("expert"))


def test_context_slides_and_masks_steps_before_an_episode_start():
    context = initial_context(2, 4)
    no_reward = jnp.zeros(2, jnp.int32)
    context = advance_context(context, _frames(2, 1), jnp.array([True, True]), no_reward, True)
    context = advance_context(context, _frames(2, 2), jnp.array([False, False]), jnp.array([1, 3]), True)
    np.testing.assert_array_equal(context["step_mask"], [[False, False, True, True]] * 2)
    np.testing.assert_array_equal(context["rewards"][:, 2], [1, 3])  # reward of the step before
    np.testing.assert_array_equal(context["observations"][:, :, 0, 0, 0], [[0, 0, 1, 2]] * 2)
    # Environment 1 starts a new episode: its history is dropped, environment 0 keeps sliding.
    context = advance_context(context, _frames(2, 3), jnp.array([False, True]), no_reward, True)
    np.testing.assert_array_equal(context["step_mask"], [[False, True, True, True], [False, False, False, True]])
    np.testing.assert_array_equal(context["observations"][1, :, 0, 0, 0], [0, 0, 0, 3])


def test_notebook_padding_marks_blank_history_frames_as_real():
    context = advance_context(initial_context(1, 4), _frames(1, 7), jnp.array([True]), jnp.zeros(1, jnp.int32), False)
    assert np.asarray(context["step_mask"]).all()
    np.testing.assert_array_equal(context["observations"][0, :, 0, 0, 0], [0, 0, 0, 7])


def test_visible_frame_return_logits_equal_the_full_forward_pass():
    """The policy's cheap return pass (one frame's 36 tokens) against the model on whole windows."""
    model = MultiGameDecisionTransformer(tiny.get_config().model, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    context = {
        "observations": jnp.asarray(rng.integers(0, 256, (8, 4, 84, 84, 1), dtype=np.uint8)),
        "returns_to_go": jnp.asarray(rng.integers(0, 120, (8, 4)), jnp.int32),
        "actions": jnp.asarray(rng.integers(0, 18, (8, 4)), jnp.int32),
        "rewards": jnp.asarray(rng.choice([0, 1, 3], (8, 4)), jnp.int32),
        # 1, 2, 3 and 4 real steps after left padding, twice.
        "step_mask": jnp.asarray(np.array([[0, 0, 0, 1], [0, 0, 1, 1], [0, 1, 1, 1], [1, 1, 1, 1]] * 2, bool)),
    }
    slots = return_slots(context["step_mask"], single_return_token=True)
    np.testing.assert_array_equal(slots, [3, 2, 1, 0] * 2)
    full = nnx.jit(lambda m, c: m(c, deterministic=True)["return_logits"])(model, context)[jnp.arange(8), slots]
    fast = nnx.jit(lambda m, c, s: m.visible_frame_return_logits(c, s))(model, context, slots)
    np.testing.assert_allclose(fast, full, atol=1e-5)


def test_a_report_lists_only_the_settings_its_sampling_mode_reads():
    # A colab report recorded kappa = 10, read as if expert inference's weighting had been applied.
    from mgdt_jax.recipes.mgdt.policy import sampling_preset

    common = {"mode", "action_top_percentile", "action_inverse_temperature", "mask_episode_start"}
    assert set(sampling_preset("expert", kappa=3.0).settings()) == common | {"kappa"}
    assert sampling_preset("expert", kappa=3.0).settings()["kappa"] == 3.0
    assert set(sampling_preset("colab").settings()) == common | {"num_return_samples", "return_inverse_temperature"}
    assert set(sampling_preset("target").settings()) == common | {"target_return"}
    assert set(sampling_preset("bc").settings()) == common
