"""The action and frame spaces of a world: one typed description, used by the recorder, the store, the
model, the world env and the eval, convertible to and from Gymnasium spaces and the data set's JSON.

Supported action spaces: Discrete, Box, and none (action-free video). MultiDiscrete is refused with one
line where it enters (recording, import, or a data set that declares it): the dynamics model has no
encoder for it, and refusing early beats a traceback in training.

The JSON form is the one stored in ``info.json`` and ``world.json``:
``{"type": "discrete", "n": 4, "start": 0}``, ``{"type": "box", "shape": [2], "low": [...], "high": [...],
"dtype": "float32"}`` or ``{"type": "none"}``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from simulacra.errors import SimulacraError

TOLERANCE = 1e-5
"""How far a Box action may sit outside its bounds and still count as inside: float32 round trips
(JSON, ONNX, scaling) move a bound by about one ulp."""


class ActionSpaceError(SimulacraError):
    """An action, or an action space, that a world cannot take."""


@dataclass(frozen=True)
class ActionSpace:
    kind: Literal["discrete", "box", "none"]
    """'discrete' (integers start..start+n-1), 'box' (float32 arrays in [low, high]) or 'none' (action-free)."""
    n: int = 0
    """Discrete: number of actions."""
    start: int = 0
    """Discrete: the smallest action."""
    shape: tuple[int, ...] = ()
    """Box: shape of one action."""
    low: tuple[float, ...] = ()
    """Box: lower bounds, flattened (may be -inf)."""
    high: tuple[float, ...] = ()
    """Box: upper bounds, flattened (may be +inf)."""

    # ---- construction and conversion ---------------------------------------------------------------
    @classmethod
    def discrete(cls, n: int, start: int = 0) -> ActionSpace:
        if int(n) < 1:
            raise ActionSpaceError(f"a discrete action space needs at least one action, not n={n}")
        return cls("discrete", n=int(n), start=int(start))

    @classmethod
    def box(cls, low, high, shape=None) -> ActionSpace:
        low, high = np.asarray(low, np.float32), np.asarray(high, np.float32)
        shape = tuple(int(s) for s in (low.shape if shape is None else shape))
        low, high = np.broadcast_to(low, shape).ravel(), np.broadcast_to(high, shape).ravel()
        if np.isnan(low).any() or np.isnan(high).any() or (low > high).any():
            raise ActionSpaceError(
                f"Box bounds must be numbers with low <= high, not {low.tolist()} .. {high.tolist()}"
            )
        return cls("box", shape=shape, low=tuple(low.tolist()), high=tuple(high.tolist()))

    @classmethod
    def none(cls) -> ActionSpace:
        return cls("none")

    @classmethod
    def from_json(cls, d: dict | None) -> ActionSpace:
        if d is None:
            return cls.none()
        if not isinstance(d, dict) or "type" not in d:
            raise ActionSpaceError(f"an action space is a JSON object with a 'type', not {d!r}")
        kind = d["type"]
        try:
            if kind == "discrete":
                return cls.discrete(d["n"], d.get("start", 0))
            if kind == "box":
                return cls.box(d["low"], d["high"], d.get("shape"))
            if kind == "none":
                return cls.none()
        except (KeyError, TypeError, ValueError) as e:
            raise ActionSpaceError(f"malformed {kind} action space {d!r}: {e}") from None
        if kind == "multi_discrete":
            raise ActionSpaceError(_NO_MULTI)
        raise ActionSpaceError(f"unknown action space type {kind!r} (discrete, box and none are known)")

    def to_json(self) -> dict:
        if self.kind == "discrete":
            return {"type": "discrete", "n": self.n, "start": self.start}
        if self.kind == "box":
            return {
                "type": "box",
                "shape": list(self.shape),
                "low": self._bounds(self.low).tolist(),
                "high": self._bounds(self.high).tolist(),
                "dtype": "float32",
            }
        return {"type": "none"}

    @classmethod
    def from_gym(cls, space) -> ActionSpace:
        import gymnasium as gym

        if space is None:
            return cls.none()
        if isinstance(space, gym.spaces.Discrete):
            return cls.discrete(int(space.n), int(space.start))
        if isinstance(space, gym.spaces.Box):
            return cls.box(space.low, space.high, space.shape)
        if isinstance(space, gym.spaces.MultiDiscrete):
            raise ActionSpaceError(_NO_MULTI)
        raise ActionSpaceError(f"action space {space} is not supported (Discrete and Box are)")

    def to_gym(self):
        import gymnasium as gym

        if self.kind == "discrete":
            return gym.spaces.Discrete(self.n, start=self.start)
        if self.kind == "box":
            return gym.spaces.Box(self._bounds(self.low), self._bounds(self.high), dtype=np.float32)
        raise ActionSpaceError("an action-free world has no Gymnasium action space")

    def __str__(self) -> str:
        if self.kind == "discrete":
            return f"Discrete({self.n}" + (f", start={self.start})" if self.start else ")")
        if self.kind == "box":
            short = lambda v: [float(f"{x:.7g}") for x in v]  # noqa: E731  (float32 digits, not float64 noise)
            return f"Box({short(self.low)}, {short(self.high)}, shape={self.shape})"
        return "no actions"

    # ---- what an action looks like -----------------------------------------------------------------
    @property
    def dtype(self) -> np.dtype:
        """How actions are stored: int64 (discrete and action-free) or float32 (box)."""
        return np.dtype(np.float32) if self.kind == "box" else np.dtype(np.int64)

    @property
    def event_shape(self) -> tuple[int, ...]:
        """Shape of one action: () for discrete, the Box's shape for box."""
        return self.shape if self.kind == "box" else ()

    @property
    def dim(self) -> int:
        """Discrete: n (classes); box: the number of numbers in one action."""
        return self.n if self.kind == "discrete" else int(np.prod(self.shape)) if self.kind == "box" else 0

    def _bounds(self, flat: tuple[float, ...]) -> np.ndarray:
        return np.asarray(flat, np.float32).reshape(self.shape)

    def zeros(self, batch_shape: tuple[int, ...]) -> np.ndarray:
        """Filler actions (for slots before an episode began, or action-free data)."""
        return np.zeros((*batch_shape, *self.event_shape), self.dtype)

    def validate(self, actions, batch_shape: tuple[int, ...] | None = None, what: str = "action") -> np.ndarray:
        """``actions`` as an array of the stored dtype, with shape ``(*batch_shape, *event_shape)``
        (any leading shape when ``batch_shape`` is None). One-line ActionSpaceError naming the first bad
        one: not a number, not an integer for a discrete space (bool included), or outside the bounds."""
        if self.kind == "none":
            raise ActionSpaceError("this world is action-free; it takes no actions")
        try:
            a = np.asarray(actions)
        except (TypeError, ValueError):  # ragged nested lists: NumPy refuses to make an array of them
            raise ActionSpaceError(f"{what}s must be numbers in a regular array, not {repr(actions)[:60]}") from None
        if a.dtype == np.bool_ or not (np.issubdtype(a.dtype, np.number)):
            raise ActionSpaceError(f"{what}s must be numbers, not {a.dtype} ({_show(a)})")
        ev = self.event_shape
        if a.shape[a.ndim - len(ev) :] != ev or a.ndim < len(ev):
            raise ActionSpaceError(f"{what}s have shape {a.shape}; each {what} of {self} has shape {ev}")
        lead = a.shape[: a.ndim - len(ev)]
        if batch_shape is not None and lead != tuple(batch_shape):
            raise ActionSpaceError(f"expected {what}s of shape {(*batch_shape, *ev)}, got {a.shape}")
        rows = a.reshape(int(np.prod(lead)), int(np.prod(ev)))  # explicit sizes: an empty batch reshapes too
        # Box actions are checked as they will be stored (float32), so a float64 action that rounds onto a
        # float32 bound is inside; discrete ones as given, so 2.7 is not silently taken for 2
        flat = rows.astype(np.float64) if self.kind == "discrete" else rows.astype(np.float32).astype(np.float64)
        if self.kind == "discrete":
            bad = ~np.isfinite(flat).all(1) | (flat != np.round(flat)).any(1)
            bad |= (flat < self.start).any(1) | (flat >= self.start + self.n).any(1)
        else:
            low, high = np.asarray(self.low), np.asarray(self.high)
            bad = ~np.isfinite(flat).all(1) | (flat < low - TOLERANCE).any(1) | (flat > high + TOLERANCE).any(1)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            idx = tuple(int(j) for j in np.unravel_index(i, lead))
            where = f" at index {idx[0] if len(idx) == 1 else idx}" if lead else ""
            raise ActionSpaceError(f"{what} {_show(rows[i].reshape(ev))}{where} is outside the action space {self}")
        return a.astype(self.dtype)

    def sample(self, rng: np.random.Generator, batch_shape: tuple[int, ...] = ()) -> np.ndarray:
        """Uniform random actions (infinite Box bounds are replaced by -1 / +1)."""
        if self.kind == "discrete":
            return rng.integers(self.start, self.start + self.n, size=batch_shape).astype(np.int64)
        if self.kind == "box":
            low, high = self.finite_bounds()
            return rng.uniform(low, high, size=(*batch_shape, *self.shape)).astype(np.float32)
        return np.zeros(batch_shape, np.int64)

    def finite_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Box bounds (shape ``self.shape``) with infinities replaced by -1 / +1: the range used to
        sample and to scale actions."""
        low = np.nan_to_num(self._bounds(self.low), neginf=-1.0, posinf=1.0)
        high = np.nan_to_num(self._bounds(self.high), neginf=-1.0, posinf=1.0)
        return low, high

    def normalize(self, actions) -> np.ndarray:
        """Discrete: class indices 0..n-1 (int64). Box: flattened per action and scaled to [-1, 1] by the
        bounds (float32, shape (*batch, dim)); the model's and the IDM's view of an action."""
        a = np.asarray(actions)
        if self.kind == "discrete":
            return a.astype(np.int64) - self.start
        if self.kind == "box":
            low, high = (b.ravel() for b in self.finite_bounds())
            lead = a.shape[: a.ndim - len(self.shape)]
            flat = a.astype(np.float32).reshape(*lead, -1)
            return ((flat - low) / np.maximum(high - low, 1e-6) * 2 - 1).astype(np.float32)
        return np.zeros(a.shape, np.int64)


_NO_MULTI = (
    "MultiDiscrete action spaces are not supported yet (the world model encodes Discrete and Box actions); "
    "wrap the env so it exposes a Discrete space (e.g. one index per combination) or a Box"
)


def _show(a) -> str:
    a = np.asarray(a)
    return repr(a.item()) if a.size == 1 else repr(a.tolist()) if a.size <= 8 else f"array of shape {a.shape}"


@dataclass(frozen=True)
class FrameSpace:
    """What a world observes: uint8 RGB frames (H, W, 3)."""

    height: int
    width: int

    @classmethod
    def from_shape(cls, frame_shape) -> FrameSpace:
        shape = tuple(int(s) for s in frame_shape)
        if len(shape) != 3 or shape[2] != 3 or min(shape) < 1:
            raise SimulacraError(f"frames must be RGB (H, W, 3), not shape {list(shape)}")
        return cls(shape[0], shape[1])

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.height, self.width, 3)

    def to_gym(self):
        import gymnasium as gym

        return gym.spaces.Box(0, 255, self.shape, dtype=np.uint8)

    def validate(self, frames, what: str = "frames") -> np.ndarray:
        """uint8 frames (..., H, W, 3); one line for another shape, a float array or values outside 0..255."""
        f = np.asarray(frames)
        if f.shape[-3:] != self.shape:
            raise SimulacraError(
                f"{what} are {list(f.shape[-3:])} per frame, this world's frames are {list(self.shape)}"
            )
        if f.dtype == np.uint8:
            return f
        if f.dtype == np.bool_ or not np.issubdtype(f.dtype, np.number):
            raise SimulacraError(f"{what} must be uint8 pixels 0..255, not {f.dtype}")
        if np.issubdtype(f.dtype, np.floating):
            raise SimulacraError(
                f"{what} are {f.dtype}; pass uint8 pixels 0..255 (e.g. (x * 255).round().astype(np.uint8))"
            )
        if f.size and (f.min() < 0 or f.max() > 255):
            raise SimulacraError(f"{what} hold values {int(f.min())}..{int(f.max())}; pixels are 0..255")
        return f.astype(np.uint8)
