r"""Fused prior terms: many sites scored with a few tensor operations.

The samplers' inner loop evaluates the log prior and the log-det Jacobian at every step, so the
sites whose terms have a closed form are scored together on ``theta`` rather than by one
distribution per site:

* :class:`GaussianBlock`: every site with a fixed Normal prior;
* :class:`ScaleBlock`: every parameter with a per-tensor inverse-Gamma scale and its scale site;
* :class:`JacobianPlan`: the log-det Jacobian, with the log-scale sites (:func:`is_exp`) summed
  at once.

The ``build_*`` functions assemble them from a BNN's sites (:mod:`bayesdl.models.sites` builds
each once per dtype and device).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import pyro.distributions as dist
import torch
from torch import Tensor, nn
from torch.distributions import biject_to
from torch.distributions.transforms import (
    AffineTransform,
    ComposeTransform,
    ExpTransform,
    Transform,
)

from bayesdl.functional import FlatLayout

from .selection import Weight

__all__ = [
    "GaussianBlock",
    "JacobianPlan",
    "ScaleBlock",
    "build_gaussian_block",
    "build_jacobian_plan",
    "build_scale_block",
    "is_exp",
]


@dataclass(frozen=True)
class GaussianBlock:
    """The sites with a fixed Normal prior, scored together as one vector.

    ``log N(theta_c | loc, scale^2)`` summed over the columns ``c`` of those sites (``columns``
    is ``None`` when they are all of ``theta``): two tensor operations in place of a
    distribution per site, for the samplers' inner loop.
    """

    names: frozenset[str]
    columns: Tensor | None
    loc: Tensor
    inv_scale: Tensor
    const: float

    def log_prob(self, theta: Tensor) -> Tensor:
        """The summed log density of the block's columns of ``theta``, ``(P, D)`` -> ``(P,)``."""
        if self.columns is not None:
            theta = theta.index_select(-1, self.columns)
        return self.const - 0.5 * ((theta - self.loc) * self.inv_scale).square().sum(-1)


@dataclass(frozen=True)
class ScaleBlock:
    r"""The sites with a per-tensor inverse-Gamma scale prior, scored together in closed form.

    For tensor :math:`l` with :math:`n_l` entries :math:`w`, factor :math:`c_l` and
    hyperprior :math:`\sigma_l^2 \sim \mathrm{InvGamma}(a_l, b_l)`
    (:class:`~bayesdl.priors.base.InverseGammaScaleTerms`), the latent is stored as
    :math:`u_l = \log\sigma_l` and the log prior of :math:`(\sigma_l, w)` is

    .. math::
        \underbrace{a_l \log b_l - \log\Gamma(a_l) + \log 2 - (2a_l + 1) u_l
            - b_l e^{-2u_l}}_{\log p(\sigma_l)\text{: InvGamma on } \sigma_l^2,
            \text{ Jacobian of } \sigma^2 \mapsto \sigma}
        \; \underbrace{- n_l \log c_l - \tfrac{n_l}{2}\log 2\pi - n_l u_l
            - \frac{S_l}{2 c_l^2} e^{-2u_l}}_{\sum_i \log \mathcal N(w_i; 0, c_l^2\sigma_l^2)},
        \qquad S_l = \sum_i w_i^2,

    that is ``const - sum_l [k_l u_l + (b_l + h_l S_l) exp(-2 u_l)]`` with
    :math:`k_l = 2a_l + 1 + n_l` and :math:`h_l = 1/(2c_l^2)`: a few tensor operations for all
    tensors and chains, in place of two distributions per tensor per call. The log-det
    Jacobian of :math:`\sigma = e^u` is not included (:meth:`~bayesdl.models.BNN.log_joint`
    adds it).
    """

    names: frozenset[str]
    latent_columns: Tensor
    weight_columns: Tensor
    layer_of_weight: Tensor
    slope: Tensor
    rate: Tensor
    half_inv_factor_sq: Tensor
    const: float

    def log_prob(self, theta: Tensor) -> Tensor:
        """The block's log prior (without the Jacobian of ``exp``), ``(P, D)`` -> ``(P,)``."""
        u = theta.index_select(-1, self.latent_columns)
        w = theta.index_select(-1, self.weight_columns)
        sums = u.new_zeros(u.shape).index_add(-1, self.layer_of_weight, w.square())
        energy = (self.rate + self.half_inv_factor_sq * sums) * torch.exp(-2 * u)
        return self.const - (self.slope * u + energy).sum(-1)


@dataclass(frozen=True)
class JacobianPlan:
    """How to sum the log-det Jacobian: log-scale columns at once, other sites one by one."""

    exp_columns: Tensor
    others: tuple[tuple[slice, torch.Size, Transform], ...]

    def log_abs_det_jacobian(self, theta: Tensor) -> Tensor:
        """Log-det Jacobian of the constraining transforms, ``(*batch, D)`` -> ``(*batch,)``."""
        batch = theta.shape[:-1]
        total = theta.index_select(-1, self.exp_columns).sum(-1)
        for span, shape, transform in self.others:
            u = theta[..., span].reshape(batch + shape)
            ladj = transform.log_abs_det_jacobian(u, transform(u))
            total = total + ladj.reshape(*batch, -1).sum(-1)
        return total


def is_exp(transform: Transform) -> bool:
    r"""Whether ``transform`` is :math:`u \mapsto e^u`: ``ExpTransform``, or the
    ``ExpTransform`` then ``AffineTransform(0, 1)`` that ``biject_to(greater_than(0))`` gives
    (the support of a scale site built by transforming a positive distribution)."""
    if type(transform) is ExpTransform:
        return True
    if type(transform) is not ComposeTransform or len(transform.parts) != 2:
        return False
    first, second = transform.parts
    if type(first) is not ExpTransform or type(second) is not AffineTransform:
        return False
    try:
        return float(second.loc) == 0.0 and float(second.scale) == 1.0
    except (TypeError, ValueError, RuntimeError):  # a non-scalar loc or scale
        return False


def build_gaussian_block(
    fixed_priors: Sequence[tuple[str, Tensor, dist.Distribution | None]],
    layout: FlatLayout,
    dtype: torch.dtype,
    device: torch.device,
) -> GaussianBlock:
    """The sites with a fixed Normal prior as one :class:`GaussianBlock`.

    Parameters
    ----------
    fixed_priors
        ``(name, parameter, prior)`` for every weight, in order; ``prior`` is ``None`` for a
        hierarchical one. Only the priors of type ``pyro.distributions.Normal`` are fused.
    layout
        The layout of ``theta``.
    dtype, device
        Those of the network.
    """
    names, columns, locs, scales = [], [], [], []
    for name, param, d in fixed_priors:
        if type(d) is not dist.Normal:
            continue
        names.append(name)
        span = layout.slices[name]
        columns.append(torch.arange(span.start, span.stop, device=param.device))
        locs.append(d.loc.expand(param.shape).reshape(-1))
        scales.append(d.scale.expand(param.shape).reshape(-1))
    empty = torch.zeros(0, dtype=dtype, device=device)
    column = torch.cat([empty.long(), *columns])
    scale = torch.cat([empty, *scales])
    return GaussianBlock(
        names=frozenset(names),
        columns=None if column.numel() == layout.size else column,
        loc=torch.cat([empty, *locs]),
        inv_scale=scale.reciprocal(),
        const=float(-scale.log().sum() - 0.5 * scale.numel() * math.log(2 * math.pi)),
    )


def build_scale_block(
    hierarchical: Sequence[tuple[Weight, Tensor, nn.Module]],
    layout: FlatLayout,
    dtype: torch.dtype,
    device: torch.device,
) -> ScaleBlock:
    """Collect every hierarchical parameter whose prior has a closed form
    (:meth:`~bayesdl.priors.Prior.inverse_gamma_scale`) with its one latent scale site
    stored on the log scale; the others stay with their distributions.

    Parameters
    ----------
    hierarchical
        ``(weight, parameter, owning module)`` for every hierarchical weight, in order.
    layout
        The layout of ``theta``.
    dtype, device
        Those of the network.
    """
    names: list[str] = []
    latent_columns: list[int] = []
    weight_columns, layer_of_weight = [], []
    slope, rate, half_inv_factor_sq = [], [], []
    const = 0.0
    for w, param, module in hierarchical:
        terms = w.prior.inverse_gamma_scale(w.name, param, module)
        if terms is None:
            continue
        latents = w.prior.latent_sites(w.name, param, module)
        if set(latents) != {terms.site}:
            continue
        d = latents[terms.site]
        if tuple(d.event_shape) != () or not is_exp(biject_to(d.support)):
            continue
        a, b, c, n = terms.concentration, terms.rate, terms.factor, param.numel()
        span = layout.slices[w.name]
        layer = len(latent_columns)
        names += [w.name, terms.site]
        latent_columns.append(layout.slices[terms.site].start)
        weight_columns.append(torch.arange(span.start, span.stop, device=param.device))
        layer_of_weight.append(torch.full((n,), layer, dtype=torch.long, device=param.device))
        slope.append(2 * a + 1 + n)
        rate.append(b)
        half_inv_factor_sq.append(0.5 / c**2)
        const += (
            a * math.log(b)
            - math.lgamma(a)
            + math.log(2)
            - n * math.log(c)
            - 0.5 * n * math.log(2 * math.pi)
        )
    options = {"dtype": dtype, "device": device}
    empty = torch.zeros(0, dtype=torch.long, device=device)
    return ScaleBlock(
        names=frozenset(names),
        latent_columns=torch.tensor(latent_columns, dtype=torch.long, device=device),
        weight_columns=torch.cat([empty, *weight_columns]),
        layer_of_weight=torch.cat([empty, *layer_of_weight]),
        slope=torch.tensor(slope, **options),
        rate=torch.tensor(rate, **options),
        half_inv_factor_sq=torch.tensor(half_inv_factor_sq, **options),
        const=const,
    )


def build_jacobian_plan(layout: FlatLayout, device: torch.device) -> JacobianPlan:
    """Columns of the log-scale sites (:func:`is_exp`: the log-det Jacobian is ``u``
    itself) and the other constrained sites with their transforms."""
    columns, others = [], []
    for site in layout.sites:
        if site.is_real:
            continue
        span = layout.slices[site.name]
        transform = biject_to(site.support)
        if is_exp(transform):
            columns.append(torch.arange(span.start, span.stop, device=device))
        else:
            others.append((span, site.shape, transform))
    empty = torch.zeros(0, dtype=torch.long, device=device)
    return JacobianPlan(torch.cat([empty, *columns]), tuple(others))
