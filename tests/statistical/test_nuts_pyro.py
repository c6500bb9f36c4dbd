"""NUTS through Pyro recovers the closed-form posterior of Bayesian linear regression."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bayesdl.inference import NUTS

from .blr import check_gaussian_draws, linear_regression


@pytest.mark.parametrize("mass", ["diag", "dense"])
def test_nuts_pyro_recovers_linear_regression_posterior(mass, seed):
    problem = linear_regression(seed=seed)
    post = NUTS(chains=4, warmup=200, draws=300, mass=mass, engine="pyro").fit(
        problem.bnn, problem.x, problem.y, seed=seed, progress=False
    )
    result = check_gaussian_draws(post.theta, problem.mean, problem.precision)
    assert result["n_eff"] > 300  # NUTS on a Gaussian: draws are nearly independent
    assert not post.sample_stats["diverging"].any()


def test_check_gaussian_draws_detects_a_wrong_posterior(seed):
    """The checker must fail on draws from a shifted or a too-wide Gaussian."""
    problem = linear_regression(seed=seed)
    gen = torch.Generator().manual_seed(seed)
    cov = torch.linalg.inv(problem.precision)
    chol = torch.linalg.cholesky(cov)
    exact = problem.mean + torch.randn(4, 500, 4, generator=gen, dtype=torch.float64) @ chol.T
    check_gaussian_draws(exact, problem.mean, problem.precision)
    shifted = exact + 0.3 * cov.diag().sqrt()
    with pytest.raises(AssertionError, match="posterior mean"):
        check_gaussian_draws(shifted, problem.mean, problem.precision)
    wide = problem.mean + 1.3 * (exact - problem.mean)
    with pytest.raises(AssertionError, match="cov @ precision"):
        check_gaussian_draws(wide, problem.mean, problem.precision)
    assert np.isfinite(float(cov.det()))
