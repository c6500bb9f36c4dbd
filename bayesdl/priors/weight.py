"""Independent (factorised) weight priors: Gaussian, Laplace, Student-t, Cauchy, scale mixtures.

Every prior here has location 0 and scale ``s``, or ``s / sqrt(fan_in)`` with ``fan_in=True``
(Neal/He scaling, which keeps the variance of a layer's pre-activations independent of its
width; Fortuin et al. 2022 use ``s = sqrt(2)``). See :func:`bayesdl.priors.base.fan_in_of`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import pyro.distributions as dist
import torch
from torch import Tensor, nn

from .._checks import check_positive
from .base import Prior, fan_in_of
from .distributions import ScaleMixtureNormal

__all__ = ["Cauchy", "Gaussian", "Laplace", "ScaleMixture", "StudentT"]


class _LocScalePrior(Prior):
    """A zero-location prior with one scale, optionally divided by ``sqrt(fan_in)``."""

    def __init__(self, scale: float = 1.0, fan_in: bool = False) -> None:
        self.scale = check_positive("scale", scale)
        if not isinstance(fan_in, bool):
            raise TypeError(f"fan_in: expected a bool, got {type(fan_in).__name__}")
        self.fan_in = fan_in

    def effective_scale(self, param: Tensor) -> float:
        """The scale used for ``param``: ``scale``, or ``scale / sqrt(fan_in)``."""
        return self.scale / math.sqrt(fan_in_of(param)) if self.fan_in else self.scale

    def distribution(
        self, name: str, param: Tensor, module: nn.Module, latents: Mapping[str, Tensor]
    ) -> dist.Distribution:
        scale = param.new_tensor(self.effective_scale(param))
        return self._family(torch.zeros_like(scale), scale)

    def _family(self, loc: Tensor, scale: Tensor) -> dist.Distribution:
        raise NotImplementedError


class Gaussian(_LocScalePrior):
    r"""Isotropic Gaussian prior, :math:`w \sim \mathcal N(0, s^2)`.

    Parameters
    ----------
    scale
        Standard deviation ``s`` > 0.
    fan_in
        Divide the scale by ``sqrt(fan_in)`` of each weight tensor.
    """

    def _family(self, loc: Tensor, scale: Tensor) -> dist.Distribution:
        return dist.Normal(loc, scale)


class Laplace(_LocScalePrior):
    r"""Laplace prior, :math:`p(w) = \exp(-|w|/s) / (2s)`: heavier tails than a Gaussian."""

    def _family(self, loc: Tensor, scale: Tensor) -> dist.Distribution:
        return dist.Laplace(loc, scale)


class Cauchy(_LocScalePrior):
    r"""Cauchy prior, :math:`p(w) = 1 / (\pi s (1 + (w/s)^2))`: Student-t with one degree of
    freedom."""

    def _family(self, loc: Tensor, scale: Tensor) -> dist.Distribution:
        return dist.Cauchy(loc, scale)


class StudentT(_LocScalePrior):
    r"""Student-t prior with ``df`` degrees of freedom and scale ``s``.

    Fortuin et al. (2022) find heavy-tailed priors such as this one (``df=3``) improve
    fully-connected networks and reduce the cold-posterior effect.

    Parameters
    ----------
    df
        Degrees of freedom > 0.
    scale
        Scale ``s`` > 0.
    fan_in
        Divide the scale by ``sqrt(fan_in)``.
    """

    def __init__(self, df: float = 3.0, scale: float = 1.0, fan_in: bool = False) -> None:
        super().__init__(scale, fan_in)
        self.df = check_positive("df", df)

    def _family(self, loc: Tensor, scale: Tensor) -> dist.Distribution:
        return dist.StudentT(loc.new_tensor(self.df), loc, scale)


class ScaleMixture(Prior):
    r"""Gaussian scale-mixture prior, :math:`p(w) = \sum_k \pi_k \mathcal N(w; 0, s_k^2)`.

    Parameters
    ----------
    scales
        Component standard deviations (default: Fortuin et al.'s ``1/9, 1/3, 1, 3, 9``).
    weights
        Mixture weights (default: uniform); normalised to sum to one.
    fan_in
        Divide every component scale by ``sqrt(fan_in)``.
    """

    def __init__(
        self,
        scales: Sequence[float] = (1 / 9, 1 / 3, 1.0, 3.0, 9.0),
        weights: Sequence[float] | None = None,
        fan_in: bool = False,
    ) -> None:
        scales = tuple(scales)
        if not scales:
            raise ValueError("scales: expected at least one component scale")
        self.scales = tuple(check_positive(f"scales[{i}]", s) for i, s in enumerate(scales))
        if weights is None:
            weights = [1.0] * len(scales)
        weights = tuple(weights)
        if len(weights) != len(scales):
            raise ValueError(f"weights: expected {len(scales)} weights, got {len(weights)}")
        weights = tuple(check_positive(f"weights[{i}]", w) for i, w in enumerate(weights))
        total = sum(weights)
        self.weights = tuple(w / total for w in weights)
        if not isinstance(fan_in, bool):
            raise TypeError(f"fan_in: expected a bool, got {type(fan_in).__name__}")
        self.fan_in = fan_in

    def distribution(
        self, name: str, param: Tensor, module: nn.Module, latents: Mapping[str, Tensor]
    ) -> dist.Distribution:
        factor = 1 / math.sqrt(fan_in_of(param)) if self.fan_in else 1.0
        scales = param.new_tensor(self.scales) * factor
        return ScaleMixtureNormal(scales, param.new_tensor(self.weights))
