"""Seeds: every public entry takes ``seed``; the same seed gives the same result.

Pyro and ``torch.distributions`` draw from torch's global generator. :func:`seeded` runs a
block on a forked copy of that generator, so a seeded call neither depends on nor disturbs
the caller's random state.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

__all__ = ["PrivateStream", "child_seeds", "seeded"]


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


class PrivateStream:
    """A private random stream for code that draws from torch's global generator.

    ``Distribution.sample`` takes no generator. ``with stream:`` swaps this stream's state into
    the global generator (CPU, and ``device`` if it is a CUDA device) and back out after, so
    successive blocks continue one seeded stream and the caller's random state is untouched;
    cheaper per use than re-seeding with :func:`seeded` at every step.
    """

    def __init__(self, seed: int, device: torch.device | str = "cpu") -> None:
        device = torch.device(device)
        self.devices = [device.index or 0] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=self.devices):
            torch.manual_seed(seed)
            self.cpu = torch.get_rng_state()
            self.cuda = [torch.cuda.get_rng_state(d) for d in self.devices]
        self._fork: Any = None

    def __enter__(self) -> None:
        self._fork = torch.random.fork_rng(devices=self.devices)
        self._fork.__enter__()
        torch.set_rng_state(self.cpu)
        for d, state in zip(self.devices, self.cuda, strict=True):
            torch.cuda.set_rng_state(state, d)

    def __exit__(self, *exc: object) -> None:
        self.cpu = torch.get_rng_state()
        self.cuda = [torch.cuda.get_rng_state(d) for d in self.devices]
        self._fork.__exit__(*exc)
