"""`simulacra data …`: info, view, verify, import, export — thin verbs over the data room."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from tyro.conf import Positional

from simulacra import layout
from simulacra.data import state
from simulacra.data.safety import MAX_RESOLUTION, check_output_file, check_output_folder, check_range
from simulacra.data.store import Dataset
from simulacra.errors import DatasetError, SimulacraError


def _dataset(path: str | None) -> str:
    """The given data set, or the most recent under ./datasets (saying which)."""
    root, guessed = layout.resolve_dataset(path)
    if guessed:
        print(f"(using the most recent data set: {root})")
    return root


@dataclass
class InfoConfig:
    """Summarise a data set: source env, shapes, action space, episodes, steps, returns, size."""

    path: Positional[str | None] = None
    """Data set directory or fsspec URL (default: the most recent under ./datasets)."""
    json: bool = False
    """Print the summary as JSON."""


def _summary(ds: Dataset) -> dict:
    lengths = np.array([e.length for e in ds.episodes]) if ds.episodes else np.zeros(1)
    rets = np.array([e.ret for e in ds.episodes]) if ds.episodes else np.zeros(1)
    return {
        "path": ds.root,
        "format_version": ds.info["format_version"],
        "source": ds.info.get("source"),
        "env_id": ds.info.get("env_id"),
        "preset": ds.info.get("preset"),
        "frame_shape": ds.info["frame_shape"],
        "action_space": ds.info.get("action_space"),
        "episodes": len(ds),
        "action_free_episodes": sum(not e.has_actions for e in ds.episodes),
        "steps": ds.num_steps,
        "frames": ds.num_frames,
        "episode_length": {"min": int(lengths.min()), "mean": float(lengths.mean()), "max": int(lengths.max())},
        "return": {"min": float(rets.min()), "mean": float(rets.mean()), "max": float(rets.max())},
        "terminated": sum(e.terminated for e in ds.episodes),
        "truncated": sum(e.truncated for e in ds.episodes),
        "seeds": sorted({e.seed for e in ds.episodes if e.seed is not None})[:5],
        "bytes_on_disk": sum(e.nbytes for e in ds.episodes),
        "raw_frame_bytes": ds.num_frames * int(np.prod(ds.info["frame_shape"])),
        "crash_leftover": bool(ds.torn_tail),
        "state_variables": len(ds.state_names),
        "events": _events(ds),
    }


def _events(ds: Dataset) -> dict:
    """How many reward events, terminations and life losses the episodes hold (what the eval's event
    scores can be measured on); life losses only where lives were recorded."""
    counts: dict = {k: 0 for k in state.EVENTS}
    with_lives = 0
    for i in range(len(ds)):
        ev = state.step_events(ds.arrays(i))
        for k, v in ev.items():
            if v is not None:
                counts[k] += int(v.sum())
        with_lives += ev["life_loss"] is not None
    if not with_lives:
        counts["life_loss"] = None
    return counts


def info(cfg: InfoConfig) -> int:
    ds = Dataset.open(_dataset(cfg.path))
    s = _summary(ds)
    if cfg.json:
        print(json.dumps(s, indent=2))
        return 0
    ratio = s["raw_frame_bytes"] / max(1, s["bytes_on_disk"])
    el, r = s["episode_length"], s["return"]
    print(f"data set     {s['path']}  (format v{s['format_version']}, {s['source']})")
    print(f"env          {s['env_id']}  preset={s['preset']}")
    print(f"frames       {s['frame_shape']} uint8, {s['frames']} frames")
    print(f"actions      {s['action_space']}")
    print(f"episodes     {s['episodes']} ({s['action_free_episodes']} action-free), {s['steps']} steps")
    print(f"length       min {el['min']}  mean {el['mean']:.1f}  max {el['max']}")
    print(f"return       min {r['min']:.2f}  mean {r['mean']:.2f}  max {r['max']:.2f}")
    print(f"ends         {s['terminated']} terminated, {s['truncated']} truncated")
    ev = s["events"]
    lives = "no lives recorded" if ev["life_loss"] is None else f"{ev['life_loss']} life losses"
    print(f"events       {ev['reward']} reward steps, {ev['termination']} terminations, {lives}")
    print(f"state        {s['state_variables'] or 'no'} true state variables per frame (for the eval's probes)")
    print(f"disk         {s['bytes_on_disk'] / 2**20:.1f} MiB ({ratio:.1f}x smaller than raw frames)")
    if s["crash_leftover"]:
        print("warning      an episode was being registered when a crash hit; run `simulacra data verify`")
    return 0


@dataclass
class ViewConfig:
    """Write a preview video (mp4 or gif): a grid of episodes playing side by side."""

    path: Positional[str | None] = None
    """Data set directory (default: the most recent under ./datasets)."""
    out: str | None = None
    """Output file, .mp4 or .gif (default: <data set>/preview.mp4)."""
    episodes: int = 4
    """How many episodes to show (the first N)."""
    max_frames: int = 300
    """Length cap of the preview in frames."""
    scale: int = 3
    """Integer upscaling of each frame (64 px frames are small on screen)."""
    fps: int | None = None
    """Playback rate (default: the data set's)."""


def view(cfg: ViewConfig) -> int:
    from simulacra.data.video import write_episode_grid

    check_range("--episodes", cfg.episodes, 1)
    check_range("--max-frames", cfg.max_frames, 1)
    check_range("--scale", cfg.scale, 1, 32)
    check_range("--fps", cfg.fps, 1, 1000)
    if cfg.out is not None:
        check_output_file(cfg.out, "--out", (".mp4", ".gif"))
    root = _dataset(cfg.path)
    ds = Dataset.open(root)
    if not len(ds):
        raise DatasetError(f"{root}: has no complete episodes to show")
    out = Path(f"{root}/preview.mp4" if cfg.out is None else cfg.out)
    check_output_file(out, "--out", (".mp4", ".gif"))
    fps = int(ds.info.get("fps", 15)) if cfg.fps is None else cfg.fps
    n = write_episode_grid(ds, out, range(min(cfg.episodes, len(ds))), cfg.max_frames, cfg.scale, fps)
    print(f"wrote {out} ({n} frames at {fps} fps, {min(cfg.episodes, len(ds))} episodes)")
    return 0


@dataclass
class VerifyConfig:
    """Read every byte of a data set; report corrupt or missing shards and what a crash lost."""

    path: Positional[str | None] = None
    """Data set directory (default: the most recent under ./datasets)."""
    repair: bool = False
    """Clean up after a crash: drop partial shards and torn lines, register complete shards."""
    json: bool = False
    """Print the report as JSON."""


def verify(cfg: VerifyConfig) -> int:
    from simulacra.data.verify import repair_dataset

    root = _dataset(cfg.path)
    report = repair_dataset(root) if cfg.repair else Dataset.open(root).verify()
    if cfg.json:
        print(json.dumps(report, indent=2))
    else:
        print(
            f"{report['root']}: {report['episodes_ok']}/{report['episodes']} episodes ok ({report['steps_ok']} steps)"
        )
        for p in report["problems"]:
            print(f"  CORRUPT  {p['problem']}")
        for item in report["lost"]:
            print(f"  LOST     {item['file']}: {item['problem']}")
        if not report["problems"] and not report["lost"]:
            print("  everything checks out")
    if report["problems"]:  # the report went to stdout; the CLI adds one line on stderr and exits 1
        first = report["problems"][0]["problem"]
        raise DatasetError(f"{root}: {len(report['problems'])} damaged episode(s), first: {first}")
    if report["lost"]:
        first = report["lost"][0]
        raise DatasetError(
            f"{root}: {len(report['lost'])} leftover(s) of an interrupted write, first: {first['file']}: "
            f"{first['problem']} (`simulacra data verify --repair` cleans up)"
        )
    return 0


@dataclass
class ImportConfig:
    """Import trajectories from another format into a simulacra data set."""

    source: Positional[str]
    """What to import: a LeRobot v3 data set dir, a Minari data set dir, or a folder of videos."""
    format: Literal["lerobot", "minari", "videos"] = "lerobot"
    """Source format."""
    out: str | None = None
    """Data set directory to write (default: datasets/<source name>)."""
    overwrite: bool = False
    """Replace an existing data set at --out."""
    resolution: int | None = None
    """Resize frames to this size (default: keep the source size; videos default to 64)."""
    image_key: str | None = None
    """LeRobot/Minari: which image feature or observation key to use (default: the first image)."""


def import_(cfg: ImportConfig) -> int:
    from simulacra.data import interop

    check_range("--resolution", cfg.resolution, 8, MAX_RESOLUTION)
    if not cfg.source:
        raise SimulacraError("SOURCE must not be empty")
    out = str(layout.DATASETS_DIR / Path(cfg.source.rstrip("/")).name) if cfg.out is None else cfg.out
    check_output_folder(out, "--out")
    busy = (Path(out) / layout.LOCK_NAME).exists()  # then the importer names the writer, under the lock
    if (Path(out) / "info.json").exists() and not cfg.overwrite and not busy:  # before the source is read
        raise SimulacraError(f"{out} already holds a data set; pass --overwrite to replace it or --out elsewhere")
    ds = interop.IMPORTERS[cfg.format](
        cfg.source, out, overwrite=cfg.overwrite, resolution=cfg.resolution, image_key=cfg.image_key
    )
    print(f"imported {len(ds)} episodes ({ds.num_steps} steps) from {cfg.source} to {out}")
    return 0


@dataclass
class ExportConfig:
    """Export a data set to another format."""

    out: str
    """Directory to write."""
    path: Positional[str | None] = None
    """Data set directory (default: the most recent under ./datasets)."""
    format: Literal["lerobot"] = "lerobot"
    """Target format (LeRobot v3 layout)."""
    video: bool = False
    """LeRobot: store frames as mp4 video features (lossy) instead of PNG image features (lossless)."""
    overwrite: bool = False
    """Replace an existing directory at --out."""


def export(cfg: ExportConfig) -> int:
    from simulacra.data import interop

    check_output_folder(cfg.out, "--out")
    root = _dataset(cfg.path)
    interop.EXPORTERS[cfg.format](Dataset.open(root), cfg.out, video=cfg.video, overwrite=cfg.overwrite)
    print(f"exported {root} to {cfg.out} ({cfg.format})")
    return 0
