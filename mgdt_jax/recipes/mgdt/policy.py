"""Jitted action sampling for a batch of environments, one model for every game.

The policy owns each environment's rolling context: the last ``num_steps`` timesteps laid out as a
model batch (docs/architecture.md), kept on device so each step only uploads the newest frames.
One jitted call per environment step slides every window, samples a return-to-go (how depends on
the mode), writes it into the window and samples an 18-way action given it.

Sampling modes (docs/evaluation.md):

* ``expert``: the paper's expert action inference. The return is sampled from
  ``log P(R) + kappa * (R - R_low) / (R_high - R_low)`` (kappa = 10), then the action from
  ``P(a | R)``.
* ``colab``: the released notebook's variant: 128 returns sampled at inverse temperature 0.75, the
  largest kept; the action sampled among the logits strictly above their 50th percentile; episode
  starts padded with blank frames.
* ``target``: a fixed target return written into every return slot (not decremented).
* ``bc``: behaviour cloning; the return slots stay at class 0 and only the action is sampled.

Episode starts are *masked*: the steps before an episode's first frame get ``step_mask=False``,
which is how the input pipeline pads windows at episode starts, so the model sees at evaluation
what it saw in training (with a single return token, the first real step's return is the visible
one). The released notebook instead feeds three blank frames as if they were real;
``mask_episode_start=False`` reproduces that for the imported released model, evaluated that way.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mgdt_jax.recipes.mgdt import tokens

SamplingMode = Literal["expert", "colab", "target", "bc"]
Context = dict[str, jax.Array]  # a model batch, leading axes [num_envs, num_steps]


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """How returns and actions are drawn. Build one with `sampling_preset`."""

    mode: SamplingMode
    kappa: float = 10.0  # expert: weight of the "expert" log-likelihood over normalised returns
    num_return_samples: int = 128  # colab: keep the max of this many return samples
    return_inverse_temperature: float = 0.75  # colab: logits are multiplied by this
    target_return: float = 20.0  # target: the fixed return-to-go, in clipped-reward units
    action_top_percentile: float | None = None  # keep action logits strictly above this percentile
    action_inverse_temperature: float = 1.0
    mask_episode_start: bool = True  # False: pad with blank frames marked real, as the notebook does

    def __post_init__(self) -> None:
        for name in ("kappa", "target_return", "return_inverse_temperature", "action_inverse_temperature"):
            if not np.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be a finite number, got {getattr(self, name)}")
        if self.kappa < 0:  # log P(expert | R) = kappa * normalised R rises with R (paper, section 3.4)
            raise ValueError(f"kappa must be >= 0 (0 samples returns from the model's own distribution; "
                             f"a negative kappa would favour low returns), got {self.kappa}")

    def settings(self) -> dict[str, object]:
        """The fields this mode reads, for a report: a colab or BC report listing ``kappa`` read as
        if it had been applied."""
        unused = {name for mode, names in _MODE_FIELDS.items() if mode != self.mode for name in names}
        return {name: value for name, value in dataclasses.asdict(self).items() if name not in unused}


_MODE_FIELDS = {"expert": ("kappa",), "colab": ("num_return_samples", "return_inverse_temperature"),
                "target": ("target_return",), "bc": ()}  # the return settings each mode reads (`Policy`)


_PRESETS: dict[str, SamplingConfig] = {
    "expert": SamplingConfig(mode="expert"),
    "colab": SamplingConfig(mode="colab", action_top_percentile=50.0, mask_episode_start=False),
    "target": SamplingConfig(mode="target"),
    "bc": SamplingConfig(mode="bc"),
}
SAMPLING_MODES = tuple(_PRESETS)


def sampling_preset(mode: str, **overrides) -> SamplingConfig:
    """The named mode's settings, with any field overridden (e.g. ``kappa=0``)."""
    if mode not in _PRESETS:
        raise ValueError(f"unknown sampling mode {mode!r}: expected one of {', '.join(SAMPLING_MODES)}")
    return dataclasses.replace(_PRESETS[mode], **overrides)


# (R - R_low) / (R_high - R_low) for each of the 120 return classes: 0 for -20, 1 for 99.
_NORMALISED_RETURNS = np.linspace(0.0, 1.0, tokens.NUM_RETURNS, dtype=np.float32)


def expert_return_logits(return_logits: jax.Array, kappa: float) -> jax.Array:
    """log P(R) + kappa * normalised R, up to a constant: the paper's expert-return posterior."""
    return return_logits + kappa * _NORMALISED_RETURNS


def sample_expert_returns(rng: jax.Array, return_logits: jax.Array, kappa: float) -> jax.Array:
    """[B, 120] logits -> [B] return class ids from the expert posterior."""
    return jax.random.categorical(rng, expert_return_logits(return_logits, kappa), axis=-1)


def sample_max_returns(
    rng: jax.Array, return_logits: jax.Array, num_samples: int, inverse_temperature: float
) -> jax.Array:
    """[B, 120] logits -> [B] the largest of `num_samples` return classes drawn per row."""
    samples = jax.random.categorical(
        rng, inverse_temperature * return_logits, axis=-1, shape=(num_samples, return_logits.shape[0])
    )  # [num_samples, B]
    return samples.max(axis=0)


def keep_above_percentile(logits: jax.Array, percentile: float) -> jax.Array:
    """Logits strictly above their row's percentile (linear interpolation); the rest -inf."""
    threshold = jnp.percentile(logits, percentile, axis=-1, keepdims=True)
    return jnp.where(logits > threshold, logits, -jnp.inf)


def sample_actions(rng: jax.Array, action_logits: jax.Array, sampling: SamplingConfig) -> jax.Array:
    """[B, 18] logits -> [B] full-set action ids."""
    logits = sampling.action_inverse_temperature * action_logits
    if sampling.action_top_percentile is not None:
        logits = keep_above_percentile(logits, sampling.action_top_percentile)
    return jax.random.categorical(rng, logits, axis=-1)


def initial_context(num_envs: int, num_steps: int) -> Context:
    """An all-padding context; the first `Policy.act` call marks every environment as starting."""
    return {
        "observations": jnp.zeros((num_envs, num_steps, *tokens.FRAME_SHAPE), jnp.uint8),
        "returns_to_go": jnp.zeros((num_envs, num_steps), jnp.int32),
        "actions": jnp.zeros((num_envs, num_steps), jnp.int32),
        "rewards": jnp.zeros((num_envs, num_steps), jnp.int32),
        "step_mask": jnp.zeros((num_envs, num_steps), bool),
    }


def advance_context(
    context: Context,
    observations: jax.Array,
    episode_starts: jax.Array,
    previous_reward_tokens: jax.Array,
    mask_episode_start: bool,
) -> Context:
    """Records the last step's reward, slides every window by one step and appends the new frame.

    observations: uint8 [B, 84, 84, 1]; episode_starts: bool [B] (the frame is an episode's first);
    previous_reward_tokens: int32 [B], the reward token of the step that led to these frames.
    """
    context = dict(context, rewards=context["rewards"].at[:, -1].set(previous_reward_tokens))
    shifted = {key: jnp.roll(value, -1, axis=1) for key, value in context.items()}
    # A new episode forgets the old one: history becomes padding (masked, or blank "real" steps).
    history_kept = ~episode_starts[:, None]  # [B, 1]
    for key in ("observations", "returns_to_go", "actions", "rewards"):
        keep = history_kept.reshape(history_kept.shape + (1,) * (shifted[key].ndim - 2))
        shifted[key] = jnp.where(keep, shifted[key], jnp.zeros_like(shifted[key]))
    padding_is_real = not mask_episode_start
    shifted["step_mask"] = jnp.where(history_kept, shifted["step_mask"], padding_is_real)
    # The newest step: its frame is known; return, action and reward are filled in later.
    shifted["observations"] = shifted["observations"].at[:, -1].set(observations)
    for key in ("returns_to_go", "actions", "rewards"):
        shifted[key] = shifted[key].at[:, -1].set(0)
    shifted["step_mask"] = shifted["step_mask"].at[:, -1].set(True)
    return shifted


def return_slots(step_mask: jax.Array, single_return_token: bool) -> jax.Array:
    """int [B]: the window step whose return-to-go is sampled and written.

    With a single return token the model sees only the first real step's return (step 0 once the
    window is full), so that one is re-sampled every step, as in the released notebook. Otherwise
    the newest step's return is sampled and earlier samples stay in the window as its history.
    """
    if single_return_token:
        return jnp.argmax(step_mask, axis=1)
    return jnp.full(step_mask.shape[:1], step_mask.shape[1] - 1)


def _sample_step(
    graphdef: nnx.GraphDef,
    sampling: SamplingConfig,
    single_return_token: bool,
    state: nnx.State,
    context: Context,
    rng: jax.Array,
) -> tuple[jax.Array, Context]:
    """Returns [B] full-set actions and the context with the chosen returns and actions written."""
    model = nnx.merge(graphdef, state)
    return_rng, action_rng = jax.random.split(rng)
    returns = context["returns_to_go"]
    if sampling.mode == "target":
        target = int(tokens.encode_return(np.asarray(sampling.target_return)))
        returns = jnp.full_like(returns, target)
    elif sampling.mode in ("expert", "colab"):
        rows = jnp.arange(returns.shape[0])
        slots = return_slots(context["step_mask"], single_return_token)
        if single_return_token:
            return_logits = model.visible_frame_return_logits(context, slots)
        else:
            return_logits = model.step_logits(context, "return", slots)  # [B, 120]
        if sampling.mode == "expert":
            chosen = sample_expert_returns(return_rng, return_logits, sampling.kappa)
        else:
            chosen = sample_max_returns(
                return_rng, return_logits, sampling.num_return_samples, sampling.return_inverse_temperature
            )
        returns = returns.at[rows, slots].set(chosen.astype(jnp.int32))
    context = dict(context, returns_to_go=returns)
    newest = jnp.full(returns.shape[:1], returns.shape[1] - 1)
    action_logits = model.step_logits(context, "action", newest)  # [B, 18]
    actions = sample_actions(action_rng, action_logits, sampling).astype(jnp.int32)
    return actions, dict(context, actions=context["actions"].at[:, -1].set(actions))


class Policy:
    """One model, one jitted sampling step for any fixed number of environments.

    The model must follow the batch contract, carry its `ModelConfig` as ``model.config``
    (num_steps, single_return_token, behaviour_cloning) and give one head's logits at one window
    step per row (``step_logits``), as `MultiGameDecisionTransformer` does.
    """

    def __init__(self, model: nnx.Module, sampling: SamplingConfig):
        config = model.config
        if (sampling.mode == "bc") != config.behaviour_cloning:
            kind = "a behaviour-cloning" if config.behaviour_cloning else "a return-conditioned"
            raise ValueError(f"sampling mode {sampling.mode!r} does not fit {kind} model")
        graphdef, self._state = nnx.split(model)
        self.num_steps = config.num_steps
        self.sampling = sampling

        def step(state, context, observations, episode_starts, previous_reward_tokens, rng):
            context = advance_context(
                context, observations, episode_starts, previous_reward_tokens, sampling.mask_episode_start
            )
            return _sample_step(graphdef, sampling, config.single_return_token, state, context, rng)

        self._step = jax.jit(step, donate_argnums=(1,))

    def initial_context(self, num_envs: int) -> Context:
        return initial_context(num_envs, self.num_steps)

    def act(
        self,
        context: Context,
        observations: np.ndarray,
        episode_starts: np.ndarray,
        previous_reward_tokens: np.ndarray,
        rng: jax.Array,
    ) -> tuple[jax.Array, Context]:
        """One environment step for every environment: ([B] full-set actions, the new context).

        The returned actions are a device array; reading them (``np.asarray``) waits for the device,
        so the caller can do host work in between.
        """
        return self._step(self._state, context, observations, episode_starts, previous_reward_tokens, rng)

