"""The one training loop: ``fit`` trains any model with the contract ``forward(batch) -> (loss, metrics)``
(AdamW, warm-up + cosine, clipping, non-finite guard, atomic safetensors checkpoints, exact resume, DDP
via torchrun, TensorBoard), asking a ``Budget`` how many steps a wall-clock budget leaves.

Reproducibility: batches are drawn statelessly from (seed, stage, step), and every sample's noise
from its global key, so a resume continues bit-exactly, and N DDP processes train what 1 process
does with the same global batch, up to float rounding (the all-reduce sums the gradient in another
order). Checkpoints are written atomically (temp dir of fsynced files, COMPLETE last, then rename).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file
from tqdm import tqdm

from simulacra.errors import SimulacraError
from simulacra.layout import (
    TMP_PREFIX,
    atomic_save_tensors,
    atomic_write,
    fsync_dir,
)

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)

BatchFn = Callable[[int, int, int], dict]
"""``get_batch(step, rank, world)``: this rank's slice of the global batch for that step (with ``keys``)."""


@dataclass
class LoopConfig:
    steps: int
    """Planned optimisation steps (a Budget may cut them)."""
    batch_size: int
    """Global batch size, split across DDP processes."""
    lr: float
    """Peak learning rate, reached after the warm-up."""
    warmup: int = 100
    """Steps of linear learning-rate warm-up before the cosine decay."""
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    ckpt_every: int = 500
    log_every: int = 10
    precision: str = "auto"
    """'auto': bf16 autocast on CUDA, fp32 on a CPU (where bf16 made worse Breakout worlds at equal steps,
    docs/world-model.md); 'bf16': autocast to bfloat16 where the device computes it natively (CUDA, or a CPU
    with AVX512-BF16 or AMX; elsewhere bf16 is emulated and slower, so fp32); 'fp32': never."""


PRECISIONS = ("auto", "bf16", "fp32")


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype:
    """The dtype a stage's forward pass computes in on ``device``: bf16 only where asked (or 'auto' on CUDA) and
    native."""
    if precision not in PRECISIONS:
        raise SimulacraError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    return torch.bfloat16 if bf16 and native_bf16(device) else torch.float32


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 in hardware (oneDNN reports AVX512-BF16 or AMX on a CPU)."""
    return device.type == "cuda" or (device.type == "cpu" and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()))


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


def _same(n: int) -> int:
    return n


def _from_rank0(n: int, device: torch.device) -> int:
    """Rank 0's ``n`` on every rank."""
    t = torch.tensor([n], device=device)
    dist.broadcast(t, 0)
    return int(t.item())


# ---- the wall-clock budget ---------------------------------------------------------------------
WARMUP_UNTIMED = 5  # steps left out of the timing: the first ones pay one-time set-up
CALIBRATE = 20  # steps timed (after the untimed ones) to fit a stage into its wall-clock budget
MARGIN = 0.98  # of the time left that a cut plans to fill: slack for what the rate has not seen yet
RAISE = 0.05
"""A checkpoint raises the count only when what fits beats it by this fraction: more than the (1 - MARGIN)
/ MARGIN that a steady rate gains back between checkpoints, so a steady rate never moves the schedule."""
SHORT = 2 / 3
"""A budget that leaves less than this fraction of the planned steps says so, and why (once a stage)."""


class Budget:
    """A stage's wall-clock deadline, which the loop asks how many steps the stage may run.

    After WARMUP_UNTIMED steps it times CALIBRATE steps and cuts the planned count to what fits before
    the deadline at that rate. A stage's rate changes (checkpoints, a CPU that slows down, or one that
    was busy at the start and is free again), so at every checkpoint it re-estimates with the rate
    measured so far, before the checkpoint records the count: it cuts again, or, while the stage is in
    the first half of its count, raises the count back towards the plan when what fits beats it by
    more than RAISE (never above the plan). It always leaves one more step. The loop sets the learning
    rate from the current count, so the cosine schedule ends where the stage does; every checkpoint
    records the count, and a resumed stage keeps it.
    """

    def __init__(self, deadline: float, clock: Callable[[], float] = time.time, option: str | None = None):
        self.deadline = deadline
        """``clock()`` time by which the stage must end."""
        self.clock = clock
        self.option = option
        """The command-line option that fixes this stage's step count (named when the budget cuts hard)."""
        self.start: int | None = None
        self.t0: float | None = None
        self.plan: int | None = None
        """The planned count: a re-estimate never raises the count above it."""
        self.rate: float | None = None
        """Steps/s measured by the last estimate."""
        self.agree: Callable[[int], int] = _same

    def begin(self, start: int, agree: Callable[[int], int] = _same, plan: int | None = None) -> None:
        """The loop starts at step ``start`` of ``plan`` planned steps (default: the count at calibration).
        ``agree`` turns this process's count into the one all DDP processes use (rank 0's: their clocks and
        rates differ slightly)."""
        self.start, self.t0, self.agree, self.plan, self.rate = start, None, agree, plan, None

    @property
    def calibration_step(self) -> int:
        return self.start + WARMUP_UNTIMED + CALIBRATE

    def observe(self, step: int, steps: int, now: float | None = None) -> int:
        """Before running ``step`` of ``steps``: starts the clock, or cuts ``steps`` once it has timed enough."""
        now = self.clock() if now is None else now
        if step == self.start + WARMUP_UNTIMED:
            self.t0 = now
        if step == self.calibration_step:
            self.plan = steps if self.plan is None else self.plan
            return self.cut(step, steps, now)
        return steps

    def checkpoint(self, done: int, steps: int, now: float | None = None) -> int:
        """When ``done`` steps are about to be checkpointed: ``steps`` re-estimated at the rate so far
        (the last step's checkpoint leaves the count alone: the stage is over, not one step short)."""
        if done - 1 <= self.calibration_step or done >= steps:  # not calibrated yet, or just now; or done
            return steps
        return self.cut(done, steps, self.clock() if now is None else now, may_raise=True)

    def cut(self, done: int, steps: int, now: float, may_raise: bool = False) -> int:
        self.rate = rate = (done - self.start - WARMUP_UNTIMED) / max(1e-9, now - self.t0)
        fits = done + int(max(0.0, self.deadline - now) * rate * MARGIN)
        n = min(steps, fits)
        plan = steps if self.plan is None else self.plan
        if may_raise and 2 * done < steps < plan and fits > steps * (1 + RAISE):
            n = min(plan, fits)
        return self.agree(max(n, done + 1))

    def shortfall(self, name: str, steps: int) -> str | None:
        """The warning line when ``steps`` is under SHORT of the plan: planned, fits, the rate, why, what to do."""
        if self.plan is None or steps >= SHORT * self.plan:
            return None
        left = max(0.0, self.deadline - self.clock()) / 60
        fixed = f"pass {self.option} {self.plan}" if self.option else "fix the step count"
        return (
            f"[{name}] the wall-clock budget cuts the stage to {steps} of its {self.plan} planned steps: at the "
            f"measured {self.rate or 0:.3g} steps/s only that many fit in the {left:.1f} min left; {_why_slow()}. "
            f"To run them all, {fixed}, or give a larger --minutes; if the rate recovers, the checkpoints in "
            "the first half of the stage raise the count again."
        )


def _why_slow() -> str:
    """Why a stage may run slower than planned: the load average when the CPU is busy, else the machine."""
    try:
        load, cpus = os.getloadavg()[0], os.cpu_count() or 1
    except (AttributeError, OSError):  # not on every platform
        return "this machine may be slower than the size preset assumes, or busy"
    if load > cpus:
        return f"the CPU is busy: load average {load:.1f} on {cpus} cores"
    return f"this machine is slower than the size preset assumes: load average {load:.1f} on {cpus} cores"


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
    """Atomic: every file goes fsynced to a temp dir, COMPLETE last, then the dir is renamed."""
    tmp = path.with_name(TMP_PREFIX + path.name)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    atomic_save_tensors(model.state_dict(), tmp / "model.safetensors")
    tensors, meta = _flatten_optimizer(opt)
    atomic_save_tensors(tensors, tmp / "optimizer.safetensors")
    atomic_save_tensors({"torch": torch.get_rng_state()}, tmp / "rng.safetensors")
    state = {"step": step, "total_steps": total_steps, "optimizer": meta, "config": config}
    atomic_write(tmp / "state.json", json.dumps(state, indent=1))
    atomic_write(tmp / "COMPLETE", "ok\n")
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)
    fsync_dir(path.parent)


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
def lr_lambda(step: int, steps: int, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak at ``steps``."""
    if step < warmup:
        return (step + 1) / warmup
    p = (step - warmup) / max(1, steps - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, p)))


@dataclass
class FitResult:
    steps: int
    """The stage's step count: the planned one, or what a Budget (or a resumed checkpoint) left of it."""
    metrics: dict[str, float]
    """The last step's metrics (loss, the model's own, grad_norm, lr)."""


def _optimizer(model: torch.nn.Module, cfg: LoopConfig) -> torch.optim.Optimizer:
    """AdamW; no weight decay on biases and norm scales."""
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and p.requires_grad]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2 and p.requires_grad]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr)


def _step(net, model, opt, batch: dict, cfg: LoopConfig, name: str, step: int, autocast) -> dict[str, float]:
    """One optimisation step; a non-finite loss or gradient stops the run before anything records it."""
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
    return {"loss": loss.item(), **m, "grad_norm": gnorm.item(), "lr": opt.param_groups[0]["lr"]}


PROGRESS_LINES = 10
"""Where the error stream is not a terminal (a log file, a pipe), the bar gives way to this many plain
progress lines a stage: no carriage returns."""


class _Lines:
    """A progress line every 1 / PROGRESS_LINES of the stage, through the log (no '\\r'), for non-terminals."""

    def __init__(self, name: str, start: int):
        self.name, self.shown = name, -1
        self.t0, self.start = time.time(), start

    def update(self, done: int, steps: int, metrics: dict[str, float]) -> None:
        part = done * PROGRESS_LINES // max(1, steps)
        if part <= self.shown and done != steps:
            return
        self.shown = part
        rate = (done - self.start) / max(1e-9, time.time() - self.t0)
        shown = " ".join(f"{k} {v:.4g}" for k, v in metrics.items() if k in ("loss", "psnr", "flow"))
        log.info("[%s] step %d/%d (%d%%), %.3g steps/s, %s", self.name, done, steps, 100 * done // steps, rate, shown)


def _report(bar, writer, name: str, metrics: dict[str, float], step: int, rate: float) -> None:
    bar.set_postfix({k: f"{v:.4g}" for k, v in metrics.items() if k in ("loss", "psnr", "flow")})
    if writer is not None:
        for k, v in metrics.items():
            writer.add_scalar(f"{name}/{k}", v, step)
        writer.add_scalar(f"{name}/steps_per_s", rate, step)


def _resume(ckpt_dir: Path, model, opt, steps: int, name: str, rank: int) -> tuple[int, int | None]:
    """(step to continue from, the step count a checkpoint chose or None) from the latest checkpoint."""
    last = latest_checkpoint(ckpt_dir)
    if last is None:
        return 0, None
    state = load_checkpoint(last, model, opt)
    total = int(state["total_steps"]) if state.get("total_steps") else None
    if rank == 0:
        log.info("[%s] resumed from %s at step %d of %d", name, last, state["step"], total or steps)
    return int(state["step"]), total


def fit(
    model: torch.nn.Module,
    get_batch: BatchFn,
    cfg: LoopConfig,
    ckpt_dir: Path,
    name: str,
    resume: bool = False,
    writer=None,
    config: dict | None = None,
    budget: Budget | None = None,
) -> FitResult:
    """Train ``model`` for cfg.steps (fewer if ``budget`` cuts them), checkpointing to ``ckpt_dir``.
    A resumed stage keeps the step count (and so the schedule) its checkpoint recorded, without a budget."""
    rank, world = dist_info()
    device = device_for(rank)
    model.to(device)
    opt = _optimizer(model, cfg)
    start, steps = 0, cfg.steps
    if resume:
        start, chosen = _resume(ckpt_dir, model, opt, steps, name, rank)
        if chosen is not None:
            steps, budget = chosen, None
    if budget is not None:
        budget.begin(start, partial(_from_rank0, device=device) if world > 1 else _same, plan=steps)
    net = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    dtype = autocast_dtype(device, cfg.precision)
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    tty = sys.stderr.isatty()
    bar = tqdm(total=steps, initial=start, desc=name, disable=rank != 0 or not tty, dynamic_ncols=True)
    lines = _Lines(name, start) if rank == 0 and not tty else None
    told: set[str] = set()  # what the budget has said this stage ("short", "raised"): each once
    metrics: dict[str, float] = {}
    model.train()
    t0 = time.time()
    step = start
    while step < steps:
        if budget is not None and (cut := budget.observe(step, steps)) != steps:
            _tell(budget, name, steps, cut, rank, told, calibrated=True)
            steps = bar.total = cut
        for g in opt.param_groups:
            g["lr"] = cfg.lr * lr_lambda(step, steps, cfg.warmup)
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in get_batch(step, rank, world).items()}
        metrics = _step(net, model, opt, batch, cfg, name, step, autocast)
        bar.update(1)
        if rank == 0 and (step % cfg.log_every == 0 or step == steps - 1):
            _report(bar, writer, name, metrics, step, (step + 1 - start) / max(1e-9, time.time() - t0))
        if lines is not None:
            lines.update(step + 1, steps, metrics)
        if budget is not None and (step + 1) % cfg.ckpt_every == 0:
            was, steps = steps, budget.checkpoint(step + 1, steps)
            _tell(budget, name, was, steps, rank, told)
            bar.total = steps
        if rank == 0 and ((step + 1) % cfg.ckpt_every == 0 or step + 1 == steps):
            save_checkpoint(ckpt_dir / f"step_{step + 1:07d}", model, opt, step + 1, config or {}, steps)
        step += 1
    bar.close()
    return FitResult(steps, metrics)


def _tell(budget: Budget, name: str, was: int, steps: int, rank: int, told: set[str], calibrated: bool = False) -> None:
    """Rank 0 says when the budget changes a stage's count from ``was`` to ``steps``: a warning with the
    reason when it leaves less than SHORT of the plan, a line when the count first goes back up, and one
    at calibration (each once a stage; the small cuts at checkpoints pass silently). ``told`` keeps track."""
    if rank != 0 or steps == was:
        return
    line = None if "short" in told or steps > was else budget.shortfall(name, steps)
    if line is not None:
        told.add("short")
        log.warning(line)
    elif steps > was and "raised" not in told:
        told.add("raised")
        log.info(
            "[%s] the rate recovered (%.3g steps/s): %d of the %d planned steps now fit the wall-clock budget "
            "(the count follows the rate at the checkpoints while the stage is in its first half)",
            name,
            budget.rate,
            steps,
            budget.plan,
        )
    elif calibrated:
        log.info("[%s] %d of the %d planned steps fit the wall-clock budget", name, steps, was)


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
    atomic_write(run / "config.json", json.dumps(config, indent=2, default=str))
