"""The ONNX Runtime step graph equals eager PyTorch, and a world on the onnx backend streams like one on torch."""

import json
from dataclasses import asdict

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from simulacra.models.autoencoder import Autoencoder, AutoencoderConfig  # noqa: E402
from simulacra.models.dynamics import Dynamics, DynamicsConfig  # noqa: E402
from simulacra.world import TorchStep, World  # noqa: E402
from simulacra.world.onnx import (  # noqa: E402
    TOLERANCE,
    OnnxStep,
    StepGraph,
    export_step,
    is_current,
    random_inputs,
    tolerance,
)

SPACES = {
    "discrete": {"type": "discrete", "n": 5, "start": 0},
    "box": {"type": "box", "shape": [2], "low": [-1.0, 0.0], "high": [1.0, 2.0], "dtype": "float32"},
}

# the debug size's models (small enough that exporting takes seconds)
DEBUG_AE = {"channels": 16, "latent_channels": 4, "blocks": 1}
DEBUG_DYN = {"context": 2, "channels": 16, "channel_mult": (1, 2), "cond_dim": 32}


def make_world(kind: str, frame: int = 32) -> World:
    torch.manual_seed(0)
    ae = Autoencoder(AutoencoderConfig(**DEBUG_AE))
    # the discrete world is configured as `train` configures one on pixels: snapped samples, change gate
    pixels = {"snap_to_pixels": True, "change_gate": True} if kind == "discrete" else {}
    dyn = Dynamics(DynamicsConfig(**DEBUG_DYN, **pixels), ae.latent_channels, SPACES[kind])
    with torch.no_grad():  # zero-initialised convs would leave half the graph trivially equal
        for p in dyn.parameters():
            p.add_(0.05 * torch.randn_like(p))
    config = {"autoencoder": asdict(ae.cfg), "dynamics": asdict(dyn.cfg), "action_space": SPACES[kind]}
    return World(ae, dyn, config | {"frame_shape": [frame, frame, 3]})


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module", params=["discrete", "box"])
def saved(request, tmp_path_factory):
    """A debug-size world saved to disk with its step graph exported once (export costs seconds)."""
    path = tmp_path_factory.mktemp(request.param)
    world = make_world(request.param)
    world.save(path)
    meta = export_step(world, path / "step.onnx")
    return request.param, path, meta


def test_graph_matches_eager(saved):
    kind, path, meta = saved
    assert meta["sampling_steps"] == DynamicsConfig().sampling_steps
    assert set(meta["inputs"]) == {"context", "actions", "pad", "noise", "context_noise"}
    assert meta["inputs"]["actions"]["dtype"] == ("int64" if kind == "discrete" else "float32")
    assert json.loads((path / "step.onnx.json").read_text())["fingerprint"] == meta["fingerprint"]
    world = World.load(path)
    step, model = OnnxStep(path / "step.onnx"), StepGraph(world).eval()
    for B in (1, 5):  # dynamic batch axis (exported at 2)
        x = random_inputs(world, B, seed=10 + B)
        with torch.no_grad():
            z, frame, reward, done = model(*x.values())
        oz, oframe, oreward, odone = step(*x.values())
        assert oz.shape == z.shape and oframe.shape == frame.shape == (B, 32, 32, 3) and oframe.dtype == np.uint8
        # snapped latents may round the other way at a half-level boundary: one 8-bit level, and rarely
        level = 2 / 255 / float(world.dyn.latent_std) if world.dyn.cfg.snap_to_pixels else 0.0
        diff = (oz - z).abs()
        assert diff.max() <= max(TOLERANCE["latents"], level * 1.001)
        assert int((diff > TOLERANCE["latents"]).sum()) <= 2  # a boundary case, not a different graph
        assert np.abs(oframe.astype(int) - frame.numpy().astype(int)).max() <= TOLERANCE["frame"]
        assert (odone - done).abs().max() <= TOLERANCE["done"]
        assert torch.equal(oreward, reward)


def test_onnx_world_streams_like_torch(saved):
    kind, path, _ = saved
    eager, fast = World.load(path), World.load(path, backend="onnx")
    assert isinstance(fast.step_fn, OnnxStep) and isinstance(eager.step_fn, TorchStep)
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(2, 3, 32, 32, 3), dtype=np.uint8)  # batch of 2, 3 frames of context
    n = 6
    if kind == "discrete":
        actions = rng.integers(0, 5, size=(2, n))
    else:
        actions = np.stack([rng.uniform(-1, 1, (2, n)), rng.uniform(0, 2, (2, n))], -1).astype(np.float32)
    out = [w.rollout(w.reset(frames), actions, w.generator(3))[1:] for w in (eager, fast)]
    (f0, r0, d0), (f1, r1, d1) = out
    assert f1.shape == f0.shape == (2, n, 32, 32, 3) and r1.shape == r0.shape == (2, n) and d1.dtype == bool
    # same seed, same noise draws: the dreams agree up to float error (which compounds a little per step)
    assert np.abs(f1.astype(int) - f0.astype(int)).max() <= 2
    # the latent side runs on the same backend: its next latents decode to the step's frame
    state = fast.reset(frames[:1])
    _, frame, reward, done = fast.step(state, actions[:1, 0], fast.generator(1))
    _, z, r, d = fast.latent_step(state, actions[:1, 0], fast.generator(1))
    assert frame.shape == (1, 32, 32, 3) and reward.shape == done.shape == (1,) and done.dtype == bool
    assert np.abs(fast.decode(z).astype(int) - frame.astype(int)).max() <= 1


def test_missing_or_stale_graph_is_reexported(tmp_path):
    world = make_world("discrete", frame=16)
    world.save(tmp_path)
    assert not (tmp_path / "step.onnx").exists()
    World.load(tmp_path, backend="onnx")  # missing: exported on first use
    graph = tmp_path / "step.onnx"
    assert graph.exists() and is_current(World.load(tmp_path), graph)
    first = graph.stat().st_mtime_ns
    World.load(tmp_path, backend="onnx")  # current: reused as is
    assert graph.stat().st_mtime_ns == first
    with torch.no_grad():  # new weights (a further training run) make the graph stale
        world.dyn.out[-1].bias.add_(0.1)
    world.save(tmp_path)
    assert not is_current(World.load(tmp_path), graph)
    fast = World.load(tmp_path, backend="onnx")
    assert graph.stat().st_mtime_ns != first and is_current(fast, graph)
    (tmp_path / "step.onnx.json").unlink()  # no sidecar: stale too
    assert not is_current(fast, graph)


def test_snapped_world_exports_within_one_pixel_level(tmp_path):
    """Snapping samples to the 8-bit grid turns a 1e-6 float difference at a half level into one whole
    level; the check allows exactly that on such worlds (and stays strict on the others)."""
    world = make_world("discrete", frame=16)
    world.dyn.cfg.snap_to_pixels = False
    assert tolerance(world) == TOLERANCE
    world.dyn.cfg.snap_to_pixels = True
    world.dyn.latent_std.fill_(0.5)
    one_level = 1 / (127.5 * 0.5)
    assert one_level < tolerance(world)["latents"] < 1.01 * one_level
    meta = export_step(world, tmp_path / "step.onnx")  # exports, then checks against eager
    assert meta["check"]["latents"] <= tolerance(world)["latents"] and meta["check"]["frame"] <= 1
