"""The learned world as a Gymnasium environment: ``WorldEnv`` (one dream) and ``WorldVectorEnv`` (a batch,
stepped as one batched world call). Play, plan and dream all stand on these.

Contract (Gymnasium 1.x): ``reset(seed=, options=) -> (obs, info)``, ``step(a) -> (obs, reward,
terminated, truncated, info)``; observations are uint8 (H, W, 3) frames, the action space is the world's.
``terminated`` is the termination head's call (probability > 0.5); ``truncated`` comes at
``max_episode_steps``. A dream starts from a real context: drawn from ``starts`` (a data set, an array
of frame stacks, or a callable), or given per reset as ``options={"frames": (T, H, W, 3), "actions": (T-1, ...)}``.
``reset(seed=s)`` fixes the start and every sampling draw after it, so a seeded episode replays exactly.
"""

from __future__ import annotations

import json
import numbers

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from simulacra.errors import SimulacraError
from simulacra.world.world import World

Context = tuple[np.ndarray, np.ndarray | None]  # frames (T, H, W, 3), the T-1 actions between them (or None)


class Starts:
    """Where dreams begin: ``draw(rng) -> (frames (T, H, W, 3), actions (T-1, ...) or None, info)``.

    From a data set: a uniformly drawn episode (of ``episodes``, default all with frames) and step t in
    it, uniform over [``min_t``, last frame]; the context is its last K frames up to t. ``min_t=0``
    includes episode beginnings (a one-frame, padded context, as right after a real env's reset).
    """

    def __init__(self, source, world: World, episodes=None, min_t: int = 0):
        _check_world(world)
        if not (_is_int(min_t) and min_t >= 0):
            raise SimulacraError(f"min_t must be a whole number, 0 or more, not {min_t!r}")
        self.world, self.min_t = world, int(min_t)
        self.ds = self.stacks = self.fn = None
        if callable(source) and not hasattr(source, "episodes"):
            self.fn = source
        elif hasattr(source, "episodes") and hasattr(source, "frames"):
            self.ds = source
            self.episodes = list(range(len(source))) if episodes is None else list(episodes)
            if not self.episodes:
                raise SimulacraError("no episodes to start dreams from")
            bad = [i for i in self.episodes if not (_is_int(i) and 0 <= i < len(source))]
            if bad:
                raise SimulacraError(f"start episode {bad[0]!r} is not one of the data set's 0..{len(source) - 1}")
            self.episodes = [int(i) for i in self.episodes]
        else:
            self.stacks = world.frame_space.validate(np.asarray(source), what="start frames")
            if self.stacks.ndim == 4:
                self.stacks = self.stacks[:, None]
            if self.stacks.ndim != 5:
                raise SimulacraError(f"start frames are (N, T, H, W, 3) stacks, not shape {list(self.stacks.shape)}")

    def draw(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None, dict]:
        if self.fn is not None:
            frames, actions = self.fn(rng)
            return np.asarray(frames), None if actions is None else np.asarray(actions), {}
        if self.stacks is not None:
            i = int(rng.integers(len(self.stacks)))
            return self.stacks[i], None, {"start": i}
        i = self.episodes[int(rng.integers(len(self.episodes)))]
        L = self.ds.episodes[i].length
        t = int(rng.integers(min(self.min_t, L), L + 1))
        frames, actions = self.world.episode_context(self.ds, i, t)
        return frames[0], None if actions is None else actions[0], {"episode": i, "t": t}


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool | np.bool_)


def _check_world(world) -> None:
    if not isinstance(world, World):
        raise SimulacraError(f"a world env needs a World (World.load(path)), not {type(world).__name__}")


def _check_env_args(max_episode_steps, render_mode, num_envs=1) -> None:
    """One line for env arguments Gymnasium would otherwise trip over later, mid-episode."""
    if not (_is_int(max_episode_steps) and max_episode_steps >= 1):
        raise SimulacraError(f"max_episode_steps must be a whole number, 1 or more, not {max_episode_steps!r}")
    if not (_is_int(num_envs) and num_envs >= 1):
        raise SimulacraError(f"num_envs must be a whole number, 1 or more, not {num_envs!r}")
    if render_mode not in (None, "rgb_array"):
        raise SimulacraError(f"render_mode must be 'rgb_array' or None, not {render_mode!r}")


def _starts(starts, world: World) -> Starts | None:
    return starts if isinstance(starts, Starts) or starts is None else Starts(starts, world)


def _context(options: dict | None, starts: Starts | None, rng: np.random.Generator):
    if options and "frames" in options:
        a = options.get("actions")
        return np.asarray(options["frames"]), None if a is None else np.asarray(a), {}
    if starts is None:
        raise SimulacraError("this world env has no starts: pass starts= or reset(options={'frames': ...})")
    return starts.draw(rng)


class WorldEnv(gym.Env):
    """One dream of a learned world, as a Gymnasium env."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 15}

    def __init__(
        self,
        world: World,
        starts: Starts | object | None = None,
        *,
        max_episode_steps: int = 1000,
        render_mode: str | None = "rgb_array",
    ):
        _check_world(world)
        _check_env_args(max_episode_steps, render_mode)
        self.world, self.starts = world, _starts(starts, world)
        self.max_episode_steps, self.render_mode = max_episode_steps, render_mode
        self.observation_space = world.frame_space.to_gym()
        self.action_space = world.action_space.to_gym()
        self.metadata = {**self.metadata, "render_fps": int(world.config.get("fps", 15))}
        self._state = self._frame = self._gen = None
        self._t = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        frames, actions, info = _context(options, self.starts, self.np_random)
        self._gen = self.world.generator(int(self.np_random.integers(2**62)))
        self._state = self.world.reset(frames[None], None if actions is None else actions[None])
        self._frame, self._t = np.array(frames[-1], np.uint8), 0
        return self._frame.copy(), info

    def step(self, action):
        if self._state is None:
            raise SimulacraError("call reset() before step()")
        self._state, frames, reward, done = self.world.step(self._state, np.asarray(action)[None], self._gen)
        self._frame, self._t = frames[0], self._t + 1
        terminated = bool(done[0])
        truncated = self._t >= self.max_episode_steps and not terminated
        return self._frame.copy(), float(reward[0]), terminated, truncated, {"t": self._t}

    def render(self):
        return None if self._frame is None else self._frame.copy()

    def close(self):
        self._state = None


class WorldVectorEnv(VectorEnv):
    """``num_envs`` dreams of one world, stepped together as one batched world call, with Gymnasium's
    next-step autoreset: the step after an env ends resets it (its action is ignored) and returns the
    first frame of the new dream with reward 0."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 15, "autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(
        self,
        world: World,
        num_envs: int,
        starts: Starts | object | None = None,
        *,
        max_episode_steps: int = 1000,
        render_mode: str | None = "rgb_array",
    ):
        _check_world(world)
        _check_env_args(max_episode_steps, render_mode, num_envs)
        num_envs, max_episode_steps = int(num_envs), int(max_episode_steps)
        self.world, self.starts = world, _starts(starts, world)
        self.num_envs, self.max_episode_steps, self.render_mode = num_envs, max_episode_steps, render_mode
        self.single_observation_space = world.frame_space.to_gym()
        self.single_action_space = world.action_space.to_gym()
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self.metadata = {**self.metadata, "render_fps": int(world.config.get("fps", 15))}
        self._state = None
        self._frames = np.zeros((num_envs, *world.frame_space.shape), np.uint8)
        self._t = np.zeros(num_envs, np.int64)
        self._ended = np.zeros(num_envs, bool)

    def _reset_envs(self, index: np.ndarray, options: dict | None) -> list[dict]:
        infos = []
        for i in index:
            frames, actions, info = _context(options, self.starts, self.np_random)
            one = self.world.reset(frames[None], None if actions is None else actions[None])
            if self._state is None:
                self._state = type(one)(*(x.repeat(self.num_envs, *[1] * (x.dim() - 1)) for x in vars(one).values()))
            self._state.put(int(i), one)
            self._frames[i] = frames[-1]
            infos.append(info)
        self._t[index], self._ended[index] = 0, False
        return infos

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._state = None
        infos = self._reset_envs(np.arange(self.num_envs), options)  # starts first, as WorldEnv draws them
        self._gen = self.world.generator(int(self.np_random.integers(2**62)))
        return self._frames.copy(), self._infos(infos, np.arange(self.num_envs))

    def step(self, actions):
        if self._state is None:
            raise SimulacraError("call reset() before step()")
        restart = np.flatnonzero(self._ended)
        self._state, frames, reward, done = self.world.step(self._state, np.asarray(actions), self._gen)
        self._t += 1
        terminated = done.copy()
        truncated = (self._t >= self.max_episode_steps) & ~terminated
        self._frames[:] = frames
        if len(restart):  # these envs ended last step: this step starts their next dream instead
            infos = self._reset_envs(restart, None)
            reward[restart], terminated[restart], truncated[restart] = 0.0, False, False
        self._ended = terminated | truncated
        info = self._infos(infos, restart) if len(restart) else {}
        return self._frames.copy(), reward.astype(np.float64), terminated, truncated, info

    def _infos(self, infos: list[dict], index: np.ndarray) -> dict:
        out: dict = {}
        for i, info in zip(index, infos, strict=True):
            out = self._add_info(out, info, int(i))
        return out

    def render(self):
        return self._frames.copy()

    def close_extras(self, **kwargs):
        self._state = None


def make_env(world: World | str, starts=None, **kw) -> WorldEnv:
    """``WorldEnv`` of a world (object or folder); ``starts`` may also be a data set folder. By default,
    dreams start from the held-out episodes of the world's own data set."""
    from simulacra.data import Dataset

    world = World.load(world) if not isinstance(world, World) else world
    if starts is None:
        starts = default_starts(world)
    elif isinstance(starts, str):
        starts = Dataset.open(starts)
    return WorldEnv(world, starts, **kw)


def default_starts(world: World) -> Starts:
    """Starts drawn from the world's own data set, its held-out episodes (the run's config names both)."""
    from simulacra.data import Dataset

    run_config = None if world.path is None else world.path.parent / "config.json"
    if run_config is None or not run_config.exists():
        raise SimulacraError("this world has no run config naming its data set; pass starts= explicitly")
    try:
        cfg = json.loads(run_config.read_text())
        data = cfg["data"]
    except (UnicodeDecodeError, ValueError, TypeError, KeyError) as e:
        raise SimulacraError(f"{run_config}: no data set named here ({type(e).__name__}: {e}); pass starts=") from None
    ds = Dataset.open(data)
    return Starts(ds, world, episodes=cfg.get("holdout_episodes") or None)
