"""Speed of a world's full per-frame step (sample the next latents in a few Euler steps + decode the frame):
eager PyTorch vs torch.compile vs ONNX Runtime, at batch 1 (streaming) and batch 16, on a few CPU threads.

Random weights of a size preset (speed does not depend on the values) or a trained world (--world).
Also streams through the World API (World.step at batch 1, the user-facing number) and breaks the ONNX
Runtime step down into decoder / U-Net / heads from its node profile. Target: >= 60 frames/s at batch 1
(64x64, 2 cores). Writes benchmarks/results/step_speed.json.

    python benchmarks/step_speed.py [--size nano] [--world PATH] [--threads 2] [--seconds 3] [--no-compile]

Timings on a shared machine are noisy; the load average before and after is recorded beside them.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import tempfile
import time
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from simulacra.export import frames_per_s
from simulacra.models.autoencoder import Autoencoder
from simulacra.models.dynamics import Dynamics
from simulacra.spaces import ActionSpace
from simulacra.train import SIZES
from simulacra.world import World
from simulacra.world.onnx import OnnxStep, StepGraph, export_step, random_inputs


def random_world(size: str, frame: int) -> World:
    torch.manual_seed(0)
    ae = Autoencoder(SIZES[size].ae)
    space = ActionSpace.discrete(4)
    dyn = Dynamics(SIZES[size].dyn, ae.latent_channels, space)
    config = {"autoencoder": asdict(ae.cfg), "dynamics": asdict(dyn.cfg), "action_space": space.to_json()}
    return World(ae, dyn, config | {"frame_shape": [frame, frame, 3]})


def cpu_name() -> str:
    try:
        return next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


def ms(fn, *args, n: int = 20) -> float:
    """Median milliseconds of one call."""
    fn(*args)
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - t0)
    return 1000 * float(np.median(times))


def ort_breakdown(path: Path, inputs: dict, threads: int, runs: int = 30) -> dict[str, float]:
    """ms per step by part, from ONNX Runtime's node profile (node names carry the module path)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.enable_profiling = True
    opts.profile_file_prefix = str(path.parent / "ort-profile")
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    feed = {i.name: inputs[i.name].numpy() for i in sess.get_inputs()}
    for _ in range(runs):
        sess.run(None, feed)
    events = json.loads(Path(sess.end_profiling()).read_text())
    parts: dict[str, float] = defaultdict(float)
    for e in events:
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time"):
            continue
        top = e["name"].removeprefix("/").split("/")[0].split(".")[0].split("_")[0]  # "/up.4/conv1_2/Conv..." -> up
        part = (
            "decoder" if top == "decoder"
            else "heads" if top == "heads"
            else "unet (all Euler steps)" if top in ("inp", "down", "mid", "up", "out", "cond", "noise", "actions")
            else "other (layout reorders, concats, time embeddings)"
        )  # fmt: skip
        parts[part] += e["dur"] / 1000 / runs
    return dict(parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="nano", choices=list(SIZES))
    ap.add_argument("--world", help="a trained world (or run) directory instead of random weights")
    ap.add_argument("--frame", type=int, default=64, help="frame side for random weights")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=3.0, help="time per backend and batch size")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds per measurement (best is kept)")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "step_speed.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    world = World.load(args.world) if args.world else random_world(args.size, args.frame)
    tmp = Path(tempfile.mkdtemp(prefix="step-speed-"))
    t0 = time.perf_counter()
    meta = export_step(world, tmp / "step.onnx")
    export_s = time.perf_counter() - t0
    model = StepGraph(world).eval()
    onnx_step = OnnxStep(tmp / "step.onnx", threads=args.threads)
    eager1 = "eager, 1 thread"  # OpenMP threads crawl when the cores are shared: one thread is the robust baseline
    notes: dict[str, str] = {eager1: "torch.set_num_threads(1)"}
    if args.no_compile:
        notes["compile"] = "skipped (--no-compile)"
    # the user-facing streaming number too: World.step at batch 1 (noise draws, state shifts, numpy frames)
    start = np.random.default_rng(0).integers(0, 256, (1, world.K, *world.frame_space.shape), dtype=np.uint8)
    streams = {"World.step torch": World(world.ae, world.dyn, world.config), "World.step onnx": world}
    streams["World.step onnx"].use_onnx(tmp / "step.onnx", threads=args.threads)
    states = {k: [w.reset(start), w.generator(0)] for k, w in streams.items()}

    def stream_step(name: str) -> None:
        st = states[name]
        st[0] = streams[name].step(st[0], [0], st[1])[0]

    rounds: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for B in args.batches:
        x = random_inputs(world, B)
        cands = {"eager": (model, args.threads), eager1: (model, 1), "onnxruntime": (onnx_step, args.threads)}
        if not args.no_compile and "failed" not in notes.get("compile", ""):
            try:  # compiled per batch size (static shapes), outside the timing
                t1 = time.perf_counter()
                compiled = torch.compile(model, dynamic=False)
                with torch.no_grad():
                    compiled(*x.values())
                notes["compile"] = notes.get("compile", "inductor, compile") + f" {time.perf_counter() - t1:.0f}s@b{B}"
                cands["compile"] = (compiled, args.threads)
            except Exception as e:  # no compiler, unsupported op...
                notes["compile"] = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
        if B == 1:
            cands |= {k: ((lambda *_, k=k: stream_step(k)), args.threads) for k in streams}
        for _ in range(args.rounds):  # interleaved, so a change in the machine's load hits every backend alike
            for name, (fn, threads) in cands.items():
                torch.set_num_threads(threads)
                with torch.no_grad():
                    rounds[name][B].append(frames_per_s(fn, x, args.seconds / args.rounds))
        torch.set_num_threads(args.threads)
    order = ["eager", eager1, "compile", "onnxruntime", "World.step torch", "World.step onnx"]
    rows = {k: {B: max(rounds[k][B]) if rounds[k][B] else None for B in args.batches} for k in order}
    # where the time goes at batch 1
    x1 = random_inputs(world, 1)
    z = x1["noise"]
    t = torch.full((1,), 0.5)
    level = torch.full((1,), world.dyn.cfg.context_noise_infer)
    torch.set_num_threads(1)  # the robust eager baseline on a shared machine (see "eager, 1 thread")
    with torch.no_grad():
        eager_ms = {
            "decoder": ms(world.ae.decode, z),
            "unet (one Euler step)": ms(world.dyn.velocity, z, t, x1["context"], x1["actions"], level, x1["pad"]),
            "heads": ms(world.dyn.heads_logits, x1["context"], z, x1["actions"], x1["pad"]),
        }
    torch.set_num_threads(args.threads)
    ort_ms = ort_breakdown(tmp / "step.onnx", x1, args.threads)
    # what fewer Euler steps would buy: scale the measured ONNX Runtime step by the profile's U-Net share
    unet_share = ort_ms.get("unet (all Euler steps)", 0.0) / sum(ort_ms.values())
    fewer = {
        n: rows["onnxruntime"][1] / (1 - unet_share + unet_share * n / world.dyn.cfg.sampling_steps)
        for n in range(1, world.dyn.cfg.sampling_steps + 1)
    } if 1 in args.batches else {}  # fmt: skip
    shutil.rmtree(tmp, ignore_errors=True)
    load_after = os.getloadavg()
    steps = world.dyn.cfg.sampling_steps
    result = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "platform": platform.platform(),
                    "loadavg_before": load_before, "loadavg_after": load_after},
        "versions": {"torch": torch.__version__, "onnxruntime": ort.__version__, "python": platform.python_version()},
        "world": args.world or f"random {args.size} ({args.frame}x{args.frame})", "threads": args.threads,
        "sampling_steps": steps, "export": {"exporter": meta["exporter"], "seconds": export_s, "check": meta["check"]},
        "frames_per_s_best_round": rows, "frames_per_s_rounds": rounds, "notes": notes,
        "breakdown_ms_batch1": {"eager (1 thread)": eager_ms, "onnxruntime (profiled)": ort_ms},
        "onnxruntime_batch1_frames_per_s_estimate_by_sampling_steps": fewer, "target_batch1_frames_per_s": 60,
    }  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))

    print(f"{result['world']}, {steps} sampling steps, {args.threads} threads, {cpu_name()}, "
          f"load avg {load_before[0]:.1f} -> {load_after[0]:.1f}; torch {torch.__version__}, onnxruntime {ort.__version__}")  # fmt: skip
    print(f"export: {meta['exporter']} exporter, {export_s:.1f}s; check {meta['check']}")
    print(f"{'frames/s (sample + decode)':<28}" + "".join(f"{'batch ' + str(B):>12}" for B in args.batches))
    for name, row in rows.items():
        cells = "".join(f"{v:>12.1f}" if v is not None else f"{'-':>12}" for v in row.values())
        print(f"{name:<28}{cells}   {notes.get(name, '')}")
    print(
        f"(best of {args.rounds} interleaved rounds; World.step rows stream one dream; target 60 frames/s at batch 1)"
    )
    e = eager_ms
    print(f"eager (1 thread) ms at batch 1: decoder {e['decoder']:.2f}, U-Net {e['unet (one Euler step)']:.2f} per Euler step "
          f"(x{steps} = {steps * e['unet (one Euler step)']:.2f}), heads {e['heads']:.2f}")  # fmt: skip
    print("onnxruntime ms at batch 1 (profiled): " + ", ".join(f"{k} {v:.2f}" for k, v in sorted(ort_ms.items())))
    if fewer:
        print("onnxruntime batch 1 with fewer Euler steps (estimate): "
              + ", ".join(f"{n} steps {v:.0f} frames/s" for n, v in fewer.items()))  # fmt: skip
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
