"""experiments/mgdt_expert_inference.py refuses bad variants before it records or trains anything."""

from __future__ import annotations

import json

import pytest

from experiments import expert_inference, mgdt_expert_inference


def test_bad_epsilon_schedule_is_one_line_and_writes_nothing(tmp_path, capsys):
    workdir = tmp_path / "run"
    code = mgdt_expert_inference.main(["--workdir", str(workdir), "--epsilon", "cycle:1,2"])
    error = capsys.readouterr().err.strip()
    assert code == 2
    assert error.count("\n") == 0 and "cycle:1,2" in error and "outside [0, 1]" in error
    assert not workdir.exists()


def test_recordings_of_another_schedule_are_not_reused(tmp_path):
    exp = expert_inference.get_config().experiment
    recorded = {game: {"part": "pretrain", "steps": 10, "returns": [0.0], "epsilons": [1.0], "schedule": exp.epsilon}
                for game in [*exp.games, exp.heldout_game]}
    (tmp_path / "recorded.json").write_text(json.dumps(recorded))
    assert mgdt_expert_inference.record_stage(exp, tmp_path) == recorded
    exp.epsilon = "cycle:1,0"
    with pytest.raises(SystemExit, match="recorded with epsilon linear:1.0:0.0, not cycle:1,0"):
        mgdt_expert_inference.record_stage(exp, tmp_path)
