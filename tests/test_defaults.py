"""Every backend's defaults run to completion: ``Backend().fit(bnn, x, y)`` with no settings.

The default suite runs them on small BNNs and small data, with fixed and learned likelihood
noise; NUTS and HMC (2,000 full-data iterations whatever the model) on Bayesian linear
regression, where their trees are shallow, and, with the slow tests, on the quickstart's
10-20-1 tanh MLP on diabetes (a few minutes each on one core; see
``bayesdl.inference.mcmc.hmc.HamiltonianBackend`` for the defaults that make them finish).
"""

from __future__ import annotations

import warnings

import pyro.distributions as dist
import pytest
import torch

import bayesdl
from bayesdl import likelihoods, priors
from bayesdl.inference import HMC, NUTS, SGHMC, SGLD, SSVI, SVGD, VI, ConvergenceWarning
from bayesdl.models import BNN, MLP

NOISES = {
    "fixed": lambda: likelihoods.Gaussian(0.3),
    "learned": lambda: likelihoods.Gaussian(dist.HalfNormal(1.0)),
}


def _data(n: int = 20):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, 2, generator=gen)
    y = torch.tanh(x[:, 0]) + 0.3 * torch.randn(n, generator=gen)
    return x, y


def _bnn(hidden: list[int], noise: str) -> BNN:
    torch.manual_seed(0)
    return BNN(MLP(2, hidden, 1, activation="tanh"), priors.Gaussian(1.0), NOISES[noise]())


def _check_result(post, backend, bnn: BNN) -> None:
    assert not post.partial
    assert post.theta.shape[-1] == bnn.num_params and post.num_draws > 0
    assert torch.isfinite(post.theta).all(), backend


@pytest.mark.parametrize("noise", sorted(NOISES))
@pytest.mark.parametrize("backend", [SGHMC, SGLD, SVGD, VI, SSVI], ids=lambda b: b.__name__)
def test_the_defaults_finish_on_a_small_mlp(backend, noise):
    bnn = _bnn([4], noise)
    x, y = _data()
    post = backend().fit(bnn, x, y, seed=0, progress=False)
    _check_result(post, backend, bnn)


@pytest.mark.parametrize("backend", [NUTS, HMC], ids=lambda b: b.__name__)
def test_hamiltonian_defaults_finish_cleanly_on_linear_regression(backend):
    """4 chains x (1000 warmup + 1000 draws): a healthy run, so no warning either."""
    bnn = _bnn([], "fixed")
    x, y = _data()
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        post = backend().fit(bnn, x, y, seed=0, progress=False)
    _check_result(post, backend, bnn)
    assert post.theta.shape == (4, 1000, bnn.num_params)


@pytest.mark.slow
@pytest.mark.parametrize("noise", sorted(NOISES))
@pytest.mark.parametrize("backend", [NUTS, HMC], ids=lambda b: b.__name__)
def test_hamiltonian_defaults_finish_on_a_small_mlp(backend, noise):
    bnn = _bnn([3], noise)
    x, y = _data()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # capped trees are reported, not tested
        post = backend().fit(bnn, x, y, seed=0, progress=False)
    _check_result(post, backend, bnn)


@pytest.mark.slow
@pytest.mark.parametrize("noise", sorted(NOISES))
@pytest.mark.parametrize(
    "backend", [NUTS, HMC, SGHMC, SGLD, SVGD, VI, SSVI], ids=lambda b: b.__name__
)
def test_the_defaults_finish_on_the_quickstart_bnn(backend, noise):
    """The quickstart's model and data (tutorials/01_quickstart.py), with no settings."""
    data = bayesdl.data.load("diabetes", seed=0)
    torch.manual_seed(0)
    likelihood = NOISES[noise]() if noise == "learned" else likelihoods.Gaussian(0.5)
    bnn = BNN(MLP(10, [20], 1, activation="tanh"), priors.Gaussian(1.0), likelihood)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        post = backend().fit(bnn, data.x_train, data.y_train, seed=0, progress=False)
    _check_result(post, backend, bnn)
