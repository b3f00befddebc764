"""`simulacra export`: write a trained world's per-frame step as one ONNX graph (world/onnx.py), check it
against eager PyTorch and time both."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Annotated, Literal

import torch
import tyro

from simulacra.errors import SimulacraError
from simulacra.world.onnx import OnnxStep, StepGraph, export_step, random_inputs


# ---- `simulacra export` --------------------------------------------------------------------------
@dataclass
class ExportConfig:
    """Export a trained world's per-frame step for fast CPU inference, check it and time it."""

    world: Annotated[tyro.conf.Positional[str], tyro.conf.arg(metavar="RUN_OR_WORLD")]
    """A run directory or a world directory (with world.json)."""
    format: Literal["onnx"] = "onnx"
    """Export format: onnx writes <world>/step.onnx (run it with World.load(path, backend="onnx"))."""
    exporter: Literal["auto", "torchscript", "dynamo"] = "auto"
    """torch.onnx exporter: auto tries torchscript (fast) and falls back to dynamo (needs onnxscript)."""
    threads: int = 2
    """CPU threads for both backends in the speed comparison (ONNX Runtime intra-op, torch)."""
    seconds: float = 2.0
    """Time per backend in the speed comparison (0 skips it)."""


def frames_per_s(fn, inputs: dict, seconds: float) -> float:
    """Frames/s of fn(*inputs) (a per-frame step of a batch), after a short warm-up."""
    B = inputs["context"].shape[0]
    for _ in range(2):
        fn(*inputs.values())
    n, t0 = 0, time.perf_counter()
    while (dt := time.perf_counter() - t0) < seconds or n < 3:
        fn(*inputs.values())
        n += 1
    return n * B / dt


def export_command(cfg: ExportConfig) -> None:
    from simulacra.data.safety import check_output_folder
    from simulacra.world import World

    if isinstance(cfg.threads, bool) or not isinstance(cfg.threads, int) or cfg.threads < 1:
        raise SimulacraError(f"--threads must be a whole number, 1 or more, not {cfg.threads}")
    if not 0 <= cfg.seconds < float("inf"):  # also refuses nan
        raise SimulacraError(f"--seconds is the time per backend, 0 (skip the comparison) or more, not {cfg.seconds}")
    world = World.load(cfg.world)
    path = world.path / "step.onnx"
    check_output_folder(world.path, "the world folder")
    t0 = time.perf_counter()
    meta = export_step(world, path, exporter=cfg.exporter)
    c = meta["check"]
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, {meta['exporter']} exporter, opset {meta['opset']}, "
          f"{meta['sampling_steps']} sampling steps) in {time.perf_counter() - t0:.1f}s")  # fmt: skip
    print(f"check vs eager (batches {c['batches']}): latents max abs err {c['latents']:.2e}, frames {c['frame']} "
          f"gray level(s), done prob {c['done']:.2e}, reward sign mismatches {c['reward_mismatch']}")  # fmt: skip
    if cfg.seconds > 0:
        threads = torch.get_num_threads()
        torch.set_num_threads(cfg.threads)
        try:
            step, model = OnnxStep(path, threads=cfg.threads), StepGraph(world).eval()
            for B in (1, 16):
                x = random_inputs(world, B)
                with torch.no_grad():
                    eager = frames_per_s(model, x, cfg.seconds)
                fast = frames_per_s(step, x, cfg.seconds)
                print(f"batch {B:>2}: eager torch {eager:7.1f} frames/s, onnxruntime {fast:7.1f} frames/s "
                      f"(x{fast / eager:.2f}, {cfg.threads} threads; sample + decode)")  # fmt: skip
        finally:
            torch.set_num_threads(threads)
    print(f'use it: World.load("{cfg.world}", backend="onnx")')
