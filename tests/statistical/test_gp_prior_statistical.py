"""Quality of a full GP-prior fit, checked independently of the critic that drove it.

Setting: a 1x50 tanh MLP, an RBF target (length-scale 1, variance 1) on [-1, 1], 16 measurement
points. The fit starts from standard-normal weights (N(0, 1) on every weight and bias: function
draws with a standard deviation of about 5, where the GP's is 1).

Why a domain two length-scales wide: a one-hidden-layer tanh network with Gaussian weights has
a non-stationary covariance. Minimising the Frobenius error to the RBF Gram matrix directly over
the four per-layer scales gives at best about 39% on a domain six length-scales wide, 21% on
four and 11% on three (measured while writing these tests), so the issue's 20% criterion is
only attainable for this architecture on a narrower domain.

The checks (each for both weight parameterisations, ``"log"`` and Tran et al.'s
``"softplus"``; the fit with a fresh critic every outer step, 100 critic steps):

* the exact empirical 1-Wasserstein distance (optimal assignment, scipy) between 256 BNN and
  256 GP function draws at the 16 points falls by at least 5x from the N(0, 1) start;
* the empirical covariance of the fitted prior's function values is within 20% relative
  Frobenius error of the GP Gram matrix; the Monte Carlo error of that estimate is derived and
  shown to be small against 20%, and the N(0, 1) start is shown to fail the same check;
* issue 13: the fit with a *warm-started* critic (network and Adagrad state kept across outer
  steps, 20 critic steps per outer step: a fifth of the critic work) reaches an exact empirical
  W1 within 10% of the fresh-critic fit's. The comparison uses 1024 draws per distribution and
  the same GP draws for both fits (a paired comparison), repeated over 10 independent batches;
  the test first checks that its Monte Carlo standard error is small against the 10% margin,
  so it can resolve a worse fit, and that the N(0, 1) start fails the same comparison.
"""

from __future__ import annotations

import math
import os

import gpytorch
import pytest
import torch

from bayesdl import likelihoods, priors
from bayesdl.models import BNN, MLP
from bayesdl.priors import measurement
from bayesdl.priors.base import fan_in_of
from bayesdl.priors.functional import fit_gp_prior
from bayesdl.priors.gp import GPTarget
from bayesdl.priors.wasserstein import empirical_wasserstein

pytestmark = pytest.mark.slow

SEED = int(os.environ.get("BAYESDL_TEST_SEED", "0"))  # as tests/conftest.py
DRAWS = 256
COV_DRAWS = 4096


def _kernel() -> gpytorch.kernels.Kernel:
    kernel = gpytorch.kernels.RBFKernel()
    kernel.lengthscale = 1.0
    return kernel


def _net() -> MLP:
    torch.manual_seed(0)
    return MLP(1, [50], 1, activation="tanh")


def _points() -> torch.Tensor:
    return measurement.grid(-1.0, 1.0, 16).float()


def _functions(prior, n: int, seed: int) -> torch.Tensor:
    """``n`` prior function draws at the 16 points through the BNN (its own sampling path)."""
    bnn = BNN(_net(), prior, likelihoods.Gaussian(1.0))
    return bnn.forward(bnn.init_theta(n, seed=seed), _points())[..., 0].double()


#: Critic steps per outer step of the warm-started fit (a fifth of the fresh fit's 100).
WARM_STEPS = 20
_FITS: dict[tuple[str, bool], priors.Prior] = {}


def _fit(parameterisation: str, warm: bool) -> priors.Prior:
    """The fit of the module docstring, cached (about two minutes on one core when fresh)."""
    key = (parameterisation, warm)
    if key not in _FITS:
        net = _net()
        standard_normal = {n: math.sqrt(fan_in_of(p)) for n, p in net.named_parameters()}
        _FITS[key] = fit_gp_prior(
            net,
            _kernel(),
            measurement.uniform(-1.0, 1.0, 16),
            init_scale=standard_normal,
            parameterisation=parameterisation,
            steps=200,
            num_functions=128,
            critic={"steps": WARM_STEPS, "warm_start": True}
            if warm
            else {"steps": 100, "warm_start": False},
            lr=0.05,
            seed=SEED,
            progress=False,
        )
    return _FITS[key]


@pytest.fixture(scope="module", params=["log", "softplus"])
def fitted(request) -> priors.Prior:
    """The fresh-critic fit, once per parameterisation."""
    return _fit(request.param, warm=False)


def test_exact_wasserstein_falls_5x_from_the_standard_normal_start(fitted):
    torch.manual_seed(SEED)
    gp = GPTarget(_kernel()).sample(_points(), DRAWS)
    start = empirical_wasserstein(_functions(priors.Gaussian(1.0), DRAWS, SEED + 1), gp)
    after = empirical_wasserstein(_functions(fitted, DRAWS, SEED + 2), gp)
    floor = empirical_wasserstein(GPTarget(_kernel()).sample(_points(), DRAWS), gp)
    print(f"exact W1: N(0,1) start {start:.3f}, fitted {after:.3f}, GP vs GP {floor:.3f}")
    assert start / after >= 5
    # the fit's own record of its start agrees with the independent N(0, 1) draws
    assert fitted.history.exact["before"] == pytest.approx(start, rel=0.25)


def _relative_frobenius(f: torch.Tensor, gram: torch.Tensor) -> tuple[float, float]:
    """Relative Frobenius error of the sample covariance of ``f`` (n, M), and its Monte Carlo
    standard error: for Gaussian draws, E||S - C||_F^2 = sum_ij (C_ii C_jj + C_ij^2) / n."""
    n = f.shape[0]
    sample = torch.cov(f.T)
    noise = torch.sqrt((torch.outer(sample.diag(), sample.diag()) + sample**2).sum() / n)
    scale = torch.linalg.norm(gram)
    return float(torch.linalg.norm(sample - gram) / scale), float(noise / scale)


def test_fitted_covariance_within_20_percent_of_the_gram_matrix(fitted):
    _, gram = GPTarget(_kernel()).moments(_points())
    error, noise = _relative_frobenius(_functions(fitted, COV_DRAWS, SEED + 3), gram)
    start_error, _ = _relative_frobenius(_functions(priors.Gaussian(1.0), COV_DRAWS, SEED), gram)
    print(
        f"relative Frobenius error: fitted {error:.3f} (MC error {noise:.3f}), start "
        f"{start_error:.2f}"
    )
    assert noise < 0.05  # the estimate resolves the 20% criterion
    assert error <= 0.20
    assert start_error > 0.20  # the check fails for the unfitted prior


REPEATS = 10
PAIRED_DRAWS = 1024


@pytest.mark.parametrize("parameterisation", ["log", "softplus"])
def test_warm_critic_fit_within_10_percent_of_the_fresh_critic_fit(parameterisation):
    fresh, warm = _fit(parameterisation, False), _fit(parameterisation, True)
    assert int(warm.history.critic_steps.sum()) * 4 <= int(fresh.history.critic_steps.sum())
    rows = []
    for r in range(REPEATS):
        torch.manual_seed(SEED + 100 + r)
        gp = GPTarget(_kernel()).sample(_points(), PAIRED_DRAWS)
        rows.append(
            [
                empirical_wasserstein(_functions(prior, PAIRED_DRAWS, SEED + 200 + 3 * r + k), gp)
                for k, prior in enumerate((fresh, warm, priors.Gaussian(1.0)))
            ]
        )
    w = torch.tensor(rows, dtype=torch.float64)  # (REPEATS, 3): fresh, warm, N(0, 1) start
    mean = w.mean(0)
    ratio = w[:, 1] / w[:, 0]
    se = float(ratio.std() / math.sqrt(REPEATS))
    print(
        f"{parameterisation}: exact W1 fresh {mean[0]:.3f}, warm {mean[1]:.3f}, start "
        f"{mean[2]:.3f}; warm/fresh {float(ratio.mean()):.3f} +- {se:.3f}; critic steps "
        f"{int(fresh.history.critic_steps.sum())} vs {int(warm.history.critic_steps.sum())}"
    )
    assert 3 * se < 0.10  # the paired comparison resolves the 10% margin
    assert float(ratio.mean()) <= 1.10
    assert float((w[:, 2] / w[:, 0]).mean()) > 1.10  # the unfitted start fails the same check
