"""Previews: write episodes as an mp4/gif grid a person can watch."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from contextlib import suppress
from pathlib import Path

import imageio.v3 as iio
import imageio_ffmpeg
import numpy as np

from simulacra.data.store import Dataset
from simulacra.errors import SimulacraError
from simulacra.layout import TMP_PREFIX


def grid_frames(episodes_THWC: Sequence[np.ndarray], scale: int = 1, pad: int = 2) -> np.ndarray:
    """Tile episodes (each (T, H, W, 3)) into one (T_max, H', W', 3) video; finished ones hold their last frame."""
    n = len(episodes_THWC)
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    T = max(len(e) for e in episodes_THWC)
    H, W = episodes_THWC[0].shape[1:3]
    h, w = H * scale + pad, W * scale + pad
    out = np.full((T, rows * h + pad, cols * w + pad, 3), 32, np.uint8)
    for k, ep in enumerate(episodes_THWC):
        idx = np.minimum(np.arange(T), len(ep) - 1)
        tiles = ep[idx].repeat(scale, axis=1).repeat(scale, axis=2)
        r, c = divmod(k, cols)
        out[:, pad + r * h : pad + r * h + H * scale, pad + c * w : pad + c * w + W * scale] = tiles
    return out


def write_video(path: Path, frames_THWC: np.ndarray, fps: int) -> None:
    """mp4 (H.264 through the ffmpeg binary that imageio-ffmpeg ships) or gif, by suffix. Written to a
    temp name and renamed, so a failure never leaves half a video (nor replaces an old one); one line
    naming the file if the folder or the encoder refuses."""
    path = Path(path)
    tmp = path.with_name(TMP_PREFIX + path.name)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _encode(tmp, frames_THWC, fps, gif=path.suffix.lower() == ".gif")
        os.replace(tmp, path)
    except SimulacraError:
        raise
    except Exception as e:
        with suppress(OSError):
            tmp.unlink(missing_ok=True)
        why = e.strerror if isinstance(e, OSError) and e.strerror else " ".join(str(e).split())[:300]
        raise SimulacraError(f"{path}: cannot write the video ({why})") from None


def _encode(path: Path, frames_THWC: np.ndarray, fps: int, gif: bool) -> None:
    if gif:
        iio.imwrite(path, frames_THWC, extension=".gif", duration=1000 / fps, loop=0)
        return
    H, W = frames_THWC.shape[1:3]
    frames_THWC = np.pad(frames_THWC, ((0, 0), (0, H % 2), (0, W % 2), (0, 0)))  # yuv420p needs even sizes
    writer = imageio_ffmpeg.write_frames(
        str(path), (W + W % 2, H + H % 2), fps=fps, codec="libx264", quality=8, macro_block_size=1
    )
    writer.send(None)
    for frame in frames_THWC:
        writer.send(np.ascontiguousarray(frame))
    writer.close()


def write_episode_grid(ds: Dataset, out: Path, episodes: Sequence[int], max_frames: int, scale: int, fps: int) -> int:
    eps = [ds.frames(i, 0, min(max_frames, ds.episodes[i].length + 1)) for i in episodes]
    frames = grid_frames(eps, scale)
    write_video(out, frames, fps)
    return len(frames)
