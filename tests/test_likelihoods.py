"""Likelihoods: golden log densities, the BNN's log joint, backends end to end, shape contract."""

from __future__ import annotations

import math

import pyro.distributions as dist
import pytest
import torch
from torch.distributions import Normal
from torch.distributions import StudentT as TorchStudentT

from bayesdl import Posterior, likelihoods, priors
from bayesdl.inference import NUTS, SVGD
from bayesdl.models import BNN, MLP

LIKELIHOODS = {
    "hetero": lambda: likelihoods.HeteroscedasticGaussian(),
    "studentt": lambda: likelihoods.StudentT(0.5, df=3.0),
    "studentt_learned": lambda: likelihoods.StudentT(dist.HalfNormal(1.0)),
}


def _out(likelihood) -> int:
    return 2 if isinstance(likelihood, likelihoods.HeteroscedasticGaussian) else 1


def _bnn(likelihood, **kwargs) -> BNN:
    torch.manual_seed(0)
    return BNN(MLP(3, [5], _out(likelihood), "tanh"), priors.Gaussian(1.0), likelihood, **kwargs)


def _data(n=10):
    torch.manual_seed(1)
    return torch.randn(n, 3), torch.randn(n)


# ------------------------------------------------------------------ golden log densities
def test_student_t_log_prob_matches_torch_and_by_hand():
    f = torch.tensor([[[0.3], [-1.0]], [[2.0], [0.5]]], dtype=torch.float64)  # (2, 2, 1)
    y = torch.tensor([[1.0], [-0.5]], dtype=torch.float64)
    lik = likelihoods.StudentT(0.7, df=3.0)
    got = lik.log_prob(f, y, {})
    assert got.shape == (2, 2)
    expected = TorchStudentT(3.0, f[..., 0], 0.7).log_prob(y[:, 0])
    torch.testing.assert_close(got, expected)
    # by hand, one value: t_3 density at z = (1 - 0.3) / 0.7 = 1, scaled by 1/0.7
    by_hand = math.log(2 / (math.pi * math.sqrt(3) * (1 + 1 / 3) ** 2)) - math.log(0.7)
    assert got[0, 0].item() == pytest.approx(by_hand, rel=1e-12)
    torch.testing.assert_close(lik.predictive(f, {}).log_prob(y), expected)


def test_student_t_learned_scale_broadcasts_per_draw():
    f = torch.randn(3, 4, 1, dtype=torch.float64)
    y = torch.randn(4, 1, dtype=torch.float64)
    scale = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
    lik = likelihoods.StudentT(dist.HalfNormal(1.0), df=5.0)
    expected = TorchStudentT(5.0, f[..., 0], scale[:, None]).log_prob(y[:, 0])
    torch.testing.assert_close(lik.log_prob(f, y, {"likelihood.scale": scale}), expected)


def test_heteroscedastic_log_prob_matches_torch_and_by_hand():
    f = torch.tensor([[[0.3, 0.0], [-1.0, 2.0]], [[2.0, -3.0], [0.5, 1.0]]], dtype=torch.float64)
    y = torch.tensor([[1.0], [-0.5]], dtype=torch.float64)
    lik = likelihoods.HeteroscedasticGaussian(min_scale=0.01)
    got = lik.log_prob(f, y, {})
    sigma = torch.nn.functional.softplus(f[..., 1]) + 0.01
    torch.testing.assert_close(got, Normal(f[..., 0], sigma).log_prob(y[:, 0]))
    s = math.log(2.0) + 0.01  # softplus(0) + floor
    by_hand = -0.5 * math.log(2 * math.pi) - math.log(s) - 0.5 * (0.7 / s) ** 2
    assert got[0, 0].item() == pytest.approx(by_hand, rel=1e-12)
    torch.testing.assert_close(lik.predictive(f, {}).log_prob(y), got)


def test_summaries_include_the_noise():
    torch.manual_seed(0)
    f = torch.randn(50, 4, 2, dtype=torch.float64)
    mean, std = likelihoods.HeteroscedasticGaussian().summary(f, {})
    sigma = torch.nn.functional.softplus(f[..., 1]) + 1e-3
    torch.testing.assert_close(mean, f[..., 0].mean(0))
    var = f[..., 0].var(0, correction=0) + sigma.square().mean(0)
    torch.testing.assert_close(std, var.sqrt())
    mean, std = likelihoods.StudentT(0.5, df=4.0).summary(f[..., :1], {})
    var = f[..., 0].var(0, correction=0) + 0.25 * 4.0 / 2.0
    torch.testing.assert_close(std, var.sqrt())
    _, std = likelihoods.StudentT(0.5, df=2.0).summary(f[..., :1], {})
    assert torch.isinf(std).all()


def test_bad_settings_name_the_argument():
    with pytest.raises(ValueError, match="df"):
        likelihoods.StudentT(1.0, df=0.0)
    with pytest.raises(ValueError, match="scale"):
        likelihoods.StudentT(-1.0)
    with pytest.raises(ValueError, match="min_scale"):
        likelihoods.HeteroscedasticGaussian(min_scale=0.0)
    with pytest.raises(ValueError, match="two per target"):
        BNN(MLP(3, [5], 3), priors.Gaussian(1.0), likelihoods.HeteroscedasticGaussian()).check_data(
            *_data()
        )


# ------------------------------------------------------------------ the BNN's log joint
@pytest.mark.parametrize("name", LIKELIHOODS)
@pytest.mark.parametrize("kwargs", [{}, {"temperature": 0.5, "tempering": "likelihood"}])
def test_log_joint_equals_the_pyro_model(name, kwargs, pyro_log_joint):
    torch.set_default_dtype(torch.float64)
    x, y = _data()
    bnn = _bnn(LIKELIHOODS[name](), **kwargs)
    theta = bnn.init_theta(3, seed=0)
    torch.testing.assert_close(bnn.log_joint(theta, x, y), pyro_log_joint(bnn, theta, (x, y)))
    torch.testing.assert_close(
        bnn.log_joint(theta, x, y, num_data=30),
        pyro_log_joint(bnn, theta, (x, y, 30)),
    )


def test_heteroscedastic_with_two_targets():
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(0)
    bnn = BNN(MLP(3, [5], 4), priors.Gaussian(1.0), likelihoods.HeteroscedasticGaussian())
    x, y = torch.randn(6, 3), torch.randn(6, 2)
    theta = bnn.init_theta(2, seed=0)
    f = bnn.forward(theta, x)
    sigma = torch.nn.functional.softplus(f[..., 2:]) + 1e-3
    expected = Normal(f[..., :2], sigma).log_prob(y).sum((-1, -2))
    torch.testing.assert_close(bnn.log_likelihood(theta, x, y), expected)
    with pytest.raises(ValueError, match="y"):
        bnn.check_data(x, torch.randn(6))


# ------------------------------------------------------------------ backends end to end
def _end_to_end(post: Posterior, x, y):
    pred = post.predict(x)
    assert pred.mean.shape == (x.shape[0],) and pred.std.shape == (x.shape[0],)
    assert torch.isfinite(pred.mean).all() and (pred.std > 0).all()
    metrics = post.evaluate(x, y)
    assert math.isfinite(metrics["rmse"]) and math.isfinite(metrics["nll"])
    idata = post.to_arviz(x, y, probe=x[:3])
    assert idata.posterior_predictive["y"].shape[-1] == x.shape[0]
    assert idata.log_likelihood["y"].shape[-1] == x.shape[0]
    return metrics


def test_nuts_with_student_t_learned_scale():
    x, y = _data(12)
    bnn = _bnn(likelihoods.StudentT(dist.HalfNormal(1.0)))
    post = NUTS(chains=2, warmup=20, draws=20, max_tree_depth=5).fit(
        bnn, x, y, seed=0, progress=False
    )
    assert post.theta.shape[:2] == (2, 20)
    _end_to_end(post, x, y)


def test_svgd_with_heteroscedastic_gaussian():
    x, y = _data(12)
    bnn = _bnn(likelihoods.HeteroscedasticGaussian())
    post = SVGD(particles=5, steps=20).fit(bnn, x, y, seed=0, progress=False)
    metrics = _end_to_end(post, x, y)
    # the evaluate metrics are those of the predictive: RMSE of the mean of mu
    pred = post.predict(x)
    assert metrics["rmse"] == pytest.approx(float((pred.mean - y).square().mean().sqrt()))


def test_heteroscedastic_std_grows_with_the_noise():
    """Noise sd 0.05 for x < 0, 1.0 for x > 0: after a MAP fit (Adam on log_joint, 1 draw)
    the predicted std on the noisy side is several times that on the quiet side."""
    torch.manual_seed(0)
    n = 200
    x = torch.linspace(-1, 1, n)[:, None]
    noise = torch.where(x[:, 0] < 0, 0.05, 1.0)
    y = 0.5 * x[:, 0] + noise * torch.randn(n)
    bnn = BNN(MLP(1, [16], 2, "tanh"), priors.Gaussian(1.0), likelihoods.HeteroscedasticGaussian())
    theta = bnn.init_theta(1, seed=0).requires_grad_(True)
    opt = torch.optim.Adam([theta], lr=0.03)
    for _ in range(300):
        opt.zero_grad()
        (-bnn.log_joint(theta, x, y)).sum().backward()
        opt.step()
    post = Posterior(theta.detach()[None], bnn)
    std = post.predict(x).std
    quiet, noisy = std[x[:, 0] < -0.2].mean(), std[x[:, 0] > 0.2].mean()
    # true ratio 20; a homoscedastic fit would give 1
    assert noisy / quiet > 5, (float(quiet), float(noisy))
    assert 0.5 < float(noisy) < 2.0


# ------------------------------------------------------------------ the shape contract
class _BroadcastingGaussian(likelihoods.Likelihood):
    """A custom likelihood that forgets the output dimension: (N, 1) outputs vs (N,) targets
    broadcast to (P, N, N), summed over the last axis: the right shape, wrong values."""

    def check_targets(self, y, out_features):
        return y

    def predictive(self, f, latents):
        return dist.Normal(f, 1.0)

    def log_prob(self, f, y, latents):
        return Normal(f, 1.0).log_prob(y).sum(-1)

    def summary(self, f, latents):
        return f.mean(0), f.std(0)


class _UnsummedBroadcastingGaussian(_BroadcastingGaussian):
    def log_prob(self, f, y, latents):
        return Normal(f, 1.0).log_prob(y)  # (P, N, N)


class _WrongSummary(likelihoods.Gaussian):
    def summary(self, f, latents):
        mean, std = super().summary(f, latents)
        return mean[:, None] + mean[None, :], std  # (N, N): would broadcast in an RMSE


@pytest.mark.parametrize(
    "likelihood, message",
    [
        (_BroadcastingGaussian, "depends on the other targets"),
        (_UnsummedBroadcastingGaussian, r"log_prob gives shape \(1, 2, 2\)"),
    ],
)
def test_outputs_that_broadcast_against_targets_are_refused(likelihood, message):
    x, y = _data()
    bnn = _bnn(likelihood())
    with pytest.raises(ValueError, match=message):
        bnn.check_data(x, y)
    with pytest.raises(ValueError, match="network with 1 output"):
        bnn.log_joint(bnn.init_theta(2, seed=0), x, y)
    post = Posterior(torch.zeros(1, 2, bnn.num_params), bnn)
    with pytest.raises(ValueError, match=r"^y: .*Broadcasting"):
        post.evaluate(x, y)


def test_a_summary_of_the_wrong_shape_is_refused_by_evaluate():
    x, y = _data()
    bnn = _bnn(_WrongSummary(0.5))
    post = Posterior(bnn.init_theta(2, seed=0)[None], bnn)
    with pytest.raises(ValueError, match=r"_WrongSummary.summary .* shape \(10, 10\)"):
        post.evaluate(x, y)
