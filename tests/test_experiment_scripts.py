"""The experiment scripts: bad variants are refused before anything is recorded or trained, and a
preempted training stops a script before it evaluates or reports."""

from __future__ import annotations

import json

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
    exp.max_episode_steps = 2000
    with pytest.raises(SystemExit, match="recorded with --max-episode-steps 1000, not 2000"):
        mgdt_expert_inference.record_stage(exp, tmp_path)
    exp.epsilon = "cycle:1,0"
    with pytest.raises(SystemExit, match="recorded with --epsilon linear:1.0:0.0, not cycle:1,0"):
        mgdt_expert_inference.record_stage(exp, tmp_path)


def test_a_preempted_training_stops_the_script_before_any_report(tmp_path, monkeypatch):
    config = expert_inference.get_config()
    stopped = loop.TrainResult(tmp_path, first_step=0, last_step=7, last_checkpoint=7, preempted=True)
    monkeypatch.setattr(loop, "train", lambda *args, **kwargs: stopped)
    with pytest.raises(SystemExit, match=r"training preempted \(SIGTERM\) at step 7 of 4000; its checkpoint is kept"):
        common.train_to_end(config, tmp_path)
    finished = loop.TrainResult(tmp_path, first_step=0, last_step=4000, last_checkpoint=4000, preempted=False)
    monkeypatch.setattr(loop, "train", lambda *args, **kwargs: finished)
    assert common.train_to_end(config, tmp_path) is finished
