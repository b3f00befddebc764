"""World fidelity: whether the dream moves what reality moves, fires the events reality fires, and still
looks real after a thousand steps. Each measurement returns a JSON-ready dict, for the model and the
copy-last baseline, on held-out episodes (see the package docstring).

motion        per horizon, generated frame-to-frame change / real frame-to-frame change (a frozen world: 0)
state         state probes (simulacra.eval.probe): state fidelity = 1 - error(generated) / error(copy-last)
events        the reward-sign and termination heads against the real rewards and episode ends: teacher-forced
              one step from real context (exact step) and along the open-loop rollouts (within ±1 step),
              precision and recall beside a base-rate guesser that fires at the real event rate
clips         the clip discriminator (simulacra.eval.critic), with copy-last clips as its calibration row
long horizon  probe readings in the real range, the discriminator at steps 500 and 1,000 of the long rollouts
"""

from __future__ import annotations

import numpy as np

from simulacra.data import Dataset
from simulacra.data.state import EVENTS
from simulacra.eval import critic, probe, verdict
from simulacra.eval import metrics as M
from simulacra.eval.heldout import Heldout
from simulacra.eval.rollouts import gather, life_losses, rollout
from simulacra.world import World

EVENT_TOLERANCE = 1
"""Open loop: a predicted event counts if a real one happened within this many steps of it (and back)."""
BASE_RATE_DRAWS = 20
CRITIC_WINDOWS = (500, 1000)
"""Long rollouts: the discriminator reads the clips starting at these steps (1-based, as the horizons)."""
MIN_CLIPS = 16


# ---- motion ---------------------------------------------------------------------------------------
def frame_change(last_ctx: np.ndarray, frames: np.ndarray) -> np.ndarray:
    """Per rollout and step: mean |frame k - frame k-1| in [0, 1] (frame 0 = the last context frame): (N, T)."""
    seq = np.concatenate([last_ctx[:, None], frames], 1).astype(np.int16)
    return np.abs(np.diff(seq, axis=1)).mean((2, 3, 4)) / 255.0


def motion(last_ctx: np.ndarray, real: np.ndarray, gen: np.ndarray, mask: np.ndarray) -> dict:
    """The motion ratio per horizon: mean generated change / mean real change over the rollouts inside their
    episode (a ratio of means; None where reality does not move at that horizon)."""
    cr, cg = frame_change(last_ctx, real), frame_change(last_ctx, gen)
    return {
        "what": "per horizon k: mean |frame k - frame k-1| of the generated frames / the same of the real frames "
        "(frame 0: the last real context frame), over the rollouts still inside their episode; a frozen "
        "world scores 0, one that moves as much as reality 1 (copy-last: 0)",
        "ratio": M.masked_ratio(cg, cr, mask),
        "real": M.masked_mean(cr, mask),
        "generated": M.masked_mean(cg, mask),
    }


# ---- events ---------------------------------------------------------------------------------------
def match(pred: np.ndarray, real: np.ndarray, mask: np.ndarray, tol: int) -> dict:
    """Precision and recall of predicted events (N, T) bool against real ones, counting a predicted event as
    right when a real one lies within ``tol`` steps (and a real one as found when a prediction does)."""
    p, r = pred & mask, real & mask
    near_r = _dilate(r, tol)
    near_p = _dilate(p, tol)
    n_pred, n_real = int(p.sum()), int(r.sum())
    return {
        "real": n_real,
        "predicted": n_pred,
        "precision": float((p & near_r).sum() / n_pred) if n_pred else None,
        "recall": float((r & near_p).sum() / n_real) if n_real else None,
    }


def _dilate(x: np.ndarray, tol: int) -> np.ndarray:
    out = x.copy()
    for d in range(1, tol + 1):
        out[:, d:] |= x[:, :-d]
        out[:, :-d] |= x[:, d:]
    return out


def base_rate(real: np.ndarray, mask: np.ndarray, tol: int, rng) -> dict:
    """What a guesser that ignores the frames gets: it fires at the real event rate, at random (the mean of
    BASE_RATE_DRAWS draws)."""
    rate = float(real[mask].mean()) if mask.any() else 0.0
    draws = [match(rng.random(real.shape) < rate, real, mask, tol) for _ in range(BASE_RATE_DRAWS)]

    def mean(k: str) -> float | None:
        vals = [d[k] for d in draws if d[k] is not None]
        return float(np.mean(vals)) if vals else None

    return {"rate": rate, "precision": mean("precision"), "recall": mean("recall")}


def _heads(kind: str, rewards: np.ndarray, dones: np.ndarray, lives: np.ndarray | None) -> np.ndarray | None:
    return {"reward": rewards != 0, "termination": dones, "life_loss": lives}[kind]


def events(world: World, h: Heldout, cfg, rng, arrays: dict) -> dict:
    """The reward-sign, termination and life-loss heads, teacher-forced (one step from K real frames, every
    held-out step up to --event-steps) and along the open-loop rollouts (a world without a life-loss head
    gets its life losses counted, not scored)."""
    K = world.K
    steps = np.array([(g, t) for g in range(len(h.frames)) for t in range(K - 1, len(h.frames[g]) - 1)], np.int64)
    steps = steps.reshape(-1, 2)
    if len(steps) > cfg.event_steps:
        steps = steps[np.sort(rng.choice(len(steps), cfg.event_steps, replace=False))]
    out: dict = {
        "what": f"teacher-forced: the world's one-step prediction from {K} real frames and the true action at "
        f"{len(steps)} held-out steps, against what really happened on that step; open loop: the "
        f"{len(arrays['gen'])} open-loop rollouts, a predicted event counting when a real one lies within "
        f"±{EVENT_TOLERANCE} step. A reward event is a nonzero reward (the head predicts its sign), a "
        "termination an episode's end, a life loss a drop of the env's lives counter; base rate = a guesser "
        "firing at random at the real event rate",
        "teacher_forced_steps": len(steps),
    }
    if not len(steps):
        return {**out, "skipped": "no held-out step has a full context"}
    ctx = np.stack([h.frames[g][t - K + 1 : t + 1] for g, t in steps])
    ctx_a = np.stack([h.actions[g][t - K + 1 : t] for g, t in steps])
    a = np.stack([h.actions[g][t] for g, t in steps])
    gen1, r1, d1 = rollout(world, ctx, ctx_a, a[:, None], cfg.batch_size, cfg.rng_seed + 30_000, heads=True)
    l1 = life_losses(world, ctx, ctx_a, a[:, None], gen1, cfg.batch_size)
    l_ol = life_losses(world, arrays["ctx"], arrays["ctx_a"], arrays["acts"], arrays["gen"], cfg.batch_size)
    starts, mask = arrays["starts"], arrays["mask"]
    H = mask.shape[1]
    for kind in EVENTS:
        per = [h.events[g][kind] for g in range(len(h.frames))]
        if any(v is None for v in per):
            out[kind] = {"skipped": f"the held-out data set has no {kind.replace('_', ' ')} record"}
            continue
        real_tf = np.array([per[g][t] for g, t in steps])[:, None]
        ones = np.ones_like(real_tf)
        real_ol = np.stack([_pad_false(per[g][s:], H) for g, s in starts])
        sec: dict = {"base_rate_per_step": float(np.concatenate(per).mean()) if len(np.concatenate(per)) else 0.0}
        pred_tf = _heads(kind, r1, d1, l1)
        if pred_tf is None:
            sec["real_teacher_forced"] = int(real_tf.sum())
            sec["real_open_loop"] = int((real_ol & mask).sum())
            out[kind] = {**sec, "skipped": "the world has no head for it (trained before the life-loss head existed)"}
            continue
        pred_ol = _heads(kind, arrays["gen_reward"], arrays["gen_done"], l_ol)
        sec["teacher_forced"] = match(pred_tf, real_tf, ones, 0)
        sec["teacher_forced_base_rate"] = base_rate(real_tf, ones, 0, rng)
        sec["open_loop"] = match(pred_ol, real_ol, mask, EVENT_TOLERANCE)
        sec["open_loop_base_rate"] = base_rate(real_ol, mask, EVENT_TOLERANCE, rng)
        out[kind] = sec
    return out


def _pad_false(x: np.ndarray, n: int) -> np.ndarray:
    x = np.asarray(x[:n], bool)
    return np.concatenate([x, np.zeros(n - len(x), bool)])


# ---- state probes ---------------------------------------------------------------------------------
def probe_data(h: Heldout, world_cfg: dict | None, max_frames: int) -> tuple[list, list, str]:
    """Real frames and true states for the probe: the world's training episodes (up to ``max_frames``)
    where its data set carries the same state variables, else group A of the held-out episodes."""
    try:
        ds = Dataset.open((world_cfg or {})["data"])
        eps = list((world_cfg or {}).get("train_episodes") or [])
        if ds.state_names != h.state_names or not eps:
            raise ValueError("no matching state")
        frames, states, n = [], [], 0
        for i in eps:
            a = ds.arrays(i)
            if "state" not in a:
                continue
            frames.append(ds.frames(i))
            states.append(np.asarray(a["state"]))
            n += len(frames[-1])
            if n >= max_frames:
                break
        if len(frames) >= probe.VAL_EVERY:
            return frames, states, f"{n} frames of {len(frames)} training episodes of the world ({world_cfg['data']})"
    except Exception:  # noqa: BLE001 - the training data may be gone or older than state: group A will do
        pass
    A = h.split_a
    n = sum(len(h.frames[g]) for g in A)
    return [h.frames[g] for g in A], [h.states[g] for g in A], f"{n} frames of held-out group A"


def state(
    h: Heldout,
    cfg,
    arrays: dict,
    device: str = "cpu",
    trained: probe.Probe | None = None,
    world_cfg: dict | None = None,
) -> tuple[dict, probe.Probe | None]:
    """Train the probe on real frames the test never uses (see `probe_data`; or take ``trained``); per
    horizon, its error on group B's generated, real and copy-last frames against the true state, and state
    fidelity = 1 - error(generated) / error(copy-last)."""
    if not h.state_names or any(s is None for s in h.states):
        return {"skipped": "the held-out episodes carry no true state (an env without a state reader, or data "
                "recorded before state was; `simulacra record --state` names a reader)"}, None  # fmt: skip
    source = "given"
    if trained is None:
        frames, states, source = probe_data(h, world_cfg, getattr(cfg, "probe_frames", 30_000))
    pr = trained or probe.fit(frames, states, h.state_names, cfg.probe_steps, seed=cfg.rng_seed, device=device)
    if pr is None:
        return {"skipped": "too few real frames in group A, or no state variable that changes, to train a probe"}, None
    order = np.argsort(-pr.r2_val)
    out: dict = {
        "what": f"a CNN probe trained {cfg.probe_steps} steps on real frames ({source}; whole episodes, or the "
        f"last {1 - probe.PROBE_TRAIN_FRACTION:.0%} of each, validate) to read the env's "
        f"{len(pr.names)} true state variables; kept: those it reads with R^2 >= {probe.KEEP_R2} on the "
        "validation frames. Error = mean |reading - true state| over the kept variables, in standard "
        "deviations; fidelity = 1 - error(generated) / error(copy-last), on group B's open-loop rollouts; "
        "oracle = the same for the real frames (the most a world can score with this probe)",
        "trained_on": source,
        "variables": len(pr.names),
        "kept": pr.kept_names,
        "r2_validation": {pr.names[i]: float(pr.r2_val[i]) for i in order[:16]},
    }
    if not len(pr.keep):
        best = f"{pr.names[order[0]]} {pr.r2_val[order[0]]:.2f}" if len(order) else "none"
        verdict.declare(out, f"the probe reads none of the {len(pr.names)} state variables from real frames "
                        f"(R^2 >= {probe.KEEP_R2} on held-out real frames; best: {best}): it cannot judge generated ones")  # fmt: skip
        return out, pr
    starts = arrays["starts"]
    idx = [n for n, (g, _) in enumerate(starts) if g in set(h.split_b)]
    if not idx:
        return {**out, "skipped": "no open-loop rollout starts in group B"}, pr
    H = arrays["mask"].shape[1]
    true = np.stack([_pad_rows(h.states[g][s + 1 :], H) for g, s in (starts[n] for n in idx)])
    mask = arrays["mask"][idx]
    k = pr.keep
    truth = pr.standardise(true)[..., k]
    e_gen = np.abs(pr.read(arrays["gen"][idx])[..., k] - truth).mean(-1)
    e_real = np.abs(pr.read(arrays["real"][idx])[..., k] - truth).mean(-1)
    e_copy = np.abs(pr.read(arrays["ctx"][idx, -1])[:, None, k] - truth).mean(-1)
    g, r, c = (M.masked_mean(e, mask) for e in (e_gen, e_real, e_copy))
    out |= {
        "rollouts": len(idx),
        "error": {"model": g, "real": r, "copy_last": c},
        "fidelity": [None if a is None or b is None or b == 0 else 1 - a / b for a, b in zip(g, c, strict=True)],
        "oracle_fidelity": [None if a is None or b is None or b == 0 else 1 - a / b for a, b in zip(r, c, strict=True)],
    }
    verdict.declare(out, None)
    return out, pr


def _pad_rows(x: np.ndarray, n: int) -> np.ndarray:
    x = x[:n]
    return x if len(x) == n else np.concatenate([x, np.repeat(x[-1:], n - len(x), 0)])


# ---- the clip discriminator ---------------------------------------------------------------------
def _clip_starts(h: Heldout, group: list[int], K: int, n: int, rng) -> list[tuple[int, int]]:
    T = critic.CLIP_LEN
    cand = [(g, s) for g in group for s in range(K - 1, len(h.frames[g]) - T)]
    if len(cand) > n:
        cand = [cand[i] for i in np.sort(rng.choice(len(cand), n, replace=False))]
    return cand


def clips(world: World, h: Heldout, cfg, rng, device: str = "cpu") -> tuple[dict, critic.ClipCritic | None, np.ndarray]:
    """Train the critic on group-A clips (real vs generated from the same context), score it on group B;
    the same for real vs copy-last clips (its calibration). Returns (section, critic, real group-B clips)."""
    K, T = world.K, critic.CLIP_LEN
    sa = _clip_starts(h, h.split_a, K, cfg.critic_clips, rng)
    sb = _clip_starts(h, h.split_b, K, cfg.critic_clips, rng)
    if len(sa) < MIN_CLIPS or len(sb) < MIN_CLIPS:
        return (
            {"skipped": f"fewer than {MIN_CLIPS} held-out clips of {T} frames after a full context in each group"},
            None,
            np.zeros(0),
        )
    data = {}
    for name, st in (("a", sa), ("b", sb)):
        ctx, ctx_a, acts, real, _ = gather(h, st, K, T)
        gen = rollout(world, ctx, ctx_a, acts, cfg.batch_size, cfg.rng_seed + 40_000 + len(name))
        data[name] = (real, gen, np.repeat(ctx[:, -1:], T, 1))
    (ra, ga, ca), (rb, gb, cb) = data["a"], data["b"]
    model = critic.fit(ra, ga, cfg.critic_steps, seed=cfg.rng_seed, device=device)
    calib = critic.fit(ra, ca, cfg.critic_steps, seed=cfg.rng_seed, device=device)
    out = {
        "what": f"a CNN trained {cfg.critic_steps} steps from scratch to tell real {T}-frame clips from generated "
        f"ones after the same real context and actions ({len(sa)} group-A starts), scored on {len(sb)} "
        "group-B starts; balanced accuracy with its Wilson 95% interval: 50% = indistinguishable. Calibration: "
        "the same critic trained on real vs copy-last clips (the last context frame, frozen)",
        "clip_frames": T,
        "model": critic.score(model, rb, gb),
        "copy_last": critic.score(calib, rb, cb),
    }
    why = verdict.critic_check(out)
    verdict.declare(out, why)
    if h.split_a == h.split_b:
        out["note"] = "one held-out segment: the critic was trained and scored on clips of the same episode"
    return out, model, rb


def long_horizon(drift_arrays: dict, pr: probe.Probe | None, model, real_clips, h: Heldout) -> dict:
    """At steps 256 and 1,024 of the long rollouts: the probe readings inside the real range; at steps 500
    and 1,000: the discriminator on their clips beside real group-B clips."""
    gen = drift_arrays.get("gen")
    if gen is None:
        return {"skipped": "no long rollouts"}
    T = gen.shape[1]
    out: dict = {"steps": T, "probe_in_range": {}, "critic": {}}
    if pr is not None and len(pr.keep):
        real_states = np.concatenate([h.states[g] for g in h.split_a])
        out["probe_in_range"]["real"] = probe.in_range(pr, np.concatenate([h.frames[g] for g in h.split_b]),
                                                       real_states)  # fmt: skip
        for c in (16, 256, 1024):
            if c <= T:
                out["probe_in_range"][str(c)] = probe.in_range(pr, gen[:, max(0, c - 16) : c], real_states)
        out["probe_what"] = ("fraction of the probe's kept-variable readings of the generated frames (the 16 "
                             "steps up to each step) inside the real range (+-10% of it); 'real': held-out real frames")  # fmt: skip
    if model is not None and len(real_clips):
        L = critic.CLIP_LEN
        for c in CRITIC_WINDOWS:
            if c + L - 1 <= T:
                out["critic"][str(c)] = critic.score(model, real_clips, gen[:, c - 1 : c - 1 + L])
        out["critic_what"] = (f"the clip discriminator (trained on {L}-frame clips right after a real context) "
                              f"on the long rollouts' clips from each step, beside real group-B clips")  # fmt: skip
    return out
