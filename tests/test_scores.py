"""Human normalisation, aggregates with stratified bootstrap intervals, and the written report."""

import csv
import json

import imageio.v2 as imageio
import numpy as np
import pytest

from mgdt_jax.envs import atari
from mgdt_jax.recipes.mgdt.actor import GameResult
from mgdt_jax.recipes.mgdt import report, scores


NO_HUMAN_SCORE = ["AirRaid", "Carnival", "ElevatorAction", "JourneyEscape", "Pooyan"]  # not in Atari-57


def test_human_normalisation_uses_the_random_and_human_table():
    # Pong: random -20.7, human 14.6 (DQN Zoo).
    np.testing.assert_allclose(scores.human_normalised("Pong", [-20.7, 14.6, -3.05]), [0.0, 1.0, 0.5])
    # Asteroids: random 719.1, human 47388.7, a game MGDT did not train on.
    np.testing.assert_allclose(scores.human_normalised("Asteroids", [0.0]), [-0.015408], atol=5e-7)
    for game in NO_HUMAN_SCORE:
        assert not scores.has_human_score(game)
        with pytest.raises(ValueError, match=f"{game} has no human reference score"):
            scores.human_normalised(game, [100.0])


def test_every_atari57_game_of_the_dqn_replay_suite_has_a_human_score():
    table = atari.reference_scores()
    assert sum(ref.human is not None and ref.random is not None for ref in table.values()) == 57
    missing = [game for game in atari.SUITES["dqn60"] if not scores.has_human_score(game)]
    assert missing == NO_HUMAN_SCORE
    # Spot checks against DQN Zoo's atari_data.py, including games outside the MGDT 46.
    assert (table["Skiing"].random, table["Skiing"].human) == (-17098.1, -4336.9)
    assert (table["PrivateEye"].random, table["PrivateEye"].human) == (24.9, 69571.3)
    assert (table["MontezumaRevenge"].random, table["MontezumaRevenge"].human) == (0.0, 4753.3)


def test_aggregates_are_rliable_iqm_median_and_mean_of_games():
    by_game = {"A": np.array([0.0, 1.0, 2.0, 3.0]), "B": np.array([10.0, 10.0, 10.0, 10.0]), "C": np.array([4.0, 4.0, 5.0, 5.0])}
    aggregates = scores.aggregate(by_game, reps=500)
    # IQM: mean of the middle 50% of all 12 episode scores = mean of sorted[3:9].
    middle = np.sort(np.concatenate(list(by_game.values())))[3:9]
    assert aggregates["iqm"].value == pytest.approx(middle.mean())
    assert aggregates["median"].value == pytest.approx(4.5)  # per-game means 1.5, 10, 4.5
    assert aggregates["mean"].value == pytest.approx((1.5 + 10 + 4.5) / 3)
    for interval in aggregates.values():
        assert interval.low <= interval.value <= interval.high
    assert aggregates["mean"].low < aggregates["mean"].high  # episodes vary, so the interval is wide


def test_bootstrap_resamples_within_games_only():
    # Every episode of a game scores the same: resampling episodes within a game changes nothing.
    constant = {"A": np.full(5, 1.0), "B": np.full(5, 3.0)}
    for interval in scores.aggregate(constant, reps=200).values():
        assert interval.low == interval.high == interval.value


def test_the_same_scores_and_seed_give_the_same_intervals_whatever_numpys_global_state():
    # rliable draws from np.random's global state, not the random_state it is given: reports differed run to run.
    by_game = {"A": np.array([0.0, 1.0, 2.0, 3.0, 7.0]), "B": np.array([1.0, 4.0, 4.0, 5.0, 9.0])}
    first = scores.aggregate(by_game, reps=300, seed=0)
    np.random.seed(12345)
    state = np.random.get_state()
    assert scores.aggregate(by_game, reps=300, seed=0) == first
    assert np.array_equal(np.random.get_state()[1], state[1])  # the caller's random state is left as it was
    assert scores.aggregate(by_game, reps=300, seed=1) != first


def test_aggregates_need_the_same_episode_count_per_game():
    with pytest.raises(ValueError, match="same number of episodes"):
        scores.aggregate({"A": np.zeros(3), "B": np.zeros(4)})


def test_report_leaves_games_without_human_score_out_of_aggregates(tmp_path):
    results = [
        GameResult("Pong", np.array([-20.7, 14.6]), np.array([800, 900])),
        GameResult("Breakout", np.array([1.7, 30.5]), np.array([200, 300])),
        GameResult("Pooyan", np.array([500.0, 700.0]), np.array([400, 500])),
    ]
    summary = report.summarise(results, {"episodes_per_game": 2})
    assert summary.excluded_from_aggregates == ["Pooyan"]
    assert summary.aggregates["mean"].value == pytest.approx((0.5 + 0.5) / 2)  # Pong 0.5, Breakout 0.5
    path = report.write_report(summary, tmp_path)

    written = json.loads(path.read_text())
    assert written["games"]["Pooyan"]["human_normalised"] is None
    assert written["games"]["Pooyan"]["raw_mean"] == 600.0
    assert "left out of normalised aggregates" in written["excluded_from_aggregates"]["Pooyan"]
    assert set(written["aggregates"]) == {"iqm", "median", "mean"}
    rows = list(csv.DictReader((tmp_path / report.SCORES_CSV).open()))
    assert [(r["game"], r["in_aggregates"]) for r in rows] == [("Pong", "True"), ("Breakout", "True"), ("Pooyan", "False")]
    assert rows[2]["hns_mean"] == ""
    image = imageio.imread(tmp_path / report.SCORES_PNG)
    assert image.ndim == 3 and image.shape[0] > 100
    assert sorted(p.name for p in tmp_path.iterdir()) == [report.REPORT_JSON, report.SCORES_CSV, report.SCORES_PNG]


def test_a_dqn60_report_aggregates_every_game_with_a_human_score():
    results = [GameResult(game, np.array([0.0, 0.0]), np.array([100, 100])) for game in atari.SUITES["dqn60"]]
    summary = report.summarise(results, {"episodes_per_game": 2})
    assert summary.excluded_from_aggregates == NO_HUMAN_SCORE
    assert "over 55 game(s)" in summary.one_line()
    by_game = {g.game: g for g in summary.games}
    assert by_game["Asteroids"].normalised.value == pytest.approx((0 - 719.1) / (47388.7 - 719.1))
    assert by_game["AirRaid"].normalised is None and by_game["AirRaid"].raw_mean == 0.0
    expected_mean = np.mean(
        [(0 - ref.random) / (ref.human - ref.random)
         for game, ref in atari.reference_scores().items() if game in by_game and ref.human is not None]
    )
    assert summary.aggregates["mean"].value == pytest.approx(expected_mean)
