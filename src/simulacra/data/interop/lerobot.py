"""LeRobot dataset v3.0: export a simulacra data set to it; import one (ours or anyone's) from it.

Layout (as defined by huggingface/lerobot: src/lerobot/datasets/utils.py, lerobot_dataset.py,
compute_stats.py and docs/source/lerobot-dataset-v3.mdx)::

    meta/info.json        codebase_version "v3.0", fps, features (dtype/shape/names), path templates
    meta/stats.json       per feature min/max/mean/std/count; images per channel, shape (3,1,1), in [0,1]
    meta/tasks.parquet    task strings (the pandas index) -> task_index
    meta/episodes/chunk-000/file-000.parquet   one row per episode: length, tasks, row range, file indices
    data/chunk-000/file-000.parquet            one row per frame, many episodes per file
    videos/observation.image/chunk-000/file-000.mp4   with --video: the episodes' frames back to back

Frames are PNG bytes in LeRobot's image struct {"bytes", "path"} by default (lossless). With --video
they are H.264 mp4 (yuv420p, crf 10): LOSSY, close but not byte-identical after a round trip.

Row convention: an episode of L steps (L+1 frames) becomes L+1 rows. Row t holds frame t, action t,
next.reward = reward t, next.done = terminated t or truncated t, plus the extra features
next.terminated / next.truncated so the split survives; the last row gets a zero action and
next.done True. Import reverses it: N rows -> N frames and N-1 steps, the last row's action dropped.
The simulacra action space and per-episode metadata ride along under the extra "simulacra" key of
info.json and the "simulacra/meta" column of the episodes table, so our own exports import exactly.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import imageio.v3 as iio
import imageio_ffmpeg
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from simulacra.data.interop.common import (
    LazyWriter,
    base_info,
    fit_frame,
    infer_action_space,
    shape_actions,
    square,
    staged_dir,
)
from simulacra.data.safety import reading
from simulacra.data.store import INFO, Dataset
from simulacra.errors import DatasetError, SimulacraError
from simulacra.layout import atomic_write, inside
from simulacra.spaces import ActionSpace, ActionSpaceError

CODEBASE_VERSION = "v3.0"
CHUNKS_SIZE = 1000  # files per chunk directory
DATA_FILE_MB = 100
VIDEO_FILE_MB = 500
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
IMAGE_KEY = "observation.image"
VIDEO_CODEC_PARAMS = ["-g", "2"]  # LeRobot encodes with a short GOP for fast random access
SCALAR = {"dtype": "int64", "shape": [1], "names": None}
DEFAULT_FEATURES = {
    "timestamp": {"dtype": "float32", "shape": [1], "names": None},
    "frame_index": SCALAR,
    "episode_index": SCALAR,
    "index": SCALAR,
    "task_index": SCALAR,
}
IMAGE_STRUCT = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


# ---- features and schemas ----------------------------------------------------------------------
def _features(shape: tuple, space: ActionSpace, video: bool, fps: int) -> dict:
    H, W, C = shape
    image = {"dtype": "video" if video else "image", "shape": [H, W, C], "names": ["height", "width", "channels"]}
    if video:
        image["info"] = {
            "video.height": H + H % 2,
            "video.width": W + W % 2,
            "video.codec": "h264",
            "video.pix_fmt": "yuv420p",
            "video.is_depth_map": False,
            "video.fps": fps,
            "video.channels": C,
            "has_audio": False,
        }
    feats = {IMAGE_KEY: image}
    if space.kind != "none":  # one int64 per step (discrete), or a Box action flattened to float32 numbers
        feats["action"] = {"dtype": space.dtype.name, "shape": [int(np.prod(space.event_shape))], "names": None}
    feats["next.reward"] = {"dtype": "float32", "shape": [1], "names": None}
    for name in ("next.done", "next.terminated", "next.truncated"):
        feats[name] = {"dtype": "bool", "shape": [1], "names": None}
    return {**feats, **DEFAULT_FEATURES}


def _arrow_type(ft: dict) -> pa.DataType:
    if ft["dtype"] == "image":
        return IMAGE_STRUCT
    t = pa.from_numpy_dtype(np.dtype(ft["dtype"]))
    return t if list(ft["shape"]) == [1] else pa.list_(t, int(np.prod(ft["shape"])))


def _hf_feature(ft: dict) -> dict:
    """The `datasets` feature LeRobot maps each info.json feature to (utils.get_hf_features_from_features)."""
    if ft["dtype"] == "image":
        return {"_type": "Image"}
    value = {"dtype": ft["dtype"], "_type": "Value"}
    if list(ft["shape"]) == [1]:
        return value
    return {"feature": value, "length": int(np.prod(ft["shape"])), "_type": "Sequence"}


def _schema(feats: dict) -> pa.Schema:
    stored = {k: ft for k, ft in feats.items() if ft["dtype"] != "video"}
    hf = {"info": {"features": {k: _hf_feature(ft) for k, ft in stored.items()}}}
    fields = [pa.field(k, _arrow_type(ft)) for k, ft in stored.items()]
    return pa.schema(fields, metadata={b"huggingface": json.dumps(hf).encode()})


def _column(values: np.ndarray, ft: dict) -> pa.Array:
    t = _arrow_type(ft)
    if pa.types.is_fixed_size_list(t):
        flat = pa.array(np.ascontiguousarray(values).reshape(-1), type=t.value_type)
        return pa.FixedSizeListArray.from_arrays(flat, t.list_size)
    return pa.array(np.asarray(values).reshape(-1), type=t)


# ---- statistics (as LeRobot's compute_stats: images per channel in [0, 1], shape (3, 1, 1)) -------
def _stats(x: np.ndarray, image: bool = False) -> dict:
    if image:
        hists = np.stack([np.bincount(x[..., c].ravel(), minlength=256) for c in range(x.shape[-1])])
        v = np.arange(256) / 255.0
        n = hists.sum(1)
        mean = hists @ v / n
        std = np.sqrt(np.maximum(hists @ v**2 / n - mean**2, 0))
        lo = np.array([np.flatnonzero(h)[0] for h in hists]) / 255.0
        hi = np.array([np.flatnonzero(h)[-1] for h in hists]) / 255.0
        cube = lambda a: a.reshape(-1, 1, 1)  # noqa: E731
        return {"min": cube(lo), "max": cube(hi), "mean": cube(mean), "std": cube(std), "count": np.array([len(x)])}
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    return {"min": x.min(0), "max": x.max(0), "mean": x.mean(0), "std": x.std(0), "count": np.array([len(x)])}


def _aggregate(stats: list[dict]) -> dict:
    counts = np.array([s["count"][0] for s in stats], np.float64)
    shape = (-1,) + (1,) * stats[0]["mean"].ndim
    means, var = np.stack([s["mean"] for s in stats]), np.stack([s["std"] ** 2 for s in stats])
    w = counts.reshape(shape) / counts.sum()
    mean = (means * w).sum(0)
    return {
        "min": np.min([s["min"] for s in stats], axis=0),
        "max": np.max([s["max"] for s in stats], axis=0),
        "mean": mean,
        "std": np.sqrt(((var + (means - mean) ** 2) * w).sum(0)),
        "count": np.array([int(counts.sum())]),
    }


def _listify(stats: dict) -> dict:
    return {k: v.tolist() for k, v in stats.items()}


# ---- writers for rotating chunk/file outputs -----------------------------------------------------
def _next_file(chunk: int, file: int) -> tuple[int, int]:
    return (chunk + 1, 0) if file == CHUNKS_SIZE - 1 else (chunk, file + 1)


class _DataFiles:
    def __init__(self, root: Path, schema: pa.Schema):
        self.root, self.schema, self.idx, self.writer, self.nbytes = root, schema, (0, 0), None, 0

    def write(self, table: pa.Table) -> tuple[int, int]:
        if self.writer is not None and self.nbytes >= DATA_FILE_MB * 2**20:
            self.close()
            self.idx = _next_file(*self.idx)
        if self.writer is None:
            path = self.root / DATA_PATH.format(chunk_index=self.idx[0], file_index=self.idx[1])
            path.parent.mkdir(parents=True, exist_ok=True)
            self.writer, self.nbytes = pq.ParquetWriter(path, self.schema, compression="snappy"), 0
        self.writer.write_table(table)
        self.nbytes += table.nbytes
        return self.idx

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class _VideoFiles:
    """H.264 mp4 per video key; episodes are appended back to back, a new file past VIDEO_FILE_MB."""

    def __init__(self, root: Path, key: str, fps: int):
        self.root, self.key, self.fps, self.idx, self.gen, self.frames = root, key, fps, (0, 0), None, 0

    def _path(self) -> Path:
        return self.root / VIDEO_PATH.format(video_key=self.key, chunk_index=self.idx[0], file_index=self.idx[1])

    def write(self, frames: np.ndarray) -> tuple[int, int, float, float]:
        full = self._path().exists() and self._path().stat().st_size >= VIDEO_FILE_MB * 2**20
        if self.gen is not None and full:
            self.close()
            self.idx = _next_file(*self.idx)
        H, W = frames.shape[1:3]
        if self.gen is None:
            self._path().parent.mkdir(parents=True, exist_ok=True)
            self.gen = imageio_ffmpeg.write_frames(
                str(self._path()), (W + W % 2, H + H % 2), fps=self.fps, codec="libx264", quality=8,
                macro_block_size=1, output_params=VIDEO_CODEC_PARAMS,
            )  # fmt: skip
            self.gen.send(None)
            self.frames = 0
        frames = np.pad(frames, ((0, 0), (0, H % 2), (0, W % 2), (0, 0)))  # yuv420p needs even sizes
        for f in frames:
            self.gen.send(np.ascontiguousarray(f))
        start = self.frames
        self.frames += len(frames)
        return self.idx[0], self.idx[1], start / self.fps, self.frames / self.fps

    def close(self) -> None:
        if self.gen is not None:
            self.gen.close()
            self.gen = None


def _png(frame: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def _write_tasks(path: Path, tasks: list[str]) -> None:
    """meta/tasks.parquet as LeRobot writes it with pandas: task strings are the (unnamed) index."""
    pandas_meta = {
        "index_columns": ["__index_level_0__"],
        "column_indexes": [{"name": None, "field_name": None, "pandas_type": "unicode", "numpy_type": "object",
                            "metadata": {"encoding": "UTF-8"}}],
        "columns": [
            {"name": "task_index", "field_name": "task_index", "pandas_type": "int64", "numpy_type": "int64",
             "metadata": None},
            {"name": None, "field_name": "__index_level_0__", "pandas_type": "unicode", "numpy_type": "object",
             "metadata": None},
        ],
        "creator": {"library": "pyarrow", "version": pa.__version__},
        "pandas_version": "2.2.3",
    }  # fmt: skip
    table = pa.table({"task_index": pa.array(range(len(tasks)), pa.int64()), "__index_level_0__": tasks})
    pq.write_table(table.replace_schema_metadata({b"pandas": json.dumps(pandas_meta).encode()}), path)


# ---- export ----------------------------------------------------------------------------------------
def export_lerobot(ds: Dataset, out: str, video: bool = False, overwrite: bool = False) -> None:
    if not len(ds):
        raise DatasetError(f"{ds.root}: has no complete episodes to export")
    space = ds.action_space
    fps = int(ds.info.get("fps") or 15)
    feats = _features(ds.frame_shape, space, video, fps)
    schema = _schema(feats)
    task = str(ds.info.get("env_id") or ds.info.get("preset") or "simulacra")
    with staged_dir(out, overwrite, "meta/info.json", "LeRobot data set") as root:
        data = _DataFiles(root, schema)
        vids = _VideoFiles(root, IMAGE_KEY, fps) if video else None
        rows, ep_stats, index = [], [], 0
        try:
            for i, meta in enumerate(ds.episodes):
                row, stats, n = _export_episode(ds, i, meta, feats, schema, data, vids, space, index, fps, task)
                rows.append(row)
                ep_stats.append(stats)
                index += n
        finally:
            data.close()
            if vids is not None:
                vids.close()
        for row, stats in zip(rows, ep_stats, strict=True):
            row.update({f"stats/{k}/{s}": v for k, st in stats.items() for s, v in _listify(st).items()})
        episodes_path = root / EPISODES_PATH.format(chunk_index=0, file_index=0)
        episodes_path.parent.mkdir(parents=True)
        pq.write_table(pa.Table.from_pylist(rows), episodes_path)
        _write_tasks(root / "meta/tasks.parquet", [task])
        total = {k: _listify(_aggregate([s[k] for s in ep_stats])) for k in ep_stats[0]}
        (root / "meta/stats.json").write_text(json.dumps(total, indent=4))
        info = {
            "codebase_version": CODEBASE_VERSION,
            "robot_type": None,
            "total_episodes": len(ds),
            "total_frames": index,
            "total_tasks": 1,
            "chunks_size": CHUNKS_SIZE,
            "data_files_size_in_mb": DATA_FILE_MB,
            "video_files_size_in_mb": VIDEO_FILE_MB,
            "fps": fps,
            "splits": {"train": f"0:{len(ds)}"},
            "data_path": DATA_PATH,
            "video_path": VIDEO_PATH if video else None,
            "features": feats,
            "simulacra": {
                "action_space": space.to_json(),
                "frame_shape": list(ds.frame_shape),
                "row_convention": "row t = frame t, action t, next.* = result of action t; last row: zero action",
                "info": {k: v for k, v in ds.info.items() if k not in ("format", "format_version", "block_frames")},
            },
        }
        (root / "meta/info.json").write_text(json.dumps(info, indent=4))


def _export_episode(ds, i, meta, feats, schema, data, vids, space, index, fps, task):
    frames, arr = ds.frames(i), ds.arrays(i)
    n, L = len(frames), len(frames) - 1
    cols: dict[str, np.ndarray | list] = {}
    if vids is None:
        cols[IMAGE_KEY] = [{"bytes": _png(f), "path": None} for f in frames]
    if "action" in feats:
        width = feats["action"]["shape"][0]
        act = np.zeros((n, width), np.dtype(feats["action"]["dtype"]))
        if "action" in arr:
            act[:L] = np.asarray(arr["action"]).reshape(L, width)
        cols["action"] = act
    term = np.append(arr["terminated"], True)
    trunc = np.append(arr["truncated"], False)
    cols["next.reward"] = np.append(arr["reward"], 0).astype(np.float32)
    cols["next.done"] = term | trunc
    cols["next.terminated"], cols["next.truncated"] = term, trunc
    cols["timestamp"] = (np.arange(n) / fps).astype(np.float32)
    cols["frame_index"] = np.arange(n)
    cols["episode_index"] = np.full(n, i)
    cols["index"] = np.arange(index, index + n)
    cols["task_index"] = np.zeros(n, np.int64)
    arrays = [
        pa.array(cols[f.name], IMAGE_STRUCT) if f.name == IMAGE_KEY else _column(cols[f.name], feats[f.name])
        for f in schema
    ]
    chunk, file = data.write(pa.Table.from_arrays(arrays, schema=schema))
    own = {"seed": meta.seed, "env_id": meta.env_id, "preset": meta.preset, "policy": meta.policy,
           "source": meta.source, "has_actions": meta.has_actions, "extra": meta.extra}  # fmt: skip
    row = {
        "episode_index": i,
        "tasks": [task],
        "length": n,
        "data/chunk_index": chunk,
        "data/file_index": file,
        "dataset_from_index": index,
        "dataset_to_index": index + n,
    }
    if vids is not None:
        vc, vf, t0, t1 = vids.write(frames)
        row.update({f"videos/{IMAGE_KEY}/chunk_index": vc, f"videos/{IMAGE_KEY}/file_index": vf,
                    f"videos/{IMAGE_KEY}/from_timestamp": t0, f"videos/{IMAGE_KEY}/to_timestamp": t1})  # fmt: skip
    row.update({"meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0, "simulacra/meta": json.dumps(own)})
    stats = {IMAGE_KEY: _stats(frames, image=True)}
    stats.update({k: _stats(v) for k, v in cols.items() if k != IMAGE_KEY})
    return row, stats, n


# ---- import ----------------------------------------------------------------------------------------
def _np(table: pa.Table, name: str) -> np.ndarray:
    col = table.column(name).combine_chunks()
    if pa.types.is_list(col.type) or pa.types.is_fixed_size_list(col.type) or pa.types.is_large_list(col.type):
        return col.flatten().to_numpy(zero_copy_only=False).reshape(len(col), -1)
    return col.to_numpy(zero_copy_only=False)


def _within(root: Path, rel: str | os.PathLike, what: str) -> Path:
    """``root/rel`` if it stays inside ``root``: absolute paths, '..' and symlinks that lead out are refused
    with one line before anything is opened."""
    try:
        return Path(inside(root, str(rel), what))
    except SimulacraError as e:
        raise DatasetError(str(e)) from None


def _found(root: Path, pattern: str, what: str) -> list[Path]:
    """Files under ``root`` matching ``pattern``, each checked to stay inside ``root``."""
    hits = sorted(p for p in root.glob(pattern) if p.is_file() or p.is_symlink())
    return [_within(root, p.relative_to(root), what) for p in hits]


def _read_episodes_meta(root: Path, info: dict) -> dict[int, dict]:
    """episode_index -> its row in meta/episodes (v3 parquet, or v2 episodes.jsonl), stats left out."""
    out = {}
    for path in _found(root, "meta/episodes/**/*.parquet", "episodes table"):
        with reading(path, "not a readable episodes table"):
            table = pq.read_table(path)
            keep = [c for c in table.column_names if not c.startswith("stats/")]
            for row in table.select(keep).to_pylist():
                out[int(row["episode_index"])] = row
    legacy = root / "meta/episodes.jsonl"
    if not out and legacy.exists():
        legacy = _within(root, "meta/episodes.jsonl", "episodes list")
        with reading(legacy, "not a readable episodes list"):
            for line in legacy.read_text().splitlines():
                if line.strip():
                    row = json.loads(line)
                    out[int(row["episode_index"])] = row
    return out


def _image_hw(ft: dict) -> tuple[int, int]:
    shape, names = list(ft["shape"]), ft.get("names") or []
    if names and str(names[0]).lower().startswith("c"):
        return int(shape[1]), int(shape[2])
    return int(shape[0]), int(shape[1])


class _VideoReader:
    """Frames of one video key, decoded in order with imageio's ffmpeg reader (reopened to seek back)."""

    def __init__(self, root: Path, info: dict, key: str, episodes: dict[int, dict]):
        self.root, self.info, self.key, self.episodes = root, info, key, episodes
        self.fps = float((info["features"][key].get("info") or {}).get("video.fps") or info["fps"])
        self.hw = _image_hw(info["features"][key])
        self.path, self.it, self.pos = None, None, 0

    def _locate(self, ep: int) -> tuple[Path, float]:
        row = self.episodes.get(ep)
        template = self.info.get("video_path")
        with reading(self.root / "meta/info.json", f"video_path {template!r} does not give episode {ep}'s video"):
            if str(self.info.get("codebase_version", "")).startswith("v2"):
                chunk = ep // int(self.info.get("chunks_size", 1000))
                rel = template.format(episode_chunk=chunk, video_key=self.key, episode_index=ep)
                start = 0.0
            else:
                if row is None or f"videos/{self.key}/chunk_index" not in row:
                    raise DatasetError(
                        f"{self.root}: meta/episodes has no video location for episode {ep} ({self.key})"
                    )
                rel = template.format(
                    video_key=self.key, chunk_index=row[f"videos/{self.key}/chunk_index"],
                    file_index=row[f"videos/{self.key}/file_index"],
                )  # fmt: skip
                start = float(row[f"videos/{self.key}/from_timestamp"])
        return _within(self.root, rel, "video path"), start

    def frames(self, ep: int, timestamps: np.ndarray) -> list[np.ndarray]:
        path, start = self._locate(ep)
        wanted = np.round((start + np.asarray(timestamps, np.float64)) * self.fps).astype(int)
        if path != self.path or wanted[0] < self.pos:
            if not path.is_file():
                raise DatasetError(f"{path}: video file is missing")
            self.path, self.it, self.pos = path, iio.imiter(path, plugin="FFMPEG"), 0
        out, frame = [], None
        h, w = self.hw
        with reading(path, "cannot decode the video"):
            for k in wanted:
                while self.pos <= k:
                    try:
                        frame = next(self.it)
                    except StopIteration:
                        self.path = None  # the iterator is spent: reopen next time
                        raise DatasetError(
                            f"{path}: ends after {self.pos} frames; episode {ep} needs frame {k}"
                        ) from None
                    self.pos += 1
                out.append(np.asarray(frame)[:h, :w])
        return out


def _decode_image(item, root: Path, where: str) -> np.ndarray:
    """One image of LeRobot's image struct {bytes, path}: the bytes, or the file at ``path`` inside the
    data set (absolute paths, '..' and symlinks out are refused before anything is opened)."""
    if isinstance(item, bytes | bytearray):
        item = {"bytes": item}
    if not isinstance(item, dict):
        raise DatasetError(f"{where}: an image is {type(item).__name__}, not LeRobot's image struct")
    data = item.get("bytes")
    if data is None:
        if not item.get("path"):
            raise DatasetError(f"{where}: an image has neither bytes nor a path")
        path = _within(root, item["path"], "image path")
        with reading(path, "cannot read the image"):
            data = path.read_bytes()
        where = str(path)
    with reading(where, "cannot decode an image"):
        img = Image.open(io.BytesIO(data))
        if img.mode not in ("RGB", "RGBA", "L"):
            img = img.convert("RGB")
        return np.asarray(img)


def _infer_space(root: Path, info: dict, files: list[Path]) -> ActionSpace:
    """Discrete for one integer per step (n from the feature's names when it lists one per action), else a
    Box over the range of the actions seen, widened to meta/stats.json's min/max when it has them."""
    ft = info["features"]["action"]
    acts = []
    for f in files:
        with reading(f, "cannot read its actions"):
            acts.append(_np(pq.read_table(f, columns=["action"]), "action"))
    with reading(root / "meta/info.json", "the action feature does not fit the actions"):
        acts = [a.reshape(len(a), *([int(np.prod(ft["shape"]))] if ft["shape"] else [])) for a in acts if len(a)]
    if not acts:
        return ActionSpace.none()
    integer = np.issubdtype(np.dtype(ft["dtype"]), np.integer)
    if integer and list(ft["shape"]) in ([], [1]):
        names = ft.get("names")
        named = len(names) if isinstance(names, list) and len(names) > 1 else None
        return infer_action_space([a.reshape(-1).astype(np.int64) for a in acts], declared_n=named)
    space = infer_action_space([a.astype(np.float64) for a in acts])  # float actions: always a Box
    stats_path = root / "meta/stats.json"
    st = {}
    if stats_path.exists():
        stats_path = _within(root, "meta/stats.json", "stats file")
        with reading(stats_path, "not readable statistics"):
            st = json.loads(stats_path.read_text()).get("action", {})
    if isinstance(st, dict) and "min" in st and "max" in st:
        with reading(stats_path, "action min/max are not numbers"):
            lo, hi = np.asarray(st["min"], np.float32).ravel(), np.asarray(st["max"], np.float32).ravel()
        if lo.size == hi.size == space.dim:
            low = np.minimum(np.asarray(space.low, np.float32), lo).reshape(space.shape)
            high = np.maximum(np.asarray(space.high, np.float32), hi).reshape(space.shape)
            space = ActionSpace.box(low, high)
    return space


def import_lerobot(
    source: str, out: str, overwrite: bool = False, resolution: int | None = None, image_key: str | None = None
) -> Dataset:
    root = Path(source)
    info_path = root / "meta/info.json"
    if not root.is_dir() or not info_path.exists():
        raise DatasetError(f"{source}: not a LeRobot data set (missing meta/info.json)")
    info_path = _within(root, "meta/info.json", "info file")
    try:
        info = json.loads(info_path.read_text())
        feats = info["features"]
    except (ValueError, KeyError, TypeError, OSError) as e:
        raise DatasetError(f"{info_path}: unreadable ({e})") from None
    if not isinstance(feats, dict) or not all(isinstance(ft, dict) for ft in feats.values()):
        raise DatasetError(f"{info_path}: features is not an object of feature objects")
    for k, ft in feats.items():
        if not isinstance(ft.get("shape", []), list) or not isinstance(ft.get("dtype", ""), str):
            raise DatasetError(f"{info_path}: feature {k!r} has no dtype string and shape list")
    fps = info.get("fps")
    if fps is not None and (isinstance(fps, bool) or not isinstance(fps, int | float) or not 0 < fps < 1e6):
        raise DatasetError(f"{info_path}: fps {fps!r} is not a positive number")
    version = str(info.get("codebase_version", ""))
    if not version.startswith(("v2", "v3")):
        raise DatasetError(f"{info_path}: LeRobot codebase_version {version!r} is not supported (v2.x and v3.x are)")
    cams = [k for k, ft in feats.items() if ft.get("dtype") in ("image", "video")]
    if image_key is not None and image_key not in cams:
        raise DatasetError(f"{source}: has no image or video feature {image_key!r} (it has {cams})")
    key = image_key or (IMAGE_KEY if IMAGE_KEY in cams else (cams[0] if cams else None))
    if key is None:
        raise DatasetError(f"{source}: has no image or video feature; simulacra learns from pixels")
    files = _found(root, "data/**/*.parquet", "data file")
    if not files:
        raise DatasetError(f"{source}: has no data/**/*.parquet files")
    ours = info.get("simulacra") or {}
    try:
        if ours.get("action_space"):  # exported by simulacra: the space it was recorded with
            space = ActionSpace.from_json(ours["action_space"])
        elif "action" not in feats:
            space = ActionSpace.none()
        else:
            space = _infer_space(root, info, files)
    except ActionSpaceError as e:
        raise DatasetError(f"{info_path}: {e}") from None
    episodes = _read_episodes_meta(root, info)
    video = feats[key]["dtype"] == "video"
    with reading(info_path, f"feature {key!r} is not a usable video feature"):
        reader = _VideoReader(root, info, key, episodes) if video else None
    own_info = ours.get("info", {})
    extra = {
        "env_id": own_info.get("env_id"),
        "preset": own_info.get("preset"),
        "lerobot": {"codebase_version": version, "robot_type": info.get("robot_type"), "image_key": key},
    }
    size = square(resolution)
    wanted = [key] if not video else []
    wanted += [c for c in ("action", "next.reward", "next.done", "next.terminated", "next.truncated") if c in feats]
    wanted += ["timestamp", "frame_index", "episode_index"]
    skipped = []
    with staged_dir(out, overwrite, INFO, "simulacra data set") as tmp:
        writer = LazyWriter(tmp, base_info("lerobot", source, space, info.get("fps"), **extra))
        for f in files:
            with reading(f, "not a readable parquet file"):
                present = set(pq.read_schema(f).names)
                table = pq.read_table(f, columns=[c for c in wanted if c in present])
            if "episode_index" not in present or (not video and key not in present):
                raise DatasetError(f"{f}: lacks the episode_index or {key!r} column")
            with reading(f, "its episode_index column is not integers"):
                ep_col = _np(table, "episode_index").astype(np.int64)
            order = np.argsort(ep_col, kind="stable")
            groups = np.split(order, np.flatnonzero(np.diff(ep_col[order])) + 1)
            for rows in sorted(groups, key=lambda g: g[0]):  # episodes in file order
                ep = int(ep_col[rows[0]])
                where = f"{f} episode {ep}"
                with reading(where, "cannot import it"):
                    sub = table.take(pa.array(rows))
                    sub = sub.take(pa.array(np.argsort(_np(sub, "frame_index"), kind="stable")))
                    if sub.num_rows < 2:
                        skipped.append(ep)
                        continue
                    if reader is not None:
                        raw = reader.frames(ep, _np(sub, "timestamp"))
                    else:
                        raw = [_decode_image(item, root, where) for item in sub.column(key).to_pylist()]
                    frames = np.stack([fit_frame(x, size) for x in raw])
                    _import_episode(writer, sub, frames, space, episodes.get(ep, {}), ep, source, f)
        writer.close(source)
        if skipped:  # episodes of one frame hold no step; say so in info.json
            atomic_write(tmp / INFO, json.dumps({**writer.writer.info, "skipped_episodes": skipped}, indent=2).encode())
    return Dataset.open(out)


def _import_episode(writer, sub, frames, space, ep_row, ep, source, file) -> None:
    n = sub.num_rows
    cols = set(sub.column_names)
    own = json.loads(ep_row["simulacra/meta"]) if ep_row.get("simulacra/meta") else {}
    actions = None
    if "action" in cols and space.kind != "none" and own.get("has_actions", True):
        actions = shape_actions(space, _np(sub, "action")[: n - 1])
    rewards = _np(sub, "next.reward")[: n - 1] if "next.reward" in cols else np.zeros(n - 1, np.float32)
    done = _np(sub, "next.done").astype(bool) if "next.done" in cols else np.zeros(n, bool)
    if {"next.terminated", "next.truncated"} <= cols:
        term = _np(sub, "next.terminated").astype(bool)[: n - 1]
        trunc = _np(sub, "next.truncated").astype(bool)[: n - 1]
    else:
        term, trunc = done[: n - 1].copy(), np.zeros(n - 1, bool)
        ended = bool(done[n - 2] or done[n - 1])
        term[-1], trunc[-1] = ended, not ended
    extra = {**(own.get("extra") or {}), "source_path": str(Path(source).resolve()), "source_episode": ep}
    if own.get("source"):
        extra["original_source"] = own["source"]
    if ep_row.get("tasks") is not None:
        extra["tasks"] = list(ep_row["tasks"])
    writer.add(
        frames, actions, np.asarray(rewards, np.float32).reshape(-1), term.reshape(-1), trunc.reshape(-1),
        where=f"{file} episode {ep}", seed=own.get("seed"), env_id=own.get("env_id"), preset=own.get("preset"),
        policy=own.get("policy"), source="lerobot", extra=extra,
    )  # fmt: skip
