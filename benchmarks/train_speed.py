"""Training throughput of the dynamics model per size preset: steps/s, samples/s and peak memory,
through the real training loop (``loop.fit``: AdamW, bf16 autocast on CUDA, clipping, the per-sample
keyed noise), on synthetic latent windows of the 'pixels' autoencoder (speed does not depend on values).

    python benchmarks/train_speed.py [--device cpu|cuda] [--sizes nano small] [--steps 30] [--frame 64] [--profile] [--stem 1]
        [--patch 2] [--channels 32] [--channel-mult 1 2 3] [--set context=4 flow_context=0 heads_events=0]

--profile also runs torch.profiler over the timed steps and prints the top operators by self time
(host and device), to see whether a size is bound by the device or by launching work from Python.

Writes benchmarks/results/train_speed-<device>.json. The step time is taken between the batch requests
of the timed steps (fit reads the loss every step, so the device is synchronised there); the warm-up
steps and the final checkpoint write are left out.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from simulacra.loop import LoopConfig, fit, sample_keys
from simulacra.models.autoencoder import Autoencoder, AutoencoderConfig
from simulacra.models.dynamics import Dynamics
from simulacra.spaces import ActionSpace
from simulacra.train import SIZES


def measure(
    size: str,
    device: str,
    steps: int,
    warmup: int,
    frame: int,
    batch: int | None,
    profile: bool = False,
    stem: int | None = None,
    patch: int | None = None,
    channels: int | None = None,
    channel_mult: tuple[int, ...] | None = None,
    overrides: dict | None = None,
) -> dict:
    preset = SIZES[size]
    ae = Autoencoder(AutoencoderConfig(kind="pixels", patch=patch or 4))
    C, h, w = ae.latent_channels, frame // ae.cfg.patch, frame // ae.cfg.patch
    dyn_cfg = replace(
        preset.dyn,
        snap_to_pixels=True,
        stem=stem or preset.dyn.stem,
        channels=channels or preset.dyn.channels,
        channel_mult=tuple(channel_mult or preset.dyn.channel_mult),
        **(overrides or {}),
    )
    space = ActionSpace.discrete(6)
    torch.manual_seed(0)
    model = Dynamics(dyn_cfg, C, space)
    B, K = batch or preset.dyn_batch, dyn_cfg.context
    stamps: list[float] = []

    prof = None

    def get_batch(step: int, rank: int, world: int) -> dict:
        nonlocal prof
        if device == "cuda":
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())
        if profile and step == warmup:
            acts = [torch.profiler.ProfilerActivity.CPU] + (
                [torch.profiler.ProfilerActivity.CUDA] if device == "cuda" else []
            )
            prof = torch.profiler.profile(activities=acts)
            prof.__enter__()
        if prof is not None and step == warmup + steps:
            prof.__exit__(None, None, None)
            key = "self_cuda_time_total" if device == "cuda" else "self_cpu_time_total"
            print(prof.key_averages().table(sort_by=key, row_limit=15), flush=True)
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=10), flush=True)
            prof = None
        g = torch.Generator().manual_seed(step)
        windows = {
            "latents": torch.randn(B, K + 1, C, h, w, generator=g) * 0.1,
            "action": torch.randint(0, 6, (B, K), generator=g),
            "reward": torch.zeros(B, K),
            "terminated": torch.zeros(B, K, dtype=torch.bool),
        }
        heads = {}
        if dyn_cfg.heads_events > 0:  # the heads' own windows, as train draws them
            heads = {f"heads_{k}": v.clone() for k, v in windows.items()}
        return windows | heads | {"keys": sample_keys(0, 2, step, B, rank, world)}

    loop = LoopConfig(warmup + steps + 1, B, preset.dyn_lr, ckpt_every=10**9, log_every=10**9)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as tmp:
        fit(model, get_batch, loop, Path(tmp), f"{size}", resume=False)
    dt = (stamps[-1] - stamps[warmup]) / steps
    params = sum(p.numel() for p in model.parameters())
    row = {
        "size": size,
        "device": device,
        "batch": B,
        "context": K,
        "latent": [C, h, w],
        "params_M": round(params / 1e6, 2),
        "s_per_step": round(dt, 4),
        "steps_per_s": round(1 / dt, 2),
        "samples_per_s": round(B / dt, 1),
        "preset_steps": preset.dyn_steps,
        "preset_hours": round(preset.dyn_steps * dt / 3600, 2),
        "dynamics": asdict(dyn_cfg),
    }
    if device == "cuda":
        row["peak_mem_GiB"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--sizes", nargs="+", default=["nano", "small", "base", "large"])
    ap.add_argument("--steps", type=int, default=30, help="timed steps per size")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--frame", type=int, default=64, help="square frame side in pixels")
    ap.add_argument("--batch", type=int, default=None, help="override the presets' batch size")
    ap.add_argument("--profile", action="store_true", help="print torch.profiler's top operators per size")
    ap.add_argument("--stem", type=int, default=None, help="override the presets' first-convolution kernel (1 or 3)")
    ap.add_argument("--patch", type=int, default=None, help="pixel patch of the grid (default 4: 16x16 cells)")
    ap.add_argument("--channels", type=int, default=None, help="override the presets' U-Net width")
    ap.add_argument("--channel-mult", type=int, nargs="+", default=None, help="override the width per level")
    ap.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE", help="DynamicsConfig overrides (JSON)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here")
    if args.device == "cpu":
        os.environ.pop("WORLD_SIZE", None)
    rows = []
    for size in args.sizes:
        rows.append(
            measure(
                size,
                args.device,
                args.steps,
                args.warmup,
                args.frame,
                args.batch,
                args.profile,
                args.stem,
                args.patch,
                args.channels,
                args.channel_mult,
                {k: json.loads(v) for k, v in (kv.split("=", 1) for kv in args.set)},
            )  # fmt: skip
        )
        r = rows[-1]
        print(
            f"{size:6s} {r['params_M']:7.2f}M params  batch {r['batch']:4d}  {r['steps_per_s']:8.2f} steps/s "
            f"{r['samples_per_s']:9.1f} samples/s  preset {r['preset_steps']} steps = {r['preset_hours']} h"
            + (f"  peak {r['peak_mem_GiB']} GiB" if "peak_mem_GiB" in r else ""),
            flush=True,
        )
    machine = {
        "platform": platform.platform(),
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None,
    }
    out = Path(args.out or f"benchmarks/results/train_speed-{args.device}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "machine": machine, "rows": rows}
    out.write_text(json.dumps(result, indent=1))
    print(
        "| size | params | batch | steps/s | samples/s | preset steps | hours at this speed |"
        + (" peak GiB |" if args.device == "cuda" else "")
    )
    print("|---|---|---|---|---|---|---|" + ("---|" if args.device == "cuda" else ""))
    for r in rows:
        print(
            f"| {r['size']} | {r['params_M']}M | {r['batch']} | {r['steps_per_s']} | {r['samples_per_s']} | "
            f"{r['preset_steps']} | {r['preset_hours']} |" + (f" {r['peak_mem_GiB']} |" if "peak_mem_GiB" in r else "")
        )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
