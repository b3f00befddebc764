"""Where things live on disk: data sets under ./datasets, runs under ./runs, a run's world in <run>/world;
and the one way files are written so a crash never leaves half a file (temp name, fsync, rename).

Staging folders (names starting with '.', e.g. ``.NAME.partial-PID`` of an import in progress) are never
resolved as data sets or runs.
"""

from __future__ import annotations

import os
from pathlib import Path

from simulacra.errors import SimulacraError

DATASETS_DIR = Path("datasets")
RUNS_DIR = Path("runs")
TMP_PREFIX = ".tmp-"
"""Prefix of a file being written; readers ignore such names, and a crash leaves nothing else behind."""


# ---- data sets and runs --------------------------------------------------------------------------
def _visible(p: Path, root: Path) -> bool:
    return not any(part.startswith(".") for part in p.relative_to(root).parts)


def latest_dataset(root: Path = DATASETS_DIR) -> Path | None:
    """The most recently written data set under ``root`` (by its manifest's mtime), or None."""
    found = [p for p in root.glob("*/episodes.jsonl") if _visible(p.parent, root)]
    return max(found, key=lambda p: p.stat().st_mtime).parent if found else None


def resolve_dataset(path: str | os.PathLike | None) -> tuple[str, bool]:
    """(the given data set path, False), or (the most recent under ./datasets, True) when none is given."""
    if path:
        return str(path), False
    found = latest_dataset()
    if found is None:
        raise SimulacraError("no data set given and none under ./datasets; record one with `simulacra record`")
    return str(found), True


def default_run_dir(dataset: str | os.PathLike, size: str) -> Path:
    """runs/<data set name>-<size>."""
    return RUNS_DIR / f"{Path(str(dataset).rstrip('/')).name}-{size}"


def world_dir(path: str | os.PathLike) -> Path:
    """The world folder of ``path``: the path itself if it holds world.json, else <path>/world."""
    p = Path(path)
    if (p / "world.json").exists() or not (p / "world").is_dir():
        return p
    return p / "world"


def resolve_run(path: str | os.PathLike | None) -> tuple[Path, Path]:
    """(run folder, world folder) of a run or world path, or of the most recent run under ./runs. A world
    folder whose parent holds a run's config.json belongs to that run; a bare world folder is its own run."""
    if path is None:
        found = [p for p in RUNS_DIR.glob("*/world/world.json") if _visible(p.parent, RUNS_DIR)]
        if not found:
            raise SimulacraError("no trained world under ./runs; pass --run RUN_DIR")
        w = max(found, key=lambda p: p.stat().st_mtime).parent
        return w.parent, w
    w = world_dir(path)
    if not (w / "world.json").exists():
        raise SimulacraError(f"{path}: no trained world here (missing world.json); train one with `simulacra train`")
    if w != Path(path) or (w.parent / "config.json").exists():
        return w.parent, w
    return w, w


# ---- atomic writes -------------------------------------------------------------------------------
def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, data: bytes | str) -> None:
    """Write to a temp name, fsync, rename, fsync the folder: readers see the old file or the whole new one."""
    path = Path(path)
    tmp = path.with_name(TMP_PREFIX + path.name)
    with open(tmp, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def commit_file(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """Move a finished temp file (written by someone else, e.g. an exporter) into place, durably."""
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(Path(path).parent)


def atomic_save_tensors(tensors: dict, path: str | os.PathLike) -> None:
    """safetensors file, written atomically."""
    from safetensors.torch import save

    atomic_write(path, save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}))
