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

from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from simulacra.models.autoencoder import to_uint8


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


class OnnxStep:
    """An ONNX Runtime session on the exported step graph (``simulacra export``), on the CPU."""

    def __init__(self, path: str | Path, threads: int = 2):
        from simulacra.export import INPUTS, OUTPUTS, ort

        rt = ort()
        opts = rt.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        opts.graph_optimization_level = rt.GraphOptimizationLevel.ORT_ENABLE_ALL
        # no busy-waiting: spinning threads starve everything else on shared cores
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = rt.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.inputs = {i.name for i in self.session.get_inputs()}  # unused ones (no context noise) are dropped
        self.names = INPUTS, OUTPUTS
        self.path = Path(path)

    def __call__(self, context, actions, pad, noise, context_noise=None, decode: bool = True):
        inputs, outputs = self.names
        feed = dict(zip(inputs, (context, actions, pad, noise, context_noise), strict=True))
        feed = {k: v.detach().cpu().contiguous().numpy() for k, v in feed.items() if k in self.inputs}
        z, frame, reward, done = self.session.run(list(outputs), feed)
        return torch.from_numpy(z), frame, torch.from_numpy(reward), torch.from_numpy(done)
