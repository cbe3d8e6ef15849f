"""The sections of benchmarks/gpu_check.py: one function each, run one per process.

    python benchmarks/gpu_check_sections.py SECTION --result FILE --deadline UNIX_TIME [--dry-run]

A section function takes a `Run`: it reads its sizes from ``run.scale`` (full, or toy for
``--dry-run``), records figures as it measures them (``run.record``, written to the result file at
once, so a section stopped at its budget keeps what it had) and stops its timed loops when
``run.left()`` runs short. It raises `SectionSkipped` when it cannot run here (a missing package),
with the reason. Adding a recipe's check is one function here, registered in ``SECTION_FUNCTIONS``
under the name of its entry in gpu_check.py's ``SECTIONS``.

Only jax, flax, optax and numpy are needed, and the experiment configs are read without
ml_collections (experiments/common.py), so this runs on a bare accelerator machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from benchmarks import trace_summary
from benchmarks.train import synthetic_batch
from data_pipelines import replay_logs
from experiments import mgdt_1b, mgdt_200m, tiny
from mgdt_jax.core.files import path_argument
from mgdt_jax.envs import atari
from mgdt_jax.core import sharding
from mgdt_jax.recipes.mgdt.model import MultiGameDecisionTransformer
from mgdt_jax.recipes.mgdt.policy import Policy, sampling_preset
from mgdt_jax.recipes.mgdt import flops as mgdt_flops
from mgdt_jax.core import flops
from mgdt_jax.core.train_step import Trainer


@dataclasses.dataclass(frozen=True)
class Scale:
    """Every size a section uses: `FULL` on the accelerator, `TOY` for the dry run."""

    toy_model: Mapping[str, Any] | None  # overrides of every model's size fields (None: the real sizes)
    matmul_sizes: tuple[int, ...]
    probe_batch: int  # 200M: the batch compiled first, whose memory use predicts the largest that fits
    batch_granule: int  # the fitted batch is a multiple of this
    fit_compiles: int  # compiles after the probe's, each at the batch the steps so far predict
    batch_1b: int
    assumed_memory_bytes: int | None  # used where the device reports no memory limit (CPUs)
    warmup_steps: int
    max_timed_steps: int
    timed_s: float
    policy_envs: tuple[int, ...]
    policy_max_steps: int
    policy_timed_s: float
    actor_envs: int  # Breakout environments of the actor loop, two halves
    actor_steps: int  # agent steps per timed run
    actor_repeats: int  # alternating runs of the loop and its two parts
    pipeline_games: tuple[str, ...]
    pipeline_episodes_per_game: int
    pipeline_steps_per_episode: int
    pipeline_batch: int
    pipeline_batches_per_worker: int  # timed batches: enough for every worker to deliver several
    pipeline_timed_s: float
    jat_num_steps: int  # steps per row, two tokens each
    jat_groups: tuple[str, ...]  # the modality groups built and timed
    jat_batch: int
    jat_group_timed_s: float  # timed seconds per modality group
    ada_envs: int
    ada_agent: Mapping[str, Any]  # model fields over experiments/ada_tiny.py's
    ada_ppo: Mapping[str, Any]  # ppo fields over experiments/ada_tiny.py's
    ada_env: str  # "xland" (arm recall where xminigrid does not import) or "arm_recall"
    ada_timed_s: float


FULL = Scale(
    toy_model=None, matmul_sizes=(8192, 16384), probe_batch=64, batch_granule=64, fit_compiles=3, batch_1b=256,
    assumed_memory_bytes=None, warmup_steps=2, max_timed_steps=20, timed_s=15.0,
    policy_envs=(64, 256, 1024), policy_max_steps=50, policy_timed_s=4.0,
    actor_envs=64, actor_steps=60, actor_repeats=3,
    pipeline_games=("Pong", "Breakout"), pipeline_episodes_per_game=4, pipeline_steps_per_episode=10_000,
    pipeline_batch=64, pipeline_batches_per_worker=2, pipeline_timed_s=15.0,
    # JAT: the released model's 512 positions are 256 steps; 40 rows is one device's share of the released
    # run's optimizer step (20 per device x 2 accumulation steps, 8 GPUs: 320 rows).
    jat_num_steps=256, jat_groups=("discrete", "continuous", "image"), jat_batch=40, jat_group_timed_s=4.0,
    ada_envs=8192,
    ada_agent={"agent": "trxl", "num_layers": 4, "d_model": 256, "num_heads": 4, "memory_length": 64, "head_hidden": 256},
    ada_ppo={"rollout_length": 16, "num_epochs": 1, "num_minibatches": 4},  # PPOConfig's rollout and epochs
    ada_env="xland", ada_timed_s=5.0,
)
TOY = Scale(
    toy_model={"num_layers": 1, "d_model": 64, "num_heads": 1}, matmul_sizes=(256,), probe_batch=2,
    batch_granule=2, fit_compiles=1, batch_1b=2, assumed_memory_bytes=64 << 20, warmup_steps=1, max_timed_steps=2, timed_s=2.0,
    policy_envs=(2,), policy_max_steps=2, policy_timed_s=1.0,
    actor_envs=2, actor_steps=3, actor_repeats=1,
    pipeline_games=("Pong", "Breakout"), pipeline_episodes_per_game=1, pipeline_steps_per_episode=200,
    pipeline_batch=8, pipeline_batches_per_worker=2, pipeline_timed_s=2.0,
    # No image group: its convolutions take ~6 s more to compile and initialise on a CPU.
    jat_num_steps=8, jat_groups=("discrete", "continuous"), jat_batch=2, jat_group_timed_s=1.0,
    ada_envs=8, ada_agent={"agent": "trxl"}, ada_ppo={"rollout_length": 4, "num_epochs": 1, "num_minibatches": 1},
    ada_env="arm_recall", ada_timed_s=1.0,
)
TRACED_STEPS = 3  # profiled after the timed ones (benchmarks/trace_summary.py)
FIT_FRACTION = 0.9  # of the device's memory limit a predicted batch may use (allocator slack)
OUT_OF_MEMORY = "RESOURCE_EXHAUSTED"


class SectionSkipped(Exception):
    """The section cannot run here; the message says why."""


class SectionStopped(BaseException):
    """gpu_check.py's SIGTERM (budget spent, or Ctrl-C there): unwinds the section, so that its
    temporary folders are removed; not an Exception, so no section's handler takes it for a fault."""


def _stop(signum: int, frame: Any) -> None:
    raise SectionStopped


class Run:
    """One section's process: its sizes, its deadline and its figures (written as they come)."""

    def __init__(self, name: str, result_path: Path, deadline: float, dry_run: bool):
        self.name = name
        self.scale = TOY if dry_run else FULL
        self._path = result_path
        self._deadline = deadline
        self._result: dict[str, Any] = {"status": "running", "figures": {}, "notes": []}
        self._write()

    def left(self) -> float:
        """Seconds until this section must have stopped."""
        return self._deadline - time.time()

    def record(self, **figures: Any) -> None:
        self._result["figures"].update(figures)
        self._write()

    def note(self, text: str) -> None:
        """A fact about how the figures were taken (a fallback, a shortened loop)."""
        self.log(text)
        self._result["notes"].append(text)
        self._write()

    def log(self, text: str) -> None:
        print(f"[{self.name}] {text}", flush=True)

    def finish(self, status: str, reason: str | None = None) -> None:
        environment: dict[str, Any] = {"jax": jax.__version__}
        try:
            environment.update(backend=jax.default_backend(), device_kind=jax.devices()[0].device_kind,
                               device_count=jax.device_count())
        except RuntimeError as error:  # no backend could start: the reason is the figure
            environment["backend_error"] = str(error)
        self._result.update(status=status, environment=environment)
        if reason:
            self._result["reason"] = reason
        self._write()

    def _write(self) -> None:
        partial = self._path.with_name(self._path.name + ".partial")
        partial.write_text(json.dumps(self._result, indent=2, default=float))
        os.replace(partial, self._path)  # the parent never reads a half-written file


def model_config(experiment: ModuleType, run: Run) -> Any:
    """The experiment's config, its model shrunk to toy size for the dry run."""
    config = experiment.get_config()
    for field, value in (run.scale.toy_model or {}).items():
        setattr(config.model, field, value)
    return config


# ---------------------------------------------------------------------------------------------
# matmul_peak


def matmul_peak_section(run: Run) -> None:
    device = jax.devices()[0]
    run.record(device_kind=device.device_kind, datasheet_flops=flops.peak_flops_per_device(device, "bfloat16"))
    per_size = {}
    for size in run.scale.matmul_sizes:
        per_size[str(size)] = flops.matmul_peak(jnp.bfloat16, size, reps=10)
        run.log(f"bf16 matmul {size}^3: {per_size[str(size)] / 1e12:,.1f} TFLOP/s (best of 10)")
        run.record(per_size_flops=per_size, measured_flops=max(per_size.values()))


# ---------------------------------------------------------------------------------------------
# train_200m, train_1b


def device_memory_limit(run: Run) -> tuple[int | None, bool]:
    """(bytes the allocator may hold on device 0, whether the device reported it)."""
    stats = jax.devices()[0].memory_stats() or {}
    if stats.get("bytes_limit"):
        return int(stats["bytes_limit"]), True
    return run.scale.assumed_memory_bytes, False


def step_bytes(compiled: jax.stages.Compiled) -> int | None:
    """Device bytes one step holds at its peak by XLA's buffer assignment: inputs, outputs, temporaries."""
    memory = compiled.memory_analysis()
    if memory is None:
        return None
    return (memory.argument_size_in_bytes + memory.output_size_in_bytes - memory.alias_size_in_bytes
            + memory.temp_size_in_bytes)


def abstract_batch(trainer: Trainer, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
    example = synthetic_batch(1, trainer.recipe.model_config.num_steps)
    return {key: jax.ShapeDtypeStruct((batch_size, *value.shape[1:]), value.dtype) for key, value in example.items()}


def compile_step(trainer: Trainer, batch_size: int, run: Run) -> tuple[jax.stages.Compiled, float]:
    start = time.perf_counter()
    compiled = trainer.lower_step(abstract_batch(trainer, batch_size)).compile()
    seconds = time.perf_counter() - start
    run.log(f"compiled the step at batch {batch_size} in {seconds:.1f} s; XLA's peak "
            f"{(step_bytes(compiled) or 0) / 2**30:,.2f} GiB")
    return compiled, seconds


def timed_steps(step: Callable, state: Any, batch: Any, run: Run,
                seconds: float | None = None) -> tuple[Any, dict[str, float]]:
    """Warm-up steps, then steps timed with one always queued behind the one running.

    Stops after ``max_timed_steps``, ``seconds`` (default ``timed_s``) or when the section's time
    runs short.
    """
    scale = run.scale
    seconds = scale.timed_s if seconds is None else seconds
    warmup_start = time.perf_counter()
    for _ in range(scale.warmup_steps):
        state, metrics = step(state, batch)
        first_loss = float(metrics["loss"])
    step_estimate = (time.perf_counter() - warmup_start) / scale.warmup_steps
    start = time.perf_counter()
    pending, done = None, 0
    while done < scale.max_timed_steps and time.perf_counter() - start < seconds and run.left() > 2 * step_estimate:
        state, metrics = step(state, batch)
        if pending is not None:
            float(pending["loss"])  # waits for the previous step only
        pending, done = metrics, done + 1
    if pending is None:
        raise SectionSkipped(f"no time left to time a step (one takes ~{step_estimate:.1f} s)")
    last_loss = float(pending["loss"])
    elapsed = time.perf_counter() - start
    return state, {"timed_steps": done, "step_s": elapsed / done, "loss_first": first_loss, "loss_last": last_loss}


def predict_batch(points: list[tuple[int, int]], state_bytes: int, budget_bytes: float, granule: int) -> int:
    """The largest batch (a multiple of ``granule``) whose step is predicted to need <= ``budget_bytes``.

    ``points`` are (batch, step bytes) of compiled steps. From one point, every byte beyond the
    state counts as per-window (fixed temporaries too), so the prediction errs small; from two or
    more, the line through the two largest batches (activation memory grows linearly with it).
    """
    if len(points) == 1:
        (batch, total), = points
        slope, intercept = max(total - state_bytes, 1) / batch, state_bytes
    else:
        (batch_a, total_a), (batch_b, total_b) = sorted(points)[-2:]
        slope = max(total_b - total_a, 1) / (batch_b - batch_a)
        intercept = total_b - slope * batch_b
    return max(int((budget_bytes - intercept) / slope) // granule * granule, 0)


def train_section(run: Run, experiment: ModuleType, fit: bool) -> None:
    """One experiment config's training step: throughput, FLOP/s and device memory.

    With ``fit`` the batch is the largest that fits within `FIT_FRACTION` of the device's memory
    (capped at the config's batch): a probe batch is compiled, the largest batch its memory predicts
    is compiled next, and the prediction refined from the compiled steps while time allows.
    Otherwise the batch is ``scale.batch_1b``, halved while XLA says it does not fit.
    """
    config = model_config(experiment, run)
    config.train.num_steps = 1_000_000  # only the learning-rate schedule reads it
    mesh = sharding.make_mesh(config.mesh)
    trainer = Trainer(config, mesh)
    model = trainer.recipe.model_config
    granule = run.scale.batch_granule
    run.record(num_layers=model.num_layers, d_model=model.d_model, dtype=model.dtype, remat=model.remat,
               optimizer=config.optimizer.name, mesh=dict(zip(mesh.axis_names, mesh.devices.shape)),
               batch_cap=config.train.batch_size)
    start = time.perf_counter()
    state = trainer.init(seed=0)
    jax.block_until_ready(state)
    state_bytes = sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(trainer.abstract_state))
    limit, reported = device_memory_limit(run)
    budget = FIT_FRACTION * limit if limit else None
    run.record(params=sum(leaf.size for leaf in jax.tree.leaves(state.params)), init_s=time.perf_counter() - start,
               state_bytes=state_bytes, memory_limit_bytes=limit, memory_limit_reported=reported)
    if not reported:
        run.note(f"the device reports no memory limit; batch predictions assume {limit} bytes")

    compiled: dict[int, jax.stages.Compiled] = {}
    points: list[tuple[int, int]] = []  # (batch, XLA's step bytes)
    compile_seconds: dict[str, float] = {}

    def try_compile(batch_size: int) -> bool:
        """Compiles the step for this batch; False if XLA runs out of memory doing so."""
        try:
            compiled[batch_size], compile_seconds[str(batch_size)] = compile_step(trainer, batch_size, run)
        except Exception as error:
            if OUT_OF_MEMORY not in str(error):
                raise
            run.note(f"batch {batch_size} does not fit (out of memory while compiling)")
            return False
        if (total := step_bytes(compiled[batch_size])) is not None:
            points.append((batch_size, total))
        run.record(compile_s=compile_seconds, step_bytes_by_batch={str(b): t for b, t in points})
        return True

    def fits(batch_size: int) -> bool:
        total = dict(points).get(batch_size)
        return batch_size in compiled and (budget is None or total is None or total <= budget)

    batch_size = run.scale.probe_batch if fit else run.scale.batch_1b
    while not (try_compile(batch_size) and (fit or fits(batch_size))):
        if batch_size == 1:
            raise RuntimeError("the step does not fit even at batch 1")
        compiled.pop(batch_size, None)
        batch_size //= 2
    first_compile_s = compile_seconds[str(batch_size)]
    if fit:
        run.record(probe_batch=batch_size)
    if budget and points:
        run.record(predicted_max_batch=predict_batch(points, state_bytes, budget, granule))
    if fit and budget and points:
        tried = set(compiled)
        for _ in range(run.scale.fit_compiles):  # the first prediction errs small; two points pin the line
            target = min(predict_batch(points, state_bytes, budget, granule), config.train.batch_size)
            if target in tried or target <= max(b for b in compiled if fits(b)):
                break
            if run.left() < 2 * first_compile_s + 30:
                run.note(f"no time to compile batch {target} (a compile takes ~{first_compile_s:.0f} s)")
                break
            tried.add(target)
            try_compile(target)
        run.record(predicted_max_batch=predict_batch(points, state_bytes, budget, granule))

    runnable = sorted((b for b in compiled if fits(b)), reverse=True) or [min(compiled)]
    for batch_size in runnable:
        batch = trainer.shard_batch(synthetic_batch(batch_size, model.num_steps))
        try:
            state, timing = timed_steps(compiled[batch_size], state, batch, run)
        except Exception as error:
            if OUT_OF_MEMORY not in str(error):
                raise
            run.note(f"batch {batch_size} does not fit (out of memory while running)")
            state = trainer.init(seed=0)  # the failed step may have consumed the donated state
            continue
        step_flops = mgdt_flops.training_flops(model, batch_size)
        stats = jax.devices()[0].memory_stats() or {}
        steps_per_s = 1.0 / timing["step_s"]
        per_device_flops = steps_per_s * step_flops.total / jax.device_count()
        run.record(
            batch=batch_size, tokens_per_step=step_flops.tokens, flops_per_step=step_flops.total,
            xla_flops_per_step=flops.compiled_flops(compiled[batch_size]),
            xla_step_bytes=dict(points).get(batch_size), **timing,
            tokens_per_s=steps_per_s * step_flops.tokens, windows_per_s=steps_per_s * batch_size,
            flops_per_s=per_device_flops,
            peak_bytes_in_use=stats.get("peak_bytes_in_use"), bytes_limit=stats.get("bytes_limit"))
        run.log(f"batch {batch_size}: {steps_per_s * step_flops.tokens:,.0f} tokens/s, step {timing['step_s']:.3f} s, "
                f"{per_device_flops / 1e12:,.1f} TFLOP/s per device, loss {timing['loss_first']:.3f} -> "
                f"{timing['loss_last']:.3f}")
        if not np.isfinite(timing["loss_last"]):
            raise RuntimeError(f"the loss is {timing['loss_last']} after {timing['timed_steps']} steps")
        if fit and run.left() > 10 * timing["step_s"] + 10:  # the MFU goal's section: where its time goes
            try:
                state, trace = trace_summary.traced_steps(compiled[batch_size], state, batch, TRACED_STEPS)
            except Exception as error:  # the figures above stand without it
                run.note(f"no trace: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}")
                return
            run.record(trace=trace)
            run.log(f"trace of {TRACED_STEPS} steps ({trace['source']}): busy {trace['busy_s_per_step']:.3f} s a step "
                    f"of {trace['wall_s_per_step']:.3f} s; matmul kernels {trace['matmul_share']:.0%} of it; top: "
                    + "; ".join(f"{op['share']:.0%} {op['name'][:60]}" for op in trace["top"][:5]))
        return
    raise RuntimeError(f"no compiled batch ({sorted(compiled)}) could run")


def train_200m(run: Run) -> None:
    train_section(run, mgdt_200m, fit=True)


def train_1b(run: Run) -> None:
    train_section(run, mgdt_1b, fit=False)


# ---------------------------------------------------------------------------------------------
# policy


def policy_rate(policy: Policy, envs: int, run: Run) -> dict[str, float]:
    """Env steps/s of `Policy.act` on synthetic frames, as the actor calls it: frames uploaded from
    the host every step and actions read back (no emulator, no overlapping halves)."""
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (4, envs, 84, 84, 1), dtype=np.uint8)
    starts = np.ones(envs, bool)
    no_starts = np.zeros(envs, bool)
    rewards = np.zeros(envs, np.int32)
    key = jax.random.key(0)
    context = policy.initial_context(envs)
    start = time.perf_counter()
    actions, context = policy.act(context, frames[0], starts, rewards, key)  # compiles
    np.asarray(actions)
    compile_s = time.perf_counter() - start
    actions, context = policy.act(context, frames[1], no_starts, rewards, jax.random.fold_in(key, 1))
    np.asarray(actions)
    steps, start = 0, time.perf_counter()
    while steps < run.scale.policy_max_steps and time.perf_counter() - start < run.scale.policy_timed_s and run.left() > 5:
        actions, context = policy.act(context, frames[steps % 4], no_starts, rewards, jax.random.fold_in(key, steps + 2))
        np.asarray(actions)
        steps += 1
    if not steps:
        raise SectionSkipped("no time left to time a policy step")
    elapsed = time.perf_counter() - start
    return {"envs": envs, "env_steps_per_s": envs * steps / elapsed, "agent_steps": steps,
            "step_s": elapsed / steps, "compile_s": compile_s}


def policy(run: Run) -> None:
    rates = []
    for name, experiment in (("200m", mgdt_200m), ("tiny", tiny)):
        config = model_config(experiment, run)
        model = MultiGameDecisionTransformer(config.model, rngs=nnx.Rngs(0))
        sampler = Policy(model, sampling_preset("expert"))
        params = sum(leaf.size for leaf in jax.tree.leaves(nnx.state(model)))
        for envs in run.scale.policy_envs:
            if run.left() < 15:
                run.note(f"no time left for {name} at {envs} envs")
                break
            rate = {"model": name, "params": params, "dtype": config.model.dtype, **policy_rate(sampler, envs, run)}
            rates.append(rate)
            run.record(rates=rates)
            run.log(f"{name} x {envs} envs: {rate['env_steps_per_s']:,.0f} env steps/s "
                    f"({rate['step_s'] * 1e3:.1f} ms per step; compiled in {rate['compile_s']:.1f} s)")


# ---------------------------------------------------------------------------------------------
# actor


def actor_loop(run: Run) -> None:
    """benchmarks/actor.py's figure 1 with DT-200M (its config's dtype): the actor loop playing
    Breakout against the policy alone and the environments alone, alternating runs, each recorded
    as it ends. Needs ale-py, gymnasium and cv2 (gpu_check.py skips the section without them)."""
    try:
        from benchmarks import actor as actor_benchmark  # imports the emulator
    except ModuleNotFoundError as error:  # where gpu_check.py's look-up was fooled (a stub, a broken install)
        raise SectionSkipped(f"the actor loop cannot run here: {error}") from None

    config = model_config(mgdt_200m, run)
    model = MultiGameDecisionTransformer(config.model, rngs=nnx.Rngs(0))
    policy = Policy(model, sampling_preset("expert"))
    game, envs, steps = "Breakout", run.scale.actor_envs, run.scale.actor_steps
    cores = actor_benchmark.default_cores()
    start = time.perf_counter()
    actor_benchmark.warm_up(policy, [game], envs)
    run.record(model="200m", dtype=config.model.dtype, game=game, envs=envs, steps=steps, cores=cores,
               warm_up_s=time.perf_counter() - start)
    runs = []
    for _ in range(run.scale.actor_repeats):
        figures, _ = actor_benchmark.policy_overhead(policy, game, envs, steps, repeats=1, cores=cores)
        runs.append(figures)
        run.record(runs=runs, **{key: float(np.median([r[key] for r in runs])) for key in figures if key != "cores"})
        run.log(f"run {len(runs)}: loop {figures['actor_env_steps_per_s']:,.0f}, policy alone "
                f"{figures['policy_alone_env_steps_per_s']:,.0f}, environments alone {figures['raw_env_steps_per_s']:,.0f} "
                f"env steps/s: {figures['actor_over_slower_part']:.0%} of the slower part")


# ---------------------------------------------------------------------------------------------
# input_pipeline


@dataclasses.dataclass(frozen=True)
class PipelineReader:
    """The input pipeline under test, as two functions.

    ``convert(logs_dir, out_dir) -> dataset_dir`` turns DQN-Replay-format logs into its dataset;
    ``batches(dataset_dir, batch_size, workers)`` yields batches of the batch
    contract, read by ``workers`` processes. Close the iterator (if it has ``close``) when done.
    """

    name: str
    convert: Callable[[Path, Path], Path]
    batches: Callable[[Path, int, int], Iterator[dict[str, np.ndarray]]]


def pipeline_reader() -> PipelineReader:
    """The MGDT input pipeline, or `SectionSkipped` naming what it lacks here.

    To measure another reader, return it from here: the section needs nothing else.
    """
    try:
        from absl import flags

        from data_pipelines import convert
        from mgdt_jax.recipes.mgdt.pipeline import TrainingData
        from mgdt_jax.recipes.mgdt.step_store import open_index
    except ImportError as error:
        raise SectionSkipped(f"the MGDT input pipeline cannot run here: {error}") from None
    flags.FLAGS.mark_as_parsed()  # Grain's worker processes read absl flags

    def convert_logs(logs_dir: Path, out_dir: Path) -> Path:
        convert.convert(logs_dir, out_dir, progress=False)
        return out_dir

    def batches(dataset: Path, batch_size: int, workers: int) -> Iterator[dict[str, np.ndarray]]:
        data = TrainingData([open_index(dataset)], global_batch_size=batch_size, num_steps=4, seed=0,
                            num_threads=1, num_workers=workers)
        return data.iterate(0)

    return PipelineReader("mgdt_jax.recipes.mgdt.pipeline.TrainingData over the window index (worker processes)",
                          convert_logs, batches)


def write_synthetic_logs(root: Path, games: tuple[str, ...], episodes_per_game: int, steps_per_episode: int) -> Path:
    """DQN-Replay-format logs of complete synthetic episodes: root/<Game>/1/replay_logs/.

    Frames are horizontal grey bands (one random shade per band and episode) with a 4x4 white block
    moving across them: about as compressible as Atari frames, unlike noise. Actions are uniform
    over the game's minimal set, rewards 1 with probability 1%.
    """
    rng = np.random.default_rng(0)
    steps = np.arange(steps_per_episode)
    for game in games:
        actions = len(atari.minimal_to_full(game))
        capacity = episodes_per_game * (steps_per_episode + replay_logs.PADDING_ROWS) + 2  # one dump: the final
        buffer = replay_logs.LoggedReplayBuffer(root / game / "1" / "replay_logs", capacity)
        for _ in range(episodes_per_game):
            bands = np.repeat(rng.integers(0, 256, (12, 1), dtype=np.uint8), 7, axis=0)
            frames = np.broadcast_to(bands, (steps_per_episode, 84, 84)).copy()
            rows, columns = (steps * 3) % 80, (steps * 5) % 80
            for dy in range(4):
                for dx in range(4):
                    frames[steps, rows + dy, columns + dx] = 255
            episode_actions = rng.integers(0, actions, steps_per_episode)
            rewards = (rng.random(steps_per_episode) < 0.01).astype(np.float32)
            for t in range(steps_per_episode):
                buffer.add(frames[t], int(episode_actions[t]), float(rewards[t]), t == steps_per_episode - 1)
        buffer.log_final_buffer()
    return root


def windows_per_second(batches: Iterator[dict[str, np.ndarray]], batch_size: int, workers: int,
                       run: Run) -> tuple[float, int]:
    """(windows/s, batches timed) after the first batch (worker start-up) is taken untimed.

    Workers build whole batches in parallel, so the batches right after the first arrive in a
    burst; timing several per worker averages that out.
    """
    next(batches)
    wanted = run.scale.pipeline_batches_per_worker * workers
    done, start = 0, time.perf_counter()
    while done < wanted and time.perf_counter() - start < run.scale.pipeline_timed_s and run.left() > 5:
        next(batches)
        done += 1
    if not done:
        raise SectionSkipped("no time left to time a batch")
    return done * batch_size / (time.perf_counter() - start), done


def input_pipeline(run: Run) -> None:
    reader = pipeline_reader()
    scale = run.scale
    workers = os.cpu_count() or 1
    run.record(reader=reader.name, games=list(scale.pipeline_games), episodes_per_game=scale.pipeline_episodes_per_game,
               steps_per_episode=scale.pipeline_steps_per_episode, batch=scale.pipeline_batch, workers=workers)
    with tempfile.TemporaryDirectory(prefix="gpu_check_pipeline_") as scratch:
        start = time.perf_counter()
        logs = write_synthetic_logs(Path(scratch) / "logs", scale.pipeline_games, scale.pipeline_episodes_per_game,
                                    scale.pipeline_steps_per_episode)
        run.record(write_logs_s=time.perf_counter() - start)
        start = time.perf_counter()
        dataset = reader.convert(logs, Path(scratch) / "dataset")
        run.record(convert_s=time.perf_counter() - start)
        run.log(f"synthetic dataset: {len(scale.pipeline_games) * scale.pipeline_episodes_per_game} episodes of "
                f"{scale.pipeline_steps_per_episode:,} steps, converted in {time.perf_counter() - start:.1f} s")
        batches = reader.batches(dataset, scale.pipeline_batch, workers)
        try:
            rate, timed = windows_per_second(batches, scale.pipeline_batch, workers, run)
        finally:
            if hasattr(batches, "close"):
                batches.close()
        run.record(readers=[{"workers": workers, "windows_per_s": rate, "batches_timed": timed}])
        run.log(f"{workers} workers: {rate:,.0f} windows/s")


# ---------------------------------------------------------------------------------------------
# ad_train, ad_eval


AD_TOY_EVAL = (4, 2)  # (goals, in-context episodes) of the dry run; the full run: all 81 x 100


def ad_config(run: Run) -> Any:
    """experiments/ad_darkroom.py (the AD^epsilon Dark Room recipe's size), or toy sizes in the dry run."""
    from experiments import ad_darkroom

    config = ad_darkroom.get_config()
    if run.scale.toy_model is not None:
        for name, value in run.scale.toy_model.items():
            setattr(config.model, name, value)
        config.model.context_steps = 40
        config.train.batch_size = 4
    config.train.num_steps = 1_000_000  # only the learning-rate schedule reads it
    return config


def ad_train(run: Run) -> None:
    """Training tokens/s of the AD recipe at experiments/ad_darkroom.py's size and batch, through the
    core trainer, on windows cut from real AD^epsilon Dark Room histories (generated here)."""
    from mgdt_jax import envs
    from mgdt_jax.recipes.ad import sources
    from mgdt_jax.recipes.ad.recipe import ADRecipe

    config = ad_config(run)
    env = envs.get(config.data.env)
    train_tasks, _ = env.task_split(0)
    noisy = sources.make_source("ad_epsilon")
    episodes = max(4, config.model.context_steps // env.episode_length + 1)
    histories = sources.to_histories(sources.rollout(env, noisy, train_tasks, 0, episodes), env, noisy)
    recipe = ADRecipe(config, histories=histories)
    mesh = sharding.make_mesh(config.mesh)
    trainer = Trainer(config, mesh, recipe)
    batch_size = config.train.batch_size
    batch = trainer.shard_batch(recipe.training_data(process_index=0, process_count=1).batch(0))
    model = recipe.model_config
    cost = recipe.step_cost(batch_size)
    run.record(num_layers=model.num_layers, d_model=model.d_model, context_steps=model.context_steps,
               token_layout=model.token_layout, batch=batch_size, dtype=model.dtype,
               tokens_per_step=cost.tokens, flops_per_step=cost.flops)
    start = time.perf_counter()
    step = trainer.lower_step(jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                                           batch)).compile()
    run.log(f"compiled the AD step at batch {batch_size} in {time.perf_counter() - start:.1f} s")
    state = trainer.init(seed=0)
    state, timing = timed_steps(step, state, batch, run)
    tokens_per_s = cost.tokens / timing["step_s"]
    peak = flops.peak_flops_per_device(jax.devices()[0], model.dtype)
    run.record(**timing, tokens_per_s=tokens_per_s, windows_per_s=batch_size / timing["step_s"],
               tflops_per_s=cost.flops / timing["step_s"] / 1e12,
               mfu=None if not peak else cost.flops / timing["step_s"] / (peak * jax.device_count()))
    run.log(f"{tokens_per_s:,.0f} tokens/s ({timing['step_s'] * 1e3:.1f} ms per step of {batch_size} x "
            f"{model.context_steps} steps); loss {timing['loss_first']:.3f} -> {timing['loss_last']:.3f}")
    if not np.isfinite(timing["loss_last"]):
        raise RuntimeError(f"the loss is {timing['loss_last']}")


def ad_eval(run: Run) -> None:
    """KV-cached in-context evaluation env steps/s: every one of the 81 Dark Room goals at once for
    100 episodes (2,000 steps each), the AD^epsilon recipe's model, argmax and sampled actions
    (compilation apart)."""
    from mgdt_jax import envs
    from mgdt_jax.recipes.ad import evaluate
    from mgdt_jax.recipes.ad.model import AlgorithmDistillation
    from mgdt_jax.recipes.ad.recipe import ADRecipe

    config = ad_config(run)
    recipe = ADRecipe(config)
    env = envs.get(config.data.env)
    num_goals, episodes = AD_TOY_EVAL if run.scale.toy_model is not None else (env.num_tasks, 100)
    goals = env.task_split(0, num_train=0, num_heldout=num_goals)[1]
    model = AlgorithmDistillation(recipe.model_config, rngs=nnx.Rngs(0))
    rates = []
    for greedy in (True, False):
        if run.left() < 10:
            run.note("no time left for the sampled run")
            break
        result = evaluate.evaluate_in_context(model, env, goals, num_episodes=episodes, seed=0, greedy=greedy)
        rate = {"actions": result.name, "tasks": num_goals, "episodes": episodes,
                "env_steps": num_goals * episodes * env.episode_length, "env_steps_per_s": result.env_steps_per_s,
                "compile_s": result.compile_s, "mean_return": float(result.returns.mean())}
        rates.append(rate)
        run.record(rates=rates)
        run.log(f"{result.name}: {num_goals} goals x {episodes} episodes at {result.env_steps_per_s:,.0f} env steps/s "
                f"(compiled in {result.compile_s:.1f} s)")


# ---------------------------------------------------------------------------------------------
# jat_train

# The released JAT's config.json (jat-project/jat): hidden 768, 12 layers, 12 heads, continuous vectors
# tiled to 377, discrete values < 212. The other model fields are experiments/jat_tiny.py's.
JAT_RELEASED = {"d_model": 768, "num_layers": 12, "num_heads": 12, "continuous_width": 377, "max_discrete_value": 212}
# The heaviest first: it is the headline; continuous next: the torch peer's 512-token task (benchmarks/jat.py).
JAT_GROUP_ORDER = ("image", "continuous", "discrete")
JAT_CONTINUOUS_SIZES = (39, 4)  # Meta-World's observation and action sizes
JAT_MISSION_WORDS = 8  # a BabyAI mission's length in words
JAT_DISCRETE_ACTIONS = 7  # BabyAI's (and BabyAI-RGB's) actions


def jat_config(run: Run) -> Any:
    """experiments/jat_tiny.py at the released JAT size (`JAT_RELEASED`) in bfloat16, or toy sizes."""
    from experiments import jat_tiny

    config = jat_tiny.get_config()
    for name, value in {**JAT_RELEASED, **(run.scale.toy_model or {})}.items():
        setattr(config.model, name, value)
    config.model.num_steps = run.scale.jat_num_steps
    config.model.groups = run.scale.jat_groups
    config.model.dtype = "bfloat16"
    config.train.batch_size = run.scale.jat_batch
    config.train.num_steps = 1_000_000  # only the learning-rate schedule reads it
    return config


def jat_batch(model: Any, rows: int, group: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Synthetic rows of one modality group in the shapes and dtypes of the recipe's batches
    (`data.empty_batch`): one episode per row, random observations, actions and rewards of a task of
    the group. Discrete: BabyAI's symbols and a mission; continuous: Meta-World's sizes; image:
    ``model.image_shape`` frames and a mission (BabyAI-RGB)."""
    from mgdt_jax.recipes.jat import data, tokens

    batch = data.empty_batch(model, rows, group)
    shape = (rows, model.num_steps)
    batch["loss_weight"][:] = 1.0
    batch["position"][:] = np.arange(model.num_steps)
    batch["rewards"][:] = rng.random(shape, np.float32)
    if group == "continuous":
        observation, action = JAT_CONTINUOUS_SIZES
        batch["continuous_observations"][..., :observation] = rng.standard_normal((*shape, observation), np.float32)
        batch["continuous_actions"][..., :action] = rng.uniform(-1, 1, (*shape, action))
        batch["continuous_observation_size"][:], batch["continuous_action_size"][:] = observation, action
        return batch
    batch["discrete_actions"][:] = rng.integers(0, JAT_DISCRETE_ACTIONS, shape)
    batch["num_discrete_actions"][:] = JAT_DISCRETE_ACTIONS
    batch["text_observations"][..., :JAT_MISSION_WORDS] = rng.integers(
        tokens.UNKNOWN_WORD + 1, tokens.TEXT_VOCABULARY_SIZE, (*shape, JAT_MISSION_WORDS))
    if group == "discrete":
        batch["discrete_observations"][:] = rng.integers(0, model.max_discrete_value, batch["discrete_observations"].shape)
    else:
        batch["image_observations"][:] = rng.integers(0, 256, batch["image_observations"].shape, dtype=np.uint8)
    return batch


def jat_train(run: Run) -> None:
    """JAT training at the released model's size through the core trainer: the step compiled for
    each modality group (a batch's keys name its group) and timed on synthetic rows of it, the image
    group first. Each group's FLOPs are the recipe's cost of a batch of it (``JatRecipe.batch_cost``:
    the decoder, encoders and heads, and for image rows the image encoder's and decoder's
    convolutions)."""
    from mgdt_jax.recipes.jat.recipe import JatRecipe

    config = jat_config(run)
    recipe = JatRecipe(config)
    mesh = sharding.make_mesh(config.mesh)
    trainer = Trainer(config, mesh, recipe)
    model = recipe.model_config
    batch_size = config.train.batch_size
    cost = recipe.step_cost(batch_size)
    groups = [group for group in JAT_GROUP_ORDER if group in model.groups]
    if "image" not in groups:
        run.note("no image group at these sizes (toy): its convolutions are timed in the full run")
    rng = np.random.default_rng(0)
    batches = {group: trainer.shard_batch(jat_batch(model, batch_size, group, rng)) for group in groups}
    run.record(num_layers=model.num_layers, d_model=model.d_model, num_heads=model.num_heads, num_steps=model.num_steps,
               tokens_per_row=2 * model.num_steps, image_shape=list(model.image_shape), batch=batch_size,
               dtype=model.dtype, groups=groups, tokens_per_step=cost.tokens)
    state = trainer.init(seed=0)
    run.record(params=sum(leaf.size for leaf in jax.tree.leaves(state.params)))
    measured = []
    for group in groups:
        if run.left() < 10:
            run.note(f"no time left for the {group} group")
            break
        start = time.perf_counter()
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), batches[group])
        step = trainer.lower_step(abstract).compile()
        compile_s = time.perf_counter() - start
        run.log(f"compiled the JAT step of {group} rows ({model.num_layers} x {model.d_model}, batch {batch_size} x "
                f"{2 * model.num_steps} tokens) in {compile_s:.1f} s")
        try:
            state, timing = timed_steps(step, state, batches[group], run, seconds=run.scale.jat_group_timed_s)
        except SectionSkipped as reason:
            if not measured:
                raise
            run.note(f"the {group} group was not timed: {reason}")
            break
        if not np.isfinite(timing["loss_last"]):
            raise RuntimeError(f"the {group} group's loss is {timing['loss_last']}")
        group_flops = recipe.batch_cost(batch_size, batches[group]).flops
        measured.append({"group": group, **timing, "compile_s": compile_s, "flops_per_step": group_flops,
                         "xla_flops_per_step": flops.compiled_flops(step), "tokens_per_s": cost.tokens / timing["step_s"],
                         "flops_per_s": group_flops / timing["step_s"] / jax.device_count()})
        headline = measured[0]
        stats = jax.devices()[0].memory_stats() or {}
        run.record(groups_measured=measured, headline_group=headline["group"],
                   **{name: headline[name] for name in ("step_s", "tokens_per_s", "flops_per_s", "loss_first", "loss_last")},
                   peak_bytes_in_use=stats.get("peak_bytes_in_use"), bytes_limit=stats.get("bytes_limit"))
        run.log(f"{group}: {measured[-1]['tokens_per_s']:,.0f} tokens/s, {measured[-1]['flops_per_s'] / 1e12:,.1f} "
                f"TFLOP/s per device, loss {timing['loss_first']:.3f} -> {timing['loss_last']:.3f}")
    if not measured:  # initialising the 112M-parameter model took the whole share
        raise SectionSkipped("no time left to compile a group's step after initialising the model")


# ---------------------------------------------------------------------------------------------
# ada_ppo

# XLand-MiniGrid tasks: benchmarks/xland.py's defaults (preset, environment, trials), whose CPU figures
# docs/ada.md holds; tasks drawn uniformly from this many generated rulesets.
XLAND_PRESET, XLAND_RULESETS = "trivial", 1024
XLAND_ENV = {"env_id": "XLand-MiniGrid-R1-9x9", "num_trials": 5}


def ada_config(run: Run, scratch: Path) -> tuple[Any, str]:
    """(experiments/ada_tiny.py at the scale's agent, PPO and environments, the environment's name).

    XLand-MiniGrid (a benchmark generated into ``scratch``) where the scale asks for it and xminigrid
    imports; arm recall otherwise, with a note saying why.
    """
    from experiments import ada_tiny, common

    config = ada_tiny.get_config()
    for name, value in run.scale.ada_agent.items():
        setattr(config.model, name, value)
    for name, value in run.scale.ada_ppo.items():
        setattr(config.ppo, name, value)
    config.train.batch_size = run.scale.ada_envs
    config.train.num_steps = 1_000_000  # only the learning-rate schedule reads it
    if run.scale.ada_env != "xland":
        run.note("toy sizes run arm recall (XLand's train step takes ~15 s to compile and initialise on a CPU); "
                 "the full run uses XLand-MiniGrid where xminigrid imports")
        return config, "arm_recall"
    try:
        import xminigrid  # noqa: F401
    except ImportError as error:
        run.note(f"xminigrid does not import here ({error}): arm recall instead of XLand-MiniGrid")
        return config, "arm_recall"
    from benchmarks.xland import write_benchmark

    path = write_benchmark(XLAND_PRESET, XLAND_RULESETS, 0, scratch)
    config.env = common.from_dict({"factory": "mgdt_jax.recipes.ada.xland:make", "benchmark": str(path), **XLAND_ENV})
    config.model.observation = "grid"
    return config, "xland"


def ada_ppo(run: Run) -> None:
    """AdA's whole online train step (rollout of every environment inside the jitted step, GAE, PPO
    epochs) with the Transformer-XL agent, against the same environments alone stepped by random
    actions with the same in-place resets (benchmarks/ada.py's baseline), on the same batch."""
    from benchmarks.ada import env_only_rollout

    with tempfile.TemporaryDirectory(prefix="gpu_check_ada_") as scratch:
        config, env_name = ada_config(run, Path(scratch))
        trainer = Trainer(config, sharding.make_mesh(config.mesh))  # reads the benchmark file here
    recipe = trainer.recipe
    envs, length = recipe.num_envs, recipe.ppo_config.rollout_length
    steps_per_call = envs * length
    agent = recipe.agent_config
    run.record(env=env_name, env_settings=recipe.env.describe(), envs=envs, rollout_length=length,
               num_epochs=recipe.num_epochs, num_minibatches=recipe.num_minibatches, agent=agent.agent,
               num_layers=agent.num_layers, d_model=agent.d_model, memory_length=agent.memory_length,
               env_steps_per_train_step=steps_per_call)
    start = time.perf_counter()
    state = trainer.init(seed=0)
    jax.block_until_ready(state)
    run.record(params=int(sum(leaf.size for leaf in jax.tree.leaves(state.params))), init_s=time.perf_counter() - start)
    start = time.perf_counter()
    step = trainer.lower_step({}).compile()
    run.record(compile_s=time.perf_counter() - start)
    run.log(f"compiled the AdA step ({env_name}, {envs} envs x {length} steps) in {time.perf_counter() - start:.1f} s")
    state, timing = timed_steps(step, state, {}, run, seconds=run.scale.ada_timed_s)
    if not np.isfinite(timing["loss_last"]):
        raise RuntimeError(f"the loss is {timing['loss_last']}")
    cost = recipe.step_cost(envs)
    train_rate = steps_per_call / timing["step_s"]
    peak = flops.peak_flops_per_device(jax.devices()[0], cost.compute_dtype)
    flops_per_s = cost.flops / timing["step_s"] / jax.device_count()
    run.record(**timing, train_env_steps_per_s=train_rate, flops_per_step=cost.flops, compute_dtype=cost.compute_dtype,
               flops_per_s=flops_per_s, mfu_vs_datasheet=flops_per_s / peak if peak else None)
    if not peak:
        run.note(f"no MFU: no datasheet peak for {cost.compute_dtype} on this device (mgdt_jax/core/flops.py)")
    run.log(f"train step: {train_rate:,.0f} env steps/s ({timing['step_s']:.3f} s per step)")

    env_run = env_only_rollout(recipe, length)
    env_state, timestep = state.rollout.per_env["env_state"], state.rollout.per_env["timestep"]
    start = time.perf_counter()
    env_state, timestep, total = env_run(jax.random.key(1), env_state, timestep)
    jax.block_until_ready(total)
    run.record(env_only_compile_s=time.perf_counter() - start)
    calls, start = 0, time.perf_counter()
    while calls < run.scale.max_timed_steps and time.perf_counter() - start < run.scale.ada_timed_s and run.left() > 5:
        env_state, timestep, total = env_run(jax.random.key(calls + 2), env_state, timestep)
        calls += 1
    jax.block_until_ready(total)
    if not calls:
        run.note("no time left to time the environments alone")
        return
    env_rate = calls * steps_per_call / (time.perf_counter() - start)
    run.record(env_only_steps_per_s=env_rate, env_only_calls=calls, train_over_env_only=train_rate / env_rate)
    run.log(f"environments alone: {env_rate:,.0f} env steps/s; the train step keeps {train_rate / env_rate:.3f} of it")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("section")
    parser.add_argument("--result", type=path_argument, required=True)
    parser.add_argument("--deadline", type=float, required=True, help="Unix time by which the section must stop")
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args(argv)
    run = Run(args.section, args.result, args.deadline, args.dry_run)
    function = SECTION_FUNCTIONS.get(args.section)
    signal.signal(signal.SIGTERM, _stop)
    try:
        if function is None:
            raise SectionSkipped(f"no measurement is written for it yet (a function {args.section} in {Path(__file__).name})")
        if not args.dry_run and jax.default_backend() == "cpu":
            raise SectionSkipped("JAX found no accelerator (its backend is cpu); full sizes are for accelerators, "
                                 "--dry-run is for CPUs")
        function(run)
    except SectionSkipped as reason:
        run.finish("skipped", str(reason))
        return 0
    except SectionStopped:  # the result stays "running": gpu_check.py reports it stopped, with what it recorded
        return 1
    except Exception as error:  # reported by the parent; the traceback is for whoever reads the log
        traceback.print_exc()
        run.finish("failed", f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"[:500])
        return 1
    run.finish("ok")
    return 0


SECTION_FUNCTIONS: dict[str, Callable[[Run], None]] = {
    "matmul_peak": matmul_peak_section,
    "train_200m": train_200m,
    "train_1b": train_1b,
    "policy": policy,
    "actor": actor_loop,
    "input_pipeline": input_pipeline,
    "ad_train": ad_train,
    "ad_eval": ad_eval,
    "jat_train": jat_train,
    "ada_ppo": ada_ppo,
}


if __name__ == "__main__":  # Grain's worker processes re-import this module
    sys.exit(main())
