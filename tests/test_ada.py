"""AdA agents and learning: Transformer-XL memory equals the full-context pass, memory survives trial
and segment boundaries but not a new meta-episode, GAE, PPO learns arm recall with both agents,
kickstarting anneals and pulls the student to its teacher."""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from experiments import ada_tiny
from mgdt_jax.core import loop
from mgdt_jax.core.metric_writer import METRICS_FILE
from mgdt_jax.recipes.ada import ppo
from mgdt_jax.recipes.ada.agents import AgentConfig, EnvShapes, make_agent
from mgdt_jax.recipes.ada.arm_recall import ArmRecall
from mgdt_jax.recipes.ada.recipe import AdaRecipe

SHAPES = EnvShapes(num_actions=3, num_observations=2, extras_size=5)


def random_inputs(seed: int, batch: int, length: int, resets: tuple[int, ...] = ()) -> dict[str, jax.Array]:
    keys = jax.random.split(jax.random.key(seed), 4)
    reset = np.zeros((batch, length), bool)
    reset[:, [0, *resets]] = True
    return {
        "observation": jax.random.randint(keys[0], (batch, length), 0, SHAPES.num_observations),
        "previous_action": jax.random.randint(keys[1], (batch, length), 0, SHAPES.num_actions + 1),
        "previous_reward": jax.random.normal(keys[2], (batch, length)),
        "extras": jax.random.normal(keys[3], (batch, length, SHAPES.extras_size)),
        "reset": jnp.asarray(reset),
    }


def segmented(agent, inputs, segment: int, *, acting: bool) -> tuple[np.ndarray, np.ndarray]:
    """Logits and values over [B, T] in segments of ``segment`` steps, memory carried between them,
    each segment by the learner's pass or by the actor's step-by-step pass."""
    memory = agent.initial_memory(inputs["reset"].shape[0])
    logits, values = [], []
    for start in range(0, inputs["reset"].shape[1], segment):
        part = jax.tree.map(lambda leaf: leaf[:, start:start + segment], inputs)
        cache = agent.begin_segment(memory, segment)
        if acting:
            for t in range(segment):
                step_logits, step_value, cache = agent.act(jax.tree.map(lambda leaf: leaf[:, t], part), cache, jnp.int32(t))
                logits.append(step_logits[:, None])
                values.append(step_value[:, None])
            memory = agent.end_segment(cache)
        else:
            part_logits, part_values = agent.sequence(part, memory)
            logits.append(part_logits)
            values.append(part_values)
            for t in range(segment):  # the memory the actor would leave
                _, _, cache = agent.act(jax.tree.map(lambda leaf: leaf[:, t], part), cache, jnp.int32(t))
            memory = agent.end_segment(cache)
    return np.concatenate(logits, axis=1), np.concatenate(values, axis=1)


@pytest.mark.parametrize("agent_name", ["trxl", "gtrxl", "trxl-no-alibi", "gru"])
def test_memory_over_segments_equals_the_full_context_pass(agent_name):
    config = AgentConfig(agent=agent_name.split("-")[0].replace("gtrxl", "trxl"), gated=agent_name == "gtrxl",
                         alibi=not agent_name.endswith("no-alibi"), num_layers=2, d_model=32, memory_length=12)
    agent = make_agent(config, SHAPES, nnx.Rngs(0))
    inputs = random_inputs(1, batch=3, length=12, resets=(7,))
    full_logits, full_values = agent.sequence(inputs, agent.initial_memory(3))
    for acting in (False, True):
        logits, values = segmented(agent, inputs, segment=4, acting=acting)
        np.testing.assert_allclose(values, full_values, atol=1e-5)
        np.testing.assert_allclose(logits, full_logits, atol=1e-6)
    assert np.abs(np.diff(np.asarray(full_values), axis=1)).max() > 1e-3  # the values do vary
    if agent_name != "gru":  # the same weights with the other position setting attend differently
        other = make_agent(dataclasses.replace(config, alibi=not config.alibi), SHAPES, nnx.Rngs(0))
        assert np.abs(other.sequence(inputs, other.initial_memory(3))[0] - full_logits).max() > 1e-4


@pytest.mark.parametrize("agent_name", ["trxl", "gtrxl", "gru"])
def test_memory_survives_trials_and_segments_but_not_a_new_meta_episode(agent_name):
    config = AgentConfig(agent=agent_name.replace("gtrxl", "trxl"), gated=agent_name == "gtrxl", num_layers=2,
                         d_model=32, memory_length=12)
    agent = make_agent(config, SHAPES, nnx.Rngs(0))
    inputs = random_inputs(2, batch=2, length=12, resets=(8,))  # meta-episodes: steps 0-7, 8-11
    changed = dict(inputs, previous_reward=inputs["previous_reward"].at[:, 1].add(3.0))  # step 1 (trial 1)
    _, values = segmented(agent, inputs, segment=4, acting=True)
    _, changed_values = segmented(agent, changed, segment=4, acting=True)
    # Steps 4-7 are later segments of the same meta-episode: what happened at step 1 still matters.
    assert np.abs(changed_values[:, 4:8] - values[:, 4:8]).min() > 1e-4
    # After the reset at step 8 nothing of the earlier meta-episode is seen.
    np.testing.assert_allclose(changed_values[:, 8:], values[:, 8:], atol=1e-6)
    alone = jax.tree.map(lambda leaf: leaf[:, 8:], inputs)
    _, alone_values = agent.sequence(alone, agent.initial_memory(2))
    np.testing.assert_allclose(values[:, 8:], alone_values, atol=1e-5)


def test_trxl_memory_is_bounded_by_its_length():
    config = AgentConfig(agent="trxl", num_layers=1, d_model=32, memory_length=4)
    agent = make_agent(config, SHAPES, nnx.Rngs(0))
    inputs = random_inputs(3, batch=2, length=12)
    changed = dict(inputs, previous_reward=inputs["previous_reward"].at[:, 0].add(3.0))
    _, values = segmented(agent, inputs, segment=4, acting=True)
    _, changed_values = segmented(agent, changed, segment=4, acting=True)
    # One layer, memory 4, segments of 4: step 0 is seen by steps 0-7 and forgotten from step 8 on.
    assert np.abs(changed_values[:, 7] - values[:, 7]).min() > 1e-5
    np.testing.assert_allclose(changed_values[:, 8:], values[:, 8:], atol=1e-6)


def test_generalized_advantages_match_the_recursion_and_stop_at_episode_ends():
    rewards = np.array([[1.0, 0.0, 2.0, 0.5]], np.float32)
    values = np.array([[0.5, 0.2, 0.1, 0.3]], np.float32)
    dones = np.array([[False, True, False, False]])
    bootstrap = np.array([0.7], np.float32)
    discount, lam = 0.9, 0.8
    advantages, returns = ppo.generalized_advantages(rewards, values, dones, bootstrap, discount, lam)
    expected, next_advantage, next_value = np.zeros(4), 0.0, 0.7
    for t in reversed(range(4)):
        cont = 0.0 if dones[0, t] else 1.0
        delta = rewards[0, t] + discount * next_value * cont - values[0, t]
        next_advantage = delta + discount * lam * cont * next_advantage
        expected[t], next_value = next_advantage, values[0, t]
    np.testing.assert_allclose(advantages[0], expected, rtol=1e-6)
    np.testing.assert_allclose(returns, advantages + values, rtol=1e-6)
    assert expected[1] == pytest.approx(rewards[0, 1] - values[0, 1])  # no bootstrap past the end


def test_kickstart_weight_holds_then_anneals_to_zero():
    config = ppo.KickstartConfig(teacher="x", weight=2.0, hold_steps=10, anneal_steps=30)
    weights = [float(ppo.kickstart_weight(config, jnp.int32(step))) for step in (0, 10, 20, 30, 50)]
    assert weights == [2.0, 2.0, 1.0, 0.0, 0.0]


def test_an_annealed_entropy_bonus_reaches_the_loss_with_its_rollout():
    config = ada_tiny.get_config()
    config.ppo.update(entropy_coef=0.02, entropy_anneal_steps=10, rollout_length=2)
    config.train.batch_size = 4
    recipe = AdaRecipe(config)

    @nnx.jit
    def weight_and_bonus(model):  # at train step 5, halfway
        batch, _, metrics = recipe.rollout(model, recipe.init_rollout(jax.random.key(0)), jax.random.key(1), jnp.int32(5))
        loss, loss_metrics = recipe.loss(model, batch, jax.random.key(2))
        unregularised, _ = recipe.loss(model, {**batch, "entropy_coef": jnp.zeros_like(batch["entropy_coef"])}, jax.random.key(2))
        return metrics["entropy_coef"], unregularised - loss, loss_metrics["entropy"]

    weight, bonus, entropy = weight_and_bonus(recipe.model(nnx.Rngs(0)))
    assert float(weight) == pytest.approx(0.01)
    np.testing.assert_allclose(float(bonus), 0.01 * float(entropy), rtol=1e-4)
    config.ppo.entropy_anneal_steps = -1
    with pytest.raises(ValueError, match=r"^ppo.entropy_anneal_steps -1: must be >= 0 \(0: constant\)$"):
        AdaRecipe(config)
    constant = ppo.PPOConfig(entropy_coef=0.02)  # entropy_anneal_steps = 0
    assert [float(ppo.entropy_coef(constant, jnp.int32(step))) for step in (0, 10**6)] == pytest.approx([0.02, 0.02])


@pytest.mark.parametrize("section, field, value, message", [
    ("model", "memory_length", -1, "model.memory_length must be >= 0 (0: no memory beyond the segment), got -1"),
    ("model", "d_model", 0, "model.d_model must be at least 1, got 0"),
    ("model", "d_model", 30, "model.d_model 30 is not a multiple of model.num_heads 4"),
    ("ppo", "rollout_length", 0, "ppo.rollout_length 0: must be at least 1"),
    ("ppo", "num_minibatches", 0, "ppo.num_minibatches 0: must be at least 1"),
    ("ppo", "num_epochs", 0, "ppo.num_epochs 0: must be at least 1"),
    ("ppo", "discount", 1.5, "ppo.discount 1.5: must be in [0, 1]"),
    ("ppo", "gae_lambda", float("nan"), "ppo.gae_lambda nan: must be in [0, 1]"),
    ("ppo", "clip_epsilon", -1.0, "ppo.clip_epsilon -1.0: must be a positive number"),
    ("ppo", "entropy_coef", float("nan"), "ppo.entropy_coef nan: must be a number >= 0"),
    ("kickstart", "hold_steps", 200, "kickstart.hold_steps 200 and anneal_steps 100: need 0 <= hold_steps <= anneal_steps"),
])
def test_a_setting_no_run_can_use_is_refused_before_anything_is_built(section, field, value, message):
    # Each used to compile and then fail as an XLA shape error, a division by zero or a NaN loss, or train silently.
    config = ada_tiny.get_config()
    config.model.num_heads = 4
    config[section][field] = value
    with pytest.raises(ValueError) as error:
        AdaRecipe(config)
    assert str(error.value) == message


def test_arm_recall_pays_only_a_memory():
    env = ArmRecall(num_arms=2, num_trials=3, trial_length=2)
    state, timestep = env.reset(jax.random.key(0), jnp.int32(1))  # arm 1 is good: action 2
    rewards = []
    for action in (1, 0, 2, 0, 2, 1):  # wrong pull, wait, right pull, wait, right pull, bad wait
        state, timestep = env.step(state, jnp.int32(action))
        rewards.append(float(timestep.reward))
    assert rewards == [0.0, 0.0, 1.0, 0.0, 1.0, -0.5] and bool(timestep.done)
    assert env.optimal_trial_returns() == [0.5, 1.0, 1.0]


def test_an_unknown_env_factory_is_one_line():
    with pytest.raises(ValueError, match=r"^env.factory 'no_such_module:make': No module named 'no_such_module'$"):
        AdaRecipe({"env": {"factory": "no_such_module:make"}})


def train_metrics(workdir) -> list[dict]:
    return [json.loads(line) for line in (workdir / METRICS_FILE).read_text().splitlines()]


def run(agent: str, workdir, num_steps: int, **kickstart) -> list[dict]:
    config = ada_tiny.get_config()
    config.model.agent = agent
    config.train.num_steps = num_steps
    config.train.log_every = 5
    config.train.checkpoint_every = num_steps
    config.kickstart.update(kickstart)
    loop.train(config, workdir)
    return train_metrics(workdir)


@pytest.fixture(scope="module")
def trained_gru(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("gru")
    return workdir, run("gru", workdir, 40)


def final_trials(metrics: list[dict]) -> tuple[float, float]:
    """Trial-1 and trial-4 returns averaged over the last three logged steps."""
    last = [entry for entry in metrics if "train/return_trial_1" in entry][-3:]
    return np.mean([e["train/return_trial_1"] for e in last]), np.mean([e["train/return_trial_4"] for e in last])


def test_ppo_learns_arm_recall_with_the_gru(trained_gru):
    _, metrics = trained_gru
    first, last = final_trials(metrics)
    # A memoryless policy earns at most 0.5 per trial; remembering, 0.5 then 1.0.
    assert last > 0.9 and first < 0.75, (first, last)


def test_ppo_learns_arm_recall_with_the_transformer_xl(tmp_path):
    first, last = final_trials(run("trxl", tmp_path, 40))
    assert last > 0.9 and first < 0.75, (first, last)


def test_kickstarting_pulls_the_student_to_its_teacher_while_its_weight_lasts(trained_gru, tmp_path):
    teacher_dir, _ = trained_gru
    # The rollout of logged step n sees the weight of step n - 1: held at 1 to step 4, 0 from step 14.
    kickstarted = run("trxl", tmp_path / "kickstarted", 15, teacher=str(teacher_dir), weight=1.0, hold_steps=4, anneal_steps=14)
    unweighted = run("trxl", tmp_path / "unweighted", 5, teacher=str(teacher_dir), weight=0.0)
    logged = {entry["step"]: entry for entry in kickstarted if "train/kickstart_kl" in entry}
    assert [logged[step]["train/kickstart_weight"] for step in (5, 10, 15)] == pytest.approx([1.0, 0.5, 0.0])
    # Same seed, same first rollouts: only the distillation term differs.
    assert logged[5]["train/kickstart_kl"] < 0.85 * unweighted[-1]["train/kickstart_kl"]


def test_the_grid_encoders_convolution_equals_flax_conv():
    from mgdt_jax.recipes.ada.agents import _valid_conv_2x2

    conv = nnx.Conv(6, 5, (2, 2), padding="VALID", rngs=nnx.Rngs(0))
    conv.bias[...] = jax.random.normal(jax.random.key(1), conv.bias.shape)
    x = jax.random.normal(jax.random.key(2), (3, 4, 5, 5, 6))
    np.testing.assert_allclose(_valid_conv_2x2(conv, x), conv(x.reshape(-1, 5, 5, 6)).reshape(3, 4, 4, 4, 5), atol=1e-5)


def test_the_claims_options_reach_their_runs(tmp_path, capsys):
    from experiments import ada_claims

    scale, benchmark = ada_claims.FULL["meta-rl"], tmp_path / "benchmark.pkl.bz2"
    options = {"memory_length": 128, "gated": True, "alibi": False}
    trxl = ada_claims.run_config("trxl", benchmark, scale, 10, trxl_options=options)
    assert (trxl.model.memory_length, trxl.model.gated, trxl.model.alibi) == (128, True, False)
    plain = ada_claims.run_config("trxl", benchmark, scale, 10)
    assert (plain.model.memory_length, plain.model.gated, plain.model.alibi) == (
        ada_claims.MODELS["trxl"]["memory_length"], False, True)
    gru = ada_claims.run_config("gru", benchmark, scale, 10, trxl_options=options)
    assert (gru.model.memory_length, gru.model.gated, gru.model.alibi) == (AgentConfig().memory_length, False, True)
    assert (plain.train.seed, plain.optimizer.schedule) == (ada_claims.SEED, "constant")
    seeded = ada_claims.run_config("gru", benchmark, scale, 10, lr_schedule="linear", entropy_anneal=True, seed=3)
    assert (seeded.train.seed, seeded.optimizer.schedule, seeded.env.split_seed) == (3, "linear", ada_claims.SEED)
    assert (seeded.ppo.entropy_anneal_steps, plain.ppo.entropy_anneal_steps) == (10, 0)
    # --trxl-lr reaches the Transformer-XL only; the GRU baseline keeps XLand-MiniGrid's rate.
    slow = {model: ada_claims.run_config(model, benchmark, scale, 10, trxl_learning_rate=3e-4) for model in ("trxl", "gru")}
    assert (slow["trxl"].optimizer.learning_rate, slow["gru"].optimizer.learning_rate) == (3e-4, 1e-3)
    assert plain.optimizer.learning_rate == 1e-3
    # --time-onehot is a task setting: both agents see it.
    onehot = ada_claims.TaskSetting(time_onehot=True)
    assert all(ada_claims.run_config(model, benchmark, scale, 10, onehot).env.time_onehot for model in ("trxl", "gru"))
    assert not plain.env.time_onehot
    for args, message in [(["--memory-length", "0"], "argument --memory-length: 0: must be at least 1"),
                          (["--rollout-length", "0"], "argument --rollout-length: 0: must be at least 1"),
                          (["--minibatches", "3"], "--minibatches 3: must divide the 128 environments"),
                          (["--envs", "24", "--minibatches", "16"], "--minibatches 16: must divide the 24 environments"),
                          (["--envs", "0"], "argument --envs: 0: must be at least 1"),
                          (["--trxl-lr", "nan"], "--trxl-lr nan: must be a finite number > 0"),
                          (["--width", "3"], "--width 3: must be a multiple of the Transformer-XL's 4 heads"),
                          (["--seed", "-1"], "argument --seed: -1 is out of range"),
                          (["--quick", "--rulesets", "5"], "--rulesets 5: 5 rulesets with heldout_fraction 0.1: one side"),
                          (["--quick", "--docs"], "--docs: a --quick run is no claim")]:
        with pytest.raises(SystemExit) as raised:  # argparse's usage line and exit status 2, as a bad flag
            ada_claims.main(["meta-rl", *args, "--out", str(tmp_path / "out")])
        assert raised.value.code == 2
        assert message in capsys.readouterr().err.strip().splitlines()[-1]
    assert not (tmp_path / "out").exists()


def test_the_gtrxl_gate_follows_its_formula_and_starts_near_the_identity():
    from mgdt_jax.core.transformer import GRUGate

    gate = GRUGate(8, kernel_init=nnx.initializers.normal(0.3), dtype=jnp.float32, param_dtype=jnp.float32,
                   rngs=nnx.Rngs(0))
    x, y = jax.random.normal(jax.random.key(1), (2, 5, 8)), jax.random.normal(jax.random.key(2), (2, 5, 8))
    w, u, u_g = (np.asarray(layer.kernel[...]) for layer in (gate.from_update, gate.from_stream, gate.candidate))
    sigmoid = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    xn, yn = np.asarray(x), np.asarray(y)
    r = sigmoid(yn @ w[:, :8] + xn @ u[:, :8])
    z = sigmoid(yn @ w[:, 8:16] + xn @ u[:, 8:] - 2.0)
    h = np.tanh(yn @ w[:, 16:] + (r * xn) @ u_g)
    np.testing.assert_allclose(gate(x, y), (1 - z) * xn + z * h, atol=1e-5)
    # With the update gate's bias at -2, at most ~12% of an update gets through at initialisation.
    zero = GRUGate(8, kernel_init=nnx.initializers.zeros_init(), dtype=jnp.float32, param_dtype=jnp.float32,
                   rngs=nnx.Rngs(0))
    np.testing.assert_allclose(zero(x, y), (1 - sigmoid(-2.0)) * xn, atol=1e-6)


@pytest.mark.parametrize("agent_name", ["gtrxl", "trxl", "gru"])
def test_the_step_cost_counts_the_flops_xla_counts(agent_name):
    """``agent_flops``, which ``AdaRecipe.step_cost`` (logged TFLOP/s, benchmarks' MFU) sums, is
    within a few percent of XLA's cost analysis of the learner's and the actor's pass, with grid
    observations and GTrXL gates (XLA also counts elementwise work, so it reads a little higher)."""
    from mgdt_jax.core.flops import compiled_flops
    from mgdt_jax.recipes.ada.recipe import agent_flops

    shapes = EnvShapes(num_actions=6, extras_size=13, grid_shape=(5, 5, 2))
    config = AgentConfig(agent="gru" if agent_name == "gru" else "trxl", gated=agent_name == "gtrxl", observation="grid",
                         d_model=128, num_heads=4, num_layers=2, memory_length=16, head_hidden=128, gru_hidden=128)
    batch, length, memory_length = 4, 16, config.memory_length
    keys = jax.random.split(jax.random.key(0), 4)

    def inputs(lead: tuple[int, ...]) -> dict[str, jax.Array]:
        return {"observation": jax.random.randint(keys[0], (*lead, 5, 5, 2), 0, 12),
                "previous_action": jax.random.randint(keys[1], lead, 0, shapes.num_actions + 1),
                "previous_reward": jax.random.normal(keys[2], lead),
                "extras": jax.random.normal(keys[3], (*lead, shapes.extras_size)), "reset": jnp.zeros(lead, bool)}

    agent = make_agent(config, shapes, nnx.Rngs(0))
    graph, params = nnx.split(agent)
    memory = agent.initial_memory(batch)
    context = memory_length + length if config.agent == "trxl" else 1
    act = jax.jit(lambda p, x, cache: nnx.merge(graph, p).act(x, cache, jnp.int32(3)))
    passes = {"act": (act.lower(params, inputs((batch,)), agent.begin_segment(memory, length)),
                      agent_flops(config, shapes, queries=1, context=context, projected=1))}
    if config.agent == "trxl":  # the GRU's learner pass is a scan, whose body XLA counts once
        sequence = jax.jit(lambda p, x, m: nnx.merge(graph, p).sequence(x, m))
        passes["sequence"] = (sequence.lower(params, inputs((batch, length)), memory),
                              agent_flops(config, shapes, queries=length, context=context))
    for name, (lowered, analytic) in passes.items():
        ratio = compiled_flops(lowered.compile()) / (batch * analytic)
        assert 1.0 <= ratio <= 1.06, (name, ratio)


def test_the_claims_break_held_out_returns_down_by_goal_type():
    pytest.importorskip("xminigrid")
    from experiments import ada_claims
    from mgdt_jax.envs.xland import generator

    goal_ids = generator.type_ids()[0]
    goals = np.zeros((6, 5), np.uint8)
    goals[:, 0] = [goal_ids["agent_hold"]] * 3 + [goal_ids["agent_near_left"]] * 3
    # held-out tasks 1, 2 (agent_hold) and 4 (agent_near_left); 5 trials each
    runs = {name: {"task_ids": [1, 4, 2], "task_scores": [[0.2, 0, 0, 0, 0.4], [0.5, 0, 0, 0, 0.9], [0.4, 0, 0, 0, 0.6]]}
            for name in ("A", "B")}
    lines = ada_claims.by_goal_type({"runs": runs}, goals).splitlines()
    assert lines[0] == "| goal type | tasks | A trial 1 -> 5 | B trial 1 -> 5 |"
    assert lines[2:] == ["| `agent_hold` | 2 | 0.300 -> 0.500 | 0.300 -> 0.500 |",
                         "| `agent_near_left` | 1 | 0.500 -> 0.900 | 0.500 -> 0.900 |"]
