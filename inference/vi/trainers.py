"""The trainers of the VI fit stage: the loss of a guide at a minibatch, for either engine.

A trainer has :meth:`~FunctionalTrainer.parameters` (the leaves an optimiser updates),
:meth:`~FunctionalTrainer.loss` (the negative ELBO at a minibatch, and what to record),
:meth:`~FunctionalTrainer.after_step` (a hook after each optimiser step; SSVI's trainer,
:class:`~.sparse.trainer.SparseTrainer`, updates its masks there) and
:meth:`~FunctionalTrainer.family` (the guide as it is).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .elbo import ElboEstimate, FunctionalELBO
from .guides import MeanField
from .local_reparam import RowBlock
from .pyro_engine import PyroTrainer

__all__ = ["FunctionalTrainer", "PyroAdapter"]


class FunctionalTrainer:
    """The functional engine's loss for a :class:`~.guides.MeanField` guide.

    Parameters
    ----------
    elbo
        The ELBO estimator.
    family
        The guide whose parameters are optimised.
    num_data
        Size of the whole data set (scales a minibatch's log-likelihood).
    """

    def __init__(self, elbo: FunctionalELBO, family: MeanField, num_data: int) -> None:
        self.elbo = elbo
        self.guide = family
        self.num_data = num_data
        self.last: ElboEstimate | None = None  # the latest estimate (SSVI reads its gradient)

    def parameters(self) -> list[Tensor]:
        return self.guide.parameters()

    def loss(
        self, x: Tensor, y: Tensor, beta: float, step: int, rows: RowBlock | None = None
    ) -> tuple[Tensor, dict[str, Any]]:
        r""":math:`-(\lambda_\ell\,\mathbb E[\log\text{lik}] - \beta\,\mathrm{KL}_T)` at
        ``(x, y)``, and the step's ``elbo`` and ``kl`` estimates (``rows``: where ``(x, y)``
        lies in the global minibatch of a run shared over processes, :mod:`.data_parallel`)."""
        estimate = self.elbo(self.guide, x, y, self.num_data, beta, rows)
        self.last = estimate
        objective = estimate.objective
        return -objective, {"elbo": float(objective.detach()), "kl": estimate.kl}

    def after_step(self, step: int, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """Called after optimiser step ``step`` (counted from 1); returns info to report."""
        return {}

    def family(self) -> MeanField:
        return self.guide


class PyroAdapter:
    """:class:`~.pyro_engine.PyroTrainer` behind the trainer interface.

    Its guide's parameters live in Pyro's autoguide, not in a
    :class:`~.guides.MeanField`; the run reads them back with :meth:`family` after each step.
    """

    def __init__(self, trainer: PyroTrainer) -> None:
        self.trainer = trainer

    def parameters(self) -> list[Tensor]:
        return self.trainer.parameters()

    def loss(
        self, x: Tensor, y: Tensor, beta: float, step: int, rows: RowBlock | None = None
    ) -> tuple[Tensor, dict[str, Any]]:
        if rows is not None:
            raise ValueError("distributed: the Pyro engine runs in one process only")
        loss, objective = self.trainer.loss(x, y, beta)
        return loss, {"elbo": objective}

    def after_step(self, step: int, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        return {}

    def family(self) -> MeanField:
        return self.trainer.family()
