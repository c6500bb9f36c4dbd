"""Log densities that raise at some proposals (``inference/mcmc/robust.py``): a divergence of that
chain only, counted in ``sample_stats`` and named in a warning; at the start, a clear error.

The target: a standard Gaussian in 2-D truncated to ``theta[0] < 1``, written as a
``MultivariateNormal`` whose covariance is ``I`` where ``theta[0] < 1`` and ``-I`` (not positive
definite) elsewhere, so that torch raises there (``ValueError`` from its argument validation,
or ``LinAlgError`` from the Cholesky factorisation without it) for those rows only.
Its first coordinate's mean is ``-phi(1) / Phi(1)`` (the mean of a standard normal truncated
above at 1), the second's 0.
"""

from __future__ import annotations

import math
import os
import shutil
import warnings

import arviz as az
import numpy as np
import pytest
import torch

from bayesdl.inference import HMC, NUTS, ConvergenceWarning, DensityErrorWarning
from bayesdl.inference.gradients import value_and_grad
from bayesdl.inference.mcmc.robust import RobustLogDensity, is_density_error, start_values

BOUND = 1.0
#: E[theta_0] of a standard normal truncated to theta_0 < 1: -phi(1) / Phi(1).
TRUNCATED_MEAN = -math.exp(-0.5) / math.sqrt(2 * math.pi) / (0.5 * (1 + math.erf(1 / math.sqrt(2))))


def raising_density(theta: torch.Tensor) -> torch.Tensor:
    """N(0, I) on ``theta[0] < BOUND``; raises for the rows beyond (see the module docstring)."""
    beyond = (theta[:, 0] > BOUND).to(theta.dtype)
    eye = torch.eye(theta.shape[1], dtype=theta.dtype)
    cov = eye * (1.0 - 2.0 * beyond)[:, None, None]
    mvn = torch.distributions.MultivariateNormal(torch.zeros_like(eye[0]), covariance_matrix=cov)
    return mvn.log_prob(theta)


def _sample(backend, density=raising_density, start=None):
    start = torch.zeros(4, 2, dtype=torch.float64) if start is None else start
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        post = backend.sample(density, start, seed=0, progress=False)
    return post, [w for w in caught if issubclass(w.category, ConvergenceWarning)]


def test_the_target_raises_for_the_rows_beyond_the_bound_only():
    theta = torch.tensor([[0.0, 0.0], [2.0, 0.0]], dtype=torch.float64)
    with pytest.raises((ValueError, RuntimeError)):
        raising_density(theta)
    assert torch.isfinite(raising_density(theta[:1])).all()


@pytest.mark.parametrize("backend", ["nuts", "hmc"])
def test_a_chain_whose_density_raises_diverges_and_the_others_go_on(backend):
    torch.set_default_dtype(torch.float64)
    if backend == "nuts":
        sampler = NUTS(chains=4, warmup=150, draws=300)
    else:  # a fixed number of steps bounds the time (the default length takes more at first)
        sampler = HMC(chains=4, warmup=150, draws=300, num_steps=6)
    post, caught = _sample(sampler)
    stats = post.sample_stats
    raised = stats["density_raised"]
    assert raised.shape == (4, 300) and raised.dtype == torch.long
    # the proposals beyond the bound raised, in every chain, and each made a divergence
    assert bool((raised.sum(-1) > 0).all())
    assert bool((stats["diverging"][raised > 0]).all())
    assert post.attrs["density_raised_warmup"] > 0
    assert (
        "ValueError" in post.attrs["density_error"] or "LinAlgError" in post.attrs["density_error"]
    )
    # no draw beyond the bound, every chain moved, and the states' log densities are finite
    assert bool((post.theta[..., 0] <= BOUND).all())
    assert bool(torch.isfinite(stats["lp"]).all())
    assert bool((post.theta[:, 1:] != post.theta[:, :1]).any(-1).all(-1).any())
    # the draws are the truncated Gaussian's: means within 4 Monte Carlo standard errors
    draws = post.theta.numpy()
    for i, truth in enumerate((TRUNCATED_MEAN, 0.0)):
        mcse = float(az.mcse(draws[..., i], method="mean"))
        assert abs(draws[..., i].mean() - truth) < 4 * mcse, (i, draws[..., i].mean(), mcse)
    # one warning names the error, how often and which chains
    density_warnings = [w for w in caught if w.category is DensityErrorWarning]
    assert len(density_warnings) == 1
    message = str(density_warnings[0].message)
    assert "raised" in message and "chain(s) [0, 1, 2, 3]" in message
    assert f"at {int(raised.sum())} proposal(s)" in message
    assert "ValueError" in message or "LinAlgError" in message


def test_no_raise_no_warning_and_zero_counts():
    torch.set_default_dtype(torch.float64)
    post, caught = _sample(
        NUTS(chains=4, warmup=50, draws=20), density=lambda t: -0.5 * t.pow(2).sum(-1)
    )
    assert int(post.sample_stats["density_raised"].sum()) == 0
    assert post.attrs["density_raised_warmup"] == 0 and post.attrs["density_error"] == ""
    assert not [w for w in caught if w.category is DensityErrorWarning]


def test_a_density_that_returns_minus_inf_or_nan_is_a_divergence_without_a_warning():
    torch.set_default_dtype(torch.float64)

    def density(theta):
        lp = -0.5 * theta.pow(2).sum(-1)
        out = torch.where(theta[:, 0] > BOUND, -math.inf, lp)
        return torch.where(theta[:, 0] < -3 * BOUND, math.nan, out)

    post, caught = _sample(NUTS(chains=4, warmup=100, draws=100), density=density)
    assert int(post.sample_stats["density_raised"].sum()) == 0
    assert int(post.sample_stats["diverging"].sum()) > 0
    assert bool((post.theta[..., 0] <= BOUND).all())
    assert not [w for w in caught if w.category is DensityErrorWarning]


class _NanGradientBeyondTheBound(torch.autograd.Function):
    """The identity, whose gradient is NaN for the rows with ``theta[0] > BOUND``."""

    @staticmethod
    def forward(ctx, theta):
        ctx.save_for_backward(theta)
        return theta.clone()

    @staticmethod
    def backward(ctx, grad):
        (theta,) = ctx.saved_tensors
        return torch.where(theta[:, :1] > BOUND, math.nan, grad)


def test_a_finite_density_with_a_nan_gradient_is_a_divergence_without_a_warning():
    torch.set_default_dtype(torch.float64)

    def density(theta):
        lp = -0.5 * _NanGradientBeyondTheBound.apply(theta).pow(2).sum(-1)
        return torch.where(theta[:, 0] > 2 * BOUND, -math.inf, lp)  # kept within reach

    post, caught = _sample(NUTS(chains=4, warmup=100, draws=100), density=density)
    assert int(post.sample_stats["density_raised"].sum()) == 0
    assert int(post.sample_stats["diverging"].sum()) > 0
    # a leapfrog step to a NaN gradient diverges, so no draw lies beyond the bound
    assert bool((post.theta[..., 0] <= BOUND).all())
    assert bool(torch.isfinite(post.theta).all())
    assert not [w for w in caught if w.category is DensityErrorWarning]


def test_a_density_that_raises_at_the_start_names_the_chains_and_the_error():
    torch.set_default_dtype(torch.float64)
    start = torch.zeros(4, 2)
    start[1, 0] = start[3, 0] = 2 * BOUND
    for sampler in (NUTS(chains=4, warmup=10, draws=10), HMC(chains=4, warmup=10, draws=10)):
        with pytest.raises(ValueError, match=r"init_theta: .*chain\(s\) \[1, 3\]") as info:
            sampler.sample(raising_density, start, progress=False)
        assert "ValueError" in str(info.value) or "LinAlgError" in str(info.value)


def test_an_error_that_is_not_the_proposals_fault_stops_the_run():
    torch.set_default_dtype(torch.float64)

    def buggy(theta):  # a TypeError is a bug in the density, not a bad proposal
        if bool((theta[:, 0] > BOUND).any()):
            raise TypeError("a bug")
        return -0.5 * theta.pow(2).sum(-1)

    with pytest.raises(TypeError, match="a bug"):
        NUTS(chains=4, warmup=50, draws=20).sample(buggy, torch.zeros(4, 2), progress=False)
    assert not is_density_error(KeyboardInterrupt())
    assert not is_density_error(NotImplementedError())
    assert not is_density_error(torch.OutOfMemoryError())
    assert is_density_error(torch.linalg.LinAlgError("not positive definite"))


def test_the_robust_log_density_evaluates_a_failed_point_once_and_counts_per_chain():
    torch.set_default_dtype(torch.float64)
    calls = []

    def density(theta):
        calls.append(theta.shape[0])
        return raising_density(theta)

    log_density_and_grad = RobustLogDensity(value_and_grad(density), chains=3)
    theta = torch.tensor([[0.0, 0.5], [2.0, 0.0], [0.5, -1.0]])
    value, grad = log_density_and_grad(theta)
    assert calls == [3, 1, 1, 1]  # the batch, then chain by chain
    assert value[1] == -math.inf and bool((grad[1] == 0).all())
    expected, expected_grad = value_and_grad(raising_density)(theta[[0, 2]])
    torch.testing.assert_close(value[[0, 2]], expected)
    torch.testing.assert_close(grad[[0, 2]], expected_grad)
    assert log_density_and_grad.remembers_failure
    # chain 1 comes back to the same point (a stopped chain takes steps of size zero): it is
    # skipped, the others are evaluated together, nothing is counted twice
    calls.clear()
    theta2 = theta.clone()
    theta2[0, 1] = 0.25
    value2, _ = log_density_and_grad(theta2)
    assert calls == [2] and value2[1] == -math.inf
    assert log_density_and_grad.take_raised().tolist() == [0, 1, 0]
    assert log_density_and_grad.take_raised().tolist() == [0, 0, 0]
    assert (
        "ValueError" in log_density_and_grad.first_error
        or "LinAlgError" in log_density_and_grad.first_error
    )
    # a new position for chain 1: the memory is cleared and the batch is evaluated as usual
    calls.clear()
    value3, _ = log_density_and_grad(theta2 * 0.1)
    assert (
        calls == [3]
        and not log_density_and_grad.remembers_failure
        and bool(torch.isfinite(value3).all())
    )


def test_start_values_reraises_a_batch_error_that_no_chain_raises_alone():
    def batch_only(theta):
        if theta.shape[0] > 1:
            raise RuntimeError("batch too large")
        return theta.sum(-1)

    with pytest.raises(RuntimeError, match="batch too large"):
        start_values(batch_only, torch.zeros(3, 2))


needs_compiler = pytest.mark.skipif(
    not any(shutil.which(c) for c in (os.environ.get("CXX", "g++"), "c++", "clang++")),
    reason="torch.compile needs a C++ compiler on the CPU",
)


@needs_compiler
@pytest.mark.filterwarnings("error::RuntimeWarning")  # a fallback to eager would hide the test
def test_a_compiled_run_reruns_the_calls_that_raise_eagerly():
    # inside the graph torch's validation is off and the Cholesky factorisation raises
    # LinAlgError; the call is rerun eagerly with the robust log density
    torch.set_default_dtype(torch.float64)
    post, caught = _sample(NUTS(chains=4, warmup=60, draws=60, compile=True))
    raised = post.sample_stats["density_raised"]
    assert post.attrs["density_raised_warmup"] + int(raised.sum()) > 0
    # (not every transition that raised diverged: a compiled call computes two leaves, and the
    # second, past the end of a subtree of one leaf, is discarded even when it raised)
    assert int(post.sample_stats["diverging"].sum()) > 0
    assert bool((post.theta[..., 0] <= BOUND).all())
    assert np.isfinite(post.sample_stats["lp"].numpy()).all()
    assert [w for w in caught if w.category is DensityErrorWarning]


@needs_compiler
@pytest.mark.filterwarnings("error::RuntimeWarning")  # no fallback to the tree in Python
def test_a_looped_run_reruns_the_transitions_that_raise_eagerly(monkeypatch):
    """As above for whole trajectories in one compiled loop (inference/mcmc/looped.py): a
    transition whose loop raises is rerun with the tree in Python and the robust density."""
    from bayesdl.inference.mcmc import run as mcmc_run

    monkeypatch.setattr(mcmc_run, "AUTO_MIN_LEAVES", 0)
    monkeypatch.setattr(mcmc_run, "AUTO_MIN_LOOPED_LEAVES", 0)
    torch.set_default_dtype(torch.float64)
    post, _ = _sample(NUTS(chains=4, warmup=60, draws=60))
    assert post.attrs["looped"] == 1
    assert int(post.sample_stats["density_raised"].sum()) > 0  # while sampling: in loops
    assert int(post.sample_stats["diverging"].sum()) > 0
    assert bool((post.theta[..., 0] <= BOUND).all())
    assert np.isfinite(post.sample_stats["lp"].numpy()).all()
