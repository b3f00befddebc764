"""The clip discriminator: can a small classifier, trained from scratch, tell real clips from dreamed ones?

Clips are CLIP_LEN consecutive frames after a real context: the real future, or what the world generated
from the same context with the same actions. The critic is trained on clips from group-A starts and scored
on clips from group-B starts (disjoint episodes), balanced real / generated, so 50% means the two cannot be
told apart. It is the automatic cousin of GameNGen's human raters (near chance at 58-60%).

Copy-last clips (the last context frame, frozen) are the calibration row: a critic trained to tell them from
real clips must beat chance wherever the real world moves, or it cannot see motion and its verdict on the
world means nothing (the sanity check).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from simulacra.eval.idm import features

CLIP_LEN = 16
WILSON_Z = 1.96


class ClipCritic(nn.Module):
    """Small CNN on a clip's frames and frame differences stacked as channels -> logit(real)."""

    def __init__(self, T: int = CLIP_LEN, width: int = 32):
        super().__init__()
        self.features, n = features(3 * T + 3 * (T - 1), width)
        self.head = nn.Sequential(nn.Linear(n, 128), nn.SiLU(), nn.Linear(128, 1))

    def forward(self, clips_BTHWC: torch.Tensor) -> torch.Tensor:
        x = clips_BTHWC.float() / 255.0
        d = (x[:, 1:] - x[:, :-1]) * 4  # motion is what a frozen or fading world gets wrong
        B, T, H, W, C = x.shape
        x = torch.cat([x.permute(0, 1, 4, 2, 3).reshape(B, T * C, H, W),
                       d.permute(0, 1, 4, 2, 3).reshape(B, (T - 1) * C, H, W)], 1)  # fmt: skip
        return self.head(self.features(x)).squeeze(1)


def wilson(correct: int, n: int, z: float = WILSON_Z) -> tuple[float, float]:
    """The Wilson score interval of a proportion correct / n (95% by default)."""
    if n == 0:
        return (0.0, 1.0)
    p = correct / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (max(0.0, mid - half), min(1.0, mid + half))


def fit(real: np.ndarray, fake: np.ndarray, steps: int = 300, batch: int = 32, lr: float = 5e-4, seed: int = 0,
        device: str = "cpu") -> ClipCritic:  # fmt: skip
    """Train on uint8 clips (N, T, H, W, 3): real labelled 1, fake 0, balanced batches."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = ClipCritic(real.shape[1]).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    half = max(1, batch // 2)
    y = torch.cat([torch.ones(half), torch.zeros(half)]).to(device)
    model.train()
    for _ in range(steps):
        x = np.concatenate([real[rng.integers(0, len(real), half)], fake[rng.integers(0, len(fake), half)]])
        loss = F.binary_cross_entropy_with_logits(model(torch.from_numpy(x).to(device)), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.eval()


@torch.no_grad()
def says_real(model: ClipCritic, clips: np.ndarray, chunk: int = 64) -> np.ndarray:
    dev = next(model.parameters()).device
    out = [model(torch.from_numpy(np.ascontiguousarray(clips[i : i + chunk])).to(dev)).cpu() > 0
           for i in range(0, len(clips), chunk)]  # fmt: skip
    return torch.cat(out).numpy() if out else np.zeros(0, bool)


def score(model: ClipCritic, real: np.ndarray, fake: np.ndarray) -> dict:
    """Balanced accuracy on held-out clips (the mean of the two classes' accuracies, so unequal counts do not
    shift chance off 50%), with the Wilson 95% interval over all clips scored."""
    r, f = says_real(model, real), ~says_real(model, fake)
    n = len(r) + len(f)
    acc = 0.5 * (float(r.mean()) + float(f.mean())) if len(r) and len(f) else float("nan")
    lo, hi = wilson(int(round(acc * n)) if n else 0, n)
    return {"accuracy": acc, "interval95": [lo, hi], "real_clips": len(r), "generated_clips": len(f),
            "real_called_real": float(r.mean()) if len(r) else None,
            "generated_called_generated": float(f.mean()) if len(f) else None}  # fmt: skip
