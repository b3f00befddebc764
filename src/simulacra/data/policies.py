"""Exploration policies that record data a world model can learn from.

A policy lives inside the env's worker process (see ``FrameEnv.explore_action``) so scripted ones can
read privileged state. ``reset(seed, env)`` makes each episode's actions a pure function of its seed.
"""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np


def sample_action(space: gym.Space, rng: np.random.Generator):
    if isinstance(space, gym.spaces.Discrete):
        return int(space.start + rng.integers(space.n))
    if isinstance(space, gym.spaces.Box):
        return rng.uniform(space.low, space.high).astype(space.dtype)
    if isinstance(space, gym.spaces.MultiDiscrete):
        return (rng.random(space.nvec.shape) * space.nvec).astype(np.int64)
    raise TypeError(f"cannot sample from {space}")


class Policy:
    name = "policy"

    def reset(self, seed: int | None, env: gym.Env) -> None:
        self.rng = np.random.default_rng(None if seed is None else [seed, 0x5EED])

    def act(self, env: gym.Env):
        raise NotImplementedError


class RandomPolicy(Policy):
    """Uniform random actions, each kept with probability ``sticky`` so movement is sustained."""

    name = "random"

    def __init__(self, sticky: float = 0.75):
        self.sticky = sticky

    def reset(self, seed, env):
        super().reset(seed, env)
        self.prev = None

    def act(self, env):
        if self.prev is None or self.rng.random() > self.sticky:
            self.prev = sample_action(env.action_space, self.rng)
        return self.prev


class CarRacingPolicy(Policy):
    """Drives along the track at a varied speed and lateral offset, with random swerves and stops.

    Random actions never leave the start (the car barely moves); this covers straights, turns,
    grass excursions and varied speeds. Discrete actions (gymnasium car_racing.py, checked by
    driving): 0 noop, 1 steer RIGHT, 2 steer LEFT, 3 gas, 4 brake. Only one at a time, so the car
    steers when off heading and accelerates otherwise.
    """

    name = "carracing"
    NOOP, RIGHT, LEFT, GAS, BRAKE = range(5)
    HALF_WIDTH = 40 / 6  # car_racing.TRACK_WIDTH: centre line to road edge

    def __init__(
        self,
        lookahead: float = 15.0,
        epsilon: float = 0.02,
        target_speed: tuple[float, float] = (25.0, 90.0),
        offset_std: float = 0.5,
        damping: float = 0.3,
    ):
        self.lookahead, self.epsilon, self.target_speed = lookahead, epsilon, target_speed
        self.offset_std, self.damping = offset_std, damping

    def _replan(self):
        self.speed = float(self.rng.uniform(*self.target_speed))
        # lateral offset in road half-widths: mostly on the road, |offset| > 1 runs on the grass beside it
        self.offset = float(np.clip(self.rng.normal(0, self.offset_std), -1.5, 1.5))

    def reset(self, seed, env):
        super().reset(seed, env)
        self.prev, self.hold = self.NOOP, 0
        self._replan()
        track = env.unwrapped.track  # (alpha, beta, x, y) per tile, in driving order; (cos, sin) beta = right
        self.pts = np.array([(t[2], t[3]) for t in track]) if track else None
        self.right = np.array([(math.cos(t[1]), math.sin(t[1])) for t in track]) if track else None

    def act(self, env):
        car = env.unwrapped.car
        if car is None or self.pts is None:
            return self.GAS
        if self.hold > 0:  # a random manoeuvre in progress (swerve, brake, coast): off-policy data
            self.hold -= 1
            return self.prev
        if self.rng.random() < self.epsilon:
            self.prev, self.hold = int(self.rng.integers(5)), int(self.rng.integers(3, 15))
            return self.prev
        if self.rng.random() < 0.01:  # a new cruising speed and lateral offset now and then
            self._replan()
        pos = np.array(car.hull.position)
        n = len(self.pts)
        nearest = int(np.argmin(((self.pts - pos) ** 2).sum(1)))
        # aim at the first point ahead that is at least `lookahead` away: a target inside the turning
        # circle would make the car orbit it forever
        ahead = (nearest + np.arange(1, 40)) % n
        goals = self.pts[ahead] + self.offset * self.HALF_WIDTH * self.right[ahead]
        far = np.flatnonzero(np.linalg.norm(goals - pos, axis=1) >= self.lookahead)
        tx, ty = goals[far[0] if len(far) else -1]
        heading = car.hull.angle + math.pi / 2  # the car's nose is its local +y
        err = math.atan2(ty - pos[1], tx - pos[0]) - heading  # > 0: the target is to the left
        err = (err + math.pi) % (2 * math.pi) - math.pi
        # damping: the steering wheels turn with a lag, so steer on the heading error expected a moment
        # from now; bang-bang steering on the raw error weaves across the road
        err -= self.damping * car.hull.angularVelocity
        speed = float(np.linalg.norm(car.hull.linearVelocity))
        want = self.speed if abs(err) < 0.3 else min(self.speed, 30.0)  # slow down for sharp turns
        if abs(err) > 0.1:
            # steering needs motion: when slow, alternate gas and steering so the car keeps turning
            if speed < 10.0 and self.prev != self.GAS:
                action = self.GAS
            elif speed > want * 1.3:
                action = self.BRAKE
            else:
                action = self.LEFT if err > 0 else self.RIGHT
        elif speed < want:
            action = self.GAS
        elif speed > want * 1.3:
            action = self.BRAKE
        else:
            action = self.NOOP
        self.prev = action
        return action


class PushTPolicy(Policy):
    """Moves the pusher to waypoints around and onto the T block so it gets pushed in many ways.

    Random absolute targets jitter the agent in place and rarely touch the block. This picks a
    waypoint near the block (sometimes anywhere), walks the target there in small steps, and
    re-plans on arrival. Actions are absolute target positions in [0, 512]^2.
    """

    name = "pusht"

    def __init__(self, step_px: float = 18.0, near_block: float = 0.8):
        self.step_px, self.near_block = step_px, near_block

    def reset(self, seed, env):
        super().reset(seed, env)
        self.waypoint = None

    def _new_waypoint(self, env):
        u = env.unwrapped
        if self.rng.random() < self.near_block:
            bx, by = u.block.position
            r, a = self.rng.uniform(0, 90), self.rng.uniform(0, 2 * math.pi)
            return np.clip([bx + r * math.cos(a), by + r * math.sin(a)], 20, 492)
        return self.rng.uniform(40, 472, size=2)

    def act(self, env):
        u = env.unwrapped
        pos = np.array(u.agent.position, dtype=np.float64)
        if self.waypoint is None or np.linalg.norm(self.waypoint - pos) < 10 or self.rng.random() < 0.03:
            self.waypoint = self._new_waypoint(env)
        delta = self.waypoint - pos
        dist = np.linalg.norm(delta)
        target = pos + delta / max(dist, 1e-6) * min(dist, self.step_px) + self.rng.normal(0, 2, size=2)
        return np.clip(target, 0, 512).astype(np.float32)


class TakeCoverPolicy(RandomPolicy):
    """ViZDoom Take Cover: random sticky moves, overridden when they would walk into a fireball.

    Random moves die within a few seconds (about 90 steps), before the later, busier part of the
    game where more imps spawn. This reads the fireballs' positions and velocities (the env needs
    ``objects_info_enabled=True``), predicts where each crosses the player's line and, if the random
    move would be there then, takes the move that keeps the most clearance. With probability
    ``lapse`` per step it ignores the fireballs, so hits and deaths still happen.
    Actions: 0 noop, 1 MOVE_RIGHT (towards smaller y), 2 MOVE_LEFT (larger y).
    """

    name = "takecover"
    Y_RANGE = (16.0, 752.0)  # the strip the player walks along
    SPEED = (0.0, -7.0, 7.0)  # the player's y velocity per tic under each action (full speed)

    def __init__(self, sticky: float = 0.8, lapse: float = 0.1, clearance: float = 40.0, horizon: float = 60.0):
        super().__init__(sticky)
        self.lapse, self.clearance, self.horizon = lapse, clearance, horizon

    def act(self, env):
        explore = super().act(env)  # always drawn, so the random stream doesn't depend on the dodging
        state = env.unwrapped.game.get_state()
        if state is None or not state.objects or self.rng.random() < self.lapse:
            return explore
        player = next((o for o in state.objects if o.name == "DoomPlayer"), None)
        if player is None:
            return explore
        px, py = player.position_x, player.position_y
        balls = []  # (tics until it crosses the player's x, its y then) for incoming fireballs
        for o in state.objects:
            if o.name.endswith("Ball") and o.velocity_x < -1e-3:
                t = (px - o.position_x) / o.velocity_x
                if 0 <= t <= self.horizon:
                    balls.append((t, o.position_y + o.velocity_y * t))

        def clearance(a):
            return min((abs(y - np.clip(py + self.SPEED[a] * t, *self.Y_RANGE)) for t, y in balls), default=1e9)

        if clearance(explore) >= self.clearance:
            return explore
        self.prev = max((0, 1, 2), key=clearance)
        return self.prev


POLICIES = {p.name: p for p in (RandomPolicy, CarRacingPolicy, PushTPolicy, TakeCoverPolicy)}


def make_policy(name: str, **kwargs) -> Policy:
    if name not in POLICIES:
        raise KeyError(f"unknown policy {name!r}; known: {sorted(POLICIES)}")
    return POLICIES[name](**kwargs)
