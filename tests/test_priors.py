"""Priors: construction checks, the selection rule, and log_joint == the Pyro model's log joint."""

from __future__ import annotations

import math

import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from scipy import stats

from bayesdl import likelihoods, priors
from bayesdl.models import BNN, MLP, ConvNet
from bayesdl.priors.correlated import matern


def _gp_matched_hierarchical() -> priors.GPMatched:
    """A hierarchical GP-matched prior for ``_mlp_bnn``'s MLP(3, [4], 2), with a shape ``a < 1``
    on the input weights as the energy fit reached (infinite prior mean variance)."""
    shapes = {
        "layers.0.weight": (4, 3),
        "layers.0.bias": (4,),
        "layers.1.weight": (2, 4),
        "layers.1.bias": (2,),
    }
    hyper = {
        "layers.0.weight": (0.63, 5.6),
        "layers.0.bias": (3.7, 2.5),
        "layers.1.weight": (2.8, 3.0),
        "layers.1.bias": (3.7, 2.0),
    }
    values = {
        name: {"concentration": torch.tensor(a), "rate": torch.tensor(b)}
        for name, (a, b) in hyper.items()
    }
    return priors.GPMatched("hierarchical", values, shapes)


PRIORS = {
    "gaussian": priors.Gaussian(1.3),
    "gaussian_fan_in": priors.Gaussian(math.sqrt(2), fan_in=True),
    "laplace": priors.Laplace(0.7, fan_in=True),
    "student_t": priors.StudentT(df=3.0, scale=0.8),
    "cauchy": priors.Cauchy(0.5),
    "scale_mixture": priors.ScaleMixture(scales=(0.1, 1.0, 4.0), weights=(0.5, 0.3, 0.2)),
    "inverse_gamma_scale": priors.InverseGammaScale(concentration=2.0, rate=1.5, fan_in=True),
    "horseshoe": priors.Horseshoe(global_scale=0.5),
    "gp_matched_hierarchical": _gp_matched_hierarchical(),
    "mixed": priors.Select(
        {"layers.0.weight": priors.InverseGammaScale(concentration=2.0, rate=1.5)},
        default=priors.Gaussian(0.9),
        bias=priors.Laplace(0.6),
    ),
}


def _mlp_bnn(prior, likelihood=None, **kwargs) -> BNN:
    torch.manual_seed(0)
    net = MLP(3, [4], 2, activation="tanh").double()
    return BNN(net, prior, likelihood or likelihoods.Gaussian(0.3), **kwargs)


def _conv_bnn(**kwargs) -> BNN:
    torch.manual_seed(0)
    net = ConvNet(1, 3, channels=(2, 3), image_size=8).double()
    rule = priors.Select(
        {
            "conv1.weight": priors.CorrelatedConv(lengthscale=1.0, nu=0.5),
            "conv2.weight": priors.CorrelatedConv(lengthscale=0.7, nu=2.5, fan_in=True),
        },
        default=priors.Gaussian(1.0, fan_in=True),
        bias=priors.Laplace(1.0),
    )
    return BNN(net, rule, likelihoods.Categorical(), **kwargs)


def _trace_log_joint(bnn: BNN, theta_row: torch.Tensor, args: tuple) -> torch.Tensor:
    """Log joint of a conditioned Pyro trace plus the log-det Jacobian of the transforms."""
    values = {k: v[0] for k, v in bnn.unravel(theta_row[None]).items()}
    trace = poutine.trace(poutine.condition(bnn.model, data=values)).get_trace(*args)
    return trace.log_prob_sum() + bnn.layout.log_abs_det_jacobian(theta_row[None])[0]


@pytest.mark.parametrize("P", [1, 5])
@pytest.mark.parametrize("name", sorted(PRIORS))
def test_log_joint_matches_pyro_model(name, P, seed, pyro_log_joint):
    torch.manual_seed(seed)
    learned_noise = likelihoods.Gaussian(dist.HalfNormal(torch.tensor(1.0, dtype=torch.float64)))
    bnn = _mlp_bnn(PRIORS[name], learned_noise, temperature=0.7)
    x = torch.randn(9, 3, dtype=torch.float64)
    y = torch.randn(9, 2, dtype=torch.float64)
    theta = 0.7 * torch.randn(P, bnn.num_params, dtype=torch.float64)
    ours = bnn.log_joint(theta, x, y, num_data=30)
    reference = pyro_log_joint(bnn, theta, (x, y, 30))
    torch.testing.assert_close(ours, reference, rtol=1e-6, atol=1e-6)
    traced = torch.stack([_trace_log_joint(bnn, row, (x, y, 30)) for row in theta])
    torch.testing.assert_close(ours, traced, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("tempering", ["posterior", "likelihood"])
@pytest.mark.parametrize("name", ["inverse_gamma_scale", "mixed", "gp_matched_hierarchical"])
def test_closed_form_scale_priors_match_pyro_model_with_gradient(
    name, tempering, seed, pyro_log_joint
):
    """The fused inverse-Gamma-scale block (models/bnn.py ``_ScaleBlock``): value and gradient of
    the log joint equal the Pyro model's, float64, for hierarchical GP-matched priors too."""
    torch.manual_seed(seed)
    learned_noise = likelihoods.Gaussian(dist.HalfNormal(torch.tensor(1.0, dtype=torch.float64)))
    bnn = _mlp_bnn(PRIORS[name], learned_noise, temperature=0.7, tempering=tempering)
    x = torch.randn(9, 3, dtype=torch.float64)
    y = torch.randn(9, 2, dtype=torch.float64)
    theta = (0.7 * torch.randn(4, bnn.num_params, dtype=torch.float64)).requires_grad_(True)
    ours = bnn.log_joint(theta, x, y, num_data=30)
    (grad,) = torch.autograd.grad(ours.sum(), theta)
    reference = pyro_log_joint(bnn, theta, (x, y, 30))
    (grad_ref,) = torch.autograd.grad(reference.sum(), theta)
    torch.testing.assert_close(ours, reference, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-6, atol=1e-6)
    fused = (
        {"layers.0.weight", "layers.0.weight_scale"}
        if name == "mixed"
        else set(bnn.layout.names) - {likelihoods.Gaussian.site}
    )
    assert bnn._scale_block().names == fused  # the fast path is the one tested


def test_hierarchical_gp_matched_log_joint_builds_no_distributions(monkeypatch):
    """Scoring a hierarchical GP-matched prior needs no per-call distributions (the slow path
    that made an SGHMC step 2.7 times as costly as with a Gaussian prior)."""
    prior = _gp_matched_hierarchical()
    bnn = _mlp_bnn(prior)
    x = torch.randn(5, 3, dtype=torch.float64)
    y = torch.randn(5, 2, dtype=torch.float64)
    theta = 0.5 * torch.randn(3, bnn.num_params, dtype=torch.float64)
    expected = bnn.log_joint(theta, x, y)  # builds the fused block once
    assert bnn._scale_block().names == set(bnn.layout.names)
    calls = []

    def spy(method):
        def wrapped(*args, **kwargs):
            calls.append(method.__name__)
            return method(*args, **kwargs)

        return wrapped

    monkeypatch.setattr(prior, "latent_sites", spy(prior.latent_sites))
    monkeypatch.setattr(prior, "distribution", spy(prior.distribution))
    torch.testing.assert_close(bnn.log_joint(theta, x, y), expected, rtol=0, atol=0)
    assert calls == []


def test_a_subclass_that_redefines_the_density_is_not_scored_in_closed_form(pyro_log_joint):
    class Wider(priors.InverseGammaScale):
        def distribution(self, name, param, module, latents):
            d = super().distribution(name, param, module, latents)
            return dist.Normal(d.loc, 2 * d.scale)

    bnn = _mlp_bnn(Wider(concentration=2.0, rate=1.5))
    assert not bnn._scale_block().names
    torch.manual_seed(0)
    x = torch.randn(6, 3, dtype=torch.float64)
    y = torch.randn(6, 2, dtype=torch.float64)
    theta = 0.5 * torch.randn(2, bnn.num_params, dtype=torch.float64)
    torch.testing.assert_close(
        bnn.log_joint(theta, x, y), pyro_log_joint(bnn, theta, (x, y)), rtol=1e-6, atol=1e-6
    )


@pytest.mark.parametrize(
    "noise",
    [
        dist.HalfNormal(torch.tensor(1.0, dtype=torch.float64)),
        dist.Uniform(
            torch.tensor(0.1, dtype=torch.float64), torch.tensor(2.0, dtype=torch.float64)
        ),
    ],
)
def test_fused_log_det_jacobian_equals_the_layouts(noise):
    bnn = _mlp_bnn(PRIORS["horseshoe"], likelihoods.Gaussian(noise))
    theta = torch.randn(3, bnn.num_params, dtype=torch.float64)
    torch.testing.assert_close(
        bnn._log_abs_det_jacobian(theta),
        bnn.layout.log_abs_det_jacobian(theta),
        rtol=1e-12,
        atol=1e-12,
    )


@pytest.mark.parametrize("P", [1, 5])
@pytest.mark.parametrize("tempering", ["posterior", "likelihood"])
def test_log_joint_matches_pyro_model_correlated_conv(P, tempering, seed, pyro_log_joint):
    torch.manual_seed(seed)
    bnn = _conv_bnn(temperature=0.3, tempering=tempering)
    x = torch.randn(6, 1, 8, 8, dtype=torch.float64)
    y = torch.randint(0, 3, (6,))
    theta = 0.5 * torch.randn(P, bnn.num_params, dtype=torch.float64)
    torch.testing.assert_close(
        bnn.log_joint(theta, x, y), pyro_log_joint(bnn, theta, (x, y)), rtol=1e-6, atol=1e-6
    )


def test_hierarchical_priors_add_latent_sites():
    bnn = _mlp_bnn(priors.Select({"*.weight": priors.Horseshoe()}, default=priors.Gaussian(1.0)))
    names = bnn.layout.names
    assert names[:3] == (
        "layers.0.weight_global_scale",
        "layers.0.weight_local_scale",
        "layers.0.weight",
    )
    shapes = {s.name: tuple(s.shape) for s in bnn.layout.sites}
    assert shapes["layers.0.weight_local_scale"] == (4,)
    assert shapes["layers.1.weight_local_scale"] == (2,)
    igs = _mlp_bnn(priors.InverseGammaScale())
    assert "layers.1.bias_scale" in igs.layout.names
    weights = 3 * 4 + 4 + 4 * 2 + 2
    assert bnn.num_params == weights + (1 + 4) + (1 + 2)  # global + local scales per weight
    assert igs.num_params == weights + 4  # one scale per parameter tensor


@pytest.mark.parametrize(
    "make, arg",
    [
        (lambda: priors.Gaussian(scale=-1.0), "scale"),
        (lambda: priors.Gaussian(scale=0.0), "scale"),
        (lambda: priors.Laplace(scale=float("nan")), "scale"),
        (lambda: priors.StudentT(df=0.0), "df"),
        (lambda: priors.StudentT(df=-2.0), "df"),
        (lambda: priors.Cauchy(scale=-0.1), "scale"),
        (lambda: priors.ScaleMixture(scales=(1.0, -1.0)), "scales[1]"),
        (lambda: priors.ScaleMixture(scales=(1.0, 2.0), weights=(1.0,)), "weights"),
        (lambda: priors.InverseGammaScale(concentration=0.0), "concentration"),
        (lambda: priors.InverseGammaScale(rate=-1.0), "rate"),
        (lambda: priors.Horseshoe(global_scale=0.0), "global_scale"),
        (lambda: priors.CorrelatedConv(lengthscale=-1.0), "lengthscale"),
        (lambda: priors.CorrelatedConv(nu=1.0), "nu"),
    ],
)
def test_invalid_prior_parameters_raise_naming_the_argument(make, arg):
    with pytest.raises(ValueError, match=arg.replace("[", r"\[").replace("]", r"\]")):
        make()


def test_prior_type_errors():
    with pytest.raises(TypeError, match="scale"):
        priors.Gaussian(scale="1")
    with pytest.raises(TypeError, match="fan_in"):
        priors.Gaussian(1.0, fan_in=1)
    with pytest.raises(TypeError, match="prior"):
        _mlp_bnn("gaussian")


def test_correlated_conv_rejects_non_conv_parameters():
    with pytest.raises(ValueError, match=r"layers\.0\.weight"):
        _mlp_bnn(priors.CorrelatedConv())


def test_select_rule_order_bias_default_and_fixed():
    gauss, lap, bias = priors.Gaussian(1.0), priors.Laplace(1.0), priors.Gaussian(0.5)
    rule = priors.Select({"layers.1.*": lap, "layers.0.weight": None}, default=gauss, bias=bias)
    net = MLP(3, [4], 2)
    chosen = {n: rule(n, p, net) for n, p in net.named_parameters()}
    assert chosen == {
        "layers.0.weight": None,
        "layers.0.bias": bias,
        "layers.1.weight": lap,
        "layers.1.bias": lap,
    }
    predicate = priors.Select({lambda name, p, m: p.dim() == 1: lap}, default=gauss)
    assert [predicate(n, p, net) for n, p in net.named_parameters()] == [gauss, lap, gauss, lap]
    bnn = BNN(net, rule, likelihoods.Gaussian(1.0))
    assert "layers.0.weight" not in bnn.layout.names
    assert bnn.num_params == 4 + 2 * 4 + 2


def test_dict_rule_without_default_requires_every_parameter():
    with pytest.raises(ValueError, match=r"layers\.1\.bias"):
        _mlp_bnn({"*.weight": priors.Gaussian(1.0), "layers.0.bias": priors.Gaussian(1.0)})
    with pytest.raises(ValueError, match="every parameter is fixed"):
        _mlp_bnn({"*": None})


def test_a_pattern_matching_no_parameter_is_an_error_listing_the_names():
    """A typo ("laers" for "layers") would otherwise leave its prior silently unused."""
    typo = priors.Select({"laers.0.*": priors.Laplace(1.0)}, default=priors.Gaussian(1.0))
    with pytest.raises(
        ValueError,
        match=r"^prior: the pattern 'laers\.0\.\*' matches no .*"
        r"'layers\.0\.weight', 'layers\.0\.bias'",
    ):
        _mlp_bnn(typo)
    with pytest.raises(ValueError, match=r"'conv9\.weight' matches no parameter"):
        _mlp_bnn({"*": priors.Gaussian(1.0), "conv9.weight": priors.Gaussian(2.0)})
    # a pattern shadowed by an earlier one still matches a parameter: accepted
    _mlp_bnn(priors.Select({"*": priors.Gaussian(1.0), "layers.0.*": priors.Laplace(1.0)}))


def test_fan_in_scaling():
    net = ConvNet(2, 3, channels=(4, 5), image_size=8)
    d = priors.Gaussian(2.0, fan_in=True).distribution(
        "conv2.weight", net.conv2.weight, net.conv2, {}
    )
    assert float(d.scale) == pytest.approx(2.0 / math.sqrt(4 * 3 * 3))
    d = priors.Gaussian(2.0, fan_in=True).distribution("conv2.bias", net.conv2.bias, net.conv2, {})
    assert float(d.scale) == pytest.approx(2.0)


def test_scale_mixture_normal_is_a_normalised_distribution():
    d = priors.ScaleMixtureNormal(
        torch.tensor([0.2, 1.0, 5.0], dtype=torch.float64),
        torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64),
    )
    grid = torch.linspace(-60, 60, 200001, dtype=torch.float64)
    mass = torch.trapezoid(d.log_prob(grid).exp(), grid)
    assert float(mass) == pytest.approx(1.0, abs=1e-6)
    # density at 0 from the definition: sum_k w_k / (sqrt(2 pi) s_k)
    expected = sum(
        w / (math.sqrt(2 * math.pi) * s) for w, s in [(0.2, 0.2), (0.5, 1.0), (0.3, 5.0)]
    )
    assert float(d.log_prob(torch.tensor(0.0, dtype=torch.float64)).exp()) == pytest.approx(
        expected
    )
    torch.manual_seed(0)
    draws = d.sample((200_000,))
    # variance sum w s^2; the standard error of a sample variance is sqrt((m4 - s^4) / n)
    var = float(d.variance)
    m4 = 3 * (0.2 * 0.2**4 + 0.5 * 1.0**4 + 0.3 * 5.0**4)
    se = math.sqrt((m4 - var**2) / len(draws))
    assert abs(float(draws.var()) - var) < 4 * se


def test_inverse_gamma_scale_is_marginally_student_t(seed):
    """sigma^2 ~ InvGamma(a, b), w | sigma ~ N(0, sigma^2)  =>  w ~ t_{2a}(0, sqrt(b/a))."""
    a, b = 3.0, 2.0
    bnn = BNN(
        torch.nn.Linear(1, 1, bias=False), priors.InverseGammaScale(a, b), likelihoods.Gaussian(1.0)
    )
    theta = bnn.init_theta(4000, seed=seed)
    w = bnn.unravel(theta)["weight"].reshape(-1).numpy()
    result = stats.kstest(w, stats.t(df=2 * a, scale=math.sqrt(b / a)).cdf)
    assert result.pvalue > 1e-3


def test_matern_golden_values():
    r = torch.tensor([0.0, 0.5, 2.0], dtype=torch.float64)
    # k_1/2 = e^-r; k_3/2 = (1 + sqrt3 r) e^{-sqrt3 r}; k_5/2 = (1 + sqrt5 r + 5r^2/3) e^{-sqrt5 r}
    torch.testing.assert_close(
        matern(r, 0.5),
        torch.tensor([1.0, 0.6065306597126334, 0.1353352832366127], dtype=torch.float64),
    )
    torch.testing.assert_close(
        matern(r, 1.5),
        torch.tensor([1.0, 0.7848876539574506, 0.13973135976422974], dtype=torch.float64),
    )
    torch.testing.assert_close(
        matern(r, 2.5),
        torch.tensor([1.0, 0.8286491424181255, 0.13866021683854047], dtype=torch.float64),
    )


def test_correlated_conv_filters_have_the_matern_covariance(seed):
    prior = priors.CorrelatedConv(lengthscale=1.0, nu=0.5, scale=2.0)
    cov = prior.covariance((3, 3))
    # pixels (0,0) and (0,1) are 1 apart, (0,0) and (1,1) sqrt(2) apart
    assert float(cov[0, 0]) == pytest.approx(4.0 * (1 + 1e-6))
    assert float(cov[0, 1]) == pytest.approx(4.0 * math.exp(-1.0))
    assert float(cov[0, 4]) == pytest.approx(4.0 * math.exp(-math.sqrt(2)))
    conv = torch.nn.Conv2d(1, 400, 3, bias=False)
    bnn = BNN(conv, prior, likelihoods.Gaussian(1.0))
    w = bnn.unravel(bnn.init_theta(20, seed=seed))["weight"].reshape(-1, 9).double()
    sample_cov = torch.cov(w.T)
    # each entry of a sample covariance of n Gaussian draws has sd sqrt((S_ii S_jj + S_ij^2) / n)
    n = w.shape[0]
    se = torch.sqrt((torch.outer(cov.diag(), cov.diag()) + cov**2) / n)
    assert bool((abs(sample_cov.float() - cov) < 4.5 * se).all())
