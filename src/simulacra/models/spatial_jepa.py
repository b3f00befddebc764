"""A spatial planning world: the encoding is a map of cells, and the predictor is a convolution.

The vector JEPA (``jepa.py``) squeezes a frame into 64 numbers. In a maze that is not enough: where
the gaps between the rooms are changes with every layout, and a plan through a gap is a guess unless
the encoding holds the gap cell by cell (FourRooms with the vector latent: 55%; docs/plan.md). Here:

- the encoder resizes the frame so that one cell of the world is 4x4 pixels and halves it twice, so
  the encoding is a ``grid`` x ``grid`` map of ``channels`` numbers per cell;
- the predictor steps *one env step* at a time with one 3x3 convolution over (map, action): walls,
  the agent and its heading are local, so a small kernel moves the agent to the next cell or keeps it
  against a wall, in any layout, without having seen that layout;
- a readout turns the map into the agent's position: a soft-argmax over one learned logit per cell,
  trained against the recorded position (the proprioception of the vector world), beside a heading
  readout. Planning compares readouts, so the cost is graded (a map distance is flat: an agent two
  cells off costs as much as one ten cells off);
- JEPA's terms as in ``jepa.py``: each predicted map regresses onto the encoding of the real frame,
  VICReg's variance and covariance terms over the cells' vectors keep the maps from collapsing, and a
  decoder on *detached* maps draws the plan for the video.

One planning step is ``block`` env steps (the planners and the MPC loop are the same as the vector
world's); training unrolls ``unroll`` env steps on the predictor's own maps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from simulacra.models.autoencoder import to_unit
from simulacra.models.common import Problem, at_least
from simulacra.models.jepa import vicreg_terms


@dataclass
class SpatialJEPAConfig:
    action_dim: int = 15
    """Numbers in one planning step's action: the block's per-env-step features, concatenated."""
    block: int = 5
    """Env steps per planning step."""
    feature_dim: int = 3
    """Numbers of one env step's action features (action_dim = block x feature_dim)."""
    grid: int = 19
    """Cells per side of the map (the world's own grid: MiniGrid FourRooms is 19 x 19)."""
    channels: int = 8
    """Numbers per cell of the map."""
    hidden: int = 32
    """Width of the predictor's convolution."""
    unroll: int = 10
    """Env steps the predictor is unrolled on its own maps in training."""
    position_weight: float = 1.0
    """Weight of the position readout's squared error (in proprioception units)."""
    heading_weight: float = 0.1
    """Weight of the heading readout's cross-entropy (0: no heading in the data or not wanted)."""
    headings: int = 4
    """Classes of the heading readout."""
    position_scale: float = 0.5
    """Cells per proprioception unit (the task's scale: cell / 0.5)."""
    var_weight: float = 1.0
    """VICReg variance term over the cells' vectors."""
    cov_weight: float = 0.04
    """VICReg covariance term over the cells' vectors."""
    decoder: bool = True
    """Also learn a decoder from detached maps (pictures of the plan only)."""

    def problems(self) -> list[Problem]:
        out = []
        for name in ("action_dim", "block", "feature_dim", "grid", "channels", "hidden", "unroll", "headings"):
            if (p := at_least(getattr(self, name), 1)) is not None:
                out.append((name, p))
        for name in ("position_weight", "heading_weight", "var_weight", "cov_weight"):
            if (p := at_least(getattr(self, name), 0)) is not None:
                out.append((name, p))
        if self.position_scale <= 0:
            out.append(("position_scale", "must be > 0"))
        if self.action_dim != self.block * self.feature_dim:
            out.append(("action_dim", f"must be block x feature_dim = {self.block * self.feature_dim}"))
        return out


class SpatialJEPA(nn.Module):
    def __init__(self, cfg: SpatialJEPAConfig, frame_hw: tuple[int, int] = (64, 64)):
        super().__init__()
        self.cfg, self.frame_hw = cfg, tuple(frame_hw)
        c, g = cfg.channels, cfg.grid
        self.encoder = nn.Sequential(
            nn.Conv2d(3, 16, 4, stride=2, padding=1), nn.GroupNorm(4, 16), nn.SiLU(),
            nn.Conv2d(16, 32, 4, stride=2, padding=1), nn.GroupNorm(8, 32), nn.SiLU(),
            nn.Conv2d(32, c, 1),
        )  # fmt: skip
        self.predictor = nn.Sequential(
            nn.Conv2d(c + cfg.feature_dim, cfg.hidden, 3, padding=1), nn.SiLU(),
            nn.Conv2d(cfg.hidden, cfg.hidden, 1), nn.SiLU(),
            nn.Conv2d(cfg.hidden, c, 1),
        )  # fmt: skip
        self.where = nn.Conv2d(c, 1, 1)
        self.heading = nn.Linear(c, cfg.headings)
        ys, xs = torch.meshgrid(
            torch.arange(g, dtype=torch.float32), torch.arange(g, dtype=torch.float32), indexing="ij"
        )
        self.register_buffer(
            "cells_2N", torch.stack([xs.flatten(), ys.flatten()]) / cfg.position_scale, persistent=False
        )
        self.state_dim = c * g * g
        if cfg.decoder:
            self.decoder = nn.Sequential(
                nn.ConvTranspose2d(c, 32, 4, stride=2, padding=1), nn.GroupNorm(8, 32), nn.SiLU(),
                nn.ConvTranspose2d(32, 3, 4, stride=2, padding=1),
            )  # fmt: skip

    # ---- what a planner needs ---------------------------------------------------------------------
    def encode(self, frames_BCHW: torch.Tensor, proprio_BP: torch.Tensor | None = None) -> torch.Tensor:
        """uint8 (or [-1, 1]) frames -> maps, flattened (B, channels * grid * grid). The agent's
        position is read from the frame itself, so ``proprio`` is not needed (and is ignored)."""
        x = to_unit(frames_BCHW) if frames_BCHW.dtype == torch.uint8 else frames_BCHW
        side = 4 * self.cfg.grid
        x = F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False)
        return self.encoder(x).flatten(1)

    def _map(self, z_BD: torch.Tensor) -> torch.Tensor:
        return z_BD.view(-1, self.cfg.channels, self.cfg.grid, self.cfg.grid)

    def env_step(self, map_BCGG: torch.Tensor, feature_BF: torch.Tensor) -> torch.Tensor:
        """The map one env step later."""
        g = self.cfg.grid
        a = feature_BF[:, :, None, None].expand(-1, -1, g, g)
        return map_BCGG + self.predictor(torch.cat([map_BCGG, a], 1))

    def step(self, z_BD: torch.Tensor, action_BA: torch.Tensor) -> torch.Tensor:
        """The map ``block`` env steps later (one planning step)."""
        m = self._map(z_BD)
        for f in action_BA.view(len(action_BA), self.cfg.block, self.cfg.feature_dim).unbind(1):
            m = self.env_step(m, f)
        return m.flatten(1)

    def rollout(self, z_BD: torch.Tensor, actions_BHA: torch.Tensor) -> torch.Tensor:
        """Maps after each of the H planning steps (B, H, state_dim)."""
        out = []
        for h in range(actions_BHA.shape[1]):
            z_BD = self.step(z_BD, actions_BHA[:, h])
            out.append(z_BD)
        return torch.stack(out, 1)

    def _attention(self, map_BCGG: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.where(map_BCGG).flatten(1), -1)  # (B, G*G)

    def position(self, z_BD: torch.Tensor) -> torch.Tensor:
        """The agent's position read from maps (..., state_dim) -> (..., 2), in proprioception units."""
        lead = z_BD.shape[:-1]
        p = self._attention(self._map(z_BD.reshape(-1, self.state_dim)))
        return (p @ self.cells_2N.T).view(*lead, 2)

    def cost_features(self, z_NHD: torch.Tensor) -> torch.Tensor:
        """What the planner's cost compares: the read position."""
        return self.position(z_NHD)

    def heading_logits(self, map_BCGG: torch.Tensor) -> torch.Tensor:
        p = self._attention(map_BCGG)
        return self.heading(torch.einsum("bn,bcn->bc", p, map_BCGG.flatten(2)))

    def decode(self, z_BD: torch.Tensor) -> torch.Tensor:
        """Maps -> frames in [-1, 1] at the data's size (only with ``decoder``)."""
        x = self.decoder(self._map(z_BD))
        return F.interpolate(x, size=self.frame_hw, mode="bilinear", align_corners=False)

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        frames = batch["frames"]  # (B, K+1, C, H, W) uint8, every env step
        feats = batch["actions"]  # (B, K, feature_dim): each env step's action features
        pos = batch["proprio"]  # (B, K+1, 2): the recorded position, in proprioception units
        B, T = frames.shape[:2]
        cfg = self.cfg
        z = self.encode(frames.flatten(0, 1)).view(B, T, cfg.channels, cfg.grid, cfg.grid)
        m, preds = z[:, 0], []
        for k in range(T - 1):
            m = self.env_step(m, feats[:, k])
            preds.append(m)
        pred = torch.stack(preds, 1)  # (B, K, C, G, G)
        per_step = (pred - z[:, 1:]).pow(2).mean((0, 2, 3, 4))
        pred_loss = per_step.mean()
        cells = z.permute(0, 1, 3, 4, 2).reshape(-1, cfg.channels)
        var, cov = vicreg_terms(cells)
        both = torch.cat([z, pred], 1).flatten(0, 1)  # encoded then predicted maps
        target = torch.cat([pos, pos[:, 1:]], 1).flatten(0, 1)
        read = self.position(both.flatten(1))
        pos_err = (read - target).pow(2).sum(-1).view(B, -1)
        pos_enc, pos_pred = pos_err[:, :T].mean(), pos_err[:, T:].mean()
        loss = pred_loss + cfg.var_weight * var + cfg.cov_weight * cov + cfg.position_weight * (pos_enc + pos_pred)
        metrics = {"pred": pred_loss.item(), "var": var.item(), "cov": cov.item(),
                   "pos_enc": pos_enc.item(), "pos_pred": pos_pred.item(),
                   "pos_last": pos_err[:, -1].mean().item()}  # fmt: skip
        if cfg.heading_weight and "heading" in batch:
            h = batch["heading"].long()
            ce = F.cross_entropy(self.heading_logits(both), torch.cat([h, h[:, 1:]], 1).flatten())
            loss = loss + cfg.heading_weight * ce
            metrics["heading_ce"] = ce.item()
        if cfg.decoder:
            x = to_unit(frames[:, 0])
            rec = (self.decode(z[:, 0].detach().flatten(1)) - x).abs().mean()
            loss = loss + rec
            metrics["recon_l1"] = rec.item()
        return loss, metrics
