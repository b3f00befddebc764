"""Model-predictive control: the planner as a policy, and one goal-reaching episode in the real env.

Every ``replan`` env steps the planner encodes the newest frame, searches ``horizon`` action blocks
through the planning world toward the goal's encoding, and queues the first blocks' env actions. The
same object is a ``simulacra.world.policy.Policy`` (frames in, one action out), so a player in
``simulacra play`` can hand control to it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from simulacra.errors import SimulacraError
from simulacra.models.jepa import JEPA
from simulacra.plan import planners
from simulacra.plan.tasks import Episode

COSTS = ("distance", "steps", "pixels")


@dataclass
class MPCConfig:
    planner: str = "cem"
    """cem, mppi or gradient."""
    horizon: int = 5
    """Action blocks planned ahead (5 blocks of 5 env steps = 25 steps, the goal's offset)."""
    replan: int = 5
    """Env steps executed between plans."""
    search: planners.Search = field(default_factory=planners.Search)
    along: float = 1.0
    """Weight of the intermediate steps' mean distance to the goal in the cost. 0 (the last step only,
    the field's objective) procrastinates under re-planning: every plan arrives at its horizon's end,
    which moves on with each re-plan (Push-T: 35% success against 75% with 1; docs/plan.md)."""
    cost: str = "distance"
    """What the plan minimises: "distance" (squared, between the predicted and the goal's encodings, or
    what the world reads from them) or "steps" (the world's own count of steps to the goal, for worlds
    that can count them: the cell world; docs/plan.md) or "pixels" (squared distance between the decoded
    predictions and the goal picture, for worlds that decode)."""
    proprio_weight: float = 1.0
    """Weight of the proprioception's squared error against the frame encoding's, in the cost."""


class Planner:
    """A goal-conditioned policy that plans in a JEPA latent (see module docstring)."""

    def __init__(self, jepa: JEPA, task, goal_frame: np.ndarray | None, cfg: MPCConfig, seed: int = 0):
        self.jepa, self.task, self.cfg = jepa.eval(), task, cfg
        self.name = f"planner ({cfg.planner})"
        self.block = jepa.cfg.block
        self.seed = seed
        if cfg.cost not in COSTS:
            raise SimulacraError(f"cost must be one of {', '.join(COSTS)}, not {cfg.cost!r}")
        if cfg.cost == "steps" and not hasattr(jepa, "steps_cost"):
            raise SimulacraError(
                f"cost 'steps' needs a world that counts steps (the cell world), not {type(jepa).__name__}"
            )
        if cfg.cost == "pixels" and not getattr(jepa.cfg, "decoder", False):
            raise SimulacraError(
                f"cost 'pixels' needs a world that decodes, and this {type(jepa).__name__} has no decoder"
            )
        self.goal_z = None
        if goal_frame is not None:  # a player sets the goal later, from the page
            self.set_goal(goal_frame)
        self.reset(seed)

    @property
    def has_goal(self) -> bool:
        return self.goal_z is not None

    def _proprio_dim(self) -> int:
        return getattr(self.jepa.cfg, "proprio_dim", 0)

    def _features(self, z_ND: torch.Tensor) -> torch.Tensor:
        """What the cost compares: the encoding itself, or what the world reads from it (the cell
        world's agent position)."""
        read = getattr(self.jepa, "cost_features", None)
        return z_ND if read is None else read(z_ND)

    def _encode(self, frame_HWC: np.ndarray, agent_xy: np.ndarray) -> torch.Tensor:
        proprio = None
        if self._proprio_dim():
            proprio = torch.from_numpy(self.task.proprio(np.asarray(agent_xy, np.float64)[None]))
        with torch.no_grad():
            return self.jepa.encode(torch.from_numpy(np.array(frame_HWC)).permute(2, 0, 1)[None], proprio)[0]

    def set_goal(self, goal_frame: np.ndarray) -> None:
        # a goal picture carries no state: the goal's agent is found in it
        with torch.no_grad():
            self.goal_z = self._encode(goal_frame, self.task.agent_xy(None, goal_frame))
            self.goal_D = self._features(self.goal_z[None])[0]
        self.goal_cost = self.jepa.steps_cost(self.goal_z, self.cfg.along) if self.cfg.cost == "steps" else None
        if self.cfg.cost == "pixels":
            goal_px = torch.from_numpy(np.array(goal_frame)).permute(2, 0, 1).float().flatten() / 127.5 - 1
            by_pixels = planners.latent_cost(goal_px, self.cfg.along)

            def pixel_cost(z_NHD: torch.Tensor) -> torch.Tensor:
                N, H = z_NHD.shape[:2]
                return by_pixels(self.jepa.decode(z_NHD.flatten(0, 1)).reshape(N, H, -1))

            self.goal_cost = pixel_cost

    def reset(self, seed: int | None = None) -> None:
        self.gen = torch.Generator().manual_seed(self.seed if seed is None else int(seed))
        self.queue: list[np.ndarray] = []
        self.previous: torch.Tensor | None = None
        self.plan_seconds: list[float] = []
        self.imagined: list[torch.Tensor] = []
        """The encodings each plan expected, (H, D) per plan."""
        self.plan_at: list[int] = []
        """The env step at which each plan was made."""
        self.t = 0

    def plan(self, frame_HWC: np.ndarray, agent_xy: np.ndarray) -> np.ndarray:
        """Search from this frame; returns the planned features (H * block, feature_dim)."""
        t0 = time.perf_counter()
        cfg, j = self.cfg, self.jepa
        A = j.cfg.action_dim
        low = np.full(A, self.task.low, np.float32)
        high = np.full(A, self.task.high, np.float32)
        z_D = self._encode(frame_HWC, agent_xy)

        def rollout(z, actions_NHA):
            return j.rollout(z.expand(len(actions_NHA), -1), actions_NHA)

        weights = None
        if self._proprio_dim() and cfg.proprio_weight != 1.0:
            weights = torch.ones(len(self.goal_D))
            weights[j.cfg.latent_dim :] = cfg.proprio_weight
        base = planners.latent_cost(self.goal_D, cfg.along, weights)

        def cost(z_NHD):
            return base(self._features(z_NHD)) if self.goal_cost is None else self.goal_cost(z_NHD)

        shift = max(1, cfg.replan // self.block)
        mean = planners.warm_start(self.previous, shift, torch.zeros(A))
        if getattr(self.task, "discrete", False):  # one categorical choice per env step, blocks concatenated
            n, H = self.task.feature_dim, cfg.horizon

            def blocks(z, onehot_NTn):
                return rollout(z, onehot_NTn.reshape(len(onehot_NTn), H, -1))

            idx, _ = planners.cem_discrete(blocks, cost, z_D, H * self.block, n, cfg.search, self.gen)
            best_HA = torch.nn.functional.one_hot(idx, n).to(z_D.dtype).reshape(H, -1)
        else:
            fn = getattr(planners, cfg.planner)
            std = torch.full((A,), (self.task.high - self.task.low) / 4)
            best_HA, _ = fn(rollout, cost, z_D, cfg.horizon, low, high, cfg.search, self.gen, mean, std)
        self.previous = best_HA.detach()
        with torch.no_grad():
            self.imagined.append(rollout(z_D, best_HA[None])[0])
        self.plan_seconds.append(time.perf_counter() - t0)
        return best_HA.numpy().reshape(cfg.horizon * self.block, -1)

    def act(self, frames_THWC: np.ndarray, agent_xy: np.ndarray | None = None):
        """The next env action; ``agent_xy`` from the env's state where known, else found in the frame."""
        frame = frames_THWC[-1]
        xy = agent_xy if agent_xy is not None else self.task.agent_xy(None, frame)
        if not self.has_goal:
            raise SimulacraError("the planner has no goal yet: give it a goal picture first")
        if not self.queue:
            self.plan_at.append(self.t)
            self.queue = list(self.plan(frame, xy)[: self.cfg.replan])
        feature = self.queue.pop(0)
        self.t += 1
        return self.task.to_env(feature, xy)


def run_episode(env, task, policy, ep: Episode, budget: int = 50, seed: int = 0, judge: bool = True) -> dict:
    """Set the env to the start, let ``policy`` act for up to ``budget`` steps; success on the true state
    (``judge``: stop at the first success; without a goal state, run the whole budget)."""
    frame = task.reset_to(env, ep.start_state, ep.seed)
    if hasattr(policy, "set_goal"):
        policy.set_goal(ep.goal_frame)
    policy.reset(seed)
    frames = [frame]
    steps_to_success = None
    for t in range(budget):
        action = policy.act(np.stack(frames[-2:]), task.agent_xy(env))
        frame, *_ = env.step(action)
        frames.append(frame)
        if judge and task.success(task.state(env), ep.goal_state):
            steps_to_success = t + 1
            break
    return {
        "success": steps_to_success is not None,
        "steps": steps_to_success,
        "frames": np.stack(frames),
        "plan_seconds": list(getattr(policy, "plan_seconds", [])),
        "env_steps": len(frames) - 1,
        "final_state": task.state(env),
        "final_errors": task.errors(task.state(env), ep.goal_state) if ep.goal_state is not None else None,
    }
