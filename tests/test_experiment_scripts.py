"""The experiment scripts: bad variants are refused before anything is recorded or trained, a
preempted training stops a script before it evaluates or reports, and the AdA trial-outcome
decomposition agrees with hand-computed values."""

from __future__ import annotations

import json

import numpy as np
import pytest

from experiments import common, expert_inference, mgdt_expert_inference
from mgdt_jax.core import loop


def test_bad_epsilon_schedule_is_one_line_and_writes_nothing(tmp_path, capsys):
    workdir = tmp_path / "run"
    code = mgdt_expert_inference.main(["--workdir", str(workdir), "--epsilon", "cycle:1,2"])
    error = capsys.readouterr().err.strip()
    assert code == 2
    assert error.count("\n") == 0 and "cycle:1,2" in error and "outside [0, 1]" in error
    assert not workdir.exists()


def test_recordings_of_another_schedule_or_cap_are_not_reused(tmp_path):
    exp = expert_inference.get_config().experiment
    recorded = {game: {"part": "pretrain", "steps": 10, "returns": [0.0], "epsilons": [1.0], "schedule": exp.epsilon,
                       "max_episode_steps": exp.max_episode_steps}
                for game in [*exp.games, exp.heldout_game]}
    (tmp_path / "recorded.json").write_text(json.dumps(recorded))
    assert mgdt_expert_inference.record_stage(exp, tmp_path) == recorded
    exp.max_episode_steps = 1000
    with pytest.raises(SystemExit, match="recorded with --max-episode-steps 2000, not 1000"):
        mgdt_expert_inference.record_stage(exp, tmp_path)
    exp.epsilon = "linear:1.0:0.0"
    with pytest.raises(SystemExit, match="recorded with --epsilon cycle:1,0, not linear:1.0:0.0"):
        mgdt_expert_inference.record_stage(exp, tmp_path)


def test_a_preempted_training_stops_the_script_before_any_report(tmp_path, monkeypatch):
    config = expert_inference.get_config()
    stopped = loop.TrainResult(tmp_path, first_step=0, last_step=7, last_checkpoint=7, preempted=True)
    monkeypatch.setattr(loop, "train", lambda *args, **kwargs: stopped)
    with pytest.raises(SystemExit, match=r"training preempted \(SIGTERM\) at step 7 of 8000; its checkpoint is kept"):
        common.train_to_end(config, tmp_path)
    finished = loop.TrainResult(tmp_path, first_step=0, last_step=8000, last_checkpoint=8000, preempted=False)
    monkeypatch.setattr(loop, "train", lambda *args, **kwargs: finished)
    assert common.train_to_end(config, tmp_path) is finished


def test_trial_outcomes_decompose_xland_returns_by_hand():
    from experiments import ada_trial_outcomes

    # Two episodes of 3 trials, 30-step trials: 1 - 0.9 t / 30 is 0.7 at t = 10 and 0.4 at t = 20.
    returns = np.array([[[0.0, 0.7, 0.7], [0.4, 0.0, 0.7]]])
    result = ada_trial_outcomes.outcomes(returns, max_steps=30)
    np.testing.assert_allclose(result["return"], [0.2, 0.35, 0.7])
    np.testing.assert_allclose(result["reached"], [0.5, 0.5, 1.0])
    np.testing.assert_allclose(result["steps"], [20.0, 10.0, 10.0])
    assert np.isnan(result["kept"][0])
    np.testing.assert_allclose(result["kept"][1:], [0.0, 1.0])  # trial 2 after episode 2's reached trial 1: missed
    np.testing.assert_allclose(result["kept_steps"][2], 10.0)
