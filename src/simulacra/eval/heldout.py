"""Held-out real data for evaluation: freshly recorded episodes, a given data set, or the run's holdout.

Everything is loaded into memory as *segments* (frames [start, stop) of an episode and the actions
between them) and split into two disjoint groups by episode: A (trains the inverse-dynamics model,
forms the real-frame pool for the drift distance) and B (tests the IDM, starts the drift rollouts,
gives the real reference frames). A single held-out episode is cut in two at its middle instead.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from simulacra.data import Dataset
from simulacra.data.state import step_events
from simulacra.errors import SimulacraError
from simulacra.spaces import ActionSpace

log = logging.getLogger(__name__)


@dataclass
class Heldout:
    source: dict
    """How the data was obtained: kind (recorded / data / holdout), path, episode indices, notes."""
    frames: list[np.ndarray] = field(default_factory=list)
    """Per segment: uint8 (T, H, W, 3)."""
    actions: list[np.ndarray] = field(default_factory=list)
    """Per segment: the T - 1 actions between its frames."""
    split_a: list[int] = field(default_factory=list)
    split_b: list[int] = field(default_factory=list)
    states: list[np.ndarray | None] = field(default_factory=list)
    """Per segment: the env's true state per frame, float32 (T, S), where it was recorded (else None)."""
    state_names: list[str] = field(default_factory=list)
    events: list[dict] = field(default_factory=list)
    """Per segment: {event: bool (T - 1,) or None} (simulacra.data.state.step_events)."""

    @property
    def num_frames(self) -> int:
        return sum(len(f) for f in self.frames)


def _preset_record_config(preset: dict, cfg, out: Path):
    """A RecordConfig reproducing the training preset as closely as the recorder's options allow."""
    from simulacra.data.record import RecordConfig, resolve_preset
    from simulacra.presets import PRESETS

    if preset.get("name") in PRESETS:
        kw = {"preset": preset["name"]}
    else:  # an --env-id world: its settings and frame fit as it was recorded
        kw = {"env_id": preset["env_id"], "env_kwargs": preset.get("env_kwargs") or [], "fit": preset.get("fit")}
    rc = RecordConfig(
        **kw,
        episodes=cfg.episodes,
        num_envs=max(1, min(cfg.num_envs, cfg.episodes)),
        seed=cfg.seed,
        out=str(out),
        overwrite=True,
        resolution=preset.get("resolution"),
        max_episode_steps=cfg.max_episode_steps or preset.get("max_episode_steps"),
        policy=preset.get("policy"),
        sticky=(preset.get("policy_kwargs") or {}).get("sticky"),
    )
    got = resolve_preset(rc).to_dict()
    keys = ["env_id", "env_kwargs", "frame_source", "resolution", "fit", "policy", "policy_kwargs"]
    if not cfg.max_episode_steps:
        keys.append("max_episode_steps")
    diff = [k for k in keys if got.get(k) != preset.get(k)]
    notes = [f"fresh episodes differ from the training preset in: {', '.join(diff)}"] if diff else []
    return rc, notes


def _seed_overlap(world_cfg: dict, ds: Dataset, eps: list[int]) -> list[str]:
    """Episodes (env id, reset seed) that the world was also trained on: then they are not held out."""
    try:
        train = Dataset.open(world_cfg["data"])
        seen = {(train.episodes[i].env_id, train.episodes[i].seed) for i in world_cfg.get("train_episodes", [])}
    except Exception:  # the training data may be elsewhere now; the check is advisory
        return ["could not open the training data set to check that the held-out seeds are unseen"]
    both = sorted(
        ds.episodes[i].seed
        for i in eps
        if ds.episodes[i].seed is not None and (ds.episodes[i].env_id, ds.episodes[i].seed) in seen
    )
    if both:
        return [f"WARNING: held-out episodes with seeds {both} share env and seed with training episodes"]
    return []


def record_fresh(world_cfg: dict, cfg, out: Path) -> tuple[Path, list[str]]:
    """Record cfg.episodes fresh episodes of the world's env into ``out`` (reused if already recorded alike)."""
    from simulacra.data.record import record_episodes

    preset = world_cfg.get("preset")
    if not preset:
        raise SimulacraError("the world's training data has no recording preset (imported or synthetic data)")
    rc, notes = _preset_record_config(preset, cfg, out)
    if (out / "info.json").exists():
        ds = Dataset.open(out)
        old = ds.info.get("record_config", {})
        same = {k: v for k, v in old.items() if k not in ("overwrite", "num_envs")} == {
            k: v for k, v in asdict(rc).items() if k not in ("overwrite", "num_envs")
        }
        if same and len(ds) == cfg.episodes:
            return out, [*notes, f"reused the episodes already recorded in {out}"]
    log.info("recording %d fresh episodes of %s (seeds %d+) into %s", cfg.episodes, preset["env_id"], cfg.seed, out)
    # no clean-up on failure: a half-recorded set is never reused (the count differs), and the folder may be
    # another writer's (record refuses a locked folder without touching it)
    record_episodes(rc, progress=True)
    return out, notes


def resolve(world_cfg: dict, cfg, eval_dir: Path) -> tuple[Dataset, list[int], dict]:
    """Which data set and episodes to evaluate on: (dataset, episode indices, source description)."""
    train_data = world_cfg.get("data")
    holdout = list(world_cfg.get("holdout_episodes") or [])
    notes: list[str] = []
    if cfg.data is not None:
        ds = Dataset.open(cfg.data)
        same = train_data is not None and Path(cfg.data).resolve() == Path(train_data).resolve()
        if same:
            notes.append("--data is the training data set: only its held-out episodes are used")
            eps, kind = holdout, "holdout"
        else:
            eps, kind = list(range(len(ds))), "data"
        path = cfg.data
    else:
        try:
            path, notes = record_fresh(world_cfg, cfg, eval_dir / "heldout")
            ds, kind = Dataset.open(path), "recorded"
            eps = list(range(len(ds)))
        except Exception as e:  # no env here (missing package, imported data): fall back, and say so
            why = f"could not record fresh episodes ({type(e).__name__}: {e})"
            if train_data is None or not holdout:
                raise SimulacraError(f"{why}, and the run has no held-out episodes to fall back on; pass --data") from e
            notes = [f"{why}; using the run's held-out episodes of its training data set"]
            ds, eps, kind, path = Dataset.open(train_data), holdout, "holdout", train_data
    eps = [i for i in eps if i < len(ds) and ds.episodes[i].has_actions and ds.episodes[i].length >= 1]
    if len(eps) > cfg.episodes:
        notes.append(f"used the first {cfg.episodes} of {len(eps)} episodes (--episodes)")
        eps = eps[: cfg.episodes]
    if not eps:
        raise SimulacraError(f"{path}: no usable held-out episode (with actions and at least one step)")
    if list(ds.frame_shape) != list(world_cfg["frame_shape"]):
        raise SimulacraError(f"{path}: frames are {list(ds.frame_shape)}, the world's are {world_cfg['frame_shape']}")
    space = ActionSpace.from_json(ds.info.get("action_space"))
    if space != ActionSpace.from_json(world_cfg["action_space"]):
        raise SimulacraError(f"{path}: action space {space} is not the world's")
    if kind != "holdout":
        notes += _seed_overlap(world_cfg, ds, eps)
    return ds, eps, {"kind": kind, "path": str(path), "episodes": eps, "notes": notes}


def load(ds: Dataset, episodes: list[int], source: dict, seed: int, min_frames: int) -> Heldout:
    """Load the episodes into memory and split them into groups A and B."""
    h = Heldout(source, state_names=ds.state_names)
    for i in episodes:
        arrays = ds.arrays(i)
        h.frames.append(np.ascontiguousarray(ds.frames(i)))
        h.actions.append(np.asarray(arrays["action"]))
        h.states.append(np.asarray(arrays["state"]) if "state" in arrays else None)
        h.events.append(step_events(arrays))
    if len(episodes) == 1 and len(h.frames[0]) >= 2 * min_frames:
        f, a, st, ev = h.frames.pop(), h.actions.pop(), h.states.pop(), h.events.pop()
        m = len(f) // 2
        h.frames += [f[:m], f[m:]]
        h.actions += [a[: m - 1], a[m:]]
        h.states += [None, None] if st is None else [st[:m], st[m:]]
        h.events += [{k: None if v is None else v[: m - 1] for k, v in ev.items()},
                     {k: None if v is None else v[m:] for k, v in ev.items()}]  # fmt: skip
        source["notes"].append("one held-out episode: its first half is group A, its second half group B")
    n = len(h.frames)
    if n == 1:
        h.split_a = h.split_b = [0]
        source["notes"].append("WARNING: one short held-out episode: the IDM is trained and tested on it")
    else:
        order = np.random.default_rng(seed).permutation(n).tolist()
        h.split_a, h.split_b = sorted(order[: n // 2]), sorted(order[n // 2 :])
    source["segments"] = [len(f) for f in h.frames]
    source["split_a"], source["split_b"] = h.split_a, h.split_b
    return h
