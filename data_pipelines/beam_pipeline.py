"""The conversion of convert.py as an Apache Beam pipeline, for many cores or a cluster.

The shards are the unit of work: Beam distributes `convert_shard` calls, each worker writes its
shard and its report straight into the output directory, and the driver finalizes the dataset once
the pipeline has finished. Locally the DirectRunner runs in multi-processing mode; on Dataflow,
Flink or Spark pass the runner's options through (see docs/data.md). The log and output
directories must be visible to every worker under the same path (a shared or FUSE-mounted
filesystem).
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import io
import os
import re
import time
from pathlib import Path

from data_pipelines import replay_shards


def _convert_and_log(task_fields: dict, out_dir: str, max_episode_steps: int) -> dict:
    """One shard on a worker; faults are recorded in its report (status "skipped"), never raised,
    so that one bad checkpoint does not make Beam retry or abort the others."""
    task = replay_shards.ShardTask(**task_fields)
    report = replay_shards.convert_shard(task, Path(out_dir), max_episode_steps, on_bad_checkpoint="skip")
    rate = report["steps"] / max(report["seconds"], 1e-9)
    print(f"shard {task.index + 1}/{task.num_shards} {task.name}: {report['status']}, {report['episodes']} "
          f"episodes, {report['steps']} steps, {rate:,.0f} steps/s", flush=True)
    return report


def runner_name(runner: str) -> str:
    """Beam's own spelling of a runner Beam finds by another (``directrunner``, ``direct``), so that
    what this module does for the DirectRunner applies to it (unknown names are left to ``check_runner``)."""
    from apache_beam.options.pipeline_options import StandardOptions

    spellings = {name.lower(): name for name in StandardOptions.KNOWN_RUNNER_NAMES}
    return spellings.get(runner.lower(), spellings.get(runner.lower() + "runner", runner))


def check_runner(runner: str, beam_options: list[str] = ()) -> None:
    """Fails before anything is written when Beam does not know the runner, cannot run it from this
    install, or rejects the options (what Beam would otherwise raise, with a traceback, on start)."""
    import apache_beam
    from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions
    from apache_beam.options.pipeline_options_validator import PipelineOptionsValidator
    from apache_beam.runners.runner import create_runner

    try:
        runner_object = create_runner(runner)
    except (ValueError, ImportError) as error:
        raise replay_shards.ConversionError(f"--runner {runner}: {str(error).splitlines()[0]}") from None
    if runner == "DataflowRunner":
        try:
            from apache_beam.runners.dataflow.internal import apiclient  # noqa: F401
        except ImportError:
            raise replay_shards.ConversionError(
                f"--runner DataflowRunner: submitting to Dataflow needs Beam's GCP extra, which this install "
                f"leaves out: pip install 'apache-beam[gcp]=={apache_beam.__version__}'") from None
    _check_words(beam_options)
    options = pipeline_options(runner, beam_options)
    usage = io.StringIO()
    try:
        with contextlib.redirect_stderr(usage):  # Beam's argparse prints its whole usage, then exits
            errors = PipelineOptionsValidator(options, runner_object).validate()
            workers = options.view_as(DirectOptions).direct_num_workers
            named = options.get_all_options(retain_unknown_options=True)
    except SystemExit:
        raise replay_shards.ConversionError(f"--beam-option: {usage.getvalue().strip().partition('error: ')[2]}") from None
    except ValueError as error:  # a flag argparse cannot even declare, such as "--="
        raise replay_shards.ConversionError(f"--beam-option: {error}") from None
    if errors:
        raise replay_shards.ConversionError(f"--runner {runner}: {'; '.join(error.strip() for error in errors)}")
    if workers < 0:
        raise replay_shards.ConversionError(f"--beam-option=--direct_num_workers={workers}: must be >= 0 (0: one per core)")
    # The DirectRunner drops an option it does not know with a warning and runs without it, so a
    # misspelt one (--direct_num_worker) would convert with other settings than asked; the portable
    # runners and Dataflow pass such options on to their own service, so there they stay.
    if runner == "DirectRunner":
        known = PipelineOptions([]).get_all_options()  # every option's name; no flags, no warning
        unknown = [name for name in named if name not in known]
        if unknown:
            typed = next((flag.split("=", 1)[0] for flag in beam_options
                          if flag.lstrip("-").split("=", 1)[0].replace("-", "_") == unknown[0]), f"--{unknown[0]}")
            close = difflib.get_close_matches(unknown[0], known, n=1)
            raise replay_shards.ConversionError(f"--beam-option={typed}: the DirectRunner knows no such option"
                                          + (f" (did you mean --{close[0]}?)" if close else ""))


def _check_words(beam_options: list[str]) -> None:
    """Refuses what Beam's parser would drop or misread silently: "--", a single-dash flag, a space
    in a flag's name, a bare word that is not the value of the flag before it (--beam-option=--project
    --beam-option=NAME is; after a flag that takes no value, as --streaming, or after one given with
    "=", it is dropped), and --runner (it would override mgdt-convert's, unchecked) or --help."""
    beam_options = [option if isinstance(option, str) else "--" for option in beam_options]  # argparse reads "--" as []
    for previous, option in zip([""] + beam_options, beam_options):
        name = option.split("=", 1)[0]
        if name in ("--runner", "--help"):
            raise replay_shards.ConversionError(f"--beam-option={name}: not for --beam-option"
                                          + (" (give mgdt-convert's --runner)" if name == "--runner" else ""))
        if name.startswith("--") and len(name) > 2:
            if any(character.isspace() for character in name):  # Beam would take the whole word as the flag's name
                raise replay_shards.ConversionError(f"--beam-option={option}: a space in a flag's name "
                                              "(write --beam-option=--NAME=VALUE)")
            continue
        if (option.startswith("-") and not _is_number(option)) or not previous.startswith("--") or "=" in previous:
            raise replay_shards.ConversionError(f"--beam-option={option}: not a flag (write --beam-option=--NAME=VALUE)")
        alone = _parsed([previous])
        if alone is not None and alone == _parsed([previous, option]):  # the flag parses alone, and the word changed nothing
            raise replay_shards.ConversionError(f"--beam-option={option}: dropped by Beam, {previous} takes no value "
                                          f"(write --beam-option={previous} alone)")


def _is_number(word: str) -> bool:
    """A negative number is a flag's value to argparse (--parallelism -1), not a flag: the words its
    parser reads as numbers (argparse's ``_negative_number_matcher``)."""
    return re.fullmatch(r"-\d+|-\d*\.\d+", word) is not None


def _parsed(flags: list[str]) -> dict | None:
    """Beam's reading of ``flags`` (unknown ones kept), or None where its parser refuses them (a flag
    that needs a value given without one)."""
    from apache_beam.options.pipeline_options import PipelineOptions

    try:
        with contextlib.redirect_stderr(io.StringIO()):  # argparse prints its usage, then exits
            return PipelineOptions(flags).get_all_options(retain_unknown_options=True)
    except SystemExit:
        return None


def pipeline_options(runner: str, beam_options: list[str]):
    """Beam options for `runner`: the DirectRunner defaults to one process per core, and workers
    log warnings only, so that their shard lines stay readable; `beam_options` override both."""
    from apache_beam.options.pipeline_options import PipelineOptions

    def given(flag: str) -> bool:
        return any(option.startswith(flag) for option in beam_options)

    flags = [f"--runner={runner}"]
    if runner == "DirectRunner":
        if not given("--direct_running_mode"):
            flags += ["--direct_running_mode=multi_processing"]
        if not given("--direct_num_workers"):  # also with a mode given: Beam's default is one worker
            flags += [f"--direct_num_workers={os.cpu_count() or 1}"]
    if not given("--default_sdk_harness_log_level"):
        flags += ["--default_sdk_harness_log_level=WARNING"]
    return PipelineOptions(flags + list(beam_options))


def local_runner(options):
    """The runner of ``--runner DirectRunner``: Beam's FnApiRunner, with ``options`` handed to its
    workers (so that they log at the level asked). Beam's DirectRunner, given this pipeline, first
    tries its Prism runner, a binary it downloads from GitHub at run time, and only after that fails
    (offline) runs it on the FnApiRunner: seconds lost, and an empty /tmp/beam-temp* folder left
    by every run."""
    from apache_beam.portability.api import beam_provision_api_pb2
    from apache_beam.runners.portability.fn_api_runner import fn_runner
    from apache_beam.runners.portability.portable_runner import JobServiceHandle

    provision = beam_provision_api_pb2.ProvisionInfo(
        pipeline_options=JobServiceHandle.encode_pipeline_options(options.get_all_options()))
    return fn_runner.FnApiRunner(provision_info=fn_runner.ExtendedProvisionInfo(provision))


def convert_with_beam(tasks: list[replay_shards.ShardTask], out_dir: Path, max_episode_steps: int,
                      on_bad_checkpoint: str, runner: str, beam_options: list[str]) -> list[dict]:
    """Runs every shard through Beam; returns the shard reports the workers wrote."""
    import apache_beam as beam

    started = time.perf_counter()
    options = pipeline_options(runner, beam_options)
    with beam.Pipeline(runner=local_runner(options) if runner == "DirectRunner" else None, options=options) as pipeline:
        _ = (pipeline
             | "Shards" >> beam.Create([dataclasses.asdict(task) for task in tasks])  # plain data pickles anywhere
             | "Spread" >> beam.Reshuffle()
             | "Convert" >> beam.Map(_convert_and_log, out_dir=str(out_dir), max_episode_steps=max_episode_steps))
    reports = [replay_shards.shard_report(out_dir, task) for task in tasks]
    missing = [task.name for task, report in zip(tasks, reports) if report is None]
    if missing:
        raise replay_shards.ConversionError(f"{out_dir}: the {runner} pipeline finished without shards {missing}")
    skipped = [report for report in reports if report["status"] == "skipped"]
    if skipped and on_bad_checkpoint == "fail":
        raise replay_shards.ConversionError(skipped[0]["error"])
    print(f"{runner}: {len(tasks)} shards in {time.perf_counter() - started:.1f} s", flush=True)
    return reports
