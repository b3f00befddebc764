"""The eval says what its numbers mean: an IDM blind on real pairs makes controllability invalid (and
shows no ratio), motionless held-out starts are flagged, rollouts past their real episode are marked,
the verdict per bar passes and fails; the train budget warns when it cuts hard and raises the count
again when the rate recovers; train's output has no carriage returns when it is not a terminal."""

import json
import logging
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import make_synthetic
from safetensors.numpy import load_file

from simulacra.eval import EvalConfig, evaluate, measure, report, verdict
from simulacra.eval.heldout import Heldout
from simulacra.loop import CALIBRATE, MARGIN, WARMUP_UNTIMED, Budget, LoopConfig, fit, lr_lambda
from simulacra.spaces import ActionSpace

CAL = WARMUP_UNTIMED + CALIBRATE
SIM = [sys.executable, "-m", "simulacra.cli"]
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---- a world that is reality: a square moved by the action ----------------------------------------
MOVES = np.array([(0, 3), (0, -3), (3, 0), (-3, 0)])


def square_segments(n=6, L=60, size=16, still=0, seed=0):
    """Segments of a 4x4 square moved 3 px by each action (visible actions); the first ``still`` frames
    of each segment stand still (the actions then do nothing: a game's motionless intro)."""
    rng = np.random.default_rng(seed)
    frames, actions = [], []
    for _ in range(n):
        pos, a = rng.integers(0, size, 2), rng.integers(0, 4, L)
        f = np.full((L + 1, size, size, 3), 20, np.uint8)
        for t in range(L + 1):
            f[t][np.ix_(np.arange(pos[0], pos[0] + 4) % size, np.arange(pos[1], pos[1] + 4) % size)] = 230
            if t < L and t >= still:
                pos = (pos + MOVES[a[t]]) % size
        frames.append(f)
        actions.append(a)
    return frames, actions


class SquareWorld:
    """Steps the square exactly as `square_segments` does: a perfect world model of it."""

    K = 2
    action_space = ActionSpace.discrete(4)
    config: dict = {}

    def generator(self, seed):
        return torch.Generator().manual_seed(seed)

    def reset(self, frames, actions=None):
        return np.array(frames[:, -1])

    def encode(self, frames):
        return frames

    def decode(self, latents):
        return latents

    def rollout(self, state, actions, generator):
        out, cur = [], state.copy()
        for t in range(actions.shape[1]):
            cur = np.stack([np.roll(c, tuple(MOVES[int(a)]), (0, 1)) for c, a in zip(cur, actions[:, t], strict=True)])
            out.append(cur)
        T = actions.shape[1]
        return cur, np.stack(out, 1), np.zeros((len(cur), T)), np.zeros((len(cur), T), bool)


def heldout(frames, actions) -> Heldout:
    n = len(frames)
    return Heldout({}, list(frames), list(actions), list(range(n // 2)), list(range(n // 2, n)))


CFG = dict(horizon=16, starts=4, idm_steps=100, idm_pairs=200, batch_size=32, delta_horizon=4)


def test_idm_blind_on_real_pairs_is_invalid_and_shows_no_ratio(capsys):
    frames, actions = square_segments()
    rng = np.random.default_rng(1)
    blind = [rng.integers(0, 4, len(a)) for a in actions]  # actions that do not affect the frames
    world, cfg, h = SquareWorld(), EvalConfig(**CFG), heldout(frames, blind)
    ol, arrays = measure.open_loop(world, h, cfg)
    c = measure.controllability(world, h, cfg, np.random.default_rng(0), arrays)
    need = verdict.chance_bound(c["chance"]["accuracy"], c["pairs"])
    assert c["real"]["accuracy"] <= need < 0.35
    assert c["valid"] is False and "not clearly above chance" in c["invalid_reason"]
    assert c["ratio"] is None and c["ratio_above_chance"] is None and c["ratio_vs_autoencoder"] is None
    bar = verdict.verdicts({"open_loop": _ol(), "controllability": c, "speed": {}})["idm_ratio"]
    assert bar["pass"] is None and bar["value"] is None and bar["note"].startswith("invalid: ")
    report.print_summary({"open_loop": ol, "controllability": c, "drift": {}, "speed": {}})
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("controllability"))
    assert "ratio invalid: the IDM scores" in line and not re.search(r"ratio -?\d", line)
    rows = report._ctl_rows(c)
    assert [r[1] for r in rows[-3:]] == ["invalid: see the note above"] * 3
    # the same frames with the actions that moved the square: valid, and a perfect world's ratio is 1
    h = heldout(frames, actions)
    _, arrays = measure.open_loop(world, h, cfg)
    c = measure.controllability(world, h, cfg, np.random.default_rng(0), arrays)
    need = verdict.chance_bound(c["chance"]["accuracy"], c["pairs"])
    assert c["valid"] is True and "invalid_reason" not in c and c["real"]["accuracy"] > need + 0.1
    assert c["ratio"] == pytest.approx(1.0)
    assert verdict.verdicts({"open_loop": _ol(), "controllability": c, "speed": {}})["idm_ratio"]["pass"] is True


def test_box_idm_needs_r2_clearly_above_zero():
    ctl = {"metric": "r2", "pairs": 500, "real": {"r2": 0.03}, "chance": {"r2": 0.0}}
    assert "not clearly above 0" in verdict.idm_check(ctl)
    assert verdict.idm_check({**ctl, "real": {"r2": 0.4}}) is None


def test_motionless_starts_are_flagged_and_left_out_of_the_moving_psnr(capsys):
    frames, actions = square_segments(n=4, L=60, still=20)  # every segment begins with 20 still frames
    world, cfg = SquareWorld(), EvalConfig(**CFG)
    ol, _ = measure.open_loop(world, heldout(frames, actions), cfg)
    starts = [tuple(s) for s in ol["starts"]]
    assert {s for g, s in starts} == {1, 15, 30, 44}  # K-1 .. L-H, evenly spaced
    assert ol["motionless_starts"] == 4 and ol["motionless"] == [[g, 1] for g in range(4)]
    assert ol["psnr_moving"]["rollouts"] == 12 and len(ol["motion"]["per_rollout"]) == 16
    # the still intros make copy-last exact (capped) there; over the moving starts it falls to reality's level
    assert ol["psnr"]["copy_last"][15] > ol["psnr_moving"]["copy_last"][15] + 5
    bar = verdict.verdicts({"open_loop": ol, "controllability": {"skipped": "-"}, "speed": {}})["psnr16_vs_copy_last"]
    assert bar["pass"] is True and "12 moving starts (4 motionless left out)" in bar["note"]
    report.print_summary({"open_loop": ol, "controllability": {}, "drift": {}, "speed": {}})
    out = capsys.readouterr().out
    assert "4 of 16 starts are motionless" in out and "PSNR copy, moving" in out
    assert "segment 0 step 1" in report._motionless_note(ol)
    # no still intro: nothing flagged, and no 'moving' rows
    ol, _ = measure.open_loop(world, heldout(*square_segments(n=4, L=60)), cfg)
    assert ol["motionless_starts"] == 0 and ol["motionless"] == []
    assert not any("moving" in r[0] for r in report._horizon_rows(ol)[1])


def _ol(model=30.0, copy=28.0, sharp=0.9, H=16, **kw) -> dict:
    return {
        "psnr": {"model": [model] * H, "copy_last": [copy] * H},
        "sharpness_ratio": [sharp] * H,
        "rollouts": 8,
        "motionless_starts": 0,
        **kw,
    }


def _fidelity(fid=0.7, motion=1.0, recall=0.8, precision=0.6, clip=0.6, drift=1.5) -> dict:
    """The fidelity sections of a metrics dict, as the eval writes them."""
    tf = {"real": 10, "predicted": 12, "precision": precision, "recall": recall}
    base = {"precision": 0.01, "recall": 0.01}
    clip_s = {"accuracy": clip, "interval95": [clip - 0.05, clip + 0.05], "real_clips": 100, "generated_clips": 100}
    return {
        "state": {"valid": True, "kept": ["x"], "fidelity": [fid] * 16,
                  "error": {"model": [0.2] * 16, "copy_last": [0.6] * 16, "real": [0.1] * 16}},
        "motion": {"ratio": [motion] * 16},
        "events": {"teacher_forced_steps": 500,
                   "reward": {"teacher_forced": tf, "teacher_forced_base_rate": base},
                   "termination": {"teacher_forced": tf, "teacher_forced_base_rate": base},
                   "life_loss": {"teacher_forced": tf, "teacher_forced_base_rate": base}},
        "clips": {"valid": True, "model": clip_s, "copy_last": {**clip_s, "accuracy": 0.99}},
        "drift": {"steps": 1024, "distance_real": 0.05, "at": {"1024": {"distance": 0.05 * drift, "distance_ratio": drift}}},
    }  # fmt: skip


def test_verdict_passes_a_good_world_and_fails_a_bad_one(capsys):
    ctl = {
        "metric": "accuracy",
        "valid": True,
        "ratio": 0.9,
        "generated": {"accuracy": 0.45},
        "real": {"accuracy": 0.5},
    }
    speed = {"eager": {"batch_1": {"frames_per_s": 40.0}}, "onnx": {"batch_1": {"frames_per_s": 75.0}}}
    good = verdict.verdicts({"open_loop": _ol(), "controllability": ctl, "speed": speed, **_fidelity()})
    assert set(good) == set(verdict.BARS) and all(v["pass"] is True for v in good.values())
    assert good["psnr16_vs_copy_last"] == {
        "pass": True,
        "value": 30.0,
        "threshold": 29.0,
        "note": "model 30.00 dB vs copy-last 28.00 dB @16",
    }
    assert good["frames_per_s_batch1"]["value"] == 75.0 and "best onnx" in good["frames_per_s_batch1"]["note"]
    bad = verdict.verdicts(
        {
            "open_loop": _ol(model=28.5, sharp=0.5),
            "controllability": {**ctl, "ratio": 0.7},
            "speed": {"eager": {"batch_1": {"frames_per_s": 40.0}}, "onnx": {"error": "no onnxruntime"}},
            **_fidelity(fid=0.2, motion=0.0, recall=0.0, precision=None, clip=0.9, drift=5.0),
        }
    )
    assert all(v["pass"] is False for v in bad.values())
    assert bad["sharpness16"]["value"] == 0.5 and bad["idm_ratio"]["threshold"] == 0.8
    # a short horizon is said; every start motionless is undecidable, not a pass
    short = verdict.verdicts({"open_loop": _ol(H=6), "controllability": ctl, "speed": speed})["psnr16_vs_copy_last"]
    assert short["pass"] is True and "@6 (the rollouts are 6 steps, not 16)" in short["note"]
    stills = _ol(motionless_starts=8, psnr_moving={"rollouts": 0, "model": [None] * 16, "copy_last": [None] * 16})
    still = verdict.verdicts({"open_loop": stills, "controllability": ctl, "speed": speed})["psnr16_vs_copy_last"]
    assert still["pass"] is None and still["note"].startswith("invalid: every held-out start is motionless")
    report.print_verdict({"verdict": bad})
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "verdict:" and len(out) == 1 + len(verdict.BARS)
    assert all(line.split()[0] == "FAIL" for line in out[1:])
    page = "".join(report._verdict_parts({"verdict": good}))
    assert page.count("<td class='text'>PASS</td>") == len(verdict.BARS)
    # a world that moves too much fails motion as surely as a frozen one
    assert verdict._motion_bar({"ratio": [1.0] * 8 + [1.5] * 8})["pass"] is False
    # the fidelity bars say n/a (never pass) where their measurement was skipped or is invalid
    na = verdict.verdicts({"open_loop": _ol(), "controllability": ctl, "speed": speed,
                           "state": {"skipped": "no state"}, "clips": {"valid": False, "invalid_reason": "blind"},
                           "events": {"skipped": "no step"}, "drift": {"steps": 256}})  # fmt: skip
    for k in ("state_fidelity16", "clips16", "reward_events", "termination_events", "life_loss_events", "drift1024",
              "motion1to16"):  # fmt: skip
        assert na[k]["pass"] is None, k


def test_real_panel_past_the_episode_end_is_hatched_and_captioned():
    real = np.full((1, 6, 48, 64, 3), 200, np.uint8)
    gen = np.zeros_like(real)
    mask = np.array([[True, True, True, True, False, False]])
    (pair,) = report.side_by_side(real, gen, mask)
    panel = pair[:, :, :64]
    assert (panel[:4] == 200).all()
    ended = panel[4]
    assert not (ended == ended[0, 0]).all() and not (ended == 64).all()  # not a blank panel
    colours = {tuple(c) for c in ended.reshape(-1, 3).tolist()}
    assert set(report.ENDED_STRIPES) <= colours and (ended.min(-1) > 200).sum() > 20  # the stripes and the caption
    np.testing.assert_array_equal(panel[5], report.ended_panel((48, 64, 3), 4))
    assert verdict.ended_at(mask) == [4] and verdict.ended_at(np.ones((1, 3), bool)) == [None]
    note = report._past_end_note([None, 4], shown=2, what="drift")
    assert "1 of 2 drift rollouts run past the end" in note and "rollout 2: step 4" in note and "masked" in note


# ---- the train budget -------------------------------------------------------------------------
def test_budget_warns_when_it_cuts_more_than_a_third():
    b = Budget(deadline=100.0, clock=lambda: 2.5, option="--dyn-steps")
    b.begin(0, plan=4000)
    for step in range(CAL):
        b.observe(step, 4000, now=step / 10.0)
    n = b.observe(CAL, 4000, now=2.5)
    assert n == CAL + int(97.5 * 10 * MARGIN) == 980
    line = b.shortfall("dynamics", n)
    assert "980 of its 4000 planned steps" in line and "measured 10 steps/s" in line and "1.6 min left" in line
    assert "pass --dyn-steps 4000" in line and "--minutes" in line and "load average" in line
    assert b.shortfall("dynamics", 2700) is None  # a cut of less than a third passes without a warning


class Clocked(torch.nn.Module):
    """One weight; ``clock`` advances ``slow`` s per forward call for the first ``until`` calls, 0.01 s after."""

    def __init__(self, slow=1.0, until=30):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(2))
        self.calls, self.t, self.slow, self.until = 0, 0.0, slow, until

    def clock(self) -> float:
        return self.t

    def forward(self, batch):
        self.t += self.slow if self.calls < self.until else 0.01
        self.calls += 1
        return ((self.w - batch["x"]) ** 2).mean(), {}


def _x(step, rank, world):
    return {"x": torch.ones(2)}


def test_fit_warns_once_and_raises_the_count_when_the_rate_recovers(tmp_path, caplog):
    cfg = LoopConfig(1000, 2, 1e-2, warmup=10, ckpt_every=10, log_every=10**9)
    model = Clocked()
    with caplog.at_level(logging.INFO, logger="simulacra"):
        result = fit(model, _x, cfg, tmp_path / "a", "toy", budget=Budget(100.0, clock=model.clock))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "98 of its 1000 planned steps" in warnings[0]  # 1 step/s at calibration
    assert sum("the rate recovered" in r.getMessage() for r in caplog.records) == 1  # said once, not per raise
    assert 98 < result.steps <= 1000 and model.calls == result.steps and model.t < 100.0
    assert result.metrics["lr"] == pytest.approx(1e-2 * lr_lambda(result.steps - 1, result.steps, 10))
    totals = {
        int(p.name[5:]): json.loads((p / "state.json").read_text())["total_steps"] for p in (tmp_path / "a").iterdir()
    }
    assert totals[result.steps] == result.steps and totals[10] == 1000 and totals[30] == 98
    # resumed after the last change of count: the recorded count and schedule, bit for bit
    after = min(s for s in totals if all(totals[t] == result.steps for t in totals if t >= s))
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / f"step_{after:07d}").rename(tmp_path / "b" / f"step_{after:07d}")
    again = Clocked()
    resumed = fit(again, _x, cfg, tmp_path / "b", "toy", resume=True, budget=Budget(0.0, clock=again.clock))
    assert resumed.steps == result.steps
    last = f"step_{result.steps:07d}/model.safetensors"
    np.testing.assert_array_equal(load_file(tmp_path / "a" / last)["w"], load_file(tmp_path / "b" / last)["w"])


def test_budget_raises_only_early_and_never_above_the_plan():
    b = Budget(deadline=100.0)
    b.begin(0, plan=10_000)
    for step in range(CAL):
        b.observe(step, 10_000, now=step)  # 1 step/s
    n = b.observe(CAL, 10_000, now=CAL)
    assert n == 98
    assert b.checkpoint(40, n, now=25.5) == 40 + int(74.5 * (35 / 20.5) * MARGIN)  # rate recovered: raised
    assert b.checkpoint(40, n, now=40.0) == n  # a steady 1 step/s never moves the count
    assert b.checkpoint(60, n, now=26.0) == n  # past the first half of the count: kept
    roomy = Budget(deadline=1e9)
    roomy.begin(0, plan=300)
    for step in range(CAL):
        roomy.observe(step, 300, now=step)
    assert roomy.observe(CAL, 300, now=CAL) == 300 and roomy.checkpoint(40, 200, now=25.1) == 300


# ---- end to end: train (not on a terminal) and eval on data whose actions do not show -------------
def test_train_output_off_a_terminal_has_no_carriage_returns_and_eval_says_what_it_means(tmp_path, capsys):
    make_synthetic(tmp_path / "ds", lengths=(30, 24, 20, 18), frame=64, block_frames=8)
    make_synthetic(tmp_path / "other", lengths=(20, 20, 16), frame=64, block_frames=8, seed=1)
    args = ["--size", "debug", "--ae-steps", "3", "--dyn-steps", "12", "--no-tensorboard", "--ckpt-every", "5"]
    p = subprocess.run(
        [*SIM, "train", *args, "--data", str(tmp_path / "ds"), "--out", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        env=ONE_THREAD,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    assert "\r" not in p.stdout + p.stderr
    progress = [x for x in p.stdout.splitlines() if x.startswith("[dynamics] step ")]
    assert progress[-1].startswith("[dynamics] step 12/12 (100%)") and len(progress) <= 11
    small = dict(horizon=6, starts=2, drift_steps=24, drift_starts=2, idm_steps=10, idm_pairs=48, pool_frames=60)
    small |= dict(speed_steps=3, speed_batch=4, videos=2, batch_size=8, onnx=False, probe_steps=5, critic_clips=16)
    small |= dict(critic_steps=3, event_steps=64)
    m = evaluate(EvalConfig(run=str(tmp_path / "run"), data=str(tmp_path / "other"), **small))
    out = capsys.readouterr().out
    c = m["controllability"]
    assert c["valid"] is False and c["invalid_reason"] and c["ratio"] is None
    saved = json.loads((tmp_path / "run/eval/metrics.json").read_text())
    assert saved["controllability"]["valid"] is False and saved["open_loop"]["motionless_starts"] == 0
    assert set(saved["verdict"]) == set(verdict.BARS) and saved["verdict"]["idm_ratio"]["pass"] is None
    assert all(set(v) == {"pass", "value", "threshold", "note"} for v in saved["verdict"].values())
    lines = out.splitlines()
    ctl_line = next(x for x in lines if x.startswith("controllability"))
    assert "ratio invalid:" in ctl_line and not re.search(r"ratio -?\d", ctl_line)
    at = lines.index("verdict:")
    assert (
        lines[at - 1].startswith("wrote ") and len(lines) == at + 1 + len(verdict.BARS) and "invalid:" in lines[at + 2]
    )
    assert any(e is not None for e in saved["drift"]["real_ended_at"])  # 24 steps from episodes of 16-20
    page = (tmp_path / "run/eval/report.html").read_text()
    assert page.index("<h2>Verdict</h2>") < page.index("<h2>Open loop")
    assert "<b>Invalid:</b>" in page and "drift rollouts run past the end of their real episode" in page
    assert "real ended at N" in page and (tmp_path / "run/eval/drift.mp4").stat().st_size > 0
