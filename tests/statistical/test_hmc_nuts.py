"""The vectorised HMC/NUTS engine against targets with known answers (MCSE z-tests)."""

from __future__ import annotations

import pytest
import torch

from bayesdl.inference import HMC, NUTS, StepEvent

from .blr import check_gaussian_draws, linear_regression
from .targets import correlated_2d, ill_conditioned, moment_z_scores

Z_MAX = 4.0


def _sampler(kind: str, mass: str, warmup: int, draws: int):
    """The eager engine, as these tests were written for (``compile=False``; the default
    ``"auto"`` compiles runs this long after 10 transitions). The compiled steps are checked
    against the eager ones transition by transition in ``tests/test_compilation.py``. Note:
    with ``compile="auto"`` the 20-d HMC cases reach z = 4.28 / 4.47 at seed 0, and the eager
    HMC also exceeds Z_MAX at seed 4 (4.19): the MCSE-based max-z over these ~230 statistics
    is fragile for fixed-length HMC on this target (an open question, not a tuned seed)."""
    if kind == "nuts":
        return NUTS(chains=4, warmup=warmup, draws=draws, mass=mass, compile=False)
    return HMC(
        chains=4, warmup=warmup, draws=draws, mass=mass, trajectory_length=3.0, compile=False
    )


def _run(kind, mass, target, warmup, draws, seed):
    warmup_accept = []

    def record(event: StepEvent) -> None:
        if event.stage == "warmup":
            warmup_accept.append(event.info["info"].acceptance_rate)

    init = target.mean + torch.randn(
        4, target.dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    )
    post = _sampler(kind, mass, warmup, draws).sample(
        target.log_density, init, seed=seed, progress=False, callbacks=[record]
    )
    return post, torch.stack(warmup_accept)


@pytest.mark.parametrize("mass", ["diag", "dense"])
@pytest.mark.parametrize("kind", ["nuts", "hmc"])
def test_correlated_2d_gaussian_moments_and_adaptation(kind, mass, seed):
    target = correlated_2d()
    post, warmup_accept = _run(kind, mass, target, warmup=400, draws=800, seed=seed)
    scores = moment_z_scores(post.theta, target)
    assert max(scores.values()) < Z_MAX, scores
    # dual averaging drives the mean acceptance statistic of the adaptation phase to the target
    adapted = float(warmup_accept[-200:].mean())
    assert abs(adapted - 0.8) < 0.05, adapted
    assert float(post.sample_stats["acceptance_rate"].mean()) > 0.75
    assert not post.sample_stats["diverging"].any()


@pytest.mark.slow
@pytest.mark.parametrize("mass", ["diag", "dense"])
@pytest.mark.parametrize("kind", ["nuts", "hmc"])
def test_ill_conditioned_20d_gaussian_moments_and_adaptation(kind, mass, seed):
    target = ill_conditioned(20, 100.0, seed=seed)
    post, warmup_accept = _run(kind, mass, target, warmup=1000, draws=1000, seed=seed)
    scores = moment_z_scores(post.theta, target)
    assert max(scores.values()) < Z_MAX, scores
    adapted = float(warmup_accept[-200:].mean())
    assert abs(adapted - 0.8) < 0.05, adapted


def test_moment_checker_fails_on_wrong_draws(seed):
    target = correlated_2d()
    gen = torch.Generator().manual_seed(seed)
    chol = torch.linalg.cholesky(target.cov)
    exact = target.mean + torch.randn(4, 500, 2, generator=gen, dtype=torch.float64) @ chol.T
    assert max(moment_z_scores(exact, target).values()) < Z_MAX
    assert moment_z_scores(exact + 0.2, target)["mean"] > Z_MAX
    assert moment_z_scores(target.mean + 1.2 * (exact - target.mean), target)["variance"] > Z_MAX
    independent = (
        target.mean
        + torch.randn(4, 500, 2, generator=gen, dtype=torch.float64) * target.cov.diag().sqrt()
    )
    assert moment_z_scores(independent, target)["correlation"] > Z_MAX


@pytest.mark.parametrize("mass", ["diag", "dense"])
def test_nuts_recovers_the_linear_regression_posterior(mass, seed):
    problem = linear_regression(seed=seed)
    post = NUTS(chains=4, warmup=300, draws=400, mass=mass).fit(
        problem.bnn, problem.x, problem.y, seed=seed, progress=False
    )
    check_gaussian_draws(post.theta, problem.mean, problem.precision, z_max=Z_MAX)


def test_divergences_are_detected_on_a_funnel(seed):
    """Neal's funnel: v ~ N(0, 3^2), x_i | v ~ N(0, e^v); its neck defeats a fixed step size."""

    def funnel(theta):
        v, x = theta[:, 0], theta[:, 1:]
        log_v = -0.5 * v**2 / 9.0
        log_x = (-0.5 * x**2 * torch.exp(-v)[:, None] - 0.5 * v[:, None]).sum(-1)
        return log_v + log_x

    init = torch.zeros(4, 10, dtype=torch.float64)
    post = NUTS(chains=4, warmup=200, draws=300).sample(funnel, init, seed=seed, progress=False)
    assert int(post.sample_stats["diverging"].sum()) > 0


@pytest.mark.parametrize("kind", ["nuts", "hmc"])
def test_vectorised_chains_equal_chains_run_one_at_a_time(kind, seed):
    target = correlated_2d()
    seeds = [seed + 11, seed + 12, seed + 13]
    init = target.mean + torch.randn(
        3, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    )

    def sampler(chains):
        if kind == "nuts":
            return NUTS(chains=chains, warmup=60, draws=30)
        return HMC(chains=chains, warmup=60, draws=30, trajectory_length=2.0)

    together = sampler(3).sample(target.log_density, init, seed=seeds, progress=False)
    for c in range(3):
        alone = sampler(1).sample(
            target.log_density, init[c : c + 1], seed=[seeds[c]], progress=False
        )
        torch.testing.assert_close(together.theta[c], alone.theta[0], rtol=1e-9, atol=1e-9)
        for name in ("step_size", "n_steps", "tree_depth", "acceptance_rate"):
            torch.testing.assert_close(
                together.sample_stats[name][c], alone.sample_stats[name][0], rtol=1e-9, atol=1e-9
            )
