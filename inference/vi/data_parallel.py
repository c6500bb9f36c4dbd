r"""VI and SSVI shared over ``torch.distributed`` processes: data parallel.

Every rank holds the whole guide and the same noise stream (replicated: the Monte Carlo draws
of the guide are the same on every rank), and evaluates its share of each global minibatch of
:math:`B` rows. Rank :math:`r` with :math:`n_r` rows computes the one-process estimate on its
rows alone (likelihood scaled by :math:`N / n_r`) and weights it by :math:`w_r = n_r / B`:

.. math::
    \sum_r w_r \Big(\lambda_\ell \tfrac{N}{n_r} \sum_{i \in r} \log p(y_i \mid \theta)
        - \beta\,\mathrm{KL}_T\Big)
    = \lambda_\ell \tfrac{N}{B} \sum_{i \in B} \log p(y_i \mid \theta) - \beta\,\mathrm{KL}_T,

the one-process ELBO estimate, with the KL term (the same on every rank) counted once in the
sum since :math:`\sum_r w_r = 1`. After the backward pass the gradients are summed over ranks
(:meth:`DataShare.reduce_gradients`), so every rank takes the same optimiser step and the
guides stay identical; the reported ELBO is the sum over ranks too. The MAP stage weights its
log joint the same way.

**Which rows.** With tensors every rank draws the same global minibatch (the same stream) and
takes its contiguous block (:meth:`bayesdl.distributed.Ranks.block`). With a DataLoader each
rank reads its own sharded batch (:mod:`bayesdl.inference.loaders`); the global minibatch is
their union in rank order, :math:`B = \sum_r n_r`.

**Per-example noise.** The local reparameterisation draws noise for every example
(:mod:`.local_reparam`): each rank draws it for the whole global minibatch and keeps its
block's rows (:class:`~.local_reparam.RowBlock`), so every example gets the noise it gets in a
one-process run on the same global minibatch, and the streams of the ranks stay in step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from bayesdl import inputs
from bayesdl.distributed import Ranks, all_reduce_sum

from .local_reparam import RowBlock

__all__ = ["DataShare", "Shard"]


@dataclass(frozen=True)
class Shard:
    """This process's part of one global minibatch.

    Attributes
    ----------
    x, y
        Its rows.
    weight
        :math:`w_r = n_r / B`, its share of the global minibatch (1 in one process).
    rows
        Where its rows lie in the global minibatch (``None`` in one process).
    """

    x: Any
    y: Tensor
    weight: float = 1.0
    rows: RowBlock | None = None


class DataShare:
    """How a run shares its minibatches over processes (see the module docstring).

    Parameters
    ----------
    group
        The processes of the run, or ``None`` for a one-process run (every method is then the
        identity).
    sharded
        Whether each process reads its own rows (a DataLoader sharded over the ranks) rather
        than the same global minibatch.
    """

    def __init__(self, group: Ranks | None, sharded: bool) -> None:
        self.group = group
        self.sharded = sharded

    def split(self, x: Any, y: Tensor) -> Shard:
        """This process's :class:`Shard` of the minibatch ``(x, y)`` it read."""
        group = self.group
        if group is None:
            return Shard(x, y)
        rows = inputs.num_rows(x)
        if self.sharded:
            own = torch.zeros(group.world, dtype=torch.float64)
            own[group.rank] = rows
            counts = [int(c) for c in all_reduce_sum(own)]
            start, total = sum(counts[: group.rank]), sum(counts)
            return Shard(x, y, rows / total, RowBlock(start, start + rows, total))
        start, stop = group.block(rows)
        part = inputs.take_rows(x, slice(start, stop))
        return Shard(part, y[start:stop], (stop - start) / rows, RowBlock(start, stop, rows))

    def check_rows(self, batch_size: int) -> None:
        """``ValueError`` naming ``batch_size`` if a global minibatch of ``batch_size`` rows
        leaves a process without a row."""
        if self.group is not None and batch_size < self.group.world:
            raise ValueError(
                f"batch_size: {batch_size} rows cannot be shared over {self.group.world} "
                "processes (give at least one row per process, or distributed=False)"
            )

    def total(self, values: Tensor) -> Tensor:
        """The sum of ``values`` over the processes."""
        return values if self.group is None else all_reduce_sum(values)

    def reduce_gradients(self, params: Sequence[Tensor]) -> None:
        """Replace the gradient of each of ``params`` by its sum over the processes (one
        collective for all of them; parameters without a gradient are left alone)."""
        if self.group is None:
            return
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return
        summed = all_reduce_sum(torch.cat([g.reshape(-1) for g in grads]))
        offset = 0
        for grad in grads:
            grad.copy_(summed[offset : offset + grad.numel()].view_as(grad))
            offset += grad.numel()

    def note(self) -> dict[str, str]:
        """The Posterior's ``attrs["distributed"]`` entry (none in one process)."""
        if self.group is None:
            return {}
        group = self.group
        return {"distributed": f"rank {group.rank} of {group.world}: data parallel, whole guide"}
