"""`mgdt-convert`: DQN Replay logs -> an RLDS dataset in TFDS format (array_record shards).

One shard per (game, run, checkpoint), holding the episodes that start in that checkpoint, so shards
convert independently (in parallel with Beam, see beam_pipeline.py) and a rerun skips the shards
already written. Each shard is written under a temporary name and renamed when complete, its
report saved next to it; `dataset_info.json`, which makes the directory loadable with
`tfds.builder_from_directory`, is written once every shard exists.

Each shard's part of the window index (mgdt_jax/data/step_store.py) is written with it, from the
same frames, so training never has to read whole episodes; the index's manifest goes last, after
`dataset_info.json`.

Layout of --logs: <Game>/<run>/replay_logs/*_ckpt.N.gz (as in gs://atari-replay-datasets/dqn/).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import tqdm
from array_record.python.array_record_module import ArrayRecordWriter
from tensorflow_datasets.core import dataset_info, naming, splits, utils

from data_pipelines import replay_logs, rlds_format
from mgdt_jax import atari
from mgdt_jax.data import step_store
from mgdt_jax.data.rlds_source import DataError

PROGRESS_DIR = "conversion"  # per-shard reports and the job description, inside the output directory
REPORT_FILE = "conversion_report.json"


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
    found = []
    for game_dir in sorted(p for p in logs_dir.iterdir() if p.is_dir()):
        try:
            game = atari.check_game(game_dir.name)
        except atari.UnknownGameError as error:
            raise ConversionError(f"{game_dir}: {error}") from None
        for run_dir in sorted(game_dir.iterdir(), key=lambda p: p.name):
            log_dir = run_dir / "replay_logs"
            if not run_dir.name.isdigit() or not log_dir.is_dir():
                raise ConversionError(f"{run_dir}: expected a run number holding replay_logs/")
            try:
                suffixes = replay_logs.list_checkpoints(log_dir)
            except replay_logs.ReplayLogError as error:
                raise ConversionError(str(error)) from None
            found += [(game, int(run_dir.name), suffix, str(log_dir)) for suffix in suffixes]
    if not found:
        raise ConversionError(f"{logs_dir}: no replay logs found (expected <Game>/<run>/replay_logs/*_ckpt.N.gz)")
    return [ShardTask(game, run, suffix, log_dir, index, len(found))
            for index, (game, run, suffix, log_dir) in enumerate(found)]


def _file_template(out_dir: Path) -> naming.ShardedFileTemplate:
    return naming.ShardedFileTemplate(data_dir=out_dir, dataset_name=rlds_format.DATASET_NAME,
                                      split=rlds_format.SPLIT, filetype_suffix=rlds_format.FILE_FORMAT)


def shard_path(out_dir: Path, task: ShardTask) -> Path:
    return Path(_file_template(out_dir).sharded_filepath(shard_index=task.index, num_shards=task.num_shards))


def _shard_report_path(out_dir: Path, task: ShardTask) -> Path:
    return Path(out_dir) / PROGRESS_DIR / f"{task.index:05d}_{task.name}.json"


def _write_json(path: Path, content: dict) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(content, indent=1) + "\n")
    os.replace(partial, path)


def shard_report(out_dir: Path, task: ShardTask) -> dict | None:
    """The report written with a shard, if the shard was written."""
    report_path = _shard_report_path(out_dir, task)
    return json.loads(report_path.read_text()) if report_path.exists() else None


def completed_shard(out_dir: Path, task: ShardTask) -> dict | None:
    """The report of a shard an earlier run converted, if its file is still there unchanged."""
    report = shard_report(out_dir, task)
    path = shard_path(out_dir, task)
    if report is None or report["status"] != "converted" or not path.exists() \
            or path.stat().st_size != report["num_bytes"]:
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
    partial = path.with_name(path.name + ".partial")
    index_dir = step_store.index_dir(out_dir)
    index_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    counts = replay_logs.CheckpointReport(task.checkpoint)
    full_action_ids = np.asarray(atari.minimal_to_full(task.game))
    error = None
    part = step_store.PartWriter(index_dir / (path.name + step_store.STEPS_SUFFIX))
    try:
        writer = ArrayRecordWriter(str(partial), "group_size:1")
        try:
            reader = replay_logs.RunReader(Path(task.log_dir), max_episode_steps)
            for episode in reader.episodes(task.checkpoint, counts):
                writer.write(rlds_format.serialize_episode(episode, task.game, task.run))
                part.add_episode(task.game, full_action_ids[episode.actions], episode.rewards, episode.observations)
                on_episode(episode.num_steps)
        finally:
            writer.close()
    except replay_logs.ReplayLogError as fault:
        partial.unlink(missing_ok=True)
        part.abort()
        if on_bad_checkpoint == "fail":
            raise ConversionError(str(fault)) from None
        error = str(fault)
        counts = replay_logs.CheckpointReport(task.checkpoint)
        ArrayRecordWriter(str(partial), "group_size:1").close()
        part = step_store.PartWriter(index_dir / (path.name + step_store.STEPS_SUFFIX))
    except BaseException:
        part.abort()
        raise
    os.replace(partial, path)
    step_store.write_entry(index_dir, path, part.close())
    report = {
        "shard": path.name, "game": task.game, "run": task.run, "checkpoint": task.checkpoint,
        "status": "converted" if error is None else "skipped", "error": error,
        **{k: v for k, v in dataclasses.asdict(counts).items() if k != "suffix"},
        "num_bytes": path.stat().st_size, "seconds": round(time.perf_counter() - started, 3),
    }
    _write_json(_shard_report_path(out_dir, task), report)
    return report


def prepare_output(out_dir: Path, tasks: list[ShardTask], max_episode_steps: int) -> None:
    """Creates out_dir for this job, or checks that it holds an earlier run of the same job."""
    out_dir = Path(out_dir)
    job = {"dataset": rlds_format.DATASET_NAME, "version": rlds_format.VERSION,
           "max_episode_steps": max_episode_steps,
           "shards": [[t.game, t.run, t.checkpoint] for t in tasks]}
    job_path = out_dir / PROGRESS_DIR / "job.json"
    if job_path.exists():
        if json.loads(job_path.read_text()) != job:
            raise ConversionError(f"{out_dir}: holds a conversion of other logs or options "
                                  f"({job_path} differs); choose an empty --out")
        return
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ConversionError(f"{out_dir}: not empty and not an earlier run of this conversion; choose an empty --out")
    job_path.parent.mkdir(parents=True, exist_ok=True)
    _write_json(job_path, job)


def finalize(out_dir: Path, tasks: list[ShardTask], reports: Iterable[dict]) -> dict:
    """Writes the conversion report and, last, the TFDS metadata that makes the dataset visible."""
    out_dir = Path(out_dir)
    reports = sorted(reports, key=lambda r: (r["game"], r["run"], r["checkpoint"]))
    if len(reports) != len(tasks):
        raise ConversionError(f"{out_dir}: {len(reports)} of {len(tasks)} shards written; rerun to finish")
    totals = {key: sum(r[key] for r in reports)
              for key in ("episodes", "steps", "truncated_episodes", "dropped_partial_episodes", "num_bytes")}
    totals["discontinuities"] = sum(r["discontinuous_with_previous"] for r in reports)
    totals["skipped_checkpoints"] = sum(r["status"] == "skipped" for r in reports)
    totals["shards"] = len(reports)
    summary = {"totals": totals, "shards": reports}
    _write_json(out_dir / REPORT_FILE, summary)
    identity = dataset_info.DatasetIdentity(
        name=rlds_format.DATASET_NAME, version=utils.Version(rlds_format.VERSION), data_dir=str(out_dir),
        module_name=rlds_format.__name__)
    info = dataset_info.DatasetInfo(
        builder=identity, features=rlds_format.features(), disable_shuffling=True,
        description="Atari DQN Replay logs as RLDS episodes, one shard per (game, run, checkpoint).",
        homepage="https://research.google/resources/datasets/dqn-replay/")
    info.set_file_format(rlds_format.FILE_FORMAT)
    info.set_splits(splits.SplitDict([splits.SplitInfo(
        name=rlds_format.SPLIT, shard_lengths=[r["episodes"] for r in reports],
        num_bytes=totals["num_bytes"], filename_template=_file_template(out_dir))]))
    info.write_to_directory(out_dir)  # dataset_info.json goes last: the dataset is now complete
    return summary


def convert_locally(tasks: list[ShardTask], out_dir: Path, max_episode_steps: int,
                    on_bad_checkpoint: str, progress: bool = True) -> list[dict]:
    """Converts the shards one after another in this process; the bar counts shards (for the ETA)
    and shows steps/s after every episode."""
    reports = []
    started = time.perf_counter()
    steps = 0
    with tqdm.tqdm(total=len(tasks), unit="shard", disable=not progress) as bar:

        def count(episode_steps: int) -> None:
            nonlocal steps
            steps += episode_steps
            bar.set_postfix_str(f"{steps:,} steps, {steps / (time.perf_counter() - started):,.0f} steps/s")

        for task in tasks:
            bar.set_description(task.name)
            reports.append(convert_shard(task, out_dir, max_episode_steps, on_bad_checkpoint, count))
            bar.update()
    return reports


def convert(logs_dir: Path, out_dir: Path, max_episode_steps: int = replay_logs.DEFAULT_MAX_EPISODE_STEPS,
            on_bad_checkpoint: str = "fail", runner: str = "local", beam_options: list[str] = (),
            progress: bool = True) -> dict:
    """Logs -> dataset and its window index; returns the conversion report (also written to out_dir).

    The index's parts come with the shards; what a shard converted before there was an index
    lacks is built here from its episodes, before the index's manifest is written.
    """
    tasks = discover_shards(logs_dir)
    if runner != "local":
        from data_pipelines import beam_pipeline

        beam_pipeline.check_runner(runner)
    prepare_output(out_dir, tasks, max_episode_steps)
    if runner == "local":
        reports = convert_locally(tasks, out_dir, max_episode_steps, on_bad_checkpoint, progress)
    else:
        reports = beam_pipeline.convert_with_beam(tasks, out_dir, max_episode_steps, on_bad_checkpoint,
                                                  runner, beam_options)
    summary = finalize(out_dir, tasks, reports)
    step_store.build_index(out_dir, progress=progress)
    return summary


def summary_line(report: dict, out_dir: Path, seconds: float) -> str:
    t = report["totals"]
    return (f"converted {t['episodes']} episodes ({t['steps']} steps, {t['steps'] / max(seconds, 1e-9):,.0f} "
            f"steps/s) into {t['shards']} shards at {out_dir}; dropped {t['dropped_partial_episodes']} partial "
            f"episodes, {t['discontinuities']} discontinuities, {t['skipped_checkpoints']} skipped checkpoints; "
            f"report: {Path(out_dir) / REPORT_FILE}; window index: {step_store.index_dir(out_dir)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mgdt-convert", description=__doc__.split("\n\n")[0])
    parser.add_argument("--logs", type=Path, required=True, help="holds <Game>/<run>/replay_logs/")
    parser.add_argument("--out", type=Path, required=True, help="dataset directory (empty, or an earlier run)")
    parser.add_argument("--max-episode-steps", type=int, default=replay_logs.DEFAULT_MAX_EPISODE_STEPS,
                        help="episodes of exactly this many rows were truncated by the time limit")
    parser.add_argument("--on-bad-checkpoint", choices=("fail", "skip"), default="fail")
    parser.add_argument("--runner", default="local",
                        help="local (in-process), or a Beam runner: DirectRunner, DataflowRunner, FlinkRunner...")
    parser.add_argument("--beam-option", action="append", default=[], dest="beam_options", metavar="FLAG",
                        help="passed to Beam, e.g. --beam-option=--direct_num_workers=4 (repeatable)")
    args = parser.parse_args(argv)
    if args.max_episode_steps < 1:
        parser.error("--max-episode-steps must be positive")
    started = time.perf_counter()
    try:
        report = convert(args.logs, args.out, args.max_episode_steps, args.on_bad_checkpoint, args.runner,
                         args.beam_options)
    except (ConversionError, DataError, OSError) as error:
        print(f"mgdt-convert: error: {error}", file=sys.stderr)
        return 1
    print(summary_line(report, args.out, time.perf_counter() - started))
    return 0


if __name__ == "__main__":
    # Run the imported module's main, not this __main__ copy: beam_pipeline raises and pickles the
    # classes of data_pipelines.convert.
    from data_pipelines import convert as importable

    sys.exit(importable.main())
