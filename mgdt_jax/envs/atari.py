"""Atari game facts shared by recording, conversion, training and evaluation (pure Python).

The minimal action sets were read from ALE (ale-py 0.12.1, `getMinimalActionSet`) for the 60 games of
the DQN Replay Dataset; tests/test_atari.py checks them against the installed ALE. Game lists follow
the MGDT paper: 46 RL Unplugged games, of which 5 are held out.
"""

from __future__ import annotations

import csv
import dataclasses
import importlib.resources

FULL_ACTION_NAMES = (
    "NOOP", "FIRE", "UP", "RIGHT", "LEFT", "DOWN", "UPRIGHT", "UPLEFT", "DOWNRIGHT", "DOWNLEFT",
    "UPFIRE", "RIGHTFIRE", "LEFTFIRE", "DOWNFIRE", "UPRIGHTFIRE", "UPLEFTFIRE", "DOWNRIGHTFIRE",
    "DOWNLEFTFIRE",
)

# Game -> full-set action ids of its minimal action set, in ALE's order (logged actions index this).
MINIMAL_ACTION_SETS: dict[str, tuple[int, ...]] = {
    "AirRaid": (0, 1, 3, 4, 11, 12),
    "Alien": (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17),
    "Amidar": (0, 1, 2, 3, 4, 5, 10, 11, 12, 13),
    "Assault": (0, 1, 2, 3, 4, 11, 12),
    "Asterix": (0, 2, 3, 4, 5, 6, 7, 8, 9),
    "Asteroids": (0, 1, 2, 3, 4, 5, 6, 7, 10, 11, 12, 13, 14, 15),
    "Atlantis": (0, 1, 11, 12),
    "BankHeist": (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17),
    "BattleZone": (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17),
    "BeamRider": (0, 1, 2, 3, 4, 6, 7, 11, 12),
    "Berzerk": (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17),
    "Bowling": (0, 1, 2, 5, 10, 13),
    "Boxing": (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17),
    "Breakout": (0, 1, 3, 4),
    "Carnival": (0, 1, 3, 4, 11, 12),
    "Centipede": (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17),
    "ChopperCommand": (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17),
    "CrazyClimber": (0, 2, 3, 4, 5, 6, 7, 8, 9),
    "DemonAttack": (0, 1, 3, 4, 11, 12),
    "DoubleDunk": (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17),
    "ElevatorAction": (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17),
    "Enduro": (0, 1, 3, 4, 5, 8, 9, 11, 12),
    "FishingDerby": (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17),
    "Freeway": (0, 2, 5),
    "Frostbite": (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17),
    "Gopher": (0, 1, 2, 3, 4, 10, 11, 12),
    "Gravitar": (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17),
    "Hero": (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17),
    "IceHockey": (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17),
    "Jamesbond": (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17),
    "JourneyEscape": (0, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 13, 14, 15, 16, 17),
    "Kangaroo": (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17),
    "Krull": (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17),
    "KungFuMaster": (0, 2, 3, 4, 5, 8, 9, 11, 12, 13, 14, 15, 16, 17),
    "MontezumaRevenge": (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17),
    "MsPacman": (0, 2, 3, 4, 5, 6, 7, 8, 9),
    "NameThisGame": (0, 1, 3, 4, 11, 12),
    "Phoenix": (0, 1, 3, 4, 5, 11, 12, 13),
    "Pitfall": (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17),
    "Pong": (0, 1, 3, 4, 11, 12),
    "Pooyan": (0, 1, 2, 5, 10, 13),
    "PrivateEye": (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17),
    "Qbert": (0, 1, 2, 3, 4, 5),
    "Riverraid": (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17),
    "RoadRunner": (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17),
    "Robotank": (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17),
    "Seaquest": (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17),
    "Skiing": (0, 3, 4),
    "Solaris": (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17),
    "SpaceInvaders": (0, 1, 3, 4, 11, 12),
    "StarGunner": (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17),
    "Tennis": (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17),
    "TimePilot": (0, 1, 2, 3, 4, 5, 10, 11, 12, 13),
    "Tutankham": (0, 2, 3, 4, 5, 10, 11, 12),
    "UpNDown": (0, 1, 2, 5, 10, 13),
    "Venture": (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17),
    "VideoPinball": (0, 1, 2, 3, 4, 5, 10, 11, 12),
    "WizardOfWor": (0, 1, 2, 3, 4, 5, 10, 11, 12, 13),
    "YarsRevenge": (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17),
    "Zaxxon": (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17),
}

DQN_REPLAY_GAMES = tuple(MINIMAL_ACTION_SETS)  # the 60 games of the DQN Replay Dataset
HELD_OUT_GAMES = ("Alien", "MsPacman", "Pong", "SpaceInvaders", "StarGunner")
TRAINING_GAMES = (
    "Amidar", "Assault", "Asterix", "Atlantis", "BankHeist", "BattleZone", "BeamRider", "Boxing",
    "Breakout", "Carnival", "Centipede", "ChopperCommand", "CrazyClimber", "DemonAttack",
    "DoubleDunk", "Enduro", "FishingDerby", "Freeway", "Frostbite", "Gopher", "Gravitar", "Hero",
    "IceHockey", "Jamesbond", "Kangaroo", "Krull", "KungFuMaster", "NameThisGame", "Phoenix",
    "Pooyan", "Qbert", "Riverraid", "RoadRunner", "Robotank", "Seaquest", "TimePilot", "UpNDown",
    "VideoPinball", "WizardOfWor", "YarsRevenge", "Zaxxon",
)
ALL_GAMES = tuple(sorted(TRAINING_GAMES + HELD_OUT_GAMES))  # the 46 games of the paper

SUITES: dict[str, tuple[str, ...]] = {
    "train41": TRAINING_GAMES,
    "heldout5": HELD_OUT_GAMES,
    "all46": ALL_GAMES,
    "dqn60": DQN_REPLAY_GAMES,
}
MAX_EPISODE_FRAMES = 2**31 - 1  # the most emulator frames ALE takes as an episode cap (a C int)


class UnknownGameError(ValueError):
    """A game name that is not one of the 60 DQN Replay games."""


def check_game(game: str) -> str:
    """Returns the canonical game name, or raises with the closest valid names."""
    if game in MINIMAL_ACTION_SETS:
        return game
    by_lower = {name.lower(): name for name in MINIMAL_ACTION_SETS}
    if game.lower() in by_lower:
        return by_lower[game.lower()]
    raise UnknownGameError(
        f"unknown game {game!r}: expected one of the 60 DQN Replay games, e.g. Pong, Breakout, MsPacman"
    )


def minimal_to_full(game: str) -> tuple[int, ...]:
    """Minimal-set index -> full-set action id, for one game."""
    return MINIMAL_ACTION_SETS[check_game(game)]


def full_to_minimal(game: str) -> tuple[int, ...]:
    """Full-set action id -> minimal-set index, NOOP (index 0) where the game lacks the action."""
    minimal = MINIMAL_ACTION_SETS[check_game(game)]
    return tuple(minimal.index(a) if a in minimal else minimal.index(0) for a in range(18))


@dataclasses.dataclass(frozen=True)
class ReferenceScores:
    random: float | None
    human: float | None


def reference_scores() -> dict[str, ReferenceScores]:
    """Random and human scores of the Atari-57 games (DQN Zoo's table), keyed by game name.

    The five DQN Replay games outside Atari-57 (AirRaid, Carnival, ElevatorAction, JourneyEscape,
    Pooyan) are listed with neither; Defender and Surround are Atari-57 games outside DQN Replay.
    """
    text = importlib.resources.files("mgdt_jax").joinpath("envs/atari_scores.csv").read_text()
    table = {}
    for row in csv.DictReader(text.splitlines()):
        as_float = lambda s: float(s) if s else None  # noqa: E731
        table[row["game"]] = ReferenceScores(as_float(row["random"]), as_float(row["human"]))
    return table
