"""The world room: a trained world (``World``: load, save, batched stateless stepping, the latent API),
its step backends (eager PyTorch, ONNX Runtime) and the world as a Gymnasium env (``WorldEnv``,
``WorldVectorEnv``)."""

import gymnasium as gym

from simulacra.world.backends import OnnxStep, StepFn, TorchStep
from simulacra.world.env import Starts, WorldEnv, WorldVectorEnv, default_starts, make_env
from simulacra.world.world import WORLD_FORMAT_VERSION, LatentState, World

# gym.make("simulacra/World-v0", world="runs/breakout-nano"): a world folder (or World) as a registered env
gym.register(id="simulacra/World-v0", entry_point="simulacra.world.env:make_env", disable_env_checker=True)

__all__ = [
    "WORLD_FORMAT_VERSION",
    "LatentState",
    "OnnxStep",
    "Starts",
    "StepFn",
    "TorchStep",
    "World",
    "WorldEnv",
    "WorldVectorEnv",
    "default_starts",
    "make_env",
]
