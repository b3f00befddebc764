"""The data set store: a directory of self-describing episode shards plus an append-only manifest.

Layout (format version 1)::

    ROOT/info.json                         format, version, frame shape, action space, source env
    ROOT/episodes.jsonl                    one JSON line per *completed* episode (the source of truth)
    ROOT/data/chunk-000/episode_000000.sep  one shard per episode (below)

An episode of L steps holds L+1 frames (the observation before each action, plus the last one) and
L actions, rewards, terminated and truncated flags: step t is (frame t, action t, reward t, ...),
and frame t+1 is what action t led to.

A shard is ``MAGIC | u64 header length | JSON header | payload``. Frames are zstd-compressed in
blocks of ``block_frames`` so a training window decompresses only the blocks it touches; every
zstd frame carries its own checksum, so a flipped bit fails loudly at read time. The header repeats
the episode's metadata, so a shard whose manifest line was lost in a crash can be re-registered.

Crash safety: a shard is written with :func:`simulacra.layout.atomic_write` (temp name, fsync, rename);
only then is its manifest line appended and fsynced. SIGKILL at any point loses at most the episodes still being written.
Shards are read through fsspec (``cat_file`` ranges), so a data set can live on an object store.

Nothing read is trusted: :meth:`Dataset.open` validates info.json and every manifest line (types and
ranges, unique files and indices, files inside the data set, a length its nbytes can hold) before use;
a shard's header is checked against its manifest line and info.json when first read (frame count,
blocks, array dtypes and shapes); :meth:`Dataset.check_episodes` reads shards whole against their sizes
and checksums. Each failure is one DatasetError line naming the file.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import posixpath
import struct
import threading
from collections import OrderedDict
from contextlib import suppress
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import zstandard

from simulacra import layout
from simulacra.data.safety import folder_entries, one_line
from simulacra.errors import DatasetError, SimulacraError
from simulacra.layout import atomic_write
from simulacra.spaces import ActionSpace, ActionSpaceError

FORMAT = "simulacra.dataset"
FORMAT_VERSION = 1
MAGIC = b"SIMEP\x00v1"
MANIFEST = "episodes.jsonl"
INFO = "info.json"
STEP_ARRAYS = ("action", "reward", "terminated", "truncated")
FRAME_ARRAYS = ("state", "lives")
"""Optional arrays with one row per *frame* (L+1): the env's true state (float32 (L+1, S), its names in
info.json's ``state_names``) and its lives (int32 (L+1,)). Data sets without them stay readable."""
ARRAY_DTYPES = {
    "reward": np.dtype(np.float32),
    "terminated": np.dtype(bool),
    "truncated": np.dtype(bool),
    "state": np.dtype(np.float32),
    "lives": np.dtype(np.int32),
}
"""How the store keeps the per-step arrays (actions: the action space's dtype)."""
MIN_BLOCK_BYTES = 16
"""No frame block takes fewer bytes in a shard (its zstd frame plus its entry in the header): a manifest
length that would need more blocks than its nbytes can hold is refused before anything is read."""


@dataclass
class EpisodeMeta:
    """One line of the manifest: where an episode lives and how it was made."""

    index: int
    file: str
    length: int
    nbytes: int
    checksum: str
    seed: int | None = None
    env_id: str | None = None
    preset: str | None = None
    policy: str | None = None
    ret: float = 0.0
    terminated: bool = False
    truncated: bool = False
    has_actions: bool = True
    source: str | None = None
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict) -> EpisodeMeta:
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**known)


def file_checksum(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _r(v) -> str:
    """A value as it appears in an error line: its repr, cut short."""
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


_OPTIONAL_STR = ("env_id", "preset", "policy", "source")
_FLAGS = ("terminated", "truncated", "has_actions")
_HEX = frozenset("0123456789abcdef")


def check_manifest_entry(d, block_frames: int) -> str | None:
    """What is wrong with one manifest entry (types and ranges of every field), or None. The ``file`` is
    checked to stay inside the data set by the caller, which knows the root."""
    if not isinstance(d, dict):
        return f"is a JSON {type(d).__name__}, not an object"
    for key in ("index", "file", "length", "nbytes", "checksum"):
        if key not in d:
            return f"lacks the field {key!r}"
    for key in ("index", "length", "nbytes"):
        if not _is_int(d[key]):
            return f"{key} {_r(d[key])} is not an integer"
    if d["index"] < 0:
        return f"index {d['index']} is negative"
    if d["length"] < 1:
        return f"length {d['length']} is not a positive number of steps"
    if not isinstance(d["file"], str) or not d["file"]:
        return f"file {_r(d['file'])} is not a path"
    if not isinstance(d["checksum"], str) or len(d["checksum"]) != 32 or not set(d["checksum"]) <= _HEX:
        return f"checksum {_r(d['checksum'])} is not 32 hex digits"
    blocks = math.ceil((d["length"] + 1) / block_frames)
    if d["nbytes"] < 16 + MIN_BLOCK_BYTES * blocks:
        return (
            f"length {d['length']} does not fit in nbytes {d['nbytes']} "
            f"({blocks} frame blocks need at least {16 + MIN_BLOCK_BYTES * blocks} bytes)"
        )
    if "seed" in d and d["seed"] is not None and not _is_int(d["seed"]):
        return f"seed {_r(d['seed'])} is not an integer"
    for key in _OPTIONAL_STR:
        if d.get(key) is not None and not isinstance(d[key], str):
            return f"{key} {_r(d[key])} is not a string"
    for key in _FLAGS:
        if key in d and not isinstance(d[key], bool):
            return f"{key} {_r(d[key])} is not true or false"
    if "ret" in d and (isinstance(d["ret"], bool) or not isinstance(d["ret"], int | float)):
        return f"ret {_r(d['ret'])} is not a number"
    if "extra" in d and not isinstance(d["extra"], dict):
        return f"extra {_r(d['extra'])} is not an object"
    return None


def check_info(info, where: str) -> None:
    """One DatasetError line for an info.json whose fields the store cannot use (types and ranges)."""
    if not isinstance(info, dict):
        raise DatasetError(f"{where}: is a JSON {type(info).__name__}, not an object")
    if info.get("format") != FORMAT:
        raise DatasetError(f"{where}: not a simulacra data set (format={_r(info.get('format'))})")
    if not _is_int(info.get("format_version")) or info.get("format_version") != FORMAT_VERSION:
        raise DatasetError(
            f"{where}: format version {_r(info.get('format_version'))} is unknown to this simulacra "
            f"(it reads version {FORMAT_VERSION})"
        )
    shape = info.get("frame_shape")
    if (
        not isinstance(shape, list)
        or len(shape) != 3
        or not all(_is_int(s) for s in shape)
        or shape[2] != 3
        or min(shape[:2]) < 1
        or shape[0] * shape[1] > 2**26
    ):
        raise DatasetError(f"{where}: frame_shape {_r(shape)} is not [height, width, 3] of positive integers")
    bf = info.get("block_frames")
    if not _is_int(bf) or not 1 <= bf <= 2**16:
        raise DatasetError(f"{where}: block_frames {_r(bf)} is not a positive integer")
    fps = info.get("fps")
    if fps is not None and (isinstance(fps, bool) or not isinstance(fps, int | float) or not 0 < fps < 1e6):
        raise DatasetError(f"{where}: fps {_r(fps)} is not a positive number")
    if "action_space" in info and not isinstance(info["action_space"], dict | None):
        raise DatasetError(f"{where}: action_space {_r(info['action_space'])} is not an action space object")
    names = info.get("state_names", [])
    if (
        not isinstance(names, list)
        or len(names) > 4096
        or not all(isinstance(n, str) and 0 < len(n) <= 200 for n in names)
        or len(set(names)) != len(names)
    ):
        raise DatasetError(f"{where}: state_names {_r(names)} is not a list of distinct names")


def is_dataset_folder(root: str | os.PathLike) -> bool:
    """Whether ``root`` holds an info.json of a simulacra data set (any version): what --overwrite may replace."""
    try:
        info = json.loads((Path(root) / INFO).read_bytes())
    except (OSError, ValueError):
        return False
    return isinstance(info, dict) and str(info.get("format", "")).startswith("simulacra")


def check_replaceable(root: str | os.PathLike, overwrite: bool) -> None:
    """One line unless ``root`` may be written as a new data set: absent or empty, or (with ``overwrite``) a
    simulacra data set. A folder of other files is never replaced, --overwrite or not."""
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise DatasetError(f"{root} exists and is not a folder")
    entries = folder_entries(root)
    if not entries:
        return
    if not is_dataset_folder(root):
        shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
        raise DatasetError(
            f"{root} holds other files ({shown}) and no simulacra data set; refusing to write there"
            f"{' even with --overwrite' if overwrite else ''} (choose a new or empty --out)"
        )
    if not overwrite:
        raise DatasetError(f"{root} already holds a data set; pass --overwrite to replace it or --out elsewhere")


def encode_episode(
    frames_THWC: np.ndarray, arrays: dict[str, np.ndarray], meta: dict, block_frames: int, level: int = 3
) -> bytes:
    cctx = zstandard.ZstdCompressor(level=level, write_checksum=True)
    payload, blocks, array_index = [], [], {}
    offset = 0
    for start in range(0, len(frames_THWC), block_frames):
        chunk = cctx.compress(np.ascontiguousarray(frames_THWC[start : start + block_frames]).tobytes())
        n = min(block_frames, len(frames_THWC) - start)
        blocks.append([offset, len(chunk), n])
        payload.append(chunk)
        offset += len(chunk)
    for name, arr in arrays.items():
        arr = np.ascontiguousarray(arr)
        chunk = cctx.compress(arr.tobytes())
        array_index[name] = {"offset": offset, "nbytes": len(chunk), "dtype": arr.dtype.str, "shape": list(arr.shape)}
        payload.append(chunk)
        offset += len(chunk)
    header = {
        "frame_shape": list(frames_THWC.shape[1:]),
        "num_frames": len(frames_THWC),
        "blocks": blocks,
        "arrays": array_index,
        "meta": meta,
    }
    hbytes = json.dumps(header).encode()
    return MAGIC + struct.pack("<Q", len(hbytes)) + hbytes + b"".join(payload)


def parse_header(raw: bytes, path: str) -> tuple[dict, int]:
    """Return (header, payload offset) from the first bytes of a shard; raise DatasetError if bad."""
    if len(raw) < 16 or raw[:8] != MAGIC:
        raise DatasetError(f"{path}: not a simulacra episode shard (bad magic bytes)")
    (hlen,) = struct.unpack("<Q", raw[8:16])
    if len(raw) < 16 + hlen:
        raise DatasetError(f"{path}: truncated header ({len(raw)} of {16 + hlen} bytes)")
    try:
        header = json.loads(raw[16 : 16 + hlen])
    except ValueError as e:
        raise DatasetError(f"{path}: corrupt header ({e})") from None
    return header, 16 + hlen


def _decompress(blob: bytes, path: str, what: str) -> bytes:
    try:
        return zstandard.ZstdDecompressor().decompress(blob)
    except zstandard.ZstdError as e:
        raise DatasetError(f"{path}: {what} is corrupt ({e})") from None


class DatasetWriter:
    """Appends complete episodes to a local data set directory, crash-safely."""

    def __init__(
        self, root: str | os.PathLike, info: dict | None = None, overwrite: bool = False, block_frames: int = 32
    ):
        self.root = Path(root)
        if (self.root / INFO).exists() and not overwrite:
            ds = Dataset.open(self.root)  # validates format, version and manifest before we append to it
            self.info = ds.info
            self.next_index = (max(e.index for e in ds.episodes) + 1) if ds.episodes else 0
            if ds.torn_tail:
                self._truncate_torn_tail()
            return
        if info is None:
            raise DatasetError(f"{self.root}: no data set here and no info to create one")
        check_replaceable(self.root, overwrite)  # never a folder of other files, --overwrite or not
        info = dict(info)
        if "action_space" in info:  # refuse an unusable space before anything is written; store it canonically
            info["action_space"] = ActionSpace.from_json(info["action_space"]).to_json()
        info = {"format": FORMAT, "format_version": FORMAT_VERSION, "block_frames": block_frames, **info}
        check_info(info, f"{self.root}/{INFO}")
        if overwrite:
            self._clear()
        self.root.mkdir(parents=True, exist_ok=True)
        self.info = info
        atomic_write(self.root / INFO, json.dumps(self.info, indent=2).encode())
        atomic_write(self.root / MANIFEST, b"")
        self.next_index = 0

    def _clear(self) -> None:
        """Delete what the store made here (manifest first, info.json last: a crash in between leaves an
        empty data set whose orphaned shards verify lists); anything else in the folder stays."""
        (self.root / MANIFEST).unlink(missing_ok=True)
        for chunk in sorted(self.root.glob("data/chunk-*")):
            if chunk.is_dir() and not chunk.is_symlink():
                for p in [*chunk.glob("episode_*.sep"), *chunk.glob(f"{layout.TMP_PREFIX}*")]:
                    if p.is_file() or p.is_symlink():
                        p.unlink()
                with suppress(OSError):
                    chunk.rmdir()
        with suppress(OSError):
            (self.root / "data").rmdir()
        for p in self.root.glob(f"{layout.TMP_PREFIX}*"):
            if p.is_file() or p.is_symlink():
                p.unlink()
        (self.root / INFO).unlink(missing_ok=True)

    def _truncate_torn_tail(self) -> None:
        text = (self.root / MANIFEST).read_bytes()
        keep = text[: text.rfind(b"\n") + 1]
        atomic_write(self.root / MANIFEST, keep)

    def add_episode(
        self,
        frames_THWC: np.ndarray,
        actions: np.ndarray | None,
        rewards: np.ndarray,
        terminated: np.ndarray,
        truncated: np.ndarray,
        state: np.ndarray | None = None,
        lives: np.ndarray | None = None,
        **meta: Any,
    ) -> EpisodeMeta:
        """Write one episode: L+1 frames and L of everything else (actions None if action-free); optionally
        the true state (L+1, S) in the order of info.json's ``state_names`` and the lives (L+1,) per frame."""
        frames_THWC = np.asarray(frames_THWC, dtype=np.uint8)
        steps = len(frames_THWC) - 1
        if steps < 1:
            raise DatasetError(f"episode needs at least 2 frames, got {len(frames_THWC)}")
        shape = list(frames_THWC.shape[1:])
        if shape != list(self.info["frame_shape"]):
            raise DatasetError(f"episode frames are {shape}, data set expects {self.info['frame_shape']}")
        arrays = {
            "reward": np.asarray(rewards, np.float32),
            "terminated": np.asarray(terminated, bool),
            "truncated": np.asarray(truncated, bool),
        }
        if actions is not None:
            arrays["action"] = np.asarray(actions)
        for name, arr in arrays.items():
            if (len(arr) if arr.ndim else 1) != steps:
                raise DatasetError(f"episode has {steps} steps but {len(arr) if arr.ndim else 1} values of {name!r}")
        names = self.info.get("state_names") or []
        if state is not None and names:
            state = np.asarray(state, np.float32)
            if state.shape != (steps + 1, len(names)) or not np.isfinite(state).all():
                raise DatasetError(
                    f"episode state is {list(state.shape)} (finite), the data set needs {[steps + 1, len(names)]}"
                )
            arrays["state"] = state
        if lives is not None:
            lives = np.asarray(lives, np.int32)
            if lives.shape != (steps + 1,):
                raise DatasetError(f"episode has {steps + 1} frames but {len(lives)} values of 'lives'")
            arrays["lives"] = lives
        if actions is not None:
            try:
                space = ActionSpace.from_json(self.info.get("action_space"))
                arrays["action"] = space.validate(arrays["action"], batch_shape=(steps,))
            except ActionSpaceError as e:
                raise DatasetError(str(e)) from None
        index = self.next_index
        rel = f"data/chunk-{index // 1000:03d}/episode_{index:06d}.sep"
        meta = {
            "ret": float(arrays["reward"].sum()),
            "terminated": bool(arrays["terminated"][-1]),
            "truncated": bool(arrays["truncated"][-1]),
            "has_actions": actions is not None,
            **meta,
        }
        blob = encode_episode(frames_THWC, arrays, {"index": index, "length": steps, **meta}, self.info["block_frames"])
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, blob)
        ep = EpisodeMeta(index=index, file=rel, length=steps, nbytes=len(blob), checksum=file_checksum(blob), **meta)
        with open(self.root / MANIFEST, "a") as f:
            f.write(json.dumps(asdict(ep)) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.next_index += 1
        return ep


class Dataset:
    """Read-only view of a data set (local path or any fsspec URL). Cheap to open and to fork."""

    def __init__(
        self, root: str, fs: fsspec.AbstractFileSystem, info: dict, episodes: list[EpisodeMeta], torn_tail: str
    ):
        self.root, self.fs, self.info, self.episodes, self.torn_tail = root, fs, info, episodes, torn_tail
        self.frame_shape = tuple(info["frame_shape"])
        self.block_frames = int(info["block_frames"])
        self._headers: dict[int, tuple[dict, int]] = {}
        self._arrays: dict[int, dict[str, np.ndarray]] = {}
        self._blocks: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        block_bytes = self.block_frames * int(np.prod(self.frame_shape))
        self.cache_blocks = max(4, int(os.environ.get("SIMULACRA_CACHE_MB", "512")) * 2**20 // block_bytes)

    # ---- opening -------------------------------------------------------------------------------
    @classmethod
    def open(cls, root: str | os.PathLike) -> Dataset:
        """Open a data set, validating info.json and every manifest line (types, ranges, unique episode
        files and indices, files inside the data set) before anything else is read; one line if bad."""
        root = str(root)
        try:
            fs, path = fsspec.core.url_to_fs(root)
        except (ValueError, ImportError) as e:
            raise DatasetError(f"{root}: cannot open ({e})") from None
        local = "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))
        info_path = f"{path}/{INFO}"
        if not fs.exists(info_path):
            raise DatasetError(f"{root}: no data set here (missing {INFO}); record one with `simulacra record`")
        raw_info = _cat(fs, path, INFO, local, "info.json")
        try:
            info = json.loads(raw_info)
        except ValueError as e:
            raise DatasetError(f"{info_path}: corrupt ({e})") from None
        check_info(info, info_path)
        manifest = f"{path}/{MANIFEST}"
        raw = _cat(fs, path, MANIFEST, local, "manifest") if fs.exists(manifest) else b""
        try:
            text = raw.decode()
        except UnicodeDecodeError as e:
            raise DatasetError(f"{manifest}: corrupt (not UTF-8 text: {e.reason} at byte {e.start})") from None
        lines = text.split("\n")
        torn = lines.pop()  # text after the last newline: a line a crash cut short, or ""
        episodes, files, indices = [], {}, {}
        contained = _Containment(path, local)
        for n, line in enumerate(lines):
            where = f"{manifest}: line {n + 1}"
            try:
                d = json.loads(line)
            except ValueError as e:
                raise DatasetError(f"{where} is corrupt ({e})") from None
            bad = check_manifest_entry(d, info["block_frames"])
            if bad:
                raise DatasetError(f"{where}: {bad}")
            rel = contained(d["file"], where)
            if rel in files:
                raise DatasetError(f"{where}: file {d['file']} is listed twice (also on line {files[rel]})")
            if d["index"] in indices:
                raise DatasetError(f"{where}: episode index {d['index']} is listed twice (also on line {indices[d['index']]})")  # fmt: skip
            files[rel], indices[d["index"]] = n + 1, n + 1
            episodes.append(EpisodeMeta.from_dict({**d, "file": rel}))
        return cls(path, fs, info, episodes, torn)

    def __len__(self) -> int:
        return len(self.episodes)

    @property
    def num_steps(self) -> int:
        return sum(e.length for e in self.episodes)

    @property
    def num_frames(self) -> int:
        return sum(e.length + 1 for e in self.episodes)

    @property
    def state_names(self) -> list[str]:
        """Names of the env's true state variables stored per frame (empty: no state recorded)."""
        return list(self.info.get("state_names") or [])

    @cached_property
    def action_space(self) -> ActionSpace:
        """The data set's action space; a one-line DatasetError if it is one simulacra cannot learn from."""
        try:
            return ActionSpace.from_json(self.info.get("action_space"))
        except ActionSpaceError as e:
            raise DatasetError(f"{self.root}/{INFO}: {e}") from None

    def _path(self, i: int) -> str:
        return f"{self.root}/{self.episodes[i].file}"

    def _read(self, i: int, start: int, nbytes: int) -> bytes:
        path = self._path(i)
        try:
            data = self.fs.cat_file(path, start=start, end=start + nbytes)
        except FileNotFoundError:
            raise DatasetError(f"{path}: episode shard is missing") from None
        except OSError as e:  # a folder where the shard should be, permissions, an I/O error
            raise DatasetError(f"{path}: cannot read the episode shard ({e.strerror or one_line(e)})") from None
        if len(data) != nbytes:
            raise DatasetError(f"{path}: truncated (wanted bytes {start}..{start + nbytes}, file is shorter)")
        return data

    def header(self, i: int) -> tuple[dict, int]:
        """Episode i's shard header and payload offset, checked against the manifest and info.json when
        first read (frame count, blocks, array dtypes and shapes); one DatasetError line if they disagree."""
        if i not in self._headers:
            path = self._path(i)
            head = self._read(i, 0, 16)
            if head[:8] != MAGIC:
                raise DatasetError(f"{path}: not a simulacra episode shard (bad magic bytes)")
            (hlen,) = struct.unpack("<Q", head[8:])
            if hlen > self.episodes[i].nbytes - 16:
                raise DatasetError(f"{path}: header length {hlen} exceeds the shard's {self.episodes[i].nbytes} bytes")
            header, offset = parse_header(head + self._read(i, 16, hlen), path)
            self._check_header(i, header, path)
            self._headers[i] = (header, offset)
        return self._headers[i]

    def _check_header(self, i: int, header, path: str) -> None:
        ep = self.episodes[i]

        def bad(why: str) -> DatasetError:
            return DatasetError(f"{path}: {why}")

        if not isinstance(header, dict) or not all(k in header for k in ("num_frames", "blocks", "arrays", "meta")):
            raise bad("corrupt header (fields missing)")
        meta, blocks, arrays = header["meta"], header["blocks"], header["arrays"]
        if not isinstance(meta, dict) or not isinstance(blocks, list) or not isinstance(arrays, dict):
            raise bad("corrupt header (fields of the wrong type)")
        if meta.get("length") != ep.length or header["num_frames"] != ep.length + 1:
            raise bad(
                f"header says {_r(meta.get('length'))} steps and {_r(header['num_frames'])} frames, "
                f"manifest says {ep.length} steps"
            )
        if header.get("frame_shape") != list(self.frame_shape):
            raise bad(f"frames are {_r(header.get('frame_shape'))}, the data set's are {list(self.frame_shape)}")
        bf, n = self.block_frames, ep.length + 1
        if len(blocks) != math.ceil(n / bf):
            raise bad(f"header has {len(blocks)} frame blocks, {n} frames in blocks of {bf} need {math.ceil(n / bf)}")
        for b, entry in enumerate(blocks):
            want = min(bf, n - b * bf)
            if (
                not isinstance(entry, list)
                or len(entry) != 3
                or not all(_is_int(x) and x >= 0 for x in entry)
                or entry[2] != want
            ):
                raise bad(f"frame block {b} is {_r(entry)} in the header, not [offset, nbytes, {want}]")
        want = {"reward", "terminated", "truncated"} | ({"action"} if ep.has_actions else set())
        if not want <= set(arrays) <= want | set(FRAME_ARRAYS):
            raise bad(f"header has arrays {_r(sorted(map(str, arrays)))}, the manifest's episode needs {sorted(want)}")
        for name, a in arrays.items():
            if not isinstance(a, dict) or not all(_is_int(a.get(k)) and a[k] >= 0 for k in ("offset", "nbytes")):
                raise bad(f"array {name!r} has a corrupt header entry")
            dtype, shape = self._array_layout(name, ep.length)
            if dtype is not None and a.get("dtype") != dtype.str:
                raise bad(f"array {name!r} is stored as {_r(a.get('dtype'))}, the data set's is {dtype.str!r}")
            if dtype is None and a.get("dtype") not in ("<i8", "<f4"):
                raise bad(f"array {name!r} is stored as {_r(a.get('dtype'))}, not a number type")
            if shape is not None and a.get("shape") != shape:
                raise bad(f"array {name!r} has shape {_r(a.get('shape'))}, the episode needs {shape}")
            if shape is None and (not isinstance(a.get("shape"), list) or a["shape"][:1] != [ep.length]):
                raise bad(f"array {name!r} has shape {_r(a.get('shape'))}, the episode needs {ep.length} rows")

    def _array_layout(self, name: str, steps: int) -> tuple[np.dtype | None, list | None]:
        """(dtype, shape) the store keeps ``name`` in; (None, None) for actions of an unreadable space."""
        if name == "state":
            return ARRAY_DTYPES[name], [steps + 1, len(self.state_names)]
        if name == "lives":
            return ARRAY_DTYPES[name], [steps + 1]
        if name in ARRAY_DTYPES:
            return ARRAY_DTYPES[name], [steps]
        try:
            space = self.action_space
        except DatasetError:  # a space simulacra cannot learn (MultiDiscrete): still readable for info/verify
            return None, None
        return space.dtype, [steps, *space.event_shape]

    # ---- reading -------------------------------------------------------------------------------
    def arrays(self, i: int) -> dict[str, np.ndarray]:
        """The per-step arrays of episode i: action (absent if action-free), reward, terminated, truncated;
        and, where recorded, the per-frame state and lives."""
        if i not in self._arrays:
            header, base = self.header(i)
            self._arrays[i] = {
                name: self._decode_array(i, name, a, self._read(i, base + a["offset"], a["nbytes"]))
                for name, a in header["arrays"].items()
            }
        return self._arrays[i]

    def _decode_array(self, i: int, name: str, a: dict, blob: bytes) -> np.ndarray:
        path = self._path(i)
        raw = _decompress(blob, path, f"array {name!r}")
        try:
            dtype = np.dtype(a["dtype"])
            shape = [int(s) for s in a["shape"]]
        except (TypeError, ValueError):
            raise DatasetError(f"{path}: array {name!r} has a corrupt header entry") from None
        if len(raw) != int(np.prod(shape)) * dtype.itemsize:
            raise DatasetError(f"{path}: array {name!r} holds {len(raw)} bytes, its header says {shape} of {dtype}")
        return np.frombuffer(raw, dtype=dtype).reshape(shape)

    def _block(self, i: int, b: int) -> np.ndarray:
        key = (i, b)
        with self._lock:
            hit = self._blocks.get(key)
            if hit is not None:
                self._blocks.move_to_end(key)
                return hit
        header, base = self.header(i)
        offset, nbytes, n = header["blocks"][b]
        raw = _decompress(self._read(i, base + offset, nbytes), self._path(i), f"frame block {b}")
        if len(raw) != n * int(np.prod(self.frame_shape)):
            raise DatasetError(f"{self._path(i)}: frame block {b} holds {len(raw)} bytes, not {n} frames")
        frames = np.frombuffer(raw, np.uint8).reshape(n, *self.frame_shape)
        with self._lock:
            self._blocks[key] = frames
            while len(self._blocks) > self.cache_blocks:
                self._blocks.popitem(last=False)
        return frames

    def frames(self, i: int, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Frames [start, stop) of episode i as uint8 (T, H, W, C)."""
        n = self.episodes[i].length + 1
        stop = n if stop is None else stop
        if not 0 <= start < stop <= n:
            raise IndexError(f"frames [{start}, {stop}) out of range for episode {i} with {n} frames")
        bf = self.block_frames
        parts = [self._block(i, b) for b in range(start // bf, (stop - 1) // bf + 1)]
        first = (start // bf) * bf
        return (
            parts[0][start - first : stop - first]
            if len(parts) == 1
            else np.concatenate(parts)[start - first : stop - first]
        )

    def episode(self, i: int) -> dict[str, np.ndarray]:
        """The whole episode i: frames (L+1, H, W, C) plus its per-step arrays."""
        return {"frames": self.frames(i), **self.arrays(i)}

    def check_episodes(self, indices) -> None:
        """Read the listed episodes' shards whole and check each against the manifest (size, checksum)
        and its header (frame count, blocks, array dtypes and shapes); one DatasetError line naming the
        first bad file. Training calls this on the episodes it uses: the manifest alone is not trusted."""
        for i in (int(i) for i in indices):
            if not 0 <= i < len(self.episodes):
                raise DatasetError(f"{self.root}: no episode {i} (the data set has {len(self.episodes)})")
            ep, path = self.episodes[i], self._path(i)
            try:
                data = self.fs.cat_file(path)
            except FileNotFoundError:
                raise DatasetError(f"{path}: episode shard is missing") from None
            except OSError as e:
                raise DatasetError(f"{path}: cannot read the episode shard ({e.strerror or one_line(e)})") from None
            if len(data) != ep.nbytes:
                raise DatasetError(f"{path}: size is {len(data)} bytes, manifest says {ep.nbytes} (truncated?)")
            if file_checksum(data) != ep.checksum:
                raise DatasetError(f"{path}: checksum mismatch (file is corrupt)")
            header, base = self.header(i)
            arrays = {}
            for name, a in header["arrays"].items():
                start, stop = base + a["offset"], base + a["offset"] + a["nbytes"]
                if stop > len(data):
                    raise DatasetError(f"{path}: array {name!r} lies past the end of the file")
                arrays[name] = self._decode_array(i, name, a, data[start:stop])
            for b, (offset, nbytes, _) in enumerate(header["blocks"]):
                if base + offset + nbytes > len(data):
                    raise DatasetError(f"{path}: frame block {b} lies past the end of the file")
            if "action" in arrays and self._array_layout("action", ep.length)[0] is not None:
                try:  # an info.json edited to a smaller space would make these actions unencodable
                    self.action_space.validate(arrays["action"], batch_shape=(ep.length,))
                except ActionSpaceError as e:
                    raise DatasetError(f"{path}: {e} (of {INFO})") from None
            self._arrays.setdefault(i, arrays)

    def verify(self) -> dict:
        """Read every byte of every shard and report what is wrong or was lost; never raises on damage."""
        from simulacra.data.verify import verify_dataset

        return verify_dataset(self)


def _cat(fs, path: str, name: str, local: bool, what: str) -> bytes:
    """A fixed-name file of the data set (info.json, the manifest), refused if a symlink leads it out."""
    full = f"{path}/{name}"
    if local:
        try:
            layout.inside(path, name, what)
        except SimulacraError as e:
            raise DatasetError(str(e)) from None
    try:
        return fs.cat_file(full)
    except OSError as e:
        raise DatasetError(f"{full}: cannot read it ({e.strerror or one_line(e)})") from None


class _Containment:
    """Checks that manifest ``file`` entries stay inside the data set: the text (no absolute path, no '..'
    out) always, and for a local data set the symlinks too, resolving each folder once (a manifest of
    thousands of episodes shares a few chunk folders)."""

    def __init__(self, path: str, local: bool):
        self.path, self.local = path, local
        self.base = os.path.realpath(path) if local else ""
        self.dirs: dict[str, tuple[str, bool]] = {}

    def _within(self, p: str) -> bool:
        return p == self.base or p.startswith(self.base.rstrip(os.sep) + os.sep)

    def __call__(self, rel: str, where: str) -> str:
        try:
            layout.inside(f"fsspec://{self.path}", rel, "file")  # the text: absolute paths, '..' out
        except SimulacraError as e:
            raise DatasetError(f"{where}: {str(e).split(': ', 1)[-1]}") from None
        norm = posixpath.normpath(rel.replace("\\", "/"))
        if self.local:
            folder, name = posixpath.split(norm)
            if folder not in self.dirs:
                real = os.path.realpath(os.path.join(self.base, folder))
                self.dirs[folder] = (real, self._within(real))
            real, ok = self.dirs[folder]
            full = os.path.join(real, name)
            if not ok or (os.path.islink(full) and not self._within(os.path.realpath(full))):
                raise DatasetError(f"{where}: file {_r(rel)} leads outside the data set (through a symlink)")
        return norm
