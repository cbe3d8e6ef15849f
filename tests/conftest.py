"""Test setup: 8 fake CPU devices (set before JAX starts) and absl flags marked parsed."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

from absl import flags  # noqa: E402

flags.FLAGS.mark_as_parsed()


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def replay_logs_dir(tmp_path_factory):
    """Real DQN Replay logs of Pong and Breakout (1500 random-policy steps each, a dump every 400
    rows): <dir>/<Game>/1/replay_logs/. Recorded once per session, in about a second per game."""
    from data_pipelines import record

    root = tmp_path_factory.mktemp("replay_logs")
    for game in ("Pong", "Breakout"):
        record.record(game, steps=1500, out=root, capacity=400, seed=0, progress=False)
    return root


@pytest.fixture(scope="session")
def rlds_dataset_dir(replay_logs_dir, tmp_path_factory):
    """replay_logs_dir converted to our RLDS dataset (array_record); open it with
    tfds.builder_from_directory(rlds_dataset_dir).as_data_source("train")."""
    from data_pipelines import convert

    out = tmp_path_factory.mktemp("rlds") / "dqn_replay"
    convert.convert(replay_logs_dir, out, progress=False)
    return out


@pytest.fixture(scope="session")
def half_write():
    """A function leaving a saved checkpoint's step directory as an interrupted save or copy does on
    a filesystem without atomic renames: ``half_write(step_dir, how)``, how one of HALF_WRITTEN."""
    import shutil

    def damage(step_dir, how: str) -> None:
        if how == "empty":  # the directory made, nothing written into it yet
            for path in step_dir.iterdir():
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        elif how == "no_array_files":  # metadata written, the array data not
            for path in list(step_dir.rglob("*")):
                if path.is_file() and path.parent.name == "d":
                    path.unlink()
        elif how == "emptied_files":  # every file of the parameters created but not filled
            for path in (step_dir / "params").rglob("*"):
                if path.is_file():
                    path.write_bytes(b"")
        elif how == "no_step_metadata":  # arrays copied, Orbax's step-level files not yet
            for name in ("_CHECKPOINT_METADATA", "commit_success.txt"):
                (step_dir / name).unlink(missing_ok=True)
        else:
            raise ValueError(how)

    return damage


@pytest.fixture(params=["empty", "no_array_files", "emptied_files", "no_step_metadata"])
def half_written_kind(request) -> str:
    """Each way ``half_write`` knows (a test using this runs once per way)."""
    return request.param
