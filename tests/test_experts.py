"""Scripted experts and per-episode epsilon mixing in mgdt-record: what the data's quality rests on."""

import numpy as np
import pytest

from data_pipelines import experts, record, replay_logs
from mgdt_jax.envs import atari


def _mean_score(game, policy, tmp_path, cap, episodes=2):
    report = record.record(game, steps=cap * episodes, out=tmp_path / policy, capacity=cap * episodes + 10,
                           max_episode_steps=cap, policy=policy, seed=5, progress=False)
    assert report.episodes_finished >= 1
    return float(np.mean(report.episode_returns))


# (game, capped episode length in agent steps, minimal margin over random in points per episode; Boxing
# needs its first ~150 steps to close in on the opponent)
@pytest.mark.parametrize("game,cap,margin", [("Pong", 400, 3.0), ("Breakout", 300, 3.0), ("Freeway", 300, 2.0),
                                                  ("Boxing", 600, 10.0), ("DemonAttack", 600, 50.0),
                                                  ("SpaceInvaders", 600, 30.0), ("Enduro", 600, 4.0)])
def test_each_expert_beats_random_play_clearly(game, cap, margin, tmp_path):
    expert, random = _mean_score(game, "expert", tmp_path, cap), _mean_score(game, "random", tmp_path, cap)
    assert expert >= random + margin, (game, expert, random)


def test_epsilon_is_drawn_per_episode_from_the_schedule(tmp_path):
    report = record.record("Freeway", steps=600, out=tmp_path, capacity=700, max_episode_steps=100,
                           policy="expert", seed=0, progress=False, epsilon="linear:1.0:0.0")
    # An episode's epsilon is set at its start from the share of the run already played.
    np.testing.assert_allclose(report.episode_epsilons, [1 - k / 6 for k in range(6)])

    alternating = record.record("Freeway", steps=400, out=tmp_path / "cycle", capacity=500, max_episode_steps=100,
                                policy="expert", seed=0, progress=False, epsilon="cycle:0,1")
    assert alternating.episode_epsilons == [0, 1, 0, 1]
    up = experts.action_index("Freeway", "UP")
    logged = list(replay_logs.read_run(alternating.log_dir, max_episode_steps=100))
    up_share = [float(np.mean(episode.actions == up)) for episode in logged]
    assert up_share[0] == up_share[2] == 1.0  # the expert alone always walks up
    assert all(0.15 < share < 0.55 for share in up_share[1::2])  # uniform over 3 actions


def test_schedule_specs():
    assert experts.parse_epsilon_schedule("0.25")(7, 0.9) == 0.25
    assert experts.parse_epsilon_schedule("linear:0.5:0.1")(3, 0.5) == pytest.approx(0.3)
    assert [experts.parse_epsilon_schedule("cycle:1,0.5,0")(k, 0.0) for k in range(4)] == [1, 0.5, 0, 1]


@pytest.mark.parametrize("args,message", [
    (["--policy", "greedy"], "unknown policy 'greedy': expected one of expert, random"),
    (["--policy", "expert", "--game", "Alien"], "no scripted expert for Alien: experts exist for Boxing, Breakout, DemonAttack, Enduro, Freeway, Pong, SpaceInvaders"),
    (["--epsilon-schedule", "linear:1.5:0"], "epsilon schedule 'linear:1.5:0': 1.5 is outside [0, 1]"),
    (["--epsilon", "often"], "epsilon schedule 'often': 'often' is not a number"),
    (["--epsilon-schedule", "steps:1:0"], "epsilon schedule 'steps:1:0': expected a number, linear:A:B or cycle:"),
])
def test_bad_policy_or_schedule_is_one_line_and_writes_nothing(args, message, tmp_path, capsys):
    argv = ["--game", "Pong", "--steps", "10", "--out", str(tmp_path / "out"), *args]
    if "--game" in args:
        argv = argv[2:]
    assert record.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert not (tmp_path / "out").exists()


def test_every_expert_uses_its_games_actions():
    for game in experts.EXPERTS:
        ram = np.zeros(128, np.uint8)
        ram[[49, 51, 54, 72, 99, 101]] = [100, 150, 60, 120, 80, 90]

        class Emulator:
            def getRAM(self):
                return ram

        action = experts.make_expert(game, Emulator()).begin_episode(np.zeros((84, 84), np.uint8))
        assert 0 <= action < len(atari.MINIMAL_ACTION_SETS[game])
