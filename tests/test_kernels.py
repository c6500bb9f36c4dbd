"""Stein kernels and score estimators: golden values, gradients, invariances.

Golden values are derived in the comments; gradients are checked against central finite
differences in float64.
"""

from __future__ import annotations

import math

import pytest
import torch

from bayesdl import likelihoods, priors
from bayesdl.inference.particles.scores import (
    GaussianProcessScore,
    kde_score,
    sge_score,
    ssge_score,
)
from bayesdl.inference.particles.stein_kernels import (
    IMQ,
    RBF,
    Hybrid,
    Kernel,
    median_bandwidth,
    pairwise_sq_dists,
)
from bayesdl.models import BNN, MLP

DTYPE = torch.float64


def points(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=DTYPE)[:, None]


# ------------------------------------------------------------------------------ bandwidths
def test_median_bandwidth_golden_values():
    # Points 0, 1, 3: squared distances of the pairs i<j are 1, 9, 4; their median is 4.
    sq = pairwise_sq_dists(points(0, 1, 3))
    assert torch.equal(sq.diagonal(), torch.zeros(3, dtype=DTYPE))
    assert float(median_bandwidth(sq, rule="median")) == pytest.approx(8.0)  # 2 * med
    assert float(median_bandwidth(sq, rule="liu")) == pytest.approx(4 / math.log(4))  # med/log(P+1)
    # Points 0, 1, 3, 4: pairs 1, 9, 16, 4, 9, 1 -> sorted 1 1 4 9 9 16; an even count takes the
    # mean of the middle two, (4 + 9) / 2 = 6.5 (torch.median alone would give 4).
    sq = pairwise_sq_dists(points(0, 1, 3, 4))
    assert float(median_bandwidth(sq, rule="median")) == pytest.approx(13.0)
    assert float(median_bandwidth(sq, rule="liu")) == pytest.approx(6.5 / math.log(5))
    # Degenerate sets: one particle, or coinciding particles, give h = 1.
    assert float(median_bandwidth(pairwise_sq_dists(points(2.0)))) == 1.0
    assert float(median_bandwidth(pairwise_sq_dists(points(2, 2, 2)))) == 1.0
    with pytest.raises(ValueError, match="rule"):
        median_bandwidth(sq, rule="silverman")


def test_pairwise_distances_are_accurate_far_from_the_origin():
    x = points(1e3, 1e3 + 1e-2, 1e3 + 2e-2).float()
    exact = (x.double() - x.double().T) ** 2  # the float32 points' true squared distances
    # Centring first keeps float32 cancellation away; |x|^2 + |y|^2 - 2xy at |x|^2 = 1e6 would
    # lose the 1e-4 entirely.
    torch.testing.assert_close(pairwise_sq_dists(x).double(), exact, rtol=1e-3, atol=0.0)


# ------------------------------------------------------------------------------ golden kernels
def test_rbf_golden_values_and_repulsion():
    x = points(0, 1, 3)
    km = RBF(bandwidth="median")(x)
    # h = 2 med = 8 (above), so k(x, y) = exp(-(x - y)^2 / 8).
    expected = torch.exp(-torch.tensor([[0, 1, 9], [1, 0, 4], [9, 4, 0]], dtype=DTYPE) / 8)
    torch.testing.assert_close(km.value, expected)
    assert km.bandwidth == pytest.approx(8.0)
    # R_i = sum_j d/dx_j exp(-(x_j - x_i)^2 / 8) = -(1/4) sum_j k_ij (x_j - x_i):
    # R_0 = -(e^{-1/8} + 3 e^{-9/8}) / 4 (pushes the leftmost point left), by symmetry of the
    # formula R_1 = -(-e^{-1/8} + 2 e^{-1/2}) / 4, R_2 = -(-3 e^{-9/8} - 2 e^{-1/2}) / 4.
    e = math.exp
    golden = [
        -(e(-1 / 8) + 3 * e(-9 / 8)) / 4,
        -(-e(-1 / 8) + 2 * e(-1 / 2)) / 4,
        -(-3 * e(-9 / 8) - 2 * e(-1 / 2)) / 4,
    ]
    torch.testing.assert_close(km.repulsion[:, 0], torch.tensor(golden, dtype=DTYPE))
    # Liu & Wang's rule (the default): h = 4 / log 4, so k = 4^{-(x - y)^2 / 4}:
    # k(0, 1) = 4^{-1/4} = 1/sqrt 2, k(1, 3) = 4^{-1} = 1/4, k(0, 3) = 4^{-9/4} = 2^{-9/2}.
    liu = RBF()(x).value
    assert float(liu[0, 1]) == pytest.approx(2**-0.5)
    assert float(liu[1, 2]) == pytest.approx(0.25)
    assert float(liu[0, 2]) == pytest.approx(2**-4.5)


def test_imq_golden_values():
    # k = (1 + (x - y)^2 / h)^(-1/2) with h = 2 med = 8: k(0,1) = (9/8)^(-1/2) = sqrt(8/9),
    # k(1,3) = (3/2)^(-1/2) = sqrt(2/3), k(0,3) = (17/8)^(-1/2) = sqrt(8/17).
    km = IMQ(bandwidth="median")(points(0, 1, 3))
    assert float(km.value[0, 1]) == pytest.approx(math.sqrt(8 / 9))
    assert float(km.value[1, 2]) == pytest.approx(math.sqrt(2 / 3))
    assert float(km.value[0, 2]) == pytest.approx(math.sqrt(8 / 17))
    # beta = -1: k(0, 1) = 8/9.
    imq = IMQ(beta=-0.999999, bandwidth="median")
    assert float(imq(points(0, 1, 3)).value[0, 1]) == pytest.approx(8 / 9, rel=1e-5)


def test_fixed_bandwidth_and_factor():
    x = points(0, 1, 3)
    assert RBF(bandwidth=2.0)(x).bandwidth == 2.0
    assert RBF(bandwidth="median", bandwidth_factor=0.5)(x).bandwidth == pytest.approx(4.0)
    assert RBF(bandwidth_factor=0.5)(x).bandwidth == pytest.approx(2 / math.log(4))
    assert float(RBF(bandwidth=2.0)(x).value[0, 1]) == pytest.approx(math.exp(-0.5))


# ------------------------------------------------------------------------------ gradients
class Cauchy(Kernel):
    """A user kernel that only defines the profile: its derivative comes from autograd."""

    def profile(self, r):
        return 1.0 / (1.0 + r)


def _finite_difference_repulsion(kernel: Kernel, x: torch.Tensor, h: float, eps=1e-6):
    """R_i = sum_j d/dx_j k(x_j, x_i) by central differences at a fixed bandwidth h."""
    p, m = x.shape
    out = torch.zeros_like(x)
    for j in range(p):
        for c in range(m):
            step = torch.zeros(m, dtype=x.dtype)
            step[c] = eps
            plus = kernel.cross((x[j] + step)[None], x, h)[0]
            minus = kernel.cross((x[j] - step)[None], x, h)[0]
            out[:, c] += (plus - minus) / (2 * eps)  # d k(x_j, x_i) / d x_jc for every i
    return out


@pytest.mark.parametrize(
    "kernel",
    [
        RBF(),
        IMQ(),
        IMQ(beta=-0.3, bandwidth="median"),
        Cauchy(),
        RBF(metric=torch.tensor([[2.0, 0.5, 0.0], [0.5, 1.0, 0.2], [0.0, 0.2, 0.5]], dtype=DTYPE)),
    ],
    ids=["rbf", "imq", "imq-median", "user-profile", "rbf-metric"],
)
def test_repulsion_matches_finite_differences(kernel, seed):
    x = torch.randn(6, 3, generator=torch.Generator().manual_seed(seed), dtype=DTYPE)
    km = kernel(x)
    torch.testing.assert_close(km.value, km.value.T)
    torch.testing.assert_close(km.value.diagonal(), torch.ones(6, dtype=DTYPE))
    numeric = _finite_difference_repulsion(kernel, x, km.bandwidth)
    torch.testing.assert_close(km.repulsion, numeric, rtol=1e-6, atol=1e-8)


def test_finite_difference_check_can_fail(seed):
    """The checker notices a repulsion with the wrong sign (so it is not vacuous)."""
    x = torch.randn(5, 2, generator=torch.Generator().manual_seed(seed), dtype=DTYPE)
    km = RBF()(x)
    numeric = _finite_difference_repulsion(RBF(), x, km.bandwidth)
    with pytest.raises(AssertionError):
        torch.testing.assert_close(-km.repulsion, numeric, rtol=1e-6, atol=1e-8)


# ------------------------------------------------------------------------------ invariances
def _mlp_bnn() -> BNN:
    torch.manual_seed(0)
    return BNN(
        MLP(3, [5], 2, activation="tanh").to(DTYPE), priors.Gaussian(1.0), likelihoods.Categorical()
    )


def _permute_hidden(bnn: BNN, theta: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    sites = bnn.unravel(theta)
    sites["layers.0.weight"] = sites["layers.0.weight"][..., perm, :]
    sites["layers.0.bias"] = sites["layers.0.bias"][..., perm]
    sites["layers.1.weight"] = sites["layers.1.weight"][..., :, perm]
    return bnn.ravel(sites)


def test_function_kernel_is_invariant_to_permuting_hidden_units(seed):
    bnn = _mlp_bnn()
    x = torch.randn(7, 3, generator=torch.Generator().manual_seed(seed), dtype=DTYPE)
    theta = bnn.init_theta(4, seed)
    perm = torch.tensor([3, 0, 4, 1, 2])
    permuted = theta.clone()
    permuted[0] = _permute_hidden(bnn, theta[:1], perm)[0]
    f, f_perm = bnn.forward(theta, x).flatten(1), bnn.forward(permuted, x).flatten(1)
    kernel = RBF("function")
    a, b = kernel(f), kernel(f_perm)
    torch.testing.assert_close(a.value, b.value)
    torch.testing.assert_close(a.repulsion, b.repulsion)
    # The weight-space kernel is not invariant: the permuted network is another point in theta.
    assert not torch.allclose(RBF("weight")(theta).value, RBF("weight")(permuted).value)


def test_linear_model_function_kernel_equals_weight_kernel_with_metric(seed):
    """f = Z w at the measurement set Z, so ||f - f'||^2 = (w - w')^T Z^T Z (w - w')."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(9, 4, generator=gen, dtype=DTYPE)
    w = torch.randn(6, 4, generator=gen, dtype=DTYPE)
    f = w @ z.T
    in_function_space = RBF("function")(f)
    with_metric = RBF("weight", metric=z.T @ z)(w)
    torch.testing.assert_close(in_function_space.value, with_metric.value)
    assert in_function_space.bandwidth == pytest.approx(with_metric.bandwidth)
    # The function-space repulsion pulled back through the Jacobian J = Z is the metric
    # kernel's weight-space repulsion: J^T R_f = Z^T Z sum_j kappa' (w_j - w_i) (2/h).
    torch.testing.assert_close(in_function_space.repulsion @ z, with_metric.repulsion)
    # ...and differs from the plain Euclidean weight kernel.
    assert not torch.allclose(RBF("weight")(w).value, with_metric.value)


# ------------------------------------------------------------------------------ arguments
@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: RBF("output"), "space"),
        (lambda: RBF(bandwidth=-1.0), "bandwidth"),
        (lambda: RBF(bandwidth="scott"), "bandwidth"),
        (lambda: RBF(bandwidth=None), "bandwidth"),
        (lambda: RBF(bandwidth_factor=0.0), "bandwidth_factor"),
        (lambda: RBF(metric=torch.ones(2, 3)), "metric"),
        (lambda: RBF(metric=torch.tensor([[1.0, 2.0], [0.0, 1.0]])), "metric"),
        (lambda: RBF(metric=-torch.eye(2)), "metric"),
        (lambda: IMQ(beta=0.5), "beta"),
        (lambda: Hybrid(RBF(), "function"), "repulsion"),
    ],
)
def test_bad_kernel_arguments_raise_naming_them(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()


def test_kernel_rejects_particles_of_the_wrong_shape():
    with pytest.raises(ValueError, match="x"):
        RBF()(torch.zeros(3))
    with pytest.raises(ValueError, match="metric"):
        RBF(metric=torch.eye(3))(torch.zeros(4, 2))


# ------------------------------------------------------------------------------ score estimators
def _kde_log_density(x: torch.Tensor, samples: torch.Tensor, h: float) -> torch.Tensor:
    return torch.log(torch.exp(-((x[:, None] - samples[None]) ** 2).sum(-1) / h).sum(1))


def test_kde_score_is_the_gradient_of_the_kde_log_density(seed):
    samples = torch.randn(8, 2, generator=torch.Generator().manual_seed(seed), dtype=DTYPE)
    kernel = RBF(bandwidth=1.7)
    x = samples.clone().requires_grad_(True)
    (exact,) = torch.autograd.grad(_kde_log_density(x, samples.detach(), 1.7).sum(), x)
    # The KDE is fixed (samples detached) and evaluated at the sample points.
    torch.testing.assert_close(kde_score(samples, kernel=kernel), exact)


def test_sge_solves_the_stein_equations(seed):
    samples = torch.randn(10, 3, generator=torch.Generator().manual_seed(seed), dtype=DTYPE)
    km = RBF(bandwidth="median")(samples)  # the estimators' default kernel
    g = sge_score(samples, eta=0.1)
    # (K + eta I) G = -R: Stein's identity E[k g + grad k] = 0 over the samples, with a ridge.
    torch.testing.assert_close((km.value + 0.1 * torch.eye(10, dtype=DTYPE)) @ g, -km.repulsion)


def _gaussian_score_error(estimate, m: int, seed: int) -> float:
    gen = torch.Generator().manual_seed(seed)
    scale = torch.tensor([1.0, 2.0], dtype=DTYPE)
    samples = torch.randn(m, 2, generator=gen, dtype=DTYPE) * scale
    query = torch.randn(200, 2, generator=gen, dtype=DTYPE) * scale
    truth = -query / scale**2
    return float((estimate(samples, query) - truth).norm() / truth.norm())


@pytest.mark.parametrize("threshold", [None, 0.95])
def test_ssge_estimates_a_gaussian_score_better_with_more_samples(threshold, seed):
    """Trend check: the relative error of SSGE's Gaussian score falls as the samples grow."""

    def ssge(samples, query):
        return ssge_score(samples, query, threshold=threshold)

    # Averages over 5 independent sample sets, so the trend is not one draw's luck.
    errors = [
        sum(_gaussian_score_error(ssge, m, 5 * seed + r) for r in range(5)) / 5 for m in (25, 800)
    ]
    assert errors[0] > errors[1]
    assert errors[1] < 0.5  # the estimate points the right way (a zero estimate scores 1.0)

    def wrong(samples, query):  # the checker fails on a sign error
        return -ssge(samples, query)

    assert _gaussian_score_error(wrong, 800, seed) > 1.0


def test_sge_estimates_a_gaussian_score_better_with_more_samples(seed):
    def at_samples(samples, query):  # SGE estimates at the samples: compare there
        return sge_score(samples)

    errors = []
    for m in (25, 800):
        total = 0.0
        for r in range(5):  # averaged over 5 independent sample sets
            gen = torch.Generator().manual_seed(5 * seed + r)
            samples = torch.randn(m, 2, generator=gen, dtype=DTYPE) * torch.tensor([1.0, 2.0])
            truth = -samples / torch.tensor([1.0, 4.0], dtype=DTYPE)
            total += float((at_samples(samples, None) - truth).norm() / truth.norm())
        errors.append(total / 5)
    assert errors[0] > errors[1]
    assert errors[1] < 0.5


def test_gaussian_process_score_is_exact(seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(6, 1, generator=gen, dtype=DTYPE)

    def covariance(a, b):
        return torch.exp(-0.5 * (a - b.T) ** 2)

    def mean(a):
        return a[:, 0] * 0.3

    f = torch.randn(3, 6, 2, generator=gen, dtype=DTYPE, requires_grad=True)
    cov = covariance(x, x) + 1e-6 * torch.eye(6, dtype=DTYPE)
    normal = torch.distributions.MultivariateNormal(mean(x), covariance_matrix=cov)
    log_p = normal.log_prob(f.transpose(1, 2)).sum()  # outputs are independent GPs
    (exact,) = torch.autograd.grad(log_p, f)
    score = GaussianProcessScore(covariance, mean, jitter=1e-6)(f.detach(), x)
    torch.testing.assert_close(score, exact)
    with pytest.raises(TypeError, match="covariance"):
        GaussianProcessScore("rbf")


def test_score_estimators_check_their_inputs():
    with pytest.raises(ValueError, match="samples"):
        ssge_score(torch.zeros(3), torch.zeros(3, 1))
    with pytest.raises(ValueError, match="query"):
        ssge_score(torch.zeros(3, 2), torch.zeros(3, 1))
    with pytest.raises(ValueError, match="eta"):
        sge_score(torch.zeros(3, 2), eta=0.0)
    with pytest.raises(ValueError, match="threshold"):
        ssge_score(torch.randn(3, 2), torch.randn(2, 2), threshold=1.5)
