"""`simulacra train`: one loop trains every component (each model: ``forward(batch) -> (loss, metrics)``).

Stages: (1) the frame autoencoder on single frames, (2) the latent dynamics model (+ reward and
termination heads) on K-step windows of latents encoded once by the frozen autoencoder.

Reproducibility: batches are drawn statelessly from (seed, stage, step), and every sample's noise
from its global key, so `--resume` continues bit-exactly and N DDP processes equal 1 process with
the same global batch. Checkpoints are written atomically (temp dir, then rename; COMPLETE last).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from simulacra.errors import SimulacraError


@dataclass
class LoopConfig:
    steps: int
    batch_size: int
    lr: float
    warmup: int = 100
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    ckpt_every: int = 500
    log_every: int = 10
    deadline: float | None = None
    """Wall-clock time (time.time()) the stage must end by: after CALIBRATE timed steps, ``steps`` is
    cut to what fits at the measured rate, and cut again at every checkpoint at the rate measured so
    far (never raised). The count goes into every checkpoint; --resume continues it without a deadline."""


CALIBRATE = 20  # steps timed (after 5 warm-up steps) to fit a stage into its wall-clock budget


# ---- distributed -------------------------------------------------------------------------------
def dist_info() -> tuple[int, int]:
    """(rank, world size); initialises the process group when launched by torchrun."""
    if "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1:
        if not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def device_for(rank: int) -> torch.device:
    if torch.cuda.is_available():
        torch.cuda.set_device(rank % torch.cuda.device_count())
        return torch.device("cuda", rank % torch.cuda.device_count())
    return torch.device("cpu")


# ---- checkpoints -------------------------------------------------------------------------------
def _flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors, meta = {}, {"param_groups": sd["param_groups"], "scalars": {}}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{pid}.{k}"] = v.contiguous()
            else:
                meta["scalars"][f"{pid}.{k}"] = v
    return tensors, meta


def _unflatten_optimizer(opt: torch.optim.Optimizer, tensors: dict, meta: dict) -> None:
    state: dict[int, dict] = {}
    for key, v in list(tensors.items()) + list(meta["scalars"].items()):
        pid, k = key.split(".", 1)
        state.setdefault(int(pid), {})[k] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_checkpoint(
    path: Path,
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    step: int,
    config: dict,
    total_steps: int | None = None,
) -> None:
    """Atomic: everything goes to a temp dir, COMPLETE is written last, then the dir is renamed."""
    tmp = path.with_name(".tmp-" + path.name)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, tmp / "model.safetensors")
    tensors, meta = _flatten_optimizer(opt)
    save_file({k: v.cpu() for k, v in tensors.items()}, tmp / "optimizer.safetensors")
    rng = {"torch": torch.get_rng_state()}
    save_file(rng, tmp / "rng.safetensors")
    state = {"step": step, "total_steps": total_steps, "optimizer": meta, "config": config}
    (tmp / "state.json").write_text(json.dumps(state, indent=1))
    (tmp / "COMPLETE").write_text("ok\n")
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)


def latest_checkpoint(folder: Path) -> Path | None:
    done = sorted(p for p in folder.glob("step_*") if (p / "COMPLETE").exists())
    return done[-1] if done else None


def load_checkpoint(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer | None = None) -> dict:
    """Loads weights (and optimizer + RNG state when ``opt`` is given); returns state.json."""
    if not (path / "COMPLETE").exists():
        raise SimulacraError(f"{path}: checkpoint is incomplete (no COMPLETE marker)")
    model.load_state_dict(load_file(path / "model.safetensors"))
    state = json.loads((path / "state.json").read_text())
    if opt is not None:
        _unflatten_optimizer(opt, load_file(path / "optimizer.safetensors"), state["optimizer"])
        torch.set_rng_state(load_file(path / "rng.safetensors")["torch"])
    return state


# ---- the loop ----------------------------------------------------------------------------------
def lr_lambda(step: int, cfg: LoopConfig) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak."""
    if step < cfg.warmup:
        return (step + 1) / cfg.warmup
    p = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, p)))


def fit(
    model: torch.nn.Module,
    get_batch: Callable[[int, int, int], dict],
    cfg: LoopConfig,
    ckpt_dir: Path,
    name: str,
    resume: bool,
    writer=None,
    config: dict | None = None,
) -> dict[str, float]:
    """Train ``model`` for cfg.steps. ``get_batch(step, rank, world)`` returns this rank's slice of the
    global batch for that step (with ``keys``). Returns the last logged metrics."""
    rank, world = dist_info()
    device = device_for(rank)
    model.to(device)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and p.requires_grad]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2 and p.requires_grad]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr
    )
    start = 0
    last = latest_checkpoint(ckpt_dir) if resume else None
    if last is not None:
        state = load_checkpoint(last, model, opt)
        start = int(state["step"])
        if state.get("total_steps"):  # a budgeted run keeps the step count (and LR schedule) it chose
            cfg.steps, cfg.deadline = int(state["total_steps"]), None
        if rank == 0:
            print(f"[{name}] resumed from {last} at step {start} of {cfg.steps}")
    net = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    )
    bar = tqdm(total=cfg.steps, initial=start, desc=name, disable=rank != 0, dynamic_ncols=True)
    metrics: dict[str, float] = {}
    model.train()
    t0 = time.time()
    step = start
    while step < cfg.steps:
        if cfg.deadline is not None and step == start + 5:
            t_cal = time.time()
        if cfg.deadline is not None and step == start + 5 + CALIBRATE:
            fit_steps(cfg, step, (step - start - 5) / (time.time() - t_cal), device, world)
            bar.total = cfg.steps
            if rank == 0:
                print(f"[{name}] {cfg.steps} steps fit the wall-clock budget", flush=True)
        for g in opt.param_groups:
            g["lr"] = cfg.lr * lr_lambda(step, cfg)
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in get_batch(step, rank, world).items()}
        with autocast:
            loss, m = net(batch)
        if not torch.isfinite(loss):
            raise SimulacraError(f"[{name}] non-finite loss at step {step}; stopped before saving it ({m})")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        if not torch.isfinite(gnorm):
            raise SimulacraError(f"[{name}] non-finite gradient at step {step}; stopped before saving it")
        opt.step()
        metrics = {"loss": loss.item(), **m, "grad_norm": gnorm.item(), "lr": opt.param_groups[0]["lr"]}
        bar.update(1)
        if rank == 0 and (step % cfg.log_every == 0 or step == cfg.steps - 1):
            bar.set_postfix({k: f"{v:.4g}" for k, v in metrics.items() if k in ("loss", "psnr", "flow")})
            if writer is not None:
                for k, v in metrics.items():
                    writer.add_scalar(f"{name}/{k}", v, step)
                writer.add_scalar(f"{name}/steps_per_s", (step + 1 - start) / max(1e-9, time.time() - t0), step)
        if cfg.deadline is not None and (step + 1) % cfg.ckpt_every == 0 and step > start + 5 + CALIBRATE:
            # the first steps' rate overestimated a whole run by ~4% (checkpoints, a slower CPU later):
            # cut again with the rate so far, before the checkpoint records the count
            fit_steps(cfg, step + 1, (step + 1 - start - 5) / (time.time() - t_cal), device, world)
            bar.total = cfg.steps
        if rank == 0 and ((step + 1) % cfg.ckpt_every == 0 or step + 1 == cfg.steps):
            save_checkpoint(ckpt_dir / f"step_{step + 1:07d}", model, opt, step + 1, config or {}, cfg.steps)
        step += 1
    bar.close()
    return metrics


def fit_steps(cfg: LoopConfig, step: int, rate: float, device: torch.device, world: int) -> None:
    """Cut cfg.steps to what fits before cfg.deadline at ``rate`` steps/s, ``step`` steps done (rank 0
    decides for all: the ranks' clocks and rates differ slightly)."""
    n = min(cfg.steps, step + int(max(0.0, cfg.deadline - time.time()) * rate * 0.98))
    n = torch.tensor([max(n, step + 1)], device=device)
    if world > 1:
        dist.broadcast(n, 0)
    cfg.steps = int(n.item())


def step_indices(seed: int, stage: int, step: int, n: int, global_batch: int, rank: int, world: int) -> np.ndarray:
    """This rank's slice of the global batch of sample indices for a step: stateless, so resumable."""
    rng = np.random.default_rng([seed, stage, step])
    idx = rng.integers(0, n, size=global_batch)
    per = global_batch // world
    return idx[rank * per : (rank + 1) * per]


def sample_keys(seed: int, stage: int, step: int, global_batch: int, rank: int, world: int) -> torch.Tensor:
    per = global_batch // world
    base = ((seed * 7 + stage) * 1_000_003 + step) * global_batch
    return torch.arange(base + rank * per, base + (rank + 1) * per, dtype=torch.int64)


def save_run_config(run: Path, config: dict) -> None:
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.json").write_text(json.dumps(config, indent=2, default=str))


# ---- the pipeline: data set -> autoencoder -> latents -> dynamics -> world ----------------------
SIZES: dict[str, dict] = {
    # ae: AutoencoderConfig fields; dyn: DynamicsConfig fields; steps and batch per stage
    "debug": {"ae": {"channels": 16, "latent_channels": 4, "blocks": 1}, "dyn": {"context": 2, "channels": 16, "channel_mult": (1, 2), "cond_dim": 32},
              "ae_steps": 30, "dyn_steps": 30, "ae_batch": 8, "dyn_batch": 8, "ae_lr": 2e-3, "dyn_lr": 1e-3},
    # nano: a 10-minute wall-clock budget on a 2-core AVX2 CPU (about 3400 of the 4000 planned steps fit there,
    # 2026-11-23). No own_context: at equal steps it helped (Pong PSNR@16 +0.8 dB), but its ~25% per step cost
    # a quarter of the budget's steps, and Pong at 1800 steps with it scored below 2400 without (docs/world-model.md)
    "nano": {"ae": {"channels": 64, "latent_channels": 8}, "dyn": {"context": 4, "channels": 48, "channel_mult": (1, 2, 2), "cond_dim": 128},
             "ae_steps": 1200, "dyn_steps": 4000, "ae_batch": 32, "dyn_batch": 32, "ae_lr": 2e-3, "dyn_lr": 5e-4, "minutes": 10},
    "small": {"ae": {"channels": 128, "latent_channels": 8, "blocks": 3}, "dyn": {"context": 8, "channels": 128, "channel_mult": (1, 2, 2), "cond_dim": 256, "blocks": 2, "own_context": 0.25},
              "ae_steps": 20000, "dyn_steps": 60000, "ae_batch": 64, "dyn_batch": 64, "ae_lr": 1e-3, "dyn_lr": 3e-4},
    "base": {"ae": {"channels": 192, "latent_channels": 8, "blocks": 4}, "dyn": {"context": 16, "channels": 192, "channel_mult": (1, 2, 3), "cond_dim": 384, "blocks": 2},
             "ae_steps": 50000, "dyn_steps": 200000, "ae_batch": 128, "dyn_batch": 128, "ae_lr": 1e-3, "dyn_lr": 2e-4},
    "large": {"ae": {"channels": 256, "latent_channels": 16, "blocks": 6}, "dyn": {"context": 32, "channels": 256, "channel_mult": (1, 2, 3, 4), "cond_dim": 512, "blocks": 3},
              "ae_steps": 100000, "dyn_steps": 500000, "ae_batch": 256, "dyn_batch": 256, "ae_lr": 5e-4, "dyn_lr": 1e-4},
}  # fmt: skip


@dataclass
class TrainConfig:
    """Train a world model (autoencoder + latent dynamics + reward/termination heads) on a data set."""

    data: str | None = None
    """Data set directory (default: the most recent under ./datasets)."""
    size: str = "nano"
    """Size preset: debug, nano (CPU minutes), small, base, large (GPUs)."""
    out: str | None = None
    """Run directory (default: runs/<data set name>-<size>)."""
    seed: int = 0
    """Seeds the batches, the noise and the initial weights."""
    ae_steps: int | None = None
    """Autoencoder optimisation steps (default: the size preset's)."""
    dyn_steps: int | None = None
    """Dynamics optimisation steps (default: the size preset's)."""
    dyn_lr: float | None = None
    """Peak learning rate of the dynamics stage, after warm-up (default: the size preset's)."""
    minutes: float | None = None
    """Wall-clock budget for the whole run: each stage times its first steps and cuts its step count to
    fit (the autoencoder its share of the planned steps); the counts reached are saved in config.json.
    Default: the size preset's (nano: 10) unless --ae-steps or --dyn-steps is given; 0 = no budget."""
    batch_size: int | None = None
    """Global batch size for both stages (default: the size preset's); split across DDP processes."""
    context: int | None = None
    """Context frames K of the dynamics model (default: the size preset's)."""
    channels: int | None = None
    """U-Net width at the latent resolution (default: the size preset's)."""
    channel_mult: tuple[int, ...] | None = None
    """U-Net width multiplier per level (default: the size preset's)."""
    autoencoder: str | None = None
    """Frame representation: 'pixels' (lossless 4x4 patch grid, nothing to train) or 'learned'
    (a convolutional autoencoder trained first). Default: the size preset's."""
    change_weight: float | None = None
    """Extra loss weight on the parts of the frame that change (default: the size preset's)."""
    context_noise_max: float | None = None
    """Max context-noise augmentation level (0 turns the augmentation off)."""
    own_context: float | None = None
    """Fraction of training windows whose last context frame is the model's own sample (default: the size preset's)."""
    change_gate: bool = True
    """With the 'pixels' autoencoder: learn which grid cells change at all and keep the others exact
    (no speckle piling up in static parts of long rollouts). Ignored for learned latents."""
    holdout: float = 0.1
    """Fraction of episodes held out for evaluation (never trained on)."""
    ckpt_every: int = 250
    """Write a resumable checkpoint every N steps."""
    resume: bool = False
    """Continue from the latest complete checkpoint in --out."""
    tensorboard: bool = True
    """Write TensorBoard logs to <run>/tb."""


def budget_minutes(cfg: TrainConfig) -> float | None:
    """The run's wall-clock budget: --minutes, else the size's unless step counts were given (then they rule)."""
    if cfg.minutes is not None and not cfg.minutes >= 0:  # also refuses nan
        raise SimulacraError(f"--minutes is a wall-clock budget, 0 (none) or more, not {cfg.minutes}")
    if cfg.minutes is not None:
        return cfg.minutes or None
    return None if cfg.ae_steps is not None or cfg.dyn_steps is not None else SIZES[cfg.size].get("minutes")


def check_model_config(ae_cfg, dyn_cfg) -> None:
    """One-line errors for model options that would otherwise fail deep inside torch."""
    if ae_cfg.kind not in ("pixels", "learned"):
        raise SimulacraError(f"--autoencoder must be 'pixels' or 'learned', not {ae_cfg.kind!r}")
    if dyn_cfg.context < 2:
        raise SimulacraError(
            f"--context must be at least 2 (the heads read the last two frames), not {dyn_cfg.context}"
        )
    if not dyn_cfg.channel_mult or min(dyn_cfg.channel_mult) < 1:
        raise SimulacraError(f"--channel-mult needs one or more positive integers, not {list(dyn_cfg.channel_mult)}")
    widths = [dyn_cfg.channels * m for m in dyn_cfg.channel_mult]
    if dyn_cfg.channels < 8 or any(w % 8 for w in widths):
        raise SimulacraError(
            f"U-Net widths {widths} must be multiples of 8 (GroupNorm with 8 groups); pick --channels accordingly"
        )
    if dyn_cfg.change_gate and not dyn_cfg.residual:
        raise SimulacraError("change_gate needs residual dynamics (it gates the change from the last frame)")
    if not 0 <= dyn_cfg.own_context <= 1:  # also refuses nan
        raise SimulacraError(f"--own-context is a fraction of the training windows, 0 to 1, not {dyn_cfg.own_context}")


def train(cfg: TrainConfig) -> Path:
    """Run both stages and write the world to <run>/world (safetensors + world.json)."""
    from simulacra.data import Dataset, split_episodes
    from simulacra.data.commands import resolve_dataset
    from simulacra.models.autoencoder import Autoencoder, AutoencoderConfig
    from simulacra.models.dynamics import Dynamics, DynamicsConfig
    from simulacra.world import World

    t_begin = time.time()  # a --minutes budget counts from here
    rank, world_size = dist_info()
    if cfg.size not in SIZES:
        raise SimulacraError(f"unknown size {cfg.size!r}; sizes: {', '.join(SIZES)}")
    root = resolve_dataset(cfg.data)
    ds = Dataset.open(root)
    size = SIZES[cfg.size]
    ae_cfg = AutoencoderConfig(**{**size["ae"], **({"kind": cfg.autoencoder} if cfg.autoencoder else {})})
    over = {
        k: v
        for k, v in {
            "context": cfg.context,
            "channels": cfg.channels,
            "channel_mult": cfg.channel_mult,
            "context_noise_max": cfg.context_noise_max,
            "change_weight": cfg.change_weight,
            "own_context": cfg.own_context,
        }.items()
        if v is not None
    }
    over["snap_to_pixels"] = ae_cfg.kind == "pixels"
    over["change_gate"] = cfg.change_gate and ae_cfg.kind == "pixels"
    dyn_cfg = DynamicsConfig(**{**size["dyn"], **over})
    check_model_config(ae_cfg, dyn_cfg)
    K = dyn_cfg.context
    if cfg.dyn_lr is not None and not cfg.dyn_lr > 0:  # also refuses nan
        raise SimulacraError(f"--dyn-lr must be a positive learning rate, not {cfg.dyn_lr}")
    ae_loop = LoopConfig(
        cfg.ae_steps or size["ae_steps"], cfg.batch_size or size["ae_batch"], size["ae_lr"], ckpt_every=cfg.ckpt_every
    )
    dyn_loop = LoopConfig(
        cfg.dyn_steps or size["dyn_steps"],
        cfg.batch_size or size["dyn_batch"],
        cfg.dyn_lr or size["dyn_lr"],
        ckpt_every=cfg.ckpt_every,
    )
    for loop in (ae_loop, dyn_loop):
        if loop.batch_size % world_size:
            raise SimulacraError(f"batch size {loop.batch_size} does not split over {world_size} processes")
        loop.warmup = min(loop.warmup, max(1, loop.steps // 10))
    minutes = budget_minutes(cfg)
    run = Path(cfg.out or f"runs/{Path(root).name}-{cfg.size}")
    if (run / "config.json").exists() and not cfg.resume:
        raise SimulacraError(f"{run} already holds a run; pass --resume to continue it or --out elsewhere")
    action_space = ds.info.get("action_space", {"type": "none"})
    train_eps, held_eps = split_episodes(ds, cfg.holdout, cfg.seed)
    train_eps = [i for i in train_eps if ds.episodes[i].has_actions and ds.episodes[i].length >= K]
    if not train_eps:
        raise SimulacraError(f"{root}: no training episode has actions and at least {K} steps")
    resolved = {
        "train": asdict(cfg), "data": str(root), "size": cfg.size, "world_size": world_size,
        "autoencoder": asdict(ae_cfg), "dynamics": asdict(dyn_cfg), "ae_loop": asdict(ae_loop), "dyn_loop": asdict(dyn_loop),
        "minutes_budget": minutes, "action_space": action_space, "frame_shape": ds.info["frame_shape"], "preset": ds.info.get("preset_config"),
        "fps": ds.info.get("fps", 15), "train_episodes": train_eps, "holdout_episodes": held_eps,
    }  # fmt: skip
    writer = None
    if rank == 0:
        print("train config:", json.dumps(resolved, indent=1, default=str))
        save_run_config(run, resolved)
        if cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(run / "tb"))
    torch.manual_seed(cfg.seed)

    # stage 1: autoencoder on single frames
    ae = Autoencoder(ae_cfg)
    frame_index = np.array([(i, t) for i in train_eps for t in range(ds.episodes[i].length + 1)])

    def ae_batch(step: int, r: int, w: int) -> dict:
        idx = step_indices(cfg.seed, 1, step, len(frame_index), ae_loop.batch_size, r, w)
        frames = np.stack([ds.frames(int(i), int(t), int(t) + 1)[0] for i, t in frame_index[idx]])
        return {
            "frames": torch.from_numpy(frames).permute(0, 3, 1, 2),
            "keys": sample_keys(cfg.seed, 1, step, ae_loop.batch_size, r, w),
        }

    ae_done = run / "world" / "autoencoder.safetensors"
    if not ae.trainable:
        pass  # a patch grid of pixels: nothing to learn
    elif cfg.resume and ae_done.exists():
        ae.load_state_dict(load_file(ae_done))
    else:
        if minutes:
            ae_loop.deadline = t_begin + 60 * minutes * ae_loop.steps / (ae_loop.steps + dyn_loop.steps)
        fit(ae, ae_batch, ae_loop, run / "checkpoints" / "autoencoder", "autoencoder", cfg.resume, writer, resolved)
        resolved["ae_loop"]["steps"] = ae_loop.steps  # what a --minutes budget left of the plan
        if rank == 0:
            (run / "world").mkdir(parents=True, exist_ok=True)
            save_file(
                {k: v.contiguous() for k, v in ae.state_dict().items()}, run / "world" / ".tmp-autoencoder.safetensors"
            )
            os.replace(run / "world" / ".tmp-autoencoder.safetensors", ae_done)
    ae.cpu().eval()

    # latents of every training frame, once (the autoencoder is frozen from here on)
    latents = {}
    with torch.no_grad():
        for i in train_eps:
            f = torch.from_numpy(ds.frames(i)).permute(0, 3, 1, 2)
            latents[i] = torch.cat([ae.encode(f[j : j + 256]) for j in range(0, len(f), 256)])
    std = float(torch.cat([z.flatten() for z in latents.values()]).std().clamp_min(1e-3))

    # stage 2: dynamics (+ heads) on K-step latent windows
    torch.manual_seed(cfg.seed + 1)
    dyn = Dynamics(dyn_cfg, ae.latent_channels, action_space)
    dyn.latent_std.fill_(std)
    arrays = {i: {k: torch.from_numpy(np.array(v)) for k, v in ds.arrays(i).items()} for i in train_eps}
    win_index = np.array([(i, s) for i in train_eps for s in range(ds.episodes[i].length - K + 1)])

    def dyn_batch(step: int, r: int, w: int) -> dict:
        idx = step_indices(cfg.seed, 2, step, len(win_index), dyn_loop.batch_size, r, w)
        pick = [(int(i), int(s)) for i, s in win_index[idx]]
        return {
            "latents": torch.stack([latents[i][s : s + K + 1] for i, s in pick]) / std,
            "action": torch.stack([arrays[i]["action"][s : s + K] for i, s in pick]),
            "reward": torch.stack([arrays[i]["reward"][s : s + K] for i, s in pick]),
            "terminated": torch.stack([arrays[i]["terminated"][s : s + K] for i, s in pick]),
            "keys": sample_keys(cfg.seed, 2, step, dyn_loop.batch_size, r, w),
        }

    if minutes:
        dyn_loop.deadline = t_begin + 60 * minutes
    metrics = fit(dyn, dyn_batch, dyn_loop, run / "checkpoints" / "dynamics", "dynamics", cfg.resume, writer, resolved)
    resolved["dyn_loop"]["steps"] = dyn_loop.steps
    resolved["train_seconds"] = round(time.time() - t_begin, 1)  # of this invocation (a resume counts its own)
    if rank == 0:
        save_run_config(run, resolved)
        World(ae, dyn.cpu().eval(), resolved).save(run / "world")
        print(
            f"trained world saved to {run / 'world'} (last dynamics metrics: {json.dumps({k: round(v, 4) for k, v in metrics.items()})})"
        )
        if writer is not None:
            writer.close()
    if world_size > 1:
        dist.barrier()
    return run / "world"
