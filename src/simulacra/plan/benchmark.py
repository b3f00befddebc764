"""The planning benchmark, under the field's protocol (stable-worldmodel, DINO-WM, LeWM):

start and goal from held-out recordings (the goal is the frame 25 steps after the start), the real env
set to the start state, 50 env steps, success judged on the env's true state. Every method sees the
same start/goal pairs: the planners in the JEPA latent, GCBC trained on the same data, random actions.
What is missing (recordings, the trained planning world) is made first, so one command reproduces it.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from simulacra.plan.agent import Planner, run_episode
from simulacra.plan.tasks import draw_episodes, task_for

OFFSET = 25
"""Steps from start to goal in the held-out recordings (the protocol's)."""


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a success rate (honest at 0% and 100%, unlike the normal one)."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


class GCBCPolicy:
    """The GCBC baseline as a policy: every ``block`` steps it predicts the next block's actions."""

    def __init__(self, gcbc, task, goal_frame: np.ndarray):
        self.gcbc, self.task, self.name = gcbc.eval(), task, "gcbc"
        self.set_goal(goal_frame)
        self.reset()

    def set_goal(self, goal_frame: np.ndarray) -> None:
        self.goal = torch.from_numpy(np.array(goal_frame)).permute(2, 0, 1)[None]

    def reset(self, seed: int | None = None) -> None:
        self.queue: list[np.ndarray] = []
        self.plan_seconds: list[float] = []
        """Seconds per prediction: the table's "planning" column for the policy's own inference."""

    def act(self, frames_THWC: np.ndarray, agent_xy=None):
        frame = frames_THWC[-1]
        if not self.queue:
            t0 = time.perf_counter()
            with torch.no_grad():
                f = self.gcbc.act(torch.from_numpy(np.array(frame)).permute(2, 0, 1)[None], self.goal)[0]
            self.queue = list(f.numpy().reshape(self.gcbc.cfg.block, -1))
            self.plan_seconds.append(time.perf_counter() - t0)
        xy = agent_xy if agent_xy is not None else self.task.agent_xy(None, frame)
        return self.task.to_env(self.queue.pop(0), xy)


class RandomFeatures:
    """Uniform random action features, each held for one block (the data's own action range)."""

    name = "random"

    def __init__(self, task, block: int = 5):
        self.task, self.block = task, block
        self.reset(0)

    def reset(self, seed: int | None = None) -> None:
        self.rng, self.left, self.f = np.random.default_rng(seed), 0, None

    def act(self, frames_THWC: np.ndarray, agent_xy=None):
        if self.left == 0:
            self.f, self.left = self.rng.uniform(self.task.low, self.task.high, self.task.feature_dim), self.block
        self.left -= 1
        xy = agent_xy if agent_xy is not None else self.task.agent_xy(None, frames_THWC[-1])
        return self.task.to_env(self.f, xy)


def ensure_data(task_name: str, path: Path, episodes: int, seed: int) -> Path:
    from simulacra.data.record import RecordConfig, record_episodes
    from simulacra.data.store import is_dataset_folder

    if is_dataset_folder(path):
        return path
    print(f"plan benchmark: recording {episodes} {task_name} episodes (seed {seed}) to {path}", flush=True)
    return record_episodes(RecordConfig(preset=task_name, episodes=episodes, seed=seed, out=str(path)), True)


def run_benchmark(cfg) -> dict:
    from simulacra.data.envs import make_env
    from simulacra.data.store import Dataset
    from simulacra.plan import mpc_config, search_model
    from simulacra.plan.train import load_planning, train_planning
    from simulacra.plan.video import write_plan_video

    task = task_for(cfg.benchmark)
    run = Path(cfg.world or f"runs/{task.name}-plan")
    data = ensure_data(task.name, Path(cfg.data or f"datasets/{task.name}-plan"), task.train_episodes, 0)
    heldout = ensure_data(task.name, Path(cfg.heldout or f"datasets/{task.name}-plan-heldout"), 120, 100_000)
    if not (run / "plan" / "plan.json").is_file():
        ds = Dataset.open(data)
        print(f"plan benchmark: training the planning world and GCBC on {data} ({cfg.train_minutes} min)", flush=True)
        train_planning(ds, list(range(len(ds))), task, run / "plan", cfg.train_minutes, seed=cfg.seed)
    jepa, gcbc, meta = load_planning(run)
    model = search_model(cfg, run, jepa, task, meta["frame_shape"], cfg.seed)
    out = Path(cfg.out) if cfg.out else run / "plan"
    out.mkdir(parents=True, exist_ok=True)
    held = Dataset.open(heldout)
    eps = draw_episodes(held, cfg.episodes, OFFSET, seed=cfg.seed + 1)
    env = make_env(task.env_id, task.env_kwargs, tuple(meta["frame_shape"][:2]), "auto", None, None, "stretch",
                   task.state_reader)  # fmt: skip
    rows, mpc = {}, mpc_config(cfg, task)  # horizon, along and cost, the same for every planner
    tag = task.name + ("-pixel" if cfg.model == "pixel" else "")
    try:
        for method in cfg.methods:
            if getattr(task, "discrete", False) and method in ("mppi", "gradient"):
                print(f"{method:<9} skipped: {task.name} has discrete actions (CEM plans them)", flush=True)
                continue
            results, t0 = [], time.perf_counter()
            for k, ep in enumerate(eps):
                if method == "gcbc":
                    policy = GCBCPolicy(gcbc, task, ep.goal_frame)
                elif method == "random":
                    policy = RandomFeatures(task, jepa.cfg.block)
                else:
                    policy = Planner(model, task, ep.goal_frame, mpc_config(cfg, task, method), seed=cfg.seed + k)
                r = run_episode(env, task, policy, ep, cfg.steps, seed=cfg.seed + k)
                results.append(r)
                if k < cfg.videos:
                    write_plan_video(out / f"benchmark-{tag}-{method}-{k}.mp4", r, ep.goal_frame, model,
                                     jepa.cfg.block, policy if method not in ("gcbc", "random") else None)  # fmt: skip
                r.pop("frames")
            rows[method] = summarise(results, time.perf_counter() - t0)
            print_row(method, rows[method])
    finally:
        env.close()
    report = {
        "task": task.name,
        "protocol": {"episodes": len(eps), "goal_offset": OFFSET, "env_steps": cfg.steps, "horizon": mpc.horizon,
                     "replan_every": cfg.replan, "action_block": jepa.cfg.block, "samples": cfg.samples,
                     "elites": cfg.elites, "iters": cfg.iters, "along": mpc.along, "cost": mpc.cost,
                     "success": task.success_rule},
        "planning_world": {"train_seconds": meta.get("train_seconds"), "steps": meta.get("steps"),
                           "parameters": sum(p.numel() for p in jepa.parameters())},
        "host": host_line(),
        "methods": rows,
    }  # fmt: skip
    if cfg.model == "pixel":
        report["planning_world"] = {"model": "pixel", "frames_dreamed": model.frames_dreamed,
                                    "world": str(model.world.path)}  # fmt: skip
    path = out / f"benchmark-{tag}.json"
    path.write_text(json.dumps(report, indent=1))
    print(f"plan benchmark: {path}")
    return report


def summarise(results: list[dict], seconds: float) -> dict:
    n, wins = len(results), sum(r["success"] for r in results)
    lo, hi = wilson(wins, n)
    plan_s = [s for r in results for s in r["plan_seconds"]]
    env_steps = sum(r["env_steps"] for r in results)
    steps = [r["steps"] for r in results if r["success"]]
    return {
        "episodes": n,
        "success": wins / n,
        "ci95": [round(lo, 3), round(hi, 3)],
        "mean_steps_to_success": float(np.mean(steps)) if steps else None,
        "plan_seconds_per_env_step": sum(plan_s) / max(env_steps, 1),
        "seconds_per_plan": float(np.mean(plan_s)) if plan_s else 0.0,
        "wall_seconds": round(seconds, 1),
        "per_episode": [int(r["success"]) for r in results],
    }


def print_row(method: str, r: dict) -> None:
    steps = "-" if r["mean_steps_to_success"] is None else f"{r['mean_steps_to_success']:.1f}"
    print(
        f"{method:<9} success {100 * r['success']:5.1f}%  [{100 * r['ci95'][0]:.1f}, {100 * r['ci95'][1]:.1f}]  "
        f"steps {steps:>5}  plan {r['plan_seconds_per_env_step']:.3f} s/env step ({r['seconds_per_plan']:.3f} s/plan)",
        flush=True,
    )


def host_line() -> str:
    import os
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"
