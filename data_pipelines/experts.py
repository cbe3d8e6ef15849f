"""Scripted experts (most read the game state from the emulator RAM), and epsilon-greedy mixing.

They exist to record data of known, varied quality without a trained agent: with an epsilon
schedule over episodes (`mgdt-record --policy expert --epsilon-schedule linear:1.0:0.0`) one run
holds behaviour from random to expert, as the DQN Replay Dataset mixes an agent's early and late
policies.

RAM addresses are those annotated by AtariARI (Anand et al. 2019, "Unsupervised State
Representation Learning in Atari", github.com/mila-iqia/atari-representation-learning,
atariari/benchmark/ram_annotations.py), checked against ale-py 0.12.1:

* Pong: player (right) paddle y 51, ball x 49, ball y 54 (0 while no ball is in play).
* Breakout: paddle x 72, ball x 99, ball y 101 (0 while no ball is in play).
* Freeway: chicken y 14 (not needed by the expert: it always walks up).
* Boxing: player x 32, opponent x 33, player y 34, opponent y 35.
* DemonAttack: none needed (the expert holds FIRE).

The paddle offsets and Boxing's punching distance were tuned by playing with ale-py (sticky
actions 0.25). In Boxing, punches land when the boxers stand about 20 pixels apart and about 8
rows out of line (a glove is off the body's centre), and a held FIRE throws a single punch: a
boxer standing level with its opponent and holding FIRE (tried first) scores below random play.
Scores of each expert against random and human play: docs/results.md (measured by
experiments/expert_scores.py).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Protocol

import numpy as np

from mgdt_jax.envs import atari


class RamReader(Protocol):
    """What an expert needs of the emulator: ale_py.ALEInterface has it."""

    def getRAM(self) -> np.ndarray:  # noqa: N802 (ALE's name)
        """uint8 [128]: the console's RAM now."""


def action_index(game: str, name: str) -> int:
    """Minimal-set index of a full-set action name (e.g. "UP") in `game`; raises if the game lacks it."""
    full = atari.FULL_ACTION_NAMES.index(name)
    minimal = atari.minimal_to_full(game)
    if full not in minimal:
        raise ValueError(f"{game} has no action {name}")
    return minimal.index(full)


class ScriptedExpert:
    """A policy of the game state: `act()` reads the RAM and returns a minimal-set action index.

    Shaped like record.Policy (begin_episode / step / end_episode) so it plugs into mgdt-record.
    """

    game: str

    def __init__(self, ram: RamReader):
        self._ram = ram

    def act(self, ram: np.ndarray) -> int:
        raise NotImplementedError

    def begin_episode(self, observation: np.ndarray) -> int:
        return self.act(self._ram.getRAM())

    def step(self, reward: float, observation: np.ndarray) -> int:
        return self.act(self._ram.getRAM())

    def end_episode(self, reward: float) -> None:
        pass


def _towards(position: int, target: int, dead_zone: int, lower: int, higher: int, stay: int) -> int:
    """`lower` if the position must decrease to reach target (beyond dead_zone), `higher` if increase."""
    if position > target + dead_zone:
        return lower
    if position < target - dead_zone:
        return higher
    return stay


class PongExpert(ScriptedExpert):
    """Keeps the paddle's y on the ball's y; centre of the field while no ball is in play.

    RIGHT moves the right paddle up (y decreases), LEFT down. The paddle's RAM y equals the
    ball's when they are level, up to PADDLE_OFFSET.
    """

    game = "Pong"
    PADDLE_OFFSET = -10
    CENTRE = 120

    def __init__(self, ram: RamReader):
        super().__init__(ram)
        self._up, self._down = action_index("Pong", "RIGHT"), action_index("Pong", "LEFT")
        self._noop = action_index("Pong", "NOOP")

    def act(self, ram: np.ndarray) -> int:
        ball_y, paddle_y = int(ram[54]), int(ram[51])
        target = ball_y + self.PADDLE_OFFSET if ball_y else self.CENTRE
        return _towards(paddle_y, target, 3, self._up, self._down, self._noop)


class BreakoutExpert(ScriptedExpert):
    """Keeps the paddle under the ball; serves (FIRE) while no ball is in play."""

    game = "Breakout"
    PADDLE_OFFSET = -10  # paddle x minus ball x when the ball hits the paddle's centre

    def __init__(self, ram: RamReader):
        super().__init__(ram)
        self._left, self._right = action_index("Breakout", "LEFT"), action_index("Breakout", "RIGHT")
        self._noop, self._fire = action_index("Breakout", "NOOP"), action_index("Breakout", "FIRE")

    def act(self, ram: np.ndarray) -> int:
        ball_x, ball_y, paddle_x = int(ram[99]), int(ram[101]), int(ram[72])
        if ball_y == 0:
            return self._fire
        return _towards(paddle_x, ball_x + self.PADDLE_OFFSET, 2, self._left, self._right, self._noop)


class OneActionExpert(ScriptedExpert):
    """An expert that presses one action throughout (``action``, a full-set name); needs no RAM."""

    action: str

    def __init__(self, ram: RamReader):
        super().__init__(ram)
        self._action = action_index(self.game, self.action)

    def act(self, ram: np.ndarray) -> int:
        return self._action


class FreewayExpert(OneActionExpert):
    """Always walks up: each crossing scores one point; a car only pushes the chicken back."""

    game, action = "Freeway", "UP"


class DemonAttackExpert(OneActionExpert):
    """Holds FIRE where the cannon starts: demons fly through its line, and a held FIRE keeps
    shooting (unlike Boxing's, where it throws one punch). About three times random play's score
    (docs/results.md); aiming at a demon would need its position, to a few pixels.
    """

    game, action = "DemonAttack", "FIRE"


class SpaceInvadersExpert(OneActionExpert):
    """Holds FIRE where the cannon starts: the invaders' columns march through its line. About twice
    random play's score in 1,000 steps, but no more than random play's over whole games
    (docs/results.md); one of the paper's five held-out games, a shooter like DemonAttack, so a model
    pretrained there has a mechanic to carry over.
    """

    game, action = "SpaceInvaders", "FIRE"


class EnduroExpert(OneActionExpert):
    """Holds FIRE, the accelerator: 6 cars passed in 1,000 steps, then little more; random play,
    braking as often as it accelerates, passes none (docs/results.md). A held-out game whose expert
    shares DemonAttack's action, with its data's return modes far apart.
    """

    game, action = "Enduro", "FIRE"


class BoxingExpert(ScriptedExpert):
    """Keeps its opponent at punching distance, a glove's offset out of line, and punches every other step.

    Horizontally the boxer holds PUNCH_DX pixels from the opponent (closer or farther moves it back
    or in); vertically it holds PUNCH_DY rows above or below, whichever side is nearer. FIRE is
    pressed on alternate steps because holding it throws only one punch.
    """

    game = "Boxing"
    PUNCH_DX, PUNCH_DY, TOLERANCE = 20, 8, 3

    def __init__(self, ram: RamReader):
        super().__init__(ram)
        self._actions = {name: action_index("Boxing", name) for name in (
            "NOOP", "FIRE", *(v + h + f for v in ("", "UP", "DOWN") for h in ("", "RIGHT", "LEFT")
                              for f in ("", "FIRE") if v + h))}
        self._punch = False

    def begin_episode(self, observation: np.ndarray) -> int:
        self._punch = True  # the first step moves, the second punches
        return super().begin_episode(observation)

    def act(self, ram: np.ndarray) -> int:
        player_x, opponent_x, player_y, opponent_y = (int(value) for value in ram[32:36])
        dx, dy = opponent_x - player_x, opponent_y - player_y
        target_dy = self.PUNCH_DY if dy >= 0 else -self.PUNCH_DY
        vertical = _towards(dy, target_dy, self.TOLERANCE, "DOWN", "UP", "")
        toward, away = ("RIGHT", "LEFT") if dx > 0 else ("LEFT", "RIGHT")
        horizontal = _towards(abs(dx), self.PUNCH_DX, self.TOLERANCE, toward, away, "")
        self._punch = not self._punch
        name = vertical + horizontal + ("FIRE" if self._punch else "")
        return self._actions[name or "NOOP"]


EXPERTS: dict[str, Callable[[RamReader], ScriptedExpert]] = {
    cls.game: cls for cls in (PongExpert, BreakoutExpert, FreewayExpert, BoxingExpert, DemonAttackExpert,
                              SpaceInvadersExpert, EnduroExpert)
}


def make_expert(game: str, ram: RamReader) -> ScriptedExpert:
    """The scripted expert of `game`; raises ValueError naming the games that have one."""
    game = atari.check_game(game)
    if game not in EXPERTS:
        raise ValueError(f"no scripted expert for {game}: experts exist for {', '.join(sorted(EXPERTS))}")
    return EXPERTS[game](ram)


class EpsilonGreedy:
    """Plays a uniformly random minimal-set action with probability `epsilon`, else the inner policy's.

    The inner policy is asked every step (it may keep state); `epsilon` may be changed between
    episodes (mgdt-record sets it at each episode start from its schedule).
    """

    def __init__(self, inner, num_actions: int, seed: int, epsilon: float = 0.0):
        self.inner = inner
        self.epsilon = epsilon
        self._num_actions = num_actions
        self._rng = np.random.default_rng(seed)

    def _mix(self, action: int) -> int:
        if self._rng.random() < self.epsilon:
            return int(self._rng.integers(self._num_actions))
        return action

    def begin_episode(self, observation: np.ndarray) -> int:
        return self._mix(self.inner.begin_episode(observation))

    def step(self, reward: float, observation: np.ndarray) -> int:
        return self._mix(self.inner.step(reward, observation))

    def end_episode(self, reward: float) -> None:
        self.inner.end_episode(reward)


EpsilonSchedule = Callable[[int, float], float]  # (episode index, fraction of the run played) -> epsilon


def parse_epsilon_schedule(text: str) -> EpsilonSchedule:
    """An epsilon per episode from its spec; raises ValueError naming the spec and the fault.

    * ``0.1``: every episode.
    * ``linear:A:B``: the episode that starts after a fraction f of the run's steps gets
      A + (B - A) * f (the run goes from A to B, as an agent's exploration anneals).
    * ``cycle:E1,E2,...``: episode k gets E(k mod n).
    """
    def number(value: str) -> float:
        try:
            epsilon = float(value)
        except ValueError:
            raise ValueError(f"epsilon schedule {text!r}: {value!r} is not a number") from None
        if not 0.0 <= epsilon <= 1.0:
            raise ValueError(f"epsilon schedule {text!r}: {value} is outside [0, 1]")
        return epsilon

    if match := re.fullmatch(r"linear:([^:]+):([^:]+)", text):
        start, end = number(match[1]), number(match[2])
        return lambda episode, fraction: start + (end - start) * fraction
    if match := re.fullmatch(r"cycle:(.+)", text):
        values = [number(v) for v in match[1].split(",")]
        return lambda episode, fraction: values[episode % len(values)]
    if ":" not in text:
        constant = number(text)
        return lambda episode, fraction: constant
    raise ValueError(f"epsilon schedule {text!r}: expected a number, linear:A:B or cycle:E1,E2,...")
