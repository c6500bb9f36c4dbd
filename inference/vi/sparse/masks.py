r"""Sparse subspaces of SSVI (Li, Miao, Qiu & Zhang, ICLR 2024): masks, scores, updates.

A mask :math:`\gamma \in \{0, 1\}^D` over ``theta`` selects the active coordinates of the
mean-field guide. Each *sparse site* (a weight tensor) holds a fixed number of active
coordinates, ``round(density * numel)``; every other site stays dense. Every ``update_every``
steps until ``drop_until`` of training, each sparse site runs a *remove-then-add* update
(RigL-style, Evci et al. 2020):

1. drop fraction :math:`\alpha_t = \tfrac{\alpha_0}{2}\,(1 + \cos(\pi t / T_\mathrm{end}))`;
2. ``n_drop = floor(alpha_t * n_active)``; keep the ``n_active - n_drop`` active coordinates
   with the highest removal score;
3. add the ``n_drop`` coordinates not kept with the highest growth score: the dense gradient
   :math:`|\partial \mathcal L / \partial \mu|` (``"grad"``) or random (``"random"``).

A coordinate dropped and added back in the same update keeps its values; a coordinate new to
the active set starts at :math:`\mu = 0` with :math:`\rho` the site's mean active :math:`\rho`.

Removal scores (higher = keep), for :math:`\theta \sim \mathcal N(\mu, \sigma^2)`:

* ``"abs_mean"``: :math:`|\mu|`;
* ``"snr"``: :math:`|\mu| / \sigma`;
* ``"mean_abs"``: :math:`\mathbb E|\theta| = \mu\,\mathrm{erf}(\mu/(\sigma\sqrt2))
  + \sigma\sqrt{2/\pi}\,e^{-\mu^2/(2\sigma^2)}` (the folded-normal mean);
* ``"snr_abs"`` (the paper's default): :math:`\mathbb E|\theta| / \sqrt{\mathrm{Var}|\theta|}`,
  :math:`\mathrm{Var}|\theta| = \mu^2 + \sigma^2 - (\mathbb E|\theta|)^2`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "GROWTH",
    "REMOVAL",
    "MaskUpdate",
    "SparseSite",
    "drop_fraction_at",
    "random_mask",
    "removal_score",
    "update_mask",
]

REMOVAL = ("snr_abs", "abs_mean", "snr", "mean_abs")
GROWTH = ("grad", "random")


@dataclass(frozen=True)
class SparseSite:
    """A site restricted to a sparse subset: its slice of ``theta`` and its active count."""

    name: str
    index: slice
    num_active: int

    @property
    def numel(self) -> int:
        return self.index.stop - self.index.start

    @property
    def density(self) -> float:
        return self.num_active / self.numel


@dataclass(frozen=True)
class MaskUpdate:
    """The result of one mask update: the new mask and which coordinates entered or left."""

    mask: Tensor
    grown: Tensor
    dropped: Tensor

    @property
    def num_changed(self) -> int:
        return int(self.grown.sum())


def removal_score(criterion: str, loc: Tensor, scale: Tensor) -> Tensor:
    """The elementwise removal score of coordinates with guide ``N(loc, scale^2)``."""
    if criterion == "abs_mean":
        return loc.abs()
    if criterion == "snr":
        return loc.abs() / scale
    z = loc / scale
    mean_abs = loc * torch.erf(z / math.sqrt(2)) + scale * math.sqrt(2 / math.pi) * torch.exp(
        -0.5 * z * z
    )
    if criterion == "mean_abs":
        return mean_abs
    if criterion == "snr_abs":
        var_abs = (loc * loc + scale * scale - mean_abs * mean_abs).clamp_min(
            torch.finfo(loc.dtype).tiny
        )
        return mean_abs / var_abs.sqrt()
    raise ValueError(f"removal: must be one of {REMOVAL}, got {criterion!r}")


def drop_fraction_at(step: int, initial: float, until: float) -> float:
    r"""The drop fraction :math:`\tfrac{\alpha_0}{2}(1 + \cos(\pi t / T_\mathrm{end}))` at ``t``.

    ``initial`` is :math:`\alpha_0` and ``until`` is :math:`T_\mathrm{end}`; from there on it is 0.
    """
    if until <= 0 or step >= until:
        return 0.0
    return initial / 2 * (1 + math.cos(math.pi * step / until))


def random_mask(size: int, sites: Sequence[SparseSite], generator: torch.Generator) -> Tensor:
    """A mask over ``size`` coordinates: each sparse site with exactly ``num_active`` ones at
    uniformly random positions, every other coordinate active."""
    mask = torch.ones(size, dtype=torch.bool)
    for site in sites:
        chosen = torch.randperm(site.numel, generator=generator)[: site.num_active]
        part = torch.zeros(site.numel, dtype=torch.bool)
        part[chosen] = True
        mask[site.index] = part
    return mask


def update_mask(
    mask: Tensor,
    sites: Sequence[SparseSite],
    loc: Tensor,
    scale: Tensor,
    grad: Tensor | None,
    fraction: float,
    removal: str,
    growth: str,
    generator: torch.Generator | None = None,
) -> MaskUpdate:
    """One remove-then-add update of every sparse site (see the module doc).

    Parameters
    ----------
    mask
        Current mask ``(D,)``.
    sites
        The sparse sites.
    loc, scale
        Guide means and standard deviations ``(D,)``.
    grad
        Dense gradient of the loss with respect to the means ``(D,)`` (``growth="grad"``).
    fraction
        Drop fraction :math:`\\alpha_t` of this update.
    removal, growth
        Criteria (:data:`REMOVAL`, :data:`GROWTH`).
    generator
        Random source for ``growth="random"``.

    Returns
    -------
    MaskUpdate
        The new mask (same number of active coordinates per site) and the coordinates that
        entered (``grown``) and left (``dropped``) the active set.
    """
    new = mask.clone()
    with torch.no_grad():
        for site in sites:
            active = mask[site.index]
            n_active = int(active.sum())
            n_drop = math.floor(fraction * n_active)
            if n_drop == 0:
                continue
            score = removal_score(removal, loc[site.index], scale[site.index])
            score = torch.where(active, score, -math.inf)
            keep = torch.topk(score, n_active - n_drop).indices
            kept = torch.zeros_like(active)
            kept[keep] = True
            if growth == "grad":
                if grad is None:
                    raise ValueError("grad: growth='grad' needs the dense gradient")
                grow_score = grad[site.index].abs()
            elif growth == "random":
                grow_score = torch.rand(site.numel, generator=generator).to(loc.device)
            else:
                raise ValueError(f"growth: must be one of {GROWTH}, got {growth!r}")
            grow_score = torch.where(kept, -math.inf, grow_score.to(loc.dtype))
            grow = torch.topk(grow_score, n_drop).indices
            part = kept.clone()
            part[grow] = True
            new[site.index] = part
    return MaskUpdate(mask=new, grown=new & ~mask, dropped=mask & ~new)
