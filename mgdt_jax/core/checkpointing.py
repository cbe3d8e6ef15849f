"""Orbax checkpoints of a training run: parameters, optimizer state, step, RNG and the data position.

Each checkpoint ``<workdir>/checkpoints/<step>/`` holds three items, so evaluation can read the
parameters alone:

* ``params``: the model parameters;
* ``trainer``: the step, the optimizer state and the base RNG key;
* ``data``: the data position (JSON): the recipe that trained it, the index of the next global
  batch and what the stream was built from (seed, global batch size), since the stream is a pure
  function of those;
* ``rollout`` (online recipes only): the recipe's ``RolloutState`` (environment states, agent
  memories, curriculum state), so a resumed run continues the very episodes it was in.

Saves are asynchronous (training continues while the arrays are written) and happen every
``save_every`` steps, on preemption (Orbax's multi-host sync point, which needs
``jax.distributed.initialize``) and whenever the loop forces one; the newest ``keep`` are kept. A
restore reads the arrays straight into the shardings of an abstract target, so a checkpoint written
on one mesh restores onto any other (8 devices -> 1 or 4, another host count).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from mgdt_jax.core.train_step import TrainState

PARAMS, TRAINER, DATA, ROLLOUT = "params", "trainer", "data", "rollout"
CHECKPOINTS = "checkpoints"  # subdirectory of the workdir


class CheckpointError(RuntimeError):
    """A checkpoint that is missing or cannot be restored; the message names it."""


def checkpoint_directory(path: str | Path) -> Path:
    """The checkpoint directory of a workdir, or ``path`` itself if it already is one."""
    path = Path(path).expanduser().absolute()
    return path / CHECKPOINTS if (path / CHECKPOINTS).is_dir() else path


class Checkpointer:
    """The checkpoints of one run, saved asynchronously, the newest ``keep`` kept."""

    def __init__(self, workdir: str | Path, *, save_every: int, keep: int):
        if save_every < 1 or keep < 1:
            raise ValueError(f"checkpoint_every ({save_every}) and keep_checkpoints ({keep}) must be >= 1")
        self.directory = Path(workdir).expanduser().absolute() / CHECKPOINTS
        options = ocp.CheckpointManagerOptions(
            # A custom save policy must list preemption itself, or preemption saves are lost.
            save_decision_policy=policies.AnySavePolicy(
                [policies.FixedIntervalPolicy(save_every), policies.PreemptionCheckpointingPolicy()]
            ),
            preservation_policy=policies.LatestN(keep),
            enable_async_checkpointing=True,
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
        args = ocp.args.Composite(
            **{
                PARAMS: ocp.args.StandardSave(state.params),
                TRAINER: ocp.args.StandardSave(_trainer_item(state)),
                DATA: ocp.args.JsonSave(dict(data_position)),
                **({} if state.rollout is None else {ROLLOUT: ocp.args.StandardSave(state.rollout)}),
            }
        )
        return self._manager.save(step, args=args, force=force)

    def restore(self, abstract_state: TrainState, step: int | None = None) -> tuple[TrainState, dict[str, Any]]:
        """The train state (laid out as ``abstract_state``'s shardings) and data position of a step.

        ``step`` defaults to the latest checkpoint.
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"{self.directory}: holds no checkpoint")
        targets = {PARAMS: abstract_state.params, TRAINER: _trainer_item(abstract_state)}
        if abstract_state.rollout is not None:
            if self._manager.item_metadata(step).get(ROLLOUT) is None:
                raise CheckpointError(f"{self.directory / str(step)}: holds no rollout state (not an online run's checkpoint)")
            targets[ROLLOUT] = abstract_state.rollout
        for name, target in targets.items():
            _check_fits(self._manager, step, name, target, self.directory)
        args = {name: ocp.args.StandardRestore(target) for name, target in targets.items()}
        restored = self._manager.restore(step, args=ocp.args.Composite(**args, **{DATA: ocp.args.JsonRestore()}))
        trainer = restored[TRAINER]
        state = TrainState(
            step=trainer["step"],
            params=restored[PARAMS],
            opt_state=trainer["opt_state"],
            rng=trainer["rng"],
            rollout=restored[ROLLOUT] if ROLLOUT in targets else None,
        )
        return state, dict(restored[DATA])

    def data_position(self, step: int) -> dict[str, Any]:
        """The data position saved with ``step`` alone (no array is read), e.g. to check its recipe."""
        return dict(self._manager.restore(step, args=ocp.args.Composite(**{DATA: ocp.args.JsonRestore()}))[DATA])

    def wait_until_finished(self) -> None:
        """Blocks until the last asynchronous save is on disk (and surfaces its errors)."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def load_params(path: str | Path, target: Any = None, step: int | None = None) -> Any:
    """The parameters of one checkpoint (the latest by default), e.g. for evaluation or fine-tuning.

    ``path`` is a workdir or its checkpoint directory. ``target`` is an abstract parameter tree
    (``jax.ShapeDtypeStruct`` leaves with shardings, e.g. ``Trainer.abstract_state.params``) to
    restore onto a mesh (it comes back as that tree); without one the saved tree comes back as nested
    dicts of host NumPy arrays.
    """
    directory = checkpoint_directory(path)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: no such checkpoint directory")
    options = ocp.CheckpointManagerOptions(read_only=True, save_interval_steps=0, create=False)
    with ocp.CheckpointManager(directory, options=options, handler_registry=_handler_registry()) as manager:
        step = manager.latest_step() if step is None else step
        if step is None or step not in manager.all_steps():
            raise CheckpointError(f"{directory}: no checkpoint {'at all' if step is None else f'at step {step}'}")
        if target is None:
            metadata = manager.item_metadata(step)[PARAMS]
            restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), metadata)
            item = ocp.args.PyTreeRestore(restore_args=restore_args)
        else:
            _check_fits(manager, step, PARAMS, target, directory)
            item = ocp.args.StandardRestore(target)
        return manager.restore(step, args=ocp.args.Composite(**{PARAMS: item}))[PARAMS]


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
    saved = _shapes_by_name(manager.item_metadata(step)[item])
    wanted = _shapes_by_name(target)
    where = f"{directory / str(step)}: {item} do not fit this model"
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


def _trainer_item(state: TrainState) -> dict[str, Any]:
    return {"step": state.step, "opt_state": state.opt_state, "rng": state.rng}
