"""Recording: run a real env (several processes at once) and store every step.

``record_episodes(cfg)`` is the library call: it records and returns the data set's folder, printing
nothing (an optional progress bar aside). ``record(cfg)`` is the `simulacra record` verb around it: it
prints the resolved config and a summary.

Episode k is reset with seed ``seed + k`` and its exploration policy is seeded from the same number,
so an episode's content depends only on (seed, k), not on how many env processes ran. Envs step in
lockstep (:class:`simulacra.data.pool.EnvPool`: every start-up and step has a deadline, ``env_timeout``;
OpenGL-rendered envs get spawned workers); each finished episode is written at once, so a crash loses
only the episodes still in progress.

One writer per folder: the output folder's writer lock is held from before the env is probed to the
last episode, so a second recorder (or import) into it is refused with one line naming this one's PID.
Options are checked before anything is read or written; ``--overwrite`` only ever replaces a simulacra
data set, never a folder of other files.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np
from tqdm import tqdm

from simulacra import __version__, layout
from simulacra.data.envs import make_env
from simulacra.data.policies import POLICIES, make_policy
from simulacra.data.pool import EnvPool, deadline, uses_opengl
from simulacra.data.safety import MAX_RESOLUTION, check_output_folder, check_range, locked_output
from simulacra.data.store import DatasetWriter, check_replaceable
from simulacra.errors import SimulacraError
from simulacra.presets import WorldPreset, get_preset
from simulacra.spaces import ActionSpace

log = logging.getLogger(__name__)

MAX_SEED = 2**32 - 1
"""Reset seeds are handed to C envs that keep them in 32 bits."""
MAX_NUM_ENVS = 256


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
    """Replace an existing data set at --out (never a folder that holds anything else)."""
    resolution: int | None = None
    """Frame size override (default: the preset's, 64)."""
    max_episode_steps: int | None = None
    """Episode length cap override (default: the preset's)."""
    policy: str | None = None
    """Exploration policy override: random, carracing, pusht (default: the preset's)."""
    sticky: float | None = None
    """For the random policy: probability of repeating the previous action (default: the preset's)."""
    env_timeout: float = 30.0
    """Seconds an env may take for one reset or step before recording stops with an error (starting the
    env processes may take twice as long)."""


def check_options(cfg: RecordConfig) -> None:
    """One line naming the option for any number out of range; runs before anything is read or written."""
    check_range("--episodes", cfg.episodes, 1)
    check_range("--num-envs", cfg.num_envs, 1, MAX_NUM_ENVS)
    check_range("--seed", cfg.seed, 0, MAX_SEED)
    if cfg.seed + cfg.episodes - 1 > MAX_SEED:
        raise SimulacraError(f"--seed {cfg.seed} + --episodes {cfg.episodes} run past the largest seed {MAX_SEED}")
    check_range("--resolution", cfg.resolution, 8, MAX_RESOLUTION)
    check_range("--max-episode-steps", cfg.max_episode_steps, 1)
    check_range("--sticky", cfg.sticky, 0.0, 1.0)
    check_range("--env-timeout", cfg.env_timeout, 0.001, 86400)
    if cfg.policy is not None and cfg.policy not in POLICIES:
        raise SimulacraError(f"--policy {cfg.policy!r} is unknown; known policies: {', '.join(sorted(POLICIES))}")
    if cfg.env_id is not None and not cfg.env_id.strip():
        raise SimulacraError("--env-id must not be empty")
    if cfg.out is not None and not cfg.out:
        raise SimulacraError("--out must not be empty")


def resolve_preset(cfg: RecordConfig) -> WorldPreset:
    if cfg.env_id is not None:
        name = cfg.env_id.replace("/", "_").replace(":", "_").lower()
        base = WorldPreset(name=name, env_id=cfg.env_id, description="generic env")
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


def _prepare(cfg: RecordConfig) -> tuple[WorldPreset, Path]:
    """What can be checked before anything is read or written: the options, the preset, the output folder."""
    check_options(cfg)
    p = resolve_preset(cfg)
    make_policy(p.policy, **p.policy_kwargs)  # one line for options this policy does not take
    out = Path(layout.DATASETS_DIR / p.name if cfg.out is None else cfg.out)
    check_output_folder(out, "--out")
    check_replaceable(out, overwrite=True)  # never a folder of other files (the lock file would land there)
    return p, out


def _probe(cfg: RecordConfig, p: WorldPreset) -> ActionSpace:
    """Build the env here and take its first frame: one line if it (or its action space) is unusable."""
    t = 2 * cfg.env_timeout
    with deadline(t, lambda: f"env {p.env_id} did not start within {t:g} s (--env-timeout sets the limit)"):
        probe = _make(p)
        try:
            probe.reset(seed=cfg.seed)  # a first frame must come out before anything is written
            return probe.space
        finally:
            probe.close()


def _pool(cfg: RecordConfig, p: WorldPreset) -> EnvPool:
    n = min(cfg.num_envs, cfg.episodes)
    context = None
    if n > 1 and uses_opengl(p.env_id):
        context = "spawn"
        log.info(
            "%s renders with OpenGL, which hangs in forked processes: starting its %d env processes with 'spawn'",
            p.env_id,
            n,
        )
    return EnvPool(
        partial(_make, p),
        n,
        p.env_id,
        in_process=n == 1,
        context=context,
        start_timeout=2 * cfg.env_timeout,
        step_timeout=cfg.env_timeout,
    )


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
    envs = _pool(cfg, p)  # started (or failed) before the data set is created or replaced
    try:
        writer = DatasetWriter(out, info, overwrite=cfg.overwrite)
        _run(envs, writer, cfg, p, space, progress)
    except BaseException:
        envs.close(kill=True)
        raise
    envs.close()
    return out


def record_episodes(cfg: RecordConfig, progress: bool = False) -> Path:
    """Record ``cfg.episodes`` episodes into ``cfg.out`` (default datasets/<preset>) and return that folder.

    Prints nothing; ``progress`` shows a tqdm bar on stderr. One-line SimulacraError, before anything is
    written, for bad options, an existing data set (without ``overwrite``), a folder of other files, a
    folder another writer holds, or an env simulacra cannot use (no pictures, a MultiDiscrete action
    space); and during recording for an env that stops answering (``env_timeout``).
    """
    p, out = _prepare(cfg)
    with locked_output(out, "record"):
        check_replaceable(out, cfg.overwrite)
        space = _probe(cfg, p)
        return _write(cfg, p, out, space, progress)


def record(cfg: RecordConfig) -> Path:
    """The `simulacra record` verb: record_episodes with the resolved config, a progress bar and a summary."""
    p, out = _prepare(cfg)
    with locked_output(out, "record"):
        check_replaceable(out, cfg.overwrite)
        space = _probe(cfg, p)
        print("record config:", json.dumps({**asdict(cfg), "resolved_preset": p.to_dict()}, indent=2))
        out = _write(cfg, p, out, space, progress=True)
    print(f"recorded {cfg.episodes} episodes to {out}  (next: simulacra data info {out})")
    return out


def _run(
    envs: EnvPool, writer: DatasetWriter, cfg: RecordConfig, p: WorldPreset, space: ActionSpace, progress: bool
) -> None:
    obs = envs.reset([cfg.seed + k for k in range(envs.num_envs)])  # env k starts with episode k
    # the bar shows on a terminal only (disable=None): logs and pipes get no carriage-return noise
    bar = tqdm(
        total=cfg.episodes, unit="ep", desc=f"record {p.name}", dynamic_ncols=True, disable=None if progress else True
    )
    try:
        _loop(envs, writer, cfg, p, space, bar, obs)
    except BaseException:
        bar.leave = False  # clear the bar, so the error line that follows stands alone
        raise
    finally:
        bar.close()


def _loop(
    envs: EnvPool, writer: DatasetWriter, cfg: RecordConfig, p: WorldPreset, space: ActionSpace, bar, obs
) -> None:
    n = envs.num_envs
    episode_of = list(range(n))  # which episode k each env is playing (>= episodes: a discarded filler)
    next_k = n
    bufs = [_new_buffer(obs[i]) for i in range(n)]
    done_count = 0
    steps = 0
    while done_count < cfg.episodes:
        actions = np.stack([np.asarray(a) for a in envs.explore_actions()])
        obs, rew, term, trunc = envs.step(actions)
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
        if reset_mask.any() and done_count < cfg.episodes:
            obs = envs.reset(seeds, reset_mask)
            for i in np.flatnonzero(reset_mask):
                bufs[i] = _new_buffer(obs[i])


def _new_buffer(frame: np.ndarray) -> dict:
    return {"frames": [frame], "actions": [], "rewards": [], "terminated": [], "truncated": []}
