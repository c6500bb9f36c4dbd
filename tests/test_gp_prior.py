"""GP-matched functional priors: measurement sets, GP draws, families, critic, fit, GPMatched.

The expensive checks of the fit's quality (exact Wasserstein distance and Gram matrix after a
full fit) are in tests/statistical/test_gp_prior_statistical.py; here the machinery is tested
on small, fast fits.
"""

from __future__ import annotations

import itertools
import math
import pickle
import warnings

import gpytorch
import numpy as np
import pyro.distributions as dist
import pytest
import torch
from scipy import stats

from bayesdl import likelihoods, priors
from bayesdl.models import BNN, MLP
from bayesdl.priors import measurement
from bayesdl.priors.base import fan_in_of
from bayesdl.priors.functional import NonFinitePriorError, fit_gp_prior, prior_functions
from bayesdl.priors.gp import GPTarget, cholesky_with_jitter
from bayesdl.priors.gp_families import GaussianFamily, HierarchicalFamily, make_family
from bayesdl.priors.gp_matched import GPMatched
from bayesdl.priors.wasserstein import (
    Critic,
    CriticNetwork,
    CriticState,
    as_critic,
    dual_estimate,
    empirical_wasserstein,
    gradient_penalty,
)

#: A small, fast fit: the machinery runs end to end in about a second.
TINY = dict(steps=3, num_functions=16, critic={"steps": 4, "hidden": (16,)}, progress=False)


def _rbf(lengthscale: float = 1.0) -> gpytorch.kernels.Kernel:
    kernel = gpytorch.kernels.RBFKernel()
    kernel.lengthscale = lengthscale
    return kernel


def _net(out: int = 1, dtype=torch.float32) -> MLP:
    torch.manual_seed(0)
    return MLP(1, [8], out, activation="tanh").to(dtype)


# ------------------------------------------------------------------ measurement sets
def test_uniform_sampler_draws_in_the_box_reproducibly():
    sampler = measurement.uniform([-1.0, 0.0], [1.0, 5.0], 200)
    x = sampler(torch.Generator().manual_seed(3))
    assert x.shape == (200, 2) and x.dtype == torch.float64
    assert bool((x[:, 0] >= -1).all() and (x[:, 0] <= 1).all())
    assert bool((x[:, 1] >= 0).all() and (x[:, 1] <= 5).all())
    torch.testing.assert_close(x, sampler(torch.Generator().manual_seed(3)))
    assert not torch.equal(x, sampler(torch.Generator().manual_seed(4)))
    assert measurement.uniform(-2.0, [1.0, 2.0, 3.0], 5).dim == 3  # a number broadcasts


def test_grid_is_a_cartesian_product():
    x = measurement.grid(-6.0, 6.0, 200)
    assert x.shape == (200, 1)
    assert float(x[0, 0]) == -6.0 and float(x[-1, 0]) == 6.0
    x2 = measurement.grid([0.0, 10.0], [1.0, 20.0], 3)
    assert x2.shape == (9, 2)
    assert {tuple(r) for r in x2.tolist()} == set(
        itertools.product([0.0, 0.5, 1.0], [10.0, 15.0, 20.0])
    )


def test_from_data_mixes_training_rows_and_uniform_points():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(50, 3, generator=gen, dtype=torch.float64)
    sampler = measurement.from_data(x, 20, uniform_fraction=0.3)
    draw = sampler(torch.Generator().manual_seed(1))
    assert draw.shape == (20, 3)
    is_row = (draw[:, None, :] == x[None]).all(-1).any(-1)
    assert int(is_row.sum()) == 14  # 70% of 20 rows are training inputs, all distinct
    assert len({tuple(r) for r in draw[is_row].tolist()}) == 14
    uniform_rows = draw[~is_row]
    assert bool((uniform_rows >= x.min(0).values).all() and (uniform_rows <= x.max(0).values).all())
    assert int(measurement.from_data(x, 10, 0.0)(gen).eq(x[:, None]).all(-1).any(0).sum()) == 10
    with pytest.raises(ValueError, match="num_points"):
        measurement.from_data(x, 100, uniform_fraction=0.3)


@pytest.mark.parametrize(
    "make, arg, error",
    [
        (lambda: measurement.uniform(1.0, 0.0, 5), "high", ValueError),
        (lambda: measurement.uniform([0.0, 0.0], [1.0, 1.0, 1.0], 5), "high", ValueError),
        (lambda: measurement.uniform(0.0, float("nan"), 5), "high", ValueError),
        (lambda: measurement.uniform(0.0, 1.0, 0), "num_points", ValueError),
        (lambda: measurement.grid(0.0, 1.0, 1), "num_points", ValueError),
        (lambda: measurement.from_data(torch.zeros(5), 2), "x", ValueError),
        (lambda: measurement.from_data(torch.full((5, 1), math.nan), 2), "x", ValueError),
        (lambda: measurement.from_data(torch.zeros(5, 1), 2, 1.5), "uniform_fraction", ValueError),
        (lambda: measurement.draw("grid", torch.Generator()), "measurement", TypeError),
        (lambda: measurement.draw(torch.zeros(5), torch.Generator()), "measurement", ValueError),
        (lambda: measurement.draw(lambda g: [1.0], torch.Generator()), "measurement", TypeError),
    ],
)
def test_measurement_errors_name_the_argument(make, arg, error):
    with pytest.raises(error, match=arg):
        make()


# ------------------------------------------------------------------ GP function draws
def _cov_z_scores(draws: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
    """|sample cov - cov| / its standard error sqrt((S_ii S_jj + S_ij^2) / n) (Gaussian draws)."""
    n = draws.shape[0]
    sample = torch.cov(draws.T, correction=0)
    se = torch.sqrt((torch.outer(cov.diag(), cov.diag()) + cov**2) / n)
    return (sample - cov).abs() / se


def test_gp_draws_have_the_kernel_covariance(seed):
    kernel = gpytorch.kernels.ScaleKernel(
        _rbf(0.7) + gpytorch.kernels.PeriodicKernel(period_length_prior=None)
    )
    kernel.outputscale = 2.0
    target = GPTarget(kernel)
    assert not target.hierarchical
    x = torch.linspace(-2, 2, 5, dtype=torch.float64)[:, None]
    torch.manual_seed(seed)
    draws = target.sample(x, 20000)
    assert draws.shape == (20000, 5) and draws.dtype == torch.float64
    _, cov = target.moments(x)
    torch.testing.assert_close(cov, kernel.double()(x, x).to_dense().detach())
    assert float(_cov_z_scores(draws, cov).max()) < 4.5
    # the mean of each coordinate within 4.5 standard errors of 0
    assert bool((draws.mean(0).abs() < 4.5 * cov.diag().sqrt() / math.sqrt(20000)).all())


def test_gp_mean_function_shifts_the_draws(seed):
    mean = gpytorch.means.ConstantMean()
    mean.constant = 2.0
    target = GPTarget(_rbf(), mean)
    torch.manual_seed(seed)
    draws = target.sample(torch.zeros(1, 1), 4000)[:, 0]
    assert abs(float(draws.mean()) - 2.0) < 4.5 / math.sqrt(4000)


def test_hierarchical_gp_resamples_hyperparameters_per_function(seed):
    """outputscale s ~ Gamma(a, b): f(x) | s ~ N(0, s), so E[f^2] = a / b and
    Var[f^2] = E[f^4] - E[f^2]^2 = 3 a (a + 1) / b^2 - (a / b)^2."""
    a, b = 3.0, 2.0
    kernel = gpytorch.kernels.ScaleKernel(
        gpytorch.kernels.RBFKernel(
            ard_num_dims=2, lengthscale_prior=gpytorch.priors.LogNormalPrior(0.0, 0.5)
        ),
        outputscale_prior=gpytorch.priors.GammaPrior(a, b),
    )
    target = GPTarget(kernel)
    assert target.hierarchical
    n = 20000
    torch.manual_seed(seed)
    draws = target.sample(torch.randn(4, 2, dtype=torch.float64), n)
    assert draws.shape == (n, 4)
    second = draws[:, 0] ** 2
    var = 3 * a * (a + 1) / b**2 - (a / b) ** 2
    assert abs(float(second.mean()) - a / b) < 4 * math.sqrt(var / n)
    # a fixed outputscale would give Gaussian marginals (kurtosis 3); the Gamma mixture has
    # kurtosis 3 E[s^2] / E[s]^2 = 3 (a + 1) / a = 4: the hyperparameters vary per function
    kurtosis = float((draws[:, 0] ** 4).mean() / second.mean() ** 2)
    assert kurtosis > 3.5


def test_cholesky_jitter_grows_until_the_factorisation_succeeds():
    x = torch.zeros(6, 1, dtype=torch.float64)  # six copies of one input: a rank-1 Gram matrix
    target = GPTarget(_rbf())
    draws = target.sample(x, 100)
    assert bool(torch.isfinite(draws).all())
    torch.testing.assert_close(draws, draws[:, :1].expand_as(draws), atol=1e-2, rtol=0)
    gram = torch.ones(2, 6, 6, dtype=torch.float64)
    gram[0] = torch.eye(6, dtype=torch.float64)  # already positive definite: no jitter
    factor = cholesky_with_jitter(gram)
    torch.testing.assert_close(factor[0], torch.eye(6, dtype=torch.float64))
    reconstructed = factor[1] @ factor[1].T
    assert 0 < float((reconstructed - gram[1]).diagonal().max()) < 1e-3
    with pytest.raises(ValueError, match="kernel"):
        cholesky_with_jitter(-torch.eye(3, dtype=torch.float64))


def test_gp_target_rejects_non_gpytorch_modules():
    with pytest.raises(TypeError, match="kernel"):
        GPTarget("rbf")
    with pytest.raises(TypeError, match="mean"):
        GPTarget(_rbf(), mean=torch.nn.Linear(1, 1))


# ------------------------------------------------------------------ weight-prior families
def _set_family(family, seed):
    gen = torch.Generator().manual_seed(seed)
    values = {}
    for name, shape in family.shapes.items():
        if family.family == "hierarchical":
            entry = {
                "concentration": 2.0 + torch.rand((), generator=gen, dtype=torch.float64),
                "rate": 0.5 + torch.rand((), generator=gen, dtype=torch.float64),
            }
        else:
            size = shape if family.per == "parameter" else ()
            entry = {"scale": 0.3 + torch.rand(size, generator=gen, dtype=torch.float64)}
        values[name] = entry
    family.load_values(values)
    return values


def _sample_prior(prior: GPMatched, net: torch.nn.Module, n: int) -> dict[str, torch.Tensor]:
    """``n`` draws of every parameter from the prior's Pyro distributions (latents first), the
    densities ``bnn.model`` and ``bnn.log_joint`` use (vectorised over draws)."""
    modules = dict(net.named_modules())
    draws = {}
    for name, param in net.named_parameters():
        module = modules[name.rsplit(".", 1)[0]]
        sites = prior.latent_sites(name, param, module)
        latents = {site: d.sample((n,)) for site, d in sites.items()}
        d = prior.distribution(name, param, module, latents)
        draws[name] = d.sample() if latents else d.sample((n,))
    return draws


@pytest.mark.parametrize("kind", ["gaussian-layer", "gaussian-parameter", "hierarchical"])
def test_family_draws_have_the_density_of_the_prior_the_bnn_uses(kind, seed):
    """The prior that is fitted (reparameterised draws) is the prior that is used (GPMatched's
    distributions; their agreement with the BNN is test_log_joint_matches_pyro_model below):
    two-sample KS tests per parameter tensor, on its first entry."""
    family_name, _, per = kind.partition("-")
    net = _net(out=2)
    family = make_family(net, family_name, per or "layer")
    values = _set_family(family, seed)
    for name, entry in values.items():  # values() inverts load_values
        for key, value in entry.items():
            torch.testing.assert_close(family.values()[name][key], value, rtol=1e-5, atol=1e-6)
    prior = GPMatched(family.family, family.values(), family.shapes, per=family.per)
    n = 4000
    torch.manual_seed(seed)
    from_prior = _sample_prior(prior, net, n)
    with torch.no_grad():
        reparameterised = family.rsample(n)
    for name in family.shapes:
        a = from_prior[name].reshape(n, -1)[:, 0].numpy()
        b = reparameterised[name].reshape(n, -1)[:, 0].numpy()
        assert stats.ks_2samp(a, b).pvalue > 1e-3, name
    # and the test can fail: a 50% wider scale is detected
    a = from_prior["layers.1.weight"].reshape(n, -1)[:, 0].numpy()
    b = 1.5 * reparameterised["layers.1.weight"].reshape(n, -1)[:, 0].numpy()
    assert stats.ks_2samp(a, b).pvalue < 1e-3


@pytest.mark.parametrize("family", ["gaussian", "hierarchical"])
def test_family_draws_are_differentiable_in_the_hyperparameters(family):
    fam = make_family(_net(), family, "layer")
    torch.manual_seed(0)
    f = prior_functions(_net(), fam.rsample(32), torch.linspace(-1, 1, 5)[:, None])
    f.square().mean().backward()
    grads = [p.grad for p in fam.parameters()]
    assert all(g is not None and bool(torch.isfinite(g).all()) for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


def test_family_initial_scales():
    net = _net()
    family = GaussianFamily(net, "layer", init_scale={n: 2.0 for n, _ in net.named_parameters()})
    assert all(float(v["scale"]) == pytest.approx(2.0) for v in family.values().values())
    hier = HierarchicalFamily(net, init_scale=1.5)
    for entry in hier.values().values():  # E[sigma^2] = b / (a - 1) = init_scale^2
        assert float(entry["rate"] / (entry["concentration"] - 1)) == pytest.approx(2.25)
    with pytest.raises(ValueError, match="init_scale"):
        GaussianFamily(net, "layer", init_scale={"layers.0.weight": 1.0})
    with pytest.raises(ValueError, match="init_scale"):
        GaussianFamily(net, "layer", init_scale=-1.0)


def test_family_argument_errors():
    with pytest.raises(ValueError, match="family"):
        make_family(_net(), "flow", "layer")
    with pytest.raises(ValueError, match="per"):
        make_family(_net(), "gaussian", "unit")
    with pytest.raises(ValueError, match="per"):
        make_family(_net(), "hierarchical", "parameter")


def test_prior_functions_lay_out_one_row_per_output():
    net = _net(out=3)
    gen = torch.Generator().manual_seed(0)
    weights = {n: torch.randn(4, *p.shape, generator=gen) for n, p in net.named_parameters()}
    x = torch.linspace(-1, 1, 7)[:, None]
    f = prior_functions(net, weights, x)
    assert f.shape == (12, 7)
    second = {n: w[1] for n, w in weights.items()}
    direct = torch.func.functional_call(net, second, (x,))  # (7, 3)
    torch.testing.assert_close(f[3:6], direct.T)


# ------------------------------------------------------------------ critic and distances
def test_empirical_wasserstein_golden_values(seed):
    # a translation by 0.5 on the line: W1 = 0.5 whatever the order of the points
    a = torch.tensor([[0.0], [1.0], [2.0]])
    assert empirical_wasserstein(a, a[[2, 0, 1]] + 0.5) == pytest.approx(0.5)
    # two points moved up by 1 in the plane: W1 = 1
    b = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    assert empirical_wasserstein(b, b.flip(0) + torch.tensor([0.0, 1.0])) == pytest.approx(1.0)
    # brute force over all 6! couplings of random points
    gen = torch.Generator().manual_seed(seed)
    p, q = torch.randn(6, 3, generator=gen), torch.randn(6, 3, generator=gen)
    cost = torch.cdist(p.double(), q.double())
    best = min(
        float(cost[range(6), list(perm)].mean()) for perm in itertools.permutations(range(6))
    )
    assert empirical_wasserstein(p, q) == pytest.approx(best)
    with pytest.raises(ValueError, match="b"):
        empirical_wasserstein(p, q[:5])


@pytest.mark.parametrize("hidden", [(7,), (5, 6, 4)])
def test_critic_input_gradient_matches_autograd(hidden, seed):
    torch.manual_seed(seed)
    network = CriticNetwork(3, hidden, torch.float64)
    x = torch.randn(10, 3, dtype=torch.float64, requires_grad=True)
    values, grad = network.values_and_input_grad(x, 4)
    torch.testing.assert_close(values, network(x))
    (reference,) = torch.autograd.grad(network(x)[-4:].sum(), x)
    torch.testing.assert_close(grad, reference[-4:])


def _shifted_gaussians(n: int, shift: float, seed: int, dim: int = 4):
    gen = torch.Generator().manual_seed(seed)
    direction = torch.zeros(dim)
    direction[0] = shift
    return torch.randn(n, dim, generator=gen), torch.randn(n, dim, generator=gen) + direction


def test_critic_estimates_a_known_distance_and_is_near_1_lipschitz(seed):
    """N(0, I) vs N(delta, I): W1 = |delta| (the optimal critic is the projection on delta).

    On fresh samples, the dual estimate of an L-Lipschitz critic is at most L W1, up to Monte
    Carlo error; a well-trained critic captures most of W1. The gradient norm at interpolates,
    which the penalty pushes to 1, is measured with autograd (not the critic's closed form).
    """
    torch.manual_seed(seed)
    shift = 1.5
    train_p, train_q = _shifted_gaussians(256, shift, seed)
    fit = Critic(steps=150, hidden=(32,), threshold=None).fit(train_p, train_q)
    assert fit.steps == 150
    test_p, test_q = _shifted_gaussians(4096, shift, seed + 1)
    with torch.no_grad():
        phi_p, phi_q = fit.network(test_p), fit.network(test_q)
    estimate = float(phi_p.mean() - phi_q.mean())
    se = math.sqrt(float(phi_p.var() + phi_q.var()) / 4096)
    assert float(dual_estimate(fit.network, test_p, test_q)) == pytest.approx(estimate, rel=1e-5)
    _, norms = gradient_penalty(fit.network, test_p, test_q)
    norms = norms.detach()
    assert abs(float(norms.mean()) - 1) < 0.1
    assert estimate < float(norms.max()) * shift + 4 * se
    assert estimate > 0.9 * shift - 4 * se
    # the check can fail: a critic trained with a negligible penalty is not 1-Lipschitz
    loose = Critic(steps=150, hidden=(32,), threshold=None, penalty=1e-3)
    _, loose_norms = gradient_penalty(loose.fit(train_p, train_q).network, test_p, test_q)
    assert abs(float(loose_norms.detach().mean()) - 1) > 0.5


def test_critic_stops_early_below_the_threshold(seed):
    torch.manual_seed(seed)
    p, q = _shifted_gaussians(64, 1.0, seed)
    fit = Critic(steps=50, hidden=(8,), threshold=1e6).fit(p, q)
    assert fit.steps == 1
    assert 0 < fit.grad_norm < math.inf


@pytest.mark.parametrize(
    "settings, arg, error",
    [
        ({"hidden": 200}, "critic.hidden", TypeError),
        ({"hidden": (0,)}, r"critic.hidden\[0\]", ValueError),
        ({"steps": 0}, "critic.steps", ValueError),
        ({"lr": -1.0}, "critic.lr", ValueError),
        ({"penalty": 0.0}, "critic.penalty", ValueError),
        ({"constraint": "clip"}, "critic.constraint", ValueError),
        ({"threshold": -0.1}, "critic.threshold", ValueError),
        ({"width": 3}, "critic", ValueError),
    ],
)
def test_critic_settings_errors(settings, arg, error):
    with pytest.raises(error, match=arg):
        as_critic(settings)


def test_one_sided_penalty_ignores_small_gradients():
    critic = CriticNetwork(2, (4,), torch.float64)
    with torch.no_grad():
        for p in critic.parameters():
            p.mul_(1e-3)  # a nearly flat critic: gradient norms far below 1
    a, b = torch.randn(8, 2, dtype=torch.float64), torch.randn(8, 2, dtype=torch.float64)
    two_sided, norms = gradient_penalty(critic, a, b, "gp")
    one_sided, _ = gradient_penalty(critic, a, b, "lp")
    assert float(norms.detach().max()) < 1e-3
    assert float(two_sided.detach()) == pytest.approx(1.0, abs=1e-2)
    assert float(one_sided.detach()) == 0.0


# ------------------------------------------------------------------ the GPMatched prior
@pytest.mark.parametrize("kind", ["gaussian-layer", "gaussian-parameter", "hierarchical"])
def test_log_joint_matches_pyro_model(kind, seed, pyro_log_joint):
    family_name, _, per = kind.partition("-")
    torch.manual_seed(seed)
    net = MLP(3, [4], 2, activation="tanh").double()
    family = make_family(net, family_name, per or "layer")
    _set_family(family, seed)
    prior = GPMatched(family.family, family.values(), family.shapes, per=family.per)
    noise = likelihoods.Gaussian(dist.HalfNormal(torch.tensor(1.0, dtype=torch.float64)))
    bnn = BNN(net, prior, noise, temperature=0.7)
    if family_name == "hierarchical":
        assert "layers.0.weight_scale" in bnn.layout.names
    x = torch.randn(9, 3, dtype=torch.float64)
    y = torch.randn(9, 2, dtype=torch.float64)
    theta = 0.7 * torch.randn(5, bnn.num_params, dtype=torch.float64)
    ours = bnn.log_joint(theta, x, y, num_data=30)
    torch.testing.assert_close(ours, pyro_log_joint(bnn, theta, (x, y, 30)), rtol=1e-6, atol=1e-6)


def test_gaussian_gp_matched_density_is_the_fan_in_scaled_normal():
    net = MLP(3, [4], 1).double()
    values = {
        n: {"scale": torch.tensor(0.5 + i)} for i, (n, _) in enumerate(net.named_parameters())
    }
    prior = GPMatched("gaussian", values, {n: p.shape for n, p in net.named_parameters()})
    bnn = BNN(net, prior, likelihoods.Gaussian(1.0))
    theta = torch.randn(2, bnn.num_params, dtype=torch.float64)
    expected = 0.0
    for i, (name, param) in enumerate(net.named_parameters()):
        w = bnn.unravel(theta)[name].reshape(2, -1)
        sd = (0.5 + i) / math.sqrt(fan_in_of(param))
        expected = expected + torch.distributions.Normal(0.0, sd).log_prob(w).sum(-1)
    torch.testing.assert_close(bnn.log_prior(theta), expected)
    assert prior.scales()["layers.0.weight"] == pytest.approx(0.5 / math.sqrt(3))


def test_gp_matched_refuses_parameters_it_was_not_fitted_for():
    prior = fit_gp_prior(_net(), _rbf(), measurement.uniform(-1, 1, 8), seed=0, **TINY)
    with pytest.raises(ValueError, match=r"layers\.0\.weight"):
        BNN(MLP(2, [8], 1), prior, likelihoods.Gaussian(1.0))  # same names, other shape
    with pytest.raises(ValueError, match="weight"):
        BNN(torch.nn.Linear(1, 1), prior, likelihoods.Gaussian(1.0))  # other names


@pytest.mark.parametrize(
    "kwargs, arg",
    [
        (dict(family="flow"), "family"),
        (dict(per="unit"), "per"),
        (dict(family="hierarchical", per="parameter"), "per"),
        (dict(values={"layers.0.weight": {"scale": torch.tensor(1.0)}}), "values"),
        (dict(values={"w": {"rate": torch.tensor(1.0)}}), r"values\['w'\]"),
        (dict(values={"w": {"scale": torch.tensor(-1.0)}}), r"values\['w'\]\['scale'\]"),
        (dict(values={"w": {"scale": torch.ones(3)}}), r"values\['w'\]\['scale'\]"),
    ],
)
def test_gp_matched_construction_errors(kwargs, arg):
    args = dict(family="gaussian", values={"w": {"scale": torch.tensor(1.0)}}, shapes={"w": (2,)})
    args.update(kwargs)
    with pytest.raises(ValueError, match=arg):
        GPMatched(args.pop("family"), args.pop("values"), args.pop("shapes"), **args)


# ------------------------------------------------------------------ fitting
def test_fit_records_its_history_and_report(tmp_path):
    prior = fit_gp_prior(_net(), _rbf(), measurement.uniform(-2, 2, 8), seed=1, **TINY)
    history = prior.history
    assert not prior.partial and history.steps_run == 3
    assert history.distance.shape == history.grad_norm.shape == history.critic_steps.shape == (3,)
    assert bool((history.critic_steps <= 4).all() and (history.critic_steps >= 1).all())
    assert set(history.exact) == {"before", "after", "gp_vs_gp"}
    assert history.display["x"].shape == (8, 1)
    assert history.display["gp"].shape == (20, 8)
    report = prior.report(num_functions=5)
    np.testing.assert_allclose(report.distance, history.distance.numpy())
    assert len(report.figure.axes) == 4
    assert report.summary["steps_run"] == 3 and report.summary["family"] == "gaussian"
    report.figure.savefig(tmp_path / "report.png")
    assert "GPMatched(family='gaussian'" in repr(prior)


def test_same_seed_same_fit_and_global_rng_untouched():
    kwargs = dict(seed=7, **TINY)
    state = torch.get_rng_state()
    first = fit_gp_prior(_net(), _rbf(), measurement.uniform(-2, 2, 8), **kwargs)
    assert torch.equal(state, torch.get_rng_state())
    second = fit_gp_prior(_net(), _rbf(), measurement.uniform(-2, 2, 8), **kwargs)
    torch.testing.assert_close(first.history.distance, second.history.distance, rtol=0, atol=0)
    for name, entry in first.values.items():
        torch.testing.assert_close(entry["scale"], second.values[name]["scale"], rtol=0, atol=0)
    other = fit_gp_prior(_net(), _rbf(), measurement.uniform(-2, 2, 8), **{**kwargs, "seed": 8})
    assert not torch.equal(first.history.distance, other.history.distance)


def test_hierarchical_fit_on_a_fixed_grid_and_a_multi_output_net():
    prior = fit_gp_prior(
        _net(out=3), _rbf(), measurement.grid(-2, 2, 10), family="hierarchical", seed=0, **TINY
    )
    assert prior.family == "hierarchical" and prior.history.settings["outputs"] == 3
    bnn = BNN(_net(out=3), prior, likelihoods.Gaussian(1.0))
    assert "layers.1.bias_scale" in bnn.layout.names
    assert bool(torch.isfinite(bnn.log_prior(bnn.init_theta(4, seed=0))).all())


def test_fit_with_a_hierarchical_gp_and_a_custom_sampler():
    kernel = gpytorch.kernels.ScaleKernel(
        gpytorch.kernels.RBFKernel(lengthscale_prior=gpytorch.priors.LogNormalPrior(0.0, 1.0)),
        outputscale_prior=gpytorch.priors.LogNormalPrior(0.1, 1.0),
    )

    def sampler(generator):
        return 4 * torch.rand(6, 1, generator=generator) - 2

    prior = fit_gp_prior(_net(), kernel, sampler, per="parameter", seed=0, **TINY)
    assert prior.per == "parameter"
    assert prior.values["layers.0.weight"]["scale"].shape == (8, 1)


def test_interrupt_returns_the_prior_fitted_so_far():
    def stop_after_two(event):
        if event.step == 1:
            raise KeyboardInterrupt

    with pytest.warns(RuntimeWarning, match="interrupted"):
        prior = fit_gp_prior(
            _net(),
            _rbf(),
            measurement.uniform(-1, 1, 8),
            seed=0,
            callbacks=[stop_after_two],
            **{**TINY, "steps": 10},
        )
    assert prior.partial and prior.history.steps_run == 2
    assert "(partial)" in prior.report().figure.texts[0].get_text()


def test_non_finite_fit_raises_with_the_last_finite_prior():
    class Broken(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(1, 1)

        def forward(self, x):
            return torch.log(self.linear(x) - 1e6)  # NaN everywhere

    with pytest.raises(NonFinitePriorError, match="non-finite") as info:
        fit_gp_prior(Broken(), _rbf(), measurement.uniform(-1, 1, 4), seed=0, **TINY)
    assert info.value.prior.history.steps_run == 0
    assert float(info.value.prior.values["linear.weight"]["scale"]) == pytest.approx(1.0)


@pytest.mark.parametrize(
    "kwargs, arg, error",
    [
        (dict(net="mlp"), "net", TypeError),
        (dict(kernel="rbf"), "kernel", TypeError),
        (dict(mean=3.0), "mean", TypeError),
        (dict(measurement=torch.zeros(4, 2)), "measurement", ValueError),
        (dict(measurement=torch.full((4, 1), math.nan)), "measurement", ValueError),
        (dict(measurement=[0.0, 1.0]), "measurement", TypeError),
        (dict(steps=0), "steps", ValueError),
        (dict(num_functions=1), "num_functions", ValueError),
        (dict(lr=-0.1), "lr", ValueError),
        (dict(family="flow"), "family", ValueError),
        (dict(per="unit"), "per", ValueError),
        (dict(critic={"steps": 0}), "critic.steps", ValueError),
        (dict(critic="big"), "critic", TypeError),
        (dict(seed=-1), "seed", ValueError),
        (dict(init_scale=0.0), "init_scale", ValueError),
        (dict(progress="yes"), "progress", TypeError),
        (dict(callbacks=[3]), "callbacks", TypeError),
    ],
)
def test_fit_argument_errors_name_the_argument(kwargs, arg, error):
    args = dict(net=_net(), kernel=_rbf(), measurement=measurement.uniform(-1, 1, 4), **TINY)
    args.update(kwargs)
    with pytest.raises(error, match=arg):
        fit_gp_prior(**args)


# ------------------------------------------------------------------ persistence
def test_save_load_and_pickle_round_trip(tmp_path):
    prior = fit_gp_prior(
        _net(), _rbf(), measurement.uniform(-1, 1, 8), family="hierarchical", seed=3, **TINY
    )
    path = tmp_path / "prior.pt"
    prior.save(path)
    loaded = GPMatched.load(path)
    unpickled = pickle.loads(pickle.dumps(prior))
    for other in (loaded, unpickled):
        assert (other.family, other.per, other.partial) == (prior.family, prior.per, False)
        assert other.shapes == prior.shapes
        for name, entry in prior.values.items():
            for key, value in entry.items():
                torch.testing.assert_close(other.values[name][key], value, rtol=0, atol=0)
        torch.testing.assert_close(other.history.distance, prior.history.distance)
        assert other.history.exact == prior.history.exact
        assert other.history.settings == prior.history.settings
    net = _net()
    original = BNN(net, prior, likelihoods.Gaussian(1.0))
    restored = BNN(net, loaded, likelihoods.Gaussian(1.0))
    theta = original.init_theta(3, seed=0)
    torch.testing.assert_close(original.log_prior(theta), restored.log_prior(theta))
    torch.save({"format": "something else"}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="path"):
        GPMatched.load(tmp_path / "other.pt")


def test_fitted_prior_works_with_other_priors_in_a_select_rule():
    prior = fit_gp_prior(_net(), _rbf(), measurement.uniform(-1, 1, 8), seed=0, **TINY)
    rule = priors.Select({"layers.1.*": priors.Laplace(1.0)}, default=prior)
    bnn = BNN(_net(), rule, likelihoods.Gaussian(1.0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert bool(torch.isfinite(bnn.log_prior(bnn.init_theta(2, seed=0))).all())


# ------------------------------------------------------------------ issue 13: fit options
SOFTPLUS_1 = math.log1p(math.e)  # softplus(1) = 1.3133, Tran et al.'s starting scale
SOFTPLUS_3 = math.log1p(math.e**3)  # softplus(3) = 3.0486, their hierarchical start


def test_parameterisations_start_where_their_defaults_say():
    net = _net()
    soft = GaussianFamily(net, parameterisation="softplus")
    assert all(
        float(v["scale"]) == pytest.approx(SOFTPLUS_1, abs=1e-6) for v in soft.values().values()
    )
    assert all(float(r.detach()) == pytest.approx(1.0, abs=1e-6) for r in soft.raw_scale.values())
    log = GaussianFamily(net, parameterisation="log")
    assert all(float(v["scale"]) == pytest.approx(1.0, abs=1e-6) for v in log.values().values())
    hier = HierarchicalFamily(net, parameterisation="softplus")
    for entry in hier.values().values():
        assert float(entry["concentration"]) == pytest.approx(SOFTPLUS_3, abs=1e-5)
        assert float(entry["rate"]) == pytest.approx(SOFTPLUS_3, abs=1e-5)
    # an explicit start means the same scale in both parameterisations
    for parameterisation in ("softplus", "log"):
        family = GaussianFamily(net, init_scale=0.05, parameterisation=parameterisation)
        assert all(
            float(v["scale"]) == pytest.approx(0.05, rel=1e-6) for v in family.values().values()
        )


@pytest.mark.parametrize("family", ["gaussian", "hierarchical"])
def test_values_round_trip_through_either_parameterisation(family):
    source = make_family(_net(), family, "layer", 0.7, "log")
    values = {n: {k: v * 1.9 for k, v in e.items()} for n, e in source.values().items()}
    target = make_family(_net(), family, "layer", None, "softplus")
    target.load_values(values)
    for name, entry in target.values().items():
        for key, value in entry.items():
            torch.testing.assert_close(value, values[name][key], rtol=1e-6, atol=0)


def test_softplus_steps_move_a_scale_additively_and_log_steps_multiplicatively():
    """d sigma / d raw is sigmoid(raw) < 1 for softplus and sigma for log: after the same raw
    step the softplus scale moves by at most the step, the log scale by a factor e^step."""
    step = 0.5
    for parameterisation in ("softplus", "log"):
        family = GaussianFamily(_net(), init_scale=4.0, parameterisation=parameterisation)
        before = family.values()
        with torch.no_grad():
            for raw in family.raw_scale.values():
                raw += step
        for name, entry in family.values().items():
            old, new = float(before[name]["scale"]), float(entry["scale"])
            if parameterisation == "softplus":
                assert 0 < new - old <= step
            else:
                assert new / old == pytest.approx(math.exp(step), rel=1e-5)


@pytest.mark.parametrize("parameterisation", ["softplus", "log"])
@pytest.mark.parametrize("family", ["gaussian", "hierarchical"])
def test_scale_bound_is_respected(family, parameterisation):
    """A GP with variance 100 pulls every scale up; the bound holds after every step, and the
    same fit without a bound exceeds it (so this test can fail)."""
    kernel = gpytorch.kernels.ScaleKernel(_rbf())
    kernel.outputscale = 100.0
    bound = 1.2
    common = dict(
        family=family,
        parameterisation=parameterisation,
        init_scale=1.0,
        seed=0,
        lr=0.1,
        steps=10,
        num_functions=16,
        critic={"steps": 4, "hidden": (16,)},
        progress=False,
    )
    seen = []

    def record(event):
        seen.append(event.step)

    bounded = fit_gp_prior(
        _net(),
        kernel,
        measurement.uniform(-2, 2, 8),
        max_scale=bound,
        callbacks=[record],
        **common,
    )
    free = fit_gp_prior(_net(), kernel, measurement.uniform(-2, 2, 8), **common)
    fan_in = {n: fan_in_of(p) for n, p in _net().named_parameters()}
    bounded_sigma = {n: float(s) * math.sqrt(fan_in[n]) for n, s in bounded.scales().items()}
    free_sigma = {n: float(s) * math.sqrt(fan_in[n]) for n, s in free.scales().items()}
    assert len(seen) == 10
    assert all(s <= bound * (1 + 1e-5) for s in bounded_sigma.values()), bounded_sigma
    assert max(free_sigma.values()) > bound * 1.1, free_sigma
    assert bounded.history.settings["max_scale"] == bound


def test_scale_bound_per_parameter_and_at_the_start():
    net = _net()
    bounds = {n: 0.5 if n.endswith("bias") else 3.0 for n, _ in net.named_parameters()}
    family = GaussianFamily(net, init_scale=2.0, parameterisation="softplus", max_scale=bounds)
    for name, entry in family.values().items():
        assert float(entry["scale"]) == pytest.approx(min(2.0, bounds[name]), rel=1e-6)
    hier = HierarchicalFamily(net, init_scale=2.0, max_scale=0.5)
    for entry in hier.values().values():  # sqrt(b / (a - 1)) <= 0.5
        a, b = float(entry["concentration"]), float(entry["rate"])
        assert math.sqrt(b / (a - 1)) == pytest.approx(0.5, rel=1e-6)


def test_warm_critic_state_keeps_network_and_optimiser():
    p, q = _shifted_gaussians(64, 1.0, 0)
    critic = Critic(steps=5, hidden=(8,), threshold=None, warm_start=True)
    state = CriticState()
    first = critic.fit(p, q, state)
    network, optimiser = state.network, state.optimiser
    assert first.network is network and first.steps == 5
    steps_before = optimiser.state[next(network.parameters())]["step"].item()
    second = critic.fit(p, q, state)
    assert second.network is network and state.optimiser is optimiser
    assert optimiser.state[next(network.parameters())]["step"].item() == steps_before + 5
    # another measurement-set size needs another critic
    critic.fit(p[:, :3], q[:, :3], state)
    assert state.network is not network and state.network.layers[0].in_features == 3
    with pytest.raises(TypeError, match="state"):
        critic.fit(p, q, state="warm")


def test_warm_critic_continues_where_a_fresh_one_restarts():
    """Two warm fits of 75 steps reach the estimate of one 150-step fit (the known distance,
    as in test_critic_estimates_a_known_distance...); a fresh second fit restarts from
    scratch and stays at its 75-step value."""
    train_p, train_q = _shifted_gaussians(512, 2.0, 0)
    torch.manual_seed(0)
    warm = Critic(steps=75, hidden=(32,), threshold=None, warm_start=True)
    state = CriticState()
    warm.fit(train_p, train_q, state)
    continued = warm.fit(train_p, train_q, state)
    torch.manual_seed(0)
    long = Critic(steps=150, hidden=(32,), threshold=None).fit(train_p, train_q)
    assert continued.estimate == pytest.approx(long.estimate, rel=0.05)


def test_fit_with_a_warm_critic_records_its_steps():
    prior = fit_gp_prior(
        _net(),
        _rbf(),
        measurement.uniform(-2, 2, 8),
        seed=0,
        **{**TINY, "critic": {"steps": 3, "hidden": (16,), "warm_start": True, "threshold": None}},
    )
    assert prior.history.critic_steps.tolist() == [3, 3, 3]
    shorthand = fit_gp_prior(
        _net(),
        _rbf(),
        measurement.uniform(-2, 2, 8),
        seed=0,
        critic_steps=2,
        **{**TINY, "critic": {"hidden": (16,), "threshold": None}},
    )
    assert shorthand.history.critic_steps.tolist() == [2, 2, 2]
    assert "warm_start" in prior.history.settings["critic"]


def test_softplus_hyperprior_draws_are_softplus_of_the_lognormal():
    """Tran et al.'s variance hyperprior: u = exp(z), z ~ N(0.1, 1), variance softplus(u).
    The median of softplus(u) is softplus(e^0.1) = 1.3937 (softplus is monotone), and no draw
    falls below softplus(0) = log 2. Under "value" the draws are u itself: median e^0.1 and
    a fraction Phi((log log 2 - 0.1) / 1) = 0.320 below log 2."""
    kernel = gpytorch.kernels.ScaleKernel(
        _rbf(), outputscale_prior=gpytorch.priors.LogNormalPrior(0.1, 1.0)
    )
    n = 4000
    sd = 0.5 / math.sqrt(n)  # binomial sd of the fraction below the true median
    median = math.log1p(math.exp(math.exp(0.1)))
    torch.manual_seed(0)
    soft = GPTarget(kernel, hyperprior_draws="softplus")._batched(n).covar_module.outputscale
    value = GPTarget(kernel)._batched(n).covar_module.outputscale
    assert float((soft < median).double().mean()) == pytest.approx(0.5, abs=4 * sd)
    assert float(soft.min()) >= math.log(2)
    below = float(stats.norm.cdf(math.log(math.log(2)) - 0.1))
    assert float((value < math.log(2)).double().mean()) == pytest.approx(
        below, abs=4 * math.sqrt(below * (1 - below) / n)
    )
    assert "softplus" in repr(GPTarget(kernel, hyperprior_draws="softplus"))


def test_from_data_box_spans_train_and_test_inputs_but_draws_training_rows():
    gen = torch.Generator().manual_seed(0)
    x_train = torch.rand(40, 2, generator=gen, dtype=torch.float64)  # in [0, 1]^2
    x_test = torch.tensor([[-3.0, 0.5], [0.5, 5.0]], dtype=torch.float64)
    sampler = measurement.from_data(x_train, 20, uniform_fraction=0.5, x_test=x_test)
    torch.testing.assert_close(
        sampler.low, torch.tensor([-3.0, float(x_train[:, 1].min())], dtype=torch.float64)
    )
    torch.testing.assert_close(
        sampler.high, torch.tensor([float(x_train[:, 0].max()), 5.0], dtype=torch.float64)
    )
    draws = torch.cat([sampler(gen) for _ in range(20)])
    is_train = (draws[:, None, :] == x_train[None]).all(-1).any(-1)
    assert int(is_train.sum()) == 20 * 10
    assert not bool((draws[:, None, :] == x_test[None]).all(-1).any())
    outside = ~((draws >= 0) & (draws <= 1)).all(-1)
    assert bool(outside.any())  # uniform points use the wider box
    with pytest.raises(ValueError, match="x_test"):
        measurement.from_data(x_train, 20, x_test=torch.zeros(3, 5))


@pytest.mark.parametrize(
    "kwargs, arg, error",
    [
        (dict(parameterisation="exp"), "parameterisation", ValueError),
        (dict(max_scale=0.0), "max_scale", ValueError),
        (dict(max_scale={"layers.0.weight": 1.0}), "max_scale", ValueError),
        (dict(critic_steps=0), "critic_steps", ValueError),
        (dict(hyperprior_draws="raw"), "hyperprior_draws", ValueError),
        (dict(critic={"warm_start": "yes"}), "critic.warm_start", TypeError),
    ],
)
def test_new_fit_argument_errors_name_the_argument(kwargs, arg, error):
    args = dict(net=_net(), kernel=_rbf(), measurement=measurement.uniform(-1, 1, 4), **TINY)
    args.update(kwargs)
    with pytest.raises(error, match=arg):
        fit_gp_prior(**args)


def test_final_distance_comes_with_its_standard_error():
    """``final_distance`` averages the last 10 training-time estimates, which scatter by about
    0.7 in the UCI setting: the standard error says how much two fits' values can differ by
    chance (energy split 0: 0.04 hierarchical vs 0.68 Gaussian, each +- 0.2)."""
    from bayesdl.priors.gp_matched import FitHistory

    net = _net()
    shapes = {n: tuple(p.shape) for n, p in net.named_parameters()}
    values = {n: {"scale": torch.tensor(1.0)} for n in shapes}
    trace = torch.tensor([5.0, 4.0, 1.2, -0.8, 0.3, 1.5, 0.1, 1.3, 0.8, -0.4, 0.9, 1.1])
    prior = GPMatched("gaussian", values, shapes, history=FitHistory(distance=trace.double()))
    last = trace[-10:].double().numpy()
    assert prior.final_distance == pytest.approx(last.mean())
    assert prior.final_distance_se == pytest.approx(last.std(ddof=1) / math.sqrt(10))
    assert prior.summary()["final_distance_se"] == prior.final_distance_se
    one = GPMatched("gaussian", values, shapes, history=FitHistory(distance=trace[:1].double()))
    assert math.isnan(one.final_distance_se)
    assert math.isnan(GPMatched("gaussian", values, shapes).final_distance_se)


def test_hierarchical_shape_below_one_gives_heavy_tailed_but_finite_draws():
    """The energy split 0 fit reached a = 0.63 on the input weights: E[sigma^2] is infinite
    (``scales()`` says so) and the scale draws are heavy-tailed (saturated tanh units), yet
    every weight draw and function value is finite: nothing non-finite hides in the fit."""
    net = _net()
    hier = HierarchicalFamily(net, parameterisation="softplus")
    fitted = {n: {"concentration": 3.7, "rate": 2.5} for n, _ in net.named_parameters()}
    fitted["layers.0.weight"] = {"concentration": 0.63, "rate": 5.6}
    hier.load_values({n: {k: torch.tensor(v) for k, v in e.items()} for n, e in fitted.items()})
    torch.manual_seed(0)
    draws = hier.rsample(4000)
    assert all(bool(torch.isfinite(w).all()) for w in draws.values())
    f = prior_functions(net, draws, torch.linspace(-2, 2, 5)[:, None])
    assert bool(torch.isfinite(f).all())
    prior = GPMatched(
        "hierarchical",
        {n: {k: torch.tensor(v) for k, v in e.items()} for n, e in fitted.items()},
        {n: tuple(p.shape) for n, p in net.named_parameters()},
    )
    assert math.isinf(float(prior.scales()["layers.0.weight"]))


def test_uci_target_kernel_is_the_papers_hierarchical_rbf_ard():
    from bayesdl.priors.gp import uci_target_kernel

    kernel = uci_target_kernel(8)
    torch.testing.assert_close(
        kernel.base_kernel.lengthscale, torch.full((1, 8), math.sqrt(16.0))
    )
    torch.testing.assert_close(kernel.outputscale, torch.tensor(1.0))
    priors_ = {name: prior for name, _, prior, _, _ in kernel.named_priors()}
    lengthscale_prior = priors_["base_kernel.lengthscale_prior"]
    torch.testing.assert_close(lengthscale_prior.loc, torch.tensor(math.log(math.sqrt(16.0))))
    torch.testing.assert_close(priors_["outputscale_prior"].loc, torch.tensor(0.1))
    with pytest.raises(ValueError, match="dim"):
        uci_target_kernel(0)
