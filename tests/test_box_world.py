"""Box (continuous) actions through train and eval: a debug world trained on a Box data set is evaluated
end to end (the IDM regresses the scaled actions: R^2), and the Box IDM reads visible actions."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import make_synthetic

from simulacra.eval import idm
from simulacra.spaces import ActionSpace

SIM = [sys.executable, "-m", "simulacra.cli"]
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}  # 2 shared cores: oversubscribed threads crawl
TINY = dict(horizon=5, starts=2, drift_steps=8, drift_starts=2, idm_steps=10, idm_pairs=24, pool_frames=40)
TINY |= dict(speed_steps=2, speed_batch=2, videos=1, batch_size=8, delta_horizon=4, probe_steps=5, critic_clips=16)
TINY |= dict(critic_steps=3, event_steps=64)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _sim(*args):
    return subprocess.run([*SIM, *args], capture_output=True, text=True, env=ONE_THREAD)


def _finite(x) -> bool:
    if isinstance(x, dict):
        return all(_finite(v) for v in x.values())
    if isinstance(x, list):
        return all(_finite(v) for v in x)
    return not isinstance(x, float) or math.isfinite(x)


def test_box_world_trains_and_evaluates(tmp_path):
    make_synthetic(tmp_path / "ds", lengths=(30, 24, 20), discrete=False, frame=32)
    make_synthetic(tmp_path / "other", lengths=(20, 18, 16), discrete=False, frame=32, seed=1)
    run = tmp_path / "run"
    p = _sim("train", "--size", "debug", "--ae-steps", "5", "--dyn-steps", "20", "--no-tensorboard",
             "--data", str(tmp_path / "ds"), "--out", str(run))  # fmt: skip
    assert p.returncode == 0, p.stderr[-3000:]
    space = json.loads((run / "world/world.json").read_text())["action_space"]
    assert ActionSpace.from_json(space) == ActionSpace.box([-1, -1], [1, 1])

    flags = [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()]
    p = _sim("eval", "--run", str(run), "--data", str(tmp_path / "other"), "--no-onnx", *flags)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "controllability: IDM r2 real" in p.stdout
    m = json.loads((run / "eval/metrics.json").read_text())
    assert m["action_space"]["type"] == "box" and m["heldout"]["kind"] == "data"
    ol = m["open_loop"]
    for k in ("model", "copy_last"):
        assert len(ol["psnr"][k]) == 5 and all(v is not None and math.isfinite(v) for v in ol["psnr"][k])
    c = m["controllability"]
    assert c["metric"] == "r2" and "skipped" not in c
    for k in ("real_train", "real", "generated", "reconstructed", "generated_real_first"):
        assert set(c[k]) == {"mse", "r2"} and math.isfinite(c[k]["r2"]) and c[k]["mse"] >= 0, k
    assert c["chance"]["r2"] == 0.0 and c["chance"]["mse"] > 0
    assert c["delta_horizon"] == 4 and math.isfinite(c["delta_psnr"])
    assert m["drift"]["steps"] == 8 and m["speed"]["eager"]["batch_2"]["frames_per_s"] > 0
    assert _finite(m)


def _tinted(n_eps=8, L=50, size=32, seed=0):
    """Frame t+1 is tinted by Box action t (red = a0, green = a1) behind a wandering square: the
    actions are visible, if not where a sprite is."""
    rng = np.random.default_rng(seed)
    frames, actions = [], []
    for _ in range(n_eps):
        pos = rng.integers(0, size, 2)
        a = rng.uniform(-1, 1, (L, 2)).astype(np.float32)
        f = np.full((L + 1, size, size, 3), 128, np.uint8)
        for t in range(L + 1):
            if t:
                f[t, ..., :2] = np.round(128 + 100 * a[t - 1])
            f[t][np.ix_(np.arange(pos[0], pos[0] + 4) % size, np.arange(pos[1], pos[1] + 4) % size)] = 240
            pos = (pos + rng.integers(-2, 3, 2)) % size
        frames.append(f)
        actions.append(a)
    return frames, actions


def test_box_idm_reads_visible_actions_and_fails_on_invisible_ones():
    space = ActionSpace.box([-1, -1], [1, 1])
    frames, actions = _tinted()
    test = idm.transitions(frames[6:]) + np.array([6, 0])
    model = idm.fit(frames[:6], actions[:6], space, steps=80, batch=32, lr=1e-3)
    assert idm.score(model, *idm.take(frames, actions, test))["r2"] > 0.8
    rng = np.random.default_rng(1)  # same frames, actions unrelated to them: nothing to read
    shuffled = [rng.uniform(-1, 1, a.shape).astype(np.float32) for a in actions]
    blind = idm.fit(frames[:6], shuffled[:6], space, steps=80, batch=32, lr=1e-3)
    assert idm.score(blind, *idm.take(frames, shuffled, test))["r2"] < 0.15
    assert idm.chance(space, np.array([[-1, 1], [1, -1]], np.float32)) == {"mse": 1.0, "r2": 0.0}
