"""How a world takes one step: the per-frame step function behind every backend.

A step function maps (context latents, the K actions, pad mask, initial noise, context noise) to
(next latents, frames or None, reward sign, termination probability). All randomness comes in as
inputs, drawn by the caller from its own generator, so every backend makes the same dream from the
same draws and a planner's candidates never shift a player's noise.

    context (B, K, C, h, w) f32, actions (B, K) i64 or (B, K, *shape) f32, pad (B, K) bool,
    noise (B, C, h, w) f32, context_noise (B, K, C, h, w) f32 or None
    -> latents (B, C, h, w), frames uint8 (B, H, W, 3) numpy or None, reward (B,), done prob (B,)
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch

from simulacra.models.autoencoder import to_uint8
from simulacra.world.onnx import OnnxStep

__all__ = ["OnnxStep", "StepFn", "TorchStep"]


class StepFn(Protocol):
    """The per-frame step. ``decode=False`` lets a backend skip decoding (a planner's latent rollouts);
    a backend whose graph decodes anyway may still return the frames."""

    def __call__(
        self, context, actions, pad, noise, context_noise, decode: bool = True
    ) -> tuple[torch.Tensor, np.ndarray | None, torch.Tensor, torch.Tensor]: ...


class TorchStep:
    """Eager PyTorch on the models' device."""

    def __init__(self, autoencoder, dynamics):
        self.ae, self.dyn = autoencoder, dynamics

    @torch.no_grad()
    def __call__(self, context, actions, pad, noise, context_noise, decode: bool = True):
        z, reward, done = self.dyn.sample(context, actions, pad, noise=noise, ctx_noise=context_noise)
        frames = None
        if decode:
            frames = to_uint8(self.ae.decode(z * self.dyn.latent_std)).permute(0, 2, 3, 1).cpu().numpy()
        return z, frames, reward, done
