r"""Closed-form prior terms of the ELBO under a mean-field Gaussian guide.

For a coordinate :math:`\theta \sim \mathcal N(\mu, \sigma^2)` of the guide the expected log
prior :math:`\mathbb E_q[\log p(\theta)]` has a closed form for ``Normal``, ``Laplace`` and
reshaped ``MultivariateNormal`` priors (:func:`expected_log_prob`); the ELBO estimator
(:mod:`.elbo`) uses it in place of a Monte Carlo term where it exists (``kl="analytic"``).
Priors that depend on no latent are fixed for a run, so their closed-form terms are gathered
once into one vectorised prior per family (:func:`static_prior_terms`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor
from torch.distributions import (
    Distribution,
    Laplace,
    MultivariateNormal,
    Normal,
    TransformedDistribution,
)
from torch.distributions.transforms import ReshapeTransform

if TYPE_CHECKING:  # pragma: no cover
    from bayesdl.models import BNN

__all__ = [
    "LOG_2PI",
    "StaticPriorTerms",
    "expected_log_prob",
    "folded_normal_mean",
    "has_closed_form",
    "reshaped_mvn",
    "static_prior_terms",
]

#: :math:`\log 2\pi`.
LOG_2PI = math.log(2 * math.pi)


def folded_normal_mean(loc: Tensor, scale: Tensor) -> Tensor:
    r"""The folded-normal mean :math:`\mathbb E|X|` of :math:`X \sim \mathcal N(\mu, \sigma^2)`,

    .. math::
        \mu\,\mathrm{erf}\big(\mu / (\sigma\sqrt2)\big)
            + \sigma\sqrt{2/\pi}\, e^{-\mu^2/(2\sigma^2)}.
    """
    z = loc / scale
    return loc * torch.erf(z / math.sqrt(2)) + scale * math.sqrt(2 / math.pi) * torch.exp(
        -0.5 * z * z
    )


def reshaped_mvn(d: Distribution) -> MultivariateNormal | None:
    if not isinstance(d, TransformedDistribution) or not isinstance(
        d.base_dist, MultivariateNormal
    ):
        return None
    if not all(isinstance(t, ReshapeTransform) for t in d.transforms):
        return None
    return d.base_dist


def has_closed_form(d: Distribution) -> bool:
    """Whether :func:`expected_log_prob` has a closed form for the prior ``d``."""
    return isinstance(d, (Normal, Laplace)) or reshaped_mvn(d) is not None


def expected_log_prob(d: Distribution, loc: Tensor, scale: Tensor) -> Tensor:
    r""":math:`\mathbb E_{\theta \sim \mathcal N(\mu, \mathrm{diag}\,\sigma^2)}[\log d(\theta)]`.

    Parameters
    ----------
    d
        ``Normal(m, s)``, ``Laplace(m, b)`` or a ``MultivariateNormal`` reshaped to the event
        shape of a site (the correlated convolution prior), with batch dimensions that
        broadcast against ``loc``.
    loc, scale
        Means and standard deviations of the guide, shaped like one value of the site.

    Returns
    -------
    Tensor
        Elementwise for factorised priors (broadcast shape of ``d``'s batch and ``loc``);
        one value per event for the multivariate prior.

    Notes
    -----
    * Normal: :math:`-\log s - \tfrac12\log 2\pi - ((\mu - m)^2 + \sigma^2) / (2 s^2)`.
    * Laplace: :math:`-\log 2b - \mathbb E|\theta - m| / b`, with the folded-normal mean.
    * Multivariate normal :math:`\mathcal N(m, \Sigma)` over ``k`` coordinates:
      :math:`-\tfrac12[k\log 2\pi + \log|\Sigma| + (\mu - m)^\top\Sigma^{-1}(\mu - m)
      + \sum_j (\Sigma^{-1})_{jj}\sigma_j^2]`.
    """
    if isinstance(d, Normal):
        var = d.scale * d.scale
        return (
            -torch.log(d.scale) - 0.5 * LOG_2PI - ((loc - d.loc) ** 2 + scale * scale) / (2 * var)
        )
    if isinstance(d, Laplace):
        return -torch.log(2 * d.scale) - folded_normal_mean(loc - d.loc, scale) / d.scale
    mvn = reshaped_mvn(d)
    if mvn is None:
        raise ValueError(f"d: no closed form for {type(d).__name__}")
    k = mvn.event_shape[0]
    event_dims = len(d.event_shape)
    diff = loc.reshape(*loc.shape[: loc.dim() - event_dims], k) - mvn.loc
    var = (scale * scale).reshape(diff.shape)
    precision = mvn.precision_matrix
    quad = ((diff @ precision) * diff).sum(-1)
    trace = (var * torch.diagonal(precision, dim1=-2, dim2=-1)).sum(-1)
    log_det = 2 * torch.log(torch.diagonal(mvn.scale_tril, dim1=-2, dim2=-1)).sum(-1)
    return -0.5 * (k * LOG_2PI + log_det + quad + trace)


@dataclass(frozen=True)
class StaticPriorTerms:
    """Closed-form prior terms of several sites at once: one prior over their coordinates."""

    sites: tuple[str, ...]
    index: Tensor
    prior: Distribution


def static_prior_terms(
    bnn: BNN, priors: Mapping[str, Distribution], analytic: Mapping[str, bool]
) -> list[StaticPriorTerms]:
    """Group the closed-form ``Normal`` and ``Laplace`` prior terms that depend on no latent.

    Their priors are fixed, so their parameters are gathered once into vectors over the
    coordinates of all such sites, and one vectorised expression replaces one per site.
    """
    net = bnn.net
    modules = dict(net.named_modules())
    slices = bnn.layout.slices
    groups: dict[type, list[tuple[str, Tensor, Tensor]]] = {Normal: [], Laplace: []}
    for name, param in net.named_parameters():
        if not analytic.get(name, False):
            continue
        owner = modules[name.rsplit(".", 1)[0] if "." in name else ""]
        chosen = bnn.prior(name, param, owner)
        if chosen is None or chosen.latent_sites(name, param, owner):
            continue
        d = priors[name]
        family = Normal if isinstance(d, Normal) else Laplace if isinstance(d, Laplace) else None
        if family is None:
            continue
        loc = d.loc.detach().expand(param.shape).reshape(-1)
        scale = d.scale.detach().expand(param.shape).reshape(-1)
        groups[family].append((name, loc, scale))
    out = []
    for family, members in groups.items():
        if not members:
            continue
        names = tuple(m[0] for m in members)
        index = torch.cat(
            [torch.arange(slices[n].start, slices[n].stop, device=bnn.device) for n in names]
        )
        prior = family(torch.cat([m[1] for m in members]), torch.cat([m[2] for m in members]))
        out.append(StaticPriorTerms(names, index, prior))
    return out
