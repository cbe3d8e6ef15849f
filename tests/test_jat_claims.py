"""experiments/jat_claims.py refuses bad arguments in one line, before any work."""

from __future__ import annotations

import pytest

from experiments import jat_claims


@pytest.mark.parametrize("args, message", [
    (["--train-steps", "0"], "--train-steps: 0: must be at least 1"),
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


def test_tasks_recorded_side_by_side_are_those_of_one_process(tmp_path):
    import dataclasses

    import numpy as np
    import tensorflow_datasets as tfds

    from data_pipelines.jat import record
    from mgdt_jax.recipes.jat import fields as jat_fields

    tasks = ("babyai-go-to-red-ball-grey", "babyai-go-to-local")
    setting = dataclasses.replace(jat_claims.QUICK, tasks=tasks, episodes={"babyai": (3, 2)})
    jat_claims.record_data(setting, tmp_path / "parallel")
    record.record(list(tasks), tmp_path / "serial", 3, seed=jat_claims.SEED, random_episodes=2, progress=False)
    for task in tasks:
        read = [tfds.builder_from_directory(str(tmp_path / run / task)).as_data_source("train")
                for run in ("parallel", "serial")]
        assert len(read[0]) == len(read[1]) == 3
        for left, right in zip(*read):
            a, b = jat_fields.episode_fields(left), jat_fields.episode_fields(right)
            assert a["text_observations"] == b["text_observations"]
            for name in ("discrete_observations", "discrete_actions", "rewards"):
                np.testing.assert_array_equal(a[name], b[name])


def test_kappa_refuses_a_data_folder_without_the_recordings_and_writes_nothing_into_it(tmp_path, capsys):
    other = tmp_path / "ad_histories"  # e.g. another recipe's dataset: --data is read, never recorded into
    other.mkdir()
    (other / "metadata.json").write_text("{}")
    with pytest.raises(SystemExit) as raised:
        jat_claims.main(["kappa", "--quick", "--data", str(other), "--out", str(tmp_path / "out")])
    assert raised.value.code != 0
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"--data {other}: holds no recording of " in error and "metaworld-reach" in error
    assert sorted(path.name for path in other.iterdir()) == ["metadata.json"] and not (tmp_path / "out").exists()
