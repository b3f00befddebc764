"""Exploration policies that record data a world model can learn from.

A policy lives inside the env's worker process (see ``FrameEnv.explore_action``) so scripted ones can
read privileged state. ``reset(seed, env)`` makes each episode's actions a pure function of its seed.
"""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np

from simulacra.errors import SimulacraError
from simulacra.spaces import ActionSpace


class Policy:
    name = "policy"

    def reset(self, seed: int | None, env: gym.Env) -> None:
        self.rng = np.random.default_rng(None if seed is None else [seed, 0x5EED])

    def act(self, env: gym.Env):
        raise NotImplementedError


class RandomPolicy(Policy):
    """Random actions, each kept with probability ``sticky`` so movement is sustained.

    ``weights`` (Discrete spaces only) are relative action probabilities, for worlds where uniform
    choice wastes most steps on actions that do nothing or end the episode (e.g. Crafter's sleep).
    """

    name = "random"

    def __init__(self, sticky: float = 0.75, weights: list[float] | None = None):
        self.sticky = sticky
        self.p = None if weights is None else np.asarray(weights, np.float64) / np.sum(weights)

    def reset(self, seed, env):
        super().reset(seed, env)
        self.prev = None
        self.space = ActionSpace.from_gym(env.action_space)
        if self.p is not None and self.space.n != len(self.p):  # n is 0 unless the space is discrete
            raise SimulacraError(f"{len(self.p)} action weights do not fit the action space {self.space}")

    def act(self, env):
        if self.prev is None or self.rng.random() > self.sticky:
            space = self.space
            if self.p is not None:
                self.prev = int(space.start + self.rng.choice(space.n, p=self.p))
            else:
                a = space.sample(self.rng)
                self.prev = int(a) if a.ndim == 0 else a  # a plain int for discrete spaces, as envs expect
        return self.prev


class CarRacingPolicy(Policy):
    """Drives along the track at a varied speed and lateral offset, with random swerves and stops.

    Random actions never leave the start (the car barely moves); this covers straights, turns,
    grass excursions and varied speeds. Discrete actions, as gymnasium's car_racing.py applies them
    (so 1 turns the car right): 0 noop, 1 steer RIGHT, 2 steer LEFT, 3 gas, 4 brake. Only one at a
    time, so the car steers when off heading and accelerates otherwise.
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


def _segment_distance(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """Distance from point p to the segment a-b."""
    ab = b - a
    t = np.clip((p - a) @ ab / max(ab @ ab, 1e-9), 0.0, 1.0)
    return float(np.linalg.norm(a + t * ab - p))


class PushTPolicy(Policy):
    """Walks the pusher through strokes that push the T block somewhere, plus pokes and free moves.

    Random absolute targets jitter the agent in place and rarely touch the block. This plans one
    waypoint list at a time: a *push* (go behind the block as seen from a random destination, then
    walk through it to the destination, so the block travels and turns, and blocks pushed into a
    wall come back out), a *poke* (a point near the block: glancing contacts, rotations) or a *move*
    (anywhere: the agent alone). Each plan has its own speed. Actions are absolute target positions
    in [0, 512]^2 (gym_pusht: a PD controller pulls the agent towards them; y grows downwards).
    """

    name = "pusht"

    def __init__(self, speed: tuple[float, float] = (8.0, 30.0), plans: tuple[float, float, float] = (0.6, 0.3, 0.1)):
        self.speed_range, self.plans = speed, np.asarray(plans) / np.sum(plans)

    def reset(self, seed, env):
        super().reset(seed, env)
        self.waypoints: list[np.ndarray] = []

    def _plan(self, env):
        u = env.unwrapped
        # the T's centre of mass (``block.position`` is the body origin, on the crossbar's edge)
        block = np.array(u.block.local_to_world(u.block.center_of_gravity), dtype=np.float64)
        self.speed = float(self.rng.uniform(*self.speed_range))
        kind = self.rng.choice(3, p=self.plans)
        if kind == 0:  # push: from behind the block, through it, to a destination away from the walls
            dest = self.rng.uniform(120, 392, size=2)
            away = block - dest
            away /= max(np.linalg.norm(away), 1e-6)
            behind = np.clip(block + away * self.rng.uniform(60, 100) + self.rng.normal(0, 15, size=2), 20, 492)
            self.waypoints = [behind, dest]
            agent = np.array(u.agent.position, dtype=np.float64)
            if _segment_distance(block, agent, behind) < 70:  # go round the block, not through it
                side = np.array([-away[1], away[0]])
                side *= np.sign(side @ (agent - block)) or 1.0
                self.waypoints.insert(0, np.clip(block + 90 * side, 20, 492))
        elif kind == 1:  # poke: a point near the block
            r, a = self.rng.uniform(0, 80), self.rng.uniform(0, 2 * math.pi)
            self.waypoints = [np.clip(block + r * np.array([math.cos(a), math.sin(a)]), 20, 492)]
        else:  # move: anywhere
            self.waypoints = [self.rng.uniform(30, 482, size=2)]

    def act(self, env):
        u = env.unwrapped
        pos = np.array(u.agent.position, dtype=np.float64)
        if self.waypoints and np.linalg.norm(self.waypoints[0] - pos) < 12:
            self.waypoints.pop(0)
        if not self.waypoints or self.rng.random() < 0.01:
            self._plan(env)
        delta = self.waypoints[0] - pos
        dist = np.linalg.norm(delta)
        target = pos + delta / max(dist, 1e-6) * min(dist, self.speed) + self.rng.normal(0, 2, size=2)
        return np.clip(target, 0, 512).astype(np.float32)


class TakeCoverPolicy(RandomPolicy):
    """ViZDoom Take Cover: random sticky moves, overridden when they would walk into a fireball.

    Random moves die early, before the later, busier part of the game where more imps spawn, so a
    world model would rarely see it. This reads the fireballs' positions and velocities (the env needs
    ``objects_info_enabled=True``), predicts where each crosses the player's line and, if the random
    move would be there then, takes the move that keeps the most clearance. With probability
    ``lapse`` per step it ignores the fireballs, so hits and deaths still happen.
    Actions: 0 noop, 1 MOVE_RIGHT (towards smaller y), 2 MOVE_LEFT (larger y).
    """

    name = "takecover"
    Y_RANGE = (16.0, 752.0)  # the strip the player walks along
    SPEED = (0.0, -7.0, 7.0)  # the player's y velocity per tic under each action (full speed)

    def __init__(self, sticky: float = 0.8, lapse: float = 0.3, clearance: float = 60.0, horizon: float = 60.0):
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


class PaddlePolicy(RandomPolicy):
    """Breakout and Pong: a noisy scripted player that follows the ball with its paddle, read from RAM.

    Random play almost never returns the ball, so a random data set holds no broken bricks after the
    first few and, in Pong, only points lost: a world model then never sees the events it must predict.
    Each episode draws a skill in [``skill_low``, 1]: the probability per step that the paddle follows
    the ball; otherwise (and with probability ``epsilon`` on top) a random sticky action is taken, so
    misses, life losses and every action are in the data too. Measured over 1,000 steps (3 seeds,
    skill 1, epsilon 0.1): Breakout 27 reward steps against random play's 1-2; Pong 5-9 points, won
    and lost, against random play's lost-only.
    """

    name = "paddle"
    GAMES = {
        # RAM addresses (AtariARI): ball coordinate and paddle coordinate along the paddle's axis, the
        # offset that centres the paddle under the ball, and (toward larger, toward smaller, serve) actions
        "ALE/Breakout-v5": (99, 72, 8, (2, 3, 1)),
        "ALE/Pong-v5": (54, 51, 0, (3, 2, 1)),
    }

    def __init__(self, sticky: float = 0.75, skill_low: float = 0.3, epsilon: float = 0.1, serve: float = 0.05):
        super().__init__(sticky)
        self.skill_low, self.epsilon, self.serve = skill_low, epsilon, serve

    def reset(self, seed, env):
        super().reset(seed, env)
        game = env.spec.id if env.spec is not None else ""
        if game not in self.GAMES:
            raise SimulacraError(f"the paddle policy plays {', '.join(self.GAMES)}, not {game or 'this env'}")
        self.ball, self.pad, self.offset, (self.plus, self.minus, self.fire) = self.GAMES[game]
        self.skill = self.rng.uniform(self.skill_low, 1.0)

    def act(self, env):
        explore = super().act(env)  # always drawn, so the random stream does not depend on the play
        if self.rng.random() >= self.skill or self.rng.random() < self.epsilon:
            return explore
        ram = env.unwrapped.ale.getRAM()
        ball = int(ram[self.ball])
        if ball == 0 or self.rng.random() < self.serve:  # no ball in play (Breakout waits for a serve)
            return self.fire
        d = ball - (int(ram[self.pad]) + self.offset)
        return self.plus if d > 3 else self.minus if d < -3 else 0


class MiniGridPolicy(RandomPolicy):
    """MiniGrid (DoorKey and kin): walks to a subgoal by breadth-first search and uses it, with random steps.

    Random actions mostly turn on the spot or do nothing (pickup/drop/toggle/done on empty floor):
    they rarely open the door and never enter the second room. Subgoals: the key (pick it up), the
    closed door once the key is carried (open it), a random reachable cell (wander), rarely the goal
    square (ends the episode). With probability ``epsilon`` a step is a random sticky action instead,
    so bumps, turns, drops and useless actions are in the data too. Actions: 0 turn left, 1 turn
    right, 2 forward, 3 pickup, 4 drop, 5 toggle, 6 done; directions 0 +x, 1 +y, 2 -x, 3 -y.
    """

    name = "minigrid"
    STEPS = ((1, 0), (0, 1), (-1, 0), (0, -1))

    def __init__(self, sticky: float = 0.3, epsilon: float = 0.2, weights: list[float] | None = None):
        super().__init__(sticky, weights)
        self.epsilon = epsilon

    def reset(self, seed, env):
        super().reset(seed, env)
        self.target = None  # (cell, action to use on it or None to step onto it)

    def _cells(self, u, kind):
        return [(x, y) for x in range(u.width) for y in range(u.height) if (c := u.grid.get(x, y)) and c.type == kind]

    def _passable(self, u, x, y):
        c = u.grid.get(x, y)
        return c is None or (c.can_overlap() and c.type not in ("lava", "goal"))  # the goal ends the episode

    def _choose(self, u):
        doors = [d for d in self._cells(u, "door") if not u.grid.get(*d).is_open]
        keys = self._cells(u, "key")
        r = self.rng.random()
        if u.carrying is None and keys and r < 0.7:
            return keys[self.rng.integers(len(keys))], 3
        if u.carrying is not None and doors and r < 0.7:
            return doors[self.rng.integers(len(doors))], 5
        goals = self._cells(u, "goal")
        if goals and r < 0.03:
            return goals[0], None
        free = [(x, y) for x in range(u.width) for y in range(u.height) if u.grid.get(x, y) is None]
        return free[self.rng.integers(len(free))], None

    def _path_step(self, u, start, cell):
        """First cell on a shortest path from start to cell (its last step may enter cell, or face it)."""
        prev, frontier = {start: None}, [start]
        while frontier:
            nxt = []
            for p in frontier:
                for dx, dy in self.STEPS:
                    q = (p[0] + dx, p[1] + dy)
                    if q in prev:
                        continue
                    if q == cell:
                        prev[q] = p
                        while prev[q] != start:
                            q = prev[q]
                        return q
                    if self._passable(u, *q):
                        prev[q] = p
                        nxt.append(q)
            frontier = nxt
        return None

    def act(self, env):
        explore = super().act(env)  # always drawn, so the random stream doesn't depend on the plan
        u = env.unwrapped
        if self.rng.random() < self.epsilon:
            return explore
        pos = tuple(int(v) for v in u.agent_pos)
        for _ in range(3):  # re-plan when the subgoal is done or unreachable
            if self.target is None:
                self.target = self._choose(u)
            cell, use = self.target
            c = u.grid.get(*cell)
            if use == 3:  # pick up the key: done once carrying something, void if the key moved
                done = u.carrying is not None or c is None or c.type != "key"
            elif use == 5:  # open the door: needs the key (a random step may have dropped it)
                done = u.carrying is None or c is None or c.type != "door" or c.is_open
            else:  # walk there: done on arrival, void if something was dropped on it
                done = pos == cell or (c is not None and c.type != "goal" and not c.can_overlap())
            step = None if done else self._path_step(u, pos, cell)
            if step is not None:
                break
            self.target = None
        else:
            return explore
        want = self.STEPS.index((step[0] - pos[0], step[1] - pos[1]))
        if want == u.agent_dir:
            return use if step == cell and use is not None else 2
        return 1 if (want - u.agent_dir) % 4 == 1 else 0


POLICIES = {
    p.name: p for p in (RandomPolicy, CarRacingPolicy, PushTPolicy, TakeCoverPolicy, MiniGridPolicy, PaddlePolicy)
}


def make_policy(name: str, **kwargs) -> Policy:
    if name not in POLICIES:
        raise SimulacraError(f"unknown policy {name!r}; known policies: {', '.join(sorted(POLICIES))}")
    try:
        return POLICIES[name](**kwargs)
    except TypeError as e:  # an option this policy does not take (e.g. --sticky for a scripted explorer)
        raise SimulacraError(f"policy {name!r} does not take these options {sorted(kwargs)} ({e})") from None
