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
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import threading
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import zstandard

from simulacra.errors import DatasetError
from simulacra.layout import atomic_write
from simulacra.spaces import ActionSpace, ActionSpaceError

FORMAT = "simulacra.dataset"
FORMAT_VERSION = 1
MAGIC = b"SIMEP\x00v1"
MANIFEST = "episodes.jsonl"
INFO = "info.json"
STEP_ARRAYS = ("action", "reward", "terminated", "truncated")


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
            ds = Dataset.open(self.root)  # validates format and version before we append to it
            self.info = ds.info
            self.next_index = (max(e.index for e in ds.episodes) + 1) if ds.episodes else 0
            if ds.torn_tail:
                self._truncate_torn_tail()
            return
        if overwrite and self.root.exists():
            for p in [self.root / INFO, self.root / MANIFEST, *self.root.glob("data/chunk-*/*")]:
                p.unlink()
        if info is None:
            raise DatasetError(f"{self.root}: no data set here and no info to create one")
        info = dict(info)
        if "action_space" in info:  # refuse an unusable space before anything is written; store it canonically
            info["action_space"] = ActionSpace.from_json(info["action_space"]).to_json()
        self.root.mkdir(parents=True, exist_ok=True)
        self.info = {"format": FORMAT, "format_version": FORMAT_VERSION, "block_frames": block_frames, **info}
        atomic_write(self.root / INFO, json.dumps(self.info, indent=2).encode())
        (self.root / MANIFEST).touch()
        self.next_index = 0

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
        **meta: Any,
    ) -> EpisodeMeta:
        """Write one episode: L+1 frames and L of everything else (actions None if action-free)."""
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
        root = str(root)
        fs, path = fsspec.core.url_to_fs(root)
        info_path = f"{path}/{INFO}"
        if not fs.exists(info_path):
            raise DatasetError(f"{root}: no data set here (missing {INFO}); record one with `simulacra record`")
        try:
            info = json.loads(fs.cat_file(info_path))
        except ValueError as e:
            raise DatasetError(f"{info_path}: corrupt ({e})") from None
        if info.get("format") != FORMAT:
            raise DatasetError(f"{info_path}: not a simulacra data set (format={info.get('format')!r})")
        if info.get("format_version") != FORMAT_VERSION:
            raise DatasetError(
                f"{info_path}: format version {info.get('format_version')!r} is unknown to this simulacra "
                f"(it reads version {FORMAT_VERSION})"
            )
        manifest = f"{path}/{MANIFEST}"
        raw = fs.cat_file(manifest).decode() if fs.exists(manifest) else ""
        lines = raw.split("\n")
        torn = lines.pop()  # text after the last newline: a line a crash cut short, or ""
        episodes = []
        for n, line in enumerate(lines):
            try:
                episodes.append(EpisodeMeta.from_dict(json.loads(line)))
            except (ValueError, TypeError) as e:
                raise DatasetError(f"{manifest}: line {n + 1} is corrupt ({e})") from None
        return cls(path, fs, info, episodes, torn)

    def __len__(self) -> int:
        return len(self.episodes)

    @property
    def num_steps(self) -> int:
        return sum(e.length for e in self.episodes)

    @property
    def num_frames(self) -> int:
        return sum(e.length + 1 for e in self.episodes)

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
        if len(data) != nbytes:
            raise DatasetError(f"{path}: truncated (wanted bytes {start}..{start + nbytes}, file is shorter)")
        return data

    def header(self, i: int) -> tuple[dict, int]:
        if i not in self._headers:
            path = self._path(i)
            head = self._read(i, 0, 16)
            if head[:8] != MAGIC:
                raise DatasetError(f"{path}: not a simulacra episode shard (bad magic bytes)")
            header, offset = parse_header(head + self._read(i, 16, struct.unpack("<Q", head[8:])[0]), path)
            if header["meta"].get("length") != self.episodes[i].length:
                raise DatasetError(
                    f"{path}: header says {header['meta'].get('length')} steps, manifest says {self.episodes[i].length}"
                )
            self._headers[i] = (header, offset)
        return self._headers[i]

    # ---- reading -------------------------------------------------------------------------------
    def arrays(self, i: int) -> dict[str, np.ndarray]:
        """The per-step arrays of episode i: action (absent if action-free), reward, terminated, truncated."""
        if i not in self._arrays:
            header, base = self.header(i)
            out = {}
            for name, a in header["arrays"].items():
                raw = _decompress(self._read(i, base + a["offset"], a["nbytes"]), self._path(i), f"array {name!r}")
                out[name] = np.frombuffer(raw, dtype=np.dtype(a["dtype"])).reshape(a["shape"])
            self._arrays[i] = out
        return self._arrays[i]

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

    def verify(self) -> dict:
        """Read every byte of every shard and report what is wrong or was lost; never raises on damage."""
        from simulacra.data.verify import verify_dataset

        return verify_dataset(self)
