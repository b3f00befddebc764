"""A play session: one dream a person drives, and everything needed to replay it bit for bit.

A session is its world's identity (a checksum of the weights), the start context (frames and the actions
between them), a seed, and a log of events: steps (the action taken), settings changes and context
switches (reset, resync to the real env). Replaying the log on the same world and backend calls the world
exactly as the live session did, with the same random stream, so it gives the same frames bit for bit.

The file is one ``.npz`` read with ``allow_pickle=False``: a JSON header (as bytes) and uint8 / float32
arrays. Nothing in it can run code, and every field is checked before it is used.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from simulacra.errors import SimulacraError
from simulacra.world.env import WorldEnv
from simulacra.world.world import World
from simulacra.world.world import _is_int as _int
from simulacra.world.world import _is_real as _real

FORMAT = "simulacra.play_session"
VERSION = 1
MAX_EVENTS = 1_000_000
"""A session file may log at most this many events (about 18 hours at 15 frames/s)."""


class SessionError(SimulacraError):
    """A session file or a session call that cannot be used."""


@dataclass(frozen=True)
class Settings:
    temperature: float = 1.0
    """Sampling temperature: noise scale of the flow sampler (0: its mean path)."""
    sampling_steps: int = 4
    """Euler steps per frame: fewer is faster, more is closer to the trained sampler."""
    fps: float = 15.0
    """Target frames per second of the live loop (the preset's rate by default)."""

    @classmethod
    def of(cls, world: World) -> Settings:
        return cls(
            float(world.dyn.cfg.temperature), int(world.dyn.cfg.sampling_steps), float(world.config.get("fps", 15))
        )

    def replace(self, **changes) -> Settings:
        """These settings with ``changes`` applied, each checked (one line for a bad value)."""
        unknown = set(changes) - set(asdict(self))
        if unknown:
            raise SessionError(f"unknown setting {sorted(unknown)[0]!r}; settings: {', '.join(asdict(self))}")
        out = {**asdict(self), **changes}
        t, s, f = out["temperature"], out["sampling_steps"], out["fps"]
        if not (_real(t) and 0 <= t <= 4):
            raise SessionError(f"temperature must be a number in [0, 4], not {t!r}")
        if not (_int(s) and 1 <= s <= 64):
            raise SessionError(f"sampling_steps must be a whole number in 1..64, not {s!r}")
        if not (_real(f) and 1 <= f <= 120):
            raise SessionError(f"fps must be a number in [1, 120], not {f!r}")
        return Settings(float(t), int(s), float(f))


def world_checksum(world: World) -> str:
    """sha256 of the world's weights (both safetensors files, in a fixed order): a session names its world by it."""
    h = hashlib.sha256()
    if world.path is not None:
        for name in ("autoencoder", "dynamics"):
            h.update((world.path / f"{name}.safetensors").read_bytes())
        return h.hexdigest()
    for module in (world.ae, world.dyn):  # an unsaved world: its tensors, by name
        for k, v in sorted(module.state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class Session:
    """One dream of ``world``, started from ``frames`` (T, H, W, 3) and the T-1 ``actions`` between them."""

    def __init__(
        self,
        world: World,
        frames: np.ndarray,
        actions: np.ndarray | None = None,
        *,
        seed: int = 0,
        start: dict | None = None,
        settings: Settings | None = None,
        checksum: str | None = None,
    ):
        if not (_int(seed) and 0 <= seed < 2**62):
            raise SessionError(f"seed must be a whole number in 0..2^62, not {seed!r}")
        self.base = world
        self.checksum = checksum or world_checksum(world)
        self.seed, self.start = int(seed), dict(start or {"source": "frames"})
        self.settings = Settings.of(world)
        self._worlds: dict[tuple, World] = {}
        self.env = WorldEnv(world, None, max_episode_steps=2**62)
        self.contexts: list[tuple[np.ndarray, np.ndarray | None]] = []
        self.events: list[dict] = []
        self.t = 0
        """Steps taken since the session began (across resets)."""
        self.frame = self._switch(frames, actions)
        if settings is not None and settings != self.settings:
            self.set(**asdict(settings))

    # ---- what a player does --------------------------------------------------------------------------
    def step(self, action) -> tuple[np.ndarray, float, bool]:
        """One dreamed step: (frame (H, W, 3) uint8, reward sign, terminated)."""
        space = self.base.action_space
        if space.kind == "none":
            a, logged = np.zeros((), np.int64), None
        else:
            a = space.validate(np.asarray(action), ())
            logged = a.tolist()
        if len(self.events) >= MAX_EVENTS:
            raise SessionError(f"this session has logged {MAX_EVENTS} events; save it and start a new one")
        frame, reward, terminated, _, _ = self.env.step(a)
        self.events.append({"a": logged})
        self.frame, self.t = frame, self.t + 1
        return frame, reward, terminated

    def set(self, **changes) -> Settings:
        """Change settings from the next step on (logged, so a replay changes them at the same step)."""
        new = self.settings.replace(**changes)
        if new == self.settings:
            return new
        key = (new.temperature, new.sampling_steps)
        if key != (self.settings.temperature, self.settings.sampling_steps):
            if key not in self._worlds:
                self._worlds[key] = self.base.with_options(
                    temperature=new.temperature, sampling_steps=new.sampling_steps
                )
            self.env.world = self._worlds[key]
        self.settings = new
        self.events.append({"set": asdict(new)})
        return new

    def restart(self, frames: np.ndarray | None = None, actions: np.ndarray | None = None) -> np.ndarray:
        """Continue from another context (``None``: the session's start again): reset, or resync to reality."""
        if frames is None:
            return self._switch(None, None, index=0)
        return self._switch(frames, actions)

    def _switch(self, frames, actions, index: int | None = None) -> np.ndarray:
        if index is None:
            frames = self.base.frame_space.validate(np.asarray(frames), what="start frames")
            if frames.ndim == 3:
                frames = frames[None]
            if frames.ndim != 4 or not 1 <= len(frames) <= 64:
                raise SessionError(f"a start context is 1 to 64 frames (T, H, W, 3), not shape {list(frames.shape)}")
            frames = np.ascontiguousarray(frames[-self.base.K :], np.uint8)
            if actions is not None:
                actions = np.asarray(actions)[-(len(frames) - 1) :] if len(frames) > 1 else None
                if actions is not None:
                    actions = self.base.action_space.validate(actions, (len(frames) - 1,), what="context action")
            self.contexts.append((frames, actions))
            index = len(self.contexts) - 1
        frames, actions = self.contexts[index]
        # each context switch re-seeds from the session seed and the event count, so a replay draws alike
        seed = (self.seed * 1_000_003 + len(self.events)) % 2**62
        opts = {"frames": frames} if actions is None else {"frames": frames, "actions": actions}
        self.frame, _ = self.env.reset(seed=seed, options=opts)
        self.events.append({"context": index})
        return self.frame

    # ---- saving, replaying, branching ---------------------------------------------------------------
    def to_bytes(self) -> bytes:
        """The session as one .npz file (JSON header + arrays; no pickles)."""
        header = {
            "format": FORMAT,
            "version": VERSION,
            "world": {"sha256": self.checksum, "name": _world_name(self.base)},
            "backend": self.base.backend,
            "seed": self.seed,
            "start": self.start,
            "settings": asdict(Settings.of(self.base)),
            "events": self.events,
            "contexts": len(self.contexts),
        }
        arrays = {"header": np.frombuffer(json.dumps(header).encode(), np.uint8)}
        for i, (f, a) in enumerate(self.contexts):
            arrays[f"frames_{i}"] = f
            if a is not None:
                arrays[f"actions_{i}"] = np.asarray(a)
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        return buf.getvalue()

    def save(self, path: str | Path) -> Path:
        from simulacra import layout

        path = Path(path)
        layout.atomic_write(path, self.to_bytes())
        return path

    def branch(self, step: int) -> Session:
        """A new session equal to this one up to ``step`` steps, to continue differently from there."""
        return replay(self.base, self.to_bytes(), until_step=step)


def _with_options(world: World, temperature: float, sampling_steps: int) -> World:
    """The world with these sampling settings. An ONNX graph fixes its sampling steps, so other step counts
    run eagerly on the same weights (a replay makes the same switch at the same step)."""
    if world.backend == "onnx" and sampling_steps != world.dyn.cfg.sampling_steps:
        from simulacra.world.backends import TorchStep

        world = copy.copy(world)
        world.step_fn, world.backend = TorchStep(world.ae, world.dyn), "torch"
    return world.with_options(temperature=temperature, sampling_steps=sampling_steps)


def _world_name(world: World) -> str:
    return "" if world.path is None else world.path.parent.name


def read(data: bytes, max_bytes: int = 64 << 20) -> tuple[dict, list[tuple[np.ndarray, np.ndarray | None]]]:
    """(header, contexts) of a session file, every field checked (SessionError names the first bad one)."""
    if len(data) > max_bytes:
        raise SessionError(f"session file is {len(data)} bytes; the limit is {max_bytes}")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as e:  # a zip that is not one, a pickled array, a truncated member: all one line
        raise SessionError(f"not a session file ({type(e).__name__}: {str(e)[:120]})") from None
    if "header" not in arrays or arrays["header"].dtype != np.uint8 or arrays["header"].ndim != 1:
        raise SessionError("not a session file (no header)")
    try:
        h = json.loads(arrays["header"].tobytes().decode())
    except (UnicodeDecodeError, ValueError) as e:
        raise SessionError(f"session header is not JSON ({e})") from None
    if not isinstance(h, dict) or h.get("format") != FORMAT:
        raise SessionError("not a session file (wrong format field)")
    if h.get("version") != VERSION:
        raise SessionError(f"session format version {h.get('version')!r}; this simulacra reads version {VERSION}")
    world = h.get("world")
    if not (isinstance(world, dict) and isinstance(world.get("sha256"), str)):
        raise SessionError("session header names no world checksum")
    if not (_int(h.get("seed")) and 0 <= h["seed"] < 2**62):
        raise SessionError(f"session seed {h.get('seed')!r} is not a whole number in 0..2^62")
    events, n = h.get("events"), h.get("contexts")
    if not (isinstance(events, list) and len(events) <= MAX_EVENTS):
        raise SessionError("session events are not a list (or too many)")
    if not (_int(n) and 1 <= n <= len(events) + 1):
        raise SessionError(f"session context count {n!r} does not match its events")
    if not isinstance(h.get("start"), dict) or not isinstance(h.get("settings"), dict):
        raise SessionError("session header lacks start or settings")
    contexts = []
    for i in range(n):
        f = arrays.get(f"frames_{i}")
        if f is None or f.dtype != np.uint8 or f.ndim != 4:
            raise SessionError(f"session context {i} has no uint8 (T, H, W, 3) frames")
        contexts.append((f, arrays.get(f"actions_{i}")))
    for e in events:
        ok = isinstance(e, dict) and len(e) == 1 and next(iter(e)) in ("a", "set", "context")
        if ok and "context" in e:
            ok = _int(e["context"]) and 0 <= e["context"] < n
        if ok and "set" in e:
            ok = isinstance(e["set"], dict)
        if not ok:
            raise SessionError(f"session event {str(e)[:80]} is not a step, a settings change or a context switch")
    return h, contexts


def replay(world: World, data: bytes, until_step: int | None = None, on_frame=None) -> Session:
    """Rebuild a saved session on ``world`` by replaying its log: the same frames, bit for bit, on the
    backend it was saved on. ``until_step`` stops after that many steps (branching); ``on_frame(frame)``
    sees every frame (the start's last frame, then one per step), for export."""
    h, contexts = read(data)
    checksum = world_checksum(world)
    if h["world"]["sha256"] != checksum:
        name = h["world"].get("name") or "another world"
        raise SessionError(
            f"this session was played on {name} (weights {h['world']['sha256'][:12]}), not this world ({checksum[:12]})"
        )
    if until_step is not None and not (_int(until_step) and until_step >= 0):
        raise SessionError(f"branch step must be a whole number, 0 or more, not {until_step!r}")
    events = h["events"]
    if not events or events[0] != {"context": 0}:
        raise SessionError("session log does not begin at its start context")
    f0, a0 = contexts[0]
    s = Session(world, f0, a0, seed=h["seed"], start=h["start"], checksum=checksum)
    for f, a in contexts[1:]:
        s.contexts.append((s.base.frame_space.validate(f), a))
    if on_frame:
        on_frame(s.frame)
    for e in events[1:]:
        if "a" in e:
            if until_step is not None and s.t >= until_step:
                break
            s.step(0 if e["a"] is None else e["a"])
        elif "set" in e:
            s.set(**e["set"])
        else:
            s._switch(None, None, index=e["context"])
        if on_frame and "set" not in e:
            on_frame(s.frame)
    if until_step is not None and s.t < until_step:
        raise SessionError(f"the session has {s.t} steps; cannot branch at step {until_step}")
    return s


def export_video(world: World, data: bytes, path: str | Path, fps: float | None = None, scale: int = 4) -> Path:
    """Write a saved session as an mp4 or gif (by suffix), frames enlarged ``scale``x (nearest neighbour)."""
    import imageio.v2 as imageio

    path = Path(path)
    if path.suffix.lower() not in (".mp4", ".gif"):
        raise SessionError(f"export to .mp4 or .gif, not {path.suffix or 'a file without a suffix'}")
    frames: list[np.ndarray] = []
    s = replay(world, data, on_frame=lambda f: frames.append(np.repeat(np.repeat(f, scale, 0), scale, 1)))
    fps = float(fps or s.settings.fps)
    if path.suffix.lower() == ".gif":
        imageio.mimsave(path, frames, duration=1000 / fps, loop=0)
    else:
        imageio.mimsave(path, frames, fps=fps, macro_block_size=1)
    return path
