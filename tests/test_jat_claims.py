"""experiments/jat_claims.py refuses bad arguments and a reused --out in one line, before any work."""

from __future__ import annotations

import pytest

from experiments import jat_claims


@pytest.mark.parametrize("args, message", [
    (["--train-steps", "0"], "--train-steps: must be at least 1, got 0"),
    (["--eval-episodes", "5"], "--eval-episodes must be >= 10"),
    (["--tasks", "babyai-go-to-local,mujoco-foo"], "mujoco-foo: unknown task"),
    (["--data", "somewhere"], "--data is for kappa"),
])
def test_bad_arguments_exit_non_zero_with_one_line_and_write_nothing(tmp_path, capsys, args, message):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as raised:
        jat_claims.main(["mini-jat", "--out", str(out), *args])
    assert raised.value.code != 0
    errors = capsys.readouterr().err.strip().splitlines()
    assert message in errors[-1]
    assert not out.exists()


def test_an_out_made_with_other_settings_is_refused(tmp_path):
    jat_claims.check_settings(tmp_path, {"claim": "kappa", "setting": {"tasks": ("a", "b")}})
    jat_claims.check_settings(tmp_path, {"claim": "kappa", "setting": {"tasks": ("a", "b")}})  # same: reused
    with pytest.raises(SystemExit, match="made with other settings"):
        jat_claims.check_settings(tmp_path, {"claim": "kappa", "setting": {"tasks": ("a",)}})
