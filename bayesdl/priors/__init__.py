"""Weight priors for Bayesian neural networks.

A prior is chosen per parameter tensor by one rule: pass a single :class:`Prior` (every
parameter), a dict ``{name pattern: prior}``, or a :class:`Select` with a default and a bias
prior. ``None`` keeps a parameter fixed (not a sample site).

:func:`fit_gp_prior` fits a prior to a Gaussian process (Tran et al. 2022); the result,
:class:`GPMatched`, is an ordinary prior.
"""

from . import measurement
from .base import Prior, PriorRule, Select, fan_in_of, select
from .correlated import CorrelatedConv
from .distributions import ScaleMixtureNormal
from .functional import NonFinitePriorError, fit_gp_prior
from .gp_matched import GPMatched
from .hierarchical import Horseshoe, InverseGammaScale
from .weight import Cauchy, Gaussian, Laplace, ScaleMixture, StudentT

__all__ = [
    "Cauchy",
    "CorrelatedConv",
    "GPMatched",
    "Gaussian",
    "Horseshoe",
    "InverseGammaScale",
    "Laplace",
    "NonFinitePriorError",
    "Prior",
    "PriorRule",
    "ScaleMixture",
    "ScaleMixtureNormal",
    "Select",
    "StudentT",
    "fan_in_of",
    "fit_gp_prior",
    "measurement",
    "select",
]
