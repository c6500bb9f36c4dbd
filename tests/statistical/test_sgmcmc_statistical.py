"""SGHMC and SGLD recover closed-form (tempered) posteriors of Bayesian linear regression."""

from __future__ import annotations

import pytest

from bayesdl import likelihoods, priors
from bayesdl.arviz_bridge import import_arviz
from bayesdl.inference import SGHMC, SGLD
from bayesdl.models import BNN

from .blr import check_gaussian_draws, linear_regression

Z_MAX = 4.0


@pytest.mark.slow
@pytest.mark.parametrize(
    "sampler",
    [
        SGHMC(chains=4, lr=5e-4, momentum_decay=0.05, burn_in=2000, draws=1000, thin=10),
        SGLD(chains=4, lr=5e-4, burn_in=2000, draws=1000, thin=10),
    ],
    ids=["sghmc", "sgld"],
)
def test_small_step_sg_mcmc_recovers_linear_regression(sampler, seed):
    problem = linear_regression(seed=seed)
    post = sampler.fit(problem.bnn, problem.x, problem.y, seed=seed, progress=False)
    check_gaussian_draws(post.theta, problem.mean, problem.precision, z_max=Z_MAX)


@pytest.mark.slow
def test_cold_posterior_and_temperature_diagnostics(seed):
    """At T = 0.5 the posterior precision doubles; both temperature estimates read 0.5."""
    az = import_arviz()
    problem = linear_regression(seed=seed)
    temperature = 0.5
    bnn = BNN(
        problem.bnn.net, priors.Gaussian(1.0), likelihoods.Gaussian(0.5), temperature=temperature
    )
    post = SGHMC(chains=4, lr=2.5e-4, momentum_decay=0.05, burn_in=2000, draws=1000, thin=10).fit(
        bnn, problem.x, problem.y, seed=seed, progress=False
    )
    check_gaussian_draws(post.theta, problem.mean, problem.precision / temperature, z_max=Z_MAX)
    for name in ("configurational_temperature", "kinetic_temperature"):
        values = post.sample_stats[name].numpy()
        z = abs(values.mean() - temperature) / float(az.mcse(values, method="mean"))
        assert z < Z_MAX, (name, values.mean())
