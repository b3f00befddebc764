"""A trained world: reset it, step it with actions, roll it out — like the real env, but dreamed.

Pixel side (Gymnasium-like, uint8 HWC frames):   reset, step, rollout
Latent side (for planners, batched, no decoding): encode, initial_state, latent_step, decode

Streaming is O(1) per frame: the state is a sliding window of the last K latents and actions.
On disk a world is ``world.json`` (config) + ``autoencoder.safetensors`` + ``dynamics.safetensors``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from simulacra.errors import SimulacraError
from simulacra.models.autoencoder import Autoencoder, AutoencoderConfig, to_uint8
from simulacra.models.dynamics import Dynamics, DynamicsConfig

WORLD_FORMAT_VERSION = 1


@dataclass
class LatentState:
    """Batched streaming state: K context latents (normalised), the actions taken at them, pad mask."""

    latents: torch.Tensor  # (B, K, C, h, w)
    actions: torch.Tensor  # (B, K) discrete or (B, K, D) box; the last slot is filled by the next step
    pad: torch.Tensor  # (B, K) bool: slots from before the episode began


class World:
    def __init__(self, autoencoder: Autoencoder, dynamics: Dynamics, config: dict):
        self.ae, self.dyn, self.config = autoencoder.eval(), dynamics.eval(), config
        self.action_space = config["action_space"]
        self.K = dynamics.cfg.context
        self.state: LatentState | None = None
        self._batched = False
        self.generator = torch.Generator().manual_seed(0)
        self.path: Path | None = None  # the directory it was loaded from, if any
        self._onnx = None  # an ONNX Runtime session on the per-frame step (use_onnx)

    # ---- persistence -----------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        for name, module in (("autoencoder", self.ae), ("dynamics", self.dyn)):
            tmp = path / f".tmp-{name}.safetensors"
            save_file({k: v.contiguous() for k, v in module.state_dict().items()}, tmp)
            os.replace(tmp, path / f"{name}.safetensors")
        meta = {"format": "simulacra.world", "format_version": WORLD_FORMAT_VERSION, **self.config}
        (path / ".tmp-world.json").write_text(json.dumps(meta, indent=1, default=str))
        os.replace(path / ".tmp-world.json", path / "world.json")

    @classmethod
    def load(cls, path: str | Path, backend: str = "torch") -> World:
        """Load a world (or a run directory's world); ``backend="onnx"`` steps it with ONNX Runtime."""
        if backend not in ("torch", "onnx"):
            raise SimulacraError(f"unknown backend {backend!r}; backends: torch, onnx")
        path = Path(path)
        if (path / "world").is_dir() and not (path / "world.json").exists():
            path = path / "world"  # a run directory
        meta_path = path / "world.json"
        if not meta_path.exists():
            raise SimulacraError(
                f"{path}: no trained world here (missing world.json); train one with `simulacra train`"
            )
        meta = json.loads(meta_path.read_text())
        if meta.get("format_version") != WORLD_FORMAT_VERSION:
            raise SimulacraError(f"{meta_path}: world format version {meta.get('format_version')!r} is unknown")
        dcfg = dict(meta["dynamics"])
        dcfg["channel_mult"] = tuple(dcfg["channel_mult"])
        ae = Autoencoder(AutoencoderConfig(**meta["autoencoder"]))
        dyn = Dynamics(DynamicsConfig(**dcfg), ae.latent_channels, meta["action_space"])
        ae.load_state_dict(load_file(path / "autoencoder.safetensors"))
        dyn.load_state_dict(load_file(path / "dynamics.safetensors"))
        world = cls(ae, dyn, meta)
        world.path = path
        return world.use_onnx() if backend == "onnx" else world

    def use_onnx(self, path: str | Path | None = None, threads: int = 2) -> World:
        """Run the per-frame step (sampling + decoding) with ONNX Runtime on CPU; the graph is
        ``<world dir>/step.onnx``, exported (and checked against eager) if missing or stale."""
        from simulacra.export import load_step

        self._onnx = load_step(self, path, threads=threads)
        return self

    # ---- latent side -----------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, frames_BHWC) -> torch.Tensor:
        """uint8 frames (B, H, W, 3) -> normalised latents (B, C, h, w)."""
        f = torch.from_numpy(np.array(frames_BHWC, dtype=np.uint8)).permute(0, 3, 1, 2)
        return self.ae.encode(f) / self.dyn.latent_std

    @torch.no_grad()
    def decode(self, latents_BChw: torch.Tensor) -> np.ndarray:
        """Normalised latents (B, C, h, w) -> uint8 frames (B, H, W, 3)."""
        return to_uint8(self.ae.decode(latents_BChw * self.dyn.latent_std)).permute(0, 2, 3, 1).numpy()

    @staticmethod
    def _shaped(a: torch.Tensor, B: int, shape: tuple) -> torch.Tensor:
        """One action for every dream in the batch, or one per dream."""
        if a.shape == shape:
            return a.expand(B, *shape)
        if a.numel() != B * max(1, int(np.prod(shape))):
            raise SimulacraError(f"expected {B} action(s) of shape {shape}, got an array of shape {tuple(a.shape)}")
        return a.reshape(B, *shape)

    def _action_tensor(self, actions, B: int) -> torch.Tensor:
        kind = self.action_space["type"]
        if kind == "discrete":
            a = self._shaped(torch.as_tensor(np.asarray(actions), dtype=torch.long), B, ())
            lo = self.action_space.get("start", 0)
            if ((a < lo) | (a >= lo + self.action_space["n"])).any():
                raise SimulacraError(
                    f"action {a.tolist()} is outside the action space Discrete({self.action_space['n']})"
                )
            return a
        if kind == "box":
            shape = self.action_space["shape"]
            a = self._shaped(torch.as_tensor(np.asarray(actions), dtype=torch.float32), B, tuple(shape))
            low, high = torch.tensor(self.action_space["low"]), torch.tensor(self.action_space["high"])
            if not torch.isfinite(a).all() or (a < low - 1e-5).any() or (a > high + 1e-5).any():
                raise SimulacraError(
                    f"action {a.tolist()} is outside the action space Box({low.tolist()}, {high.tolist()})"
                )
            return a
        return torch.zeros(B, dtype=torch.long)

    def initial_state(self, latents_BnChw: torch.Tensor, past_actions=None) -> LatentState:
        """State from n <= K observed latents (and the n-1 actions between them); earlier slots are padded."""
        B, n = latents_BnChw.shape[:2]
        K = self.K
        if n > K:
            latents_BnChw, n = latents_BnChw[:, -K:], K
            past_actions = None if past_actions is None else torch.as_tensor(np.asarray(past_actions))[:, -(K - 1) :]
        lat = torch.cat([latents_BnChw[:, :1].expand(B, K - n, *latents_BnChw.shape[2:]), latents_BnChw], 1)
        box = self.action_space["type"] == "box"
        acts = torch.zeros(
            (B, K, *self.action_space["shape"]) if box else (B, K), dtype=torch.float32 if box else torch.long
        )
        if past_actions is not None and n > 1:
            pa = torch.as_tensor(np.array(past_actions)).reshape(B, n - 1, *acts.shape[2:])
            acts[:, K - n : K - 1] = pa.to(acts.dtype)
        pad = torch.zeros(B, K, dtype=torch.bool)
        pad[:, : K - n] = True
        return LatentState(lat.clone(), acts, pad)

    @torch.no_grad()
    def latent_step(
        self, state: LatentState, actions_B, steps: int | None = None
    ) -> tuple[LatentState, torch.Tensor, torch.Tensor, torch.Tensor]:
        """One dreamed step for a batch, no decoding: (new state, next latents, reward sign, done prob)."""
        return self._advance(state, actions_B, steps)[:4]

    @torch.no_grad()
    def _advance(self, state: LatentState, actions_B, steps: int | None = None):
        """latent_step, plus the decoded frames where the ONNX graph made them anyway (else None)."""
        B = state.latents.shape[0]
        acts = state.actions.clone()
        acts[:, -1] = self._action_tensor(actions_B, B).to(acts.dtype)
        frame = None
        if self._onnx is not None and steps in (None, self.dyn.cfg.sampling_steps):
            noise, ctx_noise = self.dyn.sample_noise(state.latents, self.generator)  # same draws as eager
            z, frame, reward, done = self._onnx(state.latents, acts, state.pad, noise, ctx_noise)
        else:
            z, reward, done = self.dyn.sample(state.latents, acts, state.pad, steps=steps, generator=self.generator)
        new = LatentState(
            torch.cat([state.latents[:, 1:], z[:, None]], 1),
            torch.cat([acts[:, 1:], acts[:, -1:]], 1),
            torch.cat([state.pad[:, 1:], torch.zeros(B, 1, dtype=torch.bool)], 1),
        )
        return new, z, reward, done, frame

    # ---- pixel side (Gymnasium-like) ---------------------------------------------------------------
    def reset(self, frames=None, actions=None, *, image=None, episode=None, seed: int | None = None):
        """Start a dream from a frame stack (T, H, W, 3) or batch (B, T, H, W, 3), one image (H, W, 3),
        or a data set episode ``(dataset, index, t)`` (its frames up to t and the actions between).
        Returns the current frame(s)."""
        if seed is not None:
            self.generator.manual_seed(seed)
        if episode is not None:
            ds, i, t = episode
            lo = max(0, t - self.K + 1)
            frames = ds.frames(i, lo, t + 1)
            acts = ds.arrays(i).get("action")
            actions = None if acts is None else np.asarray(acts[lo:t])[None]
        elif image is not None:
            frames = np.asarray(image)[None]
        if frames is None:
            raise SimulacraError("reset needs frames, image= or episode=")
        frames = np.asarray(frames, dtype=np.uint8)
        self._batched = frames.ndim == 5
        frames_BTHWC = frames if self._batched else frames[None]
        B, T = frames_BTHWC.shape[:2]
        shape = list(frames_BTHWC.shape[2:])
        if shape != list(self.config["frame_shape"]):
            raise SimulacraError(f"frames are {shape}, this world was trained on {self.config['frame_shape']}")
        lat = self.encode(frames_BTHWC.reshape(B * T, *shape)).reshape(B, T, *self._latent_shape())
        if (
            actions is not None
            and not self._batched
            and np.asarray(actions).ndim < 2 + (self.action_space["type"] == "box")
        ):
            actions = np.asarray(actions)[None]
        self.state = self.initial_state(lat, actions)
        last = frames_BTHWC[:, -1]
        return last if self._batched else last[0]

    def _latent_shape(self) -> tuple[int, int, int]:
        H = self.config["frame_shape"][0] // self.ae.cfg.patch
        return (self.ae.latent_channels, H, H)

    def step(self, action):
        """Advance the dream by one action (or a batch of actions): (frame, reward, done)."""
        if self.state is None:
            raise SimulacraError("call reset() before step()")
        self.state, z, reward, done, frame = self._advance(self.state, action)
        frame = self.decode(z) if frame is None else frame
        reward, done = reward.numpy(), done.numpy() > 0.5
        if self._batched:
            return frame, reward, done
        return frame[0], float(reward[0]), bool(done[0])

    def rollout(self, actions) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Step through actions (T,) or (B, T, ...) from the current state: frames (.., T, H, W, 3), rewards, dones."""
        actions = np.asarray(actions)
        frames, rewards, dones = [], [], []
        for t in range(actions.shape[1] if self._batched else actions.shape[0]):
            f, r, d = self.step(actions[:, t] if self._batched else actions[t])
            frames.append(f)
            rewards.append(r)
            dones.append(d)
        ax = 1 if self._batched else 0
        return np.stack(frames, ax), np.stack(rewards, ax), np.stack(dones, ax)
