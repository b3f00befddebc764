"""State probes: does a generated frame show the world's true state (the ball where it is, the lives left)?

A small CNN is trained from scratch to read the env's recorded state variables off *real* frames: those
of the world's own training data set where it has the state (never the held-out episodes the probe is
then scored on), else those of held-out group A. Whole episodes validate it (every VAL_EVERY-th). The
variables it reads well on the validation frames (R^2 >= KEEP_R2) are kept; the others (frame counters, RNG bytes, anything the
picture does not show) are dropped, so the probe only asks what a frame can answer.

On the open-loop rollouts of group B it then reads generated frames, the real frames and the copy-last
frame, and compares each with the true state at that step. The error is the mean absolute error over the
kept variables in units of each variable's standard deviation. State fidelity at horizon k is
``1 - error(generated_k) / error(copy-last_k)``: 1 when the world is as right as the probe allows, 0 when
it is no better than freezing the last frame, negative when worse. This is controllability's twin: the
IDM asks whether the player's action shows, the probe whether the world's state is right.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from simulacra.eval.idm import features

PROBE_TRAIN_FRACTION = 0.8
VAL_EVERY = 5
"""With this many training episodes or more, every VAL_EVERY-th one validates the probe (else the last
1 - PROBE_TRAIN_FRACTION of each episode does)."""
KEEP_R2 = 0.5
"""A variable is kept when the probe explains at least half of its variance on held-out real frames."""
MIN_FRAMES = 64
"""Fewer real training frames than this: no probe (it would read noise)."""


CONTRAST = 4.0
"""The probe reads a frame minus the mean of its training frames, times this: in Pong the paddles and the
ball are a few pixels on a still court, and on raw frames the probe learned nothing (R^2 0 for every RAM
byte; docs/world-model.md)."""


class StateProbe(nn.Module):
    """Small CNN: uint8 frame (B, H, W, 3) -> standardised state variables (B, S)."""

    def __init__(self, n_out: int, width: int = 32, mean_frame: np.ndarray | None = None):
        super().__init__()
        self.features, n = features(3, width)
        self.head = nn.Sequential(nn.Linear(n, 256), nn.SiLU(), nn.Linear(256, n_out))
        mean = torch.zeros(()) if mean_frame is None else torch.from_numpy(np.asarray(mean_frame, np.float32))
        self.register_buffer("mean_frame", mean)  # (H, W, 3) in 0..255: what every frame shares

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        x = (frames.float() - self.mean_frame) / 255.0 * CONTRAST
        return self.head(self.features(x.permute(0, 3, 1, 2)))


@dataclass
class Probe:
    model: StateProbe
    names: list[str]
    """All state variables the probe was trained on."""
    mean: np.ndarray
    std: np.ndarray
    r2_val: np.ndarray
    """Per variable: R^2 on the held-out real validation frames."""
    keep: np.ndarray
    """Indices of the kept variables (R^2 >= KEEP_R2)."""

    @property
    def kept_names(self) -> list[str]:
        return [self.names[i] for i in self.keep]

    @torch.no_grad()
    def read(self, frames: np.ndarray, chunk: int = 512) -> np.ndarray:
        """Probe readings of uint8 frames (..., H, W, 3) in standardised units: (..., S)."""
        lead = frames.shape[:-3]
        flat = frames.reshape(-1, *frames.shape[-3:])
        dev = next(self.model.parameters()).device
        outs = [self.model(torch.from_numpy(np.ascontiguousarray(flat[i : i + chunk])).to(dev)).cpu()
                for i in range(0, len(flat), chunk)]  # fmt: skip
        out = torch.cat(outs).numpy() if outs else np.zeros((0, len(self.names)), np.float32)
        return out.reshape(*lead, len(self.names))

    def standardise(self, state: np.ndarray) -> np.ndarray:
        return (state - self.mean) / self.std


def r2(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Per column R^2 of predictions (N, S) against the truth (N, S); -inf-safe (constant columns: 0)."""
    ss_res = ((pred - true) ** 2).sum(0)
    ss_tot = ((true - true.mean(0)) ** 2).sum(0)
    return np.where(ss_tot > 1e-12, 1 - ss_res / np.maximum(ss_tot, 1e-12), 0.0)


def fit(
    frames: list[np.ndarray],
    states: list[np.ndarray],
    names: list[str],
    steps: int = 1000,
    batch: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    device: str = "cpu",
) -> Probe | None:
    """Train a probe on real frames (per segment (T, H, W, 3)) and their states (T, S); None if there are
    too few frames or no variable that changes. Validation: every VAL_EVERY-th segment where there are at
    least that many (whole episodes the probe never saw), else the last 1 - PROBE_TRAIN_FRACTION of each."""
    if len(frames) >= VAL_EVERY:
        val = [i % VAL_EVERY == VAL_EVERY - 1 for i in range(len(frames))]
        xt, yt = (
            np.concatenate([f for f, v in zip(frames, val, strict=True) if not v]),
            np.concatenate([s for s, v in zip(states, val, strict=True) if not v]),
        )
        xv, yv = (
            np.concatenate([f for f, v in zip(frames, val, strict=True) if v]),
            np.concatenate([s for s, v in zip(states, val, strict=True) if v]),
        )
    else:
        cut = [max(1, int(len(f) * PROBE_TRAIN_FRACTION)) for f in frames]
        xt = np.concatenate([f[:c] for f, c in zip(frames, cut, strict=True)])
        yt = np.concatenate([s[:c] for s, c in zip(states, cut, strict=True)])
        xv = np.concatenate([f[c:] for f, c in zip(frames, cut, strict=True)])
        yv = np.concatenate([s[c:] for s, c in zip(states, cut, strict=True)])
    yt, yv = yt.astype(np.float64), yv.astype(np.float64)
    if len(xt) < MIN_FRAMES or len(xv) < 8:
        return None
    mean, std = yt.mean(0), yt.std(0)
    moving = std > 1e-6
    if not moving.any():
        return None
    std = np.where(moving, std, 1.0)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    mean_frame = sum(xt[i : i + 1024].sum(0, dtype=np.float64) for i in range(0, len(xt), 1024)) / len(xt)
    model = StateProbe(len(names), mean_frame=mean_frame).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    y = torch.from_numpy(((yt - mean) / std).astype(np.float32))
    w = torch.from_numpy(moving.astype(np.float32)).to(device)
    model.train()
    for step in range(steps):
        for g in opt.param_groups:  # cosine decay to 10%
            g["lr"] = lr * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * step / max(1, steps))))
        i = rng.integers(0, len(xt), size=batch)
        out = model(torch.from_numpy(xt[i]).to(device))
        loss = (((out - y[i].to(device)) ** 2) * w).sum(1).mean() / w.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()
    probe = Probe(
        model, list(names), mean.astype(np.float32), std.astype(np.float32), np.zeros(len(names)), np.zeros(0, int)
    )
    probe.r2_val = np.where(moving, r2(probe.read(xv).astype(np.float64), (yv - mean) / std), 0.0)
    probe.keep = np.flatnonzero(probe.r2_val >= KEEP_R2)
    return probe


def errors(probe: Probe, frames: np.ndarray, true_state: np.ndarray) -> np.ndarray:
    """Mean |reading - truth| over the kept variables, in standard deviations: frames (..., H, W, 3) and
    states (..., S) -> (...)."""
    k = probe.keep
    return np.abs(probe.read(frames)[..., k] - probe.standardise(true_state)[..., k]).mean(-1)


def in_range(probe: Probe, frames: np.ndarray, real_state: np.ndarray, margin: float = 0.1) -> float:
    """The fraction of kept-variable readings of ``frames`` inside the range of the real states (widened by
    ``margin`` of that range on each side): a long dream whose score reads 9,999 or whose ball left the
    court fails this."""
    k = probe.keep
    real = probe.standardise(real_state.reshape(-1, real_state.shape[-1]))[:, k]
    return range_fraction(probe.read(frames).reshape(-1, len(probe.names))[:, k], real, margin)


def range_fraction(readings: np.ndarray, real: np.ndarray, margin: float = 0.1) -> float:
    """The fraction of readings (N, S) inside the per-column range of ``real`` (M, S), widened by ``margin``."""
    lo, hi = real.min(0), real.max(0)
    pad = margin * (hi - lo)
    return float(((readings >= lo - pad) & (readings <= hi + pad)).mean()) if readings.size else float("nan")
