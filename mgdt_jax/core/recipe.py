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
                                           tokens/s, FLOP/s and MFU (``StepCost``)
``summary(metrics)``                       optional: the console text of the recipe's metrics
``evaluator(workdir)``                     optional: the periodic evaluation hook (``Evaluator``)
=========================================  ===========================================================

A batch is a dict of arrays whose leading axis is the batch axis (the trainer shards it over the
mesh's ``data`` and ``fsdp`` axes and splits it into micro-batches); everything else about its keys
and shapes is between the recipe's data and its loss. Parameters name their logical axes
(``out_sharding`` metadata, see ``mgdt_jax/core/sharding.py``) so the core can shard any model.

**Selecting a recipe.** ``config.recipe`` names it: a short name ``"x"`` is the module
``mgdt_jax.recipes.x.recipe``, a dotted name is a module path (a recipe outside this package). The
module sets ``RECIPE`` to its ``Recipe`` subclass and is imported only when a run asks for it, so
importing the core imports no recipe (and no TensorFlow or Grain). Configs without the field train
``"mgdt"``. The recipe's ``name`` is saved with every checkpoint; resuming a run with a config of
another recipe is refused in one line.

**Adding one.** Write ``mgdt_jax/recipes/<name>/recipe.py`` with a ``Recipe`` subclass (its model,
loss, data and FLOPs), set ``RECIPE``, write an experiment config with ``config.recipe = "<name>"``
and add the name to ``RECIPES`` in ``tests/conftest.py``: the generic training tests (sharded step
equal to one device, gradient accumulation, bit-equal losses after SIGTERM, SIGKILL and resume,
restore across meshes, NaN stop, throughput and MFU) then run on it too.

**Online recipes** (AdA-style meta-RL, where rollouts run inside the jitted step) are not built
yet. They plug in at the train step, not the loop: the train state gains a recipe-owned pytree
(environment states, memories) created by the recipe in ``Trainer._init_state``, sharded over the
batch axis in ``Trainer.state_sharding`` and saved as its own checkpoint item; at the start of
``Trainer._train_step`` the recipe steps the environments with the current parameters (outside the
gradient) to produce the batch its loss sees. Its ``TrainingData`` then yields empty batches, so
the loop, checkpoints, preemption, exact resume and the NaN stop stay as they are.
"""

from __future__ import annotations

import abc
import dataclasses
import importlib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar, Protocol

import jax
import numpy as np
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
        """Batches ``start_step, start_step + 1, ...``, equal to ``batch(k)`` (built ahead of use).

        The iterator may have a ``close()``, which the loop calls when training ends.
        """

    def describe(self) -> str:
        """One line for the console at start, e.g. the episodes and games found."""

    def identity(self) -> dict[str, Any]:
        """JSON values that fix the stream (seed, sources, global batch ...), saved with checkpoints.

        A resumed run whose identity differs is warned that it no longer sees the original batches.
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

    name: ClassVar[str]  # saved with checkpoints; what config.recipe calls it

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

    Raises ValueError (one line) for a name that is no module or whose module sets no ``RECIPE``.
    """
    name = recipe_name(config)
    module_name = name if "." in name else f"{RECIPES_PACKAGE}.{name}.recipe"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name is None or not f"{module_name}.".startswith(f"{error.name}."):
            raise  # the recipe exists but one of its own imports is missing
        raise ValueError(f"config.recipe {name!r}: no module {module_name}") from None
    recipe_type = getattr(module, "RECIPE", None)
    if not (isinstance(recipe_type, type) and issubclass(recipe_type, Recipe)):
        raise ValueError(f"config.recipe {name!r}: {module_name} sets no RECIPE (a Recipe subclass)")
    return recipe_type(config)
