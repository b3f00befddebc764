"""Training windows: T consecutive steps of an episode, served in random order.

A window of ``num_steps`` T starting at step s holds frames s..s+T (T+1 frames) and the T actions,
rewards and flags between them, so every action in it has both its before- and after-frame.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from simulacra.data.store import Dataset
from simulacra.errors import DatasetError


class WindowDataset(torch.utils.data.Dataset):
    """Map-style dataset over every valid (episode, start) window of a :class:`Dataset`.

    Items are dicts of tensors: ``frames`` uint8 (T+1, C, H, W), ``action`` (T,) int64 (discrete or
    action-free) or (T, *shape) float32 (Box), ``reward`` (T,) float32, ``terminated``/``truncated`` (T,) bool, ``has_action`` bool,
    ``episode``/``start`` int64. Episodes shorter than T steps yield no window.
    """

    def __init__(self, ds: Dataset, num_steps: int, episodes: Sequence[int] | None = None, stride: int = 1):
        if num_steps < 1:
            raise ValueError("num_steps must be >= 1")
        self.ds, self.num_steps = ds, num_steps
        self.space = ds.action_space  # a data set whose actions no model can encode stops here, with one line
        episodes = range(len(ds)) if episodes is None else episodes
        for i in episodes:  # each header once (cached): a manifest length its shard does not hold stops here,
            ds.header(i)  # before a list of that many windows is built
        starts = [(i, s) for i in episodes for s in range(0, ds.episodes[i].length - num_steps + 1, stride)]
        if not starts:
            longest = max((ds.episodes[i].length for i in episodes), default=0)
            raise DatasetError(f"{ds.root}: no episode has {num_steps} steps (longest has {longest})")
        self.index_NE = np.array(starts, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.index_NE)

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        i, s = (int(x) for x in self.index_NE[k])
        T = self.num_steps
        frames_THWC = self.ds.frames(i, s, s + T + 1)
        arrays = self.ds.arrays(i)
        if "action" in arrays:
            action = np.array(arrays["action"][s : s + T], self.space.dtype)
            has_action = True
        else:  # action-free video: a later latent-action model fills these in
            action = self.space.zeros((T,))
            has_action = False
        return {
            "frames": torch.from_numpy(np.ascontiguousarray(frames_THWC.transpose(0, 3, 1, 2))),
            "action": torch.from_numpy(action),
            "reward": torch.from_numpy(np.array(arrays["reward"][s : s + T])),
            "terminated": torch.from_numpy(np.array(arrays["terminated"][s : s + T])),
            "truncated": torch.from_numpy(np.array(arrays["truncated"][s : s + T])),
            "has_action": torch.tensor(has_action),
            "episode": torch.tensor(i),
            "start": torch.tensor(s),
        }


def split_episodes(ds: Dataset, holdout_fraction: float = 0.1, seed: int = 0) -> tuple[list[int], list[int]]:
    """Deterministic train/held-out split by episode (never by window, so no frame leaks across)."""
    order = np.random.default_rng(seed).permutation(len(ds)).tolist()
    n_hold = max(1, int(round(holdout_fraction * len(ds)))) if len(ds) > 1 else 0
    return sorted(order[n_hold:]), sorted(order[:n_hold])
