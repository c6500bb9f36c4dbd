"""Gaussian targets with known moments, and MCSE z-scores for draws from them."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from bayesdl.arviz_bridge import import_arviz


@dataclass
class Gaussian:
    """``N(mean, cov)`` with ``log_density(theta (P, D)) -> (P,)``."""

    mean: Tensor
    cov: Tensor

    def __post_init__(self) -> None:
        self.precision = torch.linalg.inv(self.cov)

    def log_density(self, theta: Tensor) -> Tensor:
        d = theta - self.mean
        return -0.5 * ((d @ self.precision) * d).sum(-1)

    @property
    def dim(self) -> int:
        return self.mean.shape[0]


def correlated_2d(rho: float = 0.9) -> Gaussian:
    cov = torch.tensor([[1.0, rho * 2.0], [rho * 2.0, 4.0]], dtype=torch.float64)
    return Gaussian(torch.tensor([1.0, -2.0], dtype=torch.float64), cov)


def ill_conditioned(dim: int = 20, condition: float = 100.0, seed: int = 0) -> Gaussian:
    """A random rotation of standard deviations spread log-uniformly over ``sqrt(condition)``."""
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=gen, dtype=torch.float64))
    eig = torch.logspace(0, math.log10(condition), dim, dtype=torch.float64)
    cov = q @ torch.diag(eig) @ q.T
    return Gaussian(torch.randn(dim, generator=gen, dtype=torch.float64), cov)


def moment_z_scores(draws: Tensor, target: Gaussian) -> dict[str, float]:
    """Largest |estimate - truth| / MCSE over coordinates, for means, variances and correlations.

    With the true moments known, each statistic is a plain mean of a function of the draws:
    ``x_i`` (mean), ``(x_i - mu_i)^2`` (variance) and ``z_i z_j`` with ``z = (x - mu) / sd``
    (correlation ``rho_ij``), whose MCSE ArviZ estimates from the chains (``az.mcse``).
    """
    az = import_arviz()
    x = draws.detach().double().numpy()
    mu = target.mean.numpy()
    cov = target.cov.numpy()
    sd = np.sqrt(np.diag(cov))
    z = (x - mu) / sd
    dim = x.shape[-1]
    scores = {"mean": 0.0, "variance": 0.0, "correlation": 0.0}
    for i in range(dim):
        scores["mean"] = max(scores["mean"], _z(az, x[..., i], mu[i]))
        scores["variance"] = max(scores["variance"], _z(az, (x[..., i] - mu[i]) ** 2, cov[i, i]))
    pairs = [(i, j) for i in range(dim) for j in range(i + 1, dim)][:50]
    for i, j in pairs:
        scores["correlation"] = max(
            scores["correlation"], _z(az, z[..., i] * z[..., j], cov[i, j] / (sd[i] * sd[j]))
        )
    return scores


def _z(az, values: np.ndarray, truth: float) -> float:
    return abs(float(values.mean()) - truth) / float(az.mcse(values, method="mean"))
