"""Spatially correlated Gaussian prior over convolution filters (Fortuin et al. 2022)."""

from __future__ import annotations

import math
from collections.abc import Mapping

import pyro.distributions as dist
import torch
from torch import Tensor, nn
from torch.distributions.transforms import ReshapeTransform

from .._checks import check_positive
from .base import Prior, fan_in_of

__all__ = ["CorrelatedConv", "matern"]

_NUS = (0.5, 1.5, 2.5)


def matern(r: Tensor, nu: float) -> Tensor:
    r"""Matérn correlation at scaled distance ``r = d / lengthscale`` for ``nu`` in {1/2, 3/2, 5/2}.

    .. math::
        k_{1/2}(r) = e^{-r}, \quad
        k_{3/2}(r) = (1 + \sqrt3 r) e^{-\sqrt3 r}, \quad
        k_{5/2}(r) = (1 + \sqrt5 r + \tfrac53 r^2) e^{-\sqrt5 r}.
    """
    if nu == 0.5:
        return torch.exp(-r)
    if nu == 1.5:
        a = math.sqrt(3) * r
        return (1 + a) * torch.exp(-a)
    if nu == 2.5:
        a = math.sqrt(5) * r
        return (1 + a + a**2 / 3) * torch.exp(-a)
    raise ValueError(f"nu: must be one of {_NUS}, got {nu}")


class CorrelatedConv(Prior):
    r"""Multivariate normal prior over the pixels of each convolution filter.

    Each ``kh x kw`` filter slice ``w[o, i]`` of a ``Conv2d`` weight ``(out, in, kh, kw)`` is
    independently

    .. math::
        \mathrm{vec}(w_{oi}) \sim \mathcal N(0, \Sigma), \qquad
        \Sigma_{pq} = c^2 s^2 \, k_\nu(\lVert p - q \rVert / \ell) + \epsilon\,\delta_{pq},

    where ``p, q`` are pixel positions, ``k_nu`` the Matérn correlation, ``c`` the optional
    fan-in factor and ``epsilon`` a small jitter (the exponential kernel is ill-conditioned for
    long length-scales). Fortuin et al. (2022) use ``nu = 1/2`` (their kernel is called squared
    exponential but uses the unsquared distance) with ``lengthscale`` in {0.5, 1}; correlated
    filters help CNNs on MNIST and Fashion-MNIST.

    Parameters
    ----------
    lengthscale
        Length-scale ``ell`` > 0 in pixels.
    nu
        Matérn smoothness, one of 0.5, 1.5, 2.5.
    scale
        Marginal standard deviation ``s`` > 0 of each pixel.
    fan_in
        Multiply the scale by ``c = 1/sqrt(in * kh * kw)``.
    jitter
        Relative diagonal jitter ``epsilon / (c s)^2``.
    """

    def __init__(
        self,
        lengthscale: float = 1.0,
        nu: float = 0.5,
        scale: float = 1.0,
        fan_in: bool = False,
        jitter: float = 1e-6,
    ) -> None:
        self.lengthscale = check_positive("lengthscale", lengthscale)
        if nu not in _NUS:
            raise ValueError(f"nu: must be one of {_NUS}, got {nu!r}")
        self.nu = float(nu)
        self.scale = check_positive("scale", scale)
        if not isinstance(fan_in, bool):
            raise TypeError(f"fan_in: expected a bool, got {type(fan_in).__name__}")
        self.fan_in = fan_in
        self.jitter = check_positive("jitter", jitter)

    def covariance(self, kernel_size: tuple[int, int], param: Tensor | None = None) -> Tensor:
        """The ``(kh*kw, kh*kw)`` covariance of one filter (row-major pixel order)."""
        kh, kw = kernel_size
        like = param if param is not None else torch.empty(())
        rows, cols = torch.meshgrid(
            torch.arange(kh, dtype=like.dtype, device=like.device),
            torch.arange(kw, dtype=like.dtype, device=like.device),
            indexing="ij",
        )
        pos = torch.stack([rows.reshape(-1), cols.reshape(-1)], dim=-1)
        dist_ = torch.cdist(pos, pos)
        var = self.scale**2
        if self.fan_in and param is not None:
            var = var / fan_in_of(param)
        corr = matern(dist_ / self.lengthscale, self.nu)
        return var * (
            corr + self.jitter * torch.eye(len(pos), dtype=like.dtype, device=like.device)
        )

    def distribution(
        self, name: str, param: Tensor, module: nn.Module, latents: Mapping[str, Tensor]
    ) -> dist.Distribution:
        if param.dim() != 4:
            raise ValueError(
                f"CorrelatedConv: parameter {name!r} has shape {tuple(param.shape)}; it applies "
                "to Conv2d weights of shape (out, in, kh, kw) only (select it with a pattern "
                "such as 'conv*.weight')"
            )
        kh, kw = param.shape[-2:]
        scale_tril = torch.linalg.cholesky(self.covariance((kh, kw), param))
        filters = dist.MultivariateNormal(param.new_zeros(kh * kw), scale_tril=scale_tril)
        return dist.TransformedDistribution(filters, ReshapeTransform((kh * kw,), (kh, kw)))
