"""What the core does with a recipe that breaks its contract (mgdt_jax/core/recipe.py): one line
naming the fault, and the steps already taken kept. Trained through the loop with the toy recipe, a
recipe outside mgdt_jax.recipes as a user's own would be."""

from __future__ import annotations

import errno
import itertools
import re
import shutil

import numpy as np
from flax import nnx
import pytest

from mgdt_jax.core import checkpointing, loop, sharding
from mgdt_jax.core.train_step import Trainer
from mgdt_jax.core.recipe import load_recipe
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
        }[self.returns]


@pytest.mark.parametrize("returns, fault", [
    ("a vector loss", "the loss must be a scalar, got shape (3,)"),
    ("the trainer's metric names", "metric names ['grad_norm', 'loss'] are the trainer's own (TRAINER_METRICS)"),
    ("a vector metric", "metric 'accuracy' must be a scalar, got shape (2,)"),
    ("the loss alone", "loss must return (scalar loss, {name: scalar metric}), got an array of shape ()"),
])
def test_a_loss_that_breaks_the_contract_is_one_line_before_any_step(tmp_path, returns, fault):
    # Each was a JAX traceback, or (the trainer's names) the recipe's values silently overwritten.
    config = toy_config()
    recipe = LossOf(config)
    recipe.returns = returns
    with pytest.raises(ValueError) as error:
        loop.train(config, tmp_path / "run", recipe=recipe)
    # The first line: JAX appends a notice to an error raised while it traces (mgdt-train prints the first).
    assert str(error.value).splitlines()[0] == f"recipe 'tests.toy_recipe': {fault}"
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
            raise ValueError("RESOURCE_EXHAUSTED: Error writing \"params\": No space left on device\n  (more lines)")

    monkeypatch.setattr(ocp.CheckpointManager, "save", recording_save)
    monkeypatch.setattr(ocp.CheckpointManager, "wait_until_finished", failing_wait)
    workdir = tmp_path / "run"
    fault = (f"{workdir / 'checkpoints' / '4'}: saving the checkpoint failed (ValueError: RESOURCE_EXHAUSTED: Error "
             "writing \"params\": No space left on device); the last complete checkpoint is step 2")
    with pytest.raises(checkpointing.CheckpointError, match=f"^{re.escape(fault)}$"):
        loop.train(toy_config(checkpoint_every=2), workdir)


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
