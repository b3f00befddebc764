"""Tiny real runs of the CLI verbs, and the SIGKILL crash test of `simulacra record`."""

import json
import os
import signal
import subprocess
import sys
import time

import imageio.v3 as iio
import numpy as np
import pytest

from simulacra.cli import PLANNED
from simulacra.data import Dataset

SIM = [sys.executable, "-m", "simulacra.cli"]


def run(*args, cwd, check=True):
    p = subprocess.run([*SIM, *args], cwd=cwd, capture_output=True, text=True, timeout=300)
    if check and p.returncode != 0:
        raise AssertionError(f"{args} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("cli")
    p = run("record", "--preset", "debug", "--episodes", "3", "--num-envs", "2", "--seed", "7", cwd=cwd)
    assert "recorded 3 episodes" in p.stdout and '"seed": 7' in p.stdout  # resolved config is printed
    return cwd


def test_record_then_info_uses_latest_dataset(recorded):
    p = run("data", "info", "--json", cwd=recorded)
    info = json.loads(p.stdout[p.stdout.index("{") :])
    assert info["episodes"] == 3 and info["preset"] == "debug" and info["frame_shape"] == [64, 64, 3]
    assert info["steps"] >= 3 and info["seeds"] == [7, 8, 9]
    saved = json.loads((recorded / "datasets/debug/info.json").read_text())
    assert saved["record_config"]["seed"] == 7 and saved["preset_config"]["env_id"] == "ALE/Breakout-v5"


def test_view_writes_a_watchable_video(recorded):
    run("data", "view", "--out", "prev.mp4", "--episodes", "3", "--scale", "2", cwd=recorded)
    frames = list(iio.imiter(recorded / "prev.mp4"))
    assert len(frames) >= 10 and frames[0].shape[0] >= 128 and np.std(frames[5]) > 5
    run("data", "view", "--out", "prev.gif", "--max-frames", "20", cwd=recorded)
    gif = iio.imread(recorded / "prev.gif")
    assert gif.shape[0] == 20


def test_verify_ok(recorded):
    p = run("data", "verify", "datasets/debug", cwd=recorded)
    assert "3/3 episodes ok" in p.stdout and "everything checks out" in p.stdout


def test_record_refuses_to_overwrite(recorded):
    p = run("record", "--preset", "debug", "--episodes", "1", cwd=recorded, check=False)
    assert p.returncode == 1 and "already holds a data set" in p.stderr and len(p.stderr.strip().splitlines()) == 1


def test_help_lists_every_verb_and_planned_ones_say_so(tmp_path):
    p = run("--help", cwd=tmp_path)
    for verb in ["record", "data", *PLANNED]:
        assert f"  {verb}" in p.stdout
    for verb in PLANNED:
        q = run(verb, cwd=tmp_path, check=False)
        assert q.returncode == 2 and "not built yet" in q.stderr
    assert run("record", "--help", cwd=tmp_path).stdout.count("--episodes") >= 1
    q = run("record", "--preset", "nope", cwd=tmp_path, check=False)
    assert q.returncode == 1 and "unknown preset 'nope'" in q.stderr


def test_sigkill_loses_only_episodes_in_progress(tmp_path):
    """Kill recording hard while it writes; the data set still loads and verify says what was lost."""
    out = tmp_path / "ds"
    args = [*SIM, "record", "--preset", "debug", "--episodes", "200", "--num-envs", "2", "--out", str(out)]
    proc = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    manifest = out / "episodes.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline:
        if manifest.exists() and manifest.read_text().count("\n") >= 4:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    ds = Dataset.open(out)
    assert 4 <= len(ds) < 200
    for i in range(len(ds)):  # every registered episode is whole
        ep = ds.episode(i)
        assert len(ep["frames"]) == ds.episodes[i].length + 1
    p = run("data", "verify", str(out), "--json", cwd=tmp_path, check=False)
    report = json.loads(p.stdout)
    assert report["intact"] and report["episodes_ok"] == len(ds) and not report["problems"]
    # whatever the kill interrupted is listed as lost, never as corrupt (and verify fails until it is
    # cleaned up); --repair leaves it clean
    assert p.returncode == (1 if report["lost"] else 0)
    p = run("data", "verify", str(out), "--repair", "--json", cwd=tmp_path)
    assert json.loads(p.stdout)["lost"] == [] and json.loads(p.stdout)["ok"]
    assert not (out / ".simulacra.lock").exists()  # the killed recorder's lock was taken over and released


def test_a_failing_process_of_a_torchrun_group_lingers_after_its_line(monkeypatch, capsys, tmp_path):
    """torchrun stops a whole group when one process exits with an error: each one says why first, then waits a
    moment, so that the lines of processes failing together all get out (a rank was once killed mid-way)."""
    from simulacra.cli import main

    slept = []
    monkeypatch.setattr(time, "sleep", lambda s: slept.append((s, capsys.readouterr().err)))
    bad = ["record", "--env-id", "NoSuchEnv-v0", "--episodes", "1", "--out", str(tmp_path / "x")]
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(SystemExit) as e:
        main(bad)
    assert e.value.code == 1 and len(slept) == 1
    seconds, said_before = slept[0]
    assert seconds >= 1 and "unknown env id 'NoSuchEnv-v0'" in said_before  # the line, then the wait
    monkeypatch.setenv("WORLD_SIZE", "1")
    with pytest.raises(SystemExit):
        main(bad)
    assert len(slept) == 1  # alone, an error exits at once
