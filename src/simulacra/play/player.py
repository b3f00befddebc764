"""A player: one live session and what surrounds it on screen. The dream (a ``Session``), the real env
beside it on the same inputs, the policy that can take the controls, and the divergence between dream and
reality. The server holds one per browser tab and calls ``tick`` at the target frame rate.
"""

from __future__ import annotations

import io
import warnings
from collections import deque
from dataclasses import dataclass

import numpy as np

from simulacra.play.session import Session, SessionError, replay
from simulacra.world.policy import Policy, RandomPolicy
from simulacra.world.world import World

HISTORY = 16
"""Frames a policy sees (the newest last)."""
MAX_IMAGE_PIXELS = 4096 * 4096
"""An uploaded picture larger than this is refused before it is decoded (decompression bombs)."""
IMAGE_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP")


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float32) - b.astype(np.float32)) ** 2))
    return 99.0 if mse == 0 else float(10 * np.log10(255.0**2 / mse))


class RealTwin:
    """The real environment of the world's recording preset, at the world's frame size."""

    def __init__(self, preset: dict, K: int):
        from simulacra.data.envs import make_env

        res = int(preset.get("resolution") or 64)
        self.env = make_env(
            preset["env_id"],
            preset.get("env_kwargs") or {},
            (res, res),
            preset.get("frame_source", "auto"),
            preset.get("max_episode_steps"),
            None,
            preset.get("fit", "stretch"),
        )
        self.frames: deque = deque(maxlen=K)
        self.actions: deque = deque(maxlen=K - 1)
        self.done = False

    def reset(self, seed: int) -> np.ndarray:
        frame, _ = self.env.reset(seed=int(seed))
        self.frames.clear()
        self.actions.clear()
        self.frames.append(frame)
        self.done = False
        return frame

    def step(self, action) -> tuple[np.ndarray, float, bool]:
        frame, reward, terminated, truncated, _ = self.env.step(action)
        self.frames.append(frame)
        self.actions.append(np.asarray(action))
        self.done = bool(terminated or truncated)
        return frame, float(reward), self.done

    def context(self) -> tuple[np.ndarray, np.ndarray | None]:
        f = np.stack(self.frames)
        acts = list(self.actions)[-(len(f) - 1) :] if len(f) > 1 else []
        return f, (np.stack(acts) if acts else None)

    def close(self) -> None:
        self.env.close()


def decode_image(data: bytes, frame_shape: tuple[int, int, int], fit: str = "stretch") -> tuple[np.ndarray, dict]:
    """An uploaded picture as one frame of the world's size, and what was done to it: (frame, info)."""
    from PIL import Image

    from simulacra.data.envs import to_rgb

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            if img.format not in IMAGE_FORMATS:
                raise SessionError(f"upload a PNG, JPEG, GIF, BMP or WebP picture, not {img.format or 'this file'}")
            if img.width * img.height > MAX_IMAGE_PIXELS:
                raise SessionError(f"the picture is {img.width}x{img.height}; at most {MAX_IMAGE_PIXELS} pixels")
            img.seek(0)
            arr = np.asarray(img.convert("RGB"))
    except SessionError:
        raise
    except Exception as e:  # truncated, corrupt, a bomb: one line
        raise SessionError(f"could not read the picture ({type(e).__name__})") from None
    frame = to_rgb(arr, frame_shape[:2], fit)
    return frame, {"native": [int(arr.shape[0]), int(arr.shape[1])]}


def look_note(frame: np.ndarray, reference_NHWC: np.ndarray | None, native: list[int], frame_shape) -> list[str]:
    """Plain notes when an uploaded picture's size or look is far from the training data's."""
    notes = []
    h, w = native
    H, W = frame_shape[:2]
    if abs(np.log((h / w) / (H / W))) > 0.25:
        notes.append(f"the picture is {w}x{h}, another shape than the world's {W}x{H} frames: it was resized")
    if reference_NHWC is not None and len(reference_NHWC):
        # look = colour distribution (16 bins per channel), not layout: a sprite elsewhere is not far
        def hist(f):
            return np.stack([np.bincount(f[..., c].ravel() // 16, minlength=16) for c in range(3)]) / f[..., 0].size

        far = min(float(np.abs(hist(frame) - hist(r)).sum()) / 3 for r in reference_NHWC)
        if far > 0.5:
            notes.append(
                f"the picture's colours are unlike the training frames' (histogram distance {far:.2f} of 2): "
                "the dream may not follow it"
            )
    return notes


@dataclass
class Tick:
    """One frame as the page gets it."""

    dream: np.ndarray
    real: np.ndarray | None
    reward: float
    terminated: bool
    divergence: float | None
    """PSNR (dB) of the dream against reality, when both are in sync."""
    controller: str


class Player:
    """The dream of ``world`` as one person plays it, with reality beside it when ``preset`` is given."""

    def __init__(
        self,
        world: World,
        *,
        preset: dict | None = None,
        policy: Policy | None = None,
        seed: int = 0,
        checksum: str | None = None,
    ):
        self.world, self.seed, self.checksum = world, int(seed), checksum
        self.real = RealTwin(preset, world.K) if preset else None
        self.real_synced = False
        if world.action_space.kind == "none":
            policy = None
        elif policy is None:
            policy = RandomPolicy(world.action_space, seed)
        self.policy = policy
        self.controller = "human"
        self.history: deque = deque(maxlen=HISTORY)
        self.session: Session | None = None
        self.divergence: deque = deque(maxlen=600)

    # ---- starting points -----------------------------------------------------------------------------
    def start(self, frames: np.ndarray, actions=None, start: dict | None = None, settings=None) -> np.ndarray:
        """Dream from a context the server chose (a data set episode, an uploaded picture)."""
        self.session = Session(
            self.world, frames, actions, seed=self.seed, start=start, settings=settings, checksum=self.checksum
        )
        self.real_synced = False
        return self._began()

    def start_real(self, seed: int, settings=None) -> np.ndarray:
        """Reset the real env and dream from its first frame, side by side."""
        if self.real is None:
            raise SessionError("this server runs no real env (started without one)")
        frame = self.real.reset(seed)
        self.session = Session(
            self.world,
            frame[None],
            None,
            seed=self.seed,
            start={"source": "env", "seed": int(seed)},
            settings=settings,
            checksum=self.checksum,
        )
        self.real_synced = True
        return self._began()

    def load(self, data: bytes, until_step: int | None = None) -> np.ndarray:
        """Continue a saved session (at its end, or branched at ``until_step``)."""
        self.session = replay(self.world, data, until_step=until_step)
        self.real_synced = False
        return self._began()

    def _began(self) -> np.ndarray:
        self.history.clear()
        self.history.append(self.session.frame)
        self.divergence.clear()
        if self.policy is not None:
            self.policy.reset(self.seed)
        return self.session.frame

    # ---- live controls -------------------------------------------------------------------------------
    def reset(self) -> np.ndarray:
        """Back to the session's start (and the real env to its own, when they began together)."""
        self._need()
        if self.session.start.get("source") == "env" and self.real is not None:
            self.real.reset(self.session.start["seed"])
            self.real_synced = True
        self.session.restart()
        return self._began()

    def resync(self) -> np.ndarray:
        """Dream on from reality's last frames (and the actions between them)."""
        self._need()
        if self.real is None or not len(self.real.frames):
            raise SessionError("no real env to resync to: start from a real reset first")
        frames, actions = self.real.context()
        self.session.restart(frames, actions)
        self.real_synced = True
        self.history.clear()
        self.history.append(self.session.frame)
        return self.session.frame

    def toggle_policy(self) -> str:
        if self.policy is None:
            raise SessionError("this world takes no actions, so there is nothing for a policy to do")
        if self.controller == "human" and getattr(self.policy, "has_goal", True) is False:
            raise SessionError("the planner has no goal yet: upload a goal picture first")
        self.controller = "policy" if self.controller == "human" else "human"
        return self.controller

    def tick(self, action) -> Tick:
        """One step: the policy's action while it is in control, else ``action`` (the player's held keys)."""
        self._need()
        if self.controller == "policy":
            action = self.policy.act(np.stack(self.history))
        dream, reward, terminated = self.session.step(action)
        self.history.append(dream)
        real, div = None, None
        if self.real is not None and self.real_synced and not self.real.done:
            real, _, _ = self.real.step(self.session.base.action_space.validate(np.asarray(action), ()))
            div = psnr(dream, real)
            self.divergence.append(div)
        elif self.real is not None and self.real_synced and len(self.real.frames):
            real = self.real.frames[-1]
        return Tick(dream, real, reward, terminated, div, self.controller)

    def _need(self) -> None:
        if self.session is None:
            raise SessionError("no session yet: choose where the dream starts")

    def close(self) -> None:
        if self.real is not None:
            self.real.close()
