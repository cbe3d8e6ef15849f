"""`mgdt-record`: play real ALE games and log them in the DQN Replay format.

For users without the original bucket, for tests and for the demo: the logs it writes go through
exactly the code paths of the real dataset (Dopamine 2019 preprocessing and buffer semantics, so also
its circular-buffer order, final partial dumps and skipped chunks). `--layout 2021` or `2022` writes
episode ends as newer Dopamine does instead (see replay_logs.py).

Preprocessing as Dopamine's AtariPreprocessing: grayscale, max-pool of the last two frames, 84x84
INTER_AREA resize, frame skip 4, no life-loss terminals, sticky actions. An episode ends at game
over or after --max-episode-steps agent steps (both logged as terminal in the 2019 layout of the
dataset; the time limit with terminal = 0 in the newer layouts).

Policies: `random`, or `expert`, the game's scripted expert (Pong, Breakout and Boxing read the
emulator RAM, Freeway and DemonAttack press one action; data_pipelines/experts.py). `--epsilon-schedule` mixes uniformly random actions
in with a probability set per episode (`0.1`, `linear:1.0:0.0` over the run, `cycle:1,0.5,0`), so
one run holds behaviour of many qualities, as the DQN Replay Dataset holds an agent's early and late
policies.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np
import tqdm

from data_pipelines import experts, replay_logs
from mgdt_jax.core import files, host_memory
from mgdt_jax.core.commands import interruptible
from mgdt_jax.core.files import check_folder, path_argument, removing_created_folders, seed_argument
from mgdt_jax.envs import atari

RECORDING_CLAIM = ".recording"  # in OUT/<Game>/<run>/ while a recording writes there: its process id


class Policy(Protocol):
    """Chooses minimal-action-set indices; shaped like Dopamine's agent so a trained agent (or an
    MGDT checkpoint with its own history) can be plugged in through POLICIES."""

    def begin_episode(self, observation: np.ndarray) -> int:
        """First action of an episode, given its first 84x84 frame."""

    def step(self, reward: float, observation: np.ndarray) -> int:
        """Next action, given the clipped reward of the last action and the frame it led to."""

    def end_episode(self, reward: float) -> None:
        """The clipped reward of the episode's last action."""


class RandomPolicy:
    """Uniform over the game's minimal action set."""

    def __init__(self, num_actions: int, seed: int):
        self._num_actions = num_actions
        self._rng = np.random.default_rng(seed)

    def begin_episode(self, observation: np.ndarray) -> int:
        return int(self._rng.integers(self._num_actions))

    def step(self, reward: float, observation: np.ndarray) -> int:
        return int(self._rng.integers(self._num_actions))

    def end_episode(self, reward: float) -> None:
        pass


# Policy name -> factory(game, seed, emulator); the emulator (ale_py.ALEInterface) gives the RAM.
POLICIES: dict[str, Callable[[str, int, experts.RamReader], Policy]] = {
    "random": lambda game, seed, ale: RandomPolicy(len(atari.MINIMAL_ACTION_SETS[game]), seed),
    "expert": lambda game, seed, ale: experts.make_expert(game, ale),
}


def make_environment(game: str, sticky_actions: float, max_episode_steps: int):
    """ALE with Dopamine's preprocessing; frames come back as uint8 [84, 84]."""
    import ale_py
    import gymnasium as gym
    from gymnasium.wrappers import AtariPreprocessing

    gym.register_envs(ale_py)
    env = gym.make(
        f"ALE/{game}-v5",
        frameskip=1,  # the wrapper skips frames and max-pools the last two
        repeat_action_probability=sticky_actions,
        full_action_space=False,  # actions index the minimal set, as logged
        max_num_frames_per_episode=4 * max_episode_steps,
    )
    return AtariPreprocessing(env, noop_max=0, frame_skip=4, screen_size=84, terminal_on_life_loss=False)


@dataclasses.dataclass
class RecordReport:
    log_dir: Path
    steps: int
    episodes_finished: int
    checkpoints: int
    episode_returns: list[float]  # raw (unclipped) score of each finished episode
    episode_epsilons: list[float]  # the epsilon each finished episode was played with


def record(game: str, steps: int, out: Path, run: int = 1, capacity: int = replay_logs.DEFAULT_CAPACITY,
           max_episode_steps: int = replay_logs.DEFAULT_MAX_EPISODE_STEPS, sticky_actions: float = 0.25,
           policy: str = "random", seed: int = 0, progress: bool = True, layout: str = "2019",
           epsilon: str | experts.EpsilonSchedule = "0") -> RecordReport:
    """Plays `steps` agent steps and writes out/<Game>/<run>/replay_logs/.

    `epsilon` is a schedule spec (experts.parse_epsilon_schedule) or a function (episode index,
    fraction of `steps` played at its start) -> the probability of a uniformly random action in that
    episode. Raises ValueError for an unknown policy, a game without an expert, a bad schedule, an
    episode cap ALE cannot take or a negative run or seed, before anything is written.

    Recording stops after exactly `steps` rows even mid-episode; like any run's last episode
    without a terminal row, a reader drops it as incomplete.
    """
    game = atari.check_game(game)
    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r}: expected one of {', '.join(sorted(POLICIES))}")
    schedule = experts.parse_epsilon_schedule(epsilon) if isinstance(epsilon, str) else epsilon
    if not 1 <= max_episode_steps <= atari.MAX_EPISODE_FRAMES // 4:
        raise ValueError(f"--max-episode-steps {max_episode_steps}: ALE takes episode caps of 1 to "
                         f"{atari.MAX_EPISODE_FRAMES // 4} agent steps (4 frames each)")
    for name, value in (("--run", run), ("--seed", seed)):  # a negative run is no folder mgdt-convert reads
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    log_dir = Path(out) / game / str(run) / "replay_logs"
    # Held from the check on: a second recording of this run at once restarted the first's .partial
    # under it (one failed, the other's logs replaced the first's).
    with files.writing_into(log_dir.parent, RECORDING_CLAIM, f"another mgdt-record of {game} run {run}",
                            output=log_dir):
        if log_dir.is_dir() and any(log_dir.iterdir()):
            raise FileExistsError(f"{log_dir}: already holds replay logs; choose another --run or --out")
        if log_dir.exists() and not log_dir.is_dir():
            raise FileExistsError(f"{log_dir}: exists and is not a directory")
        # The buffer's arrays take memory only for rows written: at most capacity, fewer for a short run.
        needed = min(capacity, steps + replay_logs.PADDING_ROWS) * replay_logs.ROW_BYTES
        available = host_memory.available_bytes() or os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        if needed > available:
            raise ValueError(f"capacity {capacity} needs {host_memory.describe_bytes(needed)} for its rows and "
                             f"{host_memory.describe_bytes(available)} are available: lower the capacity")
        env = make_environment(game, sticky_actions, max_episode_steps)
        try:
            inner = POLICIES[policy](game, seed, env.unwrapped.ale)
        except ValueError:
            env.close()
            raise
        agent = experts.EpsilonGreedy(inner, len(atari.MINIMAL_ACTION_SETS[game]), seed + 1)
        # Dumps go to a scratch folder renamed at the end: an interrupted recording never looks like a
        # finished, shorter one (each dump is complete on its own).
        scratch = log_dir.with_name(log_dir.name + ".partial")
        shutil.rmtree(scratch, ignore_errors=True)  # left by an interrupted earlier recording
        try:  # refused, it leaves no empty .partial that mgdt-convert would call an interrupted recording
            with removing_created_folders(scratch):
                buffer = replay_logs.LoggedReplayBuffer(scratch, capacity, layout)
        except MemoryError:
            env.close()
            raise
        returns, epsilons = [], []
        observation, _ = env.reset(seed=seed)
        agent.epsilon = schedule(0, 0.0)
        action = agent.begin_episode(observation)
        episode_steps, episode_return = 0, 0.0
        with tqdm.tqdm(total=steps, unit="step", desc=f"record {game}", disable=not progress) as bar:
            for played in range(1, steps + 1):
                next_observation, reward, game_over, ale_truncated, _ = env.step(action)
                episode_steps += 1
                episode_return += float(reward)
                reward = float(np.clip(reward, -1.0, 1.0))
                end = game_over or ale_truncated or episode_steps == max_episode_steps
                buffer.add(observation, action, reward, terminal=game_over, episode_end=end)
                bar.update()
                if end:
                    agent.end_episode(reward)
                    returns.append(episode_return)
                    epsilons.append(agent.epsilon)
                    episode_steps, episode_return = 0, 0.0
                    observation, _ = env.reset()
                    agent.epsilon = schedule(len(returns), played / steps)
                    action = agent.begin_episode(observation)
                else:
                    observation = next_observation
                    action = agent.step(reward, observation)
        buffer.log_final_buffer()
        env.close()
        scratch.replace(log_dir)
        return RecordReport(log_dir, steps, len(returns), buffer.num_dumps, returns, epsilons)


@interruptible("mgdt-record")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mgdt-record", description=__doc__.split("\n\n")[0])
    parser.add_argument("--game", required=True, help="one of the 60 DQN Replay games, e.g. Pong")
    parser.add_argument("--steps", type=int, required=True, help="agent steps (logged rows) to play")
    parser.add_argument("--out", type=path_argument, required=True, help="writes OUT/<Game>/<run>/replay_logs/")
    parser.add_argument("--run", type=int, default=1, help="the run number in OUT/<Game>/<run>/ (DQN Replay has 1-5)")
    parser.add_argument("--capacity", type=int, default=replay_logs.DEFAULT_CAPACITY,
                        help="rows per dump (the replay buffer size)")
    parser.add_argument("--max-episode-steps", type=int, default=replay_logs.DEFAULT_MAX_EPISODE_STEPS,
                        help="agent steps after which an episode ends by the time limit (default: %(default)s)")
    parser.add_argument("--sticky-actions", type=float, default=0.25, help="repeat-action probability")
    parser.add_argument("--policy", default="random",
                        help="random, or expert: the game's scripted expert (Pong, Breakout, Freeway, Boxing, DemonAttack, "
                             "SpaceInvaders, Enduro)")
    parser.add_argument("--epsilon", "--epsilon-schedule", dest="epsilon", default="0",
                        help="probability of a random action, per episode: 0.1, linear:1.0:0.0 (over the run) "
                             "or cycle:1,0.5,0 (episode by episode)")
    parser.add_argument("--seed", type=seed_argument, default=0, help="the emulator's and the policy's randomness")
    parser.add_argument("--layout", choices=replay_logs.LAYOUTS, default="2019",
                        help="how episode ends are logged: as the DQN Replay Dataset (2019) or newer Dopamine")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.max_episode_steps < 1 or not 0.0 <= args.sticky_actions <= 1.0:
        parser.error("--steps and --max-episode-steps must be positive, --sticky-actions in [0, 1]")
    try:
        check_folder(args.out, "--out")  # before the emulator starts: a path under a file named only the .partial
        report = record(args.game, args.steps, args.out, args.run, args.capacity, args.max_episode_steps,
                        args.sticky_actions, args.policy, args.seed, layout=args.layout, epsilon=args.epsilon)
    except (ValueError, OSError) as error:  # unknown game/policy/schedule, existing logs, unwritable --out
        print(f"mgdt-record: error: {files.error_line(error, args.out)}", file=sys.stderr)
        return 2
    except MemoryError:  # the address space, not the free memory checked above, refused the buffer
        print(f"mgdt-record: error: capacity {args.capacity}: cannot allocate its buffer of "
              f"{args.capacity * replay_logs.ROW_BYTES / 2**30:.1f} GiB; lower the capacity", file=sys.stderr)
        return 2
    print(f"recorded {report.steps} steps ({report.episodes_finished} finished episodes, "
          f"{report.checkpoints} checkpoints) to {report.log_dir}")
    if report.episode_returns:
        print(f"episode scores: mean {np.mean(report.episode_returns):.1f}, min {min(report.episode_returns):.0f}, "
              f"max {max(report.episode_returns):.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
