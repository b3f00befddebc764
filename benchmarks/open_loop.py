"""Quick open-loop check of a trained world: PSNR per horizon vs copy-last, the motion ratio and (with
--probe-steps, where the held-out data carries the true state) state fidelity, on stored held-out episodes.

The open-loop part of `simulacra eval` alone (no IDM, discriminator, drift or speed runs, so it takes a
fraction of the time), for comparing training options or inference settings on the same episodes.
The inference options of ``World.with_options`` can be overridden: temperature, sampling_steps,
context_noise, gate_keep_moving.

    python benchmarks/open_loop.py RUN [RUN ...] [--data HELDOUT] [--horizon 32] [--set temperature=0.5]

RUN is a run or world folder, as for `simulacra eval --run`. --data defaults to RUN/eval/heldout (what
`simulacra eval` recorded). The starts depend on --horizon, so compare runs only at the same --horizon.
Prints one line per run; --out appends JSON lines.
"""

from __future__ import annotations

import argparse
import inspect
import json
import time
import types

import torch

from simulacra import layout
from simulacra.data import Dataset
from simulacra.eval import fidelity, heldout, measure
from simulacra.world import World

SHOW = (1, 4, 8, 16, 32, 64)
OPTIONS = tuple(inspect.signature(World.with_options).parameters)[1:]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--data", default=None, help="held-out data set (default: RUN/eval/heldout)")
    ap.add_argument("--episodes", type=int, default=8)
    ap.add_argument("--horizon", type=int, default=32)
    ap.add_argument("--starts", type=int, default=4, help="start points per episode")
    ap.add_argument(
        "--set", nargs="*", default=[], metavar="OPTION=VALUE", help=f"inference options: {', '.join(OPTIONS)}"
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--probe-steps", type=int, default=0, help="train the state probe this long (0: no probe)")
    ap.add_argument("--out", default=None, help="append one JSON line per run here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    overrides = {k: json.loads(v) for k, v in (kv.split("=", 1) for kv in args.set)}
    for k in overrides.keys() - set(OPTIONS):
        raise SystemExit(f"--set {k}: not an inference option ({', '.join(OPTIONS)})")
    for run in args.runs:
        run_dir, world_dir = layout.resolve_run(run)
        world = World.load(world_dir).with_options(**overrides)
        ds = Dataset.open(args.data or run_dir / "eval" / "heldout")
        eps = list(range(len(ds)))[: args.episodes]
        h = heldout.load(ds, eps, {"kind": "data", "path": "", "episodes": eps, "notes": []}, 0, world.K + 2)
        cfg = types.SimpleNamespace(
            horizon=args.horizon, starts=args.starts, batch_size=32, rng_seed=0, probe_steps=args.probe_steps
        )
        t0 = time.time()
        ol, arrays = measure.open_loop(world, h, cfg)
        mo = fidelity.motion(arrays["ctx"][:, -1], arrays["real"], arrays["gen"], arrays["mask"])["ratio"]
        fid = fidelity.state(h, cfg, arrays)[0].get("fidelity") if args.probe_steps else None
        model, copy = ol["psnr"]["model"], ol["psnr"]["copy_last"]
        cells = [f"h{k}: {model[k - 1]:.2f} ({model[k - 1] - copy[k - 1]:+.2f})" for k in SHOW if k <= args.horizon]
        sharp = ol["sharpness_ratio"][min(16, args.horizon) - 1]
        at = lambda xs, k: "-" if not xs or len(xs) < k or xs[k - 1] is None else f"{xs[k - 1]:.2f}"  # noqa: E731
        more = f"  motion@1,4,16 {at(mo, 1)} {at(mo, 4)} {at(mo, 16)}"
        more += f"  state fidelity@1,4,16 {at(fid, 1)} {at(fid, 4)} {at(fid, 16)}" if args.probe_steps else ""
        print(
            f"{run} {overrides or ''} PSNR (vs copy-last): {' '.join(cells)}  sharp@16 {sharp:.2f}{more}  "
            f"{time.time() - t0:.0f}s"
        )
        if args.out:
            row = {"run": run, "overrides": overrides, "horizon": args.horizon, "psnr": model, "copy_last": copy,
                   "motion": mo, "state_fidelity": fid}  # fmt: skip
            with open(args.out, "a") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
