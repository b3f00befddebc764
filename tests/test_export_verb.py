"""`simulacra export` end to end: a trained debug world's step graph is written with its sidecar, checked
against eager PyTorch, and is the graph the onnx backend then steps with (frames equal to eager's)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import make_synthetic

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from simulacra.world import World  # noqa: E402
from simulacra.world.onnx import TOLERANCE, fingerprint, is_current, tolerance  # noqa: E402

SIM = [sys.executable, "-m", "simulacra.cli"]
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}  # 2 shared cores: oversubscribed threads crawl


def _sim(*args):
    return subprocess.run([*SIM, *args], capture_output=True, text=True, env=ONE_THREAD)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    make_synthetic(root / "ds", lengths=(30, 24, 20), frame=16)
    p = _sim("train", "--size", "debug", "--ae-steps", "5", "--dyn-steps", "20", "--no-tensorboard",
             "--data", str(root / "ds"), "--out", str(root / "run"))  # fmt: skip
    assert p.returncode == 0, p.stderr[-3000:]
    return root / "run"


def test_export_verb_writes_a_checked_graph_the_onnx_backend_steps_with(run):
    world_dir = run / "world"
    assert not (world_dir / "step.onnx").exists()
    p = _sim("export", str(run), "--seconds", "0")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    graph, side = world_dir / "step.onnx", world_dir / "step.onnx.json"
    assert f"wrote {graph}" in p.stdout and "check vs eager" in p.stdout
    assert graph.stat().st_size > 0
    meta = json.loads(side.read_text())
    eager = World.load(run)
    assert meta["fingerprint"] == fingerprint(eager) and is_current(eager, graph)
    assert meta["sampling_steps"] == eager.dyn.cfg.sampling_steps
    check = meta["check"]  # the errors the verb reported, within the tolerance the export enforces
    assert check["latents"] <= tolerance(eager)["latents"] and check["done"] <= TOLERANCE["done"]
    assert check["frame"] <= TOLERANCE["frame"] and check["reward_mismatch"] == 0
    assert f"frames {check['frame']} gray level(s)" in p.stdout

    written = graph.stat().st_mtime_ns
    fast = World.load(run, backend="onnx")
    assert fast.backend == "onnx" and graph.stat().st_mtime_ns == written  # the verb's graph, not a re-export

    rng = np.random.default_rng(0)
    ctx = rng.integers(0, 256, size=(3, eager.K, 16, 16, 3), dtype=np.uint8)
    ctx_a = eager.action_space.sample(rng, (3, eager.K - 1))
    a = eager.action_space.sample(rng, (3,))
    (_, f0, r0, d0), (_, f1, r1, d1) = (w.step(w.reset(ctx, ctx_a), a, w.generator(5)) for w in (eager, fast))
    assert f0.shape == f1.shape == (3, 16, 16, 3) and f1.dtype == np.uint8
    assert np.abs(f1.astype(int) - f0.astype(int)).max() <= TOLERANCE["frame"]
    assert np.array_equal(r0, r1) and np.array_equal(d0, d1)
    acts = eager.action_space.sample(rng, (3, 5))
    (_, g0, _, _), (_, g1, _, _) = (w.rollout(w.reset(ctx, ctx_a), acts, w.generator(6)) for w in (eager, fast))
    assert np.abs(g1.astype(int) - g0.astype(int)).max() <= 2  # float error compounds a little per step


def test_export_verb_without_a_world_is_a_one_line_error(tmp_path):
    p = _sim("export", str(tmp_path / "nothing"), "--seconds", "0")
    assert p.returncode == 1 and "Traceback" not in p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("simulacra export: error:") and "world.json" in lines[0]


pytestmark = pytest.mark.usefixtures("one_torch_thread")
