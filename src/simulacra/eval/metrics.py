"""Frame metrics for evaluation, in torch, on uint8 (..., H, W, 3) frames or [0, 1] float (N, 3, H, W).

PSNR    per frame on [0, 1] RGB, capped at PSNR_CAP dB (identical frames would be +inf).
SSIM    Wang et al. 2004: 11x11 Gaussian window (sigma 1.5), C1 = (0.01)^2, C2 = (0.03)^2 on [0, 1]
        RGB, per channel, over the valid (unpadded) window positions, averaged over channels and pixels.
Sharpness  variance of the 3x3 Laplacian of the luma (BT.601) in [0, 1], per frame ('valid' positions).
Nearest-real distance  RMSE in [0, 1] pixel units from a frame to its nearest frame in a pool.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

PSNR_CAP = 60.0
"""PSNR of frames closer than this (in dB) is reported as PSNR_CAP: keeps means finite and not ruled by
a handful of exactly repeated frames (the copy-last baseline on a static scene)."""

SSIM_C1, SSIM_C2 = 0.01**2, 0.03**2


def to_unit(frames) -> torch.Tensor:
    """uint8 (N, H, W, 3) array/tensor -> float (N, 3, H, W) in [0, 1]."""
    t = torch.from_numpy(np.array(frames, copy=True)) if not torch.is_tensor(frames) else frames
    if t.dtype == torch.uint8:
        return t.permute(0, 3, 1, 2).float() / 255.0
    return t.float()


def _flat(frames) -> tuple[torch.Tensor, tuple]:
    """Any leading shape (..., H, W, 3) -> ((N, 3, H, W) in [0, 1], leading shape)."""
    a = np.asarray(frames) if not torch.is_tensor(frames) else frames
    lead = tuple(a.shape[:-3])
    return to_unit(a.reshape(-1, *a.shape[-3:])), lead


def psnr(a, b, cap: float = PSNR_CAP) -> np.ndarray:
    """Per-frame PSNR (dB) between uint8 frames (..., H, W, 3); shape (...)."""
    x, lead = _flat(a)
    y, _ = _flat(b)
    mse = ((x - y) ** 2).flatten(1).mean(1)
    out = (-10 * torch.log10(mse.clamp_min(10 ** (-cap / 10)))).clamp(max=cap)
    return out.numpy().reshape(lead)


def gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """The normalised 2-D Gaussian window (size, size) = outer product of the 1-D one."""
    g = gaussian_1d(size, sigma)
    return g[:, None] * g[None, :]


def gaussian_1d(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def ssim_unit(x: torch.Tensor, y: torch.Tensor, size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """SSIM of float (N, C, H, W) images in [0, 1]: (N,) means of the SSIM map. Computed in float64 (the
    variances are differences of nearly equal numbers) with the separable Gaussian window."""
    x, y = x.double(), y.double()
    C = x.shape[1]
    g = gaussian_1d(size, sigma)
    gh, gv = g.view(1, 1, 1, size).expand(C, 1, 1, size), g.view(1, 1, size, 1).expand(C, 1, size, 1)
    blur = lambda t: F.conv2d(F.conv2d(t, gh, groups=C), gv, groups=C)  # noqa: E731
    mx, my = blur(x), blur(y)
    sxx = blur(x * x) - mx * mx
    syy = blur(y * y) - my * my
    sxy = blur(x * y) - mx * my
    num = (2 * mx * my + SSIM_C1) * (2 * sxy + SSIM_C2)
    den = (mx * mx + my * my + SSIM_C1) * (sxx + syy + SSIM_C2)
    return (num / den).flatten(1).mean(1).float()


def ssim(a, b, chunk: int = 256) -> np.ndarray:
    """Per-frame SSIM between uint8 frames (..., H, W, 3); shape (...)."""
    x, lead = _flat(a)
    y, _ = _flat(b)
    out = torch.cat([ssim_unit(x[i : i + chunk], y[i : i + chunk]) for i in range(0, len(x), chunk)])
    return out.numpy().reshape(lead)


LAPLACIAN = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])
LUMA = torch.tensor([0.299, 0.587, 0.114])


def laplacian_var(frames, chunk: int = 512) -> np.ndarray:
    """Per-frame variance of the Laplacian of the luma in [0, 1] (higher = more fine detail); shape (...)."""
    x, lead = _flat(frames)
    out = []
    for i in range(0, len(x), chunk):
        g = (x[i : i + chunk] * LUMA[None, :, None, None]).sum(1, keepdim=True)
        out.append(F.conv2d(g, LAPLACIAN[None, None]).flatten(1).var(1, unbiased=False))
    return (torch.cat(out) if out else torch.zeros(0)).numpy().reshape(lead)


def ratio(num: float, den: float) -> float | None:
    """num / den, or None where the denominator is zero (or either is not finite)."""
    if not (np.isfinite(num) and np.isfinite(den)) or den == 0:
        return None
    return float(num / den)


def nearest_distance(queries, pool, chunk: int = 256) -> np.ndarray:
    """RMSE (in [0, 1] pixel units) from each uint8 query frame (N, H, W, 3) to its nearest pool frame (M, H, W, 3)."""
    p = torch.as_tensor(np.asarray(pool)).reshape(len(pool), -1).float() / 255.0
    p2 = (p * p).sum(1)
    D = p.shape[1]
    out = []
    for i in range(0, len(queries), chunk):
        q = torch.as_tensor(np.asarray(queries[i : i + chunk])).reshape(-1, D).float() / 255.0
        d2 = (q * q).sum(1)[:, None] + p2[None] - 2 * q @ p.T
        out.append((d2.min(1).values.clamp_min(0) / D).sqrt())
    return torch.cat(out).numpy() if out else np.zeros(0)


def masked_mean(values_BH: np.ndarray, mask_BH: np.ndarray) -> list[float | None]:
    """Mean over the batch per column, counting only masked-in entries (None where a column has none)."""
    out = []
    for h in range(values_BH.shape[1]):
        m = mask_BH[:, h]
        out.append(float(values_BH[m, h].mean()) if m.any() else None)
    return out


def masked_ratio(num_BH: np.ndarray, den_BH: np.ndarray, mask_BH: np.ndarray) -> list[float | None]:
    """Per column: mean(num) / mean(den) over masked-in entries (a ratio of means)."""
    out = []
    for h in range(num_BH.shape[1]):
        m = mask_BH[:, h]
        out.append(ratio(float(num_BH[m, h].mean()), float(den_BH[m, h].mean())) if m.any() else None)
    return out


def mean_of(values: list[float | None]) -> float | None:
    v = [x for x in values if x is not None]
    return float(np.mean(v)) if v else None
