"""mgdt-jat-import: parquet files in the JAT dataset's schema -> RLDS, and its one-line errors."""

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tensorflow_datasets as tfds

from data_pipelines.jat import import_parquet
from mgdt_jax.recipes.jat import fields as jat_fields
from mgdt_jax.recipes.jat import references

IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
SCHEMAS = {  # as the Hugging Face `datasets` features of the JAT dataset are written to parquet
    "text_observations": pa.list_(pa.string()),
    "discrete_observations": pa.list_(pa.list_(pa.int64())),
    "continuous_observations": pa.list_(pa.list_(pa.float32())),
    "image_observations": pa.list_(IMAGE),
    "discrete_actions": pa.list_(pa.int64()),
    "continuous_actions": pa.list_(pa.list_(pa.float32())),
    "rewards": pa.list_(pa.float32()),
}


def _png(image):  # channel-last RGBA frame stack, as the dataset's Image feature stores it
    return cv2.imencode(".png", image[..., [2, 1, 0, 3]])[1].tobytes()


def _episodes(kind, rng, count):
    rows = []
    for length in rng.integers(1, 9, count):
        if kind == "babyai":
            row = {"text_observations": ["pick up the key"] * length,
                   "discrete_observations": rng.integers(0, 11, (length, 148)).tolist(),
                   "discrete_actions": rng.integers(0, 7, length).tolist()}
        elif kind == "metaworld":
            row = {"continuous_observations": rng.normal(size=(length, 39)).astype(np.float32).tolist(),
                   "continuous_actions": rng.uniform(-1, 1, (length, 4)).astype(np.float32).tolist()}
        else:
            frames = rng.integers(0, 256, (length, 84, 84, 4), dtype=np.uint8)
            row = {"image_observations": [{"bytes": _png(f), "path": None} for f in frames],
                   "discrete_actions": rng.integers(0, 18, length).tolist(), "_frames": frames}
        row["rewards"] = rng.normal(size=length).astype(np.float32).tolist()
        rows.append(row)
    return rows


def _write(path, rows, types=None):  # types: column -> another arrow type than the dataset's
    types = {**SCHEMAS, **(types or {})}
    names = [name for name in SCHEMAS if name in rows[0]]
    table = pa.table({name: pa.array([row[name] for row in rows], types[name]) for name in names})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


@pytest.mark.parametrize("kind,task", [("babyai", "babyai-pickup"), ("metaworld", "metaworld-reach"),
                                       ("atari", "atari-pong")])
def test_round_trip(tmp_path, kind, task):
    rng = np.random.default_rng(0)
    rows = [_episodes(kind, rng, 3), _episodes(kind, rng, 2)]
    files = [_write(tmp_path / "jat-dataset" / task / f"train-0000{i}-of-00002.parquet", part)
             for i, part in enumerate(rows)]
    assert import_parquet.main([*map(str, files), "--out", str(tmp_path / "rlds")]) == 0  # task from the folder
    source = tfds.builder_from_directory(tmp_path / "rlds" / task).as_data_source("train")
    want = rows[0] + rows[1]
    assert len(source) == len(want)
    for i, row in enumerate(want):
        episode = source[i]
        got = jat_fields.episode_fields(episode)
        assert set(got) == {name for name in row if not name.startswith("_")}
        for name, values in row.items():
            if name == "image_observations":
                np.testing.assert_array_equal(got[name], row["_frames"])
            elif name == "text_observations":
                assert got[name] == values
            elif not name.startswith("_"):
                np.testing.assert_array_equal(got[name], np.asarray(values, got[name].dtype))
        steps = episode["steps"]
        last = steps[len(steps) - 1]
        assert last["is_last"] and not last["is_terminal"]
        for name in last["observation"]:  # the final observation repeats the last stored one
            np.testing.assert_array_equal(last["observation"][name], steps[len(steps) - 2]["observation"][name])
    stored = references.load(tmp_path / "rlds" / task)
    assert stored.expert.mean_return == pytest.approx(np.mean([np.sum(r["rewards"]) for r in want]), rel=1e-5)
    assert stored.random is None
    if kind == "metaworld":  # per-dimension mean and std of the imported steps' observations
        observations = np.concatenate([np.asarray(r["continuous_observations"], np.float32) for r in want])
        assert stored.observation_stats.steps == len(observations)
        np.testing.assert_allclose(stored.observation_stats.mean, observations.astype(np.float64).mean(0), rtol=1e-9)
        np.testing.assert_allclose(stored.observation_stats.std, observations.astype(np.float64).std(0), rtol=1e-7)
    else:
        assert stored.observation_stats is None


def test_unknown_modality_is_a_one_line_error(tmp_path, capsys):
    rows = _episodes("babyai", np.random.default_rng(1), 2)
    path = _write(tmp_path / "in.parquet", rows)
    table = pq.read_table(path).append_column("audio_observations", pa.array([[0.0], [1.0]]))
    pq.write_table(table, path)
    assert import_parquet.main([str(path), "--task", "babyai-pickup", "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"{path}: 'audio_observations' is not a JAT field of a known modality" in err
    assert not (tmp_path / "out" / "babyai-pickup").exists()


def test_ragged_episode_leaves_nothing(tmp_path, capsys):
    rows = _episodes("metaworld", np.random.default_rng(2), 3)
    rows[2]["rewards"] = rows[2]["rewards"] + [0.0]  # one reward more than actions
    path = _write(tmp_path / "in.parquet", rows)
    assert import_parquet.main([str(path), "--task", "metaworld-reach", "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.splitlines()[-1]  # after the progress bar
    assert err.startswith(f"mgdt-jat-import: error: {path} row 2: fields need one entry per step")
    assert not (tmp_path / "out").exists()  # the failed import removes the OUT it created
    assert import_parquet.main([str(tmp_path / "missing.parquet"), "--task", "x", "--out", str(tmp_path)]) == 1
    assert "not a readable parquet file" in capsys.readouterr().err


@pytest.mark.parametrize("kind,damage,fault", [
    ("babyai", lambda row: row["discrete_actions"].__setitem__(0, None), "discrete_actions holds a null entry"),
    ("metaworld", lambda row: row["rewards"].__setitem__(1, None), "rewards holds a null entry"),
    ("metaworld", lambda row: row["continuous_observations"][1].__setitem__(3, None),
     "continuous_observations holds a null entry"),
    ("atari", lambda row: row["image_observations"].__setitem__(0, {"bytes": _png(np.zeros((64, 64, 4), np.uint8)),
                                                                    "path": None}),
     "image_observations entries differ in shape"),
    ("atari", lambda row: row["image_observations"].__setitem__(1, {"bytes": b"not a png", "path": None}),
     "image_observations entry is not a decodable image"),
])
def test_a_null_or_an_odd_entry_is_a_one_line_error(kind, damage, fault, tmp_path, capsys):
    rows = _episodes(kind, np.random.default_rng(4), 2)
    assert len(rows[1]["rewards"]) >= 2  # so one odd-sized image makes the episode's images ragged
    damage(rows[1])
    path = _write(tmp_path / "in.parquet", rows)
    assert import_parquet.main([str(path), "--task", "t", "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.splitlines()[-1]
    assert err == f"mgdt-jat-import: error: {path} row 1: {fault}"
    assert not (tmp_path / "out").exists()


def test_a_damaged_data_page_is_a_one_line_error(tmp_path, capsys):
    path = _write(tmp_path / "in.parquet", _episodes("metaworld", np.random.default_rng(5), 3))
    data = bytearray(path.read_bytes())
    data[8:200] = b"\xff" * 192  # the first data pages; the footer with the schema stays readable
    path.write_bytes(bytes(data))
    assert import_parquet.main([str(path), "--task", "t", "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.splitlines()[-1]
    assert err.startswith(f"mgdt-jat-import: error: {path}: row 0: unreadable (") and err.endswith(")")
    assert not (tmp_path / "out").exists()


def test_files_with_different_columns_are_refused(tmp_path, capsys):
    rng = np.random.default_rng(3)
    first = _write(tmp_path / "a.parquet", _episodes("babyai", rng, 1))
    second = _write(tmp_path / "b.parquet", _episodes("metaworld", rng, 1))
    assert import_parquet.main([str(first), str(second), "--task", "t", "--out", str(tmp_path / "out")]) == 1
    assert f"{second}: columns" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def _import_fails(path, tmp_path, capsys, task="t"):
    """Runs the import of `path` into tmp_path/out, expecting exit 1; returns its error line."""
    assert import_parquet.main([str(path), "--task", task, "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.splitlines()[-1]  # after the progress bar, if any
    assert err.startswith("mgdt-jat-import: error: ")
    return err.removeprefix("mgdt-jat-import: error: ")


@pytest.mark.parametrize("kind,name,value,arrow_type,fault", [  # value: steps -> the column's entry
    ("metaworld", "rewards", lambda steps: 3, pa.int64(),
     "rewards holds a single int, not a list with one entry a step"),
    ("babyai", "text_observations", lambda steps: "go to", pa.string(),
     "text_observations holds a single str, not a list with one entry a step"),
    ("metaworld", "rewards", lambda steps: [[1.0]] * steps, pa.list_(pa.list_(pa.float32())),
     "rewards entries have shape (1,), expected a number a step"),
    ("metaworld", "continuous_actions", lambda steps: [0.5] * steps, pa.list_(pa.float32()),
     "continuous_actions entries have shape (), expected a list of numbers a step"),
    ("babyai", "discrete_actions", lambda steps: ["5"] * steps, pa.list_(pa.string()),
     "discrete_actions holds '5' at step 0, not a number"),
    ("metaworld", "rewards", lambda steps: [True] * steps, pa.list_(pa.bool_()),
     "rewards holds True at step 0, not a number"),
    ("babyai", "text_observations", lambda steps: [1] * steps, pa.list_(pa.int64()),
     "text_observations holds 1 at step 0, not text"),
])
def test_a_column_of_the_wrong_shape_or_type_is_a_one_line_error(kind, name, value, arrow_type, fault, tmp_path,
                                                                 capsys):
    rows = _episodes(kind, np.random.default_rng(6), 2)
    for row in rows:
        row[name] = value(len(row["rewards"]))
    path = _write(tmp_path / "in.parquet", rows, {name: arrow_type})
    assert _import_fails(path, tmp_path, capsys) == f"{path} row 0: {fault}"
    assert not (tmp_path / "out").exists()


def _put(name, step, value, index=None):  # sets one entry of row[name] (or of its step's list)
    def damage(row):
        if index is None:
            row[name][step] = value
        else:
            row[name][step][index] = value
    return damage


@pytest.mark.parametrize("kind,damage,fault", [
    ("metaworld", _put("rewards", 1, float("nan")), "rewards holds nan at step 1, not a finite float32"),
    ("metaworld", _put("rewards", 0, float("-inf")), "rewards holds -inf at step 0, not a finite float32"),
    ("metaworld", _put("continuous_observations", 1, float("inf"), 5),
     "continuous_observations holds inf at step 1, not a finite float32"),
    ("metaworld", _put("continuous_actions", 0, float("nan"), 2),
     "continuous_actions holds nan at step 0, not a finite float32"),
    ("babyai", _put("discrete_actions", 1, -5), "discrete_actions holds -5 at step 1, not an action index (>= 0)"),
])
def test_non_finite_values_and_negative_actions_are_refused(kind, damage, fault, tmp_path, capsys):
    rows = _episodes(kind, np.random.default_rng(4), 2)
    damage(rows[1])
    path = _write(tmp_path / "in.parquet", rows)
    assert _import_fails(path, tmp_path, capsys) == f"{path} row 1: {fault}"
    assert not (tmp_path / "out").exists()


def test_discrete_observations_with_a_fraction_are_refused_not_rounded(tmp_path, capsys):
    rows = _episodes("babyai", np.random.default_rng(4), 2)
    for row in rows:
        row["discrete_observations"] = [[float(v) for v in step] for step in row["discrete_observations"]]
    rows[1]["discrete_observations"][1][7] = 8.5
    float_rows = pa.list_(pa.list_(pa.float64()))
    path = _write(tmp_path / "in.parquet", rows, {"discrete_observations": float_rows})
    fault = "discrete_observations holds 8.5 at step 1, not an integer"
    assert _import_fails(path, tmp_path, capsys) == f"{path} row 1: {fault}"
    rows[1]["discrete_observations"][1][7] = 8.0  # whole numbers stored as floats are read as the integers they are
    _write(path, rows, {"discrete_observations": float_rows})
    assert import_parquet.main([str(path), "--task", "t", "--out", str(tmp_path / "out")]) == 0


@pytest.mark.parametrize("task", ["../escape", "a/b", ".", "..", ""])
def test_a_task_name_that_is_not_a_plain_folder_name_is_refused_first(task, tmp_path, capsys):
    path = _write(tmp_path / "in.parquet", _episodes("metaworld", np.random.default_rng(7), 2))
    assert _import_fails(path, tmp_path, capsys, task) == (
        f"task name {task!r}: not a plain name (it names the folder OUT/<task>: no path separators, not '.' or '..')")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.parquet"]  # nothing written, here or above


def test_a_task_name_of_an_unfinished_dataset_is_refused(tmp_path, capsys):
    path = _write(tmp_path / "in.parquet", _episodes("metaworld", np.random.default_rng(7), 2))
    assert _import_fails(path, tmp_path, capsys, "t.partial") == (
        "task name 't.partial': ends in .partial, the mark of an unfinished dataset")


def test_observations_with_no_values_are_refused_not_written_unreadable(tmp_path, capsys):
    rows = _episodes("metaworld", np.random.default_rng(8), 2)
    for row in rows:
        row["continuous_observations"] = [[] for _ in row["continuous_observations"]]
    path = _write(tmp_path / "in.parquet", rows)
    assert _import_fails(path, tmp_path, capsys) == (
        f"{path} row 0: continuous_observations entries of shape (0,) hold no values")
    assert not (tmp_path / "out").exists()


def test_a_file_named_twice_is_refused_not_imported_twice(tmp_path, capsys):
    path = _write(tmp_path / "in.parquet", _episodes("metaworld", np.random.default_rng(7), 2))
    again = tmp_path / "link.parquet"  # the same file by another name
    again.symlink_to(path)
    assert import_parquet.main([str(path), str(again), "--task", "t", "--out", str(tmp_path / "out")]) == 1
    assert capsys.readouterr().err.strip() == (
        f"mgdt-jat-import: error: {again}: named more than once (as {path} too): its episodes would be imported twice")
    assert not (tmp_path / "out").exists()


def test_observations_of_another_shape_than_the_first_episodes_name_the_row(tmp_path, capsys):
    rows = _episodes("metaworld", np.random.default_rng(8), 3)
    rows[2]["continuous_observations"] = [step + [0.0] for step in rows[2]["continuous_observations"]]
    path = _write(tmp_path / "in.parquet", rows)
    assert _import_fails(path, tmp_path, capsys) == (
        f"{path} row 2: continuous_observations entries have shape (40,), expected (39,) as in {path} row 0")
    assert not (tmp_path / "out").exists()


def test_a_failed_import_leaves_an_existing_out_as_it_was(tmp_path, capsys):
    rows = _episodes("metaworld", np.random.default_rng(9), 3)
    rows[1]["rewards"] = []  # a zero-length episode
    path = _write(tmp_path / "in.parquet", rows)
    out = tmp_path / "out"
    out.mkdir()
    (out / "other-task").mkdir()
    assert _import_fails(path, tmp_path, capsys).startswith(f"{path} row 1: fields need one entry per step")
    assert [p.name for p in out.iterdir()] == ["other-task"]
    nested = tmp_path / "new" / "deeper"
    assert import_parquet.main([str(path), "--task", "t", "--out", str(nested)]) == 1
    assert not (tmp_path / "new").exists()  # both folders it made are gone


def test_an_out_that_is_a_file_is_refused_before_reading(tmp_path, capsys):
    path = _write(tmp_path / "in.parquet", _episodes("metaworld", np.random.default_rng(10), 2))
    (tmp_path / "out").write_text("a file")
    assert _import_fails(path, tmp_path, capsys) == f"--out {tmp_path / 'out'}: exists and is not a folder"
    assert (tmp_path / "out").read_text() == "a file"
