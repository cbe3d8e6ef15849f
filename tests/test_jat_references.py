"""JAT references: the expert-normalised score and the refusal to compare other env versions."""

import json

import pytest

from mgdt_jax.recipes.jat import references

REFS = references.TaskReferences(
    task="mujoco-pendulum", env_id="InvertedPendulum-v5",
    expert=references.Reference(mean_return=1000.0, std_return=0.0, episodes=10),
    random=references.Reference(mean_return=5.0, std_return=2.0, episodes=100),
    versions={"gymnasium": "1.4.0", "mujoco": "3.3.0"})


def test_normalized_score_by_hand():
    assert references.normalized_score(502.5, REFS) == pytest.approx(0.5)
    assert references.normalized_score(5.0, REFS) == 0.0
    assert references.normalized_score(0.0, REFS) == pytest.approx(-5 / 995)


def test_version_mismatch_is_one_line():
    references.check_versions(REFS, {"gymnasium": "1.4.0", "mujoco": "3.3.0"})
    with pytest.raises(references.ReferenceError) as error:
        references.check_versions(REFS, {"gymnasium": "1.4.0", "mujoco": "3.2.7"})
    assert str(error.value) == ("mujoco-pendulum: references were measured with mujoco 3.3.0 (installed: 3.2.7); "
                                "evaluate with those versions or re-record the task")
    with pytest.raises(references.ReferenceError, match="gymnasium 1.4.0 \\(installed: not installed\\)"):
        references.check_versions(REFS, {"mujoco": "3.3.0"})


def test_round_trip_and_unusable_references(tmp_path):
    references.save(REFS, tmp_path)
    assert references.load(tmp_path) == REFS
    (tmp_path / references.REFERENCES_FILE).write_text("{not json")
    with pytest.raises(references.ReferenceError, match="unreadable references"):
        references.load(tmp_path)
    with pytest.raises(references.ReferenceError, match=f"^{tmp_path / 'missing'}: no such dataset"):
        references.load(tmp_path / "missing")  # a misspelt task or --data, named as such
    (tmp_path / "empty").mkdir()
    with pytest.raises(references.ReferenceError, match="no references stored"):
        references.load(tmp_path / "empty")
    flat = references.TaskReferences(**{**REFS.__dict__, "random": REFS.expert})
    with pytest.raises(references.ReferenceError, match="does not exceed random"):
        references.normalized_score(1.0, flat)


def test_observation_stats_round_trip_and_old_references_have_none(tmp_path):
    stats = references.ObservationStats(mean=(0.5, -1.0, 0.0, 2.0), std=(0.01, 1e-3, 0.0, 1.0), steps=20)
    with_stats = references.TaskReferences(**{**REFS.__dict__, "observation_stats": stats})
    references.save(with_stats, tmp_path)
    assert references.load(tmp_path) == with_stats
    assert references.observation_stats(with_stats, 4, "here") == stats
    with pytest.raises(references.ReferenceError, match="^here: observation statistics of 4 dimensions for "
                                                        "observations of 3$"):
        references.observation_stats(with_stats, 3, "here")
    content = REFS.to_json()
    del content["observation_stats"]  # references.json as written before the statistics existed
    (tmp_path / references.REFERENCES_FILE).write_text(json.dumps(content))
    old = references.load(tmp_path)
    assert old.observation_stats is None
    with pytest.raises(references.ReferenceError) as error:
        references.observation_stats(old, 4, "data/mujoco-pendulum")
    assert str(error.value).startswith("data/mujoco-pendulum: references.json has no observation statistics")
    assert "re-record or re-import" in str(error.value) and "\n" not in str(error.value)
