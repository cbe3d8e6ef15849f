"""AdA's curriculum: PLR over ruleset ids with no-op filtering, against closed forms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mgdt_jax.recipes.ada import curriculum


def _state():
    """Six tasks; 0, 2, 3 and 5 admitted with priorities 0.2, 0.7, 0.5, 0.1 (ranks 3, 1, 2, 4),
    last updated at steps 10, 10, 4, 0 with c = 10; task 1 below the no-op margin, task 4 solved."""
    state = curriculum.init(6, temperature=0.5, staleness_coef=0.3, replay_prob=0.6, margin=0.1,
                            solved_threshold=0.9)
    state = curriculum.update(state, [5], [0.4], [0.0], step=0, priorities=[0.1])
    state = curriculum.update(state, [3], [0.4], [0.0], step=4, priorities=[0.5])
    return curriculum.update(state, [0, 2, 1, 4], [0.3, 0.5, 0.15, 0.95], [0.0, 0.2, 0.1, 0.0], step=10,
                             priorities=[0.2, 0.7, 0.9, 0.9])


def test_replay_distribution_matches_the_closed_form():
    state = _state()
    np.testing.assert_array_equal(state.admitted, [True, False, True, True, False, True])
    # P_S: h = 1/rank, h^(1/0.5) over ranks (3, 1, 2, 4) of tasks (0, 2, 3, 5)
    h = np.array([1 / 9, 0, 1, 1 / 4, 0, 1 / 16])
    p_rank = h / h.sum()
    # P_C: c - C_i = (0, 0, 6, 10) for tasks (0, 2, 3, 5)
    stale = np.array([0, 0, 0, 6, 0, 10]) / 16
    expected_replay = 0.7 * p_rank + 0.3 * stale
    np.testing.assert_allclose(curriculum.replay_distribution(state), expected_replay, rtol=1e-6, atol=1e-7)
    # explore: uniform over tasks 1 and 4; each draw replays with probability 0.6
    expected = 0.6 * expected_replay + 0.4 * np.array([0, 0.5, 0, 0, 0.5, 0])
    np.testing.assert_allclose(curriculum.probabilities(state), expected, rtol=1e-6, atol=1e-7)
    assert float(curriculum.probabilities(state).sum()) == pytest.approx(1.0, abs=1e-6)


def test_sampling_frequencies_match_the_probabilities():
    state = _state()
    n = 200_000
    ids = np.asarray(jax.jit(curriculum.sample, static_argnums=2)(state, jax.random.key(0), n))
    frequencies = np.bincount(ids, minlength=6) / n
    expected = np.asarray(curriculum.probabilities(state))
    tolerance = 4 * np.sqrt(expected * (1 - expected) / n)  # 4 standard errors
    assert (np.abs(frequencies - expected) <= tolerance).all(), (frequencies, expected)


def test_no_op_filter_admits_only_tasks_beaten_by_a_margin_and_unsolved():
    state = curriculum.init(5, margin=0.1, solved_threshold=0.8, replay_prob=1.0)
    assert float(curriculum.replay_fraction(state)) == 0.0  # nothing admitted: every draw explores
    np.testing.assert_allclose(curriculum.probabilities(state), np.full(5, 0.2))
    state = curriculum.update(state, [0, 1, 2, 3], [0.05, 0.35, 0.5, 0.85], [0.0, 0.3, 0.0, 0.0], step=1)
    np.testing.assert_array_equal(state.admitted, [False, False, True, False, False])
    np.testing.assert_allclose(curriculum.probabilities(state), [0, 0, 1, 0, 0])
    state = curriculum.update(state, [2], [0.81], [0.0], step=2)  # solved: leaves the replay set
    assert not bool(state.admitted.any())
    state = curriculum.update(state, [0], [0.3], [0.0], step=3)  # the agent improved: enters
    np.testing.assert_array_equal(state.admitted, [True, False, False, False, False])


def test_held_out_tasks_are_never_drawn_or_admitted():
    state = curriculum.init(8, train_ids=jnp.array([1, 3, 4, 6]))
    state = curriculum.update(state, [0, 1, 7], [0.5, 0.5, 0.5], [0.0, 0.0, 0.0], step=1)
    np.testing.assert_array_equal(np.flatnonzero(state.admitted), [1])
    ids = np.asarray(curriculum.sample(state, jax.random.key(1), 2000))
    assert set(ids.tolist()) <= {1, 3, 4, 6} and len(set(ids.tolist())) == 4


def test_repeated_ids_are_averaged_and_sampling_is_deterministic():
    state = curriculum.init(4)
    state = curriculum.update(state, jnp.array([2, 2, 1]), jnp.array([0.2, 0.6, 0.3]), jnp.zeros(3), step=5)
    assert float(state.scores[2]) == pytest.approx(0.4)
    assert int(state.step) == 5 and state.last_updated.tolist() == [0, 5, 5, 0]
    update = jax.jit(curriculum.update)
    assert jax.tree.structure(update(state, jnp.array([0]), jnp.array([0.5]), jnp.zeros(1), 6)) == \
        jax.tree.structure(state)
    first = curriculum.sample(state, jax.random.key(3), 64)
    np.testing.assert_array_equal(first, curriculum.sample(state, jax.random.key(3), 64))
    assert not np.array_equal(first, curriculum.sample(state, jax.random.key(4), 64))
    # only arrays are leaves (what a checkpoint saves); the settings are static
    assert all(isinstance(leaf, jax.Array) for leaf in jax.tree.leaves(state))


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="temperature"):
        curriculum.init(3, temperature=0.0)
    with pytest.raises(ValueError, match="replay_prob"):
        curriculum.init(3, replay_prob=1.5)
