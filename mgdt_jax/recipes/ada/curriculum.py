"""AdA's automatic curriculum over ruleset ids: prioritised level replay (PLR) among the tasks that
pass a no-op filter. The state is a pytree of arrays (carry it in the train state, checkpoint it);
the settings are static fields of it.

No-op filter (AdA, Adaptive Agent Team 2023, auto-curriculum section): a task is admitted for
replay only while the agent's score on it beats a no-op policy's by more than `margin` and is below
`solved_threshold` (the agent has not solved it); every evaluation of a task re-decides, so a task
leaves once solved and may come back.

PLR (Jiang, Grefenstette, Rocktaschel 2021, "Prioritized Level Replay", §3 eqs. 1-2; released code
facebookresearch/level-replay `level_sampler.py`, `score_transform="rank"`, staleness "power" with
exponent 1) over the admitted tasks A, with priority S_i, last update step C_i and current step c:

    P_S(i) = h_i^(1/beta) / sum_{j in A} h_j^(1/beta),  h_i = 1 / rank(S_i)  (rank 1: highest S)
    P_C(i) = (c - C_i) / sum_{j in A} (c - C_j)          (uniform over A when every c - C_j is 0)
    P_replay(i) = (1 - rho) P_S(i) + rho P_C(i)

with temperature beta and staleness coefficient rho; ties in S rank by ascending id. As in robust
PLR (Jiang, Dennis et al. 2021, "Replay-Guided Adversarial Environment Design", Algorithm 1), each
draw replays with a fixed probability p (`replay_prob`, once at least `min_admitted` tasks are
admitted) and otherwise explores: a uniform draw over the training tasks not admitted (over all
training tasks when every one is admitted). So a draw gives task i with probability

    P(i) = q P_replay(i) + (1 - q) P_explore(i),  q = p if |A| >= min_admitted else 0.

Priorities: by default the regret proxy `solved_threshold - score` (a task further from solved
ranks higher; with rank prioritisation only the order counts); pass `priorities` to `update` for
another, e.g. PLR's positive value loss.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct


class CurriculumState(struct.PyTreeNode):
    """Per-task arrays over all ruleset ids 0..N-1 of a benchmark; only `candidate` ids (the
    training split) are ever drawn."""

    priorities: jax.Array  # float32 [N]: S_i, from the last update of task i
    scores: jax.Array  # float32 [N]: the agent's last score on task i
    noop_scores: jax.Array  # float32 [N]: the no-op policy's last score on task i
    last_updated: jax.Array  # int32 [N]: C_i, the step of task i's last update (0: never)
    seen: jax.Array  # bool [N]: task i has been updated at least once
    admitted: jax.Array  # bool [N]: task i passes the no-op filter (and is a candidate)
    candidate: jax.Array  # bool [N]: task i may be drawn (the training split)
    step: jax.Array  # int32 []: c, the latest step given to update
    temperature: float = struct.field(pytree_node=False, default=0.3)
    staleness_coef: float = struct.field(pytree_node=False, default=0.3)
    replay_prob: float = struct.field(pytree_node=False, default=0.5)
    margin: float = struct.field(pytree_node=False, default=0.05)
    solved_threshold: float = struct.field(pytree_node=False, default=0.9)
    min_admitted: int = struct.field(pytree_node=False, default=1)

    @property
    def num_levels(self) -> int:
        return self.priorities.shape[0]


def init(num_levels: int, train_ids: jax.Array | None = None, *, temperature: float = 0.3,
         staleness_coef: float = 0.3, replay_prob: float = 0.5, margin: float = 0.05,
         solved_threshold: float = 0.9, min_admitted: int = 1) -> CurriculumState:
    """A curriculum over ruleset ids 0..num_levels-1 that draws only `train_ids` (int [m]; None:
    all). Nothing is admitted yet, so the first draws are uniform over `train_ids`. ValueError for
    settings out of range."""
    if num_levels < 1:
        raise ValueError(f"num_levels {num_levels}: must be positive")
    if temperature <= 0:
        raise ValueError(f"temperature {temperature}: must be positive")
    for name, value in (("staleness_coef", staleness_coef), ("replay_prob", replay_prob)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} {value}: must be in [0, 1]")
    if min_admitted < 1:
        raise ValueError(f"min_admitted {min_admitted}: must be positive")
    if train_ids is None:
        candidate = jnp.ones(num_levels, bool)
    else:
        candidate = jnp.zeros(num_levels, bool).at[jnp.asarray(train_ids, jnp.int32)].set(True)
    zeros = jnp.zeros(num_levels, jnp.float32)
    return CurriculumState(
        priorities=zeros, scores=zeros, noop_scores=zeros, last_updated=jnp.zeros(num_levels, jnp.int32),
        seen=jnp.zeros(num_levels, bool), admitted=jnp.zeros(num_levels, bool), candidate=candidate,
        step=jnp.int32(0), temperature=float(temperature), staleness_coef=float(staleness_coef),
        replay_prob=float(replay_prob), margin=float(margin), solved_threshold=float(solved_threshold),
        min_admitted=int(min_admitted))


def replay_distribution(state: CurriculumState) -> jax.Array:
    """float32 [N]: P_replay over the admitted tasks (module docstring); zeros when none is."""
    admitted = state.admitted & state.candidate
    order = jnp.argsort(jnp.where(admitted, -state.priorities, jnp.inf), stable=True)
    rank = jnp.zeros(state.num_levels, jnp.float32).at[order].set(jnp.arange(1, state.num_levels + 1,
                                                                             dtype=jnp.float32))
    h = jnp.where(admitted, jnp.exp(-jnp.log(rank) / state.temperature), 0.0)
    p_rank = h / jnp.maximum(h.sum(), 1e-30)
    staleness = jnp.where(admitted, state.step - state.last_updated, 0).astype(jnp.float32)
    uniform = admitted / jnp.maximum(admitted.sum(), 1)
    p_stale = jnp.where(staleness.sum() > 0, staleness / jnp.maximum(staleness.sum(), 1e-30), uniform)
    return (1.0 - state.staleness_coef) * p_rank + state.staleness_coef * p_stale


def replay_fraction(state: CurriculumState) -> jax.Array:
    """float32 []: q, the chance that a draw replays an admitted task."""
    num_admitted = (state.admitted & state.candidate).sum()
    return jnp.where(num_admitted >= state.min_admitted, state.replay_prob, 0.0).astype(jnp.float32)


def explore_distribution(state: CurriculumState) -> jax.Array:
    """float32 [N]: uniform over the candidates not admitted (over all candidates if none is left)."""
    rest = state.candidate & ~state.admitted
    pool = jnp.where(rest.any(), rest, state.candidate)
    return pool / jnp.maximum(pool.sum(), 1)


def probabilities(state: CurriculumState) -> jax.Array:
    """float32 [N]: P(i), the chance that one draw of `sample` gives ruleset id i."""
    q = replay_fraction(state)
    return q * replay_distribution(state) + (1.0 - q) * explore_distribution(state)


def sample(state: CurriculumState, key: jax.Array, n: int) -> jax.Array:
    """int32 [n]: ruleset ids, drawn independently from `probabilities(state)` (n static)."""
    replay_key, explore_key, choice_key = jax.random.split(key, 3)
    replayed = jax.random.choice(replay_key, state.num_levels, (n,), p=replay_distribution(state))
    explored = jax.random.choice(explore_key, state.num_levels, (n,), p=explore_distribution(state))
    replay = jax.random.uniform(choice_key, (n,)) < replay_fraction(state)
    return jnp.where(replay, replayed, explored).astype(jnp.int32)


def update(state: CurriculumState, ids: jax.Array, scores: jax.Array, noop_scores: jax.Array,
           step: jax.Array | int, priorities: jax.Array | None = None, mask: jax.Array | None = None) -> CurriculumState:
    """Record evaluations of tasks `ids` (int [m], in 0..N-1) at training step `step`: the agent's
    `scores` (float [m], e.g. mean return per trial) and the no-op policy's `noop_scores` (float
    [m]) on them, and optional PLR `priorities` (float [m]; default solved_threshold - scores).
    Entries where `mask` (bool [m], default all) is False are ignored (a fixed-shape batch of
    which only some entries are evaluations). Repeated ids are averaged. Re-decides the no-op
    filter for those tasks and sets their C_i to `step`; c becomes max(c, step)."""
    ids = jnp.asarray(ids, jnp.int32)
    scores = jnp.asarray(scores, jnp.float32)
    if priorities is None:
        priorities = state.solved_threshold - scores
    weight = jnp.ones(ids.shape, jnp.float32) if mask is None else jnp.asarray(mask, jnp.float32)
    counts = jnp.zeros(state.num_levels, jnp.float32).at[ids].add(weight)
    hit = counts > 0

    def mean(values, old):
        total = jnp.zeros(state.num_levels, jnp.float32).at[ids].add(weight * jnp.asarray(values, jnp.float32))
        return jnp.where(hit, total / jnp.maximum(counts, 1.0), old)

    new_scores = mean(scores, state.scores)
    new_noop = mean(noop_scores, state.noop_scores)
    passes = (new_scores - new_noop > state.margin) & (new_scores < state.solved_threshold)
    step = jnp.asarray(step, jnp.int32)
    return state.replace(
        priorities=mean(priorities, state.priorities), scores=new_scores, noop_scores=new_noop,
        last_updated=jnp.where(hit, step, state.last_updated), seen=state.seen | hit,
        admitted=jnp.where(hit, passes, state.admitted) & state.candidate, step=jnp.maximum(state.step, step))


@dataclasses.dataclass(frozen=True, eq=False)
class CurriculumTasks:
    """The curriculum as the AdA recipe's task source (mgdt_jax/recipes/ada/env.py).

    Draws ruleset ids of ``train_ids`` by ``sample`` above; after each rollout, every meta-episode
    that finished in it updates its task with score = its mean return per trial (the trajectory's
    ``episode_return`` / ``num_trials``) against the no-op policy's score on that task, which
    ``noop_scores()`` (float32 [num_tasks], pure JAX, run once in ``init``) computes. The
    curriculum's step counts rollouts. ``settings``: the keyword arguments of ``init``.
    """

    num_tasks: int
    params_of: Callable[[jax.Array], Any]
    train_ids: np.ndarray
    heldout_ids: np.ndarray
    num_trials: int
    noop_scores: Callable[[], jax.Array]
    settings: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def init(self, key: jax.Array) -> CurriculumState:
        state = init(self.num_tasks, self.train_ids, **self.settings)
        return state.replace(noop_scores=jnp.asarray(self.noop_scores(), jnp.float32))

    def sample(self, state: CurriculumState, key: jax.Array) -> tuple[jax.Array, Any]:
        task_id = sample(state, key, 1)[0]
        return task_id, self.params_of(task_id)

    def update(self, state: CurriculumState, trajectory: Mapping[str, jax.Array]) -> CurriculumState:
        ids = trajectory["task_id"].reshape(-1)
        scores = trajectory["episode_return"].reshape(-1) / self.num_trials
        return update(state, ids, scores, state.noop_scores[ids], state.step + 1, mask=trajectory["done"].reshape(-1))

    def metrics(self, state: CurriculumState) -> dict[str, jax.Array]:
        """Logged each train step: tasks admitted by the no-op filter and tasks evaluated so far."""
        return {"curriculum_admitted": (state.admitted & state.candidate).sum().astype(jnp.float32),
                "curriculum_seen": state.seen.sum().astype(jnp.float32)}
