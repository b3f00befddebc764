"""Training: a tiny real run, exact resume after SIGKILL, 2-process DDP vs 1 process, the trained world."""

import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import make_synthetic
from safetensors.numpy import load_file

from simulacra.data import Dataset
from simulacra.loop import Budget, LoopConfig, fit
from simulacra.train import SIZES, TrainConfig, budget_minutes
from simulacra.world import World

TRAIN = [sys.executable, "-m", "simulacra.cli", "train", "--size", "debug", "--no-tensorboard"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("train") / "ds"
    make_synthetic(root, lengths=(30, 24, 20, 18), frame=64, block_frames=8)
    return root


def train(data, out, *extra, check=True):
    p = subprocess.run(
        [*TRAIN, "--data", str(data), "--out", str(out), *extra], capture_output=True, text=True, timeout=600
    )
    if check and p.returncode:
        raise AssertionError(p.stdout[-3000:] + p.stderr[-3000:])
    return p


def weights(run):
    return {
        **load_file(run / "world/autoencoder.safetensors"),
        **{f"dyn.{k}": v for k, v in load_file(run / "world/dynamics.safetensors").items()},
    }


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    train(data, out, "--ae-steps", "12", "--dyn-steps", "12", "--ckpt-every", "3", "--autoencoder", "learned")
    return out


def test_run_folder_has_config_checkpoints_and_world(reference):
    cfg = json.loads((reference / "config.json").read_text())
    assert cfg["size"] == "debug" and cfg["ae_loop"]["steps"] == 12 and cfg["holdout_episodes"]
    assert not set(cfg["train_episodes"]) & set(cfg["holdout_episodes"])
    # 'auto': fp32 on a CPU (bf16 is asked for there); the run says which it used
    assert cfg["dyn_loop"]["precision"] == "auto" and cfg["compute_dtype"] == "float32"
    ckpts = sorted(p.name for p in (reference / "checkpoints/dynamics").iterdir())
    assert ckpts == ["step_0000003", "step_0000006", "step_0000009", "step_0000012"]
    for c in ckpts:
        assert (reference / "checkpoints/dynamics" / c / "COMPLETE").exists()
    assert json.loads((reference / "world/world.json").read_text())["format"] == "simulacra.world"


def test_resume_after_sigkill_matches_uninterrupted(data, reference, tmp_path):
    out = tmp_path / "run"
    args = [
        *TRAIN,
        "--data",
        str(data),
        "--out",
        str(out),
        "--ae-steps",
        "12",
        "--dyn-steps",
        "12",
        "--ckpt-every",
        "3",
        "--autoencoder",
        "learned",
    ]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = out / "checkpoints/dynamics/step_0000003/COMPLETE"
    deadline = time.time() + 300
    while not marker.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "world/world.json").exists(), "the run finished before it could be killed"
    train(
        data, out, "--ae-steps", "12", "--dyn-steps", "12", "--ckpt-every", "3", "--autoencoder", "learned", "--resume"
    )
    a, b = weights(reference), weights(out)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def outputs(run, ds):
    """What a world computes on fixed inputs, as uint8 frames (function space: a bias in front of a
    GroupNorm has no gradient but float noise, which Adam turns into +-lr steps, so raw weights are the
    wrong yardstick)."""
    world = World.load(run)
    frames = ds.frames(0, 0, 3)
    recon = world.decode(world.encode(frames)).astype(np.float32)
    state = world.reset(frames[None], np.array([[1, 2]]))
    _, dream, _, _ = world.rollout(state, np.array([[3, 0]]), world.generator(0))
    return recon, dream.astype(np.float32)


def test_two_processes_match_one(data, tmp_path):
    """2 DDP processes train what 1 process does with the same global batch, to one gray level."""
    one, two, other = tmp_path / "one", tmp_path / "two", tmp_path / "other"
    # fp32: in bf16 the two summation orders round apart by more (2 levels, a fifth of the pixels), which
    # would hide a real difference in what the processes train on
    common = [
        "--ae-steps",
        "6",
        "--dyn-steps",
        "6",
        "--batch-size",
        "8",
        "--autoencoder",
        "learned",
        "--precision",
        "fp32",
    ]
    train(data, one, *common)
    train(data, other, *common, "--seed", "1")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "simulacra.cli",
        "train",
        "--size",
        "debug",
        "--no-tensorboard",
        "--data",
        str(data),
        "--out",
        str(two),
        *common,
    ]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert json.loads((two / "config.json").read_text())["world_size"] == 2
    ds = Dataset.open(data)
    a, b, c = outputs(one, ds), outputs(two, ds), outputs(other, ds)
    # Not bit-equal: gloo's all-reduce averages two half-batch gradients, a different float summation
    # order than one process's mean over the whole batch, so weights differ by float rounding (~1e-7,
    # amplified by Adam where a gradient is nearly zero). Decoded frames then round to the same 8-bit
    # level almost everywhere, and never differ by more than one level.
    for x, y, z in zip(a, b, c, strict=True):
        assert np.abs(x - y).max() <= 1 and (x != y).mean() < 0.01, (np.abs(x - y).max(), (x != y).mean())
        assert np.abs(x - z).mean() > 5  # another seed is far away: the comparison can tell worlds apart


def test_trained_world_loads_and_dreams(reference, data):
    """The world a run saves loads and dreams frames, rewards and dones of the data set's shapes
    (the World API itself is tested in test_world_env.py)."""
    world = World.load(reference)
    ds = Dataset.open(data)
    state = world.reset(*world.episode_context(ds, 0, 5))
    state, frames, rewards, dones = world.rollout(state, np.array([[0, 1, 2, 3, 1]]), world.generator(1))
    assert frames.shape == (1, 5, 64, 64, 3) and frames.dtype == np.uint8
    assert rewards.shape == dones.shape == (1, 5) and np.isfinite(rewards).all()


def test_patch_two_makes_a_finer_grid_that_dreams(data, tmp_path):
    out = tmp_path / "p2"
    train(data, out, "--dyn-steps", "3", "--patch", "2")
    world = World.load(out)
    assert world.ae.cfg.patch == 2 and world.ae.cfg.grid_channels == 12
    state = world.reset(*world.episode_context(Dataset.open(data), 0, 3))
    assert world.encode(np.zeros((1, 64, 64, 3), np.uint8)).shape[-2:] == (32, 32)
    _, frames, _, _ = world.step(state, [1], world.generator(0))
    assert frames.shape == (1, 64, 64, 3)


def test_default_run_logs_to_tensorboard(data, tmp_path):
    """TensorBoard is on by default (every other test turns it off): the run's tb/ holds the losses."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    p = subprocess.run(
        [*(a for a in TRAIN if a != "--no-tensorboard"), "--data", str(data), "--out", str(out), "--dyn-steps", "4"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    events = EventAccumulator(str(out / "tb"))
    events.Reload()
    loss = events.Scalars("dynamics/loss")
    assert [e.step for e in loss] == [0, 3] and all(math.isfinite(e.value) for e in loss)


@pytest.mark.parametrize(
    "bad",
    [
        ["--channels", "50"],
        ["--channel-mult"],
        ["--channel-mult", "1", "0"],
        ["--autoencoder", "vq"],
        ["--context", "1"],
        ["--own-context", "1.5"],
    ],
    ids=["width", "no-levels", "zero-level", "autoencoder", "context", "own-context"],
)
def test_bad_model_options_are_one_line_errors(data, tmp_path, bad):
    p = train(data, tmp_path / "run", *bad, check=False)
    assert p.returncode != 0 and "Traceback" not in p.stderr, p.stderr[-2000:]
    assert len(p.stderr.strip().splitlines()) == 1 and bad[0] in p.stderr, p.stderr
    assert not (tmp_path / "run").exists()  # refused before anything was written


class Slow(torch.nn.Module):
    """A one-weight model whose step takes ``s`` seconds (``later`` from its 40th call on): a stand-in
    for a model that is slow to train, on a CPU that may slow down mid-run."""

    def __init__(self, s: float = 0.02, later: float | None = None):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))
        self.s, self.later, self.calls = s, later, 0

    def forward(self, batch):
        self.calls += 1
        time.sleep(self.later if self.later and self.calls > 40 else self.s)
        return ((self.w - batch["x"]) ** 2).mean(), {}


def test_minutes_budget_cuts_the_steps_and_resume_keeps_them(tmp_path):
    get = lambda step, rank, world: {"x": torch.zeros(2)}  # noqa: E731
    cfg = LoopConfig(10_000, 2, 1e-2, ckpt_every=10, log_every=10**9)
    t0 = time.time()
    ran = fit(Slow(), get, cfg, tmp_path, "slow", budget=Budget(time.time() + 5.0)).steps
    assert time.time() - t0 < 6.5  # planned: 10,000 steps = 200 s
    # about 5 s / 20 ms, less the first steps (the first fit in a process also pays ~2 s of one-time set-up)
    assert 60 <= ran <= 250, ran
    assert cfg.steps == 10_000  # the plan is not rewritten: fit returns what it ran
    done = json.loads(sorted(tmp_path.glob("step_*"))[-1].joinpath("state.json").read_text())
    assert done["step"] == done["total_steps"] == ran
    # a resumed run continues the schedule it chose, whatever its own deadline says
    again = fit(Slow(), get, cfg, tmp_path, "slow", resume=True, budget=Budget(time.time() + 0.1))
    assert again.steps == ran


def test_minutes_budget_holds_when_steps_get_slower(tmp_path):
    """Calibrated at 10 ms per step, then 40 ms: the cut made at calibration alone would overrun 3x."""
    get = lambda step, rank, world: {"x": torch.zeros(2)}  # noqa: E731
    t0 = time.time()
    cfg = LoopConfig(10_000, 2, 1e-2, ckpt_every=10, log_every=10**9)
    fit(Slow(0.01, later=0.04), get, cfg, tmp_path, "slower", budget=Budget(t0 + 5.0))
    assert time.time() - t0 < 5.8, time.time() - t0


def test_negative_minutes_is_a_one_line_error(data, tmp_path):
    p = train(data, tmp_path / "run", "--minutes", "-1", check=False)
    assert p.returncode != 0 and "--minutes" in p.stderr and "Traceback" not in p.stderr


def test_nano_is_budgeted_unless_steps_are_given():
    assert SIZES["nano"].minutes == 10 and SIZES["small"].minutes is None
    assert budget_minutes(TrainConfig(size="nano")) == 10
    assert budget_minutes(TrainConfig(size="nano", dyn_steps=100)) is None  # asked-for steps run exactly
    assert budget_minutes(TrainConfig(size="nano", minutes=0)) is None
    assert budget_minutes(TrainConfig(size="small", minutes=2.5)) == 2.5


def test_dyn_lr_sets_the_dynamics_rate_and_refuses_nonpositive(data, tmp_path):
    p = train(data, tmp_path / "bad", "--dyn-lr", "0", check=False)
    assert p.returncode != 0 and "--dyn-lr" in p.stderr and "Traceback" not in p.stderr
    train(data, tmp_path / "run", "--dyn-steps", "2", "--dyn-lr", "0.003")
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["dyn_loop"]["lr"] == 0.003 and cfg["ae_loop"]["lr"] == SIZES["debug"].ae_lr
