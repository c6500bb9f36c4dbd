"""BNN declaration: the Pyro model, the functional view, tempering, data checks."""

from __future__ import annotations

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import scipy.stats
import torch

from bayesdl import likelihoods, priors
from bayesdl.models import BNN, MLP, ConvNet, ResNet


def _bnn(likelihood=None, out=1, **kwargs) -> BNN:
    torch.manual_seed(0)
    return BNN(
        MLP(3, [5], out, "tanh"),
        priors.Gaussian(1.0),
        likelihood or likelihoods.Gaussian(0.5),
        **kwargs,
    )


def _data(n=10, out=None):
    torch.manual_seed(1)
    x = torch.randn(n, 3)
    y = torch.randn(n) if out is None else torch.randn(n, out)
    return x, y


def test_forward_matches_the_network_with_those_parameters():
    bnn = _bnn(out=2)
    x, _ = _data()
    theta = bnn.init_theta(3, seed=0)
    f = bnn.forward(theta, x)
    assert f.shape == (3, 10, 2)
    for p in range(3):
        net = MLP(3, [5], 2, "tanh")
        net.load_state_dict({k: v[0] for k, v in bnn.unravel(theta[p : p + 1]).items()})
        torch.testing.assert_close(f[p], net(x))


def test_single_output_is_kept_as_a_trailing_dimension():
    bnn = BNN(
        torch.nn.Sequential(torch.nn.Linear(3, 1), torch.nn.Flatten(0)),
        priors.Gaussian(1.0),
        likelihoods.Gaussian(1.0),
    )
    x, y = _data()
    assert bnn.forward(bnn.init_theta(2, seed=0), x).shape == (2, 10, 1)
    assert torch.isfinite(bnn.log_joint(bnn.init_theta(2, seed=0), x, y)).all()


def test_ravel_unravel_round_trip():
    bnn = BNN(
        MLP(3, [5], 1), priors.InverseGammaScale(), likelihoods.Gaussian(dist.HalfNormal(1.0))
    )
    theta = torch.randn(4, bnn.num_params)
    values = bnn.unravel(theta)
    assert all(float(values[n].min()) > 0 for n in values if n.endswith("scale"))
    torch.testing.assert_close(bnn.ravel(values), theta, rtol=1e-5, atol=1e-5)
    raw = bnn.unravel(theta, constrained=False)
    torch.testing.assert_close(bnn.ravel(raw, constrained=False), theta)


def test_init_theta_is_seeded_per_chain():
    bnn = _bnn()
    a = bnn.init_theta(2, seed=3)
    b = bnn.init_theta(5, seed=3)
    torch.testing.assert_close(a, b[:2])
    assert not torch.equal(bnn.init_theta(2, seed=4), a)
    state = torch.get_rng_state()
    bnn.init_theta(2, seed=3)
    assert torch.equal(torch.get_rng_state(), state), "seeded calls must not disturb the global RNG"


def test_posterior_tempering_divides_the_whole_log_density():
    x, y = _data()
    cold = _bnn(temperature=0.25)
    warm = _bnn()
    theta = warm.init_theta(3, seed=0)
    torch.testing.assert_close(cold.log_joint(theta, x, y) * 0.25, warm.log_joint(theta, x, y))


def test_likelihood_tempering_divides_the_likelihood_only():
    x, y = _data()
    cold = _bnn(temperature=0.25, tempering="likelihood")
    warm = _bnn()
    theta = warm.init_theta(3, seed=0)
    lik = warm.log_likelihood(theta, x, y)
    prior = warm.log_prior(theta)
    torch.testing.assert_close(cold.log_joint(theta, x, y), prior + lik / 0.25)
    torch.testing.assert_close(warm.log_joint(theta, x, y), prior + lik)


def test_num_data_scales_the_minibatch_likelihood():
    x, y = _data()
    bnn = _bnn()
    theta = bnn.init_theta(2, seed=0)
    full = bnn.log_likelihood(theta, x, y)
    torch.testing.assert_close(bnn.log_likelihood(theta, x, y, num_data=40), full * 4)
    torch.testing.assert_close(
        bnn.log_joint(theta, x, y, num_data=40) - bnn.log_prior(theta), full * 4
    )
    with pytest.raises(ValueError, match="num_data"):
        bnn.log_joint(theta, x, y, num_data=5)


def test_model_is_a_plain_pyro_model():
    x, y = _data()
    bnn = _bnn(likelihood=likelihoods.Gaussian(dist.HalfNormal(1.0)))
    trace = pyro.poutine.trace(bnn.model).get_trace(x, y)
    latent = [
        name
        for name, site in trace.nodes.items()
        if site["type"] == "sample"
        and not site["is_observed"]
        and not pyro.poutine.util.site_is_subsample(site)
    ]
    assert latent == list(bnn.layout.names)
    assert trace.nodes["f"]["value"].shape == (10, 1)
    predictive = pyro.infer.Predictive(bnn.model, num_samples=7)
    samples = predictive(x)
    assert samples["y"].shape == (7, 10, 1)
    guide = pyro.infer.autoguide.AutoNormal(bnn.model)
    svi = pyro.infer.SVI(bnn.model, guide, pyro.optim.Adam({"lr": 0.01}), pyro.infer.Trace_ELBO())
    pyro.clear_param_store()
    losses = [svi.step(x, y) for _ in range(3)]
    assert all(math.isfinite(v) for v in losses)


def test_pyro_autoguides_work_with_hierarchical_priors():
    """AutoNormal nests its parameters by site name: latent names must not nest under weights."""
    x, y = _data()
    rule = priors.Select({"*.weight": priors.Horseshoe()}, default=priors.InverseGammaScale())
    bnn = BNN(MLP(3, [5], 1, "tanh"), rule, likelihoods.Gaussian(dist.HalfNormal(1.0)))
    guide = pyro.infer.autoguide.AutoNormal(bnn.model)
    svi = pyro.infer.SVI(bnn.model, guide, pyro.optim.Adam({"lr": 0.01}), pyro.infer.Trace_ELBO())
    pyro.clear_param_store()
    assert all(math.isfinite(svi.step(x, y)) for _ in range(3))
    assert set(guide.median()) == set(bnn.layout.names)


def test_classifier_models():
    torch.manual_seed(0)
    net = ConvNet(1, 4, channels=(2, 2), image_size=8)
    bnn = BNN(net, priors.Gaussian(1.0, fan_in=True), likelihoods.Categorical())
    x = torch.rand(5, 1, 8, 8)
    y = torch.tensor([0, 1, 2, 3, 0])
    lj = bnn.log_joint(bnn.init_theta(3, seed=0), x, y)
    assert lj.shape == (3,) and torch.isfinite(lj).all()
    binary = BNN(MLP(3, [4], 1), priors.Gaussian(1.0), likelihoods.Bernoulli())
    xb, _ = _data()
    yb = (xb[:, 0] > 0).long()
    assert torch.isfinite(binary.log_joint(binary.init_theta(2, seed=0), xb, yb)).all()
    res = BNN(ResNet(1, 3, widths=(2, 4)), priors.Gaussian(1.0), likelihoods.Categorical())
    assert res.forward(res.init_theta(2, seed=0), x).shape == (2, 5, 3)


def test_log_joint_gradient_is_vectorised_per_row():
    x, y = _data()
    bnn = _bnn()
    theta = bnn.init_theta(4, seed=0).requires_grad_(True)
    (grad,) = torch.autograd.grad(bnn.log_joint(theta, x, y).sum(), theta)
    for p in range(4):
        row = theta[p : p + 1].detach().requires_grad_(True)
        (g,) = torch.autograd.grad(bnn.log_joint(row, x, y).sum(), row)
        torch.testing.assert_close(grad[p : p + 1], g)


# ------------------------------------------------------------------------- bad input
NAN_X = torch.tensor([[0.0, float("nan"), 1.0]] * 4)


@pytest.mark.parametrize(
    "x, y, error, arg",
    [
        (NAN_X, torch.zeros(4), ValueError, "x"),
        (torch.zeros(4, 3), torch.tensor([0.0, float("inf"), 0.0, 0.0]), ValueError, "y"),
        (torch.zeros(4, 3), torch.zeros(5), ValueError, "y"),
        (torch.zeros(4, 2), torch.zeros(4), ValueError, "x"),
        (torch.zeros(4), torch.zeros(4), ValueError, "x"),
        (torch.zeros(4, 3), torch.zeros(4, 2), ValueError, "y"),
        ("abc", torch.zeros(4), TypeError, "x"),
    ],
)
def test_bad_regression_data_is_rejected_naming_the_argument(x, y, error, arg):
    bnn = _bnn()
    with pytest.raises(error, match=rf"^{arg}:"):
        bnn.check_data(x, y)


def test_bad_labels_are_rejected():
    bnn = BNN(MLP(3, [4], 3), priors.Gaussian(1.0), likelihoods.Categorical())
    x = torch.zeros(4, 3)
    with pytest.raises(TypeError, match=r"^y:.*integer"):
        bnn.check_data(x, torch.tensor([0.0, 1.0, 2.0, 1.0]))
    with pytest.raises(ValueError, match=r"^y:.*\[0, 3\)"):
        bnn.check_data(x, torch.tensor([0, 1, 3, 1]))
    with pytest.raises(ValueError, match="Categorical"):
        BNN(MLP(3, [4], 1), priors.Gaussian(1.0), likelihoods.Categorical()).check_data(
            x, torch.zeros(4, dtype=torch.long)
        )
    binary = BNN(MLP(3, [4], 1), priors.Gaussian(1.0), likelihoods.Bernoulli())
    with pytest.raises(ValueError, match=r"^y:.*0 or 1"):
        binary.check_data(x, torch.tensor([0, 1, 2, 1]))


def test_numpy_inputs_are_accepted():
    bnn = _bnn()
    x, y = bnn.check_data(np.zeros((4, 3)), np.zeros(4))
    assert x.dtype == torch.float32 and y.shape == (4, 1)


@pytest.mark.parametrize(
    "kwargs, error, arg",
    [
        ({"temperature": 0.0}, ValueError, "temperature"),
        ({"temperature": -1.0}, ValueError, "temperature"),
        ({"tempering": "prior"}, ValueError, "tempering"),
    ],
)
def test_bad_bnn_settings(kwargs, error, arg):
    with pytest.raises(error, match=arg):
        _bnn(**kwargs)


def test_bad_likelihood_settings():
    with pytest.raises(ValueError, match="scale"):
        likelihoods.Gaussian(-0.5)
    with pytest.raises(ValueError, match="scale"):
        likelihoods.Gaussian(dist.Normal(0.0, 1.0))
    with pytest.raises(TypeError, match="likelihood"):
        BNN(MLP(3, [4], 1), priors.Gaussian(1.0), "gaussian")
    with pytest.raises(TypeError, match="net"):
        BNN(lambda x: x, priors.Gaussian(1.0), likelihoods.Gaussian(1.0))


def test_theta_shape_is_checked():
    bnn = _bnn()
    x, y = _data()
    with pytest.raises(ValueError, match="theta"):
        bnn.log_joint(torch.zeros(bnn.num_params), x, y)
    with pytest.raises(ValueError, match="theta"):
        bnn.forward(torch.zeros(2, bnn.num_params + 1), x)


def test_building_a_bnn_does_not_touch_the_global_rng():
    net = MLP(3, [4], 1)  # initialising a module draws from the global RNG; the BNN must not
    state = torch.get_rng_state()
    BNN(net, priors.Horseshoe(), likelihoods.Gaussian(dist.HalfNormal(1.0)))
    assert torch.equal(torch.get_rng_state(), state)


def test_sample_prior_follows_the_prior(seed):
    bnn = BNN(MLP(3, [6], 1).double(), priors.Gaussian(0.7), likelihoods.Gaussian(1.0))
    torch.manual_seed(seed)
    draws = bnn.sample_prior(2000)
    assert draws.shape == (2000, bnn.num_params)
    n = draws.numel()
    assert abs(float(draws.mean())) < 4 * 0.7 / math.sqrt(n)
    # Var of the pooled variance estimate of a Gaussian: 2 sigma^4 / n.
    assert abs(float(draws.var()) - 0.49) < 4 * 0.49 * math.sqrt(2 / n)


def test_sample_prior_matches_init_theta_for_hierarchical_priors(seed):
    """Two-sample KS tests between BNN.sample_prior and BNN.init_theta on the scale latents and a
    weight (false-alarm rate 1e-3 per comparison)."""
    bnn = BNN(MLP(2, [4], 1).double(), priors.InverseGammaScale(2.0, 2.0), likelihoods.Gaussian())
    torch.manual_seed(seed)
    vectorised = bnn.unravel(bnn.sample_prior(400))
    reference = bnn.unravel(bnn.init_theta(400, seed))
    for site in ("layers.0.weight_scale", "layers.1.weight_scale"):
        assert scipy.stats.ks_2samp(vectorised[site], reference[site]).pvalue > 1e-3
    w = "layers.0.weight"
    assert scipy.stats.ks_2samp(vectorised[w][:, 0, 0], reference[w][:, 0, 0]).pvalue > 1e-3
