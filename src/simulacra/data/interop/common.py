"""What every importer shares: a staging directory that only becomes the output once complete, a writer
that is created when the first frame shows the frame size, and action-space inference."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from simulacra import __version__
from simulacra.data.envs import to_rgb
from simulacra.data.store import INFO, DatasetWriter
from simulacra.errors import DatasetError, SimulacraError

NO_ACTIONS = {"type": "none"}


@contextmanager
def staged_dir(out: str | os.PathLike, overwrite: bool, marker: str, what: str) -> Iterator[Path]:
    """Yield a hidden sibling directory to write into; it replaces ``out`` only if the body succeeds.

    On any failure the staging directory is deleted, so nothing half-written is left behind that looks
    like a complete data set. ``marker`` is the file that proves an existing ``out`` is a ``what`` and
    may be replaced with ``overwrite``; any other non-empty directory is never deleted.
    """
    out = Path(out)
    if out.exists():
        if not out.is_dir():
            raise DatasetError(f"{out} exists and is not a directory")
        if any(out.iterdir()):
            if not (out / marker).exists():
                raise DatasetError(f"{out} exists and is not a {what}; refusing to replace it (choose another --out)")
            if not overwrite:
                raise DatasetError(f"{out} already holds a {what}; pass --overwrite to replace it or --out elsewhere")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)


def fit_frame(frame: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    """Any uint8 image -> RGB (H, W, 3), resized to ``size`` (default: keep its own size)."""
    frame = np.asarray(frame)
    if frame.dtype != np.uint8:
        raise DatasetError(f"frames must be uint8 images, got {frame.dtype} {frame.shape}")
    if frame.ndim == 3 and frame.shape[0] in (1, 3, 4) and frame.shape[-1] not in (1, 3, 4):
        frame = frame.transpose(1, 2, 0)  # channel-first -> channel-last
    try:
        return to_rgb(frame, size or tuple(frame.shape[:2]))
    except SimulacraError:
        raise
    except Exception as e:  # PIL/numpy complaints about odd shapes
        raise DatasetError(f"cannot use a {frame.shape} array as an image ({e})") from None


def square(resolution: int | None) -> tuple[int, int] | None:
    if resolution is None:
        return None
    if resolution < 8:
        raise DatasetError(f"--resolution must be at least 8, got {resolution}")
    return (resolution, resolution)


class LazyWriter:
    """A DatasetWriter opened on the first episode, when its frames tell the data set's frame shape."""

    def __init__(self, root: Path, info: dict):
        self.root, self.info, self.writer = root, info, None

    def add(self, frames: np.ndarray, actions, rewards, terminated, truncated, where: str, **meta) -> None:
        frames = np.asarray(frames, np.uint8)
        if self.writer is None:
            info = {"frame_shape": list(frames.shape[1:]), **self.info, "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
            self.writer = DatasetWriter(self.root, info)
        try:
            self.writer.add_episode(frames, actions, rewards, terminated, truncated, **meta)
        except DatasetError as e:
            raise DatasetError(f"{where}: {e}") from None

    def close(self, source: str) -> None:
        if self.writer is None:
            raise DatasetError(f"{source}: found no episode with at least 2 frames to import")
        if not (self.root / INFO).exists():
            raise DatasetError(f"{self.root}: import produced no data set")


def base_info(fmt: str, source: str, action_space: dict, fps: float | None, **extra) -> dict:
    return {
        "action_space": action_space,
        "env_id": None,
        "preset": None,
        "fps": int(round(fps)) if fps else 15,
        "source": fmt,
        "source_path": str(Path(source).resolve()) if "://" not in source else source,
        "simulacra_version": __version__,
        **extra,
    }


def infer_action_space(actions: Sequence[np.ndarray], declared_n: int | None = None) -> dict:
    """Discrete if every array is integer-valued with one number per step, else Box over the seen range."""
    arrays = [np.asarray(a) for a in actions if a is not None and len(a)]
    if not arrays:
        return dict(NO_ACTIONS)
    per_step = {a.shape[1:] for a in arrays}
    if len(per_step) > 1:
        raise DatasetError(f"actions disagree on their shape per step: {sorted(per_step)}")
    shape = per_step.pop()
    flat = np.concatenate([a.reshape(len(a), -1) for a in arrays]).astype(np.float64)
    if not np.isfinite(flat).all():
        bad = np.argwhere(~np.isfinite(flat))[0]
        raise DatasetError(f"action {flat[bad[0]].tolist()} is not finite; actions must be numbers")
    integral = all(np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.bool_) for a in arrays)
    if integral and shape in ((), (1,)):
        lo, hi = int(flat.min()), int(flat.max())
        start = min(lo, 0)
        n = max(hi - start + 1, declared_n or 0)
        return {"type": "discrete", "n": n, "start": start}
    box_shape = list(shape) or [1]
    low = flat.min(0).reshape(box_shape).astype(np.float32)
    high = flat.max(0).reshape(box_shape).astype(np.float32)
    return {"type": "box", "shape": box_shape, "low": low.tolist(), "high": high.tolist(), "dtype": "float32"}


def shape_actions(space: dict, actions: np.ndarray | None) -> np.ndarray | None:
    """Actions in the layout the store expects for ``space`` (1-D ints, or (L, *shape) floats)."""
    if actions is None or space["type"] == "none":
        return None
    a = np.asarray(actions)
    if space["type"] == "discrete":
        if a.ndim > 1 and int(np.prod(a.shape[1:])) == 1:
            a = a.reshape(len(a))
        if np.issubdtype(a.dtype, np.floating) and np.all(a == np.round(a)):
            a = a.astype(np.int64)
        return a
    if space["type"] == "box":
        return a.astype(np.float32).reshape(len(a), *space["shape"])
    return a.astype(np.int64).reshape(len(a), -1)
