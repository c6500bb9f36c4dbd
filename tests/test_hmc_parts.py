"""The pieces of the vectorised HMC engine: integrator, metric, adaptation, random streams."""

from __future__ import annotations

import math

import pytest
import torch

from bayesdl.inference import HMC, NUTS
from bayesdl.inference.gradients import value_and_grad
from bayesdl.inference.mcmc.adaptation import DualAveraging, Welford, find_step_size, mass_windows
from bayesdl.inference.mcmc.integrators import IntegratorState, leapfrog
from bayesdl.inference.mcmc.mass_matrix import Metric
from bayesdl.inference.rng import ChainRNG


def _gaussian_log_density_and_grad(scales: torch.Tensor):
    return value_and_grad(lambda theta: -0.5 * ((theta / scales) ** 2).sum(-1))


def test_mass_windows_follow_stans_schedule():
    # 1000 warmup: buffer 75, windows 25, 50, 100, 200, then the last stretches to 950
    assert mass_windows(1000) == [(75, 100), (100, 150), (150, 250), (250, 450), (450, 950)]
    # 150 = init + base + term buffers: Stan's normal layout, one window [75, 100)
    assert mass_windows(150) == [(75, 100)]
    # 100 < 150: buffers of 15% and 10%, one window filling the 75% between
    assert mass_windows(100) == [(15, 90)]
    assert mass_windows(10) == []


def test_dual_averaging_finds_the_step_size_of_a_known_acceptance_curve():
    # acceptance exp(-eps^2) per chain: the target 0.8 is met at eps* = sqrt(-log 0.8)
    adapter = DualAveraging.start(torch.tensor([0.01, 5.0]), target=0.8)
    eps = torch.tensor([0.01, 5.0], dtype=torch.float64)
    for _ in range(2000):
        eps = adapter.update(torch.exp(-(eps**2)))
    torch.testing.assert_close(
        adapter.final_step_size,
        torch.full((2,), math.sqrt(-math.log(0.8)), dtype=torch.float64),
        rtol=0.02,
        atol=0,
    )


@pytest.mark.parametrize("dense", [False, True])
def test_welford_matches_the_sample_covariance(dense):
    x = torch.randn(50, 3, 4, dtype=torch.float64)
    w = Welford.zeros(3, 4, dense, x)
    for row in x:
        w.update(row)
    n = 50
    for c in range(3):
        cov = torch.cov(x[:, c].T)
        shrunk = n / (n + 5) * cov + 1e-3 * 5 / (n + 5) * torch.eye(4, dtype=torch.float64)
        expected = shrunk if dense else shrunk.diagonal()
        torch.testing.assert_close(w.regularized()[c], expected)


@pytest.mark.parametrize("dense", [False, True])
def test_metric_momentum_has_covariance_m_and_kinetic_energy(dense):
    a = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
    inverse_mass = a[None] if dense else a.diagonal()[None]
    metric = Metric(inverse_mass)
    z = torch.randn(200_000, 2, dtype=torch.float64)
    metric_many = Metric(inverse_mass.expand(200_000, *inverse_mass.shape[1:]).contiguous())
    p = metric_many.sample_momentum(z)
    mass = torch.linalg.inv(a) if dense else torch.diag(1 / a.diagonal())
    # each entry of a sample covariance of n draws has sd sqrt((S_ii S_jj + S_ij^2) / n)
    se = torch.sqrt((torch.outer(mass.diagonal(), mass.diagonal()) + mass**2) / len(z))
    assert bool((abs(torch.cov(p.T) - mass) < 5 * se).all())
    v = metric.velocity(p[:1])
    expected_v = (a @ p[0]) if dense else a.diagonal() * p[0]
    torch.testing.assert_close(v[0], expected_v)
    torch.testing.assert_close(metric.kinetic_energy(p[:1])[0], 0.5 * p[0] @ expected_v)


def test_leapfrog_is_reversible_and_nearly_conserves_energy():
    scales = torch.tensor([1.0, 3.0], dtype=torch.float64)
    log_density_and_grad = _gaussian_log_density_and_grad(scales)
    metric = Metric.identity(2, 2, False, scales)
    q = torch.tensor([[0.3, -1.0], [1.0, 2.0]], dtype=torch.float64)
    p = torch.tensor([[1.0, 0.5], [-0.2, 0.1]], dtype=torch.float64)
    logp, grad = log_density_and_grad(q)
    state = IntegratorState(q, p, logp, grad)
    eps = torch.tensor([0.1, 0.05], dtype=torch.float64)
    h0 = -logp + metric.kinetic_energy(p)
    forward = state
    for _ in range(20):
        forward = leapfrog(forward, eps, metric, log_density_and_grad)
    h1 = -forward.log_density + metric.kinetic_energy(forward.momentum)
    assert bool((abs(h1 - h0) < 0.01).all())
    back = IntegratorState(forward.position, -forward.momentum, forward.log_density, forward.grad)
    for _ in range(20):
        back = leapfrog(back, eps, metric, log_density_and_grad)
    torch.testing.assert_close(back.position, q)
    torch.testing.assert_close(-back.momentum, p)
    # a chain with step size zero does not move
    still = leapfrog(
        state, torch.tensor([0.0, 0.1], dtype=torch.float64), metric, log_density_and_grad
    )
    torch.testing.assert_close(still.position[0], q[0])


def test_find_step_size_scales_with_the_target():
    scales = torch.tensor([[0.01], [1.0], [100.0]], dtype=torch.float64).expand(3, 2)
    log_density_and_grad = value_and_grad(lambda theta: -0.5 * ((theta / scales) ** 2).sum(-1))
    q = scales * 0.5
    logp, grad = log_density_and_grad(q)
    state = IntegratorState(q, torch.zeros_like(q), logp, grad)
    metric = Metric.identity(3, 2, False, q)
    rng = ChainRNG.from_seed(0, 3, dtype=torch.float64)
    eps = find_step_size(
        state, torch.ones(3, dtype=torch.float64), metric, log_density_and_grad, rng
    )
    ratio = eps / scales[:, 0]
    assert bool(((ratio > 0.1) & (ratio < 10)).all()), eps


def test_chain_rng_streams_are_per_chain():
    a = ChainRNG.from_seed([5, 6, 7], 3, dtype=torch.float64)
    b = ChainRNG.from_seed([6], 1, dtype=torch.float64)
    torch.testing.assert_close(a.normal(4)[1], b.normal(4)[0])
    torch.testing.assert_close(a.uniform(3)[1], b.uniform(3)[0])
    with pytest.raises(ValueError, match="seed"):
        ChainRNG.from_seed([1, 2], 3)
    assert not torch.equal(
        ChainRNG.from_seed(0, 2).normal(3)[0], ChainRNG.from_seed(1, 2).normal(3)[0]
    )


def test_sample_checks_its_arguments():
    nuts = NUTS(chains=2, warmup=1, draws=1)
    with pytest.raises(TypeError, match="log_density"):
        nuts.sample("f", torch.zeros(2, 3))
    with pytest.raises(ValueError, match="init_theta"):
        nuts.sample(lambda t: -t.pow(2).sum(-1), torch.zeros(3, 3))
    with pytest.raises(ValueError, match="log_density"):
        nuts.sample(lambda t: -t.pow(2).sum(), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="init_theta"):
        nuts.sample(lambda t: torch.log(t).sum(-1), -torch.ones(2, 3), progress=False)
    with pytest.raises(ValueError, match="engine"):
        NUTS(engine="pyro").sample(lambda t: -t.pow(2).sum(-1), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="num_steps, trajectory_length"):
        HMC(num_steps=5, trajectory_length=1.0)


def test_sample_returns_a_posterior_without_a_bnn():
    post = NUTS(chains=2, warmup=20, draws=10).sample(
        lambda t: -0.5 * t.pow(2).sum(-1), torch.zeros(2, 3), seed=0, progress=False
    )
    assert post.theta.shape == (2, 10, 3) and post.bnn is None
    assert set(post.sample_stats) == {
        "lp",
        "acceptance_rate",
        "step_size",
        "tree_depth",
        "n_steps",
        "diverging",
        "energy",
        "density_raised",
    }
    idata = post.to_arviz()
    assert idata.sample_stats["tree_depth"].shape == (2, 10)
    with pytest.raises(ValueError, match="no BNN"):
        post.predict(torch.zeros(1, 3))


def test_hmc_defaults_to_a_quarter_period_trajectory_and_fits_a_bnn():
    from bayesdl import likelihoods, priors
    from bayesdl.inference.mcmc.hmc import DEFAULT_TRAJECTORY_LENGTH
    from bayesdl.models import BNN, MLP

    hmc = HMC()
    assert hmc.num_steps is None and hmc.trajectory_length == DEFAULT_TRAJECTORY_LENGTH
    assert DEFAULT_TRAJECTORY_LENGTH == pytest.approx(math.pi / 2)
    # explicit settings still win
    assert HMC(num_steps=7).num_steps == 7 and HMC(num_steps=7).trajectory_length is None
    assert HMC(trajectory_length=2.0).trajectory_length == 2.0
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(40, 2, generator=gen)
    y = x[:, 0] + 0.1 * torch.randn(40, generator=gen)
    torch.manual_seed(0)
    bnn = BNN(MLP(2, [4], 1, "tanh"), priors.Gaussian(1.0), likelihoods.Gaussian(0.3))
    post = HMC(chains=2, warmup=15, draws=5).fit(bnn, x, y, seed=0, progress=False)
    assert post.theta.shape == (2, 5, bnn.num_params)
    assert torch.isfinite(post.theta).all()


@pytest.mark.parametrize("dense", [False, True])
def test_eager_leaves_with_python_indices_match_the_tensor_indexed_leaves_exactly(dense):
    # the eager transition calls nuts_leaf with Python slot indices and skips the U-turn checks
    # and checkpoint writes that cannot matter; the tensor-indexed leaves (what a compiled step
    # runs) do all of them: both must give the same draws, bit for bit
    from bayesdl.inference.mcmc.trajectory import nuts_leaves, nuts_transition

    torch.set_default_dtype(torch.float64)
    chains, dim = 5, 3
    a = torch.randn(dim, dim, generator=torch.Generator().manual_seed(1))
    precision = torch.linalg.inv(a @ a.T + 0.3 * torch.eye(dim))

    def log_density(theta):
        return -0.5 * ((theta @ precision) * theta).sum(-1)

    log_density_and_grad = value_and_grad(log_density)
    theta = torch.randn(chains, dim, generator=torch.Generator().manual_seed(2))
    inverse_mass = torch.linspace(0.5, 2.0, chains * dim).reshape(chains, dim)
    metric = Metric(torch.diag_embed(inverse_mass) if dense else inverse_mass)
    step_size = torch.linspace(0.05, 0.6, chains)  # trees from depth 1 to the cap
    results = []
    for leaves in (nuts_leaves, lambda *args: nuts_leaves(*args)):
        value, grad = log_density_and_grad(theta)
        state = IntegratorState(theta, torch.zeros_like(theta), value, grad)
        rng = ChainRNG.from_seed(0, chains, device=theta.device, dtype=theta.dtype)
        draws, infos = [], []
        for _ in range(30):
            state, info = nuts_transition(
                state, step_size, metric, log_density_and_grad, rng, max_tree_depth=6, leaves=leaves
            )
            draws.append(state.position)
            infos.append(info)
        results.append((torch.stack(draws), infos))
    (eager, eager_infos), (indexed, indexed_infos) = results
    assert max(int(i.tree_depth.max()) for i in eager_infos) >= 4
    assert torch.equal(eager, indexed)
    for e, i in zip(eager_infos, indexed_infos, strict=True):
        for field in ("acceptance_rate", "n_steps", "tree_depth", "diverging", "energy"):
            assert torch.equal(getattr(e, field), getattr(i, field)), field
