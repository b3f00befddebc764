"""Inverse-dynamics model (IDM): which action led from frame t to frame t+1?

Trained on real pairs only, for a fixed budget; then scored on held-out real pairs and on generated
pairs (real frame t, the world's prediction of t+1 given the true action). If the world renders the
consequences of actions the way reality does, the IDM reads them off its frames about as well.
Discrete actions: classification (accuracy, chance = majority-class rate). Box actions: regression on
actions scaled to [-1, 1] (MSE and R^2 in those units).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from simulacra.spaces import ActionSpace


def features(cin: int, width: int = 32) -> tuple[nn.Sequential, int]:
    """The eval's small CNN trunk (the IDM, the state probe, the clip discriminator): four stride-2 convs,
    pooled to 4x4 and flattened; returns (module, output features)."""
    layers: list[nn.Module] = []
    for cout in (width, 2 * width, 4 * width, 4 * width):
        layers += [nn.Conv2d(cin, cout, 4, stride=2, padding=1), nn.GroupNorm(8, cout), nn.SiLU()]
        cin = cout
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(4), nn.Flatten()), cin * 16


class IDM(nn.Module):
    """Small CNN on (frame t, frame t+1, their difference) -> action logits or scaled action."""

    def __init__(self, space: ActionSpace, width: int = 32):
        super().__init__()
        if space.kind not in ("discrete", "box"):
            raise ValueError(f"the IDM needs a discrete or box action space, not {space}")
        self.space = space
        self.features, n = features(9, width)
        self.head = nn.Sequential(nn.Linear(n, 128), nn.SiLU(), nn.Linear(128, space.dim))

    def forward(self, f0: torch.Tensor, f1: torch.Tensor) -> torch.Tensor:
        """uint8 (B, H, W, 3) pairs -> (B, n) logits or (B, D) scaled actions."""
        a = f0.permute(0, 3, 1, 2).float() / 255.0
        b = f1.permute(0, 3, 1, 2).float() / 255.0
        return self.head(self.features(torch.cat([a, b, (b - a) * 4], 1)))


def transitions(frames: list[np.ndarray]) -> np.ndarray:
    """Every (segment, t) with a frame t+1: (N, 2) int."""
    return np.array([(g, t) for g, f in enumerate(frames) for t in range(len(f) - 1)], dtype=np.int64).reshape(-1, 2)


def take(frames: list[np.ndarray], actions: list[np.ndarray], index: np.ndarray):
    """(frame t, frame t+1, action t) arrays for the (segment, t) rows of index."""
    f0 = np.stack([frames[g][t] for g, t in index])
    f1 = np.stack([frames[g][t + 1] for g, t in index])
    return f0, f1, np.stack([actions[g][t] for g, t in index])


def fit(
    frames: list[np.ndarray],
    actions: list[np.ndarray],
    space: ActionSpace,
    steps: int = 400,
    batch: int = 64,
    lr: float = 5e-4,  # small, so sprites a few pixels wide are learned (larger rates stay at chance on them)
    seed: int = 0,
    device: str = "cpu",
) -> IDM:
    """Train an IDM on every real transition of the given segments, ``steps`` Adam steps of ``batch`` pairs."""
    torch.manual_seed(seed)
    model = IDM(space).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    index = transitions(frames)
    if len(index) == 0:
        raise ValueError("no transitions to train the IDM on")
    rng = np.random.default_rng(seed)
    discrete = space.kind == "discrete"
    model.train()
    for step in range(steps):
        for g in opt.param_groups:  # cosine decay to 10%
            g["lr"] = lr * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * step / max(1, steps))))
        f0, f1, a = take(frames, actions, index[rng.integers(0, len(index), size=batch)])
        y = torch.from_numpy(space.normalize(a)).to(device)
        out = model(torch.from_numpy(f0).to(device), torch.from_numpy(f1).to(device))
        loss = F.cross_entropy(out, y) if discrete else F.mse_loss(out, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.eval()


@torch.no_grad()
def predict(model: IDM, f0: np.ndarray, f1: np.ndarray, chunk: int = 256) -> np.ndarray:
    dev = next(model.parameters()).device
    outs = [
        model(torch.from_numpy(f0[i : i + chunk]).to(dev), torch.from_numpy(f1[i : i + chunk]).to(dev)).cpu()
        for i in range(0, len(f0), chunk)
    ]
    return torch.cat(outs).numpy()


def score(model: IDM, f0: np.ndarray, f1: np.ndarray, actions: np.ndarray) -> dict:
    """Discrete: accuracy. Box: mse and r2 (on actions scaled to [-1, 1], R^2 averaged over dimensions)."""
    space = model.space
    y = space.normalize(actions)
    out = predict(model, f0, f1)
    if space.kind == "discrete":
        return {"accuracy": float((out.argmax(1) == y).mean())}
    mse = float(((out - y) ** 2).mean())
    ss_res = ((out - y) ** 2).sum(0)
    ss_tot = ((y - y.mean(0)) ** 2).sum(0)
    r2 = float(np.mean(1 - ss_res / np.maximum(ss_tot, 1e-12)))
    return {"mse": mse, "r2": r2}


def chance(space: ActionSpace, actions: np.ndarray) -> dict:
    """What a model that ignores the frames gets: majority-class accuracy, or the MSE of predicting the mean."""
    y = space.normalize(actions)
    if space.kind == "discrete":
        return {"accuracy": float(np.bincount(y).max() / len(y))}
    return {"mse": float(((y - y.mean(0)) ** 2).mean()), "r2": 0.0}
