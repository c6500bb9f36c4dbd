r"""The kinetic energy of Hamiltonian Monte Carlo, one mass matrix per chain.

With inverse mass matrix :math:`M^{-1}` (diagonal ``(C, D)`` or dense ``(C, D, D)``, one per
chain), momenta are drawn as :math:`p \sim \mathcal N(0, M)` and

.. math::
    K(p) = \tfrac12 p^\top M^{-1} p, \qquad \dot\theta = \partial K / \partial p = M^{-1} p.

A good :math:`M^{-1}` approximates the posterior covariance; the warmup estimates it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..state import state_record

__all__ = ["Metric"]


@state_record
@dataclass(frozen=True)
class Metric:
    """Per-chain Euclidean metric: a state record (the warmup adapts it).

    Parameters
    ----------
    inverse_mass
        ``(C, D)`` diagonal or ``(C, D, D)`` dense inverse mass matrices.
    _cholesky
        Dense only: the lower Cholesky factor of ``inverse_mass``, computed when not given
        (a checkpoint stores it, so a resumed run uses the same factor, bit for bit).
    """

    inverse_mass: Tensor
    _cholesky: Tensor | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.dense and self._cholesky is None:
            object.__setattr__(self, "_cholesky", torch.linalg.cholesky(self.inverse_mass))

    @classmethod
    def identity(cls, chains: int, dim: int, dense: bool, like: Tensor) -> Metric:
        ones = torch.ones(chains, dim, dtype=like.dtype, device=like.device)
        return cls(torch.diag_embed(ones) if dense else ones)

    @property
    def dense(self) -> bool:
        return self.inverse_mass.dim() == 3

    def sample_momentum(self, z: Tensor) -> Tensor:
        r"""Momenta :math:`p \sim \mathcal N(0, M)` from standard normal ``z`` ``(C, D)``.

        Dense: with :math:`M^{-1} = L L^\top`, :math:`p = L^{-\top} z` has covariance
        :math:`L^{-\top} L^{-1} = M`.
        """
        if not self.dense:
            return z / self.inverse_mass.sqrt()
        return torch.linalg.solve_triangular(
            self._cholesky.transpose(-1, -2), z.unsqueeze(-1), upper=True
        ).squeeze(-1)

    def velocity(self, p: Tensor) -> Tensor:
        """:math:`M^{-1} p` for every chain."""
        if not self.dense:
            return self.inverse_mass * p
        return (self.inverse_mass @ p.unsqueeze(-1)).squeeze(-1)

    def kinetic_energy(self, p: Tensor) -> Tensor:
        """:math:`\\tfrac12 p^\\top M^{-1} p`, shape ``(C,)``."""
        return 0.5 * (p * self.velocity(p)).sum(-1)
