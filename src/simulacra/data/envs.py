"""Real environments as frame sources: any Gymnasium id in, uint8 (H, W, 3) frames out.

``make_env`` builds one env the recorder can run in a vector-env worker: its observation *is* the
resized RGB frame, and it carries its exploration policy (``explore_action``) so that scripted
policies can read privileged state (track, block pose) inside the worker process.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

import gymnasium as gym
import numpy as np
from PIL import Image

from simulacra.errors import SimulacraError
from simulacra.spaces import ActionSpace

# Importing these registers their env ids with Gymnasium; each is optional.
_ENV_PACKAGES = {
    "ALE/": "ale_py",
    "Vizdoom": "vizdoom.gymnasium_wrapper",
    "gym_pusht/": "gym_pusht",
    "MiniGrid-": "minigrid",
    "MiniWorld-": "miniworld",
    "CarRacing": "gymnasium.envs.box2d",
    "simulacra/": "simulacra.data.crafter_env",
}


def _register(env_id: str) -> str:
    """Import what registers ``env_id`` (a known package, or the MODULE of a Gymnasium "MODULE:ID");
    return the id as the registry knows it."""
    if ":" in env_id:  # Gymnasium's "module:EnvId": importing the module registers the env
        module, _, env_id = env_id.partition(":")
        try:
            importlib.import_module(module)
        except Exception as e:
            raise SimulacraError(f"env {module}:{env_id}: cannot import {module!r} ({type(e).__name__}: {e})") from None
    for prefix, module in _ENV_PACKAGES.items():
        if env_id.startswith(prefix):
            if prefix == "MiniWorld-":  # pyglet reads this at import: render offscreen, no display needed
                os.environ.setdefault("PYGLET_HEADLESS", "1")
            try:
                mod = importlib.import_module(module)
            except ImportError as e:
                raise SimulacraError(f"env {env_id!r} needs the package for {module!r}: {e}") from None
            if module == "ale_py":
                gym.register_envs(mod)
    return env_id


def _is_image(space: gym.Space) -> bool:
    return (
        isinstance(space, gym.spaces.Box)
        and space.dtype == np.uint8
        and len(space.shape) in (2, 3)
        and (len(space.shape) == 2 or space.shape[-1] in (1, 3, 4))
        and min(space.shape[:2]) >= 8
    )


def find_frame_source(env: gym.Env, requested: str = "auto") -> str:
    """Where frames come from: 'obs', 'obs:KEY' for a Dict observation, or 'render'."""
    space = env.observation_space
    if requested != "auto":
        return requested
    if _is_image(space):
        return "obs"
    if isinstance(space, gym.spaces.Dict):
        for key, sub in space.spaces.items():
            if _is_image(sub):
                return f"obs:{key}"
    # render_mode alone is not enough: gym.make sets it even on envs that declare no rgb_array rendering
    if env.render_mode == "rgb_array" and "rgb_array" in (env.metadata or {}).get("render_modes", []):
        return "render"
    raise SimulacraError(
        f"env {env.spec.id if env.spec else env}: observations are {space}, not images, and it does not "
        "render rgb_array frames; simulacra learns from pixels"
    )


def to_rgb(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Any uint8 image (H, W), (H, W, 1|3|4) -> (h, w, 3) uint8, area-resampled."""
    frame = np.asarray(frame)
    if frame.dtype != np.uint8:
        raise SimulacraError(f"frames must be uint8 images, got {frame.dtype}")
    if frame.ndim == 2:
        frame = frame[..., None]
    if frame.shape[-1] == 1:
        frame = np.repeat(frame, 3, axis=-1)
    frame = frame[..., :3]
    if frame.shape[:2] != size:
        frame = np.asarray(Image.fromarray(frame).resize((size[1], size[0]), Image.Resampling.BOX))
    return frame


class FrameEnv(gym.Wrapper):
    """Observation = the env's picture at ``size``; carries the exploration policy of its preset."""

    def __init__(self, env: gym.Env, size: tuple[int, int], frame_source: str = "auto", policy=None):
        super().__init__(env)
        self.size = size
        self.source = find_frame_source(env, frame_source)
        self.space = ActionSpace.from_gym(env.action_space)  # one line for a space simulacra cannot learn
        self.observation_space = gym.spaces.Box(0, 255, (*size, 3), np.uint8)
        self.policy = policy

    def _frame(self, obs: Any) -> np.ndarray:
        if self.source == "render":
            frame = self.env.render()
        elif self.source.startswith("obs:"):
            frame = obs[self.source[4:]]
        else:
            frame = obs
        if frame is None:
            raise SimulacraError("env returned no frame (render() gave None; is render_mode='rgb_array'?)")
        return to_rgb(frame, self.size)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        obs, info = self.env.reset(seed=seed, options=options)
        if self.policy is not None:
            self.policy.reset(seed, self.env)
        return self._frame(obs), info

    def step(self, action):
        self.space.validate(action)  # a one-line error before the env sees an action it cannot take
        obs, reward, terminated, truncated, info = self.env.step(action)
        return self._frame(obs), reward, terminated, truncated, info

    def explore_action(self):
        """The preset's exploration policy's next action (computed here, next to the env's state)."""
        return self.policy.act(self.env)


def make_env(
    env_id: str,
    env_kwargs: dict | None = None,
    size: tuple[int, int] = (64, 64),
    frame_source: str = "auto",
    max_episode_steps: int | None = None,
    policy=None,
) -> FrameEnv:
    """Build a Gymnasium env whose observations are RGB frames of ``size``; clear errors if it can't."""
    registered = _register(env_id)
    kwargs = dict(env_kwargs or {})
    if registered not in gym.registry:
        close = [k for k in gym.registry if registered.lower().split("/")[-1][:5] in k.lower()][:5]
        hint = f" (did you mean one of {close}?)" if close else ""
        raise SimulacraError(f"unknown env id {env_id!r}{hint}")
    if frame_source in ("auto", "render"):
        kwargs.setdefault("render_mode", "rgb_array")
    try:
        env = gym.make(env_id, max_episode_steps=max_episode_steps, **kwargs)
    except TypeError:  # envs that take no render_mode keyword
        kwargs.pop("render_mode", None)
        env = gym.make(env_id, max_episode_steps=max_episode_steps, **kwargs)
    try:
        return FrameEnv(env, size, frame_source, policy)
    except SimulacraError:
        env.close()
        raise
