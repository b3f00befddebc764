"""Worlds for the play tests: a tiny untrained one (real sampling, for replay) and one whose step is an
oracle that moves a white block by the action, so a test can see the frame move the way the key says."""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import torch

from simulacra.models.autoencoder import Autoencoder, AutoencoderConfig
from simulacra.models.dynamics import Dynamics, DynamicsConfig
from simulacra.world import World

FRAME = 32
SPACE = {"type": "discrete", "n": 3, "start": 0}
PRESET = {"name": "oracle", "keys": {"ArrowRight": 1, "ArrowLeft": 2}, "noop_action": 0, "fps": 15}


def tiny_world(path=None) -> World:
    torch.manual_seed(0)
    ae = Autoencoder(AutoencoderConfig(kind="pixels", patch=4))
    dyn = Dynamics(
        DynamicsConfig(context=3, channels=16, channel_mult=(1, 2), cond_dim=32, snap_to_pixels=True),
        ae.cfg.grid_channels,
        SPACE,
    )
    with torch.no_grad():
        for p in dyn.parameters():
            p.add_(0.05 * torch.randn_like(p))
        dyn.heads[-1].bias[3] = -50.0  # the termination head stays quiet
    config = {"autoencoder": asdict(ae.cfg), "dynamics": asdict(dyn.cfg), "action_space": SPACE}
    world = World(ae, dyn, config | {"frame_shape": [FRAME, FRAME, 3], "fps": 15, "preset": PRESET})
    if path is not None:
        world.save(path)
        world = World.load(path)
    return world


class ShiftStep:
    """The oracle step: the last frame with its content rolled one 4-pixel cell right (action 1) or left (2)."""

    def __call__(self, context, actions, pad, noise, context_noise, decode=True):
        last = context[:, -1]
        shift = torch.where(actions[:, -1] == 1, 1, torch.where(actions[:, -1] == 2, -1, 0))
        z = torch.stack([torch.roll(last[i], int(shift[i]), dims=-1) for i in range(len(last))])
        B = len(z)
        return z, None, torch.zeros(B), torch.zeros(B)


class OracleWorld(World):
    def with_options(self, **kw) -> World:
        new = super().with_options(**kw)
        new.step_fn = self.step_fn
        return new


def oracle_world(path) -> World:
    w = tiny_world(path)
    world = OracleWorld(w.ae, w.dyn, w.config)
    world.path, world.step_fn = w.path, ShiftStep()
    return world


def block_frame(x: int = 12) -> np.ndarray:
    f = np.zeros((FRAME, FRAME, 3), np.uint8)
    f[12:20, x : x + 4] = 255
    return f


def block_x(frame: np.ndarray) -> float:
    """Column centroid of the white block."""
    m = np.asarray(frame)[..., 0] > 128
    return float(np.nonzero(m)[1].mean()) if m.any() else float("nan")
