"""Train the planning world (JEPA) and the GCBC baseline on a recorded data set, through the one loop.

Both read the same episodes: frames ``block`` env steps apart with the block's action features
between them (the vector JEPA), a frame with the next ``unroll`` steps' actions and recorded cells (the
cell world), and (frame, hindsight goal frame, next block's features) triples (GCBC). The
wall-clock budget is shared 80 / 20. Everything lands in ``<run>/plan``: safetensors weights and one
``plan.json`` with both configs, the task, the step counts reached and the data's fingerprint.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from simulacra.data.store import Dataset
from simulacra.errors import SimulacraError
from simulacra.layout import atomic_save_tensors, atomic_write
from simulacra.loop import Budget, LoopConfig, fit, step_indices
from simulacra.models.cell_world import CellWorld, CellWorldConfig
from simulacra.models.common import dict_problems, from_dict
from simulacra.models.gcbc import GCBC, GCBCConfig
from simulacra.models.jepa import JEPA, JEPAConfig

WORLDS = {"vector": (JEPAConfig, JEPA), "cells": (CellWorldConfig, CellWorld)}
"""The planning world families: one vector per frame (Push-T), or a map of cells with the agent stepped
across it (FourRooms: where the gaps are changes with every layout; docs/plan.md). A task names its
default (``task.world``); a config passed to ``train_planning`` picks by its type."""

JEPA_SHARE = 0.8
"""Fraction of the budget the planning world gets; GCBC the rest (it converges much sooner)."""


def _episode_tensors(ds: Dataset, episodes: list[int], task) -> tuple[dict, dict, dict]:
    frames, feats, proprio = {}, {}, {}
    for i in episodes:
        a = ds.arrays(i)
        if "state" not in a or "action" not in a:
            raise SimulacraError(f"{ds.root}: episode {i} has no state or no actions; planning needs both")
        frames[i] = torch.from_numpy(np.array(ds.frames(i))).permute(0, 3, 1, 2).contiguous()
        feats[i] = torch.from_numpy(task.features(a["action"], a["state"][:-1]))
        proprio[i] = torch.from_numpy(task.proprio(a["state"]))
    return frames, feats, proprio


def jepa_batches(frames: dict, feats: dict, proprio: dict, cfg: JEPAConfig, batch_size: int, seed: int):
    span = cfg.block * cfg.horizon
    index = np.array([(i, t) for i, f in frames.items() for t in range(len(f) - span)])
    if len(index) == 0:
        raise SimulacraError(f"no episode is longer than {span} steps (block x horizon)")

    def get_batch(step: int, r: int, w: int) -> dict:
        pick = index[step_indices(seed, 11, step, len(index), batch_size, r, w)]
        return {
            "frames": torch.stack([frames[i][t : t + span + 1 : cfg.block] for i, t in pick]),
            "actions": torch.stack([feats[i][t : t + span].reshape(cfg.horizon, -1) for i, t in pick]),
            "proprio": torch.stack([proprio[i][t : t + span + 1 : cfg.block] for i, t in pick]),
        }

    return get_batch


def cell_batches(frames: dict, feats: dict, states: dict, cfg: CellWorldConfig, batch_size: int, seed: int):
    """A frame, the next ``unroll`` env steps' action features, and the recorded cell and heading along them."""
    K = cfg.unroll
    index = np.array([(i, t) for i, f in frames.items() for t in range(len(f) - K)])
    if len(index) == 0:
        raise SimulacraError(f"no episode is longer than {K} steps (the cell world's unroll)")

    def get_batch(step: int, r: int, w: int) -> dict:
        pick = index[step_indices(seed, 14, step, len(index), batch_size, r, w)]
        return {
            "frame": torch.stack([frames[i][t] for i, t in pick]),
            "actions": torch.stack([feats[i][t : t + K] for i, t in pick]),
            "cell": torch.stack([states[i][0][t : t + K + 1] for i, t in pick]),
            "heading": torch.stack([states[i][1][t : t + K + 1] for i, t in pick]),
        }

    return get_batch


def cell_states(ds: Dataset, episodes: list[int], task, grid: int) -> dict:
    """Per episode: the recorded cell (y * grid + x) and heading per frame, as the cell world learns them."""
    out = {}
    for i in episodes:
        s = ds.arrays(i)["state"]
        xy = np.asarray(s)[:, :2].astype(np.int64)
        if (xy < 0).any() or (xy >= grid).any():
            raise SimulacraError(f"{ds.root}: episode {i} has an agent cell outside the {grid} x {grid} grid")
        out[i] = (torch.from_numpy(xy[:, 1] * grid + xy[:, 0]), torch.from_numpy(task.heading(s)))
    return out


def gcbc_batches(frames: dict, feats: dict, cfg: GCBCConfig, batch_size: int, seed: int):
    index = np.array([(i, t) for i, f in frames.items() for t in range(len(f) - cfg.block)])
    lengths = {i: len(f) - 1 for i, f in frames.items()}

    def get_batch(step: int, r: int, w: int) -> dict:
        pick = index[step_indices(seed, 12, step, len(index), batch_size, r, w)]
        rng = np.random.default_rng([seed, 12, step, r])
        goals = [min(lengths[i], t + int(rng.integers(cfg.block, cfg.max_offset + 1))) for i, t in pick]
        return {
            "frame": torch.stack([frames[i][t] for i, t in pick]),
            "goal": torch.stack([frames[i][g] for (i, _), g in zip(pick, goals, strict=True)]),
            "actions": torch.stack([feats[i][t : t + cfg.block].reshape(-1) for i, t in pick]),
        }

    return get_batch


def train_planning(
    ds: Dataset,
    episodes: list[int],
    task,
    out: Path,
    minutes: float | None,
    steps: int = 100_000,
    batch_size: int = 64,
    seed: int = 0,
    jepa_cfg: JEPAConfig | CellWorldConfig | None = None,
    gcbc_cfg: GCBCConfig | None = None,
    writer=None,
) -> dict:
    """Train both models into ``out`` (``<run>/plan``); ``minutes`` caps the wall clock (None: ``steps`` each)."""
    from simulacra.train import data_fingerprint

    t0 = time.time()
    block = 5
    if jepa_cfg is None and getattr(task, "world", "vector") == "cells":
        jepa_cfg = CellWorldConfig(action_dim=block * task.feature_dim, block=block, feature_dim=task.feature_dim,
                                   grid=task.GRID, position_scale=task.PROPRIO_SCALE)  # fmt: skip
    jepa_cfg = jepa_cfg or JEPAConfig(
        action_dim=block * task.feature_dim, block=block, channels=16, proprio_dim=task.proprio_dim
    )
    world = "cells" if isinstance(jepa_cfg, CellWorldConfig) else "vector"
    gcbc_cfg = gcbc_cfg or GCBCConfig(action_dim=block * task.feature_dim, block=block)
    frames, feats, proprio = _episode_tensors(ds, episodes, task)
    deadline = None if not minutes else t0 + 60 * minutes
    torch.manual_seed(seed)
    jepa = WORLDS[world][1](jepa_cfg, ds.frame_shape[:2])
    loop = LoopConfig(steps=steps, batch_size=batch_size, lr=1e-3, warmup=200, ckpt_every=500)
    if world == "cells":
        if not hasattr(task, "heading"):
            raise SimulacraError(f"the {task.name} task records no heading; the cell world needs cell and heading")
        batches = cell_batches(
            frames, feats, cell_states(ds, episodes, task, jepa_cfg.grid), jepa_cfg, batch_size, seed
        )
    else:
        batches = jepa_batches(frames, feats, proprio, jepa_cfg, batch_size, seed)
    budget = None if deadline is None else Budget(t0 + JEPA_SHARE * (deadline - t0))
    r1 = fit(jepa, batches, loop, out / "checkpoints" / "jepa", "jepa", writer=writer, budget=budget)
    torch.manual_seed(seed + 1)
    gcbc = GCBC(gcbc_cfg, ds.frame_shape[:2])
    budget = None if deadline is None else Budget(deadline)
    r2 = fit(gcbc, gcbc_batches(frames, feats, gcbc_cfg, batch_size, seed), loop, out / "checkpoints" / "gcbc",
             "gcbc", writer=writer, budget=budget)  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    atomic_save_tensors(jepa.cpu().state_dict(), out / "jepa.safetensors")
    atomic_save_tensors(gcbc.cpu().state_dict(), out / "gcbc.safetensors")
    meta = {
        "task": task.name,
        "frame_shape": list(ds.frame_shape),
        "world": world,
        "jepa": asdict(jepa_cfg),
        "gcbc": asdict(gcbc_cfg),
        "steps": {"jepa": r1.steps, "gcbc": r2.steps},
        "batch_size": batch_size,
        "seed": seed,
        "train_seconds": round(time.time() - t0, 1),
        "data": str(ds.root),
        "data_fingerprint": data_fingerprint(ds, episodes),
        "last_metrics": {"jepa": r1.metrics, "gcbc": r2.metrics},
    }
    atomic_write(out / "plan.json", json.dumps(meta, indent=1))
    return meta


def load_planning(folder: str | Path) -> tuple[JEPA | CellWorld, GCBC, dict]:
    """The planning world and GCBC of ``<run>/plan`` (safetensors + plan.json, checked field by field)."""
    folder = Path(folder)
    if (folder / "plan").is_dir():
        folder = folder / "plan"
    meta_path = folder / "plan.json"
    if not meta_path.is_file():
        raise SimulacraError(
            f"{folder}: no planning world here (plan.json missing); train one with "
            "`simulacra train DATA --planning` or run `simulacra plan --benchmark pusht`"
        )
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SimulacraError(f"{meta_path}: not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise SimulacraError(f"{meta_path}: must hold a JSON object")
    world = meta.get("world", "vector")
    if world not in WORLDS:
        raise SimulacraError(f"{meta_path}: world must be one of {', '.join(WORLDS)}, not {world!r}")
    models = []
    for key, cls, model_cls in (("jepa", *WORLDS[world]), ("gcbc", GCBCConfig, GCBC)):
        problems = dict_problems(cls, meta.get(key))
        if problems:
            field, what = problems[0]
            raise SimulacraError(f"{meta_path}: {key}.{field} {what}")
        cfg = from_dict(cls, meta[key])
        if cfg.problems():
            field, what = cfg.problems()[0]
            raise SimulacraError(f"{meta_path}: {key}.{field} {what}")
        shape = meta.get("frame_shape")
        if not (isinstance(shape, list) and len(shape) == 3 and all(isinstance(s, int) and s > 0 for s in shape)):
            raise SimulacraError(f"{meta_path}: frame_shape must be three positive integers, not {shape!r}")
        if shape[0] % 16 or shape[1] % 16:
            raise SimulacraError(f"{meta_path}: frame_shape {shape} is not a multiple of 16")
        model = model_cls(cfg, tuple(shape[:2]))
        weights = folder / f"{key}.safetensors"
        if not weights.is_file():
            raise SimulacraError(f"{weights}: missing")
        try:
            model.load_state_dict(load_file(weights))
        except Exception as e:  # safetensors header errors and shape mismatches alike: one line
            raise SimulacraError(f"{weights}: does not hold this model's weights ({str(e).splitlines()[0]})") from None
        models.append(model.eval())
    return models[0], models[1], meta
