"""The environment's true state per frame, where the env exposes it: what the eval's state probes read.

A *state reader* maps ``(env, obs, info)`` (the raw observation and info of a reset or step, before the
frame is made) to a flat ``{name: float}``; the recorder stores the values as the optional per-frame
array ``state`` of the data set and their names in ``info.json`` (``state_names``). A preset names its
reader (``WorldPreset.state``); ``auto`` picks one by env family (else a vector observation, else the env's
numeric ``state``), and ``module:function`` names your own.
``none`` records no state. The number of lives (ALE's ``info["lives"]``) is stored beside it as ``lives``,
from which the eval counts life losses.

The readers only read: none of them changes the env, so recording with or without state gives the same
frames and actions.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import numpy as np

from simulacra.errors import SimulacraError

Reader = Callable[[Any, Any, dict], dict[str, float]]


def ale_ram(env, obs, info) -> dict[str, float]:
    """The Atari's 128 bytes of RAM: every object's position, the score and the lives live there."""
    ram = env.unwrapped.ale.getRAM()
    return {f"ram_{i:03d}": float(v) for i, v in enumerate(ram)}


def car_racing(env, obs, info) -> dict[str, float]:
    """CarRacing's car: position, velocity, angle and angular velocity of the hull."""
    car = getattr(env.unwrapped, "car", None)
    if car is None:
        return {}
    h = car.hull
    return {
        "x": float(h.position[0]),
        "y": float(h.position[1]),
        "vx": float(h.linearVelocity[0]),
        "vy": float(h.linearVelocity[1]),
        "angle": float(h.angle),
        "angular_velocity": float(h.angularVelocity),
    }


def vizdoom(env, obs, info) -> dict[str, float]:
    """ViZDoom's game variables (health, ammo, ... as the scenario defines them) and, where the env gives
    object info (``objects_info_enabled``), the player's position and the fireballs in flight."""
    v = obs.get("gamevariables") if isinstance(obs, dict) else None
    out = {} if v is None else {f"gamevariable_{i}": float(x) for i, x in enumerate(np.ravel(v))}
    game = getattr(env.unwrapped, "game", None)
    state = game.get_state() if game is not None and not game.is_episode_finished() else None
    if state is None or not state.objects:
        return out
    player = next((o for o in state.objects if o.name == "DoomPlayer"), None)
    balls = sorted((o for o in state.objects if o.name.endswith("Ball")), key=lambda o: o.position_x)
    if player is not None:
        out |= {"player_x": float(player.position_x), "player_y": float(player.position_y)}
    out["fireballs"] = float(len(balls))
    return out


def push_t(env, obs, info) -> dict[str, float]:
    """Push-T: the agent's position and velocity, the T block's pose."""
    out = {}
    for key, names in (("pos_agent", ("agent_x", "agent_y")), ("vel_agent", ("agent_vx", "agent_vy")),
                       ("block_pose", ("block_x", "block_y", "block_angle"))):  # fmt: skip
        if key in info:
            out |= {n: float(v) for n, v in zip(names, np.ravel(info[key]), strict=False)}
    return out


def minigrid(env, obs, info) -> dict[str, float]:
    """MiniGrid: the agent's cell and direction."""
    u = env.unwrapped
    x, y = u.agent_pos
    return {"agent_x": float(x), "agent_y": float(y), "agent_dir": float(u.agent_dir)}


def miniworld(env, obs, info) -> dict[str, float]:
    """MiniWorld: the agent's position on the floor and its heading."""
    a = env.unwrapped.agent
    return {"agent_x": float(a.pos[0]), "agent_z": float(a.pos[2]), "agent_dir": float(a.dir)}


def crafter(env, obs, info) -> dict[str, float]:
    """Crafter: the player's position, facing and inventory (health, food, ..., wood, stone, ...)."""
    p = env.unwrapped._env._player
    out = {"player_x": float(p.pos[0]), "player_y": float(p.pos[1])}
    out |= {"facing_x": float(p.facing[0]), "facing_y": float(p.facing[1])}
    return out | {f"inventory_{k}": float(v) for k, v in p.inventory.items()}


def state_attribute(env, obs, info) -> dict[str, float]:
    """A numeric ``state`` vector on the unwrapped env (Gymnasium's classic control: CartPole, Pendulum, ...)."""
    s = getattr(env.unwrapped, "state", None)
    if s is None or isinstance(s, str | bytes | dict):
        return {}
    try:
        v = np.asarray(s, np.float64).ravel()
    except (TypeError, ValueError):
        return {}
    return {f"state_{i}": float(x) for i, x in enumerate(v)} if 0 < len(v) <= 256 and np.isfinite(v).all() else {}


def observation(env, obs, info) -> dict[str, float]:
    """The observation itself when it is a short numeric vector or a number (Pendulum, LunarLander, BipedalWalker,
    FrozenLake's cell): then the frames come from render() and the observation is the state."""
    try:
        v = np.asarray(obs, np.float64)
    except (TypeError, ValueError):
        return {}
    return {f"obs_{i}": float(x) for i, x in enumerate(v.ravel())} if v.ndim <= 1 and 0 < v.size <= 256 else {}


def generic(env, obs, info) -> dict[str, float]:
    """An env simulacra knows nothing about: its observation if that is a vector (what the env chose to show,
    often normalised: Pendulum gives cos and sin of its angle, which a picture shows, where its ``state``
    holds the unwrapped angle, which it does not), else its numeric ``state``."""
    return observation(env, obs, info) or state_attribute(env, obs, info)


READERS: dict[str, Reader] = {
    "ale_ram": ale_ram,
    "car_racing": car_racing,
    "vizdoom": vizdoom,
    "push_t": push_t,
    "minigrid": minigrid,
    "miniworld": miniworld,
    "crafter": crafter,
    "state_attribute": state_attribute,
    "observation": observation,
    "generic": generic,
}


def auto_reader(env_id: str) -> str:
    """The reader an env family gets by default; ``generic`` for the others (which records nothing where
    the env has neither a numeric ``state`` nor a vector observation)."""
    e = env_id.lower()
    for prefix, name in (("ale/", "ale_ram"), ("carracing", "car_racing"), ("vizdoom", "vizdoom"),
                         ("gym_pusht/", "push_t"), ("minigrid-", "minigrid"), ("miniworld-", "miniworld"),
                         ("crafter", "crafter")):  # fmt: skip
        if e.startswith(prefix) or e.split("/")[-1].startswith(prefix):
            return name
    return "generic"


def check_spec(spec: str | None) -> None:
    """One line for a --state that names no reader (imports a module:function to see that it exists)."""
    if spec is None or spec in ("auto", "none") or spec in READERS:
        return
    if ":" not in spec:
        raise SimulacraError(
            f"--state {spec!r} is unknown: choose auto, none, one of {', '.join(sorted(READERS))} or module:function"
        )
    try:
        resolve_reader(spec, "")
    except SimulacraError as e:
        raise SimulacraError(f"--state: {e}") from None


def resolve_reader(spec: str, env_id: str) -> Reader | None:
    """``spec`` ('auto', 'none', a reader name or 'module:function') -> the reader, or None for 'none'."""
    if spec == "none":
        return None
    if spec == "auto":
        return READERS[auto_reader(env_id)]
    if spec in READERS:
        return READERS[spec]
    if ":" in spec:
        mod, _, fn = spec.partition(":")
        try:
            reader = getattr(importlib.import_module(mod), fn)
        except (ImportError, AttributeError) as e:
            raise SimulacraError(f"state reader {spec!r} cannot be imported: {e}") from None
        if not callable(reader):
            raise SimulacraError(f"state reader {spec!r} is not a function")
        return reader
    raise SimulacraError(
        f"unknown state reader {spec!r}: choose auto, none, one of {sorted(READERS)} or module:function"
    )


def read(reader: Reader | None, env, obs, info) -> tuple[dict[str, float], int | None]:
    """(state values, lives) of the env now. A reader that fails or returns something that is not a flat
    mapping of finite numbers gives no state (recording goes on; the eval says the env has no state)."""
    lives = info.get("lives") if isinstance(info, dict) else None
    lives = int(lives) if isinstance(lives, int | np.integer) and not isinstance(lives, bool) else None
    if reader is None:
        return {}, lives
    try:
        values = reader(env, obs, info if isinstance(info, dict) else {})
        out = {str(k): float(v) for k, v in dict(values).items()}
    except Exception:  # noqa: BLE001 - a state reader is optional evidence, never a reason to stop recording
        return {}, lives
    return (out if all(np.isfinite(list(out.values()))) else {}), lives


def stack(rows: list[dict[str, float]], names: list[str]) -> np.ndarray | None:
    """Per-frame state dicts -> float32 (T, S) in ``names`` order; None unless every frame has every name."""
    if not names or any(set(r) != set(names) for r in rows):
        return None
    return np.array([[r[n] for n in names] for r in rows], np.float32)


EVENTS = ("reward", "termination", "life_loss")
"""The events the eval scores the world's heads on: a nonzero reward, an episode's end (terminated, not
truncated by the cap), and, where the env counts lives, a life lost."""


def step_events(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray | None]:
    """Per step t of an episode (L,): whether each event happened on the step from frame t to frame t+1
    (None where the data set cannot say: life losses without a recorded ``lives``)."""
    lives = arrays.get("lives")
    return {
        "reward": np.asarray(arrays["reward"]) != 0,
        "termination": np.asarray(arrays["terminated"], bool),
        "life_loss": None if lives is None else np.diff(np.asarray(lives, np.int64)) < 0,
    }
