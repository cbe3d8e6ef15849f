"""Evaluation results -> report.json, scores.csv, scores.png and per-game MP4 episodes.

report.json is written last (atomically), so a directory with a report.json holds a complete report.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import shutil
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import imageio.v2 as imageio
import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from mgdt_jax.core import files  # noqa: E402
from mgdt_jax.recipes.mgdt.actor import GameResult  # noqa: E402
from mgdt_jax.recipes.mgdt import scores  # noqa: E402

REPORT_JSON, SCORES_CSV, SCORES_PNG, VIDEOS = "report.json", "scores.csv", "scores.png", "videos"
VIDEO_FPS = 15  # agent steps per second: 60 emulator frames / frame skip 4
VIDEO_UPSCALE = 4  # 84 -> 336 pixels, a multiple of the encoder's 16-pixel blocks


@dataclasses.dataclass(frozen=True)
class GameSummary:
    game: str
    raw_scores: list[float]
    episode_lengths: list[int]
    raw_mean: float
    normalised: scores.Interval | None  # None: no human score (reported raw only)


@dataclasses.dataclass(frozen=True)
class EvaluationSummary:
    games: list[GameSummary]
    aggregates: dict[str, scores.Interval]  # iqm, median, mean of human-normalised scores
    excluded_from_aggregates: list[str]  # games without a human score
    settings: dict[str, Any]  # protocol, sampling, episodes, seed, checkpoint...

    def one_line(self) -> str:
        """E.g. 'IQM 1.26 [1.10, 1.41], median ..., mean ... human-normalised over 39 games'."""
        if not self.aggregates:
            return f"no game with a human score; raw means: {', '.join(f'{g.game} {g.raw_mean:.1f}' for g in self.games)}"
        parts = [f"{name.upper() if name == 'iqm' else name} {i.value:.3f} [{i.low:.3f}, {i.high:.3f}]" for name, i in self.aggregates.items()]
        count = len(self.games) - len(self.excluded_from_aggregates)
        return f"{', '.join(parts)} human-normalised over {count} game(s)"

    def to_json(self) -> dict[str, Any]:
        return {
            "aggregates": {name: dataclasses.asdict(interval) for name, interval in self.aggregates.items()},
            "excluded_from_aggregates": {
                game: "no human reference score: reported raw, left out of normalised aggregates"
                for game in self.excluded_from_aggregates
            },
            "games": {
                g.game: {
                    "raw_scores": g.raw_scores,
                    "episode_lengths": g.episode_lengths,
                    "raw_mean": g.raw_mean,
                    "human_normalised": None if g.normalised is None else dataclasses.asdict(g.normalised),
                }
                for g in self.games
            },
            "settings": self.settings,
        }


def summarise(results: Sequence[GameResult], settings: Mapping[str, Any]) -> EvaluationSummary:
    """Per-game raw and human-normalised scores, and the aggregates over games with a human score."""
    normalised_by_game = {r.game: scores.human_normalised(r.game, r.scores) for r in results if scores.has_human_score(r.game)}
    games = [
        GameSummary(
            game=r.game,
            raw_scores=[float(s) for s in r.scores],
            episode_lengths=[int(n) for n in r.lengths],
            raw_mean=float(np.mean(r.scores)),
            normalised=scores.game_interval(normalised_by_game[r.game]) if r.game in normalised_by_game else None,
        )
        for r in results
    ]
    return EvaluationSummary(
        games=games,
        aggregates=scores.aggregate(normalised_by_game) if normalised_by_game else {},
        excluded_from_aggregates=[r.game for r in results if r.game not in normalised_by_game],
        settings=dict(settings),
    )


def write_report(summary: EvaluationSummary, out_dir: Path, videos: VideoWriter | None = None) -> Path:
    """Writes the CSV and the plot, then report.json (atomically); returns the JSON's path.
    ``videos`` (closed) get their finished names right before report.json appears. If any of it
    cannot be written (a full disk), none is left (``files.write_together``)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files.write_together(out_dir, {
        SCORES_CSV: lambda path: _write_csv(summary, path),
        SCORES_PNG: lambda path: _plot(summary, path),
        REPORT_JSON: lambda path: path.write_text(json.dumps(summary.to_json(), indent=2)),
    }, then=videos.publish if videos is not None else None)
    return out_dir / REPORT_JSON


def _write_csv(summary: EvaluationSummary, path: Path) -> None:
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["game", "episodes", "raw_mean", "raw_std", "hns_mean", "hns_low", "hns_high", "in_aggregates"])
        for g in summary.games:
            hns = ("", "", "") if g.normalised is None else (g.normalised.value, g.normalised.low, g.normalised.high)
            writer.writerow([g.game, len(g.raw_scores), g.raw_mean, float(np.std(g.raw_scores)), *hns,
                             g.normalised is not None])


def _plot(summary: EvaluationSummary, path: Path) -> None:
    """Per-game human-normalised means with 95% intervals, and the aggregates below them."""
    normalised = [g for g in summary.games if g.normalised is not None]
    rows = [(g.game, g.normalised) for g in normalised] + [(f"[{n.upper()}]", i) for n, i in summary.aggregates.items()]
    height = 1.0 + 0.28 * max(len(rows), 1)
    fig, ax = plt.subplots(figsize=(7.0, height))
    if rows:
        labels, intervals = zip(*rows)
        y = np.arange(len(rows))[::-1]
        values = np.array([i.value for i in intervals])
        errors = np.array([[i.value - i.low for i in intervals], [i.high - i.value for i in intervals]])
        colours = ["tab:blue"] * len(normalised) + ["tab:orange"] * len(summary.aggregates)
        ax.barh(y, values, xerr=errors, color=colours, capsize=2)
        ax.set_yticks(y, labels, fontsize=8)
        ax.axvline(1.0, color="grey", linestyle="--", linewidth=0.8)
        ax.set_xscale("symlog", linthresh=1.0)  # linear within +-1 (human level), log beyond: HNS spans 0.01..100
    ax.set_xlabel("human-normalised score (mean, 95% CI; symlog scale)")
    if summary.excluded_from_aggregates:
        ax.set_title(f"not shown (no human score): {', '.join(summary.excluded_from_aggregates)}", fontsize=8)
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)


class VideoWriter:
    """Streams each game's first episode into <out_dir>/<game>.partial.mp4, renamed to <game>.mp4
    by ``publish`` as the report that lists them is written (``write_report``)."""

    def __init__(self, out_dir: Path):
        self._out_dir = out_dir
        self._writers: dict[str, Any] = {}
        self._finished: list[tuple[Path, Path]] = []

    def add_frame(self, game: str, frame: np.ndarray) -> None:
        """frame: uint8 [84, 84, 1]."""
        if game not in self._writers:
            self._out_dir.mkdir(parents=True, exist_ok=True)
            self._writers[game] = imageio.get_writer(  # ffmpeg's own error lines: ours says it in one
                self._out_dir / f"{game}.partial.mp4", fps=VIDEO_FPS, macro_block_size=16, ffmpeg_log_level="fatal"
            )
        big = np.repeat(np.repeat(frame[..., 0], VIDEO_UPSCALE, axis=0), VIDEO_UPSCALE, axis=1)
        with warnings.catch_warnings():  # the first frame starts ffmpeg: JAX warns on any fork, this one execs
            warnings.filterwarnings("ignore", message="os.fork", category=RuntimeWarning)
            try:
                self._writers[game].append_data(big)
            except Exception as error:  # ffmpeg ended (a full disk): imageio's error spans its whole command line
                full = shutil.disk_usage(self._out_dir).free < 2**20
                raise OSError(f"{self._out_dir / f'{game}.partial.mp4'}: cannot be written (ffmpeg stopped: "
                              f"{'no space left on the disk' if full else files.first_line(error)})") from None

    def close(self, keep: bool = True) -> list[Path]:
        """Finishes every video and returns the paths ``publish`` will give them; with ``keep`` False
        (the evaluation did not finish) deletes them instead, so no cut-off episode is ever published.
        OSError (one line, naming the folder) when ffmpeg cannot finish one (a full disk): then none
        is kept."""
        failure = None
        for game, writer in self._writers.items():
            partial, path = self._out_dir / f"{game}.partial.mp4", self._out_dir / f"{game}.mp4"
            try:
                writer.close()
            except Exception as error:  # imageio's or ffmpeg's own error types
                failure = failure or error
            if keep and failure is None:
                self._finished.append((partial, path))
            else:
                partial.unlink(missing_ok=True)
        self._writers.clear()
        if failure is not None:
            self.discard()
            raise OSError(f"{self._out_dir}: a video cannot be finished ({files.first_line(failure)})")
        return [path for _, path in self._finished]

    def discard(self) -> None:
        """Deletes the finished videos not yet published: the report they belong to was not written."""
        for partial, _ in self._finished:
            partial.unlink(missing_ok=True)
        self._finished.clear()

    def publish(self) -> None:
        """Renames the finished videos to their final names, right before report.json: an evaluation
        stopped before its report leaves only partial names, which a rerun into the same folder
        overwrites, never finished-looking videos that no report lists. The partial videos of a
        killed earlier evaluation into this folder (of other games) are removed."""
        for partial, path in self._finished:
            os.replace(partial, path)
        self._finished.clear()
        for stale in self._out_dir.glob("*.partial.mp4"):
            stale.unlink(missing_ok=True)
