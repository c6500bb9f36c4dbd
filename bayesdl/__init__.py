"""bayesdl: Bayesian deep learning on Pyro.

Take a ``torch.nn.Module``, attach a prior (:mod:`bayesdl.priors`) and a likelihood
(:mod:`bayesdl.likelihoods`) to get a :class:`bayesdl.models.BNN`, fit it with a backend from
:mod:`bayesdl.inference`, and work with the resulting :class:`Posterior`.
"""

from . import data, diagnostics, likelihoods, priors
from .posterior import Posterior, Predictive

__version__ = "0.1.0.dev0"

__all__ = ["Posterior", "Predictive", "__version__", "data", "diagnostics", "likelihoods", "priors"]
