"""What the eval's numbers mean: the sanity checks by which a measurement declares itself invalid, the
starts where reality does not move, the rollouts that run past their real episode, and the verdict per bar.

A measurement whose reference fails its own sanity check carries ``valid: false`` and ``invalid_reason``
(see :func:`declare`); its derived figures are then left out (None) and shown as "invalid: <reason>".
Every check below states its margin, and the verdict reads only the metrics dict (so it can be run on
a metrics.json from elsewhere, or on constructed metrics).
"""

from __future__ import annotations

import math

import numpy as np

CHANCE_Z = 1.645
"""One-sided 95% normal quantile: an IDM's accuracy on n held-out real pairs must beat the majority-class
rate c by more than CHANCE_Z * sqrt(c (1 - c) / n) (the binomial 95% bound of a frame-blind guesser)."""
R2_MIN = 0.05
"""Box actions: R^2 on real held-out pairs must exceed this (and CHANCE_Z^2 / n, the R^2 that a predictor
uncorrelated with the actions reaches by chance at the 95% level on n pairs)."""
MOTIONLESS_DIFF = 5e-4
"""A held-out start is motionless when the mean |frame t+1 - frame t| of its real frames over the first
MOTION_STEPS rollout steps is below this, in [0, 1] pixel units (about 0.13 grey levels per pixel and
channel; at 64x64, two fully changed pixels per step)."""
MOTION_STEPS = 16

BARS = {
    "psnr16_vs_copy_last": "PSNR@16 at least copy-last + 1 dB (moving starts)",
    "idm_ratio": "IDM ratio (generated / real) at least 0.8",
    "sharpness16": "sharpness ratio @16 at least 0.8",
    "frames_per_s_batch1": "batch-1 frames/s at least 60 (best backend)",
    "state_fidelity16": "state fidelity @16 at least 0.5 (probe error at most half of copy-last's)",
    "motion1to16": "motion ratio within [0.7, 1.3] at every horizon 1..16",
    "reward_events": "teacher-forced reward-event recall at least 0.7 at precision at least 0.5",
    "termination_events": "teacher-forced termination recall at least 0.7",
    "life_loss_events": "teacher-forced life-loss recall at least 0.7 (envs that count lives)",
    "clips16": "clip discriminator accuracy at most 75% on 16-frame clips",
    "drift1024": "nearest-real distance ratio at step 1,024 at most 2",
}
"""The bars a world is held to (README), by their metrics.json key under ``verdict``."""
PSNR_MARGIN_DB, IDM_RATIO_MIN, SHARPNESS_MIN, FPS_MIN, BAR_HORIZON = 1.0, 0.8, 0.8, 60.0, 16
DENSE_RATE = 0.5
"""Events on more than this fraction of the steps (Pendulum's reward is nonzero on every step) are a dense
signal that a frame-blind guesser predicts as well: no event bar."""
FIDELITY_MIN, MOTION_BAND, RECALL_MIN, PRECISION_MIN, CLIP_ACC_MAX, DRIFT_RATIO_MAX = (
    0.5,
    (0.7, 1.3),
    0.7,
    0.5,
    0.75,
    2.0,
)


# ---- validity ----------------------------------------------------------------------------------
def declare(section: dict, reason: str | None) -> dict:
    """Mark a measurement valid, or invalid with its reason (the one place the two fields are set)."""
    section["valid"] = reason is None
    if reason is not None:
        section["invalid_reason"] = reason
    return section


def invalid(section: dict | None) -> str | None:
    """The reason a measurement declared itself invalid, or None."""
    if isinstance(section, dict) and section.get("valid") is False:
        return str(section.get("invalid_reason") or "failed its sanity check")
    return None


def chance_bound(chance: float, n: int) -> float:
    """The accuracy a frame-blind guesser scoring ``chance`` stays under on n pairs, 95% one-sided."""
    return chance + CHANCE_Z * math.sqrt(max(0.0, chance * (1 - chance)) / max(1, n))


def idm_check(ctl: dict) -> str | None:
    """Why the IDM cannot judge generated pairs (it does not read the actions off real ones), or None."""
    key, n = ctl["metric"], int(ctl["pairs"])
    real, train = ctl["real"][key], ctl.get("real_train", {}).get(key)
    on_train = f"; on its own training pairs {train:.3g}" if train is not None else ""
    advice = "train it longer (--idm-steps), or check that the actions show in the frames"
    if key == "accuracy":
        c = ctl["chance"]["accuracy"]
        need = chance_bound(c, n)
        if not real > need:
            return (
                f"the IDM scores accuracy {real:.3g} on {n} real held-out pairs, not clearly above chance {c:.3g} "
                f"(it must exceed {need:.3g}, the 95% binomial bound of chance on {n} pairs{on_train}): it "
                f"cannot tell the actions from real frames, so it says nothing about generated ones; {advice}"
            )
        return None
    need = max(R2_MIN, CHANCE_Z**2 / max(1, n))
    if not real > need:
        return (
            f"the IDM's R^2 on {n} real held-out pairs is {real:.3g}, not clearly above 0 (it must exceed "
            f"{need:.3g}{on_train}): it cannot tell the actions from real frames, so it says nothing about "
            f"generated ones; {advice}"
        )
    return None


# ---- what the open-loop numbers stand on --------------------------------------------------------
def motion(last_ctx: np.ndarray, real: np.ndarray, mask: np.ndarray, steps: int = MOTION_STEPS) -> np.ndarray:
    """Per rollout: mean |frame t+1 - frame t| in [0, 1] over its real frames (the last context frame, then
    the first ``steps`` real future frames, only those inside the episode). (N,) float."""
    out = np.zeros(len(real))
    for i in range(len(real)):
        n = int(mask[i, :steps].sum())
        seq = np.concatenate([last_ctx[i : i + 1], real[i, :n]]).astype(np.int16)
        out[i] = float(np.abs(np.diff(seq, axis=0)).mean()) / 255.0 if n else 0.0
    return out


def ended_at(mask: np.ndarray) -> list[int | None]:
    """Per rollout: the last rollout step with a real frame, where the real episode ends before the rollout does."""
    return [None if m.all() else int(m.sum()) for m in mask]


# ---- the verdict --------------------------------------------------------------------------------
def _bar(ok: bool | None, value, threshold, note: str) -> dict:
    return {"pass": ok, "value": value, "threshold": threshold, "note": note}


def _at(values: list, h: int):
    return values[h - 1] if len(values) >= h else None


def _psnr_bar(ol: dict) -> dict:
    H = len(ol["psnr"]["model"])
    h = min(BAR_HORIZON, H)
    at = f"@{h}" + (f" (the rollouts are {H} steps, not {BAR_HORIZON})" if h < BAR_HORIZON else "")
    moving = ol.get("psnr_moving")
    stills = ol.get("motionless_starts", 0)
    src = moving if moving is not None and stills else ol["psnr"]
    model, copy = _at(src["model"], h), _at(src["copy_last"], h)
    if moving is not None and stills and not moving.get("rollouts"):
        return _bar(None, None, None, f"invalid: every held-out start is motionless ({stills}): copy-last is exact")
    if model is None or copy is None:
        which = f"of the {src.get('rollouts')} moving starts ({stills} motionless left out)" if src is moving else ""
        return _bar(None, None, None, f"no rollout {which} reaches horizon {h} inside its episode".replace("  ", " "))
    over = f" over {src.get('rollouts', ol['rollouts'])} moving starts ({stills} motionless left out)" if stills else ""
    note = f"model {model:.2f} dB vs copy-last {copy:.2f} dB {at}{over}"
    return _bar(model >= copy + PSNR_MARGIN_DB, model, copy + PSNR_MARGIN_DB, note)


def _idm_bar(ctl: dict) -> dict:
    if "skipped" in ctl:
        return _bar(None, None, IDM_RATIO_MIN, f"skipped: {ctl['skipped']}")
    why = invalid(ctl)
    if why is not None:
        return _bar(None, None, IDM_RATIO_MIN, f"invalid: {why}")
    r = ctl.get("ratio")
    if r is None:
        return _bar(None, None, IDM_RATIO_MIN, "no ratio (the IDM scores 0 on real pairs)")
    key = ctl["metric"]
    note = f"IDM {key} generated {ctl['generated'][key]:.3g} / real {ctl['real'][key]:.3g}"
    return _bar(r >= IDM_RATIO_MIN, r, IDM_RATIO_MIN, note)


def _sharpness_bar(ol: dict) -> dict:
    H = len(ol["sharpness_ratio"])
    h = min(BAR_HORIZON, H)
    v = _at(ol["sharpness_ratio"], h)
    if v is None:
        return _bar(None, None, SHARPNESS_MIN, f"no rollout reaches horizon {h} inside its episode")
    return _bar(v >= SHARPNESS_MIN, v, SHARPNESS_MIN, f"generated / real var(Laplacian) @{h}")


def _speed_bar(sp: dict) -> dict:
    fps = {
        b: v["batch_1"]["frames_per_s"]
        for b, v in sp.items()
        if isinstance(v, dict) and isinstance(v.get("batch_1"), dict) and v["batch_1"].get("frames_per_s")
    }
    if not fps:
        return _bar(None, None, FPS_MIN, "no backend was timed at batch 1")
    best = max(fps, key=fps.get)
    note = ", ".join(f"{b} {v:.1f}" for b, v in fps.items()) + f": best {best}"
    return _bar(fps[best] >= FPS_MIN, fps[best], FPS_MIN, note)


def _not_measured(section: dict | None, threshold) -> dict | None:
    """The n/a bar of a measurement that was skipped or declared itself invalid (else None)."""
    if not isinstance(section, dict) or not section:
        return _bar(None, None, threshold, "not measured")
    if "skipped" in section:
        return _bar(None, None, threshold, f"skipped: {section['skipped']}")
    why = invalid(section)
    return None if why is None else _bar(None, None, threshold, f"invalid: {why}")


def _state_bar(st: dict | None) -> dict:
    na = _not_measured(st, FIDELITY_MIN)
    if na is not None:
        return na
    v = _at(st["fidelity"], BAR_HORIZON)
    if v is None:
        return _bar(None, None, FIDELITY_MIN, f"no group-B rollout reaches horizon {BAR_HORIZON} inside its episode")
    e = st["error"]
    note = (f"probe error @{BAR_HORIZON}: generated {_at(e['model'], BAR_HORIZON):.3g}, copy-last "
            f"{_at(e['copy_last'], BAR_HORIZON):.3g}, real {_at(e['real'], BAR_HORIZON):.3g} sd, over {len(st['kept'])} "
            "variables the probe reads")  # fmt: skip
    return _bar(v >= FIDELITY_MIN, v, FIDELITY_MIN, note)


def _motion_bar(mo: dict | None) -> dict:
    if not mo or not mo.get("ratio"):
        return _bar(None, None, list(MOTION_BAND), "not measured")
    vals = [(h, v) for h, v in enumerate(mo["ratio"][:BAR_HORIZON], 1) if v is not None]
    if not vals:
        return _bar(None, None, list(MOTION_BAND), "reality does not move at horizons 1..16: nothing to compare")
    lo, hi = MOTION_BAND
    worst = max(vals, key=lambda hv: max(lo - hv[1], hv[1] - hi))
    note = f"min {min(v for _, v in vals):.2f}, max {max(v for _, v in vals):.2f}; farthest out at h={worst[0]}"
    return _bar(all(lo <= v <= hi for _, v in vals), worst[1], list(MOTION_BAND), note)


def _event_bar(ev: dict | None, kind: str) -> dict:
    need = RECALL_MIN
    sec = (ev or {}).get(kind)
    if not ev or "skipped" in ev or not isinstance(sec, dict):
        return _bar(None, None, need, f"skipped: {(ev or {}).get('skipped', 'not measured')}")
    if "skipped" in sec:
        return _bar(None, None, need, f"skipped: {sec['skipped']}")
    tf = sec["teacher_forced"]
    if not tf["real"]:
        return _bar(None, None, need, f"no real {kind} event among the {ev['teacher_forced_steps']} held-out steps")
    rec, prec = tf["recall"] or 0.0, tf["precision"]
    base = sec["teacher_forced_base_rate"]
    if base.get("rate", 0.0) > DENSE_RATE:
        return _bar(None, None, need, f"{kind} on {base['rate']:.0%} of the steps: a dense signal, not events "
                    f"(a guesser firing at that rate scores precision {_f(base['precision'])}); the bar needs rare events")  # fmt: skip
    note = (f"{tf['real']} real, {tf['predicted']} predicted; precision {_f(prec)} (base rate {_f(base['precision'])}), "
            f"recall {rec:.2f} (base rate {_f(base['recall'])})")  # fmt: skip
    ok = rec >= need and (kind != "reward" or (prec is not None and prec >= PRECISION_MIN))
    return _bar(ok, rec, need, note)


def _f(v) -> str:
    return "n/a" if v is None else f"{v:.2f}"


def critic_check(cl: dict) -> str | None:
    """Why the clip discriminator cannot judge a world, or None: it must tell real clips from frozen copy-last
    ones better than the bar allows a world (else a frozen world would pass)."""
    cal = cl["copy_last"]
    if cal["accuracy"] > CLIP_ACC_MAX and cal["interval95"][0] > 0.5:
        return None
    return (
        f"the calibration critic tells real clips from frozen copy-last ones only {cal['accuracy']:.0%} of the time "
        f"(95% interval {cal['interval95'][0]:.0%}-{cal['interval95'][1]:.0%}); it must beat {CLIP_ACC_MAX:.0%}, the "
        "bar, or a frozen world would pass: it cannot see what this world gets wrong"
    )


def _clips_bar(cl: dict | None) -> dict:
    na = _not_measured(cl, CLIP_ACC_MAX)
    if na is not None:
        return na
    why = critic_check(cl)
    if why is not None:
        return _bar(None, None, CLIP_ACC_MAX, f"invalid: {why}")
    s = cl["model"]
    lo, hi = s["interval95"]
    note = f"{s['accuracy']:.0%} (95% {lo:.0%}-{hi:.0%}) on {s['real_clips']} + {s['generated_clips']} clips; copy-last {cl['copy_last']['accuracy']:.0%}"
    return _bar(s["accuracy"] <= CLIP_ACC_MAX, s["accuracy"], CLIP_ACC_MAX, note)


def _drift_bar(dr: dict | None) -> dict:
    at = (dr or {}).get("at", {}).get("1024")
    if not at or at.get("distance_ratio") is None:
        steps = (dr or {}).get("steps")
        return _bar(None, None, DRIFT_RATIO_MAX, f"the long rollouts are {steps} steps, not 1,024 (--drift-steps)")
    note = f"RMSE to the nearest real frame {at['distance']:.3g} vs {dr['distance_real']:.3g} for real frames"
    return _bar(at["distance_ratio"] <= DRIFT_RATIO_MAX, at["distance_ratio"], DRIFT_RATIO_MAX, note)


def verdicts(m: dict) -> dict:
    """{bar: {pass (True / False / None = cannot be decided), value, threshold, note}} from the metrics."""
    ol = m["open_loop"]
    return {
        "psnr16_vs_copy_last": _psnr_bar(ol),
        "idm_ratio": _idm_bar(m.get("controllability", {})),
        "sharpness16": _sharpness_bar(ol),
        "frames_per_s_batch1": _speed_bar(m.get("speed", {})),
        "state_fidelity16": _state_bar(m.get("state")),
        "motion1to16": _motion_bar(m.get("motion")),
        "reward_events": _event_bar(m.get("events"), "reward"),
        "termination_events": _event_bar(m.get("events"), "termination"),
        "life_loss_events": _event_bar(m.get("events"), "life_loss"),
        "clips16": _clips_bar(m.get("clips")),
        "drift1024": _drift_bar(m.get("drift")),
    }


def word(ok: bool | None) -> str:
    return "PASS" if ok is True else "FAIL" if ok is False else "n/a"
