"""Does a Breakout world keep its ball? Open-loop rollouts from held-out starts, the ball found by colour.

The state probe and the discriminator see a frozen ball only on average; this looks at the ball itself. At
64x64 Breakout's ball is a red pixel or two below the bricks (rows 30-55, away from the walls): a start
counts at horizon k where the real frame k shows the ball. Per horizon it prints how often the generated
frame shows a ball at all, the median position error of those that do (in pixels, |dy| + |dx|), the same
error for copy-last, and the median per-step displacement of the generated and of the real ball.

    python benchmarks/breakout_ball.py RUN [RUN ...] [--data HELDOUT] [--set gate_keep_moving=1] [--png OUT]
"""

from __future__ import annotations

import argparse
import json
import types

import numpy as np
import torch

from simulacra import layout
from simulacra.data import Dataset
from simulacra.eval import heldout, measure
from simulacra.world import World

ROWS, COLS = (30, 56), (4, 60)
SHOW = (1, 2, 4, 8, 16)


def ball_positions(frames_NHWC: np.ndarray) -> np.ndarray:
    """Centroid (y, x) of the red ball pixels of each frame (..., 2); NaN where there is none."""
    reg = frames_NHWC[..., ROWS[0] : ROWS[1], COLS[0] : COLS[1], :].astype(np.int16)
    red = (reg[..., 0] > 120) & (reg[..., 0] - reg[..., 1] > 50)
    ys, xs = np.mgrid[ROWS[0] : ROWS[1], COLS[0] : COLS[1]]
    n = red.sum((-1, -2))
    out = np.stack([(red * ys).sum((-1, -2)), (red * xs).sum((-1, -2))], -1) / np.maximum(n, 1)[..., None]
    out[n == 0] = np.nan
    return out


def _median(x: np.ndarray) -> float | None:
    x = x[~np.isnan(x)]
    return float(np.median(x)) if len(x) else None


def track(ctx, real, gen, mask) -> dict:
    br, bg, bc = ball_positions(real), ball_positions(gen), ball_positions(ctx[:, -1])
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
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--data", default=None, help="held-out data set (default: RUN/eval/heldout)")
    ap.add_argument("--set", nargs="*", default=[], metavar="OPTION=VALUE", help="World.with_options overrides")
    ap.add_argument("--png", default=None, help="save context | real 1 | generated 1 | real 4 | generated 4, 4x")
    args = ap.parse_args()
    torch.set_num_threads(2)
    overrides = {k: json.loads(v) for k, v in (kv.split("=", 1) for kv in args.set)}
    fmt = lambda v, f="{:.1f}": "-" if v is None else f.format(v)  # noqa: E731
    for run in args.runs:
        run_dir, world_dir = layout.resolve_run(run)
        world = World.load(world_dir).with_options(**overrides)
        ds = Dataset.open(args.data or run_dir / "eval" / "heldout")
        eps = list(range(len(ds)))[:8]
        h = heldout.load(ds, eps, {"kind": "data", "path": "", "episodes": eps, "notes": []}, 0, world.K + 2)
        cfg = types.SimpleNamespace(horizon=16, starts=8, batch_size=32, rng_seed=0, probe_steps=0)
        _, a = measure.open_loop(world, h, cfg)
        rows = track(a["ctx"], a["real"], a["gen"], a["mask"])
        cells = [
            f"h{k}: ball in {fmt(r['present'], '{:.0%}')} of {r['starts']}, error {fmt(r['error'])} px "
            f"(copy-last {fmt(r['error_copy_last'])}), moves {fmt(r['move_generated'])} (real {fmt(r['move_real'])})"
            for k, r in rows.items()
        ]
        print(run, overrides or "", " | ".join(cells))
        if args.png:
            from PIL import Image

            real, gen, ctx = a["real"], a["gen"], a["ctx"]
            idx = np.flatnonzero(~np.isnan(ball_positions(real[:, 0])[:, 0]))[:6]
            strip = [np.concatenate([ctx[i, -1], real[i, 0], gen[i, 0], real[i, 3], gen[i, 3]], 1) for i in idx]
            img = Image.fromarray(np.concatenate(strip, 0))
            img.resize((img.width * 4, img.height * 4), Image.NEAREST).save(args.png)


if __name__ == "__main__":
    main()
