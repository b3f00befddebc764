"""Planners: small pure functions that search action sequences through a batched latent step.

Each takes ``rollout(z_D, actions_NHA) -> z_NHD`` (the world's encodings after each of H steps, for N
candidates at once), ``cost(z_NHD) -> (N,)`` and the action bounds, and returns the best sequence
(H, A) with a few numbers about the search. Nothing here knows about frames or envs, so the same
functions plan in the JEPA latent, in the pixel world, or in a toy test world.

- ``cem``: the cross-entropy method (DINO-WM's planner): sample around a Gaussian, refit it to the
  best ``elites``, repeat.
- ``mppi``: model-predictive path integral: the new mean is the softmax(-cost / temperature)
  weighted mean of all samples.
- ``gradient``: Adam on the action sequence through the differentiable rollout, from several
  random starts (and the warm start), keeping the best.
- ``cem_discrete``: CEM over per-step categorical distributions, for discrete action spaces.

A warm start (the previous plan shifted by the steps executed) is the usual MPC trick: the search
starts near a sequence that was already good one step ago.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

Rollout = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Cost = Callable[[torch.Tensor], torch.Tensor]

PLANNERS = ("cem", "mppi", "gradient")


@dataclass
class Search:
    """How hard a planner searches (DINO-WM's CEM: 300 samples, 30 elites, 30 iterations)."""

    samples: int = 300
    """Candidates rolled out per iteration."""
    elites: int = 30
    """CEM: the best candidates the Gaussian is refitted to."""
    iters: int = 30
    """Iterations (CEM, MPPI), or Adam steps (gradient)."""
    temperature: float = 0.1
    """MPPI: softmax temperature, as a fraction of the iteration's cost spread."""
    lr: float = 0.1
    """Gradient: Adam's step size, as a fraction of the action range."""
    restarts: int = 8
    """Gradient: random starting sequences optimised together."""


def _bounds(low, high, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.as_tensor(low, dtype=like.dtype), torch.as_tensor(high, dtype=like.dtype)


def _gaussian(low, high, horizon: int, mean_HA, std_A) -> tuple[torch.Tensor, torch.Tensor]:
    """The first sampling distribution: the warm start (or the middle of the bounds), and ``std_A``
    (or half the range) at every step."""
    A = low.numel()
    mean = ((low + high) / 2).expand(horizon, A).clone() if mean_HA is None else mean_HA.clone()
    return mean, ((high - low) / 2 if std_A is None else std_A).expand(horizon, A).clone()


def _candidates(mean_HA, std_HA, low, high, n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` sequences drawn around the mean, clipped to the bounds; the mean itself is the first, so
    the best cost found never gets worse from one iteration to the next."""
    eps = torch.randn(n, *mean_HA.shape, generator=generator, dtype=mean_HA.dtype)
    cand = torch.maximum(torch.minimum(mean_HA + std_HA * eps, high), low)
    cand[0] = mean_HA
    return cand


def warm_start(previous_HA: torch.Tensor | None, shift: int, fill_A: torch.Tensor) -> torch.Tensor | None:
    """The previous plan with its first ``shift`` steps dropped and ``fill`` appended."""
    if previous_HA is None:
        return None
    rest = previous_HA[shift:]
    return torch.cat([rest, fill_A.expand(previous_HA.shape[0] - len(rest), -1)])


@torch.no_grad()
def cem(
    rollout: Rollout,
    cost: Cost,
    z_D: torch.Tensor,
    horizon: int,
    low,
    high,
    search: Search,
    generator: torch.Generator,
    mean_HA: torch.Tensor | None = None,
    std_A: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict]:
    low, high = _bounds(low, high, z_D)
    mean, std = _gaussian(low, high, horizon, mean_HA, std_A)
    best, best_cost = mean.clone(), float("inf")
    for _ in range(search.iters):
        cand = _candidates(mean, std, low, high, search.samples, generator)
        c = cost(rollout(z_D, cand))
        top = torch.topk(c, min(search.elites, len(c)), largest=False).indices
        if float(c[top[0]]) < best_cost:
            best, best_cost = cand[top[0]].clone(), float(c[top[0]])
        spread = cand[top].std(0) if len(top) > 1 else torch.zeros_like(mean)  # one elite has no spread
        mean, std = cand[top].mean(0), spread.clamp_min(1e-3 * float((high - low).max()))
    return best, {"cost": best_cost}


@torch.no_grad()
def mppi(
    rollout: Rollout,
    cost: Cost,
    z_D: torch.Tensor,
    horizon: int,
    low,
    high,
    search: Search,
    generator: torch.Generator,
    mean_HA: torch.Tensor | None = None,
    std_A: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict]:
    low, high = _bounds(low, high, z_D)
    mean, std = _gaussian(low, high, horizon, mean_HA, std_A)
    best, best_cost = mean.clone(), float("inf")
    for _ in range(search.iters):
        cand = _candidates(mean, std, low, high, search.samples, generator)
        c = cost(rollout(z_D, cand))
        j = int(torch.argmin(c))
        if float(c[j]) < best_cost:
            best, best_cost = cand[j].clone(), float(c[j])
        spread = (c.max() - c.min()).clamp_min(1e-9)
        w = torch.softmax(-(c - c.min()) / (search.temperature * spread), 0)
        mean = (w[:, None, None] * cand).sum(0)
        # shrink the sampling cloud as the weighted spread narrows (plain MPPI keeps it fixed)
        std = torch.sqrt((w[:, None, None] * (cand - mean) ** 2).sum(0)).clamp_min(1e-3 * float((high - low).max()))
    return best, {"cost": best_cost}


def gradient(
    rollout: Rollout,
    cost: Cost,
    z_D: torch.Tensor,
    horizon: int,
    low,
    high,
    search: Search,
    generator: torch.Generator,
    mean_HA: torch.Tensor | None = None,
    std_A: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict]:
    low, high = _bounds(low, high, z_D)
    A = low.numel()
    mid, half = (low + high) / 2, (high - low) / 2
    starts = mid + half * (2 * torch.rand(search.restarts, horizon, A, generator=generator, dtype=z_D.dtype) - 1)
    if mean_HA is not None:
        starts[0] = mean_HA
    # optimise in a squashed space, so every iterate stays inside the bounds without clipping the gradient
    u = torch.atanh(((starts - mid) / half).clamp(-0.999, 0.999)).requires_grad_(True)
    opt = torch.optim.Adam([u], lr=search.lr * 4)
    best, best_cost = starts[0].clone(), float("inf")
    for _ in range(search.iters):
        actions = mid + half * torch.tanh(u)
        c = cost(rollout(z_D, actions))
        j = int(torch.argmin(c))
        if float(c[j].detach()) < best_cost:
            best, best_cost = actions[j].detach().clone(), float(c[j].detach())
        opt.zero_grad()
        c.sum().backward()
        opt.step()
    return best, {"cost": best_cost}


@torch.no_grad()
def cem_discrete(
    rollout: Rollout,
    cost: Cost,
    z_D: torch.Tensor,
    horizon: int,
    n: int,
    search: Search,
    generator: torch.Generator,
    probs_HN: torch.Tensor | None = None,
    smoothing: float = 0.1,
) -> tuple[torch.Tensor, dict]:
    """CEM over categorical plans: returns the best index sequence (H,); ``rollout`` takes one-hot (N, H, n)."""
    probs = torch.full((horizon, n), 1.0 / n, dtype=z_D.dtype) if probs_HN is None else probs_HN.clone()
    best, best_cost = torch.zeros(horizon, dtype=torch.long), float("inf")
    for _ in range(search.iters):
        idx = torch.multinomial(probs, search.samples, replacement=True, generator=generator).T  # (N, H)
        c = cost(rollout(z_D, torch.nn.functional.one_hot(idx, n).to(z_D.dtype)))
        top = torch.topk(c, min(search.elites, len(c)), largest=False).indices
        if float(c[top[0]]) < best_cost:
            best, best_cost = idx[top[0]].clone(), float(c[top[0]])
        counts = torch.nn.functional.one_hot(idx[top], n).to(z_D.dtype).mean(0)
        probs = (1 - smoothing) * counts + smoothing / n
    return best, {"cost": best_cost}


def latent_cost(goal_D: torch.Tensor, along: float = 0.0, weights_D: torch.Tensor | None = None) -> Cost:
    """Squared distance of the last predicted encoding to the goal's, plus ``along`` times the mean
    over the earlier steps (reaching the goal sooner); the field's objective with along = 0.
    ``weights_D`` weighs the dimensions (e.g. the proprioception against the frame's encoding)."""

    def cost(z_NHD: torch.Tensor) -> torch.Tensor:
        sq = (z_NHD - goal_D).pow(2)
        d = (sq if weights_D is None else sq * weights_D).sum(-1)  # (N, H)
        return d[:, -1] + (along * d[:, :-1].mean(1) if along and d.shape[1] > 1 else 0.0)

    return cost
