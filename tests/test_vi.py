"""Mean-field VI: settings, the functional ELBO against Pyro's, and the Posterior it returns."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as pdist
import pytest
import torch
from torch import nn

from bayesdl import Posterior, likelihoods, priors
from bayesdl._seeding import seeded
from bayesdl.inference import SSVI, NonFiniteError, StepEvent
from bayesdl.inference.vi.closed_form import expected_log_prob, has_closed_form
from bayesdl.inference.vi.elbo import FunctionalELBO
from bayesdl.inference.vi.guides import MeanField, guide_from_posterior
from bayesdl.inference.vi.local_reparam import LayerNoise, local_reparameterization
from bayesdl.inference.vi.optim import kl_weight
from bayesdl.inference.vi.pyro_engine import PyroTrainer
from bayesdl.inference.vi.vi import VI
from bayesdl.models import BNN, MLP, ConvNet

Z_MAX = 4.0  # two-sided z threshold: P(|z| > 4) = 6e-5 per comparison under the null


def _regression(n: int = 24, prior=None, likelihood=None, temperature=1.0, tempering="posterior"):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, generator=gen, dtype=torch.float64)
    y = torch.sin(x[:, 0]) + x[:, 1] - 0.5 * x[:, 2] + 0.2 * torch.randn(n, generator=gen)
    net = MLP(3, [6], 1, activation="tanh").double()
    bnn = BNN(
        net,
        prior or priors.Gaussian(1.0),
        likelihood or likelihoods.Gaussian(0.3),
        temperature=temperature,
        tempering=tempering,
    )
    return bnn, *bnn.check_data(x, y)


def _guide(bnn: BNN, seed: int = 0) -> MeanField:
    gen = torch.Generator().manual_seed(seed)
    D = bnn.num_params
    loc = 0.5 * torch.randn(D, generator=gen, dtype=bnn.dtype)
    scale = 0.02 + 0.13 * torch.rand(D, generator=gen, dtype=bnn.dtype)
    return MeanField(loc, scale)


# ------------------------------------------------------------------------------ settings
@pytest.mark.parametrize(
    "kwargs, arg",
    [
        ({"steps": 0}, "steps"),
        ({"lr": -1.0}, "lr"),
        ({"optimizer": "lbfgs"}, "optimizer"),
        ({"batch_size": 0}, "batch_size"),
        ({"num_particles": 0}, "num_particles"),
        ({"guide": "full_rank"}, "guide"),
        ({"kl": "exact"}, "kl"),
        ({"kl_anneal": 1.5}, "kl_anneal"),
        ({"init": "zeros"}, "init"),
        ({"draws": 0}, "draws"),
        ({"engine": "numpyro"}, "engine"),
        ({"engine": "pyro", "local_reparam": True}, "local_reparam"),
        ({"engine": "pyro", "kl": "analytic"}, "kl"),
        ({"init_scale": 0.0}, "init_scale"),
        ({"lr_schedule": "step"}, "lr_schedule"),
    ],
)
def test_settings_are_checked(kwargs, arg):
    with pytest.raises(ValueError, match=f"^{arg}:"):
        VI(**kwargs)


@pytest.mark.parametrize(
    "kwargs, arg",
    [
        ({"steps": 10.0}, "steps"),
        ({"optimizer": 3}, "optimizer"),
        ({"local_reparam": "yes"}, "local_reparam"),
        ({"kl_anneal": "linear"}, "kl_anneal"),
        ({"init": 3}, "init"),
    ],
)
def test_setting_types_are_checked(kwargs, arg):
    with pytest.raises(TypeError, match=f"^{arg}:"):
        VI(**kwargs)


def test_engine_defaults_follow_the_engine():
    functional = VI()
    assert functional.local_reparam and functional.kl == "analytic"
    pyro_vi = VI(engine="pyro")
    assert not pyro_vi.local_reparam and pyro_vi.kl == "mc"
    assert VI.name == "vi"


def test_bad_data_fails_before_any_work(monkeypatch):
    bnn, x, y = _regression()
    started = []
    monkeypatch.setattr("bayesdl.inference.vi.vi.run", lambda *a, **k: started.append(1))
    x_bad = x.clone()
    x_bad[2, 0] = math.nan
    with pytest.raises(ValueError, match=r"^x:"):
        VI(steps=2).fit(bnn, x_bad, y)
    with pytest.raises(ValueError, match=r"^y:"):
        VI(steps=2).fit(bnn, x, y[:-1])
    with pytest.raises(ValueError, match=r"^num_data:"):
        VI(steps=2).fit(bnn, x, y, num_data=3)
    other = Posterior(torch.zeros(1, 2, 5))
    with pytest.raises(ValueError, match=r"^init:"):
        VI(steps=2, init=other).fit(bnn, x, y)
    assert not started


# ------------------------------------------------------------------------------ the ELBO
def _pyro_elbos(bnn, guide, x, y, num_data, n):
    trainer = PyroTrainer(bnn, guide, x, y, num_data, num_particles=1)
    with torch.no_grad():
        return torch.tensor([trainer.loss(x, y, 1.0)[1] for _ in range(n)], dtype=torch.float64)


def _functional_elbos(bnn, guide, x, y, num_data, n, **kwargs):
    elbo = FunctionalELBO(bnn, x, num_particles=1, **kwargs)
    with torch.no_grad():
        return torch.tensor([elbo(guide, x, y, num_data).elbo for _ in range(n)])


def _z(a: torch.Tensor, b: torch.Tensor) -> float:
    se = math.sqrt(a.var() / len(a) + b.var() / len(b))
    return abs(float(a.mean() - b.mean())) / se


class _Scaled(nn.Module):
    """A network with a parameter outside any Linear layer (drawn per particle, not LRT)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = MLP(3, [6], 1, activation="tanh")
        self.gain = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gain * self.body(x)


def _elbo_case(name: str):
    if name == "gaussian+learned-noise":
        return _regression(
            likelihood=likelihoods.Gaussian(pdist.HalfNormal(1.0)), temperature=0.5
        ), {"local_reparam": True, "kl": "analytic"}
    if name == "hierarchical+likelihood-tempering":
        return _regression(
            prior=priors.InverseGammaScale(2.0, 2.0), temperature=0.7, tempering="likelihood"
        ), {"local_reparam": False, "kl": "mc"}
    if name == "student-t+convnet":
        gen = torch.Generator().manual_seed(1)
        x = torch.rand(16, 1, 8, 8, generator=gen, dtype=torch.float64)
        y = torch.randint(0, 3, (16,), generator=gen)
        net = ConvNet(1, 3, channels=(2, 3), image_size=8).double()
        bnn = BNN(net, priors.StudentT(3.0, 0.5), likelihoods.Categorical())
        return (bnn, *bnn.check_data(x, y)), {"local_reparam": True, "kl": "analytic"}
    if name == "laplace+non-linear-parameter":
        gen = torch.Generator().manual_seed(2)
        x = torch.randn(20, 3, generator=gen, dtype=torch.float64)
        y = (x[:, 0] > 0).long()
        bnn = BNN(_Scaled().double(), priors.Laplace(0.7), likelihoods.Bernoulli())
        return (bnn, *bnn.check_data(x, y)), {"local_reparam": True, "kl": "analytic"}
    raise AssertionError(name)


@pytest.mark.parametrize(
    "case",
    [
        "gaussian+learned-noise",
        "hierarchical+likelihood-tempering",
        "student-t+convnet",
        "laplace+non-linear-parameter",
    ],
)
def test_functional_elbo_agrees_with_pyro_trace_elbo(case, seed):
    """Same guide, same data: the two ELBO estimates have the same mean (z-test on MC error).

    Covers the local reparameterisation trick for Linear and Conv layers, draws of parameters
    outside linear layers (vectorised per particle), closed-form and Monte Carlo KL terms,
    hierarchical and heavy-tailed priors, learned noise, both temperings and minibatch scaling.
    """
    (bnn, x, y), kwargs = _elbo_case(case)
    guide = _guide(bnn)
    num_data = 2 * x.shape[0]
    n = 100
    with seeded(seed):
        pyro_values = _pyro_elbos(bnn, guide, x, y, num_data, n)
        ours = _functional_elbos(bnn, guide, x, y, num_data, 4 * n, **kwargs)
    assert _z(ours, pyro_values) < Z_MAX, (float(ours.mean()), float(pyro_values.mean()))


def test_the_elbo_comparison_detects_a_wrong_minibatch_scale(seed):
    """The check above can fail: it catches a minibatch likelihood left unscaled."""
    (bnn, x, y), kwargs = _elbo_case("gaussian+learned-noise")
    guide = _guide(bnn)
    num_data = 2 * x.shape[0]
    with seeded(seed):
        pyro_values = _pyro_elbos(bnn, guide, x, y, num_data, 100)
        wrong = _functional_elbos(bnn, guide, x, y, x.shape[0], 400, **kwargs)
    assert _z(wrong, pyro_values) > Z_MAX


def test_local_reparameterisation_gives_the_pre_activation_moments():
    """LRT outputs of a Linear layer have mean x M^T + m and variance x^2 V^T + v."""
    gen = torch.Generator().manual_seed(0)
    layer = nn.Linear(4, 3).double()
    x = torch.randn(5, 4, generator=gen, dtype=torch.float64)
    std_w = torch.rand(3, 4, generator=gen, dtype=torch.float64)
    std_b = torch.rand(3, generator=gen, dtype=torch.float64)
    var_w, var_b = std_w.square(), std_b.square()
    n = 20000
    with seeded(0), local_reparameterization(layer, {"": LayerNoise(std_w, std_b)}):
        out = layer(x.repeat(n, 1)).reshape(n, 5, 3)
    assert not layer._forward_hooks  # removed on exit
    mean = layer(x).detach()
    var = (x * x) @ var_w.T + var_b
    z_mean = (out.mean(0) - mean) / (var / n).sqrt()
    # the sample variance of n Gaussian draws has standard error var * sqrt(2 / (n - 1))
    z_var = (out.var(0) - var) / (var * math.sqrt(2 / (n - 1)))
    assert z_mean.abs().max() < Z_MAX and z_var.abs().max() < Z_MAX


@pytest.mark.parametrize(
    "prior",
    [
        pdist.Normal(torch.tensor(0.3), torch.tensor(0.7)),
        pdist.Laplace(torch.tensor(-0.2), torch.tensor(0.5)),
        priors.CorrelatedConv(lengthscale=1.0).distribution(
            "w", torch.zeros(2, 1, 3, 3), nn.Conv2d(1, 2, 3), {}
        ),
    ],
    ids=["normal", "laplace", "correlated-conv"],
)
def test_closed_form_expected_log_prob_matches_monte_carlo(prior):
    assert has_closed_form(prior)
    gen = torch.Generator().manual_seed(0)
    shape = (2, 1, 3, 3)
    loc = torch.randn(shape, generator=gen)
    scale = 0.2 + torch.rand(shape, generator=gen)
    exact = expected_log_prob(prior, loc, scale).sum()
    n = 20000
    draws = loc + scale * torch.randn(n, *shape, generator=gen)
    values = prior.log_prob(draws).reshape(n, -1).sum(-1).double()
    z = abs(float(values.mean() - exact)) / float(values.std() / math.sqrt(n))
    assert z < Z_MAX
    assert not has_closed_form(pdist.StudentT(3.0, 0.0, 1.0))


def test_closed_form_normal_golden_value():
    # E log N(theta; 0, 2^2) for theta ~ N(1, 0.5^2):
    # -log 2 - log(2 pi)/2 - (1^2 + 0.5^2) / (2 * 4) = -0.693147 - 0.918939 - 0.15625
    value = expected_log_prob(
        pdist.Normal(torch.tensor(0.0), torch.tensor(2.0)), torch.tensor(1.0), torch.tensor(0.5)
    )
    assert float(value) == pytest.approx(-1.768336, abs=1e-6)


# ------------------------------------------------------------------------------ fitting
def test_fit_returns_a_variational_posterior_with_its_guide():
    bnn, x, y = _regression()
    seen: list[StepEvent] = []
    post = VI(steps=60, lr=0.02, draws=400).fit(
        bnn, x, y, seed=0, progress=False, callbacks=[seen.append]
    )
    D = bnn.num_params
    assert post.kind == "variational" and not post.partial
    assert post.theta.shape == (1, 400, D)
    assert post.sample_stats["log_q"].shape == (1, 400)
    assert post.attrs["elbo_trace"].shape == (1, 60) and post.attrs["steps_run"] == 60
    assert [e.stage for e in seen] == ["fit"] * 60 and "elbo" in seen[0].info
    guide = post.attrs["variational"]
    loc, scale = guide["loc"], guide["scale"]
    assert guide["family"] == "mean_field" and loc.shape == scale.shape == (D,)
    # the draws come from N(loc, scale^2): means within Monte Carlo error, exact log q
    draws = post.theta[0]
    z = (draws.mean(0) - loc) / (scale / math.sqrt(400))
    assert z.abs().max() < Z_MAX + 0.5  # max over D=31 coordinates
    log_q = torch.distributions.Normal(loc, scale).log_prob(draws).sum(-1)
    torch.testing.assert_close(post.sample_stats["log_q"][0], log_q)
    # the ELBO climbs
    trace = post.attrs["elbo_trace"][0]
    assert trace[-15:].mean() > trace[:15].mean()
    assert post.evaluate(x, y)["rmse"] < float(y.std())


def test_same_seed_same_result_and_the_global_rng_is_untouched():
    bnn, x, y = _regression()
    vi = VI(steps=15, batch_size=8, num_particles=2, draws=5)
    state = torch.get_rng_state()
    a = vi.fit(bnn, x, y, seed=3, progress=False)
    assert torch.equal(torch.get_rng_state(), state)
    b = vi.fit(bnn, x, y, seed=3, progress=False)
    c = vi.fit(bnn, x, y, seed=4, progress=False)
    assert torch.equal(a.theta, b.theta)
    assert not torch.equal(a.theta, c.theta)


def test_ctrl_c_returns_draws_from_the_guide_so_far():
    bnn, x, y = _regression()

    def interrupt(event: StepEvent) -> None:
        if event.step == 5:
            raise KeyboardInterrupt

    with pytest.warns(RuntimeWarning, match="interrupted during fit step 5"):
        post = VI(steps=50, draws=7).fit(bnn, x, y, seed=0, progress=False, callbacks=[interrupt])
    assert post.partial and post.attrs["stopped"] == "interrupted"
    assert post.theta.shape == (1, 7, bnn.num_params)
    assert post.attrs["elbo_trace"].shape == (1, 6)


def test_non_finite_elbo_raises_with_the_guide_before_it():
    bnn, x, y = _regression()
    with pytest.raises(NonFiniteError, match="fit step 1") as err:
        VI(steps=5, draws=3, lr=1e30).fit(bnn, x, y, seed=0, progress=False)
    post = err.value.posterior
    assert post.partial and torch.isfinite(post.theta).all()


@pytest.mark.parametrize("backend", [VI, SSVI])
def test_targets_that_overflow_the_likelihood_are_named_y(backend):
    """A huge but finite y (float64) fails up front naming y, not as a non-finite step."""
    bnn, x, y = _regression()
    with pytest.raises(ValueError, match=r"^y: the likelihood overflows.*Standardise y"):
        backend(steps=5, draws=3).fit(bnn, x, y * 1e200, seed=0, progress=False)


def test_kl_annealing_schedules():
    assert kl_weight(None, 0, 10) == 1.0
    assert [kl_weight(0.5, t, 10) for t in range(6)] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1, 1])
    assert kl_weight(lambda t, n: t / n, 3, 10) == pytest.approx(0.3)
    with pytest.raises(ValueError, match="kl_anneal"):
        kl_weight(lambda t, n: -1.0, 0, 10)
    bnn, x, y = _regression()
    seen: list[StepEvent] = []
    VI(steps=4, kl_anneal=0.5, draws=2).fit(
        bnn, x, y, seed=0, progress=False, callbacks=[seen.append]
    )
    assert [e.info["beta"] for e in seen] == pytest.approx([0.5, 1, 1, 1])


def test_map_initialisation_runs_a_map_stage_first():
    bnn, x, y = _regression()
    seen: list[StepEvent] = []
    post = VI(steps=3, init="map", init_steps=40, lr=0.05, draws=2).fit(
        bnn, x, y, seed=0, progress=False, callbacks=[seen.append]
    )
    stages = [e.stage for e in seen]
    assert stages == ["map"] * 40 + ["fit"] * 3
    log_joint = [e.info["log_joint"] for e in seen[:40]]
    assert log_joint[-1] > log_joint[0]
    assert post.attrs["init"] == "map"


def test_initialisation_from_a_posterior():
    bnn, x, y = _regression()
    first = VI(steps=20, draws=2).fit(bnn, x, y, seed=0, progress=False)
    resumed = VI(init=first)._initial_guide(bnn, seed=0)
    stored = guide_from_posterior(first)
    torch.testing.assert_close(resumed.loc.detach(), stored.loc.detach())
    torch.testing.assert_close(resumed.scale().detach(), stored.scale().detach())
    draws = torch.randn(2, 50, bnn.num_params, dtype=torch.float64) * 0.3 + 1.0
    from_draws = VI(init=Posterior(draws, bnn))._initial_guide(bnn, seed=0)
    torch.testing.assert_close(from_draws.loc.detach(), draws.reshape(-1, bnn.num_params).mean(0))
    with pytest.raises(ValueError, match="no variational family"):
        guide_from_posterior(Posterior(draws, bnn))


@pytest.mark.parametrize(
    "prior",
    [
        priors.StudentT(3.0, 1.0),
        priors.Cauchy(0.5),
        priors.ScaleMixture(),
        priors.Horseshoe(1.0),
        priors.InverseGammaScale(2.0, 2.0, fan_in=True),
    ],
    ids=["student-t", "cauchy", "scale-mixture", "horseshoe", "inverse-gamma"],
)
def test_heavy_tailed_and_hierarchical_priors_fit(prior):
    bnn, x, y = _regression(prior=prior)
    post = VI(steps=30, lr=0.02, draws=5, num_particles=2).fit(bnn, x, y, seed=0, progress=False)
    assert torch.isfinite(post.attrs["elbo_trace"]).all()
    assert torch.isfinite(post.theta).all()


def test_pyro_engine_fits_without_the_global_param_store():
    bnn, x, y = _regression()
    pyro.clear_param_store()
    vi = VI(steps=20, lr=0.02, engine="pyro", draws=5, batch_size=12, kl_anneal=0.5)
    a = vi.fit(bnn, x, y, seed=1, progress=False)
    b = vi.fit(bnn, x, y, seed=1, progress=False)
    assert torch.equal(a.theta, b.theta)
    assert a.attrs["engine"] == "pyro" and a.attrs["local_reparam"] == 0
    assert a.attrs["elbo_trace"].shape == (1, 20)
    assert not list(pyro.get_param_store().keys())


def test_save_and_load_keep_the_guide(tmp_path):
    bnn, x, y = _regression()
    post = VI(steps=5, draws=4).fit(bnn, x, y, seed=0, progress=False)
    post.save(tmp_path / "vi.pt")
    loaded = Posterior.load(tmp_path / "vi.pt", bnn=bnn)
    assert torch.equal(loaded.theta, post.theta)
    for key in ("loc", "scale"):
        assert torch.equal(loaded.attrs["variational"][key], post.attrs["variational"][key])
    assert torch.equal(loaded.attrs["elbo_trace"], post.attrs["elbo_trace"])
