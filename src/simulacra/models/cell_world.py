"""A cell world for planning in mazes: a map encoded from the frame, and the agent as a distribution
over (heading, cell) stepped by a learned local rule.

The vector JEPA (``jepa.py``) squeezes a frame into 64 numbers; in FourRooms, where the gaps between
the rooms move with every layout, that plans 55% of goals (docs/plan.md). A map of cells whose
predictor moves the agent (the spatial JEPA of stop 23) was right one step ahead 99% of the time but
blurred the agent over a few steps of its own predictions, and planned 50%. Here the state the
predictor carries is the agent itself, so nothing can blur but the agent's probability:

- the encoder resizes the frame so that one cell is 4x4 pixels and halves it twice: a ``grid`` x
  ``grid`` map of ``channels`` numbers per cell, read once per plan (the walls do not move);
- the agent is a probability over (heading, cell), ``headings`` x ``grid`` x ``grid`` numbers; a frame
  gives it as a one-hot at the cell and heading the readouts pick;
- the rule: a small convolution over the map gives, for every cell, heading and action, the
  probabilities of the five moves (stay, east, south, west, north) and of the next heading. One env
  step pushes each cell's mass along them, so a wall is learned once, locally, and holds in any layout;
- training follows the agent's recorded cell and heading: start from the true one-hot, push it
  ``unroll`` env steps with the recorded actions, and maximise the probability of each true next state
  (the likelihood of the recording, as in a hidden Markov model whose state is observed). The readouts
  are cross-entropies against the same records; a decoder on the detached map draws the plan's picture.

Unlike the JEPAs, the targets are the recorded agent state, not a frame's embedding: this world needs
the data's per-step cell and heading (MiniGrid records both), and sees nothing else move. One
planning step is ``block`` env steps, as for the other worlds, so the planners and the MPC loop are
the same.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from simulacra.models.autoencoder import to_unit
from simulacra.models.common import Problem, at_least

MOVES = ((0, 0), (1, 0), (0, 1), (-1, 0), (0, -1))
"""(dx, dy) of stay, east, south, west, north: MiniGrid's headings 0-3 are east, south, west, north."""


@dataclass
class CellWorldConfig:
    action_dim: int = 15
    """Numbers in one planning step's action: the block's per-env-step features, concatenated."""
    block: int = 5
    """Env steps per planning step."""
    feature_dim: int = 3
    """Numbers of one env step's action features (action_dim = block x feature_dim); one-hot choices."""
    grid: int = 19
    """Cells per side of the map (the world's own grid: MiniGrid FourRooms is 19 x 19)."""
    channels: int = 16
    """Numbers per cell of the map."""
    hidden: int = 64
    """Width of the rule's convolution."""
    headings: int = 4
    """Directions the agent can face."""
    unroll: int = 25
    """Env steps the agent's distribution is pushed in training (the planning horizon: 5 blocks of 5)."""
    rollout: str = "mode"
    """How planning rolls the agent forward: "mode" (the most likely next state, a table lookup) or
    "mean" (the whole distribution, as training does; about 30x slower)."""
    readout_weight: float = 1.0
    """Weight of the cell and heading readouts' cross-entropy against the rule's likelihood."""
    position_scale: float = 0.5
    """Cells per proprioception unit (the task's scale: cell / 0.5), for the position the cost reads."""
    decoder: bool = True
    """Also learn a decoder from the detached map (pictures of the plan only)."""

    def problems(self) -> list[Problem]:
        out = []
        for name in ("action_dim", "block", "feature_dim", "grid", "channels", "hidden", "headings", "unroll"):
            if (p := at_least(getattr(self, name), 1)) is not None:
                out.append((name, p))
        if (p := at_least(self.readout_weight, 0)) is not None:
            out.append(("readout_weight", p))
        if self.rollout not in ("mode", "mean"):
            out.append(("rollout", f"must be mode or mean, not {self.rollout!r}"))
        if self.position_scale <= 0:
            out.append(("position_scale", "must be > 0"))
        if self.action_dim != self.block * self.feature_dim:
            out.append(("action_dim", f"must be block x feature_dim = {self.block * self.feature_dim}"))
        return out


def shift(x_BGG: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    """Move every cell's value by (dx, dy) over the last two dims (y, x); what leaves the map is lost."""
    if dx == 0 and dy == 0:
        return x_BGG
    g_y, g_x = x_BGG.shape[-2:]
    out = torch.zeros_like(x_BGG)
    ys, yd = (slice(0, g_y - dy), slice(dy, g_y)) if dy >= 0 else (slice(-dy, g_y), slice(0, g_y + dy))
    xs, xd = (slice(0, g_x - dx), slice(dx, g_x)) if dx >= 0 else (slice(-dx, g_x), slice(0, g_x + dx))
    out[..., yd, xd] = x_BGG[..., ys, xs]
    return out


class CellWorld(nn.Module):
    def __init__(self, cfg: CellWorldConfig, frame_hw: tuple[int, int] = (64, 64)):
        super().__init__()
        self.cfg, self.frame_hw = cfg, tuple(frame_hw)
        c, g, nh = cfg.channels, cfg.grid, cfg.headings
        self.encoder = nn.Sequential(
            nn.Conv2d(3, 32, 4, stride=2, padding=1), nn.GroupNorm(8, 32), nn.SiLU(),
            nn.Conv2d(32, 32, 4, stride=2, padding=1), nn.GroupNorm(8, 32), nn.SiLU(),
            nn.Conv2d(32, c, 3, padding=1),
        )  # fmt: skip
        # per cell: for each action and heading, logits of the 5 moves and of the next heading
        self.rule = nn.Sequential(
            nn.Conv2d(c, cfg.hidden, 3, padding=1), nn.SiLU(),
            nn.Conv2d(cfg.hidden, cfg.hidden, 1), nn.SiLU(),
            nn.Conv2d(cfg.hidden, cfg.feature_dim * nh * (len(MOVES) + nh), 1),
        )  # fmt: skip
        self.where = nn.Conv2d(c, 1, 1)
        self.facing = nn.Conv2d(c, nh, 1)
        ys, xs = torch.meshgrid(
            torch.arange(g, dtype=torch.float32), torch.arange(g, dtype=torch.float32), indexing="ij"
        )
        self.register_buffer(
            "cells_2N", torch.stack([xs.flatten(), ys.flatten()]) / cfg.position_scale, persistent=False
        )
        self.map_dim, self.agent_dim = c * g * g, nh * g * g
        self.state_dim = self.map_dim + self.agent_dim
        if cfg.decoder:
            self.decoder = nn.Sequential(
                nn.ConvTranspose2d(c, 32, 4, stride=2, padding=1), nn.GroupNorm(8, 32), nn.SiLU(),
                nn.ConvTranspose2d(32, 3, 4, stride=2, padding=1),
            )  # fmt: skip

    # ---- pieces -----------------------------------------------------------------------------------
    def map(self, frames_BCHW: torch.Tensor) -> torch.Tensor:
        """uint8 (or [-1, 1]) frames -> (B, channels, grid, grid)."""
        x = to_unit(frames_BCHW) if frames_BCHW.dtype == torch.uint8 else frames_BCHW
        side = 4 * self.cfg.grid
        return self.encoder(F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False))

    def readouts(self, map_BCGG: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits of the agent's cell (B, grid*grid) and of its heading in every cell (B, headings, G*G)."""
        return self.where(map_BCGG).flatten(1), self.facing(map_BCGG).flatten(2)

    def rules(self, map_BCGG: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Move and next-heading probabilities: (B, feature, heading, 5, G, G), (B, feature, heading, headings, G, G)."""
        cfg, (B, _, g, _) = self.cfg, map_BCGG.shape
        nh, nm = cfg.headings, len(MOVES)
        out = self.rule(map_BCGG).view(B, cfg.feature_dim, nh, nm + nh, g, g)
        return torch.softmax(out[:, :, :, :nm], 3), torch.softmax(out[:, :, :, nm:], 3)

    def push(self, agent_BHGG: torch.Tensor, rules, feature_BF: torch.Tensor) -> torch.Tensor:
        """The agent's distribution one env step later, under action features (one-hot, or a mixture)."""
        move, turn = rules
        w = feature_BF[:, :, None, None, None, None]
        m, q = (w * move).sum(1), (w * turn).sum(1)  # (B, heading, 5 | headings, G, G)
        # mass leaving (heading h, cell) by move k, arriving facing j: summed over h (broadcast products
        # are several times faster than einsum's path for these small dims on a CPU)
        flow = ((agent_BHGG[:, :, None] * m)[:, :, :, None] * q[:, :, None]).sum(1)  # (B, 5, headings, G, G)
        return sum(shift(flow[:, k], dx, dy) for k, (dx, dy) in enumerate(MOVES))

    def _split(self, z_BD: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.cfg
        g = cfg.grid
        return z_BD[:, : self.map_dim].view(-1, cfg.channels, g, g), z_BD[:, self.map_dim :].view(
            -1, cfg.headings, g, g
        )

    # ---- what a planner needs ---------------------------------------------------------------------
    def encode(self, frames_BCHW: torch.Tensor, proprio_BP: torch.Tensor | None = None) -> torch.Tensor:
        """Frames -> (map, agent) flattened (B, state_dim): the agent one-hot at the read cell and heading.
        The agent is read from the frame itself, so ``proprio`` is not needed (and is ignored)."""
        m = self.map(frames_BCHW)
        where, facing = self.readouts(m)
        cell = where.argmax(1)
        heading = facing.gather(2, cell[:, None, None].expand(-1, self.cfg.headings, 1))[:, :, 0].argmax(1)
        agent = torch.zeros(len(m), self.cfg.headings, self.cfg.grid**2, dtype=m.dtype)
        agent[torch.arange(len(m)), heading, cell] = 1.0
        return torch.cat([m.flatten(1), agent.flatten(1)], 1)

    def rollout(self, z_BD: torch.Tensor, actions_BHA: torch.Tensor) -> torch.Tensor:
        """States after each of the H planning steps (B, H, state_dim); the map is carried unchanged.
        ``rollout="mode"`` follows the most likely move and heading from the most likely state (exact
        where the world is deterministic, as MiniGrid is, and a table lookup per step); "mean" pushes
        the whole distribution."""
        B = len(z_BD)
        shared = B > 1 and z_BD.stride(0) == 0  # the planner's candidates: one start, expanded
        map_BCGG, agent = self._split(z_BD[:1] if shared else z_BD)
        rules = self.rules(map_BCGG)
        feats = actions_BHA.reshape(B, -1, self.cfg.block, self.cfg.feature_dim)
        maps = map_BCGG.expand(B, -1, -1, -1).flatten(1) if shared else map_BCGG.flatten(1)
        out = []
        if self.cfg.rollout == "mode":
            nxt = self.next_state(rules)  # (B or 1, feature, headings * G * G)
            row = torch.zeros(B, dtype=torch.long) if shared else torch.arange(B)
            s = agent.flatten(1).argmax(1).expand(B) if shared else agent.flatten(1).argmax(1)
            for h in range(feats.shape[1]):
                for f in feats[:, h].unbind(1):
                    s = nxt[row, f.argmax(1), s]
                onehot = torch.zeros(B, self.agent_dim, dtype=maps.dtype)
                onehot[torch.arange(B), s] = 1.0
                out.append(torch.cat([maps, onehot], 1))
            return torch.stack(out, 1)
        if shared:
            rules = tuple(r.expand(B, *r.shape[1:]) for r in rules)
            agent = agent.expand(B, -1, -1, -1)
        for h in range(feats.shape[1]):
            for f in feats[:, h].unbind(1):
                agent = self.push(agent, rules, f)
            out.append(torch.cat([maps, agent.flatten(1)], 1))
        return torch.stack(out, 1)

    def next_state(self, rules) -> torch.Tensor:
        """The most likely next state of every (action, heading, cell): (B, feature, headings * G * G)
        indices into the flattened (heading, cell) state."""
        move, turn = rules
        g = self.cfg.grid
        k, j = move.argmax(3), turn.argmax(3)  # (B, feature, heading, G, G)
        ys, xs = torch.meshgrid(torch.arange(g), torch.arange(g), indexing="ij")
        dx = torch.tensor([d[0] for d in MOVES])[k]
        dy = torch.tensor([d[1] for d in MOVES])[k]
        x, y = (xs + dx).clamp(0, g - 1), (ys + dy).clamp(0, g - 1)
        return (j * g * g + y * g + x).flatten(2)

    def step(self, z_BD: torch.Tensor, action_BA: torch.Tensor) -> torch.Tensor:
        return self.rollout(z_BD, action_BA[:, None])[:, 0]

    def position(self, z_BD: torch.Tensor) -> torch.Tensor:
        """The agent's expected position (..., state_dim) -> (..., 2), in proprioception units."""
        lead = z_BD.shape[:-1]
        agent = z_BD.reshape(-1, self.state_dim)[:, self.map_dim :].view(-1, self.cfg.headings, self.cfg.grid**2)
        p = agent.sum(1)
        return (p @ self.cells_2N.T / p.sum(1, keepdim=True).clamp_min(1e-9)).view(*lead, 2)

    def cost_features(self, z_NHD: torch.Tensor) -> torch.Tensor:
        """What the planner's cost compares: the agent's expected position."""
        return self.position(z_NHD)

    @torch.no_grad()
    def steps_to(self, goal_z_D: torch.Tensor) -> torch.Tensor:
        """Env steps from every (heading, cell) to the goal's cell under the world's own rule, on the
        goal frame's map: breadth-first search backwards over the mode table (headings * G * G,); a state
        the rule never brings to the goal gets headings * G * G. This is a cost that knows walls, made from
        nothing but the learned world."""
        m, agent = self._split(goal_z_D[None])
        nxt = self.next_state(self.rules(m))[0]  # (feature, S)
        S, g2 = self.agent_dim, self.cfg.grid**2
        goal_cell = int(agent.flatten(2).sum(1)[0].argmax())
        far = float(S)
        dist = torch.full((S,), far)
        dist[goal_cell::g2] = 0.0
        for _ in range(S):
            new = torch.minimum(dist, 1 + dist[nxt].min(0).values)
            if torch.equal(new, dist):
                break
            dist = new
        return dist

    def steps_cost(self, goal_z_D: torch.Tensor, along: float = 0.0):
        """The planner's cost in steps to the goal: the expected steps left at the horizon's end, plus
        ``along`` times their mean over the earlier steps (as ``planners.latent_cost``)."""
        dist_S = self.steps_to(goal_z_D)

        def cost(z_NHD: torch.Tensor) -> torch.Tensor:
            d = z_NHD[..., self.map_dim :] @ dist_S  # (N, H): the agent's mass is 1
            return d[:, -1] + (along * d[:, :-1].mean(1) if along and d.shape[1] > 1 else 0.0)

        return cost

    def decode(self, z_BD: torch.Tensor) -> torch.Tensor:
        """States -> frames in [-1, 1] at the data's size, drawn from the map (only with ``decoder``)."""
        return self._draw(self._split(z_BD)[0])

    def _draw(self, map_BCGG: torch.Tensor) -> torch.Tensor:
        return F.interpolate(self.decoder(map_BCGG), size=self.frame_hw, mode="bilinear", align_corners=False)

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        frames = batch["frame"]  # (B, C, H, W) uint8: the first frame of the run
        feats = batch["actions"]  # (B, K, feature_dim): each env step's action features
        cells = batch["cell"].long()  # (B, K+1): y * grid + x, recorded
        heads = batch["heading"].long()  # (B, K+1), recorded
        cfg = self.cfg
        B, K = feats.shape[:2]
        g2 = cfg.grid**2
        m = self.map(frames)
        where, facing = self.readouts(m)
        ce_cell = F.cross_entropy(where, cells[:, 0])
        ce_head = F.cross_entropy(
            facing.gather(2, cells[:, :1, None].expand(-1, cfg.headings, 1))[:, :, 0], heads[:, 0]
        )
        rules = self.rules(m)
        agent = torch.zeros(B, cfg.headings * g2, dtype=m.dtype)
        agent[torch.arange(B), heads[:, 0] * g2 + cells[:, 0]] = 1.0
        agent = agent.view(B, cfg.headings, cfg.grid, cfg.grid)
        nll = []
        for k in range(K):
            agent = self.push(agent, rules, feats[:, k])
            p_true = agent.flatten(1).gather(1, (heads[:, k + 1] * g2 + cells[:, k + 1])[:, None])[:, 0]
            nll.append(-torch.log(p_true.clamp_min(1e-6)))
        nll_BK = torch.stack(nll, 1)
        loss = nll_BK.mean() + cfg.readout_weight * (ce_cell + ce_head)
        with torch.no_grad():
            cell_acc = (where.argmax(1) == cells[:, 0]).float().mean()
        metrics = {"nll": nll_BK.mean().item(), "nll_1": nll_BK[:, 0].mean().item(),
                   "nll_last": nll_BK[:, -1].mean().item(), "ce_cell": ce_cell.item(),
                   "ce_heading": ce_head.item(), "cell_acc": cell_acc.item()}  # fmt: skip
        if cfg.decoder:
            rec = (self._draw(m.detach()) - to_unit(frames)).abs().mean()
            loss = loss + rec
            metrics["recon_l1"] = rec.item()
        return loss, metrics
