"""Pyro distributions that Pyro does not ship and the weight priors need."""

from __future__ import annotations

import torch
from pyro.distributions import TorchDistribution
from torch import Tensor
from torch.distributions import constraints
from torch.distributions.utils import broadcast_all

__all__ = ["ScaleMixtureNormal"]


class ScaleMixtureNormal(TorchDistribution):
    r"""A zero-mean Gaussian scale mixture, :math:`p(w) = \sum_k \pi_k \mathcal N(w; 0, s_k^2)`.

    The components share their location; only the scales differ. This gives priors with a
    sharp peak at zero and heavy shoulders (Blundell et al. 2015; Fortuin et al. 2022 use five
    components ``s/9, s/3, s, 3s, 9s``).

    Parameters
    ----------
    scales
        Component standard deviations, shape ``(*batch, K)``, all > 0.
    weights
        Mixture weights, shape ``(*batch, K)``, non-negative and summing to one.
    """

    arg_constraints = {  # noqa: RUF012 - torch.distributions convention
        "scales": constraints.positive,
        "weights": constraints.simplex,
    }
    support = constraints.real
    has_rsample = False

    def __init__(self, scales: Tensor, weights: Tensor, validate_args: bool | None = None) -> None:
        scales, weights = broadcast_all(scales, weights)
        if scales.dim() < 1:
            raise ValueError("scales: expected at least one mixture component")
        self.scales = scales
        self.weights = weights
        super().__init__(batch_shape=scales.shape[:-1], validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(ScaleMixtureNormal, _instance)
        batch_shape = torch.Size(batch_shape)
        k = self.scales.shape[-1:]
        new.scales = self.scales.expand(batch_shape + k)
        new.weights = self.weights.expand(batch_shape + k)
        super(ScaleMixtureNormal, new).__init__(batch_shape=batch_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    @property
    def mean(self) -> Tensor:
        return self.scales.new_zeros(self.batch_shape)

    @property
    def variance(self) -> Tensor:
        return (self.weights * self.scales**2).sum(-1)

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        v = value.unsqueeze(-1)
        log_comp = (
            -0.5 * (v / self.scales) ** 2
            - self.scales.log()
            - 0.5 * torch.log(2 * v.new_tensor(torch.pi))
        )
        return torch.logsumexp(self.weights.log() + log_comp, dim=-1)

    def sample(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> Tensor:
        shape = self._extended_shape(torch.Size(sample_shape))
        with torch.no_grad():
            probs = self.weights.expand(shape + self.weights.shape[-1:])
            k = torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1).reshape(shape)
            scale = torch.gather(
                self.scales.expand(shape + self.scales.shape[-1:]), -1, k[..., None]
            )
            return (
                torch.randn(shape, dtype=self.scales.dtype, device=self.scales.device)
                * scale[..., 0]
            )
