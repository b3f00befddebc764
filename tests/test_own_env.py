"""A new user's own environment, first class: `record --env-id` as good as a preset.

Env settings from the command line (--env-kwargs, the ALE default of no sticky actions), interrupts that
stop a recording at once and leave no orphan workers nor a data set that blocks a retry, --resume that
finishes an interrupted recording byte for byte as an uninterrupted one, frames that keep their aspect
ratio (--fit), a config that names the env and not a preset, guidance printed for a new env, and logs
without carriage returns. Fake envs live in a module written to a temporary folder, so subprocesses (and
their env workers) import them by ``MODULE:ID``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_one_line_error, run_cli
from PIL import Image

from simulacra.data.envs import parse_env_kwargs, to_rgb
from simulacra.data.store import INFO, MANIFEST, Dataset
from simulacra.errors import SimulacraError
from simulacra.layout import LOCK_NAME

SIM = [sys.executable, "-m", "simulacra.cli"]
MODULE = "simulacra_fake_envs"

FAKE_ENVS = '''
import json, os, time
import gymnasium as gym
import numpy as np


class Fake(gym.Env):
    """Episodes of 5..11 steps (from the reset seed), frames that encode the step and a seeded state."""

    metadata = {"render_modes": ["rgb_array"]}
    action_space = gym.spaces.Discrete(3)

    def __init__(self, render_mode=None, delay=0.0, base=5, shape=(16, 16), **settings):
        self.render_mode, self.delay, self.base, self.shape = render_mode, float(delay), int(base), tuple(shape)
        self.observation_space = gym.spaces.Box(0, 255, (*self.shape, 3), np.uint8)
        log = os.environ.get("FAKE_ENV_LOG")
        if log:
            with open(log, "a") as f:
                f.write(json.dumps({"pid": os.getpid(), "render_mode": render_mode, **settings}) + "\\n")

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        self.length = self.base + int(self.np_random.integers(0, 7))
        self.state = self.np_random.integers(0, 256, size=3)
        return self._obs(), {}

    def _obs(self):
        f = np.zeros((*self.shape, 3), np.uint8)
        f[...] = self.state
        f[0, 0, 0] = self.t % 256
        return f

    def step(self, action):
        if self.delay:
            time.sleep(self.delay)
        self.t += 1
        self.state = (self.state + int(action) * 37 + 11) % 256
        return self._obs(), float(action), self.t >= self.length, False, {}


class Wide(Fake):
    """80x60 pictures (width x height): grey, with a white 20x20 square in the middle."""

    def __init__(self, render_mode=None):
        super().__init__(render_mode, shape=(60, 80))

    def _obs(self):
        f = np.full((60, 80, 3), 100, np.uint8)
        f[20:40, 30:50] = 250
        return f


gym.register("Fake-v0", entry_point=Fake)
gym.register("Wide-v0", entry_point=Wide)
'''


@pytest.fixture(scope="module")
def fake_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fake_envs")
    (folder / f"{MODULE}.py").write_text(FAKE_ENVS)
    sys.path.insert(0, str(folder))
    yield folder
    sys.path.remove(str(folder))


@pytest.fixture
def env(fake_dir, tmp_path, monkeypatch):
    """os.environ for a subprocess that can import the fake envs; FAKE_ENV_LOG collects their settings."""
    log = tmp_path / "env_log.jsonl"
    monkeypatch.setenv("FAKE_ENV_LOG", str(log))
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(fake_dir), os.environ.get("PYTHONPATH", "")]),
        "FAKE_ENV_LOG": str(log),
    }


def _fingerprint(root: Path) -> dict:
    """sha256 of every file of a data set but info.json (it holds a timestamp) and a writer lock."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name not in (INFO, LOCK_NAME)
    }


def _config(out: str) -> dict:
    """The JSON the verb prints after 'record config:'."""
    text = out[out.index("record config: ") + len("record config: ") :]
    return json.JSONDecoder().raw_decode(text)[0]


# ---- env settings from the command line --------------------------------------------------------------------------
def test_env_kwargs_parse_json_and_key_value_items():
    assert parse_env_kwargs([["repeat_action_probability=0", "frameskip=4"]]) == {
        "repeat_action_probability": 0,
        "frameskip": 4,
    }
    got = parse_env_kwargs([['{"a": 1, "b": [1, 2]}'], ["c=x,d=[3,4],e=true", "f=None"], ["a=2"]])
    assert got == {"a": 2, "b": [1, 2], "c": "x", "d": [3, 4], "e": True, "f": None}
    assert parse_env_kwargs({"k": 1}) == {"k": 1}
    for bad in (["novalue"], ["=3"], ['{"a": 1'], ["[1, 2]"]):
        with pytest.raises(SimulacraError, match="--env-kwargs"):
            parse_env_kwargs(bad)


def test_env_kwargs_reach_gym_make(tmp_path, capsys, env):
    args = ["record", "--env-id", f"{MODULE}:Fake-v0", "--episodes", "2", "--num-envs", "2", "--out", tmp_path / "ds"]
    code, out, err = run_cli(capsys, *args, "--env-kwargs", "alpha=1", "beta=x,gamma=[1,2]",
                             "--env-kwargs", '{"flag": true, "delta": 0.5}')  # fmt: skip
    assert code == 0, err
    made = [json.loads(line) for line in Path(env["FAKE_ENV_LOG"]).read_text().splitlines()]
    assert len(made) == 3  # the probe here and two env workers
    want = {"alpha": 1, "beta": "x", "gamma": [1, 2], "flag": True, "delta": 0.5, "render_mode": "rgb_array"}
    assert all({k: v for k, v in m.items() if k != "pid"} == want for m in made), made
    assert len({m["pid"] for m in made}) == 3
    info = json.loads((tmp_path / "ds" / INFO).read_text())
    assert {k: info["preset_config"]["env_kwargs"][k] for k in ("alpha", "flag")} == {"alpha": 1, "flag": True}
    assert "alpha=1 (--env-kwargs)" in out


def test_a_setting_the_env_does_not_take_is_one_line(tmp_path, capsys, env):
    code, _, err = run_cli(capsys, "record", "--env-id", f"{MODULE}:Wide-v0", "--episodes", "1", "--num-envs", "1",
                           "--env-kwargs", "nope=1", "--out", tmp_path / "ds")  # fmt: skip
    assert_one_line_error(code, err, "nope", "--env-kwargs")
    assert not (tmp_path / "ds").exists()


@pytest.mark.parametrize("given, want", [((), 0.0), (("--env-kwargs", "repeat_action_probability=0.25"), 0.25)])
def test_ale_ids_record_without_sticky_actions_unless_asked(tmp_path, capsys, given, want):
    pytest.importorskip("ale_py")
    out = tmp_path / "pong"
    code, printed, err = run_cli(capsys, "record", "--env-id", "ALE/Pong-v5", "--episodes", "1", "--num-envs", "1",
                                 "--max-episode-steps", "5", "--out", out, *given)  # fmt: skip
    assert code == 0, err
    info = json.loads((out / INFO).read_text())
    assert info["preset_config"]["env_kwargs"]["repeat_action_probability"] == want
    assert _config(printed)["resolved_preset"]["env_kwargs"]["repeat_action_probability"] == want
    defaults = info["record_choices"]["env_kwargs_defaults"]
    assert defaults == ({"repeat_action_probability": 0.0} if not given else {})
    if not given:
        assert "repeat_action_probability=0.0 added" in printed and "sticky actions" in printed
    from simulacra.data.envs import make_env

    env = make_env("ALE/Pong-v5", info["preset_config"]["env_kwargs"])  # what the workers were built with
    try:
        assert env.unwrapped.ale.getFloat("repeat_action_probability") == pytest.approx(want)
    finally:
        env.close()


# ---- interrupts --------------------------------------------------------------------------------------------------
def _children(pid: int) -> set[int]:
    """PIDs of the live processes whose parent is ``pid`` (from /proc)."""
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                found.add(int(entry))
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _wait_for(cond, seconds: float) -> bool:
    end = time.time() + seconds
    while time.time() < end:
        if cond():
            return True
        time.sleep(0.02)
    return False


def _lines(path: Path) -> int:
    try:
        return path.read_text().count("\n")
    except OSError:
        return 0


def _sigint_default() -> None:
    """The child takes SIGINT as a terminal's Ctrl-C would, even when the suite itself runs as a background
    job (``cmd &`` starts it with SIGINT ignored, which children inherit and Python then keeps)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _stop(proc: subprocess.Popen, how: int) -> tuple[float, str, str]:
    """Send ``how`` as a terminal (SIGINT to the whole process group) or `kill PID` (SIGTERM) would;
    (seconds until it exited, stdout, stderr)."""
    t0 = time.time()
    if how == signal.SIGINT:
        os.killpg(proc.pid, signal.SIGINT)
    else:
        os.kill(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    return time.time() - t0, out, err


SLOW = ["--env-kwargs", "delay=0.04", "--num-envs", "2", "--seed", "3"]


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupt_stops_at_once_keeps_episodes_and_resume_finishes_byte_identical(tmp_path, capsys, env, how):
    out, ref = tmp_path / "ds", tmp_path / "ref"
    args = ["record", "--env-id", f"{MODULE}:Fake-v0", "--episodes", "14", *SLOW]
    proc = subprocess.Popen([*SIM, *args, "--out", str(out)], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, preexec_fn=_sigint_default)  # fmt: skip
    assert _wait_for(lambda: _lines(out / MANIFEST) >= 3 or proc.poll() is not None, 60)
    workers = _children(proc.pid)
    assert proc.poll() is None, "the recording ended before it was interrupted; make it longer"
    assert len(workers) == 2, workers
    took, stdout, stderr = _stop(proc, how)
    assert took < 10, f"took {took:.1f} s to stop"
    assert proc.returncode == 130, (proc.returncode, stderr)
    assert stderr.strip().splitlines() == ["simulacra record: interrupted"], stderr
    assert "\r" not in stdout + stderr
    assert _wait_for(lambda: not any(_alive(w) for w in workers), 10), "env workers outlived the recorder"
    assert not (out / LOCK_NAME).exists()
    ds = Dataset.open(out)
    kept = len(ds)
    assert 3 <= kept < 14 and not ds.torn_tail and ds.verify()["ok"]

    # a plain retry is refused, naming --resume; a resume with other options is refused
    code, _, err = run_cli(capsys, *args, "--out", out)
    assert_one_line_error(code, err, "already holds a data set", f"{kept} of the 14", "--resume", "--overwrite")
    code, _, err = run_cli(capsys, *args, "--out", out, "--resume", "--resolution", "32")
    assert_one_line_error(code, err, "--resume", "other options", "resolution 64 -> 32")
    assert len(Dataset.open(out)) == kept

    code, _, err = run_cli(capsys, *args, "--out", out, "--resume")
    assert code == 0, err
    code, _, err = run_cli(capsys, *args, "--out", ref)
    assert code == 0, err
    assert _fingerprint(out) == _fingerprint(ref) and len(Dataset.open(out)) == 14


def test_resume_extends_a_finished_recording_as_one_longer_run(tmp_path, capsys, env):
    base = ["record", "--env-id", f"{MODULE}:Fake-v0", "--num-envs", "3", "--seed", "11"]
    code, _, err = run_cli(capsys, *base, "--episodes", "4", "--out", tmp_path / "ds")
    assert code == 0, err
    code, _, err = run_cli(capsys, *base, "--episodes", "9", "--out", tmp_path / "ds", "--resume")
    assert code == 0, err
    code, _, err = run_cli(capsys, *base, "--episodes", "9", "--out", tmp_path / "ref")
    assert code == 0, err
    got, ref = Dataset.open(tmp_path / "ds"), Dataset.open(tmp_path / "ref")
    assert len(got) == 9 and _fingerprint(tmp_path / "ds") == _fingerprint(tmp_path / "ref")
    # three envs, episodes of different lengths: they are stored in the order they finish, not by seed
    assert [e.seed for e in ref.episodes] != sorted(e.seed for e in ref.episodes)
    assert json.loads((tmp_path / "ds" / INFO).read_text())["record_config"]["episodes"] == 9
    code, _, err = run_cli(capsys, *base, "--episodes", "9", "--out", tmp_path / "ds", "--resume", "--seed", "12")
    assert_one_line_error(code, err, "--seed 11 -> 12")


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupt_before_any_episode_leaves_nothing_that_blocks_a_retry(tmp_path, capsys, env, how):
    out = tmp_path / "ds"
    args = ["record", "--env-id", f"{MODULE}:Fake-v0", "--episodes", "2", "--num-envs", "2"]
    proc = subprocess.Popen([*SIM, *args, "--env-kwargs", "delay=0.01", "base=100000", "--out", str(out)],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=_sigint_default)  # fmt: skip
    assert _wait_for(lambda: (out / MANIFEST).exists() or proc.poll() is not None, 60)
    workers = _children(proc.pid)
    took, _, stderr = _stop(proc, how)
    assert proc.returncode == 130 and took < 10, (proc.returncode, took, stderr)
    assert len(stderr.strip().splitlines()) == 1, stderr
    assert _wait_for(lambda: not any(_alive(w) for w in workers), 10)
    assert not out.exists() or not os.listdir(out), os.listdir(out)
    code, _, err = run_cli(capsys, *args, "--out", out)  # the retry just works
    assert code == 0, err
    assert len(Dataset.open(out)) == 2


# ---- frames: aspect ratio, and the config that names the env ----------------------------------------------------
def _box(mask: np.ndarray) -> tuple[int, int]:
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1


@pytest.mark.parametrize("fit", [None, "stretch", "crop"])
def test_non_square_frames_keep_their_aspect_ratio(tmp_path, capsys, env, fit):
    out = tmp_path / "wide"
    given = ["--fit", fit] if fit else []
    code, printed, err = run_cli(capsys, "record", "--env-id", f"{MODULE}:Wide-v0", "--episodes", "1",
                                 "--num-envs", "1", "--out", out, *given)  # fmt: skip
    assert code == 0, err
    ds = Dataset.open(out)
    frame = ds.frames(0)[0]
    assert frame.shape == (64, 64, 3)
    white = frame[..., 0] > 200
    h, w = _box(white)
    raw = np.full((60, 80, 3), 100, np.uint8)
    raw[20:40, 30:50] = 250
    if fit is None:  # pad: 80x60 -> 64x48 in the middle, black bars of 8 rows above and below
        assert (frame[:8] == 0).all() and (frame[56:] == 0).all()
        assert (frame[8:56] > 0).all()
        assert (h, w) == (16, 16)  # the square stays square
        assert ds.info["record_choices"]["fit"] == "pad"
        assert "black bars top and bottom" in printed and "80x60 -> stored 64x64" in printed
    elif fit == "stretch":  # the old behaviour: squashed to 64x64
        want = np.asarray(Image.fromarray(raw).resize((64, 64), Image.Resampling.BOX))
        np.testing.assert_array_equal(frame, want)
        assert h > w
    else:  # crop: no bars, the square stays square, the sides are cut
        assert (frame > 0).all() and abs(h - w) <= 1 and h > 16
    config = _config(printed)
    assert config["preset"] is None and config["env_id"] == f"{MODULE}:Wide-v0"
    assert config["resolved_preset"]["fit"] == (fit or "pad")
    assert ds.info["preset"] is None and ds.info["env_id"] == f"{MODULE}:Wide-v0"
    assert ds.info["record_config"]["preset"] is None
    assert all(e.preset is None and e.env_id == f"{MODULE}:Wide-v0" for e in ds.episodes)
    assert ds.info["record_choices"]["native_frame_shape"] == [60, 80, 3]


def test_square_pictures_are_the_same_under_every_fit():
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, size=(96, 96, 3), dtype=np.uint8)
    want = to_rgb(frame, (64, 64), "stretch")
    for fit in ("pad", "crop"):
        np.testing.assert_array_equal(to_rgb(frame, (64, 64), fit), want)


# ---- guidance and logs -------------------------------------------------------------------------------------------
def test_a_new_env_is_told_what_was_chosen_and_how_many_episodes(tmp_path, capsys, env):
    out = tmp_path / "ds"
    long = [
        "--env-kwargs",
        "base=3000",
    ]  # episodes of 3000-3006 steps: 2 at the cap fill 20,000 frames, 2 real ones do not
    code, printed, err = run_cli(capsys, "record", "--env-id", f"{MODULE}:Fake-v0", "--max-episode-steps", "10000",
                                 *long, "--out", out)  # fmt: skip
    assert code == 0, err
    for word in ("frames    the observation, 16x16", "episodes  at most 10000 steps", "explorer  random",
                 "sticky", "settings", "count     2 (default for a new env", "20k-50k frames", "state     "):  # fmt: skip
        assert word in printed, word
    assert _config(printed)["episodes"] == 2
    # the episodes ended early: it recorded more of them, in order, to about 20,000 frames
    assert "episodes ended early" in printed and "--resume --episodes 7" in printed
    ds = Dataset.open(out)
    assert len(ds) == 7 and ds.num_frames >= 20_000 and ds.info["record_config"]["episodes"] == 7
    assert "20k-50k frames: the same command" not in printed  # no hint left to give
    # ... and its episodes are those a single recording gives: the first 3 are 2 of the first pass and the
    # first topped-up one (each episode is a function of its seed, so 3 of them check the hand-over)
    code, _, err = run_cli(capsys, "record", "--env-id", f"{MODULE}:Fake-v0", "--max-episode-steps", "10000",
                           *long, "--episodes", "3", "--out", tmp_path / "three")  # fmt: skip
    assert code == 0, err
    three = Dataset.open(tmp_path / "three")
    by_seed = lambda d: {e.seed: d.frames(i) for i, e in enumerate(d.episodes)}  # noqa: E731
    a, b = by_seed(ds), by_seed(three)
    assert sorted(b) == [0, 1, 2] and all(np.array_equal(a[k], b[k]) for k in b)


def test_explicit_episode_counts_are_not_topped_up(tmp_path, capsys, env):
    code, printed, err = run_cli(capsys, "record", "--env-id", f"{MODULE}:Fake-v0", "--episodes", "3",
                                 "--out", tmp_path / "ds")  # fmt: skip
    assert code == 0, err
    assert len(Dataset.open(tmp_path / "ds")) == 3 and "episodes ended early" not in printed


@pytest.mark.skipif(importlib.util.find_spec("miniworld") is None, reason="needs the envs extra (miniworld)")
def test_miniworld_records_with_default_flags_headless_and_quiet(tmp_path):
    """Not imported here: its import opens an OpenGL context, which this test process must not hold."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYGLET_HEADLESS", "DISPLAY")}
    env["OMP_NUM_THREADS"] = "1"
    out = tmp_path / "mw"
    t0 = time.time()
    p = subprocess.run([*SIM, "record", "--env-id", "MiniWorld-FourRooms-v0", "--episodes", "1",
                        "--max-episode-steps", "20", "--out", str(out)], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    took = time.time() - t0
    assert p.returncode == 0, p.stdout + p.stderr
    assert took < 60, f"took {took:.0f} s"
    assert "\r" not in p.stdout + p.stderr
    assert "Falling back" not in p.stdout + p.stderr
    ds = Dataset.open(out)
    frames = ds.frames(0)
    assert len(ds) == 1 and frames.shape == (21, 64, 64, 3)
    assert (frames[:, :8] == 0).all() and (frames[:, 56:] == 0).all()  # 80x60 letterboxed
    assert frames[:, 8:56].std() > 3
    assert ds.state_names == ["agent_x", "agent_z", "agent_dir"]  # the agent's pose, for the eval's probes
    assert ds.arrays(0)["state"].shape == (21, 3)
