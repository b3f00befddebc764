"""Does a Breakout world keep its ball? Open-loop rollouts from held-out starts, the ball found by colour.

The state probe and the discriminator see a frozen ball only on average; this looks at the ball itself. At
64x64 Breakout's ball is one to four dim red pixels below the bricks (rows 30-55, away from the walls): a start
counts at horizon k where the real frame k shows the ball. Per horizon it prints how often the generated
frame shows a compact ball at all, the median position error of those that do (in pixels, |dy| + |dx|), the
same error for copy-last, the median per-step displacement of the generated and of the real ball, and the
ball's red mass (a ghost that fades or smears loses it). The figures go to --out as JSON.

    python benchmarks/breakout_ball.py RUN [RUN ...] [--data HELDOUT] [--set gate_keep_moving=1] [--png OUT]
"""

from __future__ import annotations

import argparse
import json
import types
from pathlib import Path

import numpy as np
import torch

from simulacra import layout
from simulacra.data import Dataset
from simulacra.eval import heldout, measure
from simulacra.world import World

ROWS, COLS = (30, 56), (4, 60)
SHOW = (1, 2, 4, 8, 16)


def ball_positions(frames_NHWC: np.ndarray) -> np.ndarray:
    """(y, x, mass, spread) of the ball in each frame (..., 4): the red-weighted centroid of the reddish pixels,
    their summed red in full-ball-pixel units (200), and their weighted spread in pixels. Position is NaN where
    there is no compact ball (mass under 0.4 or spread over 1.5 px: a faded ball or a smear).

    At 64x64 the ball is under a pixel wide, so the area-resized frames show it as 1-4 dim pixels (red 17-200):
    a threshold on bright red sees a fifth of the real balls. Its mass is what stays constant (0.5-1.3)."""
    reg = frames_NHWC[..., ROWS[0] : ROWS[1], COLS[0] : COLS[1], :].astype(np.float32)
    r = reg[..., 0] * ((reg[..., 0] >= 12) & (reg[..., 0] > 2 * reg[..., 1] + 2))
    ys, xs = np.mgrid[ROWS[0] : ROWS[1], COLS[0] : COLS[1]]
    mass = r.sum((-1, -2))
    w = r / np.maximum(mass, 1e-6)[..., None, None]
    cy, cx = (w * ys).sum((-1, -2)), (w * xs).sum((-1, -2))
    spread = np.sqrt((w * ((ys - cy[..., None, None]) ** 2 + (xs - cx[..., None, None]) ** 2)).sum((-1, -2)))
    out = np.stack([cy, cx, mass / 200, spread], -1)
    out[(mass / 200 < 0.4) | (spread > 1.5), :2] = np.nan
    return out


def _median(x: np.ndarray) -> float | None:
    x = x[~np.isnan(x)]
    return float(np.median(x)) if len(x) else None


def track(ctx, real, gen, mask) -> dict:
    (br, mr), (bg, mg), (bc, _) = ((p[..., :2], p[..., 2]) for p in map(ball_positions, (real, gen, ctx[:, -1])))
    out = {}
    for k in SHOW:
        m = mask[:, k - 1].astype(bool) & ~np.isnan(br[:, k - 1, 0])
        prev_r, prev_g = (bc, bc) if k == 1 else (br[:, k - 2], bg[:, k - 2])
        out[k] = {
            "starts": int(m.sum()),
            "present": float(np.mean(~np.isnan(bg[m, k - 1, 0]))) if m.any() else None,
            "error": _median(np.abs(bg[m, k - 1] - br[m, k - 1]).sum(-1)),
            "error_copy_last": _median(np.abs(bc[m] - br[m, k - 1]).sum(-1)),
            "move_generated": _median(np.abs(bg[m, k - 1] - prev_g[m]).sum(-1)),
            "move_real": _median(np.abs(br[m, k - 1] - prev_r[m]).sum(-1)),
            "mass_generated": _median(mg[m, k - 1]),
            "mass_real": _median(mr[m, k - 1]),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--data", default=None, help="held-out data set (default: RUN/eval/heldout)")
    ap.add_argument("--set", nargs="*", default=[], metavar="OPTION=VALUE", help="World.with_options overrides")
    ap.add_argument("--starts", type=int, default=16, help="open-loop starts per held-out episode")
    ap.add_argument("--out", default="benchmarks/results/breakout_ball.json", help="JSON of every run's figures")
    ap.add_argument("--png", default=None, help="save context | real 1 | generated 1 | real 4 | generated 4, 4x")
    args = ap.parse_args()
    torch.set_num_threads(2)
    overrides = {k: json.loads(v) for k, v in (kv.split("=", 1) for kv in args.set)}
    fmt = lambda v, f="{:.1f}": "-" if v is None else f.format(v)  # noqa: E731
    results = []
    for run in args.runs:
        run_dir, world_dir = layout.resolve_run(run)
        world = World.load(world_dir).with_options(**overrides)
        ds = Dataset.open(args.data or run_dir / "eval" / "heldout")
        eps = list(range(len(ds)))[:8]
        h = heldout.load(ds, eps, {"kind": "data", "path": "", "episodes": eps, "notes": []}, 0, world.K + 2)
        cfg = types.SimpleNamespace(horizon=16, starts=args.starts, batch_size=32, rng_seed=0, probe_steps=0)
        _, a = measure.open_loop(world, h, cfg)
        rows = track(a["ctx"], a["real"], a["gen"], a["mask"])
        cells = [
            f"h{k}: ball in {fmt(r['present'], '{:.0%}')} of {r['starts']}, error {fmt(r['error'])} px "
            f"(copy-last {fmt(r['error_copy_last'])}), moves {fmt(r['move_generated'])} (real {fmt(r['move_real'])}), "
            f"red mass {fmt(r['mass_generated'], '{:.2f}')} (real {fmt(r['mass_real'], '{:.2f}')})"
            for k, r in rows.items()
        ]
        print(run, overrides or "", " | ".join(cells))
        results.append({"run": str(run), "options": overrides, "horizons": rows})
        if args.png:
            from PIL import Image

            real, gen, ctx = a["real"], a["gen"], a["ctx"]
            idx = np.flatnonzero(~np.isnan(ball_positions(real[:, 0])[:, 0]))[:6]
            strip = [np.concatenate([ctx[i, -1], real[i, 0], gen[i, 0], real[i, 3], gen[i, 3]], 1) for i in idx]
            img = Image.fromarray(np.concatenate(strip, 0))
            img.resize((img.width * 4, img.height * 4), Image.NEAREST).save(args.png)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
