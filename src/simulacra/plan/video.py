"""The plan video: the real episode, the goal, and what the planner imagined, side by side.

The imagined panel at env step t is the planning world's decoding of the encoding the current plan
expected at the end of the block that step belongs to (the decoder learns from detached encodings,
so it shows what the latent holds without having shaped it). Push-T's pusher is a dozen pixels the
decoder does not draw; it is marked where the plan's proprioception expects it. Policies that imagine
nothing (GCBC, random) leave the panel grey.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from simulacra.models.autoencoder import to_uint8


def imagined_frames(result: dict, planner, jepa) -> list[np.ndarray | None]:
    """One decoded frame (or None) per executed env step; with proprioception, the agent drawn where
    the plan expects it."""
    plans = getattr(planner, "imagined", None) if planner is not None else None
    if not plans or not jepa.cfg.decoder:
        return [None] * result["env_steps"]
    with torch.no_grad():
        decoded = [to_uint8(jepa.decode(z_HD)).permute(0, 2, 3, 1).numpy() for z_HD in plans]
    out: list[np.ndarray | None] = []
    starts = planner.plan_at
    for t in range(result["env_steps"]):
        p = max(i for i, s in enumerate(starts) if s <= t) if starts and starts[0] <= t else None
        if p is None:
            out.append(None)
            continue
        b = min((t - starts[p]) // jepa.cfg.block, len(decoded[p]) - 1)
        frame = decoded[p][b]
        if hasattr(planner.task, "mark"):
            if getattr(jepa.cfg, "proprio_dim", 0):
                frame = planner.task.mark(frame, plans[p][b, jepa.cfg.latent_dim :].numpy())
            elif hasattr(jepa, "position"):  # the cell world: where its agent is
                with torch.no_grad():
                    frame = planner.task.mark(frame, jepa.position(plans[p][b][None])[0].numpy())
        out.append(frame)
    return out


def _label(panel: np.ndarray, text: str) -> np.ndarray:
    from PIL import Image, ImageDraw

    img = Image.fromarray(panel)
    ImageDraw.Draw(img).text((3, 2), text, fill=(200, 30, 30))
    return np.asarray(img)


def compose(real: np.ndarray, goal: np.ndarray, imagined: np.ndarray | None, scale: int, step: int) -> np.ndarray:
    big = lambda f: np.repeat(np.repeat(f, scale, 0), scale, 1)  # noqa: E731 (nearest neighbour)
    grey = np.full_like(real, 128)
    panels = [
        _label(big(real), f"real  step {step}"),
        _label(big(goal), "goal"),
        _label(big(grey if imagined is None else imagined), "imagined (plan)"),
    ]
    gap = np.full((panels[0].shape[0], 4, 3), 255, np.uint8)
    return np.concatenate([panels[0], gap, panels[1], gap, panels[2]], 1)


def write_plan_video(path: Path, result: dict, goal: np.ndarray, jepa, block: int, planner=None,
                     scale: int = 4, fps: float = 10) -> Path:  # fmt: skip
    import imageio.v2 as imageio

    frames = result["frames"]
    imagined = imagined_frames(result, planner, jepa)
    shots = [compose(frames[t], goal, imagined[min(t, len(imagined) - 1)] if imagined else None, scale, t)
             for t in range(len(frames))]  # fmt: skip
    path = Path(path)
    if path.suffix.lower() == ".gif":
        imageio.mimsave(path, shots, duration=1000 / fps, loop=0)
    else:
        imageio.mimsave(path, shots, fps=fps, macro_block_size=1)
    return path
