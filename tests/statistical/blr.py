"""Bayesian linear regression as a BNN: the closed-form posterior every backend must recover.

With ``y = X w + b + eps``, ``eps ~ N(0, sigma^2)`` and independent ``N(0, s^2)`` priors on
``w`` and ``b``, write ``Z = [X, 1]``. The posterior of ``theta = (w, b)`` is Gaussian with

    precision  Lambda = I / s^2 + Z^T Z / sigma^2,     mean  mu = Lambda^{-1} Z^T y / sigma^2.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from bayesdl import likelihoods, priors
from bayesdl.arviz_bridge import import_arviz
from bayesdl.models import BNN


@dataclass
class LinearRegression:
    bnn: BNN
    x: torch.Tensor
    y: torch.Tensor
    mean: torch.Tensor
    precision: torch.Tensor


def linear_regression(
    n: int = 40,
    d: int = 3,
    prior_scale: float = 1.0,
    noise: float = 0.5,
    seed: int = 0,
    dtype=torch.float64,
) -> LinearRegression:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=gen, dtype=dtype)
    w = torch.randn(d, generator=gen, dtype=dtype)
    y = x @ w + 0.5 + noise * torch.randn(n, generator=gen, dtype=dtype)
    torch.manual_seed(seed)
    net = torch.nn.Linear(d, 1).to(dtype)
    bnn = BNN(net, priors.Gaussian(prior_scale), likelihoods.Gaussian(noise))
    z = torch.cat([x, torch.ones(n, 1, dtype=dtype)], dim=1)  # theta = (weight[0, :], bias)
    precision = torch.eye(d + 1, dtype=dtype) / prior_scale**2 + z.T @ z / noise**2
    mean = torch.linalg.solve(precision, z.T @ y / noise**2)
    return LinearRegression(bnn, x, y, mean, precision)


def check_gaussian_draws(
    draws: torch.Tensor, mean: torch.Tensor, precision: torch.Tensor, z_max: float = 4.0
) -> dict[str, float]:
    """MCSE checks of draws ``(chains, draws, D)`` against a Gaussian ``N(mean, precision^-1)``.

    * each coordinate's mean within ``z_max`` Monte Carlo standard errors (ArviZ's ``mcse``);
    * the scale-free check ``cov @ precision ~ I``, done on whitened draws ``u = L^T (theta - mu)``
      (``precision = L L^T``): their sample covariance ``W`` is similar to ``cov @ precision``
      and its entries have standard error ``sqrt((1 + delta_ij) / n_eff)``, with ``n_eff`` the
      smallest ESS of the whitened coordinates and their squares.
    """
    az = import_arviz()
    draws = draws.detach().to(torch.float64)
    chol = torch.linalg.cholesky(precision)
    numpy_draws = draws.cpu().numpy()
    mcse = np.array(
        [float(az.mcse(numpy_draws[..., i], method="mean")) for i in range(draws.shape[-1])]
    )
    estimate = draws.mean(dim=(0, 1)).numpy()
    z_mean = np.abs(estimate - mean.numpy()) / mcse
    u = ((draws - mean) @ chol).numpy()
    ess = [float(az.ess(u[..., i])) for i in range(u.shape[-1])]
    ess += [float(az.ess(u[..., i] ** 2)) for i in range(u.shape[-1])]
    n_eff = min(ess)
    flat = u.reshape(-1, u.shape[-1])
    w = np.cov(flat.T)
    se = np.sqrt((1 + np.eye(len(w))) / n_eff)
    z_cov = np.abs(w - np.eye(len(w))) / se
    assert z_mean.max() < z_max, f"posterior mean off by {z_mean.max():.2f} MCSE: {z_mean}"
    assert z_cov.max() < z_max, (
        f"cov @ precision off by {z_cov.max():.2f} SE (n_eff={n_eff:.0f}):\n{w}"
    )
    return {"z_mean": float(z_mean.max()), "z_cov": float(z_cov.max()), "n_eff": n_eff}
