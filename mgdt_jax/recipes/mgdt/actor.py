"""Plays many Atari games at once against one batched policy.

One ALE C++ vector environment per game (grayscale, max-pool of the last two frames, 84x84 area
resize, frame skip 4); every game's observations are concatenated into one policy batch, so the
model plays a whole suite with one jitted call per step while ALE's threads step the emulators.
The policy speaks the full 18-action set; each game's environments get it mapped to their minimal
action set, NOOP where the game lacks the action.

Episodes are assigned to environments up front (environment j of a game plays episodes j, j + E,
...), so the scores are not biased towards short episodes the way "first N episodes to finish"
would be.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence
from typing import Any

import cv2
import jax
import jax.numpy as jnp
import numpy as np
from ale_py.vector_env import AtariVectorEnv

from mgdt_jax.envs import atari
from mgdt_jax.recipes.mgdt import tokens
from mgdt_jax.recipes.mgdt.policy import Policy


@dataclasses.dataclass(frozen=True)
class EvalProtocol:
    """Environment settings of an evaluation (docs/evaluation.md)."""

    name: str
    sticky_action_probability: float
    max_episode_frames: int  # emulator frames (4 per agent step)
    jpeg_quality: int | None = None  # JPEG round-trip of every frame, as the released notebook does


PROTOCOLS: dict[str, EvalProtocol] = {
    # The DQN Replay data were collected with sticky actions; 108k frames is the standard Atari cap.
    "paper": EvalProtocol("paper", sticky_action_probability=0.25, max_episode_frames=108_000),
    # The released notebook: no sticky actions, its demo's 5000-step rollouts, JPEG'd frames.
    "colab": EvalProtocol("colab", sticky_action_probability=0.0, max_episode_frames=20_000, jpeg_quality=95),
}


def rom_name(game: str) -> str:
    """DQN-replay game name -> ALE ROM id, e.g. MsPacman -> ms_pacman."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", atari.check_game(game)).lower()


def make_vector_env(game: str, num_envs: int, protocol: EvalProtocol, num_threads: int = 0) -> AtariVectorEnv:
    """Dopamine-style preprocessing, one frame per observation, raw rewards, no life-loss ends."""
    return AtariVectorEnv(
        rom_name(game),
        num_envs,
        num_threads=num_threads,
        max_num_frames_per_episode=protocol.max_episode_frames,
        repeat_action_probability=protocol.sticky_action_probability,
        autoreset_mode="SameStep",
        stack_num=1,
        frameskip=4,
        maxpool=True,
        grayscale=True,
        noop_max=0,
        reward_clipping=False,
        use_fire_reset=False,
        episodic_life=False,
    )


def episode_seed(seed: int, game: str) -> int:
    """A per-game reset seed that does not depend on which other games share the run."""
    return (seed * 1_000_003 + sum(ord(c) * 31**i for i, c in enumerate(game))) % 2**30


def action_table(games: Sequence[str], envs_per_game: int) -> np.ndarray:
    """int [len(games) * envs_per_game, 18]: row b maps a full-set action to env b's minimal index."""
    return np.concatenate([np.tile(atari.full_to_minimal(game), (envs_per_game, 1)) for game in games])


def to_minimal_actions(table: np.ndarray, full_actions: np.ndarray) -> np.ndarray:
    """[B] full-set action ids -> [B] minimal-set indices of each row's game (NOOP where missing)."""
    return np.take_along_axis(table, np.asarray(full_actions)[:, None], axis=1)[:, 0].astype(np.int32)


def jpeg_round_trip(frames: np.ndarray, quality: int) -> np.ndarray:
    """[B, 84, 84, 1] uint8 -> the same frames after JPEG encoding and decoding."""
    flag = [cv2.IMWRITE_JPEG_QUALITY, quality]
    decoded = [cv2.imdecode(cv2.imencode(".jpg", frame, flag)[1], cv2.IMREAD_GRAYSCALE) for frame in frames]
    return np.stack(decoded)[..., None]


@dataclasses.dataclass
class _GameEnvs:
    """One vector environment of a game and its rows of its group's policy batch."""

    game: str
    env: AtariVectorEnv
    batch_slice: slice
    episodes_left: np.ndarray  # [E] episodes each environment still has to play
    episode_returns: np.ndarray  # [E] raw score of the running episode
    episode_lengths: np.ndarray  # [E] agent steps of the running episode
    scores: list[float]
    lengths: list[int]
    recording: bool  # its environment 0 plays the game's first episode, the one put on video

    @property
    def done(self) -> bool:
        return not self.episodes_left.any()


@dataclasses.dataclass
class _Group:
    """Environments sharing one policy batch: one vector environment per game."""

    runs: list[_GameEnvs]
    observations: np.ndarray  # [B, 84, 84, 1] the latest frame of every row
    episode_starts: np.ndarray  # [B] bool
    reward_tokens: np.ndarray  # [B] int32, of the step that led to the latest frame
    actions_to_minimal: np.ndarray  # [B, 18]
    context: Any = None
    pending_actions: jax.Array | None = None  # dispatched, maybe still computing

    @property
    def done(self) -> bool:
        return all(run.done for run in self.runs)


class UniformRandomPolicy:
    """The policy interface of `play`, uniform over one game's minimal action set (sent as full-set ids).

    The random baseline of a game's scores, played through the same environments and protocol as
    a model, so the two compare like for like.
    """

    def __init__(self, game: str):
        self._actions = jnp.asarray(atari.minimal_to_full(game), jnp.int32)

    def initial_context(self, num_envs: int) -> None:
        return None

    def act(self, context: None, observations: np.ndarray, episode_starts: np.ndarray,
            reward_tokens: np.ndarray, rng: jax.Array) -> tuple[jax.Array, None]:
        picks = jax.random.randint(rng, (len(observations),), 0, len(self._actions))
        return self._actions[picks], None


@dataclasses.dataclass(frozen=True)
class GameResult:
    game: str
    scores: np.ndarray  # [episodes] raw (unclipped) episode scores
    lengths: np.ndarray  # [episodes] agent steps


ProgressFn = Callable[[int, int], None]  # (episodes finished so far, environment steps so far)
FrameFn = Callable[[str, np.ndarray], None]  # (game, [84, 84, 1] frame of its first episode)


def _make_group(
    games: Sequence[str], first_env: int, num_envs: int, episodes_per_game: int, envs_per_game: int,
    protocol: EvalProtocol, seed: int,
) -> _Group:
    """Environments first_env .. first_env + num_envs - 1 of every game, reset with distinct seeds.

    Environment j of a game plays its episodes j, j + envs_per_game, ... (fixed up front).
    """
    runs, observations = [], []
    for index, game in enumerate(games):
        env = make_vector_env(game, num_envs, protocol)
        first_observations, _ = env.reset(seed=episode_seed(seed, game) + first_env)
        observations.append(first_observations.reshape(num_envs, *tokens.FRAME_SHAPE))
        env_ids = range(first_env, first_env + num_envs)
        runs.append(
            _GameEnvs(
                game=game,
                env=env,
                batch_slice=slice(index * num_envs, (index + 1) * num_envs),
                episodes_left=np.array([len(range(j, episodes_per_game, envs_per_game)) for j in env_ids]),
                episode_returns=np.zeros(num_envs),
                episode_lengths=np.zeros(num_envs, np.int64),
                scores=[],
                lengths=[],
                recording=first_env == 0,
            )
        )
    batch_size = num_envs * len(games)
    return _Group(
        runs=runs,
        observations=np.concatenate(observations),
        episode_starts=np.ones(batch_size, bool),
        reward_tokens=np.zeros(batch_size, np.int32),
        actions_to_minimal=action_table(games, num_envs),
    )


def half_sizes(num_envs: int, overlap: bool = True) -> list[int]:
    """The batch sizes `play` splits one game's `num_envs` environments into: two halves (the first
    the larger) with `overlap` and at least 2 environments, else one batch."""
    halves = 2 if overlap and num_envs >= 2 else 1
    first = -(-num_envs // halves)  # ceil
    return [first, num_envs - first][:halves]


def play(
    policy: Policy | UniformRandomPolicy,
    games: Sequence[str],
    *,
    episodes_per_game: int,
    protocol: EvalProtocol = PROTOCOLS["paper"],
    seed: int = 0,
    max_envs_per_game: int | None = None,
    overlap: bool = True,
    on_progress: ProgressFn | None = None,
    on_frame: FrameFn | None = None,
) -> list[GameResult]:
    """Plays `episodes_per_game` episodes of every game with one batched policy; raw scores per game.

    Each game runs min(episodes, max_envs_per_game) environments. With `overlap` (and at least 2
    environments per game) they form two halves that alternate: the emulators of one half step
    while the device samples the other half's actions. A finished game's environments stop
    stepping; their (stale) rows stay in the batch so the policy is compiled once per half.
    """
    games = [atari.check_game(game) for game in games]
    if episodes_per_game < 1:
        raise ValueError(f"episodes_per_game must be >= 1, got {episodes_per_game}")
    envs_per_game = min(episodes_per_game, max_envs_per_game or episodes_per_game)
    sizes = half_sizes(envs_per_game, overlap)
    first_half = sizes[0]
    groups = [
        _make_group(games, first_env, size, episodes_per_game, envs_per_game, protocol, seed)
        for first_env, size in zip((0, first_half), sizes)
    ]
    rng = jax.random.key(seed)
    env_steps = 0

    def dispatch(group: _Group) -> None:
        """Starts sampling the group's next actions; returns before the device is done."""
        nonlocal rng
        rng, step_rng = jax.random.split(rng)
        # Copies: the device may still read its inputs while the next receive overwrites the buffers.
        frames = group.observations.copy()
        if protocol.jpeg_quality is not None:
            frames = jpeg_round_trip(frames, protocol.jpeg_quality)
        group.pending_actions, group.context = policy.act(
            group.context, frames, group.episode_starts.copy(), group.reward_tokens.copy(), step_rng
        )

    try:
        for group in groups:
            group.context = policy.initial_context(len(group.observations))
            dispatch(group)
        while not all(group.done for group in groups):
            for group in groups:
                if group.done:
                    continue
                minimal_actions = to_minimal_actions(group.actions_to_minimal, np.asarray(group.pending_actions))
                running = [run for run in group.runs if not run.done]
                for run in running:
                    run.env.send(minimal_actions[run.batch_slice])
                for run in running:
                    env_steps += _receive(run, group, on_frame)
                dispatch(group)
            if on_progress is not None:
                on_progress(sum(len(run.scores) for group in groups for run in group.runs), env_steps)
    finally:
        for group in groups:
            for run in group.runs:
                run.env.close()
    return [
        GameResult(
            game,
            np.array([s for group in groups for s in group.runs[index].scores]),
            np.array([n for group in groups for n in group.runs[index].lengths]),
        )
        for index, game in enumerate(games)
    ]


def _receive(run: _GameEnvs, group: _Group, on_frame: FrameFn | None) -> int:
    """Collects one step of a game's environments into its group's buffers; returns steps taken."""
    step_observations, rewards, terminated, truncated, info = run.env.recv()
    rows = np.asarray(info["env_id"])  # the environments this receive covers, in its order
    batch_rows = run.batch_slice.start + rows
    ended = terminated | truncated
    group.observations[batch_rows] = step_observations.reshape(len(rows), *tokens.FRAME_SHAPE)
    group.episode_starts[batch_rows] = ended
    group.reward_tokens[batch_rows] = tokens.encode_reward(rewards)
    counted = run.episodes_left[rows] > 0
    run.episode_returns[rows] += rewards
    run.episode_lengths[rows] += 1
    for row in rows[ended & counted]:
        run.scores.append(float(run.episode_returns[row]))
        run.lengths.append(int(run.episode_lengths[row]))
        run.episodes_left[row] -= 1
    run.episode_returns[rows[ended]] = 0.0
    run.episode_lengths[rows[ended]] = 0
    if on_frame is not None and run.recording and 0 in rows:
        first = int(np.flatnonzero(rows == 0)[0])
        frame = info["final_obs"][first] if ended[first] else step_observations[first]
        on_frame(run.game, frame.reshape(tokens.FRAME_SHAPE))
        run.recording = not ended[first]
    return len(rows)
