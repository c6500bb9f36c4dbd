"""Stochastic-gradient samplers: schedules, preconditioners, guards, per-chain streams."""

from __future__ import annotations

import math

import pytest
import torch

from bayesdl import likelihoods, priors
from bayesdl.functional import FlatLayout, SiteSpec
from bayesdl.inference import SGHMC, SGLD, Constant, Cyclical, NonFiniteError, StepEvent
from bayesdl.inference.sgmcmc.preconditioners import Adaptive, Layerwise, make_preconditioner
from bayesdl.models import BNN, MLP


def _problem(n: int = 64):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, generator=gen)
    y = torch.sin(x[:, 0]) + 0.1 * torch.randn(n, generator=gen)
    torch.manual_seed(0)
    bnn = BNN(MLP(3, [8], 1, "tanh"), priors.Gaussian(1.0), likelihoods.Gaussian(0.3))
    return bnn, x, y


def test_constant_schedule_keeps_every_thin_step_after_burn_in():
    s = Constant(burn_in=5, draws=3, thin=2)
    assert s.total_steps == 11
    assert [k for k in range(s.total_steps) if s.keep(k)] == [6, 8, 10]
    assert all(s.lr_factor(k) == 1.0 and s.noise(k) for k in range(11))


def test_cyclical_schedule_golden_values():
    s = Cyclical(cycles=3, cycle_length=4, explore=0.5, draws_per_cycle=2, burn_in_cycles=1)
    # eta_k / eta_0 = (cos(pi * (k mod 4) / 4) + 1) / 2
    assert [s.lr_factor(k) for k in range(4)] == pytest.approx(
        [1.0, (math.cos(math.pi / 4) + 1) / 2, 0.5, (math.cos(3 * math.pi / 4) + 1) / 2]
    )
    assert [s.noise(k) for k in range(4)] == [False, False, True, True]
    assert [k for k in range(s.total_steps) if s.keep(k)] == [6, 7, 10, 11]
    assert (s.burn_in, s.draws, s.total_steps) == (4, 4, 12)
    with pytest.raises(ValueError, match="draws_per_cycle"):
        Cyclical(cycles=2, cycle_length=4, explore=0.5, draws_per_cycle=3)
    with pytest.raises(ValueError, match="burn_in_cycles"):
        Cyclical(cycles=2, cycle_length=4, burn_in_cycles=2)


def test_layerwise_preconditioner_scales_layers_by_gradient_magnitude():
    layout = FlatLayout([SiteSpec("a", (2,)), SiteSpec("b", (3,))])
    pre = Layerwise(torch.ones(1, 5), [[0, 2], [2, 5]], every=1, decay=0.0)
    assert pre.bounds == make_preconditioner("layerwise", 1, torch.zeros(1, 5), layout, 1).bounds
    pre.observe(torch.tensor([[1.0, 1.0, 10.0, 10.0, 10.0]]), 0)
    # mean squared gradients 1 and 100: M^-1 = (v / min v)^(-1/2) = 1 and 0.1
    torch.testing.assert_close(pre.inverse_mass, torch.tensor([[1.0, 1.0, 0.1, 0.1, 0.1]]))


def test_adaptive_preconditioner_tracks_the_gradient_scale():
    pre = make_preconditioner("adaptive", 1, torch.zeros(1, 2), None, 1)
    assert isinstance(pre, Adaptive)
    gen = torch.Generator().manual_seed(0)
    for k in range(3000):
        pre.observe(torch.randn(1, 2, generator=gen) * torch.tensor([[1.0, 100.0]]), k)
    ratio = pre.inverse_mass[0, 0] / pre.inverse_mass[0, 1]
    assert 50 < float(ratio) < 200  # M^-1 ~ 1 / rms gradient: a ratio of about 100


@pytest.mark.parametrize("sampler", [SGHMC, SGLD])
def test_sampler_runs_records_stats_and_is_seeded(sampler):
    bnn, x, y = _problem()
    kw = {"chains": 2, "lr": 1e-4, "batch_size": 16, "burn_in": 10, "draws": 5, "thin": 2}
    post = sampler(**kw).fit(bnn, x, y, seed=0, progress=False)
    assert post.theta.shape == (2, 5, bnn.num_params)
    expected = {"step_size", "configurational_temperature"} | (
        {"kinetic_temperature"} if sampler is SGHMC else set()
    )
    assert set(post.sample_stats) == expected
    again = sampler(**kw).fit(bnn, x, y, seed=0, progress=False)
    assert torch.equal(post.theta, again.theta)
    other = sampler(**kw).fit(bnn, x, y, seed=1, progress=False)
    assert not torch.equal(post.theta, other.theta)


def test_chains_use_their_own_noise_streams():
    bnn, x, y = _problem()
    init = bnn.init_theta(2, seed=0)
    kw = {"lr": 1e-4, "burn_in": 5, "draws": 4, "thin": 1}
    together = SGHMC(chains=2, **kw).fit(bnn, x, y, seed=[7, 8], init_theta=init, progress=False)
    alone = SGHMC(chains=1, **kw).fit(bnn, x, y, seed=[8], init_theta=init[1:], progress=False)
    torch.testing.assert_close(together.theta[1], alone.theta[0], rtol=1e-5, atol=1e-6)


def test_too_large_a_step_trips_the_nan_guard_and_keeps_the_draws():
    bnn, x, y = _problem()
    with pytest.raises(NonFiniteError) as err:
        SGLD(chains=2, lr=1e3, burn_in=0, draws=200, thin=1).fit(bnn, x, y, seed=0, progress=False)
    post = err.value.posterior
    assert post.partial and post.attrs["stopped"] == "non-finite"
    assert post.num_draws < 200


@pytest.mark.parametrize("backend", [SGHMC, SGLD])
def test_the_nan_guard_hands_back_only_finite_draws(backend):
    """The step that overflows is not kept: every returned draw, and its log joint, is finite."""
    bnn, x, y = _problem()
    with pytest.raises(NonFiniteError) as err:
        backend(chains=2, lr=1e3, burn_in=0, draws=200, thin=1).fit(
            bnn, x, y, seed=0, progress=False
        )
    post = err.value.posterior
    assert post.num_draws >= 1  # the guard tripped after some draws were kept
    assert torch.isfinite(post.theta).all()
    lp = bnn.log_joint(post.theta.reshape(-1, bnn.num_params), x, y)
    assert torch.isfinite(lp).all()
    for name, values in post.sample_stats.items():
        assert values.shape[:2] == post.theta.shape[:2], name


def test_ctrl_c_returns_a_partial_posterior():
    bnn, x, y = _problem()

    def stop(event: StepEvent) -> None:
        if event.stage == "sampling" and event.step == 5:
            raise KeyboardInterrupt

    with pytest.warns(RuntimeWarning, match="interrupted"):
        post = SGHMC(chains=2, lr=1e-4, burn_in=3, draws=10, thin=2).fit(
            bnn, x, y, seed=0, progress=False, callbacks=[stop]
        )
    assert post.partial and post.num_draws == 3  # sampling steps 1, 3, 5 completed


def test_settings_are_checked():
    with pytest.raises(ValueError, match="lr"):
        SGHMC(lr=0.0)
    with pytest.raises(ValueError, match="momentum_decay"):
        SGHMC(momentum_decay=0.0)
    with pytest.raises(ValueError, match="preconditioner"):
        SGHMC(preconditioner="rmsprop")
    with pytest.raises(ValueError, match="adaptive"):
        SGLD(preconditioner="adaptive")
    with pytest.raises(ValueError, match="schedule"):
        SGHMC(schedule=Constant(), burn_in=10)
    with pytest.raises(TypeError, match="schedule"):
        SGHMC(schedule="cyclical")
    bnn, x, y = _problem()
    with pytest.raises(ValueError, match="init_theta"):
        SGHMC(chains=2).fit(bnn, x, y, init_theta=torch.zeros(3, 2))


def test_default_learning_rate_scales_with_num_data_and_does_not_diverge_on_many_rows():
    from bayesdl.inference.sgmcmc.samplers import DEFAULT_LR_PER_DATUM

    n = 20_000
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, 10, generator=gen)
    y = torch.sin(x[:, 0]) + x[:, 1] + 0.3 * torch.randn(n, generator=gen)
    torch.manual_seed(0)
    bnn = BNN(MLP(10, [20], 1, "tanh"), priors.Gaussian(1.0), likelihoods.Gaussian(0.5))
    short = {"chains": 2, "batch_size": 32, "burn_in": 100, "draws": 5, "thin": 2}
    # the old fixed default lr=1e-4 diverges here: the gradient grows with num_data
    with pytest.raises(NonFiniteError):
        SGHMC(lr=1e-4, **short).fit(bnn, x, y, seed=0, progress=False)
    for sampler in (SGHMC(**short), SGLD(**short)):
        assert sampler.lr is None
        post = sampler.fit(bnn, x, y, seed=0, progress=False)
        assert post.theta.shape == (2, 5, bnn.num_params) and torch.isfinite(post.theta).all()
        assert post.attrs["lr"] == pytest.approx(DEFAULT_LR_PER_DATUM / n)
        torch.testing.assert_close(
            post.sample_stats["step_size"],
            torch.full((2, 5), DEFAULT_LR_PER_DATUM / n, dtype=torch.float64),
        )
    # an explicit lr is used as given
    post = SGLD(lr=1e-6, **short).fit(bnn, x, y, seed=0, progress=False)
    assert post.attrs["lr"] == 1e-6
