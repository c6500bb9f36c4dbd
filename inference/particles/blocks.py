r"""The particles of an SVGD run shared over processes (:mod:`bayesdl.distributed`).

In a run over ``W`` processes each holds a contiguous block of the ``P`` particles
(:meth:`~bayesdl.distributed.Ranks.block`): their positions, optimiser state, forward and
backward passes. The Stein update couples every particle to every other,

.. math::
    \phi_i = \frac1P \sum_{j=1}^{P} \left[\gamma\, k(x_j, x_i)\, s_j
    + \nabla_{x_j} k(x_j, x_i)\right],

so each step what the kernel needs of every particle (positions and scores in weight space;
function values and function-space scores at the measurement set) is all-gathered
(:meth:`ParticleBlocks.gather`), every process forms the kernel over all ``P`` particles, and
keeps the rows :math:`\phi_i` of its own block (:meth:`ParticleBlocks.own`). Random draws
over all particles (the Langevin noise) come from a stream every process holds alike, so each
particle gets the noise it gets in one process. A sum over particles held elsewhere (the
hybrid kernel's pulled-back function-space repulsion
:math:`\sum_j J_j^\top \nabla_{f_j} k_f(f_j, f_i)`) is formed per process over its own
:math:`j` and summed over processes (:meth:`ParticleBlocks.sum`).

Each process's optimiser steps its own block: this equals the one-process step because
the optimisers of ``torch.optim`` (Adam, SGD, RMSprop, ...) update every coordinate from its
own gradient and state; an optimiser that couples coordinates (e.g. through a norm of the
whole gradient) would see only its block.

In one process (``group=None``) every method is the identity: the one-process run is not
changed by a single operation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from bayesdl._seeding import child_seeds
from bayesdl.distributed import Ranks, all_reduce_sum, gather_blocks

__all__ = ["ParticleBlocks"]


@dataclass(frozen=True)
class ParticleBlocks:
    """Which particles this process holds, and the collectives over the others.

    Attributes
    ----------
    particles
        ``P``, the number of particles of the whole run.
    group
        The processes the particles are shared over (``None``: one process holds them all).
    """

    particles: int
    group: Ranks | None = None

    @property
    def shared(self) -> bool:
        """Whether the particles are split over several processes."""
        return self.group is not None

    def check(self) -> None:
        """``ValueError`` naming ``particles`` when there are fewer than processes."""
        if self.group is not None and self.particles < self.group.world:
            raise ValueError(
                f"particles: {self.particles} particles cannot be shared over "
                f"{self.group.world} processes (give at least one per process, or "
                "distributed=False)"
            )

    def identity(self) -> dict[str, Any]:
        """What a checkpoint of a run over processes records of this process's share, to be
        resumed only by the same share (nothing in one process)."""
        if self.group is None:
            return {}
        return {"particle_block": list(self.block), "world": self.group.world}

    @property
    def block(self) -> tuple[int, int]:
        """``[start, stop)`` of this process's particles."""
        if self.group is None:
            return 0, self.particles
        return self.group.block(self.particles)

    def gather(self, *blocks: Tensor) -> list[Tensor]:
        """Every process's rows of each of ``blocks`` (``(P_r, ...)``), as ``(P, ...)`` in
        particle order, on every process; in one collective when the dtypes agree."""
        if self.group is None:
            return list(blocks)
        counts = self.group.counts(self.particles)
        if len({b.dtype for b in blocks}) > 1:
            return [gather_blocks(b, counts) for b in blocks]
        rows = blocks[0].shape[0]
        flat = [b.detach().reshape(rows, -1) for b in blocks]
        whole = gather_blocks(flat[0] if len(flat) == 1 else torch.cat(flat, dim=1), counts)
        out, at = [], 0
        for b, f in zip(blocks, flat, strict=True):
            width = f.shape[1]
            out.append(whole[:, at : at + width].reshape(self.particles, *b.shape[1:]))
            at += width
        return out

    def own(self, whole: Tensor) -> Tensor:
        """This process's rows of ``whole`` ``(P, ...)`` (all of them in one process)."""
        if self.group is None:
            return whole
        start, stop = self.block
        return whole[start:stop]

    def sum(self, part: Tensor) -> Tensor:
        """``part`` summed over the processes (itself in one process)."""
        return part if self.group is None else all_reduce_sum(part)

    def columns(self, pairs: Tensor) -> Tensor:
        """This process's particles ``j`` of a pairwise tensor ``(P, P, ...)`` indexed
        ``[i, j]`` (all of it in one process)."""
        if self.group is None:
            return pairs
        start, stop = self.block
        return pairs[:, start:stop]

    def agreed_seed(self, seed: int | None) -> int | None:
        """``seed``, or, for ``seed=None`` in a run over processes, one fresh seed drawn by
        rank 0 and shared, so that every process's copies of the replicated streams (initial
        particles, minibatches, measurement and prior draws, noise) agree."""
        if self.group is None or seed is not None:
            return seed
        fresh = child_seeds(None, 1)[0] if self.group.root else 0
        return int(all_reduce_sum(torch.tensor([fresh], dtype=torch.int64)).item())

    def result(self, *blocks: Tensor) -> tuple[list[Tensor], dict[str, str]]:
        """What a process's Posterior holds of ``blocks`` (``(P_r, ...)`` each): on rank 0
        every particle's rows in order, elsewhere its own; and ``attrs["distributed"]``
        saying which (no attribute in one process). Every process must call it."""
        if self.group is None:
            return list(blocks), {}
        every = self.gather(*blocks)
        group, start, stop = self.group, *self.block
        if group.root:
            note = f"rank 0 of {group.world}: all {self.particles} particles"
            return every, {"distributed": note}
        note = (
            f"rank {group.rank} of {group.world}: particles {start}-{stop - 1} of "
            f"{self.particles} (rank 0 holds all)"
        )
        return list(blocks), {"distributed": note}
