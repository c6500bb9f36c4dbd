r"""Score estimators: the gradient of a log density known only through samples.

Function-space SVGD needs the score of the *functional* prior, the distribution of the
network's outputs at the measurement set under the weight prior, which has no closed form;
repulsive ensembles (Wasserstein gradient descent) need the score of the particles' own
empirical distribution. Every estimator here takes samples ``(M, d)`` and returns score
estimates ``(N, d)``:

* :func:`ssge_score`, the spectral Stein gradient estimator (Shi, Sun & Zhu 2018), at any
  query points (out of sample);
* :func:`sge_score`, the Stein gradient estimator (Li & Turner 2018), at the samples;
* :func:`kde_score`, the gradient of a kernel density estimate's log, at the samples;
* :class:`GaussianProcessScore`, the exact score of a Gaussian-process prior over functions
  (for a GP-matched prior, instead of estimating it).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from bayesdl._checks import check_count, check_positive, check_probability

from .stein_kernels import RBF, Kernel

__all__ = [
    "GaussianProcessScore",
    "default_score_kernel",
    "kde_score",
    "sge_score",
    "ssge_score",
]


def default_score_kernel() -> Kernel:
    """The estimators' default kernel: RBF with :math:`\\sigma` the median pairwise distance."""
    return RBF(bandwidth="median")


def _check_samples(name: str, x: Tensor) -> Tensor:
    if not isinstance(x, Tensor) or x.dim() != 2 or x.shape[0] < 1:
        raise ValueError(f"{name}: expected a tensor of shape (M, d), got {getattr(x, 'shape', x)}")
    return x.detach()


def ssge_score(
    samples: Tensor,
    query: Tensor,
    *,
    kernel: Kernel | None = None,
    eta: float = 0.01,
    num_eigs: int | None = None,
    threshold: float | None = None,
) -> Tensor:
    r"""Spectral Stein gradient estimate of :math:`\nabla \log q` at ``query`` from ``samples``.

    Expand the score in the eigenfunctions of the kernel's integral operator under ``q``,
    approximated by the Nyström method from the samples :math:`x^1..x^M` (Shi et al. 2018):
    with :math:`K + \eta I = U \Lambda U^\top` (``torch.linalg.eigh``),

    .. math::
        \psi_j(x) = \frac{\sqrt M}{\lambda_j} \sum_m k(x, x^m)\, u_{mj}, \qquad
        \beta_j = -\frac1M \sum_m \nabla\psi_j(x^m), \qquad
        \hat g(x) = \sum_{j=1}^{J} \beta_j\, \psi_j(x),

    where :math:`\beta_j` is Stein's identity :math:`\mathbb E_q[\psi_j \nabla\log q] =
    -\mathbb E_q[\nabla\psi_j]` estimated from the samples. For a radial kernel
    :math:`\sum_m \nabla\psi_j(x^m) = \frac{\sqrt M}{\lambda_j} (R^\top u_j)` with the
    kernel's repulsion matrix ``R`` (:class:`~.stein_kernels.KernelMatrix`), so no
    ``M x M x d`` tensor is formed.

    Parameters
    ----------
    samples
        ``(M, d)`` draws from ``q``.
    query
        ``(N, d)`` points where the score is wanted.
    kernel
        The kernel (default: ``RBF(bandwidth="median")``, :math:`\sigma` = the median distance
        between samples, as Shi et al.).
    eta
        Ridge added to the kernel matrix before the eigendecomposition (0.01, as in D'Angelo et
        al.'s experiments).
    num_eigs
        Keep at most the ``J`` largest eigenpairs (default: all ``M``).
    threshold
        Keep the fewest leading eigenpairs whose eigenvalues make up at least this fraction of
        their sum (Shi et al.'s truncation; default: no truncation, as D'Angelo et al.). Fewer
        eigenfunctions give a smoother, less noisy estimate from few samples.

    Returns
    -------
    Tensor
        ``(N, d)`` estimates of the score at ``query``.
    """
    samples = _check_samples("samples", samples)
    query = _check_samples("query", query)
    if query.shape[1] != samples.shape[1]:
        raise ValueError(f"query: has {query.shape[1]} coordinates, the samples {samples.shape[1]}")
    eta = check_positive("eta", eta)
    kernel = default_score_kernel() if kernel is None else kernel
    m = samples.shape[0]
    km = kernel(samples)
    eigvals, eigvecs = torch.linalg.eigh(
        km.value + eta * torch.eye(m, dtype=samples.dtype, device=samples.device)
    )
    keep = m if num_eigs is None else min(check_count("num_eigs", num_eigs), m)
    if threshold is not None:
        threshold = check_probability("threshold", threshold, open_interval=False)
        fraction = eigvals.flip(0).cumsum(0) / eigvals.sum()
        keep = min(keep, int((fraction < threshold).sum()) + 1)
    eigvals, eigvecs = eigvals[-keep:], eigvecs[:, -keep:]
    # With R_l = sum_m grad_{x^m} k(x^m, x^l) (the kernel's repulsion):
    # sum_m grad psi_j(x^m) = (sqrt(M)/lambda_j) sum_l u_lj sum_m grad_1 k(x^m, x^l)
    #                       = (sqrt(M)/lambda_j) sum_l u_lj R_l,
    # so beta_j = -(1/M) sum_m grad psi_j(x^m) = -(U^T R)_j / (sqrt(M) lambda_j).
    beta = -(eigvecs.T @ km.repulsion) / (math.sqrt(m) * eigvals[:, None])
    psi = kernel.cross(query, samples, km.bandwidth) @ eigvecs * (math.sqrt(m) / eigvals)
    return psi @ beta


def sge_score(samples: Tensor, *, kernel: Kernel | None = None, eta: float = 0.01) -> Tensor:
    r"""Stein gradient estimate of :math:`\nabla\log q` at the samples (Li & Turner 2018).

    Stein's identity with test functions :math:`k(\cdot, x^i)`, estimated from the samples,
    :math:`\frac1M\sum_m [k(x^m, x^i)\, g(x^m) + \nabla_{x^m} k(x^m, x^i)] \approx 0`, reads
    :math:`K G = -R`; with a ridge,

    .. math::
        \hat G = -(K + \eta I)^{-1} R, \qquad R_i = \sum_m \nabla_{x^m} k(x^m, x^i).

    Parameters
    ----------
    samples
        ``(M, d)`` draws from ``q``; the score is estimated at these same points.
    kernel
        The kernel (default: ``RBF(bandwidth="median")``).
    eta
        Ridge (0.01 by default).
    """
    samples = _check_samples("samples", samples)
    eta = check_positive("eta", eta)
    km = (default_score_kernel() if kernel is None else kernel)(samples)
    eye = torch.eye(samples.shape[0], dtype=samples.dtype, device=samples.device)
    return -torch.linalg.solve(km.value + eta * eye, km.repulsion)


def kde_score(samples: Tensor, *, kernel: Kernel | None = None) -> Tensor:
    r"""Score of the kernel density estimate of the samples, at the samples.

    The estimate is :math:`\hat q(x) \propto \sum_j k(x, x^j)`, and

    .. math::
        \nabla \log \hat q(x^i) = \frac{\sum_j \nabla_{x^i} k(x^i, x^j)}{\sum_j k(x^i, x^j)}
            = -\frac{R_i}{\sum_j K_{ij}},

    the second form because a radial kernel's gradient is odd:
    :math:`\nabla_{x^i} k(x^i, x^j) = -\nabla_{x^j} k(x^j, x^i)`. Default kernel:
    ``RBF(bandwidth="median")``.
    """
    samples = _check_samples("samples", samples)
    km = (default_score_kernel() if kernel is None else kernel)(samples)
    return -km.repulsion / km.value.sum(1, keepdim=True)


class GaussianProcessScore:
    r"""Exact score of a Gaussian-process prior over functions at the measurement points.

    For :math:`f \sim \mathcal{GP}(m, c)`, the function values at inputs ``X`` are Gaussian,
    so :math:`\nabla_f \log p(f) = -(C + \epsilon I)^{-1} (f - m(X))` with
    :math:`C = c(X, X)`; each output dimension is an independent GP with the same covariance.
    Pass it as ``SVGD(prior_score=...)`` to use a GP as the functional prior of function-space
    SVGD instead of SSGE's estimate of the BNN's own functional prior.

    Parameters
    ----------
    covariance
        ``(X1, X2) -> (N1, N2)`` covariance function (a gpytorch kernel works through
        ``lambda a, b: kernel(a, b).to_dense()``).
    mean
        ``X -> (N,)`` or ``(N, out)`` mean function (default: zero).
    jitter
        ``epsilon`` added to the diagonal of ``C``.
    """

    def __init__(
        self,
        covariance: Callable[[Tensor, Tensor], Tensor],
        mean: Callable[[Tensor], Tensor] | None = None,
        jitter: float = 1e-6,
    ) -> None:
        if not callable(covariance):
            raise TypeError(f"covariance: expected a callable, got {type(covariance).__name__}")
        if mean is not None and not callable(mean):
            raise TypeError(f"mean: expected a callable or None, got {type(mean).__name__}")
        self.covariance = covariance
        self.mean = mean
        self.jitter = check_positive("jitter", jitter)

    def __call__(self, f: Tensor, x: Tensor) -> Tensor:
        """Score at function values ``f`` ``(P, N, out)`` over inputs ``x`` ``(N, ...)``."""
        cov = torch.as_tensor(self.covariance(x, x), dtype=f.dtype, device=f.device)
        if tuple(cov.shape) != (f.shape[1], f.shape[1]):
            raise ValueError(
                f"covariance: returned shape {tuple(cov.shape)}, expected {(f.shape[1],) * 2}"
            )
        centred = f
        if self.mean is not None:
            mean = torch.as_tensor(self.mean(x), dtype=f.dtype, device=f.device)
            centred = f - (mean[:, None] if mean.dim() == 1 else mean)
        eye = torch.eye(f.shape[1], dtype=f.dtype, device=f.device)
        chol = torch.linalg.cholesky(cov + self.jitter * eye)
        return -torch.cholesky_solve(centred, chol)

    def __repr__(self) -> str:
        return f"GaussianProcessScore(covariance={self.covariance!r}, jitter={self.jitter})"
