"""Hierarchical weight priors: the scale of a parameter tensor is itself a latent site.

The latent scales are ordinary Pyro sample sites with a positive support; samplers see them
in the unconstrained (log) space, and ``BNN.log_joint`` adds the log-det Jacobian of that
transform, exactly as Pyro's HMC does.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import pyro.distributions as dist
from pyro.distributions.transforms import PowerTransform
from torch import Tensor, nn

from .._checks import check_positive
from .base import InverseGammaScaleTerms, Prior, expand_right, fan_in_of

__all__ = ["Horseshoe", "InverseGammaScale"]


class InverseGammaScale(Prior):
    r"""Gaussian prior whose variance has an inverse-Gamma hyperprior, one per parameter tensor.

    .. math::
        \sigma^2 \sim \mathrm{InvGamma}(a, b), \qquad
        w_i \mid \sigma \sim \mathcal N(0, c^2 \sigma^2),

    with ``c = 1/sqrt(fan_in)`` if ``fan_in`` else 1. Integrating ``sigma`` out, each weight
    is marginally Student-t with ``2a`` degrees of freedom and scale ``c sqrt(b/a)``; unlike an
    independent Student-t prior, the weights of one tensor share their scale, so the prior
    learns a per-layer scale from the data. Applied to a network's weights, this adds one latent
    site ``"<param>_scale"`` (the standard deviation ``sigma``) per layer.

    Parameters
    ----------
    concentration
        Shape ``a`` > 0 of the inverse-Gamma hyperprior.
    rate
        Rate ``b`` > 0 of the inverse-Gamma hyperprior.
    fan_in
        Multiply the scale by ``1/sqrt(fan_in)``.
    """

    def __init__(self, concentration: float = 1.0, rate: float = 1.0, fan_in: bool = False) -> None:
        self.concentration = check_positive("concentration", concentration)
        self.rate = check_positive("rate", rate)
        if not isinstance(fan_in, bool):
            raise TypeError(f"fan_in: expected a bool, got {type(fan_in).__name__}")
        self.fan_in = fan_in

    def latent_sites(
        self, name: str, param: Tensor, module: nn.Module
    ) -> dict[str, dist.Distribution]:
        variance = dist.InverseGamma(
            param.new_tensor(self.concentration), param.new_tensor(self.rate)
        )
        return {
            f"{name}_scale": dist.TransformedDistribution(
                variance, PowerTransform(param.new_tensor(0.5))
            )
        }

    def distribution(
        self, name: str, param: Tensor, module: nn.Module, latents: Mapping[str, Tensor]
    ) -> dist.Distribution:
        factor = 1 / math.sqrt(fan_in_of(param)) if self.fan_in else 1.0
        scale = expand_right(latents[f"{name}_scale"], param.dim()) * factor
        return dist.Normal(scale.new_zeros(()), scale)

    def inverse_gamma_scale(
        self, name: str, param: Tensor, module: nn.Module
    ) -> InverseGammaScaleTerms | None:
        """This prior's closed form (``None`` for a subclass that redefines the density)."""
        cls = type(self)
        if (
            cls.latent_sites is not InverseGammaScale.latent_sites
            or cls.distribution is not InverseGammaScale.distribution
        ):
            return None
        return InverseGammaScaleTerms(
            site=f"{name}_scale",
            concentration=self.concentration,
            rate=self.rate,
            factor=1 / math.sqrt(fan_in_of(param)) if self.fan_in else 1.0,
        )


class Horseshoe(Prior):
    r"""Node-wise horseshoe prior (Carvalho et al. 2010; Ghosh, Yao & Doshi-Velez 2019).

    .. math::
        \tau \sim \mathrm{HalfCauchy}(\tau_0), \qquad
        \lambda_k \sim \mathrm{HalfCauchy}(1), \qquad
        w_{k\cdot} \mid \tau, \lambda_k \sim \mathcal N(0, c^2 \tau^2 \lambda_k^2),

    with one global scale ``tau`` per parameter tensor and one local scale ``lambda_k`` per
    output unit ``k`` (the first dimension of the tensor: rows of a ``Linear`` weight, output
    channels of a ``Conv2d`` weight). Whole units shrink towards zero together, which prunes
    neurons. Adds the latent sites ``"<param>_global_scale"`` (shape ``()``) and
    ``"<param>_local_scale"`` (shape ``(out,)``).

    The horseshoe's funnel geometry is hard for HMC; expect divergences unless the step size is
    small.

    Parameters
    ----------
    global_scale
        Scale ``tau_0`` > 0 of the global half-Cauchy.
    fan_in
        Multiply the scale by ``c = 1/sqrt(fan_in)``.
    """

    def __init__(self, global_scale: float = 1.0, fan_in: bool = False) -> None:
        self.global_scale = check_positive("global_scale", global_scale)
        if not isinstance(fan_in, bool):
            raise TypeError(f"fan_in: expected a bool, got {type(fan_in).__name__}")
        self.fan_in = fan_in

    def latent_sites(
        self, name: str, param: Tensor, module: nn.Module
    ) -> dict[str, dist.Distribution]:
        if param.dim() == 0:
            raise ValueError(
                f"Horseshoe: parameter {name!r} is a scalar; it needs an output dimension"
            )
        units = param.shape[0]
        return {
            f"{name}_global_scale": dist.HalfCauchy(param.new_tensor(self.global_scale)),
            f"{name}_local_scale": dist.HalfCauchy(param.new_ones(units)).to_event(1),
        }

    def distribution(
        self, name: str, param: Tensor, module: nn.Module, latents: Mapping[str, Tensor]
    ) -> dist.Distribution:
        factor = 1 / math.sqrt(fan_in_of(param)) if self.fan_in else 1.0
        tau = expand_right(latents[f"{name}_global_scale"], param.dim())
        lam = expand_right(latents[f"{name}_local_scale"], param.dim() - 1)
        scale = tau * lam * factor
        return dist.Normal(scale.new_zeros(()), scale)
