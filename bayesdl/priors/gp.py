r"""Function draws from a Gaussian-process prior defined by gpytorch modules.

The target of a functional prior (Tran et al. 2022) is a GP prior
:math:`f \sim \mathcal{GP}(m, k)`: at a measurement set :math:`X_M` its function values are
:math:`f(X_M) \sim \mathcal N(m(X_M), K)` with :math:`K_{ij} = k(x_i, x_j)`. Draws are the
*latent* function values: no observation noise is added.

The kernel is any ``gpytorch.kernels.Kernel`` (RBF, Matérn, periodic, ARD, sums, products,
``ScaleKernel``) and the mean any ``gpytorch.means.Mean`` (zero by default). Priors registered
on their hyperparameters (``RBFKernel(lengthscale_prior=LogNormalPrior(...))``) make the target
a *hierarchical* GP: every function draw gets its own hyperparameters from those priors,

.. math::
    \eta_s \sim p(\eta), \qquad f_s(X_M) \mid \eta_s \sim \mathcal N(m_{\eta_s}(X_M),
    K_{\eta_s}),

evaluated for all draws at once with gpytorch's batch mode. With ``hyperprior_draws="softplus"``
a draw :math:`u \sim p(\eta)` is used the way Tran et al.'s code uses it: written into the
*raw* (softplus-constrained) parameter, so the hyperparameter is
:math:`\eta = \mathrm{softplus}(u) = \log(1 + e^u)`. For their UCI variance hyperprior
:math:`\log u \sim \mathcal N(0.1, 1)` the effective variance has median
:math:`\mathrm{softplus}(e^{0.1}) = 1.39`, not :math:`e^{0.1} = 1.11`, and never falls below
:math:`\log 2 = 0.69`. The default ``"value"`` uses the draw as the hyperparameter (the prior
means what it says). The Cholesky factor is computed in
float64 with a jitter :math:`\epsilon \bar K I` (:math:`\bar K` the mean of the diagonal) that
starts at :math:`\epsilon = 10^{-6}` and doubles until the factorisation succeeds, as in Tran
et al.'s reference code.
"""

from __future__ import annotations

import copy
import math

import gpytorch
import torch
from torch import Tensor

__all__ = ["HYPERPRIOR_DRAWS", "GPTarget", "cholesky_with_jitter", "uci_target_kernel"]

#: How a hyperprior draw becomes a hyperparameter: as is, or through softplus (Tran et al.).
HYPERPRIOR_DRAWS = ("value", "softplus")

_INITIAL_JITTER = 1e-6
_MAX_JITTER = 1e-1


def cholesky_with_jitter(
    covariance: Tensor, initial: float = _INITIAL_JITTER, maximum: float = _MAX_JITTER
) -> Tensor:
    r"""Lower Cholesky factor of ``covariance + jitter * mean(diag) * I``, jitter growing.

    Each matrix of a batch ``(..., M, M)`` gets the smallest jitter in the sequence
    ``0, initial, 2 initial, 4 initial, ...`` (relative to the mean of its diagonal) that makes
    it numerically positive definite.

    Raises
    ------
    ValueError
        Naming ``kernel``, if a matrix still fails with a relative jitter above ``maximum``.
    """
    factor, info = torch.linalg.cholesky_ex(covariance)
    bad = info > 0
    if not bool(bad.any()):
        return factor
    eye = torch.eye(covariance.shape[-1], dtype=covariance.dtype, device=covariance.device)
    level = covariance.diagonal(dim1=-2, dim2=-1).mean(-1).clamp_min(1e-12)
    jitter = initial
    while bool(bad.any()):
        if jitter > maximum:
            raise ValueError(
                "kernel: the Gram matrix at the measurement set is not positive definite even "
                f"with a relative jitter of {maximum:g}; check the kernel's hyperparameters"
            )
        shift = (jitter * level[bad])[..., None, None] * eye
        retry, retry_info = torch.linalg.cholesky_ex(covariance[bad] + shift)
        factor[bad] = retry
        new_bad = bad.clone()
        new_bad[bad] = retry_info > 0
        bad = new_bad
        jitter *= 2
    return factor


class _Prior(gpytorch.Module):
    """The GP prior's mean and kernel as one gpytorch module (so named priors cover both)."""

    def __init__(self, mean: gpytorch.means.Mean, kernel: gpytorch.kernels.Kernel) -> None:
        super().__init__()
        self.mean_module = mean
        self.covar_module = kernel

    def moments(self, x: Tensor) -> tuple[Tensor, Tensor]:
        with gpytorch.settings.lazily_evaluate_kernels(False):
            covariance = self.covar_module(x, x)
            covariance = covariance.to_dense() if hasattr(covariance, "to_dense") else covariance
            mean = self.mean_module(x)
        return mean, covariance


class GPTarget:
    """A GP prior over functions, from a gpytorch kernel and mean, that draws function values.

    Parameters
    ----------
    kernel
        A ``gpytorch.kernels.Kernel``; priors registered on its hyperparameters are resampled
        for every function draw (a hierarchical GP).
    mean
        A ``gpytorch.means.Mean``, or ``None`` for the zero mean.
    hyperprior_draws
        ``"value"``: a hyperprior draw is the hyperparameter; ``"softplus"``: the
        hyperparameter is softplus of the draw, as in Tran et al.'s code (see the module
        docstring).

    Notes
    -----
    The modules are deep-copied and converted to float64, so later changes to the caller's
    kernel do not affect the target, and a target pickles with its kernel. Draws are made on
    the device of the inputs ``x``.
    """

    def __init__(
        self,
        kernel: gpytorch.kernels.Kernel,
        mean: gpytorch.means.Mean | None = None,
        hyperprior_draws: str = "value",
    ) -> None:
        if hyperprior_draws not in HYPERPRIOR_DRAWS:
            raise ValueError(
                f"hyperprior_draws: must be one of {HYPERPRIOR_DRAWS}, got {hyperprior_draws!r}"
            )
        self.hyperprior_draws = hyperprior_draws
        if not isinstance(kernel, gpytorch.kernels.Kernel):
            raise TypeError(
                f"kernel: expected a gpytorch.kernels.Kernel, got {type(kernel).__name__}"
            )
        if mean is None:
            mean = gpytorch.means.ZeroMean()
        elif not isinstance(mean, gpytorch.means.Mean):
            raise TypeError(f"mean: expected a gpytorch.means.Mean, got {type(mean).__name__}")
        module = _Prior(copy.deepcopy(mean), copy.deepcopy(kernel)).double().cpu()
        module.requires_grad_(False)
        self._module = module
        self._copies: dict[str, _Prior] = {}
        self._priors = [
            (name, owner, prior, closure)
            for name, owner, prior, closure, _ in module.named_priors()
        ]
        for name, _, _, _, setting in module.named_priors():
            if setting is None:
                raise ValueError(
                    f"kernel: the hyperprior {name!r} has no setting closure, so its "
                    "hyperparameter cannot be resampled"
                )

    @property
    def hierarchical(self) -> bool:
        """Whether hyperparameters have priors (and are resampled for every function)."""
        return bool(self._priors)

    @property
    def kernel(self) -> gpytorch.kernels.Kernel:
        """The target's kernel (a float64 copy)."""
        return self._module.covar_module

    @property
    def mean(self) -> gpytorch.means.Mean:
        """The target's mean (a float64 copy)."""
        return self._module.mean_module

    def _on(self, device: torch.device) -> _Prior:
        """The float64 modules on ``device`` (a cached copy; the master stays on the CPU)."""
        if device.type == "cpu":
            return self._module
        key = str(device)
        if key not in self._copies:
            self._copies[key] = copy.deepcopy(self._module).to(device)
        return self._copies[key]

    def moments(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Mean ``(M,)`` and covariance ``(M, M)`` of ``f(x)`` at the current hyperparameters.

        For a hierarchical GP these are the moments *given* the kernel's current
        hyperparameter values, not the marginal ones.
        """
        with torch.no_grad():
            return self._on(x.device).moments(x.to(torch.float64))

    def sample(self, x: Tensor, num_functions: int) -> Tensor:
        """``num_functions`` draws of the latent function values at ``x`` ``(M, d)``.

        Uses torch's global random stream (callers seed it with
        :func:`bayesdl._seeding.seeded`).

        Returns
        -------
        Tensor
            float64 ``(num_functions, M)`` on the device of ``x``.
        """
        x = x.to(torch.float64)
        with torch.no_grad():
            if self.hierarchical:
                module = self._batched(num_functions).to(x.device)
            else:
                module = self._on(x.device)
            mean, covariance = module.moments(x)
            factor = cholesky_with_jitter(covariance)
            z = torch.randn(num_functions, x.shape[0], 1, dtype=torch.float64, device=x.device)
            if factor.dim() == 2:
                f = (factor @ z[..., 0].T).T
            else:
                f = (factor @ z)[..., 0]
            return f + mean.expand(num_functions, x.shape[0])

    def _batched(self, num_functions: int) -> _Prior:
        """A copy in gpytorch batch mode: hyperparameters ``(num_functions, ...)`` from priors.

        Built on the CPU (gpytorch checks constraints against CPU bounds while loading), then
        moved by the caller.
        """
        module = copy.deepcopy(self._module)
        samples = {}
        for name, owner, prior, closure in self._priors:
            shape = closure(owner).shape
            if prior.batch_shape + prior.event_shape != shape:
                prior = prior.expand(shape)
            sample = prior.sample((num_functions,))
            if self.hyperprior_draws == "softplus":
                sample = torch.nn.functional.softplus(sample)
            samples[name] = sample
        module.pyro_load_from_samples(samples)
        return module

    def __repr__(self) -> str:
        kind = "hierarchical " if self.hierarchical else ""
        draws = ", hyperprior_draws='softplus'" if self.hyperprior_draws == "softplus" else ""
        return f"GPTarget({kind}kernel={self.kernel!r}, mean={type(self.mean).__name__}{draws})"


def uci_target_kernel(dim: int) -> gpytorch.kernels.Kernel:
    r"""Tran et al.'s (2022) target GP for UCI regression: a hierarchical RBF-ARD kernel.

    :math:`k(x, x') = \sigma^2 \exp(-	frac12 \sum_d (x_d - x'_d)^2 / \ell_d^2)` on ``dim``
    standardised inputs, with hyperpriors :math:`\log \ell_d \sim \mathcal N(\log\sqrt{2D}, 1)`
    and :math:`\log \sigma^2 \sim \mathcal N(0.1, 1)` registered on the gpytorch modules (so
    every function drawn by :class:`GPTarget` gets its own hyperparameters), and the values
    :math:`\ell_d = \sqrt{2D}`, :math:`\sigma^2 = 1` set for draws without the hyperpriors.
    """
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ValueError(f"dim: expected a positive integer, got {dim!r}")
    base = gpytorch.kernels.RBFKernel(
        ard_num_dims=dim,
        lengthscale_prior=gpytorch.priors.LogNormalPrior(math.log(math.sqrt(2 * dim)), 1.0),
    )
    base.lengthscale = math.sqrt(2 * dim)
    kernel = gpytorch.kernels.ScaleKernel(
        base, outputscale_prior=gpytorch.priors.LogNormalPrior(0.1, 1.0)
    )
    kernel.outputscale = 1.0
    return kernel
