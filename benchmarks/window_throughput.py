"""Window-sampling throughput of the data set store: the access pattern of training.

Records real data (Breakout and CarRacing at 64x64 unless --dataset is given), then reads windows
of T consecutive steps in random order, as training does, and reports frames/s:

  - single process, the default block cache (warm after the first pass over the data)
  - single process, a tiny cache (every window decompresses its blocks: the cold-read floor)
  - a torch DataLoader with 2 workers and batch 32 (what `simulacra train` will use)

Also a synthetic noise data set (incompressible, worst case). Target: >= 20,000 frames/s at 64x64.
Writes benchmarks/results/window_throughput.json.

    python benchmarks/window_throughput.py [--seconds 5] [--dataset PATH ...]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from simulacra.data import Dataset, DatasetWriter, WindowDataset
from simulacra.spaces import ActionSpace


def frames_per_s_single(root: str, T: int, seconds: float, cache_mb: int) -> float:
    os.environ["SIMULACRA_CACHE_MB"] = str(cache_mb)
    wd = WindowDataset(Dataset.open(root), num_steps=T)
    rng = np.random.default_rng(0)
    n = frames = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        item = wd[int(rng.integers(len(wd)))]
        frames += item["frames"].shape[0]
        n += 1
    return frames / (time.perf_counter() - t0)


def frames_per_s_loader(root: str, T: int, seconds: float, workers: int, batch: int) -> float:
    os.environ["SIMULACRA_CACHE_MB"] = "512"
    wd = WindowDataset(Dataset.open(root), num_steps=T)
    loader = torch.utils.data.DataLoader(
        wd, batch_size=batch, shuffle=True, num_workers=workers, persistent_workers=workers > 0, drop_last=True
    )
    frames = 0
    it = iter(loader)
    next(it)  # worker start-up is not sampling
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        try:
            b = next(it)
        except StopIteration:
            it = iter(loader)
            b = next(it)
        frames += b["frames"].shape[0] * b["frames"].shape[1]
    return frames / (time.perf_counter() - t0)


def synthetic_noise(root: Path, episodes: int = 8, length: int = 500) -> str:
    rng = np.random.default_rng(0)
    space = ActionSpace.discrete(4).to_json()
    w = DatasetWriter(root, {"frame_shape": [64, 64, 3], "action_space": space, "env_id": "noise"}, overwrite=True)
    for _ in range(episodes):
        f = rng.integers(0, 256, (length + 1, 64, 64, 3), dtype=np.uint8)
        w.add_episode(
            f,
            rng.integers(0, 4, length),
            np.zeros(length),
            np.zeros(length, bool),
            np.eye(1, length, length - 1, dtype=bool)[0],
        )
    return str(root)


def record(preset: str, episodes: int, out: Path) -> str:
    cmd = [
        sys.executable,
        "-m",
        "simulacra.cli",
        "record",
        "--preset",
        preset,
        "--episodes",
        str(episodes),
        "--out",
        str(out),
        "--overwrite",
    ]
    subprocess.run(cmd, check=True, capture_output=True)
    return str(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--steps", type=int, default=16, help="window length T")
    ap.add_argument("--dataset", nargs="*", default=None, help="existing data sets to measure instead")
    ap.add_argument("--out", default="benchmarks/results/window_throughput.json")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="simulacra-bench-"))
    if args.dataset:
        sets = {Path(d).name: d for d in args.dataset}
    else:
        print("recording breakout (16 episodes) and carracing (6 episodes) ...", flush=True)
        sets = {
            "breakout": record("breakout", 16, tmp / "breakout"),
            "carracing": record("carracing", 6, tmp / "carracing"),
            "noise (incompressible)": synthetic_noise(tmp / "noise"),
        }
    rows = []
    for name, root in sets.items():
        ds = Dataset.open(root)
        ratio = ds.num_frames * int(np.prod(ds.frame_shape)) / sum(e.nbytes for e in ds.episodes)
        row = {
            "dataset": name,
            "frames": ds.num_frames,
            "compression": round(ratio, 1),
            "single_warm": frames_per_s_single(root, args.steps, args.seconds, 512),
            "single_cold": frames_per_s_single(root, args.steps, args.seconds, 0),
            "loader_2w_b32": frames_per_s_loader(root, args.steps, args.seconds, 2, 32),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    header = f"{'data set':<24}{'frames':>8}{'ratio':>8}{'1 proc warm':>14}{'1 proc cold':>14}{'loader 2w':>12}   (frames/s, T={args.steps}, 64x64)"
    print("\n" + header)
    for r in rows:
        print(
            f"{r['dataset']:<24}{r['frames']:>8}{r['compression']:>7}x{r['single_warm']:>14,.0f}"
            f"{r['single_cold']:>14,.0f}{r['loader_2w_b32']:>12,.0f}"
        )
    result = {
        "benchmark": "window_throughput",
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.python_version()}, torch {torch.__version__}",
        "window_steps": args.steps,
        "target_frames_per_s": 20000,
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
