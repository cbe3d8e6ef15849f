"""The sharded train step on 8 fake CPU devices: equal to one device and accumulation for every
recipe (tests/recipe_cases.py); learning and batch assembly on the MGDT."""

from __future__ import annotations

import ast
import math
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import ml_collections
import pytest
from jax.sharding import PartitionSpec

from mgdt_jax.core import sharding
from mgdt_jax.core.recipe import load_recipe
from mgdt_jax.core.train_step import Trainer
from tests.recipe_cases import BATCH, CASES, step_config
from tests.toy_recipe import ToyRecipe

REPOSITORY = Path(__file__).resolve().parents[1]


def run_steps(trainer: Trainer, batches: list[dict[str, np.ndarray]]) -> tuple[dict, list[dict]]:
    state = trainer.init(seed=0)
    history = []
    for batch in batches:
        state, metrics = trainer.step(state, trainer.shard_batch(batch))
        history.append(jax.tree.map(float, metrics))
    return jax.tree.map(np.asarray, state.params), history


def single_device_mesh():
    return sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:1])


def test_sharded_step_equals_single_device_step(recipe_case, request):
    batches = recipe_case.batches(request)
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    sharded = Trainer(step_config(recipe_case, {"data": 2, "fsdp": 2, "tensor": 2}), mesh)

    state = sharded.init(seed=0)
    query = state.params["transformer"]["blocks"][0]["attn"]["query"]["kernel"][...]  # the core decoder's
    assert query.sharding.spec == PartitionSpec("fsdp", "tensor")
    assert len(query.addressable_shards) == 8 and query.addressable_shards[0].data.shape == (32, 32)
    assert sharded.abstract_state.params["transformer"]["blocks"][0]["attn"]["query"]["kernel"].sharding == query.sharding

    sharded_params, sharded_history = run_steps(sharded, batches)
    single = Trainer(step_config(recipe_case, {"data": 1, "fsdp": 1, "tensor": 1}), single_device_mesh())
    single_params, single_history = run_steps(single, batches)
    for sharded_metrics, single_metrics in zip(sharded_history, single_history):
        assert sharded_metrics.keys() == single_metrics.keys() == {*recipe_case.metrics, "loss", "grad_norm", "learning_rate"}
        for name in single_metrics:
            np.testing.assert_allclose(sharded_metrics[name], single_metrics[name], rtol=2e-5, atol=1e-6, err_msg=name)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-6), sharded_params, single_params)


def test_gradient_accumulation_equals_one_big_batch(recipe_case, request):
    mesh = sharding.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
    batches = recipe_case.batches(request)[:1]
    # Without dropout, two micro-batches of 4 give the gradient of one batch of 8 (atol: metrics such
    # as a policy loss over normalised advantages are means of terms that sum to about zero).
    whole = Trainer(step_config(recipe_case, {"data": -1}, dropout_rate=0.0), mesh)
    whole_params, whole_history = run_steps(whole, batches)
    accumulated = Trainer(step_config(recipe_case, {"data": -1}, dropout_rate=0.0, grad_accum_steps=2), mesh)
    accumulated_params, accumulated_history = run_steps(accumulated, batches)
    for name in whole_history[0]:
        np.testing.assert_allclose(accumulated_history[0][name], whole_history[0][name], rtol=1e-5, atol=1e-7, err_msg=name)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), accumulated_params, whole_params)


@pytest.mark.parametrize("accumulation, mesh, message", [
    (0, {"data": 1}, "train.grad_accum_steps must be >= 1, got 0"),
    (3, {"data": 1}, f"train.batch_size {BATCH} must divide over the mesh's 1 batch shards (mesh.data x mesh.fsdp) "
                     "and into train.grad_accum_steps = 3 micro-batches"),
    (1, {"data": 1, "fsdp": 3, "tensor": 1}, f"train.batch_size {BATCH} must divide over the mesh's 3 batch shards "
                                             "(mesh.data x mesh.fsdp) and into train.grad_accum_steps = 1 micro-batches"),
])
def test_a_batch_the_mesh_or_accumulation_cannot_split_is_one_line(accumulation, mesh, message):
    # 3 micro-batches of a batch of 8 was a reshape traceback inside the compiled step; 8 rows over
    # 3 shards a sharding error naming no config field.
    config = step_config(CASES["mgdt"], mesh, grad_accum_steps=accumulation)
    with pytest.raises(ValueError) as error:
        Trainer(config, sharding.make_mesh(mesh, jax.devices()[:math.prod(mesh.values())]))
    assert str(error.value) == message


def test_loss_falls_when_overfitting_real_frames(request):
    mgdt = CASES["mgdt"]
    mesh = sharding.make_mesh({"data": 2, "fsdp": 4, "tensor": 1})
    trainer = Trainer(step_config(mgdt, {"data": 2, "fsdp": 4, "tensor": 1}), mesh)
    batch = trainer.shard_batch(mgdt.batches(request)[0])
    state = trainer.init(seed=0)
    losses = []
    for _ in range(40):
        state, metrics = trainer.step(state, batch)
        losses.append(float(metrics["loss"]))
    assert int(state.step) == 40
    assert np.isfinite(losses).all()
    assert losses[-1] < 0.5 * losses[0], losses
    assert float(metrics["learning_rate"]) == pytest.approx(1e-3)


def test_mesh_sizes_resolve_and_bad_sizes_are_named():
    assert sharding.mesh_shape({"data": -1, "fsdp": 2, "tensor": 1}, 8) == (4, 2, 1)
    assert sharding.make_mesh({"data": 2, "fsdp": -1, "tensor": 2}).shape == {"data": 2, "fsdp": 2, "tensor": 2}
    with pytest.raises(ValueError, match="does not divide 8 devices"):
        sharding.mesh_shape({"data": 3, "fsdp": -1, "tensor": 1}, 8)
    with pytest.raises(ValueError, match="at most one"):
        sharding.mesh_shape({"data": -1, "fsdp": -1, "tensor": 1}, 8)
    with pytest.raises(ValueError, match="uses 4 of 8"):
        sharding.mesh_shape({"data": 2, "fsdp": 2, "tensor": 1}, 8)
    # Set in a config file, an axis of another framework's name was ignored: a data-parallel run, exit 0.
    with pytest.raises(ValueError, match=r"^mesh.model: no such mesh axis \(the axes are data, fsdp, tensor;"):
        sharding.mesh_shape(ml_collections.ConfigDict({"data": -1, "model": 2}), 8)


def test_global_batch_is_split_over_data_and_fsdp(breakout_windows):
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    batch = sharding.global_batch({name: value[:BATCH] for name, value in breakout_windows.items()}, mesh)
    observations = batch["observations"]
    assert observations.shape == (BATCH, 4, 84, 84, 1)
    assert observations.sharding.spec == PartitionSpec(("data", "fsdp"))
    assert {shard.data.shape[0] for shard in observations.addressable_shards} == {BATCH // 4}
    np.testing.assert_array_equal(np.asarray(observations), breakout_windows["observations"][:BATCH])


def test_config_recipe_names_the_recipe_and_a_wrong_name_is_one_line():
    assert load_recipe({}).name == "mgdt"  # configs written before recipes existed
    assert isinstance(load_recipe({"recipe": "tests.toy_recipe"}), ToyRecipe)
    with pytest.raises(ValueError, match=r"^config.recipe 'nope': no module mgdt_jax.recipes.nope.recipe "
                                         r"\(the built-in recipes: ad, ada, jat, mgdt\)$"):
        load_recipe({"recipe": "nope"})
    with pytest.raises(ValueError, match=r"^config.recipe 'my_recipes.bc': no module my_recipes.bc \(a recipe of your "
                                         r"own must be importable: its folder on PYTHONPATH\)$"):
        load_recipe({"recipe": "my_recipes.bc"})
    with pytest.raises(ValueError, match=r"^config.recipe 'tests.recipe_cases': tests.recipe_cases sets no RECIPE"):
        load_recipe({"recipe": "tests.recipe_cases"})


def test_imports_flow_one_way():
    """Every import, at module level or inside a function, points down the layers of
    docs/architecture.md: core <- envs <- recipes <- data_pipelines <- experiments <- cli <- benchmarks."""
    layers = {"mgdt_jax.core": 0, "mgdt_jax.envs": 1, "mgdt_jax.recipes": 2, "data_pipelines": 3, "experiments": 4,
              "mgdt_jax.cli": 5, "benchmarks": 6}

    def layer(module: str) -> int | None:
        return next((rank for prefix, rank in layers.items() if module == prefix or module.startswith(prefix + ".")),
                    None)

    upward = []
    for path in [*REPOSITORY.glob("mgdt_jax/**/*.py"), *REPOSITORY.glob("data_pipelines/**/*.py"),
                 *REPOSITORY.glob("experiments/**/*.py")]:
        module = ".".join(path.relative_to(REPOSITORY).with_suffix("").parts)
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
            for name in names:
                if (layer(name) or 0) > (layer(module) or 0):
                    upward.append(f"{module} imports {name}")
    assert upward == [], upward


def test_the_core_imports_no_recipe():
    """Importing the trainer, loop and checkpoints imports no agent's model or data (nor Grain, TF)."""
    code = (
        "import sys; import mgdt_jax.core.loop, mgdt_jax.core.checkpointing, mgdt_jax.core.recipe; "
        "print(sorted(name for name in sys.modules if name.startswith("
        "('mgdt_jax.recipes', 'mgdt_jax.envs', 'grain', 'tensorflow'))))"
    )
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.strip() == "[]"
