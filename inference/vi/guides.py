r"""The mean-field Gaussian family over ``theta``, and where a fitted one is kept on a Posterior.

The family is a product of independent Gaussians over the flat unconstrained parameters,

.. math::
    q(\theta) = \prod_{k\,:\,\gamma_k = 1} \mathcal N(\theta_k;\, \mu_k, \sigma_k^2)
        \prod_{k\,:\,\gamma_k = 0} \delta_0(\theta_k),
    \qquad \sigma_k = \mathrm{softplus}(\rho_k),

with an optional boolean mask :math:`\gamma` (all ones for dense VI; the sparse subspace of
SSVI, Li et al. 2024, otherwise). Masked coordinates are exactly zero in every draw, and the
entropy and KL divergence are sums over the active coordinates only. Because ``theta`` is
unconstrained, constrained sites (a positive scale) get a log-normal or similar guide through
the same bijection Pyro's autoguides use.

Storage
-------
A Posterior from :class:`~bayesdl.inference.VI` or :class:`~bayesdl.inference.SSVI` keeps the
fitted family in ``posterior.attrs["variational"]``, a dict with

* ``"family"``: ``"mean_field"``;
* ``"loc"``, ``"scale"``: tensors ``(D,)`` of :math:`\mu` and :math:`\sigma` over unconstrained
  ``theta`` (both zero at masked coordinates);
* ``"mask"``: a bool tensor ``(D,)``, SSVI only.

:func:`guide_from_posterior` reads it back as a :class:`MeanField`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor

if TYPE_CHECKING:  # pragma: no cover
    from bayesdl import Posterior

__all__ = ["ATTR", "MeanField", "guide_from_posterior", "inverse_softplus"]

#: The key of ``Posterior.attrs`` holding the fitted variational family.
ATTR = "variational"

_HALF_LOG_2PI_E = 0.5 * math.log(2 * math.pi * math.e)


def inverse_softplus(scale: Tensor) -> Tensor:
    r"""Inverse of softplus, :math:`\rho = \log(e^\sigma - 1) = \sigma + \log(1 - e^{-\sigma})`."""
    return scale + torch.log(-torch.expm1(-scale))


class MeanField:
    """A (possibly masked) mean-field Gaussian over ``theta`` ``(D,)``.

    Parameters
    ----------
    loc
        Means :math:`\\mu`, shape ``(D,)``.
    scale
        Standard deviations :math:`\\sigma > 0`, shape ``(D,)``; stored as
        :math:`\\rho = \\mathrm{softplus}^{-1}(\\sigma)`.
    mask
        Bool ``(D,)``: the active coordinates (``None``: all active).

    Attributes
    ----------
    loc, raw_scale : Tensor
        The optimised leaf tensors :math:`\\mu` and :math:`\\rho` (``requires_grad``). Values at
        masked coordinates are kept but never used.
    mask : Tensor or None
        The active set; changed in place by SSVI's mask updates.
    """

    def __init__(self, loc: Tensor, scale: Tensor, mask: Tensor | None = None) -> None:
        if loc.dim() != 1 or scale.shape != loc.shape:
            raise ValueError(
                f"scale: expected the shape of loc {tuple(loc.shape)}, got {tuple(scale.shape)}"
            )
        if not bool((scale > 0).all()):
            raise ValueError("scale: every standard deviation must be > 0")
        if mask is not None and (mask.dtype != torch.bool or mask.shape != loc.shape):
            raise ValueError(f"mask: expected a bool tensor of shape {tuple(loc.shape)}")
        self.loc = loc.detach().clone().requires_grad_(True)
        self.raw_scale = inverse_softplus(scale.detach()).clone().requires_grad_(True)
        self.mask = None if mask is None else mask.clone()

    @classmethod
    def from_raw(cls, loc: Tensor, raw_scale: Tensor, mask: Tensor | None = None) -> MeanField:
        """The family with leaves :math:`\\mu` = ``loc`` and :math:`\\rho` = ``raw_scale``.

        Unlike the constructor, :math:`\\rho` is taken as it is (no round trip through
        :math:`\\sigma`), so a family rebuilt from its stored leaves is the same bit for bit.
        The leaves share storage with the tensors given.
        """
        family = cls.__new__(cls)
        if loc.dim() != 1 or raw_scale.shape != loc.shape:
            raise ValueError(
                f"raw_scale: expected the shape of loc {tuple(loc.shape)}, got "
                f"{tuple(raw_scale.shape)}"
            )
        if mask is not None and (mask.dtype != torch.bool or mask.shape != loc.shape):
            raise ValueError(f"mask: expected a bool tensor of shape {tuple(loc.shape)}")
        family.loc = loc.detach().requires_grad_(True)
        family.raw_scale = raw_scale.detach().requires_grad_(True)
        family.mask = mask
        return family

    @property
    def num_params(self) -> int:
        """``D``."""
        return self.loc.shape[0]

    @property
    def num_active(self) -> int:
        """Number of active coordinates."""
        return self.num_params if self.mask is None else int(self.mask.sum())

    def parameters(self) -> list[Tensor]:
        """The leaves an optimiser updates, ``[loc, raw_scale]``."""
        return [self.loc, self.raw_scale]

    def scale(self) -> Tensor:
        """:math:`\\sigma = \\mathrm{softplus}(\\rho)` (unmasked, differentiable)."""
        return F.softplus(self.raw_scale)

    def masked(
        self, loc: Tensor | None = None, scale: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Means and standard deviations with masked coordinates set to exactly zero.

        ``torch.where`` keeps the gradient at masked coordinates exactly zero.
        """
        loc = self.loc if loc is None else loc
        scale = self.scale() if scale is None else scale
        if self.mask is None:
            return loc, scale
        return torch.where(self.mask, loc, 0.0), torch.where(self.mask, scale, 0.0)

    def active_sum(self, terms: Tensor) -> Tensor:
        """Sum elementwise ``terms`` ``(..., D)`` over the active coordinates, ``(...)``."""
        if self.mask is None:
            return terms.sum(-1)
        return torch.where(self.mask, terms, 0.0).sum(-1)

    def entropy(self) -> Tensor:
        r"""Entropy :math:`\sum_{k\ \mathrm{active}} \log\sigma_k + \tfrac12\log(2\pi e)`."""
        return self.active_sum(torch.log(self.scale()) + _HALF_LOG_2PI_E)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` draws ``(n, D)`` (no gradient), zero at masked coordinates."""
        loc, scale = self.masked()
        noise = torch.randn(
            (n, self.num_params), generator=generator, dtype=loc.dtype, device=loc.device
        )
        return loc + scale * noise

    @torch.no_grad()
    def log_prob(self, theta: Tensor) -> Tensor:
        """Log density of draws ``(n, D)`` over the active coordinates, ``(n,)``."""
        scale = self.scale()
        z = (theta - self.loc) / scale
        return self.active_sum(-0.5 * z * z - torch.log(scale) - 0.5 * math.log(2 * math.pi))

    def state(self) -> dict[str, Any]:
        """Detached copies in the ``Posterior.attrs["variational"]`` layout (see module doc)."""
        loc, scale = self.masked()
        out: dict[str, Any] = {
            "family": "mean_field",
            "loc": loc.detach().clone(),
            "scale": scale.detach().clone(),
        }
        if self.mask is not None:
            out["mask"] = self.mask.clone()
        return out

    def __repr__(self) -> str:
        return f"MeanField(D={self.num_params}, active={self.num_active})"


def guide_from_posterior(posterior: Posterior) -> MeanField:
    """The fitted family stored on a variational posterior (see the module doc for the layout).

    Masked coordinates (scale 0) get a tiny positive scale so the family stays valid; they
    remain masked.

    Raises
    ------
    ValueError
        If the posterior holds no variational family.
    """
    stored = posterior.attrs.get(ATTR)
    if not isinstance(stored, Mapping) or "loc" not in stored or "scale" not in stored:
        raise ValueError(
            "posterior: holds no variational family (attrs['variational'] with 'loc' and "
            "'scale'); it did not come from VI or SSVI"
        )
    loc, scale = stored["loc"], stored["scale"]
    mask = stored.get("mask")
    tiny = torch.finfo(scale.dtype).tiny
    safe_scale = scale.clamp_min(tiny) if mask is None else torch.where(mask, scale, 1.0)
    return MeanField(loc, safe_scale.clamp_min(tiny), mask)
