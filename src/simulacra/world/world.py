"""A trained world: the models, its spaces, and batched, stateless stepping.

Every call is batched (leading B) and takes its state and random generator explicitly, so any number of
streams (a player, a planner's candidates, an agent's envs) share one loaded world without sharing noise.
For one stream with the Gymnasium contract, wrap it in ``WorldEnv`` / ``WorldVectorEnv`` (env.py).

Pixel side:   reset(frames, actions) -> state;  step(state, actions, g);  rollout(state, actions, g)
Latent side:  encode, initial_state, latent_step, decode   (planners: no decoding needed)

Streaming is O(1) per frame: the state is a sliding window of the last K latents and actions.
On disk a world is ``world.json`` (config) + ``autoencoder.safetensors`` + ``dynamics.safetensors``.
"""

from __future__ import annotations

import copy
import json
import math
import numbers
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from simulacra import layout
from simulacra.errors import SimulacraError
from simulacra.models.autoencoder import Autoencoder, AutoencoderConfig, to_uint8
from simulacra.models.common import dict_problems, from_dict
from simulacra.models.dynamics import LEGACY, Dynamics, DynamicsConfig
from simulacra.spaces import ActionSpace, FrameSpace
from simulacra.world.backends import OnnxStep, StepFn, TorchStep

WORLD_FORMAT_VERSION = 1
BACKENDS = ("torch", "onnx")


@dataclass
class LatentState:
    """Batched streaming state: K context latents (normalised), the actions taken at them, pad mask."""

    latents: torch.Tensor  # (B, K, C, h, w)
    actions: torch.Tensor  # (B, K) discrete or (B, K, *shape) box; the last slot is filled by the next step
    pad: torch.Tensor  # (B, K) bool: slots from before the episode began

    def __len__(self) -> int:
        return self.latents.shape[0]

    def put(self, index, other: LatentState) -> None:
        """Overwrite rows ``index`` with ``other``'s (a vector env resetting some of its envs)."""
        self.latents[index], self.actions[index], self.pad[index] = other.latents, other.actions, other.pad


class World:
    def __init__(self, autoencoder: Autoencoder, dynamics: Dynamics, config: dict, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.ae, self.dyn = autoencoder.eval().to(self.device), dynamics.eval().to(self.device)
        self.config = config
        self.action_space = ActionSpace.from_json(config["action_space"])
        self.frame_space = FrameSpace.from_shape(config["frame_shape"])
        self.K = dynamics.cfg.context
        self.path: Path | None = None  # the directory it was loaded from, if any
        self.backend = "torch"
        self.step_fn: StepFn = TorchStep(self.ae, self.dyn)

    # ---- persistence -----------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        for name, module in (("autoencoder", self.ae), ("dynamics", self.dyn)):
            layout.atomic_save_tensors(module.state_dict(), path / f"{name}.safetensors")
        meta = {"format": "simulacra.world", "format_version": WORLD_FORMAT_VERSION, **self.config}
        layout.atomic_write(path / "world.json", json.dumps(meta, indent=1, default=str))

    @classmethod
    def load(cls, path: str | Path, *, device: str = "cpu", backend: str = "torch", threads: int = 2) -> World:
        """Load a world (or a run directory's world). ``backend="onnx"`` steps it with ONNX Runtime on
        the CPU (the graph ``<world>/step.onnx`` is exported and checked against eager if missing or stale)."""
        if backend not in BACKENDS:
            raise SimulacraError(f"unknown backend {backend!r}; backends: {', '.join(BACKENDS)}")
        if backend == "onnx" and torch.device(device).type != "cpu":
            raise SimulacraError("the onnx backend runs on the CPU; use backend='torch' for another device")
        path = layout.world_dir(path)
        meta = _read_meta(path)
        ae_cfg, dyn_cfg, space = _model_configs(meta, path / "world.json")
        build_ae = lambda: Autoencoder(ae_cfg)  # noqa: E731
        build_dyn = lambda: Dynamics(dyn_cfg, ae_cfg.grid_channels, space)  # noqa: E731
        for name, build in (("autoencoder", build_ae), ("dynamics", build_dyn)):
            try:
                with torch.device("meta"):  # the shapes the config makes, checked against the file before allocating
                    expected = build().state_dict()
            except (RuntimeError, ValueError, OverflowError) as e:  # sizes beyond what any tensor can hold
                why = str(e).splitlines()[0] if str(e).strip() else type(e).__name__
                raise SimulacraError(f"{path / 'world.json'}: {name} config makes impossible tensors ({why})") from None
            _check_tensors(expected, path / f"{name}.safetensors")
        ae, dyn = build_ae(), build_dyn()
        for name, module in (("autoencoder", ae), ("dynamics", dyn)):
            _load_weights(module, path / f"{name}.safetensors")
        world = cls(ae, dyn, meta, device)
        world.path = path
        return world.use_onnx(threads=threads) if backend == "onnx" else world

    def use_onnx(self, path: str | Path | None = None, threads: int = 2) -> World:
        """Step with ONNX Runtime from now on (same draws, same dream within one 8-bit level)."""
        from simulacra.world.onnx import default_path, ensure_exported

        if self.device.type != "cpu":
            raise SimulacraError("the onnx backend runs on the CPU; this world is on " + str(self.device))
        path = Path(path) if path is not None else default_path(self)
        ensure_exported(self, path)
        self.step_fn, self.backend = OnnxStep(path, threads=threads), "onnx"
        return self

    def with_options(
        self,
        *,
        temperature: float | None = None,
        sampling_steps: int | None = None,
        context_noise: float | None = None,
        gate_keep_moving: int | None = None,
    ) -> World:
        """A world sharing these weights with other inference options (this one is left as it is)."""
        over = {
            k: v
            for k, v in {
                "temperature": temperature,
                "sampling_steps": sampling_steps,
                "context_noise_infer": context_noise,
                "gate_keep_moving": gate_keep_moving,
            }.items()
            if v is not None
        }
        for name, v in (("temperature", temperature), ("context noise", context_noise)):
            if v is not None and not (_is_real(v) and 0 <= v < math.inf):  # also refuses nan
                raise SimulacraError(f"{name} must be a number, 0 or more, not {v!r}")
        if sampling_steps is not None and not (_is_int(sampling_steps) and sampling_steps >= 1):
            raise SimulacraError(f"sampling_steps must be a whole number, 1 or more, not {sampling_steps!r}")
        if gate_keep_moving is not None and not (_is_int(gate_keep_moving) and gate_keep_moving >= 0):
            raise SimulacraError(f"gate_keep_moving must be a whole number, 0 or more, not {gate_keep_moving!r}")
        ints = ("sampling_steps", "gate_keep_moving")
        over = {k: int(v) if k in ints else float(v) for k, v in over.items()}
        baked = {"sampling_steps", "context_noise_infer", "gate_keep_moving"} & over.keys()
        if self.backend == "onnx" and any(over[k] != getattr(self.dyn.cfg, k) for k in baked):
            raise SimulacraError(
                f"the ONNX graph fixes {sorted(baked)}; load the world with backend='torch' to change them"
            )
        new = copy.copy(self)
        new.dyn = copy.copy(self.dyn)  # shares parameters and buffers; only the config differs
        new.dyn.cfg = replace(self.dyn.cfg, **over)
        if self.backend == "torch":
            new.step_fn = TorchStep(new.ae, new.dyn)
        return new

    def generator(self, seed: int) -> torch.Generator:
        """A fresh random stream on the world's device: one per player, planner or agent."""
        return torch.Generator(device=self.device).manual_seed(int(seed))

    # ---- latent side -----------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, frames_BHWC) -> torch.Tensor:
        """uint8 frames (B, H, W, 3) -> normalised latents (B, C, h, w)."""
        f = self.frame_space.validate(frames_BHWC)
        x = torch.from_numpy(np.array(f, np.uint8)).to(self.device).permute(0, 3, 1, 2)
        return self.ae.encode(x) / self.dyn.latent_std

    @torch.no_grad()
    def decode(self, latents_BChw: torch.Tensor) -> np.ndarray:
        """Normalised latents (B, C, h, w) -> uint8 frames (B, H, W, 3)."""
        return to_uint8(self.ae.decode(latents_BChw * self.dyn.latent_std)).permute(0, 2, 3, 1).cpu().numpy()

    def action_tensor(self, actions_B, B: int) -> torch.Tensor:
        """Checked actions as a tensor (B, *shape); one action is given to every dream in the batch."""
        space = self.action_space
        if space.kind == "none":
            return torch.zeros(B, dtype=torch.long, device=self.device)
        a = np.asarray(actions_B)
        if a.shape == space.event_shape:
            a = np.broadcast_to(a, (B, *space.event_shape))
        a = space.validate(a, (B,))
        return torch.from_numpy(np.ascontiguousarray(a)).to(self.device)

    def initial_state(self, latents_BnChw: torch.Tensor, past_actions=None) -> LatentState:
        """State from n <= K observed latents (and the n-1 actions between them); earlier slots are padded."""
        B, n = latents_BnChw.shape[:2]
        K = self.K
        if n > K:
            latents_BnChw, n = latents_BnChw[:, -K:], K
            past_actions = None if past_actions is None else np.asarray(past_actions)[:, -(K - 1) :]
        lat = torch.cat([latents_BnChw[:, :1].expand(B, K - n, *latents_BnChw.shape[2:]), latents_BnChw], 1)
        acts = torch.from_numpy(self.action_space.zeros((B, K))).to(self.device)
        if past_actions is not None and n > 1 and self.action_space.kind != "none":
            pa = np.asarray(past_actions).reshape(B, n - 1, *self.action_space.event_shape)
            pa = self.action_space.validate(pa, (B, n - 1), what="context action")
            acts[:, K - n : K - 1] = torch.from_numpy(pa).to(self.device)
        pad = torch.zeros(B, K, dtype=torch.bool, device=self.device)
        pad[:, : K - n] = True
        return LatentState(lat.clone(), acts, pad)

    def latent_step(
        self, state: LatentState, actions_B, generator: torch.Generator
    ) -> tuple[LatentState, torch.Tensor, torch.Tensor, torch.Tensor]:
        """One dreamed step for a batch, no decoding: (new state, next latents, reward sign, done prob)."""
        return self._advance(state, actions_B, generator, decode=False)[:4]

    def _advance(self, state: LatentState, actions_B, generator: torch.Generator, decode: bool):
        B = len(state)
        acts = state.actions.clone()
        acts[:, -1] = self.action_tensor(actions_B, B).to(acts.dtype)
        noise, ctx_noise = self.dyn.sample_noise(state.latents, generator)
        z, frames, reward, done = self.step_fn(state.latents, acts, state.pad, noise, ctx_noise, decode=decode)
        z, reward, done = z.to(self.device), reward.to(self.device), done.to(self.device)
        new = LatentState(
            torch.cat([state.latents[:, 1:], z[:, None]], 1),
            torch.cat([acts[:, 1:], acts[:, -1:]], 1),
            torch.cat([state.pad[:, 1:], torch.zeros(B, 1, dtype=torch.bool, device=self.device)], 1),
        )
        return new, z, reward, done, frames

    # ---- pixel side --------------------------------------------------------------------------------
    def reset(self, frames_BTHWC, actions_BT=None) -> LatentState:
        """The state after observing frame stacks (B, T, H, W, 3) uint8 and the T-1 actions between
        them (B, T-1, ...), or None (then the actions before the last frame count as unknown: padding)."""
        frames = self.frame_space.validate(frames_BTHWC)
        if frames.ndim != 5:
            raise SimulacraError(f"reset takes a batch of frame stacks (B, T, H, W, 3), not shape {list(frames.shape)}")
        B, T = frames.shape[:2]
        lat = self.encode(frames.reshape(B * T, *frames.shape[2:]))
        return self.initial_state(lat.reshape(B, T, *lat.shape[1:]), actions_BT)

    def episode_context(self, ds, episode: int, t: int) -> tuple[np.ndarray, np.ndarray | None]:
        """The last K frames of a data set episode up to step t and the actions between them, as a batch
        of one: (frames (1, n, H, W, 3), actions (1, n-1, ...) or None) for ``reset``."""
        if not 0 <= t <= ds.episodes[episode].length:
            raise SimulacraError(f"episode {episode} has frames 0..{ds.episodes[episode].length}, not {t}")
        lo = max(0, t - self.K + 1)
        acts = ds.arrays(episode).get("action")
        return ds.frames(episode, lo, t + 1)[None], None if acts is None else np.asarray(acts[lo:t])[None]

    def step(self, state: LatentState, actions_B, generator: torch.Generator):
        """One dreamed step: (new state, frames (B, H, W, 3) uint8, reward sign (B,), done (B,) bool)."""
        state, z, reward, done, frames = self._advance(state, actions_B, generator, decode=True)
        frames = self.decode(z) if frames is None else frames
        return state, frames, reward.cpu().numpy(), done.cpu().numpy() > 0.5

    def rollout(self, state: LatentState, actions_BT, generator: torch.Generator):
        """Step through actions (B, T, ...): (state, frames (B, T, H, W, 3), rewards (B, T), dones (B, T))."""
        actions_BT = np.asarray(actions_BT)
        frames, rewards, dones = [], [], []
        for t in range(actions_BT.shape[1]):
            state, f, r, d = self.step(state, actions_BT[:, t], generator)
            frames.append(f)
            rewards.append(r)
            dones.append(d)
        return state, np.stack(frames, 1), np.stack(rewards, 1), np.stack(dones, 1)


def _read_meta(path: Path) -> dict:
    meta_path = path / "world.json"
    if not meta_path.exists():
        raise SimulacraError(f"{path}: no trained world here (missing world.json); train one with `simulacra train`")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SimulacraError(f"{meta_path}: not readable JSON ({e})") from None
    if not isinstance(meta, dict):
        raise SimulacraError(f"{meta_path}: a world config is a JSON object, not {type(meta).__name__}")
    if meta.get("format") != "simulacra.world":
        raise SimulacraError(f"{meta_path}: not a simulacra world (format={meta.get('format')!r})")
    if meta.get("format_version") != WORLD_FORMAT_VERSION:
        raise SimulacraError(f"{meta_path}: world format version {meta.get('format_version')!r} is unknown")
    return meta


WORLD_KEYS = ("autoencoder", "dynamics", "action_space", "frame_shape")
"""The entries of world.json a world is built from (it also keeps its run's config, which is free-form)."""


def _model_configs(meta: dict, meta_path: Path) -> tuple[AutoencoderConfig, DynamicsConfig, ActionSpace]:
    """The models' configs from world.json, every field present, typed and in range (one line otherwise),
    before any model is built."""
    missing = [k for k in WORLD_KEYS if k not in meta]
    if missing:
        raise SimulacraError(f"{meta_path}: not a valid world config (missing {', '.join(missing)})")
    shape = meta["frame_shape"]
    if not (isinstance(shape, list) and len(shape) == 3 and all(_is_int(s) and s >= 1 for s in shape)) or shape[2] != 3:
        raise SimulacraError(f"{meta_path}: frame_shape must be [height, width, 3], not {shape!r}")
    try:
        space = ActionSpace.from_json(meta["action_space"])
    except SimulacraError as e:
        raise SimulacraError(f"{meta_path}: action_space: {e}") from None
    configs = []
    for key, cls in (("autoencoder", AutoencoderConfig), ("dynamics", DynamicsConfig)):
        if isinstance(meta[key], dict):  # a world saved before these options existed is that world
            meta = {**meta, key: {**LEGACY.get(key, {}), **meta[key]}}
        for field_name, problem in dict_problems(cls, meta[key]):
            raise SimulacraError(f"{meta_path}: {'.'.join(filter(None, (key, field_name)))} {problem}")
        configs.append(from_dict(cls, meta[key]))
    ae_cfg, dyn_cfg = configs
    latent_hw = (shape[0] // ae_cfg.patch, shape[1] // ae_cfg.patch) if ae_cfg.patch >= 1 else None
    for key, problems in (("autoencoder", ae_cfg.problems(shape)), ("dynamics", dyn_cfg.problems(latent_hw))):
        for field_name, problem in problems:
            raise SimulacraError(f"{meta_path}: {key}.{field_name} {problem}")
    return ae_cfg, dyn_cfg, space


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool | np.bool_)


def _is_real(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool | np.bool_)


SAFETENSORS_DTYPES = {
    torch.float32: "F32", torch.float64: "F64", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL",
}  # fmt: skip
MAX_HEADER = 100 * 2**20


def _safetensors_header(file: Path) -> dict:
    """The JSON header of a safetensors file ({name: {dtype, shape, data_offsets}}), read alone."""
    try:
        with open(file, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            n = int.from_bytes(f.read(8), "little")
            if size < 8 or not 2 <= n <= min(MAX_HEADER, size - 8):
                raise ValueError("no safetensors header")
            header = json.loads(f.read(n))
    except FileNotFoundError:
        raise SimulacraError(f"{file}: missing; the world folder is incomplete") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise SimulacraError(f"{file}: cannot load these weights (not a safetensors file: {e})") from None
    if not isinstance(header, dict):
        raise SimulacraError(f"{file}: cannot load these weights (its header is not a JSON object)")
    header.pop("__metadata__", None)
    for k, v in header.items():
        ok = isinstance(v, dict) and isinstance(v.get("shape"), list) and isinstance(v.get("data_offsets"), list)
        if not ok or len(v["data_offsets"]) != 2 or not all(_is_int(o) for o in v["data_offsets"]):
            raise SimulacraError(f"{file}: cannot load these weights (header entry {k!r} is malformed)")
        if v["data_offsets"][1] > size - 8 - n:
            raise SimulacraError(f"{file}: cannot load these weights (truncated: {k} lies past the end of the file)")
    return header


def _check_tensors(expected: dict[str, torch.Tensor], file: Path) -> None:
    """One line for a tensor the config makes that the file lacks, or holds with another shape or dtype,
    or one the file holds that the config does not make."""
    header = _safetensors_header(file)
    missing = [k for k in expected if k not in header]
    if missing:
        raise SimulacraError(
            f"{file}: no tensor {missing[0]} (and {len(missing) - 1} more) that world.json's config needs"
        )
    extra = [k for k in header if k not in expected]
    if extra:
        raise SimulacraError(f"{file}: tensor {extra[0]} (and {len(extra) - 1} more) is not part of world.json's model")
    for k, t in expected.items():
        shape, dtype = header[k]["shape"], header[k].get("dtype")
        if shape != list(t.shape):
            raise SimulacraError(f"{file}: {k} has shape {shape}, world.json's config makes it {list(t.shape)}")
        if dtype != SAFETENSORS_DTYPES.get(t.dtype):
            raise SimulacraError(f"{file}: {k} is {dtype}, the model holds {SAFETENSORS_DTYPES.get(t.dtype, t.dtype)}")


def _load_weights(module: torch.nn.Module, file: Path) -> None:
    """Weights from safetensors only (never a pickle); wrong, missing or non-finite tensors are one line."""
    try:
        tensors = load_file(file)
        module.load_state_dict(tensors)
    except FileNotFoundError:
        raise SimulacraError(f"{file}: missing; the world folder is incomplete") from None
    except (SafetensorError, OSError, RuntimeError) as e:
        raise SimulacraError(f"{file}: cannot load these weights ({str(e).splitlines()[0]})") from None
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise SimulacraError(f"{file}: non-finite weights in {bad[0]} (and {len(bad) - 1} more); refusing to load")
