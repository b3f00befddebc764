"""What every importer shares: a staging directory that only becomes the output once complete, a writer
that is created when the first frame shows the frame size, and inferring an action space from the actions."""

from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from simulacra import __version__, layout
from simulacra.data.envs import to_rgb
from simulacra.data.safety import (
    MAX_RESOLUTION,
    check_output_folder,
    check_range,
    folder_entries,
    locked_output,
    remove_stale_partials,
)
from simulacra.data.store import INFO, DatasetWriter, is_dataset_folder
from simulacra.errors import DatasetError, SimulacraError
from simulacra.layout import fsync_dir
from simulacra.spaces import ActionSpace


def _fsync_tree(root: Path) -> None:
    """Flush every file and folder under ``root`` to disk, so the rename that publishes it is durable."""
    for folder, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(folder))


@contextmanager
def staged_dir(
    out: str | os.PathLike, overwrite: bool, marker: str, what: str, verb: str = "data import"
) -> Iterator[Path]:
    """Yield a hidden sibling directory to write into; it replaces ``out`` only if the body succeeds.

    ``out``'s writer lock is held throughout, the final swap included, so a second writer gets one line
    naming this one's PID. Staging folders that killed runs left for ``out`` are removed first. On any
    failure the staging directory is deleted, so nothing half-written is left behind that looks like a
    complete data set. Its files are fsynced before the swap, so a crash right after it cannot leave a
    complete-looking folder of empty files. ``marker`` is the JSON file that proves an existing ``out`` is
    a ``what`` and may be replaced with ``overwrite``; any other non-empty directory is never deleted.
    """
    out = Path(out)
    check_output_folder(out, "--out")
    _check_replaceable(out, True, marker, what)  # before the lock file lands in a folder that is not ours
    with locked_output(out, verb):
        _check_replaceable(out, overwrite, marker, what)  # under the lock: a live writer is named first
        remove_stale_partials(out)
        tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            tmp.mkdir()
        except OSError as e:
            raise SimulacraError(f"--out {out}: cannot write next to it ({e.strerror})") from None
        try:
            yield tmp
            _fsync_tree(tmp)
            _publish(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def _check_replaceable(out: Path, overwrite: bool, marker: str, what: str) -> None:
    if not out.exists():
        return
    if not out.is_dir():
        raise DatasetError(f"{out} exists and is not a directory")
    entries = folder_entries(out)
    if not entries:
        return
    if not _is_a(out, marker):
        raise DatasetError(f"{out} exists and is not a {what}; refusing to replace it (choose another --out)")
    if not overwrite:
        raise DatasetError(f"{out} already holds a {what}; pass --overwrite to replace it or --out elsewhere")


def _is_a(out: Path, marker: str) -> bool:
    """Whether ``out`` holds ``marker`` as the JSON object its format writes (simulacra: format "simulacra...")."""
    if marker == INFO:
        return is_dataset_folder(out)
    try:
        return isinstance(json.loads((out / marker).read_bytes()), dict)
    except (OSError, ValueError):
        return False


_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE); False where that is not available."""
    if sys.platform != "linux":
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _publish(tmp: Path, out: Path) -> None:
    """Put the staged folder in ``out``'s place while ``out``'s writer lock stays in force: the lock file
    is linked into the staged folder, then the two folders are swapped in one step (or, where the OS
    cannot, entry by entry with the marker moved last) and the old contents deleted."""
    lock, linked = out / layout.LOCK_NAME, False
    if lock.exists():
        try:
            os.link(lock, tmp / layout.LOCK_NAME)
            linked = True
        except OSError:  # no hard links here: swap entry by entry below
            pass
    if (linked or not lock.exists()) and _exchange(tmp, out):
        fsync_dir(out.parent)
        shutil.rmtree(tmp, ignore_errors=True)  # the old contents, now under the staging name
        return
    (tmp / layout.LOCK_NAME).unlink(missing_ok=True)
    for name in folder_entries(out):  # the fallback: out keeps its lock file all along
        p = out / name
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()
    names = sorted(os.listdir(tmp), key=lambda n: n in (INFO, "meta"))  # the marker last
    for name in names:
        os.replace(tmp / name, out / name)
    fsync_dir(out)
    tmp.rmdir()
    fsync_dir(out.parent)


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
    check_range("--resolution", resolution, 8, MAX_RESOLUTION)
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


def base_info(fmt: str, source: str, action_space: ActionSpace, fps: float | None, **extra) -> dict:
    return {
        "action_space": action_space.to_json(),
        "env_id": None,
        "preset": None,
        "fps": int(round(fps)) if fps else 15,
        "source": fmt,
        "source_path": str(Path(source).resolve()) if "://" not in source else source,
        "simulacra_version": __version__,
        **extra,
    }


def infer_action_space(actions: Sequence[np.ndarray], declared_n: int | None = None) -> ActionSpace:
    """Discrete if every array is integer-valued with one number per step, else Box over the seen range."""
    arrays = [np.asarray(a) for a in actions if a is not None and len(a)]
    if not arrays:
        return ActionSpace.none()
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
        return ActionSpace.discrete(max(hi - start + 1, declared_n or 0), start)
    box_shape = tuple(shape) or (1,)
    return ActionSpace.box(flat.min(0).reshape(box_shape), flat.max(0).reshape(box_shape))


def shape_actions(space: ActionSpace, actions: np.ndarray | None) -> np.ndarray | None:
    """Actions laid out as the store expects for ``space``: (L, *shape of one action), e.g. (L, 1) integers
    become (L,). Values are left alone: the store checks them against the space and converts them."""
    if actions is None or space.kind == "none":
        return None
    a = np.asarray(actions)
    one = int(np.prod(space.event_shape))
    if a.ndim >= 1 and a.size == len(a) * one:
        a = a.reshape(len(a), *space.event_shape)
    return a
