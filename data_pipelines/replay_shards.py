"""The shards of a DQN-replay conversion: one RLDS shard per (game, run, checkpoint) of the logs,
holding the episodes that start in that checkpoint, so shards convert independently (one after
another in convert.py, in parallel in beam_pipeline.py) and a rerun skips those already written.
A shard is written under a temporary name and renamed when complete, with its part of the window
index (mgdt_jax/recipes/mgdt/step_store.py) and its report beside it.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from data_pipelines import replay_logs, rlds_format, rlds_writer
from mgdt_jax.core import files
from mgdt_jax.envs import atari
from mgdt_jax.recipes.mgdt import step_store

PROGRESS_DIR = "conversion"  # per-shard reports and the job description, inside the output directory


class ConversionError(ValueError):
    """Input or output that stops a conversion; the message names the path and the fault."""


@dataclasses.dataclass(frozen=True)
class ShardTask:
    """One output shard: the episodes starting in one checkpoint of one run."""

    game: str
    run: int
    checkpoint: int
    log_dir: str
    index: int
    num_shards: int

    @property
    def name(self) -> str:
        return f"{self.game}_run{self.run}_ckpt{self.checkpoint:03d}"


def discover_shards(logs_dir: Path) -> list[ShardTask]:
    """Every checkpoint under logs_dir/<Game>/<run>/replay_logs, in (game, run, checkpoint) order."""
    logs_dir = Path(logs_dir)
    if not logs_dir.is_dir():
        raise ConversionError(f"{logs_dir}: not a directory")
    found, runs = [], {}
    for game_dir in sorted(p for p in logs_dir.iterdir() if p.is_dir()):
        try:
            game = atari.check_game(game_dir.name)
        except atari.UnknownGameError as error:
            raise ConversionError(f"{game_dir}: {error}") from None
        for run_dir in sorted(game_dir.iterdir(), key=lambda p: p.name):
            log_dir = run_dir / "replay_logs"
            if run_dir.name.isdigit() and not log_dir.exists() and (run_dir / "replay_logs.partial").is_dir():
                raise ConversionError(f"{run_dir}: holds an interrupted mgdt-record (replay_logs.partial/); "
                                      "rerun that recording or remove the run")
            if not run_dir.name.isdigit() or not log_dir.is_dir():
                raise ConversionError(f"{run_dir}: expected a run number holding replay_logs/")
            if (same := runs.setdefault((game, int(run_dir.name)), run_dir)) != run_dir:  # Pong/1 and PONG/01
                raise ConversionError(f"{run_dir}: the same run as {same} ({game} run {int(run_dir.name)}); "
                                      "its episodes would be converted twice")
            try:
                suffixes = replay_logs.list_checkpoints(log_dir)
            except replay_logs.ReplayLogError as error:
                raise ConversionError(str(error)) from None
            found += [(game, int(run_dir.name), suffix, str(log_dir)) for suffix in suffixes]
    if not found:
        raise ConversionError(f"{logs_dir}: no replay logs found (expected <Game>/<run>/replay_logs/*_ckpt.N.gz)")
    return [ShardTask(game, run, suffix, log_dir, index, len(found))
            for index, (game, run, suffix, log_dir) in enumerate(found)]


def _check_values(episode: replay_logs.Episode, task: ShardTask, num_actions: int) -> None:
    """ReplayLogError naming the checkpoint's file for an action outside the game's minimal action
    set (logs of another game, or damaged: it indexed past the action table, or went in as -1) or
    a reward that is not finite (it trained into a NaN loss)."""
    if (bad := (episode.actions < 0) | (episode.actions >= num_actions)).any():
        raise replay_logs.ReplayLogError(
            f"{replay_logs.log_file(Path(task.log_dir), '$store$_action', task.checkpoint)}: action "
            f"{int(episode.actions[bad][0])} outside {task.game}'s {num_actions} actions (logs of another game?)")
    if not np.isfinite(episode.rewards).all():
        raise replay_logs.ReplayLogError(
            f"{replay_logs.log_file(Path(task.log_dir), '$store$_reward', task.checkpoint)}: reward "
            f"{episode.rewards[~np.isfinite(episode.rewards)][0]} is not a finite number")


def shard_path(out_dir: Path, task: ShardTask) -> Path:
    return rlds_writer.shard_path(out_dir, rlds_format.DATASET_NAME, rlds_format.SPLIT, task.index, task.num_shards)


def _shard_report_path(out_dir: Path, task: ShardTask) -> Path:
    return Path(out_dir) / PROGRESS_DIR / f"{task.index:05d}_{task.name}.json"


def shard_report(out_dir: Path, task: ShardTask) -> dict | None:
    """The report written with a shard, if the shard was written; None for a damaged report too,
    so the shard is converted again."""
    try:
        report = json.loads(_shard_report_path(out_dir, task).read_text())
    except (OSError, ValueError):
        return None
    return report if isinstance(report, dict) and "status" in report else None


def log_bytes(task: ShardTask) -> list[int]:
    """The byte sizes of the files of the task's checkpoint and of the next one (where its last
    episode ends), in name order: another recording of the same game, run and checkpoint differs."""
    return [path.stat().st_size for checkpoint in (task.checkpoint, task.checkpoint + 1)
            for path in sorted(Path(task.log_dir).glob(f"*_ckpt.{checkpoint}.gz"))]


def completed_shard(out_dir: Path, task: ShardTask) -> dict | None:
    """The report of a shard an earlier run converted, if its file is still there unchanged and was
    made from logs of the same sizes (a report of an earlier version, without them, is taken as is)."""
    report = shard_report(out_dir, task)
    path = shard_path(out_dir, task)
    if report is None or report["status"] != "converted" or not path.exists() \
            or path.stat().st_size != report.get("num_bytes"):
        return None
    if "log_bytes" in report and report["log_bytes"] != log_bytes(task):  # other logs: converted again
        return None
    return report


def convert_shard(task: ShardTask, out_dir: Path, max_episode_steps: int, on_bad_checkpoint: str,
                  on_episode: Callable[[int], None] = lambda steps: None) -> dict:
    """Writes one shard and its part of the window index (or finds them written) and returns its report.

    With on_bad_checkpoint="skip", unreadable logs leave an empty shard and a "skipped" report (a
    rerun tries it again); with "fail" they raise ConversionError.
    """
    out_dir = Path(out_dir)
    done = completed_shard(out_dir, task)
    if done is not None:
        return {**done, "resumed": True}
    path = shard_path(out_dir, task)
    index_dir = step_store.index_dir(out_dir)
    index_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    counts = replay_logs.CheckpointReport(task.checkpoint)
    full_action_ids = np.asarray(atari.minimal_to_full(task.game))
    error = None
    part = step_store.PartWriter(index_dir / (path.name + step_store.STEPS_SUFFIX))
    try:
        try:
            with rlds_writer.shard_writer(path) as write:
                reader = replay_logs.RunReader(Path(task.log_dir), max_episode_steps)
                for episode in reader.episodes(task.checkpoint, counts):
                    _check_values(episode, task, len(full_action_ids))
                    write(rlds_format.serialize_episode(episode, task.game, task.run))
                    part.add_episode(task.game, full_action_ids[episode.actions], episode.rewards, episode.observations)
                    on_episode(episode.num_steps)
        except replay_logs.ReplayLogError as fault:
            part.abort()
            if on_bad_checkpoint == "fail":
                raise ConversionError(str(fault)) from None
            error = str(fault)
            counts = replay_logs.CheckpointReport(task.checkpoint)
            part = step_store.PartWriter(index_dir / (path.name + step_store.STEPS_SUFFIX))
            with rlds_writer.shard_writer(path):
                pass  # an empty shard keeps the shard numbering; a rerun tries the checkpoint again
    except BaseException:
        part.abort()
        raise
    step_store.write_entry(index_dir, path, part.close())
    report = {
        "shard": path.name, "game": task.game, "run": task.run, "checkpoint": task.checkpoint,
        "status": "converted" if error is None else "skipped", "error": error,
        **{k: v for k, v in dataclasses.asdict(counts).items() if k != "suffix"},
        "num_bytes": path.stat().st_size, "seconds": round(time.perf_counter() - started, 3),
        "log_bytes": log_bytes(task),
    }
    files.write_json(_shard_report_path(out_dir, task), report)
    return report
