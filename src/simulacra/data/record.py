"""Recording: run a real env (several processes at once) and store every step.

``record_episodes(cfg)`` is the library call: it records and returns the data set's folder, printing
nothing (an optional progress bar aside). ``record(cfg)`` is the `simulacra record` verb around it: it
prints what it chose for the env and why, the resolved config and a summary.

Episode k is reset with seed ``seed + k`` and its exploration policy is seeded from the same number,
so an episode's content depends only on (seed, k), not on how many env processes ran. Envs step in
lockstep in worker processes (:class:`simulacra.data.pool.EnvPool`: every start-up and step has a
deadline, ``env_timeout``; OpenGL-rendered envs get spawned workers); each finished episode is written at
once, in the order episodes finish, so a crash loses only the episodes still in progress.

Interrupts: Ctrl-C (SIGINT) and SIGTERM stop a recording within seconds (exit 130 from the CLI, one
line), the env workers are stopped, and the data set keeps its complete episodes; if it has none, the
empty data set this run created is removed, so nothing blocks a retry. ``--resume`` continues an
interrupted recording in the same folder with the same options: it replays the lockstep schedule of the
episodes already stored (their lengths are in the manifest) and restarts the episodes that were in
progress at the point of the schedule where they began, so the finished data set is byte for byte the
one an uninterrupted run writes. ``--resume --episodes N`` with a larger N extends a finished one alike.

One writer per folder: the output folder's writer lock is held from before the env is probed to the
last episode, so a second recorder (or import) into it is refused with one line naming this one's PID.
Options are checked before anything is read or written; ``--overwrite`` only ever replaces a simulacra
data set, never a folder of other files.

An env without a preset (``--env-id``) gets generic choices, each printed with its reason by the verb and
saved in info.json (``record_choices``): frames letterboxed to 64x64 (``--fit``), a 1000-step cap (or the
env's registered limit when smaller), a sticky random explorer, the family's env settings (ALE: no sticky
actions), and, when ``--episodes`` is not given, enough episodes for about 20,000 frames.
"""

from __future__ import annotations

import json
import logging
import math
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Literal

import numpy as np
from tqdm import tqdm
from tyro.conf import UseAppendAction

from simulacra import __version__, layout
from simulacra.data import state as st
from simulacra.data.envs import FITS, family_defaults, fitted_size, make_env, parse_env_kwargs, registered_limit
from simulacra.data.policies import POLICIES, make_policy
from simulacra.data.pool import EnvPool, deadline, uses_opengl
from simulacra.data.safety import MAX_RESOLUTION, check_output_folder, check_range, locked_output
from simulacra.data.store import INFO, Dataset, DatasetWriter, check_replaceable, is_dataset_folder
from simulacra.errors import DatasetError, SimulacraError
from simulacra.presets import WorldPreset, get_preset
from simulacra.spaces import ActionSpace

log = logging.getLogger(__name__)

MAX_SEED = 2**32 - 1
"""Reset seeds are handed to C envs that keep them in 32 bits."""
MAX_NUM_ENVS = 256
DEFAULT_PRESET = "breakout"
PRESET_EPISODES = 16
"""Episodes a preset records when --episodes is not given."""
GENERIC_CAP = 1000
"""Episode cap of an env without a preset (unless its registration declares a smaller limit)."""
TARGET_FRAMES = 20_000
"""Frames an env without a preset records when --episodes is not given: the low end of the 20k-50k
frames a 10-minute nano world wants."""
MAX_DEFAULT_EPISODES = 1000
PROGRESS_EVERY_S = 30.0
"""Seconds between the progress lines printed when output is not a terminal (no bar, no '\\r')."""
CONTENT_KEYS = ("env_id", "env_kwargs", "frame_source", "resolution", "fit", "max_episode_steps", "policy",
                "policy_kwargs")  # fmt: skip
"""What a stored episode's content depends on (besides its seed): --resume must find them unchanged."""


@dataclass
class RecordConfig:
    """Record trajectories from a real Gymnasium environment into a data set."""

    preset: str | None = DEFAULT_PRESET
    """World preset (breakout, pong, carracing, doom, pusht, crafter, fourrooms, minigrid, debug); not used with --env-id."""
    env_id: str | None = None
    """Any Gymnasium env id with image observations or rgb_array rendering (MODULE:ID imports MODULE); overrides --preset."""
    env_kwargs: UseAppendAction[list[list[str]]] = field(default_factory=list)
    """Settings for gymnasium.make: key=value items (values read as JSON: 0, true, [64,64]) or a JSON object; for ALE/... ids repeat_action_probability=0 unless given."""
    episodes: int | None = None
    """Complete episodes to record (default: 16 for a preset; for --env-id enough for about 20,000 frames)."""
    num_envs: int = 2
    """Env processes stepping in parallel."""
    seed: int = 0
    """Episode k is reset with seed + k; the whole data set is a function of this seed."""
    out: str | None = None
    """Data set directory (default: datasets/<preset or env name>)."""
    overwrite: bool = False
    """Replace an existing data set at --out (never a folder that holds anything else)."""
    resume: bool = False
    """Continue the interrupted recording at --out with the same options (a larger --episodes extends it)."""
    resolution: int | None = None
    """Frame size override (default: the preset's, 64; frames are square)."""
    fit: Literal["pad", "stretch", "crop"] | None = None
    """Non-square pictures: pad (black bars), stretch (squash) or crop (default: pad for --env-id, stretch for presets)."""
    max_episode_steps: int | None = None
    """Episode length cap override (default: the preset's; for --env-id 1000, or the env's smaller registered limit)."""
    policy: str | None = None
    """Exploration policy override: random, carracing, pusht (default: the preset's)."""
    sticky: float | None = None
    """For the random policy: probability of repeating the previous action (default: the preset's)."""
    state: str | None = None
    """The env's true state per frame (for the eval's state probes): auto, none, a reader name (ale_ram, car_racing, vizdoom, push_t, minigrid, miniworld, crafter, state_attribute, observation, generic) or module:function (default: the preset's, auto)."""
    env_timeout: float = 30.0
    """Seconds an env may take for one reset or step before recording stops with an error (start-up: twice that)."""

    def __post_init__(self):
        if self.env_id is not None:
            self.preset = None  # the config names the env, never a preset it did not use


def check_options(cfg: RecordConfig) -> None:
    """One line naming the option for any value out of range; runs before anything is read or written."""
    check_range("--episodes", cfg.episodes, 1)
    check_range("--num-envs", cfg.num_envs, 1, MAX_NUM_ENVS)
    check_range("--seed", cfg.seed, 0, MAX_SEED)
    _check_seed_range(cfg.seed, cfg.episodes)
    check_range("--resolution", cfg.resolution, 8, MAX_RESOLUTION)
    check_range("--max-episode-steps", cfg.max_episode_steps, 1)
    check_range("--sticky", cfg.sticky, 0.0, 1.0)
    check_range("--env-timeout", cfg.env_timeout, 0.001, 86400)
    if cfg.policy is not None and cfg.policy not in POLICIES:
        raise SimulacraError(f"--policy {cfg.policy!r} is unknown; known policies: {', '.join(sorted(POLICIES))}")
    if cfg.fit is not None and cfg.fit not in FITS:
        raise SimulacraError(f"--fit {cfg.fit!r} is unknown; choose one of {', '.join(FITS)}")
    if cfg.env_id is not None and not cfg.env_id.strip():
        raise SimulacraError("--env-id must not be empty")
    if cfg.out is not None and not cfg.out:
        raise SimulacraError("--out must not be empty")
    if cfg.resume and cfg.overwrite:
        raise SimulacraError("--resume continues the data set at --out and --overwrite replaces it: choose one")
    parse_env_kwargs(cfg.env_kwargs)  # one line for a malformed --env-kwargs
    st.check_spec(cfg.state)


def _check_seed_range(seed: int, episodes: int | None) -> None:
    if episodes is not None and seed + episodes - 1 > MAX_SEED:
        raise SimulacraError(f"--seed {seed} + --episodes {episodes} run past the largest seed {MAX_SEED}")


def resolve_preset(cfg: RecordConfig) -> WorldPreset:
    """The preset (or, for --env-id, the generic one) with the options applied. Imports nothing: the
    choices that need the env (a registered episode limit) are made once it is probed."""
    user_kwargs = parse_env_kwargs(cfg.env_kwargs)
    if cfg.env_id is not None:
        name = cfg.env_id.replace("/", "_").replace(":", "_").lower()
        defaults = {k: v for k, (v, _) in family_defaults(cfg.env_id).items()}
        base = WorldPreset(
            name=name,
            env_id=cfg.env_id,
            env_kwargs={**defaults, **user_kwargs},
            fit="pad",
            max_episode_steps=GENERIC_CAP,
            description="generic env",
        )
    else:
        base = get_preset(cfg.preset or DEFAULT_PRESET)
        if user_kwargs:
            base = replace(base, env_kwargs={**base.env_kwargs, **user_kwargs})
    over = {}
    if cfg.resolution is not None:
        over["resolution"] = cfg.resolution
    if cfg.fit is not None:
        over["fit"] = cfg.fit
    if cfg.max_episode_steps is not None:
        over["max_episode_steps"] = cfg.max_episode_steps
    if cfg.policy is not None and cfg.policy != base.policy:
        over["policy"], over["policy_kwargs"] = cfg.policy, {}
    if cfg.state is not None:
        over["state"] = cfg.state
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
        p.fit,
        p.state,
    )


# ---- the plan: every choice made before anything is written ----------------------------------------
@dataclass
class _Probe:
    space: ActionSpace
    source: str
    native_shape: tuple[int, ...]
    own_limit: int | None
    """The env's own step limit (MiniWorld's ``max_episode_steps`` attribute), if it has one."""
    registered_limit: int | None
    state_names: list[str] = field(default_factory=list)
    """The names of the true state variables its reader gave at the first frame (none: no state)."""
    has_lives: bool = False


@dataclass
class _Plan:
    cfg: RecordConfig
    """The options as given (--episodes may be None)."""
    p: WorldPreset
    out: Path
    episodes: int = 0
    probe: _Probe | None = None
    choices: dict = field(default_factory=dict)
    """What was chosen for the env and why (saved in info.json as record_choices)."""
    existing: Dataset | None = None
    """--resume: the data set being continued."""
    atomic: Callable = nullcontext
    """What an episode is written inside (interrupts wait for it to end)."""

    @property
    def generic(self) -> bool:
        return self.cfg.env_id is not None

    def record_config(self) -> dict:
        """The options that reproduce this data set: the printed and saved config."""
        resolved = replace(
            self.cfg,
            preset=None if self.generic else (self.cfg.preset or DEFAULT_PRESET),
            episodes=self.episodes,
        )
        return asdict(resolved)


def _prepare(cfg: RecordConfig) -> _Plan:
    """What can be checked before anything is read or written: the options, the preset, the output folder."""
    check_options(cfg)
    p = resolve_preset(cfg)
    make_policy(p.policy, **p.policy_kwargs)  # one line for options this policy does not take
    out = Path(layout.DATASETS_DIR / p.name if cfg.out is None else cfg.out)
    check_output_folder(out, "--out")
    check_replaceable(out, overwrite=True)  # never a folder of other files (the lock file would land there)
    return _Plan(cfg, p, out)


def _probe(cfg: RecordConfig, p: WorldPreset) -> _Probe:
    """Build the env here and take its first frame: one line if it (or its action space) is unusable."""
    t = 2 * cfg.env_timeout
    with deadline(t, lambda: f"env {p.env_id} did not start within {t:g} s (--env-timeout sets the limit)"):
        probe = _make(p)
        try:
            probe.reset(seed=cfg.seed)  # a first frame must come out before anything is written
            own = getattr(probe.unwrapped, "max_episode_steps", None)
            return _Probe(
                probe.space,
                probe.source,
                tuple(probe.native_shape or ()),
                own if isinstance(own, int) and not isinstance(own, bool) and own > 0 else None,
                registered_limit(p.env_id),
                list(probe.extras["state"]),
                probe.extras["lives"] is not None,
            )
        finally:
            probe.close()


def _choose(plan: _Plan) -> None:
    """The choices that need the probed env: an env without a preset gets its registered episode limit
    when smaller than the generic cap, and a default episode count; each is written down with its reason."""
    cfg, probe = plan.cfg, plan.probe
    p = plan.p
    limit = probe.registered_limit
    if plan.generic and cfg.max_episode_steps is None and limit is not None and limit < p.max_episode_steps:
        p = plan.p = replace(p, max_episode_steps=limit)
    cap = p.max_episode_steps
    effective = min(cap, probe.own_limit) if probe.own_limit else cap
    if cfg.episodes is not None:
        plan.episodes = cfg.episodes
    elif plan.existing is not None:
        plan.episodes = int(plan.existing.info.get("record_config", {}).get("episodes") or 0) or PRESET_EPISODES
    elif plan.generic:
        plan.episodes = max(1, min(MAX_DEFAULT_EPISODES, math.ceil(TARGET_FRAMES / effective)))
    else:
        plan.episodes = PRESET_EPISODES
    _check_seed_range(cfg.seed, plan.episodes)
    defaults = family_defaults(p.env_id) if plan.generic else {}
    user = parse_env_kwargs(cfg.env_kwargs)
    plan.choices = {
        "frame_source": probe.source,
        "native_frame_shape": list(probe.native_shape),
        "frame_shape": [p.resolution, p.resolution, 3],
        "fit": p.fit,
        "episode_cap": cap,
        "env_episode_limit": probe.own_limit,
        "registered_episode_limit": probe.registered_limit,
        "episodes_default": cfg.episodes is None,
        "env_kwargs_given": user,
        "env_kwargs_defaults": {k: v for k, (v, _) in defaults.items() if k not in user},
        "state": {
            "reader": st.auto_reader(p.env_id) if p.state == "auto" else p.state,
            "variables": len(probe.state_names),
            "lives": probe.has_lives,
        },
    }


def _check_existing(plan: _Plan) -> None:
    """Under the lock: whether --out may be written. --resume opens the data set to continue (and refuses
    one recorded otherwise); without it an existing data set is refused, naming --resume when it looks
    like an interrupted recording."""
    cfg, out = plan.cfg, plan.out
    if cfg.resume and (out / INFO).exists():
        ds = Dataset.open(out)
        if ds.info.get("source") != "record" or not isinstance(ds.info.get("record_config"), dict):
            raise DatasetError(f"--resume: {out} was not made by `simulacra record`; there is no recording to continue")
        plan.existing = ds
        return
    if cfg.resume:
        log.info("--resume: no data set at %s yet; recording from the first episode", out)
        check_replaceable(out, overwrite=False)
        return
    try:
        check_replaceable(out, cfg.overwrite)
    except DatasetError as e:
        hint = _resume_hint(out, cfg) if is_dataset_folder(out) and not cfg.overwrite else None
        if hint is None:
            raise
        raise DatasetError(hint) from e


def _resume_hint(out: Path, cfg: RecordConfig) -> str | None:
    try:
        ds = Dataset.open(out)
    except SimulacraError:
        return None
    saved = ds.info.get("record_config") if ds.info.get("source") == "record" else None
    if not isinstance(saved, dict):
        return None
    asked = cfg.episodes or saved.get("episodes")
    if not isinstance(asked, int) or len(ds) >= asked:
        return (
            f"{out} already holds a data set ({len(ds)} recorded episodes); pass --overwrite to replace it, "
            f"--resume --episodes N (more than {len(ds)}) to add to it, or --out elsewhere"
        )
    return (
        f"{out} already holds a data set with {len(ds)} of the {asked} episodes asked for (an interrupted or "
        f"shorter recording); pass --resume to record the other {asked - len(ds)}, --overwrite to replace it, "
        "or --out elsewhere"
    )


def _check_resumable(plan: _Plan) -> list[tuple[int, int]]:
    """--resume: the stored episodes as (k, length), in the order they were written; one line if the data
    set was recorded with other options (its episodes would not be those this command records)."""
    ds, cfg = plan.existing, plan.cfg
    saved_p, saved_cfg = ds.info.get("preset_config") or {}, ds.info["record_config"]
    now = _json(plan.p.to_dict())
    diffs = []
    for key in CONTENT_KEYS:
        old = saved_p.get(key, "stretch" if key == "fit" else None)  # data sets from before --fit stretched
        if old != now.get(key):
            diffs.append(f"{key} {_show(old)} -> {_show(now.get(key))}")
    for key, option in (("seed", "--seed"), ("num_envs", "--num-envs")):
        if saved_cfg.get(key) != getattr(cfg, key):
            diffs.append(f"{option} {_show(saved_cfg.get(key))} -> {_show(getattr(cfg, key))}")
    if list(ds.info.get("frame_shape", [])) != [plan.p.resolution, plan.p.resolution, 3]:
        diffs.append(f"frame shape {ds.info.get('frame_shape')} -> {[plan.p.resolution, plan.p.resolution, 3]}")
    if diffs:
        raise SimulacraError(
            f"--resume: {plan.out} was recorded with other options ({'; '.join(diffs)}); resume with the "
            "options it was recorded with, or pass --overwrite to start over"
        )
    done = []
    for e in ds.episodes:
        if e.seed is None or e.seed < cfg.seed or e.source != "record":
            raise SimulacraError(f"--resume: episode {e.index} of {plan.out} was not recorded by this command")
        done.append((e.seed - cfg.seed, e.length))
    return done


def _json(x):
    return json.loads(json.dumps(x, default=str))


def _show(v) -> str:
    return json.dumps(v, default=str) if not isinstance(v, str) else v


# ---- the schedule --------------------------------------------------------------------------------
def _replay(n: int, done: list[tuple[int, int]], where: Path) -> tuple[list[int], list[int], int]:
    """Where each of ``n`` lockstep envs stands after the episodes ``done`` ((k, length), in the order they
    were written): (episode k each env plays, the schedule step at which it began, the next k to hand out).

    The schedule of a recording is a function of episode lengths: all envs step together, env i starts
    with episode i, and each env that finishes (in order of env index, at the same step) is written and
    takes the next unplayed k. Stored episodes are a prefix of it; a resumed run restarts the episodes in
    progress at the step where they began, so every later episode finishes where it would have."""
    k_of, start, next_k = list(range(n)), [0] * n, n
    last = (-1, -1)
    for k, length in done:
        if k not in k_of:
            raise SimulacraError(
                f"--resume: the episodes in {where} are not the start of this recording's schedule (episode "
                f"{k} came too early; was it recorded with other --episodes or --num-envs?); --overwrite to start over"
            )
        i = k_of.index(k)
        event = (start[i] + length, i)
        if event <= last:
            raise SimulacraError(
                f"--resume: the episodes in {where} are not in the order this recording writes them "
                "(recorded with another --num-envs?); --overwrite to start over"
            )
        last = event
        start[i], k_of[i], next_k = event[0], next_k, next_k + 1
    return k_of, start, next_k


# ---- interrupts ----------------------------------------------------------------------------------
class Terminated(KeyboardInterrupt):
    """SIGTERM, handled as Ctrl-C: the recording stops, cleans up, and the CLI exits 130 with one line."""


class _Interrupts:
    """While a recording runs: SIGINT and SIGTERM raise (once) in the main thread, except inside
    :meth:`atomic` (writing an episode), which they end first; a second signal during the clean-up
    that follows is ignored, so the clean-up completes. Handlers someone else installed (a program that
    calls record_episodes) are left alone."""

    def __init__(self):
        self.fired: list[int] = []
        self.deferred: int | None = None
        self.depth = 0
        self.previous: dict = {}

    def _raise(self, signum: int):
        raise (Terminated if signum == signal.SIGTERM else KeyboardInterrupt)()

    def _on_signal(self, signum, frame):
        if self.fired:
            return
        self.fired.append(signum)
        if self.depth:
            self.deferred = signum
            return
        self._raise(signum)

    @contextmanager
    def atomic(self) -> Iterator[None]:
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1
        if not self.depth and self.deferred is not None:
            signum, self.deferred = self.deferred, None
            self._raise(signum)

    def __enter__(self) -> _Interrupts:
        if threading.current_thread() is threading.main_thread():
            for sig, ours in ((signal.SIGINT, signal.default_int_handler), (signal.SIGTERM, signal.SIG_DFL)):
                if signal.getsignal(sig) is ours:
                    self.previous[sig] = signal.signal(sig, self._on_signal)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


# ---- recording -----------------------------------------------------------------------------------
def _pool(cfg: RecordConfig, p: WorldPreset, episodes: int | None = None) -> EnvPool:
    n = min(cfg.num_envs, episodes or cfg.episodes or cfg.num_envs)
    context = None
    if uses_opengl(p.env_id):
        context = "spawn"
        log.info(
            "%s renders with OpenGL, which hangs in forked processes: starting its %d env process%s with 'spawn'",
            p.env_id,
            n,
            "es" if n > 1 else "",
        )
    return EnvPool(
        partial(_make, p),
        n,
        p.env_id,
        in_process=False,  # env code stuck in C cannot block Ctrl-C or a deadline here: workers are killed
        context=context,
        start_timeout=2 * cfg.env_timeout,
        step_timeout=cfg.env_timeout,
    )


def _info(plan: _Plan, space: ActionSpace) -> dict:
    p = plan.p
    return {
        "frame_shape": [p.resolution, p.resolution, 3],
        "action_space": space.to_json(),
        "env_id": p.env_id,
        "preset": None if plan.generic else p.name,
        "preset_config": p.to_dict(),
        "fps": p.fps,
        "source": "record",
        "record_config": {**plan.record_config(), "resume": False},
        "record_choices": plan.choices,
        "state_names": plan.probe.state_names,
        "simulacra_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def _write(plan: _Plan, progress: bool) -> Path:
    cfg, out = plan.cfg, plan.out
    done = _check_resumable(plan) if plan.existing is not None else []
    if len(done) >= plan.episodes:
        log.info("--resume: %s already holds %d episodes; nothing to record", out, len(done))
        return out
    n = min(cfg.num_envs, plan.episodes)
    schedule = _replay(n, done, out)
    envs = _pool(cfg, plan.p, plan.episodes)  # started (or failed) before the data set is created or replaced
    writer = None
    try:
        if plan.existing is not None:
            writer = DatasetWriter(out)
            if writer.info.get("record_config", {}).get("episodes") != plan.episodes:
                writer.info = {
                    **writer.info,
                    "record_config": {**writer.info["record_config"], "episodes": plan.episodes},
                }
                layout.atomic_write(out / INFO, json.dumps(writer.info, indent=2).encode())
        else:
            with plan.atomic():  # an interrupt waits until the writer is there to remove what it made
                writer = DatasetWriter(out, _info(plan, plan.probe.space), overwrite=cfg.overwrite)
        _run(envs, writer, plan, schedule, len(done), progress)
    except BaseException:
        envs.close(kill=True)
        if writer is not None and plan.existing is None and writer.next_index == 0:
            writer._clear()  # no complete episode: leave nothing that would block a retry
        raise
    envs.close()
    return out


def _record(cfg: RecordConfig, progress: bool, say: Callable[[str], None] | None) -> tuple[_Plan, Path]:
    with _Interrupts() as interrupts:
        plan = _prepare(cfg)
        plan.atomic = interrupts.atomic
        with locked_output(plan.out, "record"):
            _check_existing(plan)
            plan.probe = _probe(cfg, plan.p)
            _choose(plan)
            if say is not None:
                if plan.generic:
                    say("\n".join(describe_choices(plan)))
                say("record config: " + json.dumps({**plan.record_config(), "resolved_preset": plan.p.to_dict()}, indent=2))  # fmt: skip
            out = _write(plan, progress)
    more = _top_up(plan, out)
    if more is not None:
        if say is not None:
            say(more[1])
        plan, out = _record(more[0], progress, None)
    return plan, out


TOP_UP_BELOW = 0.9
"""A default-count recording whose episodes ended early tops itself up when it holds less than this
fraction of TARGET_FRAMES."""


def _top_up(plan: _Plan, out: Path) -> tuple[RecordConfig, str] | None:
    """--env-id without --episodes: when the episodes ended early (CartPole's random play falls within ~20
    steps), the options that record more of them, in order (``--resume --episodes N``: episode k is seeded
    seed+k, so the data set is what one longer recording gives), until about TARGET_FRAMES frames; and the
    line that says so. None when no more are needed."""
    cfg = plan.cfg
    if not plan.generic or cfg.episodes is not None or plan.existing is not None:
        return None
    ds = Dataset.open(out)
    if not len(ds) or ds.num_frames >= TOP_UP_BELOW * TARGET_FRAMES or len(ds) >= MAX_DEFAULT_EPISODES:
        return None
    mean = ds.num_frames / len(ds)
    n = min(MAX_DEFAULT_EPISODES, math.ceil(TARGET_FRAMES / mean))
    if n <= len(ds):
        return None
    note = (
        f"episodes ended early ({ds.num_frames:,} frames in {len(ds)} episodes, {mean:.0f} frames each): recording "
        f"episodes {len(ds)}..{n - 1} too, for about {TARGET_FRAMES:,} frames (the same as --resume --episodes {n})"
    )
    return replace(cfg, episodes=n, resume=True, overwrite=False), note


def record_episodes(cfg: RecordConfig, progress: bool = False) -> Path:
    """Record the episodes ``cfg`` asks for into ``cfg.out`` (default datasets/<preset>) and return that folder.

    Prints nothing; ``progress`` shows a tqdm bar on a terminal (and a line every 30 s elsewhere). One-line
    SimulacraError, before anything is written, for bad options, an existing data set (without
    ``overwrite`` or ``resume``), a folder of other files, a folder another writer holds, or an env
    simulacra cannot use (no pictures, a MultiDiscrete action space); and during recording for an env
    that stops answering (``env_timeout``). Interrupted, it keeps the complete episodes (or removes the
    empty data set it created) and re-raises KeyboardInterrupt (SIGTERM too, as :class:`Terminated`).
    """
    return _record(cfg, progress, None)[1]


def record(cfg: RecordConfig) -> Path:
    """The `simulacra record` verb: what it chose and why (for --env-id), the resolved config, a progress
    bar (or progress lines), and a summary with a suggestion when the data set is small for a world."""
    plan, out = _record(cfg, True, print)
    ds = Dataset.open(out)
    frames = ds.num_frames
    print(f"recorded {len(ds)} episodes to {out}  (next: simulacra data info {out})")
    if plan.generic and plan.choices.get("episodes_default") and frames < TOP_UP_BELOW * TARGET_FRAMES and len(ds):
        mean = ds.num_steps / len(ds)
        more = min(MAX_DEFAULT_EPISODES * 10, math.ceil(TARGET_FRAMES / (mean + 1)))
        print(
            f"  {frames:,} frames (episodes of {mean:.0f} steps on average); a 10-minute nano world wants "
            f"20k-50k frames: the same command with --resume --episodes {more} adds the rest (episode k is "
            f"seeded seed+k, so the result is the same as one longer recording)"
        )
    return out


# ---- what the verb says about its choices ----------------------------------------------------------
def _wxh(shape) -> str:
    return f"{shape[1]}x{shape[0]}" if len(shape) >= 2 else "?"


def describe_choices(plan: _Plan) -> list[str]:
    """Lines saying what `simulacra record --env-id X` chose for the env and why, and how to change it."""
    p, c, probe = plan.p, plan.choices, plan.probe
    native = probe.native_shape
    where = {"obs": "the observation", "render": "render() (the observations are not pictures)"}.get(
        probe.source,
        f"the observation's {probe.source[4:]!r} entry" if probe.source.startswith("obs:") else probe.source,
    )
    stored = f"{p.resolution}x{p.resolution}"
    if len(native) >= 2 and native[0] != native[1]:
        if p.fit == "pad":
            h, w = fitted_size(native[:2], (p.resolution, p.resolution), "pad")
            bars = "top and bottom" if h < p.resolution else "left and right"
            how = f"fit=pad: aspect ratio kept, content {w}x{h} with black bars {bars}"
        elif p.fit == "crop":
            how = "fit=crop: aspect ratio kept, the longer side's edges cut off"
        else:
            how = "fit=stretch: squashed to square, aspect ratio not kept"
        how += "; --fit pad|stretch|crop"
    else:
        how = "square already: resized"
    size = (
        f"{stored} ({'the default' if plan.cfg.resolution is None else '--resolution'}: world models take square "
        "frames whose side is a multiple of 16, and 64x64 keeps a 10-minute nano world fast; --resolution N)"
    )
    if p.resolution % 16:
        size += f"; {p.resolution} is not a multiple of 16, which training needs"
    if plan.cfg.max_episode_steps is not None:
        cap = f"at most {p.max_episode_steps} steps each (--max-episode-steps)"
    elif c["registered_episode_limit"] and p.max_episode_steps == c["registered_episode_limit"]:
        cap = f"at most {p.max_episode_steps} steps each (the env's registered limit; --max-episode-steps)"
    else:
        cap = (
            f"at most {p.max_episode_steps} steps each (simulacra's cap for an env without a preset: about a "
            "minute of play at 15 fps, long enough to show what the env does, short enough that a stuck "
            "explorer does not fill the data set with one scene; --max-episode-steps)"
        )
    if c["env_episode_limit"] and c["env_episode_limit"] < p.max_episode_steps:
        cap += f"; the env ends its own episodes after {c['env_episode_limit']} steps"
    if p.policy == "random":
        sticky = p.policy_kwargs.get("sticky", 0.75)
        runs = f", so a move lasts ~{1 / (1 - sticky):.0f} steps" if sticky < 1 else ""
        explorer = (
            f"random actions, each step repeating the last one with probability {sticky:g} (sticky{runs}); "
            "--sticky, --policy"
        )
    else:
        given = ", ".join(f"{k}={v}" for k, v in p.policy_kwargs.items())
        explorer = f"the {p.policy} explorer{f' ({given})' if given else ''}; --policy"
    settings = []
    defaults = family_defaults(p.env_id)
    for k, v in c["env_kwargs_defaults"].items():
        settings.append(f"{k}={v!r} added: {defaults[k][1]} (--env-kwargs {k}=... overrides it)")
    for k, v in c["env_kwargs_given"].items():
        settings.append(f"{k}={v!r} (--env-kwargs)")
    if probe.source in ("render",) or p.frame_source in ("auto", "render"):
        settings.append("render_mode='rgb_array' (so the env can draw frames)")
    frames_at_cap = plan.episodes * min(p.max_episode_steps, c["env_episode_limit"] or p.max_episode_steps)
    if c["episodes_default"] and plan.existing is None:
        count = (
            f"{plan.episodes} (default for a new env: up to {frames_at_cap:,} frames at the episode cap; a "
            f"10-minute nano world wants 20k-50k frames; if the episodes end early, more are recorded after "
            f"them until about {TARGET_FRAMES:,} frames, at most {MAX_DEFAULT_EPISODES} episodes; --episodes N)"
        )
    else:
        count = f"{plan.episodes} (up to {frames_at_cap:,} frames; --episodes)"
    st = c.get("state") or {}
    state = (
        f"{st['variables']} true state variables per frame from the {st['reader']} reader (for the eval's "
        "state probes; --state)"
        if st.get("variables")
        else "none found (the eval's state probes will be skipped; --state names a reader or module:function)"
    )
    return [
        f"record {p.env_id}: no preset, so simulacra's generic choices (each can be changed):",
        f"  frames    {where}, {_wxh(native)} -> stored {stored} ({how})",
        f"  size      {size}",
        f"  episodes  {cap}",
        f"  explorer  {explorer}",
        f"  settings  {'; '.join(settings) if settings else 'none (--env-kwargs key=value passes settings to gymnasium.make)'}",
        f"  count     {count}",
        f"  state     {state}",
    ]


# ---- the loop ------------------------------------------------------------------------------------
class _Lines:
    """Progress as a line every PROGRESS_EVERY_S seconds (output that is not a terminal: no '\\r')."""

    def __init__(self, total: int, done: int, desc: str):
        self.total, self.n, self.desc = total, done, desc
        self.t0 = self.last = time.monotonic()
        self.frames = 0

    def update(self, n: int, frames: int) -> None:
        self.n += n
        self.frames += frames
        now = time.monotonic()
        if now - self.last >= PROGRESS_EVERY_S and self.n < self.total:
            self.last = now
            log.info("%s: %d/%d episodes (%s frames, %.0f s)", self.desc, self.n, self.total, f"{self.frames:,}", now - self.t0)  # fmt: skip

    def set_postfix(self, **kw) -> None:
        pass

    def close(self) -> None:
        pass


def _run(envs: EnvPool, writer: DatasetWriter, plan: _Plan, schedule: tuple, done_count: int, progress: bool) -> None:
    desc = f"record {plan.p.name}"
    if progress and not sys.stderr.isatty():
        bar = _Lines(plan.episodes, done_count, desc)
    else:
        bar = tqdm(total=plan.episodes, initial=done_count, unit="ep", desc=desc, dynamic_ncols=True,
                   disable=not progress)  # fmt: skip
    try:
        _loop(envs, writer, plan, schedule, done_count, bar)
    except BaseException:
        bar.leave = False  # clear the bar, so the error line that follows stands alone
        raise
    finally:
        bar.close()


def _loop(envs: EnvPool, writer: DatasetWriter, plan: _Plan, schedule: tuple, done_count: int, bar) -> None:
    """Step the envs on the recording's schedule (see :func:`_replay`): in lockstep, except after a
    resume, where the envs behind on the schedule step alone until they catch up."""
    cfg, p, space, target = plan.cfg, plan.p, plan.probe.space, plan.episodes
    n = envs.num_envs
    episode_of, clock, next_k = list(schedule[0]), list(schedule[1]), schedule[2]
    playing = np.array([k < target for k in episode_of])  # the others have nothing left to play
    obs = envs.reset([cfg.seed + k for k in episode_of], playing)
    bufs = [_new_buffer(obs[i], envs.extras[i]) if playing[i] else None for i in range(n)]
    steps = 0
    while done_count < target:
        now = min(clock[i] for i in range(n) if playing[i])
        mask = playing & (np.array(clock) == now)
        chosen = envs.explore_actions(mask)
        idx = np.flatnonzero(mask)
        stacked = np.stack([np.asarray(chosen[i]) for i in idx])
        actions = [None] * n
        for j, i in enumerate(idx):
            actions[i] = stacked[j]
        obs, rew, term, trunc = envs.step(actions, mask)
        steps += len(idx)
        reset_mask = np.zeros(n, dtype=bool)
        seeds: list[int | None] = [None] * n
        for i in idx:
            clock[i] += 1
            b = bufs[i]
            b["frames"].append(obs[i])
            b["actions"].append(actions[i])
            b["rewards"].append(rew[i])
            b["terminated"].append(term[i])
            b["truncated"].append(trunc[i])
            _add_extras(b, envs.extras[i])
            if not (term[i] or trunc[i]):
                continue
            k = episode_of[i]
            with plan.atomic():  # an interrupt waits for the episode to be on disk, shard and manifest line
                ep = writer.add_episode(
                    np.stack(b["frames"]),
                    np.asarray(b["actions"], space.dtype),
                    b["rewards"],
                    b["terminated"],
                    b["truncated"],
                    state=st.stack(b["state"], writer.info.get("state_names") or []),
                    lives=np.asarray(b["lives"], np.int32) if None not in b["lives"] else None,
                    seed=cfg.seed + k,
                    env_id=p.env_id,
                    preset=None if plan.generic else p.name,
                    policy=p.policy,
                    source="record",
                )
            log.debug("episode %d (seed %d): %d steps, return %.2f", k, cfg.seed + k, ep.length, ep.ret)
            done_count += 1
            if isinstance(bar, _Lines):
                bar.update(1, ep.length + 1)
            else:
                bar.update(1)
            episode_of[i], next_k = next_k, next_k + 1
            if episode_of[i] < target:
                reset_mask[i] = True
                seeds[i] = cfg.seed + episode_of[i]
            else:
                playing[i], bufs[i] = False, None
        bar.set_postfix(steps=steps, refresh=False)
        if reset_mask.any() and done_count < target:
            obs = envs.reset(seeds, reset_mask)
            for i in np.flatnonzero(reset_mask):
                bufs[i] = _new_buffer(obs[i], envs.extras[i])


def _new_buffer(frame: np.ndarray, extras: dict | None) -> dict:
    b = {"frames": [frame], "actions": [], "rewards": [], "terminated": [], "truncated": [], "state": [], "lives": []}
    _add_extras(b, extras)
    return b


def _add_extras(b: dict, extras: dict | None) -> None:
    """The true state and lives at the frame just appended (per frame: one more than the steps)."""
    b["state"].append((extras or {}).get("state") or {})
    b["lives"].append((extras or {}).get("lives"))
