"""`simulacra play`: the learned world in the browser, in real time, beside the real env.

The verb is this config and ``play``; the rest of the room: ``session`` (a dream and its replayable log),
``player`` (the dream, reality beside it, the policy that can take over), ``server`` (the page and its
socket, and every check on what comes in), ``static/index.html`` (the page).
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from typing import Annotated, Literal

import numpy as np
import tyro

from simulacra.errors import SimulacraError

SKIP_ENV = "SIMULACRA_NO_PLAY"
"""Set to 1 and `simulacra play` (and setup.sh's last step) returns at once: CI and scripts."""


@dataclass
class PlayConfig:
    """Play a trained world in the browser, with the real env beside it."""

    world: Annotated[tyro.conf.Positional[str | None], tyro.conf.arg(metavar="RUN_OR_WORLD")] = None
    """A run directory or a world directory (default: the most recent run under ./runs)."""
    host: str = "127.0.0.1"
    """Address to bind. Anything but loopback requires a token, printed once with the URL."""
    port: int = 8765
    """Port to bind (0: any free port)."""
    allow_host: tuple[str, ...] = ()
    """More host names the page may be reached by (the Host / Origin allow-list; loopback names always)."""
    data: str | None = None
    """Data set whose episodes a session may start from (default: the world's own, its held-out episodes)."""
    real: bool = True
    """Run the real env beside the dream (the world's recording preset), for split view and divergence."""
    backend: Literal["auto", "torch", "onnx"] = "auto"
    """Stepping backend. auto: onnx (about 2x faster at batch 1) when onnxruntime is installed, else torch.
    A sampling-steps setting other than the exported one runs eagerly."""
    threads: int = 2
    """CPU threads of the world's step."""
    max_sessions: int = 4
    """Browser tabs served at once; the next one gets "server busy"."""
    idle_timeout: float = 300.0
    """Seconds without a message from a tab before its session is closed."""
    max_upload_mb: float = 2.0
    """Largest picture a tab may upload to start from."""
    seconds: float | None = None
    """Serve this long, then stop (default: until Ctrl-C)."""
    policy: Literal["auto", "planner", "random"] = "auto"
    """What Enter hands control to. planner: plan toward a goal picture in the run's planning world
    (<run>/plan, from `train --planning`); auto: the planner when the run has one, else random actions."""
    goal: str | None = None
    """The planner's first goal picture (PNG/JPEG); the page can upload another at any time."""
    plan_samples: int = 100
    """Planner candidates per iteration: fewer than the benchmark's 300, so a plan fits between frames."""
    plan_iters: int = 10
    """Planner iterations per plan (the benchmark's: 30)."""


def load_starts(world, data: str | None):
    """The server's starts: a data set and the episodes sessions may begin in, plus reference frames."""
    from simulacra.data import Dataset
    from simulacra.play.server import Starts
    from simulacra.world.env import default_starts

    try:
        if data is not None:
            ds = Dataset.open(data)
            episodes = list(range(len(ds)))
        else:
            s = default_starts(world)
            ds, episodes = s.ds, s.episodes
    except SimulacraError:
        if data is not None:
            raise
        return Starts()
    episodes = [i for i in episodes if ds.episodes[i].length >= 1]
    ref = [ds.frames(i, 0, min(ds.episodes[i].length + 1, 64))[::8] for i in episodes[:8]]
    return Starts(ds, episodes, np.concatenate(ref) if ref else None)


def play(cfg: PlayConfig) -> int:
    import torch

    from simulacra import layout
    from simulacra.play.server import PlayServer, ServerOptions, new_token
    from simulacra.world import World

    if os.environ.get(SKIP_ENV, "").strip() not in ("", "0"):
        print(f"simulacra play: skipped ({SKIP_ENV} is set)")
        return 0
    if not (isinstance(cfg.port, int) and 0 <= cfg.port < 65536):
        raise SimulacraError(f"--port must be 0..65535, not {cfg.port}")
    if not (cfg.max_sessions >= 1 and cfg.idle_timeout > 0 and cfg.max_upload_mb > 0):
        raise SimulacraError("--max-sessions, --idle-timeout and --max-upload-mb must be positive")
    _, world_dir = layout.resolve_run(cfg.world)
    torch.set_num_threads(cfg.threads)
    backend = cfg.backend
    if backend == "auto":
        import importlib.util

        backend = "onnx" if importlib.util.find_spec("onnxruntime") else "torch"
    world = World.load(world_dir, backend=backend, threads=cfg.threads)
    loopback = cfg.host in ("127.0.0.1", "localhost", "::1")
    opts = ServerOptions(
        host=cfg.host,
        port=cfg.port,
        allow_hosts=tuple(cfg.allow_host),
        token=None if loopback else new_token(),
        max_sessions=cfg.max_sessions,
        idle_timeout=cfg.idle_timeout,
        max_upload=int(cfg.max_upload_mb * (1 << 20)),
        real=cfg.real and "env_id" in (world.config.get("preset") or {}),
    )
    starts = load_starts(world, cfg.data)
    factory, policy_name = policy_factory(cfg, world)
    print(
        f"simulacra play: {world_dir} ({world.backend}), {len(starts.episodes)} start episodes, real env "
        f"{'on' if opts.real else 'off'}, Enter hands control to {policy_name}"
    )
    return asyncio.run(_serve(PlayServer(world, starts, opts, factory), cfg.seconds))


def policy_factory(cfg: PlayConfig, world):
    """(a maker of one policy per tab, its name): the run's planner when asked for or found, else None
    (the player's own random policy)."""
    from simulacra.plan.agent import MPCConfig, Planner
    from simulacra.plan.planners import Search
    from simulacra.plan.tasks import task_for
    from simulacra.plan.train import load_planning

    if cfg.policy not in ("auto", "planner", "random"):
        raise SimulacraError(f"--policy must be auto, planner or random, not {cfg.policy!r}")
    if not (cfg.plan_samples >= 1 and cfg.plan_iters >= 1):
        raise SimulacraError("--plan-samples and --plan-iters must be positive")
    run = world.path.parent
    has_plan = (run / "plan" / "plan.json").is_file()
    if cfg.policy == "random" or (cfg.policy == "auto" and not has_plan):
        if cfg.goal is not None:
            raise SimulacraError(f"--goal needs a planning world, and {run} has none (train it with --planning)")
        return None, "random actions"
    jepa, _, meta = load_planning(run)  # a clear error when --policy planner finds none
    task = task_for(meta["task"])
    if tuple(world.frame_space.shape) != tuple(meta["frame_shape"]):
        raise SimulacraError(
            f"{run}/plan: frames {meta['frame_shape']}, not the world's {list(world.frame_space.shape)}"
        )
    goal = None
    if cfg.goal is not None:
        from simulacra.plan import read_goal

        goal = read_goal(cfg.goal, tuple(meta["frame_shape"]))
    search = Search(samples=cfg.plan_samples, elites=max(1, cfg.plan_samples // 10), iters=cfg.plan_iters)
    mpc = MPCConfig(search=search, **task.mpc)

    def make(world):
        return Planner(jepa, task, goal, mpc)

    return make, f"the planner ({task.name}, toward {'--goal' if goal is not None else 'a goal picture from the page'})"


async def _serve(server, seconds: float | None) -> int:
    try:
        await server.start()
    except OSError as e:
        raise SimulacraError(
            f"cannot bind {server.opts.host}:{server.opts.port} ({e.strerror}); try --port 0"
        ) from None
    print(f"simulacra play: open {server.url()}", flush=True)
    if server.opts.token:
        print("simulacra play: the token in that URL is the only way in; it is printed once", flush=True)
    try:
        if seconds is None:
            await asyncio.Future()
        else:
            await asyncio.sleep(seconds)
    finally:
        await server.close()
    return 0
