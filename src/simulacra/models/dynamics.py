"""Action-conditioned latent dynamics: rectified-flow denoiser (DIAMOND-style, but in latent space).

Given the last K latent frames and the K actions taken at them, it *samples* the next latent frame
from noise in a few Euler steps. Sampling (not regressing the mean) is what keeps predictions sharp
when the future is uncertain. Context latents get random Gaussian noise during training, with the
level given to the model (GameNGen's augmentation), so long rollouts of its own imperfect outputs
do not drift. Reward-sign and termination heads read the context and the action.

Shapes: B batch, K context frames, C latent channels, h x w latent grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from simulacra.models.common import MAX_BLOCKS, MAX_LEVELS, Problem, at_least, batch_rng, fraction, short
from simulacra.spaces import ActionSpace


@dataclass
class DynamicsConfig:
    context: int = 4
    """K: past frames (and actions) the model conditions on; the streaming window."""
    flow_context: int = 0
    """Of the K context frames (and actions), how many the U-Net reads: the last ones (0: all K). The heads
    always read all K, so a long `context` can let them see far back while the flow's cost and inputs stay
    those of a short one."""
    channels: int = 64
    """U-Net width at the latent resolution."""
    channel_mult: tuple[int, ...] = (1, 2, 2)
    """Width multiplier per U-Net level (each further level halves the grid)."""
    blocks: int = 1
    """Residual blocks per level."""
    stem: int = 1
    """Kernel of the first convolution over the stacked frames: 1 embeds each cell alone; 3 lets it compare a
    cell with its neighbours across the context frames, where a small object's motion shows."""
    cond_dim: int = 128
    """Width of the conditioning vector (flow time, actions, context-noise level)."""
    sampling_steps: int = 4
    """Euler steps from noise to a frame at inference."""
    context_noise_max: float = 0.3
    """Training: context latents get N(0, s^2) noise, s ~ U(0, max) (0 disables the augmentation)."""
    context_noise_infer: float = 0.05
    """Inference: noise level applied to (and announced for) the context."""
    pad_prob: float = 0.2
    """Training: probability a window starts as if the episode just began (context padded by repetition)."""
    done_weight: float = 0.5
    """Weight of the reward and termination losses."""
    prediction: str = "x"
    """What the U-Net outputs: 'x' (the clean next frame/change; the last Euler step lands exactly on
    it, so static regions stay clean) or 'v' (the flow velocity noise - data)."""
    skip_sigma: float = 0.0
    """With 'x' prediction: EDM's preconditioning, read in flow time. The output is c_skip(t) x_t + c_out(t)
    F, where c_skip is the best linear guess of the target from x_t for a target of this std, so at low
    noise the U-Net only corrects its input instead of copying a small object's exact pixels through its
    stem. 0: off (the U-Net outputs the target)."""
    change_weight: float = 0.0
    """Extra loss weight on grid cells that change from the last frame (with `residual`), for small
    moving objects (a paddle, a ball). Off by default (docs/world-model.md has what it measured)."""
    time_shift: float = 1.0
    """Flow time t is drawn (training) and stepped (inference) through t' = s t / (1 + (s - 1) t) (SD3's shift):
    s > 1 spends more of both at high noise. The residual targets are left small (changes are sparse), so below
    t of about 0.8 a moving object still shows through the noise and the U-Net need only denoise it; where it
    is to go (a ball's direction) is learnt only from the noisiest draws. 1: no shift."""
    context_deltas: bool = False
    """The earlier context frames enter the U-Net as their change to the last one (the last frame stays as it
    is). The same information as the frames themselves, but a moving ball is then the whole of its channels
    instead of a few dim pixels on a static screen, which is what the optimiser finds first (docs/world-model.md,
    sixth round, has what it measured)."""
    temperature: float = 1.0
    """Inference: scale of the initial noise. 1 samples the learned distribution; lower trades
    diversity for fidelity (0 = the deterministic flow from the noise mean)."""
    snap_to_pixels: bool = False
    """Latents are 8-bit pixels (the 'pixels' autoencoder): round every sample to the pixel grid, so
    noise below half a gray level never accumulates over a long rollout. Set by `train`."""
    own_context: float = 0.0
    """Training: fraction of windows whose last context frame is replaced by the model's own sample
    (drawn as at inference, without gradient, from the frames before it), so it learns to correct
    its own errors instead of copying them forward (compounding). Costs about ``own_context x
    sampling_steps / 3`` extra forward passes per step."""
    residual: bool = True
    """Generate the change from the last context frame rather than the frame itself: static parts
    of the picture stay exact (copy-last is the prior), and the flow only has to model what moves."""
    change_gate: bool = False
    """With `residual` and pixel latents: also predict per grid cell whether it changes at all (an
    extra U-Net output, trained at every flow time like the frame), and keep the cells predicted
    unchanged exactly as they were. The flow's small errors in static cells otherwise pile up over a
    rollout as speckle. The gate is read at the last Euler step, when it sees the nearly finished
    sample, so a sampled ball keeps its cell open. Set by `train` for the 'pixels' autoencoder."""
    gate_weight: float = 0.1
    """Weight of the gate's loss (binary cross-entropy per cell) against the flow's."""
    heads_on_next: bool = True
    """The reward and termination heads read the transition's two frames (the last one and the next one:
    at inference the world's own sample), as DIAMOND's reward model does, instead of the two frames
    before it: a brick breaks, a point is scored, in the next frame. Off, with `heads_context`, they read
    only the context and the action: the event is foreseen from its cause, so a world that draws the next
    frame wrong still predicts it (docs/world-model.md, eighth round)."""
    reward_weight: float = 10.0
    """Weight of the nonzero reward signs in the reward head's cross-entropy: rewards are rare (2% of
    Breakout's steps), and unweighted the head learns to predict none (recall 0 on held-out events)."""
    life_head: bool = True
    """Also predict a life lost on the transition (ALE's ``info["lives"]`` going down), trained on the
    episodes whose data records lives: in Breakout a lost ball shows at once in the lives counter, while
    the episode's end often comes steps later on an unchanged frame."""
    heads_own: float = 0.0
    """Training: fraction of windows whose heads read the model's own sample of the next frame (drawn as at
    inference, without gradient: about 4 x this fraction extra forward passes per step) instead of the
    real one. At inference the heads read the world's sample, in which a ball may be faint or a brick
    unbroken; heads trained only on real frames then miss the event, or fire on speckle."""
    heads_events: float = 0.0
    """Training: the heads learn from windows of their own, this fraction of them drawn among those whose
    transition holds an event (a nonzero reward, a termination, a life loss), the rest at random; 0: from the
    flow's windows. A game over is one step in a few hundred, too rare to learn from at the base rate."""
    heads_before: bool = False
    """With `heads_on_next`: the heads also read the change between the two last context frames, the
    motion that leads into the transition (a ball heading for a brick, or past the paddle)."""
    heads_context: bool = False
    """The heads also read every earlier context frame, as its change to the last one. An
    event can come many steps after what decides it: Breakout's ball falls on below the paddle, unseen, and the
    life is lost 5 to 10 steps after it passed the paddle (sooner the faster it fell), so only a head that still
    sees the ball's last frames can time it. Needs a `context` that reaches that far back."""
    gate_keep_moving: int = 0
    """Inference, with the change gate: cells within this many cells of one that changed between the last
    two context frames stay open whatever the gate says, so a moving object (a ball) can leave its cell
    and enter the next one (0: the gate alone decides)."""

    def problems(self, latent_hw: tuple[int, int] | None = None) -> list[Problem]:
        """(field, problem) for every value out of range, and (given the latent grid) more U-Net levels
        than the grid can halve."""
        out: list[Problem] = []

        def check(name: str, problem: str | None) -> None:
            if problem is not None:
                out.append((name, problem))

        if self.context < 2:
            out.append(("context", f"must be at least 2 (the heads read the last two frames), not {self.context}"))
        mult = list(self.channel_mult)
        if not mult or min(mult) < 1 or len(mult) > MAX_LEVELS:
            out.append(("channel_mult", f"needs 1 to {MAX_LEVELS} positive integers, not {short(mult)}"))
        elif self.channels < 8 or any(self.channels * m % 8 for m in mult):
            widths = [self.channels * m for m in mult]
            out.append(
                ("channels", f"gives U-Net widths {widths}; they must be multiples of 8 (GroupNorm with 8 groups)")
            )
        elif latent_hw is not None and any(s % 2 ** (len(mult) - 1) for s in latent_hw):
            out.append(
                (
                    "channel_mult",
                    f"has {len(mult)} levels, more than a {latent_hw[0]}x{latent_hw[1]} latent grid can halve",
                )
            )
        if self.stem not in (1, 3):
            out.append(("stem", f"must be 1 or 3, not {short(self.stem)}"))
        if not 1 <= self.blocks <= MAX_BLOCKS:
            out.append(("blocks", f"must be 1 to {MAX_BLOCKS}, not {self.blocks}"))
        if self.cond_dim < 2 or self.cond_dim % 2:
            out.append(("cond_dim", f"must be an even number, 2 or more, not {self.cond_dim}"))
        check("sampling_steps", at_least(self.sampling_steps, 1))
        for name in ("context_noise_max", "context_noise_infer", "done_weight", "change_weight", "temperature"):
            check(name, at_least(getattr(self, name), 0, "0 or more"))
        check("gate_weight", at_least(self.gate_weight, 0, "0 or more"))
        check("skip_sigma", at_least(self.skip_sigma, 0, "0 or more"))
        if not 0 < self.time_shift < math.inf:
            out.append(("time_shift", f"must be a positive number, not {short(self.time_shift)}"))
        if self.skip_sigma > 0 and self.prediction != "x":
            out.append(("skip_sigma", "needs prediction 'x' (it preconditions the predicted target)"))
        check("gate_keep_moving", at_least(self.gate_keep_moving, 0, "0 or more"))
        check("reward_weight", at_least(self.reward_weight, 0, "0 or more"))
        check("pad_prob", fraction(self.pad_prob))
        check("heads_own", fraction(self.heads_own))
        check("heads_events", fraction(self.heads_events))
        if self.flow_context and self.own_context > 0:
            out.append(("flow_context", "cannot be used with own_context yet (its sample reads the whole context)"))
        if self.heads_events > 0 and self.heads_own > 0:
            out.append(("heads_events", "cannot be used with heads_own (the heads' own windows are real frames)"))
        if not 0 <= self.flow_context <= self.context or self.flow_context == 1:
            out.append(("flow_context", f"must be 0 (all K) or 2 to context ({self.context}), not {self.flow_context}"))
        if self.heads_before and not self.heads_on_next:
            out.append(("heads_before", "needs heads_on_next (the heads read the change into the transition)"))
        check("own_context", fraction(self.own_context))
        if self.prediction not in ("x", "v"):
            out.append(("prediction", f"must be 'x' or 'v', not {short(self.prediction)}"))
        if self.change_gate and not self.residual:
            out.append(("change_gate", "needs residual dynamics (it gates the change from the last frame)"))
        return out


LEGACY = {
    "dynamics": {
        "gate_keep_moving": 0,
        "heads_on_next": False,
        "reward_weight": 1.0,
        "life_head": False,
        "heads_own": 0.0,
        "heads_before": False,
        "skip_sigma": 0.0,
        "stem": 1,
        "time_shift": 1.0,
        "context_deltas": False,
        "heads_context": False,
        "flow_context": 0,
        "heads_events": 0.0,
    }
}
"""Options added after worlds were first saved, with the value a world saved before them had: a
world.json without them is that world, unchanged."""


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * 1000.0 * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class CondResBlock(nn.Module):
    """Residual block with FiLM (scale, shift) from the conditioning vector."""

    def __init__(self, cin: int, cout: int, cond_dim: int):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(8, cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2, self.conv2 = nn.GroupNorm(8, cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.film = nn.Linear(cond_dim, 2 * cout)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x, cond):
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.film(cond)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        return self.skip(x) + self.conv2(F.silu(h))


class ActionEncoder(nn.Module):
    """K actions -> one vector. Discrete: embeddings; Box: linear on actions scaled to [-1, 1]."""

    def __init__(self, space: ActionSpace, K: int, dim: int):
        super().__init__()
        self.kind = space.kind
        if space.kind == "discrete":
            self.embed = nn.Embedding(space.n, dim)
            self.register_buffer("offset", torch.tensor(space.start))
        elif space.kind == "box":
            # scaled in the graph (buffers, not numpy) so the exported step takes raw actions
            low, high = (torch.from_numpy(b).flatten() for b in space.finite_bounds())
            self.register_buffer("low", low)
            self.register_buffer("span", (high - low).clamp_min(1e-6))
            self.embed = nn.Linear(len(low), dim)
        self.pad = nn.Parameter(torch.zeros(dim))  # slots before the episode began
        self.proj = nn.Linear(K * dim, dim)
        self.dim = dim

    def forward(self, actions_BK: torch.Tensor, pad_BK: torch.Tensor | None = None) -> torch.Tensor:
        B, K = actions_BK.shape[:2]
        if self.kind == "discrete":
            e = self.embed((actions_BK.long() - self.offset).clamp(0, self.embed.num_embeddings - 1))
        elif self.kind == "box":
            e = self.embed((actions_BK.float().flatten(2) - self.low) / self.span * 2 - 1)
        else:
            e = self.pad.new_zeros(B, K, self.dim)
        if pad_BK is not None:
            e = torch.where(pad_BK[..., None], self.pad, e)
        return self.proj(e.flatten(1))


class Dynamics(nn.Module):
    def __init__(self, cfg: DynamicsConfig, latent_channels: int, action_space: ActionSpace | dict):
        super().__init__()
        if isinstance(action_space, dict):
            action_space = ActionSpace.from_json(action_space)
        self.cfg = cfg
        C, K, D = latent_channels, cfg.context, cfg.cond_dim
        Kf = cfg.flow_context or K
        self.latent_channels = C
        self.register_buffer("latent_std", torch.ones(()))  # set from data before training
        self.actions = ActionEncoder(action_space, Kf, D)
        self.cond = nn.Sequential(nn.Linear(2 * D, D), nn.SiLU(), nn.Linear(D, D))
        self.noise_embed = nn.Linear(D, D)
        chs = [cfg.channels * m for m in cfg.channel_mult]
        # stem 1: a per-cell embedding of the stacked frames, the residual blocks give the spatial context; a 3x3
        # stem over all (K+1)*C input channels is a fifth of the U-Net's FLOPs by count
        self.inp = nn.Conv2d(C * (Kf + 1), chs[0], cfg.stem, padding=cfg.stem // 2)
        self.down, self.up = nn.ModuleList(), nn.ModuleList()
        skips = []
        cin = chs[0]
        for i, ch in enumerate(chs):
            for _ in range(cfg.blocks):
                self.down.append(CondResBlock(cin, ch, D))
                cin = ch
                skips.append(ch)
            if i < len(chs) - 1:
                self.down.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
        self.mid = CondResBlock(cin, cin, D)
        for i, ch in reversed(list(enumerate(chs))):
            for _ in range(cfg.blocks):
                self.up.append(CondResBlock(cin + skips.pop(), ch, D))
                cin = ch
            if i > 0:
                self.up.append(nn.Upsample(scale_factor=2, mode="nearest"))
        self.out = nn.Sequential(nn.GroupNorm(8, cin), nn.SiLU(), nn.Conv2d(cin, C + cfg.change_gate, 3, padding=1))
        # reward sign (-1, 0, +1) and termination of the transition (frame K-1, action K-1)
        frames_in = 2 * cfg.heads_on_next + cfg.heads_before + (K - 1) * cfg.heads_context
        if not cfg.heads_on_next:
            frames_in = K if cfg.heads_context else 2
        # heads that see more actions than the flow (flow_context < K) embed them apart from it
        self.heads_actions = ActionEncoder(action_space, K, D) if Kf < K else None
        self.heads_conv = nn.Sequential(
            nn.Conv2d(frames_in * C, chs[0], 3, stride=2, padding=1),
            nn.SiLU(),
            nn.Conv2d(chs[0], chs[0], 3, stride=2, padding=1),
        )
        self.heads = nn.Sequential(nn.Linear(chs[0] + D, D), nn.SiLU(), nn.Linear(D, 4 + cfg.life_head))

    # ---- the denoiser ----------------------------------------------------------------------------
    def velocity(self, x_BChw, t_B, ctx_BKChw, actions_BK, ctx_noise_B, pad_BK=None):
        """The U-Net on noisy next latents x at flow time t: the clean target ('x') or the velocity ('v'),
        (B, C, h, w), and with `change_gate` one more channel: the logit that the cell changes."""
        if self.cfg.flow_context:
            Kf = self.cfg.flow_context
            ctx_BKChw, actions_BK = ctx_BKChw[:, -Kf:], actions_BK[:, -Kf:]
            pad_BK = None if pad_BK is None else pad_BK[:, -Kf:]
        a = self.actions(actions_BK, pad_BK)
        cond = self.cond(torch.cat([timestep_embedding(t_B, self.cfg.cond_dim), a], -1))
        cond = cond + self.noise_embed(timestep_embedding(ctx_noise_B, self.cfg.cond_dim))
        if self.cfg.context_deltas:
            ctx_BKChw = torch.cat([ctx_BKChw[:, :-1] - ctx_BKChw[:, -1:], ctx_BKChw[:, -1:]], 1)
        h = self.inp(torch.cat([x_BChw, ctx_BKChw.flatten(1, 2)], 1))
        hs = []
        for layer in self.down:
            if isinstance(layer, CondResBlock):
                h = layer(h, cond)
                hs.append(h)
            else:
                h = layer(h)
        h = self.mid(h, cond)
        for layer in self.up:
            h = layer(torch.cat([h, hs.pop()], 1), cond) if isinstance(layer, CondResBlock) else layer(h)
        # the output lands in 8-bit pixels, where bf16's 8-bit mantissa is half a gray level: it stays in fp32
        with torch.autocast(h.device.type, enabled=False):
            out = self.out(h.float())
        if self.cfg.skip_sigma > 0:
            # x_t = (1 - t) x + t noise; for x of std s: E[x | x_t] = c_skip x_t, and c_out is the std left
            s2, t = self.cfg.skip_sigma**2, t_B[:, None, None, None]
            var = (1 - t) ** 2 * s2 + t**2
            c_skip, c_out = (1 - t) * s2 / var, t * self.cfg.skip_sigma / var.sqrt()
            C = self.latent_channels
            out = torch.cat([c_skip * x_BChw + c_out * out[:, :C], out[:, C:]], 1)
        return out

    def heads_logits(self, ctx_BKChw, next_BChw, actions_BK, pad_BK=None):
        """(reward-sign logits (B, 3), termination logit (B,), life-loss logit (B,) or None without
        `life_head`) of the transition from the last of the (clean) context latents to ``next_BChw``.
        With `heads_on_next` the heads see the change and the next frame, max-pooled over the grid: a brick
        that breaks is one cell of 256, which a mean over the grid averages away. With `heads_before` they
        also see the change between the last two context frames (the motion into the transition), with
        `heads_context` every earlier context frame's change to the last. Without `heads_on_next` they read
        the context alone (``next_BChw`` is not read): with `heads_context` all of it, the earlier frames as
        their change to the last and max-pooled; without, the last two frames, averaged over the grid."""
        prev = ctx_BKChw[:, -1]
        if not self.cfg.heads_on_next and self.cfg.heads_context:
            parts = [(ctx_BKChw[:, :-1] - prev[:, None]).flatten(1, 2), prev]
            f = self.heads_conv(torch.cat(parts, 1)).amax((2, 3))
        elif self.cfg.heads_on_next:
            parts = [next_BChw - prev, next_BChw]
            if self.cfg.heads_before:
                parts.append(prev - ctx_BKChw[:, -2])
            if self.cfg.heads_context:
                parts.append((ctx_BKChw[:, :-1] - prev[:, None]).flatten(1, 2))
            f = self.heads_conv(torch.cat(parts, 1)).amax((2, 3))
        else:
            f = self.heads_conv(torch.cat([ctx_BKChw[:, -2], prev], 1)).mean((2, 3))
        encode = self.actions if self.heads_actions is None else self.heads_actions
        out = self.heads(torch.cat([f, encode(actions_BK, pad_BK)], -1))
        return out[:, :3], out[:, 3], out[:, 4] if self.cfg.life_head else None

    # ---- training --------------------------------------------------------------------------------
    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """batch: latents (B, K+1, C, h, w) [normalised], action (B, K), reward (B, K), terminated (B, K), and
        optionally life_loss (B, K) with has_lives (B,) (whether the window's episode records lives); with
        `heads_events`, the same again prefixed ``heads_``: the windows the heads learn from."""
        z = batch["latents"]
        K = self.cfg.context
        ctx, target, actions = z[:, :K], z[:, K], batch["action"][:, :K]
        rng = batch_rng(batch)
        # the generators live on the keys' device; keys left on the CPU (ad-hoc batches) still work
        ctx, pad = pad_context(ctx, (rng.rand() < self.cfg.pad_prob).to(z.device), rng.randint(1, K + 1).to(z.device))
        if self.cfg.own_context > 0:
            ctx = self.own_context(ctx, actions, pad, rng)
        heads_ctx, heads_next = ctx, z[:, K]  # clean, as the heads read them at inference
        if self.cfg.heads_on_next and self.cfg.heads_own > 0:
            heads_next = self.own_next(ctx, z[:, K], actions, pad, rng)
        heads_actions, heads_pad = actions, pad
        if self.cfg.flow_context:  # the flow's context noise is drawn for the frames it reads, no more
            Kf = self.cfg.flow_context
            ctx, actions, pad = ctx[:, -Kf:], actions[:, -Kf:], pad[:, -Kf:]
        if self.cfg.residual:
            # deliberately not rescaled to unit variance: changes are sparse (mostly exact zeros), so their
            # global std is tiny, and dividing by it would make a moving object a huge target against unit
            # noise; the flow would never train at a useful noise level, and samples would freeze what moves
            target = target - ctx[:, -1]
        level = rng.rand().to(z) * self.cfg.context_noise_max
        ctx = ctx + level[:, None, None, None, None] * rng.randn(*ctx.shape[1:]).to(z)
        t = self.shift(torch.sigmoid(rng.randn()).to(z))  # logit-normal flow time
        noise = rng.randn(*target.shape[1:]).to(z)
        x_t = (1 - t)[:, None, None, None] * target + t[:, None, None, None] * noise
        out = self.velocity(x_t, t, ctx, actions, level, pad)
        gate_loss = torch.zeros((), device=z.device)
        if self.cfg.change_gate:
            out, gate_logit = out[:, :-1], out[:, -1]
            # pixel latents are whole gray levels: a cell changed if any value moved by half a level or more
            moved = (target.abs() * self.latent_std * 127.5 >= 0.5).any(1).float()
            gate_loss = F.binary_cross_entropy_with_logits(gate_logit, moved)
        err = (out - (target if self.cfg.prediction == "x" else noise - target)) ** 2
        if self.cfg.residual and self.cfg.change_weight > 0:
            moved = (target.abs() > 1e-3).any(1, keepdim=True).float()  # a 4x4 patch that changed at all
            err = err * (1 + self.cfg.change_weight * moved)
        flow = err.mean()
        hb = {k.removeprefix("heads_"): v for k, v in batch.items() if k.startswith("heads_")}
        if not hb:
            r_loss, d_loss, l_loss, has_life = self.heads_loss(heads_ctx, heads_next, heads_actions, heads_pad, batch)
        else:  # the heads' own windows (drawn for their events), padded as the flow's are
            hz = hb["latents"]
            hctx, hpad = pad_context(hz[:, :K], (rng.rand() < self.cfg.pad_prob).to(z.device),
                                     rng.randint(1, K + 1).to(z.device))  # fmt: skip
            r_loss, d_loss, l_loss, has_life = self.heads_loss(hctx, hz[:, K], hb["action"][:, :K], hpad, hb)
        loss = flow + self.cfg.gate_weight * gate_loss + self.cfg.done_weight * (r_loss + d_loss + l_loss)
        metrics = {"flow": flow.item(), "reward_ce": r_loss.item(), "done_bce": d_loss.item()}
        if has_life:
            metrics["life_bce"] = l_loss.item()
        if self.cfg.change_gate:
            metrics["gate_bce"] = gate_loss.item()
        return loss, metrics

    def heads_loss(self, ctx_BKChw, next_BChw, actions_BK, pad_BK, labels: dict):
        """(reward, termination, life-loss losses, whether there is a life head) of the transition after the
        context, against ``labels``' reward, terminated, life_loss (B, K) (their step K-1) and has_lives (B,)."""
        K, dev = self.cfg.context, ctx_BKChw.device
        r_logits, d_logit, l_logit = self.heads_logits(ctx_BKChw, next_BChw, actions_BK, pad_BK)
        r_cls = (torch.sign(labels["reward"][:, K - 1]) + 1).long()
        term = labels["terminated"][:, K - 1].float()
        w = self.cfg.reward_weight
        r_loss = F.cross_entropy(r_logits, r_cls, weight=torch.tensor([w, 1.0, w], device=dev))
        d_loss = F.binary_cross_entropy_with_logits(d_logit, term, pos_weight=torch.tensor(10.0, device=dev))
        l_loss = torch.zeros((), device=dev)
        if l_logit is not None and "life_loss" in labels:
            # episodes that record no lives (every non-Atari env) weigh nothing
            has = labels["has_lives"].float()
            per = F.binary_cross_entropy_with_logits(
                l_logit, labels["life_loss"][:, K - 1].float(), pos_weight=torch.tensor(10.0, device=dev),
                reduction="none",
            )  # fmt: skip
            l_loss = (per * has).sum() / has.sum().clamp_min(1)
        return r_loss, d_loss, l_loss, l_logit is not None

    def own_next(self, ctx_BKChw, real_BChw, actions_BK, pad_BK, rng) -> torch.Tensor:
        """The next frame the heads train on: for a random `heads_own` fraction of the windows, the model's own
        sample of it from the (clean) context, exactly as a world step draws it; else the real one."""
        pick = (rng.rand() < self.cfg.heads_own).to(ctx_BKChw.device)
        noise = rng.randn(*ctx_BKChw.shape[2:]).to(ctx_BKChw) * self.cfg.temperature
        ctx_noise = rng.randn(*ctx_BKChw.shape[1:]).to(ctx_BKChw)
        if not pick.any():
            return real_BChw
        own, _, _ = self.sample(
            ctx_BKChw[pick], actions_BK[pick], pad_BK[pick], noise=noise[pick], ctx_noise=ctx_noise[pick]
        )
        out = real_BChw.clone()
        out[pick] = own
        return out

    def shift(self, t):
        """Flow time (a float or a tensor) through `time_shift`; 0 and 1 stay where they are."""
        s = self.cfg.time_shift
        return t if s == 1 else s * t / (1 + (s - 1) * t)

    def snap(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised latent -> [-1, 1] pixel -> nearest of 256 levels -> back."""
        return ((x * self.latent_std * 127.5 + 127.5).round().clamp(0, 255) - 127.5) / 127.5 / self.latent_std

    def own_context(self, ctx_BKChw, actions_BK, pad_BK, rng) -> torch.Tensor:
        """Replace the last context frame of a random subset of (unpadded) windows by a sample of the
        model from the frames before it, as a rollout would have produced it."""
        pick = (rng.rand() < self.cfg.own_context).to(ctx_BKChw.device) & ~pad_BK.any(1)
        noise = rng.randn(*ctx_BKChw.shape[2:]).to(ctx_BKChw) * self.cfg.temperature
        ctx_noise = rng.randn(*ctx_BKChw.shape[1:]).to(ctx_BKChw)
        if not pick.any():
            return ctx_BKChw
        c, a = ctx_BKChw[pick], actions_BK[pick]
        # frames 0..K-2 shifted one slot right, the first slot padded: the context right before frame K-1
        prev = torch.cat([c[:, :1], c[:, :-1]], 1)
        prev_a = torch.cat([a[:, :1], a[:, :-1]], 1)
        prev_pad = torch.zeros(prev_a.shape[:2], dtype=torch.bool, device=c.device)
        prev_pad[:, 0] = True
        own, _, _ = self.sample(prev, prev_a, prev_pad, noise=noise[pick], ctx_noise=ctx_noise[pick])
        out = ctx_BKChw.clone()
        out[pick, -1] = own
        return out

    # ---- inference -------------------------------------------------------------------------------
    def sample_noise(self, ctx_BKChw, generator=None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The randomness of one ``sample`` call, drawn in its order: (initial noise (B, C, h, w),
        context noise (B, K, C, h, w), or None when inference adds no context noise)."""
        ctx_noise = None
        dev = generator.device if generator is not None else ctx_BKChw.device  # the stream's device decides the draws
        if self.cfg.context_noise_infer > 0:
            ctx_noise = torch.randn(ctx_BKChw.shape, generator=generator, device=dev).to(ctx_BKChw)
        noise = torch.randn((ctx_BKChw.shape[0], *ctx_BKChw.shape[2:]), generator=generator, device=dev).to(ctx_BKChw)
        return noise * self.cfg.temperature, ctx_noise

    @torch.no_grad()
    def sample(
        self, ctx_BKChw, actions_BK, pad_BK=None, steps: int | None = None, generator=None, noise=None, ctx_noise=None
    ):
        """Sample next latents given (normalised) context latents and the K actions taken at them.
        The initial ``noise`` (B, C, h, w) and ``ctx_noise`` (B, K, C, h, w) are drawn from ``generator``
        unless given. Returns (latents (B, C, h, w), reward sign (B,), termination probability (B,))."""
        steps = steps or self.cfg.sampling_steps
        B = ctx_BKChw.shape[0]
        level = torch.full((B,), self.cfg.context_noise_infer, device=ctx_BKChw.device)
        if noise is None or (ctx_noise is None and self.cfg.context_noise_infer > 0):
            drawn, drawn_ctx = self.sample_noise(ctx_BKChw, generator)
            noise, ctx_noise = (drawn if noise is None else noise), (drawn_ctx if ctx_noise is None else ctx_noise)
        clean, base = ctx_BKChw, ctx_BKChw[:, -1]
        moving = self._moving_cells(ctx_BKChw) if self.cfg.change_gate and self.cfg.gate_keep_moving > 0 else None
        if self.cfg.context_noise_infer > 0:
            ctx_BKChw = ctx_BKChw + self.cfg.context_noise_infer * ctx_noise
        x, gate = noise, None
        ts = [self.shift(1 - i / steps) for i in range(steps + 1)]  # Python floats: constants on export
        for i in range(steps):
            t = torch.full((B,), ts[i], device=x.device)
            out = self.velocity(x, t, ctx_BKChw, actions_BK, level, pad_BK)
            if self.cfg.change_gate:
                out, gate = out[:, :-1], out[:, -1:]
            v = (x - out) / ts[i] if self.cfg.prediction == "x" else out  # x-prediction -> velocity
            x = x + (ts[i + 1] - ts[i]) * v
        if self.cfg.residual:
            if gate is not None:
                keep = gate > 0 if moving is None else (gate > 0) | moving
                x = x * keep.to(x.dtype)  # cells predicted unchanged stay exactly as they were
            x = base + x
        if self.cfg.snap_to_pixels:
            x = self.snap(x)
        r_logits, d_logit, _ = self.heads_logits(clean, x, actions_BK, pad_BK)
        return x, r_logits.argmax(-1).float() - 1, torch.sigmoid(d_logit)

    def _moving_cells(self, ctx_BKChw: torch.Tensor) -> torch.Tensor:
        """(B, 1, h, w) bool: cells within ``gate_keep_moving`` of one whose value changed by more than half
        a gray level between the last two context frames."""
        step = (ctx_BKChw[:, -1] - ctx_BKChw[:, -2]).abs().amax(1, keepdim=True) * self.latent_std * 127.5
        r = self.cfg.gate_keep_moving
        return F.max_pool2d((step > 0.5).to(ctx_BKChw.dtype), 2 * r + 1, stride=1, padding=r) > 0


def pad_context(ctx_BKChw: torch.Tensor, mask_B: torch.Tensor, keep_B: torch.Tensor):
    """Where mask: keep only the last ``keep`` frames and fill earlier slots with the first kept frame,
    exactly as a world pads its context right after reset. Returns (context, pad mask (B, K))."""
    K = ctx_BKChw.shape[1]
    idx = torch.arange(K, device=ctx_BKChw.device)[None].expand(len(mask_B), K)
    first = (K - keep_B)[:, None]
    pad = mask_B[:, None] & (idx < first)
    idx = torch.where(pad, first, idx)
    return torch.gather(ctx_BKChw, 1, idx[:, :, None, None, None].expand_as(ctx_BKChw)), pad
