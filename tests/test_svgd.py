"""SVGD backend: arguments, the driver contract, the update's pieces, and every variant running.

The statistical checks (recovering known posteriors) are in
``tests/statistical/test_svgd_statistical.py``.
"""

from __future__ import annotations

import dataclasses
import math
import warnings

import pytest
import torch
from statistical.blr import linear_regression

from bayesdl import Posterior, likelihoods, priors
from bayesdl.inference import ConvergenceWarning
from bayesdl.inference.base import NonFiniteError
from bayesdl.inference.particles.algorithm import bnn_target
from bayesdl.inference.particles.directions import SteinDirection
from bayesdl.inference.particles.initial import draw_initial
from bayesdl.inference.particles.scores import GaussianProcessScore
from bayesdl.inference.particles.stein_kernels import IMQ, RBF, Hybrid
from bayesdl.inference.particles.svgd import SVGD, annealing, uniform_domain
from bayesdl.models import BNN, MLP

DTYPE = torch.float64


def classifier(seed: int = 0, n: int = 40):
    """A 4-8-3 MLP classifier on random data, in float64."""
    torch.manual_seed(seed)
    bnn = BNN(MLP(4, [8], 3).to(DTYPE), priors.Gaussian(1.0), likelihoods.Categorical())
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=gen, dtype=DTYPE)
    y = torch.randint(0, 3, (n,), generator=gen)
    return bnn, x, y


def regression_1d(seed: int = 0, n: int = 30):
    """A 1-16-1 tanh MLP and a sine with a gap in the inputs."""
    torch.manual_seed(seed)
    bnn = BNN(
        MLP(1, [16], 1, activation="tanh").to(DTYPE),
        priors.Gaussian(1.0),
        likelihoods.Gaussian(0.1),
    )
    gen = torch.Generator().manual_seed(seed)
    x = torch.cat([torch.rand(n // 2, 1) * 1.5 - 2, torch.rand(n - n // 2, 1) * 1.5 + 0.5])
    x = x.to(DTYPE)
    y = torch.sin(2 * x[:, 0]) + 0.1 * torch.randn(n, generator=gen, dtype=DTYPE)
    return bnn, x, y


def gaussian_log_density(theta: torch.Tensor) -> torch.Tensor:
    return -0.5 * (theta**2).sum(-1)


def target_of(svgd: SVGD, bnn, x, y, num_data: int, batch_seed: int = 0):
    """The BNN target an SVGD fit builds (no measurement inputs), and its random streams."""
    target = bnn_target(svgd, bnn, x, y, num_data, batch_seed)
    return target, target.streams(1, 2)


def direction_of(svgd: SVGD) -> SteinDirection:
    """The update direction of ``svgd``'s settings."""
    return SteinDirection.of(svgd)


# ------------------------------------------------------------------------------ arguments
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"particles": 0}, "particles"),
        ({"kernel": "rbf"}, "kernel"),
        ({"steps": 0}, "steps"),
        ({"optimizer": "lbfgs"}, "optimizer"),
        ({"optimizer": 3}, "optimizer"),
        ({"lr": 0.0}, "lr"),
        ({"optimizer_kwargs": [0.9]}, "optimizer_kwargs"),
        ({"optimizer_kwargs": {"lr": 0.1}}, "optimizer_kwargs"),
        ({"batch_size": 0}, "batch_size"),
        ({"stochastic": "yes"}, "stochastic"),
        ({"stochastic": True}, "stochastic"),  # Adam
        (
            {
                "stochastic": True,
                "optimizer": torch.optim.SGD,
                "optimizer_kwargs": {"momentum": 0.9},
            },
            "stochastic",
        ),
        ({"update": "wgd"}, "update"),
        ({"update": "wgd-kde", "kernel": None}, "update"),
        ({"update": "wgd-kde", "kernel": "hybrid"}, "update"),
        (
            {"update": "wgd-sge", "stochastic": True, "optimizer": torch.optim.SGD},
            "stochastic",
        ),
        ({"measurement": torch.zeros(3, 4)}, "measurement"),  # weight kernel
        ({"kernel": "function", "measurement": "grid"}, "measurement"),
        ({"kernel": "function", "measurement_size": 3}, "measurement_size"),
        ({"anneal": "cosine"}, "anneal"),
        ({"anneal": "linear", "anneal_steps": 0}, "anneal_steps"),
        ({"anneal_steps": -3}, "anneal_steps"),  # checked even without annealing
        ({"anneal_steps": 2.5}, "anneal_steps"),
        ({"particles": 1}, "particles: SVGD needs at least 2"),
        ({"prior_score": "gp"}, "prior_score"),
        ({"prior_draws": 1}, "prior_draws"),
        ({"ssge_eta": 0.0}, "ssge_eta"),
        ({"ssge_threshold": 1.5}, "ssge_threshold"),
    ],
)
def test_bad_settings_raise_naming_the_argument(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        SVGD(**kwargs)


def test_fit_checks_its_arguments_before_any_work():
    bnn, x, y = classifier()
    svgd = SVGD(particles=3, steps=2)
    with pytest.raises(TypeError, match="bnn"):
        svgd.fit("a network", x, y)
    bad = x.clone()
    bad[0, 0] = math.nan
    with pytest.raises(ValueError, match="x"):
        svgd.fit(bnn, bad, y)
    with pytest.raises(ValueError, match="init_theta"):
        svgd.fit(bnn, x, y, init_theta=torch.zeros(4, bnn.num_params, dtype=DTYPE))
    with pytest.raises(ValueError, match="num_data"):
        svgd.fit(bnn, x, y, num_data=10)
    noisy = BNN(
        MLP(4, [8], 1).to(DTYPE),
        priors.Gaussian(1.0),
        likelihoods.Gaussian(torch.distributions.HalfNormal(torch.tensor(1.0, dtype=DTYPE))),
    )
    with pytest.raises(ValueError, match="kernel"):
        SVGD(particles=3, kernel="function").fit(noisy, x, y[:, None].to(DTYPE))
    # A hybrid kernel updates the noise scale through its weight-space score.
    post = SVGD(particles=3, kernel="hybrid", steps=2).fit(
        noisy, x, y.to(DTYPE), seed=0, progress=False
    )
    assert torch.isfinite(post.theta).all()


def test_a_single_particle_is_a_map_fit_without_a_kernel():
    bnn, x, y = classifier()
    post = SVGD(particles=1, kernel=None, steps=2).fit(bnn, x, y, seed=0, progress=False)
    assert post.theta.shape == (1, 1, bnn.num_params)


@pytest.mark.filterwarnings("ignore:measurement. points away:UserWarning")
def test_bad_measurement_inputs_are_named_measurement():
    bnn, x, y = classifier()
    bad = x[:5].clone()
    bad[0, 0] = math.nan
    with pytest.raises(ValueError, match=r"^measurement: contains 1 NaN"):
        SVGD(particles=3, kernel="function", measurement=bad).fit(bnn, x, y, progress=False)


def test_exploding_particles_warn_naming_the_learning_rate():
    bnn, x, y = classifier()
    with pytest.warns(ConvergenceWarning, match=r"lr: the particles exploded.*Lower the learning"):
        post = SVGD(particles=3, steps=20, lr=1e6).fit(bnn, x, y, seed=0, progress=False)
    assert post.theta.abs().max() > 1e3  # the warning is about a real explosion
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        SVGD(particles=3, steps=20).fit(bnn, x, y, seed=0, progress=False)


def test_sample_checks_its_arguments():
    init = torch.zeros(3, 2)
    with pytest.raises(TypeError, match="log_density"):
        SVGD(particles=3).sample("density", init)
    with pytest.raises(ValueError, match="kernel"):
        SVGD(particles=3, kernel="function").sample(gaussian_log_density, init)
    with pytest.raises(ValueError, match="batch_size"):
        SVGD(particles=3, batch_size=2).sample(gaussian_log_density, init)
    with pytest.raises(ValueError, match="init_theta"):
        SVGD(particles=3).sample(gaussian_log_density, torch.zeros(3))
    with pytest.raises(ValueError, match="init_theta"):
        SVGD(particles=4).sample(gaussian_log_density, init)
    with pytest.raises(TypeError, match="init_theta"):
        SVGD(particles=3).sample(gaussian_log_density, torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="log_density"):
        SVGD(particles=3, steps=1).sample(lambda t: t.sum(), init, progress=False)


# ------------------------------------------------------------------------------ the result
def test_result_is_one_chain_of_particles(seed):
    bnn, x, y = classifier(seed)
    post = SVGD(particles=5, kernel="weight", steps=3).fit(bnn, x, y, seed=seed, progress=False)
    assert isinstance(post, Posterior)
    assert post.kind == "particles" and not post.partial
    assert post.theta.shape == (1, 5, bnn.num_params)
    assert post.sample_stats["lp"].shape == (1, 5)
    assert post.attrs["inference"] == "svgd" and post.attrs["steps"] == 3
    idata = post.to_arviz()
    attrs = idata.posterior.attrs
    assert attrs["draws_are"] == "particles" and attrs["rhat_applies"] == 0
    assert idata.posterior.sizes["chain"] == 1 and idata.posterior.sizes["draw"] == 5
    assert post.predict(x).mean.shape == (len(x), 3)


def test_same_seed_same_particles_and_global_rng_untouched(seed):
    bnn, x, y = classifier(seed)
    svgd = SVGD(particles=4, kernel="function", steps=3, batch_size=10)
    state = torch.get_rng_state()
    a = svgd.fit(bnn, x, y, seed=seed, progress=False).theta
    assert torch.equal(torch.get_rng_state(), state)
    b = svgd.fit(bnn, x, y, seed=seed, progress=False).theta
    c = svgd.fit(bnn, x, y, seed=seed + 1, progress=False).theta
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_interrupt_returns_the_particles_so_far_marked_partial(seed):
    bnn, x, y = classifier(seed)
    svgd = SVGD(particles=4, kernel="hybrid", steps=10)

    def interrupt(event):
        if event.step == 2:
            raise KeyboardInterrupt

    with pytest.warns(RuntimeWarning, match="interrupted"):
        post = svgd.fit(bnn, x, y, seed=seed, progress=False, callbacks=[interrupt])
    assert post.partial and post.attrs["stopped"] == "interrupted"
    three_steps = SVGD(particles=4, kernel="hybrid", steps=3).fit(
        bnn, x, y, seed=seed, progress=False
    )
    assert torch.equal(post.theta, three_steps.theta)


def test_non_finite_values_raise_with_the_last_finite_particles():
    calls = {"n": 0}

    def flaky(theta):
        calls["n"] += 1
        value = gaussian_log_density(theta)
        return value * math.nan if calls["n"] > 2 else value

    init = torch.linspace(-1, 1, 6).reshape(3, 2)
    with pytest.raises(NonFiniteError, match="non-finite") as error:
        SVGD(particles=3, steps=10).sample(flaky, init, progress=False)
    partial = error.value.posterior
    assert partial.partial and partial.attrs["stopped"] == "non-finite"
    two_steps = SVGD(particles=3, steps=2).sample(gaussian_log_density, init, progress=False)
    assert torch.equal(partial.theta, two_steps.theta)


def test_progress_false_is_silent(capsys):
    SVGD(particles=3, steps=3).sample(gaussian_log_density, torch.randn(3, 2), progress=False)
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""


def test_callbacks_see_the_particles_and_step_statistics():
    seen = []
    SVGD(particles=3, steps=4, anneal="linear", anneal_steps=4).sample(
        gaussian_log_density,
        torch.randn(3, 2, generator=torch.Generator().manual_seed(0)),
        progress=False,
        callbacks=[lambda e: seen.append((e.step, e.info["gamma"], e.info["theta"].clone()))],
    )
    assert [s for s, _, _ in seen] == [0, 1, 2, 3]
    assert [g for _, g, _ in seen] == [0.0, 0.25, 0.5, 0.75]
    assert not torch.equal(seen[0][2], seen[-1][2])


# ------------------------------------------------------------------------------ initialisation
def test_net_init_draws_fresh_networks_at_the_modules_own_scale(seed):
    """init="net": particles differ, repeat with the seed, and each layer's weights and biases
    have the variance of PyTorch's Linear initialisation, U(-b, b) with b = 1/sqrt(fan_in):
    b^2/3, checked against the standard error of a sample variance, b^2 sqrt((1/5-1/9)/n)."""
    torch.manual_seed(seed)
    bnn = BNN(MLP(30, [40], 3).to(DTYPE), priors.Gaussian(1.0), likelihoods.Categorical())
    svgd = SVGD(particles=20)
    theta = draw_initial(svgd.init, bnn, 20, seed)
    assert torch.equal(theta, draw_initial(svgd.init, bnn, 20, seed))
    assert not torch.equal(theta, draw_initial(svgd.init, bnn, 20, seed + 1))
    assert torch.pdist(theta).min() > 0
    sites = bnn.unravel(theta)
    for name, fan_in in [("layers.0", 30), ("layers.1", 40)]:
        for part in ("weight", "bias"):
            values = sites[f"{name}.{part}"].flatten()
            bound = 1 / math.sqrt(fan_in)
            assert values.abs().max() <= bound
            se = bound**2 * math.sqrt((1 / 5 - 1 / 9) / len(values))
            assert abs(float(values.var()) - bound**2 / 3) < 4 * se, (name, part)
    prior = draw_initial(SVGD(particles=20, init="prior").init, bnn, 20, seed)
    torch.testing.assert_close(prior, bnn.init_theta(20, seed))
    assert prior.std() > 5 * theta.std()  # N(0, 1) draws: sd 1 against about 0.1


def test_init_options_and_their_errors(seed):
    bnn, x, y = classifier(seed)
    fixed = bnn.init_theta(3, seed, init="net")
    post = SVGD(particles=3, steps=1, lr=1e-12, init=lambda b, p, s: fixed).fit(
        bnn, x, y, seed=seed, progress=False
    )
    torch.testing.assert_close(post.theta[0], fixed)
    assert post.attrs["init"] == "callable"
    with pytest.raises(ValueError, match="init"):
        SVGD(particles=3, init="kaiming")
    with pytest.raises(ValueError, match="init"):
        SVGD(particles=3, steps=1, init=lambda b, p, s: fixed[:2]).fit(bnn, x, y, progress=False)
    with pytest.raises(TypeError, match="init"):
        SVGD(particles=3, steps=1, init=lambda b, p, s: None).fit(bnn, x, y, progress=False)

    class Scaled(torch.nn.Module):  # a parameter whose module has no reset_parameters()
        def __init__(self):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.ones(4, 3, dtype=DTYPE))

        def forward(self, inputs):
            return inputs @ self.scale

    custom = BNN(Scaled(), priors.Gaussian(1.0), likelihoods.Categorical())
    with pytest.raises(ValueError, match="reset_parameters"):
        SVGD(particles=3, steps=1).fit(custom, x, y, progress=False)
    SVGD(particles=3, steps=1, init="prior").fit(custom, x, y, progress=False)


def test_off_data_measurement_with_an_ssge_prior_score_warns(seed):
    bnn, x, y = classifier(seed)
    pool = torch.randn(30, 4, dtype=DTYPE)
    with pytest.warns(UserWarning, match="over-spread"):
        SVGD(particles=3, kernel="function", steps=1, measurement=pool).fit(
            bnn, x, y, seed=seed, progress=False
        )


def test_probs_function_space_scores_and_compares_probabilities(seed):
    """function_space="probs": the kernel sees softmax outputs, and the likelihood's score in
    probability space is d/dp_c log(p_y / sum_c' p_c') = [y = c] / p_c - 1 per example (times
    num_data / B). The -1 (normalisation) is constant across classes, so the softmax Jacobian
    pulls it back to zero."""
    bnn, x, y = classifier(seed, n=6)
    svgd = SVGD(particles=3, kernel="function", function_space="probs", prior_score=zero_prior)
    target, streams = target_of(svgd, bnn, x, y, len(x))
    theta = bnn.init_theta(3, seed)
    batch = target.next_batch()
    fun = target.functions(theta, batch, streams)
    probs = torch.softmax(bnn.forward(theta, x), -1)
    torch.testing.assert_close(fun.flat, probs.flatten(1))
    onehot = torch.nn.functional.one_hot(batch[1], 3)
    expected = onehot / probs[:, torch.arange(6), batch[1]][..., None] - 1
    torch.testing.assert_close(target.function_score(fun, batch, streams), expected.flatten(1))
    # A member whose probability of the label underflows to 0 gets a finite score, 1/eps - 1.
    sure = fun.f.detach().clone()
    sure[0, 0] = 0.0
    sure[0, 0, (batch[1][0] + 1) % 3] = 1.0
    wrong = target.function_score(dataclasses.replace(fun, f=sure), batch, streams)
    assert torch.isfinite(wrong).all()
    scale = len(x) / len(batch[1])  # num_data / batch size (full batch here: 1)
    expected_wrong = torch.tensor(scale / torch.finfo(DTYPE).eps - scale, dtype=DTYPE)
    torch.testing.assert_close(wrong[0, batch[1][0]], expected_wrong)
    regression, xr, yr = regression_1d(seed)
    with pytest.raises(ValueError, match="function_space"):
        SVGD(particles=3, kernel="function", function_space="probs").fit(regression, xr, yr)
    with pytest.raises(ValueError, match="function_space"):
        SVGD(particles=3, function_space="softmax")
    with pytest.raises(ValueError, match="function_space"):
        SVGD(particles=3, kernel="weight", function_space="probs")


def zero_prior(f, inputs):
    return torch.zeros_like(f)


# ------------------------------------------------------------------------------ the update
def test_pull_back_is_the_jacobian_transpose_product(seed):
    """f-SVGD's weight update is J_i^T phi_f[i], checked against an explicit Jacobian."""
    from bayesdl.inference.particles.targets import pull_back

    bnn, x, y = regression_1d(seed)
    svgd = SVGD(particles=3, kernel="function")
    target, streams = target_of(svgd, bnn, x, y, len(x))
    theta = bnn.init_theta(3, seed)
    fun = target.functions(theta, target.next_batch(), streams)
    phi_f = torch.randn(fun.flat.shape, generator=torch.Generator().manual_seed(seed), dtype=DTYPE)
    pulled = pull_back(fun, phi_f)
    for i in range(3):
        jacobian = torch.func.jacrev(lambda t: bnn.forward(t[None], x).flatten())(theta[i])
        torch.testing.assert_close(pulled[i], jacobian.T @ phi_f[i])


def test_hybrid_step_is_autograd_of_the_composed_kernel(seed):
    """One SGD step of h-SVGD on a nonlinear BNN equals the update written with autograd:
    phi_i = (1/P) sum_j [k_w(w_j, w_i) s_j + grad_{w_j} k_f(f(w_j), f(w_i))], the second term
    differentiated through particle j's network, f(w_i) held fixed."""
    bnn, x, y = classifier(seed, n=9)
    p, lr = 4, 0.05
    init = bnn.init_theta(p, seed)
    with torch.no_grad():  # bandwidths at the particles' typical distances: kernels near 1/e
        h_w = float(torch.pdist(init).pow(2).mean())
        h_f = float(torch.pdist(bnn.forward(init, x).flatten(1)).pow(2).mean())
    kernel = Hybrid(RBF("weight", bandwidth=h_w), RBF("function", bandwidth=h_f))
    svgd = SVGD(particles=p, kernel=kernel, steps=1, optimizer=torch.optim.SGD, lr=lr)
    post = svgd.fit(bnn, x, y, init_theta=init, seed=seed, progress=False)

    w = init.clone().requires_grad_(True)
    (score,) = torch.autograd.grad(bnn.log_joint(w, x, y).sum(), w)
    k_w = torch.exp(-(torch.cdist(init, init) ** 2) / h_w)
    repulsion = torch.zeros_like(init)
    for i in range(p):
        w = init.clone().requires_grad_(True)
        f = bnn.forward(w, x).flatten(1)
        composed = torch.exp(-((f - f[i].detach()) ** 2).sum(1) / h_f).sum()
        (grad,) = torch.autograd.grad(composed, w)
        repulsion[i] = grad.sum(0)  # sum over j of grad_{w_j} k_f(f_j, f_i)
    expected = init + lr * (k_w @ score + repulsion) / p
    torch.testing.assert_close(post.theta[0], expected)
    # The repulsion pulled back through particle i's own Jacobian instead is caught.
    w = init.clone().requires_grad_(True)
    f = bnn.forward(w, x).flatten(1)
    own = RBF("function", bandwidth=h_f)(f.detach()).repulsion
    (wrong,) = torch.autograd.grad(f, w, grad_outputs=own)
    assert not torch.allclose(init + lr * (k_w @ score + wrong) / p, expected)


def test_hybrid_update_equals_weight_svgd_with_metric_xtx_on_a_linear_model(seed):
    """For f(w) = X w the composed RBF kernel is the weight RBF kernel with metric X^T X, so
    h-SVGD (driving kernel with that metric) and w-SVGD with it take the same step."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(12, 3, generator=gen, dtype=DTYPE)
    y = x @ torch.tensor([1.0, -0.5, 0.3], dtype=DTYPE) + 0.1 * torch.randn(12, generator=gen)
    torch.manual_seed(seed)
    net = torch.nn.Linear(3, 1, bias=False).to(DTYPE)
    bnn = BNN(net, priors.Gaussian(1.0), likelihoods.Gaussian(0.5))
    metric, h = x.T @ x, 4.0
    init = bnn.init_theta(5, seed)

    def step(kernel):
        svgd = SVGD(particles=5, kernel=kernel, steps=1, optimizer=torch.optim.SGD, lr=0.01)
        return svgd.fit(bnn, x, y[:, None], init_theta=init, seed=seed, progress=False).theta

    weight = RBF("weight", bandwidth=h, metric=metric)
    hybrid = Hybrid(weight, RBF("function", bandwidth=h))
    torch.testing.assert_close(step(hybrid), step(weight))
    assert not torch.allclose(step(weight), init)


@pytest.mark.parametrize("kernel", [None, "weight", IMQ()], ids=["ensemble", "rbf", "imq"])
def test_minibatch_updates_average_to_the_full_batch_update(kernel, seed):
    """The score is linear in the likelihood terms, so over one epoch of minibatches (scaled by
    num_data / batch_size) the weight-space update averages to the full-batch one exactly."""
    bnn, x, y = classifier(seed, n=12)
    theta = bnn.init_theta(4, seed)
    full = SVGD(particles=4, kernel=kernel)
    gen = torch.Generator()
    full_target, _ = target_of(full, bnn, x, y, 12)
    phi_full, _ = direction_of(full)(full_target, theta, None, 1.0, gen)
    mini = SVGD(particles=4, kernel=kernel, batch_size=4)
    target, _ = target_of(mini, bnn, x, y, 12, batch_seed=seed)
    step = direction_of(mini)
    phis = [step(target, theta, target.next_batch(), 1.0, gen)[0] for _ in range(3)]
    torch.testing.assert_close(torch.stack(phis).mean(0), phi_full)
    # A wrong scaling (forgetting num_data / batch_size) would be off by a factor on the data term.
    assert not torch.allclose(torch.stack(phis).sum(0), phi_full)


@pytest.mark.parametrize("tempering", ["posterior", "likelihood"])
def test_temperature_scales_the_function_space_score(tempering, seed):
    bnn, x, y = regression_1d(seed)

    def gp(f, inputs):
        return GaussianProcessScore(lambda a, b: torch.exp(-0.5 * (a - b.T) ** 2))(f, inputs)

    def score(temperature, prior_only=False):
        hot = BNN(bnn.net, bnn.prior, bnn.likelihood, temperature, tempering)
        prior = gp if not prior_only else (lambda f, inputs: torch.zeros_like(f))
        svgd = SVGD(particles=3, kernel="function", prior_score=prior)
        target, streams = target_of(svgd, hot, x, y, len(x))
        fun = target.functions(bnn.init_theta(3, seed), target.next_batch(), streams)
        return target.function_score(fun, target.next_batch(), streams)

    cold, warm = score(1.0), score(2.0)
    lik_cold, lik_warm = score(1.0, True), score(2.0, True)
    torch.testing.assert_close(lik_warm, lik_cold / 2)  # the likelihood is always tempered
    prior_part_cold, prior_part_warm = cold - lik_cold, warm - lik_warm
    factor = 2.0 if tempering == "posterior" else 1.0
    torch.testing.assert_close(prior_part_warm, prior_part_cold / factor)


def test_stochastic_noise_has_covariance_two_lr_k_over_p(seed):
    """Langevin noise: lr * xi has covariance 2 lr K / P between particles, per coordinate."""
    svgd = SVGD(particles=3, optimizer=torch.optim.SGD, lr=0.01, stochastic=True)
    x = torch.tensor([[0.0], [0.5], [2.0]], dtype=DTYPE)
    km = RBF()(x)
    gen = torch.Generator().manual_seed(seed)
    n = 20000
    langevin = direction_of(svgd).langevin
    draws = torch.stack([langevin(km, x, gen)[:, 0] for _ in range(n)]) * svgd.lr
    expected = 2 * svgd.lr * km.value / 3
    sample = torch.cov(draws.T)
    var = expected.diagonal()
    se = torch.sqrt((var[:, None] * var[None, :] + expected**2) / n)  # SE of a Gaussian cov
    assert ((sample - expected).abs() / se).max() < 4
    assert ((sample - expected / 2).abs() / se).max() > 4  # half the noise would be caught


def test_annealing_schedules_golden_values():
    linear = annealing("linear", 100)
    assert [linear(t) for t in (0, 50, 100, 150)] == [0.0, 0.5, 1.0, 1.0]
    hyper = annealing("hyper", 130)  # tanh((1.3 t / T)^10): t = 100 gives tanh(1)
    assert hyper(100) == pytest.approx(math.tanh(1.0))
    assert hyper(0) == 0.0 and hyper(130) == 1.0
    cyclic = annealing("cyclic", 100)  # 5 cycles of c = 20 steps: ((t mod 20) / 20)^10
    assert cyclic(10) == pytest.approx(0.5**10)
    assert cyclic(20) == 0.0 and cyclic(39) == pytest.approx((19 / 20) ** 10)
    assert annealing(None, 10)(3) == 1.0
    assert annealing(lambda t: 0.3, 10)(3) == 0.3


def test_uniform_domain_draws_inside_the_widened_box():
    x = torch.tensor([[0.0, -1.0], [2.0, 1.0]])
    draw = uniform_domain(x, 500, margin=0.5)
    a = draw(torch.Generator().manual_seed(0))
    b = draw(torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.shape == (500, 2)
    assert (a[:, 0] >= -1).all() and (a[:, 0] <= 3).all()
    assert (a[:, 1] >= -2).all() and (a[:, 1] <= 2).all()
    assert a[:, 0].min() < -0.5 and a[:, 0].max() > 2.5  # the margin is used
    with pytest.raises(ValueError, match="size"):
        uniform_domain(x, 0)
    with pytest.raises(ValueError, match="margin"):
        uniform_domain(x, 3, margin=-1)


# ------------------------------------------------------------------------------ behaviour
def test_deep_ensemble_particles_converge_to_the_map():
    problem = linear_regression(seed=0)
    post = SVGD(particles=6, kernel=None, steps=600, lr=0.05).fit(
        problem.bnn, problem.x, problem.y, seed=0, progress=False
    )
    sd = torch.linalg.inv(problem.precision).diagonal().sqrt()
    # Gaussian posterior: the MAP is the posterior mean.
    assert ((post.theta[0] - problem.mean).abs() / sd).max() < 1e-3


def test_repulsion_spreads_the_functions_beyond_a_map_ensemble(seed):
    bnn, x, y = regression_1d(seed)
    grid = torch.linspace(-3, 3, 61, dtype=DTYPE)[:, None]
    settings = dict(particles=8, steps=300, lr=0.01)
    ensemble = SVGD(kernel=None, **settings).fit(bnn, x, y, seed=seed, progress=False)
    with pytest.warns(UserWarning, match="over-spread"):  # few prior draws off the data
        fsvgd = SVGD(kernel="function", measurement=uniform_domain(x, 20, 0.5), **settings).fit(
            bnn, x, y, seed=seed, progress=False
        )

    def spread(post):
        return float(post.predict(grid).samples[0, :, :, 0].std(0).mean())

    assert spread(fsvgd) > spread(ensemble)


VARIANTS = {
    "ensemble": dict(kernel=None),
    "weight": dict(kernel="weight"),
    "weight-imq-annealed": dict(kernel=IMQ(), anneal="hyper"),
    "function": dict(kernel="function"),
    "function-imq-pool": dict(
        kernel=IMQ("function"),
        measurement=torch.randn(30, 4, dtype=DTYPE),
        measurement_size=5,
        prior_score=GaussianProcessScore(lambda a, b: torch.exp(-0.5 * torch.cdist(a, b) ** 2)),
    ),
    "function-probs": dict(kernel="function", function_space="probs"),
    "hybrid-probs": dict(kernel="hybrid", function_space="probs"),
    "function-domain-gp": dict(
        kernel="function",
        measurement=uniform_domain(torch.randn(10, 4, dtype=DTYPE), 6),
        prior_score=GaussianProcessScore(lambda a, b: torch.exp(-0.5 * torch.cdist(a, b) ** 2)),
    ),
    "hybrid": dict(kernel="hybrid", anneal="cyclic"),
    "fw-svgd": dict(kernel=Hybrid(RBF("function"), RBF("function"))),
    "wgd-kde": dict(kernel="weight", update="wgd-kde"),
    "wgd-sge": dict(kernel="weight", update="wgd-sge"),
    "wgd-ssge": dict(kernel="weight", update="wgd-ssge"),
    "fwgd-kde": dict(kernel="function", update="wgd-kde"),
    "fwgd-sge": dict(kernel="function", update="wgd-sge"),
    "stochastic-ensemble": dict(kernel=None, stochastic=True, optimizer=torch.optim.SGD),
    "stochastic-weight": dict(kernel="weight", stochastic=True, optimizer=torch.optim.SGD),
    "stochastic-function": dict(kernel="function", stochastic=True, optimizer=torch.optim.SGD),
    "stochastic-hybrid": dict(kernel="hybrid", stochastic=True, optimizer=torch.optim.SGD),
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_every_variant_runs_with_minibatches(name, seed):
    bnn, x, y = classifier(seed)
    init = bnn.init_theta(4, seed)
    svgd = SVGD(particles=4, steps=4, batch_size=10, lr=1e-3, **VARIANTS[name])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warnings from a normal run
        post = svgd.fit(bnn, x, y, seed=seed, progress=False, init_theta=init)
    assert torch.isfinite(post.theta).all() and torch.isfinite(post.sample_stats["lp"]).all()
    assert not torch.equal(post.theta[0], init)
