"""Does a recurrent event model find what the dynamics' one-transition heads cannot? On real frames.

Trains a GRU event model (defined here: an experiment, not part of the library; DIAMOND's reward/end model
carries an LSTM the same way) on a data set's episodes, encoded by a world's frame representation, then runs it along every held-out episode from its first frame, on the real frames, and counts
reward steps, terminations and life losses found, as ``benchmarks/heads.py`` does for a world's own heads.
Windows whose scored part holds a termination or a life loss are drawn ``--event-fraction`` of the time: game
overs are 0.2% of Breakout's steps.

    python benchmarks/events_model.py RUN --data TRAIN --heldout HELDOUT [--steps 1500] [--set ends_before=true]
    python benchmarks/events_model.py RUN ... --steps 3000 --set 'arch="window"' window=12 [first_stride=2]

What it measured is in docs/world-model.md: the GRU (sixth round) finds Breakout's rewards and the life losses
that redraw the lives digit, and none of the game overs; a feed-forward model that reads the last 12 frames and
never the next one (eighth round) finds game overs and life losses from the fall that causes them.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from simulacra import layout
from simulacra.data import Dataset
from simulacra.models.dynamics import ActionEncoder
from simulacra.spaces import ActionSpace
from simulacra.world import World


@dataclass
class EventsConfig:
    hidden: int = 128
    """Size of the GRU memory carried along an episode."""
    channels: int = 32
    """Convolution channels of the per-transition features."""
    window: int = 24
    """Transitions per training window: long enough to hold the longest delay between a cause and its event
    (Breakout: 11 steps from the ball's exit to the game over) after the burn-in."""
    burn_in: int = 4
    """Leading transitions of each window that carry no loss (the memory warms up on them)."""
    reward_weight: float = 10.0
    """Loss weight of nonzero reward signs against zero (rewards are rare in most games)."""
    pos_weight: float = 10.0
    """Loss weight of a termination or a life loss against a step without one."""
    life_head: bool = True
    """Also predict ALE-style life losses (trained only on episodes that record lives)."""
    arch: str = "gru"
    """'gru': a memory carried along the episode; 'window': a feed-forward model that reads only the last
    `window` frames before the transition (the earlier ones as their change to the last) and its action, never
    the transition's next frame, so every event must be foreseen from its cause, as a world whose drawn frame
    is wrong still can."""
    first_stride: int = 1
    """'window': stride of the first convolution over the stacked frames (2 costs a quarter)."""
    ends_before: bool = False
    """Read termination and life loss off the memory *before* the transition's next frame (with its action),
    so they are learnt from their cause (the ball leaving) and not from an announcement that only some of
    them get: Breakout redraws the lives digit at every life loss but the last."""


class Events(nn.Module):
    def __init__(self, cfg: EventsConfig, latent_channels: int, action_space: ActionSpace):
        super().__init__()
        self.cfg = cfg
        C, F_, H = latent_channels, cfg.channels, cfg.hidden
        self.features = nn.Sequential(
            nn.Conv2d(2 * C, F_, 3, stride=2, padding=1),
            nn.SiLU(),
            nn.Conv2d(F_, F_, 3, stride=2, padding=1),
        )
        self.actions = ActionEncoder(action_space, 1, F_)
        self.inp = nn.Sequential(nn.Linear(2 * F_, H), nn.SiLU())
        self.gru = nn.GRUCell(H, H)
        self.out = nn.Linear(H, 4 + cfg.life_head)
        # termination and life loss from the memory before the transition and its action (``ends_before``)
        self.out_before = nn.Sequential(nn.Linear(H + F_, H), nn.SiLU(), nn.Linear(H, 1 + cfg.life_head))

    def initial_memory(self, batch: int, device=None) -> torch.Tensor:
        return torch.zeros(batch, self.cfg.hidden, device=device)

    def step(self, memory_BH, prev_BChw, next_BChw, action_B):
        """One transition (prev -> next under action): (new memory (B, H), reward-sign logits (B, 3),
        termination logit (B,), life-loss logit (B,) or None without ``life_head``)."""
        # max over the grid: a brick that breaks is one cell of 256, which a mean would average away
        f = self.features(torch.cat([next_BChw - prev_BChw, next_BChw], 1)).amax((2, 3))
        a = self.actions(action_B[:, None])
        before = self.out_before(torch.cat([memory_BH, a], -1)) if self.cfg.ends_before else None
        memory_BH = self.gru(self.inp(torch.cat([f, a], -1)), memory_BH)
        out = self.out(memory_BH)
        if before is not None:
            out = torch.cat([out[:, :3], before], 1)
        return memory_BH, out[:, :3], out[:, 3], out[:, 4] if self.cfg.life_head else None

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """batch: latents (B, T+1, C, h, w) [normalised], action (B, T), reward (B, T), terminated (B, T), and
        optionally life_loss (B, T) with has_lives (B,)."""
        z, actions = batch["latents"], batch["action"]
        T, burn = z.shape[1] - 1, self.cfg.burn_in
        m = self.initial_memory(z.shape[0], z.device)
        r_logits, d_logits, l_logits = [], [], []
        for t in range(T):
            m, r, d, life = self.step(m, z[:, t], z[:, t + 1], actions[:, t])
            if t >= burn:
                r_logits.append(r)
                d_logits.append(d)
                l_logits.append(life)
        r_logits = torch.stack(r_logits, 1).flatten(0, 1)
        d_logits = torch.stack(d_logits, 1).flatten()
        r_cls = (torch.sign(batch["reward"][:, burn:]) + 1).long().flatten()
        term = batch["terminated"][:, burn:].float().flatten()
        w = self.cfg.reward_weight
        pos = torch.tensor(self.cfg.pos_weight, device=z.device)
        r_loss = F.cross_entropy(r_logits, r_cls, weight=torch.tensor([w, 1.0, w], device=z.device))
        d_loss = F.binary_cross_entropy_with_logits(d_logits, term, pos_weight=pos)
        loss, metrics = r_loss + d_loss, {"reward_ce": r_loss.item(), "done_bce": d_loss.item()}
        if self.cfg.life_head and "life_loss" in batch:
            per = F.binary_cross_entropy_with_logits(
                torch.stack(l_logits, 1), batch["life_loss"][:, burn:].float(), pos_weight=pos, reduction="none"
            )
            has = batch["has_lives"].float()[:, None].expand_as(per)
            l_loss = (per * has).sum() / has.sum().clamp_min(1)
            loss = loss + l_loss
            metrics["life_bce"] = l_loss.item()
        return loss, metrics


class WindowEvents(nn.Module):
    """Events of the transition after the last of `window` frames, from those frames and its action alone."""

    def __init__(self, cfg: EventsConfig, latent_channels: int, action_space: ActionSpace):
        super().__init__()
        self.cfg = cfg
        C, F_, H = latent_channels, cfg.channels, cfg.hidden
        self.features = nn.Sequential(
            nn.Conv2d(cfg.window * C, F_, 3, stride=cfg.first_stride, padding=1),
            nn.SiLU(),
            nn.Conv2d(F_, F_, 3, stride=2, padding=1),
            nn.SiLU(),
            nn.Conv2d(F_, F_, 3, stride=2, padding=1),
        )
        self.actions = ActionEncoder(action_space, 1, F_)
        self.out = nn.Sequential(nn.Linear(2 * F_, H), nn.SiLU(), nn.Linear(H, 4 + cfg.life_head))

    def logits(self, frames_BLChw, action_B):
        last = frames_BLChw[:, -1]
        x = torch.cat([(frames_BLChw[:, :-1] - last[:, None]).flatten(1, 2), last], 1)
        f = self.features(x).amax((2, 3))
        out = self.out(torch.cat([f, self.actions(action_B[:, None])], -1))
        return out[:, :3], out[:, 3], out[:, 4] if self.cfg.life_head else None

    def forward(self, batch):
        """batch: latents (B, L, C, h, w), action (B,), reward (B,), terminated (B,), life_loss (B,), has_lives
        (B,): the events of the transition out of the last frame."""
        z = batch["latents"]
        r, d, life = self.logits(z, batch["action"])
        w = self.cfg.reward_weight
        pos = torch.tensor(self.cfg.pos_weight, device=z.device)
        r_loss = F.cross_entropy(r, (torch.sign(batch["reward"]) + 1).long(), weight=torch.tensor([w, 1.0, w]))
        d_loss = F.binary_cross_entropy_with_logits(d, batch["terminated"].float(), pos_weight=pos)
        loss, metrics = r_loss + d_loss, {"reward_ce": r_loss.item(), "done_bce": d_loss.item()}
        if life is not None:
            per = F.binary_cross_entropy_with_logits(life, batch["life_loss"].float(), pos_weight=pos, reduction="none")
            has = batch["has_lives"].float()
            l_loss = (per * has).sum() / has.sum().clamp_min(1)
            loss = loss + l_loss
            metrics["life_bce"] = l_loss.item()
        return loss, metrics


def window_frames(z_TChw: torch.Tensor, t: int, L: int) -> torch.Tensor:
    """The `L` frames up to and including frame t, the episode's first repeated before its start."""
    return z_TChw[torch.arange(t - L + 1, t + 1).clamp_min(0)]


def episode_arrays(world: World, ds: Dataset, i: int) -> dict:
    arr = ds.arrays(i)
    L = ds.episodes[i].length
    lives = arr.get("lives")
    lost = np.zeros(L, bool) if lives is None else np.diff(np.asarray(lives, np.int64))[:L] < 0
    with torch.no_grad():
        z = world.encode(ds.frames(i)).to(torch.float16)
    return {
        "z": z,
        "action": torch.as_tensor(np.array(arr["action"][:L])),
        "reward": torch.as_tensor(np.array(arr["reward"][:L], np.float32)),
        "terminated": torch.as_tensor(np.array(arr["terminated"][:L], bool)),
        "life_loss": torch.as_tensor(lost),
        "has_lives": lives is not None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="a world: its frame representation encodes the frames")
    ap.add_argument("--data", required=True, help="training episodes")
    ap.add_argument("--heldout", required=True, help="episodes to score on")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--event-fraction", type=float, default=0.5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE", help="EventsConfig overrides (JSON values)")
    ap.add_argument("--out", default="benchmarks/results/events_model.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    _, world_dir = layout.resolve_run(args.run)
    world = World.load(world_dir)
    cfg = EventsConfig(**{k: json.loads(v) for k, v in (kv.split("=", 1) for kv in args.set)})
    T, burn = cfg.window, cfg.burn_in
    train_ds, held_ds = Dataset.open(args.data), Dataset.open(args.heldout)
    eps = [episode_arrays(world, train_ds, i) for i in range(len(train_ds))]
    window = cfg.arch == "window"
    starts, eventful = [], []
    for e, ep in enumerate(eps):
        L = len(ep["action"])
        marks = (ep["terminated"] | ep["life_loss"]).numpy()
        if window:  # a start per transition; frames before the episode's first repeat it
            starts += [(e, t) for t in range(L)]
            eventful += list(marks)
            continue
        for s in range(0, L - T + 1):
            starts.append((e, s))
            eventful.append(bool(marks[s + burn : s + T].any()))
    starts, eventful = np.array(starts), np.array(eventful)
    ev_idx, all_idx = np.flatnonzero(eventful), np.arange(len(starts))
    model = (WindowEvents if window else Events)(cfg, world.dyn.latent_channels, world.action_space)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, args.lr, total_steps=args.steps, pct_start=0.05)
    t0 = time.perf_counter()
    for step in range(args.steps):
        pick = np.where(
            rng.random(args.batch) < args.event_fraction,
            rng.choice(ev_idx, args.batch),
            rng.choice(all_idx, args.batch),
        )
        items = [(eps[e], s) for e, s in starts[pick]]
        if window:
            batch = {
                "latents": torch.stack([window_frames(ep["z"], t, T) for ep, t in items]).float(),
                **{
                    k: torch.stack([ep[k][t] for ep, t in items])
                    for k in ("action", "reward", "terminated", "life_loss")
                },
                "has_lives": torch.tensor([ep["has_lives"] for ep, _ in items]),
            }
        else:
            batch = {
                "latents": torch.stack([ep["z"][s : s + T + 1] for ep, s in items]).float(),
                **{k: torch.stack([ep[k][s : s + T] for ep, s in items]) for k in ("action", "reward", "terminated")},
                "life_loss": torch.stack([ep["life_loss"][s : s + T] for ep, s in items]),
                "has_lives": torch.tensor([ep["has_lives"] for ep, _ in items]),
            }
        loss, metrics = model(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 100 == 0 or step == args.steps - 1:
            print(f"step {step} {time.perf_counter() - t0:.0f}s loss {loss.item():.4f} {metrics}", flush=True)
    train_s = time.perf_counter() - t0
    model.eval()
    real = {k: [] for k in ("reward", "termination", "life_loss")}
    pred = {k: [] for k in real}
    with torch.no_grad():
        for i in range(len(held_ds)):
            ep = episode_arrays(world, held_ds, i)
            z, m = ep["z"].float(), None if window else model.initial_memory(1)
            for t in range(len(ep["action"])):
                if window:
                    r, d, life = model.logits(window_frames(z, t, T)[None], ep["action"][t : t + 1])
                else:
                    m, r, d, life = model.step(m, z[t : t + 1], z[t + 1 : t + 2], ep["action"][t : t + 1])
                real["reward"].append(bool(ep["reward"][t] != 0))
                pred["reward"].append(int(r.argmax()) != 1)
                real["termination"].append(bool(ep["terminated"][t]))
                pred["termination"].append(float(d.sigmoid()) > 0.5)
                real["life_loss"].append(bool(ep["life_loss"][t]))
                pred["life_loss"].append(life is not None and float(life.sigmoid()) > 0.5)
    out = {"run": args.run, "data": args.data, "heldout": args.heldout, "steps": args.steps,
           "train_seconds": round(train_s, 1), "config": asdict(cfg), "events": {}}  # fmt: skip
    for k in real:
        rl, pr = np.array(real[k]), np.array(pred[k])
        hit = int((rl & pr).sum())
        out["events"][k] = {"real": int(rl.sum()), "predicted": int(pr.sum()), "hit": hit,
                            "recall": hit / rl.sum() if rl.sum() else None,
                            "precision": hit / pr.sum() if pr.sum() else None}  # fmt: skip
        print(f"{k:<12} real {int(rl.sum()):>4}  predicted {int(pr.sum()):>4}  hit {hit:>4}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
