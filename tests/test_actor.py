"""The multi-game actor loop on real ALE games: action mapping, episode accounting, scores."""

import jax.numpy as jnp
import numpy as np
from ale_py import roms
from ale_py.vector_env import AtariVectorEnv
from flax import nnx

from mgdt_jax.envs import atari
from mgdt_jax.recipes.mgdt.actor import (
    EvalProtocol,
    action_table,
    episode_seed,
    jpeg_round_trip,
    play,
    rom_name,
    to_minimal_actions,
)
from mgdt_jax.recipes.mgdt.model import ModelConfig
from mgdt_jax.recipes.mgdt.policy import Policy, sampling_preset

SHORT = EvalProtocol("short", sticky_action_probability=0.0, max_episode_frames=400)  # 100 agent steps


class _ConstantAction(nnx.Module):
    """Always the same full-set action (or uniformly random actions with ``action=None``)."""

    def __init__(self, action: int | None):
        self.config = ModelConfig(single_return_token=False)  # returns from step_logits, not the model's parts
        self.action = action

    def step_logits(self, batch, head, steps):
        if head == "return":
            return jnp.zeros((steps.shape[0], 120))
        return jnp.zeros((steps.shape[0], 18)) if self.action is None else 50.0 * jnp.eye(18)[jnp.full(steps.shape, self.action)]


def test_full_actions_map_to_each_games_minimal_set_with_noop_for_missing():
    table = action_table(["Breakout", "Pong"], envs_per_game=2)  # Breakout (0,1,3,4); Pong (0,1,3,4,11,12)
    right, upfire, rightfire = 3, 10, 11
    for full, expected in ((right, [2, 2, 2, 2]), (upfire, [0, 0, 0, 0]), (rightfire, [0, 0, 4, 4])):
        np.testing.assert_array_equal(to_minimal_actions(table, np.full(4, full)), expected)


def test_every_dqn_replay_game_has_an_ale_rom():
    assert all(roms.get_rom_path(rom_name(game)) for game in atari.DQN_REPLAY_GAMES)
    assert rom_name("MsPacman") == "ms_pacman" and rom_name("upndown") == "up_n_down"


def test_scores_match_a_direct_ale_run_with_the_same_mapped_actions():
    rightfire = 11  # Pong's minimal index 4
    [result] = play(Policy(_ConstantAction(rightfire), sampling_preset("target")), ["Pong"], episodes_per_game=1, protocol=SHORT)
    env = AtariVectorEnv("pong", 1, stack_num=1, noop_max=0, reward_clipping=False, use_fire_reset=False,
                         max_num_frames_per_episode=400, repeat_action_probability=0.0)
    env.reset(seed=episode_seed(0, "Pong"))
    total, steps, done = 0.0, 0, False
    while not done:
        _, reward, terminated, truncated, _ = env.step(np.array([4], np.int32))
        total, steps, done = total + reward[0], steps + 1, bool(terminated[0] or truncated[0])
    env.close()
    assert result.scores.tolist() == [total] and result.lengths.tolist() == [steps] == [100]


def test_every_game_plays_exactly_its_episodes_and_runs_repeat_with_a_seed():
    policy = Policy(_ConstantAction(None), sampling_preset("expert"))
    kwargs = dict(episodes_per_game=3, protocol=SHORT, max_envs_per_game=2, seed=7)
    first = play(policy, ["Breakout", "Pong"], **kwargs)
    assert [r.game for r in first] == ["Breakout", "Pong"]
    for result in first:
        assert len(result.scores) == len(result.lengths) == 3
        assert (result.lengths <= 100).all()
    again = play(policy, ["Breakout", "Pong"], **kwargs)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a.scores, b.scores)


def test_notebook_jpeg_round_trip_keeps_frames_close_but_lossy():
    env = AtariVectorEnv("breakout", 2, stack_num=1, noop_max=0, use_fire_reset=False)
    observations, _ = env.reset(seed=0)
    env.close()
    frames = observations.reshape(2, 84, 84, 1)
    decoded = jpeg_round_trip(frames, quality=95)
    assert decoded.shape == frames.shape and decoded.dtype == np.uint8
    difference = np.abs(decoded.astype(int) - frames.astype(int))
    assert 0 < difference.mean() < 2.0
