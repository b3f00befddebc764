"""Can a head that reads the last few frames see Breakout's life losses and game overs? Read off the data.

For every step where ALE's lives counter drops, this counts the steps since the ball was last seen under the
bricks (the detector of breakout_ball.py), whether the lives digit (the top 8 rows) is redrawn on that step, and
whether the step's frame differs from the one before at all. A world's heads read the last K context frames and
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


def events(ds: Dataset) -> list[dict]:
    """One row per life loss: episode, step, final (the game over), gap (steps since the ball was last seen;
    None if it never was), digit (the top rows change into the step's frame), changed (any pixel does)."""
    rows = []
    for i in range(len(ds)):
        arr = ds.arrays(i)
        if arr.get("lives") is None:
            continue
        frames, lives = ds.frames(i), np.asarray(arr["lives"]).astype(np.int64)
        seen = np.flatnonzero(~np.isnan(ball_positions(frames)[:, 0]))
        for t in np.flatnonzero(np.diff(lives) < 0) + 1:  # frame t is the first with fewer lives
            before = seen[seen <= t]
            step = np.abs(frames[t].astype(np.int64) - frames[t - 1].astype(np.int64))
            rows.append(
                {"episode": i, "step": int(t), "final": bool(lives[t] == 0),
                 "gap": int(t - before[-1]) if len(before) else None,
                 "digit": bool(step[:8].sum() > 0), "changed": bool(step.sum() > 0)}
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
            s = summary[name]
            print(
                f"{path} {name}: {s['count']}, digit redrawn on the step in {s['digit_redrawn']}, "
                f"frame unchanged in {s['frame_unchanged']}, ball seen within the last {args.context} steps in "
                f"{s['ball_seen_within_context']}; steps since the ball was seen: {s['gap_histogram']}"
            )
        result.append(summary)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
