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


@pytest.fixture
def run_without_tensorflow():
    """Runs a Python script in a fresh interpreter where `import tensorflow` fails (as on an
    install without it); returns the CompletedProcess (stdout, stderr, returncode)."""
    import subprocess
    import sys

    hide = """
import importlib.util, sys
find_spec = importlib.util.find_spec
importlib.util.find_spec = lambda name, package=None: (
    None if name.split(".")[0] == "tensorflow" else find_spec(name, package))
class HideTensorFlow:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "tensorflow":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, HideTensorFlow())
"""
    return lambda script: subprocess.run([sys.executable, "-c", hide + script], capture_output=True, text=True,
                                         timeout=300)
