"""`simulacra plan`: reach a goal image by planning inside a learned world, scored in the real env.

The verb is this config and ``plan``; the rest of the room: ``planners`` (CEM, MPPI, gradient: pure
functions over a batched latent step), ``agent`` (the planner as a policy, one MPC episode),
``tasks`` (start states and success per env), ``train`` (the planning world and GCBC through the one
loop), ``benchmark`` (the field's protocol, with baselines and intervals).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
import tyro

from simulacra.errors import SimulacraError


@dataclass
class PlanConfig:
    """Reach a goal image by planning in a world's planning latent; the real env executes every action."""

    world: Annotated[tyro.conf.Positional[str | None], tyro.conf.arg(metavar="RUN")] = None
    """A run directory holding a planning world (<run>/plan); with --benchmark the default is runs/<task>-plan."""
    goal: str | None = None
    """Goal image (PNG/JPEG; resized to the world's frames). The real env starts from --seed's reset."""
    seed: int = 0
    """Seed of the real env's reset (with --goal) and of the planner's sampling."""
    steps: int = 50
    """Env steps the planner may take."""
    planner: str = "cem"
    """cem, mppi or gradient."""
    horizon: int | None = None
    """Action blocks planned ahead (of 5 env steps each); default: the task's (pusht 5, fourrooms 8)."""
    replan: int = 5
    """Env steps executed between plans."""
    samples: int = 300
    """Candidates per iteration (CEM, MPPI)."""
    elites: int = 30
    """CEM: candidates the sampling distribution is refitted to."""
    iters: int = 30
    """Iterations per plan (Adam steps for gradient)."""
    along: float | None = None
    """Cost weight of the steps before the horizon's last (0: the last step only; see docs/plan.md);
    default: the task's (pusht 1, fourrooms 0.3)."""
    cost: str | None = None
    """distance (squared, between predicted and goal encodings) or steps (the cell world's own count of env
    steps to the goal's cell: a cost that knows walls; docs/plan.md) or pixels (the decoded predictions
    against the goal picture); default: the task's (pusht distance, fourrooms steps)."""
    model: str = "planning"
    """What the planners search in: planning (the run's planning world, <run>/plan) or pixel (the run's pixel
    world, the diffusion model play dreams with: every candidate step is a dreamed frame, a few hundred a
    second on this CPU, so give it a small search; docs/plan.md has its benchmark)."""
    benchmark: str | None = None
    """Run the protocol on a task (pusht, fourrooms): record and train what is missing, then every method over
    --episodes start/goal pairs; prints a table with 95% intervals and writes JSON and videos."""
    episodes: int = 100
    """Benchmark: start/goal pairs (goal 25 steps after the start in held-out recordings)."""
    methods: tuple[str, ...] = ("cem", "mppi", "gradient", "gcbc", "random")
    """Benchmark: the methods compared on the same pairs."""
    data: str | None = None
    """Benchmark: training recordings (default datasets/<task>-plan, recorded if missing)."""
    heldout: str | None = None
    """Benchmark: recordings with other seeds that starts and goals come from (default datasets/<task>-plan-heldout)."""
    train_minutes: float = 25.0
    """Benchmark: wall-clock budget for training the planning world and GCBC when the run has none."""
    videos: int = 2
    """Benchmark: episodes per method written as videos (real | goal | imagined)."""
    out: str | None = None
    """Where the video (and benchmark JSON) go (default: <run>/plan)."""
    threads: int = 2
    """CPU threads."""


def check_options(cfg: PlanConfig) -> None:
    from simulacra.plan.planners import PLANNERS

    if cfg.planner not in PLANNERS:
        raise SimulacraError(f"--planner must be one of {', '.join(PLANNERS)}, not {cfg.planner!r}")
    for name in ("steps", "horizon", "replan", "samples", "elites", "iters", "episodes", "threads"):
        v = getattr(cfg, name)
        if not (isinstance(v, int) and v >= 1) and not (name == "horizon" and v is None):
            raise SimulacraError(f"--{name} must be a positive integer, not {v}")
    if cfg.model not in ("planning", "pixel"):
        raise SimulacraError(f"--model must be planning or pixel, not {cfg.model!r}")
    if cfg.model == "pixel" and cfg.cost == "steps":
        raise SimulacraError("--cost steps needs the cell world; the pixel world plans by pixel distance")
    if cfg.cost not in (None, "distance", "steps", "pixels"):
        raise SimulacraError(f"--cost must be distance, steps or pixels, not {cfg.cost!r}")
    if cfg.elites > cfg.samples:
        raise SimulacraError(f"--elites ({cfg.elites}) cannot exceed --samples ({cfg.samples})")
    if cfg.along is not None and not 0 <= cfg.along < float("inf"):
        raise SimulacraError(f"--along must be 0 or more, not {cfg.along}")
    if cfg.videos < 0 or not cfg.train_minutes > 0:
        raise SimulacraError("--videos must be >= 0 and --train-minutes positive")
    known = (*PLANNERS, "gcbc", "random")
    bad = [m for m in cfg.methods if m not in known]
    if bad:
        raise SimulacraError(f"unknown --methods {bad}; choose from {', '.join(known)}")
    if cfg.benchmark is None and cfg.goal is None:
        raise SimulacraError("give --goal IMAGE (plan toward it in the real env) or --benchmark TASK")


def mpc_config(cfg: PlanConfig, task, planner: str | None = None):
    """The MPC settings: the options given, the task's defaults for the rest."""
    from simulacra.plan.agent import MPCConfig
    from simulacra.plan.planners import Search

    search = Search(samples=cfg.samples, elites=cfg.elites, iters=cfg.iters)
    given = {k: getattr(cfg, k) for k in ("horizon", "along", "cost") if getattr(cfg, k) is not None}
    return MPCConfig(planner=planner or cfg.planner, replan=cfg.replan, search=search, **{**task.mpc, **given})


def search_model(cfg: PlanConfig, run, planning, task, frame_shape, seed: int = 0):
    """The model the planners roll candidates through: the planning world, or the run's pixel world."""
    if cfg.model == "planning":
        return planning
    from simulacra import layout
    from simulacra.plan.pixel import PixelPlanningWorld
    from simulacra.world import World

    _, world_dir = layout.resolve_run(str(run))
    world = World.load(world_dir, threads=cfg.threads)
    if tuple(world.frame_space.shape) != tuple(frame_shape):
        raise SimulacraError(
            f"{world_dir}: frames {list(world.frame_space.shape)}, not the planning task's {frame_shape}"
        )
    return PixelPlanningWorld(world, task, planning.cfg.block, seed)


def read_goal(path: str, shape: tuple[int, int, int]) -> np.ndarray:
    from simulacra.play.player import decode_image
    from simulacra.play.session import SessionError

    p = Path(path)
    if not p.is_file():
        raise SimulacraError(f"--goal {path}: no such file")
    if p.stat().st_size > 32 << 20:
        raise SimulacraError(f"--goal {path}: larger than 32 MiB")
    try:  # PIL with pixel limits, resized as the recorder resizes frames
        frame, _ = decode_image(p.read_bytes(), shape)
    except SessionError as e:
        raise SimulacraError(f"--goal {path}: {e}") from None
    return frame


def plan(cfg: PlanConfig) -> int:
    import torch

    check_options(cfg)
    torch.set_num_threads(cfg.threads)
    if cfg.benchmark is not None:
        from simulacra.plan.benchmark import run_benchmark

        run_benchmark(cfg)
        return 0
    from simulacra.data.envs import make_env
    from simulacra.plan.agent import Planner, run_episode
    from simulacra.plan.tasks import Episode, task_for
    from simulacra.plan.train import load_planning
    from simulacra.plan.video import write_plan_video

    if cfg.world is None:
        raise SimulacraError("name the run that holds the planning world: simulacra plan RUN --goal IMAGE")
    jepa, _, meta = load_planning(cfg.world)
    task = task_for(meta["task"])
    goal = read_goal(cfg.goal, tuple(meta["frame_shape"]))
    env = make_env(task.env_id, task.env_kwargs, tuple(meta["frame_shape"][:2]), "auto", None, None, "stretch",
                   task.state_reader)  # fmt: skip
    try:
        env.reset(seed=cfg.seed)
        start = task.state(env)
        model = search_model(cfg, cfg.world, jepa, task, meta["frame_shape"], cfg.seed)
        planner = Planner(model, task, goal, mpc_config(cfg, task), seed=cfg.seed)
        # a goal picture has no true state: success is judged by the planner's own distance, shown as a number
        result = run_episode(env, task, planner, Episode(-1, 0, start, None, goal), cfg.steps, cfg.seed, judge=False)
    finally:
        env.close()
    out = Path(cfg.out) if cfg.out else Path(cfg.world) / "plan"
    out.mkdir(parents=True, exist_ok=True)
    video = write_plan_video(out / f"plan-seed{cfg.seed}.mp4", result, goal, model, planner.block, planner)
    d = np.abs(result["frames"][-1].astype(np.float32) - goal.astype(np.float32)).mean()
    print(
        f"simulacra plan: {result['env_steps']} env steps with {cfg.planner} "
        f"({np.mean(result['plan_seconds']):.3f} s per plan, {len(result['plan_seconds'])} plans); "
        f"final frame's mean absolute difference to the goal {d:.1f} / 255; video: {video}"
    )
    return 0
