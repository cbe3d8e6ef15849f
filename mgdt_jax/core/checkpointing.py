"""Orbax checkpoints of a training run: parameters, optimizer state, step, RNG and the data position.

Each checkpoint ``<workdir>/checkpoints/<step>/`` holds three items, so evaluation can read the
parameters alone:

* ``params``: the model parameters;
* ``trainer``: the step, the optimizer state and the base RNG key;
* ``data``: the data position (JSON): the recipe that trained it, the index of the next global
  batch and what the stream was built from (seed, global batch size), since the stream is a pure
  function of those;
* ``rollout`` (online recipes only): the recipe's ``RolloutState`` (environment states, agent
  memories, curriculum state), so a resumed run continues the very episodes it was in. Typed PRNG
  keys in it (an environment's own key, e.g. xminigrid's) are stored as their uint32 key data and
  wrapped again on restore.

Saves are asynchronous (training continues while the arrays are written) and happen every
``save_every`` steps, on preemption (Orbax's multi-host sync point, which needs
``jax.distributed.initialize``) and whenever the loop forces one; the newest ``keep`` are kept. A
restore reads the arrays straight into the shardings of an abstract target, so a checkpoint written
on one mesh restores onto any other (8 devices -> 1 or 4, another host count).

Complete checkpoints: a save or copy interrupted on a filesystem without atomic renames (a bucket
mount) leaves a step directory that Orbax lists like any other but that is empty or lacks files.
``incomplete_reason`` is the one definition of a complete checkpoint and ``choose_checkpoint`` the
one way a step is picked: training resume, ``init_from``, evaluation and import all go through them.
The newest complete checkpoint is used, with one warning line naming the steps passed over; a step
asked for by number that is incomplete is an error. A resumed run moves incomplete steps out of
its checkpoint directory (to ``checkpoints.incomplete/``) so that its own saves can reuse the steps.

Damaged checkpoints: Orbax checksums only the index of its array shards, so a flipped bit in the
(zstd-compressed) array data restores as wrong numbers without an error. Once a save has finished,
``seal`` records the step and the SHA-256 of each of its files in the step's ``mgdt_digests.json``;
every read (``restore``, ``load_checkpoint``, ``data_position``) first checks Orbax's step files and
those of the items it reads against it and refuses a mismatch in one line naming the file. A sealed
step counts as complete whatever is missing from it (it had finished: a lost file is damage to
report, not an interrupted save to pass over). A step without digests (saved before they existed,
or killed between its save and its seal) is sealed when a run opens its checkpoint directory, and
read unchecked until then.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers as policies

from mgdt_jax.core import files
from mgdt_jax.core.sharding import every_process_or_none
from mgdt_jax.core.train_step import TrainState

PARAMS, TRAINER, DATA, ROLLOUT = "params", "trainer", "data", "rollout"
TRAINING_ITEMS = (PARAMS, TRAINER, DATA)  # what resuming a run needs; evaluation and init_from read PARAMS
CHECKPOINTS = "checkpoints"  # subdirectory of the workdir
INCOMPLETE = "checkpoints.incomplete"  # where a resumed run moves incomplete steps (subdirectory of the workdir)
ROTATION_RETRIES = 3  # reads of the newest step again when a running training removed the one being read
STEP_METADATA = "_CHECKPOINT_METADATA"  # Orbax's step-level file: the items a finished save wrote
DIGESTS = "mgdt_digests.json"  # step-level file: {"step": N, "sha256": {path within the step: digest}}


class _ReadOnlyNotice(logging.Filter):
    """Drops Orbax's "Given directory is read only" warning: every read here opens its manager
    read-only on purpose, and the warning read as a fault in the output of evaluations."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Given directory is read only")


logging.getLogger("absl").addFilter(_ReadOnlyNotice())


class CheckpointError(RuntimeError):
    """A checkpoint that is missing or cannot be restored; the message names it."""


def checkpoint_directory(path: str | Path) -> Path:
    """The checkpoint directory of a workdir, or ``path`` itself if it already is one."""
    path = Path(path).expanduser().absolute()
    return path / CHECKPOINTS if (path / CHECKPOINTS).is_dir() else path


def incomplete_reason(step_directory: Path, items: Sequence[str] = (PARAMS,)) -> str | None:
    """None if ``step_directory`` holds a complete checkpoint of ``items``, else what is wrong (a phrase).

    Complete: a sealed step (its save finished: a file missing or changed since is damage, which
    ``verify`` refuses, not a save to pass over); or Orbax's step metadata is readable and names every
    item in ``items``, and each item it names holds its metadata and at least one array (or JSON)
    file, none of its files empty (an interrupted write or copy leaves empty or missing files). Only
    directory listings and small JSON files are read, never an array. Raises CheckpointError,
    instead of returning a reason, for a finished checkpoint that lacks one of ``items`` (parameters only, as
    mgdt-import-checkpoint writes, where a training resume needs the trainer state): passing over it
    would silently start the run from scratch.
    """
    if not step_directory.is_dir():
        return "no such directory"
    if not any(step_directory.iterdir()):
        return "the directory is empty"
    sealed = is_sealed(step_directory)  # damage in it, digests included, is verify's to name
    try:
        written = json.loads((step_directory / STEP_METADATA).read_text())["item_handlers"]
        if not isinstance(written, dict):
            raise TypeError(written)
    except (OSError, ValueError, KeyError, TypeError):
        return None if sealed else f"no readable {STEP_METADATA} (the save or copy did not finish)"
    if not sealed:
        for item in sorted(written):
            if reason := _item_incomplete_reason(step_directory / item):
                return f"{item}: {reason}"
    if lacking := [item for item in items if item not in written]:
        raise CheckpointError(
            f"{step_directory}: holds {', '.join(sorted(written))} but not {', '.join(lacking)} "
            f"(a parameters-only checkpoint cannot resume training; start a new run from it with train.init_from)"
        )
    return None


def _item_incomplete_reason(item_directory: Path) -> str | None:
    if not item_directory.is_dir():
        return "missing"
    files = [path for path in item_directory.rglob("*") if path.is_file()]
    if empty := [path for path in files if path.stat().st_size == 0]:
        return f"{len(empty)} empty file(s), e.g. {empty[0].relative_to(item_directory)}"
    names = {path.name for path in files}
    if "_METADATA" in names or "manifest.ocdbt" in names:  # an array tree (Standard/PyTree handlers)
        if "_METADATA" not in names:
            return "no _METADATA"
        if not any(path.parent.name == "d" for path in files):
            return "no array files"
    elif "metadata" not in names:  # a JSON item
        return "no metadata file"
    return None


def is_sealed(step_directory: Path) -> bool:
    """Whether the step has a digests file (``seal`` ran on it; anything at that name counts)."""
    return os.path.lexists(step_directory / DIGESTS)


def seal(step_directory: Path) -> None:
    """Writes ``DIGESTS`` for a finished checkpoint: its step number and the SHA-256 of every file in
    it (Orbax's step metadata and each item's files), by path relative to the step directory.

    Call it only once the save has finished (its files no longer change) and before Orbax's keep
    policy may delete it. Written to a temporary name and renamed, so a digests file is never
    half-written. Reads every byte of the checkpoint once (about a second per GB; the files were just
    written, so mostly from the page cache).
    """
    digests = {"step": int(step_directory.name), "sha256": {
        path.relative_to(step_directory).as_posix(): files.sha256(path)
        for path in sorted(step_directory.rglob("*")) if path.is_file() and not path.name.startswith(DIGESTS)}}
    files.write_json(step_directory / DIGESTS, digests)


def _read_digests(step_directory: Path) -> dict[str, Any]:
    """The step's digests: ``files`` {path: SHA-256} and ``items``, the items they cover. OSError,
    ValueError, KeyError or TypeError for a digests file that is absent, not a file, not JSON, not
    of the expected form or of another step."""
    path = step_directory / DIGESTS
    if not path.is_file():
        raise OSError(f"not a file: {path}")
    recorded = json.loads(path.read_text())
    digests = recorded["sha256"]
    if not isinstance(digests, dict) or not all(isinstance(d, str) for d in digests.values()):
        raise TypeError("its sha256 entry is not {path: digest}")
    if recorded["step"] != int(step_directory.name):
        raise ValueError(f"the digests of step {recorded['step']}, not of step {step_directory.name}")
    return {"files": digests, "items": {name.split("/")[0] for name in digests if "/" in name}}


def verify(step_directory: Path, items: Sequence[str]) -> None:
    """Raises a one-line CheckpointError unless Orbax's step files and every file of ``items`` match
    the step's digests.

    The error names the first file (in path order) that is missing or whose bytes changed since
    ``seal``, an item the digests do not cover, or the digests file itself when it is damaged (or of
    another step: a renamed step directory). A step without digests is not checked. In a multi-host
    job every process must call it (it is collective): each hashes its share of the files and all
    raise the same error, so a job reads its checkpoint once, not once per host.
    """
    if not is_sealed(step_directory):
        return
    try:
        recorded = _read_digests(step_directory)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise CheckpointError(f"{step_directory / DIGESTS}: damaged ({_first_line(error)}); "
                              "remove it to read the checkpoint unchecked") from None
    if uncovered := sorted(set(items) - recorded["items"]):
        raise CheckpointError(f"{step_directory / DIGESTS}: damaged (records no file of {', '.join(uncovered)}); "
                              "remove it to read the checkpoint unchecked")
    names = sorted(name for name in recorded["files"] if "/" not in name or name.split("/")[0] in items)
    faults = ("missing (recorded when the checkpoint was saved)",
              "damaged, its bytes differ from those saved (SHA-256 mismatch)")
    first = len(names) * len(faults)  # index * len(faults) + fault of the first bad file; this value: none
    for index in range(jax.process_index(), len(names), jax.process_count()):
        path = step_directory / names[index]
        if not path.is_file():
            first = index * len(faults)
        elif files.sha256(path) != recorded["files"][names[index]]:
            first = index * len(faults) + 1
        else:
            continue
        break
    if jax.process_count() > 1:
        first = int(np.min(multihost_utils.process_allgather(np.asarray(first, np.int64))))
    if first < len(names) * len(faults):
        index, fault = divmod(first, len(faults))
        raise CheckpointError(f"{step_directory / names[index]}: {faults[fault]}")


def _sealed_items(step_directory: Path) -> set[str]:
    """The items a step's digests record (none for a step without readable digests: ``verify``
    names damaged ones)."""
    if not is_sealed(step_directory):
        return set()
    try:
        return set(_read_digests(step_directory)["items"])
    except (OSError, ValueError, KeyError, TypeError):
        return set()


@dataclasses.dataclass(frozen=True)
class CheckpointChoice:
    """The step ``choose_checkpoint`` picked (None: no complete checkpoint) and the newer ones it passed over."""

    directory: Path
    step: int | None
    skipped: tuple[tuple[int, str], ...]  # (step, what is incomplete), newest first

    def warning(self) -> str | None:
        """One line naming the skipped steps, or None if none was skipped."""
        if not self.skipped:
            return None
        passed = "; ".join(f"step {step} ({reason})" for step, reason in self.skipped)
        chosen = f"using step {self.step}" if self.step is not None else "no complete checkpoint is left"
        return f"warning: skipped incomplete checkpoint(s) in {self.directory}: {passed}; {chosen}"


def checkpoint_steps(directory: Path) -> list[int]:
    """The steps with a directory in ``directory`` (complete or not), ascending."""
    if not directory.is_dir():
        return []
    return sorted(int(path.name) for path in directory.iterdir() if _is_step_name(path.name) and path.is_dir())


def _is_step_name(name: str) -> bool:
    """Orbax's step directory names: ASCII digits without leading zeros (so ``02000`` or ``²`` are not steps)."""
    return name.isascii() and name.isdigit() and str(int(name)) == name


def choose_checkpoint(
    path: str | Path, step: int | None = None, *, items: Sequence[str] = (PARAMS,)
) -> CheckpointChoice:
    """The checkpoint to read from a workdir, checkpoint directory or one step's folder (``checkpoints/N``):
    ``step`` (that folder's), or the newest complete one.

    A ``step`` given by number that is missing or incomplete raises a one-line CheckpointError. Without
    one, incomplete newer steps are passed over and listed in ``skipped`` (print ``warning()``).
    """
    directory = checkpoint_directory(path)
    # One step's folder means that step: a complete one has its metadata; an incomplete one (say, empty)
    # holds no steps of its own, and is then named with what it lacks rather than as holding no checkpoint.
    if _is_step_name(directory.name) and directory.is_dir() and (
            (directory / STEP_METADATA).is_file() or not checkpoint_steps(directory)):
        if step is not None and step != int(directory.name):
            raise CheckpointError(f"{directory}: the folder of step {directory.name}, and step {step} was asked for")
        directory, step = directory.parent, int(directory.name)
    if step is not None:
        if not (directory / str(step)).is_dir():
            steps = checkpoint_steps(directory)
            raise CheckpointError(
                f"{directory}: no checkpoint at step {step} (steps here: {', '.join(map(str, steps)) or 'none'})"
            )
        if reason := incomplete_reason(directory / str(step), items):
            raise CheckpointError(f"{directory / str(step)}: incomplete checkpoint: {reason}")
        return CheckpointChoice(directory, step, ())
    skipped = []
    for candidate in reversed(checkpoint_steps(directory)):
        if (reason := incomplete_reason(directory / str(candidate), items)) is None:
            return CheckpointChoice(directory, candidate, tuple(skipped))
        skipped.append((candidate, reason))
    return CheckpointChoice(directory, None, tuple(skipped))


def print_warning(choice: CheckpointChoice) -> None:
    """The choice's warning line on stderr (once per job: on process 0)."""
    if (line := choice.warning()) is not None and jax.process_index() == 0:
        print(line, file=sys.stderr, flush=True)


def pick_checkpoint(path: str | Path, step: int | None = None, *, items: Sequence[str] = (PARAMS,)) -> tuple[Path, int]:
    """(checkpoint directory, step) to read: ``choose_checkpoint`` with its warning printed.

    Raises CheckpointError, naming what is wrong with each step, when there is no complete checkpoint.
    """
    choice = choose_checkpoint(path, step, items=items)
    if choice.step is None:
        skipped = "".join(f"; step {step}: {reason}" for step, reason in choice.skipped)
        raise CheckpointError(f"{choice.directory}: holds no complete checkpoint{skipped}")
    print_warning(choice)
    return choice.directory, choice.step


def _move_aside(path: Path, aside: Path) -> Path:
    """Moves ``path`` into the folder ``aside`` under its name (``NAME.1``, ``NAME.2``, ... if taken); the new path."""
    aside.mkdir(exist_ok=True)
    target, copy = aside / path.name, 1
    while target.exists():
        target, copy = aside / f"{path.name}.{copy}", copy + 1
    shutil.move(path, target)
    return target


def _tidy_directory(directory: Path, choice: CheckpointChoice) -> None:
    """Moves the skipped steps of ``directory`` to its sibling INCOMPLETE, so new saves can use their
    numbers, and seals the complete steps that lack digests.

    A file (not a folder) named like a step goes there too, with a warning: the save of that step
    would replace it. Moved, not deleted: an incomplete checkpoint may still be someone's copy in
    progress. Process 0 moves and seals; every process has listed the steps before and waits until
    it is done (a failure there is raised on every process).
    """
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("mgdt_jax: checkpoints listed")
    with every_process_or_none():  # a move that fails on process 0 stops every process, not just its own
        if jax.process_index() == 0:
            aside = directory.parent / INCOMPLETE
            if choice.skipped:
                print_warning(choice)
                for step, _ in choice.skipped:
                    _move_aside(directory / str(step), aside)
            strays = sorted(path for path in directory.iterdir() if _is_step_name(path.name) and not path.is_dir()) \
                if directory.is_dir() else []
            for path in strays:
                target = _move_aside(path, aside)
                print(f"warning: {path}: a file where checkpoint step {path.name} would be saved; moved to {target}",
                      file=sys.stderr, flush=True)
            for step in checkpoint_steps(directory):
                if not is_sealed(directory / str(step)) and incomplete_reason(directory / str(step), items=()) is None:
                    seal(directory / str(step))


def _storage_fault(line: str) -> str:
    """The first line of a storage error, short: TensorStore's (~2,000 characters) holds its status,
    the files it was writing, the OS's reason with ``[os_error_code='28']`` and its whole JSON spec;
    of those, the status and the OS's reason (``RESOURCE_EXHAUSTED: No space left on device (errno 28)``)."""
    line = line.split(" [tensorstore_spec=")[0]
    if os_error := re.search(r"([^:\"]+?) \[os_error_code='(\d+)'\]", line):
        return f"{line.split(':', 1)[0]}: {os_error.group(1).strip()} (errno {os_error.group(2)})"
    return line


class Checkpointer:
    """The checkpoints of one run, saved asynchronously, the newest ``keep`` kept, each sealed once finished.

    On creation, steps left incomplete by an interrupted run are moved aside (``INCOMPLETE``) with a
    warning line on stderr, so ``latest_step`` is the newest complete checkpoint, and complete steps
    without digests are sealed. A save is sealed before the next one starts (which waits for it, as
    Orbax would) or at ``wait_until_finished`` / ``close``.
    """

    def __init__(self, workdir: str | Path, *, save_every: int, keep: int):
        if save_every < 1 or keep < 1:
            raise ValueError(f"config.train.checkpoint_every ({save_every}) and config.train.keep_checkpoints ({keep}) must be >= 1")
        self.directory = Path(workdir).expanduser().absolute() / CHECKPOINTS
        _tidy_directory(self.directory, choose_checkpoint(self.directory, items=TRAINING_ITEMS))
        self._unsealed: int | None = None  # the step of the save in flight
        options = ocp.CheckpointManagerOptions(
            # A custom save policy must list preemption itself, or preemption saves are lost.
            save_decision_policy=policies.AnySavePolicy(
                [policies.FixedIntervalPolicy(save_every), policies.PreemptionCheckpointingPolicy()]
            ),
            preservation_policy=policies.LatestN(keep),
            enable_async_checkpointing=True,
            cleanup_tmp_directories=True,  # a save cut short (a second Ctrl-C, a kill) left STEP.orbax-checkpoint-tmp
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options, handler_registry=_handler_registry())

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def should_save(self, step: int) -> bool:
        """Whether step ``step`` is due: on the save interval or at the multi-host preemption point."""
        return self._manager.should_save(step)

    def reached_preemption(self, step: int) -> bool:
        """True on every host at the same step once any host got SIGTERM (multi-host runs only)."""
        return self._manager.reached_preemption(step)

    def save(self, state: TrainState, data_position: Mapping[str, Any], *, force: bool = False) -> bool:
        """Starts an asynchronous save of ``state`` at its step; False if the policy says not now."""
        step = int(state.step)
        if not (force or self._manager.should_save(step)):
            return False
        # Seal the previous save now, before this one starts: this one's finalize thread may delete
        # it (the keep policy). The manager would wait for it here anyway.
        self.wait_until_finished()
        args = ocp.args.Composite(
            **{
                PARAMS: ocp.args.StandardSave(state.params),
                TRAINER: ocp.args.StandardSave(_trainer_item(state)),
                DATA: ocp.args.JsonSave(dict(data_position)),
                **({} if state.rollout is None else {ROLLOUT: ocp.args.StandardSave(_stored_keys(state.rollout))}),
            }
        )
        started = self._manager.save(step, args=args, force=force)
        if started:
            self._unsealed = step
        return started

    def _seal_finished(self) -> None:
        """Seals the last save, now finished (process 0)."""
        step, self._unsealed = self._unsealed, None
        if step is not None and jax.process_index() == 0 and (self.directory / str(step)).is_dir():
            seal(self.directory / str(step))

    def restore(self, abstract_state: TrainState, step: int | None = None) -> tuple[TrainState, dict[str, Any]]:
        """The train state (laid out as ``abstract_state``'s shardings) and data position of a step.

        ``step`` defaults to the newest complete checkpoint.
        """
        _, step = pick_checkpoint(self.directory, step, items=TRAINING_ITEMS)
        verify(self.directory / str(step), TRAINING_ITEMS + ((ROLLOUT,) if abstract_state.rollout is not None else ()))
        targets = {PARAMS: abstract_state.params, TRAINER: _trainer_item(abstract_state)}
        if abstract_state.rollout is not None:
            if _item_metadata(self._manager, step, self.directory).get(ROLLOUT) is None:
                raise CheckpointError(f"{self.directory / str(step)}: holds no rollout state (not an online run's checkpoint)")
            targets[ROLLOUT] = _stored_keys(abstract_state.rollout)
        for name, target in targets.items():
            _check_fits(self._manager, step, name, target, self.directory)
        args = {name: ocp.args.StandardRestore(target) for name, target in targets.items()}
        restored = _restore(self._manager, step, ocp.args.Composite(**args, **{DATA: ocp.args.JsonRestore()}),
                            self.directory, "its training state")
        trainer = restored[TRAINER]
        state = TrainState(
            step=trainer["step"],
            params=restored[PARAMS],
            opt_state=trainer["opt_state"],
            rng=trainer["rng"],
            rollout=_typed_keys(restored[ROLLOUT], abstract_state.rollout) if ROLLOUT in targets else None,
        )
        return state, dict(restored[DATA])

    def data_position(self, step: int) -> dict[str, Any]:
        """The data position saved with ``step`` alone (no array is read), e.g. to check its recipe."""
        verify(self.directory / str(step), (DATA,))
        return _data_position(self._manager, step, self.directory)

    def wait_until_finished(self) -> None:
        """Blocks until the last asynchronous save is on disk and sealed. CheckpointError (one line)
        when it failed (a full disk, a removed folder): Orbax raises it from its background save
        with a multi-line status, which named neither the step nor the checkpoint left intact."""
        try:
            self._manager.wait_until_finished()
        except Exception as error:  # noqa: BLE001  (whatever the storage layer raised; the cause is kept in the line)
            step, self._unsealed = self._unsealed, None
            kept = choose_checkpoint(self.directory, items=TRAINING_ITEMS).step
            cause = _storage_fault((str(error).strip().splitlines() or [type(error).__name__])[0])
            raise CheckpointError(
                f"{self.directory / str(step) if step is not None else self.directory}: saving the checkpoint failed "
                f"({type(error).__name__}: {cause}); "
                + (f"the last complete checkpoint is step {kept}" if kept is not None else "no checkpoint is complete")
            ) from None
        self._seal_finished()

    def save_ended(self) -> bool:
        """Whether the last asynchronous save has ended, unsealed: then ``wait_until_finished`` seals it
        or raises its failure (a full disk) at once. The loop asks after every step, so a failed save
        stops the run at the step after it failed, not at the next save, ``checkpoint_every`` steps
        that could not be saved later. False on several hosts (the next save finds the failure there)."""
        return self._unsealed is not None and jax.process_count() == 1 and not self._manager.is_saving_in_progress()

    def close(self) -> None:
        self.wait_until_finished()
        self._manager.close()


def load_params(path: str | Path, target: Any = None, step: int | None = None) -> Any:
    """The parameters of one checkpoint (the newest complete one by default), e.g. for evaluation or fine-tuning.

    ``path`` is a workdir, its checkpoint directory or one step's folder (``checkpoints/N``).
    ``target`` is an abstract parameter tree (``jax.ShapeDtypeStruct`` leaves with shardings, e.g.
    ``Trainer.abstract_state.params``) to restore onto a mesh (it comes back as that tree); without
    one the saved tree comes back as nested dicts of host NumPy arrays. The newest step, removed by
    a running training's keep policy while it is read, is passed over for the new newest, with a
    warning (in a single-process job).
    """
    return load_checkpoint(path, target, step)[0]


def load_checkpoint(path: str | Path, target: Any = None, step: int | None = None,
                    recipe: str | None = None) -> tuple[Any, dict[str, Any], int]:
    """``(params, data position, step read)`` of one complete checkpoint (the latest by default), read-only.

    ``path`` and ``target`` as in ``load_params``. Given ``recipe``, a checkpoint saved by another
    recipe (the data position's ``recipe``) is refused before any array is read. CheckpointError
    (one line) for a missing directory or step, another recipe, or parameters that do not fit.
    """
    directory = checkpoint_directory(path)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: no such checkpoint directory")
    for attempt in range(ROTATION_RETRIES + 1):
        chosen_directory, chosen = pick_checkpoint(directory, step)
        try:
            return (*_read_checkpoint(chosen_directory, chosen, target, recipe), chosen)
        except (CheckpointError, OSError, KeyError) as error:
            # A running training's keep policy may delete the newest step while it is read (the folder
            # half-removed, or gone; Orbax then raises whatever it met: FileNotFoundError,
            # NotADirectoryError, KeyError "Unknown key: params"): when a newer step has meanwhile
            # become the newest, read that one instead of calling the removed checkpoint damaged.
            # One host only: hosts deciding apart would leave one waiting in the next read's collective.
            if (step is not None or attempt == ROTATION_RETRIES or jax.process_count() > 1
                    or choose_checkpoint(directory).step == chosen):
                if isinstance(error, CheckpointError):
                    raise
                raise CheckpointError(f"{chosen_directory / str(chosen)}: unreadable ({_first_line(error)})") from None
            print(f"warning: {chosen_directory / str(chosen)}: removed while it was read (a running training's "
                  "keep policy); reading the newest step instead", file=sys.stderr, flush=True)
            _drop_closed_loop_reports()


def _drop_closed_loop_reports() -> None:
    """From now on, leaves out Python's reports of ``RuntimeError: Event loop is closed``: a read
    Orbax abandoned leaves TensorStore callbacks that fire later, from its own threads, into the
    event loop Orbax closed, each printed as a traceback (~190 lines after one retried read, the
    read itself right). Installed once, for the process: the callbacks come after the read returns."""
    hook = sys.unraisablehook
    if getattr(hook, "drops_closed_loop_reports", False):
        return

    def unraisable(report: Any) -> None:
        if not (isinstance(report.exc_value, RuntimeError) and str(report.exc_value) == "Event loop is closed"):
            hook(report)

    unraisable.drops_closed_loop_reports = True
    sys.unraisablehook = unraisable


def _read_checkpoint(directory: Path, step: int, target: Any, recipe: str | None) -> tuple[Any, dict[str, Any]]:
    # An imported checkpoint holds parameters only; a saved one whose data folder vanished is damaged
    # (its digests record it), not an imported MGDT checkpoint
    has_position = (directory / str(step) / DATA).exists() or DATA in _sealed_items(directory / str(step))
    verify(directory / str(step), (PARAMS, DATA) if has_position else (PARAMS,))
    options = ocp.CheckpointManagerOptions(read_only=True, save_interval_steps=0, create=False)
    with ocp.CheckpointManager(directory, options=options, handler_registry=_handler_registry()) as manager:
        position = {}
        if has_position:
            position = _data_position(manager, step, directory)
        saved = position.get("recipe", "mgdt")  # checkpoints written before recipes existed are the MGDT's
        if recipe is not None and saved != recipe:
            raise CheckpointError(f"{directory / str(step)}: a checkpoint of the {saved!r} recipe, not {recipe!r}")
        if target is None:
            metadata = _item_metadata(manager, step, directory)[PARAMS]
            restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), metadata)
            item = ocp.args.PyTreeRestore(restore_args=restore_args)
        else:
            _check_fits(manager, step, PARAMS, target, directory)
            item = ocp.args.StandardRestore(target)
        params = _restore(manager, step, ocp.args.Composite(**{PARAMS: item}), directory, "its parameters")[PARAMS]
        return params, position


def _data_position(manager: ocp.CheckpointManager, step: int, directory: Path) -> dict[str, Any]:
    position = _restore(manager, step, ocp.args.Composite(**{DATA: ocp.args.JsonRestore()}), directory,
                        "its data position")[DATA]
    if not isinstance(position, dict):
        raise CheckpointError(f"{directory / str(step)}: its data position is a {type(position).__name__}, "
                              "not a JSON object; the file is damaged")
    return position


def _restore(manager: ocp.CheckpointManager, step: int, args: ocp.args.Composite, directory: Path, what: str) -> Any:
    return _read(lambda: manager.restore(step, args=args), directory, step, what)


def _item_metadata(manager: ocp.CheckpointManager, step: int, directory: Path) -> Any:
    """Every item's metadata of ``step`` (Orbax reads them all)."""
    return _read(lambda: manager.item_metadata(step), directory, step, "its metadata")


def _read(read: Callable[[], Any], directory: Path, step: int, what: str) -> Any:
    """``read()``, an Orbax read of ``step``, with a file deleted or damaged after a complete save as
    one CheckpointError line: such a file surfaces as whatever TensorStore or a parser raises."""
    try:
        return read()
    except Exception as error:
        raise CheckpointError(f"{directory / str(step)}: {what} cannot be read, a file is missing or "
                              f"damaged ({_first_line(error)})") from None


def _first_line(error: BaseException) -> str:
    """The root cause's type and first line: Orbax wraps TensorStore's error (which names the array
    and the file) in one whose text names neither."""
    while error.__cause__ is not None:
        error = error.__cause__
    return f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0][:300]}"


def _handler_registry() -> ocp.handlers.DefaultCheckpointHandlerRegistry:
    """The handler of each item, named up front so its metadata can be read before a restore."""
    registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
    for name in (PARAMS, TRAINER, ROLLOUT):
        registry.add(name, ocp.args.StandardSave, ocp.StandardCheckpointHandler())
        registry.add(name, ocp.args.StandardRestore, ocp.StandardCheckpointHandler())
    registry.add(PARAMS, ocp.args.PyTreeRestore, ocp.PyTreeCheckpointHandler())
    registry.add(DATA, ocp.args.JsonSave, ocp.JsonCheckpointHandler())
    registry.add(DATA, ocp.args.JsonRestore, ocp.JsonCheckpointHandler())
    return registry


def _check_fits(manager: ocp.CheckpointManager, step: int, item: str, target: Any, directory: Path) -> None:
    """Raises a one-line CheckpointError unless the saved item has ``target``'s names and shapes.

    Checked from the metadata before any array is read: a failed read would surface as a pile of
    errors from Orbax's background tasks instead.
    """
    saved = _shapes_by_name(_item_metadata(manager, step, directory)[item])
    wanted = _shapes_by_name(target)
    what = {PARAMS: "its parameters do not fit this model",
            TRAINER: "its optimizer state does not fit this config's optimizer and model"}.get(item, f"its {item} does not fit")
    where = f"{directory / str(step)}: {what}"
    if missing := sorted(wanted.keys() - saved.keys()):
        raise CheckpointError(f"{where}: the checkpoint lacks {len(missing)} of its arrays, e.g. {missing[0]}")
    if extra := sorted(saved.keys() - wanted.keys()):
        raise CheckpointError(f"{where}: the checkpoint has {len(extra)} arrays it lacks, e.g. {extra[0]}")
    for name, shape in wanted.items():
        if saved[name] != shape:
            raise CheckpointError(f"{where}: {name} is {saved[name]} in the checkpoint, {shape} here")


def _shapes_by_name(tree: Any) -> dict[str, tuple[int, ...]]:
    def name(path: tuple) -> str:
        return "/".join(str(getattr(key, "key", getattr(key, "idx", getattr(key, "name", key)))) for key in path)

    return {name(path): tuple(leaf.shape) for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _is_typed_key(leaf: Any) -> bool:
    return jax.dtypes.issubdtype(getattr(leaf, "dtype", None), jax.dtypes.prng_key)


def _stored_keys(tree: Any) -> Any:
    """``tree`` with each typed PRNG key array (or its abstract shape) replaced by its uint32 key data."""
    def stored(leaf: Any) -> Any:
        if not _is_typed_key(leaf):
            return leaf
        if isinstance(leaf, jax.ShapeDtypeStruct):
            data = jax.eval_shape(jax.random.key_data, leaf)
            # A key's sharding also fits its data: the trailing key-data axis is left unsharded.
            return jax.ShapeDtypeStruct(data.shape, data.dtype, sharding=leaf.sharding)
        return jax.random.key_data(leaf)

    return jax.tree.map(stored, tree)


def _key_impl(dtype: Any) -> str:
    """The name of the PRNG implementation whose typed keys have ``dtype`` (public names only)."""
    for name in ("threefry2x32", "rbg", "unsafe_rbg"):
        if jax.random.key(0, impl=name).dtype == dtype:
            return name
    raise CheckpointError(f"a typed PRNG key of dtype {dtype} from an implementation the checkpointer does not know")


def _typed_keys(restored: Any, abstract: Any) -> Any:
    """``restored`` with the key data at each typed-key leaf of ``abstract`` wrapped back into keys."""
    return jax.tree.map(lambda data, leaf: jax.random.wrap_key_data(data, impl=_key_impl(leaf.dtype))
                        if _is_typed_key(leaf) else data, restored, abstract)


def _trainer_item(state: TrainState) -> dict[str, Any]:
    return {"step": state.step, "opt_state": state.opt_state, "rng": state.rng}
