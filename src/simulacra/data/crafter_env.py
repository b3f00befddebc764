"""Crafter (old gym API) as a Gymnasium env, registered as ``simulacra/Crafter-v0``."""

from __future__ import annotations

import gymnasium as gym
import numpy as np


class CrafterEnv(gym.Env):
    """Crafter's 64x64 world with the Gymnasium reset/step contract (terminated = the player died)."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, size: int = 64, length: int = 10000, render_mode: str | None = "rgb_array"):
        import crafter

        self._crafter = crafter
        self._size, self._length = size, length
        self._env = None
        self.render_mode = render_mode
        self.observation_space = gym.spaces.Box(0, 255, (size, size, 3), np.uint8)
        self.action_space = gym.spaces.Discrete(17)
        self._last = None

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is None:
            seed = int(self.np_random.integers(2**31))
        # Crafter draws its world from the seed it was built with, so a new seed means a new env.
        self._env = self._crafter.Env(area=(64, 64), size=(self._size, self._size), length=self._length, seed=seed)
        self._last = self._env.reset()
        return self._last, {}

    def step(self, action):
        obs, reward, done, info = self._env.step(int(action))
        self._last = obs
        terminated = bool(done and info.get("discount", 1.0) == 0.0)
        return (
            obs,
            float(reward),
            terminated,
            bool(done and not terminated),
            {"achievements": info.get("achievements", {})},
        )

    def render(self):
        return self._last


gym.register("simulacra/Crafter-v0", entry_point=CrafterEnv)
