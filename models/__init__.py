"""Bayesian neural network declarations (:class:`BNN`) and a zoo of plain architectures.

:mod:`~bayesdl.models.bnn` holds the declaration and its two views (the Pyro model and the
functional log joint); :mod:`~bayesdl.models.selection` decides which parameters become sites,
:mod:`~bayesdl.models.sites` lays them out in ``theta`` with their priors and
:mod:`~bayesdl.models.fused_prior` scores many of them at once; :mod:`~bayesdl.models.zoo`
holds the architectures.
"""

from .bnn import BNN
from .zoo import MLP, ConvNet, ResNet

__all__ = ["BNN", "MLP", "ConvNet", "ResNet"]
