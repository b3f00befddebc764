"""The Push-T planning benchmark: `simulacra plan --benchmark pusht`, its JSON copied to benchmarks/results.

Records what is missing (200 training episodes, seed 0; 120 held-out, seed 100000), trains the planning
world and GCBC (--train-minutes, default 25) when the run has none, then runs CEM, MPPI, gradient, GCBC and
random actions on the same 100 held-out start/goal pairs and prints the table with 95% intervals.

    python benchmarks/plan_pusht.py [RUN] [any `simulacra plan` option, e.g. --episodes 50 --methods cem]

With `--model pixel` (the run's pixel world searched instead) the JSON goes to plan_pusht_pixel.json.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from simulacra.cli import main

if __name__ == "__main__":
    args = sys.argv[1:]
    run = args[0] if args and not args[0].startswith("-") else "runs/pusht-plan"
    rest = args[1:] if args and not args[0].startswith("-") else args
    try:
        main(["plan", run, "--benchmark", "pusht", *rest])
    except SystemExit as e:
        if e.code:
            raise
    pixel = any(a == "pixel" and b == "--model" for b, a in zip(rest, rest[1:], strict=False))
    src = Path(run) / "plan" / f"benchmark-pusht{'-pixel' if pixel else ''}.json"
    dst = Path(__file__).parent / "results" / f"plan_pusht{'_pixel' if pixel else ''}.json"
    shutil.copyfile(src, dst)
    print(f"{dst}: {len(json.loads(dst.read_text())['methods'])} methods")
