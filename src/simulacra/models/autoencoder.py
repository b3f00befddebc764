"""Frame autoencoder: 64x64 RGB <-> a small spatial latent (16x16x4 by default) the dynamics model
works in. Deterministic and nearly lossless on the worlds we record, so the generative part (and its
sharpness) lives in the dynamics model; an L1 + image-gradient loss keeps edges crisp.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from simulacra.models.common import batch_rng


@dataclass
class AutoencoderConfig:
    channels: int = 32
    """Width of the first stage; each downsampling stage doubles it."""
    stages: int = 2
    """Stride-2 stages: latent side = frame side / 2**stages (64 -> 16 with 2)."""
    latent_channels: int = 4
    """Channels of the latent grid."""
    blocks: int = 1
    """Residual blocks per stage."""
    grad_loss: float = 0.5
    """Weight of the image-gradient L1 term (sharp edges) beside the pixel L1 term."""


class ResBlock(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(8, ch), nn.Conv2d(ch, ch, 3, padding=1)
        self.norm2, self.conv2 = nn.GroupNorm(8, ch), nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        return x + self.conv2(F.silu(self.norm2(h)))


def to_unit(frames_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1]."""
    return frames_uint8.float() / 127.5 - 1.0


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


class Autoencoder(nn.Module):
    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        self.cfg = cfg
        chs = [cfg.channels * 2**i for i in range(cfg.stages + 1)]
        enc: list[nn.Module] = [nn.Conv2d(3, chs[0], 3, padding=1)]
        for i in range(cfg.stages):
            enc += [ResBlock(chs[i]) for _ in range(cfg.blocks)]
            enc += [nn.Conv2d(chs[i], chs[i + 1], 4, stride=2, padding=1)]
        enc += [ResBlock(chs[-1]), nn.GroupNorm(8, chs[-1]), nn.SiLU(), nn.Conv2d(chs[-1], cfg.latent_channels, 1)]
        self.encoder = nn.Sequential(*enc)
        dec: list[nn.Module] = [nn.Conv2d(cfg.latent_channels, chs[-1], 3, padding=1), ResBlock(chs[-1])]
        for i in reversed(range(cfg.stages)):
            dec += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(chs[i + 1], chs[i], 3, padding=1)]
            dec += [ResBlock(chs[i]) for _ in range(cfg.blocks)]
        dec += [nn.GroupNorm(8, chs[0]), nn.SiLU(), nn.Conv2d(chs[0], 3, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)

    def encode(self, frames_BCHW: torch.Tensor) -> torch.Tensor:
        """uint8 or [-1, 1] frames -> latents (B, latent_channels, H/2**stages, W/2**stages)."""
        x = to_unit(frames_BCHW) if frames_BCHW.dtype == torch.uint8 else frames_BCHW
        return torch.tanh(self.encoder(x))  # bounded latents keep the dynamics model's target scale fixed

    def decode(self, z_BCHW: torch.Tensor) -> torch.Tensor:
        """Latents -> frames in [-1, 1] (unclamped)."""
        return self.decoder(z_BCHW)

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        frames = batch["frames"]  # (B, T+1, C, H, W) uint8 windows, or (B, C, H, W)
        x = to_unit(frames.flatten(0, 1) if frames.dim() == 5 else frames)
        z = self.encode(x)
        # light latent noise: the dynamics model's samples are never exact, so the decoder must tolerate that
        recon = self.decode(z + 0.05 * batch_rng(batch).randn(*z.shape[1:]).to(z) if self.training else z)
        l1 = (recon - x).abs().mean()
        dx = lambda t: t[..., :, 1:] - t[..., :, :-1]  # noqa: E731
        dy = lambda t: t[..., 1:, :] - t[..., :-1, :]  # noqa: E731
        grad = (dx(recon) - dx(x)).abs().mean() + (dy(recon) - dy(x)).abs().mean()
        loss = l1 + self.cfg.grad_loss * grad
        with torch.no_grad():
            mse = F.mse_loss(recon.clamp(-1, 1), x) / 4  # in [0, 1] pixel units
            psnr = -10 * torch.log10(mse.clamp_min(1e-10))
        return loss, {"l1": l1.item(), "grad": grad.item(), "psnr": psnr.item()}
