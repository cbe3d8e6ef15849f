"""Importing a checkpoint in the released Haiku layout: logits match an independent NumPy forward pass.

The released file is 200M parameters and not downloadable here, so the tests generate a small
checkpoint of the same structure (names, nesting, shape rules; d 128, 2 layers) and check our model
on imported weights against a NumPy re-implementation of the released model written from its
description (mgdt.md §3-§7, §15), not from our model's code.
"""

import os
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mgdt_jax.core import checkpointing
from mgdt_jax.core.checkpointing import CheckpointError
from mgdt_jax.cli import import_checkpoint as import_cli
from mgdt_jax.recipes.mgdt.recipe import load_model
from mgdt_jax.recipes.mgdt.import_checkpoint import CheckpointImportError, build_model, load_released_pickle
from mgdt_jax.recipes.mgdt.model import attention_mask, loss_and_metrics

D, LAYERS, HEADS, STEPS = 128, 2, 2, 4
ROOT = "decision_transformer"


def released_layout_params(seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """Random weights under the released checkpoint's Haiku module paths and shape rules.

    Every bias, LayerNorm offset and scale is away from its initial value (0 or 1), so a mistake in
    where one is applied shows in the outputs.
    """
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


def reference_forward(params, batch) -> dict[str, np.ndarray]:
    """The released model's forward pass in float64 NumPy, in the released order of operations.

    Written from the description of the released code (mgdt.md §3-§7), step by step as it computes:
    embed the inputs; interleave them; add the position embedding; multiply the whole input vector by
    the token mask (hidden return tokens enter as exactly zero); pre-LN blocks whose attention divides
    the logits by sqrt(64) after q.k and sets masked ones to -1e30; a final LayerNorm; heads read at
    fixed offsets. Returns the three heads' logits [B, S, V], the transformer's input (after the
    mask) and output [B, T, D].
    """
    p = {module: {name: value.astype(np.float64) for name, value in leaves.items()} for module, leaves in params.items()}
    embed = f"{ROOT}/~_embed_inputs"
    b, s = batch["actions"].shape
    per_step, t = 39, s * 39

    # _embed_inputs: a 14x14 stride-14 VALID convolution (kernel HWIO), patches in row-major grid
    # order, then the per-patch encoding; plain table lookups for return, action and reward.
    frames = batch["observations"].astype(np.float64) / 255.0  # [B, S, 84, 84, 1]
    grid = frames.reshape(b, s, 6, 14, 6, 14, 1)
    patches = np.einsum("bsyhxwc,hwcd->bsyxd", grid, p[f"{embed}/image_emb"]["w"]) + p[f"{embed}/image_emb"]["b"]
    patches = patches.reshape(b, s, 36, D) + p[ROOT]["image_pos_enc"][0]
    returns = p[f"{embed}/embed"]["embeddings"][batch["returns_to_go"]]
    actions = p[f"{embed}/embed_1"]["embeddings"][batch["actions"]]
    rewards = p[f"{embed}/embed_2"]["embeddings"][batch["rewards"]]
    tokens = np.concatenate([patches, returns[:, :, None], actions[:, :, None], rewards[:, :, None]], axis=2)
    h = tokens.reshape(b, t, D) + p[ROOT]["positional_embeddings"]

    # The token mask of single_return_token (only step 0's return token is visible), then the
    # transformer's first act: the whole input vector of a masked token is multiplied by 0.
    token_mask = np.ones((b, s, per_step))
    token_mask[:, 1:, 36] = 0.0
    token_mask = token_mask.reshape(b, t)
    h = h * token_mask[:, :, None]
    transformer_input = h
    # Attention mask: (token mask on keys) x (causal OR block-diagonal over each frame's 36 patches).
    causal = np.tril(np.ones((t, t)))
    for step in range(s):
        causal[step * per_step : step * per_step + 36, step * per_step : step * per_step + 36] = 1.0
    mask = token_mask[:, None, None, :] * causal[None, None]  # [B, 1, T(query), T(key)]

    def layer_norm(x, module):
        mean = x.mean(-1, keepdims=True)
        variance = ((x - mean) ** 2).mean(-1, keepdims=True)  # two-pass, as jnp.var
        return p[module]["scale"] / np.sqrt(variance + 1e-5) * (x - mean) + p[module]["offset"]

    def linear(x, module):
        return x @ p[module]["w"] + p[module]["b"]

    def gelu_tanh(x):
        return x * 0.5 * (1.0 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))

    for i in range(LAYERS):
        prefix = f"{ROOT}/~/sequence/h{i}"
        x = layer_norm(h, f"{prefix}_ln_1")
        q, k, v = (linear(x, f"{prefix}_attn/{n}").reshape(b, t, HEADS, 64) for n in ("query", "key", "value"))
        scores = np.einsum("bthd,bThd->bhtT", q, k) / np.sqrt(64)
        scores = np.where(mask != 0, scores, -1e30)
        weights = np.exp(scores - scores.max(-1, keepdims=True))
        weights /= weights.sum(-1, keepdims=True)
        attended = np.einsum("bhtT,bThd->bthd", weights, v).reshape(b, t, D)
        h = h + linear(attended, f"{prefix}_attn/linear")  # dropout (training only) sits before this sum
        x = layer_norm(h, f"{prefix}_ln_2")
        h = h + linear(gelu_tanh(linear(x, f"{prefix}_mlp/linear")), f"{prefix}_mlp/linear_1")
    h = layer_norm(h, f"{ROOT}/~/sequence/ln_f")
    out = h.reshape(b, s, per_step, D)
    return {
        "return_logits": linear(out[:, :, 35], f"{ROOT}/ret_linear"),  # the frame's last patch
        "action_logits": linear(out[:, :, 36], f"{ROOT}/act_linear"),  # the return token
        "reward_logits": linear(out[:, :, 37], f"{ROOT}/rew_linear"),  # the action token
        "transformer_input": transformer_input,
        "transformer_output": h,
    }


def reference_loss(logits, batch) -> float:
    """The released loss with a standard cross-entropy per token (no division by the vocabulary).

    The mean of the action, return and reward terms; each is the mean over batch and steps of
    -log softmax at the target; single_return_token: the return term uses step 0 only.
    """

    def cross_entropy(head_logits, target):
        shifted = head_logits - head_logits.max(-1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
        return -np.take_along_axis(log_probs, target[..., None], -1).mean()

    terms = [
        cross_entropy(logits["action_logits"], batch["actions"]),
        cross_entropy(logits["return_logits"][:, :1], batch["returns_to_go"][:, :1]),
        cross_entropy(logits["reward_logits"], batch["rewards"]),
    ]
    return sum(terms) / len(terms)


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
    """All three heads at every window step, the loss, and the transformer's input and output."""
    batch = _batch()
    expected = reference_forward(params, batch)
    ours = jax.device_get(model(batch, deterministic=True))
    for name in ("return_logits", "action_logits", "reward_logits"):
        assert ours[name].shape == expected[name].shape == (2, STEPS, ours[name].shape[-1])
        np.testing.assert_allclose(ours[name], expected[name], atol=2e-4, rtol=1e-4, err_msg=name)
    loss, _ = loss_and_metrics(ours, batch, model.config)
    np.testing.assert_allclose(float(loss), reference_loss(expected, batch), rtol=1e-5, err_msg="loss")
    step_mask = jnp.asarray(batch["step_mask"])
    embedded = model.embed(batch, step_mask)
    np.testing.assert_allclose(embedded, expected["transformer_input"], atol=1e-5, rtol=1e-5, err_msg="input")
    hidden = model.transformer(embedded, attention_mask(step_mask, model.config), deterministic=True)
    np.testing.assert_allclose(hidden, expected["transformer_output"], atol=2e-4, rtol=1e-4, err_msg="output")
    # The policy's fast paths: action logits at every step, the visible return at step 0.
    for step in range(STEPS):
        action = model.step_logits(batch, "action", jnp.full(2, step))
        np.testing.assert_allclose(action, expected["action_logits"][:, step], atol=2e-4, rtol=1e-4, err_msg=f"step {step}")
    returns = model.visible_frame_return_logits(batch, jnp.zeros(2, jnp.int32))
    np.testing.assert_allclose(returns, expected["return_logits"][:, 0], atol=2e-4, rtol=1e-4)


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
    assert checkpointing.is_sealed(workdir / checkpointing.CHECKPOINTS / "0")  # its reads are checked
    # A second import into the same workdir is refused rather than overwriting.
    assert import_cli.main(["--pickle", str(released_pickle), "--workdir", str(workdir)]) == 1
    assert "already holds checkpoint 0" in capsys.readouterr().err
    # Another run's workdir (its checkpoints at other steps) keeps its config and gains no checkpoint.
    other = tmp_path / "other_run"
    (other / "checkpoints" / "1000").mkdir(parents=True)
    (other / "config.json").write_text('{"recipe": "ad"}\n')
    assert import_cli.main(["--pickle", str(released_pickle), "--workdir", str(other)]) == 1
    assert capsys.readouterr().err.strip() == (
        f"mgdt-import-checkpoint: error: {other} holds another run (its config.json is not this model's): "
        "import into a new workdir")
    assert (other / "config.json").read_text() == '{"recipe": "ad"}\n'
    assert sorted(path.name for path in (other / "checkpoints").iterdir()) == ["1000"]


def test_a_failed_import_removes_the_workdir_it_created_only(released_pickle, tmp_path, monkeypatch, capsys):
    def disk_full(*args):
        raise OSError("No space left on device")

    monkeypatch.setattr(import_cli, "save_params", disk_full)
    assert import_cli.main(["--pickle", str(released_pickle), "--workdir", str(tmp_path / "new")]) == 1
    assert "No space left on device" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()
    mine = tmp_path / "mine"  # a folder the user made is kept, with what the import wrote in it
    mine.mkdir()
    assert import_cli.main(["--pickle", str(released_pickle), "--workdir", str(mine)]) == 1
    assert mine.is_dir()


def test_import_refuses_a_step_holding_an_incomplete_checkpoint(released_pickle, half_write, tmp_path, capsys):
    workdir = tmp_path / "released"
    assert import_cli.main(["--pickle", str(released_pickle), "--workdir", str(workdir)]) == 0
    half_write(workdir / "checkpoints" / "0", "emptied_files")
    capsys.readouterr()
    assert import_cli.main(["--pickle", str(released_pickle), "--workdir", str(workdir)]) == 1
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and "checkpoints/0 is an incomplete checkpoint (params: " in error
    assert "remove it or import under another --step" in error
    with pytest.raises(CheckpointError, match="holds no complete checkpoint; step 0: params: .* empty file"):
        load_model(workdir)
    # Under another step the import goes through, and evaluation reads that one.
    assert import_cli.main(["--pickle", str(released_pickle), "--workdir", str(workdir), "--step", "1"]) == 0
    _, step = load_model(workdir)
    assert step == 1


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


@pytest.mark.parametrize("name, field, shape", [(f"{ROOT}/~_embed_inputs/image_emb", "w", (14, 14, 1, 0)),
                                               (ROOT, "positional_embeddings", (0, 128))])
def test_an_empty_axis_is_named_as_not_fitting_the_layout(name, field, shape):
    # Was a ZeroDivisionError, or a model-config ValueError with a traceback, from mgdt-import-checkpoint.
    params = released_layout_params()
    params[name][field] = np.zeros(shape, np.float32)
    with pytest.raises(CheckpointImportError, match="do not fit the MGDT layout$"):
        build_model(params)


def test_a_released_pickle_with_non_finite_weights_is_refused(tmp_path):
    params = released_layout_params()
    params[f"{ROOT}/act_linear"]["w"][3, 5] = np.nan  # one bad weight would make every logit NaN
    path = tmp_path / "nan.pkl"
    path.write_bytes(pickle.dumps((params, {})))
    with pytest.raises(CheckpointImportError, match=rf"^{path}: parameter {ROOT}/act_linear/w holds NaN or infinite"):
        load_released_pickle(path)
