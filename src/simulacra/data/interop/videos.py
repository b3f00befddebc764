"""A folder of videos -> one episode per video (sorted by name), with or without actions.

Each video may have an actions file with the same stem: ``<stem>.actions.npy``, ``<stem>.actions.json``
(a list) or ``<stem>.actions.csv`` (one row per step, an optional header). A video of N frames needs
exactly N-1 actions. Videos without one become action-free episodes. The action space comes from an
optional ``action_space.json`` in the folder (the action-space JSON of a data set's info.json, described
in :mod:`simulacra.spaces`), otherwise from the actions seen: Discrete if all are integers, one per step;
Box over their range if not.
Rewards are zero; the last step of each episode is truncated (a clip ends, the world does not).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import imageio.v3 as iio
import numpy as np

from simulacra.data.interop.common import (
    LazyWriter,
    base_info,
    fit_frame,
    infer_action_space,
    shape_actions,
    square,
    staged_dir,
)
from simulacra.data.safety import one_line, reading
from simulacra.data.store import INFO, Dataset
from simulacra.errors import DatasetError, SimulacraError
from simulacra.layout import inside
from simulacra.spaces import ActionSpace, ActionSpaceError

VIDEO_SUFFIXES = (".mp4", ".gif", ".webm", ".avi", ".mkv", ".mov")
ACTION_SUFFIXES = (".actions.npy", ".actions.json", ".actions.csv")
DEFAULT_RESOLUTION = 64


def _number(text: str) -> int | float:
    v = float(text)
    return int(v) if v.is_integer() and "." not in text and "e" not in text.lower() else v


def _numeric(row: list[str]) -> bool:
    try:
        [_number(c.strip()) for c in row]
    except ValueError:
        return False
    return True


def load_actions(path: Path) -> np.ndarray:
    """Actions from .npy / .json / .csv; integer dtype when every value is written as an integer."""
    try:
        if path.suffix == ".npy":
            a = np.load(path, allow_pickle=False)
        elif path.suffix == ".json":
            a = np.asarray(json.loads(path.read_text()))
        else:
            with open(path, newline="") as f:
                rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
            if rows and not _numeric(rows[0]):
                rows = rows[1:]  # a header row
            a = np.asarray([[_number(c.strip()) for c in r] for r in rows])
            if a.ndim == 2 and a.shape[1] == 1:
                a = a[:, 0]
    except SimulacraError:
        raise
    except Exception as e:  # OSError, ValueError, EOFError (an empty .npy), csv.Error, ...
        raise DatasetError(f"{path}: cannot read actions ({one_line(e)})") from None
    if a.dtype.kind not in "iufb":
        raise DatasetError(f"{path}: actions must be numbers, got {a.dtype}")
    if a.ndim == 0:
        raise DatasetError(f"{path}: actions must be a list with one entry per step")
    return a.astype(np.int64) if a.dtype.kind in "ib" else a


def _within(folder: Path, name: str) -> Path:
    """``folder/name`` if it stays in the folder (a symlink out is refused before it is opened)."""
    try:
        return Path(inside(folder, name, "file"))
    except SimulacraError as e:
        raise DatasetError(str(e)) from None


def _actions_file(video: Path) -> Path | None:
    for suffix in ACTION_SUFFIXES:
        p = video.with_name(video.name[: -len(video.suffix)] + suffix)
        if p.exists() or p.is_symlink():
            return _within(video.parent, p.name)
    return None


def _iter_frames(path: Path):
    with reading(path, "cannot decode video"):
        if path.suffix.lower() == ".gif":
            yield from iio.imiter(path)
        else:
            yield from iio.imiter(path, plugin="FFMPEG")


def _fps(path: Path) -> float | None:
    try:
        meta = iio.immeta(path) if path.suffix == ".gif" else iio.immeta(path, plugin="FFMPEG")
    except Exception:
        return None
    if meta.get("fps"):
        return float(meta["fps"])
    if meta.get("duration"):  # gif: per-frame duration in ms
        return 1000.0 / float(meta["duration"])
    return None


def import_videos(
    source: str, out: str, overwrite: bool = False, resolution: int | None = None, image_key: str | None = None
) -> Dataset:
    folder = Path(source)
    if not folder.is_dir():
        raise DatasetError(f"{source}: not a folder of videos")
    videos = sorted(
        p for p in folder.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES and (p.is_file() or p.is_symlink())
    )
    videos = [_within(folder, p.name) for p in videos]  # a symlink that leads out is refused, not read
    if not videos:
        raise DatasetError(f"{source}: holds no videos ({', '.join(VIDEO_SUFFIXES)})")
    action_files = {v: _actions_file(v) for v in videos}
    actions = {v: load_actions(p) for v, p in action_files.items() if p is not None}
    declared = folder / "action_space.json"
    if declared.exists() or declared.is_symlink():
        declared = _within(folder, declared.name)
        try:
            space = ActionSpace.from_json(json.loads(declared.read_text()))
        except (ValueError, OSError, ActionSpaceError) as e:
            raise DatasetError(f"{declared}: not a usable action space ({e})") from None
    else:
        space = infer_action_space(list(actions.values()))
    size = square(DEFAULT_RESOLUTION if resolution is None else resolution)
    info = base_info("videos", source, space, _fps(videos[0]))
    with staged_dir(out, overwrite, INFO, "simulacra data set") as tmp:
        writer = LazyWriter(tmp, info)
        for v in videos:
            frames = np.stack([fit_frame(np.asarray(x), size) for x in _iter_frames(v)])
            n = len(frames)
            if n < 2:
                raise DatasetError(f"{v}: has {n} frame(s); an episode needs at least 2")
            a = actions.get(v)
            if a is not None and len(a) != n - 1:
                raise DatasetError(f"{action_files[v]}: has {len(a)} actions but {v.name} has {n} frames; it needs exactly {n - 1}, one per step")  # fmt: skip
            trunc = np.zeros(n - 1, bool)
            trunc[-1] = True
            extra = {"source_path": str(v.resolve())}
            if a is not None:
                extra["actions_file"] = str(action_files[v].resolve())
            writer.add(
                frames, shape_actions(space, a), np.zeros(n - 1, np.float32), np.zeros(n - 1, bool), trunc,
                where=str(action_files[v] or v), source="videos", extra=extra,
            )  # fmt: skip
        writer.close(source)
    return Dataset.open(out)
