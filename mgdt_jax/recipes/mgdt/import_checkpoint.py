"""The released MGDT checkpoint (a pickle of Haiku ``(params, state)``) -> our Orbax checkpoint + config.

The pickle is untrusted input: unpickling can run arbitrary code, so it is read with an unpickler
that resolves only the NumPy functions needed to rebuild arrays and scalars; dicts, lists and tuples
are built by pickle opcodes without any lookup. Anything else is refused before it is created.

The model size is read from the weights (layers, width, MLP ratio, context length) and every
array is checked against the shape that size implies, so a truncated or foreign pickle fails with a
message naming the parameter. Names and the mapping onto our parameters: mgdt.md §15 and the table
in mgdt_jax/recipes/mgdt/model.py.
"""

from __future__ import annotations

import io
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from mgdt_jax.core import checkpointing, safe_pickle
from mgdt_jax.recipes.mgdt import tokens
from mgdt_jax.recipes.mgdt.model import ModelConfig, MultiGameDecisionTransformer

HEAD_SIZE = 64  # the released model's attention key size
ROOT = "decision_transformer"
EMBED = f"{ROOT}/~_embed_inputs"
SEQUENCE = f"{ROOT}/~/sequence"

# What the released pickle names: NumPy arrays and scalars, strings (through _codecs) and OrderedDicts.
_ALLOWED_GLOBALS = safe_pickle.NUMPY_ARRAYS | {("_codecs", "encode"), ("collections", "OrderedDict")}


class CheckpointImportError(ValueError):
    """The pickle is unsafe, unreadable, or not the released MGDT parameter layout."""


def load_released_pickle(path: Path) -> dict[str, dict[str, np.ndarray]]:
    """The Haiku params ``{module: {name: array}}`` of a released-format pickle, loaded safely;
    CheckpointImportError (one line, naming ``path``) for an unreadable file, a global other than
    the allowed ones, another structure, or a non-float or non-finite parameter."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise CheckpointImportError(f"{path}: cannot read ({error.strerror})") from None
    try:
        loaded = safe_pickle.load(io.BytesIO(data), _ALLOWED_GLOBALS)
    except safe_pickle.RefusedGlobal as error:
        raise CheckpointImportError(f"{path}: refusing to unpickle {error}: only dicts, tuples, lists, NumPy arrays "
                                    "and scalars are allowed") from None
    except Exception as error:  # a corrupt pickle raises anything from EOFError to TypeError
        raise CheckpointImportError(f"{path}: not a readable pickle ({type(error).__name__}: {error})") from None
    if not (isinstance(loaded, tuple) and len(loaded) == 2 and isinstance(loaded[0], Mapping)):
        raise CheckpointImportError(f"{path}: expected a pickled (params, state) pair of Haiku dicts")
    params = loaded[0]
    for module, leaves in params.items():
        if not isinstance(leaves, Mapping) or not all(
            isinstance(v, np.ndarray) and v.dtype.kind == "f" for v in leaves.values()
        ):
            raise CheckpointImportError(f"{path}: {module} is not a mapping of float arrays")
        for name, value in leaves.items():  # a trained model has none; such weights play nothing
            if not np.isfinite(value).all():
                raise CheckpointImportError(f"{path}: parameter {module}/{name} holds NaN or infinite values")
    return {module: dict(leaves) for module, leaves in params.items()}


def _get(params: Mapping[str, Mapping[str, np.ndarray]], module: str, name: str) -> np.ndarray:
    try:
        return params[module][name]
    except KeyError:
        raise CheckpointImportError(f"missing parameter {module}/{name}") from None


def infer_model_config(params: Mapping[str, Mapping[str, np.ndarray]]) -> ModelConfig:
    """The model size the weights imply (the released model: 10 layers, d 1280, 4 steps)."""
    d_model = _get(params, f"{EMBED}/image_emb", "w").shape[-1]
    layers = {int(m.group(1)) for key in params if (m := re.fullmatch(rf"{SEQUENCE}/h(\d+)_ln_1", key))}
    num_layers = max(layers) + 1 if layers else 0
    if layers != set(range(num_layers)) or not layers:
        raise CheckpointImportError(f"transformer layers are not numbered 0..N-1: found {sorted(layers)}")
    mlp_width = _get(params, f"{SEQUENCE}/h0_mlp/linear", "w").shape[-1]
    positions = _get(params, ROOT, "positional_embeddings").shape[0]
    if min(d_model, mlp_width, positions) < 1 or d_model % HEAD_SIZE or mlp_width % d_model \
            or positions % tokens.TOKENS_PER_STEP:  # an empty axis was a ZeroDivisionError or config traceback
        raise CheckpointImportError(
            f"width {d_model}, MLP width {mlp_width} or {positions} positions do not fit the MGDT layout"
        )
    return ModelConfig(
        num_layers=num_layers,
        d_model=d_model,
        num_heads=d_model // HEAD_SIZE,
        mlp_ratio=mlp_width // d_model,
        dropout_rate=0.1,
        num_steps=positions // tokens.TOKENS_PER_STEP,
        single_return_token=True,
        behaviour_cloning=False,
    )


def to_model_params(params: Mapping[str, Mapping[str, np.ndarray]], config: ModelConfig) -> dict[str, Any]:
    """Haiku params -> our parameters as a pure nested dict (``nnx.to_pure_dict`` layout)."""

    def linear(module: str) -> dict[str, np.ndarray]:
        return {"kernel": _get(params, module, "w"), "bias": _get(params, module, "b")}

    def norm(module: str) -> dict[str, np.ndarray]:
        return {"scale": _get(params, module, "scale"), "bias": _get(params, module, "offset")}

    def block(i: int) -> dict[str, Any]:
        prefix = f"{SEQUENCE}/h{i}"
        attention = {ours: linear(f"{prefix}_attn/{theirs}") for ours, theirs in
                     (("query", "query"), ("key", "key"), ("value", "value"), ("out", "linear"))}
        return {
            "ln_1": norm(f"{prefix}_ln_1"),
            "attn": attention,
            "ln_2": norm(f"{prefix}_ln_2"),
            "mlp": {"linear_in": linear(f"{prefix}_mlp/linear"), "linear_out": linear(f"{prefix}_mlp/linear_1")},
        }

    image_kernel = _get(params, f"{EMBED}/image_emb", "w")  # HWIO (14, 14, 1, D)
    return {
        "image_emb": {"kernel": image_kernel.reshape(-1, image_kernel.shape[-1]), "bias": _get(params, f"{EMBED}/image_emb", "b")},
        "image_pos_enc": _get(params, ROOT, "image_pos_enc").reshape(tokens.NUM_PATCHES, -1),  # (1,1,36,D)
        "positional_embeddings": _get(params, ROOT, "positional_embeddings"),
        "return_emb": {"embedding": _get(params, f"{EMBED}/embed", "embeddings")},
        "action_emb": {"embedding": _get(params, f"{EMBED}/embed_1", "embeddings")},
        "reward_emb": {"embedding": _get(params, f"{EMBED}/embed_2", "embeddings")},
        "transformer": {"blocks": {i: block(i) for i in range(config.num_layers)}, "ln_f": norm(f"{SEQUENCE}/ln_f")},
        "return_head": linear(f"{ROOT}/ret_linear"),
        "action_head": linear(f"{ROOT}/act_linear"),
        "reward_head": linear(f"{ROOT}/rew_linear"),
    }


def build_model(params: Mapping[str, Mapping[str, np.ndarray]]) -> MultiGameDecisionTransformer:
    """Our model holding the released weights; every shape checked against the inferred size."""
    config = infer_model_config(params)
    model = nnx.eval_shape(lambda: MultiGameDecisionTransformer(config, rngs=nnx.Rngs(0)))
    graphdef, abstract = nnx.split(model)
    expected = nnx.to_pure_dict(abstract)
    values = to_model_params(params, config)
    flat_expected = dict(jax.tree_util.tree_flatten_with_path(expected)[0])
    flat_values = dict(jax.tree_util.tree_flatten_with_path(values)[0])
    for path, spec in flat_expected.items():
        value = flat_values[path]
        if value.shape != spec.shape:
            raise CheckpointImportError(
                f"parameter {jax.tree_util.keystr(path)} has shape {value.shape}, expected {spec.shape} "
                f"for a {config.num_layers}-layer d{config.d_model} model"
            )
    nnx.replace_by_pure_dict(abstract, jax.tree.map(lambda v: np.asarray(v, np.float32), values))
    return nnx.merge(graphdef, abstract)


def save_params(model: nnx.Module, workdir: Path, step: int) -> Path:
    """Writes the model's parameters as the ``params`` item of checkpoint `step` in `workdir`, sealed."""
    directory = workdir / checkpointing.CHECKPOINTS
    with ocp.CheckpointManager(directory) as manager:
        manager.save(step, args=ocp.args.Composite(**{checkpointing.PARAMS: ocp.args.StandardSave(nnx.state(model))}))
        manager.wait_until_finished()
    checkpointing.seal(directory / str(step))
    return directory / str(step)
