"""SSVI's trainer: the functional VI trainer plus the remove-then-add updates of the masks.

Every ``update_every`` steps until ``drop_until`` (:meth:`~.ssvi.SSVI.update_steps`), after the
optimiser step, each sparse weight drops the fraction :math:`\\alpha_t` of its active
coordinates with the lowest removal score and grows as many (:func:`~.masks.update_mask`);
grown coordinates restart at mean 0 with the site's mean :math:`\\rho` over the coordinates
kept, and the optimiser's moments of every changed coordinate are zeroed. In a run shared
over processes (:mod:`..data_parallel`) the dense gradient the growth scores come from is
summed over the processes first (the guide, and so the removal scores, are the same on
every process), so every process takes the same masks.

What the updates change besides the guide (the generator of ``growth="random"`` and the
number of coordinates grown per update) is a :class:`MaskState` in the run's State.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ...state import state_record
from ..elbo import FunctionalELBO
from ..guides import MeanField
from ..local_reparam import RowBlock
from ..trainers import FunctionalTrainer
from .masks import SparseSite, drop_fraction_at, update_mask

if TYPE_CHECKING:  # pragma: no cover
    from ..data_parallel import DataShare
    from .ssvi import SSVI

__all__ = ["MaskState", "SparseTrainer", "zero_optimizer_state"]


@state_record
class MaskState:
    """The mask updates' part of an SSVI run's State.

    Attributes
    ----------
    generator
        The stream of ``growth="random"`` (its own, so that the masks never touch the ELBO
        noise and SSVI at density 1 repeats dense VI exactly).
    changed
        Coordinates grown at each mask update so far.
    """

    generator: torch.Generator
    changed: list[int] = field(default_factory=list)


class SparseTrainer(FunctionalTrainer):
    """The functional trainer plus SSVI's mask updates.

    Parameters
    ----------
    elbo, family, num_data
        As for :class:`~..trainers.FunctionalTrainer`; ``family`` carries the mask.
    ssvi
        The backend (update schedule, removal and growth rules).
    sites
        The sparse weights.
    record
        The run's :class:`MaskState`, updated in place.
    share
        How the run shares its minibatches over processes (``None``: one process).
    """

    def __init__(
        self,
        elbo: FunctionalELBO,
        family: MeanField,
        num_data: int,
        ssvi: SSVI,
        sites: list[SparseSite],
        record: MaskState,
        share: DataShare | None = None,
    ) -> None:
        super().__init__(elbo, family, num_data)
        self.share = share
        self.ssvi = ssvi
        self.sites = sites
        self.record = record
        self.updates = set(ssvi.update_steps())
        self.until = ssvi.drop_until * ssvi.steps
        self.dense_grad: Tensor | None = None  # within a step: loss -> after_step

    @property
    def changed(self) -> list[int]:
        """Coordinates grown at each mask update so far."""
        return self.record.changed

    def loss(
        self, x: Tensor, y: Tensor, beta: float, step: int, rows: RowBlock | None = None
    ) -> tuple[Tensor, dict[str, Any]]:
        loss, info = super().loss(x, y, beta, step, rows)
        if step + 1 in self.updates and self.ssvi.growth == "grad":

            def capture(grad: Tensor) -> None:
                self.dense_grad = grad.detach().clone()

            self.last.loc_used.register_hook(capture)
        return loss, info

    def after_step(self, step: int, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        guide = self.guide
        info: dict[str, Any] = {"num_active": guide.num_active}
        if step not in self.updates:
            return info
        fraction = drop_fraction_at(step, self.ssvi.drop_fraction, self.until)
        if self.share is not None and self.dense_grad is not None:
            self.dense_grad = self.share.total(self.dense_grad)
        with torch.no_grad():
            update = update_mask(
                guide.mask,
                self.sites,
                guide.loc.detach(),
                guide.scale().detach(),
                self.dense_grad,
                fraction,
                self.ssvi.removal,
                self.ssvi.growth,
                self.record.generator,
            )
            for site in self.sites:
                sl = site.index
                grown = update.grown[sl]
                if bool(grown.any()):
                    kept = guide.mask[sl] & update.mask[sl]
                    guide.raw_scale[sl][grown] = guide.raw_scale[sl][kept].mean()
            changed = update.grown | update.dropped
            guide.loc[changed] = 0.0
            guide.mask = update.mask
            zero_optimizer_state(optimizer, guide.parameters(), changed)
        self.dense_grad = None
        self.record.changed.append(update.num_changed)
        info.update(num_active=guide.num_active, mask_changed=update.num_changed, drop=fraction)
        return info


def zero_optimizer_state(
    optimizer: torch.optim.Optimizer, params: Sequence[Tensor], where: Tensor
) -> None:
    """Zero every per-coordinate optimiser state (momentum, Adam moments) at ``where``."""
    for param in params:
        for value in optimizer.state.get(param, {}).values():
            if isinstance(value, Tensor) and value.shape == param.shape:
                value[where] = 0
