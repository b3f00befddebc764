"""Evaluation: the frame metrics, the inverse-dynamics model (it must be able to fail), and `simulacra eval`
end to end on a debug-size world."""

import json
import math
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import make_synthetic

from simulacra.eval import EvalConfig, evaluate, idm
from simulacra.eval import metrics as M
from simulacra.spaces import ActionSpace

SIM = [sys.executable, "-m", "simulacra.cli"]
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}  # 2 shared cores: oversubscribed threads crawl


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _img(seed=0, n=1, size=32):
    """Smooth-ish random RGB images (N, H, W, 3) uint8 with real structure at several scales."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, size // 4, size // 4, generator=g)
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = x + 0.25 * torch.rand(n, 3, size, size, generator=g)
    return (x.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()


def _blur(frames):
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    k = torch.ones(3, 1, 3, 3) / 9
    y = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k, groups=3)
    return y.round().byte().permute(0, 2, 3, 1).numpy()


# ---- metrics -----------------------------------------------------------------------------------
def test_psnr_identical_is_capped_and_matches_hand_value():
    a = _img(0, 2)
    assert np.allclose(M.psnr(a, a), M.PSNR_CAP)
    b = a.astype(np.int16).copy()
    b[...] = np.clip(b + 10, 0, 255)
    b = b.astype(np.uint8)
    mse = ((a / 255.0 - b / 255.0) ** 2).reshape(2, -1).mean(1)
    assert np.allclose(M.psnr(a, b), 10 * np.log10(1 / mse), atol=1e-3)
    assert M.psnr(a[None], b[None]).shape == (1, 2)  # any leading shape


def test_ssim_properties_and_hand_computed_constant_case():
    a, n = _img(1, 3), _img(2, 3)
    assert np.allclose(M.ssim(a, a), 1.0, atol=1e-6)
    noisy = np.clip(a.astype(np.int16) + np.random.default_rng(0).integers(-40, 41, a.shape), 0, 255).astype(np.uint8)
    assert (M.ssim(a, noisy) < 0.95).all() and (M.ssim(a, n) < M.ssim(a, noisy)).all()
    assert np.allclose(M.ssim(a, noisy), M.ssim(noisy, a), atol=1e-6)  # symmetric
    # constant images x = p, y = q: no variance, so SSIM = (2pq + C1) / (p^2 + q^2 + C1) exactly
    p, q = 100, 180
    x = np.full((1, 16, 16, 3), p, np.uint8)
    y = np.full((1, 16, 16, 3), q, np.uint8)
    pp, qq = p / 255, q / 255
    assert np.allclose(M.ssim(x, y), (2 * pp * qq + M.SSIM_C1) / (pp**2 + qq**2 + M.SSIM_C1), atol=1e-5)
    w = M.gaussian_window()
    assert w.shape == (11, 11) and math.isclose(float(w.sum()), 1.0, rel_tol=1e-6)


def test_blur_lowers_sharpness_ratio():
    a = _img(3, 4)
    lap_real, lap_blur = M.laplacian_var(a), M.laplacian_var(_blur(a))
    assert (lap_blur < 0.5 * lap_real).all()
    assert M.ratio(lap_blur.mean(), lap_real.mean()) < 0.5 and M.ratio(1.0, 0.0) is None
    assert M.laplacian_var(np.full((2, 16, 16, 3), 77, np.uint8)).tolist() == [0.0, 0.0]


def test_copy_last_baseline_on_a_constructed_sequence():
    """Frames get brighter by 8 each step: copy-last error grows with the horizon exactly as computed."""
    base = np.full((1, 16, 16, 3), 40, np.uint8)
    seq = np.concatenate([base + 8 * t for t in range(6)])  # frames 0..5
    K = 2
    ctx_last = seq[K - 1]
    real = seq[K:][None]  # horizons 1..4
    copy = np.broadcast_to(ctx_last[None, None], real.shape)
    got = M.psnr(copy, real)[0]
    want = [10 * np.log10(1 / (8 * k / 255) ** 2) for k in range(1, 5)]
    assert np.allclose(got, want, atol=1e-3) and (np.diff(got) < 0).all()
    mask = np.array([[True, True, True, False]])
    assert M.masked_mean(got[None], mask)[3] is None


def test_nearest_distance():
    pool = _img(4, 5)
    d = M.nearest_distance(pool[[2, 0]], pool)
    assert np.allclose(d, 0, atol=1e-3)
    q = np.clip(pool[:1].astype(np.int16) + 51, 0, 255).astype(np.uint8)
    assert 0 < M.nearest_distance(q, pool)[0] <= 0.2 + 1e-4


# ---- the inverse-dynamics model ----------------------------------------------------------------
def _square_world(n_eps=6, L=40, size=32, seed=0):
    """A 4x4 square moving by 3 px in one of four directions per action: the action is visible."""
    rng = np.random.default_rng(seed)
    moves = np.array([(0, 3), (0, -3), (3, 0), (-3, 0)])
    frames, actions = [], []
    for _ in range(n_eps):
        pos = rng.integers(0, size, 2)
        a = rng.integers(0, 4, L)
        f = np.full((L + 1, size, size, 3), 20, np.uint8)
        for t in range(L + 1):
            y, x = np.arange(pos[0], pos[0] + 4) % size, np.arange(pos[1], pos[1] + 4) % size
            f[t][np.ix_(y, x)] = 230
            if t < L:
                pos = (pos + moves[a[t]]) % size
        frames.append(f)
        actions.append(a)
    return frames, actions


def test_idm_reads_visible_actions_and_fails_on_invisible_ones():
    space = ActionSpace.discrete(4)
    frames, actions = _square_world(n_eps=10, L=60)
    test = idm.transitions(frames[8:]) + np.array([8, 0])
    model = idm.fit(frames[:8], actions[:8], space, steps=200, batch=32, lr=3e-3)
    assert idm.score(model, *idm.take(frames, actions, test))["accuracy"] > 0.9
    # same frames, actions unrelated to them: the IDM cannot beat chance on held-out pairs
    rng = np.random.default_rng(1)
    shuffled = [rng.integers(0, 4, len(x)) for x in actions]
    blind = idm.fit(frames[:8], shuffled[:8], space, steps=100, batch=32, lr=3e-3)
    assert idm.score(blind, *idm.take(frames, shuffled, test))["accuracy"] < 0.45
    assert idm.chance(space, np.array([0, 0, 1, 2]))["accuracy"] == 0.5


# ---- alignment: an oracle world that returns the real future ---------------------------------------
class Oracle:
    """Reads (episode, step) from pixel (0, 0) of the last context frame (make_synthetic writes them there)
    and returns the real frames that follow, ignoring actions: every 'model' metric must then equal reality."""

    K = 2
    action_space = ActionSpace.discrete(4)
    config: dict = {}

    def __init__(self, episodes):
        self.episodes = episodes

    def generator(self, seed):
        return torch.Generator().manual_seed(seed)

    def reset(self, frames, actions=None):
        assert frames.shape[1] == self.K and actions.shape == (len(frames), self.K - 1)
        return [(int(f[0, 0, 0]), int(f[0, 0, 1])) for f in frames[:, -1]]

    def encode(self, frames):
        return frames

    def decode(self, latents):
        return latents

    def rollout(self, state, actions, generator):
        assert isinstance(generator, torch.Generator) and len(actions) == len(state)
        T = actions.shape[1]
        out, rew, done = [], [], []
        for e, t in state:
            ep = self.episodes[e]
            f = ep["frames"]
            out.append(f[np.minimum(np.arange(t + 1, t + 1 + T), len(f) - 1)])
            steps = np.minimum(np.arange(t, t + T), len(f) - 2)
            rew.append(np.sign(ep["reward"][steps]))  # the heads know what really happened, too
            done.append(ep["terminated"][steps])
        return state, np.stack(out), np.stack(rew), np.stack(done)


def test_oracle_world_matches_reality_at_every_horizon(tmp_path, capsys):
    from simulacra.data import Dataset
    from simulacra.eval import heldout, measure

    eps = make_synthetic(tmp_path / "ds", lengths=(30, 25, 7, 20), frame=16)
    source = {"kind": "data", "path": "ds", "episodes": [0, 1, 2, 3], "notes": []}
    h = heldout.load(Dataset.open(tmp_path / "ds"), [0, 1, 2, 3], source, seed=0, min_frames=4)
    assert sorted(h.split_a + h.split_b) == [0, 1, 2, 3] and not set(h.split_a) & set(h.split_b)
    cfg = EvalConfig(**{**SMALL, "horizon": 12, "idm_steps": 5, "drift_steps": 10})
    world, rng = Oracle(eps), np.random.default_rng(0)
    ol, arrays = measure.open_loop(world, h, cfg)
    assert ol["psnr"]["model"] == [M.PSNR_CAP] * 12 and all(abs(v - 1) < 1e-6 for v in ol["ssim"]["model"])
    assert all(v < 15 for v in ol["psnr"]["copy_last"])  # noise frames: copying the last one is useless
    assert ol["sharpness_ratio"] == [1.0] * 12
    assert ol["count"][0] == ol["rollouts"] and ol["count"][-1] < ol["rollouts"]  # the 7-step episode ends early
    c = measure.controllability(world, h, cfg, rng, arrays)
    assert (
        c["real"] == c["generated"] == c["reconstructed"] == c["generated_real_first"]
        and c["ratio"] in (1.0, None)
        and c["delta_psnr"] == 0.0
    )
    d, _ = measure.drift(world, h, cfg, rng)
    assert d["distance_start"] > 0 and 0.8 < d["distance_ratio"] < 1.25
    from simulacra.eval import fidelity

    mo = fidelity.motion(arrays["ctx"][:, -1], arrays["real"], arrays["gen"], arrays["mask"])
    assert mo["ratio"] == [1.0] * 12
    ev = fidelity.events(world, h, cfg, rng, arrays)
    for kind in ("reward", "termination"):
        tf = ev[kind]["teacher_forced"]
        assert tf["real"] > 0 and tf["precision"] == tf["recall"] == 1.0, (kind, tf)
        assert ev[kind]["open_loop"]["recall"] == 1.0
    assert ev["reward"]["teacher_forced_base_rate"]["rate"] == 1.0  # synthetic rewards are never 0
    assert "skipped" in ev["life_loss"]  # no lives recorded
    assert capsys.readouterr().out == ""  # library code returns values; only the verb prints


def test_run_dirs(tmp_path, monkeypatch):
    """A run folder, its world folder (whose parent holds config.json) and a bare world folder."""
    from simulacra.errors import SimulacraError
    from simulacra.layout import resolve_run as run_dirs

    run, bare = tmp_path / "runs" / "r", tmp_path / "bare"
    for w in (run / "world", bare):
        w.mkdir(parents=True)
        (w / "world.json").write_text("{}")
    (run / "config.json").write_text("{}")
    assert run_dirs(run) == run_dirs(run / "world") == (run, run / "world")
    assert run_dirs(bare) == (bare, bare)
    monkeypatch.chdir(tmp_path)
    assert run_dirs(None) == (run.relative_to(tmp_path), (run / "world").relative_to(tmp_path))
    with pytest.raises(SimulacraError, match="no trained world"):
        run_dirs(tmp_path / "runs")


def test_fresh_episodes_are_recorded_silently_and_reused(tmp_path, capsys):
    """record_fresh records the preset's env through the library call (no config dump on stdout; its
    note goes to the log) and reuses episodes recorded alike."""
    pytest.importorskip("ale_py")
    from simulacra.data import Dataset
    from simulacra.eval import heldout
    from simulacra.presets import PRESETS

    world_cfg = {"preset": PRESETS["debug"].to_dict()}
    cfg = EvalConfig(episodes=1, num_envs=1, max_episode_steps=6)
    out, notes = heldout.record_fresh(world_cfg, cfg, tmp_path / "heldout")
    assert capsys.readouterr().out == ""
    ds = Dataset.open(out)
    assert len(ds) == 1 and ds.episodes[0].seed == cfg.seed and ds.episodes[0].length <= 6
    assert notes == []  # same env and policy as the preset (a --max-episode-steps cap is not a difference)
    _, notes = heldout.record_fresh(world_cfg, cfg, tmp_path / "heldout")
    assert any("reused" in n for n in notes) and capsys.readouterr().out == ""


# ---- end to end --------------------------------------------------------------------------------
SMALL = dict(horizon=6, starts=2, drift_steps=20, drift_starts=2, idm_steps=10, idm_pairs=24, pool_frames=60)
SMALL |= dict(speed_steps=3, speed_batch=4, videos=2, batch_size=8, probe_steps=5, critic_clips=16, critic_steps=3)
SMALL |= dict(event_steps=64)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    make_synthetic(root / "ds", lengths=(30, 24, 20, 18), frame=64, block_frames=8)
    make_synthetic(root / "other", lengths=(20, 20, 16), frame=64, block_frames=8, seed=1)
    args = ["train", "--size", "debug", "--ae-steps", "5", "--dyn-steps", "5", "--no-tensorboard"]
    p = subprocess.run(
        [*SIM, *args, "--data", str(root / "ds"), "--out", str(root / "run")],
        capture_output=True,
        text=True,
        env=ONE_THREAD,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    return root


def _finite(x):
    if isinstance(x, dict):
        return all(_finite(v) for v in x.values())
    if isinstance(x, list):
        return all(_finite(v) for v in x)
    return not isinstance(x, float) or math.isfinite(x)


def test_eval_end_to_end(trained):
    run = trained / "run"
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in SMALL.items()]
    p = subprocess.run(
        [*SIM, "eval", "--run", str(run), "--data", str(trained / "other"), *flags],
        capture_output=True,
        text=True,
        env=ONE_THREAD,
    )
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "PSNR model" in p.stdout and "controllability" in p.stdout
    m = json.loads((run / "eval/metrics.json").read_text())
    assert m["heldout"]["kind"] == "data" and m["heldout"]["episodes"] == [0, 1, 2]
    assert any("share env and seed with training" in n for n in m["heldout"]["notes"])  # synthetic seeds repeat
    ol = m["open_loop"]
    for k in ("psnr", "ssim"):
        assert len(ol[k]["model"]) == len(ol[k]["copy_last"]) == 6
        assert all(v is not None and math.isfinite(v) for v in ol[k]["model"] + ol[k]["copy_last"])
    assert len(ol["sharpness_ratio"]) == 6 and all(v > 0 for v in ol["sharpness_ratio"])
    c = m["controllability"]
    for k in ("real", "generated", "chance", "delta_psnr"):
        assert c[k] is not None, k
    # noise frames and random actions: the IDM cannot beat chance on real pairs, so there is no ratio figure
    assert c["ratio"] is not None if c["valid"] else c["ratio"] is None and c["invalid_reason"]
    assert set(m["verdict"]) == {"psnr16_vs_copy_last", "idm_ratio", "sharpness16", "frames_per_s_batch1",
                                 "state_fidelity16", "motion1to16", "reward_events", "termination_events",
                                 "life_loss_events", "clips16", "drift1024"}  # fmt: skip
    assert "no true state" in m["state"]["skipped"]  # synthetic data: no state recorded
    assert m["verdict"]["state_fidelity16"]["pass"] is None and len(m["motion"]["ratio"]) == 6
    assert m["events"]["reward"]["teacher_forced"]["real"] > 0
    assert 0 <= c["real"]["accuracy"] <= 1 and 0 <= c["generated"]["accuracy"] <= 1
    d = m["drift"]
    assert d["steps"] == 20 and len(d["distance_curve"]) == 20
    assert d["distance_end"] > 0 and d["distance_real"] > 0 and d["sharpness_ratio_end"] > 0
    assert m["speed"]["eager"]["batch_1"]["frames_per_s"] > 0 and m["speed"]["eager"]["batch_4"]["frames_per_s"] > 0
    assert m["config"]["horizon"] == 6 and m["seeds"]["rng_seed"] == 0 and m["date"] and m["machine"]["torch"]
    assert _finite(m)
    page = (run / "eval/report.html").read_text()
    svgs = re.findall(r"<svg.*?</svg>", page, re.S)
    assert len(svgs) >= 5
    for svg in svgs:
        ET.fromstring(svg)  # well-formed
    refs = re.findall(r"(?:src)='([^']+)'", page)
    assert {"openloop.mp4", "drift.mp4", "filmstrip.png", "filmstrip_long.png"} <= set(refs)
    for f in refs:
        assert (run / "eval" / f).stat().st_size > 0


def test_eval_falls_back_to_the_runs_holdout(trained, capsys):
    """Synthetic data has no env to record: eval uses the training data set's held-out episodes."""
    out = trained / "fallback"
    m = evaluate(EvalConfig(run=str(trained / "run"), out=str(out), **SMALL))
    assert m["heldout"]["kind"] == "holdout"
    held = json.loads((trained / "run/config.json").read_text())["holdout_episodes"]
    assert m["heldout"]["episodes"] == held and any("could not record" in n for n in m["heldout"]["notes"])
    assert (out / "metrics.json").exists() and (out / "report.html").exists()
    assert "PSNR model" in capsys.readouterr().out


@pytest.mark.parametrize("temperature", ["-0.5", "nan"])
def test_negative_temperature_is_a_one_line_error(trained, tmp_path, temperature):
    out = tmp_path / "eval"
    p = subprocess.run(
        [*SIM, "eval", "--run", str(trained / "run"), "--out", str(out), "--temperature", temperature],
        capture_output=True,
        text=True,
        env=ONE_THREAD,
    )
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines() == [
        f"simulacra eval: error: --temperature must be 0 or more, not {float(temperature)}"
    ]
    assert not out.exists()
