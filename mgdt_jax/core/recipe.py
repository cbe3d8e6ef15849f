"""The recipe: what one agent brings to the core, behind one small interface.

The core (mesh, train step, loop, checkpoints, metrics) knows no agent. A recipe gives it:

=========================================  ===========================================================
``model(rngs)``                            the ``nnx.Module`` to train, built from ``self.config``; the
                                           trainer calls it under ``nnx.eval_shape`` to lay the
                                           parameters out on the mesh before any memory is used
``loss(model, batch, dropout_key)``        ``(scalar loss, {name: scalar metric})`` of a global batch;
                                           the trainer differentiates the loss and averages both over
                                           gradient-accumulation micro-batches
``training_data(process_index=,``          this host's part of every global batch, addressable by
``process_count=)``                        step (``TrainingData``); batch ``k`` must be a function of
                                           the config and ``k`` alone, which is what makes resumption
                                           exact
``step_cost(batch_size)``                  analytic FLOPs and tokens of one optimizer step, for
                                           tokens/s, FLOP/s and MFU (``StepCost``); ``batch_cost``
                                           for recipes whose batch layouts differ in cost
``check_resume(position, checkpoint)``     optional: ValueError for a checkpoint this config cannot
                                           go on from (AdA: one of another benchmark)
``summary(metrics)``                       optional: the console text of the recipe's metrics
``evaluator(workdir)``                     optional: the periodic evaluation hook (``Evaluator``)
=========================================  ===========================================================

A batch is a dict of arrays whose leading axis is the batch axis (the trainer shards it over the
mesh's ``data`` and ``fsdp`` axes and splits it into micro-batches); everything else about its keys
and shapes is between the recipe's data and its loss. The loop compiles the step once per batch
layout (its keys; the shapes of a layout must not change): a recipe with several kinds of batch
(JAT: one per modality group) gets one program per kind, none of which carries another's inputs.
Parameters name their logical axes (``out_sharding`` metadata, see ``mgdt_jax/core/sharding.py``) so the core can shard any model.

**Selecting a recipe.** ``config.recipe`` names it: a short name ``"x"`` is the module
``mgdt_jax.recipes.x.recipe``, a dotted name is a module path (a recipe outside this package). The
module sets ``RECIPE`` to its ``Recipe`` subclass and is imported only when a run asks for it, so
importing the core imports no recipe (and no TensorFlow or Grain). Configs without the field train
``"mgdt"``. The recipe's ``name`` must be that same string (``load_recipe`` checks it); it is
saved with every checkpoint, and resuming a run with a config of another recipe is refused in one
line.

**Adding one.** Write ``mgdt_jax/recipes/<name>/recipe.py`` with a ``Recipe`` subclass (its model,
loss, data and FLOPs) named ``"<name>"``, set ``RECIPE``, write an experiment config with
``config.recipe = "<name>"`` and add a case to ``CASES`` in ``tests/recipe_cases.py``: the generic
training tests (sharded step equal to one device, gradient accumulation, bit-equal losses after
SIGTERM, SIGKILL and resume, restore across meshes, NaN stop, throughput and MFU) then run on it
too. Outside this repository: any importable module (on ``PYTHONPATH``), its recipe named by the
module path that ``config.recipe`` gives (docs/architecture.md).

**Online recipes** (AdA-style meta-RL, where rollouts run inside the jitted step) subclass
``OnlineRecipe``. The train state then carries a recipe-owned pytree, a ``RolloutState``
(environment states, agent memories, curriculum state) that the recipe creates in
``init_rollout``; its ``per_env`` leaves are sharded over the batch axis like a batch, its
``shared`` leaves are replicated, and it is saved in every checkpoint as its own item. Each train
step first calls ``rollout`` with the current parameters (outside the gradient) to produce a batch
of ``train.batch_size`` environments' trajectories, then takes ``num_epochs x num_minibatches``
optimizer steps over it, each through ``loss`` as for offline recipes (minibatches split the
environment axis, reshuffled every epoch). Its ``TrainingData`` yields empty batches, so the loop,
checkpoints, preemption, exact resume and the NaN stop stay as they are. The rollout's randomness
is ``fold_in(state.rng, step)``, so a resumed run rolls out exactly what an uninterrupted one would.
"""

from __future__ import annotations

import abc
import dataclasses
import importlib
import pkgutil
import traceback
from collections.abc import Callable, Collection, Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar, Protocol

import jax
import numpy as np
import flax.struct
from flax import nnx

from mgdt_jax.core.config_sections import section

DEFAULT_RECIPE = "mgdt"  # what configs and checkpoints written before recipes existed train
RECIPES_PACKAGE = "mgdt_jax.recipes"
TRAINER_METRICS = ("loss", "grad_norm", "learning_rate")  # added by the trainer to the recipe's own

# The periodic evaluation hook: (model, step) -> scalars, logged under "eval/".
Evaluator = Callable[[nnx.Module, int], Mapping[str, float]]


class TrainingData(Protocol):
    """This host's part of every global batch of a recipe's training stream, addressable by step."""

    def batch(self, step: int) -> dict[str, np.ndarray]:
        """This host's rows of global batch ``step`` ([global batch / process_count, ...] per key)."""

    def iterate(self, start_step: int) -> Iterator[dict[str, np.ndarray]]:
        """Batches ``start_step, start_step + 1, ...``, equal to ``batch(k)`` (built ahead of use),
        at least until ``train.num_steps``: a stream that ends earlier stops the run
        (``loop.DataStreamError``, the steps taken saved on a single host).

        The iterator may have a ``close()``, which the loop calls when training ends.
        """

    def describe(self) -> str:
        """One line for the console at start, e.g. the episodes and games found."""

    def identity(self) -> dict[str, Any]:
        """JSON values that fix the stream (seed, sources, global batch ...), saved with checkpoints.

        A resumed run whose identity differs is warned that it no longer sees the original batches;
        a key the saved identity lacks is no change. Optionally ``upgrade_identity(saved) -> dict``
        translates an identity saved by an earlier version into today's keys (the loop calls it first
        where the stream has one), so a change against an older checkpoint still warns.
        """


@dataclasses.dataclass(frozen=True)
class StepCost:
    """What one optimizer step over the global batch costs, for throughput and MFU."""

    flops: float  # model FLOPs, forward + backward (2 per multiply-add); no optimizer or elementwise work
    tokens: int  # tokens the step trains on
    compute_dtype: str  # the matmul dtype, which picks the device peak MFU is measured against


class Recipe(abc.ABC):
    """One agent's model, loss, data and costs; ``config`` is the whole experiment config.

    ``config`` may be an ``ml_collections.ConfigDict``, a dict of dicts or an attribute object;
    the train step runs without ml_collections (read sections with ``config_sections``).
    """

    # Saved with checkpoints; what config.recipe calls it: "x" for mgdt_jax.recipes.x.recipe, the
    # module path for a recipe outside the package (load_recipe checks it).
    name: ClassVar[str]

    def __init__(self, config: Any):
        self.config = config

    @abc.abstractmethod
    def model(self, rngs: nnx.Rngs) -> nnx.Module:
        """The model, its parameters initialised from ``rngs`` (its ``params`` stream)."""

    @abc.abstractmethod
    def loss(
        self, model: nnx.Module, batch: Mapping[str, jax.Array], dropout_key: jax.Array
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """``(loss, metrics)``: a float32 scalar to minimise and float32 scalars to log.

        Traced inside the jitted step, in training mode; ``dropout_key`` is a fresh key for the step
        (and micro-batch). Metric names must not be ``TRAINER_METRICS``, which the trainer adds.
        """

    @abc.abstractmethod
    def training_data(self, *, process_index: int, process_count: int) -> TrainingData:
        """The training stream the config describes; bad input raises ValueError naming it."""

    @abc.abstractmethod
    def step_cost(self, batch_size: int) -> StepCost:
        """The analytic cost of one optimizer step on a global batch of ``batch_size`` examples."""

    def batch_cost(self, batch_size: int, batch: Mapping[str, Any]) -> StepCost:
        """The cost of one step on a global batch of ``batch_size`` examples laid out as ``batch`` (the
        step's input; only its keys and shapes are read): ``step_cost`` unless the recipe's batch
        layouts differ in cost, as the JAT's modality groups do."""
        return self.step_cost(batch_size)

    def config_fields(self) -> Mapping[str, Collection[str]]:
        """The fields this recipe reads, by config section (``{"model": ("num_layers", ...)}``; a
        section dataclass's with ``config_sections.field_names``). A field a config gives that
        neither the core nor the recipe reads, named much like one that is read, gets a warning line
        at start (``loop.near_misses``): a typo there trains with the default in silence."""
        return {}

    def check_resume(self, position: Mapping[str, Any], checkpoint: str) -> None:
        """ValueError (one line naming ``checkpoint``) when the checkpoint whose data position is
        ``position`` cannot go on under this config. By default any may: a changed data stream is
        only warned about. An online recipe whose saved state belongs to its environment (as AdA's
        environment states and curriculum belong to its benchmark's rulesets) refuses another."""

    def summary(self, metrics: Mapping[str, float]) -> str:
        """The recipe's metrics on each console line, after the loss (names without ``train/``)."""
        return " ".join(f"{name} {value:.3f}" for name, value in metrics.items() if name not in TRAINER_METRICS)

    def evaluator(self, workdir: Path) -> Evaluator | None:
        """The periodic evaluation of the config's ``train.eval_every``, or None (the default)."""
        return None


def recipe_name(config: Any) -> str:
    """``config.recipe``, or ``"mgdt"`` for configs written before recipes existed."""
    return str(section(config, "recipe", None) or DEFAULT_RECIPE)


def load_recipe(config: Any) -> Recipe:
    """The recipe ``config.recipe`` names, built from ``config``.

    Raises ValueError (one line) for a name that is no module, a module that fails to import (with
    the file and line at fault), one that sets no ``RECIPE``, a ``RECIPE`` whose ``name`` is not
    that name or that leaves an abstract method of ``Recipe`` undefined.
    """
    name = recipe_name(config)
    module_name = name if "." in name else f"{RECIPES_PACKAGE}.{name}.recipe"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name is None or not f"{module_name}.".startswith(f"{error.name}."):
            raise ValueError(f"config.recipe {name!r}: importing {module_name} failed: {_fault_in_code(error)} (a "
                             "package it needs is not installed)") from None
        package = importlib.import_module(RECIPES_PACKAGE).__path__  # the package only: no recipe is imported
        builtin = sorted(m.name for m in pkgutil.iter_modules(package)
                         if m.ispkg and any((Path(folder) / m.name / "recipe.py").is_file() for folder in package))
        where = (f"the built-in recipes: {', '.join(builtin)}" if "." not in name or name.startswith(RECIPES_PACKAGE)
                 else "a recipe of your own must be importable: its folder on PYTHONPATH")
        raise ValueError(f"config.recipe {name!r}: no module {module_name} ({where})") from None
    except Exception as error:  # noqa: BLE001 (a recipe's own code: a SyntaxError, a NameError...)
        raise ValueError(f"config.recipe {name!r}: importing {module_name} failed: {_fault_in_code(error)}") from None
    recipe_type = getattr(module, "RECIPE", None)
    if not (isinstance(recipe_type, type) and issubclass(recipe_type, Recipe)):
        raise ValueError(f"config.recipe {name!r}: {module_name} sets no RECIPE (a Recipe subclass)")
    # One identity everywhere: checkpoints save ``name``, run configs save config.recipe.
    named = getattr(recipe_type, "name", None)
    if named != name and module_name != f"{RECIPES_PACKAGE}.{named}.recipe":  # "x" may also be given in full
        raise ValueError(f"config.recipe {name!r}: {module_name}'s RECIPE, {recipe_type.__name__}, is named {named!r}; "
                         f"a recipe's name must be what config.recipe calls it (outside {RECIPES_PACKAGE}: its "
                         "module path)")
    if abstract := sorted(getattr(recipe_type, "__abstractmethods__", ())):
        raise ValueError(f"config.recipe {name!r}: {recipe_type.__name__} does not define {', '.join(abstract)} "
                         "(abstract in Recipe: every recipe defines it)")
    return recipe_type(config)


def _fault_in_code(error: BaseException) -> str:
    """``error`` in one line, with the file and line of the code that raised it."""
    if isinstance(error, SyntaxError) and error.filename:
        return f"{error.filename}, line {error.lineno}: {type(error).__name__}: {error.msg}"
    frames = [frame for frame in traceback.extract_tb(error.__traceback__) if not frame.filename.startswith("<")]
    where = f"{frames[-1].filename}, line {frames[-1].lineno}: " if frames else ""
    return f"{where}{type(error).__name__}: {' '.join(str(error).split())}"


@flax.struct.dataclass
class RolloutState:
    """What an online recipe carries from one train step to the next.

    ``per_env``: leaves whose leading axis is the environment axis (``train.batch_size``), sharded
    over the mesh's batch axes (environment states, agent memories, episode statistics).
    ``shared``: replicated leaves (curriculum state, counters). Leaves are plain arrays (keep PRNG
    keys as ``jax.random.key_data``) so Orbax can save them.
    """

    per_env: Any
    shared: Any


class OnlineRecipe(Recipe):
    """A recipe whose batches come from environments stepped inside the jitted train step."""

    @abc.abstractmethod
    def init_rollout(self, key: jax.Array) -> RolloutState:
        """The rollout state at step 0 (traced inside the jitted init; ``key`` is a typed key)."""

    @abc.abstractmethod
    def rollout(
        self, model: nnx.Module, rollout_state: RolloutState, key: jax.Array, step: jax.Array
    ) -> tuple[dict[str, jax.Array], RolloutState, dict[str, jax.Array]]:
        """``(batch, rollout_state, metrics)``: one rollout with ``model``'s current parameters.

        ``batch`` leaves are [train.batch_size, ...] (what ``loss`` reads, per environment);
        ``metrics`` are float32 scalars (names distinct from the loss's and ``TRAINER_METRICS``);
        ``step`` is the int32 number of train steps taken before this one. Traced in the jitted step;
        the core stops gradients through the batch.
        """

    @property
    def num_epochs(self) -> int:
        """Passes over each rollout's batch (PPO epochs)."""
        return 1

    @property
    def num_minibatches(self) -> int:
        """Optimizer steps per epoch; the environment axis is split into this many minibatches."""
        return 1

    def training_data(self, *, process_index: int, process_count: int) -> TrainingData:
        return EmptyBatches(self.describe_rollout(), self.rollout_identity())

    def describe_rollout(self) -> str:
        """One console line on the environments and agent (``TrainingData.describe``)."""
        return f"online {self.name} rollouts"

    def rollout_identity(self) -> dict[str, Any]:
        """JSON values that fix the rollouts (seed, environments, batch), saved with checkpoints."""
        return {}


class EmptyBatches:
    """The ``TrainingData`` of an online recipe: every batch is empty (the step rolls out its own)."""

    def __init__(self, description: str, identity: Mapping[str, Any]):
        self._description, self._identity = description, dict(identity)

    def batch(self, step: int) -> dict[str, np.ndarray]:
        return {}

    def iterate(self, start_step: int) -> Iterator[dict[str, np.ndarray]]:
        while True:
            yield {}

    def describe(self) -> str:
        return self._description

    def identity(self) -> dict[str, Any]:
        return dict(self._identity)
