"""What every writer and reader of the data room shares to stay safe with careless or hostile input:
one-line errors from foreign libraries, output folders checked before anything is written, one writer
per output folder, and leftovers of killed processes cleaned up.

* :func:`one_line` / :func:`reading`: any exception of PIL, pyarrow, h5py, imageio, numpy... raised while a
  file is read becomes a one-line DatasetError that names the file.
* :func:`check_output_folder` / :func:`check_output_file`: ``--out`` must be a folder (or a file) that can
  be written, checked before anything is created.
* :func:`locked_output`: :func:`simulacra.layout.writer_lock` on an output folder, with OS errors as one
  line and the folder removed again if it was created for nothing.
* :func:`stale_partials`: staging folders (``.NAME.partial-PID``) whose process is gone.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from simulacra import layout
from simulacra.errors import DatasetError, SimulacraError

PARTIAL = re.compile(r"^\.(?P<name>.+)\.partial-(?P<pid>\d+)$")
"""Name of an import's (or export's) staging folder next to its output: ``.NAME.partial-PID``."""


def one_line(e: BaseException) -> str:
    """An exception as one line: its type (for foreign ones) and its message with newlines folded."""
    msg = " ".join(str(e).split())
    if isinstance(e, SimulacraError):
        return msg
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


@contextmanager
def reading(path: str | os.PathLike, what: str = "cannot read it") -> Iterator[None]:
    """Turn whatever a foreign library raises while ``path`` is read into one DatasetError line naming
    ``path``. SimulacraErrors (already one line) pass through, as do KeyboardInterrupt and SystemExit."""
    try:
        yield
    except SimulacraError:
        raise
    except MemoryError:
        raise DatasetError(f"{path}: {what} (out of memory; is a size in it absurd?)") from None
    except Exception as e:
        raise DatasetError(f"{path}: {what} ({one_line(e)})") from None


def pid_alive(pid: int) -> bool:
    """Whether a process with this PID runs on this machine (a PID we may not signal counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True


MAX_RESOLUTION = 1024
"""Largest frame size a verb resizes to (frames are square; larger ones exhaust memory long before use)."""


def check_range(option: str, value, low=None, high=None, unset_ok: bool = True) -> None:
    """One line naming ``option`` if ``value`` is outside [low, high]. None means "not given" (when
    allowed); zero is a value like any other, never "unset"."""
    if value is None:
        if unset_ok:
            return
        raise SimulacraError(f"{option} must be given")
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise SimulacraError(f"{option} must be a number, not {value!r}")
    if low is not None and value < low:
        raise SimulacraError(f"{option} must be at least {low}, got {value}")
    if high is not None and value > high:
        raise SimulacraError(f"{option} must be at most {high}, got {value}")


# ---- output paths --------------------------------------------------------------------------------
def _first_existing(p: Path) -> Path:
    for q in (p, *p.parents):
        if q.exists() or q.is_symlink():
            return q
    return Path(".")


def check_output_folder(path: str | os.PathLike, option: str = "--out") -> None:
    """One line if ``path`` cannot become a folder to write in: empty, a file, under a file, or in a folder
    we may not write to. Nothing is created."""
    if not str(path):
        raise SimulacraError(f"{option} must not be empty")
    p = Path(path)
    q = _first_existing(p.absolute())
    if not q.is_dir():
        where = "is a file" if q == p.absolute() else f"lies under {q}, which is a file"
        raise SimulacraError(f"{option} {path}: {where}, not a folder")
    if not os.access(q, os.W_OK | os.X_OK):
        raise SimulacraError(f"{option} {path}: cannot write in {q} (permission denied)")


def check_output_file(path: str | os.PathLike, option: str = "--out", suffixes: tuple[str, ...] = ()) -> None:
    """One line if ``path`` cannot be written as a file: a folder, under a file, in a read-only folder,
    or (when ``suffixes`` are given) of another type."""
    p = Path(path)
    if not str(path):
        raise SimulacraError(f"{option} must not be empty")
    if suffixes and p.suffix.lower() not in suffixes:
        raise SimulacraError(f"{option} {path}: must end in {' or '.join(suffixes)}")
    if p.is_dir():
        raise SimulacraError(f"{option} {path}: is a folder, not a file")
    check_output_folder(p.parent if str(p.parent) else ".", option)


def folder_entries(folder: Path) -> list[str]:
    """What a folder holds besides writer locks and the temp files of a crashed write."""
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if not (n.startswith(layout.LOCK_NAME) or n.startswith(layout.TMP_PREFIX)))


@contextmanager
def locked_output(out: str | os.PathLike, verb: str) -> Iterator[Path]:
    """Hold ``out``'s writer lock while the body writes there; folders created for the lock that are empty
    when the body is done (it failed before writing anything) are removed again."""
    out = Path(out)
    created = [q for q in (out, *out.parents) if not (q.exists() or q.is_symlink())]
    try:
        lock = layout.writer_lock(out, verb)
        lock.__enter__()
    except SimulacraError:
        _remove_empty(created)
        raise
    except OSError as e:
        _remove_empty(created)
        raise SimulacraError(f"--out {out}: cannot write there ({e.strerror or one_line(e)})") from None
    try:
        yield out
    finally:
        lock.__exit__(None, None, None)
        _remove_empty(created)


def _remove_empty(created: list[Path]) -> None:
    for q in created:  # innermost first
        with suppress(OSError):
            q.rmdir()


# ---- leftovers of killed processes ---------------------------------------------------------------
def stale_partials(out: str | os.PathLike) -> list[Path]:
    """Staging folders of ``out`` (``.NAME.partial-PID`` beside it) whose process is no longer running."""
    out = Path(out)
    found = []
    with suppress(OSError):
        for p in out.parent.glob(f".{glob_escape(out.name)}.partial-*"):
            m = PARTIAL.match(p.name)
            if m and m["name"] == out.name and int(m["pid"]) != os.getpid() and not pid_alive(int(m["pid"])):
                found.append(p)
    return sorted(found)


def remove_stale_partials(out: str | os.PathLike) -> list[Path]:
    """Delete the staging folders a killed import (or export) of ``out`` left behind; return them."""
    gone = stale_partials(out)
    for p in gone:
        shutil.rmtree(p, ignore_errors=True)
    return gone


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)
