"""World quality per world: record, train `nano` for the fixed CPU budget, evaluate, one table.

For each preset: record episodes from the real env (seeds 0..), train a nano world within a wall-clock
budget (`train --minutes 10`: the size's step count, cut to what fits at the speed measured over the
first steps; the steps reached and the wall time are reported), then `simulacra eval` on fresh episodes (seeds 100000..). Prints the table of every bar (the
eval's verdict: PSNR, IDM, sharpness, speed, and the fidelity bars: state probes, motion, events, the clip
discriminator, drift at 1,024 steps) and writes benchmarks/results/world_quality.json. Worlds without a
preset (``--env-ids``) are recorded as a new user would: ``record --env-id ID`` with the default flags.

    python benchmarks/world_quality.py [--presets breakout pong carracing doom] [--env-ids ALE/Freeway-v5 MiniWorld-FourRooms-v0]
                                       [--workdir runs/bench] [--minutes 10]
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


def sim(*args: str, log: Path) -> float:
    t0 = time.time()
    with open(log, "a") as f:
        subprocess.run([sys.executable, "-m", "simulacra.cli", *args], check=True, stdout=f, stderr=subprocess.STDOUT)
    return time.time() - t0


def summarise(m: dict) -> dict:
    """Pull the issue's figures out of eval's metrics.json (curves are indexed by horizon - 1)."""
    ol, ctrl, drift = m["open_loop"], m["controllability"], m["drift"]
    h = 15  # horizon 16
    speed = {
        f"{backend}_{b}": v["frames_per_s"]
        for backend, bs in m["speed"].items()
        if isinstance(bs, dict) and "error" not in bs
        for b, v in bs.items()
        if v
    }
    errors = {k: v["error"] for k, v in m["speed"].items() if isinstance(v, dict) and "error" in v}
    key = ctrl.get("metric", "accuracy")  # accuracy for discrete actions, R^2 for Box ones
    idm_real = ctrl.get("real", {}).get(key)
    return {
        "psnr16_model": ol["psnr"]["model"][h],
        "psnr16_copy_last": ol["psnr"]["copy_last"][h],
        "psnr16_margin_db": None
        if None in (ol["psnr"]["model"][h], ol["psnr"]["copy_last"][h])
        else ol["psnr"]["model"][h] - ol["psnr"]["copy_last"][h],
        "ssim16_model": ol["ssim"]["model"][h],
        "ssim16_copy_last": ol["ssim"]["copy_last"][h],
        "sharpness16": ol["sharpness_ratio"][h],
        "idm_real": idm_real,
        "idm_metric": key,
        "idm_generated": ctrl.get("generated", {}).get(key),
        "idm_chance": ctrl.get("chance", {}).get(key),
        "idm_ratio": ctrl.get("ratio"),
        "delta_psnr_true_vs_random": ctrl.get("delta_psnr"),
        "drift_sharpness_end": drift.get("sharpness_ratio_end"),
        "drift_distance_ratio": drift.get("distance_ratio"),
        "fps_b1": max(v for k, v in speed.items() if k.endswith("batch_1")),
        "fps": speed,
        **({"speed_errors": errors} if errors else {}),
        **fidelity(m),
        "verdict": {k: v["pass"] for k, v in m.get("verdict", {}).items()},
    }


def fidelity(m: dict) -> dict:
    """The fidelity figures (None where a measurement was skipped or declared itself invalid)."""
    vd = m.get("verdict", {})
    value = lambda k: (vd.get(k) or {}).get("value")  # noqa: E731
    ev = m.get("events", {})
    tf = lambda kind: (ev.get(kind) or {}).get("teacher_forced") or {}  # noqa: E731
    at = lambda c: ((m.get("drift") or {}).get("at") or {}).get(c, {}).get("distance_ratio")  # noqa: E731
    return {
        "state_fidelity16": value("state_fidelity16"),
        "state_vars_kept": len((m.get("state") or {}).get("kept") or []),
        "motion_worst": value("motion1to16"),
        "motion16": ((m.get("motion") or {}).get("ratio") or [None] * 16)[15],
        "reward_real": tf("reward").get("real"),
        "reward_recall": tf("reward").get("recall"),
        "reward_precision": tf("reward").get("precision"),
        "termination_real": tf("termination").get("real"),
        "termination_recall": tf("termination").get("recall"),
        "life_loss_real": tf("life_loss").get("real"),
        "life_loss_recall": tf("life_loss").get("recall"),
        "clip_accuracy": value("clips16"),
        "clip_copy_last": ((m.get("clips") or {}).get("copy_last") or {}).get("accuracy"),
        "drift256": at("256"),
        "drift1024": at("1024"),
    }


COLS = [("preset", "preset", "{}"), ("train min", "train_minutes", "{:.1f}"), ("steps", "dyn_steps", "{}"), ("PSNR@16", "psnr16_model", "{:.2f}"),
        ("copy-last@16", "psnr16_copy_last", "{:.2f}"), ("margin dB", "psnr16_margin_db", "{:+.2f}"), ("SSIM@16", "ssim16_model", "{:.3f}"),
        ("SSIM copy-last", "ssim16_copy_last", "{:.3f}"), ("IDM real", "idm_real", "{:.3f}"), ("IDM gen", "idm_generated", "{:.3f}"),
        ("IDM chance", "idm_chance", "{:.3f}"), ("IDM ratio", "idm_ratio", "{:.2f}"), ("dPSNR act", "delta_psnr_true_vs_random", "{:+.2f}"),
        ("sharp@16", "sharpness16", "{:.2f}"), ("drift sharp", "drift_sharpness_end", "{:.2f}"),
        ("drift dist", "drift_distance_ratio", "{:.2f}"), ("fps b1 eager", "fps_eager_b1", "{:.0f}"),
        ("fps b1 ONNX", "fps_onnx_b1", "{:.0f}"), ("fps b16 ONNX", "fps_onnx_b16", "{:.0f}"),
        ("state fid@16", "state_fidelity16", "{:.2f}"), ("vars", "state_vars_kept", "{}"), ("motion worst 1-16", "motion_worst", "{:.2f}"),
        ("reward real", "reward_real", "{}"), ("reward recall", "reward_recall", "{:.2f}"), ("reward prec", "reward_precision", "{:.2f}"),
        ("term real", "termination_real", "{}"), ("term recall", "termination_recall", "{:.2f}"),
        ("life-loss real", "life_loss_real", "{}"), ("life-loss recall", "life_loss_recall", "{:.2f}"),
        ("clip acc", "clip_accuracy", "{:.2f}"), ("clip copy-last", "clip_copy_last", "{:.2f}"),
        ("drift@256", "drift256", "{:.2f}"), ("drift@1024", "drift1024", "{:.2f}"), ("bars passed", "passed", "{}")]  # fmt: skip


def markdown(rows: list[dict]) -> str:
    """The results as a Markdown table (the README's)."""
    cell = lambda r, k, fmt: fmt.format(r[k]) if r.get(k) is not None else "-"  # noqa: E731
    rows = [{**r, **{f"fps_{b}": r.get("fps", {}).get(k) for b, k in FPS.items()}} for r in rows]
    for r in rows:
        v = r.get("verdict") or {}
        r["passed"] = f"{sum(x is True for x in v.values())}/{len(v)}"
    lines = ["| " + " | ".join(c[0] for c in COLS) + " |", "|" + "---|" * len(COLS)]
    return "\n".join(lines + ["| " + " | ".join(cell(r, k, f) for _, k, f in COLS) + " |" for r in rows])


FPS = {"eager_b1": "eager_batch_1", "onnx_b1": "onnx_batch_1", "onnx_b16": "onnx_batch_16"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="*", default=["breakout", "pong", "carracing", "doom"])
    ap.add_argument("--env-ids", nargs="*", default=[], help="worlds without a preset, recorded with the defaults")
    ap.add_argument("--workdir", default="runs/bench")
    ap.add_argument("--size", default="nano")
    ap.add_argument("--minutes", type=float, default=10.0, help="wall-clock training budget per preset")
    ap.add_argument("--dyn-steps", type=int, default=None,
                    help="a fixed dynamics step count instead of the budget (worlds trained side by side on a shared CPU)")  # fmt: skip
    ap.add_argument("--out", default="benchmarks/results/world_quality.json")
    ap.add_argument("--table", action="store_true", help="only print --out's results as a Markdown table")
    ap.add_argument("--reeval", action="store_true", help="evaluate again the worlds that already have an eval")
    ap.add_argument("--from-runs", nargs="*", default=None, metavar="RUN",
                    help="only tabulate these already evaluated runs (RUN/eval/metrics.json), recording and training nothing")  # fmt: skip
    args = ap.parse_args()
    if args.table:
        print(markdown(json.loads(Path(args.out).read_text())["rows"]))
        return
    if args.from_runs is not None:
        rows = [row_of(Path(r).name, Path(r)) for r in args.from_runs]
        print(markdown(rows))
        write(args, rows)
        return
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    worlds = [(p, ["--preset", p, "--episodes", str(EPISODES.get(p, 32))]) for p in args.presets]
    worlds += [(e.replace("/", "_").lower(), ["--env-id", e]) for e in args.env_ids]
    for preset, record_args in worlds:
        data, run, log = work / "data" / preset, work / f"{preset}-{args.size}", work / f"{preset}.log"
        if not (data / "info.json").exists():
            sim("record", *record_args, "--out", str(data), log=log)
        world = run / "world" / "world.json"
        if not world.exists():  # a finished run is kept: rerunning the script fills in only what is missing
            resume = ["--resume"] if (run / "config.json").exists() else []
            sim(
                "train",
                "--data",
                str(data),
                "--size",
                args.size,
                "--out",
                str(run),
                "--no-tensorboard",
                *(["--dyn-steps", str(args.dyn_steps)] if args.dyn_steps else ["--minutes", str(args.minutes)]),
                *resume,
                log=log,
            )
        if args.reeval or not (run / "eval" / "metrics.json").exists():
            sim("eval", "--run", str(run), log=log)
        row = row_of(preset, run)
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "fps"}), flush=True)
    print(
        f"\n{args.size} worlds, {os.cpu_count()}-core CPU, {time.strftime('%Y-%m-%d')}; eval on fresh episodes (seeds 100000+)"
    )
    print(markdown(rows))
    write(args, rows)


def row_of(name: str, run: Path) -> dict:
    """One table row from a trained and evaluated run folder."""
    from simulacra.eval import verdict

    m = json.loads((run / "eval" / "metrics.json").read_text())
    m["verdict"] = verdict.verdicts(m)  # the verdict reads only the metrics: this version's bars, always
    config = json.loads((run / "config.json").read_text())
    world = run / "world" / "world.json"
    # worlds trained before train recorded its own time: config.json written at the start, world.json at the end
    train_s = config.get("train_seconds", world.stat().st_mtime - (run / "config.json").stat().st_mtime)
    row = {"preset": name, "train_minutes": round(train_s / 60, 2), "dyn_steps": config["dyn_loop"]["steps"]}
    return row | summarise(m)


def write(args, rows: list[dict]) -> None:
    best = max(rows, key=lambda r: r["psnr16_margin_db"] if r["psnr16_margin_db"] is not None else -1e9)
    passes = {r["preset"]: r["verdict"] for r in rows}  # the eval's verdict: True / False / None (n/a)
    print(f"\nbest PSNR margin: {best['preset']}")
    result = {
        "benchmark": "world_quality",
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}",
        "size": args.size,
        "bars": "the eval's verdict per bar (simulacra.eval.verdict.BARS)",
        "rows": rows,
        "passes": passes,
        "best": best["preset"],
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
