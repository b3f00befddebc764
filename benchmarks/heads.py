"""Do a world's reward and termination heads read events off *real* frames? (Apart from its dynamics.)

`simulacra eval` scores the heads on the world's own sample of the next frame, so a world that never
draws a brick breaking never predicts its reward. This feeds the heads the real transition instead (for
worlds whose heads read the next frame) and counts hits over every held-out step.

    python benchmarks/heads.py RUN [--data RUN/eval/heldout] [--out benchmarks/results/heads.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from simulacra import layout
from simulacra.data import Dataset
from simulacra.world import World


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run")
    ap.add_argument("--data", default=None)
    ap.add_argument("--out", default="benchmarks/results/heads.json")
    args = ap.parse_args()
    run, world_dir = layout.resolve_run(args.run)
    world = World.load(world_dir)
    ds = Dataset.open(args.data or run / "eval" / "heldout")
    K, rows = world.K, []
    for i in range(len(ds)):
        z, arr = world.encode(ds.frames(i)), ds.arrays(i)
        lives = arr.get("lives")
        lost = np.zeros(ds.episodes[i].length, bool) if lives is None else np.diff(np.asarray(lives, np.int64)) < 0
        for s in range(ds.episodes[i].length - K + 1):
            acts = torch.from_numpy(np.array(arr["action"][s : s + K]))[None]
            with torch.no_grad():
                r, d, life = world.dyn.heads_logits(z[None, s : s + K], z[None, s + K], acts)
            t = s + K - 1
            life_hit = life is not None and float(life.sigmoid()) > 0.5
            rows.append(
                (arr["reward"][t] != 0, int(r.argmax()) != 1, bool(arr["terminated"][t]), float(d.sigmoid()) > 0.5,
                 bool(lost[t]), life_hit)
            )  # fmt: skip
    real_r, pred_r, real_d, pred_d, real_l, pred_l = (np.array(c) for c in zip(*rows, strict=True))
    out = {"run": str(run), "steps": len(rows), "heads_on_next": world.dyn.cfg.heads_on_next}
    kinds = [("reward", real_r, pred_r), ("termination", real_d, pred_d)]
    if world.dyn.cfg.life_head:
        kinds.append(("life_loss", real_l, pred_l))
    for name, real, pred in kinds:
        hit = int((real & pred).sum())
        out[name] = {"real": int(real.sum()), "predicted": int(pred.sum()), "hit": hit,
                     "recall": hit / real.sum() if real.sum() else None,
                     "precision": hit / pred.sum() if pred.sum() else None}  # fmt: skip
        print(f"{name:<12} real {out[name]['real']:>4}  predicted {out[name]['predicted']:>4}  hit {hit:>4}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
