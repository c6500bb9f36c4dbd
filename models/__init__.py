"""Bayesian neural network declarations (:class:`BNN`) and a zoo of plain architectures."""

from .bnn import BNN
from .zoo import MLP, ConvNet, ResNet

__all__ = ["BNN", "MLP", "ConvNet", "ResNet"]
