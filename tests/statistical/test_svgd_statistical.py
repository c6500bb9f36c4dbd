"""SVGD recovers known posteriors: a correlated 2-D Gaussian and Bayesian linear regression.

Acceptance criteria (issue 4): with 200 particles, weight-space SVGD's particle mean lies within
0.05 posterior standard deviations of the exact mean and its covariance within 10% relative
Frobenius error; function-space SVGD's predictive mean and variance at test inputs lie within 15%
of the exact posterior predictive (the mean error measured in predictive standard deviations).
SVGD particles are a deterministic function of their initial values, not Monte Carlo draws, so
these are the issue's fixed tolerances rather than MCSE z-scores; the stochastic (Langevin)
variant, which does sample, is checked with batch-means standard errors.

Settings: the kernels use the bandwidth ``h = 2 med`` (``bandwidth="median"``, sigma = the
median distance), which is accurate on such low-dimensional unimodal targets; the default,
Liu & Wang's ``med / log(P + 1)``, suits neural networks but under-disperses here, which
``test_liu_wang_bandwidth_under_disperses`` measures (see ``median_bandwidth``). Plain SGD with
lr 0.01 converges on the BLR posterior in a few hundred steps (Adam's constant per-coordinate
step keeps jittering around the fixed point of the 0.08-wide posterior), so those runs use SGD
and 1000 steps.
"""

from __future__ import annotations

import math

import pytest
import torch

from bayesdl.inference.particles.stein_kernels import RBF, Hybrid
from bayesdl.inference.particles.svgd import SVGD
from bayesdl.models import BNN

from .blr import linear_regression

DTYPE = torch.float64
MEDIAN = RBF(bandwidth="median")


class Correlated2D:
    """``N(mean, cov)`` with correlation 0.8 and standard deviations 1 and 2."""

    mean = torch.tensor([1.0, -2.0], dtype=DTYPE)
    cov = torch.tensor([[1.0, 1.6], [1.6, 4.0]], dtype=DTYPE)
    precision = torch.linalg.inv(cov)

    @classmethod
    def log_density(cls, theta: torch.Tensor) -> torch.Tensor:
        d = theta - cls.mean
        return -0.5 * ((d @ cls.precision) * d).sum(-1)


def moment_errors(
    theta: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor
) -> tuple[float, float]:
    """Largest mean error in posterior sds, and the covariance's relative Frobenius error."""
    particles = theta.reshape(-1, theta.shape[-1])
    mean_error = ((particles.mean(0) - mean).abs() / cov.diagonal().sqrt()).max()
    cov_error = (torch.cov(particles.T) - cov).norm() / cov.norm()
    return float(mean_error), float(cov_error)


def assert_recovers(theta, mean, cov):
    mean_error, cov_error = moment_errors(theta, mean, cov)
    assert mean_error < 0.05, f"particle mean off by {mean_error:.3f} posterior sd"
    assert cov_error < 0.10, f"particle covariance off by {100 * cov_error:.1f}% (Frobenius)"


def test_moment_check_fails_on_wrong_particles(seed):
    """The criteria catch a shifted and an under-dispersed particle set."""
    gen = torch.Generator().manual_seed(seed)
    chol = torch.linalg.cholesky(Correlated2D.cov)
    exact = Correlated2D.mean + torch.randn(20000, 2, generator=gen, dtype=DTYPE) @ chol.T
    assert_recovers(exact, Correlated2D.mean, Correlated2D.cov)
    with pytest.raises(AssertionError, match="mean"):
        assert_recovers(exact + 0.1, Correlated2D.mean, Correlated2D.cov)
    with pytest.raises(AssertionError, match="covariance"):
        shrunk = Correlated2D.mean + 0.9 * (exact - Correlated2D.mean)
        assert_recovers(shrunk, Correlated2D.mean, Correlated2D.cov)


def test_weight_svgd_recovers_a_correlated_gaussian(seed):
    init = 3 * torch.randn(200, 2, generator=torch.Generator().manual_seed(seed), dtype=DTYPE)
    post = SVGD(particles=200, kernel=MEDIAN, steps=1000, lr=0.05).sample(
        Correlated2D.log_density, init, seed=seed, progress=False
    )
    assert post.theta.shape == (1, 200, 2) and post.bnn is None
    assert_recovers(post.theta, Correlated2D.mean, Correlated2D.cov)


def blr_svgd(problem, **settings):
    settings = {
        "particles": 200,
        "steps": 1000,
        "lr": 0.01,
        "optimizer": torch.optim.SGD,
    } | settings
    return SVGD(**settings).fit(problem.bnn, problem.x, problem.y, seed=0, progress=False)


def test_weight_svgd_recovers_bayesian_linear_regression(seed):
    problem = linear_regression(seed=seed)
    post = blr_svgd(problem, kernel=MEDIAN)
    assert_recovers(post.theta, problem.mean, torch.linalg.inv(problem.precision))


@pytest.mark.slow
def test_weight_svgd_recovers_a_cold_posterior(seed):
    """Temperature T = 0.5 (posterior tempering) halves the posterior covariance. The
    curvature doubles, so SGD's step is halved (lr 0.01 sits at the stability limit)."""
    problem = linear_regression(seed=seed)
    bnn = problem.bnn
    problem.bnn = BNN(bnn.net, bnn.prior, bnn.likelihood, temperature=0.5)
    post = blr_svgd(problem, kernel=MEDIAN, lr=0.005, steps=1500)
    assert_recovers(post.theta, problem.mean, 0.5 * torch.linalg.inv(problem.precision))


@pytest.mark.slow
def test_liu_wang_bandwidth_under_disperses(seed):
    """Why these tests pass bandwidth="median": with 200 particles the default (Liu & Wang's
    med / log(P + 1)) has its fixed point about 16% too narrow on this 4-D posterior (every
    eigenvalue of the whitened particle covariance is near 0.84)."""
    problem = linear_regression(seed=seed)
    post = blr_svgd(problem, kernel="weight", steps=1500)
    chol = torch.linalg.cholesky(problem.precision)
    whitened = chol.T @ torch.cov(post.theta[0].T) @ chol
    eigenvalues = torch.linalg.eigvalsh(whitened)
    assert eigenvalues.max() < 0.9, eigenvalues


def predictive_errors(post, problem, seed):
    """Errors of the particles' predictive mean (in predictive sds) and variance ratio."""
    gen = torch.Generator().manual_seed(seed + 1)
    x_test = 1.5 * torch.randn(20, problem.x.shape[1], generator=gen, dtype=DTYPE)
    z = torch.cat([x_test, torch.ones(20, 1, dtype=DTYPE)], dim=1)
    cov = torch.linalg.inv(problem.precision)
    exact_mean, exact_var = z @ problem.mean, ((z @ cov) * z).sum(1)
    f = post.predict(x_test).samples[0, :, :, 0]
    mean_error = ((f.mean(0) - exact_mean).abs() / exact_var.sqrt()).max()
    ratio = f.var(0) / exact_var
    return float(mean_error), ratio


@pytest.mark.slow
def test_function_svgd_recovers_the_predictive_of_linear_regression(seed):
    """For a linear model, f-SVGD pulled back through J = Z is weight-space SVGD with the
    metric Z^T Z, with the prior's score estimated by SSGE in function space."""
    problem = linear_regression(seed=seed)
    post = blr_svgd(problem, kernel=RBF("function", bandwidth="median"))
    mean_error, ratio = predictive_errors(post, problem, seed)
    assert mean_error < 0.15, f"predictive mean off by {mean_error:.3f} sd"
    assert (ratio - 1).abs().max() < 0.15, f"predictive variance ratios {ratio}"


@pytest.mark.slow
def test_hybrid_svgd_predictive_mean_and_measured_variance(seed, record_property):
    """h-SVGD is not a KL gradient flow: only its predictive mean is held to the 15% criterion.

    Its predictive variance is measured against the exact one: on this problem (seed 0) the
    ratio ranges over about 1.1-1.25 across the 20 test inputs (over-dispersed), recorded as
    the property ``hybrid_variance_ratio``.
    """
    problem = linear_regression(seed=seed)
    kernel = Hybrid(MEDIAN, RBF("function", bandwidth="median"))
    post = blr_svgd(problem, kernel=kernel)
    mean_error, ratio = predictive_errors(post, problem, seed)
    record_property("hybrid_variance_ratio", [round(float(r), 3) for r in ratio])
    print(f"hybrid predictive variance / exact: {ratio.min():.3f}..{ratio.max():.3f}")
    assert mean_error < 0.15, f"predictive mean off by {mean_error:.3f} sd"
    assert torch.isfinite(ratio).all() and (ratio > 0).all()


@pytest.mark.slow
@pytest.mark.parametrize("update", ["wgd-sge", "wgd-ssge"])
def test_repulsive_ensembles_recover_a_correlated_gaussian(update, seed):
    """WGD with SGE/SSGE density gradients at the particles converges to the target."""
    init = 3 * torch.randn(200, 2, generator=torch.Generator().manual_seed(seed), dtype=DTYPE)
    post = SVGD(
        particles=200, kernel=MEDIAN, steps=1000, lr=0.05, optimizer=torch.optim.SGD, update=update
    ).sample(Correlated2D.log_density, init, seed=seed, progress=False)
    assert_recovers(post.theta, Correlated2D.mean, Correlated2D.cov)


@pytest.mark.slow
def test_stochastic_svgd_samples_the_target_with_few_particles(seed):
    """With Langevin noise the product of targets is invariant for any number of particles:
    10 particles, followed over time, sample the Gaussian. Fixed bandwidth (the invariance
    argument needs a bandwidth that does not depend on the particles) and plain SGD with a
    small step (the discretisation bias is O(lr)). Standard errors from 20 batch means."""
    gen = torch.Generator().manual_seed(seed)
    init = torch.randn(10, 2, generator=gen, dtype=DTYPE)
    kept = []

    def keep(event):
        if event.step >= 2000 and event.step % 5 == 0:
            kept.append(event.info["theta"].clone())

    SVGD(
        particles=10,
        kernel=RBF(bandwidth=2.0),
        steps=22000,
        lr=0.01,
        optimizer=torch.optim.SGD,
        stochastic=True,
    ).sample(Correlated2D.log_density, init, seed=seed, progress=False, callbacks=[keep])
    trace = torch.stack(kept)  # (T, 10, 2)
    d = trace - Correlated2D.mean
    # Per time step: the mean and the second moments over the 10 particles.
    stats = torch.cat(
        [
            trace.mean(1),
            (d[..., 0] ** 2).mean(1, True),
            (d[..., 1] ** 2).mean(1, True),
            (d[..., 0] * d[..., 1]).mean(1, True),
        ],
        dim=1,
    )
    truth = torch.cat(
        [Correlated2D.mean, Correlated2D.cov.diagonal(), Correlated2D.cov[0, 1].reshape(1)]
    )
    batches = stats[: len(stats) // 20 * 20].reshape(20, -1, stats.shape[1]).mean(1)
    se = batches.std(0) / math.sqrt(20)
    z = (batches.mean(0) - truth).abs() / se
    assert z.max() < 4, f"z-scores {z} (estimates {batches.mean(0)}, truth {truth})"
