"""The optimizer: the paper's pretraining recipe by default, other choices by config.

Paper (Lee et al. 2022, §4.1): LAMB, learning rate 3e-4 with a 4000-step linear warm-up, gradient
clipping at global norm 1.0, betas (0.9, 0.999), no weight decay. The schedule after warm-up is not
stated; ``schedule="constant"`` keeps the peak rate, ``"cosine"``/``"linear"`` decay it to zero at
the last training step.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import optax

from mgdt_jax.core.config_sections import read_section

OPTIMIZERS = ("lamb", "adamw")
SCHEDULES = ("constant", "cosine", "linear")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    name: str = "lamb"
    learning_rate: float = 3e-4
    warmup_steps: int = 4000
    schedule: str = "constant"
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-6  # optax (and the LAMB paper) default; MGDT does not state it
    weight_decay: float = 0.0
    grad_clip_norm: float = 1.0


def check_optimizer_config(config: Any) -> None:
    """ValueError (one line) for a value of the optimizer config section no run can train with; the
    loop calls it before reading data: a NaN or infinite rate would otherwise surface only as a
    diverged loss after the first step."""
    config = read_section(OptimizerConfig, config)
    ranges = {
        "learning_rate": (0.0, math.inf, False), "eps": (0.0, math.inf, True), "b1": (0.0, 1.0, True),
        "b2": (0.0, 1.0, True), "weight_decay": (0.0, math.inf, True), "grad_clip_norm": (0.0, math.inf, True),
    }
    for name, (low, high, low_included) in ranges.items():
        value = getattr(config, name)
        inside = isinstance(value, (int, float)) and (low <= value if low_included else low < value) and value < high
        if not inside:
            interval = f"{'[' if low_included else '('}{low:g}, {high:g})"
            raise ValueError(f"config.optimizer.{name} must be a number in {interval}, got {value!r}")
    if not isinstance(config.warmup_steps, int) or config.warmup_steps < 0:
        raise ValueError(f"config.optimizer.warmup_steps must be an integer >= 0, got {config.warmup_steps!r}")


def learning_rate_schedule(config: OptimizerConfig, total_steps: int) -> optax.Schedule:
    """Linear warm-up from 0 to the peak rate, then constant or decaying to 0 at ``total_steps``."""
    warmup = optax.linear_schedule(0.0, config.learning_rate, max(config.warmup_steps, 1))
    decay_steps = max(total_steps - config.warmup_steps, 1)
    if config.schedule == "constant":
        after = optax.constant_schedule(config.learning_rate)
    elif config.schedule == "cosine":
        after = optax.cosine_decay_schedule(config.learning_rate, decay_steps)
    elif config.schedule == "linear":
        after = optax.linear_schedule(config.learning_rate, 0.0, decay_steps)
    else:
        raise ValueError(f"optimizer.schedule {config.schedule!r} is not one of {SCHEDULES}")
    return optax.join_schedules([warmup, after], [config.warmup_steps])


def decay_mask(params: Any) -> Any:
    """Weight decay applies to matrices only (kernels, embedding tables), not biases or LayerNorm."""
    return jax.tree.map(lambda leaf: leaf.ndim >= 2, params)


def make_optimizer(config: Any, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """Returns ``(transformation, schedule)``; ``config`` is the optimizer config section."""
    config = read_section(OptimizerConfig, config)
    check_optimizer_config(config)  # for callers other than the loop
    schedule = learning_rate_schedule(config, total_steps)
    if config.name == "lamb":
        core = optax.lamb(schedule, config.b1, config.b2, config.eps, weight_decay=config.weight_decay, mask=decay_mask)
    elif config.name == "adamw":
        core = optax.adamw(schedule, config.b1, config.b2, config.eps, weight_decay=config.weight_decay, mask=decay_mask)
    else:
        raise ValueError(f"optimizer.name {config.name!r} is not one of {OPTIMIZERS}")
    if config.grad_clip_norm > 0:
        core = optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), core)
    return core, schedule
