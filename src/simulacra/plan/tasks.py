"""Goal-reaching tasks in real envs: how to set a start state, what counts as success, and how the
planner's action features map to the env's actions.

A task is the part of the protocol that knows the env: episodes come from held-out recordings (start
at step t, goal = the frame and state at t + offset), the real env is set to the start state, and
success is judged on the env's true state, never on the model's pictures.

- Push-T (gym-pusht), as DINO-WM, LeWM and stable-worldmodel score it: agent and block within 20 px of
  the goal's, block angle within pi/9. The env's actions are absolute targets for a PD controller;
  the planning world sees them relative to the agent (target - agent position, / 30 px), the way the
  recorded explorer moves. Turning a relative target back into an absolute one needs the agent's
  position: the benchmark reads it from the env (proprioception, as DINO-WM feeds its planner);
  without a state (a player handing over to the planner) it is found in the frame.
- Navigation (MiniGrid FourRooms): reach the goal's cell; discrete actions (left, right, forward).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from simulacra.data.store import Dataset
from simulacra.errors import SimulacraError


@dataclass(frozen=True)
class Episode:
    """One start/goal pair from a held-out recording."""

    episode: int
    start: int
    """Step of the start state in the recording."""
    start_state: np.ndarray
    goal_state: np.ndarray
    goal_frame: np.ndarray
    """(H, W, 3) uint8."""
    seed: int | None = None
    """The recording episode's reset seed (MiniGrid: its layout)."""


def draw_episodes(ds: Dataset, n: int, offset: int = 25, seed: int = 0) -> list[Episode]:
    """``n`` start/goal pairs (goal ``offset`` steps after the start) spread over the data set's episodes."""
    if "state" not in ds.arrays(0):
        raise SimulacraError(f"{ds.root}: the data set holds no state per frame (record with --state auto)")
    rng = np.random.default_rng(seed)
    eligible = [i for i in range(len(ds)) if ds.episodes[i].length > offset]
    if not eligible:
        raise SimulacraError(f"{ds.root}: no episode is longer than the goal offset ({offset} steps)")
    out = []
    for k in range(n):
        i = eligible[k % len(eligible)] if n <= len(eligible) else int(rng.choice(eligible))
        t = int(rng.integers(0, ds.episodes[i].length - offset + 1))
        s = ds.arrays(i)["state"]
        goal = np.array(ds.frames(i, t + offset, t + offset + 1)[0])
        out.append(Episode(i, t, np.array(s[t]), np.array(s[t + offset]), goal, ds.episodes[i].seed))
    return out


def _angle_diff(a: float, b: float) -> float:
    return abs((a - b + math.pi) % (2 * math.pi) - math.pi)


class PushT:
    name = "pusht"
    success_rule = "pusher and block within 20 px, block angle within pi/9"
    env_id = "gym_pusht/PushT-v0"
    env_kwargs = {"obs_type": "pixels"}
    state_reader = "push_t"
    SCALE = 30.0
    """Relative targets are divided by this (the explorer's largest step is about 28 px)."""
    feature_dim = 2
    proprio_dim = 2
    PROPRIO_SCALE = 20.0
    """The pusher's position / this is its proprioception: 20 px of error costs the planner 1, about as
    much as a typical 25-step change of the frame's encoding costs per 40 (measured on held-out data)."""
    low, high = -1.0, 1.0
    discrete = False
    world = "vector"
    """The planning world trained for this task by default (plan/train.py's WORLDS)."""
    mpc = {"horizon": 5, "along": 1.0, "cost": "distance"}
    """The planner's defaults on this task (docs/plan.md: what each choice measured)."""
    train_episodes = 200
    """Episodes the benchmark records for training (held out: 120 with other seeds)."""
    POS_TOL, ANGLE_TOL = 20.0, math.pi / 9

    def features(self, action: np.ndarray, state: np.ndarray) -> np.ndarray:
        """Recorded absolute targets (T, 2) -> relative features, given the states (T, >=2) they were taken in."""
        return ((np.asarray(action) - np.asarray(state)[..., :2]) / self.SCALE).astype(np.float32)

    def to_env(self, feature: np.ndarray, agent_xy: np.ndarray) -> np.ndarray:
        return np.clip(np.asarray(agent_xy) + np.asarray(feature) * self.SCALE, 0, 512).astype(np.float32)

    def proprio(self, states_TS: np.ndarray) -> np.ndarray:
        """Recorded states -> proprioception (T, 2): the pusher's position, scaled."""
        return (np.asarray(states_TS)[..., :2] / self.PROPRIO_SCALE).astype(np.float32)

    def mark(self, frame: np.ndarray, proprio: np.ndarray) -> np.ndarray:
        """Draw the pusher where the proprioception puts it (the decoder cannot draw a dozen pixels)."""
        out = frame.copy()
        h, w = out.shape[:2]
        x, y = np.asarray(proprio, np.float64)[:2] * self.PROPRIO_SCALE * np.array([w, h]) / 512
        yy, xx = np.mgrid[:h, :w]
        out[(xx + 0.5 - x) ** 2 + (yy + 0.5 - y) ** 2 <= (15 * w / 512) ** 2 + 0.5] = (65, 105, 225)
        return out

    def agent_xy(self, env, frame: np.ndarray | None = None) -> np.ndarray:
        if env is not None:
            return np.array(env.unwrapped.agent.position, dtype=np.float64)
        return locate_agent(frame)

    def reset_to(self, env, state: np.ndarray, seed: int | None = None) -> np.ndarray:
        """Set the env to a recorded state: agent (x, y), block (x, y, angle); returns the frame.
        gym-pusht sets the block's position before its angle, and the rotation turns the body about its
        centre of gravity, which moves ``block.position``: shift the requested position to undo that."""
        s = np.asarray(state, dtype=np.float64)
        env.reset(seed=0)
        cog = np.array(env.unwrapped.block.center_of_gravity)
        th = s[6]
        rot = np.array([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]])
        pos = s[4:6] - cog + rot @ cog
        frame, _ = env.reset(options={"reset_to_state": [s[0], s[1], pos[0], pos[1], th]})
        return frame

    def state(self, env) -> np.ndarray:
        u = env.unwrapped
        return np.array([*u.agent.position, *u.agent.velocity, *u.block.position, u.block.angle])

    def errors(self, state: np.ndarray, goal: np.ndarray) -> dict[str, float]:
        """How far from the goal: agent and block distance (px), block angle (radians)."""
        return {
            "agent_px": float(np.linalg.norm(state[:2] - goal[:2])),
            "block_px": float(np.linalg.norm(state[4:6] - goal[4:6])),
            "angle_rad": _angle_diff(float(state[6]), float(goal[6])),
        }

    def success(self, state: np.ndarray, goal: np.ndarray) -> bool:
        e = self.errors(state, goal)
        return e["agent_px"] <= self.POS_TOL and e["block_px"] <= self.POS_TOL and e["angle_rad"] <= self.ANGLE_TOL


def locate_agent(frame: np.ndarray) -> np.ndarray:
    """Push-T's agent (the RoyalBlue disc) in a frame: its pixels' centroid, in env coordinates (512 px)."""
    f = frame.astype(np.int16)
    blue = (f[..., 2] > 150) & (f[..., 0] < 140) & (f[..., 2] - f[..., 1] > 60)
    if not blue.any():
        return np.array([256.0, 256.0])
    ys, xs = np.nonzero(blue)
    h, w = frame.shape[:2]
    return np.array([(xs.mean() + 0.5) * 512 / w, (ys.mean() + 0.5) * 512 / h])


class FourRooms:
    """MiniGrid FourRooms, the full grid rendered at 64x64: four rooms joined by one-cell gaps whose
    places (and the green square's) depend on the reset seed. Navigation with walls: the goal is the
    agent's cell 25 explorer steps later, often in another room. Chosen over a ViZDoom maze because its
    state can be set exactly (the recording's seed rebuilds the layout; the agent's cell and heading are
    attributes) and it renders in a millisecond."""

    name = "fourrooms"
    success_rule = "the agent in the goal's cell"
    env_id = "MiniGrid-FourRooms-v0"
    env_kwargs = {"max_steps": 200}
    state_reader = "minigrid"
    feature_dim = 3
    """One-hot over turn left, turn right, forward (the other actions do nothing here)."""
    proprio_dim = 2
    PROPRIO_SCALE = 0.5
    """The agent's cell / this is its proprioception: one cell off costs 4."""
    low, high = 0.0, 1.0
    discrete = True
    world = "cells"
    """The cell world: the vector JEPA plans 55% here, the cell world 97-100% (docs/plan.md)."""
    mpc = {"horizon": 8, "along": 0.3, "cost": "steps"}
    """A longer horizon sees around a wall; the steps cost knows walls (docs/plan.md)."""
    train_episodes = 300
    """Episodes the benchmark records for training (held out: 120 with other seeds)."""
    GRID = 19

    def heading(self, states_TS: np.ndarray) -> np.ndarray:
        """The agent's direction (0 east, 1 south, 2 west, 3 north), the cell world's second record."""
        return np.asarray(states_TS)[:, 2].astype(np.int64)

    def features(self, action: np.ndarray, state: np.ndarray) -> np.ndarray:
        a = np.asarray(action).astype(np.int64)
        return (a[:, None] == np.arange(self.feature_dim)[None]).astype(np.float32)

    def to_env(self, feature: np.ndarray, agent_xy=None) -> int:
        return int(np.argmax(feature))

    def proprio(self, states_TS: np.ndarray) -> np.ndarray:
        return (np.asarray(states_TS, np.float64)[..., :2] / self.PROPRIO_SCALE).astype(np.float32)

    def agent_xy(self, env, frame: np.ndarray | None = None) -> np.ndarray:
        if env is not None:
            return np.array(env.unwrapped.agent_pos, dtype=np.float64)
        f = frame.astype(np.int16)
        red = (f[..., 0] > 150) & (f[..., 1] < 80) & (f[..., 2] < 80)
        if not red.any():
            return np.array([self.GRID / 2, self.GRID / 2])
        ys, xs = np.nonzero(red)
        h, w = frame.shape[:2]
        return np.floor([(xs.mean() + 0.5) * self.GRID / w, (ys.mean() + 0.5) * self.GRID / h])

    def mark(self, frame: np.ndarray, proprio: np.ndarray) -> np.ndarray:
        out = frame.copy()
        h, w = out.shape[:2]
        x, y = np.asarray(proprio, np.float64)[:2] * self.PROPRIO_SCALE
        cy, cx = int((y + 0.5) * h / self.GRID), int((x + 0.5) * w / self.GRID)
        out[max(cy - 1, 0) : cy + 2, max(cx - 1, 0) : cx + 2] = (255, 0, 0)
        return out

    def reset_to(self, env, state: np.ndarray, seed: int | None = None) -> np.ndarray:
        env.reset(seed=seed)  # the layout is the seed's
        u = env.unwrapped
        u.agent_pos = (int(state[0]), int(state[1]))
        u.agent_dir = int(state[2])
        return env._frame(None)

    def state(self, env) -> np.ndarray:
        u = env.unwrapped
        return np.array([*u.agent_pos, u.agent_dir], dtype=np.float64)

    def errors(self, state: np.ndarray, goal: np.ndarray) -> dict[str, float]:
        return {"cells": float(np.abs(np.asarray(state[:2]) - np.asarray(goal[:2])).sum())}

    def success(self, state: np.ndarray, goal: np.ndarray) -> bool:
        return self.errors(state, goal)["cells"] == 0


TASKS = {"pusht": PushT, "fourrooms": FourRooms}


def task_for(preset: str | None):
    if preset not in TASKS:
        raise SimulacraError(
            f"no planning task for the preset {preset!r}; planning tasks: {', '.join(TASKS)} "
            "(a task names the start-state setter and the success test)"
        )
    return TASKS[preset]()
