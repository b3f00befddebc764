"""Goal-conditioned behaviour cloning (GCBC): the baseline a planner must beat on the same data.

A convolutional policy sees the current frame and a goal frame (stacked as 6 channels) and regresses
the next ``block`` recorded action features. Goals are relabelled in hindsight: a frame between
``block`` and ``max_offset`` steps after the current one, so it learns to head toward any goal the
data reaches, including the 25-step goals of the protocol as they come closer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from simulacra.models.autoencoder import to_unit
from simulacra.models.common import Problem, at_least


@dataclass
class GCBCConfig:
    action_dim: int = 10
    """Numbers the policy outputs: ``block`` env action features, concatenated."""
    block: int = 5
    """Env actions predicted (and executed) per decision."""
    max_offset: int = 25
    """Hindsight goals lie up to this many steps ahead."""
    channels: int = 16
    """Width of the first convolution (doubled at each of the next halvings, up to 4x)."""
    hidden: int = 256
    """Width of the MLP head."""

    def problems(self) -> list[Problem]:
        return [
            (n, p)
            for n in ("action_dim", "block", "max_offset", "channels", "hidden")
            if (p := at_least(getattr(self, n), 1)) is not None
        ]


class GCBC(nn.Module):
    def __init__(self, cfg: GCBCConfig, frame_hw: tuple[int, int] = (64, 64)):
        super().__init__()
        self.cfg = cfg
        c = cfg.channels
        widths = [c, 2 * c, 4 * c, 4 * c]
        layers: list[nn.Module] = []
        for a, b in zip([6, *widths[:-1]], widths, strict=True):
            layers += [nn.Conv2d(a, b, 4, stride=2, padding=1), nn.GroupNorm(8, b), nn.SiLU()]
        self.conv = nn.Sequential(*layers)
        flat = widths[-1] * (frame_hw[0] // 16) * (frame_hw[1] // 16)
        self.head = nn.Sequential(nn.Linear(flat, cfg.hidden), nn.SiLU(), nn.Linear(cfg.hidden, cfg.action_dim))

    def act(self, frame_BCHW: torch.Tensor, goal_BCHW: torch.Tensor) -> torch.Tensor:
        """The next block's action features (B, action_dim), squashed into [-1, 1]."""
        x = torch.cat([to_unit(frame_BCHW), to_unit(goal_BCHW)], 1)
        return torch.tanh(self.head(self.conv(x).flatten(1)))

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        pred = self.act(batch["frame"], batch["goal"])
        loss = (pred - batch["actions"]).pow(2).mean()
        return loss, {"mse": loss.item()}
