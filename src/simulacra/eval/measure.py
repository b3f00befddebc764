"""The measurements of `simulacra eval`, each returning a JSON-ready dict (see the package docstring)."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np

from simulacra.errors import SimulacraError
from simulacra.eval import idm, report, verdict
from simulacra.eval import metrics as M
from simulacra.eval.heldout import Heldout
from simulacra.eval.rollouts import choose_starts, drift_actions, drift_starts, gather, rollout, speed
from simulacra.world import World

log = logging.getLogger(__name__)

DRIFT_CHECKPOINTS = (256, 1024)
"""Steps of the long rollouts at which drift is reported (over the E steps up to each)."""


def open_loop(world: World, h: Heldout, cfg) -> tuple[dict, dict]:
    """PSNR / SSIM per horizon for the model and the copy-last-frame baseline; sharpness ratio per horizon."""
    K, H = world.K, cfg.horizon
    starts = choose_starts(h, K, H, cfg.starts)
    if not starts:
        raise SimulacraError(f"no held-out episode has more than K={K} frames: nothing to roll out from")
    ctx, ctx_a, acts, real, mask = gather(h, starts, K, H)
    gen, gen_reward, gen_done = rollout(world, ctx, ctx_a, acts, cfg.batch_size, cfg.rng_seed, heads=True)
    copy = np.broadcast_to(ctx[:, -1:], real.shape)
    lap_gen, lap_real = M.laplacian_var(gen), M.laplacian_var(real)
    p_model, p_copy = M.psnr(gen, real), M.psnr(copy, real)
    out = {
        "what": "open loop from K real context frames with the true actions; horizon k compares generated "
        "frame k with real frame k after the context; means over rollouts still inside their episode",
        "rollouts": len(starts),
        "starts": [list(s) for s in starts],
        "count": mask.sum(0).tolist(),
        "psnr": {"model": M.masked_mean(p_model, mask), "copy_last": M.masked_mean(p_copy, mask)},
        "ssim": {"model": M.masked_mean(M.ssim(gen, real), mask), "copy_last": M.masked_mean(M.ssim(copy, real), mask)},
        "sharpness_ratio": M.masked_ratio(lap_gen, lap_real, mask),
        "psnr_cap_db": M.PSNR_CAP,
    }
    for k in ("psnr", "ssim"):
        out[k]["model_mean"] = M.mean_of(out[k]["model"])
        out[k]["copy_last_mean"] = M.mean_of(out[k]["copy_last"])
    out |= _motionless(starts, ctx, real, mask, p_model, p_copy)
    ends = verdict.ended_at(mask)
    out["rollouts_past_end"] = sum(e is not None for e in ends)
    out["real_ended_at"] = ends
    arrays = {"ctx": ctx, "ctx_a": ctx_a, "real": real, "gen": gen, "mask": mask, "p_model": p_model,
              "starts": starts, "gen_reward": gen_reward, "gen_done": gen_done, "acts": acts}  # fmt: skip
    return out, arrays


def _motionless(starts, ctx, real, mask, p_model, p_copy) -> dict:
    """Starts where the real world stands still over the first steps (a game's motionless intro): there
    copy-last is exact, so PSNR against it is meaningless; the per-horizon PSNR over the moving starts only."""
    motion = verdict.motion(ctx[:, -1], real, mask)
    moving = motion >= verdict.MOTIONLESS_DIFF
    keep = mask & moving[:, None]
    return {
        "motion": {
            "what": f"mean |frame t+1 - frame t| in [0,1] of the real frames over the first {verdict.MOTION_STEPS} "
            f"steps of each rollout; below {verdict.MOTIONLESS_DIFF} the start is motionless (copy-last is "
            "near exact there, so PSNR against it says nothing)",
            "threshold": verdict.MOTIONLESS_DIFF,
            "steps": verdict.MOTION_STEPS,
            "per_rollout": motion.tolist(),
        },
        "motionless_starts": int((~moving).sum()),
        "motionless": [list(s) for s, mv in zip(starts, moving, strict=True) if not mv],
        "psnr_moving": {
            "rollouts": int(moving.sum()),
            "model": M.masked_mean(p_model, keep),
            "copy_last": M.masked_mean(p_copy, keep),
        },
    }


def _delta_psnr(world: World, h: Heldout, cfg, rng, arrays: dict) -> dict:
    """Same starts, same sampling noise, uniformly random actions: how much do actions matter to PSNR?"""
    Hd = min(cfg.delta_horizon, cfg.horizon)
    ctx, ctx_a, real, mask = arrays["ctx"], arrays["ctx_a"], arrays["real"][:, :Hd], arrays["mask"][:, :Hd]
    rand = world.action_space.sample(rng, (len(ctx), Hd))
    gen_r = rollout(world, ctx, ctx_a, rand, cfg.batch_size, cfg.rng_seed)
    true_ = M.mean_of(M.masked_mean(arrays["p_model"][:, :Hd], mask))
    rnd = M.mean_of(M.masked_mean(M.psnr(gen_r, real), mask))
    return {
        "delta_horizon": Hd,
        "psnr_true_actions": true_,
        "psnr_random_actions": rnd,
        "delta_psnr": None if true_ is None or rnd is None else true_ - rnd,
    }


def controllability(world: World, h: Heldout, cfg, rng, arrays: dict) -> dict:
    """IDM trained on real pairs of group A; scored on real and generated pairs of group B."""
    out = _delta_psnr(world, h, cfg, rng, arrays)
    space, K = world.action_space, world.K
    if space.kind not in ("discrete", "box"):
        return {**out, "skipped": f"no IDM for action space {space.kind!r}"}
    out["what"] = (
        f"IDM (CNN on frame t, t+1) trained {cfg.idm_steps} steps on real pairs of group A, scored on pairs of "
        "group B: real (real t, real t+1); generated (t and the world's one-step prediction of t+1 from the K real "
        "frames up to t and the true action, both as the world shows them, i.e. t through its autoencoder); "
        "reconstructed (t and t+1 both through the autoencoder: what a perfect dynamics model behind this "
        "autoencoder would score); generated_real_first (real t, predicted t+1: the pair mixes real and decoded "
        "frames, whose difference shows the autoencoder's error everywhere, so it understates controllability). "
        "ratio = generated / real, ratio_vs_autoencoder = generated / reconstructed"
        + ("." if space.kind == "discrete" else " (on R^2).")
    )
    A = [h.frames[g] for g in h.split_a]
    test = np.array([(g, t) for g in h.split_b for t in range(K - 1, len(h.frames[g]) - 1)], np.int64).reshape(-1, 2)
    if len(test) == 0 or not idm.transitions(A).size:
        return {**out, "skipped": "too few held-out transitions for the IDM"}
    test = test[np.sort(rng.choice(len(test), min(cfg.idm_pairs, len(test)), replace=False))]
    import torch

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    model = idm.fit(A, [h.actions[g] for g in h.split_a], space, cfg.idm_steps, seed=cfg.rng_seed, device=dev)
    f0, f1, a = idm.take(h.frames, h.actions, test)
    ctx = np.stack([h.frames[g][t - K + 1 : t + 1] for g, t in test])
    ctx_a = np.stack([h.actions[g][t - K + 1 : t] for g, t in test])
    gen1 = rollout(world, ctx, ctx_a, a[:, None], cfg.batch_size, cfg.rng_seed + 10_000)[:, 0]
    rec = lambda f: np.concatenate([world.decode(world.encode(f[i : i + 256])) for i in range(0, len(f), 256)])  # noqa: E731
    rec0, rec1 = rec(f0), rec(f1)
    tr = idm.transitions(A)
    tr = tr[rng.choice(len(tr), min(len(tr), cfg.idm_pairs), replace=False)]
    key = "accuracy" if space.kind == "discrete" else "r2"
    out |= {
        "pairs": len(test),
        "real_train": idm.score(model, *idm.take(A, [h.actions[g] for g in h.split_a], tr)),
        "real": idm.score(model, f0, f1, a),
        "generated": idm.score(model, rec0, gen1, a),
        "reconstructed": idm.score(model, rec0, rec1, a),
        "generated_real_first": idm.score(model, f0, gen1, a),
        "chance": idm.chance(space, a),
        "metric": key,
    }
    r, g, c, ae = (out[k][key] for k in ("real", "generated", "chance", "reconstructed"))
    out["ratio"] = M.ratio(g, r) if r > 0 else None
    out["ratio_above_chance"] = M.ratio(g - c, r - c) if r > c else None
    out["ratio_vs_autoencoder"] = M.ratio(g, ae) if ae > 0 else None
    verdict.declare(out, verdict.idm_check(out))
    if not out["valid"]:  # an IDM blind on real pairs measures nothing on generated ones: no ratio figure
        out["ratio"] = out["ratio_above_chance"] = out["ratio_vs_autoencoder"] = None
    return out


def drift(world: World, h: Heldout, cfg, rng) -> tuple[dict, dict]:
    """Long rollouts: sharpness vs the real pool and RMSE to the nearest real frame (group A pool)."""
    K, T = world.K, cfg.drift_steps
    starts = drift_starts(h, K, cfg.drift_starts)
    if not starts or T < 1:
        return {"skipped": "no held-out segment long enough to start from"}, {}
    streams = [drift_actions(h, g, s, T) for g, s in starts]
    ctx, ctx_a, _, real, mask = gather(h, starts, K, T, actions=np.stack([a for a, _ in streams]))
    gen = rollout(world, ctx, ctx_a, np.stack([a for a, _ in streams]), cfg.batch_size, cfg.rng_seed + 20_000)
    pool_idx = [(g, t) for g in h.split_a for t in range(len(h.frames[g]))]
    pick = np.sort(rng.choice(len(pool_idx), min(cfg.pool_frames, len(pool_idx)), replace=False))
    pool = np.stack([h.frames[g][t] for g, t in (pool_idx[i] for i in pick)])
    E = min(16, T)
    q_idx = [(g, t) for g in h.split_b for t in range(len(h.frames[g]))]
    q_idx = [q_idx[i] for i in rng.choice(len(q_idx), min(len(q_idx), max(64, len(starts) * E)), replace=False)]
    real_q = np.stack([h.frames[g][t] for g, t in q_idx])
    lap_pool = float(M.laplacian_var(pool).mean())
    lap_gen = M.laplacian_var(gen)  # (n, T)
    dist = M.nearest_distance(gen.reshape(-1, *gen.shape[2:]), pool).reshape(gen.shape[:2])
    d_real = float(M.nearest_distance(real_q, pool).mean())
    d_end = float(dist[:, -E:].mean())
    own = [n for _, n in streams]
    out = {
        "what": f"{len(starts)} rollouts of {T} steps from the start of group-B episodes with the episode's own "
        "actions, then actions replayed from the other held-out episodes; 'end' = the last "
        f"{E} steps. Distance = RMSE in [0,1] pixel units from a frame to its nearest frame among "
        f"{len(pool)} real group-A frames (full-resolution pixels), versus the same for {len(real_q)} real "
        "group-B frames (pixel distance favours blurry, average-looking frames: read it with the sharpness). "
        "Sharpness ratio = mean var(Laplacian) of generated frames / of the real pool.",
        "steps": T,
        "rollouts": len(starts),
        "own_action_steps": own,
        "end_window": E,
        "sharpness_ratio_end": M.ratio(float(lap_gen[:, -E:].mean()), lap_pool),
        "sharpness_ratio_real": M.ratio(float(M.laplacian_var(real_q).mean()), lap_pool),
        "distance_end": d_end,
        "distance_real": d_real,
        "distance_ratio": M.ratio(d_end, d_real),
        "distance_start": float(dist[:, :E].mean()),
        "at": {
            str(c): {
                "distance": float(dist[:, c - E : c].mean()),
                "distance_ratio": M.ratio(float(dist[:, c - E : c].mean()), d_real),
                "sharpness_ratio": M.ratio(float(lap_gen[:, c - E : c].mean()), lap_pool),
            }
            for c in DRIFT_CHECKPOINTS
            if c <= T
        },
        "pool_frames": len(pool),
        "sharpness_curve": [M.ratio(float(v), lap_pool) for v in lap_gen.mean(0)],
        "distance_curve": dist.mean(0).tolist(),
        "real_ended_at": verdict.ended_at(mask),
        "past_end": "the drift figures compare generated frames with a pool of real frames, never with the "
        "episode's own, so nothing is compared past its end; the videos' real panel is hatched there",
    }
    return out, {"real": real, "gen": gen, "mask": mask}


def speed_all(world: World, world_dir: Path, h: Heldout, cfg) -> dict:
    """Frames/s of the eager world and, unless --no-onnx, of the same world on the ONNX backend."""
    g = max(range(len(h.frames)), key=lambda i: len(h.frames[i]))
    ctx = h.frames[g][: world.K]
    if len(ctx) < world.K:
        ctx = np.concatenate([np.repeat(ctx[:1], world.K - len(ctx), 0), ctx])
    kw = {"batches": (1, cfg.speed_batch), "steps": cfg.speed_steps, "seed": cfg.rng_seed}
    out = {"eager": speed(world, ctx, **kw)}
    if not cfg.onnx:
        out["note"] = "eager PyTorch only: --no-onnx"
        return out
    try:
        onnx = World.load(world_dir, backend="onnx")
        if cfg.temperature is not None:
            onnx = onnx.with_options(temperature=cfg.temperature)
        out["onnx"] = speed(onnx, ctx, **kw)
    except Exception as e:  # a missing optional runtime must not sink the whole evaluation
        log.info("ONNX backend not timed: %s: %s", type(e).__name__, e)
        out["onnx"] = {"error": f"{type(e).__name__}: {e}"}
    return out


def media(out: Path, arrays: dict, drift_arrays: dict, cfg, fps: int) -> dict:
    """Side-by-side real | generated videos and a filmstrip next to the report."""
    n = min(cfg.videos, len(arrays["gen"]))
    files: dict = {"videos": [], "images": [], "horizons": {}}
    if n:
        sl = slice(0, n)
        pairs = report.side_by_side(arrays["real"][sl], arrays["gen"][sl], arrays["mask"][sl])
        files["videos"].append(report.write_videos(out, "openloop", pairs, fps))
        files["horizons"]["filmstrip.png"] = report.filmstrip(
            out / "filmstrip.png", arrays["real"][sl], arrays["gen"][sl], arrays["mask"][sl], report.SHOW_H
        )
        files["images"].append("filmstrip.png")
    if drift_arrays and n:
        d = drift_arrays
        pairs = report.side_by_side(d["real"][:n], d["gen"][:n], d["mask"][:n])
        files["videos"].append(report.write_videos(out, "drift", pairs, fps))
        files["horizons"]["filmstrip_long.png"] = report.filmstrip(
            out / "filmstrip_long.png", d["real"][:n], d["gen"][:n], d["mask"][:n], report.LONG_H
        )
        files["images"].append("filmstrip_long.png")
    return files


def finite(x):
    """NaN / inf -> None and numpy scalars -> Python, recursively (strict JSON)."""
    if isinstance(x, dict):
        return {k: finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [finite(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x
