"""Rollouts of a world from real context: open-loop with given actions, batched; drift; speed.

A start (segment g, step s) means: the context is the real frames s-K+1..s of segment g and the K-1
actions between them; the rollout then applies actions s, s+1, ... and frame k of the rollout
(k = 1..T) is compared with real frame s+k. Steps past the segment's end are masked out.
Chunk c of a batched rollout draws its sampling noise from ``world.generator(seed + c)``, so two
rollouts of the same starts with the same seed draw the same noise (paired comparisons, e.g. true vs
random actions).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from simulacra.eval.heldout import Heldout
from simulacra.world import World


def choose_starts(h: Heldout, K: int, H: int, per_segment: int) -> list[tuple[int, int]]:
    """Evenly spaced starts per segment with a full context, as far as possible leaving H real steps after."""
    out = []
    for g in range(len(h.frames)):
        L = len(h.frames[g]) - 1  # steps
        lo, hi = K - 1, max(K - 1, L - H)
        if L - lo < 1:
            continue
        out += [(g, int(s)) for s in np.unique(np.linspace(lo, hi, per_segment).round().astype(int))]
    return out


def _pad(x: np.ndarray, n: int) -> np.ndarray:
    """x[:n], padded to n by repeating its last element."""
    x = x[:n]
    return x if len(x) == n else np.concatenate([x, np.repeat(x[-1:], n - len(x), 0)])


def gather(h: Heldout, starts, K: int, T: int, actions=None):
    """Context frames (N, K, ...), context actions (N, K-1, ...), future actions (N, T, ...), real future
    frames (N, T, ...) and the valid mask (N, T). ``actions``: override the future actions (N, T, ...)."""
    ctx, ctx_a, fut_a, real, mask = [], [], [], [], []
    for n, (g, s) in enumerate(starts):
        f, a = h.frames[g], h.actions[g]
        ctx.append(f[s - K + 1 : s + 1])
        ctx_a.append(a[s - K + 1 : s])
        fut_a.append(_pad(a[s:], T) if actions is None else actions[n])
        real.append(_pad(f[s + 1 :], T))
        mask.append(np.arange(T) < len(f) - 1 - s)
    return np.stack(ctx), np.stack(ctx_a), np.stack(fut_a), np.stack(real), np.stack(mask)


def rollout(world: World, ctx, ctx_a, actions, batch: int, seed: int, heads: bool = False):
    """Batched open-loop rollouts: generated frames (N, T, H, W, 3); with ``heads`` also the reward-sign
    (N, T) and termination (N, T) predictions."""
    out, rew, done = [], [], []
    for c, i in enumerate(range(0, len(ctx), batch)):
        state = world.reset(ctx[i : i + batch], ctx_a[i : i + batch])
        _, frames, r, d = world.rollout(state, actions[i : i + batch], world.generator(seed + c))
        out.append(frames)
        rew.append(r)
        done.append(d)
    if not heads:
        return np.concatenate(out)
    return np.concatenate(out), np.concatenate(rew), np.concatenate(done)


def life_losses(world: World, ctx, ctx_a, actions, frames, batch: int) -> np.ndarray | None:
    """The life-loss head on each step of rollouts: ``frames`` (N, T, ...) followed the context ``ctx``
    (N, K, ...) under ``actions`` (N, T, ...). Returns (N, T) bool, or None for a world without the head."""
    if not getattr(getattr(world, "dyn", None), "cfg", None) or not world.dyn.cfg.life_head:
        return None  # also a stand-in world (an oracle, in the tests) that has no heads of its own
    K, (N, T) = world.K, frames.shape[:2]
    acts = np.concatenate([ctx_a, actions], 1)  # (N, K-1+T, ...): the K actions up to step j are acts[j : j+K]
    seq = np.concatenate([ctx, frames], 1)  # step j reads the context seq[j : j+K] and its next frame seq[j+K]
    out = np.zeros((N, T), bool)
    with torch.no_grad():
        for i in range(0, N, batch):
            part = seq[i : i + batch]
            z = world.encode(part.reshape(-1, *part.shape[2:]))
            z = z.reshape(len(part), K + T, *z.shape[1:])
            for j in range(T):
                a = torch.from_numpy(np.ascontiguousarray(acts[i : i + batch, j : j + K])).to(world.device)
                _, _, life = world.dyn.heads_logits(z[:, j : j + K], z[:, j + K], a)
                out[i : i + batch, j] = (life > 0).cpu().numpy()
    return out


def drift_actions(h: Heldout, g: int, s: int, T: int) -> tuple[np.ndarray, int]:
    """The segment's own actions from s, then the actions of the other segments in turn (cycled) — a
    stream from the data-collection policy. Returns (actions (T, ...), how many are the segment's own)."""
    own = h.actions[g][s:]
    others = [h.actions[(g + j) % len(h.actions)] for j in range(1, len(h.actions) + 1)]
    stream = np.concatenate([own, *others]) if len(own) else np.concatenate(others)
    while len(stream) < T:
        stream = np.concatenate([stream, *others])
    return stream[:T], min(len(own), T)


def drift_starts(h: Heldout, K: int, n: int) -> list[tuple[int, int]]:
    """n starts in group B at the beginning of its segments (further in for repeats), full context."""
    out = []
    ok = [g for g in range(len(h.frames)) if len(h.frames[g]) >= K + 1]
    segs = [g for g in h.split_b if g in ok] or ok
    for k in range(n if segs else 0):
        g = segs[k % len(segs)]
        s = min(K - 1 + 16 * (k // len(segs)), len(h.frames[g]) - 2)
        out.append((g, s))
    return out


def speed(world: World, ctx: np.ndarray, batches=(1, 16), steps: int = 32, seed: int = 0) -> dict:
    """Frames/s of world.step (decoded frames) at each batch size; context = one real frame stack (K, H, W, 3)."""
    rng = np.random.default_rng(seed)
    out = {}
    for B in batches:
        state = world.reset(np.repeat(ctx[None], B, 0))
        g = world.generator(seed)
        acts = world.action_space.sample(rng, (steps + 2, B))
        for a in acts[:2]:  # warm-up
            state, *_ = world.step(state, a, g)
        t0 = time.perf_counter()
        for a in acts[2:]:
            state, *_ = world.step(state, a, g)
        dt = time.perf_counter() - t0
        out[f"batch_{B}"] = {"frames_per_s": B * steps / dt, "ms_per_step": 1000 * dt / steps, "steps": steps}
    return out
