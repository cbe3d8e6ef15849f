"""Evaluate one model on a set of games: the code behind `mgdt-eval` and training's periodic evaluation."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from flax import nnx
from tqdm import tqdm

from mgdt_jax.recipes.mgdt import actor
from mgdt_jax.envs import atari
from mgdt_jax.recipes.mgdt import report
from mgdt_jax.recipes.mgdt.policy import Policy, SamplingConfig, sampling_preset

EVAL_DIR = "eval"  # <workdir>/eval/<step>/: reports of the periodic evaluation during training


def resolve_games(suite: str | None = None, games: Sequence[str] | None = None) -> list[str]:
    """A suite name (train41, heldout5, all46, dqn60) or a list of games -> canonical game names
    (blank names, as a trailing comma leaves, and repeats dropped)."""
    if suite is None and games is not None and not any(game.strip() for game in games):
        raise ValueError(f"the games {','.join(games)!r} name no game")
    games = [game.strip() for game in games or () if game.strip()]
    if (suite is None) == (not games):
        raise ValueError("give exactly one of a suite or a list of games")
    if suite is not None:
        if suite not in atari.SUITES:
            raise ValueError(f"unknown suite {suite!r}: expected one of {', '.join(atari.SUITES)}")
        return list(atari.SUITES[suite])
    canonical = [atari.check_game(game) for game in games]
    return list(dict.fromkeys(canonical))  # drop repeats, keep order


def evaluate(
    model: nnx.Module,
    games: Sequence[str],
    *,
    episodes: int,
    sampling: SamplingConfig | str = "expert",
    protocol: actor.EvalProtocol | str = "paper",
    seed: int = 0,
    max_envs_per_game: int | None = None,
    out_dir: Path | None = None,
    video: bool = False,
    show_progress: bool = True,
    extra_settings: Mapping[str, Any] | None = None,
) -> report.EvaluationSummary:
    """Plays `episodes` episodes of every game with one batched policy and summarises the scores.

    The model follows the batch contract and carries its ModelConfig as ``model.config``.
    With `out_dir`, writes report.json, scores.csv, scores.png (and one MP4 per game with `video`).
    """
    sampling = sampling_preset(sampling) if isinstance(sampling, str) else sampling
    protocol = _protocol(protocol)
    games = [atari.check_game(game) for game in games]
    policy = Policy(model, sampling)
    videos = report.VideoWriter(out_dir / report.VIDEOS) if video and out_dir is not None else None
    bar = tqdm(total=episodes * len(games), unit="episode", desc="evaluating", disable=not show_progress)
    start = time.perf_counter()

    def on_progress(episodes_done: int, env_steps: int) -> None:
        bar.update(episodes_done - bar.n)
        bar.set_postfix_str(f"{env_steps / (time.perf_counter() - start):.0f} env steps/s", refresh=False)

    played = False
    try:
        results = actor.play(
            policy,
            games,
            episodes_per_game=episodes,
            protocol=protocol,
            seed=seed,
            max_envs_per_game=max_envs_per_game,
            on_progress=on_progress,
            on_frame=videos.add_frame if videos else None,
        )
        played = True
    finally:
        bar.close()
        video_paths = videos.close(keep=played) if videos else []
    settings = {
        "episodes_per_game": episodes,
        "seed": seed,
        "protocol": dataclasses.asdict(protocol),
        "sampling": sampling.settings(),
        "seconds": round(time.perf_counter() - start, 1),
        "videos": [str(p.relative_to(out_dir)) for p in video_paths],
        **(extra_settings or {}),
    }
    summary = report.summarise(results, settings)
    if out_dir is not None:
        try:
            report.write_report(summary, out_dir, videos)
        except BaseException:
            if videos:
                videos.discard()
            raise
    return summary


def _protocol(protocol: actor.EvalProtocol | str) -> actor.EvalProtocol:
    """A protocol given by name (``actor.PROTOCOLS``) or as itself; ValueError for an unknown name."""
    if not isinstance(protocol, str):
        return protocol
    if protocol not in actor.PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}: expected one of {', '.join(actor.PROTOCOLS)}")
    return actor.PROTOCOLS[protocol]


def evaluate_random(
    games: Sequence[str],
    *,
    episodes: int,
    protocol: actor.EvalProtocol | str = "paper",
    seed: int = 0,
    out_dir: Path | None = None,
    extra_settings: Mapping[str, Any] | None = None,
) -> report.EvaluationSummary:
    """The uniformly random baseline of `evaluate`: the same environments, protocol, episodes and report.

    Each game is played by `actor.UniformRandomPolicy` over its minimal action set, so its scores
    are measured under the protocol the model is scored with, not taken from a reference table.
    """
    protocol = _protocol(protocol)
    games = [atari.check_game(game) for game in games]
    start = time.perf_counter()
    results = [actor.play(actor.UniformRandomPolicy(game), [game], episodes_per_game=episodes, protocol=protocol,
                          seed=seed)[0] for game in games]
    settings = {"episodes_per_game": episodes, "seed": seed, "protocol": dataclasses.asdict(protocol),
                "policy": "uniformly random minimal-set actions",
                "seconds": round(time.perf_counter() - start, 1), **(extra_settings or {})}
    summary = report.summarise(results, settings)
    if out_dir is not None:
        report.write_report(summary, out_dir)
    return summary


def training_evaluator(train_config: Any, workdir: Path) -> Callable[[nnx.Module, int], dict[str, float]]:
    """The periodic evaluation hook of the train loop: plays `eval_games` x `eval_episodes` episodes.

    Writes each report to <workdir>/eval/<step>/ and returns the scalars to log: the aggregates
    (``hns_iqm``, ``hns_median``, ``hns_mean``) and every game's raw mean (``<Game>_raw``).
    """
    games = [atari.check_game(game) for game in train_config.eval_games]

    def run(model: nnx.Module, step: int) -> dict[str, float]:
        summary = evaluate(
            model, games, episodes=train_config.eval_episodes, out_dir=Path(workdir) / EVAL_DIR / str(step),
            show_progress=False, extra_settings={"step": step},
        )
        scalars = {f"hns_{name}": interval.value for name, interval in summary.aggregates.items()}
        return scalars | {f"{game.game}_raw": game.raw_mean for game in summary.games}

    return run
