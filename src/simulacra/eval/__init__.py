"""`simulacra eval`: a trained world against reality and simple baselines, on held-out episodes.

Open loop with the true actions (PSNR, SSIM, sharpness per horizon; copy-last-frame baseline),
controllability (an inverse-dynamics model trained on real pairs, scored on real vs generated pairs;
PSNR with true minus random actions), fidelity (motion ratio, state probes, reward / termination events,
a clip discriminator: see `fidelity`), drift (1,024-step rollouts: sharpness, distance to the data, probe
range and the discriminator far out), speed (frames/s of world.step). Writes <run>/eval/metrics.json
and report.html.

It says what its numbers mean (see `verdict`): a measurement whose reference fails its sanity check (an
IDM that does not beat chance on real pairs) is marked invalid with the reason and shows no figure;
motionless held-out starts are counted and left out of a PSNR-over-moving-starts row; rollouts that run
past their real episode are masked and marked; and it ends with a pass / fail verdict per bar.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from simulacra import layout
from simulacra.errors import SimulacraError


@dataclass
class EvalConfig:
    """Evaluate a trained world against held-out real episodes and baselines."""

    run: str | None = None
    """Run directory (or its world/ folder) to evaluate (default: the most recent under ./runs)."""
    data: str | None = None
    """Evaluate on this data set instead of recording fresh episodes (the training data set: its held-out episodes only)."""
    episodes: int = 8
    """Held-out episodes: recorded fresh, or at most this many taken from --data / the run's holdout."""
    seed: int = 100000
    """Fresh episode k is recorded with seed + k: keep it far from the training data's seeds."""
    num_envs: int = 2
    """Env processes for recording the fresh episodes."""
    max_episode_steps: int | None = None
    """Length cap of the fresh episodes (default: the training preset's)."""
    horizon: int = 64
    """Open-loop rollout length H: metrics are reported for horizons 1..H."""
    starts: int = 4
    """Open-loop start points per held-out episode (evenly spaced, each with a full context)."""
    batch_size: int = 32
    """Rollouts stepped together (the World API is batched)."""
    delta_horizon: int = 16
    """ΔPSNR: mean PSNR over horizons 1..this with the true actions minus with uniformly random actions."""
    idm_steps: int = 1500
    """Training steps (batch 64) of the inverse-dynamics model on real pairs of group A. Small sprites (a
    one-pixel paddle) are learned late, after the IDM has first settled on the majority class: too few
    steps leave it at chance on real pairs, and then it measures nothing on generated ones."""
    idm_pairs: int = 512
    """Held-out pairs (group B) the IDM is scored on, real and generated alike."""
    drift_steps: int = 1024
    """Length of the long rollouts that measure drift (reported at steps 256 and 1,024)."""
    drift_starts: int = 16
    """Number of long rollouts (from the start of group-B episodes, further in for repeats)."""
    probe_steps: int = 1000
    """Training steps (batch 64) of the state probe on real frames and their true states."""
    probe_frames: int = 30000
    """Real frames the state probe trains on, from the world's training data set where it has the state
    (else held-out group A's)."""
    critic_clips: int = 128
    """Clips per group (A trains the clip discriminator, B scores it), real and generated alike."""
    critic_steps: int = 300
    """Training steps (batch 32) of the clip discriminator, and of its copy-last calibration twin."""
    event_steps: int = 4096
    """Held-out steps (at most) at which the reward and termination heads are scored teacher-forced."""
    pool_frames: int = 2000
    """Real frames (group A) that the nearest-real distance searches."""
    speed_steps: int = 32
    """Timed world.step calls per batch size."""
    speed_batch: int = 16
    """Batch size of the batched speed measurement (batch 1 is always measured)."""
    videos: int = 4
    """Rollouts shown side by side (real | generated) in the report's videos."""
    onnx: bool = True
    """Also time the World's ONNX backend where it has one (exports <world>/step.onnx once)."""
    temperature: float | None = None
    """Override the world's sampling temperature (scale of the initial noise; default: the world's)."""
    rng_seed: int = 0
    """Seeds the world's sampling noise, the random actions, the A/B split, sub-sampling and the IDM."""
    out: str | None = None
    """Where metrics.json, report.html and the videos go (default: <run>/eval)."""


def _machine() -> dict:
    import os
    import platform

    import torch

    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu only"
    return {
        "node": platform.node(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": f"world on cpu; accelerator: {dev}",
    }


AT_LEAST_ONE = (
    "episodes", "num_envs", "horizon", "starts", "batch_size", "delta_horizon", "idm_steps", "idm_pairs",
    "drift_steps", "drift_starts", "pool_frames", "speed_steps", "speed_batch", "probe_steps", "probe_frames", "critic_clips",
    "critic_steps", "event_steps",
)  # fmt: skip
"""The counts of EvalConfig that must be 1 or more (0 would measure nothing, or fail deep inside)."""


class _Stages:
    """The verb's progress: one line per measurement as it starts (an eval takes minutes on a CPU)."""

    NAMES = ("open loop", "controllability", "state probes", "events", "clip discriminator", "drift", "speed", "report")

    def __init__(self, t0: float):
        self.t0, self.n = t0, 0

    def __call__(self, name: str, what: str) -> None:
        self.n += 1
        print(
            f"simulacra eval: [{self.n}/{len(self.NAMES)}] {name} ({what}) at {time.time() - self.t0:.0f} s", flush=True
        )


def check_options(cfg: EvalConfig) -> None:
    """One-line errors for every number out of range, before anything is loaded or written."""

    def whole(name: str, low: int, v) -> None:
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise SimulacraError(f"--{name.replace('_', '-')} must be a whole number, {low} or more, not {v}")

    for name in AT_LEAST_ONE:
        whole(name, 1, getattr(cfg, name))
    whole("videos", 0, cfg.videos)
    whole("seed", 0, cfg.seed)
    whole("rng_seed", 0, cfg.rng_seed)
    if cfg.max_episode_steps is not None:
        whole("max_episode_steps", 1, cfg.max_episode_steps)
    if cfg.temperature is not None and not 0 <= cfg.temperature < float("inf"):  # also refuses nan
        raise SimulacraError(f"--temperature must be 0 or more, not {cfg.temperature}")


def evaluate(cfg: EvalConfig) -> dict:
    """Run every measurement, write metrics.json, report.html and the videos; return the metrics."""
    import json
    from dataclasses import asdict

    import numpy as np
    import torch

    from simulacra.data.safety import check_output_folder
    from simulacra.eval import fidelity, heldout, measure, report, verdict
    from simulacra.world import World

    check_options(cfg)
    run, world_dir = layout.resolve_run(cfg.run)
    out = Path(cfg.out) if cfg.out else run / "eval"
    check_output_folder(out, "--out")
    world = World.load(world_dir)
    if cfg.temperature is not None:
        world = world.with_options(temperature=cfg.temperature)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.rng_seed)
    t0 = time.time()
    ds, eps, source = heldout.resolve(world.config, cfg, out)
    h = heldout.load(ds, eps, source, cfg.rng_seed, min_frames=world.K + 2)
    print(f"simulacra eval: {len(eps)} held-out episodes ({source['kind']}: {source['path']}), {h.num_frames} frames")
    for note in source["notes"]:
        print(f"simulacra eval: {note}")
    rng = np.random.default_rng(cfg.rng_seed)
    m: dict = {
        "run": str(run),
        "world": str(world_dir),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": _machine(),
        "config": asdict(cfg),
        "seeds": {
            "record_seed": cfg.seed,
            "rng_seed": cfg.rng_seed,
            "world_noise": "batched rollout chunk c resets the world with seed rng_seed + c",
        },
        "K": world.K,
        "action_space": world.action_space.to_json(),
        "heldout": {**source, "frames": h.num_frames},
        "files": {},
    }
    stage = _Stages(t0)
    stage("open loop", f"{cfg.horizon} steps from each start, true actions")
    ol, arrays = measure.open_loop(world, h, cfg)
    m["open_loop"] = ol
    stage("controllability", f"inverse-dynamics model, {cfg.idm_steps} training steps")
    m["controllability"] = measure.controllability(world, h, cfg, rng, arrays)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    m["motion"] = fidelity.motion(arrays["ctx"][:, -1], arrays["real"], arrays["gen"], arrays["mask"])
    stage("state probes", f"{cfg.probe_steps} training steps")
    m["state"], pr = fidelity.state(h, cfg, arrays, dev, world_cfg=world.config)
    stage("events", f"reward and termination heads at up to {cfg.event_steps} steps")
    m["events"] = fidelity.events(world, h, cfg, rng, arrays)
    stage("clip discriminator", f"{cfg.critic_clips} clips per group, {cfg.critic_steps} training steps")
    m["clips"], crit, real_clips = fidelity.clips(world, h, cfg, rng, dev)
    stage("drift", f"{cfg.drift_starts} rollouts of {cfg.drift_steps} steps")
    m["drift"], drift_arrays = measure.drift(world, h, cfg, rng)
    m["long_horizon"] = fidelity.long_horizon(drift_arrays, pr, crit, real_clips, h)
    stage(
        "speed", "world.step at batch 1 and " + str(cfg.speed_batch) + (", eager and ONNX" if cfg.onnx else ", eager")
    )
    m["speed"] = measure.speed_all(world, world_dir, h, cfg)
    stage("report", "videos, filmstrips, metrics.json, report.html")
    m["files"] = measure.media(out, arrays, drift_arrays, cfg, world.config.get("fps", 15))
    m["seconds"] = round(time.time() - t0, 1)
    m = measure.finite(m)
    m["verdict"] = measure.finite(verdict.verdicts(m))
    (out / "metrics.json").write_text(json.dumps(m, indent=1))
    report.write_html(out / "report.html", m)
    report.print_summary(m)
    print(f"wrote {out / 'metrics.json'} and {out / 'report.html'} ({m['seconds']} s)")
    report.print_verdict(m)
    return m


__all__ = ["EvalConfig", "evaluate"]
