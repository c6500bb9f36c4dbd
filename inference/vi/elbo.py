r"""The functional ELBO of a BNN under a mean-field Gaussian guide, vectorised over particles.

For a guide :math:`q` over unconstrained :math:`\theta` (see :mod:`.guides`) the BNN's
tempered log joint (``BNN.log_joint``) splits into a likelihood part, a prior part and the
log-det Jacobian of the constraining transforms, so the evidence lower bound is

.. math::
    \mathcal L(q) = \mathbb E_q[\log \tilde p(\theta)] + \mathbb H[q]
      = \lambda_\ell\, \mathbb E_q\Big[\tfrac{\texttt{num\_data}}{B}\sum_{b}
            \log p(y_b \mid x_b, \theta)\Big] - \mathrm{KL}_T(q),
    \qquad
    \mathrm{KL}_T(q) = -\mathbb H[q] - \lambda_p\, \mathbb E_q[\log p(\vartheta)]
        - \mathbb E_q\Big[\log\Big|\tfrac{\partial\vartheta}{\partial\theta}\Big|\Big],

with :math:`(\lambda_\ell, \lambda_p) = (1/T, 1/T)` for a tempered posterior and
:math:`(1/T, 1)` for a tempered likelihood. At :math:`T = 1`, :math:`\mathrm{KL}_T` is the usual
:math:`\mathrm{KL}(q \,\|\, p)`. This is the objective Pyro's ``Trace_ELBO`` estimates on
``bnn.model`` with an ``AutoNormal`` guide; its maximiser is the member of the family closest in
KL to the tempered posterior. KL annealing multiplies :math:`\mathrm{KL}_T` by a weight
:math:`\beta_t` (Blundell et al. 2015; Li et al. 2024 warm it up linearly).

Estimators
----------
* Likelihood: with the local reparameterisation trick (:mod:`.local_reparam`) for ``Linear`` and
  ``Conv`` layers whose weights are sites, and plain reparameterised draws
  :math:`\theta = \mu + \sigma\epsilon` for every other site.
* Entropy: closed form (``kl="analytic"``) or :math:`-\log q(\theta)` at a draw (``"mc"``).
* Prior cross-entropy :math:`\mathbb E_q[\log p]`: closed form (:mod:`.closed_form`) for
  ``Normal``, ``Laplace`` and reshaped ``MultivariateNormal`` priors of unconstrained sites
  (given the draws of any hyper-latents they depend on), else :math:`\log p` at a draw
  (Student-t, Cauchy, scale mixtures, constrained hyper-latents).

Every estimator is unbiased, so the ELBO estimate has the same expectation whatever the
choices; they differ in variance only. Each of the ``num_particles`` particles uses its own
noise; the estimate is their average.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pyro
import torch
from torch import Tensor
from torch.distributions import (
    biject_to,
)

from bayesdl.functional import SiteSpec

from .closed_form import LOG_2PI, expected_log_prob, has_closed_form, static_prior_terms
from .guides import MeanField
from .linear_layers import probe_linear_layers
from .local_reparam import LayerNoise, RowBlock, local_reparameterization, reparameterizable

if TYPE_CHECKING:  # pragma: no cover
    from bayesdl.models import BNN

__all__ = ["ElboEstimate", "FunctionalELBO"]

_KL_MODES = ("analytic", "mc")


@dataclass(frozen=True)
class ElboEstimate:
    """One estimate of the ELBO, averaged over particles.

    Attributes
    ----------
    objective
        :math:`\\lambda_\\ell\\,\\mathbb E[\\log\\text{lik}] - \\beta\\,\\mathrm{KL}_T`, the
        differentiable quantity to maximise.
    elbo
        The same at :math:`\\beta = 1` (a float).
    kl
        The :math:`\\mathrm{KL}_T` estimate (a float).
    loc_used
        The means the network saw (zero at masked coordinates); its gradient is the dense
        gradient SSVI grows coordinates by.
    """

    objective: Tensor
    elbo: float
    kl: float
    loc_used: Tensor


def _site_sum(terms: Tensor, site: SiteSpec, event_dims: int, mask: Tensor | None) -> Tensor:
    """Sum the prior terms of one site over its (active) coordinates.

    ``terms`` has shape ``(*batch, *site.shape[:-event_dims])`` (one term per coordinate for a
    factorised prior, one per event for a multivariate one), with ``batch`` empty or ``(P,)``.
    Masks apply to factorised priors only (SSVI checks that sparse sites have one).
    """
    batch = terms.dim() - (len(site.shape) - event_dims)
    flat = terms.reshape(*terms.shape[:batch], -1)
    if mask is None or event_dims:
        return flat.sum(-1)
    return torch.where(mask, flat, 0.0).sum(-1)


class FunctionalELBO:
    """Unbiased ELBO estimates for a BNN and a :class:`~.guides.MeanField` guide.

    Parameters
    ----------
    bnn
        The model.
    x_example
        Inputs like the training inputs (one row is run once to find the linear layers).
    local_reparam
        Use the local reparameterisation trick for ``Linear``/``Conv`` layers.
    kl
        ``"analytic"`` (closed forms where they exist) or ``"mc"`` (draws only).
    num_particles
        Independent noise draws averaged per estimate.
    """

    def __init__(
        self, bnn: BNN, x_example: Tensor, *, local_reparam: bool, kl: str, num_particles: int
    ) -> None:
        if kl not in _KL_MODES:
            raise ValueError(f"kl: must be one of {_KL_MODES}, got {kl!r}")
        self.bnn = bnn
        self.kl = kl
        self.num_particles = num_particles
        layout = bnn.layout
        self.sites = layout.sites
        self.slices = layout.slices
        self.shapes = {s.name: s.shape for s in self.sites}
        net = bnn.net
        parameter_names = {name for name, _ in net.named_parameters()}
        self.network_sites = [s.name for s in self.sites if s.name in parameter_names]
        self.fixed = {
            name: p.detach() for name, p in net.named_parameters() if name not in self.slices
        }
        self.fixed.update(dict(net.named_buffers()))
        layers = probe_linear_layers(net, x_example) if local_reparam else []
        self.lrt_layers = reparameterizable(net, layers, self.sites)
        covered = {layer.weight for layer in self.lrt_layers}
        covered |= {layer.bias for layer in self.lrt_layers if layer.bias in self.slices}
        self.covered = covered
        self.per_particle = [name for name in self.network_sites if name not in covered]
        # which prior terms have a closed form (the family of a prior does not change)
        with pyro.validation_enabled(False):
            example = layout.unravel(bnn.init_theta(1, seed=0))
            priors = bnn.site_priors(example)
        networked = set(self.network_sites)
        self.analytic = {
            s.name: kl == "analytic"
            and s.name in networked
            and s.is_real
            and has_closed_form(priors[s.name])
            for s in self.sites
        }
        # a site is drawn if the forward pass or a Monte Carlo term needs its value;
        # hyper-latents are always drawn (other sites' priors depend on them)
        self.sampled = [
            s
            for s in self.sites
            if kl == "mc" or s.name not in covered or not self.analytic[s.name]
        ]
        self.static_terms = static_prior_terms(bnn, priors, self.analytic)
        self.static_sites = {name for group in self.static_terms for name in group.sites}
        if bnn.tempering == "posterior":
            self.lik_factor = self.prior_factor = 1.0 / bnn.temperature
        else:
            self.lik_factor, self.prior_factor = 1.0 / bnn.temperature, 1.0

    @property
    def uses_local_reparam(self) -> bool:
        """Whether any layer runs with the local reparameterisation trick."""
        return bool(self.lrt_layers)

    def _forward(
        self,
        loc: Tensor,
        scale: Tensor,
        draws: Mapping[str, Tensor],
        x: Tensor,
        rows: RowBlock | None,
    ) -> Tensor:
        """Network outputs ``(P, N, out)`` with LRT layers and per-particle draws elsewhere."""
        P = self.num_particles
        shapes = self.shapes
        means = {
            name: loc[self.slices[name]].reshape(shapes[name])
            for name in self.network_sites
            if name in self.covered
        }
        noise = {}
        for layer in self.lrt_layers:
            std_w = scale[self.slices[layer.weight]].reshape(shapes[layer.weight])
            std_b = None
            if layer.bias in self.covered:
                std_b = scale[self.slices[layer.bias]].reshape(shapes[layer.bias])
            noise[layer.module] = LayerNoise(std_w, std_b)
        net = self.bnn.net
        base = {**self.fixed, **means}
        with local_reparameterization(net, noise, rows):
            if not self.per_particle:
                tiled = x.repeat(P, *([1] * (x.dim() - 1))) if P > 1 else x
                f = torch.func.functional_call(net, base, (tiled,))
                f = f.reshape(P, x.shape[0], *f.shape[1:])
            else:
                batched = {name: draws[name] for name in self.per_particle}

                def one(params: Mapping[str, Tensor]) -> Tensor:
                    return torch.func.functional_call(net, {**base, **params}, (x,))

                f = torch.func.vmap(one, randomness="different")(batched)
        return f[..., None] if f.dim() == 2 else f

    def __call__(
        self,
        family: MeanField,
        x: Tensor,
        y: Tensor,
        num_data: int,
        beta: float = 1.0,
        rows: RowBlock | None = None,
    ) -> ElboEstimate:
        """Estimate the ELBO on the minibatch ``(x, y)`` of a data set of ``num_data``.

        ``rows``: in a run shared over processes, where ``(x, y)`` lies in the global
        minibatch (the per-example noise of the local reparameterisation is that of those
        rows; :mod:`.data_parallel`). The likelihood is scaled by ``num_data / len(x)``.
        """
        with pyro.validation_enabled(False):
            return self._estimate(family, x, y, num_data, beta, rows)

    def _estimate(
        self,
        family: MeanField,
        x: Tensor,
        y: Tensor,
        num_data: int,
        beta: float,
        rows: RowBlock | None,
    ) -> ElboEstimate:
        P = self.num_particles
        loc, scale = family.loc, family.scale()
        loc_used, scale_used = family.masked(loc, scale)
        mask = family.mask
        draws: dict[str, Tensor] = {}
        jacobian = loc.new_zeros(P)
        log_q = loc.new_zeros(P)
        for site in self.sampled:
            sl = self.slices[site.name]
            noise = torch.randn(P, site.numel, dtype=loc.dtype, device=loc.device)
            u = loc_used[sl] + scale_used[sl] * noise
            if self.kl == "mc":
                terms = -0.5 * noise * noise - torch.log(scale[sl]) - 0.5 * LOG_2PI
                log_q = log_q + _masked_sum(terms, _m(mask, sl))
            value = u.reshape(P, *site.shape)
            if not site.is_real:
                transform = biject_to(site.support)
                constrained = transform(value)
                ladj = transform.log_abs_det_jacobian(value, constrained)
                jacobian = jacobian + ladj.reshape(P, -1).sum(-1)
                value = constrained
            draws[site.name] = value

        f = self._forward(loc_used, scale_used, draws, x, rows)
        likelihood = self.bnn.likelihood
        latents = {name: draws[name] for name in likelihood.latent_sites()}
        log_lik = likelihood.log_prob(f, y, latents).sum(-1) * (num_data / x.shape[0])

        cross = loc.new_zeros(P)
        for group in self.static_terms:
            terms = expected_log_prob(group.prior, loc[group.index], scale[group.index])
            cross = cross + _masked_sum(terms, None if mask is None else mask[group.index])
        dynamic = [site for site in self.sites if site.name not in self.static_sites]
        priors = self.bnn.site_priors(draws) if dynamic else {}
        for site in dynamic:
            sl = self.slices[site.name]
            d = priors[site.name]
            if self.analytic[site.name]:
                terms = expected_log_prob(
                    d, loc[sl].reshape(site.shape), scale[sl].reshape(site.shape)
                )
            else:
                terms = d.log_prob(draws[site.name])
            event_dims = len(d.event_shape)
            cross = cross + _site_sum(terms, site, event_dims, _m(mask, sl))
        entropy = -log_q if self.kl == "mc" else family.entropy()
        kl = -entropy - self.prior_factor * cross - jacobian
        lik_term = self.lik_factor * log_lik
        objective = (lik_term - beta * kl).mean()
        return ElboEstimate(
            objective=objective,
            elbo=float((lik_term - kl).mean().detach()),
            kl=float(kl.mean().detach()),
            loc_used=loc_used,
        )


def _m(mask: Tensor | None, sl: slice) -> Tensor | None:
    return None if mask is None else mask[sl]


def _masked_sum(terms: Tensor, mask: Tensor | None) -> Tensor:
    return terms.sum(-1) if mask is None else torch.where(mask, terms, 0.0).sum(-1)
