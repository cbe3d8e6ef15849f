"""What the core does with a recipe that breaks its contract (mgdt_jax/core/recipe.py): one line
naming the fault, and the steps already taken kept. Trained through the loop with the toy recipe, a
recipe outside mgdt_jax.recipes as a user's own would be."""

from __future__ import annotations

import errno
import itertools
import re
import shutil
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from flax import nnx
import pytest

from mgdt_jax.core import checkpointing, loop, sharding
from mgdt_jax.core.metric_writer import METRICS_FILE, read_metrics
from mgdt_jax.core.train_step import Trainer
from mgdt_jax.core.recipe import load_recipe
from mgdt_jax.recipes.mgdt.recipe import MgdtRecipe
from experiments import tiny
from tests.toy_recipe import ToyRecipe, get_config

NUM_STEPS = 6


def toy_config(**train):
    config = get_config()
    config.model.d_model, config.model.sequence_length = 16, 8
    config.train.update({"batch_size": 8, "num_steps": NUM_STEPS, "log_every": NUM_STEPS, "checkpoint_every": NUM_STEPS,
                         **train})
    return config


def recipe_with_data(config, change):
    """The toy recipe whose stream passes every batch through ``change(step, batch)`` (None ends it)."""

    class Changed(ToyRecipe):
        def training_data(self, **hosts):
            data = super().training_data(**hosts)
            original = data.iterate

            def iterate(start_step):
                for step, batch in zip(itertools.count(start_step + 1), original(start_step)):
                    changed = change(step, batch)
                    if changed is None:
                        return
                    yield changed

            data.iterate = iterate
            return data

    return Changed(config)


@pytest.mark.parametrize("change, fault, kept", [
    (lambda step, batch: batch if step <= 4 else None, "the training data (permutation sequences of 8 tokens over 16) "
     "ended after batch 4 of 6; saved step 4", 4),
    (lambda step, batch: batch if step != 3 else {"tokens": batch["tokens"][:7]}, "step 3: batch key 'tokens' has "
     "shape (7, 8); its leading axis must be this host's 8 rows (train.batch_size 8 over 1 process(es)); saved step 2", 2),
    (lambda step, batch: batch if step != 3 else {"tokens": batch["tokens"][:, :7]}, "step 3: the training data's "
     "'tokens' is int32[8, 7], where earlier batches of this layout were int32[8, 8] (a layout's shapes must not "
     "change); saved step 2", 2),
    (lambda step, batch: batch if step != 2 else {"tokens": np.full((8, 8), "x")}, "step 2: batch key 'tokens' holds "
     "<U1 values, not numbers; saved step 1", 1),
])
def test_a_data_stream_that_breaks_mid_run_stops_in_one_line_and_keeps_the_steps_taken(tmp_path, change, fault, kept):
    # A stream that ended early finished the run as if it had reached num_steps, unsaved, exit 0;
    # a short batch trained silently on fewer rows than counted; a changed shape was a traceback.
    config = toy_config()
    workdir = tmp_path / "run"
    with pytest.raises(loop.DataStreamError, match=f"^{re.escape(fault)}$"):
        loop.train(config, workdir, recipe=recipe_with_data(config, change))
    assert checkpointing.checkpoint_steps(workdir / checkpointing.CHECKPOINTS) == [kept]
    result = loop.train(config, workdir, recipe=ToyRecipe(config))  # the data mended, the run goes on
    assert (result.first_step, result.last_step) == (kept, NUM_STEPS)


def test_a_stream_with_no_batch_is_one_line_and_leaves_no_run_folder(tmp_path):
    config = toy_config()
    with pytest.raises(loop.DataStreamError, match=r"^the training data \(.*\) yielded no batch for step 1$"):
        loop.train(config, tmp_path / "run", recipe=recipe_with_data(config, lambda step, batch: None))
    assert not (tmp_path / "run").exists()


class LossOf(ToyRecipe):
    returns: str

    def loss(self, model, batch, dropout_key):
        loss, metrics = super().loss(model, batch, dropout_key)
        return {
            "a vector loss": (loss * np.ones(3, np.float32), metrics),
            "the trainer's metric names": (loss, {"loss": loss, "grad_norm": loss}),
            "a vector metric": (loss, {"accuracy": metrics["accuracy"] * np.ones(2, np.float32)}),
            "the loss alone": loss,
            "an integer loss": (loss.astype(jnp.int32), metrics),  # was JAX's 42-line "grad requires real-valued"
            "a bfloat16 loss": (loss.astype(jnp.bfloat16), metrics),  # was logged at 3 digits
        }[self.returns]


@pytest.mark.parametrize("returns, fault", [
    ("a vector loss", "the loss must be a scalar, got shape (3,)"),
    ("the trainer's metric names", "metric names ['grad_norm', 'loss'] are the trainer's own (TRAINER_METRICS)"),
    ("a vector metric", "metric 'accuracy' must be a scalar, got shape (2,)"),
    ("the loss alone", "loss must return (scalar loss, {name: scalar metric}), got an array of shape ()"),
    ("an integer loss", "the loss must be float32, got int32 (compute it in float32, or cast it: "
                        "loss.astype(jnp.float32))"),
    ("a bfloat16 loss", "the loss must be float32, got bfloat16"),
])
def test_a_loss_that_breaks_the_contract_is_one_line_before_any_step(tmp_path, returns, fault):
    # Each was a JAX traceback, or (the trainer's names) the recipe's values silently overwritten.
    config = toy_config()
    recipe = LossOf(config)
    recipe.returns = returns
    with pytest.raises(ValueError) as error:
        loop.train(config, tmp_path / "run", recipe=recipe)
    # The first line: JAX appends a notice to an error raised while it traces (mgdt-train prints the first).
    assert str(error.value).splitlines()[0].startswith(f"recipe 'tests.toy_recipe': {fault}")
    assert not (tmp_path / "run").exists()


def test_a_recipe_named_otherwise_than_config_recipe_calls_it_is_refused(tmp_path, monkeypatch):
    # Checkpoints saved the class's name and run configs config.recipe, so the readers of one run
    # needed two strings, and another module with the same name resumed a run silently.
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "recipe.py").write_text("from tests.toy_recipe import ToyRecipe\n\n"
                                           "class Mine(ToyRecipe):\n    name = 'mine'\n\nRECIPE = Mine\n")
    (tmp_path / "mine" / "unnamed.py").write_text("from mgdt_jax.core.recipe import Recipe\n\n"
                                                "class Unnamed(Recipe):\n    pass\n\nRECIPE = Unnamed\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ValueError, match=r"^config.recipe 'mine.recipe': mine.recipe's RECIPE, Mine, is named 'mine'; a "
                                         r"recipe's name must be what config.recipe calls it \(outside "
                                         r"mgdt_jax.recipes: its module path\)$"):
        load_recipe({"recipe": "mine.recipe"})
    with pytest.raises(ValueError, match=r"RECIPE, Unnamed, is named None"):
        load_recipe({"recipe": "mine.unnamed"})


def test_a_parameter_the_mesh_cannot_split_or_a_misspelt_axis_name_is_one_line():
    # d_model 36 over fsdp 8 was a JAX sharding error naming neither the parameter nor config.mesh;
    # a misspelt logical name replicated its axis silently (FSDP off for that parameter).
    config = toy_config()
    config.model.d_model, config.mesh.data, config.mesh.fsdp = 36, 1, 8
    with pytest.raises(ValueError, match=r"^parameter .*: its 'embed' axis of size 36 does not divide over the mesh's "
                                         r"fsdp 8 \(config.mesh\); change the model's size or the mesh$"):
        Trainer(config, sharding.make_mesh(config.mesh))
    with pytest.raises(ValueError, match=r"^logical axis name 'emebd' is not one of batch, embed, "):
        sharding.logical_to_spec(("emebd", "mlp"))


@pytest.mark.parametrize("field, value, fault", [
    ("dropout_rate", 1.5, "dropout_rate must be in [0, 1), got 1.5"),
    ("num_layers", 0, "num_layers must be at least 1, got 0"),
    ("mlp_ratio", 0, "mlp_ratio must be at least 1, got 0"),
    ("num_heads", 3, "d_model 16 is not a multiple of num_heads 3"),
])
def test_the_core_decoder_refuses_sizes_no_model_can_have(field, value, fault):
    # A recipe of one's own on the core's decoder trained on garbage with dropout 1.5 (exit 0), and
    # divided by zero with 0 layers.
    config = toy_config()
    config.model[field] = value
    with pytest.raises(ValueError, match=f"^{re.escape(fault)}$"):
        ToyRecipe(config).model(nnx.Rngs(0))


def test_the_loop_trains_a_config_given_as_a_dict_of_dicts(tmp_path):
    # Recipe configs may be dicts (recipe.py); the loop read attributes of it and failed.
    config = toy_config().to_dict()
    assert loop.train(config, tmp_path / "run").last_step == NUM_STEPS
    assert (tmp_path / "run" / loop.CONFIG_FILE).is_file()


def test_resuming_with_a_changed_config_names_the_changes(tmp_path, capsys):
    # A new train.seed was silently ignored (config.json said otherwise), a new num_steps silently
    # reshaped the learning-rate schedule mid-run.
    workdir = tmp_path / "run"
    loop.train(toy_config(), workdir)
    config = toy_config(seed=5, eval_every=2)
    config.train.num_steps = NUM_STEPS + 2
    capsys.readouterr()
    assert loop.train(config, workdir).last_step == NUM_STEPS + 2
    out = capsys.readouterr().out
    assert (f"warning: the config differs from the run's config.json (train.eval_every 0 -> 2, train.num_steps "
            f"{NUM_STEPS} -> {NUM_STEPS + 2}, train.seed 0 -> 5); a changed train.seed has no effect (the checkpoint's "
            "RNG goes on); a changed num_steps or optimizer reshapes the learning-rate schedule from here") in out
    assert "warning: config.train.eval_every is 2, but recipe tests.toy_recipe has no evaluator" in out
    loop.train(config, workdir)
    assert "the config differs" not in capsys.readouterr().out
    # Its config.json damaged or removed, a resume compared nothing and said nothing.
    for damage, fault in ((lambda path: path.write_text("{bad"), "is unreadable (Expecting property name"),
                          (lambda path: path.unlink(), "is missing")):
        damage(workdir / loop.CONFIG_FILE)
        config.train.num_steps += 1
        loop.train(config, workdir)
        assert (f"warning: {workdir / loop.CONFIG_FILE} {fault}") in capsys.readouterr().out


def test_a_new_run_in_a_folder_of_something_else_is_warned_about(tmp_path, capsys):
    # mgdt-train pointed at another tool's output folder trained into it without a word.
    workdir = tmp_path / "experiment_out"
    workdir.mkdir()
    (workdir / "settings.json").write_text("{}")
    loop.train(toy_config(), workdir)
    assert (f"warning: {workdir} already holds settings.json, which no run writes: a new run starts in a folder of "
            "something else; its files go beside them") in capsys.readouterr().out
    loop.train(toy_config(num_steps=NUM_STEPS + 1), workdir)  # resumed: its own folder by now
    loop.train(toy_config(), tmp_path / "new")
    assert "which no run writes" not in capsys.readouterr().out


def test_an_experiment_refuses_to_resume_a_run_trained_with_another_config(tmp_path):
    # mgdt_expert_inference --train-steps 50 in a folder trained for 100 steps evaluated the 100-step
    # model and reported it as trained for 50.
    from experiments import common

    workdir = tmp_path / "run"
    common.train_to_end(toy_config(), workdir)
    assert common.train_to_end(toy_config(), workdir).last_step == NUM_STEPS  # the same config: resumed, done
    with pytest.raises(SystemExit) as stopped:
        common.train_to_end(toy_config(num_steps=NUM_STEPS - 2), workdir)
    assert str(stopped.value) == (f"{workdir}: trained before with another config (train.num_steps {NUM_STEPS} -> "
                                  f"{NUM_STEPS - 2}); use another --out or --workdir")


def test_a_checkpoint_save_that_fails_in_the_background_is_one_line_naming_the_intact_step(tmp_path, monkeypatch):
    # A full disk during an asynchronous save surfaced as Orbax's multi-line status, naming neither
    # the step nor the checkpoint left intact.
    import orbax.checkpoint as ocp

    saves, save, wait = [], ocp.CheckpointManager.save, ocp.CheckpointManager.wait_until_finished

    def recording_save(self, step, *args, **kwargs):
        started = save(self, step, *args, **kwargs)  # which waits for the save before it
        saves.append(step)
        return started

    def failing_wait(self):
        wait(self)
        if saves and saves[-1] == 4:  # step 4's write "failed": no step folder, a status error
            saves.append(None)
            shutil.rmtree(self.directory / "4")
            raise ValueError("RESOURCE_EXHAUSTED: Error writing \"params.w/0\" in OCDBT database at local file "
                             "\"/c/4.orbax-checkpoint-tmp/\": Failed writing: \"/c/d/c846\": Failed to write 1383687 "
                             "bytes to file 11: No space left on device [os_error_code='28'] "
                             "[tensorstore_spec='{\"context\":{\"cache_pool\":{}}}']\n  (more lines)")

    monkeypatch.setattr(ocp.CheckpointManager, "save", recording_save)
    monkeypatch.setattr(ocp.CheckpointManager, "wait_until_finished", failing_wait)
    monkeypatch.setattr(ocp.CheckpointManager, "is_saving_in_progress", lambda self: False)  # step 4's save ended
    workdir = tmp_path / "run"
    fault = (f"{workdir / 'checkpoints' / '4'}: saving the checkpoint failed (ValueError: RESOURCE_EXHAUSTED: No space "
             "left on device (errno 28)); the last complete checkpoint is step 2")
    with pytest.raises(checkpointing.CheckpointError, match=f"^{re.escape(fault)}$"):
        loop.train(toy_config(checkpoint_every=2, log_every=1), workdir)
    # Found after the next step, not at the next save (step 6): up to checkpoint_every steps later.
    assert read_metrics(workdir)[-1]["step"] == 4


def test_metrics_that_cannot_be_written_name_the_workdir(tmp_path, monkeypatch):
    # A full disk said "[Errno 28] No space left on device" and named no file (the error of a flush).
    from mgdt_jax.core import metric_writer

    def full(self, *args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(metric_writer._EventFile, "scalars", full)
    monkeypatch.setattr(metric_writer._EventFile, "close", full)
    workdir = tmp_path / "run"
    with pytest.raises(OSError, match=f"^{re.escape(str(workdir))}: cannot write the run's metrics \\(No space left on device\\)$"):
        loop.train(toy_config(), workdir)


def test_a_preemption_notice_during_the_last_step_leaves_a_finished_run(tmp_path, monkeypatch):
    # The run was saved at num_steps, yet reported "preempted" and mgdt-train exited 143.
    def noticed_at_the_last_step(self, step):
        self.reason = "preempted"
        return step == NUM_STEPS

    monkeypatch.setattr(loop._Preemption, "reached", noticed_at_the_last_step)
    result = loop.train(toy_config(), tmp_path / "run")
    assert (result.last_step, result.stopped_by, result.last_checkpoint) == (NUM_STEPS, "", NUM_STEPS)


class ModelOf(ToyRecipe):
    """The toy recipe with another model, one of Flax's idioms the trainer cannot take."""

    builds: str

    def model(self, rngs):
        model = super().model(rngs)
        if self.builds == "dropout with rngs":
            model.dropout = nnx.Dropout(0.1, rngs=rngs)  # RNG state in the model
        elif self.builds == "attention with dropout":  # asks rngs.dropout(): an AttributeError, not a KeyError
            model.attention = nnx.MultiHeadAttention(2, 16, dropout_rate=0.1, decode=False, rngs=rngs)
        elif self.builds == "eager sharding":
            model.extra = nnx.Linear(16, 16, rngs=rngs, kernel_init=nnx.with_partitioning(
                nnx.initializers.lecun_normal(), (None, "embed")))
        elif self.builds == "three names on a matrix":
            model.extra = nnx.Linear(16, 16, rngs=rngs, kernel_init=nnx.with_partitioning(
                nnx.initializers.lecun_normal(), (None, "embed", "mlp"), eager_sharding=False))
        elif self.builds == "no names":
            model = nnx.Linear(16, 16, rngs=rngs)
        return model


@pytest.mark.parametrize("builds, fault", [
    ("dropout with rngs", "recipe tests.toy_recipe: its model asks for an RNG stream other than params when built "
                          "(No RngStream named 'dropout' found in Rngs.): keep no RNG in the model"),
    ("attention with dropout", "recipe tests.toy_recipe: its model asks for an RNG stream other than params when "
                               "built ("),
    ("eager sharding", "recipe tests.toy_recipe: a parameter's axis names are given with eager sharding "
                       "(nnx.with_partitioning's default, which needs a mesh as it is made): name them with "
                       "mgdt_jax.core.transformer.sharded(initializer, axes)"),
    ("three names on a matrix", "parameter extra/kernel: 3 axis names (None, 'embed', 'mlp') for an array of shape "
                                "(16, 16); give one name (or None) per axis"),
])
def test_a_model_built_with_flax_idioms_the_trainer_cannot_take_is_one_line(builds, fault):
    # Each was a Flax or JAX traceback (63 lines for the dropout) naming neither the fix nor the parameter.
    config = toy_config()
    recipe = ModelOf(config)
    recipe.builds = builds
    with pytest.raises(ValueError) as error:
        Trainer(config, sharding.make_mesh(config.mesh), recipe)
    assert str(error.value).startswith(fault) and "\n" not in str(error.value)


def test_a_model_that_names_no_axis_under_fsdp_is_warned_about(tmp_path, capsys):
    config = toy_config()
    config.mesh.data, config.mesh.fsdp = 1, 8
    recipe = ModelOf(config)
    recipe.builds = "no names"
    assert Trainer(config, sharding.make_mesh(config.mesh), recipe).parameter_axes == frozenset()
    assert Trainer(config, sharding.make_mesh(config.mesh)).parameter_axes == {"fsdp"}  # "embed"; no "mlp" or "heads"
    with pytest.raises(TypeError):  # the toy loss does not fit this model: the warning came before the step
        loop.train(config, tmp_path / "run", recipe=recipe)
    assert "warning: mesh {'fsdp': 8} splits no parameter" in capsys.readouterr().out
    config.mesh.fsdp, config.mesh.tensor = 4, 2  # the toy model names "mlp" and "heads": tensor splits them
    assert Trainer(config, sharding.make_mesh(config.mesh)).parameter_axes == {"fsdp", "tensor"}


@pytest.mark.parametrize("source, fault", [
    ("import not_installed_package\n", "mine/broken.py, line 1: ModuleNotFoundError: No module named "
                                        "'not_installed_package' (a package it needs is not installed)"),
    ("def f(:\n", "mine/broken.py, line 1: SyntaxError: invalid syntax"),
    ("x = undefined_name\n", "mine/broken.py, line 1: NameError: name 'undefined_name' is not defined"),
    # A recipe that leaves abstract methods undefined was Python's TypeError traceback.
    ("from mgdt_jax.core.recipe import Recipe\n\nclass Broken(Recipe):\n    name = 'mine.broken'\n\nRECIPE = Broken\n",
     "Broken does not define loss, model, step_cost, training_data (abstract in Recipe"),
])
def test_a_recipe_module_that_fails_to_load_is_one_line_naming_its_line(tmp_path, monkeypatch, source, fault):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "broken.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ValueError) as error:
        load_recipe({"recipe": "mine.broken"})
    assert str(error.value).startswith("config.recipe 'mine.broken': ")
    assert fault in str(error.value) and "\n" not in str(error.value)


def test_the_train_section_needs_no_field_and_a_misspelt_field_of_any_section_is_warned_about(tmp_path, capsys):
    # Without log_every or eval_every a step ran, then a KeyError traceback; without keep_checkpoints,
    # seed, init_from, checkpoint_every or the mesh, an AttributeError traceback.
    config = toy_config()
    del config.mesh
    config.train = {"batch_size": 8, "num_steps": 3}
    result = loop.train(config, tmp_path / "run", recipe=ToyRecipe(config))
    assert (result.last_step, result.last_checkpoint) == (3, 3)
    assert "warning" not in capsys.readouterr().out
    config.train = {"batch_size": 8, "num_steps": 3, "chekpoint_every": 1, "checkpoint_dir": "/c"}
    loop.train(config, tmp_path / "typo", recipe=ToyRecipe(config))
    warnings = [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning")]
    assert warnings == ["warning: config.train.chekpoint_every is no field the core or the recipe reads; did you mean "
                        "checkpoint_every? (that one is not set: its default is used)"]  # checkpoint_dir: the recipe's?
    # An experiment config sets every field: a misspelt one beside it, and one of the optimizer, were silent.
    config = toy_config(chekpoint_every=5)
    config.optimizer.shedule = "cosine"
    assert loop.near_misses(config) == [
        "warning: config.train.chekpoint_every is no field the core or the recipe reads; did you mean checkpoint_every? (that one "
        "is 6)", "warning: config.optimizer.shedule is no field the core or the recipe reads; did you mean schedule? (that one is "
        "not set: its default is used)"]
    # The recipe's sections likewise, through the fields it declares (an MGDT model.num_layer trained the default depth)
    config = toy_config()
    config.model.d_modle = 32
    config.model.sequence_lenght = 8
    assert loop.near_misses(config, {"model": ("d_model", "sequence_length")}) == [
        "warning: config.model.d_modle is no field the core or the recipe reads; did you mean d_model? (that one is 16)",
        "warning: config.model.sequence_lenght is no field the core or the recipe reads; did you mean sequence_length? "
        "(that one is 8)"]
    assert loop.near_misses(config) == []  # a recipe declaring none is not checked
    mgdt = tiny.get_config()
    mgdt.model.num_layer = 2
    mgdt.data.game_weight = "Pong=2"
    assert [line.split(";")[0] for line in loop.near_misses(mgdt, MgdtRecipe(mgdt).config_fields())] == [
        "warning: config.model.num_layer is no field the core or the recipe reads",
        "warning: config.data.game_weight is no field the core or the recipe reads"]
    # Two letters swapped in a short name (difflib rated them far apart), a section's own name, and a
    # close field whose value is a ConfigDict (its repr spans lines).
    mgdt = tiny.get_config()
    mgdt.optimizer.esp = 1e-6
    mgdt.model.dtpye = "bfloat16"
    mgdt.data.game_weights = {}
    mgdt.data.game_weight = "Pong=2"
    mgdt.optimzer = {"learning_rate": 1.0}
    assert loop.near_misses(mgdt, MgdtRecipe(mgdt).config_fields()) == [
        "warning: config.optimzer is no section the core or the recipe reads; did you mean optimizer?",
        "warning: config.optimizer.esp is no field the core or the recipe reads; did you mean eps? (that one is 1e-06)",
        "warning: config.model.dtpye is no field the core or the recipe reads; did you mean dtype? (that one is "
        "'float32')",
        "warning: config.data.game_weight is no field the core or the recipe reads; did you mean game_weights? (that "
        "one is {})"]
    config = toy_config(chekpoint_every=5)
    config.optimizer.schedule = "cosine"  # toy_config warms up 4 steps, and trains 6
    config.optimizer.warmup_steps = 6
    assert loop.near_misses(config)[-1] == ("warning: config.optimizer.warmup_steps 6 >= train.num_steps 6: the "
                                            "cosine schedule never decays, the run ends still warming up")


@pytest.mark.parametrize("num_steps", [4, 2])
def test_a_run_stopped_at_an_evaluation_step_evaluates_it_when_resumed(tmp_path, monkeypatch, capsys, num_steps):
    # The stop saved and broke before the step's evaluation, which then never ran; at the last step
    # the run also read as finished (exit 0, and a rerun had "nothing to do").
    config = toy_config(num_steps=num_steps, eval_every=2, checkpoint_every=2)
    evaluated = []

    def evaluate(model, step: int) -> dict[str, float]:
        evaluated.append(step)
        return {"step_seen": float(step), "undefined": float("nan")}

    with monkeypatch.context() as patched:
        patched.setattr(loop._Preemption, "reached", lambda self, step: step == 2)
        result = loop.train(config, tmp_path / "run", evaluate=evaluate)
    assert (result.last_step, result.stopped_by, evaluated) == (2, "preempted", [])
    assert "preempted: saved step 2, stopping (its evaluation runs when the run is resumed)" in capsys.readouterr().out
    result = loop.train(config, tmp_path / "run", evaluate=evaluate)
    assert (result.last_step, result.stopped_by, evaluated) == (num_steps, "", [2, 4][:num_steps // 2])
    assert "evaluating step 2: the run was stopped there before its evaluation" in capsys.readouterr().out
    entries = read_metrics(tmp_path / "run")
    assert [entry["step"] for entry in entries if "eval/step_seen" in entry] == evaluated
    # NaN is written as null (strict JSON) and read back as NaN.
    assert '"eval/undefined": null' in (tmp_path / "run" / METRICS_FILE).read_text()
    assert all(np.isnan(entry["eval/undefined"]) for entry in entries if "eval/undefined" in entry)
    assert loop.train(config, tmp_path / "run", evaluate=evaluate).first_step == num_steps
    assert evaluated == [2, 4][:num_steps // 2]  # evaluated once


def test_an_evaluation_that_is_no_scalar_is_one_line(tmp_path):
    config = toy_config(num_steps=1, eval_every=1)
    with pytest.raises(ValueError, match=r"^eval/returns at step 1: not one number \(ndarray of shape \(4,\)\)"):
        loop.train(config, tmp_path / "run", evaluate=lambda model, step: {"returns": np.zeros(4)})


def test_a_resumed_run_removes_the_temporary_folder_of_a_save_cut_short(tmp_path):
    # A second Ctrl-C during a save left checkpoints/N.orbax-checkpoint-tmp for good.
    config = toy_config(num_steps=2, checkpoint_every=2)
    loop.train(config, tmp_path / "run", recipe=ToyRecipe(config))
    cut_short = tmp_path / "run" / checkpointing.CHECKPOINTS / "3.orbax-checkpoint-tmp"  # a preemption save
    cut_short.mkdir()
    (cut_short / "params").mkdir()
    config = toy_config(num_steps=4, checkpoint_every=2)
    assert loop.train(config, tmp_path / "run", recipe=ToyRecipe(config)).last_checkpoint == 4
    assert sorted(path.name for path in (tmp_path / "run" / checkpointing.CHECKPOINTS).iterdir()) == ["2", "4"]


def test_a_sigterm_during_start_up_ends_mgdt_train_in_one_line_leaving_no_run_folder(tmp_path):
    # Python's default action ended it silently (143) and left the new folder with a stale claim.
    import os
    import signal
    import subprocess
    import sys
    import time

    marker = tmp_path / "reading"
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "slow.py").write_text(
        "import pathlib, time\nfrom tests.toy_recipe import ToyRecipe, get_config as toy_config\n\n"
        "class Slow(ToyRecipe):\n    name = 'mine.slow'\n\n    def training_data(self, **hosts):\n"
        f"        pathlib.Path({str(marker)!r}).touch()\n        time.sleep(60)\n\nRECIPE = Slow\n\n"
        "def get_config():\n    config = toy_config()\n    config.recipe = 'mine.slow'\n    return config\n")
    repository = Path(__file__).resolve().parents[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "mgdt_jax.cli.train", "--config", str(tmp_path / "mine" / "slow.py"),
         "--workdir", str(tmp_path / "run")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(repository)])})
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM
    assert stderr.strip().splitlines()[-1] == "mgdt-train: terminated (SIGTERM) before the first step; nothing was saved"
    assert "Traceback" not in stderr and not (tmp_path / "run").exists()


def test_resuming_on_other_data_warns_and_a_key_the_checkpoint_lacks_is_no_change(tmp_path, capsys):
    class Content(ToyRecipe):
        """The toy recipe whose data identity gained a key (the MGDT's per-game content did)."""

        def training_data(self, **hosts):
            data = super().training_data(**hosts)
            identity = data.identity()
            data.identity = lambda: {**identity, "games": {"toy": [8, 64]}}
            return data

    config = toy_config(num_steps=2, checkpoint_every=2)
    loop.train(config, tmp_path / "run", recipe=ToyRecipe(config))
    config = toy_config(num_steps=4, checkpoint_every=2)
    loop.train(config, tmp_path / "run", recipe=Content(config))  # saved before "games" existed
    assert "data stream differs" not in capsys.readouterr().out
    config = toy_config(num_steps=6, checkpoint_every=2)
    config.data.seed = 1
    loop.train(config, tmp_path / "run", recipe=Content(config))
    assert ("warning: the data stream differs from the checkpoint's (saved -> now: seed 0 -> 1); the resumed run "
            "will not see the batches an uninterrupted run would have") in capsys.readouterr().out


def test_a_run_killed_after_logging_past_its_checkpoint_shows_each_step_once_in_tensorboard(tmp_path):
    # Resumed, it logs again the steps after its checkpoint: TensorBoard showed both runs' points.
    from tensorboard.backend.event_processing import event_accumulator

    config = toy_config(num_steps=4, checkpoint_every=2, log_every=1)
    loop.train(config, tmp_path / "run", recipe=ToyRecipe(config))
    shutil.rmtree(tmp_path / "run" / checkpointing.CHECKPOINTS / "4")  # killed after logging step 4, before saving it
    time.sleep(1.1)  # event files are named by the second
    assert loop.train(config, tmp_path / "run", recipe=ToyRecipe(config)).first_step == 2
    events = event_accumulator.EventAccumulator(str(tmp_path / "run" / "tensorboard")).Reload()
    assert [event.step for event in events.Scalars("train/loss")] == [1, 2, 3, 4]
    assert len(list((tmp_path / "run" / "tensorboard").iterdir())) == 2


def test_profile_steps_traces_steps_after_the_compiling_one_for_tensorboard_and_perfetto(tmp_path, capsys):
    import gzip
    import json

    config = toy_config(num_steps=5, profile_steps=2)
    loop.train(config, tmp_path / "run", recipe=ToyRecipe(config))
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("profiled")]
    traces = list((tmp_path / "run" / "profile" / "plugins" / "profile").iterdir())
    assert lines == [f"profiled steps 2..3: {traces[0]} (`tensorboard --logdir {tmp_path / 'run' / 'profile'}`, Profile "
                     "tab; or the .trace.json.gz in Perfetto)"]
    assert any(path.name.endswith(".xplane.pb") for path in traces[0].iterdir())
    events = json.loads(gzip.decompress(next(traces[0].glob("*.trace.json.gz")).read_bytes()))["traceEvents"]
    assert any("_train_step" in str(event.get("name", "")) for event in events)  # the step's own calls
    # Profiling (or logging) another way is no change of what the run trains: neither warned nor refused.
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    traced_again = {**saved, "train": {**saved["train"], "profile_steps": 4, "log_every": 1}}
    assert loop.config_changes(tmp_path / "run" / "config.json", traced_again) == []
    # More steps than the run has left: traced to its end.
    config = toy_config(num_steps=3, profile_steps=10)
    loop.train(config, tmp_path / "short", recipe=ToyRecipe(config))
    assert "profiled steps 2..3: " in capsys.readouterr().out
    config = toy_config(num_steps=4, profile_steps=10)  # resumed at step 3: its one step compiles, none is traced
    loop.train(config, tmp_path / "short", recipe=ToyRecipe(config))
    assert ("warning: config.train.profile_steps: nothing traced: the run ended or stopped before step 5, the first "
            "after its compiling one") in capsys.readouterr().out
    with pytest.raises(ValueError, match=r"^config.train.profile_steps must be an integer >= 0, got -1$"):
        loop.train(toy_config(profile_steps=-1), tmp_path / "bad", recipe=ToyRecipe(toy_config()))

def test_a_trace_that_cannot_be_written_leaves_the_run_and_its_last_save_alone(tmp_path, capsys, monkeypatch):
    # stop_trace raising in the loop's finally skipped the checkpointer's close: the last save was lost.
    import jax

    stop_trace = jax.profiler.stop_trace

    def full_disk() -> None:
        stop_trace()  # the profiler's session ends (a later trace in this process can start), then its write fails
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(jax.profiler, "stop_trace", full_disk)
    config = toy_config(num_steps=3, profile_steps=10, checkpoint_every=3)
    result = loop.train(config, tmp_path / "run", recipe=ToyRecipe(config))
    assert (result.last_step, result.last_checkpoint) == (3, 3)
    assert ("warning: config.train.profile_steps: the trace of steps 2..3 could not be written ([Errno 28] No space "
            "left on device)") in capsys.readouterr().out


def test_a_start_with_nothing_to_do_leaves_the_runs_config(tmp_path):
    # It rewrote config.json with settings that never trained (what mgdt-eval and the resume warning read).
    config = toy_config(num_steps=2, checkpoint_every=2)
    loop.train(config, tmp_path / "run", recipe=ToyRecipe(config))
    written = (tmp_path / "run" / loop.CONFIG_FILE).read_text()
    config = toy_config(num_steps=1)
    config.optimizer.learning_rate = 5.0
    assert loop.train(config, tmp_path / "run", recipe=ToyRecipe(config)).last_step == 2
    assert (tmp_path / "run" / loop.CONFIG_FILE).read_text() == written


def test_the_mgdt_evaluations_episode_count_is_checked_at_the_start():
    # eval_episodes 0 was refused at the first evaluation, eval_every steps in, as "episodes_per_game".
    from experiments import tiny
    from mgdt_jax.recipes.mgdt.recipe import MgdtRecipe

    config = tiny.get_config()
    config.train.eval_every, config.train.eval_games, config.train.eval_episodes = 2, ("Pong",), 0
    with pytest.raises(ValueError, match=r"^config.train.eval_episodes must be an integer >= 1, got 0$"):
        MgdtRecipe(config).evaluator(Path("run"))
