"""Frame autoencoder: 64x64 RGB <-> a small spatial latent (16x16x8 by default) the dynamics model
works in. Patches of 4x4 pixels are folded into channels first, so all the work happens at 16x16. Deterministic and nearly lossless on the worlds we record, so the generative part (and its
sharpness) lives in the dynamics model; an L1 + image-gradient loss keeps edges crisp.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from simulacra.models.common import MAX_BLOCKS, Problem, at_least, batch_rng, short


@dataclass
class AutoencoderConfig:
    kind: str = "pixels"
    """'pixels': no learned compression, a frame is its (H/patch, W/patch, 3*patch^2) patch grid
    (lossless, nothing to train); 'learned': a convolutional autoencoder to latent_channels."""
    patch: int = 4
    """Pixel-unshuffle factor: frames become a (H/patch, W/patch) grid of patch*patch*3 values,
    so every convolution runs at the latent resolution (cheap on CPU)."""
    channels: int = 64
    """Width of the convolutions at the latent resolution."""
    latent_channels: int = 8
    """Channels of the latent grid (16x16x8 = 6x fewer numbers than a 64x64x3 frame)."""
    blocks: int = 2
    """Residual blocks in the encoder and in the decoder."""
    grad_loss: float = 0.5
    """Weight of the image-gradient L1 term (sharp edges) beside the pixel L1 term."""

    @property
    def grid_channels(self) -> int:
        """Channels of the latent grid this config makes ('pixels': the 3 x patch^2 values of a patch)."""
        return 3 * self.patch**2 if self.kind == "pixels" else self.latent_channels

    def problems(self, frame_shape=None) -> list[Problem]:
        """(field, problem) for every value out of range, and a patch that does not tile ``frame_shape``."""
        out = (
            []
            if self.kind in ("pixels", "learned")
            else [("kind", f"must be 'pixels' or 'learned', not {short(self.kind)}")]
        )
        for name, low in (("patch", 1), ("channels", 1), ("latent_channels", 1), ("grad_loss", 0)):
            if (p := at_least(getattr(self, name), low)) is not None:
                out.append((name, p))
        if not 0 <= self.blocks <= MAX_BLOCKS:
            out.append(("blocks", f"must be 0 to {MAX_BLOCKS}, not {self.blocks}"))
        if self.kind == "learned" and self.channels % 8:
            out.append(("channels", f"must be a multiple of 8 (GroupNorm with 8 groups), not {self.channels}"))
        if frame_shape is not None and self.patch >= 1 and any(s % self.patch for s in frame_shape[:2]):
            out.append(("patch", f"{self.patch} does not tile {frame_shape[0]}x{frame_shape[1]} frames"))
        return out


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
        p2, ch = 3 * cfg.patch**2, cfg.channels
        if cfg.kind == "pixels":
            self.encoder, self.decoder = nn.PixelUnshuffle(cfg.patch), nn.PixelShuffle(cfg.patch)
            return
        if cfg.kind != "learned":
            raise ValueError(f"unknown autoencoder kind {cfg.kind!r} (pixels or learned)")
        self.encoder = nn.Sequential(
            nn.PixelUnshuffle(cfg.patch),
            nn.Conv2d(p2, ch, 1),
            *[ResBlock(ch) for _ in range(cfg.blocks)],
            nn.GroupNorm(8, ch),
            nn.SiLU(),
            nn.Conv2d(ch, cfg.latent_channels, 3, padding=1),
        )
        self.decoder = nn.Sequential(
            nn.Conv2d(cfg.latent_channels, ch, 3, padding=1),
            *[ResBlock(ch) for _ in range(cfg.blocks)],
            nn.GroupNorm(8, ch),
            nn.SiLU(),
            nn.Conv2d(ch, p2, 3, padding=1),
            nn.PixelShuffle(cfg.patch),
        )

    def encode(self, frames_BCHW: torch.Tensor) -> torch.Tensor:
        """uint8 or [-1, 1] frames -> latents (B, latent_channels, H/patch, W/patch)."""
        x = to_unit(frames_BCHW) if frames_BCHW.dtype == torch.uint8 else frames_BCHW
        if self.cfg.kind == "pixels":
            return self.encoder(x)
        return torch.tanh(self.encoder(x))  # bounded latents keep the dynamics model's target scale fixed

    @property
    def latent_channels(self) -> int:
        return self.cfg.grid_channels

    @property
    def trainable(self) -> bool:
        return self.cfg.kind != "pixels"

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
