"""AdA as a recipe: memory agents meta-trained online by PPO on multi-trial tasks.

Each train step (mgdt_jax/core/train_step.py, online path) rolls ``train.batch_size`` environments
forward ``ppo.rollout_length`` steps with the current parameters (one ``lax.scan`` over vmapped
environments, inside the jitted step), computes GAE and then takes PPO's optimizer steps over the
segment. Meta-episodes span segments: environment states, the agent's memory, the previous action
and reward and per-trial return sums stay in the ``RolloutState`` (checkpointed), and a finished
meta-episode is replaced in place by a new task from the task source (``config.env.factory``).

Config sections: ``env`` (its ``factory`` and the environment's fields), ``model`` (``AgentConfig``),
``ppo`` (``PPOConfig``), ``kickstart`` (``KickstartConfig``), and the core's ``optimizer``, ``mesh``
and ``train`` (``train.batch_size`` = environments).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from mgdt_jax.core.config_sections import field_names, read_section, section
from mgdt_jax.core.recipe import OnlineRecipe, RolloutState, StepCost
from mgdt_jax.recipes.ada import env as ada_env
from mgdt_jax.recipes.ada import ppo
from mgdt_jax.recipes.ada.agents import GRID_CHANNELS, AgentConfig, EnvShapes, grid_channels, make_agent



def env_shapes(env: ada_env.MetaEnvironment, tasks: ada_env.TaskSource, observation: str) -> EnvShapes:
    """An agent's view of ``env``: actions, observation ids or grid shape, extras width (from the first
    step of a task ``tasks`` draws, traced only)."""

    def first_step(key: jax.Array) -> ada_env.TimeStep:
        _, task_params = tasks.sample(tasks.init(key), key)
        return env.reset(key, task_params)[1]

    timestep = jax.eval_shape(first_step, jax.random.key(0))
    extras = sum(int(leaf.shape[-1]) for leaf in jax.tree.leaves(timestep.extras))
    if observation == "grid":
        return EnvShapes(num_actions=env.num_actions, extras_size=extras, grid_shape=tuple(timestep.observation.shape))
    if not hasattr(env, "num_observations"):
        raise ValueError(f"{type(env).__name__}: model.observation 'discrete' needs an environment with num_observations")
    return EnvShapes(num_actions=env.num_actions, num_observations=int(env.num_observations), extras_size=extras)


def agent_inputs(timestep: ada_env.TimeStep, previous_action: jax.Array, previous_reward: jax.Array, reset: jax.Array) -> dict[str, Any]:
    """The agent's inputs of one step (see mgdt_jax/recipes/ada/agents.py), extras concatenated by name."""
    extras = [timestep.extras[name] for name in sorted(timestep.extras)]
    return {
        "observation": timestep.observation,
        "previous_action": previous_action,
        "previous_reward": previous_reward,
        "extras": jnp.concatenate(extras, axis=-1) if extras else jnp.zeros((*previous_reward.shape, 0)),
        "reset": reset,
    }


class AdaRecipe(OnlineRecipe):
    name = "ada"

    def __init__(self, config: Any):
        super().__init__(config)
        self.agent_config = read_section(AgentConfig, section(config, "model", {}))
        self.ppo_config = read_section(ppo.PPOConfig, section(config, "ppo", {}))
        self.ppo_config.check()
        self.kickstart_config = read_section(ppo.KickstartConfig, section(config, "kickstart", {}))
        self.objective = ppo.objective(self.ppo_config.objective)
        self.env, self.tasks = ada_env.make(section(config, "env", {}))
        self.shapes = env_shapes(self.env, self.tasks, self.agent_config.observation)
        self.num_envs = int(section(section(config, "train", {}), "batch_size", 32))
        self.teacher = _load_teacher(self.kickstart_config.teacher, self.env, self.tasks) if self.kickstart_config.teacher else None

    # --- The model and the loss -------------------------------------------------------------------
    def model(self, rngs: nnx.Rngs) -> nnx.Module:
        return make_agent(self.agent_config, self.shapes, rngs)

    def loss(self, model: nnx.Module, batch: Mapping[str, Any], dropout_key: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
        deterministic = self.agent_config.dropout_rate == 0.0
        logits, values = model.sequence(batch["inputs"], batch["memory"], deterministic=deterministic,
                                        dropout_key=None if deterministic else dropout_key)
        config = self.ppo_config
        if "entropy_coef" in batch:  # annealed: the step's weight comes with its rollout
            config = dataclasses.replace(config, entropy_coef=batch["entropy_coef"].mean())
        loss, metrics = self.objective(logits, values, batch, config)
        if self.teacher is not None:
            kl = ppo.distillation_kl(batch["teacher_logits"], logits).mean()
            weight = batch["kickstart_weight"].mean()
            loss = loss + weight * kl
            metrics = {**metrics, "kickstart_kl": kl, "kickstart_weight": weight}
        return loss, metrics

    @property
    def num_epochs(self) -> int:
        return self.ppo_config.num_epochs

    @property
    def num_minibatches(self) -> int:
        return self.ppo_config.num_minibatches

    # --- The rollout ----------------------------------------------------------------------------------
    def init_rollout(self, key: jax.Array) -> RolloutState:
        tasks_key, sample_key, reset_key = jax.random.split(key, 3)
        task_state = self.tasks.init(tasks_key)
        task_id, env_state, timestep = self._new_episodes(task_state, sample_key, reset_key)
        agent = nnx.eval_shape(lambda: self.model(nnx.Rngs(0)))
        per_env = {
            "env_state": env_state,
            "timestep": timestep,
            "task_id": task_id,
            "memory": agent.initial_memory(self.num_envs),
            "previous_action": jnp.full((self.num_envs,), self.env.num_actions, jnp.int32),
            "previous_reward": jnp.zeros((self.num_envs,), jnp.float32),
            "reset": jnp.ones((self.num_envs,), bool),
            "trial_returns": jnp.zeros((self.num_envs, self.env.num_trials), jnp.float32),
        }
        if self.teacher is not None:
            per_env["teacher_memory"] = self.teacher.initial_memory(self.num_envs)
        return RolloutState(per_env=per_env, shared={"tasks": task_state})

    def _new_episodes(self, task_state: Any, sample_key: jax.Array, reset_key: jax.Array):
        task_id, params = jax.vmap(self.tasks.sample, in_axes=(None, 0))(task_state, jax.random.split(sample_key, self.num_envs))
        env_state, timestep = jax.vmap(self.env.reset)(jax.random.split(reset_key, self.num_envs), params)
        return task_id, env_state, timestep

    def rollout(self, model: nnx.Module, rollout_state: RolloutState, key: jax.Array, step: jax.Array):
        length, teacher = self.ppo_config.rollout_length, self.teacher
        per_env, task_state = rollout_state.per_env, rollout_state.shared["tasks"]
        select = lambda done, new, old: jax.tree.map(  # noqa: E731
            lambda n, o: jnp.where(done.reshape(done.shape + (1,) * (n.ndim - 1)), n, o), new, old
        )

        def one_step(carry, inputs):
            t, step_key = inputs
            action_key, sample_key, reset_key = jax.random.split(step_key, 3)
            agent_inputs_t = agent_inputs(carry["timestep"], carry["previous_action"], carry["previous_reward"], carry["reset"])
            logits, value, cache = model.act(agent_inputs_t, carry["cache"], t)
            action = jax.random.categorical(action_key, logits).astype(jnp.int32)
            log_prob = jnp.take_along_axis(jax.nn.log_softmax(logits), action[:, None], axis=1)[:, 0]
            env_state, timestep = jax.vmap(self.env.step)(carry["env_state"], action)
            done = timestep.done
            trial_returns = carry["trial_returns"] + jax.nn.one_hot(timestep.trial, self.env.num_trials) * timestep.reward[:, None]
            record = {
                "inputs": agent_inputs_t, "action": action, "log_prob": log_prob, "value": value,
                "reward": timestep.reward, "done": done, "trial": timestep.trial, "task_id": carry["task_id"],
                "finished_returns": jnp.where(done[:, None], trial_returns, 0.0),
            }
            new_carry = dict(carry, cache=cache)
            if teacher is not None:
                teacher_logits, _, new_carry["teacher_cache"] = teacher.act(agent_inputs_t, carry["teacher_cache"], t)
                record["teacher_logits"] = teacher_logits
            new_task, new_env_state, new_timestep = self._new_episodes(task_state, sample_key, reset_key)
            new_carry.update(
                env_state=select(done, new_env_state, env_state),
                timestep=select(done, new_timestep, timestep),
                task_id=jnp.where(done, new_task, carry["task_id"]),
                previous_action=jnp.where(done, self.env.num_actions, action),
                previous_reward=jnp.where(done, 0.0, timestep.reward),
                reset=done,
                trial_returns=jnp.where(done[:, None], 0.0, trial_returns),
            )
            return new_carry, record

        carry = {name: per_env[name] for name in ("env_state", "timestep", "task_id", "previous_action", "previous_reward", "reset", "trial_returns")}
        carry["cache"] = model.begin_segment(per_env["memory"], length)
        if teacher is not None:
            carry["teacher_cache"] = teacher.begin_segment(per_env["teacher_memory"], length)
        steps = (jnp.arange(length, dtype=jnp.int32), jax.random.split(key, length))
        carry, records = jax.lax.scan(one_step, carry, steps)
        records = jax.tree.map(lambda leaf: jnp.swapaxes(leaf, 0, 1), records)  # [T, E, ...] -> [E, T, ...]

        memory = model.end_segment(carry["cache"])
        next_inputs = agent_inputs(carry["timestep"], carry["previous_action"], carry["previous_reward"], carry["reset"])
        _, bootstrap, _ = model.act(next_inputs, model.begin_segment(memory, length), jnp.int32(0))
        advantages, returns = ppo.generalized_advantages(
            records["reward"], records["value"], records["done"], bootstrap, self.ppo_config.discount, self.ppo_config.gae_lambda
        )
        trajectory = {name: records[name] for name in ("task_id", "reward", "done", "value", "trial")}
        trajectory["episode_return"] = records["finished_returns"].sum(-1)
        task_state = self.tasks.update(task_state, {**trajectory, "advantage": advantages})

        batch = {
            "inputs": records["inputs"],
            "memory": per_env["memory"],
            "action": records["action"],
            "log_prob": records["log_prob"],
            "value": records["value"],
            # Normalised over the whole rollout (not per minibatch), so accumulation is exact.
            "advantage": (advantages - advantages.mean()) / (advantages.std() + 1e-8),
            "return": returns,
        }
        new_per_env = {name: carry[name] for name in ("env_state", "timestep", "task_id", "previous_action", "previous_reward", "reset", "trial_returns")}
        new_per_env["memory"] = memory
        if teacher is not None:
            batch["teacher_logits"] = records["teacher_logits"]
            batch["kickstart_weight"] = jnp.full((self.num_envs,), ppo.kickstart_weight(self.kickstart_config, step))
            new_per_env["teacher_memory"] = teacher.end_segment(carry["teacher_cache"])
        metrics = self._metrics(records)
        if self.ppo_config.entropy_anneal_steps > 0:
            batch["entropy_coef"] = jnp.full((self.num_envs,), ppo.entropy_coef(self.ppo_config, step))
            metrics["entropy_coef"] = batch["entropy_coef"][0]
        if hasattr(self.tasks, "metrics"):  # what a curriculum has admitted, seen, ...
            metrics.update(self.tasks.metrics(task_state))
        return batch, RolloutState(per_env=new_per_env, shared={"tasks": task_state}), metrics

    def _metrics(self, records: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
        episodes = records["done"].sum()
        finished = records["finished_returns"].sum(axis=(0, 1)) / jnp.maximum(episodes, 1)  # [K]
        metrics = {
            "reward_per_step": records["reward"].mean(),
            "episodes": episodes.astype(jnp.float32),
            "episode_return": finished.sum(),
        }
        metrics.update({f"return_trial_{k + 1}": finished[k] for k in range(self.env.num_trials)})
        return metrics

    # --- Bookkeeping --------------------------------------------------------------------------------------
    def describe_rollout(self) -> str:
        return (
            f"{self.num_envs} x {self.env.describe()} environments, {self.ppo_config.rollout_length} steps per rollout, "
            f"{self.agent_config.agent} agent"
            + (f", kickstarted from {self.kickstart_config.teacher}" if self.teacher is not None else "")
        )

    def config_fields(self) -> dict[str, tuple[str, ...]]:
        # env: a section each environment factory reads fields of its own from (none declared here)
        return {"model": field_names(AgentConfig), "ppo": field_names(ppo.PPOConfig),
                "kickstart": field_names(ppo.KickstartConfig), "env": ()}

    def check_resume(self, position: Mapping[str, Any], checkpoint: str) -> None:
        ada_env.check_same_benchmark(self.env, position, benchmark=section(section(self.config, "env", {}), "benchmark"),
                                     checkpoint=checkpoint, why="its environments and curriculum hold the other's "
                                     "rulesets; train on it in another workdir")

    def rollout_identity(self) -> dict[str, Any]:
        return {"env": self.env.describe(), "num_envs": self.num_envs, "rollout_length": self.ppo_config.rollout_length}

    def summary(self, metrics: Mapping[str, float]) -> str:
        trials = [metrics[f"return_trial_{k + 1}"] for k in range(self.env.num_trials) if f"return_trial_{k + 1}" in metrics]
        return (
            f"return {metrics.get('episode_return', 0.0):.3f} (trials {' '.join(f'{r:.2f}' for r in trials)}) "
            f"value_loss {metrics.get('value_loss', 0.0):.3f} entropy {metrics.get('entropy', 0.0):.3f}"
        )

    def step_cost(self, batch_size: int) -> StepCost:
        steps = batch_size * self.ppo_config.rollout_length
        context = self.agent_config.memory_length + self.ppo_config.rollout_length
        act = agent_flops(self.agent_config, self.shapes, queries=1, context=context, projected=1)
        learn = agent_flops(self.agent_config, self.shapes, queries=self.ppo_config.rollout_length, context=context)
        # The actor projects keys and values of its context once per segment (and once for the bootstrap step).
        cache = 0 if self.agent_config.agent == "gru" else 2 * self.agent_config.num_layers * 2 * 2 * self.agent_config.d_model**2 * context
        # Acting: one forward per step (+ one bootstrap step); learning: forward + backward (3x) per epoch.
        flops = batch_size * ((self.ppo_config.rollout_length + 1) * act + cache + 3 * self.ppo_config.num_epochs * learn)
        return StepCost(flops=float(flops), tokens=steps, compute_dtype="float32")


def agent_flops(config: AgentConfig, shapes: EnvShapes, *, queries: int, context: int, projected: int | None = None) -> float:
    """Forward FLOPs (2 per multiply-add) of one environment's pass over ``queries`` steps.

    Transformer-XL: each layer projects keys and values of ``projected`` slots (default all
    ``context``: the learner's pass; an acting step projects only its own, the rest is in the actor's
    KV cache), queries/output/MLP for the queries, attention of each query over the context, and
    with ``gated`` the two GTrXL gates (6 D^2 multiply-adds each). GRU: three gates per step. Both:
    the input encoder (reward and extras projections; for grid observations the three 2x2
    convolutions and the projection of their output) and the heads. Embedding lookups, LayerNorm,
    softmax and activations are not counted (elementwise work, small beside the matmuls).
    tests/test_ada.py checks the count against XLA's cost analysis of both passes.
    """
    projected = context if projected is None else projected
    d, h = config.d_model, config.head_hidden
    embed = 2 * d * (1 + shapes.extras_size)
    if config.observation == "grid":
        height, width = shapes.grid_shape[:2]
        channels = grid_channels(config)
        for index, (c_in, c_out) in enumerate(zip(channels, channels[1:]), start=1):
            embed += 2 * (height - index) * (width - index) * 4 * c_in * c_out
        embed += 2 * (height - len(GRID_CHANNELS)) * (width - len(GRID_CHANNELS)) * GRID_CHANNELS[-1] * d
    heads = 2 * 2 * (config.gru_hidden if config.agent == "gru" else d) * h + 2 * h * (shapes.num_actions + 1)
    if config.agent == "gru":
        core = 2 * 3 * (d * config.gru_hidden + config.gru_hidden**2)
        return float(queries * (embed + core + heads))
    gates = 2 * 2 * 6 * d * d if config.gated else 0
    per_layer = (2 * d * d * (2 * queries + 2 * projected) + 2 * 2 * queries * d * config.mlp_ratio * d
                 + 2 * 2 * queries * context * d + queries * gates)
    return float(queries * (embed + heads) + config.num_layers * per_layer)


class _Teacher:
    """A trained agent's parameters bound to its graph: acting only, no gradients."""

    def __init__(self, agent: nnx.Module):
        self._graphdef, self._state = nnx.split(agent)

    def _agent(self) -> nnx.Module:
        return nnx.merge(self._graphdef, jax.tree.map(jax.lax.stop_gradient, self._state))

    def initial_memory(self, batch: int) -> Any:
        return self._agent().initial_memory(batch)

    def begin_segment(self, memory: Any, length: int) -> Any:
        return self._agent().begin_segment(memory, length)

    def act(self, inputs: Any, cache: Any, t: jax.Array):
        return self._agent().act(inputs, cache, t)

    def end_segment(self, cache: Any) -> Any:
        return self._agent().end_segment(cache)


def load_agent(workdir: str | Path, env: ada_env.MetaEnvironment, tasks: ada_env.TaskSource, *,
               step: int | None = None) -> tuple[nnx.Module, dict[str, Any], int, dict[str, Any]]:
    """``(agent, run config, checkpoint step, data position)``: the agent trained in ``workdir`` (its
    config.json's model section, the parameters of its latest checkpoint, or of ``step``) on one device,
    for ``env``; the data position is what the checkpoint recorded of its rollouts (``rollout_identity``:
    the environment it trained on, e.g. its benchmark's sha256). ValueError (one line) for a workdir
    without config.json or its model section, a run of another recipe, a missing checkpoint or parameters that do not fit."""
    from mgdt_jax.core import checkpointing  # Orbax only when loading
    from mgdt_jax.core.loop import read_run_config

    run_config = read_run_config(workdir, AdaRecipe.name, sections=("model",))
    agent_config = read_section(AgentConfig, run_config["model"])
    agent = nnx.eval_shape(lambda: make_agent(agent_config, env_shapes(env, tasks, agent_config.observation), nnx.Rngs(0)))
    graphdef, abstract = nnx.split(agent)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=device), abstract)
    try:
        params, position, chosen = checkpointing.load_checkpoint(workdir, target=target, step=step, recipe=AdaRecipe.name)
    except (checkpointing.CheckpointError, FileNotFoundError) as error:
        raise ValueError(str(error)) from None
    return nnx.merge(graphdef, params), run_config, chosen, position


def _load_teacher(workdir: str, env: ada_env.MetaEnvironment, tasks: ada_env.TaskSource) -> _Teacher:
    """The agent trained in ``workdir``, acting beside the student."""
    try:
        agent, *_ = load_agent(workdir, env, tasks)
    except ValueError as error:
        raise ValueError(f"kickstart.teacher: {error}") from None
    return _Teacher(agent)


RECIPE = AdaRecipe
