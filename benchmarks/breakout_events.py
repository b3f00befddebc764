"""Can a head that reads the last few frames see Breakout's life losses and game overs? Read off the data.

For every step where ALE's lives counter drops, this counts the steps since the ball was last seen under the
bricks (the detector of breakout_ball.py), whether the lives digit (the top 8 rows) is redrawn on that step, and
whether the step's frame differs from the one before at all. Where the data set records ALE's RAM it also counts,
per vertical speed of the ball (RAM byte 101 is its height), the steps from its last one above the paddle row
(height 176) to the loss: the ball falls on, unseen, and the life goes when it reaches about 205. A world's heads read the last K context frames and
the next one (K=4 in nano): an event more than K steps after the ball's last sighting, on a step that redraws
nothing, is invisible to them.

    python benchmarks/breakout_events.py DATA [DATA ...] [--out benchmarks/results/breakout_events.json]
"""

from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path

import numpy as np
from breakout_ball import ball_positions

from simulacra.data import Dataset

BALL_Y, PADDLE_ROW = 101, 176  # ALE Breakout's RAM byte of the ball's height; the height where it leaves the court


def events(ds: Dataset) -> list[dict]:
    """One row per life loss: episode, step, final (the game over), gap (steps since the ball was last seen;
    None if it never was), digit (the top rows change into the step's frame), changed (any pixel does)."""
    rows = []
    for i in range(len(ds)):
        arr = ds.arrays(i)
        if arr.get("lives") is None:
            continue
        frames, lives = ds.frames(i), np.asarray(arr["lives"]).astype(np.int64)
        ram = arr.get("state")
        height = None if ram is None or np.asarray(ram).shape[-1] != 128 else np.asarray(ram)[:, BALL_Y].astype(int)
        seen = np.flatnonzero(~np.isnan(ball_positions(frames)[:, 0]))
        for t in np.flatnonzero(np.diff(lives) < 0) + 1:  # frame t is the first with fewer lives
            before = seen[seen <= t]
            step = np.abs(frames[t].astype(np.int64) - frames[t - 1].astype(np.int64))
            fall = None
            if height is not None and t >= 2:
                j = t - 1
                while j > 0 and height[j] >= PADDLE_ROW:
                    j -= 1
                fall = (int(height[t - 1] - height[t - 2]), int(t - j))  # (speed, steps since above the row)
            rows.append(
                {"episode": i, "step": int(t), "final": bool(lives[t] == 0),
                 "gap": int(t - before[-1]) if len(before) else None,
                 "digit": bool(step[:8].sum() > 0), "changed": bool(step.sum() > 0), "fall": fall}
            )  # fmt: skip
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", nargs="+")
    ap.add_argument("--context", type=int, default=4, help="the heads' context K: events further from the ball")
    ap.add_argument("--out", default="benchmarks/results/breakout_events.json")
    args = ap.parse_args()
    result = []
    for path in args.data:
        rows = events(Dataset.open(path))
        summary = {"data": path}
        for final, name in ((False, "life_losses"), (True, "game_overs")):
            r = [x for x in rows if x["final"] == final]
            gaps = collections.Counter(x["gap"] for x in r)
            seen = [x for x in r if x["gap"] is not None]
            summary[name] = {
                "count": len(r),
                "digit_redrawn": sum(x["digit"] for x in r),
                "frame_unchanged": sum(not x["changed"] for x in r),
                "ball_seen_within_context": sum(x["gap"] <= args.context for x in seen),
                "ball_never_seen": len(r) - len(seen),
                "gap_histogram": {str(k): v for k, v in sorted(gaps.items(), key=lambda kv: (kv[0] is None, kv[0]))},
            }
            falls = collections.defaultdict(collections.Counter)
            for x in r:
                if x["fall"] is not None:
                    falls[x["fall"][0]][x["fall"][1]] += 1
            summary[name]["steps_after_the_paddle_row_by_speed"] = {
                str(v): dict(sorted((str(k), n) for k, n in c.items())) for v, c in sorted(falls.items())
            }
            s = summary[name]
            print(
                f"{path} {name}: {s['count']}, digit redrawn on the step in {s['digit_redrawn']}, "
                f"frame unchanged in {s['frame_unchanged']}, ball seen within the last {args.context} steps in "
                f"{s['ball_seen_within_context']}; steps since the ball was seen: {s['gap_histogram']}; "
                f"steps since it passed the paddle row, by its speed: {s['steps_after_the_paddle_row_by_speed']}"
            )
        result.append(summary)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
