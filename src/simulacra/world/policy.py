"""The policy interface that play, plan and dream share: an observation history in, one action out.

A policy sees what a player sees, the frames so far (oldest first, the newest last), and answers with
an action of the world's action space. Play hands control to one and back with a key; plan and dream
will provide their own (a planner, a trained agent). The two here prove the interface until they land.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np

from simulacra.spaces import ActionSpace


@runtime_checkable
class Policy(Protocol):
    name: str
    """Shown to the player while the policy is in control."""

    def reset(self, seed: int | None = None) -> None:
        """A new episode starts (seeded policies draw the same actions again)."""

    def act(self, frames_THWC: np.ndarray) -> Any:
        """The next action, given the frames so far (T, H, W, 3) uint8, the newest last."""


class RandomPolicy:
    """Uniformly random actions, each held for ``hold`` steps (a twitch every frame shows nothing)."""

    name = "random"

    def __init__(self, space: ActionSpace, seed: int | None = 0, hold: int = 4):
        self.space, self.hold, self.seed = space, max(1, int(hold)), seed
        self.reset(seed)

    def reset(self, seed: int | None = None) -> None:
        self.rng = np.random.default_rng(self.seed if seed is None else seed)
        self._left, self._action = 0, None

    def act(self, frames_THWC: np.ndarray) -> Any:
        if self._left == 0:
            self._action, self._left = self.space.sample(self.rng), self.hold
        self._left -= 1
        return self._action


class ScriptedPolicy:
    """A fixed sequence of actions, repeated: the simplest policy whose effect a test can predict."""

    name = "scripted"

    def __init__(self, actions: list, space: ActionSpace):
        if not actions:
            raise ValueError("a scripted policy needs at least one action")
        self.actions = [space.validate(np.asarray(a)) for a in actions]
        self._i = 0

    def reset(self, seed: int | None = None) -> None:
        self._i = 0

    def act(self, frames_THWC: np.ndarray) -> Any:
        a = self.actions[self._i % len(self.actions)]
        self._i += 1
        return a
