"""The train loop: mesh, state, restore-or-init, data from the restored step, steps, metrics, checkpoints.

One function, ``train``, read top to bottom, the same for every recipe (mgdt_jax/core/recipe.py): the
recipe gives the model, loss, data, step cost and evaluation; the loop knows no agent. Exact resume
rests on three facts: the checkpoint holds the whole train state (parameters, optimizer state,
step, RNG); the dropout key of a step is a function of the step (train_step.py); and the recipe's
data stream's batch ``k`` is a function of the config and ``k``. So a run restored at step ``n``
computes exactly the steps ``n, n+1, ...`` an uninterrupted run would have.

A non-finite loss stops the run before anything is saved from the broken state, so the newest
checkpoint is the last good one. The loss is looked at on log steps and save steps (reading it
every step would stall the device queue).
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import itertools
import json
import math
import os
import shutil
import signal
import threading
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils
import numpy as np

from mgdt_jax.core import checkpointing, files, sharding
from mgdt_jax.core.config_sections import field_names, read_section, section
from mgdt_jax.core.recipe import DEFAULT_RECIPE, Evaluator, Recipe, load_recipe
from mgdt_jax.core import flops
from mgdt_jax.core import metric_writer
from mgdt_jax.core.metric_writer import MetricWriter, Throughput
from mgdt_jax.core.optimizer import OptimizerConfig, check_optimizer_config
from mgdt_jax.core.train_step import Trainer, TrainConfig, TrainState, check_step_fits

CONFIG_FILE = "config.json"
TRAINING_CLAIM = ".training"  # in the workdir while a run trains there: the first host's process id
EVALUATION_SKIPPED = "evaluation_skipped"  # in a checkpoint's data position: stopped before its step's evaluation
PROFILE_DIR = "profile"  # config.train.profile_steps' traces: tensorboard --logdir <workdir>/profile
# Fields a resumed run or an experiment may change without changing what is trained (config_changes)
REPORTING_FIELDS = frozenset({"train.log_every", "train.profile_steps"})
# What a run (and the evaluation hook, eval/) writes in its workdir, by kind; anything else predates the run.
_RUN_FOLDERS = (checkpointing.CHECKPOINTS, checkpointing.INCOMPLETE, metric_writer.TENSORBOARD_DIR,
                metric_writer.EARLIER_RUNS_DIR, PROFILE_DIR, "eval")
_RUN_FILES = (CONFIG_FILE, metric_writer.METRICS_FILE)
RUN_ENTRIES = frozenset({*_RUN_FOLDERS, *_RUN_FILES, TRAINING_CLAIM})


def _check_run_entries(workdir: Path) -> None:
    """ValueError (one line) for an entry of the run's own that is of the other kind (a file named
    ``checkpoints``): found only when first written, after every step up to the first save or log."""
    for names, folder in ((_RUN_FOLDERS, True), (_RUN_FILES, False)):
        for name in names:
            if (path := workdir / name).exists() and path.is_dir() != folder:
                raise ValueError(f"{path}: is a {'file' if folder else 'folder'}, where the run keeps its "
                                 f"{'folder' if folder else 'file'} of that name; move it away")


class TrainingDiverged(RuntimeError):
    """The loss became NaN or Inf; the message says at which step and which checkpoint is intact."""


class DataStreamError(ValueError):
    """The recipe's training data broke its contract mid-run (ended early, or a batch of another
    size or shape); the message names the step and the fault."""


@dataclasses.dataclass(frozen=True)
class LoopConfig(TrainConfig):
    """The ``train`` section as the loop reads it: a config may leave out any field (these defaults;
    a section's other fields are the recipe's, e.g. the MGDT's ``eval_games``: ``Recipe.config_fields``)."""

    seed: int = 0  # parameter initialisation and dropout
    log_every: int = 100
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    eval_every: int = 0  # steps between calls of the recipe's evaluator; 0: never
    init_from: str = ""  # a run or step folder whose parameters start a new run (fine-tuning)
    profile_steps: int = 0  # steps traced with jax.profiler after the run's first (compiling) one; 0: none


def near_misses(config: Any, recipe_fields: Mapping[str, Collection[str]] | None = None) -> list[str]:
    """Warning lines for the fields a config section gives that nothing reads but named much like one
    that is read (``chekpoint_every``, ``shedule``, the MGDT's ``num_layer``): a typo in a config
    file (which ml_collections does not lock) runs with the other field's value in silence. The
    fields read are the core's (``train``, ``optimizer``) and ``recipe_fields``, the recipe's
    (``Recipe.config_fields``). Warnings, not errors: a field nothing declares may be read by code
    of one's own. Also a decaying schedule whose warm-up does not end before the run does."""
    read: dict[str, set[str]] = {"train": set(field_names(LoopConfig)), "optimizer": set(field_names(OptimizerConfig))}
    for name, fields in (recipe_fields or {}).items():
        read.setdefault(name, set()).update(fields)
    sections = set(read) | {"mesh", "recipe"}
    given_sections = set(config.keys()) if hasattr(config, "keys") else set()
    lines = [f"warning: config.{name} is no section the core or the recipe reads; did you mean {close[0]}?"
             for name in sorted(given_sections - sections) if (close := _near(name, sections))]
    for name, known in read.items():
        given = section(config, name, {})
        names = set(given.keys()) if hasattr(given, "keys") else set()  # a ConfigDict or a dict
        lines += [f"warning: config.{name}.{field} is no field the core or the recipe reads; did you mean {close[0]}? (that one "
                  f"{'is ' + _shown(given[close[0]]) if close[0] in names else 'is not set: its default is used'})"
                  for field in sorted(names - known) if (close := _near(field, known))]
    optimizer, steps = read_section(OptimizerConfig, section(config, "optimizer", {})), section(config, "train", {})
    num_steps = read_section(LoopConfig, steps).num_steps
    if optimizer.schedule != "constant" and optimizer.warmup_steps >= num_steps:  # a shrunk config keeps 4,000
        lines.append(f"warning: config.optimizer.warmup_steps {optimizer.warmup_steps} >= train.num_steps {num_steps}: "
                     f"the {optimizer.schedule} schedule never decays, the run ends still warming up")
    return lines


def _near(name: str, known: Collection[str]) -> list[str]:
    """The known name ``name`` is a likely typo of: two adjacent letters swapped (``dtpye``, ``esp``,
    which difflib's ratio rates low in short names), else difflib's closest at ratio >= 0.85."""
    swapped = [k for k in sorted(known) if name != k and name in {k[:j] + k[j + 1] + k[j] + k[j + 2:] for j in range(len(k) - 1)}]
    return swapped or difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.85)


def _shown(value: Any) -> str:
    """A config value on one line (a ConfigDict's repr is YAML, across lines)."""
    return repr(dict(value) if hasattr(value, "keys") else value)


@dataclasses.dataclass(frozen=True)
class TrainResult:
    workdir: Path
    first_step: int  # where this run started (0, or the step it resumed from)
    last_step: int  # the step reached (num_steps, or earlier when stopped)
    last_checkpoint: int | None
    stopped_by: str  # "" when num_steps was reached; "preempted" (SIGTERM) or "interrupted" (Ctrl-C): saved, stopped


def read_run_config(workdir: str | Path, recipe: str, sections: Sequence[str] = ()) -> dict[str, Any]:
    """The config a training run wrote into ``workdir`` (its ``CONFIG_FILE``), checked to be a run of
    ``recipe`` (runs from before recipes existed are the default recipe's) holding each of
    ``sections`` (e.g. ``model``: without it a reader would build the default model and report its
    weights missing from the checkpoint). ValueError (one line) for a missing or unreadable file, a
    run of another recipe or a section missing."""
    workdir = Path(workdir).expanduser()
    path = workdir / CONFIG_FILE
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{workdir}: no {CONFIG_FILE}: not a training run's workdir") from None
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: unreadable ({error})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path}: not a config (a JSON {type(config).__name__})")
    if not config:  # else read as a run of the default recipe, from before recipes were named
        raise ValueError(f"{path}: an empty config: not one a training run wrote")
    if config.get("recipe", DEFAULT_RECIPE) != recipe:
        raise ValueError(f"{workdir}: a run of the {config.get('recipe', DEFAULT_RECIPE)!r} recipe, not {recipe!r}")
    if missing := [section for section in sections if not isinstance(config.get(section), dict)]:
        raise ValueError(f"{path}: no {', '.join(missing)} section: not the config a training run wrote")
    return config


def check_paths_found(workdir: str | Path, paths: Iterable[str], what: str) -> None:
    """ValueError (one line) for a relative path of a run's config (a dataset, a benchmark) missing
    from the current folder: training resolved it from the folder it ran in, so an evaluation started
    elsewhere would otherwise report the file as damaged or of the wrong kind."""
    for path in paths:
        if path and not Path(path).is_absolute() and not Path(path).exists():
            raise ValueError(f"{path}: no such {what} here; {Path(workdir) / CONFIG_FILE} names it relative to the "
                             "folder training ran in: evaluate from there, or give training an absolute path")


def train(
    config: Any, workdir: str | Path, *, recipe: Recipe | None = None, evaluate: Evaluator | None = None
) -> TrainResult:
    """Trains ``config`` in ``workdir``, resuming from its newest checkpoint if it has one.

    ``config``: the experiment config, an ``ml_collections.ConfigDict`` or a dict of dicts (made one;
    the config.json it writes is its JSON). ``recipe`` defaults to the one ``config.recipe`` names, ``evaluate`` to the recipe's evaluator.
    Raises CheckpointError (one line) when the workdir's checkpoints belong to another recipe,
    ValueError for an empty ``workdir`` or one that is a file. A workdir this call created is removed
    again when the run fails before its first step (a bad config or data source), so no run folder
    without a run is left behind.
    """
    if not str(workdir).strip():  # Path("") is the current folder: a run would fill it
        raise ValueError("the workdir is empty: name a run folder")
    if isinstance(config, Mapping):  # the recipe's config may be a dict; the loop reads attributes and writes JSON
        import ml_collections

        config = ml_collections.ConfigDict(config)
    workdir = Path(workdir).expanduser().absolute()
    created = not workdir.exists()
    if jax.process_count() > 1:  # before any host makes the folder: else the first host may find another's
        multihost_utils.sync_global_devices("mgdt_jax workdir looked at")
    progress = {"stepping": False}  # set by _train when its first step starts
    try:
        with contextlib.ExitStack() as claim:  # entered by _train once the workdir is known to be usable
            return _train(config, workdir, recipe, evaluate, progress, claim)
    except BaseException:
        if created and not progress["stepping"] and jax.process_index() == 0:
            shutil.rmtree(workdir, ignore_errors=True)
        raise


def _train(
    config: Any, workdir: Path, recipe: Recipe | None, evaluate: Evaluator | None, progress: dict[str, bool],
    claim: contextlib.ExitStack,
) -> TrainResult:
    train_config = read_section(LoopConfig, section(config, "train", {}))
    primary = jax.process_index() == 0
    # A host's own data or folder may be bad where the others' are not: all stop here together.
    with sharding.every_process_or_none():
        _check_counts(train_config)
        check_optimizer_config(section(config, "optimizer", {}))
        if workdir.exists() and not workdir.is_dir():
            raise ValueError(f"{workdir}: is a file, not a run folder")
        if workdir.is_symlink() and not workdir.exists():  # mkdir said "[Errno 17] File exists"
            raise ValueError(f"{workdir}: a symbolic link to {os.readlink(workdir)}, which does not exist")
        _check_run_entries(workdir)
        # What is there before this run that no run writes: a run started in another tool's folder.
        foreign = sorted(path.name for path in workdir.iterdir() if path.name not in RUN_ENTRIES) if workdir.is_dir() else []
        workdir.mkdir(parents=True, exist_ok=True)
        if primary:  # a second run there would move this one's logs aside and mix checkpoints
            claim.enter_context(files.held(workdir / TRAINING_CLAIM, "another training"))
        recipe = recipe if recipe is not None else load_recipe(config)
        for line in near_misses(config, recipe.config_fields()) if primary else ():
            print(line, flush=True)

        # --- Data (first, so a bad source fails before anything compiles) -------------------------
        data = recipe.training_data(process_index=jax.process_index(), process_count=jax.process_count())
        if evaluate is None:
            evaluate = recipe.evaluator(workdir)

    # --- Mesh and train step -------------------------------------------------------------------
    mesh = sharding.make_mesh(section(config, "mesh", {}))
    trainer = Trainer(config, mesh, recipe)
    if primary and (idle := {axis: mesh.shape[axis] for axis in ("fsdp", "tensor")
                             if mesh.shape[axis] > 1 and axis not in trainer.parameter_axes}):
        print(f"warning: mesh {idle} splits no parameter: no parameter names a logical axis mapped there "
              f"(sharding.LOGICAL_AXIS_RULES; mgdt_jax.core.transformer.sharded), so those devices hold the same "
              "parameters", flush=True)

    writer = MetricWriter(workdir, enabled=primary)
    checkpointer = checkpointing.Checkpointer(
        workdir, save_every=train_config.checkpoint_every, keep=train_config.keep_checkpoints
    )
    preemption = _Preemption(checkpointer)
    trace = _StepTrace(workdir / PROFILE_DIR, train_config.profile_steps, writer, enabled=primary)
    stream: Iterator[dict[str, Any]] = iter(())
    try:
        writer.print(
            f"recipe {recipe.name}; data: {data.describe()}; mesh {dict(mesh.shape)} over "
            f"{jax.device_count()} {jax.devices()[0].platform} device(s) in {jax.process_count()} process(es)"
        )

        # --- Restore or init (the config is written once the checkpoints are known to fit) ------
        data_identity = data.identity()
        if (latest := checkpointer.latest_step()) is not None:
            _check_same_recipe(checkpointer, latest, recipe.name)
            recipe.check_resume(checkpointer.data_position(latest), str(checkpointer.directory / str(latest)))
            _warn_if_config_changed(workdir / CONFIG_FILE, json.loads(config.to_json_best_effort()), writer)
            state, saved_position = checkpointer.restore(trainer.abstract_state, latest)
            _warn_if_data_changed(getattr(data, "upgrade_identity", lambda saved: saved)(saved_position),
                                  data_identity, writer)
            writer.resume(int(state.step))
            writer.print(f"resumed from {checkpointer.directory / str(int(state.step))}"
                         + (f" (config.train.init_from {train_config.init_from} is not used: it initialises a new run "
                            "only)" if train_config.init_from else ""))
        else:
            if foreign:
                writer.print(f"warning: {workdir} already holds {', '.join(foreign[:3])}"
                             f"{f' and {len(foreign) - 3} more' if len(foreign) > 3 else ''}, which no run writes: "
                             "a new run starts in a folder of something else; its files go beside them")
            state = trainer.init(train_config.seed)
            writer.start_over()
            if train_config.init_from:
                params = checkpointing.load_checkpoint(train_config.init_from, target=trainer.abstract_state.params,
                                                       recipe=recipe.name)[0]  # another recipe's: named as such
                state = state.replace(params=params)
                writer.print(f"initialised the parameters from {train_config.init_from}")
        if primary and int(state.step) < train_config.num_steps:  # a run with nothing to do keeps its own config
            files.write_text(workdir / CONFIG_FILE, config.to_json_best_effort(indent=1) + "\n")
        if evaluate is None and train_config.eval_every:
            writer.print(f"warning: config.train.eval_every is {train_config.eval_every}, but recipe {recipe.name} has "
                         "no evaluator for this config: nothing will be evaluated")
        first_step = last_step = int(state.step)
        preempted = False

        def evaluation_due(step: int) -> bool:
            return bool(evaluate is not None and train_config.eval_every and step % train_config.eval_every == 0)

        def run_evaluation(step: int) -> None:
            scores = evaluate(trainer.model(state), step)
            writer.write(step, {f"eval/{name}": value for name, value in scores.items()})

        if (first_step and evaluation_due(first_step) and checkpointer.data_position(first_step).get(EVALUATION_SKIPPED)
                and not _evaluated(workdir, first_step, primary)):
            writer.print(f"evaluating step {first_step}: the run was stopped there before its evaluation")
            run_evaluation(first_step)
        if first_step >= train_config.num_steps:
            writer.print(f"nothing to do: the run is at step {first_step} of {train_config.num_steps}")
            return TrainResult(workdir, first_step, last_step, checkpointer.latest_step(), "")

        # --- The data from the restored step on; the step compiled ahead of time per batch layout --
        stream = data.iterate(first_step)
        batches = _checked_batches(stream, trainer, first_step, train_config.num_steps, data.describe())
        first_batch = next(batches)
        # A recipe may have several batch layouts (JAT: one per modality group), each its own program
        # and its own cost.
        first_layout = jax.tree.structure(first_batch)
        with sharding.every_process_or_none():  # a host whose step cannot fit stops them all
            compiled = {first_layout: trainer.lower_step(_shapes(first_batch)).compile()}
            check_step_fits(compiled[first_layout])
        costs = {first_layout: recipe.batch_cost(train_config.batch_size, first_batch)}
        writer.print(_flops_cross_check(costs[first_layout].flops, compiled[first_layout]))
        throughput = Throughput(
            num_devices=jax.device_count(),
            peak_flops_per_device=flops.peak_flops_per_device(jax.devices()[0], costs[first_layout].compute_dtype),
        )

        # --- Steps ---------------------------------------------------------------------------------
        steps = range(first_step + 1, train_config.num_steps + 1)
        progress["stepping"] = True  # from here a failure leaves the run's metrics to read
        preemption.watch_interrupts()
        previous_metrics = None
        trace.begin_at(first_step + 2)  # the first step compiles

        def save(step: int, evaluation_skipped: bool = False) -> None:
            with throughput.paused():
                _check_finite_params(state, step, checkpointer)
                checkpointer.save(state, {"recipe": recipe.name, **data_identity, "next_batch": step,
                                          **({EVALUATION_SKIPPED: True} if evaluation_skipped else {})}, force=True)

        try:
            for last_step, batch in zip(steps, itertools.chain([first_batch], batches)):
                layout = jax.tree.structure(batch)
                trace.before(last_step)
                if layout not in compiled:  # a new layout: its compilation is not timed
                    with throughput.paused():
                        with sharding.every_process_or_none():
                            compiled[layout] = trainer.lower_step(_shapes(batch)).compile()
                            check_step_fits(compiled[layout])
                        costs[layout] = recipe.batch_cost(train_config.batch_size, batch)
                state, metrics = compiled[layout](state, batch)
                if last_step > first_step + 1:  # the first step (with compilation) is not timed
                    throughput.count(costs[layout].tokens, costs[layout].flops)
                # At most two steps in flight: dispatch is asynchronous, and unbounded the loop ran up to
                # a log interval ahead of the device, so a SIGTERM or Ctrl-C was acted on that many steps
                # late (11 steps, 15 s, in a run of 1.3 s steps logging every 10).
                jax.block_until_ready(previous_metrics)
                previous_metrics = metrics
                if trace.ends_at(last_step):
                    with throughput.paused():  # writing the trace out is not training time
                        trace.stop(metrics)
                if last_step == first_step + 1:
                    jax.block_until_ready(metrics)
                    throughput.start(last_step)  # compilation and the first step are not timed
                if checkpointer.save_ended():
                    with throughput.paused():  # sealing reads the checkpoint's files
                        checkpointer.wait_until_finished()
                preempted = preemption.reached(last_step)
                due = checkpointer.should_save(last_step) or preempted or last_step == steps[-1]
                if last_step % train_config.log_every == 0 or due:
                    scalars = _finite_scalars(metrics, last_step, checkpointer)
                    rates, eta = throughput.report(last_step, steps[-1])
                    writer.write(last_step, {**scalars, **rates})
                    writer.print(_console_line(last_step, steps[-1], scalars, rates, eta, recipe))
                # A stop is quick, so its step's evaluation is left to the rerun, which runs it first.
                skipped = preempted and evaluation_due(last_step)
                if due:
                    save(last_step, evaluation_skipped=skipped)
                if preempted:
                    writer.print(f"{preemption.reason}: saved step {last_step}, stopping"
                                 + (" (its evaluation runs when the run is resumed)" if skipped else ""))
                    break
                if evaluation_due(last_step):
                    with throughput.paused():
                        run_evaluation(last_step)
        except DataStreamError as error:  # the steps taken are kept: a rerun goes on once the data is mended
            # Only on one host: the others would be inside the next step's collectives, not at this save.
            if jax.process_count() == 1 and checkpointer.latest_step() != last_step:
                _finite_scalars(metrics, last_step, checkpointer)  # nothing from a broken state is saved
                save(last_step)
            kept = checkpointer.latest_step() if jax.process_count() > 1 else last_step
            raise DataStreamError(f"{error}; " + (f"saved step {kept}" if kept == last_step else
                                                  f"the last checkpoint is step {kept}")) from None
    finally:
        preemption.close()  # first: a Ctrl-C during the rest of the clean-up must not skip it
        trace.stop()  # a run that ended or failed inside the traced steps keeps its trace
        getattr(stream, "close", lambda: None)()  # stops the data worker processes
        checkpointer.close()
        writer.close()
    # A notice during the last step stopped nothing, but for that step's evaluation.
    stopped = preempted and (last_step < train_config.num_steps or evaluation_due(last_step))
    return TrainResult(workdir, first_step, last_step, checkpointer.latest_step(), preemption.reason if stopped else "")


def _evaluated(workdir: Path, step: int, primary: bool) -> bool:
    """Whether the metrics (the first host's file) hold an evaluation of ``step``: every host gets
    the first host's answer, so that all evaluate or none."""
    try:
        found = primary and any(name.startswith("eval/") for entry in metric_writer.read_metrics(workdir)
                                if entry["step"] == step for name in entry)
    except FileNotFoundError:
        found = False
    return bool(multihost_utils.broadcast_one_to_all(np.asarray(found)))


def _check_counts(train_config: LoopConfig) -> None:
    """ValueError (one line) for a count no run can use: no steps to take, an empty batch, or no log step."""
    for name, least in (("num_steps", 1), ("batch_size", 1), ("log_every", 1), ("eval_every", 0), ("profile_steps", 0)):
        value = getattr(train_config, name)
        if not isinstance(value, int) or value < least:
            raise ValueError(f"config.train.{name} must be an integer >= {least}, got {value!r}")


def _check_same_recipe(checkpointer: checkpointing.Checkpointer, step: int, name: str) -> None:
    saved = checkpointer.data_position(step).get("recipe", DEFAULT_RECIPE)
    if saved != name:
        raise checkpointing.CheckpointError(
            f"{checkpointer.directory / str(step)}: a checkpoint of the {saved!r} recipe, and this config "
            f"trains {name!r} (config.recipe); use another workdir"
        )


def _warn_if_data_changed(saved: Mapping[str, Any], current: Mapping[str, Any], writer: MetricWriter) -> None:
    # A key the checkpoint lacks was added to the identity after it was saved: not a change of the data.
    changed = {key: (saved[key], value) for key, value in current.items() if key in saved and saved[key] != value}
    if changed:
        writer.print(
            "warning: the data stream differs from the checkpoint's (saved -> now: "
            + ", ".join(f"{key} {old!r} -> {new!r}" for key, (old, new) in changed.items())
            + "); the resumed run will not see the batches an uninterrupted run would have"
        )


def config_changes(path: Path, current: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """(field, saved value, current value) for each config field that differs from the run's
    config.json at ``path`` (fields as dotted names, e.g. ``train.seed``; a missing field is None);
    nothing for a run without a readable config.json. ``REPORTING_FIELDS`` are left out: they change
    what a run reports, not what it trains."""
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return []  # a run from before config.json, or one whose file was removed: nothing to compare
    return [change for change in differing_fields(saved, current) if change[0] not in REPORTING_FIELDS]


def differing_fields(before: Mapping[str, Any], now: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """(field, value before, value now) for each leaf of two nested mappings that differs, fields as
    dotted names (``train.seed``), sorted; a field missing on one side is None there."""

    def flat(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:  # {"train.seed": 0, ...}
        fields = {}
        for name, child in tree.items():
            fields.update(flat(child, f"{prefix}{name}.") if isinstance(child, Mapping) else {f"{prefix}{name}": child})
        return fields

    old, new = flat(before), flat(now)
    return [(key, old.get(key), new.get(key)) for key in sorted(old.keys() | new.keys()) if old.get(key) != new.get(key)]


def _warn_if_config_changed(path: Path, current: Mapping[str, Any], writer: MetricWriter) -> None:
    """One warning line naming the config fields changed since the run's config.json was written: a
    resumed run keeps the checkpoint's step, RNG and optimizer state, so a new ``train.seed`` has
    no effect, and a new ``train.num_steps`` reshapes the learning-rate schedule mid-run."""
    try:
        json.loads(path.read_text())
    except (OSError, ValueError) as error:  # no other config to compare with: resumed in silence, then replaced
        fault = "is missing" if isinstance(error, FileNotFoundError) else f"is unreadable ({files.first_line(error)})"
        writer.print(f"warning: {path} {fault}: the config the checkpoints were trained with cannot be compared with "
                     "this one; it is written anew from this config")
        return
    changes = config_changes(path, current)
    if not changes:
        return
    changed = [key for key, _, _ in changes]
    notes = []
    if "train.seed" in changed:
        notes.append("a changed train.seed has no effect (the checkpoint's RNG goes on)")
    if any(key == "train.num_steps" or key.startswith("optimizer.") for key in changed):
        notes.append("a changed num_steps or optimizer reshapes the learning-rate schedule from here")
    writer.print(f"warning: the config differs from the run's {CONFIG_FILE} ("
                 + ", ".join(f"{key} {old!r} -> {new!r}" for key, old, new in changes) + ")"
                 + "".join(f"; {note}" for note in notes))


def _finite_scalars(metrics: Mapping[str, jax.Array], step: int, checkpointer: checkpointing.Checkpointer) -> dict[str, float]:
    scalars = {f"train/{name}": float(value) for name, value in jax.device_get(metrics).items()}
    for name in ("train/loss", "train/grad_norm"):
        if not math.isfinite(scalars[name]):
            _stop_diverged(f"{name.removeprefix('train/')} is {scalars[name]} at step {step}", checkpointer)
    return scalars


@jax.jit
def _all_finite(tree: Any) -> jax.Array:
    return jnp.stack([jnp.isfinite(leaf).all() for leaf in jax.tree.leaves(tree)]).all()


def _check_finite_params(state: TrainState, step: int, checkpointer: checkpointing.Checkpointer) -> None:
    """A finite loss was computed before the update, so the updated parameters are checked too."""
    if not bool(_all_finite(state.params)):
        _stop_diverged(f"the parameters became non-finite at step {step}", checkpointer)


def _stop_diverged(what: str, checkpointer: checkpointing.Checkpointer) -> None:
    checkpointer.wait_until_finished()
    kept = checkpointer.latest_step()
    raise TrainingDiverged(
        f"{what}: training stopped; "
        + (f"the last good checkpoint is step {kept} in {checkpointer.directory}" if kept is not None else "no checkpoint was saved")
    )


def _console_line(
    step: int, last_step: int, scalars: Mapping[str, float], rates: Mapping[str, float], eta: str, recipe: Recipe
) -> str:
    summary = recipe.summary({name.removeprefix("train/"): value for name, value in scalars.items()})
    line = (
        f"step {step}/{last_step} loss {scalars['train/loss']:.4f}{f' ({summary})' if summary else ''} "
        f"lr {scalars['train/learning_rate']:.2e} grad_norm {scalars['train/grad_norm']:.3f}"
    )
    if rates:
        line += f" | {rates['perf/tokens_per_second']:,.0f} tokens/s {rates['perf/tflops_per_second_per_device']:.3f} TFLOP/s/device"
        if "perf/mfu" in rates:
            line += f" MFU {rates['perf/mfu']:.1%}"
    return f"{line} | {eta}"


def _checked_batches(
    stream: Iterable[Mapping[str, Any]], trainer: Trainer, first_step: int, num_steps: int, description: str
) -> Iterator[dict[str, jax.Array]]:
    """The global batches for steps ``first_step + 1 ..``, each checked against the recipe contract
    (``mgdt_jax/core/recipe.py``): a dict of numeric arrays holding this host's ``train.batch_size /
    process_count`` rows (offline recipes), and the same shapes for every batch of one layout.
    DataStreamError (one line naming the step) for a fault, and for a stream that ends before
    ``num_steps``: a short stream used to end the run early as if it had reached its last step,
    unsaved; a short batch trained silently on fewer rows than counted."""
    signatures: dict[frozenset, dict[str, tuple]] = {}  # per layout (its keys, as the loop's tree structure)
    rows = trainer.train_config.batch_size // jax.process_count()
    step = first_step
    for step, local_batch in enumerate(stream, first_step + 1):
        if not isinstance(local_batch, Mapping):
            raise DataStreamError(f"step {step}: a batch must be a dict of arrays, got a {type(local_batch).__name__}")
        local_batch = {name: np.asarray(value) for name, value in local_batch.items()}
        for name, array in local_batch.items():
            if not (jnp.issubdtype(array.dtype, jnp.number) or array.dtype == np.bool_):
                raise DataStreamError(f"step {step}: batch key {name!r} holds {array.dtype} values, not numbers")
            if not trainer.online and (array.ndim == 0 or array.shape[0] != rows):
                raise DataStreamError(
                    f"step {step}: batch key {name!r} has shape {array.shape}; its leading axis must be this host's "
                    f"{rows} rows (train.batch_size {trainer.train_config.batch_size} over {jax.process_count()} "
                    "process(es))")
        batch = trainer.shard_batch(local_batch)
        signature = {name: (value.shape, value.dtype) for name, value in batch.items()}
        expected = signatures.setdefault(frozenset(batch), signature)
        if signature != expected:
            changed = next(name for name in signature if signature[name] != expected[name])
            raise DataStreamError(
                f"step {step}: the training data's {changed!r} is {_describe(signature[changed])}, where earlier batches "
                f"of this layout were {_describe(expected[changed])} (a layout's shapes must not change)")
        yield batch
        if step >= num_steps:
            return
    if step == first_step:
        raise DataStreamError(f"the training data ({description}) yielded no batch for step {first_step + 1}")
    if step < num_steps:
        raise DataStreamError(f"the training data ({description}) ended after batch {step} of {num_steps}")


def _describe(shape_and_dtype: tuple) -> str:
    shape, dtype = shape_and_dtype
    return f"{dtype}[{', '.join(map(str, shape))}]"


def _shapes(batch: Mapping[str, jax.Array]) -> dict[str, jax.ShapeDtypeStruct]:
    return {name: jax.ShapeDtypeStruct(value.shape, value.dtype, sharding=value.sharding) for name, value in batch.items()}


def _flops_cross_check(analytic_flops: float, compiled_step: jax.stages.Compiled) -> str:
    """The analytic FLOPs of a step next to XLA's count for the compiled step (once per run).

    XLA's cost analysis describes one device's partition of the step, hence the device count.
    """
    per_device = flops.compiled_flops(compiled_step)
    if per_device is None:
        return f"FLOPs per step: analytic {analytic_flops:.3e} (no XLA cost analysis on this backend)"
    xla_flops = per_device * jax.device_count()
    return (
        f"FLOPs per step: analytic {analytic_flops:.3e}, XLA cost analysis {xla_flops:.3e} "
        f"(XLA / analytic = {xla_flops / analytic_flops:.3f}; XLA also counts optimizer and elementwise work and "
        "what remat recomputes, the analytic count neither, as MFU requires; and a loop's body once: lower for a "
        "step with a rollout or accumulation scan)"
    )


class _StepTrace:
    """Traces ``count`` steps with ``jax.profiler`` (XLA's device and host activity, as MaxText's and
    big_vision's profiler options do) into ``<directory>/plugins/profile/<time>/``, apart from the
    run's TensorBoard scalars (a run starting over moves those aside): TensorBoard's Profile tab
    (with the ``tensorboard-plugin-profile`` package) reads the ``.xplane.pb``, Perfetto the
    ``.trace.json.gz``. The first host only; the traced steps' throughput includes the tracer's cost."""

    def __init__(self, directory: Path, count: int, writer: MetricWriter, *, enabled: bool):
        self._directory, self._count, self._writer = directory, count, writer
        self._enabled = enabled and count > 0
        self._first: int | None = None  # the first step to trace (begin_at)
        self._last: int | None = None  # the last step run while tracing; None: not tracing yet

    def begin_at(self, step: int) -> None:
        self._first = step

    def before(self, step: int) -> None:
        if not self._enabled or self._first is None or step < self._first:
            return
        if step == self._first:
            try:
                jax.profiler.start_trace(str(self._directory))
            except Exception as error:  # a trace started elsewhere in the process, a folder not writable: train on
                self._writer.print(f"warning: config.train.profile_steps: cannot start the trace ({files.first_line(error)})")
                self._enabled = False
                return
        self._last = step

    def ends_at(self, step: int) -> bool:
        """Whether ``step`` is the last to trace (``stop`` then writes the trace out)."""
        return self._enabled and self._first is not None and step == self._first + self._count - 1

    def stop(self, metrics: Any = None) -> None:
        """Ends the trace once ``metrics`` (the last traced step's) are computed, and writes it; a
        failure to write (a full disk) is a warning line, never the end of the run or of its clean-up
        (``stop`` also runs in the loop's ``finally``)."""
        if not self._enabled or self._first is None:
            return
        self._enabled = False
        if self._last is None:  # a resumed run one step from its end
            self._writer.print(f"warning: config.train.profile_steps: nothing traced: the run ended or stopped before "
                               f"step {self._first}, the first after its compiling one")
            return
        jax.block_until_ready(metrics)  # the traced steps' device work, not only their dispatch
        try:
            jax.profiler.stop_trace()
        except Exception as error:
            self._writer.print(f"warning: config.train.profile_steps: the trace of steps {self._first}..{self._last} "
                               f"could not be written ({files.first_line(error)})")
            return
        traces = sorted((self._directory / "plugins" / "profile").glob("*"), key=lambda path: path.stat().st_mtime)
        self._writer.print(f"profiled steps {self._first}..{self._last}: {traces[-1] if traces else self._directory} "
                           f"(`tensorboard --logdir {self._directory}`, Profile tab; or the .trace.json.gz in Perfetto)")


class _Preemption:
    """SIGTERM seen by every host at the same step; on one host, Ctrl-C while stepping too.

    On several hosts that is Orbax's preemption sync point (JAX's distributed client catches the
    signal); on one host a signal handler sets a flag the loop reads after each step. Once steps
    run (``watch_interrupts``), the first Ctrl-C of a one-host run is handled the same way (save at
    the step's end, stop), and a second one interrupts at once, unsaved.
    """

    def __init__(self, checkpointer: checkpointing.Checkpointer):
        self._checkpointer = checkpointer
        self._signalled = False
        self.reason = "preempted"
        self._previous_handlers: dict[int, Any] = {}
        if jax.process_count() == 1:
            self._previous_handlers[signal.SIGTERM] = signal.signal(signal.SIGTERM, self._on_signal)

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._signalled = True

    def watch_interrupts(self) -> None:
        # A run started with SIGINT ignored (a background job of a script) keeps ignoring it; a
        # caller's handler (Python's, or a CLI's) is back after the run and answers a second Ctrl-C.
        if (jax.process_count() == 1 and threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGINT) not in (signal.SIG_IGN, None)):
            self._previous_handlers[signal.SIGINT] = signal.signal(signal.SIGINT, self._on_interrupt)

    def _on_interrupt(self, signum: int, frame: Any) -> None:
        self._signalled, self.reason = True, "interrupted"
        signal.signal(signal.SIGINT, self._previous_handlers.pop(signal.SIGINT))  # a second Ctrl-C stops now
        # os.write, not print: the handler may run inside a write to the same stream (the progress line).
        os.write(2, b"interrupted: saving at the end of this step, then stopping (Ctrl-C again stops now, unsaved)\n")

    def reached(self, step: int) -> bool:
        if jax.process_count() == 1:
            return self._signalled
        return self._checkpointer.reached_preemption(step)

    def close(self) -> None:
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)
