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
    """Follows the track centre line with noisy steering and speed, and sometimes drifts off it.

    Random actions never leave the start (the car barely moves); this covers straights, turns,
    grass excursions and varied speeds. Discrete actions (gymnasium car_racing.py, checked by
    driving): 0 noop, 1 steer RIGHT, 2 steer LEFT, 3 gas, 4 brake. Only one at a time, so the car
    cannot steer and accelerate together: it steers when off heading and accelerates otherwise.
    """

    name = "carracing"
    NOOP, RIGHT, LEFT, GAS, BRAKE = range(5)

    def __init__(
        self,
        lookahead: int = 6,
        epsilon: float = 0.03,
        target_speed: tuple[float, float] = (25.0, 90.0),
        bias_std: float = 0.2,
    ):
        self.lookahead, self.epsilon, self.target_speed, self.bias_std = lookahead, epsilon, target_speed, bias_std

    def reset(self, seed, env):
        super().reset(seed, env)
        self.prev, self.hold, self.bias = self.NOOP, 0, 0.0
        self.speed = float(self.rng.uniform(*self.target_speed))
        track = env.unwrapped.track
        self.pts = np.array([(t[2], t[3]) for t in track]) if track else None  # centre line, in driving order

    def act(self, env):
        car = env.unwrapped.car
        if car is None or self.pts is None:
            return self.GAS
        if self.hold > 0:  # a random manoeuvre in progress (swerves, stops, coasting: off-track data)
            self.hold -= 1
            return self.prev
        if self.rng.random() < self.epsilon:
            self.prev, self.hold = int(self.rng.integers(5)), int(self.rng.integers(3, 15))
            return self.prev
        if self.rng.random() < 0.01:  # a new cruising speed and lateral offset now and then
            self.speed = float(self.rng.uniform(*self.target_speed))
            self.bias = float(self.rng.normal(0, self.bias_std))
        x, y = car.hull.position
        nearest = int(np.argmin(((self.pts - (x, y)) ** 2).sum(1)))
        tx, ty = self.pts[(nearest + self.lookahead) % len(self.pts)]
        heading = car.hull.angle + math.pi / 2  # the car's nose is its local +y
        err = math.atan2(ty - y, tx - x) - heading + self.bias  # > 0: the target is to the left
        err = (err + math.pi) % (2 * math.pi) - math.pi
        speed = float(np.linalg.norm(car.hull.linearVelocity))
        want = self.speed if abs(err) < 0.3 else min(self.speed, 30.0)  # slow down for sharp turns
        if abs(err) > 0.15:
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


POLICIES = {p.name: p for p in (RandomPolicy, CarRacingPolicy, PushTPolicy)}


def make_policy(name: str, **kwargs) -> Policy:
    if name not in POLICIES:
        raise KeyError(f"unknown policy {name!r}; known: {sorted(POLICIES)}")
    return POLICIES[name](**kwargs)
