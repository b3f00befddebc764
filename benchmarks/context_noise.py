"""The effect of context-noise augmentation (GameNGen's trick) on long rollouts: same data, same budget.

Trains two worlds that differ only in ``--context-noise-max`` (the preset's default vs 0 = off), then
evaluates both on the same kind of fresh episodes and prints per-horizon PSNR against the real frames,
sharpness, and the drift figures of 256-step rollouts (sharpness ratio and distance to the nearest
real frame at the end). Writes benchmarks/results/context_noise.json.

    python benchmarks/context_noise.py [--preset breakout] [--steps 3000] [--parallel]

--parallel trains the two arms at once with one thread each (about 1.6x less wall time on 2 cores);
their training times are then not the budget's and are not reported as such.
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

from world_quality import EPISODES, sim, summarise

ARMS = {"with augmentation": None, "without (context_noise_max=0)": "0"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="breakout")
    ap.add_argument("--size", default="nano")
    ap.add_argument("--steps", type=int, default=None, help="dynamics steps per arm (default: the size's)")
    ap.add_argument("--workdir", default="runs/bench-noise")
    ap.add_argument("--parallel", action="store_true")
    ap.add_argument("--out", default="benchmarks/results/context_noise.json")
    args = ap.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    data, log = work / "data" / args.preset, work / "log.txt"
    if not (data / "info.json").exists():
        sim(
            "record",
            "--preset",
            args.preset,
            "--episodes",
            str(EPISODES.get(args.preset, 32)),
            "--out",
            str(data),
            log=log,
        )
    runs = {arm: work / f"{args.preset}-{args.size}-noise{'0' if off else 'default'}" for arm, off in ARMS.items()}
    cmds = {
        arm: [sys.executable, "-m", "simulacra.cli", "train", "--data", str(data), "--size", args.size, "--out", str(run),
              "--no-tensorboard", *(["--dyn-steps", str(args.steps)] if args.steps else []),
              *(["--context-noise-max", ARMS[arm]] if ARMS[arm] else []), *(["--resume"] if (run / "config.json").exists() else [])]
        for arm, run in runs.items()
    }  # fmt: skip
    env = {**os.environ, **({"OMP_NUM_THREADS": "1"} if args.parallel else {})}
    t0 = time.time()
    with open(log, "a") as f:
        procs = []
        for cmd in cmds.values():
            p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
            if not args.parallel:
                p.wait()
            procs.append(p)
        if any(p.wait() for p in procs):
            raise SystemExit(f"training failed; see {log}")
    train_s = time.time() - t0
    rows = []
    for arm, run in runs.items():
        sim("eval", "--run", str(run), "--no-onnx", log=log)
        m = json.loads((run / "eval" / "metrics.json").read_text())
        ol, d = m["open_loop"], m["drift"]
        rows.append(
            {
                "arm": arm,
                "context_noise_max": json.loads((run / "config.json").read_text())["dynamics"]["context_noise_max"],
                **{f"psnr{h}": ol["psnr"]["model"][h - 1] for h in (1, 16, 64)},
                **{f"copy_last{h}": ol["psnr"]["copy_last"][h - 1] for h in (1, 16, 64)},
                **{f"sharp{h}": ol["sharpness_ratio"][h - 1] for h in (16, 64)},
                "drift_sharpness_end": d["sharpness_ratio_end"],
                "drift_distance_ratio": d["distance_ratio"],
                "drift_distance_curve": d["distance_curve"],
                "summary": {k: v for k, v in summarise(m).items() if k != "fps"},
            }
        )
    print(f"\n{args.preset}, {args.size}, 2-core CPU, {time.strftime('%Y-%m-%d')}; fresh eval episodes (seeds 100000+)")
    cols = [("arm", "arm", "{}"), ("PSNR@1", "psnr1", "{:.2f}"), ("PSNR@16", "psnr16", "{:.2f}"), ("PSNR@64", "psnr64", "{:.2f}"),
            ("copy-last@64", "copy_last64", "{:.2f}"), ("sharp@16", "sharp16", "{:.2f}"), ("sharp@64", "sharp64", "{:.2f}"),
            ("drift sharp (256)", "drift_sharpness_end", "{:.2f}"), ("drift dist ratio", "drift_distance_ratio", "{:.2f}")]  # fmt: skip
    print(" | ".join(c[0] for c in cols))
    for r in rows:
        print(" | ".join(fmt.format(r[k]) if r.get(k) is not None else "-" for _, k, fmt in cols))
    result = {
        "benchmark": "context_noise",
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}",
        "preset": args.preset,
        "size": args.size,
        "parallel": args.parallel,
        "train_seconds_both_arms": round(train_s, 1),
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
