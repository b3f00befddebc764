"""Where things live on disk: data sets under ./datasets, runs under ./runs, a run's world in <run>/world;
and the one way files are written so a crash never leaves half a file (temp name, fsync, rename).

Staging folders (names starting with '.', e.g. ``.NAME.partial-PID`` of an import in progress) are never
resolved as data sets or runs.
"""

from __future__ import annotations

import json
import os
import posixpath
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from simulacra.errors import SimulacraError

DATASETS_DIR = Path("datasets")
RUNS_DIR = Path("runs")
LOCK_NAME = ".simulacra.lock"
"""The writer lock of a data set or run folder: JSON naming the holder (pid, host, verb)."""
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


# ---- paths read from user data -------------------------------------------------------------------
def inside(root: str | os.PathLike, rel: str, what: str = "path") -> str:
    """``root/rel`` for a relative ``rel`` that stays inside ``root``: absolute paths, '..' that climbs
    out and (for local folders) symlinks that lead out are refused with one line. Works on fsspec URLs
    too (there, only the text of the path is checked)."""
    rel = str(rel)
    if not rel or rel.startswith(("/", "\\")) or "://" in rel or (len(rel) > 1 and rel[1] == ":"):
        raise SimulacraError(f"{root}: {what} {rel!r} is not a relative path inside the folder")
    norm = posixpath.normpath(rel.replace("\\", "/"))
    if norm == ".." or norm.startswith("../"):
        raise SimulacraError(f"{root}: {what} {rel!r} points outside the folder")
    root_s = str(root)
    if "://" in root_s:
        return root_s.rstrip("/") + "/" + norm
    base = Path(root_s).resolve()
    full = (base / norm).resolve()
    if full != base and base not in full.parents:
        raise SimulacraError(f"{root}: {what} {rel!r} leads outside the folder (through a symlink)")
    return str(Path(root_s) / norm)


# ---- one writer per folder -----------------------------------------------------------------------
def _alive(holder: dict) -> bool:
    """Whether the lock's holder may still be running (a holder on another host is assumed to be)."""
    if holder.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, KeyError, TypeError, ValueError):
        return True
    return True


def _read_lock(path: Path) -> tuple[bytes, dict] | None:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        holder = json.loads(raw)
        return raw, holder if isinstance(holder, dict) else {}
    except ValueError:
        # being written right now, or torn by a crash: fresh means a live writer, old means a dead one
        age = time.time() - path.stat().st_mtime if path.exists() else 0
        return raw, {} if age > 10 else {"pid": -1, "host": socket.gethostname(), "verb": "a writer", "fresh": True}


@contextmanager
def writer_lock(folder: str | os.PathLike, verb: str) -> Iterator[None]:
    """Hold ``folder``'s writer lock for ``verb`` (e.g. "record"): a second writer gets a one-line error
    naming the holder's PID. A lock left by a killed process (its PID is gone) is taken over safely."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    me = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "verb": verb, "since": time.time()})
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            seen = _read_lock(path)
            if seen is None:
                continue  # released in between: try again
            raw, holder = seen
            # {} is a lock torn long ago by a crash: its writer is gone
            if holder.get("fresh") or (holder and _alive(holder)):
                raise SimulacraError(
                    f"{folder} is being written by `simulacra {holder.get('verb', '?')}` (PID {holder.get('pid', '?')}"
                    f"{'' if holder.get('host') == socket.gethostname() else ' on ' + str(holder.get('host'))}); "
                    f"wait for it to finish or write somewhere else"
                ) from None
            _take_over(path, raw)
            continue
        with os.fdopen(fd, "w") as f:
            f.write(me)
            f.flush()
            os.fsync(f.fileno())
        break
    try:
        yield
    finally:
        seen = _read_lock(path)
        if seen is not None and seen[0].decode(errors="replace") == me:
            path.unlink(missing_ok=True)


def _take_over(path: Path, stale: bytes) -> None:
    """Remove a dead writer's lock, unless another process replaced it meanwhile (then give it back)."""
    grab = path.with_name(f"{LOCK_NAME}.stale-{os.getpid()}")
    try:
        os.rename(path, grab)
    except FileNotFoundError:
        return
    if grab.read_bytes() != stale:  # not the dead one's lock: someone took over first; put theirs back
        with suppress(FileExistsError):
            os.link(grab, path)
    grab.unlink(missing_ok=True)
