"""`simulacra data verify`: read every byte of a data set, report damage and what a crash lost."""

from __future__ import annotations

import json
from pathlib import Path

from simulacra.data.store import MANIFEST, Dataset, EpisodeMeta, file_checksum, parse_header
from simulacra.errors import DatasetError
from simulacra.layout import TMP_PREFIX, atomic_write


def _registered(ds: Dataset) -> set[str]:
    return {e.file for e in ds.episodes}


def verify_dataset(ds: Dataset) -> dict:
    """Check every shard (size, checksum, decode) and list leftovers of an interrupted write."""
    problems: list[dict] = []
    ok_eps = ok_steps = 0
    for i, ep in enumerate(ds.episodes):
        path = f"{ds.root}/{ep.file}"
        try:
            if not ds.fs.exists(path):
                raise DatasetError(f"{path}: episode shard is missing")
            data = ds.fs.cat_file(path)
            if len(data) != ep.nbytes:
                raise DatasetError(f"{path}: size is {len(data)} bytes, manifest says {ep.nbytes} (truncated?)")
            if file_checksum(data) != ep.checksum:
                raise DatasetError(f"{path}: checksum mismatch (file is corrupt)")
            ds.frames(i)  # decodes every block, checking zstd's own checksums too
            ds.arrays(i)
            ok_eps += 1
            ok_steps += ep.length
        except DatasetError as e:
            problems.append({"episode": ep.index, "file": ep.file, "problem": str(e)})
    lost = []
    if ds.torn_tail:
        lost.append(
            {"file": MANIFEST, "problem": "last manifest line was cut short by a crash; its episode is not loaded"}
        )
    for p in sorted(ds.fs.glob(f"{ds.root}/data/chunk-*/{TMP_PREFIX}*")):
        lost.append({"file": _rel(ds, p), "problem": "partial shard of an episode in progress when recording stopped"})
    registered = _registered(ds)
    for p in sorted(ds.fs.glob(f"{ds.root}/data/chunk-*/episode_*.sep")):
        if _rel(ds, p) not in registered:
            lost.append(
                {
                    "file": _rel(ds, p),
                    "problem": "complete shard not in the manifest (crash before it was registered; `--repair` adds it)",
                }
            )
    return {
        "root": ds.root,
        "episodes": len(ds.episodes),
        "episodes_ok": ok_eps,
        "steps_ok": ok_steps,
        "problems": problems,
        "lost": lost,
        "ok": not problems,
    }


def _rel(ds: Dataset, p: str) -> str:
    return str(p)[len(str(ds.root)) :].lstrip("/")


def repair_dataset(root: str | Path) -> dict:
    """Make a crashed local data set clean: drop temp files and the torn line, register whole shards."""
    root = Path(root)
    ds = Dataset.open(root)
    report = verify_dataset(ds)
    lines = [json.dumps(e.__dict__) for e in ds.episodes]
    next_index = max((e.index for e in ds.episodes), default=-1) + 1
    for item in report["lost"]:
        path = root / item["file"]
        if item["file"] == MANIFEST:
            continue
        if path.name.startswith(TMP_PREFIX):
            path.unlink()
            continue
        data = path.read_bytes()
        try:
            header, _ = parse_header(data, str(path))
            ds_meta = dict(header["meta"])
        except DatasetError:
            continue
        ds_meta.pop("index", None)
        ep = EpisodeMeta.from_dict(
            {**ds_meta, "index": next_index, "file": item["file"], "nbytes": len(data), "checksum": file_checksum(data)}
        )
        next_index += 1
        lines.append(json.dumps(ep.__dict__))
    atomic_write(root / MANIFEST, "".join(line + "\n" for line in lines).encode())
    return verify_dataset(Dataset.open(root))
