"""The fidelity metrics can fail: a frozen world scores motion 0 and state fidelity <= 0, an oracle world
(the real future) scores about 1 and a discriminator near 50%, shuffled state labels break the probe, and
the event scores count what they should. Worlds here are arrays: a bouncing square whose position is the state."""

import numpy as np
import pytest

from simulacra.data.state import step_events
from simulacra.eval import critic, fidelity, probe, verdict
from simulacra.eval.heldout import Heldout

pytestmark = pytest.mark.usefixtures("one_torch_thread")

S = 32  # frame side


def bouncing(n_frames: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A 4x4 white square bouncing in a 32x32 frame: frames (T, S, S, 3) and its true (x, y) per frame."""
    rng = np.random.default_rng(seed)
    pos = rng.uniform(0, S - 4, 2)
    vel = rng.uniform(1, 2.5, 2) * rng.choice([-1, 1], 2)
    frames = np.zeros((n_frames, S, S, 3), np.uint8)
    states = np.zeros((n_frames, 2), np.float32)
    for t in range(n_frames):
        x, y = pos.astype(int)
        frames[t, y : y + 4, x : x + 4] = 255
        states[t] = pos
        pos = pos + vel
        for d in range(2):
            if not 0 <= pos[d] <= S - 4:
                vel[d] = -vel[d]
                pos[d] = np.clip(pos[d], 0, S - 4)
    return frames, states


def heldout(n_seg: int = 6, length: int = 120) -> Heldout:
    h = Heldout({"notes": []}, state_names=["x", "y"])
    for g in range(n_seg):
        f, st = bouncing(length, g)
        h.frames.append(f)
        h.actions.append(np.zeros(length - 1, np.int64))
        h.states.append(st)
    h.split_a, h.split_b = list(range(n_seg // 2)), list(range(n_seg // 2, n_seg))
    return h


def open_loop_arrays(h: Heldout, K: int = 2, H: int = 20, world: str = "oracle") -> dict:
    starts = [(g, s) for g in range(len(h.frames)) for s in (K - 1, 40, 80)]
    ctx = np.stack([h.frames[g][s - K + 1 : s + 1] for g, s in starts])
    real = np.stack([h.frames[g][s + 1 : s + 1 + H] for g, s in starts])
    gen = real.copy() if world == "oracle" else np.repeat(ctx[:, -1:], H, 1)
    return {"ctx": ctx, "real": real, "gen": gen, "mask": np.ones((len(starts), H), bool), "starts": starts}


def test_motion_frozen_is_zero_oracle_is_one():
    h = heldout(2)
    oracle, frozen = open_loop_arrays(h), open_loop_arrays(h, world="frozen")
    m_o = fidelity.motion(oracle["ctx"][:, -1], oracle["real"], oracle["gen"], oracle["mask"])
    m_f = fidelity.motion(frozen["ctx"][:, -1], frozen["real"], frozen["gen"], frozen["mask"])
    assert np.allclose(m_o["ratio"], 1.0)
    assert np.allclose(m_f["ratio"], 0.0)
    assert verdict._motion_bar(m_o)["pass"] is True
    assert verdict._motion_bar(m_f)["pass"] is False


@pytest.fixture(scope="module")
def trained_state():
    h = heldout()
    cfg = type("Cfg", (), {"probe_steps": 300, "rng_seed": 0})()
    _, pr = fidelity.state(h, cfg, open_loop_arrays(h))
    return h, cfg, pr


def test_state_probe_oracle_near_one_frozen_at_most_zero(trained_state):
    h, cfg, pr = trained_state
    oracle, _ = fidelity.state(h, cfg, open_loop_arrays(h), trained=pr)
    frozen, _ = fidelity.state(h, cfg, open_loop_arrays(h, world="frozen"), trained=pr)
    assert oracle["valid"] and set(oracle["kept"]) == {"x", "y"}
    f16 = oracle["fidelity"][15]
    assert f16 > 0.7, oracle["fidelity"]
    assert frozen["fidelity"][15] <= 0.0
    assert verdict._state_bar(oracle)["pass"] is True
    assert verdict._state_bar(frozen)["pass"] is False


def test_shuffled_state_labels_break_the_probe(trained_state):
    h, cfg, _ = trained_state
    rng = np.random.default_rng(0)
    shuffled = Heldout(h.source, h.frames, h.actions, h.split_a, h.split_b,
                       [s[rng.permutation(len(s))] for s in h.states], h.state_names)  # fmt: skip
    out, _ = fidelity.state(shuffled, cfg, open_loop_arrays(shuffled))
    assert out["valid"] is False and "reads none" in out["invalid_reason"]
    assert out["kept"] == []
    assert verdict._state_bar(out)["pass"] is None


def test_probe_needs_state():
    h = heldout(2)
    h.states = [None, None]
    out, pr = fidelity.state(h, None, {})
    assert pr is None and "no true state" in out["skipped"]


def test_critic_oracle_near_chance_frozen_caught():
    h = heldout(8, 80)
    rng = np.random.default_rng(0)

    def clips(groups, n):
        st = [(g, s) for g in groups for s in range(1, 80 - 17)]
        st = [st[i] for i in rng.choice(len(st), n, replace=False)]
        real = np.stack([h.frames[g][s + 1 : s + 17] for g, s in st])
        frozen = np.repeat(np.stack([h.frames[g][s][None] for g, s in st]), 16, 1)
        return real, frozen

    ra, fa = clips(range(4), 96)
    rb, fb = clips(range(4, 8), 96)
    rb2, _ = clips(range(4, 8), 96)  # other real clips from the same episodes: an oracle world's output
    model = critic.fit(ra, fa, steps=60, seed=0)
    caught = critic.score(model, rb, fb)
    assert caught["accuracy"] > 0.9 and caught["interval95"][0] > 0.5
    oracle = critic.fit(ra, ra[rng.permutation(len(ra))], steps=60, seed=0)
    o = critic.score(oracle, rb, rb2)
    assert 0.3 <= o["accuracy"] <= 0.7, o  # real vs real: about 50%
    assert verdict._clips_bar({"model": o, "copy_last": caught, "valid": True})["pass"] is True
    assert verdict._clips_bar({"model": caught, "copy_last": caught, "valid": True})["pass"] is False
    # a critic that barely tells a frozen world from reality (Freeway's small cars: 59%) cannot pass a world
    weak = {**caught, "accuracy": 0.59, "interval95": [0.53, 0.65]}
    assert "invalid" in verdict._clips_bar({"model": o, "copy_last": weak, "valid": True})["note"]


def test_wilson_interval():
    lo, hi = critic.wilson(50, 100)
    assert lo < 0.5 < hi and hi - lo == pytest.approx(0.192, abs=0.01)
    assert critic.wilson(0, 0) == (0.0, 1.0)


def test_event_matching_with_tolerance():
    real = np.zeros((1, 10), bool)
    real[0, [2, 7]] = True
    pred = np.zeros((1, 10), bool)
    pred[0, [3, 5]] = True
    mask = np.ones((1, 10), bool)
    exact = fidelity.match(pred, real, mask, 0)
    assert exact == {"real": 2, "predicted": 2, "precision": 0.0, "recall": 0.0}
    near = fidelity.match(pred, real, mask, 1)
    assert near["precision"] == 0.5 and near["recall"] == 0.5
    never = fidelity.match(np.zeros_like(real), real, mask, 1)
    assert never["recall"] == 0.0 and never["precision"] is None
    masked = fidelity.match(pred, real, np.zeros_like(mask), 1)
    assert masked["real"] == 0 and masked["recall"] is None


def test_base_rate_guesser_scores_the_rate():
    rng = np.random.default_rng(0)
    real = rng.random((50, 200)) < 0.05
    b = fidelity.base_rate(real, np.ones_like(real), 0, rng)
    assert b["rate"] == pytest.approx(0.05, abs=0.01)
    assert b["precision"] == pytest.approx(0.05, abs=0.02) and b["recall"] == pytest.approx(0.05, abs=0.02)


def test_step_events_from_arrays():
    ev = step_events({"reward": np.array([0, 1, 0, -1.0]), "terminated": np.array([0, 0, 0, 1], bool),
                      "lives": np.array([3, 3, 2, 2, 1])})  # fmt: skip
    assert ev["reward"].tolist() == [False, True, False, True]
    assert ev["termination"].tolist() == [False, False, False, True]
    assert ev["life_loss"].tolist() == [False, True, False, True]
    assert step_events({"reward": np.zeros(2), "terminated": np.zeros(2, bool)})["life_loss"] is None


def test_event_bar_needs_recall_and_precision():
    base = {"precision": 0.01, "recall": 0.01}
    sec = lambda p, r: {"teacher_forced": {"real": 10, "predicted": 10, "precision": p, "recall": r},  # noqa: E731
                        "teacher_forced_base_rate": base}  # fmt: skip
    ev = {"teacher_forced_steps": 100, "reward": sec(0.6, 0.8), "termination": sec(0.1, 0.2)}
    assert verdict._event_bar(ev, "reward")["pass"] is True
    assert verdict._event_bar(ev, "termination")["pass"] is False
    ev["reward"] = sec(0.4, 0.9)  # recall without precision: a head that fires everywhere
    assert verdict._event_bar(ev, "reward")["pass"] is False
    dense = {"rate": 1.0, "precision": 1.0, "recall": 1.0}  # Pendulum: a reward on every step
    ev["reward"] = {"teacher_forced": {"real": 100, "predicted": 100, "precision": 1.0, "recall": 1.0},
                    "teacher_forced_base_rate": dense}  # fmt: skip
    assert verdict._event_bar(ev, "reward")["pass"] is None
    ev["reward"] = {"teacher_forced": {"real": 0, "predicted": 0, "precision": None, "recall": None},
                    "teacher_forced_base_rate": base}  # fmt: skip
    assert verdict._event_bar(ev, "reward")["pass"] is None


def test_probe_readings_in_range(trained_state):
    h, _, pr = trained_state
    real_states = np.concatenate(h.states)
    assert probe.in_range(pr, np.concatenate(h.frames), real_states) > 0.9
    real = np.array([[0.0, 0.0], [1.0, 2.0]])
    assert probe.range_fraction(np.array([[0.5, 1.0], [0.5, 2.1]]), real) == 1.0  # inside, or within 10% of the range
    assert probe.range_fraction(np.array([[0.5, 9.0], [-5.0, 1.0]]), real) == 0.5  # a score of 9,999


def test_probe_reads_a_small_object_on_a_still_court():
    """Pong's case: a one-pixel-wide paddle of low contrast on a uniform court. The probe must read its
    height; on raw frames (no mean-frame subtraction) it learned nothing on Pong (R^2 0 for every byte)."""
    rng = np.random.default_rng(0)
    frames, states = [], []
    for _ in range(6):
        y = rng.uniform(0, S - 6, 200)
        f = np.zeros((200, S, S, 3), np.uint8)
        f[:] = (144, 72, 17)  # Pong's court colour
        f[:, :2] = (236, 236, 236)  # the walls
        for t, v in enumerate(y.astype(int)):
            f[t, v : v + 6, 28] = (92, 186, 92)  # the paddle: a 1x6 bar
        frames.append(f)
        states.append(y[:, None].astype(np.float32))
    pr = probe.fit(frames, states, ["paddle_y"], steps=300, seed=0)
    assert pr is not None and pr.r2_val[0] > 0.8, pr.r2_val
