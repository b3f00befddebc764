"""Small pieces every model family shares."""

from __future__ import annotations

import torch


class KeyedRNG:
    """Per-sample random streams keyed by a global sample id.

    A sample's noise depends only on its key (step x global batch + position), never on which
    process or batch slice it landed in, so 2 DDP processes reproduce 1 process exactly and a
    resumed run reproduces an uninterrupted one.

    The generators live on the keys' device (the batch's), so on a GPU the noise is drawn there
    instead of on the CPU and copied over.
    """

    def __init__(self, keys_B: torch.Tensor):
        self.device = keys_B.device
        self.gens = [torch.Generator(self.device).manual_seed(int(k)) for k in keys_B.tolist()]

    def randn(self, *shape: int) -> torch.Tensor:
        return torch.stack([torch.randn(shape, generator=g, device=self.device) for g in self.gens])

    def rand(self) -> torch.Tensor:
        return torch.cat([torch.rand(1, generator=g, device=self.device) for g in self.gens])

    def randint(self, low: int, high: int) -> torch.Tensor:
        return torch.cat([torch.randint(low, high, (1,), generator=g, device=self.device) for g in self.gens])


def batch_rng(batch: dict) -> KeyedRNG:
    keys = batch.get("keys")
    if keys is None:  # ad-hoc calls outside the trainer: fresh randomness from the global RNG
        v = next(iter(batch.values()))
        keys = torch.randint(0, 2**62, (len(v),), device=v.device if torch.is_tensor(v) else None)
    return KeyedRNG(keys)
