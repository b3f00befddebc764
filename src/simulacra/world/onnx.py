"""Fast CPU inference: a world's whole per-frame step as one ONNX graph, run by ONNX Runtime.

The graph holds the context noise, the unrolled Euler loop of the denoiser (``sampling_steps`` is fixed
per world), the reward/termination heads and the decoder. Its randomness comes in as inputs, so eager
PyTorch and ONNX Runtime can be fed the same noise and compared:

    inputs   context (B, K, C, h, w) f32, actions (B, K) i64 or (B, K, D) f32, pad (B, K) bool,
             noise (B, C, h, w) f32, context_noise (B, K, C, h, w) f32
    outputs  latents (B, C, h, w) f32, frame (B, H, W, 3) u8, reward (B,) f32 sign, done (B,) f32 prob

On disk: ``<world>/step.onnx`` + ``step.onnx.json`` (opset, sampling steps, inputs, the check's errors and
a fingerprint of the weights); a graph whose fingerprint no longer matches the world is stale.
Needs the ``fast`` extra: ``pip install 'simulacra[fast]'``. The verb that writes and times it is
``simulacra export`` (export.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from simulacra import layout
from simulacra.errors import SimulacraError
from simulacra.models.autoencoder import to_uint8

GRAPH_VERSION = 1
OPSET = 18
INPUTS = ("context", "actions", "pad", "noise", "context_noise")
OUTPUTS = ("latents", "frame", "reward", "done")
TOLERANCE = {"latents": 1e-3, "frame": 1, "done": 1e-3}  # max abs error, ONNX Runtime vs eager


class StepGraph(nn.Module):
    """The per-frame step with explicit noise: sample the next latents, decode them, read the heads."""

    def __init__(self, world):
        super().__init__()
        self.ae, self.dyn = world.ae, world.dyn

    def forward(self, context, actions, pad, noise, context_noise):
        z, reward, done = self.dyn.sample(context, actions, pad, noise=noise, ctx_noise=context_noise)
        frame = to_uint8(self.ae.decode(z * self.dyn.latent_std)).permute(0, 2, 3, 1)
        return z, frame, reward, done


def ort():
    try:
        import onnxruntime
    except ImportError as e:
        raise SimulacraError("the onnx backend needs onnx and onnxruntime: pip install 'simulacra[fast]'") from e
    return onnxruntime


def random_inputs(world, B: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Valid random inputs for a batch of B (latent shape read off the autoencoder itself)."""
    g = torch.Generator().manual_seed(seed)
    H, W = world.config["frame_shape"][:2]
    with torch.no_grad():
        C, h, w = world.ae.encode(torch.zeros(1, 3, H, W, dtype=torch.uint8)).shape[1:]
    K = world.K
    actions = torch.from_numpy(world.action_space.sample(np.random.default_rng(seed), (B, K)))
    pad = torch.zeros(B, K, dtype=torch.bool)
    pad[:, : K - 1] = torch.arange(K - 1) < torch.randint(0, K, (B, 1), generator=g)  # 0..K-1 padded slots
    return {
        "context": torch.randn(B, K, C, h, w, generator=g),
        "actions": actions,
        "pad": pad,
        "noise": torch.randn(B, C, h, w, generator=g),
        "context_noise": torch.randn(B, K, C, h, w, generator=g),
    }


def fingerprint(world) -> str:
    """Hash of everything the graph bakes in: configs, action space, frame shape and every weight."""
    h = hashlib.sha256()
    meta = {"graph": GRAPH_VERSION, "opset": OPSET, "ae": asdict(world.ae.cfg), "dyn": asdict(world.dyn.cfg)}
    meta |= {k: world.config.get(k) for k in ("action_space", "frame_shape")}
    h.update(json.dumps(meta, sort_keys=True, default=str).encode())
    for prefix, module in (("ae.", world.ae), ("dyn.", world.dyn)):
        for name, t in module.state_dict().items():
            h.update(f"{prefix}{name}{tuple(t.shape)}{t.dtype}".encode())
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def sidecar_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def is_current(world, path: str | Path) -> bool:
    """True if ``path`` holds a graph exported from exactly this world (weights and configs)."""
    path = Path(path)
    try:
        meta = json.loads(sidecar_path(path).read_text())
    except (OSError, ValueError):
        return False
    return path.exists() and meta.get("fingerprint") == fingerprint(world)


def _torch_export(model: nn.Module, args: tuple, path: Path, exporter: str) -> str:
    """Export with the TorchScript exporter (fast, no extra dependency; deprecated in torch >= 2.9)
    or, where that is gone or asked for, the torch.export-based one (needs onnxscript)."""
    names = list(INPUTS) + list(OUTPUTS)
    if exporter in ("auto", "torchscript"):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    model, args, str(path), input_names=list(INPUTS), output_names=list(OUTPUTS),
                    opset_version=OPSET, dynamic_axes={n: {0: "batch"} for n in names}, dynamo=False,
                )  # fmt: skip
            return "torchscript"
        except Exception:
            if exporter == "torchscript":
                raise
    batch = torch.export.Dim("batch", min=1, max=65536)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, args, str(path), input_names=list(INPUTS), output_names=list(OUTPUTS), opset_version=OPSET,
            dynamic_shapes=tuple({0: batch} for _ in INPUTS), dynamo=True, external_data=False, verbose=False,
        )  # fmt: skip
    return "dynamo"


def export_step(world, path: str | Path, *, exporter: str = "auto", check: bool = True) -> dict:
    """Write the step graph to ``path`` (+ its JSON sidecar), check it against eager, return the sidecar."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = StepGraph(world).eval()
    example = random_inputs(world, 2)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    try:
        with torch.no_grad():
            used = _torch_export(model, tuple(example.values()), tmp, exporter)
        import onnx

        kept = {i.name for i in onnx.load(str(tmp), load_external_data=False).graph.input}  # unused ones are dropped
        example = {k: v for k, v in example.items() if k in kept}
        meta = {
            "format": "simulacra.step_onnx", "graph_version": GRAPH_VERSION, "opset": OPSET, "exporter": used,
            "torch": torch.__version__, "sampling_steps": world.dyn.cfg.sampling_steps,
            "inputs": {k: {"shape": ["batch", *v.shape[1:]], "dtype": str(v.dtype).removeprefix("torch.")} for k, v in example.items()},
            "outputs": list(OUTPUTS), "fingerprint": fingerprint(world),
        }  # fmt: skip
        if check:
            meta["check"] = check_step(world, OnnxStep(tmp, threads=2))
        layout.commit_file(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    layout.atomic_write(sidecar_path(path), json.dumps(meta, indent=1))
    return meta


def check_step(world, step: OnnxStep, batches=(1, 3), seed: int = 0) -> dict:
    """Max abs errors of ONNX Runtime vs eager on identical random inputs; raises above TOLERANCE."""
    model = StepGraph(world).eval()
    err = {"latents": 0.0, "frame": 0, "done": 0.0, "reward_mismatch": 0, "batches": list(batches)}
    for B in batches:
        x = random_inputs(world, B, seed + B)
        with torch.no_grad():
            ref = model(*x.values())
        out = step(*x.values())
        err["latents"] = max(err["latents"], float((out[0] - ref[0]).abs().max()))
        err["frame"] = max(err["frame"], int(np.abs(out[1].astype(int) - ref[1].numpy().astype(int)).max()))
        err["reward_mismatch"] += int((out[2] != ref[2]).sum())
        err["done"] = max(err["done"], float((out[3] - ref[3]).abs().max()))
    tol = tolerance(world)
    bad = {k: err[k] for k, t in tol.items() if err[k] > t}
    if bad:
        raise SimulacraError(f"exported step graph disagrees with eager PyTorch: {bad} (tolerance {tol})")
    return err


def tolerance(world) -> dict:
    """TOLERANCE, widened on latents to one 8-bit level where samples are snapped to the pixel grid: a
    float difference of 1e-6 flips the rounding of a value that lies on a half level."""
    tol = dict(TOLERANCE)
    if world.dyn.cfg.snap_to_pixels:
        tol["latents"] = max(tol["latents"], 1.001 / (127.5 * float(world.dyn.latent_std)))
    return tol


def default_path(world) -> Path:
    """``<world dir>/step.onnx``, or a per-fingerprint file in the user cache for worlds not on disk."""
    if getattr(world, "path", None) is not None and os.access(world.path, os.W_OK):
        return Path(world.path) / "step.onnx"
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "simulacra" / "onnx"
    return cache / f"step-{fingerprint(world)[:16]}.onnx"


def ensure_exported(world, path: str | Path) -> None:
    """Export the world's step graph to ``path`` unless a current one is there already."""
    ort()
    if not is_current(world, path):
        export_step(world, path)


class OnnxStep:
    """An ONNX Runtime session on the exported step graph (``simulacra export``), on the CPU."""

    def __init__(self, path: str | Path, threads: int = 2):
        rt = ort()
        opts = rt.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        opts.graph_optimization_level = rt.GraphOptimizationLevel.ORT_ENABLE_ALL
        # no busy-waiting: spinning threads starve everything else on shared cores
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = rt.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.inputs = {i.name for i in self.session.get_inputs()}  # unused ones (no context noise) are dropped
        self.path = Path(path)

    def __call__(self, context, actions, pad, noise, context_noise=None, decode: bool = True):
        feed = dict(zip(INPUTS, (context, actions, pad, noise, context_noise), strict=True))
        feed = {k: v.detach().cpu().contiguous().numpy() for k, v in feed.items() if k in self.inputs}
        z, frame, reward, done = self.session.run(list(OUTPUTS), feed)
        return torch.from_numpy(z), frame, torch.from_numpy(reward), torch.from_numpy(done)
