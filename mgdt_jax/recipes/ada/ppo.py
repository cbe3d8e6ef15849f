"""PPO for recurrent meta-RL agents: GAE, swappable objectives, a kickstarting distillation term.

AdA trained with Muesli (Hessel et al. 2021); no maintained open JAX Muesli exists, and XLand-
MiniGrid's RL² baselines, the only published numbers on these tasks, use PPO. So PPO it is, with the
objective a plain function (``OBJECTIVES``) so that another (Muesli's, V-MPO's) can replace it
without touching the rollout or the core.

An objective maps ``(logits [B, T, A], values [B, T], batch, PPOConfig)`` to ``(loss, metrics)``
where ``batch`` holds the rollout's ``action``, ``log_prob``, ``value``, ``advantage`` and
``return`` ([B, T] each). With ``entropy_anneal_steps`` the recipe hands the objective a config
whose ``entropy_coef`` is the step's traced float32 [] weight: an objective uses it arithmetically only.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp

from mgdt_jax.core import advantages as core_advantages


@dataclasses.dataclass(frozen=True)
class PPOConfig:
    """The ``ppo`` section. Defaults: XLand-MiniGrid's meta-RL config (configs/meta.yaml)."""

    rollout_length: int = 16  # steps per environment per train step (one truncated-BPTT segment)
    num_epochs: int = 1
    num_minibatches: int = 1
    discount: float = 0.99
    gae_lambda: float = 0.95
    clip_epsilon: float = 0.2
    value_coef: float = 0.5
    entropy_coef: float = 0.01
    # > 0: the entropy bonus decays linearly from entropy_coef to 0 at this train step, so the policy
    # sampled in late trials can sharpen once it knows the task (0: constant, XLand-MiniGrid's setting).
    entropy_anneal_steps: int = 0
    objective: str = "ppo_clip"  # a key of OBJECTIVES

    def check(self) -> None:
        """ValueError, one line naming the field, for a setting no run can use (each of these
        compiled, then failed as an XLA shape error, a division by zero or a NaN loss, or trained on
        silently). Not in ``__post_init__``: the loss replaces ``entropy_coef`` with a traced value."""
        for name in ("rollout_length", "num_epochs", "num_minibatches"):
            if getattr(self, name) < 1:
                raise ValueError(f"ppo.{name} {getattr(self, name)}: must be at least 1")
        if self.entropy_anneal_steps < 0:
            raise ValueError(f"ppo.entropy_anneal_steps {self.entropy_anneal_steps}: must be >= 0 (0: constant)")
        for name in ("discount", "gae_lambda"):
            if not 0 <= getattr(self, name) <= 1:  # NaN too
                raise ValueError(f"ppo.{name} {getattr(self, name)}: must be in [0, 1]")
        if not 0 < self.clip_epsilon < math.inf:
            raise ValueError(f"ppo.clip_epsilon {self.clip_epsilon}: must be a positive number")
        for name in ("value_coef", "entropy_coef"):
            if not 0 <= getattr(self, name) < math.inf:
                raise ValueError(f"ppo.{name} {getattr(self, name)}: must be a number >= 0")


def generalized_advantages(
    rewards: jax.Array, values: jax.Array, dones: jax.Array, bootstrap: jax.Array, discount: float, gae_lambda: float
) -> tuple[jax.Array, jax.Array]:
    """GAE (mgdt_jax/core/advantages.py) over a rollout segment: [B, T] rewards, values and dones,
    bootstrap [B] = V of the state after the segment.

    ``dones[t]``: the meta-episode ended with step t (no bootstrapping past it, the trace stops).
    Returns ``(advantages, returns = advantages + values)``, float32 [B, T].
    """
    next_values = jnp.concatenate([values[:, 1:], bootstrap[:, None]], axis=1)
    advantages = core_advantages.generalized_advantages(
        rewards.T, values.T, next_values.T, dones.T, dones.T, discount, gae_lambda
    ).T
    return advantages, advantages + values


def _log_probs_and_entropy(logits: jax.Array, actions: jax.Array) -> tuple[jax.Array, jax.Array]:
    log_policy = jax.nn.log_softmax(logits)
    chosen = jnp.take_along_axis(log_policy, actions[..., None], axis=-1)[..., 0]
    return chosen, -jnp.sum(jnp.exp(log_policy) * log_policy, axis=-1)


def _clipped_value_loss(values: jax.Array, batch: Mapping[str, jax.Array], clip: float) -> jax.Array:
    """0.5 max((v - R)^2, (v_old + clip(v - v_old) - R)^2), as in PureJaxRL and XLand-MiniGrid."""
    clipped = batch["value"] + jnp.clip(values - batch["value"], -clip, clip)
    return 0.5 * jnp.maximum(jnp.square(values - batch["return"]), jnp.square(clipped - batch["return"])).mean()


def ppo_clip(
    logits: jax.Array, values: jax.Array, batch: Mapping[str, jax.Array], config: PPOConfig
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """PPO's clipped surrogate (Schulman et al. 2017, eq. 7) + value loss - entropy bonus."""
    log_probs, entropy = _log_probs_and_entropy(logits, batch["action"])
    log_ratio = log_probs - batch["log_prob"]
    ratio = jnp.exp(log_ratio)
    advantage = batch["advantage"]
    surrogate = jnp.minimum(ratio * advantage, jnp.clip(ratio, 1 - config.clip_epsilon, 1 + config.clip_epsilon) * advantage)
    policy_loss = -surrogate.mean()
    value_loss = _clipped_value_loss(values, batch, config.clip_epsilon)
    loss = policy_loss + config.value_coef * value_loss - config.entropy_coef * entropy.mean()
    return loss, {
        "policy_loss": policy_loss,
        "value_loss": value_loss,
        "entropy": entropy.mean(),
        "approx_kl": ((ratio - 1) - log_ratio).mean(),  # Schulman's low-variance KL estimator
        "clip_fraction": (jnp.abs(ratio - 1) > config.clip_epsilon).mean(),
    }


def policy_gradient(
    logits: jax.Array, values: jax.Array, batch: Mapping[str, jax.Array], config: PPOConfig
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The unclipped advantage actor-critic objective (A2C: Mnih et al. 2016), for comparison."""
    log_probs, entropy = _log_probs_and_entropy(logits, batch["action"])
    log_ratio = log_probs - batch["log_prob"]
    policy_loss = -(log_probs * batch["advantage"]).mean()
    value_loss = 0.5 * jnp.square(values - batch["return"]).mean()
    loss = policy_loss + config.value_coef * value_loss - config.entropy_coef * entropy.mean()
    return loss, {
        "policy_loss": policy_loss,
        "value_loss": value_loss,
        "entropy": entropy.mean(),
        "approx_kl": (jnp.exp(log_ratio) - 1 - log_ratio).mean(),
        "clip_fraction": jnp.zeros(()),
    }


Objective = Callable[[jax.Array, jax.Array, Mapping[str, jax.Array], PPOConfig], tuple[jax.Array, dict[str, jax.Array]]]
OBJECTIVES: dict[str, Objective] = {"ppo_clip": ppo_clip, "policy_gradient": policy_gradient}


def objective(name: str) -> Objective:
    """The objective ``ppo.objective`` names; ValueError (one line) for another name."""
    if name not in OBJECTIVES:
        raise ValueError(f"ppo.objective {name!r} is not one of {sorted(OBJECTIVES)}")
    return OBJECTIVES[name]


@dataclasses.dataclass(frozen=True)
class KickstartConfig:
    """The ``kickstart`` section: distillation towards a teacher (Schmitt et al. 2018, "Kickstarting
    Deep RL", eq. 3; AdA §3.4), its weight held for ``hold_steps`` train steps and then annealed
    linearly to zero at ``anneal_steps`` (the schedule of Metta's kickstarter, metta/rl/kickstarter.py).
    ``teacher`` is the workdir of a trained AdA run (any agent); empty = no kickstarting."""

    teacher: str = ""
    weight: float = 1.0
    hold_steps: int = 0
    anneal_steps: int = 100

    def __post_init__(self) -> None:
        if not 0 <= self.weight < math.inf:
            raise ValueError(f"kickstart.weight {self.weight}: must be a number >= 0")
        if not 0 <= self.hold_steps <= self.anneal_steps:
            raise ValueError(f"kickstart.hold_steps {self.hold_steps} and anneal_steps {self.anneal_steps}: "
                             "need 0 <= hold_steps <= anneal_steps")


def linear_anneal(value: float, hold_steps: int, end_step: int, step: jax.Array) -> jax.Array:
    """float32 []: ``value`` until train step ``hold_steps``, then linearly down to 0 at ``end_step``."""
    fraction = jnp.clip((step - hold_steps) / max(end_step - hold_steps, 1), 0.0, 1.0)
    return (value * (1.0 - fraction)).astype(jnp.float32)


def kickstart_weight(config: KickstartConfig, step: jax.Array) -> jax.Array:
    """float32 []: the distillation weight at train step ``step`` (0 from ``anneal_steps`` on)."""
    return linear_anneal(config.weight, config.hold_steps, config.anneal_steps, step)


def entropy_coef(config: PPOConfig, step: jax.Array) -> jax.Array:
    """float32 []: the entropy bonus's weight at train step ``step`` (``entropy_anneal_steps``)."""
    if config.entropy_anneal_steps <= 0:
        return jnp.float32(config.entropy_coef)
    return linear_anneal(config.entropy_coef, 0, config.entropy_anneal_steps, step)


def distillation_kl(teacher_logits: jax.Array, student_logits: jax.Array) -> jax.Array:
    """KL(teacher || student) per step, [...]: the kickstarting policy-distillation term."""
    teacher = jax.nn.log_softmax(teacher_logits)
    return jnp.sum(jnp.exp(teacher) * (teacher - jax.nn.log_softmax(student_logits)), axis=-1)
