"""No silent failure, no unclear error: every backend names a bad argument, and a run that goes
wrong warns with its cause and fix (``bayesdl.inference.checks`` and ``.health``)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from bayesdl import likelihoods, priors
from bayesdl.arviz_bridge import import_arviz
from bayesdl.inference import HMC, NUTS, SGHMC, SGLD, SSVI, SVGD, VI, ConvergenceWarning
from bayesdl.inference.health import RHAT_MAX, split_rhat
from bayesdl.models import BNN, MLP

#: Each backend with settings short enough for a test.
QUICK = {
    "nuts": lambda: NUTS(chains=2, warmup=5, draws=5),
    "hmc": lambda: HMC(chains=2, warmup=5, draws=5),
    "sghmc": lambda: SGHMC(chains=2, burn_in=3, draws=3, thin=1),
    "sgld": lambda: SGLD(chains=2, burn_in=3, draws=3, thin=1),
    "svgd": lambda: SVGD(particles=3, steps=3),
    "vi": lambda: VI(steps=3, draws=3),
    "ssvi": lambda: SSVI(steps=3, draws=3),
}


def _problem(dtype: torch.dtype = torch.float32, net: nn.Module | None = None):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(24, 2, generator=gen, dtype=dtype)
    y = torch.tanh(x[:, 0]) + 0.3 * torch.randn(24, generator=gen, dtype=dtype)
    torch.manual_seed(0)
    net = net if net is not None else MLP(2, [4], 1, activation="tanh")
    bnn = BNN(net.to(dtype), priors.Gaussian(1.0), likelihoods.Gaussian(0.3))
    return bnn, x, y


# A BNN required, one callable as callbacks: the contract, tests/test_contract.py
@pytest.mark.parametrize("bad", [3, "print", [print, 3], {"cb": print}])
@pytest.mark.parametrize("name", ["nuts", "svgd", "vi"])
def test_callbacks_that_are_not_callables_name_callbacks(name, bad):
    bnn, x, y = _problem()
    with pytest.raises(TypeError, match=r"^callbacks: expected a callable or a list"):
        QUICK[name]().fit(bnn, x, y, progress=False, callbacks=bad)


@pytest.mark.parametrize("name", sorted(QUICK))
def test_targets_that_overflow_the_likelihood_name_y(name):
    """A finite y of 1e200 (float64) squares to inf: the message names y and the fix."""
    bnn, x, y = _problem(torch.float64)
    with pytest.raises(ValueError, match=r"^y: the likelihood overflows.*Standardise y"):
        QUICK[name]().fit(bnn, x, y * 1e200, progress=False)


class _NaNNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) * math.nan


@pytest.mark.parametrize("name", sorted(QUICK))
def test_a_network_returning_nan_is_named_before_the_run(name):
    bnn, x, y = _problem(net=_NaNNet())
    with pytest.raises(ValueError, match=r"^net: the network's outputs are NaN or infinite"):
        QUICK[name]().fit(bnn, x, y, progress=False)


# ------------------------------------------------------------------ run health (HMC, NUTS)
@pytest.mark.parametrize("backend", [NUTS, HMC])
def test_every_transition_divergent_warns_that_the_chains_are_stuck(backend):
    """A huge step size without warmup: acceptance 0, frozen chains, and a warning saying so."""
    bnn, x, y = _problem()
    with pytest.warns(ConvergenceWarning, match=r"chains are stuck.*never moved.*warmup > 0"):
        post = backend(chains=2, warmup=0, draws=12, step_size=1e3).fit(
            bnn, x, y, seed=0, progress=False
        )
    assert float(post.sample_stats["acceptance_rate"].max()) == 0.0
    assert torch.equal(post.theta[:, :1].expand_as(post.theta), post.theta)


def test_trees_at_the_depth_cap_warn_with_what_to_do():
    bnn, x, y = _problem()
    with pytest.warns(ConvergenceWarning, match=r"max_tree_depth=1 in 100% .*Raise max_tree_depth"):
        post = NUTS(chains=2, warmup=0, draws=6, step_size=1e-3, max_tree_depth=1).fit(
            bnn, x, y, seed=0, progress=False
        )
    assert bool((post.sample_stats["tree_depth"] == 1).all())


def test_hmc_trajectories_cut_at_max_steps_warn():
    bnn, x, y = _problem()
    with pytest.warns(ConvergenceWarning, match=r"cut at max_steps=3 in 100% .*Raise max_steps"):
        HMC(chains=2, warmup=0, draws=6, step_size=1e-3, max_steps=3).fit(
            bnn, x, y, seed=0, progress=False
        )


def test_chains_that_have_not_mixed_warn_with_function_space_rhat():
    """Chains that barely move from different prior draws disagree about the function."""
    bnn, x, y = _problem()
    with pytest.warns(ConvergenceWarning, match=r"not mixed: the split R-hat .* more chains"):
        NUTS(chains=2, warmup=0, draws=20, step_size=1e-4, max_tree_depth=2).fit(
            bnn, x, y, seed=0, progress=False
        )


def test_a_healthy_run_does_not_warn():
    """A Gaussian target: shallow trees, mixing chains, no divergences: nothing to report."""

    def log_density(theta):
        return -0.5 * theta.square().sum(-1)

    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        NUTS(chains=2, warmup=100, draws=100).sample(
            log_density, torch.zeros(2, 3, dtype=torch.float64), seed=0, progress=False
        )


def test_the_progress_bar_shows_the_capped_share_and_function_rhat(capsys):
    bnn, x, y = _problem()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        NUTS(chains=2, warmup=0, draws=20, step_size=1e-4, max_tree_depth=2).fit(
            bnn, x, y, seed=0, progress=True
        )
    err = capsys.readouterr().err
    assert "capped=100%" in err and "R^f=" in err


def test_split_rhat_matches_arviz():
    az = import_arviz()
    gen = torch.Generator().manual_seed(0)
    draws = torch.randn(3, 40, 2, generator=gen, dtype=torch.float64)
    draws[1] += torch.tensor([0.0, 2.0], dtype=torch.float64)  # output 1: chains disagree
    ours = split_rhat(draws)
    theirs = [
        float(az.rhat(np.ascontiguousarray(draws[..., k].numpy()), method="split"))
        for k in range(2)
    ]
    torch.testing.assert_close(ours, torch.tensor(theirs, dtype=torch.float64))
    assert float(ours[0]) < RHAT_MAX < float(ours[1])
    assert bool(split_rhat(draws[:, :3]).isnan().all())  # too few draws to say


def test_a_chain_that_ends_frozen_is_found_only_with_a_long_divergent_tail():
    """``_frozen_ends``: the last transitions all divergent and unmoved, at least
    max(3, FROZEN_TAIL * draws) of them; an unmoved tail that did not diverge, or a short one,
    is not flagged."""
    from bayesdl.inference.health import FROZEN_TAIL, _frozen_ends

    draws = 20
    theta = torch.randn(2, draws, 3)
    tail = max(3, math.ceil(FROZEN_TAIL * draws))
    theta[0, draws - tail :] = theta[0, draws - tail - 1]  # chain 0 frozen for `tail` draws
    theta[1, draws - tail + 1 :] = theta[1, draws - tail]  # chain 1: one draw short
    diverging = torch.zeros(2, draws, dtype=torch.bool)
    diverging[:, draws - tail :] = True
    assert _frozen_ends(theta, diverging) == [(0, draws - tail)]
    assert _frozen_ends(theta, torch.zeros_like(diverging)) == []
