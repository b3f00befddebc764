"""The training loop in-process: the wall-clock Budget (on a fake clock), the non-finite guard, the
schedule following the cut count, resume keeping it, and the size presets."""

import json
import math

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

import simulacra.loop as loop_mod
from simulacra.errors import SimulacraError
from simulacra.loop import CALIBRATE, MARGIN, WARMUP_UNTIMED, Budget, LoopConfig, autocast_dtype, fit, lr_lambda
from simulacra.models.autoencoder import AutoencoderConfig
from simulacra.models.dynamics import DynamicsConfig
from simulacra.train import SIZES, SizePreset, TrainConfig, model_configs

CAL = WARMUP_UNTIMED + CALIBRATE  # the step at which a budget first cuts (from step 0)


def timed(budget: Budget, start: int, rate: float, t0: float = 0.0) -> None:
    """Walk a fresh budget through its untimed and timed steps at ``rate`` steps/s (no cut yet)."""
    budget.begin(start)
    for step in range(start, start + CAL):
        assert budget.observe(step, 10_000, now=t0 + (step - start) / rate) == 10_000


# ---- Budget: pure, on given times --------------------------------------------------------------
def test_budget_cuts_to_what_fits_at_the_timed_rate():
    b = Budget(deadline=100.0)
    timed(b, 0, rate=10.0)
    now = CAL / 10.0  # 2.5 s: 20 timed steps in 2 s after the 5 untimed ones
    expected = CAL + int((100.0 - now) * 10.0 * MARGIN)
    assert b.observe(CAL, 10_000, now=now) == expected == 25 + 955
    assert b.observe(CAL + 1, expected, now=now + 0.1) == expected  # it cuts at calibration, not every step


def test_budget_never_raises_the_count_and_always_leaves_a_step():
    roomy = Budget(deadline=1e9)
    timed(roomy, 0, rate=10.0)
    assert roomy.observe(CAL, 300, now=CAL / 10.0) == 300
    late = Budget(deadline=0.0)  # already past
    timed(late, 0, rate=10.0)
    assert late.observe(CAL, 300, now=CAL / 10.0) == CAL + 1


def test_budget_cuts_again_at_checkpoints_with_the_rate_so_far():
    b = Budget(deadline=100.0)
    timed(b, 0, rate=10.0)
    n = b.observe(CAL, 10_000, now=2.5)
    assert b.checkpoint(CAL + 1, n, now=2.6) == n  # the calibration step itself: already counted
    # the steps got slower: 95 timed steps took 19 s (5 steps/s), 80.5 s left
    done, now = 100, 0.5 + 19.0
    assert b.checkpoint(done, n, now=now) == done + int((100.0 - now) * (95 / 19.0) * MARGIN) < n
    # faster than planned, but past the first half of its count: not raised (the cosine is well under way)
    assert b.checkpoint(done, 150, now=1.0) == 150


def test_budget_before_calibration_leaves_checkpoints_alone_and_counts_from_the_start():
    b = Budget(deadline=10.0)
    b.begin(start=100)
    assert b.checkpoint(110, 10_000, now=1.0) == 10_000
    for step in range(100, 100 + CAL):
        assert b.observe(step, 10_000, now=(step - 100) / 10.0) == 10_000
    assert b.observe(100 + CAL, 10_000, now=CAL / 10.0) == 100 + CAL + int((10.0 - 2.5) * 10.0 * MARGIN)


def test_budget_asks_the_processes_to_agree_exactly_when_it_decides():
    """Under DDP every rank must enter the broadcast together: at calibration and at each later
    checkpoint, whatever its own count says, and rank 0's count is the one returned."""
    calls = []
    b = Budget(deadline=100.0)
    b.begin(0, agree=lambda n: calls.append(n) or 42)
    for step in range(CAL):
        b.observe(step, 10_000, now=step / 10.0)
    assert calls == []
    assert b.observe(CAL, 10_000, now=2.5) == 42 and len(calls) == 1
    assert b.checkpoint(CAL + 1, 42, now=2.6) == 42 and len(calls) == 1
    assert b.checkpoint(40, 42, now=4.0) == 42 and len(calls) == 2


# ---- fit with a budget on a fake clock -------------------------------------------------------------
class Toy(torch.nn.Module):
    """One weight pulled towards 1; ``clock`` advances 0.1 s per forward call (a 10 steps/s machine).
    ``bad`` makes step ``at`` (0-based) produce a non-finite 'loss' or 'grad'."""

    def __init__(self, bad: str | None = None, at: int = -1):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(2))
        self.calls, self.bad, self.at = 0, bad, at

    def clock(self) -> float:
        return self.calls * 0.1

    def forward(self, batch):
        step, self.calls = self.calls, self.calls + 1
        w = self.w
        if self.bad == "grad" and step == self.at:
            w = w * 1.0
            w.register_hook(lambda g: g * float("nan"))
        loss = ((w - batch["x"]) ** 2).mean()
        if self.bad == "loss" and step == self.at:
            loss = loss * float("nan")
        return loss, {"w": float(self.w[0].detach())}


def get_batch(step, rank, world):
    return {"x": torch.ones(2)}


def test_fit_runs_the_cut_count_on_its_schedule_and_resume_keeps_both(tmp_path):
    cfg = LoopConfig(10_000, 2, 1e-2, warmup=10, ckpt_every=10, log_every=10**9)
    model = Toy()
    result = fit(model, get_batch, cfg, tmp_path / "a", "toy", budget=Budget(10.0, clock=model.clock))
    # 10 steps/s, calibrated at step 25 (2.5 s), 7.5 s left; re-cut at every checkpoint at the same rate
    assert result.steps == CAL + int(7.5 * 10 * MARGIN) == 98 and model.calls == 98
    assert cfg.steps == 10_000  # the plan is left alone; fit returns what it ran
    assert result.metrics["lr"] == pytest.approx(1e-2 * lr_lambda(97, 98, 10))  # cosine ends with the cut count
    assert math.isclose(lr_lambda(97, 98, 10), 0.1, abs_tol=1e-3)
    last = json.loads((tmp_path / "a/step_0000098/state.json").read_text())
    assert last["step"] == last["total_steps"] == 98
    # a crash after step 90: the resumed stage keeps 98 steps and the schedule, whatever its own budget says
    (tmp_path / "b").mkdir()
    for name in ("step_0000080", "step_0000090"):
        (tmp_path / "a" / name).rename(tmp_path / "b" / name)
    again = Toy()
    resumed = fit(again, get_batch, cfg, tmp_path / "b", "toy", resume=True, budget=Budget(-1.0, clock=again.clock))
    assert resumed.steps == 98 and again.calls == 8
    a, b = (
        load_file(tmp_path / "a/step_0000098/model.safetensors"),
        load_file(tmp_path / "b/step_0000098/model.safetensors"),
    )
    np.testing.assert_array_equal(a["w"], b["w"])


@pytest.mark.parametrize("bad", ["loss", "grad"])
def test_non_finite_step_stops_with_one_line_and_saves_nothing_of_it(tmp_path, bad):
    cfg = LoopConfig(20, 2, 1e-2, warmup=2, ckpt_every=2, log_every=10**9)
    with pytest.raises(SimulacraError, match=f"non-finite {'loss' if bad == 'loss' else 'gradient'} at step 5") as e:
        fit(Toy(bad, at=5), get_batch, cfg, tmp_path, "toy")
    assert "\n" not in str(e.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_0000002", "step_0000004"]  # no step 6, no temp dir
    assert np.isfinite(load_file(tmp_path / "step_0000004/model.safetensors")["w"]).all()


class DtypeSpy(torch.nn.Module):
    """Records the dtype its linear layer computes in."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(2, 2)
        self.seen: list[torch.dtype] = []

    def forward(self, batch):
        y = self.lin(batch["x"][None])
        self.seen.append(y.dtype)
        return y.float().pow(2).mean(), {}


@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize("precision", ["auto", "bf16", "fp32"])
def test_the_loop_computes_in_bf16_only_where_asked_and_native(tmp_path, monkeypatch, precision, native):
    monkeypatch.setattr(loop_mod, "native_bf16", lambda device: native)
    model = DtypeSpy()
    fit(model, get_batch, LoopConfig(3, 2, 1e-3, warmup=1, log_every=10**9, precision=precision), tmp_path, "spy")
    want = torch.bfloat16 if precision == "bf16" and native else torch.float32  # 'auto' is fp32 on a CPU
    assert model.seen == [want] * 3
    assert model.lin.weight.dtype == torch.float32  # the weights (and the optimizer's state) stay fp32


def test_auto_precision_is_bf16_on_cuda_only():
    # no GPU needed: the dtype is decided from the device's type
    assert autocast_dtype(torch.device("cuda"), "auto") == torch.bfloat16
    assert autocast_dtype(torch.device("cpu"), "auto") == torch.float32
    assert autocast_dtype(torch.device("cuda"), "fp32") == torch.float32


def test_an_unknown_precision_is_refused():
    with pytest.raises(SimulacraError, match="precision must be one of auto, bf16, fp32, not 'fp16'"):
        autocast_dtype(torch.device("cpu"), "fp16")


# ---- size presets -----------------------------------------------------------------------------
def test_size_presets_are_typed_and_keep_their_values():
    assert list(SIZES) == ["debug", "nano", "small", "base", "large"]
    assert all(isinstance(p, SizePreset) for p in SIZES.values())
    nano = SIZES["nano"]
    assert nano.ae == AutoencoderConfig(channels=64, latent_channels=8)
    assert nano.dyn == DynamicsConfig(
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
    )
    assert (nano.ae_steps, nano.dyn_steps, nano.ae_batch, nano.dyn_batch) == (1200, 4000, 32, 32)
    assert (nano.ae_lr, nano.dyn_lr, nano.minutes) == (2e-3, 5e-4, 10)
    assert SIZES["small"].dyn.own_context == 0.25 and SIZES["large"].dyn.channel_mult == (1, 2, 3, 4)
    assert [p.dyn_steps for p in SIZES.values()] == [30, 4000, 60000, 200000, 500000]


def test_change_gate_is_decided_by_the_frame_representation():
    preset = SIZES["debug"]
    _, dyn = model_configs(TrainConfig(size="debug"), preset)
    assert dyn.change_gate and dyn.snap_to_pixels  # the preset's 'pixels' autoencoder
    _, dyn = model_configs(TrainConfig(size="debug", change_gate=False), preset)
    assert not dyn.change_gate and dyn.snap_to_pixels
    _, dyn = model_configs(TrainConfig(size="debug", autoencoder="learned"), preset)
    assert not dyn.change_gate and not dyn.snap_to_pixels
    assert not preset.dyn.change_gate  # the preset itself is left alone
