"""Unit tests of the tricky parts of the dynamics model: context padding, own-sample context, keyed noise."""

import pytest
import torch

from simulacra.errors import SimulacraError
from simulacra.models.autoencoder import AutoencoderConfig
from simulacra.models.common import KeyedRNG
from simulacra.models.dynamics import Dynamics, DynamicsConfig, pad_context
from simulacra.train import check_model_config

SPACE = {"type": "discrete", "n": 3, "start": 0}


def tiny(**kw) -> Dynamics:
    torch.manual_seed(0)
    cfg = DynamicsConfig(
        **{"context": 3, "channels": 8, "channel_mult": (1, 2), "cond_dim": 16, "sampling_steps": 2, **kw}
    )
    return Dynamics(cfg, latent_channels=4, action_space=SPACE)


def test_pad_context_repeats_the_first_kept_frame():
    ctx = torch.arange(2 * 4, dtype=torch.float32).view(2, 4, 1, 1, 1).expand(2, 4, 1, 2, 2)
    out, pad = pad_context(ctx, torch.tensor([True, False]), torch.tensor([2, 1]))
    assert out[0, :, 0, 0, 0].tolist() == [2.0, 2.0, 2.0, 3.0]  # kept frames 2, 3; slots 0, 1 padded with 2
    assert pad[0].tolist() == [True, True, False, False]
    assert torch.equal(out[1], ctx[1]) and not pad[1].any()  # unmasked: untouched


def test_keyed_noise_does_not_depend_on_the_batch_it_lands_in():
    a = KeyedRNG(torch.tensor([7, 11, 13]))
    b = KeyedRNG(torch.tensor([13]))
    assert torch.equal(a.rand()[2:], b.rand())
    assert torch.equal(a.randn(2, 3)[2:], b.randn(2, 3))
    assert not torch.equal(a.randn(4)[0], a.randn(4)[1])  # different keys, different streams


def test_own_context_replaces_only_the_last_frame_by_a_model_sample():
    dyn = tiny(own_context=1.0)
    B, K = 4, 3
    ctx = torch.randn(B, K, 4, 4, 4)
    actions = torch.randint(0, 3, (B, K))
    pad = torch.zeros(B, K, dtype=torch.bool)
    pad[3, 0] = True  # a window that starts at the episode's beginning is left alone
    keys = torch.arange(B) + 100
    out = dyn.own_context(ctx, actions, pad, KeyedRNG(keys))
    assert torch.equal(out[:, :-1], ctx[:, :-1]) and torch.equal(out[3], ctx[3])
    assert not torch.allclose(out[:3, -1], ctx[:3, -1])
    # it is the sample a rollout would draw from the frames before it (frames 0..K-2, first slot padded)
    prev = torch.cat([ctx[:3, :1], ctx[:3, :-1]], 1)
    prev_a = torch.cat([actions[:3, :1], actions[:3, :-1]], 1)
    prev_pad = torch.zeros(3, K, dtype=torch.bool)
    prev_pad[:, 0] = True
    rng = KeyedRNG(keys[:3])
    rng.rand()
    noise, ctx_noise = rng.randn(4, 4, 4), rng.randn(K, 4, 4, 4)
    want, _, _ = dyn.sample(prev, prev_a, prev_pad, noise=noise, ctx_noise=ctx_noise)
    torch.testing.assert_close(out[:3, -1], want)
    # deterministic in the keys (resume and DDP rely on it)
    assert torch.equal(out, dyn.own_context(ctx, actions, pad, KeyedRNG(keys)))


def test_forward_with_own_context_trains_every_weight_it_uses():
    dyn = tiny(own_context=0.5)
    batch = {
        "latents": torch.randn(6, 4, 4, 4, 4),
        "action": torch.randint(0, 3, (6, 3)),
        "reward": torch.zeros(6, 3),
        "terminated": torch.zeros(6, 3, dtype=torch.bool),
        "keys": torch.arange(6),
    }
    loss, metrics = dyn(batch)
    loss.backward()
    assert torch.isfinite(loss) and metrics["flow"] > 0
    assert dyn.inp.weight.grad is not None and dyn.inp.weight.grad.abs().sum() > 0


def test_change_gate_keeps_cells_it_predicts_unchanged_exact():
    dyn = tiny(change_gate=True).eval()
    B, K = 3, 3
    ctx, actions = torch.randn(B, K, 4, 4, 4), torch.randint(0, 3, (B, K))
    last_conv = dyn.out[-1]
    with torch.no_grad():
        last_conv.weight[-1].zero_()
        last_conv.bias[-1] = -10.0  # every cell predicted unchanged: the sample is the last frame, bit for bit
        closed, _, _ = dyn.sample(ctx, actions, generator=torch.Generator().manual_seed(0))
        last_conv.bias[-1] = 10.0  # every cell open: the flow's change goes through
        opened, _, _ = dyn.sample(ctx, actions, generator=torch.Generator().manual_seed(0))
    assert torch.equal(closed, ctx[:, -1])
    assert (opened - ctx[:, -1]).abs().amax((1, 2, 3)).min() > 0


def test_gate_keeps_cells_near_motion_open():
    """gate_keep_moving: a closed gate still lets the cells around a change in the last context step
    through (a moving ball may leave its cell), and only those."""
    dyn = tiny(change_gate=True, gate_keep_moving=1).eval()
    ctx, actions = torch.zeros(1, 3, 4, 8, 8), torch.zeros(1, 3, dtype=torch.long)
    ctx[0, -1, 0, 2, 5] = 0.5  # one cell changed between the last two frames
    last_conv = dyn.out[-1]
    with torch.no_grad():
        last_conv.weight[-1].zero_()
        last_conv.bias[-1] = -10.0  # the gate closes everywhere
        out, _, _ = dyn.sample(ctx, actions, generator=torch.Generator().manual_seed(0))
    changed = (out[0] - ctx[0, -1]).abs().amax(0) > 0
    assert changed[1:4, 4:7].any() and not changed[[0, 4, 5, 6, 7]].any() and not changed[:, [0, 1, 2, 3]].any()
    assert not changed[:, 7].any()
    dyn.cfg.gate_keep_moving = 0
    with torch.no_grad():
        out0, _, _ = dyn.sample(ctx, actions, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out0, ctx[:, -1])


def test_change_gate_is_trained_on_the_cells_that_moved():
    dyn = tiny(change_gate=True)
    z = torch.zeros(2, 4, 4, 4, 4)
    z[:, 3, :, 0, 0] = 1.0  # only cell (0, 0) changes from the last context frame to the target
    batch = {"latents": z, "action": torch.zeros(2, 3, dtype=torch.long), "reward": torch.zeros(2, 3),
             "terminated": torch.zeros(2, 3), "keys": torch.tensor([1, 2])}  # fmt: skip
    last_conv = dyn.out[-1]
    with torch.no_grad():  # gate logit = bias: the loss is the BCE of a constant against the 1-in-16 mask
        last_conv.weight[-1].zero_()
        last_conv.bias[-1] = 2.0
    dyn.cfg.pad_prob = 0.0
    _, m = dyn(batch)
    p = torch.sigmoid(torch.tensor(2.0))
    want = -(1 / 16 * torch.log(p) + 15 / 16 * torch.log(1 - p))
    assert abs(m["gate_bce"] - float(want)) < 1e-5


def test_change_gate_without_residual_is_a_clear_error():
    dyn = DynamicsConfig(channels=16, change_gate=True, residual=False)
    with pytest.raises(SimulacraError, match="change_gate needs residual"):
        check_model_config(AutoencoderConfig(kind="pixels"), dyn)
    dyn.residual = True
    check_model_config(AutoencoderConfig(kind="pixels"), dyn)


def test_heads_own_reads_the_model_s_own_sample_of_the_next_frame():
    """heads_own: for the windows picked, the heads' next frame is the sample a world step would draw from the
    same context (gated, snapped); the others keep the real one; heads_own 0 always reads the real one."""
    dyn = tiny(change_gate=True, heads_own=0.5, snap_to_pixels=True)
    B, K = 8, 3
    ctx, real = torch.randn(B, K, 4, 4, 4), torch.randn(B, 4, 4, 4)
    actions, pad = torch.randint(0, 3, (B, K)), torch.zeros(B, K, dtype=torch.bool)
    keys = torch.arange(B) + 7
    got = dyn.own_next(ctx, real, actions, pad, KeyedRNG(keys))
    rng = KeyedRNG(keys)
    pick = rng.rand() < 0.5
    noise, ctx_noise = rng.randn(4, 4, 4), rng.randn(K, 4, 4, 4)
    assert 0 < pick.sum() < B
    want, _, _ = dyn.sample(ctx[pick], actions[pick], pad[pick], noise=noise[pick], ctx_noise=ctx_noise[pick])
    torch.testing.assert_close(got[pick], want)
    assert torch.equal(got[~pick], real[~pick])
    dyn.cfg.heads_own = 0.0
    assert torch.equal(dyn.own_next(ctx, real, actions, pad, KeyedRNG(keys)), real)


def test_heads_before_sees_the_motion_into_the_transition():
    dyn = tiny(heads_before=True).eval()
    ctx, nxt = torch.randn(2, 3, 4, 4, 4), torch.randn(2, 4, 4, 4)
    a = torch.zeros(2, 3, dtype=torch.long)
    still, moved, earlier = ctx.clone(), ctx.clone(), ctx.clone()
    still[:, -2] = ctx[:, -1]
    moved[:, -2] = ctx[:, -1] + 1.0
    earlier[:, 0] += 1.0
    with torch.no_grad():
        r = {
            k: dyn.heads_logits(c, nxt, a)[0]
            for k, c in (("ctx", ctx), ("still", still), ("moved", moved), ("earlier", earlier))
        }
    assert not torch.allclose(r["still"], r["moved"])
    torch.testing.assert_close(r["ctx"], r["earlier"])  # only the frame right before the transition counts
    assert dyn.heads_conv[0].in_channels == 3 * 4 and tiny().heads_conv[0].in_channels == 2 * 4


def test_heads_context_see_every_earlier_context_frame():
    dyn = tiny(heads_context=True).eval()
    ctx, nxt = torch.randn(2, 3, 4, 4, 4), torch.randn(2, 4, 4, 4)
    a = torch.zeros(2, 3, dtype=torch.long)
    earlier = ctx.clone()
    earlier[:, 0] += 1.0
    with torch.no_grad():
        r, r_earlier = dyn.heads_logits(ctx, nxt, a)[0], dyn.heads_logits(earlier, nxt, a)[0]
        plain = tiny().eval()
        p, p_earlier = plain.heads_logits(ctx, nxt, a)[0], plain.heads_logits(earlier, nxt, a)[0]
    assert not torch.allclose(r, r_earlier)
    torch.testing.assert_close(p, p_earlier)
    assert dyn.heads_conv[0].in_channels == (2 + 2) * 4


def test_heads_options_out_of_range_are_clear_errors():
    with pytest.raises(SimulacraError, match="--heads-own must be"):
        check_model_config(AutoencoderConfig(kind="pixels"), DynamicsConfig(channels=16, heads_own=1.5))
    with pytest.raises(SimulacraError, match="--heads-before needs heads_on_next"):
        check_model_config(
            AutoencoderConfig(kind="pixels"), DynamicsConfig(channels=16, heads_before=True, heads_on_next=False)
        )
    for bad in (1, 5, -1):
        with pytest.raises(SimulacraError, match="--flow-context must be 0"):
            check_model_config(AutoencoderConfig(kind="pixels"), DynamicsConfig(channels=16, flow_context=bad))
    with pytest.raises(SimulacraError, match="--flow-context cannot be used with own_context"):
        check_model_config(
            AutoencoderConfig(kind="pixels"), DynamicsConfig(channels=16, flow_context=2, own_context=0.25)
        )
    with pytest.raises(SimulacraError, match="--heads-events cannot be used with heads_own"):
        check_model_config(
            AutoencoderConfig(kind="pixels"), DynamicsConfig(channels=16, heads_events=0.5, heads_own=0.5)
        )
    with pytest.raises(SimulacraError, match="--heads-events must be a fraction"):
        check_model_config(AutoencoderConfig(kind="pixels"), DynamicsConfig(channels=16, heads_events=1.5))


def test_context_heads_foresee_from_the_context_alone():
    """heads_on_next off with heads_context: the next frame is not read at all; every context frame is."""
    dyn = tiny(heads_context=True, heads_on_next=False).eval()
    ctx, nxt = torch.randn(2, 3, 4, 4, 4), torch.randn(2, 4, 4, 4)
    a = torch.zeros(2, 3, dtype=torch.long)
    earlier = ctx.clone()
    earlier[:, 0] += 1.0
    with torch.no_grad():
        r, r_other_next = dyn.heads_logits(ctx, nxt, a)[0], dyn.heads_logits(ctx, nxt + 1.0, a)[0]
        r_earlier = dyn.heads_logits(earlier, nxt, a)[0]
    torch.testing.assert_close(r, r_other_next)
    assert not torch.allclose(r, r_earlier)
    assert dyn.heads_conv[0].in_channels == 3 * 4


def test_flow_context_reads_only_the_last_frames_and_the_heads_all():
    """flow_context 2 of K 4: frames and actions before the last two reach the heads, never the U-Net, which
    then has the inputs (and the parameter count) of a K = 2 model."""
    dyn = tiny(context=4, flow_context=2, heads_context=True, heads_on_next=False).eval()
    short = tiny(context=2)
    ctx, x = torch.randn(2, 4, 4, 4, 4), torch.randn(2, 4, 4, 4)
    a, t, level = torch.randint(0, 3, (2, 4)), torch.full((2,), 0.5), torch.zeros(2)
    early, early_a = ctx.clone(), a.clone()
    early[:, :2] += 1.0
    early_a[:, :2] = (a[:, :2] + 1) % 3
    with torch.no_grad():
        v, v_early = dyn.velocity(x, t, ctx, a, level), dyn.velocity(x, t, early, early_a, level)
        h, h_early = dyn.heads_logits(ctx, x, a)[0], dyn.heads_logits(early, x, a)[0]
    torch.testing.assert_close(v, v_early)
    assert not torch.allclose(h, h_early)
    assert (
        dyn.inp.in_channels == short.inp.in_channels and dyn.actions.proj.in_features == short.actions.proj.in_features
    )
    assert dyn.heads_actions.proj.in_features == 4 * dyn.heads_actions.dim


def test_forward_with_heads_own_is_deterministic_in_the_keys():
    dyn = tiny(change_gate=True, heads_own=0.5, heads_before=True, snap_to_pixels=True)
    batch = {
        "latents": torch.randn(6, 4, 4, 4, 4),
        "action": torch.randint(0, 3, (6, 3)),
        "reward": torch.tensor([[0.0, 0, 1]] * 3 + [[0.0, 0, 0]] * 3),
        "terminated": torch.zeros(6, 3, dtype=torch.bool),
        "keys": torch.arange(6),
    }
    loss, m = dyn(batch)
    loss.backward()
    assert torch.isfinite(loss) and dyn.heads_conv[0].weight.grad.abs().sum() > 0
    assert dyn(batch)[1]["reward_ce"] == m["reward_ce"]


def test_skip_sigma_keeps_the_input_at_low_noise_and_leaves_pure_noise_to_the_net():
    """EDM-style preconditioning: at flow time 0 the output is x_t itself, at time 1 the U-Net's alone."""
    dyn, plain = tiny(skip_sigma=1.0).eval(), tiny().eval()  # same seed: the same weights
    x, ctx = torch.randn(2, 4, 4, 4), torch.randn(2, 3, 4, 4, 4)
    a, lvl = torch.zeros(2, 3, dtype=torch.long), torch.zeros(2)
    with torch.no_grad():
        at0 = dyn.velocity(x, torch.zeros(2), ctx, a, lvl)
        at1, net1 = dyn.velocity(x, torch.ones(2), ctx, a, lvl), plain.velocity(x, torch.ones(2), ctx, a, lvl)
        mid, net = (
            dyn.velocity(x, torch.full((2,), 0.5), ctx, a, lvl),
            plain.velocity(x, torch.full((2,), 0.5), ctx, a, lvl),
        )
    torch.testing.assert_close(at0, x)
    torch.testing.assert_close(at1, net1)
    torch.testing.assert_close(mid, x + net / 2**0.5)  # s = 1, t = 1/2: c_skip 1, c_out 1/sqrt(2)
    with pytest.raises(SimulacraError, match="--skip-sigma needs prediction 'x'"):
        check_model_config(
            AutoencoderConfig(kind="pixels"), DynamicsConfig(channels=16, skip_sigma=1.0, prediction="v")
        )


def test_stem_3_compares_neighbouring_cells_and_other_kernels_are_refused():
    """stem 3: a change in one cell reaches the first features of its neighbours (stem 1: only its own)."""
    for k in (1, 3):
        dyn = tiny(stem=k).eval()
        x, ctx = torch.zeros(1, 4, 4, 4), torch.zeros(1, 3, 4, 4, 4)
        base = dyn.inp(torch.cat([x, ctx.flatten(1, 2)], 1))
        ctx[0, -1, :, 1, 1] = 1.0
        moved = (dyn.inp(torch.cat([x, ctx.flatten(1, 2)], 1)) - base).abs().amax(1)[0] > 0
        assert moved[1, 1] and moved.sum() == (9 if k == 3 else 1), moved
    with pytest.raises(SimulacraError, match="--stem must be 1 or 3"):
        check_model_config(AutoencoderConfig(kind="pixels"), DynamicsConfig(channels=16, stem=5))


def test_the_output_layer_stays_fp32_under_bf16_autocast():
    """Mixed-precision training computes the U-Net in bf16 but its output, which lands in 8-bit pixels, in fp32."""
    dyn = tiny().eval()
    x, ctx = torch.randn(2, 4, 4, 4), torch.randn(2, 3, 4, 4, 4)
    a, lvl, t = torch.zeros(2, 3, dtype=torch.long), torch.zeros(2), torch.full((2,), 0.5)
    with torch.no_grad():
        full = dyn.velocity(x, t, ctx, a, lvl)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = dyn.velocity(x, t, ctx, a, lvl)
            inner = dyn.inp(torch.cat([x, ctx.flatten(1, 2)], 1))
    assert inner.dtype == torch.bfloat16  # autocast is on for the layers before it
    assert mixed.dtype == torch.float32 and full.dtype == torch.float32
    torch.testing.assert_close(mixed, full, atol=0.05, rtol=0.05)  # the same function, to bf16's precision


def test_time_shift_moves_flow_time_towards_noise_and_keeps_the_ends():
    """SD3's shift: t' = s t / (1 + (s - 1) t). Training draws and the sampler's steps both go through it."""
    dyn = tiny(time_shift=3.0)
    assert dyn.shift(0.0) == 0.0 and dyn.shift(1.0) == 1.0 and dyn.shift(0.5) == pytest.approx(0.75)
    assert tiny().shift(0.3) == 0.3  # no shift by default
    seen = []
    real = dyn.velocity

    def spy(x, t, *a, **k):
        seen.append(float(t[0]))
        return real(x, t, *a, **k)

    dyn.velocity = spy
    dyn.eval().sample(torch.zeros(1, 3, 4, 4, 4), torch.zeros(1, 3, dtype=torch.long))
    assert seen == pytest.approx([1.0, 0.75])  # 2 Euler steps from t = 1, the second at shift(0.5)
    with pytest.raises(SimulacraError, match="--time-shift must be a positive number"):
        check_model_config(AutoencoderConfig(kind="pixels"), DynamicsConfig(channels=16, time_shift=0.0))


def test_context_deltas_feed_the_earlier_frames_as_their_change_to_the_last():
    """With context_deltas the U-Net sees frames 0..K-2 minus frame K-1, and frame K-1 itself: the same weights
    given that differenced context by hand agree exactly; so a still context enters as zeros but the last frame."""
    deltas, plain = tiny(context_deltas=True).eval(), tiny().eval()
    plain.load_state_dict(deltas.state_dict())
    x, ctx = torch.randn(2, 4, 4, 4), torch.randn(2, 3, 4, 4, 4)
    a, lvl, t = torch.zeros(2, 3, dtype=torch.long), torch.zeros(2), torch.full((2,), 0.5)
    by_hand = torch.cat([ctx[:, :-1] - ctx[:, -1:], ctx[:, -1:]], 1)
    with torch.no_grad():
        torch.testing.assert_close(deltas.velocity(x, t, ctx, a, lvl), plain.velocity(x, t, by_hand, a, lvl))
        assert not torch.allclose(deltas.velocity(x, t, ctx, a, lvl), plain.velocity(x, t, ctx, a, lvl))
