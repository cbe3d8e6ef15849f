"""Test setup: 8 fake CPU devices (set before JAX starts), one compilation cache for the session, and absl flags marked parsed."""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
# One XLA compilation cache for the session: the subprocesses of the resume and CLI tests load the
# steps this process (or an earlier subprocess) compiled instead of compiling them again.
_COMPILATION_CACHE = tempfile.mkdtemp(prefix="mgdt-jax-test-compilations-")
atexit.register(shutil.rmtree, _COMPILATION_CACHE, ignore_errors=True)
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _COMPILATION_CACHE)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Tiny models on CPU: XLA's optimisation passes cost more than they save (the whole suite, on 2 cores,
# 876 s -> 818 s); set here, so every subprocess a test starts compiles, and computes, the same way.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "true")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

from absl import flags  # noqa: E402

flags.FLAGS.mark_as_parsed()


import numpy as np  # noqa: E402
import pytest  # noqa: E402

from tests.recipe_cases import CASES  # noqa: E402  (imports JAX: after XLA_FLAGS)


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
def jat_datasets(tmp_path_factory):
    """Task name -> directory of the two small JAT datasets of tests/jat_datasets.py."""
    from tests import jat_datasets as writer

    return writer.write(tmp_path_factory.mktemp("jat"))


@pytest.fixture(scope="session")
def pong_frames(replay_logs_dir):
    """Real Pong frames: the first recorded episode, uint8 [T, 84, 84] (none of them all zero)."""
    from data_pipelines import replay_logs

    return next(replay_logs.read_run(replay_logs_dir / "Pong" / "1" / "replay_logs")).observations


@pytest.fixture(scope="session")
def feed():
    """feed(buffer, frames, length, rng, end) adds one episode of `length` real frames with random
    actions and rewards, ending by `end` ("game over", "time limit", or None: still running), the
    way Dopamine's runner hands it to the buffer; returns (frames, actions, rewards) as added."""

    def add_episode(buffer, frames, length, rng, end="game over"):
        start = rng.integers(len(frames) - length)
        episode = (frames[start:start + length], rng.integers(0, 4, length), rng.choice([-1.0, 0.0, 1.0], length))
        for t in range(length):
            last = t == length - 1
            buffer.add(episode[0][t], int(episode[1][t]), float(episode[2][t]),
                       terminal=last and end == "game over", episode_end=last and end is not None)
        return episode

    return add_episode


# 4 Pong episodes of 30 rows (ended by a 30-step time limit), 10, 30 (time limit) and 12 rows.
TIME_LIMITED_RUN = (("time limit", 30), ("game over", 10), ("time limit", 30), ("game over", 12))


@pytest.fixture(scope="session")
def write_time_limited_run(pong_frames, feed):
    """write(log_dir, layout, capacity) logs TIME_LIMITED_RUN (a time limit of 30 steps) and 5 rows
    of a fifth episode still running, as Dopamine of that layout does, with a dump every `capacity`
    rows and a final partial dump; returns [(end, (frames, actions, rewards))]."""
    from data_pipelines import replay_logs

    def write(log_dir, layout, capacity, seed=0):
        rng = np.random.default_rng(seed)
        buffer = replay_logs.LoggedReplayBuffer(log_dir, capacity, layout)
        fed = [(end, feed(buffer, pong_frames, length, rng, end)) for end, length in TIME_LIMITED_RUN]
        feed(buffer, pong_frames, 5, rng, end=None)
        buffer.log_final_buffer()
        return fed

    return write


@pytest.fixture(scope="session")
def breakout_windows():
    """Windows of real Breakout frames: 40 random-policy steps, then every 4-step window of them."""
    import numpy as np

    from data_pipelines.record import make_environment
    from mgdt_jax.envs import atari
    from mgdt_jax.recipes.mgdt import tokens

    game = "Breakout"
    env = make_environment(game, sticky_actions=0.0, max_episode_steps=1000)
    rng = np.random.default_rng(0)
    minimal_to_full = atari.minimal_to_full(game)
    frame, _ = env.reset(seed=0)
    frames, actions, rewards = [], [], []
    for _ in range(40):
        action = int(rng.integers(len(minimal_to_full)))
        frames.append(frame)
        actions.append(minimal_to_full[action])
        frame, reward, *_ = env.step(action)
        rewards.append(float(np.clip(reward, -1, 1)))
    env.close()
    frames, actions, rewards = np.stack(frames)[..., None], np.array(actions), np.array(rewards)
    returns = tokens.encode_return(tokens.returns_to_go(rewards))
    starts = np.arange(len(frames) - tokens.DEFAULT_NUM_STEPS + 1)
    window = starts[:, None] + np.arange(tokens.DEFAULT_NUM_STEPS)  # [N, 4] step indices
    return {
        "observations": frames[window],
        "returns_to_go": returns[window],
        "actions": actions[window].astype(np.int32),
        "rewards": tokens.encode_reward(rewards[window]),
        "step_mask": np.ones(window.shape, bool),
    }


@pytest.fixture(scope="session")
def darkroom_histories_dir(tmp_path_factory):
    """Q-learning learning histories of Dark Room written by mgdt-ad-histories' writer: 8 training
    goals of the default split x 2 histories x 12 episodes (240 steps each)."""
    import jax

    from data_pipelines import ad_histories
    from mgdt_jax import envs
    from mgdt_jax.recipes.ad import sources

    env = envs.get("darkroom")
    train, _ = env.task_split(0)
    tasks = jax.tree.map(lambda leaf: leaf[:8], train)
    out = tmp_path_factory.mktemp("ad_histories") / "darkroom_q"
    ad_histories.write_histories(env, sources.make_source("q_learning"), tasks, out, seed=0, episodes_per_history=12,
                                 histories_per_task=2, split={"side": "train", "seed": 0}, progress=False)
    return out


@pytest.fixture(scope="session", params=sorted(CASES))
def recipe_case(request):
    """Each recipe the generic training tests run on (tests/recipe_cases.py)."""
    return CASES[request.param]


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


@pytest.fixture(scope="session")
def half_write():
    """A function leaving a saved checkpoint's step directory as an interrupted save or copy does on
    a filesystem without atomic renames: ``half_write(step_dir, how)``, how one of HALF_WRITTEN."""
    import shutil

    def damage(step_dir, how: str) -> None:
        # A save is sealed only once it has finished, so an interrupted one has no digests file.
        (step_dir / "mgdt_digests.json").unlink(missing_ok=True)
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
