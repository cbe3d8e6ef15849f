"""Source algorithms of Algorithm Distillation: reinforcement learners whose learning histories
AD distils (Laskin et al. 2022, §3-4), run as pure JAX.

A history is one learner, from scratch, on one task, for E episodes of a fixed length L: E * L
(observation, action, reward) steps in time order. `rollout` builds a whole history in one
`lax.scan` (episodes) over a `lax.scan` (steps), `vmap`s it over tasks and several histories per
task, and jits the lot, so thousands of learners run at once. A history's random stream depends
only on (seed, history id), so splitting the work into chunks does not change the data.

Sources (SOURCES; every hyper-parameter is a dataclass field, recorded with the data):

* ``thompson``: Thompson sampling for Bernoulli bandits, Beta(1, 1) priors (Thompson 1933; Russo
  et al., "A Tutorial on Thompson Sampling", §3). Bandits only.
* ``ucb1``: UCB1 (Auer, Cesa-Bianchi and Fischer 2002, Fig. 1): pull each arm once, then the arm
  maximising mean + sqrt(2 ln t / n_arm). Bandits only.
* ``q_learning``: tabular Q-learning (Watkins 1989; Sutton and Barto §6.5), state = observation id,
  epsilon-greedy with random tie-breaking, optimistic initial values; one update per step.
  Time-limit ends bootstrap (they are truncations); terminal states (env.terminated) do not.
* ``a2c``: advantage actor-critic (Mnih et al. 2016) with a tabular softmax policy and a tabular
  value (a linear layer on one-hot observations), updated with Adam once per episode on the
  episode's GAE(lambda) advantages (Schulman et al. 2016) and an entropy bonus. The AD paper used
  A3C with 100 asynchronous actors and an MLP; asynchrony only spreads one gradient estimator over
  threads, so A2C, its synchronous form, is the same algorithm for one learner, and with observation
  ids as input a table is exactly what a network on one-hot inputs computes, at a fraction of the
  cost, which is what lets thousands of learners run vmapped.
* ``ad_epsilon``: AD^epsilon noise distillation (Zisman et al. 2024, "Emergence of In-Context
  Reinforcement Learning from Noise Distillation", §3): no learning at all; the demonstrator
  (env.optimal_action, the optimal policy) acts through epsilon-greedy noise whose epsilon falls
  linearly with the step count, from `start_epsilon` to `final_epsilon` over the first
  `anneal_fraction` of the history, then stays there (the schedule of the AD^epsilon code:
  epsilon -= 1 / (0.9 * E * L) per step, from 1). The noise is a uniform action.
* ``expert``: the demonstrator alone (epsilon 0 throughout), the data of Expert Distillation.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, ClassVar, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mgdt_jax.core.advantages import generalized_advantages
from mgdt_jax.envs.base import Environment, Task
from mgdt_jax.recipes.ad.histories import Histories

AgentState = Any


class SourceError(ValueError):
    """A source that cannot run on an environment, or bad source settings; one-line message."""


class Transition(NamedTuple):
    observation: jax.Array  # int32 []: where the action was taken
    action: jax.Array  # int32 []
    reward: jax.Array  # float32 []
    next_observation: jax.Array  # int32 []
    terminated: jax.Array  # bool []: the next state is terminal (no bootstrapping from it)
    done: jax.Array  # bool []: last step of the episode


class Source(Protocol):
    name: str

    def check(self, env: Environment) -> None:
        """Raises SourceError when the source cannot learn on env."""

    def init(self, env: Environment, task: Task, key: jax.Array, num_steps: int) -> AgentState:
        """A fresh learner for one task; num_steps = the history's length in steps."""

    def act(self, env: Environment, agent: AgentState, observation: jax.Array, key: jax.Array) -> jax.Array:
        """int32 [] action."""

    def observe(self, env: Environment, agent: AgentState, transition: Transition) -> AgentState:
        """Learning after every step."""

    def end_episode(self, env: Environment, agent: AgentState, episode: Transition) -> AgentState:
        """Learning after every episode; `episode` leaves are [episode_length]."""

    def config(self) -> dict:
        """The source's settings, JSON-ready."""


def argmax_random_ties(key: jax.Array, values: jax.Array) -> jax.Array:
    """Index of a maximum of values [n], uniform among the tied maxima (a plain argmax would
    always pick the first, which biases every learner that starts with equal values)."""
    tied = values == values.max()
    return jnp.argmax(jnp.where(tied, jax.random.uniform(key, values.shape), -1.0)).astype(jnp.int32)


class _Base:
    """Defaults for the hooks a source does not need; config() lists the dataclass fields."""

    # Each numeric setting's interval, e.g. "(0, 1]": a value outside it (NaN included) is refused.
    intervals: ClassVar[dict[str, str]] = {}

    def check(self, env: Environment) -> None:
        for name, interval in self.intervals.items():
            if not _within(float(getattr(self, name)), interval):
                raise SourceError(f"source {self.name}: {name} {getattr(self, name)!r} is outside {interval}")

    def observe(self, env: Environment, agent: AgentState, transition: Transition) -> AgentState:
        return agent

    def end_episode(self, env: Environment, agent: AgentState, episode: Transition) -> AgentState:
        return agent

    def config(self) -> dict:
        return {"name": self.name, **{f.name: getattr(self, f.name) for f in dataclasses.fields(self)}}


def _within(value: float, interval: str) -> bool:
    """Whether ``value`` lies in ``interval``, written "[low, high)" and the like (NaN never does)."""
    low, high = (float(bound) for bound in interval[1:-1].split(","))
    above = value >= low if interval[0] == "[" else value > low
    below = value <= high if interval[-1] == "]" else value < high
    return above and below


def _check_bandit(source: Source, env: Environment) -> None:
    if env.num_observations != 1 or env.episode_length != 1:
        raise SourceError(f"source {source.name}: needs a bandit (one observation, one pull per episode); "
                          f"{env.name} has {env.num_observations} observations and {env.episode_length}-step episodes")


class BetaCounts(NamedTuple):
    successes: jax.Array  # float32 [arms]: Beta alpha - prior
    failures: jax.Array  # float32 [arms]: Beta beta - prior


@dataclasses.dataclass(frozen=True)
class ThompsonSampling(_Base):
    prior_alpha: float = 1.0
    prior_beta: float = 1.0

    name = "thompson"
    intervals = {"prior_alpha": "(0, inf)", "prior_beta": "(0, inf)"}

    def check(self, env: Environment) -> None:
        super().check(env)
        _check_bandit(self, env)

    def init(self, env: Environment, task: Task, key: jax.Array, num_steps: int) -> BetaCounts:
        zeros = jnp.zeros(env.num_actions, jnp.float32)
        return BetaCounts(zeros, zeros)

    def act(self, env: Environment, agent: BetaCounts, observation: jax.Array, key: jax.Array) -> jax.Array:
        samples = jax.random.beta(key, self.prior_alpha + agent.successes, self.prior_beta + agent.failures)
        return jnp.argmax(samples).astype(jnp.int32)

    def observe(self, env: Environment, agent: BetaCounts, transition: Transition) -> BetaCounts:
        pulled = jax.nn.one_hot(transition.action, env.num_actions)
        return BetaCounts(agent.successes + pulled * transition.reward,
                          agent.failures + pulled * (1.0 - transition.reward))


class ArmStatistics(NamedTuple):
    pulls: jax.Array  # float32 [arms]
    reward_sums: jax.Array  # float32 [arms]


@dataclasses.dataclass(frozen=True)
class UCB1(_Base):
    exploration: float = 2.0  # c in sqrt(c ln t / n); 2 is Auer et al.'s UCB1

    name = "ucb1"
    intervals = {"exploration": "[0, inf)"}

    def check(self, env: Environment) -> None:
        super().check(env)
        _check_bandit(self, env)

    def init(self, env: Environment, task: Task, key: jax.Array, num_steps: int) -> ArmStatistics:
        zeros = jnp.zeros(env.num_actions, jnp.float32)
        return ArmStatistics(zeros, zeros)

    def act(self, env: Environment, agent: ArmStatistics, observation: jax.Array, key: jax.Array) -> jax.Array:
        t = agent.pulls.sum()
        tried = agent.pulls > 0
        index = agent.reward_sums / jnp.maximum(agent.pulls, 1) + jnp.sqrt(
            self.exploration * jnp.log(jnp.maximum(t, 1)) / jnp.maximum(agent.pulls, 1))
        return argmax_random_ties(key, jnp.where(tried, index, jnp.inf))  # untried arms first

    def observe(self, env: Environment, agent: ArmStatistics, transition: Transition) -> ArmStatistics:
        pulled = jax.nn.one_hot(transition.action, env.num_actions)
        return ArmStatistics(agent.pulls + pulled, agent.reward_sums + pulled * transition.reward)


@dataclasses.dataclass(frozen=True)
class QLearning(_Base):
    learning_rate: float = 0.5
    discount: float = 0.9
    epsilon: float = 0.1
    initial_value: float = 1.0  # optimistic: unvisited actions look worth trying

    name = "q_learning"
    intervals = {"learning_rate": "(0, 1]", "discount": "[0, 1]", "epsilon": "[0, 1]", "initial_value": "(-inf, inf)"}

    def init(self, env: Environment, task: Task, key: jax.Array, num_steps: int) -> jax.Array:
        return jnp.full((env.num_observations, env.num_actions), self.initial_value, jnp.float32)

    def act(self, env: Environment, agent: jax.Array, observation: jax.Array, key: jax.Array) -> jax.Array:
        explore_key, random_key, tie_key = jax.random.split(key, 3)
        greedy = argmax_random_ties(tie_key, agent[observation])
        random = jax.random.randint(random_key, (), 0, env.num_actions, jnp.int32)
        return jnp.where(jax.random.bernoulli(explore_key, self.epsilon), random, greedy)

    def observe(self, env: Environment, agent: jax.Array, transition: Transition) -> jax.Array:
        bootstrap = jnp.where(transition.terminated, 0.0, agent[transition.next_observation].max())
        target = transition.reward + self.discount * bootstrap
        old = agent[transition.observation, transition.action]
        return agent.at[transition.observation, transition.action].set(old + self.learning_rate * (target - old))


class ActorCriticState(NamedTuple):
    params: dict  # "logits": float32 [observations, actions], "values": float32 [observations]
    optimizer: Any


@dataclasses.dataclass(frozen=True)
class ActorCritic(_Base):
    learning_rate: float = 0.05
    discount: float = 0.99
    gae_lambda: float = 0.95
    entropy_coef: float = 0.01
    value_coef: float = 0.5

    name = "a2c"
    intervals = {"learning_rate": "(0, inf)", "discount": "[0, 1]", "gae_lambda": "[0, 1]",
                 "entropy_coef": "[0, inf)", "value_coef": "[0, inf)"}

    def _optimizer(self) -> optax.GradientTransformation:
        return optax.adam(self.learning_rate)

    def init(self, env: Environment, task: Task, key: jax.Array, num_steps: int) -> ActorCriticState:
        params = {"logits": jnp.zeros((env.num_observations, env.num_actions), jnp.float32),
                  "values": jnp.zeros((env.num_observations,), jnp.float32)}
        return ActorCriticState(params, self._optimizer().init(params))

    def act(self, env: Environment, agent: ActorCriticState, observation: jax.Array, key: jax.Array) -> jax.Array:
        return jax.random.categorical(key, agent.params["logits"][observation]).astype(jnp.int32)

    def _loss(self, params: dict, episode: Transition) -> jax.Array:
        values = params["values"][episode.observation]
        fixed_values = jax.lax.stop_gradient(values)
        # GAE through the episode; its last step bootstraps from V(next) (a time limit).
        advantages = generalized_advantages(
            episode.reward, fixed_values, jax.lax.stop_gradient(params["values"][episode.next_observation]),
            episode.terminated, episode.terminated, self.discount, self.gae_lambda,
        )
        returns = advantages + fixed_values
        log_probs = jax.nn.log_softmax(params["logits"][episode.observation])
        chosen = jnp.take_along_axis(log_probs, episode.action[:, None], axis=1)[:, 0]
        entropy = -(jnp.exp(log_probs) * log_probs).sum(-1)
        policy_loss = -(chosen * advantages).mean() - self.entropy_coef * entropy.mean()
        return policy_loss + self.value_coef * ((values - returns) ** 2).mean()

    def end_episode(self, env: Environment, agent: ActorCriticState, episode: Transition) -> ActorCriticState:
        grads = jax.grad(self._loss)(agent.params, episode)
        updates, optimizer = self._optimizer().update(grads, agent.optimizer, agent.params)
        return ActorCriticState(optax.apply_updates(agent.params, updates), optimizer)


class NoisyDemonstratorState(NamedTuple):
    task: Task
    step: jax.Array  # int32 []: steps taken in the history so far
    num_steps: jax.Array  # int32 []: the history's length


@dataclasses.dataclass(frozen=True)
class NoiseDistillation(_Base):
    start_epsilon: float = 1.0
    final_epsilon: float = 0.0
    anneal_fraction: float = 0.9
    source_name: str = "ad_epsilon"

    intervals = {"start_epsilon": "[0, 1]", "final_epsilon": "[0, 1]", "anneal_fraction": "(0, 1]"}

    @property
    def name(self) -> str:
        return self.source_name

    def epsilon(self, step: jax.Array, num_steps: jax.Array) -> jax.Array:
        """The noise level at a step of the history (module doc)."""
        progress = jnp.minimum(step / jnp.maximum(self.anneal_fraction * num_steps, 1.0), 1.0)
        return self.start_epsilon + (self.final_epsilon - self.start_epsilon) * progress

    def init(self, env: Environment, task: Task, key: jax.Array, num_steps: int) -> NoisyDemonstratorState:
        return NoisyDemonstratorState(task, jnp.int32(0), jnp.int32(num_steps))

    def act(self, env: Environment, agent: NoisyDemonstratorState, observation: jax.Array,
            key: jax.Array) -> jax.Array:
        noise_key, random_key = jax.random.split(key)
        random = jax.random.randint(random_key, (), 0, env.num_actions, jnp.int32)
        noisy = jax.random.bernoulli(noise_key, self.epsilon(agent.step, agent.num_steps))
        return jnp.where(noisy, random, env.optimal_action(agent.task, observation))

    def observe(self, env: Environment, agent: NoisyDemonstratorState,
                transition: Transition) -> NoisyDemonstratorState:
        return agent._replace(step=agent.step + 1)

    def config(self) -> dict:
        return {"name": self.name, "start_epsilon": self.start_epsilon, "final_epsilon": self.final_epsilon,
                "anneal_fraction": self.anneal_fraction}


SOURCES: dict[str, Source] = {source.name: source for source in (
    ThompsonSampling(), UCB1(), QLearning(), ActorCritic(), NoiseDistillation(),
    NoiseDistillation(start_epsilon=0.0, final_epsilon=0.0, source_name="expert"))}


def make_source(name: str, **settings: Any) -> Source:
    """The registered source `name` with some settings replaced (values cast to the field's type)."""
    try:
        source = SOURCES[name]
    except KeyError:
        raise SourceError(f"unknown source {name!r}; known: {', '.join(SOURCES)}") from None
    fields = {f.name: f for f in dataclasses.fields(source) if f.name != "source_name"}
    unknown = sorted(set(settings) - set(fields))
    if unknown:
        raise SourceError(f"source {name}: unknown setting(s) {unknown}; settings: {sorted(fields)}")
    try:
        cast = {key: type(getattr(source, key))(value) for key, value in settings.items()}
    except (TypeError, ValueError) as error:
        raise SourceError(f"source {name}: bad setting value ({error})") from None
    return dataclasses.replace(source, **cast)


class Rollout(NamedTuple):
    """Learning histories as generated (leading axis: history)."""

    task_ids: jax.Array  # int32 [H]
    history_ids: jax.Array  # int32 [H]
    observations: jax.Array  # int32 [H, E, L]: observation each action was taken at
    actions: jax.Array  # int32 [H, E, L]
    rewards: jax.Array  # float32 [H, E, L]
    final_observations: jax.Array  # int32 [H, E]: observation after each episode's last action
    terminated: jax.Array  # bool [H, E]: the episode ended in a terminal state


def _history(env: Environment, source: Source, task: Task, key: jax.Array, num_episodes: int):
    init_key, run_key = jax.random.split(key)
    agent = source.init(env, task, init_key, num_episodes * env.episode_length)

    def episode(agent, key):
        reset_key, steps_key = jax.random.split(key)
        state, observation = env.reset(task, reset_key)

        def step(carry, key):
            agent, state, observation = carry
            act_key, env_key = jax.random.split(key)
            action = source.act(env, agent, observation, act_key)
            state, next_observation, reward, done = env.step(task, state, action, env_key)
            transition = Transition(observation, action, reward, next_observation, env.terminated(state), done)
            return (source.observe(env, agent, transition), state, next_observation), transition

        (agent, state, observation), steps = jax.lax.scan(
            step, (agent, state, observation), jax.random.split(steps_key, env.episode_length))
        agent = source.end_episode(env, agent, steps)
        return agent, (steps.observation, steps.action, steps.reward, observation, env.terminated(state))

    _, outputs = jax.lax.scan(episode, agent, jax.random.split(run_key, num_episodes))
    return outputs


@functools.partial(jax.jit, static_argnames=("env", "source", "num_episodes", "histories_per_task"))
def _rollout(env, source, tasks, key, first_history_id, num_episodes, histories_per_task) -> Rollout:
    tasks = jax.tree.map(lambda leaf: jnp.repeat(leaf, histories_per_task, axis=0), tasks)
    history_ids = first_history_id + jnp.arange(tasks.id.shape[0], dtype=jnp.int32)
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(history_ids)
    outputs = jax.vmap(lambda task, k: _history(env, source, task, k, num_episodes))(tasks, keys)
    return Rollout(tasks.id, history_ids, *outputs)


def rollout(env: Environment, source: Source, tasks: Task, seed: int, num_episodes: int,
            histories_per_task: int = 1, first_history_id: int = 0) -> Rollout:
    """`histories_per_task` learning histories of `num_episodes` episodes on each task (leaves
    [N, ...]) -> a Rollout of H = N * histories_per_task histories, history i on task
    i // histories_per_task, numbered first_history_id + i. History h's randomness is
    fold_in(key(seed), h), so chunks of tasks with consecutive first_history_id give the data one
    call would. SourceError if the source cannot run on env."""
    source.check(env)
    if num_episodes < 1 or histories_per_task < 1:
        raise SourceError(f"num_episodes ({num_episodes}) and histories_per_task ({histories_per_task}) must be >= 1")
    return _rollout(env, source, tasks, jax.random.key(seed), jnp.int32(first_history_id), num_episodes,
                    histories_per_task)


def to_histories(rollout: Rollout, env: Environment, source: Source, metadata: dict | None = None) -> Histories:
    """A Rollout as the in-memory Histories that AD training reads (steps flattened over episodes)."""
    observations, actions, rewards = (np.asarray(x).reshape(x.shape[0], -1)
                                      for x in (rollout.observations, rollout.actions, rollout.rewards))
    return Histories(
        observations=observations.astype(np.int32), actions=actions.astype(np.int32),
        rewards=rewards.astype(np.float32), task_ids=np.asarray(rollout.task_ids, np.int32),
        env_name=env.name, episode_length=env.episode_length, num_actions=env.num_actions,
        num_observations=env.num_observations, source=source.name,
        metadata={"history_ids": np.asarray(rollout.history_ids, np.int64), **(metadata or {})})


def steps_per_second(env: Environment, source: Source, num_tasks: int, num_episodes: int,
                     seed: int = 0, repeats: int = 1) -> dict:
    """Times `rollout` on num_tasks tasks drawn from env: the first call (compile and run) apart,
    then the best of `repeats` steady-state calls with other seeds. Returns {"steps", "compile_s",
    "seconds", "steps_per_s", "first_return", "last_return"}: env steps = learner steps summed over
    the vmapped histories; the returns are the mean episode return over the first and the last
    tenth of the episodes of the timed histories (does the source learn at this size?)."""
    tasks = env.sample_tasks(jax.random.key(seed), num_tasks)
    started = time.perf_counter()
    jax.block_until_ready(rollout(env, source, tasks, seed, num_episodes))
    compile_s = time.perf_counter() - started
    seconds = float("inf")
    for repeat in range(1, repeats + 1):
        started = time.perf_counter()
        rewards = jax.block_until_ready(rollout(env, source, tasks, seed + repeat, num_episodes).rewards)
        seconds = min(seconds, time.perf_counter() - started)
    returns = np.asarray(rewards).sum(-1)
    window = max(1, num_episodes // 10)
    steps = num_tasks * num_episodes * env.episode_length
    return {"steps": steps, "compile_s": compile_s, "seconds": seconds, "steps_per_s": steps / seconds,
            "first_return": float(returns[:, :window].mean()), "last_return": float(returns[:, -window:].mean())}
