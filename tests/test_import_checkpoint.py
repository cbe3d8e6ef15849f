"""Importing a checkpoint in the released Haiku layout: logits match an independent NumPy forward pass.

The released file is 200M parameters and not downloadable here, so the tests generate a small
checkpoint of the same structure (names, nesting, shape rules; d 128, 2 layers) and check our model
on imported weights against a NumPy re-implementation of the released model written from its
description (mgdt.md §3-§7, §15), not from our model's code.
"""

import os
import pickle

import jax
import numpy as np
import pytest

from mgdt_jax.cli import import_checkpoint as import_cli
from mgdt_jax.recipes.mgdt.evaluate import load_model
from mgdt_jax.recipes.mgdt.import_checkpoint import CheckpointImportError, build_model, load_released_pickle

D, LAYERS, HEADS, STEPS = 128, 2, 2, 4
ROOT = "decision_transformer"


def released_layout_params(seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """Random weights under the released checkpoint's Haiku module paths and shape rules."""
    rng = np.random.default_rng(seed)

    def normal(*shape, scale=0.1):
        return (scale * rng.normal(size=shape)).astype(np.float32)

    def linear(fan_in, fan_out):
        return {"w": normal(fan_in, fan_out, scale=fan_in**-0.5), "b": normal(fan_out)}

    def norm():
        return {"scale": 1.0 + normal(D), "offset": normal(D)}

    params = {
        f"{ROOT}/~_embed_inputs/image_emb": {"w": normal(14, 14, 1, D, scale=0.07), "b": normal(D)},
        ROOT: {"image_pos_enc": normal(1, 1, 36, D), "positional_embeddings": normal(39 * STEPS, D)},
        f"{ROOT}/~_embed_inputs/embed": {"embeddings": normal(120, D, scale=1.0)},
        f"{ROOT}/~_embed_inputs/embed_1": {"embeddings": normal(18, D, scale=1.0)},
        f"{ROOT}/~_embed_inputs/embed_2": {"embeddings": normal(4, D, scale=1.0)},
        f"{ROOT}/~/sequence/ln_f": norm(),
        f"{ROOT}/ret_linear": linear(D, 120),
        f"{ROOT}/act_linear": linear(D, 18),
        f"{ROOT}/rew_linear": linear(D, 4),
    }
    for i in range(LAYERS):
        prefix = f"{ROOT}/~/sequence/h{i}"
        params[f"{prefix}_ln_1"], params[f"{prefix}_ln_2"] = norm(), norm()
        for name in ("query", "key", "value", "linear"):
            params[f"{prefix}_attn/{name}"] = linear(D, D)
        params[f"{prefix}_mlp/linear"] = linear(D, 4 * D)
        params[f"{prefix}_mlp/linear_1"] = linear(4 * D, D)
    return params


def reference_logits(params, batch) -> dict[str, np.ndarray]:
    """The released model's forward pass in float64 NumPy, straight from its description."""
    p = {module: {name: value.astype(np.float64) for name, value in leaves.items()} for module, leaves in params.items()}
    embed = f"{ROOT}/~_embed_inputs"
    frames = batch["observations"].astype(np.float64) / 255.0  # [B, S, 84, 84, 1]
    b, s = frames.shape[:2]
    # A 14x14 stride-14 VALID convolution, kernel HWIO, patches in row-major grid order.
    grid = frames.reshape(b, s, 6, 14, 6, 14, 1)
    patches = np.einsum("bsyhxwc,hwcd->bsyxd", grid, p[f"{embed}/image_emb"]["w"]) + p[f"{embed}/image_emb"]["b"]
    patches = patches.reshape(b, s, 36, D) + p[ROOT]["image_pos_enc"][0]
    returns = p[f"{embed}/embed"]["embeddings"][batch["returns_to_go"]]
    returns[:, 1:] = 0.0  # single return token: later return embeddings are zeroed
    actions = p[f"{embed}/embed_1"]["embeddings"][batch["actions"]]
    rewards = p[f"{embed}/embed_2"]["embeddings"][batch["rewards"]]
    tokens = np.concatenate([patches, returns[:, :, None], actions[:, :, None], rewards[:, :, None]], axis=2)
    h = tokens.reshape(b, s * 39, D) + p[ROOT]["positional_embeddings"]
    t = s * 39
    mask = np.tril(np.ones((t, t), bool))
    for step in range(s):
        mask[step * 39 : step * 39 + 36, step * 39 : step * 39 + 36] = True
    for step in range(1, s):
        mask[:, step * 39 + 36] = False  # hidden return tokens of steps 1..3

    def layer_norm(x, module):
        mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return (x - mean) / np.sqrt(var + 1e-5) * p[module]["scale"] + p[module]["offset"]

    def linear(x, module):
        return x @ p[module]["w"] + p[module]["b"]

    def gelu_tanh(x):
        return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))

    for i in range(LAYERS):
        prefix = f"{ROOT}/~/sequence/h{i}"
        x = layer_norm(h, f"{prefix}_ln_1")
        q, k, v = (linear(x, f"{prefix}_attn/{n}").reshape(b, t, HEADS, 64) for n in ("query", "key", "value"))
        scores = np.einsum("bqhd,bkhd->bhqk", q, k) / 8.0
        scores = np.where(mask, scores, -1e30)
        weights = np.exp(scores - scores.max(-1, keepdims=True))
        weights /= weights.sum(-1, keepdims=True)
        attended = np.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, t, D)
        h = h + linear(attended, f"{prefix}_attn/linear")
        x = layer_norm(h, f"{prefix}_ln_2")
        h = h + linear(gelu_tanh(linear(x, f"{prefix}_mlp/linear")), f"{prefix}_mlp/linear_1")
    h = layer_norm(h, f"{ROOT}/~/sequence/ln_f")
    return {
        "return_logits": linear(h[:, 35::39], f"{ROOT}/ret_linear"),
        "action_logits": linear(h[:, 36::39], f"{ROOT}/act_linear"),
        "reward_logits": linear(h[:, 37::39], f"{ROOT}/rew_linear"),
    }


def _batch(batch_size: int = 2, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "observations": rng.integers(0, 256, (batch_size, STEPS, 84, 84, 1), dtype=np.uint8),
        "returns_to_go": rng.integers(0, 120, (batch_size, STEPS), dtype=np.int32),
        "actions": rng.integers(0, 18, (batch_size, STEPS), dtype=np.int32),
        "rewards": rng.choice([0, 1, 3], (batch_size, STEPS)).astype(np.int32),
        "step_mask": np.ones((batch_size, STEPS), bool),
    }


@pytest.fixture(scope="module")
def released_pickle(tmp_path_factory):
    path = tmp_path_factory.mktemp("released") / "checkpoint.pkl"
    path.write_bytes(pickle.dumps((released_layout_params(), {})))
    return path


def _assert_matches_reference(model, params):
    batch = _batch()
    ours = jax.device_get(model(batch, deterministic=True))
    expected = reference_logits(params, batch)
    for name, logits in expected.items():
        np.testing.assert_allclose(ours[name], logits, atol=2e-4, rtol=1e-4, err_msg=name)


def test_imported_model_logits_match_the_reference_forward_pass(released_pickle):
    params = load_released_pickle(released_pickle)
    model = build_model(params)
    assert (model.config.num_layers, model.config.d_model, model.config.num_heads) == (LAYERS, D, HEADS)
    _assert_matches_reference(model, params)


def test_import_command_writes_a_workdir_mgdt_eval_loads(released_pickle, tmp_path, capsys):
    workdir = tmp_path / "released"
    assert import_cli.main(["--pickle", str(released_pickle), "--workdir", str(workdir)]) == 0
    assert str(workdir) in capsys.readouterr().out
    model, step = load_model(workdir)
    assert step == 0
    _assert_matches_reference(model, load_released_pickle(released_pickle))
    # A second import into the same workdir is refused rather than overwriting.
    assert import_cli.main(["--pickle", str(released_pickle), "--workdir", str(workdir)]) == 1
    assert "already holds checkpoint 0" in capsys.readouterr().err


class _RunsCommand:
    """A pickle payload that would run a command when unpickled by plain `pickle.load`."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_restricted_unpickler_refuses_a_malicious_pickle(tmp_path, capsys):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(({"decision_transformer": {"w": _RunsCommand(marker)}}, {})))
    with pytest.raises(CheckpointImportError, match=r"refusing to unpickle (posix|os)\.system"):
        load_released_pickle(path)
    assert import_cli.main(["--pickle", str(path), "--workdir", str(tmp_path / "w")]) == 1
    assert "refusing to unpickle" in capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "w").exists()


def test_wrong_shapes_missing_parameters_and_junk_are_named(tmp_path):
    params = released_layout_params()
    params[f"{ROOT}/act_linear"]["w"] = params[f"{ROOT}/act_linear"]["w"][:, :17]
    with pytest.raises(CheckpointImportError, match=r"action_head.*\(128, 17\), expected \(128, 18\)"):
        build_model(params)
    del params[f"{ROOT}/~/sequence/h1_mlp/linear_1"]
    with pytest.raises(CheckpointImportError, match="missing parameter .*h1_mlp/linear_1/w"):
        build_model(params)
    junk = tmp_path / "junk.pkl"
    junk.write_bytes(b"\x80\x04not a pickle")
    with pytest.raises(CheckpointImportError, match="not a readable pickle"):
        load_released_pickle(junk)
