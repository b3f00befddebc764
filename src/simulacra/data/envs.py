"""Real environments as frame sources: any Gymnasium id in, uint8 (H, W, 3) frames out.

``make_env`` builds one env the recorder can run in a vector-env worker: its observation *is* the
RGB frame at the stored size, and it carries its exploration policy (``explore_action``) so that scripted
policies can read privileged state (track, block pose) inside the worker process.

How a picture becomes a stored frame (``fit``): ``stretch`` resizes it to the stored size whatever its
shape (what every preset does: their recordings stay byte-identical), ``pad`` keeps its aspect ratio and
fills the rest with black bars (letterbox; the default for ``--env-id``, so MiniWorld's 80x60 is not
squashed), ``crop`` keeps the aspect ratio and cuts the longer side's edges off. A square picture comes
out the same under all three.

Env settings from the command line: :func:`parse_env_kwargs` reads ``--env-kwargs`` (a JSON object, or
``key=value`` items, space- or comma-separated, values read as JSON where they parse);
:func:`family_defaults` holds the settings simulacra adds for a family of ids unless the user sets them
(ALE v5: no sticky actions).
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import logging
import os
import re
import sys
from collections.abc import Callable, Iterable
from typing import Any, Literal

import gymnasium as gym
import numpy as np
from PIL import Image

from simulacra.data import state
from simulacra.errors import SimulacraError
from simulacra.spaces import ActionSpace

log = logging.getLogger(__name__)

Fit = Literal["pad", "stretch", "crop"]
FITS = ("pad", "stretch", "crop")

# Importing these registers their env ids with Gymnasium; each is optional.
_ENV_PACKAGES = {
    "ALE/": "ale_py",
    "Vizdoom": "vizdoom.gymnasium_wrapper",
    "gym_pusht/": "gym_pusht",
    "MiniGrid-": "minigrid",
    "MiniWorld-": "miniworld",
    "CarRacing": "gymnasium.envs.box2d",
    "simulacra/": "simulacra.data.crafter_env",
}


def _register(env_id: str) -> str:
    """Import what registers ``env_id`` (a known package, or the MODULE of a Gymnasium "MODULE:ID");
    return the id as the registry knows it."""
    if ":" in env_id:  # Gymnasium's "module:EnvId": importing the module registers the env
        module, _, env_id = env_id.partition(":")
        try:
            importlib.import_module(module)
        except Exception as e:
            raise SimulacraError(f"env {module}:{env_id}: cannot import {module!r} ({type(e).__name__}: {e})") from None
    for prefix, module in _ENV_PACKAGES.items():
        if env_id.startswith(prefix):
            if prefix == "MiniWorld-":  # pyglet reads this at import: render offscreen, no display needed
                os.environ.setdefault("PYGLET_HEADLESS", "1")
            try:
                mod = importlib.import_module(module)
            except ImportError as e:
                raise SimulacraError(f"env {env_id!r} needs the package for {module!r}: {e}") from None
            if module == "ale_py":
                gym.register_envs(mod)
    return env_id


def base_id(env_id: str) -> str:
    """The id as the registry knows it: without the "MODULE:" of a Gymnasium "MODULE:ID"."""
    return env_id.partition(":")[2] if ":" in env_id else env_id


# ---- env settings from the command line ------------------------------------------------------------
_SPLIT = re.compile(r",(?=\s*[A-Za-z_][\w.-]*\s*=)")
"""A comma that starts another key=value item (not one inside a value such as ``sizes=[1,2]``)."""
_PY_WORDS = {"True": True, "False": False, "None": None}


def _value(text: str):
    text = text.strip()
    if text in _PY_WORDS:
        return _PY_WORDS[text]
    try:
        return json.loads(text)
    except ValueError:
        return text  # a plain string: obs_type=pixels


def _items(given) -> Iterable[str]:
    if isinstance(given, str):
        yield given
        return
    for item in given:
        yield from _items(item)


def parse_env_kwargs(given) -> dict:
    """``--env-kwargs`` as a dict: a dict as it is; otherwise strings (nested lists of them, as a repeated
    flag gives), each a JSON object or ``key=value`` items separated by commas, values read as JSON where
    they parse (``0`` -> 0, ``true`` -> True, ``[64,64]`` -> a list) and as strings otherwise. Later
    items win. One line naming --env-kwargs for anything else."""
    if given is None:
        return {}
    if isinstance(given, dict):
        bad = [k for k in given if not isinstance(k, str)]
        if bad:
            raise SimulacraError(f"--env-kwargs: keys must be strings, not {bad[0]!r}")
        return dict(given)
    out: dict = {}
    for token in _items(given):
        token = token.strip()
        if not token:
            continue
        if token.startswith("{"):
            try:
                obj = json.loads(token)
            except ValueError as e:
                raise SimulacraError(f"--env-kwargs {token!r} is not a JSON object ({e})") from None
            if not isinstance(obj, dict):
                raise SimulacraError(f"--env-kwargs {token!r} is not a JSON object")
            out.update(obj)
            continue
        for item in _SPLIT.split(token):
            key, eq, value = item.partition("=")
            key = key.strip()
            if not eq or not key.isidentifier():
                raise SimulacraError(
                    f"--env-kwargs {item.strip()!r} is not key=value (or a JSON object); "
                    "e.g. --env-kwargs repeat_action_probability=0 frameskip=4"
                )
            out[key] = _value(value)
    return out


def family_defaults(env_id: str) -> dict[str, tuple[Any, str]]:
    """Settings simulacra adds for ``env_id``'s family unless the user sets them: {name: (value, why)}."""
    if base_id(env_id).startswith("ALE/"):
        return {
            "repeat_action_probability": (
                0.0,
                "by default ALE v5 repeats the previous action a quarter of the time (sticky actions), so a "
                "quarter of the recorded actions would not be the executed ones",
            )
        }
    return {}


def registered_limit(env_id: str) -> int | None:
    """The episode step limit the env's registration declares (Gymnasium's TimeLimit), if any."""
    try:
        spec = gym.spec(_register(env_id))
    except Exception:  # unknown ids fail later, with their own line
        return None
    limit = getattr(spec, "max_episode_steps", None)
    return int(limit) if isinstance(limit, int) and limit > 0 else None


# ---- noise from env libraries --------------------------------------------------------------------
NOISE = (re.compile(r"^Falling back to num_samples=\d+$"),)
"""Lines env libraries print to stdout every time an env starts, which say nothing a user can act on:
MiniWorld's renderer asks for more multisampling than the software OpenGL offers and says so."""


@contextlib.contextmanager
def _quiet_start() -> Any:
    """Drop the known noise lines an env prints (Python-level stdout) while it is built; pass the rest on."""
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            yield
    finally:
        dropped = 0
        for line in buf.getvalue().splitlines(keepends=True):
            if any(n.match(line.strip()) for n in NOISE):
                dropped += 1
            else:
                sys.stdout.write(line)
        if dropped:
            log.debug("dropped %d line(s) of renderer noise while the env started", dropped)


def _is_image(space: gym.Space) -> bool:
    return (
        isinstance(space, gym.spaces.Box)
        and space.dtype == np.uint8
        and len(space.shape) in (2, 3)
        and (len(space.shape) == 2 or space.shape[-1] in (1, 3, 4))
        and min(space.shape[:2]) >= 8
    )


def find_frame_source(env: gym.Env, requested: str = "auto") -> str:
    """Where frames come from: 'obs', 'obs:KEY' for a Dict observation, or 'render'."""
    space = env.observation_space
    if requested != "auto":
        return requested
    if _is_image(space):
        return "obs"
    if isinstance(space, gym.spaces.Dict):
        for key, sub in space.spaces.items():
            if _is_image(sub):
                return f"obs:{key}"
    # render_mode alone is not enough: gym.make sets it even on envs that declare no rgb_array rendering
    if env.render_mode == "rgb_array" and "rgb_array" in (env.metadata or {}).get("render_modes", []):
        return "render"
    raise SimulacraError(
        f"env {env.spec.id if env.spec else env}: observations are {space}, not images, and it does not "
        "render rgb_array frames; simulacra learns from pixels"
    )


def _resize(frame: np.ndarray, h: int, w: int) -> np.ndarray:
    if frame.shape[:2] == (h, w):
        return frame
    return np.asarray(Image.fromarray(frame).resize((w, h), Image.Resampling.BOX))


def fitted_size(native: tuple[int, int], size: tuple[int, int], fit: str) -> tuple[int, int]:
    """(height, width) the picture's content takes inside a ``size`` frame under ``fit``."""
    (h, w), (H, W) = native, size
    if fit != "pad":
        return H, W
    scale = min(H / h, W / w)
    return min(H, max(1, round(h * scale))), min(W, max(1, round(w * scale)))


def to_rgb(frame: np.ndarray, size: tuple[int, int], fit: str = "stretch") -> np.ndarray:
    """Any uint8 image (H, W), (H, W, 1|3|4) -> (h, w, 3) uint8, area-resampled; ``fit`` says what
    happens to a picture of another aspect ratio (module docstring)."""
    frame = np.asarray(frame)
    if frame.dtype != np.uint8:
        raise SimulacraError(f"frames must be uint8 images, got {frame.dtype}")
    if frame.ndim == 2:
        frame = frame[..., None]
    if frame.shape[-1] == 1:
        frame = np.repeat(frame, 3, axis=-1)
    frame = frame[..., :3]
    H, W = size
    h, w = frame.shape[:2]
    if fit == "stretch" or h * W == w * H:  # same aspect ratio: every fit is a plain resize
        if frame.shape[:2] != size:
            frame = np.asarray(Image.fromarray(frame).resize((W, H), Image.Resampling.BOX))
        return frame
    if fit == "crop":  # cut the longer side down to the frame's aspect ratio, centred, then resize
        if w * H > h * W:
            cw = max(1, round(h * W / H))
            x0 = (w - cw) // 2
            frame = frame[:, x0 : x0 + cw]
        else:
            ch = max(1, round(w * H / W))
            y0 = (h - ch) // 2
            frame = frame[y0 : y0 + ch]
        return _resize(np.ascontiguousarray(frame), H, W)
    if fit != "pad":
        raise SimulacraError(f"--fit {fit!r} is unknown; choose one of {', '.join(FITS)}")
    nh, nw = fitted_size((h, w), size, "pad")
    out = np.zeros((H, W, 3), np.uint8)  # black bars
    y0, x0 = (H - nh) // 2, (W - nw) // 2
    out[y0 : y0 + nh, x0 : x0 + nw] = _resize(np.ascontiguousarray(frame), nh, nw)
    return out


class FrameEnv(gym.Wrapper):
    """Observation = the env's picture at ``size``; carries the exploration policy of its preset."""

    def __init__(
        self,
        env: gym.Env,
        size: tuple[int, int],
        frame_source: str = "auto",
        policy=None,
        fit: str = "stretch",
        state_reader: Callable | None = None,
    ):
        super().__init__(env)
        self.size, self.fit = size, fit
        self.state_reader = state_reader
        self.extras: dict = {"state": {}, "lives": None}
        """The env's true state and lives at the last frame (see simulacra.data.state)."""
        self.native_shape: tuple[int, ...] | None = None
        """Shape of the last picture the env gave, before it became a stored frame."""
        self.source = find_frame_source(env, frame_source)
        self.space = ActionSpace.from_gym(env.action_space)  # one line for a space simulacra cannot learn
        self.observation_space = gym.spaces.Box(0, 255, (*size, 3), np.uint8)
        self.policy = policy

    def _frame(self, obs: Any) -> np.ndarray:
        if self.source == "render":
            frame = self.env.render()
        elif self.source.startswith("obs:"):
            frame = obs[self.source[4:]]
        else:
            frame = obs
        if frame is None:
            raise SimulacraError("env returned no frame (render() gave None; is render_mode='rgb_array'?)")
        self.native_shape = tuple(np.shape(frame))
        return to_rgb(frame, self.size, self.fit)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        obs, info = self.env.reset(seed=seed, options=options)
        if self.policy is not None:
            self.policy.reset(seed, self.env)
        self.extras = {"state": {}, "lives": None}
        self._read_state(obs, info)
        return self._frame(obs), info

    def step(self, action):
        self.space.validate(action)  # a one-line error before the env sees an action it cannot take
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._read_state(obs, info)
        return self._frame(obs), reward, terminated, truncated, info

    def _read_state(self, obs, info) -> None:
        values, lives = state.read(self.state_reader, self.env, obs, info)
        last = self.extras["state"]
        if last:  # the names of the episode's first frame rule; a value missing now keeps its last one
            values = {k: values.get(k, v) for k, v in last.items()}
        if lives is None:
            lives = self.extras["lives"]
        self.extras = {"state": values, "lives": lives}

    def explore_action(self):
        """The preset's exploration policy's next action (computed here, next to the env's state)."""
        return self.policy.act(self.env)


def make_env(
    env_id: str,
    env_kwargs: dict | None = None,
    size: tuple[int, int] = (64, 64),
    frame_source: str = "auto",
    max_episode_steps: int | None = None,
    policy=None,
    fit: str = "stretch",
    state_reader: str = "none",
) -> FrameEnv:
    """Build a Gymnasium env whose observations are RGB frames of ``size``; clear errors if it can't."""
    registered = _register(env_id)
    kwargs = dict(env_kwargs or {})
    if registered not in gym.registry:
        close = [k for k in gym.registry if registered.lower().split("/")[-1][:5] in k.lower()][:5]
        hint = f" (did you mean one of {close}?)" if close else ""
        raise SimulacraError(f"unknown env id {env_id!r}{hint}")
    if frame_source in ("auto", "render"):
        kwargs.setdefault("render_mode", "rgb_array")
    if kwargs.get("render_mode") != "human":
        # pygame-drawn envs (CartPole, CarRacing, Push-T) draw rgb_array frames without a display; SDL's
        # dummy video driver keeps it from probing for one ("XDG_RUNTIME_DIR is invalid" on every start)
        os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    given = set(env_kwargs or {})
    with _quiet_start():
        try:
            env = gym.make(env_id, max_episode_steps=max_episode_steps, **kwargs)
        except TypeError as e:  # envs that take no render_mode keyword (or a keyword the user got wrong)
            if "render_mode" in given or "render_mode" not in kwargs:
                raise _bad_kwargs(env_id, given, e) from None
            kwargs.pop("render_mode", None)
            try:
                env = gym.make(env_id, max_episode_steps=max_episode_steps, **kwargs)
            except TypeError as e2:
                raise _bad_kwargs(env_id, given, e2) from None
    try:
        return FrameEnv(env, size, frame_source, policy, fit, state.resolve_reader(state_reader, env_id))
    except SimulacraError:
        env.close()
        raise


def _bad_kwargs(env_id: str, given: set, e: Exception) -> Exception:
    """A TypeError out of gym.make: one line naming the env settings, if any were given (else re-raise)."""
    if not given:
        return e
    msg = " ".join(str(e).split())
    return SimulacraError(f"env {env_id} does not take these settings {sorted(given)} (--env-kwargs): {msg}")
