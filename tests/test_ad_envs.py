"""JAX-native AD environments against closed forms and their specifications."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mgdt_jax import envs
from mgdt_jax.envs import EnvError, bandit, grid

NOOP, UP, DOWN, LEFT, RIGHT = range(5)


def _episode_returns(env, tasks, keys, policy):
    """Return of one episode per (task, key), policy(task, observation, key) -> action."""

    def one(task, key):
        reset_key, steps_key = jax.random.split(key)
        state, observation = env.reset(task, reset_key)

        def step(carry, key):
            state, observation = carry
            action_key, env_key = jax.random.split(key)
            state, observation, reward, _ = env.step(task, state, policy(task, observation, action_key), env_key)
            return (state, observation), reward

        _, rewards = jax.lax.scan(step, (state, observation), jax.random.split(steps_key, env.episode_length))
        return rewards.sum()

    return np.asarray(jax.jit(jax.vmap(one))(tasks, keys))


def _optimal_policy(env):
    return lambda task, observation, key: env.optimal_action(task, observation)


def _random_policy(env):
    return lambda task, observation, key: jax.random.randint(key, (), 0, env.num_actions)


def _play(env, task, actions, key=jax.random.key(0)):
    state, observation = env.reset(task, key)
    trace = [(int(observation), 0.0, False)]
    for action in actions:
        state, observation, reward, done = env.step(task, state, jnp.int32(action), key)
        trace.append((int(observation), float(reward), bool(done)))
    return trace, state


def test_darkroom_optimal_return_is_16_54_over_the_81_goals():
    env = envs.get("darkroom")
    goals = env.all_tasks()
    closed_form = np.asarray(jax.vmap(env.optimal_return)(goals))
    # Manhattan distance d from the centre: 20 - d + 1 goal steps (20 for the centre itself).
    distance = np.abs(np.arange(9)[:, None] - 4) + np.abs(np.arange(9)[None, :] - 4)
    np.testing.assert_array_equal(closed_form, np.where(distance == 0, 20, 21 - distance).ravel())
    assert closed_form.mean() == pytest.approx(16.54, abs=0.005)
    assert (closed_form.min(), closed_form.max()) == (13, 20)
    played = _episode_returns(env, goals, jax.random.split(jax.random.key(0), 81), _optimal_policy(env))
    np.testing.assert_array_equal(played, closed_form)


def test_darkroom_random_policy_returns_a_quarter():
    env = envs.get("darkroom")
    per_goal = 200
    goals = jax.tree.map(lambda leaf: jnp.repeat(leaf, per_goal, axis=0), env.all_tasks())
    returns = _episode_returns(env, goals, jax.random.split(jax.random.key(1), 81 * per_goal), _random_policy(env))
    # Exactly 20 / 81 in expectation: whatever the walk, it stands on one of the 81 goals per step.
    standard_error = returns.std() / np.sqrt(returns.size)
    assert returns.mean() == pytest.approx(20 / 81, abs=4 * standard_error)
    assert returns.mean() == pytest.approx(0.25, abs=0.03)


def test_darkroom_moves_and_pays_on_every_goal_step():
    env = envs.get("darkroom")
    task = env.all_tasks()
    task = jax.tree.map(lambda leaf: leaf[3 * 9 + 4], task)  # goal one row above the centre
    trace, _ = _play(env, task, [LEFT, RIGHT, UP, NOOP, UP, DOWN] + [NOOP] * 14)
    observations, rewards, dones = zip(*trace)
    assert observations[:7] == (40, 39, 40, 31, 31, 22, 31)  # row * 9 + column, start at the centre
    assert rewards[1:7] == (0.0, 0.0, 1.0, 1.0, 0.0, 1.0)
    assert sum(rewards) == 17.0 and dones[-1] and not any(dones[:-1])
    corner = jax.tree.map(lambda leaf: leaf[0], env.all_tasks())
    trace, _ = _play(env, corner, [UP] * 6 + [LEFT] * 6)
    assert [o for o, _, _ in trace][4:7] == [4, 4, 4] and trace[-1][0] == 0  # walls stop the agent


def test_darkroom_hard_pays_once_then_absorbs():
    env = envs.get("darkroom_hard")
    assert (env.size, env.episode_length, env.num_observations) == (17, 20, 17 * 17 + 1)
    task = jax.tree.map(lambda leaf: leaf[8 * 17 + 9], env.all_tasks())  # right of the centre
    trace, state = _play(env, task, [RIGHT, NOOP, LEFT, RIGHT] + [NOOP] * 16)
    assert [r for _, r, _ in trace] == [0.0, 1.0] + [0.0] * 19
    assert [o for o, _, _ in trace][1:] == [17 * 17] * 20 and bool(env.terminated(state))
    goals = env.all_tasks()
    played = _episode_returns(env, goals, jax.random.split(jax.random.key(0), 289), _optimal_policy(env))
    np.testing.assert_array_equal(played, np.asarray(jax.vmap(env.optimal_return)(goals)))
    assert played.min() == 1.0  # every goal is within 20 steps of the centre


def test_key_to_door_needs_the_key_first():
    env = envs.KEY_TO_DOOR.__class__(random_start=False)
    cells = env.num_cells
    task = envs.key_to_door.KeyDoorTask(jnp.int32(0), jnp.array([4, 5]), jnp.array([4, 3]))  # key right, door left
    trace, state = _play(env, task, [LEFT, RIGHT, RIGHT, LEFT, LEFT, LEFT, NOOP])
    observations, rewards, _ = zip(*trace)
    assert rewards == (0.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0)  # the door pays only once the key is held
    assert observations[:5] == (40, 39, 40, 41 + cells, 40 + cells) and observations[5:] == (2 * cells,) * 3
    assert bool(env.terminated(state)) and env.episode_length == 50


def test_key_to_door_optimal_return_and_random_start():
    env = envs.get("key_to_door")
    tasks = env.sample_tasks(jax.random.key(0), 512)
    assert np.all(np.asarray(tasks.key != tasks.door).any(-1))
    keys = jax.random.split(jax.random.key(1), 512)
    played = _episode_returns(env, tasks, keys, _optimal_policy(env))
    np.testing.assert_array_equal(played, np.asarray(jax.vmap(env.optimal_return)(tasks)))
    assert played.min() == 2.0
    starts = jax.vmap(lambda k: env.reset(jax.tree.map(lambda leaf: leaf[0], tasks), k)[1])(keys)
    assert len(np.unique(np.asarray(starts))) > 60  # uniform over the 81 cells, not the centre


@pytest.mark.parametrize("name", ["darkroom", "darkroom_hard", "key_to_door"])
def test_grid_task_splits_are_disjoint_and_fixed_by_the_seed(name):
    env = envs.get(name)
    train, heldout = env.task_split(seed=0)
    total = int(env.all_tasks().id.shape[0])
    assert len(train.id) + len(heldout.id) == total
    assert len(heldout.id) == round(0.2 * total)
    assert not set(np.asarray(train.id).tolist()) & set(np.asarray(heldout.id).tolist())
    again, heldout_again = env.task_split(seed=0, num_train=10)
    np.testing.assert_array_equal(again.id, train.id[:10])
    np.testing.assert_array_equal(heldout_again.id, heldout.id)  # the held-out side ignores num_train
    assert not np.array_equal(env.task_split(seed=1)[1].id, heldout.id)
    with pytest.raises(EnvError, match="overlaps"):
        env.task_split(seed=0, num_train=total - 3, num_heldout=4)


def test_darkroom_split_is_65_train_16_heldout_goals():
    train, heldout = envs.get("darkroom").task_split(seed=0)
    assert (len(train.id), len(heldout.id)) == (65, 16)
    np.testing.assert_array_equal(train.goal, np.stack([train.id // 9, train.id % 9], axis=1))


def test_bandit_rewards_and_regret():
    env = envs.get("bandit")
    assert (env.num_actions, env.num_observations, env.episode_length) == (10, 1, 1)
    tasks = env.sample_tasks(jax.random.key(0), 4096)
    means = np.asarray(tasks.means)
    assert means.min() >= 0 and means.max() <= 1 and means.mean() == pytest.approx(0.5, abs=0.01)
    # A uniform-random pull's expected regret: E[max of 10 uniforms] - E[mean] = 10/11 - 1/2.
    random_regret = jax.vmap(lambda task: bandit.regret(task, jnp.arange(10)).mean())(tasks)
    assert float(random_regret.mean()) == pytest.approx(10 / 11 - 0.5, abs=0.01)
    best = jax.vmap(lambda task: bandit.regret(task, env.optimal_action(task, jnp.int32(0))))(tasks)
    assert float(jnp.abs(best).max()) == 0.0
    task = jax.tree.map(lambda leaf: leaf[0], tasks)
    state, _ = env.reset(task, jax.random.key(0))
    pulls = jax.vmap(lambda k: env.step(task, state, jnp.int32(3), k))(jax.random.split(jax.random.key(1), 20000))
    assert float(pulls[2].mean()) == pytest.approx(float(task.means[3]), abs=0.015)
    assert bool(pulls[3].all()) and bool(env.terminated(pulls[0]).all())


def test_adversarial_bandit_favours_odd_arms_in_training_and_even_arms_held_out():
    env = envs.get("adversarial_bandit")
    train, heldout = env.task_split(seed=0, num_train=4000, num_heldout=4000)
    for tasks, odd_share in ((train, 0.95), (heldout, 0.05)):
        means = np.asarray(tasks.means)
        odd_high = np.sort(means[:, 1::2], 1)[:, 0] >= np.sort(means[:, 0::2], 1)[:, -1]
        even_high = np.sort(means[:, 0::2], 1)[:, 0] >= np.sort(means[:, 1::2], 1)[:, -1]
        assert np.all(odd_high | even_high)  # one parity holds the 5 largest means
        assert odd_high.mean() == pytest.approx(odd_share, abs=0.015)
        assert means.mean() == pytest.approx(0.5, abs=0.01)
    assert np.asarray(heldout.id).min() == bandit.HELDOUT_ID_BASE
    first = env.task_split(seed=0, num_train=10)[0]
    np.testing.assert_array_equal(first.means, train.means[:10])  # a longer draw extends a shorter one


def test_environments_vmap_over_thousands_of_tasks():
    for env in envs.ENVS.values():
        tasks = env.sample_tasks(jax.random.key(0), 4096)
        keys = jax.random.split(jax.random.key(1), 4096)
        states, observations = jax.vmap(env.reset)(tasks, keys)
        out = jax.jit(jax.vmap(env.step))(tasks, states, jnp.zeros(4096, jnp.int32), keys)
        assert out[1].shape == out[2].shape == (4096,) and out[1].dtype == jnp.int32
        assert int(out[1].max()) < env.num_observations and out[2].dtype == jnp.float32


def test_unknown_environment_is_a_one_line_error():
    with pytest.raises(EnvError, match="unknown environment 'gridworld'; known: bandit"):
        envs.get("gridworld")
    assert grid.ACTION_NAMES == ("noop", "up", "down", "left", "right")
