"""`simulacra train`: the size presets, the options and their checks, and the run as a list of stages,
each a model with its batches and loop settings, run in turn through the one loop (loop.py): (1) the
frame autoencoder on single frames, (2) the latent dynamics model (+ reward and termination heads) on
K-step windows of latents encoded once by the frozen autoencoder.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file

from simulacra.data.safety import check_output_folder
from simulacra.errors import SimulacraError
from simulacra.layout import (
    atomic_save_tensors,
    default_run_dir,
    resolve_dataset,
    writer_lock,
)
from simulacra.loop import (
    PRECISIONS,
    BatchFn,
    Budget,
    FitResult,
    LoopConfig,
    autocast_dtype,
    dist_info,
    fit,
    latest_checkpoint,
    sample_keys,
    save_run_config,
    step_indices,
)
from simulacra.models.autoencoder import Autoencoder, AutoencoderConfig
from simulacra.models.common import count_parameters
from simulacra.models.dynamics import LEGACY, Dynamics, DynamicsConfig

if TYPE_CHECKING:
    from simulacra.data import Dataset

log = logging.getLogger(__name__)


# ---- size presets --------------------------------------------------------------------------------
@dataclass(frozen=True)
class SizePreset:
    """One size of world model: the two models' shapes, and how long and how fast each stage trains."""

    ae: AutoencoderConfig
    """The frame autoencoder (its ``kind`` is the default frame representation)."""
    dyn: DynamicsConfig
    """The latent dynamics model (``train`` sets ``snap_to_pixels`` and ``change_gate`` from the autoencoder)."""
    ae_steps: int
    """Autoencoder optimisation steps."""
    dyn_steps: int
    """Dynamics optimisation steps (with a ``minutes`` budget: the plan the budget cuts to what fits)."""
    ae_batch: int
    """Global batch of single frames for the autoencoder."""
    dyn_batch: int
    """Global batch of K-step windows for the dynamics model."""
    ae_lr: float
    """Peak learning rate of the autoencoder."""
    dyn_lr: float
    """Peak learning rate of the dynamics model."""
    minutes: float | None = None
    """Wall-clock budget of a run at this size unless step counts are asked for (None: the counts rule)."""


SIZES: dict[str, SizePreset] = {
    "debug": SizePreset(
        ae=AutoencoderConfig(channels=16, latent_channels=4, blocks=1),
        dyn=DynamicsConfig(context=2, channels=16, channel_mult=(1, 2), cond_dim=32),
        ae_steps=30,
        dyn_steps=30,
        ae_batch=8,
        dyn_batch=8,
        ae_lr=2e-3,
        dyn_lr=1e-3,
    ),
    # nano is sized for minutes on a 2-core CPU: its steps are a plan that the budget cuts to what fits.
    # No own_context: its extra forward passes cost more of a fixed budget's steps than they win back.
    # The 3x3 stem, change weight 20, time shift 3 and context deltas are measured on Breakout in docs/world-model.md,
    # and so are the heads that foresee events from 12 frames while the flow reads the last 4 (eighth round).
    "nano": SizePreset(
        ae=AutoencoderConfig(channels=64, latent_channels=8),
        dyn=DynamicsConfig(
            context=12,
            flow_context=4,
            channels=48,
            channel_mult=(1, 2, 2),
            cond_dim=128,
            stem=3,
            change_weight=20.0,
            time_shift=3.0,
            context_deltas=True,
            heads_on_next=False,
            heads_context=True,
            heads_events=0.5,
        ),
        ae_steps=1200,
        dyn_steps=4000,
        ae_batch=32,
        dyn_batch=32,
        ae_lr=2e-3,
        dyn_lr=5e-4,
        minutes=10,
    ),
    "small": SizePreset(
        ae=AutoencoderConfig(channels=128, latent_channels=8, blocks=3),
        dyn=DynamicsConfig(context=8, channels=128, channel_mult=(1, 2, 2), cond_dim=256, blocks=2, own_context=0.25),
        ae_steps=20000,
        dyn_steps=60000,
        ae_batch=64,
        dyn_batch=64,
        ae_lr=1e-3,
        dyn_lr=3e-4,
    ),
    "base": SizePreset(
        ae=AutoencoderConfig(channels=192, latent_channels=8, blocks=4),
        dyn=DynamicsConfig(context=16, channels=192, channel_mult=(1, 2, 3), cond_dim=384, blocks=2),
        ae_steps=50000,
        dyn_steps=200000,
        ae_batch=128,
        dyn_batch=128,
        ae_lr=1e-3,
        dyn_lr=2e-4,
    ),
    "large": SizePreset(
        ae=AutoencoderConfig(channels=256, latent_channels=16, blocks=6),
        dyn=DynamicsConfig(context=32, channels=256, channel_mult=(1, 2, 3, 4), cond_dim=512, blocks=3),
        ae_steps=100000,
        dyn_steps=500000,
        ae_batch=256,
        dyn_batch=256,
        ae_lr=5e-4,
        dyn_lr=1e-4,
    ),
}


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
    patch: int | None = None
    """Pixel patch size of the 'pixels' grid (default 4: 64x64 frames are a 16x16 grid). 2 makes a 32x32
    grid, so a one-pixel ball is a larger part of its cell, at about four times the compute."""
    change_weight: float | None = None
    """Extra loss weight on the parts of the frame that change (default: the size preset's)."""
    context_noise_max: float | None = None
    """Max context-noise augmentation level (0 turns the augmentation off)."""
    own_context: float | None = None
    """Fraction of training windows whose last context frame is the model's own sample (default: the size preset's)."""
    stem: int | None = None
    """Kernel of the dynamics' first convolution, 1 or 3 (default: the size preset's)."""
    time_shift: float | None = None
    """Shift of the dynamics' flow time towards high noise, in training and sampling (1: none; default: the
    size preset's)."""
    context_deltas: bool | None = None
    """The earlier context frames enter the dynamics as their change to the last one (default: the size
    preset's)."""
    skip_sigma: float | None = None
    """EDM-style output preconditioning with this target std (0: off; default: the size preset's)."""
    heads_own: float | None = None
    """Fraction of training windows whose event heads read the model's own sample of the next frame
    rather than the real one, as at inference (default: the size preset's)."""
    heads_before: bool | None = None
    """The event heads also read the motion into the transition (the change between the last two context
    frames). Default: the size preset's."""
    heads_context: bool | None = None
    """The event heads also read every earlier context frame (as its change to the last), to time an event
    that comes steps after what decides it, such as a life lost to a ball that fell out of sight (default: the
    size preset's)."""
    heads_on_next: bool | None = None
    """The event heads read the transition's next frame (the world's own sample, at inference); False: they
    foresee the event from the context and the action alone (default: the size preset's)."""
    heads_events: float | None = None
    """Fraction of the event heads' own training windows drawn among those that hold an event (0: the heads
    learn from the flow's windows; default: the size preset's)."""
    flow_context: int | None = None
    """How many of the last context frames the dynamics' U-Net reads (0: all of --context), so that the heads
    can read a longer context than the flow (default: the size preset's)."""
    change_gate: bool = True
    """Keep the grid cells the model predicts unchanged exactly as they were (no speckle piling up
    in the static parts of long rollouts). Only where the frames are pixels: on with the 'pixels'
    autoencoder unless --no-change-gate, off with learned latents. Decided here, for every trained
    world; the dynamics model's own default (off) is for models built by hand."""
    precision: str = "auto"
    """'auto': bf16 autocast on CUDA, fp32 on a CPU; 'bf16' also on a CPU that computes it natively (AVX512-BF16
    or AMX: 1.4x the dynamics steps per second on a Zen 4 core), but at equal steps bf16 Breakout worlds came
    out worse there (docs/world-model.md); 'fp32' everywhere. The dynamics' output layer stays fp32.
    config.json records what the run used."""
    holdout: float = 0.1
    """Fraction of episodes held out for evaluation (never trained on)."""
    ckpt_every: int = 250
    """Write a resumable checkpoint every N steps."""
    resume: bool = False
    """Continue from the latest complete checkpoint in --out."""
    tensorboard: bool = True
    """Write TensorBoard logs to <run>/tb."""
    planning: bool = False
    """Also train the planning world (a JEPA latent for `simulacra plan`) and its GCBC baseline into
    <run>/plan, after the pixel world. Needs recorded states and a preset with a planning task (pusht, fourrooms)."""
    plan_minutes: float = 20.0
    """Wall-clock budget of the planning world and GCBC (80 / 20), on top of --minutes."""
    max_params: int = 1_000_000_000
    """Refuse models with more parameters than this (counted before anything is allocated: a typo in
    --channels would otherwise ask for terabytes). The large preset has about 0.35 billion."""


def size_preset(name: str) -> SizePreset:
    if name not in SIZES:
        raise SimulacraError(f"unknown size {name!r}; sizes: {', '.join(SIZES)}")
    return SIZES[name]


def budget_minutes(cfg: TrainConfig) -> float | None:
    """The run's wall-clock budget: --minutes, else the size's unless step counts were given (then they rule)."""
    if cfg.minutes is not None and not 0 <= cfg.minutes < math.inf:  # also refuses nan
        raise SimulacraError(f"--minutes is a wall-clock budget, 0 (none) or more, not {cfg.minutes}")
    if cfg.minutes is not None:
        return cfg.minutes or None
    return None if cfg.ae_steps is not None or cfg.dyn_steps is not None else size_preset(cfg.size).minutes


def model_configs(cfg: TrainConfig, preset: SizePreset) -> tuple[AutoencoderConfig, DynamicsConfig]:
    """The two models' configs: the preset's, with the options given. Sampling snaps to pixels and the
    change gate is on (unless --no-change-gate) exactly when the frames are pixels."""
    ae = replace(
        preset.ae,
        **({"kind": cfg.autoencoder} if cfg.autoencoder else {}),
        **({"patch": cfg.patch} if cfg.patch is not None else {}),
    )
    given = {
        "context": cfg.context,
        "channels": cfg.channels,
        "channel_mult": cfg.channel_mult,
        "context_noise_max": cfg.context_noise_max,
        "change_weight": cfg.change_weight,
        "own_context": cfg.own_context,
        "heads_own": cfg.heads_own,
        "skip_sigma": cfg.skip_sigma,
        "time_shift": cfg.time_shift,
        "context_deltas": cfg.context_deltas,
        "stem": cfg.stem,
        "heads_before": cfg.heads_before,
        "heads_context": cfg.heads_context,
        "heads_on_next": cfg.heads_on_next,
        "flow_context": cfg.flow_context,
        "heads_events": cfg.heads_events,
    }
    pixels = ae.kind == "pixels"
    over = {k: v for k, v in given.items() if v is not None}
    return ae, replace(preset.dyn, **over, snap_to_pixels=pixels, change_gate=cfg.change_gate and pixels)


OPTION_OF = {
    ("autoencoder", "kind"): "--autoencoder",
    ("autoencoder", "patch"): "--patch",
    ("dynamics", "context"): "--context",
    ("dynamics", "channels"): "--channels",
    ("dynamics", "channel_mult"): "--channel-mult",
    ("dynamics", "context_noise_max"): "--context-noise-max",
    ("dynamics", "change_weight"): "--change-weight",
    ("dynamics", "own_context"): "--own-context",
    ("dynamics", "heads_own"): "--heads-own",
    ("dynamics", "skip_sigma"): "--skip-sigma",
    ("dynamics", "time_shift"): "--time-shift",
    ("dynamics", "context_deltas"): "--context-deltas",
    ("dynamics", "stem"): "--stem",
    ("dynamics", "heads_before"): "--heads-before",
    ("dynamics", "heads_context"): "--heads-context",
    ("dynamics", "heads_on_next"): "--heads-on-next",
    ("dynamics", "flow_context"): "--flow-context",
    ("dynamics", "heads_events"): "--heads-events",
}
"""The command-line option of each model field it sets; the other fields come from the size preset."""
RESUME_OPTION_OF = OPTION_OF | {("dynamics", "change_gate"): "--change-gate/--no-change-gate"}


def check_model_config(ae_cfg, dyn_cfg, frame_shape=None, action_space=None, max_params: int | None = None) -> None:
    """One-line errors for model options that would otherwise fail deep inside torch (or allocate
    terabytes): ranges, the frame shape they must tile, and (given the action space) the parameter count."""
    latent_hw = None
    if frame_shape is not None and ae_cfg.patch >= 1:
        latent_hw = (frame_shape[0] // ae_cfg.patch, frame_shape[1] // ae_cfg.patch)
    for model, problems in (("autoencoder", ae_cfg.problems(frame_shape)), ("dynamics", dyn_cfg.problems(latent_hw))):
        for field_name, problem in problems:
            raise SimulacraError(f"{OPTION_OF.get((model, field_name), f'{model}.{field_name}')} {problem}")
    if action_space is not None and max_params is not None:
        try:
            n = count_parameters(lambda: Autoencoder(ae_cfg))
            n += count_parameters(lambda: Dynamics(dyn_cfg, ae_cfg.grid_channels, action_space))
            size = f"{n / 1e9:,.2f} billion parameters"
        except (RuntimeError, ValueError, OverflowError):  # a tensor larger than any storage can be
            n, size = math.inf, "more parameters than any tensor can hold"
        if n > max_params:
            raise SimulacraError(
                f"--channels {dyn_cfg.channels} x --channel-mult {list(dyn_cfg.channel_mult)} with --context "
                f"{dyn_cfg.context} makes a model of {size}, above --max-params {max_params:_}; pick smaller "
                f"options, or raise --max-params if you mean it"
            )


def _positive_int(name: str, value, allow_none: bool = True) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SimulacraError(f"{name} must be a whole number, 1 or more, not {value}")


def check_train_options(cfg: TrainConfig) -> None:
    """One-line errors for the numbers of a run; None means "the preset's", and 0 is never "unset"."""
    _positive_int("--ae-steps", cfg.ae_steps)
    _positive_int("--dyn-steps", cfg.dyn_steps)
    _positive_int("--batch-size", cfg.batch_size)
    _positive_int("--ckpt-every", cfg.ckpt_every, allow_none=False)
    _positive_int("--max-params", cfg.max_params, allow_none=False)
    if isinstance(cfg.seed, bool) or not isinstance(cfg.seed, int) or not 0 <= cfg.seed <= MAX_SEED:
        raise SimulacraError(f"--seed must be a whole number from 0 to {MAX_SEED}, not {cfg.seed}")
    if not 0 <= cfg.holdout < 1:  # also refuses nan
        raise SimulacraError(
            f"--holdout is the fraction of episodes held out, 0 or more and below 1, not {cfg.holdout}"
        )
    if cfg.minutes is not None and not 0 <= cfg.minutes < math.inf:  # also refuses nan
        raise SimulacraError(f"--minutes is a wall-clock budget, 0 (none) or more, not {cfg.minutes}")
    if cfg.dyn_lr is not None and not 0 < cfg.dyn_lr < math.inf:
        raise SimulacraError(f"--dyn-lr must be a positive learning rate, not {cfg.dyn_lr}")
    for name in ("change_weight", "context_noise_max"):
        v = getattr(cfg, name)
        if v is not None and not 0 <= v < math.inf:
            raise SimulacraError(f"--{name.replace('_', '-')} must be 0 or more, not {v}")
    if cfg.precision not in PRECISIONS:
        raise SimulacraError(f"--precision must be one of {', '.join(PRECISIONS)}, not {cfg.precision!r}")
    if cfg.context is not None and cfg.context < 2:
        raise SimulacraError(f"--context must be at least 2 (the heads read the last two frames), not {cfg.context}")
    if cfg.channels is not None and cfg.channels < 8:
        raise SimulacraError(f"--channels must be at least 8, not {cfg.channels}")


MAX_SEED = 2**32 - 1
"""The largest seed (NumPy's and most tools' range); `loop_configs` also checks that the sample keys drawn
from it fit an int64 at the run's batch size and step count."""


def loop_configs(cfg: TrainConfig, preset: SizePreset, world_size: int) -> tuple[LoopConfig, LoopConfig]:
    """(autoencoder, dynamics) loop settings: the preset's, with the options given."""
    check_train_options(cfg)
    given = lambda v, default: default if v is None else v  # noqa: E731  (0 is never "unset")
    ae_loop = LoopConfig(given(cfg.ae_steps, preset.ae_steps), given(cfg.batch_size, preset.ae_batch), preset.ae_lr)
    dyn_loop = LoopConfig(
        given(cfg.dyn_steps, preset.dyn_steps),
        given(cfg.batch_size, preset.dyn_batch),
        given(cfg.dyn_lr, preset.dyn_lr),
    )
    for stage, loop in ((1, ae_loop), (2, dyn_loop)):
        if loop.batch_size % world_size:
            raise SimulacraError(f"batch size {loop.batch_size} does not split over {world_size} processes")
        if ((cfg.seed * 7 + stage) * 1_000_003 + loop.steps + 1) * loop.batch_size >= 2**63:  # sample_keys' largest
            raise SimulacraError(
                f"--seed {cfg.seed} with batch size {loop.batch_size} and {loop.steps} steps overflows the "
                f"per-sample noise keys; pick a smaller --seed"
            )
        loop.ckpt_every = cfg.ckpt_every
        loop.precision = cfg.precision
        loop.warmup = min(loop.warmup, max(1, loop.steps // 10))
    return ae_loop, dyn_loop


def training_episodes(ds: Dataset, root: str, cfg: TrainConfig, K: int) -> tuple[list[int], list[int]]:
    """(training, held-out) episodes. Training skips, and says so, episodes without actions (the dynamics
    model is action-conditioned) and episodes shorter than one K-step window."""
    from simulacra.data import split_episodes

    train_eps, held_eps = split_episodes(ds, cfg.holdout, cfg.seed)
    no_actions = [i for i in train_eps if not ds.episodes[i].has_actions]
    short = [i for i in train_eps if ds.episodes[i].has_actions and ds.episodes[i].length < K]
    say = log.info if dist_info()[0] == 0 else log.debug  # once, not once per DDP process
    if no_actions:
        say(
            "skipping %d action-free training episode(s) %s: the dynamics model needs actions",
            len(no_actions),
            no_actions,
        )
    if short:
        say("skipping %d training episode(s) %s shorter than the context (%d steps)", len(short), short, K)
    train_eps = [i for i in train_eps if i not in no_actions and i not in short]
    if not train_eps:
        raise SimulacraError(f"{root}: no training episode has actions and at least {K} steps")
    return train_eps, held_eps


# ---- the pipeline: data set -> autoencoder -> latents -> dynamics -> world ----------------------
@dataclass
class Plan:
    """A resolved run: everything its stages need, decided (and checked) before anything is written."""

    cfg: TrainConfig
    ds: Dataset
    run: Path
    ae: AutoencoderConfig
    dyn: DynamicsConfig
    ae_loop: LoopConfig
    dyn_loop: LoopConfig
    minutes: float | None
    t_begin: float
    """time.time() the run's wall-clock budget counts from."""
    train_eps: list[int]
    config: dict
    """What config.json records: the resolved config, and the step counts reached once they are known."""

    def budget(self, share: float, option: str | None = None) -> Budget | None:
        """The budget of a stage that must end after ``share`` of the run's minutes, if the run has any
        (``option``: the one that fixes the stage's step count instead)."""
        return Budget(self.t_begin + 60 * self.minutes * share, option=option) if self.minutes else None


def plan_run(cfg: TrainConfig, t_begin: float) -> Plan:
    """Resolve and check every option, and read the episodes it trains on; nothing is written yet.
    (Whether --out already holds a run is checked by `train`, under the run folder's writer lock.)"""
    from simulacra.data import Dataset

    rank, world_size = dist_info()
    preset = size_preset(cfg.size)
    check_train_options(cfg)
    root, guessed = resolve_dataset(cfg.data)
    if guessed and rank == 0:
        log.info("(using the most recent data set: %s)", root)
    run = Path(cfg.out) if cfg.out else default_run_dir(root, cfg.size)
    check_output_folder(run, "--out")
    if (run / "info.json").exists() or (run / "episodes.jsonl").exists():
        raise SimulacraError(f"--out {run} is a data set; train into a run folder of its own")
    ds = Dataset.open(root)
    action_space = ds.info.get("action_space", {"type": "none"})
    ae_cfg, dyn_cfg = model_configs(cfg, preset)
    check_model_config(ae_cfg, dyn_cfg, ds.info["frame_shape"], action_space, cfg.max_params)
    ae_loop, dyn_loop = loop_configs(cfg, preset, world_size)
    minutes = budget_minutes(cfg)
    train_eps, held_eps = training_episodes(ds, root, cfg, dyn_cfg.context)
    if cfg.planning:  # refused now, not after the pixel world has trained for ten minutes
        from simulacra.plan.tasks import task_for

        task_for((ds.info.get("preset_config") or {}).get("name"))
        if "state" not in ds.arrays(train_eps[0]):
            raise SimulacraError(f"--planning: {root} holds no state per frame (record it with --state auto)")
        if not 0 < cfg.plan_minutes < math.inf:
            raise SimulacraError(f"--plan-minutes must be a positive budget, not {cfg.plan_minutes}")
    used = sorted(set(train_eps) | set(held_eps))
    ds.check_episodes(used)  # every byte that training reads, and eval holds out, before any is written
    config = {
        "train": asdict(cfg),
        "data": str(root),
        "data_fingerprint": data_fingerprint(ds, used),
        "size": cfg.size,
        "world_size": world_size,
        "autoencoder": asdict(ae_cfg),
        "dynamics": asdict(dyn_cfg),
        "ae_loop": asdict(ae_loop),
        "dyn_loop": asdict(dyn_loop),
        "minutes_budget": minutes,
        "compute_dtype": str(
            autocast_dtype(torch.device("cuda" if torch.cuda.is_available() else "cpu"), cfg.precision)
        ).removeprefix("torch."),
        "action_space": action_space,
        "frame_shape": ds.info["frame_shape"],
        "preset": ds.info.get("preset_config"),
        "fps": ds.info.get("fps", 15),
        "train_episodes": train_eps,
        "holdout_episodes": held_eps,
    }
    return Plan(cfg, ds, run, ae_cfg, dyn_cfg, ae_loop, dyn_loop, minutes, t_begin, train_eps, config)


def data_fingerprint(ds: Dataset, episodes: list[int]) -> str:
    """What identifies the training data wherever it lies: frame shape, action space and the manifest's
    checksum and size of every episode used."""
    import hashlib

    e = [[i, ds.episodes[i].checksum, ds.episodes[i].nbytes, ds.episodes[i].length] for i in episodes]
    doc = {"frame_shape": ds.info.get("frame_shape"), "action_space": ds.info.get("action_space"), "episodes": e}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:32]


def _json(x):
    """``x`` as JSON reads it back (tuples become lists), for comparing with a saved config."""
    return json.loads(json.dumps(x, default=str))


def resume_differences(old: dict, new: dict) -> list[str]:
    """What a resumed run would change of the run in its folder: the data it trains on and every option
    that shapes the models, their training or the held-out split (one phrase each, naming the option)."""
    diffs: list[str] = []
    old_train, new_train = old.get("train") or {}, new["train"]

    def differ(option: str, was, now) -> None:
        if _json(was) != _json(now):
            diffs.append(f"{option} was {_json(was)}, now {_json(now)}")

    if "data_fingerprint" in old:
        if old["data_fingerprint"] != new["data_fingerprint"]:
            diffs.append(f"--data {new['data']} is not the data set it was trained on ({old.get('data')})")
    elif Path(str(old.get("data"))).resolve() != Path(new["data"]).resolve():
        diffs.append(f"--data was {old.get('data')}, now {new['data']}")
    differ("--size", old.get("size"), new["size"])
    differ("--seed", old_train.get("seed"), new_train["seed"])
    differ("--holdout", old_train.get("holdout"), new_train["holdout"])
    for model in ("autoencoder", "dynamics"):
        was, now = old.get(model) or {}, new[model]
        for k in now:
            if k == "snap_to_pixels":  # follows --autoencoder, which is compared itself
                continue
            legacy = LEGACY.get(model, {})  # a run from before the option existed had its legacy value
            differ(RESUME_OPTION_OF.get((model, k), f"{model}.{k}"), was.get(k, legacy.get(k)), now[k])
    differ("--batch-size", (old.get("ae_loop") or {}).get("batch_size"), new["ae_loop"]["batch_size"])
    differ("--batch-size", (old.get("dyn_loop") or {}).get("batch_size"), new["dyn_loop"]["batch_size"])
    differ("--dyn-lr", (old.get("dyn_loop") or {}).get("lr"), new["dyn_loop"]["lr"])
    differ("--minutes", old.get("minutes_budget"), new["minutes_budget"])
    preset = SIZES.get(str(old.get("size")))
    if preset is not None:  # the counts planned (config.json records the counts reached, which a budget may cut)
        if new["autoencoder"]["kind"] != "pixels":
            was = old_train.get("ae_steps") if old_train.get("ae_steps") is not None else preset.ae_steps
            differ("--ae-steps", was, new["ae_loop"]["steps"])
        was = old_train.get("dyn_steps") if old_train.get("dyn_steps") is not None else preset.dyn_steps
        differ("--dyn-steps", was, new["dyn_loop"]["steps"])
    if not diffs and (
        _json(old.get("train_episodes")) != new["train_episodes"]
        or _json(old.get("holdout_episodes")) != new["holdout_episodes"]
    ):
        diffs.append("the data set's episodes are not the ones it was trained on (episodes added or removed?)")
    return list(dict.fromkeys(diffs))


def check_run_folder(plan: Plan) -> None:
    """Under the writer lock: --out holds no run, or (--resume) the run that these options continue."""
    config_path = plan.run / "config.json"
    if not config_path.exists():
        return
    if not plan.cfg.resume:
        raise SimulacraError(f"{plan.run} already holds a run; pass --resume to continue it or --out elsewhere")
    try:
        old = json.loads(config_path.read_text())
        if not isinstance(old, dict):
            raise ValueError(f"a JSON object, not {type(old).__name__}")
    except (UnicodeDecodeError, ValueError) as e:
        raise SimulacraError(f"{config_path}: not a run config ({e}); cannot check what --resume continues") from None
    diffs = resume_differences(old, plan.config)
    if diffs:
        raise SimulacraError(
            f"{plan.run}: --resume continues the run as it was started, but {'; '.join(diffs)}; "
            f"resume with the run's own options (its config.json) or train into another --out"
        )


@contextmanager
def run_folder(plan: Plan, rank: int, world_size: int) -> Iterator[None]:
    """Rank 0 holds the run folder's writer lock for the whole run and checks the folder under it; the
    other processes only learn whether it could, so a refusal stops them all (none waits at a barrier)."""
    with ExitStack() as stack:
        failure: Exception | None = None
        if rank == 0:
            try:
                stack.enter_context(writer_lock(plan.run, "train"))
                check_run_folder(plan)
            except Exception as e:  # told to the other processes first, then raised here too
                failure = e
        if world_size > 1:
            said = [None if failure is None else str(failure)]
            dist.broadcast_object_list(said, src=0)
            if rank != 0 and said[0] is not None:
                failure = SimulacraError(f"rank 0 stopped: {said[0]}")
        if failure is not None:
            raise failure
        yield


@dataclass
class Stage:
    """One model of the run and how the loop trains it."""

    name: str
    """Names its progress bar, TensorBoard tags and checkpoints/<name> folder."""
    model: torch.nn.Module
    get_batch: BatchFn
    loop: LoopConfig
    loop_key: str
    """The config.json entry of its loop settings, whose ``steps`` records the count reached."""
    budget: Budget | None = None
    trainable: bool = True
    """False for a model with nothing to learn (the 'pixels' autoencoder): the stage is skipped."""
    weights: Path | None = None
    """Where its trained weights are kept apart from the world, so that a resumed run loads them
    instead of training the stage again."""
    result: FitResult | None = field(default=None, init=False)


def autoencoder_stage(plan: Plan, done: dict[str, Stage]) -> Stage:
    """Stage 1: the frame autoencoder, on single frames of the training episodes."""
    ds, seed, B = plan.ds, plan.cfg.seed, plan.ae_loop.batch_size
    torch.manual_seed(seed)
    ae = Autoencoder(plan.ae)
    frame_index = np.array([(i, t) for i in plan.train_eps for t in range(ds.episodes[i].length + 1)])

    def get_batch(step: int, r: int, w: int) -> dict:
        idx = step_indices(seed, 1, step, len(frame_index), B, r, w)
        frames = np.stack([ds.frames(int(i), int(t), int(t) + 1)[0] for i, t in frame_index[idx]])
        return {"frames": torch.from_numpy(frames).permute(0, 3, 1, 2), "keys": sample_keys(seed, 1, step, B, r, w)}

    share = plan.ae_loop.steps / (plan.ae_loop.steps + plan.dyn_loop.steps)
    weights = plan.run / "world" / "autoencoder.safetensors"
    budget = plan.budget(share, "--ae-steps")
    return Stage("autoencoder", ae, get_batch, plan.ae_loop, "ae_loop", budget, ae.trainable, weights)


def encode_episodes(ae: Autoencoder, ds: Dataset, episodes: list[int]) -> tuple[dict[int, torch.Tensor], float]:
    """Latents of every frame of ``episodes``, once (the autoencoder is frozen from here on), and their std."""
    latents = {}
    with torch.no_grad():
        for i in episodes:
            f = torch.from_numpy(np.array(ds.frames(i))).permute(0, 3, 1, 2)  # a writable copy
            latents[i] = torch.cat([ae.encode(f[j : j + 256]) for j in range(0, len(f), 256)])
    return latents, float(torch.cat([z.flatten() for z in latents.values()]).std().clamp_min(1e-3))


def dynamics_stage(plan: Plan, done: dict[str, Stage]) -> Stage:
    """Stage 2: the dynamics model (+ heads), on K-step windows of normalised latents."""
    ae = done["autoencoder"].model
    ds, seed, K, B = plan.ds, plan.cfg.seed, plan.dyn.context, plan.dyn_loop.batch_size
    latents, std = encode_episodes(ae, ds, plan.train_eps)
    torch.manual_seed(seed + 1)
    dyn = Dynamics(plan.dyn, ae.latent_channels, plan.config["action_space"])
    dyn.latent_std.fill_(std)
    arrays = {i: {k: torch.from_numpy(np.array(v)) for k, v in ds.arrays(i).items()} for i in plan.train_eps}
    for a in arrays.values():
        lives = a.pop("lives", None)
        a.pop("state", None)
        a["has_lives"] = torch.tensor(lives is not None)
        a["life_loss"] = torch.zeros(len(a["reward"]), dtype=torch.bool) if lives is None else lives.diff() < 0
    win_index = np.array([(i, s) for i in plan.train_eps for s in range(ds.episodes[i].length - K + 1)])
    eventful = np.zeros(0, np.int64)  # windows whose transition holds an event, for the heads' own batch
    if plan.dyn.heads_events > 0:
        events = {i: (a["reward"] != 0) | a["terminated"].bool() | a["life_loss"] for i, a in arrays.items()}
        eventful = np.flatnonzero([bool(events[i][s + K - 1]) for i, s in win_index])

    def windows(idx) -> dict:
        pick = [(int(i), int(s)) for i, s in win_index[idx]]
        return {
            "latents": torch.stack([latents[i][s : s + K + 1] for i, s in pick]) / std,
            **{k: torch.stack([arrays[i][k][s : s + K] for i, s in pick]) for k in WINDOW_ARRAYS},
            "has_lives": torch.stack([arrays[i]["has_lives"] for i, _ in pick]),
        }

    def get_batch(step: int, r: int, w: int) -> dict:
        batch = windows(step_indices(seed, 2, step, len(win_index), B, r, w))
        if plan.dyn.heads_events > 0 and len(eventful):
            g = np.random.default_rng([seed, 3, step])  # stateless in the step, as step_indices is
            any_, ev = g.integers(0, len(win_index), B), eventful[g.integers(0, len(eventful), B)]
            idx = np.where(g.random(B) < plan.dyn.heads_events, ev, any_)[r * (B // w) : (r + 1) * (B // w)]
            batch |= {f"heads_{k}": v for k, v in windows(idx).items()}
        return batch | {"keys": sample_keys(seed, 2, step, B, r, w)}

    return Stage("dynamics", dyn, get_batch, plan.dyn_loop, "dyn_loop", plan.budget(1.0, "--dyn-steps"))


WINDOW_ARRAYS = ("action", "reward", "terminated", "life_loss")
"""The per-step arrays a dynamics window carries (K steps each), beside its K + 1 latents."""

STAGES: tuple[Callable[[Plan, dict[str, Stage]], Stage], ...] = (autoencoder_stage, dynamics_stage)
"""Each builds its stage from the plan and the stages trained before it."""


def run_stage(plan: Plan, stage: Stage, writer=None) -> None:
    """Train the stage through `fit` (or load it: nothing to learn, or already trained by a resumed
    run), record the count of steps reached, and leave its model on the CPU in eval mode."""
    ckpts = plan.run / "checkpoints" / stage.name
    trained = plan.cfg.resume and stage.weights is not None and stage.weights.exists()
    if stage.trainable and trained:
        stage.model.load_state_dict(load_file(stage.weights))
        last = latest_checkpoint(ckpts)
        if last is not None:  # the count it reached, which a budget may have cut
            plan.config[stage.loop_key]["steps"] = json.loads((last / "state.json").read_text())["total_steps"]
    elif stage.trainable:
        resume, config = plan.cfg.resume, plan.config
        stage.result = fit(
            stage.model, stage.get_batch, stage.loop, ckpts, stage.name, resume, writer, config, stage.budget
        )
        plan.config[stage.loop_key]["steps"] = stage.result.steps
        if stage.weights is not None and dist_info()[0] == 0:
            stage.weights.parent.mkdir(parents=True, exist_ok=True)
            atomic_save_tensors(stage.model.state_dict(), stage.weights)
    stage.model.cpu().eval()


def train(cfg: TrainConfig) -> Path:
    """Run every stage and write the world to <run>/world (safetensors + world.json)."""
    t_begin = time.time()  # a --minutes budget counts from here
    plan = plan_run(cfg, t_begin)
    rank, world_size = dist_info()
    with run_folder(plan, rank, world_size):  # every process knows --out is ours before rank 0 writes there
        return _train(plan, rank, world_size)


def _train(plan: Plan, rank: int, world_size: int) -> Path:
    from simulacra.world import World

    cfg, t_begin = plan.cfg, plan.t_begin
    writer = None
    if rank == 0:
        print("train config:", json.dumps(plan.config, indent=1, default=str))
        save_run_config(plan.run, plan.config)
        if cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(plan.run / "tb"))
    done: dict[str, Stage] = {}
    for build in STAGES:
        stage = build(plan, done)
        run_stage(plan, stage, writer)
        done[stage.name] = stage
    plan.config["train_seconds"] = round(time.time() - t_begin, 1)  # of this invocation (a resume counts its own)
    if rank == 0:
        save_run_config(plan.run, plan.config)
        World(done["autoencoder"].model, done["dynamics"].model, plan.config).save(plan.run / "world")
        last = done["dynamics"].result.metrics if done["dynamics"].result else {}
        print(f"trained world saved to {plan.run / 'world'} (last dynamics metrics: {_rounded(last)})")
        if cfg.planning:
            from simulacra.plan.tasks import task_for
            from simulacra.plan.train import train_planning

            task = task_for(plan.config["preset"]["name"])
            meta = train_planning(plan.ds, plan.train_eps, task, plan.run / "plan", cfg.plan_minutes, seed=cfg.seed,
                                  writer=writer)  # fmt: skip
            print(f"planning world saved to {plan.run / 'plan'} ({meta['steps']['jepa']} JEPA steps, "
                  f"{meta['steps']['gcbc']} GCBC steps, {meta['train_seconds']:.0f} s)")  # fmt: skip
        if writer is not None:
            writer.close()
    if world_size > 1:
        dist.barrier()
    return plan.run / "world"


def _rounded(metrics: dict[str, float]) -> str:
    return json.dumps({k: round(v, 4) for k, v in metrics.items()})
