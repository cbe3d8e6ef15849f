"""A compact PPO for continuous control, to train the MuJoCo experts of the JAT data.

PPO-clip (Schulman et al. 2017, "Proximal Policy Optimization Algorithms", Alg. 1 and eq. 7) with
the implementation details of the MuJoCo benchmarks (Huang et al. 2022, "The 37 Implementation
Details of PPO", continuous-action section): a Gaussian policy with state-independent log std,
separate tanh MLPs (64, 64) for policy and value with orthogonal initialisation, GAE(lambda)
(Schulman et al. 2016, eq. 16), advantages normalised per minibatch, running normalisation of
observations (clipped to +-10) and of rewards by the std of the discounted return, a linearly
annealed Adam learning rate, global gradient clipping, and the value bootstrapped from the final
observation when a time limit cuts an episode.

The environments are gymnasium MuJoCo envs stepped on the host, one after another; the networks'
forward pass for acting runs in NumPy (a few hundred flops per step, cheaper than a dispatch) and
the whole update (epochs x minibatches) is one jitted JAX call.

An expert is saved as EXPERTS/<task>.npz: the policy's weights and log std, the observation
statistics, the env id and the package versions it was trained with. It acts as it was trained, by
sampling its Gaussian: a student cloning it then sees the states around the expert's path and the
expert's way back from them, not only the path itself (docs/jat.md §4).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm

from data_pipelines.jat.experts import ExpertError
from mgdt_jax.core.advantages import generalized_advantages
from mgdt_jax.recipes.jat.references import installed_versions


@dataclasses.dataclass(frozen=True)
class PPOConfig:
    """Hyperparameters (defaults: CleanRL's `ppo_continuous_action`, with 8 envs x 256 steps)."""

    total_steps: int = 200_000
    num_envs: int = 8
    rollout_steps: int = 256  # per env; a batch is num_envs * rollout_steps transitions
    epochs: int = 10
    minibatches: int = 32
    learning_rate: float = 3e-4
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip: float = 0.2
    value_coef: float = 0.5
    entropy_coef: float = 0.0
    max_grad_norm: float = 0.5
    hidden: tuple[int, ...] = (64, 64)


# Environment steps and discount per task: each reaches about the best return of its env in 1-5
# minutes on 2 CPU cores (docs/jat.md). Swimmer needs the long horizon (its reward is forward speed).
TASK_CONFIGS = {
    "mujoco-pendulum": PPOConfig(total_steps=100_000),
    "mujoco-doublependulum": PPOConfig(total_steps=500_000),
    "mujoco-reacher": PPOConfig(total_steps=500_000),
    "mujoco-swimmer": PPOConfig(total_steps=500_000, gamma=0.9999),
}


class RunningMeanStd:
    """Mean and variance over all rows seen (Chan et al.'s parallel update)."""

    def __init__(self, shape: tuple[int, ...]):
        self.mean = np.zeros(shape, np.float64)
        self.var = np.ones(shape, np.float64)
        self.count = 1e-4

    def update(self, rows: np.ndarray) -> None:
        batch_mean, batch_var, batch_count = rows.mean(0), rows.var(0), len(rows)
        delta = batch_mean - self.mean
        total = self.count + batch_count
        self.mean = self.mean + delta * batch_count / total
        squares = self.var * self.count + batch_var * batch_count + delta**2 * self.count * batch_count / total
        self.var = squares / total
        self.count = total


def normalize(observation: np.ndarray, mean: np.ndarray, var: np.ndarray) -> np.ndarray:
    return np.clip((observation - mean) / np.sqrt(var + 1e-8), -10.0, 10.0).astype(np.float32)


def mlp(layers: list[tuple[Any, Any]], x, xp=np):
    """tanh MLP; `layers` is [(w, b), ...], the last layer linear. Works on NumPy or jax.numpy."""
    for w, b in layers[:-1]:
        x = xp.tanh(x @ w + b)
    w, b = layers[-1]
    return x @ w + b


def init_params(key, observation_size: int, action_size: int, hidden: tuple[int, ...]) -> dict:
    """Orthogonal weights (gain sqrt(2) hidden, 0.01 policy output, 1 value output), zero biases."""
    def network(key, out_size, out_gain):
        sizes = (observation_size, *hidden, out_size)
        keys = jax.random.split(key, len(sizes) - 1)
        gains = [np.sqrt(2)] * len(hidden) + [out_gain]
        return [(jax.nn.initializers.orthogonal(gain)(k, (n_in, n_out)), jnp.zeros(n_out))
                for k, n_in, n_out, gain in zip(keys, sizes[:-1], sizes[1:], gains)]

    policy_key, value_key = jax.random.split(key)
    return {"policy": network(policy_key, action_size, 0.01), "value": network(value_key, 1, 1.0),
            "log_std": jnp.zeros(action_size)}


def _loss(params, batch, config: PPOConfig):
    mean = mlp(params["policy"], batch["observations"], jnp)
    log_std = params["log_std"]
    log_prob = (-0.5 * ((batch["actions"] - mean) / jnp.exp(log_std)) ** 2 - log_std
                - 0.5 * jnp.log(2 * jnp.pi)).sum(-1)
    ratio = jnp.exp(log_prob - batch["log_probs"])
    advantages = batch["advantages"]
    advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    policy_loss = -jnp.minimum(ratio * advantages,
                               jnp.clip(ratio, 1 - config.clip, 1 + config.clip) * advantages).mean()
    value_loss = 0.5 * ((mlp(params["value"], batch["observations"], jnp)[:, 0] - batch["returns"]) ** 2).mean()
    entropy = (log_std + 0.5 * jnp.log(2 * jnp.pi * jnp.e)).sum()
    return policy_loss + config.value_coef * value_loss - config.entropy_coef * entropy


@functools.partial(jax.jit, static_argnames=("config", "optimizer"))
def _update(params, opt_state, batch, key, config: PPOConfig, optimizer):
    """All epochs x minibatches of one PPO update, as one jitted scan."""
    size = batch["returns"].shape[0]
    minibatch = size // config.minibatches

    def epoch(carry, key):
        def step(carry, indices):
            params, opt_state = carry
            grads = jax.grad(_loss)(params, jax.tree.map(lambda x: x[indices], batch), config)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), None

        order = jax.random.permutation(key, size)[: minibatch * config.minibatches]
        return jax.lax.scan(step, carry, order.reshape(config.minibatches, minibatch))[0], None

    (params, opt_state), _ = jax.lax.scan(epoch, (params, opt_state), jax.random.split(key, config.epochs))
    return params, opt_state


def train(env_id: str, config: PPOConfig, seed: int = 0, progress: bool = True) -> dict:
    """Trains a policy on `config.total_steps` environment steps; returns its arrays (see save)."""
    envs = [gym.make(env_id) for _ in range(config.num_envs)]
    low, high = envs[0].action_space.low, envs[0].action_space.high
    observations = np.stack([env.reset(seed=seed + i)[0] for i, env in enumerate(envs)])
    obs_stats, return_stats = RunningMeanStd(observations.shape[1:]), RunningMeanStd(())
    discounted = np.zeros(config.num_envs)
    key = jax.random.PRNGKey(seed)
    key, init_key = jax.random.split(key)
    params = init_params(init_key, observations.shape[1], low.shape[0], config.hidden)
    batch_size = config.num_envs * config.rollout_steps
    iterations = max(1, config.total_steps // batch_size)
    schedule = optax.linear_schedule(config.learning_rate, 0.0, iterations * config.epochs * config.minibatches)
    optimizer = optax.chain(optax.clip_by_global_norm(config.max_grad_norm), optax.adam(schedule, eps=1e-5))
    opt_state = optimizer.init(params)
    rng = np.random.default_rng(seed)
    episode_return, finished = np.zeros(config.num_envs), []
    shape = (config.rollout_steps, config.num_envs)
    with tqdm.tqdm(total=iterations * batch_size, unit="step", desc=f"PPO {env_id}", disable=not progress) as bar:
        for _ in range(iterations):
            host = jax.tree.map(np.asarray, params)
            std = np.exp(host["log_std"])
            buf = {name: np.zeros(shape, np.float32) for name in
                   ("rewards", "values", "next_values", "terminated", "ends", "log_probs")}
            buf["observations"] = np.zeros((*shape, observations.shape[1]), np.float32)
            buf["actions"] = np.zeros((*shape, low.shape[0]), np.float32)
            for t in range(config.rollout_steps):
                obs_stats.update(observations)
                normalized = normalize(observations, obs_stats.mean, obs_stats.var)
                mean = mlp(host["policy"], normalized)
                actions = mean + std * rng.standard_normal(mean.shape).astype(np.float32)
                buf["log_probs"][t] = (-0.5 * ((actions - mean) / std) ** 2 - np.log(std)
                                       - 0.5 * np.log(2 * np.pi)).sum(-1)
                buf["observations"][t], buf["actions"][t] = normalized, actions
                buf["values"][t] = mlp(host["value"], normalized)[:, 0]
                next_observations = np.empty_like(observations)
                final = np.empty_like(observations)
                for i, env in enumerate(envs):
                    obs, reward, terminated, truncated, _ = env.step(np.clip(actions[i], low, high))
                    episode_return[i] += reward
                    discounted[i] = discounted[i] * config.gamma + reward
                    final[i] = obs
                    buf["rewards"][t, i], buf["terminated"][t, i] = reward, terminated
                    buf["ends"][t, i] = terminated or truncated
                    if terminated or truncated:
                        finished.append(episode_return[i])
                        episode_return[i] = discounted[i] = 0.0
                        obs, _ = env.reset()
                    next_observations[i] = obs
                return_stats.update(discounted)
                buf["rewards"][t] /= np.sqrt(return_stats.var + 1e-8)
                # V(s_{t+1}) of the observation the action led to, before any reset (bootstraps time limits).
                buf["next_values"][t] = mlp(host["value"], normalize(final, obs_stats.mean, obs_stats.var))[:, 0]
                observations = next_observations
            advantages = np.asarray(generalized_advantages(
                buf["rewards"], buf["values"], buf["next_values"], buf["terminated"], buf["ends"],
                config.gamma, config.gae_lambda,
            ))
            batch = {"observations": buf["observations"].reshape(batch_size, -1),
                     "actions": buf["actions"].reshape(batch_size, -1),
                     "log_probs": buf["log_probs"].reshape(-1), "advantages": advantages.reshape(-1),
                     "returns": (advantages + buf["values"]).reshape(-1)}
            key, update_key = jax.random.split(key)
            params, opt_state = _update(params, opt_state, batch, update_key, config, optimizer)
            bar.update(batch_size)
            if finished:
                bar.set_postfix_str(f"return {np.mean(finished[-20:]):.1f}")
    for env in envs:
        env.close()
    host = jax.tree.map(np.asarray, params)
    return {"policy": host["policy"], "log_std": host["log_std"], "obs_mean": obs_stats.mean,
            "obs_var": obs_stats.var, "train_returns": np.asarray(finished[-20:], np.float64)}


class ExpertPolicy:
    """A trained policy sampling N(mean(o), exp(log_std)^2) per step; the recorder clips to the action bounds.

    ``seed`` fixes the noise, so a recording is repeatable.
    """

    def __init__(self, policy: list[tuple[np.ndarray, np.ndarray]], log_std: np.ndarray, obs_mean: np.ndarray,
                 obs_var: np.ndarray, seed: int = 0):
        self._policy, self._std, self._mean, self._var = policy, np.exp(log_std), obs_mean, obs_var
        self._rng = np.random.default_rng(seed)

    def begin(self, env: Any) -> None:
        pass

    def mean_action(self, observation: np.ndarray) -> np.ndarray:
        return mlp(self._policy, normalize(observation[None], self._mean, self._var))[0]

    def act(self, observation: np.ndarray) -> np.ndarray:
        mean = self.mean_action(observation)
        return (mean + self._std * self._rng.standard_normal(mean.shape)).astype(np.float32)


def save(path: Path, trained: dict, env_id: str, versions: dict, config: PPOConfig, seed: int) -> None:
    """Writes EXPERTS/<task>.npz under a temporary name, then renames it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {f"policy_{i}_{part}": array for i, layer in enumerate(trained["policy"])
              for part, array in zip("wb", layer)}
    info = {"env_id": env_id, "versions": versions, "config": dataclasses.asdict(config), "seed": seed,
            "train_return": float(np.mean(trained["train_returns"])) if len(trained["train_returns"]) else None}
    partial = path.with_name(path.name + ".partial")
    with open(partial, "wb") as file:
        np.savez(file, log_std=trained["log_std"], obs_mean=trained["obs_mean"], obs_var=trained["obs_var"],
                 info=np.asarray(json.dumps(info)), **arrays)
    os.replace(partial, path)


def load(path: Path, env_id: str, versions: dict, seed: int = 0) -> ExpertPolicy:
    """The expert in `path`, its noise seeded by `seed`; ExpertError if it was trained on another env id or
    package versions, or saved without its log std (before the experts sampled their actions)."""
    try:
        with np.load(path) as content:
            info = json.loads(str(content["info"]))
            layers = sorted({int(name.split("_")[1]) for name in content.files if name.startswith("policy_")})
            policy = [(content[f"policy_{i}_w"], content[f"policy_{i}_b"]) for i in layers]
            obs_mean, obs_var = content["obs_mean"], content["obs_var"]
            log_std = content["log_std"] if "log_std" in content.files else None
    except (OSError, ValueError, KeyError) as error:
        # First sentence only: numpy's pickle refusal goes on to advise loading the file unsafely
        raise ExpertError(f"{path}: not an expert file ({str(error).split('. ')[0]})") from None
    if log_std is None:
        raise ExpertError(f"{path}: an expert saved without its policy's log std (it acted with its mean); "
                          "remove it to train a new expert")
    if info["env_id"] != env_id or info["versions"] != versions:
        raise ExpertError(f"{path}: trained on {info['env_id']} with {info['versions']}, not {env_id} with "
                          f"{versions}; remove it to train a new expert")
    return ExpertPolicy(policy, log_std, obs_mean, obs_var, seed)


def load_expert(task: str, experts_dir: Path | None, env_id: str, seed: int = 0,
                action_seed: int | None = None) -> ExpertPolicy:
    """EXPERTS/<task>.npz, trained first (TASK_CONFIGS[task], ``seed``) when it does not exist; its
    sampled actions' noise seeded by ``action_seed`` (default ``seed``)."""
    if experts_dir is None:
        raise ExpertError(f"{task}: needs a directory of PPO experts (--experts)")
    versions = installed_versions(("gymnasium", "mujoco"))
    path = Path(experts_dir) / f"{task}.npz"
    if not path.exists():
        config = TASK_CONFIGS.get(task, PPOConfig())
        started = time.perf_counter()
        trained = train(env_id, config, seed)
        save(path, trained, env_id, versions, config, seed)
        print(f"trained a PPO expert for {task} in {time.perf_counter() - started:.0f}s "
              f"(last training returns {np.mean(trained['train_returns']):.1f}): {path}")
    return load(path, env_id, versions, seed if action_seed is None else action_seed)
