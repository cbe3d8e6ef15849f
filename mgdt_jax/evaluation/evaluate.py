"""Evaluate one model on a set of games: the code behind `mgdt-eval` and training's periodic evaluation."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from flax import nnx
from tqdm import tqdm

from mgdt_jax import actor, atari
from mgdt_jax.evaluation import report
from mgdt_jax.policy import Policy, SamplingConfig, sampling_preset


def resolve_games(suite: str | None = None, games: Sequence[str] | None = None) -> list[str]:
    """A suite name (train41, heldout5, all46, dqn60) or a list of games -> canonical game names."""
    if (suite is None) == (not games):
        raise ValueError("give exactly one of a suite or a list of games")
    if suite is not None:
        if suite not in atari.SUITES:
            raise ValueError(f"unknown suite {suite!r}: expected one of {', '.join(atari.SUITES)}")
        return list(atari.SUITES[suite])
    canonical = [atari.check_game(game.strip()) for game in games]
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
    if isinstance(protocol, str):
        if protocol not in actor.PROTOCOLS:
            raise ValueError(f"unknown protocol {protocol!r}: expected one of {', '.join(actor.PROTOCOLS)}")
        protocol = actor.PROTOCOLS[protocol]
    games = [atari.check_game(game) for game in games]
    policy = Policy(model, sampling)
    videos = report.VideoWriter(out_dir / "videos") if video and out_dir is not None else None
    bar = tqdm(total=episodes * len(games), unit="episode", desc="evaluating", disable=not show_progress)
    start = time.perf_counter()

    def on_progress(episodes_done: int, env_steps: int) -> None:
        bar.update(episodes_done - bar.n)
        bar.set_postfix_str(f"{env_steps / (time.perf_counter() - start):.0f} env steps/s", refresh=False)

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
    finally:
        bar.close()
        video_paths = videos.close() if videos else []
    settings = {
        "episodes_per_game": episodes,
        "seed": seed,
        "protocol": dataclasses.asdict(protocol),
        "sampling": dataclasses.asdict(sampling),
        "seconds": round(time.perf_counter() - start, 1),
        "videos": [str(p.relative_to(out_dir)) for p in video_paths],
        **(extra_settings or {}),
    }
    summary = report.summarise(results, settings)
    if out_dir is not None:
        report.write_report(summary, out_dir)
    return summary
