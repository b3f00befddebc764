"""The planning world: a JEPA-style latent (encoder + action-conditioned predictor) made for search.

The pixel world samples frames through a diffusion U-Net, about 90 a second at batch 1: far too slow
for a planner that rolls hundreds of candidates several steps ahead, tens of times per decision. This
world encodes a 64x64 frame once into one small vector and predicts the next vector with an MLP, so a
batch of 300 candidates x 5 steps costs a few milliseconds on a CPU and never decodes a pixel.

- One model step covers ``block`` env steps: its action is the block's actions, concatenated (as
  DINO-WM and LeWM plan Push-T with an action block of 5).
- Training: encode frames t, t+block, ..., unroll the predictor ``horizon`` steps from the first
  encoding with the recorded actions, and regress each prediction onto the encoding of the real
  frame. The targets are not stopped: encoder and predictor learn together, and VICReg's variance
  and covariance terms (as in PLDM) keep the encodings from collapsing to a constant that any
  predictor would match.
- Proprioception (optional, as DINO-WM feeds it): a few numbers of the agent's own state (Push-T: the
  pusher's position, found in the frame at plan time) appended to the encoding and predicted with it.
  A 64x64 frame shows Push-T's pusher as a dozen pixels; without it the encoding barely sees the agent.
- A small decoder learns to draw frames from *detached* encodings, so it never shapes the latent;
  it only lets the plan video show what the planner imagined.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from simulacra.models.autoencoder import to_unit
from simulacra.models.common import Problem, at_least


@dataclass
class JEPAConfig:
    action_dim: int = 10
    """Numbers in one model step's action: the block's env actions as features, concatenated."""
    block: int = 5
    """Env steps per model step (the action block)."""
    latent_dim: int = 64
    """Size of the encoding a frame becomes, and the planner's cost compares."""
    channels: int = 32
    """Width of the encoder's first convolution (doubled at each of the next halvings, up to 4x)."""
    hidden: int = 512
    """Width of the predictor MLP."""
    layers: int = 3
    """Hidden layers of the predictor MLP."""
    horizon: int = 3
    """Model steps the predictor is unrolled on its own predictions in training (planning unrolls 5:
    training on one step alone lets errors compound)."""
    var_weight: float = 1.0
    """VICReg variance term: every latent dimension keeps a batch std of at least 1."""
    cov_weight: float = 0.04
    """VICReg covariance term: latent dimensions stay decorrelated (the 25:25:1 ratio of VICReg)."""
    proprio_dim: int = 0
    """Numbers of proprioception appended to the encoding (0: frames only)."""
    decoder: bool = True
    """Also learn a decoder from detached encodings (for pictures of the plan; it never shapes the latent)."""

    def problems(self) -> list[Problem]:
        out = []
        for name in ("action_dim", "block", "latent_dim", "channels", "hidden", "layers", "horizon"):
            if (p := at_least(getattr(self, name), 1)) is not None:
                out.append((name, p))
        for name in ("var_weight", "cov_weight", "proprio_dim"):
            if (p := at_least(getattr(self, name), 0)) is not None:
                out.append((name, p))
        return out


def _conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 4, stride=2, padding=1), nn.GroupNorm(8, cout), nn.SiLU())


def vicreg_terms(z_ND: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(variance hinge, covariance penalty) of a batch of encodings, as VICReg defines them."""
    z = z_ND - z_ND.mean(0)
    std = torch.sqrt(z.var(0) + 1e-4)
    var = F.relu(1.0 - std).mean()
    cov = (z.T @ z) / max(len(z) - 1, 1)
    off = cov - torch.diag(torch.diag(cov))
    return var, off.pow(2).sum() / z.shape[1]


class JEPA(nn.Module):
    def __init__(self, cfg: JEPAConfig, frame_hw: tuple[int, int] = (64, 64)):
        super().__init__()
        self.cfg = cfg
        c = cfg.channels
        widths = [c, 2 * c, 4 * c, 4 * c]  # 64 -> 32 -> 16 -> 8 -> 4
        self.encoder = nn.Sequential(*[_conv(a, b) for a, b in zip([3, *widths[:-1]], widths, strict=True)])
        h, w = frame_hw[0] // 16, frame_hw[1] // 16
        self.grid = (widths[-1], h, w)
        self.to_latent = nn.Linear(widths[-1] * h * w, cfg.latent_dim)
        self.state_dim = cfg.latent_dim + cfg.proprio_dim
        dims = [self.state_dim + cfg.action_dim] + [cfg.hidden] * cfg.layers
        mlp: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:], strict=True):
            mlp += [nn.Linear(a, b), nn.LayerNorm(b), nn.SiLU()]
        self.predictor = nn.Sequential(*mlp, nn.Linear(cfg.hidden, self.state_dim))
        if cfg.decoder:
            self.from_latent = nn.Linear(cfg.latent_dim, widths[-1] * h * w)
            ups: list[nn.Module] = []
            for a, b in zip(widths[::-1][:-1], widths[::-1][1:], strict=True):
                ups += [nn.ConvTranspose2d(a, b, 4, stride=2, padding=1), nn.GroupNorm(8, b), nn.SiLU()]
            self.decoder = nn.Sequential(*ups, nn.ConvTranspose2d(widths[0], 3, 4, stride=2, padding=1))

    # ---- the three verbs a planner needs ----------------------------------------------------------
    def encode(self, frames_BCHW: torch.Tensor, proprio_BP: torch.Tensor | None = None) -> torch.Tensor:
        """uint8 (or [-1, 1]) frames (+ proprioception) -> encodings (B, latent_dim + proprio_dim)."""
        x = to_unit(frames_BCHW) if frames_BCHW.dtype == torch.uint8 else frames_BCHW
        z = self.to_latent(self.encoder(x).flatten(1))
        if self.cfg.proprio_dim:
            if proprio_BP is None:
                raise ValueError("this planning world reads proprioception beside each frame")
            z = torch.cat([z, proprio_BP.to(z)], -1)
        return z

    def step(self, z_BD: torch.Tensor, action_BA: torch.Tensor) -> torch.Tensor:
        """The encoding one model step (``block`` env steps) later; batched over candidates."""
        return z_BD + self.predictor(torch.cat([z_BD, action_BA], -1))

    def decode(self, z_BD: torch.Tensor) -> torch.Tensor:
        """Encodings -> frames in [-1, 1] (only with ``decoder``)."""
        return self.decoder(self.from_latent(z_BD[..., : self.cfg.latent_dim]).view(-1, *self.grid))

    def rollout(self, z_BD: torch.Tensor, actions_BHA: torch.Tensor) -> torch.Tensor:
        """Encodings after each of the H steps (B, H, latent_dim)."""
        out = []
        for h in range(actions_BHA.shape[1]):
            z_BD = self.step(z_BD, actions_BHA[:, h])
            out.append(z_BD)
        return torch.stack(out, 1)

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        frames = batch["frames"]  # (B, H+1, C, H, W) uint8: frames block env steps apart
        actions = batch["actions"]  # (B, H, action_dim): each block's action features
        B, T = frames.shape[:2]
        proprio = batch["proprio"].flatten(0, 1) if self.cfg.proprio_dim else None  # (B, H+1, P)
        z = self.encode(frames.flatten(0, 1), proprio).view(B, T, -1)
        pred = self.rollout(z[:, 0], actions)
        per_step = (pred - z[:, 1:]).pow(2).mean((0, 2))  # (H,)
        pred_loss = per_step.mean()
        var, cov = vicreg_terms(z[..., : self.cfg.latent_dim].flatten(0, 1))
        loss = pred_loss + self.cfg.var_weight * var + self.cfg.cov_weight * cov
        metrics = {"pred": pred_loss.item(), "pred_h1": per_step[0].item(), "var": var.item(), "cov": cov.item()}
        if self.cfg.decoder:
            x = to_unit(frames[:, 0])
            recon = self.decode(z[:, 0].detach())
            rec = (recon - x).abs().mean()
            loss = loss + rec
            metrics["recon_l1"] = rec.item()
        return loss, metrics
