"""Per-chain random streams for samplers that advance many chains as one batch.

Each chain owns a CPU ``torch.Generator``, and every random number a chain uses comes from
its own generator in a fixed order. Chain ``c`` then makes the same draws whether it runs
alone or beside 63 others, which is what lets a test compare vectorised chains with the same
chains run one at a time. Draws are made on the CPU in float64 (so CPU and GPU runs see the
same numbers) and moved to the chains' device in one copy.

The cost is one small generator call per chain per request, never per leapfrog step:
samplers request everything a transition needs when it starts.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from bayesdl._seeding import child_seeds

from .state import state_record

__all__ = ["ChainRNG"]


@state_record
class ChainRNG:
    """One random stream per chain: a state record (checkpointed with its sampler's State).

    Attributes
    ----------
    generators
        One CPU generator per chain.
    device, dtype
        Where, and in which floating dtype, :meth:`normal` returns its draws.
    """

    generators: list[torch.Generator]
    device: str = "cpu"
    dtype: torch.dtype = torch.float32

    @classmethod
    def of(
        cls,
        seeds: Sequence[int],
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> ChainRNG:
        """Streams seeded with one integer seed per chain."""
        return cls([torch.Generator().manual_seed(int(s)) for s in seeds], str(device), dtype)

    @classmethod
    def from_seed(
        cls,
        seed: int | Sequence[int] | None,
        chains: int,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> ChainRNG:
        """Streams for ``chains`` chains: from one base seed (``child_seeds(seed, chains,
        stream=1)``), or from a sequence giving each chain's seed directly."""
        if seed is None or isinstance(seed, int):
            return cls.of(child_seeds(seed, chains, stream=1), device, dtype)
        seeds = list(seed)
        if len(seeds) != chains or not all(isinstance(s, int) and s >= 0 for s in seeds):
            raise ValueError(
                f"seed: expected an integer or {chains} non-negative integers (one per chain), "
                f"got {seed!r}"
            )
        return cls.of(seeds, device, dtype)

    def __len__(self) -> int:
        return len(self.generators)

    def normal(self, *shape: int) -> Tensor:
        """Standard normal draws of shape ``(chains, *shape)``."""
        draws = [torch.randn(shape, generator=g, dtype=torch.float64) for g in self.generators]
        return torch.stack(draws).to(device=self.device, dtype=self.dtype)

    def uniform(self, *shape: int) -> Tensor:
        """Uniform draws on ``[0, 1)`` of shape ``(chains, *shape)``, in float64."""
        draws = [torch.rand(shape, generator=g, dtype=torch.float64) for g in self.generators]
        return torch.stack(draws).to(device=self.device)
