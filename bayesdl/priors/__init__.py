"""Weight priors for Bayesian neural networks.

A prior is chosen per parameter tensor by one rule: pass a single :class:`Prior` (every
parameter), a dict ``{name pattern: prior}``, or a :class:`Select` with a default and a bias
prior. ``None`` keeps a parameter fixed (not a sample site).
"""

from .base import Prior, PriorRule, Select, fan_in_of, select
from .correlated import CorrelatedConv
from .distributions import ScaleMixtureNormal
from .hierarchical import Horseshoe, InverseGammaScale
from .weight import Cauchy, Gaussian, Laplace, ScaleMixture, StudentT

__all__ = [
    "Cauchy",
    "CorrelatedConv",
    "Gaussian",
    "Horseshoe",
    "InverseGammaScale",
    "Laplace",
    "Prior",
    "PriorRule",
    "ScaleMixture",
    "ScaleMixtureNormal",
    "Select",
    "StudentT",
    "fan_in_of",
    "select",
]
