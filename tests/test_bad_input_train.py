"""Bad input to train, eval, export, World.load and the command's error path: every case exits non-zero
with exactly one line on stderr that names the option or file (no traceback), and leaves the run and the
data set it was given exactly as they were (a checksum of every file before and after)."""

import contextlib
import copy
import hashlib
import io
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_synthetic
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from simulacra import layout
from simulacra.cli import main
from simulacra.data import Dataset
from simulacra.errors import DatasetError, SimulacraError
from simulacra.models.dynamics import LEGACY
from simulacra.world import Starts, World, WorldEnv, WorldVectorEnv

SIM = [sys.executable, "-m", "simulacra.cli"]
ONE_THREAD = {k: v for k, v in os.environ.items() if k != "SIMULACRA_DEBUG"} | {"OMP_NUM_THREADS": "1"}
FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(autouse=True)
def no_debug_env(monkeypatch):
    monkeypatch.delenv("SIMULACRA_DEBUG", raising=False)


def sim(*args) -> tuple[int, str, str]:
    """`simulacra ARGS` in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([str(a) for a in args])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
    return code, out.getvalue(), err.getvalue()


def one_line(code: int, err: str, verb: str, *names: str) -> str:
    """The single error line of a failed command, checked: exit 1, one line, prefixed, naming ``names``."""
    assert code == 1, (code, err)
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"simulacra {verb}: error: "), lines[0]
    for name in names:
        assert name in lines[0], (name, lines[0])
    return lines[0]


def digest(*paths: Path) -> dict[str, str]:
    """sha256 of every file given or under the folders given (a missing path digests to nothing)."""
    out = {}
    for path in map(Path, paths):
        for p in [path] if path.is_file() else sorted(path.rglob("*")):
            if p.is_file():
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


# ---- a tiny data set, another one, and a trained run --------------------------------------------
TRAIN_OPTS = {"--size": "debug", "--dyn-steps": "4", "--ckpt-every": "2"}


def train_args(data, out, opts=None, *flags):
    opts = TRAIN_OPTS | (opts or {})
    return ["train", "--data", data, "--out", out, *[x for kv in opts.items() for x in kv], "--no-tensorboard", *flags]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    make_synthetic(root / "ds", lengths=(12, 10, 9, 8), frame=16)
    make_synthetic(root / "other", lengths=(12, 10, 9, 8), frame=16, seed=1)
    code, out, err = sim(*train_args(root / "ds", root / "run"))
    assert code == 0 and (root / "run/world/world.json").exists(), err[-2000:]
    return root


@pytest.fixture
def intact(root):
    """Asserts, after the test, that the trained run and both data sets are byte for byte as before."""
    folders = (root / "run", root / "ds", root / "other")
    before = digest(*folders)
    yield
    assert digest(*folders) == before


# ---- train: numbers and options ------------------------------------------------------------------
BAD_TRAIN = [
    (["--dyn-steps", "0"], "--dyn-steps"),
    (["--dyn-steps", "-5"], "--dyn-steps"),
    (["--ae-steps", "0"], "--ae-steps"),
    (["--ae-steps", "-1"], "--ae-steps"),
    (["--batch-size", "0"], "--batch-size"),
    (["--batch-size", "-1"], "--batch-size"),
    (["--ckpt-every", "0"], "--ckpt-every"),
    (["--holdout", "nan"], "--holdout"),
    (["--holdout", "-0.1"], "--holdout"),
    (["--holdout", "1"], "--holdout"),
    (["--seed", "-1"], "--seed"),
    (["--minutes", "nan"], "--minutes"),
    (["--minutes", "-1"], "--minutes"),
    (["--minutes", "inf"], "--minutes"),
    (["--dyn-lr", "nan"], "--dyn-lr"),
    (["--dyn-lr", "0"], "--dyn-lr"),
    (["--context", "0"], "--context"),
    (["--context", "1"], "--context"),
    (["--channels", "50"], "--channels"),
    (["--channels", "200000"], "--max-params"),  # 1.3e13 parameters: refused before allocating, says how to override
    (["--channels", str(2**40)], "--max-params"),  # more than any tensor's storage can hold
    (["--channels", "64", "--max-params", "1000"], "--max-params"),
    (["--max-params", "0"], "--max-params"),
    (["--channel-mult", "1", "2", "2", "2"], "--channel-mult"),  # 4 levels on the 4x4 latent grid of 16x16 frames
    (["--channel-mult", "1", "0"], "--channel-mult"),
    (["--own-context", "nan"], "--own-context"),
    (["--own-context", "1.5"], "--own-context"),
    (["--change-weight", "-1"], "--change-weight"),
    (["--context-noise-max", "nan"], "--context-noise-max"),
    (["--autoencoder", "vq"], "--autoencoder"),
    (["--patch", "3"], "--patch"),  # does not tile 16x16 frames
    (["--patch", "0"], "--patch"),
    (["--size", "huge"], "huge"),
    (["--precision", "fp16"], "--precision"),
    (["--time-shift", "0"], "--time-shift"),
    (["--time-shift", "nan"], "--time-shift"),
]


@pytest.mark.parametrize("bad,name", BAD_TRAIN, ids=[" ".join(b) for b, _ in BAD_TRAIN])
def test_bad_train_options_are_one_line_and_write_nothing(root, tmp_path, intact, bad, name):
    out = tmp_path / "run"
    code, _, err = sim("train", "--data", root / "ds", "--out", out, "--size", "debug", "--no-tensorboard", *bad)
    line = one_line(code, err, "train", name)
    if "200000" in bad:
        assert "billion parameters" in line and "raise --max-params" in line
    assert not out.exists()


INT_OPTIONS = {"--dyn-steps": 0, "--ae-steps": 0, "--batch-size": 0, "--ckpt-every": 0, "--seed": -1, "--context": 1}


@FAST
@given(
    st.one_of(
        st.sampled_from(sorted(INT_OPTIONS)).flatmap(
            lambda o: st.tuples(st.just(o), st.integers(max_value=INT_OPTIONS[o]).map(str))
        ),
        st.tuples(
            st.just("--holdout"),
            st.one_of(st.floats(max_value=-1e-9), st.floats(min_value=1), st.just(math.nan)).map(repr),
        ),
        st.tuples(
            st.just("--minutes"), st.one_of(st.floats(max_value=-1e-9), st.sampled_from([math.nan, math.inf])).map(repr)
        ),
    )
)
def test_any_bad_train_number_is_refused_before_writing(root, tmp_path, option_value):
    option, value = option_value
    out = tmp_path / "hyp"
    before = digest(root / "ds")
    code, _, err = sim(*train_args(root / "ds", out, {option: value}))
    one_line(code, err, "train", option)
    assert not out.exists() and digest(root / "ds") == before


@pytest.mark.parametrize("value", ["abc", "1.5", "0x10", "two"])
def test_unparseable_numbers_are_tyros_exit_2_without_a_traceback(root, tmp_path, value):
    code, _, err = sim(*train_args(root / "ds", tmp_path / "run", {"--dyn-steps": value}))
    assert code == 2 and "Traceback" not in err and "--dyn-steps" in err, err
    assert not (tmp_path / "run").exists()


def test_out_that_is_a_file_or_lies_under_one(root, tmp_path, intact):
    f = tmp_path / "file.txt"
    f.write_text("not a folder")
    for out in (f, f / "sub" / "run"):
        code, _, err = sim(*train_args(root / "ds", out))
        one_line(code, err, "train", "--out", str(f))
    code, _, err = sim("eval", "--run", root / "run", "--out", f / "e")
    one_line(code, err, "eval", "--out", str(f))
    assert f.read_text() == "not a folder"
    code, _, err = sim(*train_args(root / "ds", root / "other"))  # a data set is no run folder
    one_line(code, err, "train", "--out", "is a data set")


def test_unwritable_out_is_one_line(root, tmp_path, intact, monkeypatch):
    locked = tmp_path / "ro"
    locked.mkdir()
    real = os.access
    # as root every folder is writable: stand in for the permission bits
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == locked else real(p, mode, **kw))
    code, _, err = sim(*train_args(root / "ds", locked / "run"))
    one_line(code, err, "train", "--out", "permission denied")
    code, _, err = sim("eval", "--run", root / "run", "--out", locked / "eval")
    one_line(code, err, "eval", "--out", "permission denied")
    assert list(locked.iterdir()) == []


def test_train_reads_every_episode_it_uses_before_writing(root, tmp_path, intact, monkeypatch):
    """The store's check of the training and held-out episodes runs before the run folder exists."""
    seen = []

    def check_episodes(self, indices):
        seen.append(sorted(indices))
        raise DatasetError(f"{self.root}: episode {indices[0]} is corrupt (checksum mismatch)")

    monkeypatch.setattr(Dataset, "check_episodes", check_episodes, raising=False)
    out = tmp_path / "run"
    code, _, err = sim(*train_args(root / "ds", out))
    one_line(code, err, "train", "checksum mismatch", str(root / "ds"))
    assert seen == [[0, 1, 2, 3]] and not out.exists()


def test_a_corrupt_episode_stops_training_before_anything_is_written(root, tmp_path, intact):
    ds = tmp_path / "ds"
    shutil.copytree(root / "ds", ds)
    held = json.loads((root / "run/config.json").read_text())["holdout_episodes"][0]
    shard = ds / Dataset.open(ds).episodes[held].file  # held out: the training steps alone would never read it
    raw = bytearray(shard.read_bytes())
    raw[-1] ^= 0xFF
    shard.write_bytes(bytes(raw))
    out = tmp_path / "run"
    code, _, err = sim(*train_args(ds, out))
    one_line(code, err, "train", shard.name)
    assert not out.exists()


# ---- train: one writer per run folder ------------------------------------------------------------
def test_a_second_train_into_a_held_run_is_refused_with_the_pid(root, tmp_path, intact):
    out = tmp_path / "run"
    with layout.writer_lock(out, "train"):
        code, _, err = sim(*train_args(root / "ds", out))
        one_line(code, err, "train", f"PID {os.getpid()}", str(out))
        assert [p.name for p in out.iterdir()] == [layout.LOCK_NAME]  # nothing else written
    with layout.writer_lock(root / "run", "train"):
        code, _, err = sim(*train_args(root / "ds", root / "run", {}, "--resume"))
        one_line(code, err, "train", f"PID {os.getpid()}", str(root / "run"))
    assert not (root / "run" / layout.LOCK_NAME).exists()


def test_two_trainings_into_one_out(root, tmp_path):
    """A real second process: while it trains, another train into its --out is refused naming its PID."""
    out = tmp_path / "run"
    args = train_args(root / "ds", out, {"--dyn-steps": "100000", "--ckpt-every": "100000"})
    log = tmp_path / "first.log"
    with open(log, "wb") as f:
        first = subprocess.Popen([*SIM, *map(str, args)], env=ONE_THREAD, stdout=f, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 120
        while not (out / "config.json").exists() and first.poll() is None and time.time() < deadline:
            time.sleep(0.1)
        assert first.poll() is None, log.read_text()[-2000:]
        before = digest(out / "config.json", root / "ds")
        code, _, err = sim(*train_args(root / "ds", out))
        one_line(code, err, "train", f"PID {first.pid}", "simulacra train")
        code, _, err = sim(
            *train_args(root / "ds", out, {"--dyn-steps": "100000", "--ckpt-every": "100000"}, "--resume")
        )
        one_line(code, err, "train", f"PID {first.pid}")
        assert digest(out / "config.json", root / "ds") == before
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()


def test_ddp_processes_all_stop_when_rank_0_cannot_take_the_lock(root, tmp_path):
    """The lock is rank 0's business; the other process must learn of the refusal, not wait at a barrier."""
    out = tmp_path / "run"
    ddp = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m"]
    with layout.writer_lock(out, "train"):
        p = subprocess.run(
            [*ddp, "simulacra.cli", *map(str, train_args(root / "ds", out))],
            capture_output=True,
            text=True,
            env=ONE_THREAD,
            timeout=120,  # a deadlocked rank would hang here
        )
    assert p.returncode != 0, p.stderr[-3000:]
    # torchrun's launcher adds its own report (with its own traceback); each of our processes says one line
    ours = [line for line in p.stderr.splitlines() if line.startswith("simulacra train:")]
    assert len(ours) == 2 and "src/simulacra/" not in p.stderr, p.stderr[-3000:]
    holder = f"{out} is being written by `simulacra train` (PID {os.getpid()})"
    assert any(line.startswith(f"simulacra train: error: {holder}") for line in ours), ours
    assert any(line.startswith(f"simulacra train: error: rank 0 stopped: {holder}") for line in ours), ours
    assert sorted(q.name for q in out.iterdir()) == []  # the holder's lock released, nothing written


# ---- train: --resume continues the same run, or nothing ------------------------------------------
RESUME_CHANGES = [
    ({"--data": "OTHER"}, "--data"),
    ({"--context": "3"}, "--context"),
    ({"--channels": "32"}, "--channels"),
    ({"--channel-mult": "1"}, "--channel-mult"),
    ({"--autoencoder": "learned"}, "--autoencoder"),
    ({"--own-context": "0.5"}, "--own-context"),
    ({"--change-weight": "2"}, "--change-weight"),
    ({"--context-deltas": "True"}, "--context-deltas"),
    ({"--heads-context": "True"}, "--heads-context"),
    ({"--heads-on-next": "False"}, "--heads-on-next"),
    ({"--flow-context": "2"}, "--flow-context"),
    ({"--seed": "1"}, "--seed"),
    ({"--batch-size": "4"}, "--batch-size"),
    ({"--holdout": "0.5"}, "--holdout"),
    ({"--size": "nano"}, "--size"),
    ({"--dyn-steps": "8"}, "--dyn-steps"),
    ({"--dyn-lr": "0.01"}, "--dyn-lr"),
    ({"--minutes": "3"}, "--minutes"),
]


@pytest.mark.parametrize("change,name", RESUME_CHANGES, ids=[name for _, name in RESUME_CHANGES])
def test_resume_refuses_other_data_and_changed_options(root, intact, change, name):
    opts = {k: str(root / "other") if v == "OTHER" else v for k, v in change.items()}
    data = opts.pop("--data", root / "ds")
    code, _, err = sim(*train_args(data, root / "run", opts, "--resume"))
    line = one_line(code, err, "train", name, str(root / "run"), "--resume")
    assert line.count(";") >= 1  # it says what differs, then what to do


def test_resume_refuses_a_changed_change_gate(root, intact):
    code, _, err = sim(*train_args(root / "ds", root / "run", {}, "--resume", "--no-change-gate"))
    one_line(code, err, "train", "--change-gate", "was True, now False")


def test_resume_with_the_same_options_continues_even_from_moved_data(root, tmp_path, intact):
    """The positive control: the refusals above are about the differences, not --resume itself."""
    run, moved = tmp_path / "run", tmp_path / "moved-ds"
    shutil.copytree(root / "run", run)
    shutil.copytree(root / "ds", moved)
    ckpts = digest(run / "checkpoints")
    code, _, err = sim(*train_args(moved, run, {}, "--resume"))
    assert code == 0, err[-2000:]
    assert digest(run / "checkpoints") == ckpts  # finished: nothing left to train
    assert json.loads((run / "config.json").read_text())["data"] == str(moved)
    code, _, err = sim(*train_args(moved, run))  # no --resume: a run folder is not overwritten
    one_line(code, err, "train", "already holds a run", "--resume")


def test_a_corrupt_config_json_stops_a_resume(root, tmp_path, intact):
    run = tmp_path / "run"
    shutil.copytree(root / "run", run)
    (run / "config.json").write_text("{not json")
    before = digest(run)
    code, _, err = sim(*train_args(root / "ds", run, {}, "--resume"))
    one_line(code, err, "train", str(run / "config.json"))
    assert digest(run) == before


# ---- eval and export numbers ---------------------------------------------------------------------
BAD_EVAL = [
    ("--idm-pairs", "0"),
    ("--idm-steps", "0"),
    ("--probe-steps", "0"),
    ("--critic-clips", "0"),
    ("--critic-steps", "0"),
    ("--event-steps", "0"),
    ("--delta-horizon", "0"),
    ("--horizon", "0"),
    ("--episodes", "0"),
    ("--starts", "0"),
    ("--batch-size", "0"),
    ("--drift-steps", "0"),
    ("--drift-starts", "0"),
    ("--speed-steps", "0"),
    ("--speed-batch", "0"),
    ("--pool-frames", "0"),
    ("--num-envs", "0"),
    ("--videos", "-1"),
    ("--seed", "-1"),
    ("--rng-seed", "-1"),
    ("--max-episode-steps", "0"),
    ("--temperature", "nan"),
    ("--temperature", "-1"),
    ("--temperature", "inf"),
]


@pytest.mark.parametrize("option,value", BAD_EVAL, ids=[f"{o} {v}" for o, v in BAD_EVAL])
def test_bad_eval_numbers_are_one_line_and_write_nothing(root, intact, option, value):
    code, _, err = sim("eval", "--run", root / "run", "--data", root / "other", option, value)
    one_line(code, err, "eval", option)
    assert not (root / "run" / "eval").exists()


@pytest.mark.parametrize(
    "option,value", [("--threads", "0"), ("--threads", "-2"), ("--seconds", "-1"), ("--seconds", "nan")]
)
def test_bad_export_numbers_are_one_line_and_write_nothing(root, intact, option, value):
    code, _, err = sim("export", root / "run", option, value)
    one_line(code, err, "export", option)


# ---- World.load: world.json and the weights ------------------------------------------------------
@pytest.fixture(scope="module")
def world_copy(root, tmp_path_factory):
    """A copy of the trained world to break, and its world.json as it was saved."""
    w = tmp_path_factory.mktemp("w") / "world"
    shutil.copytree(root / "run/world", w)
    return w, json.loads((w / "world.json").read_text())


WRONG_TYPE = {
    "int": ["8", 2.5, None, True, [8]],
    "float": ["0.5", None, True, [0.5], {}],
    "bool": [0, 1, "true", None],
    "str": [1, None, True, ["pixels"]],
    "tuple[int, ...]": ["1,2", 3, [1.5], [True], None],
}
SHAPE_FIELDS = [("dynamics", "channels"), ("dynamics", "context"), ("dynamics", "cond_dim"), ("autoencoder", "patch")]


@st.composite
def bad_world_json(draw, base: dict):
    """A world.json that must be refused: a field missing, unknown or of the wrong type, a negative, non-finite
    or huge number, a broken top-level entry, or no JSON object at all."""
    from simulacra.models.autoencoder import AutoencoderConfig
    from simulacra.models.dynamics import DynamicsConfig

    doc = copy.deepcopy(base)
    section = draw(st.sampled_from(["autoencoder", "dynamics"]))
    cls = {"autoencoder": AutoencoderConfig, "dynamics": DynamicsConfig}[section]
    types = {k: str(f.type) for k, f in cls.__dataclass_fields__.items()}
    numeric = sorted(k for k, t in types.items() if t in ("int", "float"))
    kind = draw(st.sampled_from(["missing", "unknown", "type", "negative", "nonfinite", "huge", "top", "not_object"]))
    if kind == "missing":  # (an inference-only option added later may be missing: it has its default)
        optional = LEGACY.get(section, {})
        del doc[section][draw(st.sampled_from(sorted(k for k in types if k not in optional)))]
    elif kind == "unknown":
        name = draw(st.text("abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12).filter(lambda s: s not in types))
        doc[section][name] = draw(st.one_of(st.integers(), st.text(max_size=5), st.booleans(), st.none()))
    elif kind == "type":
        k = draw(st.sampled_from(sorted(types)))
        doc[section][k] = draw(st.sampled_from(WRONG_TYPE[types[k]]))
    elif kind == "negative":
        k = draw(st.sampled_from(numeric))
        doc[section][k] = draw(st.integers(max_value=-1) | st.floats(max_value=-1e-6, allow_nan=False))
    elif kind == "nonfinite":
        k = draw(st.sampled_from(sorted(k for k, t in types.items() if t == "float")))
        doc[section][k] = draw(st.sampled_from([math.nan, math.inf, -math.inf]))
    elif kind == "huge":
        section, k = draw(st.sampled_from(SHAPE_FIELDS))
        doc[section][k] = draw(st.integers(min_value=100_000, max_value=10**12))
    elif kind == "top":
        key = draw(st.sampled_from(["autoencoder", "dynamics", "action_space", "frame_shape", "format_version"]))
        bad = {
            "autoencoder": [None, [], "pixels"],
            "dynamics": [None, 3, {}],
            "action_space": [5, {"type": "multi_binary"}, {"type": "discrete"}, {"type": "discrete", "n": -2}],
            "frame_shape": [[16, 16], [16, 16, 4], "16x16", [-16, 16, 3], [16.0, 16, 3], [16, 16, True]],
            "format_version": [2, "1", None],
        }[key]
        if draw(st.booleans()) and key != "format_version":
            del doc[key]
        else:
            doc[key] = draw(st.sampled_from(bad))
    else:
        doc = draw(st.sampled_from([[1, 2], 3, "world", None, True]))
    return doc


@pytest.mark.parametrize("via", ["api", "cli"])
def test_bad_world_json_is_one_line(world_copy, via):
    w, base = world_copy

    @FAST
    @given(bad_world_json(base))
    def check(doc):
        (w / "world.json").write_text(json.dumps(doc))
        if via == "api":
            with pytest.raises(SimulacraError) as e:
                World.load(w)
            msg = str(e.value)
            assert "\n" not in msg and ("world.json" in msg or ".safetensors" in msg), msg
        else:
            code, _, err = sim("eval", "--run", w, "--out", w.parent / "eval")
            line = one_line(code, err, "eval")
            assert "world.json" in line or ".safetensors" in line, line
            assert not (w.parent / "eval").exists()

    try:
        check()
    finally:
        (w / "world.json").write_text(json.dumps(base))
    World.load(w)  # the unbroken world still loads: the refusals are about the breakage


def test_a_world_saved_before_an_option_existed_loads_as_it_was(world_copy):
    w, base = world_copy
    old = copy.deepcopy(base)
    for key, names in LEGACY.items():
        for name in names:
            del old[key][name]
    f = w / "dynamics.safetensors"
    weights = load_file(f)
    # a world from before the life-loss head: its last head layer had 4 outputs, not 5
    older = {k: (v[:4] if k.startswith("heads.2.") else v) for k, v in weights.items()}
    try:
        (w / "world.json").write_text(json.dumps(old))
        save_file(older, f)
        world = World.load(w)
        assert world.dyn.cfg.gate_keep_moving == 0 and world.dyn.cfg.heads_on_next is False
        assert world.dyn.cfg.life_head is False
    finally:
        (w / "world.json").write_text(json.dumps(base))
        save_file(weights, f)


def _broken_weights(w: Path, how: str) -> str:
    """Break <w>/dynamics.safetensors in one way; returns what the error must name."""
    f = w / "dynamics.safetensors"
    t = load_file(f)
    key = "inp.weight"
    if how == "missing file":
        f.unlink()
        return "missing"
    if how == "truncated":
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
        return "truncated"
    if how == "garbage":
        f.write_bytes(b"\x00" * 3 + b"not a safetensors file at all")
        return "cannot load"
    if how == "pickle":
        buf = io.BytesIO()
        torch.save(t, buf)
        f.write_bytes(buf.getvalue())
        return "cannot load"
    if how == "wrong shape":
        t[key] = torch.zeros(t[key].shape[0] * 2, *t[key].shape[1:])
    elif how == "wrong dtype":
        t[key] = t[key].half()
    elif how == "missing tensor":
        del t[key]
    elif how == "extra tensor":
        t["surprise.weight"] = torch.zeros(3)
    elif how == "nan":
        t[key] = t[key].clone()
        t[key].view(-1)[0] = float("nan")
    elif how == "inf in a buffer":
        t["latent_std"] = torch.tensor(float("inf"))
        key = "latent_std"
    save_file(t, f)
    return {"extra tensor": "surprise.weight", "missing tensor": key}.get(how, key)


WEIGHT_BREAKS = [
    "missing file",
    "truncated",
    "garbage",
    "pickle",
    "wrong shape",
    "wrong dtype",
    "missing tensor",
    "extra tensor",
    "nan",
    "inf in a buffer",
]


@pytest.mark.parametrize("how", WEIGHT_BREAKS)
def test_wrong_missing_or_corrupt_weights_are_one_line(root, tmp_path, how):
    w = tmp_path / "world"
    shutil.copytree(root / "run/world", w)
    name = _broken_weights(w, how)
    with pytest.raises(SimulacraError, match="dynamics.safetensors") as e:
        World.load(w)
    assert name in str(e.value) and "\n" not in str(e.value)
    before = digest(w)
    code, _, err = sim("export", w, "--seconds", "0")
    one_line(code, err, "export", "dynamics.safetensors", name)
    assert digest(w) == before


# ---- the Python API ------------------------------------------------------------------------------
def test_world_api_arguments_are_one_line_errors(root):
    world = World.load(root / "run")
    ds = Dataset.open(root / "ds")
    bad_calls = [
        (lambda: world.with_options(temperature=math.nan), "temperature"),
        (lambda: world.with_options(temperature=math.inf), "temperature"),
        (lambda: world.with_options(temperature="hot"), "temperature"),
        (lambda: world.with_options(sampling_steps=0), "sampling_steps"),
        (lambda: world.with_options(sampling_steps=2.5), "sampling_steps"),
        (lambda: world.with_options(sampling_steps=True), "sampling_steps"),
        (lambda: world.with_options(context_noise=-1.0), "context noise"),
        (lambda: WorldEnv(world, ds, max_episode_steps=0), "max_episode_steps"),
        (lambda: WorldEnv(world, ds, max_episode_steps=2.5), "max_episode_steps"),
        (lambda: WorldEnv(world, ds, render_mode="human"), "render_mode"),
        (lambda: WorldEnv("runs/x", ds), "World"),
        (lambda: WorldVectorEnv(world, 0, ds), "num_envs"),
        (lambda: WorldVectorEnv(world, 2.0, ds), "num_envs"),
        (lambda: Starts(ds, world, episodes=[99]), "99"),
        (lambda: Starts(ds, world, min_t=-1), "min_t"),
    ]
    for call, name in bad_calls:
        with pytest.raises(SimulacraError, match=name) as e:
            call()
        assert "\n" not in str(e.value)
    assert world.with_options(temperature=np.float32(0.5), sampling_steps=np.int64(2)).dyn.cfg.sampling_steps == 2


# ---- the command's error path --------------------------------------------------------------------
def test_an_unexpected_exception_is_one_line_and_debug_shows_it(root, tmp_path, monkeypatch):
    import simulacra.train

    def boom(cfg, t_begin):
        raise RuntimeError("boom\nsecond line of a torch message")

    monkeypatch.setattr(simulacra.train, "plan_run", boom)
    args = train_args(root / "ds", tmp_path / "run")
    code, _, err = sim(*args)
    line = one_line(code, err, "train", "RuntimeError: boom", "--debug")
    assert "second line" not in line
    with pytest.raises(RuntimeError, match="boom"):
        main([*map(str, args), "--debug"])
    monkeypatch.setenv("SIMULACRA_DEBUG", "1")
    with pytest.raises(RuntimeError, match="boom"):
        main([*map(str, args)])


@pytest.mark.parametrize(
    "exc,want",
    [
        (PermissionError(13, "Permission denied", "/runs/x/config.json"), "/runs/x/config.json: Permission denied"),
        (OSError(28, "No space left on device", "runs/x/world"), "runs/x/world: No space left on device"),
        (MemoryError(), "out of memory"),
    ],
    ids=["permission", "disk-full", "memory"],
)
def test_os_errors_name_the_file_and_the_reason(root, tmp_path, monkeypatch, exc, want):
    import simulacra.train

    def fail(cfg, t_begin):
        raise exc

    monkeypatch.setattr(simulacra.train, "plan_run", fail)
    code, _, err = sim(*train_args(root / "ds", tmp_path / "run"))
    one_line(code, err, "train", want)


def test_interrupt_is_exit_130_with_one_line(root, tmp_path, monkeypatch):
    import simulacra.train

    def interrupted(cfg, t_begin):
        raise KeyboardInterrupt

    monkeypatch.setattr(simulacra.train, "plan_run", interrupted)
    code, _, err = sim(*train_args(root / "ds", tmp_path / "run"))
    assert code == 130 and err.strip().splitlines() == ["simulacra train: interrupted"]


def test_data_sub_verbs_are_named_in_their_errors(root, monkeypatch):
    import simulacra.data.commands

    def broken(cfg):
        raise ValueError("a bug in verify")

    monkeypatch.setattr(simulacra.data.commands, "verify", broken)
    code, _, err = sim("data", "verify", root / "ds")
    one_line(code, err, "data verify", "ValueError: a bug in verify")


def test_debug_flag_and_env_show_the_traceback_in_a_real_process(root, tmp_path):
    args = [*SIM, *map(str, train_args(root / "ds", tmp_path / "run", {"--dyn-steps": "0"}))]
    plain = subprocess.run(args, capture_output=True, text=True, env=ONE_THREAD)
    assert plain.returncode == 1 and plain.stderr.strip().splitlines() == [
        "simulacra train: error: --dyn-steps must be a whole number, 1 or more, not 0"
    ]
    flagged = subprocess.run([*args[:3], "--debug", *args[3:]], capture_output=True, text=True, env=ONE_THREAD)
    env = subprocess.run(args, capture_output=True, text=True, env=ONE_THREAD | {"SIMULACRA_DEBUG": "1"})
    for p in (flagged, env):
        assert p.returncode == 1 and "Traceback" in p.stderr and "--dyn-steps must be" in p.stderr, p.stderr
    assert not (tmp_path / "run").exists()


def test_a_run_from_before_an_option_existed_resumes_only_as_it_was(root):
    from simulacra.train import resume_differences

    new = json.loads((root / "run/config.json").read_text())
    old = copy.deepcopy(new)
    for key, values in LEGACY.items():
        for name, value in values.items():
            del old[key][name]
            new[key][name] = value
    assert resume_differences(old, new) == []  # the legacy values are what it was trained with
    new["dynamics"]["heads_on_next"] = True  # the new default is a change for that run
    assert any("--heads-on-next" in d for d in resume_differences(old, new)), resume_differences(old, new)
    changed = copy.deepcopy(new)
    changed["dynamics"]["gate_keep_moving"] = 2  # set, and different: that is a change
    assert any("gate_keep_moving" in d for d in resume_differences(changed, new))
