"""`simulacra data verify`: read every byte of a data set, report damage and what a crash lost.

Damage (``problems``) is a registered episode whose shard is missing, truncated, corrupt or disagrees with
its manifest line. Leftovers (``lost``) are what an interrupted write left: a torn manifest line, temp
files, complete shards that never got their manifest line, and staging folders of killed imports next to
the data set. Either makes the report not ``ok`` (and the verb exit non-zero).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from simulacra import layout
from simulacra.data.safety import stale_partials
from simulacra.data.store import MANIFEST, Dataset, EpisodeMeta, check_manifest_entry, file_checksum
from simulacra.errors import DatasetError, SimulacraError
from simulacra.layout import TMP_PREFIX, atomic_write


def _registered(ds: Dataset) -> set[str]:
    return {e.file for e in ds.episodes}


def _local(ds: Dataset) -> bool:
    protocol = ds.fs.protocol if isinstance(ds.fs.protocol, tuple) else (ds.fs.protocol,)
    return "file" in protocol


def verify_dataset(ds: Dataset) -> dict:
    """Check every shard (size, checksum, header, decode) and list leftovers of an interrupted write."""
    problems: list[dict] = []
    ok_eps = ok_steps = 0
    for i, ep in enumerate(ds.episodes):
        try:
            ds.check_episodes([i])  # size, checksum, header and arrays against the manifest and info.json
            ds.frames(i)  # decodes every block, checking zstd's own checksums too
            ok_eps += 1
            ok_steps += ep.length
        except DatasetError as e:
            problems.append({"episode": ep.index, "file": ep.file, "problem": str(e)})
    lost = []
    if ds.torn_tail:
        lost.append(
            {"file": MANIFEST, "problem": "last manifest line was cut short by a crash; its episode is not loaded"}
        )
    for p in sorted(ds.fs.glob(f"{ds.root}/{TMP_PREFIX}*")):
        lost.append({"file": _rel(ds, p), "problem": "temp file of a write in progress when a writer stopped"})
    for p in sorted(ds.fs.glob(f"{ds.root}/data/chunk-*/{TMP_PREFIX}*")):
        lost.append({"file": _rel(ds, p), "problem": "partial shard of an episode in progress when recording stopped"})
    registered = _registered(ds)
    for p in sorted(ds.fs.glob(f"{ds.root}/data/chunk-*/episode_*.sep")):
        rel = _rel(ds, p)
        if rel not in registered:
            if _local(ds):
                try:
                    layout.inside(ds.root, rel, "shard")
                except SimulacraError as e:
                    problems.append({"episode": None, "file": rel, "problem": str(e)})
                    continue
            lost.append(
                {
                    "file": rel,
                    "problem": "complete shard not in the manifest (crash before it was registered; `--repair` adds it)",
                }
            )
    if _local(ds):
        for p in stale_partials(ds.root):
            lost.append(
                {
                    "file": f"../{p.name}",
                    "problem": "staging folder of an import that was killed (`--repair` removes it)",
                }
            )
    return {
        "root": ds.root,
        "episodes": len(ds.episodes),
        "episodes_ok": ok_eps,
        "steps_ok": ok_steps,
        "problems": problems,
        "lost": lost,
        "intact": not problems,
        "ok": not problems and not lost,
    }


def _rel(ds: Dataset, p: str) -> str:
    return str(p)[len(str(ds.root)) :].lstrip("/")


def repair_dataset(root: str | Path) -> dict:
    """Make a crashed local data set clean: drop temp files, the torn line and killed imports' staging
    folders, register whole shards. Holds the data set's writer lock while it does."""
    root = Path(root)
    Dataset.open(root)  # one line if it is no data set, before the lock touches the folder
    with layout.writer_lock(root, "data verify --repair"):
        ds = Dataset.open(root)
        report = verify_dataset(ds)
        lines = [json.dumps(e.__dict__) for e in ds.episodes]
        next_index = max((e.index for e in ds.episodes), default=-1) + 1
        for item in report["lost"]:
            if item["file"] == MANIFEST:
                continue
            if item["file"].startswith("../"):
                shutil.rmtree(root.parent / item["file"][3:], ignore_errors=True)
                continue
            path = root / item["file"]
            if path.name.startswith(TMP_PREFIX):
                path.unlink(missing_ok=True)
                continue
            entry = _entry_of_orphan(root, item["file"], ds.info["block_frames"], next_index)
            if entry is None:
                continue
            probe = Dataset(str(root), ds.fs, ds.info, [entry], "")
            try:  # only a shard that is whole and agrees with its own header is registered
                probe.check_episodes([0])
                probe.frames(0)
            except DatasetError:
                continue
            next_index += 1
            lines.append(json.dumps(entry.__dict__))
        atomic_write(root / MANIFEST, "".join(line + "\n" for line in lines).encode())
    return verify_dataset(Dataset.open(root))


def _entry_of_orphan(root: Path, rel: str, block_frames: int, index: int) -> EpisodeMeta | None:
    """The manifest entry of an unregistered shard, from its own header; None if it cannot be trusted."""
    from simulacra.data.store import parse_header

    try:
        data = (root / rel).read_bytes()
        header, _ = parse_header(data, str(root / rel))
        meta = dict(header["meta"])
    except (DatasetError, OSError, TypeError, KeyError, AttributeError):
        return None
    meta.pop("index", None)
    d = {**meta, "index": index, "file": rel, "nbytes": len(data), "checksum": file_checksum(data)}
    if check_manifest_entry(d, block_frames) is not None:
        return None
    return EpisodeMeta.from_dict(d)
