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


# ---- configs read from JSON ----------------------------------------------------------------------
Problem = tuple[str, str]
"""(field, what is wrong with it): callers name the field their own way (a CLI option, a world.json key)."""

MAX_BLOCKS = 64
"""Residual blocks per level / per coder at most: a sanity bound that keeps even building a model on the
meta device (to count its parameters or check its weights' shapes) instant."""
MAX_LEVELS = 12
"""U-Net levels at most (each halves the latent grid: 2**11 is far beyond any frame)."""


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def short(v, limit: int = 60) -> str:
    """``repr(v)``, cut to ``limit`` characters (a value from a file can be arbitrarily long)."""
    r = repr(list(v) if isinstance(v, tuple) else v)
    return r if len(r) <= limit else r[: limit - 3] + "..."


def _type_problem(kind: str, v) -> str | None:
    """What is wrong with a JSON value ``v`` for a field annotated ``kind`` (annotations are strings here)."""
    if kind == "int" and not _is_int(v):
        return f"must be an integer, not {short(v)}"
    if kind == "float" and not _is_number(v):
        return f"must be a number, not {short(v)}"
    if kind == "bool" and not isinstance(v, bool):
        return f"must be true or false, not {short(v)}"
    if kind == "str" and not isinstance(v, str):
        return f"must be a string, not {short(v)}"
    if kind.startswith("tuple[int") and not (isinstance(v, list | tuple) and all(_is_int(x) for x in v)):
        return f"must be a list of integers, not {short(v)}"
    return None


def dict_problems(cls, d) -> list[Problem]:
    """Unknown, missing or mistyped fields of the config dataclass ``cls`` read from a JSON object ``d``
    (a saved config names every field: a missing one would silently take today's default)."""
    if not isinstance(d, dict):
        return [("", f"must be a JSON object, not {type(d).__name__}")]
    fields = cls.__dataclass_fields__
    out = [
        (short(k, 40) if not isinstance(k, str) or len(k) > 40 else k, "is not a known field")
        for k in d
        if k not in fields
    ]
    out += [(k, "is missing") for k in fields if k not in d]
    out += [(k, p) for k, f in fields.items() if k in d and (p := _type_problem(str(f.type), d[k])) is not None]
    return out


def from_dict(cls, d: dict):
    """The config ``cls`` from a dict that ``dict_problems`` passed (JSON lists become tuples)."""
    fields = cls.__dataclass_fields__
    return cls(**{k: tuple(v) if str(fields[k].type).startswith("tuple") else v for k, v in d.items()})


def at_least(value, low, what: str = "") -> str | None:
    """None if ``value`` is a finite number >= low, else the problem (nan and inf refused)."""
    import math

    if not _is_number(value) or not math.isfinite(value) or value < low:
        return f"must be {what or f'at least {low}'}, not {value}"
    return None


def fraction(value) -> str | None:
    """None if ``value`` is a number in [0, 1] (nan refused), else the problem."""
    if not _is_number(value) or not 0 <= value <= 1:
        return f"must be a fraction from 0 to 1, not {value}"
    return None


def count_parameters(build) -> int:
    """Parameters of the module ``build()`` makes, counted on the meta device: nothing is allocated."""
    with torch.device("meta"):
        module = build()
    return sum(p.numel() for p in module.parameters())
