"""`mgdt-convert`: DQN Replay logs -> an RLDS dataset in TFDS format (array_record shards).

With --from-tfds instead of --logs it rewrites a TFDS dataset stored as TFRecord (such as
`rlu_atari` as TFDS prepares it) as array_record, which training needs (tfds_format.py).

One shard per (game, run, checkpoint), holding the episodes that start in that checkpoint
(replay_shards.py), so shards convert independently (in parallel with Beam, see beam_pipeline.py)
and a rerun skips the shards already written. Each shard is written under a temporary name and
renamed when complete, its report saved next to it; `dataset_info.json`, which makes the directory
loadable with `tfds.builder_from_directory`, is written once every shard exists.

Each shard's part of the window index (mgdt_jax/recipes/mgdt/step_store.py) is written with it, from the
same frames, so training never has to read whole episodes; the index's manifest goes last, after
`dataset_info.json`.

Layout of --logs: <Game>/<run>/replay_logs/*_ckpt.N.gz (as in gs://atari-replay-datasets/dqn/).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import tqdm

from data_pipelines import replay_logs, replay_shards, rlds_format, rlds_writer, tfds_format
from data_pipelines.replay_shards import PROGRESS_DIR, ConversionError, ShardTask, convert_shard, discover_shards
from mgdt_jax.core.commands import interruptible
from mgdt_jax.core import files
from mgdt_jax.recipes.mgdt import step_store
from mgdt_jax.recipes.mgdt.rlds_source import DataError

CONVERTING_CLAIM = ".converting"  # in the output directory while a conversion writes there: its process id
REPORT_FILE = "conversion_report.json"


class NoEpisodesError(ConversionError):
    """The logs converted to no episode at all: there is nothing to train on, and a job started by
    this run removes what it wrote."""


def prepare_output(out_dir: Path, tasks: list[ShardTask], max_episode_steps: int) -> bool:
    """Creates out_dir for this job, or checks that it holds an earlier run of the same job; True
    when this call started the job (out_dir was missing or empty), so all it holds is this job's."""
    out_dir = Path(out_dir)
    job = {"dataset": rlds_format.DATASET_NAME, "version": rlds_format.VERSION,
           "max_episode_steps": max_episode_steps,
           "shards": [[t.game, t.run, t.checkpoint] for t in tasks]}
    job_path = out_dir / PROGRESS_DIR / "job.json"
    if job_path.exists():
        try:
            previous = json.loads(job_path.read_text())
        except (OSError, ValueError) as error:
            raise ConversionError(f"{job_path}: unreadable ({error}); choose an empty --out") from None
        if previous != job:
            raise ConversionError(f"{out_dir}: holds a conversion of other logs or options "
                                  f"({job_path} differs); choose an empty --out")
        _check_finished_from_these_logs(out_dir, tasks)
        return False
    if out_dir.exists() and (not out_dir.is_dir() or any(path.name != CONVERTING_CLAIM for path in out_dir.iterdir())):
        raise ConversionError(f"{out_dir}: not empty and not an earlier run of this conversion; choose an empty --out")
    job_path.parent.mkdir(parents=True, exist_ok=True)
    files.write_json(job_path, job)
    return True


def _check_finished_from_these_logs(out_dir: Path, tasks: list[ShardTask]) -> None:
    """ConversionError when ``out_dir`` holds a finished dataset converted from other logs of the
    same layout (other recordings of the same games, runs and checkpoints: a converted shard's logs
    have other sizes now). An unfinished conversion converts such shards again (logs repaired after
    a failure); a finished one would be replaced without a word."""
    if not (out_dir / tfds_format.DATASET_INFO).exists():  # written last: the dataset is complete
        return
    for task in tasks:
        report = replay_shards.shard_report(out_dir, task)
        if report and report["status"] == "converted" and report.get("log_bytes", replay_shards.log_bytes(task)) \
                != replay_shards.log_bytes(task):
            raise ConversionError(f"{out_dir}: a finished conversion of other logs ({task.name}'s log files have "
                                  "other sizes than those it was converted from); choose an empty --out, or remove "
                                  "it to convert these logs there")


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
    if totals["episodes"] == 0:  # a dataset of no episode has no window to train on: its index cannot be built
        if totals["skipped_checkpoints"]:
            raise NoEpisodesError(f"{out_dir}: no episode converted: {totals['skipped_checkpoints']} of {len(reports)} "
                                  "checkpoints skipped as bad (--on-bad-checkpoint skip), the rest holding no complete "
                                  "episode; see the warnings above")
        raise NoEpisodesError(f"{out_dir}: the logs hold no complete episode ({totals['dropped_partial_episodes']} "
                              "unfinished episode(s) dropped); record until an episode ends")
    summary = {"totals": totals, "shards": reports}
    files.write_json(out_dir / REPORT_FILE, summary)
    rlds_writer.write_dataset_info(  # last: the dataset is now complete
        out_dir, name=rlds_format.DATASET_NAME, version=rlds_format.VERSION, module_name=rlds_format.__name__,
        features=rlds_format.features(), split=rlds_format.SPLIT, shard_lengths=[r["episodes"] for r in reports],
        num_bytes=totals["num_bytes"],
        description="Atari DQN Replay logs as RLDS episodes, one shard per (game, run, checkpoint).",
        homepage="https://research.google/resources/datasets/dqn-replay/")
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
    if Path(logs_dir).resolve() in Path(out_dir).resolve().parents:
        raise ConversionError(f"{out_dir}: inside --logs {logs_dir}, where it would stop the logs being read; "
                              "choose an --out outside it")
    if runner != "local":
        from data_pipelines import beam_pipeline

        runner = beam_pipeline.runner_name(runner)
        beam_pipeline.check_runner(runner, beam_options)
    with files.removing_created_folders(out_dir):  # folders made for --out go again if it ends with nothing in them
        with converting_into(out_dir):  # held before what is there is checked: another may finish meanwhile
            started_here = prepare_output(out_dir, tasks, max_episode_steps)
            try:
                if runner == "local":
                    reports = convert_locally(tasks, out_dir, max_episode_steps, on_bad_checkpoint, progress)
                else:
                    reports = beam_pipeline.convert_with_beam(tasks, out_dir, max_episode_steps, on_bad_checkpoint,
                                                              runner, beam_options)
                for report in reports:  # the report file holds them too, but a folder of nothing is removed
                    if report["status"] == "skipped":
                        print(f"warning: {report['game']} run {report['run']} checkpoint {report['checkpoint']} skipped "
                              f"(--on-bad-checkpoint skip): {report['error']}", file=sys.stderr, flush=True)
                summary = finalize(out_dir, tasks, reports)
            except NoEpisodesError:
                if started_here:  # everything in out_dir is this job's: shards of nothing would look resumable
                    for path in Path(out_dir).iterdir():
                        if path.name != CONVERTING_CLAIM:  # removed as the claim is let go
                            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
                raise
            step_store.build_index(out_dir, progress=progress)
    return summary


@contextlib.contextmanager
def converting_into(out_dir: Path) -> Iterator[None]:
    """Holds ``out_dir`` for this conversion (``OUT/.converting``, this process's id) while the block
    runs: a second mgdt-convert into the same --out at once is refused in one line (OSError) instead
    of writing the same shards beside the first (it ended in a rename error)."""
    with files.writing_into(Path(out_dir), CONVERTING_CLAIM, "another mgdt-convert"):
        yield


def summary_line(report: dict, out_dir: Path, seconds: float) -> str:
    t = report["totals"]
    converted_now = sum(shard["steps"] for shard in report["shards"] if not shard.get("resumed"))  # not a rerun's skips
    return (f"converted {t['episodes']} episodes ({t['steps']} steps, {converted_now / max(seconds, 1e-9):,.0f} "
            f"steps/s, {t['truncated_episodes']} truncated by the time limit) into {t['shards']} shards at "
            f"{out_dir}; dropped {t['dropped_partial_episodes']} partial "
            f"episodes, {t['discontinuities']} discontinuities, {t['skipped_checkpoints']} skipped checkpoints; "
            f"report: {Path(out_dir) / REPORT_FILE}; window index: {step_store.index_dir(out_dir)}")


@interruptible("mgdt-convert")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mgdt-convert", description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--logs", type=files.path_argument, help="holds <Game>/<run>/replay_logs/")
    source.add_argument("--from-tfds", type=files.path_argument, metavar="DIR",
                        help="a TFDS dataset stored as TFRecord (a version directory, or a directory above such "
                             "directories): written as array_record under --out, same relative paths")
    parser.add_argument("--out", type=files.path_argument, required=True, help="dataset directory (empty, or an earlier run)")
    parser.add_argument("--max-episode-steps", type=int, default=replay_logs.DEFAULT_MAX_EPISODE_STEPS,
                        help="the time limit the logs were written with, in agent steps: an episode that "
                             "nothing else ends stops there; one running past it is an error")
    parser.add_argument("--on-bad-checkpoint", choices=("fail", "skip"), default="fail",
                        help="a checkpoint that cannot be read: stop (fail) or leave it out and go on (skip)")
    parser.add_argument("--runner", default="local",
                        help="local (in-process), or a Beam runner: DirectRunner, DataflowRunner, FlinkRunner...")
    parser.add_argument("--beam-option", action="append", default=[], dest="beam_options", metavar="FLAG",
                        help="passed to Beam, e.g. --beam-option=--direct_num_workers=4 (repeatable)")
    args = parser.parse_args(argv)
    if args.max_episode_steps < 1:
        parser.error("--max-episode-steps must be positive")
    try:
        files.check_folder(args.out, "--out")  # before any reading: a path under a file named only an inner folder
    except OSError as error:
        print(f"mgdt-convert: error: {files.error_line(error, args.out)}", file=sys.stderr)
        return 1
    if args.from_tfds is not None:
        if (args.max_episode_steps, args.on_bad_checkpoint, args.runner, args.beam_options) != (
                replay_logs.DEFAULT_MAX_EPISODE_STEPS, "fail", "local", []):
            parser.error("--max-episode-steps, --on-bad-checkpoint, --runner and --beam-option apply to --logs only")
        return _main_from_tfds(args.from_tfds, args.out)
    if args.beam_options and args.runner == "local":
        parser.error("--beam-option applies to a Beam --runner only, not --runner local")
    started = time.perf_counter()
    try:
        report = convert(args.logs, args.out, args.max_episode_steps, args.on_bad_checkpoint, args.runner,
                         args.beam_options)
    except (ConversionError, DataError, OSError) as error:
        print(f"mgdt-convert: error: {files.error_line(error, args.out)}", file=sys.stderr)
        return 1
    print(summary_line(report, args.out, time.perf_counter() - started))
    return 0



def _main_from_tfds(source: Path, out: Path) -> int:
    try:
        # The window index is what training reads; the shards stay the dataset of record.
        with converting_into(out):
            converted = tfds_format.convert_to_array_record(source, out, lambda done: step_store.build_index(done.out))
    except (tfds_format.TfdsFormatError, DataError, OSError) as error:
        print(f"mgdt-convert: error: {files.error_line(error, out)}", file=sys.stderr)
        return 1
    for done in converted:
        print(f"converted {done.source} ({done.records} episodes, {done.shards} shards) to array_record at "
              f"{done.out}, with its window index")
    return 0


if __name__ == "__main__":
    # Run the imported module's main, not this __main__ copy: beam_pipeline raises and pickles the
    # classes of data_pipelines.convert.
    from data_pipelines import convert as importable

    sys.exit(importable.main())
