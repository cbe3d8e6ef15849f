"""The shared base of every experiment config (schema: docs/architecture.md).

Each experiment file calls ``base_config()`` and changes what differs. Defaults are the paper's
pretraining recipe (Lee et al. 2022, §4.1) at the DT-40M size.

Configs are ``ml_collections.ConfigDict``s. Where ml_collections is not installed (a bare
accelerator machine running benchmarks/gpu_check.py) the same functions return nested
``types.SimpleNamespace``s with the same fields and values: enough for the model, the sharding and
the train step, which read sections by attribute (mgdt_jax/core/config_sections.py). ``mgdt-train``
itself needs ml_collections (its ``--config`` flag).

``train_to_end`` is how the experiment scripts train: a preempted run stops the script.
``check_settings`` and ``stage`` make a long experiment resumable: rerun with the same ``--out``
and arguments, it redoes only its unfinished stages, a training run resuming from its checkpoint.
"""

from __future__ import annotations

import functools
import json
import math
import os
import platform
import sys
import time
import types
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mgdt_jax.core import files

try:
    import ml_collections
except ImportError:
    ml_collections = None

if TYPE_CHECKING:
    from ml_collections import ConfigDict

    from mgdt_jax.core.loop import TrainResult


def train_to_end(config: Any, workdir: Path, **kwargs: Any) -> TrainResult:
    """``loop.train(config, workdir, **kwargs)`` run to its last step; a partly trained model is never
    evaluated or reported as if it were finished. A workdir trained before with another config is
    refused (SystemExit, one line naming the fields), as its model would be reported under this
    config's settings (another --train-steps in the same folder). Stopped first (saved, its checkpoint kept in
    ``workdir``): by a SIGTERM, SystemExit (one line, exit status 1); by a Ctrl-C, one line on stderr
    and KeyboardInterrupt, which a script's ``interruptible`` main ends as interrupted (status 130)."""
    from mgdt_jax.core import loop

    current = json.loads(config.to_json_best_effort() if hasattr(config, "to_json_best_effort") else json.dumps(config))
    if changes := loop.config_changes(Path(workdir) / loop.CONFIG_FILE, current):
        # Resumed, it would be reported under these settings while trained (partly or wholly) under others.
        raise SystemExit(f"{workdir}: trained before with another config ("
                         + ", ".join(f"{key} {old!r} -> {new!r}" for key, old, new in changes[:4])
                         + (f" and {len(changes) - 4} more" if len(changes) > 4 else "") + "); use another --out or --workdir")
    result = loop.train(config, workdir, **kwargs)
    if result.stopped_by == "interrupted":
        print(f"{workdir}: training interrupted at step {result.last_step} of {config.train.num_steps}; its "
              "checkpoint is kept, nothing was evaluated or reported", file=sys.stderr, flush=True)
        raise KeyboardInterrupt  # the loop took the Ctrl-C to save; the script must still end as interrupted
    if result.stopped_by:
        raise SystemExit(f"{workdir}: training {result.stopped_by} at step {result.last_step} of "
                         f"{config.train.num_steps}; its checkpoint is kept, nothing was evaluated or reported")
    return result


def check_settings(out: Path, settings: Mapping[str, Any], program: str) -> bool:
    """Writes OUT/settings.json; True when it was there already with these ``settings`` (a rerun).

    SystemExit (one line) for an OUT made with other settings, or one that exists, is not empty and
    holds no settings.json (not an experiment's folder: nothing in it is touched)."""
    path = out / "settings.json"
    settings = json.loads(json.dumps(settings))  # tuples as lists, as read back
    if path.exists():
        try:
            previous = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise SystemExit(f"{program}: error: {path}: unreadable ({error}); choose a new --out") from None
        if not isinstance(previous, dict):
            raise SystemExit(f"{program}: error: {path}: not an object of settings; choose a new --out")
        if previous != settings:
            from mgdt_jax.core import loop

            differ = [field for field, _, _ in loop.differing_fields(previous, settings)]  # nested fields named whole
            raise SystemExit(f"{program}: error: --out {out}: made with other settings ({', '.join(differ[:6])}"
                             f"{f' and {len(differ) - 6} more' if len(differ) > 6 else ''}); choose a new --out")
        return True
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SystemExit(f"{program}: error: --out {out}: exists and is not a folder of this experiment "
                         "(no settings.json); choose a new --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
        files.write_json(path, settings)
    except OSError as error:
        raise SystemExit(f"{program}: error: --out {out}: cannot be written ({error.strerror or error})") from None
    return False


def stage(out: Path, name: str, run: Callable[[], Any], output: Path | None = None) -> dict[str, Any]:
    """Runs ``run()`` unless OUT/stages.json records stage ``name`` as done; returns its record
    {"seconds", "load_average", "attempts"}: wall seconds over every attempt, the 1-minute load
    average at the first one's start (the 2 cores may be shared).

    ``output`` is what the stage leaves (a training run's workdir): a stage, done or stopped, whose
    output is gone or empty starts over (its earlier time dropped), with a line on stderr. A stage
    that raised (a SIGTERM or Ctrl-C stopping its training, an error) is recorded as unfinished
    with its seconds so far, which the next attempt adds to. An attempt whose seconds could not be recorded (killed by SIGKILL, or its
    stages.json removed while ``output`` stayed) marks the record ``"untimed"``: its seconds are a
    lower bound and ``within`` answers None.
    """
    path = out / "stages.json"
    stages = _read_stages(path)
    earlier = stages.get(name, {})
    if earlier and output is not None and not _holds(output):  # removed to redo the stage, or lost
        print(f"{_program()}: {output}: gone, though {path} records stage {name!r} as "
              f"{'begun' if earlier.get('unfinished') else 'done'}; starting it over", file=sys.stderr, flush=True)
        earlier = {}
    if earlier and not earlier.get("unfinished"):
        return earlier
    # "running" left by an attempt that never recorded its end; no record but an output: one whose record was removed
    untimed = earlier.get("untimed") or earlier.get("running") or (not earlier and output is not None and _holds(output))
    load, started = os.getloadavg()[0], time.perf_counter()

    def record(**status: bool) -> dict[str, Any]:
        entry = {"seconds": earlier.get("seconds", 0.0) + time.perf_counter() - started,
                 "load_average": earlier.get("load_average", load), "attempts": earlier.get("attempts", 0) + 1,
                 **({"untimed": True} if untimed else {}), **{key: True for key, on in status.items() if on}}
        # Read again: a stage run inside this one has written its own record meanwhile.
        files.write_json(path, {**_read_stages(path), name: entry})
        return entry

    record(unfinished=True, running=True)
    try:
        run()
    except BaseException:
        record(unfinished=True)
        raise
    return record()


def stage_seconds(out: Path) -> float:
    """Wall seconds of every stage attempt OUT/stages.json records (0 for a new OUT)."""
    return sum(s["seconds"] for s in _read_stages(out / "stages.json").values())


def within(out: Path, seconds: float, limit_s: float) -> bool | None:
    """Whether a claim's total ``seconds`` is within ``limit_s``; None when an attempt of some
    stage in OUT went untimed (see ``stage``), so that the total says nothing about the limit."""
    if any(s.get("untimed") for s in _read_stages(out / "stages.json").values()):
        return None
    return seconds <= limit_s


def verdict(passed: bool | None, words: tuple[str, str] = ("yes", "NO")) -> str:
    """A check's word in a claim's report (``words``: passed, failed); None is a time limit that
    could not be measured."""
    return "not measured (an attempt went untimed: stages.json)" if passed is None else words[0 if passed else 1]


@functools.cache
def machine() -> dict[str, Any]:
    """What a claim's times were measured on: CPU model and widest vector extension (from
    /proc/cpuinfo where there is one), cores, the best float32 2048^3 matmul (GFLOP/s, ~1 s to
    measure, once per process) and the load average then. The 2-core machines the claims run on
    differ (the same AdA step took ~2x longer on some than on others), so a time limit reads with
    the machine beside it."""
    import jax
    import jax.numpy as jnp

    from mgdt_jax.core import flops

    cpu, simd = platform.processor() or platform.machine(), ""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        info = ""
    fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
    fields = {key.strip(): value.strip() for key, value in fields.items()}
    cpu = fields.get("model name", cpu)
    extensions = set(fields.get("flags", "").split())
    simd = next((name for name in ("avx512f", "avx2", "avx", "neon", "asimd") if name in extensions), simd)
    return {"jax": jax.__version__, "platform": jax.devices()[0].platform, "cpus": os.cpu_count(), "cpu": cpu,
            "simd": simd, "matmul_gflops": flops.matmul_peak(jnp.float32, 2048) / 1e9,
            "load_average": os.getloadavg()[0]}


def describe_machine(info: Mapping[str, Any]) -> str:
    """``machine()`` in one phrase, for a claim's header and its time line."""
    cpu = ", ".join(part for part in (info["cpu"], info["simd"]) if part)
    return (f"jax {info['jax']} on {info['platform']}, {info['cpus']} cpus ({cpu}), float32 matmul "
            f"{info['matmul_gflops']:.0f} GFLOP/s, load average {info['load_average']:.1f}")


def _holds(output: Path) -> bool:
    """A file, or a folder with something in it."""
    return output.is_file() or (output.is_dir() and any(output.iterdir()))


def _program() -> str:
    return Path(sys.argv[0]).stem


def _read_stages(path: Path) -> dict[str, dict[str, Any]]:
    """OUT/stages.json's records ({} when absent); SystemExit (one line) when damaged."""
    if not path.exists():
        return {}
    try:
        stages = json.loads(path.read_text())
        if not (isinstance(stages, dict) and all(_is_record(s) for s in stages.values())):
            raise ValueError("not an object of stage records (seconds, load_average, attempts)")
    except (OSError, ValueError, RecursionError) as error:
        raise SystemExit(f"{_program()}: error: {path}: unreadable ({error}); remove it to redo the stages "
                         "(training runs resume from their checkpoints; their earlier time is then lost and "
                         "time limits read \"not measured\")") from None
    return stages


def _is_record(record: Any) -> bool:
    def real(value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

    return (isinstance(record, dict) and real(record.get("seconds")) and record["seconds"] >= 0
            and real(record.get("load_average"))
            and type(attempts := record.get("attempts", 1)) is int and attempts >= 1  # absent before attempts were counted
            and all(record.get(flag, True) is True for flag in ("unfinished", "running", "untimed")))


def stage_times(stages: Mapping[str, Mapping[str, Any]]) -> str:
    """"name N s (load L)" per stage, with its attempts when it took more than one; "N s+" when an
    attempt went untimed."""
    return ", ".join(f"{name} {s['seconds']:.0f} s{'+' if s.get('untimed') else ''} (load {s['load_average']:.1f}"
                     + (f", {s['attempts']} attempts" if s.get("attempts", 1) > 1 else "") + ")"
                     for name, s in stages.items())


def _section() -> Any:
    return ml_collections.ConfigDict() if ml_collections else types.SimpleNamespace()


def from_dict(values: Mapping[str, Any]) -> ConfigDict:
    """A config of nested ``values`` (each dict a section), with or without ml_collections (above)."""
    if ml_collections:
        return ml_collections.ConfigDict(values)
    return types.SimpleNamespace(**{name: from_dict(value) if isinstance(value, Mapping) else value
                                    for name, value in values.items()})


def _settable_object(value: Any) -> Any:
    """A field the command line may set to another type (a dict in files, a string in flags)."""
    return ml_collections.FieldReference(value, field_type=object) if ml_collections else value


def base_config() -> ConfigDict:
    config = _section()
    config.recipe = "mgdt"  # what is trained: mgdt_jax/recipes/<recipe>/recipe.py

    config.model = _section()
    model = config.model
    model.num_layers = 6
    model.d_model = 768
    model.num_heads = 12  # d_model // 64: MGDT keeps GPT-2's 64-wide heads
    model.mlp_ratio = 4  # GPT-2 MLP width 4 * d_model
    model.dropout_rate = 0.1  # released model; on attention and MLP outputs only
    model.num_steps = 4  # context of 4 timesteps = 156 tokens
    model.single_return_token = True  # released model: only the window's first return is an input
    model.behaviour_cloning = False  # True: the BC baseline (no return or reward tokens)
    model.dtype = "float32"  # matmul compute dtype; "bfloat16" on GPU/TPU (params stay float32)
    model.param_dtype = "float32"
    model.remat = False  # recompute block activations in backward: for models that do not fit

    # Device mesh sizes; -1 takes all remaining devices. Pure data parallelism by default, which is
    # fastest while the model and optimizer state fit on one device.
    config.mesh = _section()
    config.mesh.data = -1
    config.mesh.fsdp = 1
    config.mesh.tensor = 1

    config.optimizer = _section()
    optimizer = config.optimizer
    optimizer.name = "lamb"  # paper; "adamw" for comparison
    optimizer.learning_rate = 3e-4
    optimizer.warmup_steps = 4000  # linear warm-up from 0
    optimizer.schedule = "constant"  # after warm-up; the paper does not state one ("cosine", "linear")
    optimizer.b1 = 0.9
    optimizer.b2 = 0.999
    optimizer.eps = 1e-6  # not stated by the paper; optax's LAMB default
    optimizer.weight_decay = 0.0  # paper: none for pretraining (applies to matrices only)
    optimizer.grad_clip_norm = 1.0  # global-norm clipping; 0 disables

    config.data = _section()
    data = config.data
    # RLDS dataset directories (ours or rlu_atari), set per run; a tuple, so flags can set it. Each needs
    # its window index: mgdt-convert writes it, mgdt-index builds it for other datasets.
    data.sources = ()
    # Game name -> sampling weight; empty = uniform over games. Typed `object` so the command line
    # can set it: --config.data.game_weights=Pong=2,Breakout=1 (a config file can assign a dict).
    data.game_weights = _settable_object({})
    data.seed = 0  # data order; with the step it fixes which windows every batch holds
    data.num_threads = 2  # threads building batches ahead of use (in each worker process)
    data.num_workers = 0  # worker processes building batches: the way to use a host's spare cores

    config.train = _section()
    train = config.train
    train.batch_size = 2048  # global, in 4-step windows (paper)
    train.grad_accum_steps = 1  # micro-batches per optimizer step, when a batch does not fit
    train.num_steps = 10_000_000  # paper: 10M steps
    train.seed = 0  # parameter init and dropout
    train.log_every = 100
    train.checkpoint_every = 5_000
    train.keep_checkpoints = 3
    train.eval_every = 0  # steps between in-training evaluations; 0 = never
    train.eval_games = ()  # games played at evaluation; empty = none
    train.eval_episodes = 16  # per game (paper: 16 trials)
    train.init_from = ""  # a checkpoint directory to start from (fine-tuning); empty = scratch
    train.profile_steps = 0  # steps traced with jax.profiler into <workdir>/profile after the first; 0 = none
    return config
