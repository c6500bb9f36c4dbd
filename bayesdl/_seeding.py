"""Seeds: every public entry takes ``seed``; the same seed gives the same result.

Pyro and ``torch.distributions`` draw from torch's global generator. :func:`seeded` runs a
block on a forked copy of that generator, so a seeded call neither depends on nor disturbs
the caller's random state.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch

__all__ = ["child_seeds", "seeded"]


def child_seeds(seed: int | None, n: int, stream: int = 0) -> list[int]:
    """``n`` independent integer seeds derived from ``seed``.

    Child ``i`` depends only on ``seed``, ``stream`` and ``i``, not on ``n``, so chain ``i`` gets
    the same stream whether 2 or 64 chains run. Different ``stream`` numbers give unrelated
    seeds (the initial values and the sampler's random numbers use different streams).
    ``seed=None`` draws fresh entropy.
    """
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise ValueError(f"seed: expected a non-negative integer or None, got {seed!r}")
    children = np.random.SeedSequence(seed, spawn_key=(stream,)).spawn(n)
    return [int(c.generate_state(1, dtype=np.uint32)[0]) for c in children]


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run the block with torch's global CPU and CUDA generators seeded, restoring them after."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield
