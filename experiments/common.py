"""The shared base of every experiment config (schema: docs/architecture.md).

Each experiment file calls ``base_config()`` and changes what differs. Defaults are the paper's
pretraining recipe (Lee et al. 2022, §4.1) at the DT-40M size.

Configs are ``ml_collections.ConfigDict``s. Where ml_collections is not installed (a bare
accelerator machine running benchmarks/gpu_check.py) the same functions return nested
``types.SimpleNamespace``s with the same fields and values: enough for the model, the sharding and
the train step, which read sections by attribute (mgdt_jax/core/config_sections.py). ``mgdt-train``
itself needs ml_collections (its ``--config`` flag).

``train_to_end`` is how the experiment scripts train: a preempted run stops the script.
"""

from __future__ import annotations

import types
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

try:
    import ml_collections
except ImportError:
    ml_collections = None

if TYPE_CHECKING:
    from ml_collections import ConfigDict

    from mgdt_jax.core.loop import TrainResult


def train_to_end(config: Any, workdir: Path, **kwargs: Any) -> TrainResult:
    """``loop.train(config, workdir, **kwargs)`` run to its last step, or SystemExit (one line, exit
    status 1) if a SIGTERM or Ctrl-C stopped it first (saved): a partly trained model is never evaluated or reported
    as if it were finished. Its checkpoint stays in ``workdir``."""
    from mgdt_jax.core import loop

    result = loop.train(config, workdir, **kwargs)
    if result.stopped_by:
        raise SystemExit(f"{workdir}: training {result.stopped_by} at step {result.last_step} of "
                         f"{config.train.num_steps}; its checkpoint is kept, nothing was evaluated or reported")
    return result


def _section() -> Any:
    return ml_collections.ConfigDict() if ml_collections else types.SimpleNamespace()


def from_dict(values: Mapping[str, Any]) -> ConfigDict:
    """A config of nested ``values`` (each dict a section), with or without ml_collections (above)."""
    if ml_collections:
        return ml_collections.ConfigDict(values)
    return types.SimpleNamespace(**{name: from_dict(value) if isinstance(value, Mapping) else value
                                    for name, value in values.items()})


def _settable_object(value: Any) -> Any:
    """A field the command line may set to another type (a dict in files, a string in flags)."""
    return ml_collections.FieldReference(value, field_type=object) if ml_collections else value


def base_config() -> ConfigDict:
    config = _section()
    config.recipe = "mgdt"  # what is trained: mgdt_jax/recipes/<recipe>/recipe.py

    config.model = _section()
    model = config.model
    model.num_layers = 6
    model.d_model = 768
    model.num_heads = 12  # d_model // 64: MGDT keeps GPT-2's 64-wide heads
    model.mlp_ratio = 4  # GPT-2 MLP width 4 * d_model
    model.dropout_rate = 0.1  # released model; on attention and MLP outputs only
    model.num_steps = 4  # context of 4 timesteps = 156 tokens
    model.single_return_token = True  # released model: only the window's first return is an input
    model.behaviour_cloning = False  # True: the BC baseline (no return or reward tokens)
    model.dtype = "float32"  # matmul compute dtype; "bfloat16" on GPU/TPU (params stay float32)
    model.param_dtype = "float32"
    model.remat = False  # recompute block activations in backward: for models that do not fit

    # Device mesh sizes; -1 takes all remaining devices. Pure data parallelism by default, which is
    # fastest while the model and optimizer state fit on one device.
    config.mesh = _section()
    config.mesh.data = -1
    config.mesh.fsdp = 1
    config.mesh.tensor = 1

    config.optimizer = _section()
    optimizer = config.optimizer
    optimizer.name = "lamb"  # paper; "adamw" for comparison
    optimizer.learning_rate = 3e-4
    optimizer.warmup_steps = 4000  # linear warm-up from 0
    optimizer.schedule = "constant"  # after warm-up; the paper does not state one ("cosine", "linear")
    optimizer.b1 = 0.9
    optimizer.b2 = 0.999
    optimizer.eps = 1e-6  # not stated by the paper; optax's LAMB default
    optimizer.weight_decay = 0.0  # paper: none for pretraining (applies to matrices only)
    optimizer.grad_clip_norm = 1.0  # global-norm clipping; 0 disables

    config.data = _section()
    data = config.data
    # RLDS dataset directories (ours or rlu_atari), set per run; a tuple, so flags can set it. Each needs
    # its window index: mgdt-convert writes it, mgdt-index builds it for other datasets.
    data.sources = ()
    # Game name -> sampling weight; empty = uniform over games. Typed `object` so the command line
    # can set it: --config.data.game_weights=Pong=2,Breakout=1 (a config file can assign a dict).
    data.game_weights = _settable_object({})
    data.seed = 0  # data order; with the step it fixes which windows every batch holds
    data.num_threads = 2  # threads building batches ahead of use (in each worker process)
    data.num_workers = 0  # worker processes building batches: the way to use a host's spare cores

    config.train = _section()
    train = config.train
    train.batch_size = 2048  # global, in 4-step windows (paper)
    train.grad_accum_steps = 1  # micro-batches per optimizer step, when a batch does not fit
    train.num_steps = 10_000_000  # paper: 10M steps
    train.seed = 0  # parameter init and dropout
    train.log_every = 100
    train.checkpoint_every = 5_000
    train.keep_checkpoints = 3
    train.eval_every = 0  # steps between in-training evaluations; 0 = never
    train.eval_games = ()  # games played at evaluation; empty = none
    train.eval_episodes = 16  # per game (paper: 16 trials)
    train.init_from = ""  # a checkpoint directory to start from (fine-tuning); empty = scratch
    return config
