"""XLand-MiniGrid tasks: our benchmark generator, its file and record, and k-trial episodes."""

import dataclasses
import json
import shutil

import numpy as np
import pytest

pytest.importorskip("xminigrid")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from data_pipelines import xland_benchmark  # noqa: E402
from mgdt_jax.core import files  # noqa: E402
from mgdt_jax.envs.xland import generator, trials  # noqa: E402


def test_generation_is_deterministic_for_a_seed(tmp_path):
    settings = generator.PRESETS["medium"]
    first, _ = generator.generate(settings, 300, seed=3)
    second, _ = generator.generate(settings, 300, seed=3)
    other, _ = generator.generate(settings, 300, seed=4)
    for key in first:
        np.testing.assert_array_equal(first[key], second[key])
    assert not np.array_equal(first["goals"], other["goals"])
    records = [generator.write(arrays, tmp_path / f"{i}.pkl.bz2", settings=settings, seed=3)
               for i, arrays in enumerate((first, second))]
    assert records[0]["sha256"] == records[1]["sha256"]


def test_duplicates_are_rejected_and_an_exhausted_space_is_an_error():
    # One goal type over one object and no rules: exactly 60 distinct tasks exist.
    settings = dataclasses.replace(generator.PRESETS["trivial"], goal_types=("agent_hold",))
    arrays, stats = generator.generate(settings, 60, seed=0)
    keys = {generator.task_key(g, r[:n]) for g, r, n in zip(arrays["goals"], arrays["rules"], arrays["num_rules"])}
    assert len(keys) == 60 and stats["duplicates_rejected"] > 0
    with pytest.raises(generator.BenchmarkError, match="exhausted"):
        generator.generate(settings, 61, seed=0, max_consecutive_duplicates=5_000)
    arrays, _ = generator.generate(generator.PRESETS["small"], 2000, seed=1)
    keys = {generator.task_key(g, r[:n]) for g, r, n in zip(arrays["goals"], arrays["rules"], arrays["num_rules"])}
    assert len(keys) == 2000


def test_encodings_are_xminigrids():
    from xminigrid.core import goals, rules

    vocabulary = generator.objects()
    assert len({tuple(o) for o in vocabulary}) == 60
    a, b, c = vocabulary[[7, 31, 52]]
    for name, (cls, arity) in generator.GOAL_TYPES.items():
        expected = np.asarray(getattr(goals, cls)(*[a, b][:arity]).encode())
        ours = generator.encode_goal(name, np.stack([a, b][:arity]))
        np.testing.assert_array_equal(ours, expected, err_msg=name)
    for name, (cls, arity) in generator.RULE_TYPES.items():
        expected = np.asarray(getattr(rules, cls)(*[a, b][:arity], c).encode())
        ours = generator.encode_rule(name, np.stack([a, b][:arity]), c)
        np.testing.assert_array_equal(ours, expected, err_msg=name)


@pytest.mark.parametrize("preset", ["small", "high"])
def test_every_goal_object_can_be_made_from_the_world(preset):
    """Firing rules whose inputs exist reaches every object the goal names (a solvable chain)."""
    arrays, _ = generator.generate(generator.PRESETS[preset], 300, seed=2)
    goal_ids, rule_ids = generator.type_ids()
    two_object_goals = {goal_ids[n] for n, (_, k) in generator.GOAL_TYPES.items() if k == 2}
    two_input_rules = {rule_ids[n] for n, (_, k) in generator.RULE_TYPES.items() if k == 2}
    for goal, rules, n, tiles in zip(arrays["goals"], arrays["rules"], arrays["num_rules"], arrays["init_tiles"]):
        world = {tuple(t) for t in tiles if tuple(t) != (0, 0)}
        products = [tuple(r[5:7]) if r[0] in two_input_rules else tuple(r[3:5]) for r in rules[:n]]
        assert not world & set(products)  # nothing the rules make is there from the start
        assert len(set(products)) == n
        reachable, changed = set(world), True
        while changed:
            changed = False
            for rule, product in zip(rules[:n], products):
                inputs = {tuple(rule[1:3])} | ({tuple(rule[3:5])} if rule[0] in two_input_rules else set())
                if inputs <= reachable and product not in reachable:
                    reachable.add(product)
                    changed = True
        needed = {tuple(goal[1:3])} | ({tuple(goal[3:5])} if goal[0] in two_object_goals else set())
        assert needed <= reachable


def _write_benchmark(path, count=64, preset="trivial", seed=0):
    settings = generator.PRESETS[preset]
    arrays, stats = generator.generate(settings, count, seed)
    return generator.write(arrays, path, settings=settings, seed=seed, preset=preset, stats=stats)


@pytest.fixture(scope="module")
def trivial_benchmark(tmp_path_factory):
    """(path, record) of 32 trivial-preset rulesets, written once for the module."""
    path = tmp_path_factory.mktemp("xland") / "trivial_32.pkl.bz2"
    return path, _write_benchmark(path, count=32)


def test_file_loads_through_xminigrid_load_benchmark_from_path(tmp_path):
    from xminigrid.benchmarks import load_benchmark_from_path

    path = tmp_path / "small.pkl.bz2"
    settings = generator.PRESETS["small"]
    arrays, stats = generator.generate(settings, 50, seed=0)
    record = generator.write(arrays, path, settings=settings, seed=0, preset="small", stats=stats)
    assert json.loads(generator.sidecar_path(path).read_text()) == record
    assert record["generator"]["settings"]["chain_depth"] == 1 and record["sha256"] == files.sha256(path)
    raw = load_benchmark_from_path(str(path))
    for key, value in arrays.items():
        np.testing.assert_array_equal(getattr(raw, key), value)
    benchmark, loaded = generator.load(path)
    assert benchmark.num_rulesets() == 50 and loaded["benchmark_id"] == record["benchmark_id"]
    ruleset = benchmark.get_ruleset(7)
    np.testing.assert_array_equal(ruleset.rules, arrays["rules"][7])


def test_altered_or_unrecorded_files_are_refused(tmp_path):
    path = tmp_path / "b.pkl.bz2"
    _write_benchmark(path, count=10)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(generator.BenchmarkError, match="altered"):
        generator.load(path)
    generator.sidecar_path(path).unlink()
    with pytest.raises(generator.BenchmarkError, match="no record"):
        generator.load(path)
    with pytest.raises(generator.BenchmarkError, match="no such"):
        generator.load(tmp_path / "missing.pkl.bz2")


def test_task_split_is_fixed_by_the_seed():
    train, heldout = generator.task_split(100, 0.2, seed=5)
    assert len(heldout) == 20 and len(train) == 80
    np.testing.assert_array_equal(np.sort(np.concatenate([train, heldout])), np.arange(100))
    np.testing.assert_array_equal(generator.task_split(100, 0.2, seed=5)[1], heldout)
    assert not np.array_equal(generator.task_split(100, 0.2, seed=6)[1], heldout)
    with pytest.raises(generator.BenchmarkError):
        generator.task_split(3, 0.1, seed=0)


def test_cli_writes_a_benchmark_and_refuses_bad_input(tmp_path, capsys):
    out = tmp_path / "t.pkl.bz2"
    assert xland_benchmark.main(["--preset", "small", "--count", "40", "--seed", "1", "--distractor-rules", "1",
                                 "--out", str(out), "--no-progress"]) == 0
    record = generator.read_record(out)
    assert record["generator"]["settings"]["num_distractor_rules"] == 1 and record["num_rulesets"] == 40
    assert xland_benchmark.main(["--count", "5", "--out", str(out), "--no-progress"]) == 1
    assert "exists" in capsys.readouterr().err
    assert sorted(tmp_path.iterdir()) == sorted([out, generator.sidecar_path(out)])  # nothing half-written


@pytest.mark.parametrize("flags, message", [
    (["--seed", "-1"], "argument --seed: -1 is out of range: a seed is a whole number from 0 to 2147483647"),  # was numpy's "expected non-negative integer" traceback
    (["--count", "0"], "--count 0: must be >= 1"),
    (["--chain-depth", "7"], "--chain-depth 7: must be in 0..3"),
    (["--prune-prob", "nan"], "--prune-prob nan: must be in [0, 1)"),
    (["--distractor-objects", "-2"], "--distractor-objects -2: must be in 0..8"),
])
def test_cli_names_a_bad_numeric_flag_before_generating(tmp_path, capsys, flags, message):
    arguments = {"--count": "5", "--seed": "0", **dict(zip(flags[::2], flags[1::2]))}
    with pytest.raises(SystemExit) as exit_info:
        xland_benchmark.main([*(item for pair in arguments.items() for item in pair),
                              "--out", str(tmp_path / "b.pkl.bz2"), "--no-progress"])
    assert exit_info.value.code != 0
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(f"mgdt-xland-benchmark: error: {message}")
    assert not any(tmp_path.iterdir())


def test_a_directory_is_named_as_one_not_as_missing(tmp_path, capsys):
    folder = tmp_path / "folder"
    folder.mkdir()
    assert xland_benchmark.main(["--count", "5", "--out", str(folder), "--force", "--no-progress"]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [f"mgdt-xland-benchmark: error: {folder}: is a directory; --out names the benchmark file to write"]
    out = tmp_path / "b.pkl.bz2"
    generator.sidecar_path(out).mkdir()  # the record's place taken by a folder
    assert xland_benchmark.main(["--count", "5", "--out", str(out), "--force", "--no-progress"]) == 1
    assert f"{generator.sidecar_path(out)}: is a directory" in capsys.readouterr().err
    assert sorted(tmp_path.iterdir()) == sorted([folder, generator.sidecar_path(out)])  # nothing written
    with pytest.raises(generator.BenchmarkError, match="folder: is a directory, not a benchmark file"):
        generator.load(folder)


def _write_with_record(path, payload):
    """`payload` pickled as xminigrid saves a benchmark, with a record of its sha256 and 20 rulesets:
    what the record's checks pass."""
    from xminigrid.benchmarks import save_bz2_pickle

    save_bz2_pickle(payload, str(path))
    generator.sidecar_path(path).write_text(json.dumps({"sha256": files.sha256(path), "num_rulesets": 20}))


class _MakesAFolder:
    """Unpickled by plain pickle, this calls os.mkdir: the trace a code-running load leaves."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        import os

        return os.mkdir, (self.path,)


def test_a_crafted_pickle_runs_no_code_and_xminigrids_own_files_still_load(tmp_path):
    import xminigrid.benchmarks

    arrays, _ = generator.generate(generator.PRESETS["small"], 20, seed=0)
    crafted, trace = tmp_path / "crafted.pkl.bz2", tmp_path / "ran"
    _write_with_record(crafted, {**arrays, "goals": _MakesAFolder(trace)})
    with pytest.raises(generator.BenchmarkError, match=r"crafted.pkl.bz2: refused: its pickle names posix.mkdir"):
        generator.load(crafted)
    assert not trace.exists()
    # xminigrid's generator (scripts/ruleset_generator.py) pickles jnp arrays, num_rules as [N, 1],
    # beside its generation_config.
    theirs = tmp_path / "xminigrid.pkl.bz2"
    _write_with_record(theirs, {
        "generation_config": {"chain_depth": 1, "prune_chain": True, "save_path": str(theirs)},
        "goals": jnp.asarray(arrays["goals"]), "rules": jnp.asarray(arrays["rules"]),
        "init_tiles": jnp.asarray(arrays["init_tiles"]),
        "num_rules": jnp.vstack([jnp.asarray(n, jnp.uint8) for n in arrays["num_rules"]])})
    benchmark, _ = generator.load(theirs)
    reference = xminigrid.benchmarks.load_benchmark_from_path(str(theirs))
    jax.tree.map(np.testing.assert_array_equal, benchmark, reference)
    np.testing.assert_array_equal(benchmark.get_ruleset(4).init_tiles, arrays["init_tiles"][4])


@pytest.mark.parametrize("key, change, message", [
    ("rules", lambda a: a[:, :, :6], "rules is uint8 [20, 4, 6]; xminigrid takes uint8 [N = 20, any, 7]"),
    ("goals", lambda a: a.astype(np.int32), "goals is int32 [20, 5]; xminigrid takes uint8 [N >= 1, 5]"),
    ("init_tiles", lambda a: a[:10], "init_tiles is uint8 [10, 6, 2]; xminigrid takes uint8 [N = 20, any, 2]"),
    ("num_rules", lambda a: a.astype(np.float32), "num_rules is float32 [20]; a benchmark holds integers"),
    ("rules", lambda a: a.tolist(), "rules is a list; xminigrid takes uint8"),
    # values xminigrid would index with silently (clamped to another goal, or NaN embeddings)
    ("goals", lambda a: _set(a, (3, 0), 255), "goals of ruleset 3 holds goal type id 255; xminigrid knows 0..14"),
    ("rules", lambda a: _set(a, (5, 1, 0), 12), "rules of ruleset 5 holds rule type id 12; xminigrid knows 0..11"),
    ("init_tiles", lambda a: _set(a, (0, 2, 0), 200), "init_tiles of ruleset 0 holds tile id 200; xminigrid knows 0..12"),
    ("init_tiles", lambda a: _set(a, (7, 0, 1), 12), "init_tiles of ruleset 7 holds colour id 12; xminigrid knows 0..11"),
])
def test_arrays_the_environment_cannot_take_are_one_line(tmp_path, key, change, message):
    from mgdt_jax.recipes.ada import xland as ada_xland

    arrays, _ = generator.generate(generator.PRESETS["small"], 20, seed=0)
    path = tmp_path / "shaped.pkl.bz2"
    _write_with_record(path, {**arrays, key: change(arrays[key])})
    with pytest.raises(generator.BenchmarkError) as error_info:
        generator.load(path)
    assert str(error_info.value).startswith(f"{path}: ") and message in str(error_info.value)
    with pytest.raises(ValueError, match="shaped.pkl.bz2: "):  # what mgdt-train reports in one line
        ada_xland.make({"benchmark": str(path), "num_trials": 2})


def _set(array, index, value):
    array = array.copy()
    array[index] = value
    return array


def _rollout(env, benchmark, num_envs, num_steps, seed=0):
    """Random actions in `num_envs` episodes of rulesets drawn from `benchmark` (as numpy)."""
    ids = jax.random.randint(jax.random.key(seed + 100), (num_envs,), 0, benchmark.num_rulesets())
    rulesets = trials.get_rulesets(benchmark, ids)

    @jax.jit
    def run(key):
        reset_key, action_key = jax.random.split(key)
        state, first = jax.vmap(env.reset)(jax.random.split(reset_key, num_envs), rulesets)

        def body(state, key):
            actions = jax.random.randint(key, (num_envs,), 0, env.num_actions)
            state, timestep = jax.vmap(env.step)(state, actions)
            return state, (timestep, state.inner.state.grid, state.inner.state.agent.position)

        _, (steps, grids, positions) = jax.lax.scan(body, state, jax.random.split(action_key, num_steps))
        return first, state.inner.state.grid, state.inner.state.agent.position, steps, grids, positions, rulesets

    return jax.tree.map(np.asarray, run(jax.random.key(seed)))


def test_trials_reset_the_world_and_the_episode_goes_on(trivial_benchmark):
    benchmark, _ = generator.load(trivial_benchmark[0])
    env = trials.TrialEnv(num_trials=3, max_steps=12)
    num_envs, num_steps = 32, 3 * 12 + 5
    first, grid0, position0, steps, grids, positions, rulesets = _rollout(env, benchmark, num_envs, num_steps)
    assert first.trial.tolist() == [0] * num_envs and first.time.tolist() == [0] * num_envs
    np.testing.assert_array_equal(steps.goal[0], rulesets.goal)  # the goal is observed
    assert set(steps._fields) == {"observation", "goal", "trial", "time", "reward", "trial_done", "episode_done"}
    trial, time = first.trial, first.time
    grid_changed_within_trial = False
    for t in range(num_steps):
        done = steps.trial_done[t]
        np.testing.assert_array_equal(steps.trial[t], np.where(done, (trial + 1) % 3, trial))
        np.testing.assert_array_equal(steps.time[t], np.where(done, 0, time + 1))
        np.testing.assert_array_equal(steps.episode_done[t], done & (trial == 2))
        assert (time[done & (steps.reward[t] == 0)] + 1 == 12).all()  # unrewarded trials end by time out
        rewarded = steps.reward[t] > 0
        assert (done[rewarded]).all()
        np.testing.assert_allclose(steps.reward[t][rewarded], 1 - 0.9 * (time[rewarded] + 1) / 12, rtol=1e-6)
        # fixed_start: every trial starts from the episode's initial world
        np.testing.assert_array_equal(grids[t][done], grid0[done])
        np.testing.assert_array_equal(positions[t][done], position0[done])
        grid_changed_within_trial |= bool((grids[t][~done] != grid0[~done]).any())
        np.testing.assert_array_equal(steps.goal[t], rulesets.goal)
        trial, time = steps.trial[t], steps.time[t]
    assert steps.trial_done.sum() >= 3 * num_envs and steps.episode_done.any(axis=0).all()
    assert (steps.reward > 0).any() and grid_changed_within_trial


def test_a_shown_trial_end_is_a_step_of_its_own_then_the_world_restarts(trivial_benchmark):
    benchmark, _ = generator.load(trivial_benchmark[0])
    env = trials.TrialEnv(num_trials=3, max_steps=12, show_trial_end=True)
    assert env.episode_length == 3 * 13
    num_envs, num_steps = 32, 3 * 13 + 5
    first, grid0, position0, steps, grids, positions, _ = _rollout(env, benchmark, num_envs, num_steps)
    trial, time, shown = first.trial, first.time, np.zeros(num_envs, bool)
    for t in range(num_steps):
        done = steps.trial_done[t]
        assert not (done & shown).any()  # the step after a shown end only restarts
        # a shown end keeps the finished trial's index and last view; the next step restarts at time 0, reward 0
        np.testing.assert_array_equal(steps.trial[t], np.where(shown, (trial + 1) % 3, trial))
        np.testing.assert_array_equal(steps.time[t], np.where(shown, 0, time + 1))
        np.testing.assert_array_equal(steps.episode_done[t], done & (trial == 2))
        assert (steps.reward[t][shown] == 0).all() and ((steps.reward[t] > 0) <= done).all()
        np.testing.assert_array_equal(grids[t][shown], grid0[shown])
        np.testing.assert_array_equal(positions[t][shown], position0[shown])
        rewarded = steps.reward[t] > 0  # the rewarded view is not the start's (the agent moved or picked up)
        assert ((grids[t][rewarded] != grid0[rewarded]).any(axis=(1, 2, 3))
                | (positions[t][rewarded] != position0[rewarded]).any(axis=1)).all()
        trial, time, shown = steps.trial[t], steps.time[t], done
    assert steps.trial_done.sum() >= 2 * num_envs and (steps.reward > 0).any()


def test_without_fixed_start_trials_start_from_new_worlds(trivial_benchmark):
    benchmark, _ = generator.load(trivial_benchmark[0])
    env = trials.TrialEnv(num_trials=2, max_steps=4, fixed_start=False)
    _, grid0, _, steps, grids, _, _ = _rollout(env, benchmark, 8, 4, seed=1)
    timed_out = steps.trial_done[3] & (steps.reward[3] == 0)
    assert timed_out.any() and (grids[3][timed_out] != grid0[timed_out]).any()


def test_trial_env_settings_are_checked():
    with pytest.raises(ValueError, match="num_trials"):
        trials.TrialEnv(num_trials=0)
    env = trials.TrialEnv(num_trials=4)
    assert env.trial_length == 243 and env.episode_length == 4 * 243 and env.observation_shape == (5, 5, 2)
    with pytest.raises(ValueError, match="unknown"):
        trials.TrialEnv(env_id="XLand-MiniGrid-R1-1x1").num_actions


@pytest.mark.parametrize("show_trial_end", [False, True])
def test_the_ada_recipe_sees_the_trials_of_a_task_as_one_meta_episode(trivial_benchmark, show_trial_end):
    from xminigrid.core.goals import NUM_GOALS

    from mgdt_jax.recipes.ada import xland as ada_xland
    from mgdt_jax.recipes.ada.recipe import AdaRecipe

    path, record = trivial_benchmark
    env_config = {"factory": "mgdt_jax.recipes.ada.xland:make", "benchmark": str(path), "num_trials": 2, "max_steps": 4,
                  "show_trial_end": show_trial_end}
    recipe = AdaRecipe({"env": env_config, "model": {"observation": "grid"}, "train": {"batch_size": 8}})
    env, tasks = recipe.env, recipe.tasks
    assert recipe.shapes.grid_shape == (5, 5, 2) and recipe.shapes.num_actions == 6
    assert recipe.shapes.extras_size == 2 + 1 + NUM_GOALS + 2 * (13 + 12)  # trial, time, goal
    assert env.describe()["benchmark_id"] == record["benchmark_id"]
    num_envs, num_steps = 8, 2 * (4 + show_trial_end)
    assert env.episode_length == num_steps and env.describe()["show_trial_end"] is show_trial_end

    @jax.jit
    def run(key):
        sample_key, reset_key, action_key = jax.random.split(key, 3)
        _, rulesets = jax.vmap(tasks.sample, in_axes=(None, 0))(tasks.init(key), jax.random.split(sample_key, num_envs))
        state, first = jax.vmap(env.reset)(jax.random.split(reset_key, num_envs), rulesets)

        def body(state, key):
            state, timestep = jax.vmap(env.step)(state, jax.random.randint(key, (num_envs,), 0, env.num_actions))
            return state, timestep

        _, steps = jax.lax.scan(body, state, jax.random.split(action_key, num_steps))
        return first, steps, rulesets.goal

    first, steps, goals = jax.tree.map(np.asarray, run(jax.random.key(0)))
    assert first.observation.dtype == np.int32 and first.observation.shape == (num_envs, 5, 5, 2)
    assert not first.done.any() and (first.trial == 0).all()
    goal = steps.extras["goal"][0]
    np.testing.assert_array_equal(goal[:, :NUM_GOALS].argmax(-1), goals[:, 0])  # the goal is observed, one-hot
    np.testing.assert_array_equal(goal[:, NUM_GOALS:NUM_GOALS + 13].argmax(-1), goals[:, 1])
    observed_trial = steps.extras["trial"].argmax(-1)  # the trial the next observation belongs to
    # A step's reward belongs to the trial it was taken in: the previous one when the step ended a
    # trial, unless the end is a step of its own (the observation still the finished trial's).
    previous_trial = np.concatenate([np.zeros((1, num_envs), np.int64), observed_trial[:-1]])
    np.testing.assert_array_equal(steps.trial, observed_trial if show_trial_end else previous_trial)
    # Trials end by the goal or after 4 steps (5 with the end shown); the meta-episode ends with the second.
    assert steps.done.any(axis=0).all() and (steps.trial[steps.done] == 1).all()
    # observe_goal=False (XLand-MiniGrid's RL² baselines): the goal features are zeros.
    hidden_env, hidden_tasks = ada_xland.make({**env_config, "observe_goal": False})
    _, ruleset = hidden_tasks.sample(hidden_tasks.init(jax.random.key(1)), jax.random.key(2))
    _, hidden = hidden_env.reset(jax.random.key(3), ruleset)
    assert hidden.extras["goal"].shape == goal.shape[1:] and not np.asarray(hidden.extras["goal"]).any()
    assert hidden_env.describe()["observe_goal"] is False
    # time_onehot: the time within the trial one-hot over its steps (0..max_steps), where it was a fraction.
    onehot_env, _ = ada_xland.make({**env_config, "time_onehot": True})
    state, start = onehot_env.reset(jax.random.key(3), ruleset)
    _, after = onehot_env.step(state, jnp.int32(trials.NOOP_ACTION))
    assert start.extras["time"].shape == (4 + 1,) and onehot_env.describe()["time_onehot"] is True
    np.testing.assert_array_equal(np.asarray(start.extras["time"]), np.eye(5)[0])
    np.testing.assert_array_equal(np.asarray(after.extras["time"]), np.eye(5)[1])
    assert hidden.extras["time"].shape == (1,)
    with pytest.raises(ValueError, match="env.benchmark: give a benchmark file"):
        ada_xland.make({"factory": env_config["factory"]})
    with pytest.raises(ValueError, match="no such benchmark file"):
        ada_xland.make({**env_config, "benchmark": str(path) + ".missing"})


def test_held_out_rulesets_are_never_drawn_and_plr_learns_from_finished_episodes(trivial_benchmark):
    from mgdt_jax.recipes.ada import xland as ada_xland

    path, _ = trivial_benchmark
    env_config = {"benchmark": str(path), "num_trials": 2, "max_steps": 4, "heldout_fraction": 0.25, "split_seed": 3}
    train_ids, heldout_ids = generator.task_split(32, 0.25, 3)
    keys = jax.random.split(jax.random.key(0), 400)
    _, uniform = ada_xland.make({**env_config, "curriculum": "uniform"})
    _, plr = ada_xland.make({**env_config, "curriculum": "plr", "curriculum_settings": {"margin": 0.1}})
    state = plr.init(jax.random.key(1))
    for tasks, tasks_state in ((uniform, uniform.init(jax.random.key(1))), (plr, state)):
        np.testing.assert_array_equal(tasks.heldout_ids, heldout_ids)
        drawn, _ = jax.vmap(tasks.sample, in_axes=(None, 0))(tasks_state, keys)
        assert set(np.asarray(drawn).tolist()) == set(train_ids.tolist())  # all of them, nothing held out
    # The no-op policy (toggle) fires no goal of our generator: it scores 0 on every task.
    noop = np.asarray(state.noop_scores)
    assert noop.shape == (32,) and not noop.any()
    tasks = plr
    # Two finished meta-episodes (2 trials each) and one step that ends nothing.
    a, b = int(train_ids[0]), int(train_ids[1])
    trajectory = {"task_id": jnp.array([[a, b, a]]), "done": jnp.array([[True, True, False]]),
                  "episode_return": jnp.array([[1.2, 0.1, 5.0]])}
    state = tasks.update(state, trajectory)
    np.testing.assert_allclose(np.asarray(state.scores)[[a, b]], [0.6, 0.05], atol=1e-6)  # mean per trial
    assert np.asarray(state.admitted)[a] and not np.asarray(state.admitted)[b]  # 0.05 is within the 0.1 margin
    assert int(state.step) == 1 and int(state.seen.sum()) == 2
    with pytest.raises(ValueError, match="env.curriculum 'nope' is not one of"):
        ada_xland.make({**env_config, "curriculum": "nope"})
    with pytest.raises(ValueError, match=r"^env.split_seed -1: a seed is a whole number from 0 to 2147483647$"):
        ada_xland.make({**env_config, "heldout_fraction": 0.2, "split_seed": -1})
    with pytest.raises(ValueError, match="env.curriculum_settings: .*unexpected keyword argument 'tempo'"):
        ada_xland.make({**env_config, "curriculum": "plr", "curriculum_settings": {"tempo": 1.0}})


@pytest.mark.slow  # trains two steps
def test_an_ada_run_on_xland_resumes_exactly_and_its_evaluation_refuses_a_regenerated_benchmark(tmp_path, capsys):
    """xminigrid's states carry typed PRNG keys; the checkpoint stores their data and wraps them back.
    The benchmark regenerated in place afterwards (other rulesets under the same ids) is refused."""
    from experiments import ada_claims
    from mgdt_jax.cli import ada_eval
    from mgdt_jax.core import checkpointing, loop
    from mgdt_jax.recipes.ada import env as ada_env

    path = tmp_path / "b.pkl.bz2"  # the run's own: the test rewrites it
    trained_on = _write_benchmark(path, count=32)
    scale = ada_claims.Scale(rulesets=32, num_envs=8, rollout_length=4, train_steps=2, teacher_steps=0,
                             eval_episodes=1, num_minibatches=2)
    task = ada_claims.TaskSetting(trial_steps=3)
    config = ada_claims.run_config("gru", path, scale, steps=2, task=task)
    config.train.checkpoint_every = 1
    config.train.keep_checkpoints = 2
    loop.train(config, tmp_path / "straight")
    # The run as a kill after checkpoint 1 leaves it, resumed.
    shutil.copytree(tmp_path / "straight", tmp_path / "resumed")
    shutil.rmtree(tmp_path / "resumed" / checkpointing.CHECKPOINTS / "2")
    assert loop.train(config, tmp_path / "resumed").first_step == 1
    straight, resumed = (checkpointing.load_checkpoint(tmp_path / name, step=2)[0] for name in ("straight", "resumed"))
    jax.tree.map(np.testing.assert_array_equal, straight, resumed)

    argv = ["--count", "32", "--seed", "1", "--out", str(path), "--force", "--no-progress"]
    assert xland_benchmark.main(argv) == 0
    now = generator.read_record(path)["sha256"]
    capsys.readouterr()
    run = tmp_path / "straight"
    assert ada_eval.main(["--workdir", str(run), "--out", str(tmp_path / "report")]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"mgdt-ada-eval: error: {path}: sha256 {now[:12]}")
    assert f"{trained_on['sha256'][:12]}..., the benchmark {run} step 2 trained on" in lines[0]
    assert not (tmp_path / "report").exists()
    # Nor does training go on with it: the environment states and the curriculum hold the old rulesets.
    config.train.num_steps = 3
    with pytest.raises(ValueError, match=f"^{path}: sha256 {now[:12]}.*the benchmark {run / checkpointing.CHECKPOINTS}/2 "
                                         "trained on .*; its environments and curriculum hold the other's rulesets"):
        loop.train(config, run)
    assert checkpointing.Checkpointer(run, save_every=1, keep=2).latest_step() == 2

    class Env:  # the check alone: the same file, or nothing recorded, passes
        def describe(self):
            return {"benchmark_sha256": now}

    for position in ({"env": {"benchmark_sha256": now}}, {"recipe": "ada"}):
        ada_env.check_same_benchmark(Env(), position, benchmark=path, checkpoint="run", why="")
