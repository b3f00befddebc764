"""The pixel world behind the planning-world interface, so the same planners can search in it.

The "encoding" of a frame is the frame itself (pixels scaled to [-1, 1], flattened), and a rollout
dreams every env step of every candidate through the diffusion world, turning each candidate's
relative action features into env actions from where the agent stands in that candidate's own
dreamed frame (Push-T's targets are absolute). The cost is then the squared pixel distance to the goal
picture. This is the Genie-style baseline of stable-worldmodel's tables (29% on Push-T with CEM
300 / 30 / 30 on a GPU); on this CPU a dreamed frame costs milliseconds, so searches must be far
smaller than the planning world's (docs/plan.md has the measurement).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from simulacra.world.world import World


@dataclass(frozen=True)
class PixelPlanningConfig:
    block: int
    """Env steps per planned action block (the planning world's: 5)."""
    action_dim: int
    """Features per block: block x the task's feature size."""
    latent_dim: int
    """H x W x 3: the frame is the encoding."""
    proprio_dim: int = 0
    decoder: bool = True


class PixelPlanningWorld:
    """``World`` as a planning world: ``encode`` / ``rollout`` / ``decode`` over flattened frames."""

    def __init__(self, world: World, task, block: int = 5, seed: int = 0):
        self.world, self.task = world, task
        self.shape = tuple(world.frame_space.shape)
        h, w, c = self.shape
        self.cfg = PixelPlanningConfig(block, block * task.feature_dim, h * w * c)
        self.gen = world.generator(seed)
        self.frames_dreamed = 0

    def eval(self):
        return self

    def encode(self, frames_BCHW: torch.Tensor, proprio_BP=None) -> torch.Tensor:
        return frames_BCHW.float().flatten(1) / 127.5 - 1

    def decode(self, z_ND: torch.Tensor) -> torch.Tensor:
        """Back to (N, 3, H, W) in [-1, 1], as the planning world's decoder answers."""
        h, w, c = self.shape
        return z_ND.reshape(-1, c, h, w)

    def _frames(self, z_ND: torch.Tensor) -> np.ndarray:
        return ((self.decode(z_ND) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()

    def _env_actions(self, features_NF: np.ndarray, frames_NHWC: np.ndarray) -> np.ndarray:
        pairs = zip(features_NF, frames_NHWC, strict=True)
        return np.stack([self.task.to_env(f, self.task.agent_xy(None, fr)) for f, fr in pairs])

    @torch.no_grad()
    def rollout(self, z_ND: torch.Tensor, actions_NHA: torch.Tensor) -> torch.Tensor:
        """Dream each candidate's blocks from the frame ``z``; returns the frame at each block's end (N, H, D)."""
        frames = self._frames(z_ND)
        state = self.world.reset(frames[:, None])
        N, H = actions_NHA.shape[:2]
        feats = actions_NHA.reshape(N, H, self.cfg.block, -1).numpy()
        ends = []
        for h in range(H):
            for k in range(self.cfg.block):
                state, frames, _, _ = self.world.step(state, self._env_actions(feats[:, h, k], frames), self.gen)
            ends.append(frames)
        self.frames_dreamed += N * H * self.cfg.block
        ends_NHWC = np.stack(ends, 1)
        return torch.from_numpy(ends_NHWC).permute(0, 1, 4, 2, 3).float().flatten(2) / 127.5 - 1
