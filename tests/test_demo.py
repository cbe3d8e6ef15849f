"""The README's main job end to end on real ALE data: record, convert, pretrain, evaluate, report; a rerun reuses it all."""

import json

import pytest

from mgdt_jax.cli import demo


def test_demo_runs_the_whole_flow_and_a_rerun_reuses_it(tmp_path, capsys):
    args = ["--workdir", str(tmp_path), "--games", "Breakout,Pong", "--record-steps", "1500",
            "--max-episode-steps", "300", "--train-steps", "12", "--episodes", "1"]
    assert demo.main(args) == 0
    first = capsys.readouterr().out

    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert set(report["games"]) == {"Breakout", "Pong"}
    assert report["settings"]["step"] == 12
    assert all(len(game["raw_scores"]) == 1 for game in report["games"].values())
    assert (tmp_path / "report" / "scores.png").stat().st_size > 0
    random = json.loads((tmp_path / "report" / "random" / "report.json").read_text())
    assert set(random["games"]) == {"Breakout", "Pong"}
    assert all(len(game["raw_scores"]) == 1 for game in random["games"].values())
    assert "scripted experts, epsilon linear:1.0:0.0" in first
    table = first[first.index("trained raw"):]
    assert "Breakout" in table and "Pong" in table and "random" in table
    assert (tmp_path / "rlds" / "dataset_info.json").exists()
    assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == ["Breakout", "Pong"]
    assert any((tmp_path / "train" / "tensorboard").iterdir())
    assert "report" in first.splitlines()[-1] and "TensorBoard" in first.splitlines()[-1]

    assert demo.main(args) == 0
    rerun = capsys.readouterr().out
    assert "Breakout: reusing" in rerun and "Pong: reusing" in rerun
    assert "nothing to do" in rerun
    assert "reusing the report of step 12" in rerun and "reusing the random baseline" in rerun

    # Other data settings would silently reuse these logs: refused in one line before any work.
    assert demo.main([*args, "--max-episode-steps", "500"]) == 1
    captured = capsys.readouterr()
    assert captured.err.strip() == (f"mgdt-demo: error: {tmp_path} holds a demo recorded with other settings "
                                    "(max_episode_steps 300 -> 500): use another --workdir")
    assert "[1/4]" not in captured.out


@pytest.mark.parametrize("args,message", [
    (["--games", "Alien"], "no scripted expert for Alien"),
    (["--epsilon-schedule", "linear:2:0"], "epsilon schedule 'linear:2:0': 2 is outside [0, 1]"),
])
def test_demo_refuses_settings_it_cannot_record_before_any_work(args, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit:
        demo.main(["--workdir", str(tmp_path), *args])
    assert exit.value.code != 0
    assert message in capsys.readouterr().err
    assert not (tmp_path / "logs").exists()


def test_demo_refuses_an_unknown_game(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit:
        demo.main(["--workdir", str(tmp_path), "--games", "Pongg"])
    assert exit.value.code != 0
    assert "unknown game 'Pongg'" in capsys.readouterr().err
    assert not (tmp_path / "logs").exists()
