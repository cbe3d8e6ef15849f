"""The train state and the jitted, sharded train step of any recipe.

The state is created directly on the mesh (a jitted init with ``out_shardings``: no host-side full
copy of the parameters ever exists) and the step is one ``jax.jit`` with explicit in/out shardings
and the old state's buffers donated to the new one. The model, its loss and metrics come from the
recipe (mgdt_jax/core/recipe.py); this module knows no agent.

How to use::

    import numpy as np
    from mgdt_jax.core import sharding
    from mgdt_jax.core.train_step import Trainer

    config = experiments.tiny.get_config()          # or a plain dict-of-dicts with the same fields
    mesh = sharding.make_mesh(config.mesh)          # (data, fsdp, tensor) over all devices
    trainer = Trainer(config, mesh)                 # the recipe config.recipe names (default "mgdt")
    state = trainer.init(seed=config.train.seed)    # sharded TrainState(step, params, opt_state, rng)
    for numpy_batch in batches:                      # this host's rows of the recipe's batches
        state, metrics = trainer.step(state, trainer.shard_batch(numpy_batch))
    model = trainer.model(state)                     # an nnx module for evaluation/policies

``trainer.abstract_state`` (shapes, dtypes and shardings, no memory) is the Orbax restore target on
any mesh. ``metrics`` holds the recipe's metrics, ``loss``, ``grad_norm`` and ``learning_rate`` (of
the step just taken) as replicated scalars, averaged over gradient-accumulation micro-batches.

Randomness: the dropout key of step ``n`` is ``fold_in(state.rng, n)``, a function of the step,
so a resumed run draws exactly the masks an uninterrupted run would have drawn.

Online recipes (``OnlineRecipe``, see mgdt_jax/core/recipe.py): the state also holds the recipe's
``RolloutState`` (``state.rollout``, None for offline recipes); the step ignores its (empty) batch,
rolls out with the current parameters under the key ``fold_in(state.rng, n)`` and then takes
``num_epochs x num_minibatches`` optimizer steps on the rollout's batch (``state.step`` counts train
steps; the learning-rate schedule counts optimizer steps). Metrics are averaged over those
optimizer steps; the rollout's own metrics are added as they are.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh

from mgdt_jax.core import host_memory, sharding
from mgdt_jax.core.config_sections import read_section, section
from mgdt_jax.core.recipe import TRAINER_METRICS, OnlineRecipe, Recipe, RolloutState, load_recipe
from mgdt_jax.core.optimizer import make_optimizer


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: optimizer steps taken
    params: nnx.State  # the model's parameters (float32)
    opt_state: optax.OptState
    rng: jax.Array  # uint32 [2] raw key data, the base of every step's dropout key
    rollout: Any = None  # an online recipe's RolloutState (environments, memories, curriculum)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The fields of the ``train`` config section the step needs."""

    batch_size: int = 32
    grad_accum_steps: int = 1
    num_steps: int = 1000


class Trainer:
    """The optimizer, the shardings and the jitted init/step of one config's recipe on one mesh.

    ``recipe`` defaults to the one ``config.recipe`` names (``mgdt_jax.core.recipe.load_recipe``).
    """

    def __init__(self, config: Any, mesh: Mesh, recipe: Recipe | None = None):
        self.mesh = mesh
        self.recipe = recipe if recipe is not None else load_recipe(config)
        self.train_config = read_section(TrainConfig, section(config, "train", {}))
        if self.train_config.grad_accum_steps < 1:
            raise ValueError(f"train.grad_accum_steps must be >= 1, got {self.train_config.grad_accum_steps}")
        self.online = isinstance(self.recipe, OnlineRecipe)
        self.updates_per_step = self.recipe.num_epochs * self.recipe.num_minibatches if self.online else 1
        self.optimizer, self.learning_rate = make_optimizer(
            section(config, "optimizer", {}), self.train_config.num_steps * self.updates_per_step
        )
        self._check_batch_divides(mesh)

        abstract_model = nnx.eval_shape(lambda: self._model(jax.random.key(0)))
        self.graphdef, abstract_params = nnx.split(abstract_model)
        params_sharding = sharding.variable_shardings(abstract_params, mesh)
        # The mesh axes some parameter is split over: fsdp or tensor of size > 1 missing here splits nothing
        self.parameter_axes = frozenset(axis for leaf in jax.tree.leaves(params_sharding) for entry in leaf.spec
                                        for axis in ((entry,) if isinstance(entry, str) else entry or ())
                                        if mesh.shape[axis] > 1)
        abstract_state = jax.eval_shape(self._init_state, jnp.int32(0))
        replicated = sharding.replicated(mesh)
        self.state_sharding = TrainState(
            step=replicated,
            params=params_sharding,
            # Optimizer moments are sharded like the parameters they follow; counters are replicated.
            opt_state=optax.tree_map_params(
                self.optimizer,
                lambda _, param_sharding: param_sharding,
                abstract_state.opt_state,
                params_sharding,
                transform_non_params=lambda _: replicated,
                is_leaf=lambda node: isinstance(node, nnx.Variable),
            ),
            rng=replicated,
            rollout=self._rollout_sharding(abstract_state.rollout, mesh),
        )
        self.abstract_state = jax.tree.map(
            lambda leaf, leaf_sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=leaf_sharding),
            abstract_state,
            self.state_sharding,
        )
        self.batch_sharding = sharding.batch_sharding(mesh)
        self._init = jax.jit(self._init_state, out_shardings=self.state_sharding)
        self._step = jax.jit(
            self._train_step,
            in_shardings=(self.state_sharding, self.batch_sharding),
            out_shardings=(self.state_sharding, replicated),
            donate_argnums=0,
        )

    def init(self, seed: int) -> TrainState:
        """A fresh train state, created sharded on the mesh."""
        return self._init(jnp.int32(seed))

    def step(self, state: TrainState, batch: Mapping[str, jax.Array]) -> tuple[TrainState, dict[str, jax.Array]]:
        """One optimizer step on a global batch (see ``shard_batch``). ``state`` is donated."""
        return self._step(state, batch)

    def shard_batch(self, local_batch: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
        """This host's numpy rows of the batch -> the global batch, sharded over the batch axis."""
        return sharding.global_batch(local_batch, self.mesh)

    def model(self, state: TrainState) -> nnx.Module:
        """The model with the state's parameters (for evaluation and policies)."""
        return nnx.merge(self.graphdef, state.params)

    def lower_step(self, batch: Mapping[str, jax.ShapeDtypeStruct]) -> jax.stages.Lowered:
        """The lowered step for a batch of these shapes (cost analysis, AOT compile checks)."""
        return self._step.lower(self.abstract_state, batch)

    def _check_batch_divides(self, mesh: Mesh) -> None:
        """ValueError (one line) for a global batch that does not split evenly over the mesh's batch
        shards or into the updates' parts (was a sharding or reshape traceback naming no config field)."""
        size, accum = self.train_config.batch_size, self.train_config.grad_accum_steps
        shards = mesh.shape["data"] * mesh.shape["fsdp"]
        if self.online:
            count = self.recipe.num_minibatches * accum
            what, parts = "(environments) ", f"num_minibatches x grad_accum_steps = {count}"
        else:
            count = accum
            what, parts = "", f"train.grad_accum_steps = {accum} micro-batches"
        if size % shards or size % count:
            raise ValueError(f"train.batch_size {size} {what}must divide over the mesh's {shards} batch shards "
                             f"(mesh.data x mesh.fsdp) and into {parts}")

    def _rollout_sharding(self, abstract_rollout: RolloutState | None, mesh: Mesh) -> RolloutState | None:
        if abstract_rollout is None:
            return None
        batch, replicated = sharding.batch_sharding(mesh), sharding.replicated(mesh)
        return RolloutState(
            per_env=jax.tree.map(lambda _: batch, abstract_rollout.per_env),
            shared=jax.tree.map(lambda _: replicated, abstract_rollout.shared),
        )

    def _model(self, params_key: jax.Array) -> nnx.Module:
        """The recipe's model, built from an ``nnx.Rngs`` of one stream, ``params``. ValueError (one
        line, saying what to write instead) for the two Flax idioms the trainer cannot take: RNG
        state kept in the model (``nnx.Dropout(rate, rngs=rngs)``: randomness comes as the loss's
        ``dropout_key``) and parameters laid out as they are made (``nnx.with_partitioning``'s
        default eager sharding: the trainer places the parameters on the mesh itself)."""
        try:
            return self.recipe.model(nnx.Rngs(params=params_key))
        except (KeyError, AttributeError) as error:  # rngs["dropout"], rngs.dropout() (nnx.MultiHeadAttention's)
            if "RngStream" not in str(error):
                raise
            raise ValueError(f"recipe {self.recipe.name}: its model asks for an RNG stream other than params when "
                             f"built ({error.args[0]}): keep no RNG in the model and pass the loss's dropout_key when called "
                             "(nnx.Dropout(rate) without rngs, called as dropout(x, rngs=key); or "
                             "mgdt_jax.core.transformer.dropout(x, rate, key))") from None
        except ValueError as error:
            if "auto mesh context" not in str(error):
                raise
            raise ValueError(f"recipe {self.recipe.name}: a parameter's axis names are given with eager sharding "
                             "(nnx.with_partitioning's default, which needs a mesh as it is made): name them with "
                             "mgdt_jax.core.transformer.sharded(initializer, axes), or with_partitioning(..., "
                             "eager_sharding=False); the trainer lays the parameters out on the mesh") from None

    def _init_state(self, seed: jax.Array) -> TrainState:
        base_key = jax.random.key(seed)
        params_key, dropout_key = jax.random.split(base_key)
        params = nnx.state(self._model(params_key))
        rollout = self.recipe.init_rollout(jax.random.fold_in(base_key, 1)) if self.online else None
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=self.optimizer.init(params),
            rng=jax.random.key_data(dropout_key),
            rollout=rollout,
        )

    def _loss(
        self, params: nnx.State, batch: Mapping[str, jax.Array], dropout_key: jax.Array
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        output = self.recipe.loss(nnx.merge(self.graphdef, params), batch, dropout_key)
        return _checked_loss_output(self.recipe.name, output)

    def _loss_gradients(
        self, params: nnx.State, batch: Mapping[str, jax.Array], dropout_key: jax.Array
    ) -> tuple[nnx.State, dict[str, jax.Array]]:
        (loss, metrics), grads = jax.value_and_grad(self._loss, has_aux=True)(params, batch, dropout_key)
        return grads, {**metrics, "loss": loss}

    def _gradients(
        self, params: nnx.State, batch: Mapping[str, jax.Array], dropout_key: jax.Array
    ) -> tuple[nnx.State, dict[str, jax.Array]]:
        """Gradients and metrics (with the loss), averaged over ``grad_accum_steps`` micro-batches."""
        num_micro = self.train_config.grad_accum_steps
        if num_micro == 1:
            return self._loss_gradients(params, batch, dropout_key)

        def split(array: jax.Array) -> jax.Array:
            # [B, ...] -> [A, B/A, ...] taking every A-th row, so each micro-batch stays spread over
            # all devices of the batch axis instead of living on B/A of them.
            micro = array.reshape(array.shape[0] // num_micro, num_micro, *array.shape[1:])
            return jnp.swapaxes(micro, 0, 1)

        def accumulate(carry, inputs):
            micro_batch, index = inputs
            grads, metrics = self._loss_gradients(params, micro_batch, jax.random.fold_in(dropout_key, index))
            return jax.tree.map(jnp.add, carry, (grads, metrics)), None

        zeros = jax.tree.map(lambda leaf: jnp.zeros(leaf.shape, leaf.dtype), jax.eval_shape(self._loss_gradients, params, batch, dropout_key))
        micro_batches = jax.tree.map(split, batch)
        totals, _ = jax.lax.scan(accumulate, zeros, (micro_batches, jnp.arange(num_micro)))
        return jax.tree.map(lambda total: total / num_micro, totals)

    def _train_step(
        self, state: TrainState, batch: Mapping[str, jax.Array]
    ) -> tuple[TrainState, dict[str, jax.Array]]:
        if self.online:
            return self._online_train_step(state)
        dropout_key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        grads, metrics = self._gradients(state.params, batch, dropout_key)
        updates, opt_state = self.optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {
            **metrics,
            "grad_norm": optax.tree.norm(grads),
            "learning_rate": self.learning_rate(state.step),
        }
        new_state = TrainState(step=state.step + 1, params=params, opt_state=opt_state, rng=state.rng)
        return new_state, metrics

    def _online_train_step(self, state: TrainState) -> tuple[TrainState, dict[str, jax.Array]]:
        key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        rollout_key, update_key = jax.random.split(key)
        model = nnx.merge(self.graphdef, state.params)
        batch, rollout, rollout_metrics = self.recipe.rollout(model, state.rollout, rollout_key, state.step)
        batch = jax.lax.with_sharding_constraint(jax.lax.stop_gradient(batch), self.batch_sharding)
        num_minibatches = self.recipe.num_minibatches

        def minibatches(epoch_key: jax.Array) -> dict[str, jax.Array]:
            """[M, E/M, ...]: a fresh permutation of the environments, every M-th row per minibatch."""
            environments = self.train_config.batch_size
            order = jax.random.permutation(epoch_key, environments) if num_minibatches > 1 else jnp.arange(environments)

            def split(array: jax.Array) -> jax.Array:
                shuffled = jnp.take(array, order, axis=0)
                return jnp.swapaxes(shuffled.reshape(environments // num_minibatches, num_minibatches, *array.shape[1:]), 0, 1)

            return jax.tree.map(split, batch)

        def update(carry, inputs):
            params, opt_state = carry
            minibatch, update_key = inputs
            grads, metrics = self._gradients(params, minibatch, update_key)
            updates, opt_state = self.optimizer.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), {**metrics, "grad_norm": optax.tree.norm(grads)}

        def epoch(carry, epoch_key):
            shuffle, dropout = jax.random.split(epoch_key)
            return jax.lax.scan(update, carry, (minibatches(shuffle), jax.random.split(dropout, num_minibatches)))

        epoch_keys = jax.random.split(update_key, self.recipe.num_epochs)
        (params, opt_state), metrics = jax.lax.scan(epoch, (state.params, state.opt_state), epoch_keys)
        metrics = jax.tree.map(jnp.mean, metrics)
        if clash := sorted(metrics.keys() & rollout_metrics.keys()):
            raise ValueError(f"recipe {self.recipe.name!r}: rollout metrics {clash} clash with the loss's or the trainer's")
        metrics = {**metrics, **rollout_metrics, "learning_rate": self.learning_rate(state.step * self.updates_per_step)}
        new_state = TrainState(step=state.step + 1, params=params, opt_state=opt_state, rng=state.rng, rollout=rollout)
        return new_state, metrics


def _checked_loss_output(recipe: str, output: Any) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The recipe's ``(loss, metrics)``, or ValueError (one line, at trace time) naming what breaks
    ``Recipe.loss``'s contract: a wrong loss or metric raised a JAX traceback (an integer loss too),
    a metric named like the trainer's own was silently overwritten, and a bfloat16 loss was logged
    at its 3 significant digits."""
    if not (isinstance(output, tuple) and len(output) == 2 and isinstance(output[1], Mapping)):
        got = f"an array of shape {jnp.shape(output)}" if hasattr(output, "shape") else f"a {type(output).__name__}"
        raise ValueError(f"recipe {recipe!r}: loss must return (scalar loss, {{name: scalar metric}}), got {got}")
    loss, metrics = output
    for name, value in (("the loss", loss), *((f"metric {key!r}", value) for key, value in metrics.items())):
        if jnp.shape(value) != ():
            raise ValueError(f"recipe {recipe!r}: {name} must be a scalar, got shape {jnp.shape(value)}")
    if jnp.result_type(loss) != jnp.float32:  # an integer one has no gradient; a bfloat16 one logs 3 digits
        raise ValueError(f"recipe {recipe!r}: the loss must be float32, got {jnp.result_type(loss)} "
                         "(compute it in float32, or cast it: loss.astype(jnp.float32))")
    if clash := sorted(metrics.keys() & set(TRAINER_METRICS)):
        raise ValueError(f"recipe {recipe!r}: metric names {clash} are the trainer's own (TRAINER_METRICS)")
    return loss, dict(metrics)


def check_step_fits(compiled: jax.stages.Compiled, devices: Sequence[jax.Device] | None = None) -> None:
    """ValueError (one line) when a compiled step needs more memory than the devices have free.

    What the step adds to what is already allocated (the state and the batch are) is XLA's memory
    analysis of one device's program: its temporaries plus the outputs not written over donated
    inputs. An accelerator has ``bytes_limit - bytes_in_use`` of its own (``memory_stats``); CPU
    devices share the host's memory, so the step needs that per local device out of the host's
    available memory (``MemAvailable``, or less under a cgroup limit). Without the check a window
    or batch too large (attention is quadratic in the sequence: ``model.num_steps`` 2000 asked for
    terabytes) got the process killed by the kernel or ended in an allocation traceback. Says
    nothing where the backend, the accelerator's allocator or the host does not report these figures.
    """
    devices = list(devices if devices is not None else jax.local_devices())
    try:
        analysis = compiled.memory_analysis()
        stats = devices[0].memory_stats() or {}
    except (NotImplementedError, jax.errors.JaxRuntimeError):
        return
    if analysis is None:
        return
    need = analysis.temp_size_in_bytes + max(analysis.output_size_in_bytes - analysis.alias_size_in_bytes, 0)
    if "bytes_limit" in stats:
        free, where = stats["bytes_limit"] - stats.get("bytes_in_use", 0), f"a {devices[0].device_kind} has"
    elif devices[0].platform == "cpu":
        free, need = host_memory.available_bytes(), need * len(devices)
        where = f"{len(devices)} CPU device(s) share the host's memory, which has"
    else:  # an accelerator whose allocator reports no limit (e.g. XLA_PYTHON_CLIENT_ALLOCATOR=platform)
        return
    if free is not None and need > free:
        raise ValueError(
            f"the compiled train step needs {host_memory.describe_bytes(need)} more memory and {where} "
            f"{host_memory.describe_bytes(free)} free (XLA's memory analysis): lower config.train.batch_size or the "
            f"model's sequence length or size, or set config.train.grad_accum_steps{remat_hint(devices[0].platform)}")


def remat_hint(platform: str) -> str:
    """The model's remat as a remedy for memory, except on CPU, where XLA keeps the activations it
    would recompute and remat saves nothing (docs/training.md: 6.15 against 6.14 GB, 1.5x slower)."""
    return "" if platform == "cpu" else " (or the model's remat, where it has one)"
