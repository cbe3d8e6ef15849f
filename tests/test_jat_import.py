"""mgdt-jat-import: parquet files in the JAT dataset's schema -> RLDS, and its one-line errors."""

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tensorflow_datasets as tfds

from data_pipelines.jat import import_parquet, rlds
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


def _write(path, rows):
    names = [name for name in SCHEMAS if name in rows[0]]
    table = pa.table({name: pa.array([row[name] for row in rows], SCHEMAS[name]) for name in names})
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
        got = rlds.episode_fields(episode)
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
    assert not any((tmp_path / "out").iterdir())
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
    assert not any((tmp_path / "out").iterdir())


def test_a_damaged_data_page_is_a_one_line_error(tmp_path, capsys):
    path = _write(tmp_path / "in.parquet", _episodes("metaworld", np.random.default_rng(5), 3))
    data = bytearray(path.read_bytes())
    data[8:200] = b"\xff" * 192  # the first data pages; the footer with the schema stays readable
    path.write_bytes(bytes(data))
    assert import_parquet.main([str(path), "--task", "t", "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.splitlines()[-1]
    assert err.startswith(f"mgdt-jat-import: error: {path}: row 0: unreadable (") and err.endswith(")")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_files_with_different_columns_are_refused(tmp_path, capsys):
    rng = np.random.default_rng(3)
    first = _write(tmp_path / "a.parquet", _episodes("babyai", rng, 1))
    second = _write(tmp_path / "b.parquet", _episodes("metaworld", rng, 1))
    assert import_parquet.main([str(first), str(second), "--task", "t", "--out", str(tmp_path / "out")]) == 1
    assert f"{second}: columns" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
