"""More than one process at a time, and processes that die or hang: one writer per folder (the second is
refused with one line naming the first's PID), stale locks and staging folders of killed processes taken
over or cleaned up, env workers that stop answering, and importers that never read outside their source.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import assert_one_line_error, make_synthetic, run_cli, snapshot
from test_bad_input_data import _lerobot, _map_images, _minari, _png, _videos, _write_mp4

from simulacra.data.store import MANIFEST, Dataset
from simulacra.errors import SimulacraError
from simulacra.layout import LOCK_NAME

SIM = [sys.executable, "-m", "simulacra.cli"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _start(*args, cwd, env=None) -> subprocess.Popen:
    return subprocess.Popen(
        [*SIM, *map(str, args)], cwd=cwd, env=env or ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _wait_for(cond, seconds=60.0):
    end = time.time() + seconds
    while time.time() < end:
        if cond():
            return True
        time.sleep(0.02)
    return False


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _lock(folder: Path, pid: int, verb="record") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    holder = {"pid": pid, "host": socket.gethostname(), "verb": verb, "since": time.time()}
    (folder / LOCK_NAME).write_text(json.dumps(holder))


# ---- two writers, one folder ----------------------------------------------------------------------------------
RECORD = ["record", "--preset", "debug", "--episodes", "12", "--num-envs", "1"]
LONG = 80  # episodes the first recorder takes (seconds, here) while the second ones are refused


def test_second_recorder_into_the_same_folder_is_refused_naming_the_first(tmp_path):
    out = tmp_path / "ds"
    first = _start(*RECORD, "--episodes", LONG, "--out", out, cwd=tmp_path)
    assert _wait_for(lambda: (out / LOCK_NAME).exists() or first.poll() is not None)
    assert first.poll() is None, "the first recorder ended before the second could start; record more episodes"
    for extra in ([], ["--overwrite"], ["--seed", "100"]):
        second = subprocess.run([*SIM, *RECORD, "--out", str(out), *extra], cwd=tmp_path, env=ENV,
                                capture_output=True, text=True, timeout=120)  # fmt: skip
        assert_one_line_error(second.returncode, second.stderr, f"PID {first.pid}", "being written")
    assert first.poll() is None, "the first recorder ended before the second ones were tried; raise LONG"
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    ds = Dataset.open(out)
    assert len(ds) == LONG and [e.index for e in ds.episodes] == list(range(LONG))
    assert [e.seed for e in ds.episodes] == list(range(LONG))  # nothing of the refused runs got in
    verify = subprocess.run([*SIM, "data", "verify", str(out)], env=ENV, capture_output=True, text=True, timeout=120)
    assert verify.returncode == 0 and "everything checks out" in verify.stdout, verify.stdout + verify.stderr
    assert not (out / LOCK_NAME).exists()


def test_two_recorders_started_together_one_wins(tmp_path):
    out = tmp_path / "ds"
    procs = [_start(*RECORD, "--seed", str(seed), "--out", out, cwd=tmp_path) for seed in (0, 50)]
    results = [(p, *p.communicate(timeout=240)) for p in procs]
    won = [p for p, _, _ in results if p.returncode == 0]
    lost = [(p, err) for p, _, err in results if p.returncode != 0]
    assert len(won) == 1 and len(lost) == 1, [(p.returncode, err) for p, _, err in results]
    p, err = lost[0]
    line = assert_one_line_error(p.returncode, err)
    assert f"PID {won[0].pid}" in line or "already holds a data set" in line, line
    ds = Dataset.open(out)
    seeds = [e.seed for e in ds.episodes]
    assert len(ds) == 12 and (seeds == list(range(12)) or seeds == list(range(50, 62)))
    assert ds.verify()["ok"]


def test_a_stale_lock_of_a_killed_recorder_is_taken_over(tmp_path, capsys):
    out = tmp_path / "ds"
    _lock(out, _dead_pid())
    code, _, err = run_cli(capsys, "record", "--preset", "debug", "--episodes", "1", "--num-envs", "1", "--out", out)
    assert code == 0, err
    assert len(Dataset.open(out)) == 1 and not (out / LOCK_NAME).exists()


def test_a_torn_lock_file_left_long_ago_is_taken_over(tmp_path, capsys):
    out = tmp_path / "ds"
    out.mkdir()
    (out / LOCK_NAME).write_text('{"pid": 12')
    os.utime(out / LOCK_NAME, (time.time() - 600, time.time() - 600))
    code, _, err = run_cli(capsys, "record", "--preset", "debug", "--episodes", "1", "--num-envs", "1", "--out", out)
    assert code == 0, err


def test_a_killed_recorder_leaves_a_lock_the_next_run_takes_over(tmp_path):
    out = tmp_path / "ds"
    proc = _start("record", "--preset", "debug", "--episodes", "200", "--num-envs", "2", "--out", out, cwd=tmp_path)
    assert _wait_for(lambda: (out / MANIFEST).exists() and (out / MANIFEST).read_text().count("\n") >= 2, 120)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert json.loads((out / LOCK_NAME).read_text())["pid"] == proc.pid
    p = subprocess.run([*SIM, *RECORD, "--episodes", "2", "--out", str(out), "--overwrite"], env=ENV,
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert len(Dataset.open(out)) == 2 and not (out / LOCK_NAME).exists()


def test_import_into_a_folder_being_written_is_refused(tmp_path, capsys):
    lr = _lerobot(tmp_path)
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _lock(out, holder.pid, verb="data import")
        before = snapshot(tmp_path)
        code, _, err = run_cli(capsys, "data", "import", lr, "--out", out)
        assert_one_line_error(code, err, f"PID {holder.pid}")
        assert snapshot(tmp_path) == before and not list(tmp_path.glob(".out.partial-*"))
    finally:
        holder.kill()
        holder.wait()
    code, _, err = run_cli(capsys, "data", "import", lr, "--out", out)  # the holder is gone: its lock is taken over
    assert code == 0, err
    assert len(Dataset.open(out)) == 2 and not (out / LOCK_NAME).exists()


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "entry-by-entry"])
def test_import_holds_the_lock_until_its_data_set_is_in_place(tmp_path, monkeypatch, exchange):
    """While the staged import is swapped in, out's lock stays in force (a second writer is refused), with
    the atomic swap and with the fallback for systems without one."""
    from simulacra.data.interop import common

    if not exchange:
        monkeypatch.setattr(common, "_exchange", lambda a, b: False)
    lr = _lerobot(tmp_path)
    out = tmp_path / "out"
    seen = {}
    publish = common._publish

    def spy(tmp, dest):
        publish(tmp, dest)
        seen["lock_after_swap"] = json.loads((dest / LOCK_NAME).read_text())["pid"]

    monkeypatch.setattr(common, "_publish", spy)
    from simulacra.data.interop import import_lerobot

    import_lerobot(str(lr), str(out))
    assert seen["lock_after_swap"] == os.getpid() and not (out / LOCK_NAME).exists()
    make_synthetic(tmp_path / "again", lengths=(2,))  # and an --overwrite import swaps over an old data set
    import_lerobot(str(lr), str(tmp_path / "again"), overwrite=True)
    assert len(Dataset.open(tmp_path / "again")) == 2 and Dataset.open(tmp_path / "again").verify()["ok"]
    assert sorted(os.listdir(tmp_path / "again")) == ["data", "episodes.jsonl", "info.json"]
    assert not list(tmp_path.glob(".again.partial-*")) and not list(tmp_path.glob(".out.partial-*"))


def test_killed_imports_leave_partials_the_next_import_removes_and_verify_reports(tmp_path, capsys):
    lr = _lerobot(tmp_path)
    out = tmp_path / "datasets" / "lr"
    code, _, err = run_cli(capsys, "data", "import", lr, "--out", out)
    assert code == 0, err
    dead = out.parent / f".lr.partial-{_dead_pid()}"
    dead.mkdir()
    (dead / "info.json").write_text("{}")
    alive = out.parent / f".lr.partial-{os.getppid()}"  # a live process's staging folder is never touched
    alive.mkdir()
    code, out_text, err = run_cli(capsys, "data", "verify", out)
    assert_one_line_error(code, err, dead.name)
    assert dead.name in out_text and alive.name not in out_text
    code, _, err = run_cli(capsys, "data", "import", lr, "--out", out, "--overwrite")
    assert code == 0, err
    assert not dead.exists() and alive.exists()
    assert run_cli(capsys, "data", "verify", out)[0] == 0


# ---- envs that hang ---------------------------------------------------------------------------------------------
SLEEPY = """
import os, time
import gymnasium as gym
import numpy as np

class Sleepy(gym.Env):
    metadata = {"render_modes": ["rgb_array"]}
    observation_space = gym.spaces.Box(0, 255, (16, 16, 3), np.uint8)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, block="step", render_mode=None):
        import multiprocessing as mp

        self.block, self.render_mode = block, render_mode
        with open(os.environ["SLEEPY_PIDS"], "a") as f:
            f.write(f"{os.getpid()}\\n")
        if block == "init" or (block == "worker-init" and mp.parent_process() is not None):
            time.sleep(3600)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros((16, 16, 3), np.uint8), {}

    def step(self, action):
        if self.block == "step":
            time.sleep(3600)
        return np.zeros((16, 16, 3), np.uint8), 0.0, False, False, {}

gym.register("SleepyStep-v0", entry_point=Sleepy, kwargs={"block": "step"})
gym.register("SleepyWorkerInit-v0", entry_point=Sleepy, kwargs={"block": "worker-init"})
gym.register("SleepyInit-v0", entry_point=Sleepy, kwargs={"block": "init"})
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purpose
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize(
    "env_id, num_envs, what",
    [("SleepyStep-v0", 2, "did not finish a step"), ("SleepyStep-v0", 1, "did not finish a step"),
     ("SleepyWorkerInit-v0", 2, "did not start"), ("SleepyInit-v0", 1, "did not start")],
)  # fmt: skip
def test_an_env_that_stops_answering_ends_the_recording_with_one_line(tmp_path, env_id, num_envs, what):
    (tmp_path / "sleepy_env.py").write_text(SLEEPY)
    pids = tmp_path / "pids"
    env = {**ENV, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ENV.get('PYTHONPATH', '')}", "SLEEPY_PIDS": str(pids)}
    args = ["record", "--env-id", f"sleepy_env:{env_id}", "--episodes", "2", "--num-envs", str(num_envs),
            "--env-timeout", "1.5", "--out", str(tmp_path / "ds")]  # fmt: skip
    proc = subprocess.Popen([*SIM, *args], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip
    t0 = time.time()
    _, err = proc.communicate(timeout=60)
    took = time.time() - t0
    line = assert_one_line_error(proc.returncode, err, f"sleepy_env:{env_id}", what, "--env-timeout")
    if num_envs > 1:
        assert "--num-envs 1" in line
    assert took < 30, f"took {took:.0f} s"
    workers = [int(x) for x in pids.read_text().split()]
    assert len(workers) >= num_envs
    assert _wait_for(lambda: not any(_alive(w) for w in workers), 10), "orphan env workers left running"
    assert not (tmp_path / "ds").exists() or not Dataset.open(tmp_path / "ds").episodes


def test_miniworld_gets_headless_pyglet_before_it_is_imported(monkeypatch):
    from simulacra.data import envs

    monkeypatch.delenv("PYGLET_HEADLESS", raising=False)
    with pytest.raises(SimulacraError):  # not installed, or no such env: the variable is set either way
        envs.make_env("MiniWorld-NoSuchThing-v0")
    assert os.environ.get("PYGLET_HEADLESS") == "1"


def test_opengl_envs_get_spawned_workers(monkeypatch, caplog):
    from simulacra.data import pool, record

    started = {}

    class FakePool:
        def __init__(self, make, n, env_id, **kw):
            started.update(kw, n=n)

    monkeypatch.setattr(record, "EnvPool", FakePool)
    cfg = record.RecordConfig(env_id="MiniWorld-FourRooms-v0", episodes=4, num_envs=2)
    p = record.resolve_preset(cfg)
    with caplog.at_level("INFO", logger="simulacra.data.record"):
        record._pool(cfg, p)
    assert started["context"] == "spawn" and not started["in_process"] and "OpenGL" in caplog.text
    assert pool.uses_opengl("MiniWorld-FourRooms-v0")
    cfg = record.RecordConfig(preset="debug", episodes=4, num_envs=2)
    monkeypatch.setattr(pool, "GL_MODULES", ())
    record._pool(cfg, record.resolve_preset(cfg))
    assert started["context"] is None  # others keep the platform's default (fork on Linux): fast and proven


# ---- importers never read outside their source -------------------------------------------------------------
def _sentinel(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    os.utime(path, (1, path.stat().st_mtime))  # atime before mtime: any read moves it (relatime)
    return path


def _untouched(path: Path) -> bool:
    return path.stat().st_atime == 1


def _frame_png() -> bytes:
    return _png(np.full((16, 16, 3), 99, np.uint8))


def _case_lerobot_image_relative(t):
    lr, secret = _lerobot(t), _sentinel(t / "secret.png", _frame_png())
    _map_images(lr, lambda k, item: {"bytes": None, "path": "../secret.png"})
    return "lerobot", lr, secret, "../secret.png"


def _case_lerobot_image_absolute(t):
    lr, secret = _lerobot(t), _sentinel(t / "secret.png", _frame_png())
    _map_images(lr, lambda k, item: {"bytes": None, "path": str(secret)})
    return "lerobot", lr, secret, str(secret)


def _case_lerobot_image_symlink(t):
    lr, secret = _lerobot(t), _sentinel(t / "secret.png", _frame_png())
    (lr / "images").mkdir()
    (lr / "images/0.png").symlink_to(secret)
    _map_images(lr, lambda k, item: {"bytes": None, "path": "images/0.png"})
    return "lerobot", lr, secret, "symlink"


def _video_case(t, template: str, where: Path):
    lr = _lerobot(t, video=True)
    where.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(lr / "videos/observation.image/chunk-000/file-000.mp4", where)
    secret = _sentinel(where, where.read_bytes())
    info = json.loads((lr / "meta/info.json").read_text())
    info["video_path"] = template
    (lr / "meta/info.json").write_text(json.dumps(info))
    return "lerobot", lr, secret, template


def _case_lerobot_video_relative(t):
    return _video_case(t, "../other/stolen.mp4", t / "other/stolen.mp4")


def _case_lerobot_video_deep(t):
    return _video_case(t, "../../../../../../../../" + str(t / "stolen.mp4").lstrip("/"), t / "stolen.mp4")


def _case_lerobot_video_absolute(t):
    return _video_case(t, str(t / "stolen.mp4"), t / "stolen.mp4")


def _case_lerobot_video_symlink(t):
    fmt, lr, secret, _ = _video_case(t, "videos/observation.image/chunk-000/file-000.mp4", t / "stolen.mp4")
    video = lr / "videos/observation.image/chunk-000/file-000.mp4"
    video.unlink()
    video.symlink_to(secret)
    return fmt, lr, secret, "symlink"


def _case_lerobot_parquet_symlink(t):
    lr = _lerobot(t)
    data = lr / "data/chunk-000/file-000.parquet"
    secret = _sentinel(t / "stolen.parquet", data.read_bytes())
    data.unlink()
    data.symlink_to(secret)
    return "lerobot", lr, secret, "symlink"


def _case_lerobot_data_dir_symlink(t):
    lr = _lerobot(t)
    (t / "elsewhere").mkdir()
    secret = _sentinel(t / "elsewhere/file-000.parquet", (lr / "data/chunk-000/file-000.parquet").read_bytes())
    shutil.rmtree(lr / "data")
    (lr / "data").mkdir()
    (lr / "data/chunk-000").symlink_to(t / "elsewhere")
    return "lerobot", lr, secret, str(lr)  # refused as a symlink out, or not followed by the glob at all


def _case_lerobot_info_symlink(t):
    lr = _lerobot(t)
    secret = _sentinel(t / "info.json", (lr / "meta/info.json").read_bytes())
    (lr / "meta/info.json").unlink()
    (lr / "meta/info.json").symlink_to(secret)
    return "lerobot", lr, secret, "symlink"


def _case_minari_hdf5_symlink(t):
    mn = _minari(t)
    secret = _sentinel(t / "stolen.hdf5", (mn / "data/main_data.hdf5").read_bytes())
    (mn / "data/main_data.hdf5").unlink()
    (mn / "data/main_data.hdf5").symlink_to(secret)
    return "minari", mn, secret, "symlink"


def _case_minari_data_dir_symlink(t):
    mn = _minari(t)
    shutil.move(mn / "data", t / "elsewhere")
    (mn / "data").symlink_to(t / "elsewhere")
    secret = _sentinel(t / "elsewhere/main_data.hdf5", (t / "elsewhere/main_data.hdf5").read_bytes())
    return "minari", mn, secret, "symlink"


def _case_minari_external_link(t):
    mn = _minari(t)
    other = _minari(t, "other")
    secret = other / "data/main_data.hdf5"
    with h5py.File(mn / "data/main_data.hdf5", "a") as f:
        del f["episode_0"]["observations"]
        f["episode_0"]["observations"] = h5py.ExternalLink(str(secret), "/episode_0/observations")
    _sentinel(secret, secret.read_bytes())
    return "minari", mn, secret, "links to another file"


def _case_minari_external_storage(t):
    mn = _minari(t)
    secret = _sentinel(t / "passwd", bytes(range(256)) * 15)
    with h5py.File(mn / "data/main_data.hdf5", "a") as f:
        del f["episode_0"]["observations"]
        f["episode_0"].create_dataset("observations", shape=(5, 16, 16, 3), dtype=np.uint8,
                                      external=[(str(secret), 0, 5 * 16 * 16 * 3)])  # fmt: skip
    return "minari", mn, secret, "other files"


def _case_videos_symlink(t):
    folder = _videos(t)
    _write_mp4(t / "stolen.mp4")
    secret = _sentinel(t / "stolen.mp4", (t / "stolen.mp4").read_bytes())
    (folder / "b.mp4").symlink_to(secret)
    return "videos", folder, secret, "symlink"


def _case_videos_actions_symlink(t):
    folder = _videos(t)
    (folder / "a.actions.npy").unlink()
    np.save(t / "stolen.npy", np.array([0, 1, 0, 1]))
    secret = _sentinel(t / "stolen.npy", (t / "stolen.npy").read_bytes())
    (folder / "a.actions.npy").symlink_to(secret)
    return "videos", folder, secret, "symlink"


def _case_videos_space_symlink(t):
    folder = _videos(t)
    secret = _sentinel(t / "space.json", b'{"type": "discrete", "n": 2}')
    (folder / "action_space.json").symlink_to(secret)
    return "videos", folder, secret, "symlink"


ESCAPES = {name[len("_case_") :]: fn for name, fn in dict(globals()).items() if name.startswith("_case_")}


@pytest.mark.parametrize("case", list(ESCAPES))
def test_importers_never_open_files_outside_the_source(tmp_path, capsys, case):
    fmt, source, secret, names = ESCAPES[case](tmp_path)
    assert _untouched(secret)
    before = snapshot(source)
    code, _, err = run_cli(capsys, "data", "import", source, "--format", fmt, "--out", tmp_path / "out")
    assert_one_line_error(code, err, names)
    assert _untouched(secret), "the file outside the source was read"
    assert not (tmp_path / "out").exists() and snapshot(source) == before


def test_the_store_never_opens_shards_outside_the_data_set(tmp_path, capsys):
    root = tmp_path / "ds"
    make_synthetic(root, lengths=(4, 3), frame=16, block_frames=4)
    lines = [json.loads(line) for line in (root / MANIFEST).read_text().splitlines()]
    secret = _sentinel(tmp_path / "outside.sep", (root / lines[0]["file"]).read_bytes())
    for bad in ("../outside.sep", str(secret), "data/../../outside.sep"):
        lines[0]["file"] = bad
        (root / MANIFEST).write_text("".join(json.dumps(d) + "\n" for d in lines))
        for verb in ("verify", "info", "view"):
            code, _, err = run_cli(
                capsys, "data", verb, root, *(["--out", tmp_path / "p.gif"] if verb == "view" else [])
            )
            assert_one_line_error(code, err, "episodes.jsonl: line 1")
    link = root / "data/chunk-000/episode_000009.sep"
    link.symlink_to(secret)
    lines[0]["file"] = "data/chunk-000/episode_000009.sep"
    (root / MANIFEST).write_text("".join(json.dumps(d) + "\n" for d in lines))
    code, _, err = run_cli(capsys, "data", "verify", root)
    assert_one_line_error(code, err, "symlink")
    assert _untouched(secret)
