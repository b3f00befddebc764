"""Recording: run a real env (several processes at once) and store every step.

``record_episodes(cfg)`` is the library call: it records and returns the data set's folder, printing
nothing (an optional progress bar aside). ``record(cfg)`` is the `simulacra record` verb around it: it
prints the resolved config and a summary.

Episode k is reset with seed ``seed + k`` and its exploration policy is seeded from the same number,
so an episode's content depends only on (seed, k), not on how many env processes ran. Envs step in
lockstep (Gymnasium vector env, autoreset off); each finished episode is written at once, so a
crash loses only the episodes still in progress.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path

import gymnasium as gym
import numpy as np
from tqdm import tqdm

from simulacra import __version__, layout
from simulacra.data.envs import make_env
from simulacra.data.policies import make_policy
from simulacra.data.store import DatasetWriter
from simulacra.errors import SimulacraError
from simulacra.presets import WorldPreset, get_preset
from simulacra.spaces import ActionSpace

log = logging.getLogger(__name__)


@dataclass
class RecordConfig:
    """Record trajectories from a real Gymnasium environment into a data set."""

    preset: str = "breakout"
    """World preset (breakout, pong, carracing, doom, pusht, crafter, minigrid, debug)."""
    env_id: str | None = None
    """Any Gymnasium env id with image observations or rgb_array rendering; overrides --preset."""
    episodes: int = 16
    """Number of complete episodes to record."""
    num_envs: int = 2
    """Env processes stepping in parallel (1 = in this process)."""
    seed: int = 0
    """Episode k is reset with seed + k; the whole data set is a function of this seed."""
    out: str | None = None
    """Data set directory (default: datasets/<preset>)."""
    overwrite: bool = False
    """Replace an existing data set at --out."""
    resolution: int | None = None
    """Frame size override (default: the preset's, 64)."""
    max_episode_steps: int | None = None
    """Episode length cap override (default: the preset's)."""
    policy: str | None = None
    """Exploration policy override: random, carracing, pusht (default: the preset's)."""
    sticky: float | None = None
    """For the random policy: probability of repeating the previous action (default: the preset's)."""


def resolve_preset(cfg: RecordConfig) -> WorldPreset:
    if cfg.env_id is not None:
        base = WorldPreset(name=cfg.env_id.replace("/", "_").lower(), env_id=cfg.env_id, description="generic env")
    else:
        base = get_preset(cfg.preset)
    over = {}
    if cfg.resolution is not None:
        over["resolution"] = cfg.resolution
    if cfg.max_episode_steps is not None:
        over["max_episode_steps"] = cfg.max_episode_steps
    if cfg.policy is not None and cfg.policy != base.policy:
        over["policy"], over["policy_kwargs"] = cfg.policy, {}
    if cfg.sticky is not None:
        over["policy_kwargs"] = {**(over.get("policy_kwargs", base.policy_kwargs)), "sticky": cfg.sticky}
    return replace(base, **over)


def _make(p: WorldPreset):
    return make_env(
        p.env_id,
        p.env_kwargs,
        (p.resolution, p.resolution),
        p.frame_source,
        p.max_episode_steps,
        make_policy(p.policy, **p.policy_kwargs),
    )


def _prepare(cfg: RecordConfig) -> tuple[WorldPreset, Path, ActionSpace]:
    """Everything that can fail before a file is written: the options, the output folder, the env itself."""
    if cfg.episodes < 1 or cfg.num_envs < 1:
        raise SimulacraError("--episodes and --num-envs must be at least 1")
    p = resolve_preset(cfg)
    out = Path(cfg.out or layout.DATASETS_DIR / p.name)
    if (out / "info.json").exists() and not cfg.overwrite:
        raise SimulacraError(f"{out} already holds a data set; pass --overwrite to replace it or --out elsewhere")
    probe = _make(p)  # fails here, in this process, with one line if the env (or its action space) is unusable
    try:
        probe.reset(seed=cfg.seed)  # a first frame must come out before anything is written
        space = probe.space
    finally:
        probe.close()
    return p, out, space


def _write(cfg: RecordConfig, p: WorldPreset, out: Path, space: ActionSpace, progress: bool) -> Path:
    info = {
        "frame_shape": [p.resolution, p.resolution, 3],
        "action_space": space.to_json(),
        "env_id": p.env_id,
        "preset": p.name,
        "preset_config": p.to_dict(),
        "fps": p.fps,
        "source": "record",
        "record_config": asdict(cfg),
        "simulacra_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    writer = DatasetWriter(out, info, overwrite=cfg.overwrite)
    n = min(cfg.num_envs, cfg.episodes)
    thunks = [partial(_make, p)] * n
    kw = {"autoreset_mode": gym.vector.AutoresetMode.DISABLED}
    envs = gym.vector.SyncVectorEnv(thunks, **kw) if n == 1 else gym.vector.AsyncVectorEnv(thunks, **kw)
    try:
        _run(envs, writer, cfg, p, space, progress)
    finally:
        envs.close()
    return out


def record_episodes(cfg: RecordConfig, progress: bool = False) -> Path:
    """Record ``cfg.episodes`` episodes into ``cfg.out`` (default datasets/<preset>) and return that folder.

    Prints nothing; ``progress`` shows a tqdm bar on stderr. One-line SimulacraError, before anything is
    written, for bad options, an existing data set (without ``overwrite``) or an env simulacra cannot use
    (no pictures, a MultiDiscrete action space).
    """
    p, out, space = _prepare(cfg)
    return _write(cfg, p, out, space, progress)


def record(cfg: RecordConfig) -> Path:
    """The `simulacra record` verb: record_episodes with the resolved config, a progress bar and a summary."""
    p, out, space = _prepare(cfg)
    print("record config:", json.dumps({**asdict(cfg), "resolved_preset": p.to_dict()}, indent=2))
    out = _write(cfg, p, out, space, progress=True)
    print(f"recorded {cfg.episodes} episodes to {out}  (next: simulacra data info {out})")
    return out


def _run(envs, writer: DatasetWriter, cfg: RecordConfig, p: WorldPreset, space: ActionSpace, progress: bool) -> None:
    n = envs.num_envs
    episode_of = list(range(n))  # which episode k each env is playing (>= episodes: a discarded filler)
    next_k = n
    obs, _ = envs.reset(seed=[cfg.seed + k for k in episode_of])
    bufs = [_new_buffer(obs[i]) for i in range(n)]
    done_count = 0
    bar = tqdm(total=cfg.episodes, unit="ep", desc=f"record {p.name}", dynamic_ncols=True, disable=not progress)
    steps = 0
    while done_count < cfg.episodes:
        actions = np.stack([np.asarray(a) for a in envs.call("explore_action")])
        obs, rew, term, trunc, _ = envs.step(actions)
        steps += n
        reset_mask = np.zeros(n, dtype=bool)
        seeds: list[int | None] = [None] * n
        for i in range(n):
            b = bufs[i]
            b["frames"].append(obs[i])
            b["actions"].append(actions[i])
            b["rewards"].append(rew[i])
            b["terminated"].append(term[i])
            b["truncated"].append(trunc[i])
            if not (term[i] or trunc[i]):
                continue
            k = episode_of[i]
            if k < cfg.episodes:
                ep = writer.add_episode(
                    np.stack(b["frames"]),
                    np.asarray(b["actions"], space.dtype),
                    b["rewards"],
                    b["terminated"],
                    b["truncated"],
                    seed=cfg.seed + k,
                    env_id=p.env_id,
                    preset=p.name,
                    policy=p.policy,
                    source="record",
                )
                log.debug("episode %d (seed %d): %d steps, return %.2f", k, cfg.seed + k, ep.length, ep.ret)
                done_count += 1
                bar.update(1)
            episode_of[i] = next_k
            next_k += 1
            reset_mask[i] = True
            seeds[i] = cfg.seed + episode_of[i]
        bar.set_postfix(steps=steps, refresh=False)
        if reset_mask.any():
            obs, _ = envs.reset(seed=seeds, options={"reset_mask": reset_mask})
            for i in np.flatnonzero(reset_mask):
                bufs[i] = _new_buffer(obs[i])
    bar.close()


def _new_buffer(frame: np.ndarray) -> dict:
    return {"frames": [frame], "actions": [], "rewards": [], "terminated": [], "truncated": []}
