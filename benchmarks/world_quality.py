"""World quality per preset: record, train `nano` for the fixed CPU budget, evaluate, one table.

For each preset: record episodes from the real env (seeds 0..), train a nano world with the preset's
default steps (sized to fit 10 minutes on a 2-core CPU; the wall time is measured and reported),
then `simulacra eval` on fresh episodes (seeds 100000..). Prints the table of the issue's bars and
writes benchmarks/results/world_quality.json. The preset with the largest 16-step PSNR margin over
copy-last is reported as the best default world.

    python benchmarks/world_quality.py [--presets breakout pong carracing doom] [--workdir runs/bench]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

EPISODES = {"breakout": 48, "pong": 16, "carracing": 12, "doom": 36, "pusht": 40, "crafter": 60, "minigrid": 48}
BARS = {"psnr16_margin_db": 1.0, "idm_ratio": 0.8, "sharpness16": 0.8, "fps_b1": 60.0}


def sim(*args: str, log: Path) -> float:
    t0 = time.time()
    with open(log, "a") as f:
        subprocess.run([sys.executable, "-m", "simulacra.cli", *args], check=True, stdout=f, stderr=subprocess.STDOUT)
    return time.time() - t0


def summarise(m: dict) -> dict:
    """Pull the issue's figures out of eval's metrics.json (curves are indexed by horizon - 1)."""
    ol, ctrl, drift = m["open_loop"], m["controllability"], m["drift"]
    h = 15  # horizon 16
    speed = {f"{backend}_{b}": v["frames_per_s"] for backend, bs in m["speed"].items() for b, v in bs.items() if v}
    idm_real = ctrl.get("real", {}).get("accuracy")
    return {
        "psnr16_model": ol["psnr"]["model"][h],
        "psnr16_copy_last": ol["psnr"]["copy_last"][h],
        "psnr16_margin_db": ol["psnr"]["model"][h] - ol["psnr"]["copy_last"][h],
        "ssim16_model": ol["ssim"]["model"][h],
        "ssim16_copy_last": ol["ssim"]["copy_last"][h],
        "sharpness16": ol["sharpness_ratio"][h],
        "idm_real": idm_real,
        "idm_generated": ctrl.get("generated", {}).get("accuracy"),
        "idm_chance": ctrl.get("chance", {}).get("accuracy"),
        "idm_ratio": ctrl.get("ratio"),
        "delta_psnr_true_vs_random": ctrl.get("delta_psnr"),
        "drift_sharpness_end": drift["sharpness_ratio_end"],
        "drift_distance_ratio": drift["distance_ratio"],
        "fps_b1": max(v for k, v in speed.items() if k.endswith("batch_1")),
        "fps": speed,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["breakout", "pong", "carracing", "doom"])
    ap.add_argument("--workdir", default="runs/bench")
    ap.add_argument("--size", default="nano")
    ap.add_argument("--out", default="benchmarks/results/world_quality.json")
    args = ap.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for preset in args.presets:
        data, run, log = work / "data" / preset, work / f"{preset}-{args.size}", work / f"{preset}.log"
        if not (data / "info.json").exists():
            sim("record", "--preset", preset, "--episodes", str(EPISODES.get(preset, 32)), "--out", str(data), log=log)
        train_s = sim(
            "train",
            "--data",
            str(data),
            "--size",
            args.size,
            "--out",
            str(run),
            "--no-tensorboard",
            *(["--resume"] if (run / "config.json").exists() else []),
            log=log,
        )
        sim("eval", "--run", str(run), log=log)
        m = json.loads((run / "eval" / "metrics.json").read_text())
        row = {"preset": preset, "train_minutes": round(train_s / 60, 2), **summarise(m)}
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "fps"}), flush=True)
    print(f"\nnano worlds, 2-core CPU, {time.strftime('%Y-%m-%d')}; eval on fresh episodes (seeds 100000+)")
    cols = [("preset", "preset", "{}"), ("train min", "train_minutes", "{:.1f}"), ("PSNR@16", "psnr16_model", "{:.2f}"),
            ("copy-last", "psnr16_copy_last", "{:.2f}"), ("margin", "psnr16_margin_db", "{:+.2f}"), ("SSIM@16", "ssim16_model", "{:.3f}"),
            ("IDM real", "idm_real", "{:.3f}"), ("IDM gen", "idm_generated", "{:.3f}"), ("IDM ratio", "idm_ratio", "{:.2f}"),
            ("dPSNR act", "delta_psnr_true_vs_random", "{:+.2f}"), ("sharp@16", "sharpness16", "{:.2f}"),
            ("drift sharp", "drift_sharpness_end", "{:.2f}"), ("fps b1", "fps_b1", "{:.0f}")]  # fmt: skip
    print(" | ".join(c[0] for c in cols))
    for r in rows:
        print(" | ".join(fmt.format(r[k]) if r.get(k) is not None else "-" for _, k, fmt in cols))
    best = max(rows, key=lambda r: r["psnr16_margin_db"])
    passes = {r["preset"]: {b: (r.get(b) or 0) >= v for b, v in BARS.items()} for r in rows}
    print(f"\nbest world in the budget: {best['preset']} (16-step margin {best['psnr16_margin_db']:+.2f} dB)")
    result = {
        "benchmark": "world_quality",
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}",
        "size": args.size,
        "bars": BARS,
        "rows": rows,
        "passes": passes,
        "best": best["preset"],
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
