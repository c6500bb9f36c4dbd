r"""Four posteriordb posteriors as log densities over a flat unconstrained vector.

Each posterior is written three ways that target the same density, so that every sampler in
``benchmarks/small_models.py`` samples the same thing:

* a plain **torch** log density ``theta (P, D) -> (P,)``, vectorised over chains (bayesdl's
  ``NUTS().sample``; wrapped in a Pyro model with ``pyro.factor`` for Pyro's NUTS);
* a **jax** log density ``theta (D,) -> ()`` (NumPyro's NUTS through ``potential_fn``).

The parameterisation is Stan's: a parameter declared ``real<lower=0> s`` is sampled as
``u = log s``, and the density gains the log-Jacobian ``log |ds/du| = u``. All constants are
kept (full normalised log densities of every factor; the truncation constants of half-normal
and half-Cauchy priors are left out, as Stan's ``~`` leaves them out); none of them matter to
a sampler.

The data are read from ``$BAYESDL_DATA/posteriordb/<data>.json.zip`` (one JSON file of Stan
data per zip; BSD-3 licence, see ``LICENCE.posteriordb.md`` there) and never copied into the
repository. The model definitions follow posteriordb's Stan programs
(``posterior_database/models/stan/<model>.stan``):

``eight_schools-eight_schools_noncentered`` (D = 10: ``theta_trans[1..8]``, ``mu``, ``tau``)
    .. math::
        \tilde\theta_j \sim N(0, 1),\; \mu \sim N(0, 5),\; \tau \sim \mathrm{Cauchy}^+(0, 5),\;
        y_j \sim N(\mu + \tau \tilde\theta_j, \sigma_j).

``gp_pois_regr-gp_regr`` (D = 3: ``rho``, ``alpha``, ``sigma``), GP regression on the 11
points of ``gp_pois_regr`` (its ``k`` counts are unused by this model)
    .. math::
        K_{ij} = \alpha^2 \exp\!\big(-(x_i - x_j)^2 / (2\rho^2)\big) + \sigma\,\delta_{ij},\quad
        y \sim N(0, K),\\
        \rho \sim \mathrm{Gamma}(25, 4)\ \text{(shape, rate)},\; \alpha \sim N^+(0, 2),\;
        \sigma \sim N^+(0, 1).

    As in posteriordb's program, ``sigma`` itself (not its square) is added to the diagonal.
    The torch density builds ``torch.distributions.MultivariateNormal`` from ``K`` with torch's
    default argument validation, as a user would: a covariance that is not numerically
    positive definite raises (``ValueError``) instead of returning ``-inf``; NumPyro's returns
    NaN there (a divergence).

``kidiq-kidscore_momiq`` (D = 3: ``beta[1]``, ``beta[2]``, ``sigma``)
    .. math::
        \text{kid\_score}_n \sim N(\beta_1 + \beta_2\,\text{mom\_iq}_n, \sigma),\;
        \sigma \sim \mathrm{Cauchy}^+(0, 2.5),\; \beta \text{ flat (improper)}.

``sblrc-blr`` (D = 6: ``beta[1..5]``, ``sigma``)
    .. math::
        \beta_d \sim N(0, 10),\; \sigma \sim N^+(0, 10),\; y \sim N(X\beta, \sigma).

    ``sigma`` is a parameter with a half-normal prior, not fixed (posteriordb's ``blr.stan``
    adds ``normal_lpdf(sigma | 0, 10)`` on ``real<lower=0> sigma``).

Reported parameters are Stan's (``constrain`` maps ``theta`` back: ``exp`` on the positive
ones); transformed parameters (eight schools' ``theta``) are not reported.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "POSTERIORS",
    "SmallModel",
    "check_agreement",
    "data_folder",
    "load_data",
    "load_model",
    "pyro_model",
]

#: posteriordb names ``<data>-<model>`` of the four posteriors.
POSTERIORS = (
    "eight_schools-eight_schools_noncentered",
    "gp_pois_regr-gp_regr",
    "kidiq-kidscore_momiq",
    "sblrc-blr",
)

_LOG_2PI = math.log(2.0 * math.pi)
_LOG_PI = math.log(math.pi)

JaxDensity = Callable[[Any], Any]


@dataclass(frozen=True)
class SmallModel:
    """One posterior: its parameter names and its torch and jax log densities.

    Attributes
    ----------
    name
        posteriordb name ``<data>-<model>``.
    names
        Stan's names of the ``D`` coordinates of ``theta`` (constrained parameters).
    positive
        Indices of the coordinates sampled on the log scale (``real<lower=0>``).
    log_density
        Torch log density ``theta (P, D) -> (P,)`` of unconstrained ``theta``, log-Jacobian
        included.
    make_jax
        Builds the same density in jax, ``theta (D,) -> ()`` (imports jax when called).
    """

    name: str
    names: tuple[str, ...]
    positive: tuple[int, ...]
    log_density: Callable[[Tensor], Tensor]
    make_jax: Callable[[], JaxDensity]

    @property
    def dim(self) -> int:
        """The number of parameters ``D``."""
        return len(self.names)

    def constrain(self, theta: np.ndarray) -> np.ndarray:
        """Stan's parameters from unconstrained ``theta (..., D)``: ``exp`` on the positive ones."""
        out = np.array(theta, dtype=np.float64, copy=True)
        idx = list(self.positive)
        out[..., idx] = np.exp(out[..., idx])
        return out


def data_folder(root: str | os.PathLike[str] | None = None) -> pathlib.Path:
    """The posteriordb data folder: ``<root>/posteriordb``, ``root`` defaulting to
    ``$BAYESDL_DATA``.

    Raises
    ------
    FileNotFoundError
        When neither ``root`` nor ``BAYESDL_DATA`` names an existing folder.
    """
    base = root if root is not None else os.environ.get("BAYESDL_DATA")
    if not base:
        raise FileNotFoundError("BAYESDL_DATA is not set: the shared data folder is needed")
    folder = pathlib.Path(base) / "posteriordb"
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no posteriordb data folder there")
    return folder


def load_data(dataset: str, root: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The Stan data of ``dataset`` (``eight_schools``, ...) from its ``.json.zip``.

    Parameters
    ----------
    dataset
        The data part of a posteriordb name.
    root
        The shared data folder (default ``$BAYESDL_DATA``).

    Returns
    -------
    dict
        The JSON object (lists of numbers and integers, as Stan reads them).
    """
    path = data_folder(root) / f"{dataset}.json.zip"
    with zipfile.ZipFile(path) as archive:
        members = [n for n in archive.namelist() if n.endswith(".json")]
        if len(members) != 1:
            raise ValueError(f"{path}: expected one JSON file, found {members}")
        return json.loads(archive.read(members[0]))


# --------------------------------------------------------------- shared pieces (torch)


def _normal(x: Tensor, loc: Tensor | float, scale: Tensor | float) -> Tensor:
    """Elementwise ``log N(x | loc, scale)``."""
    z = (x - loc) / scale
    log_scale = torch.log(scale) if isinstance(scale, Tensor) else math.log(scale)
    return -0.5 * z * z - log_scale - 0.5 * _LOG_2PI


def _cauchy(x: Tensor, scale: float) -> Tensor:
    """Elementwise ``log Cauchy(x | 0, scale)``."""
    z = x / scale
    return -torch.log1p(z * z) - math.log(scale) - _LOG_PI


# --------------------------------------------------------------- the four posteriors


def _eight_schools(data: dict[str, Any], dtype: torch.dtype) -> SmallModel:
    j = int(data["J"])
    y = torch.tensor(data["y"], dtype=dtype)
    sigma = torch.tensor(data["sigma"], dtype=dtype)

    def log_density(theta: Tensor) -> Tensor:
        trans, mu, log_tau = theta[:, :j], theta[:, j], theta[:, j + 1]
        tau = torch.exp(log_tau)
        effect = mu[:, None] + tau[:, None] * trans
        return (
            _normal(trans, 0.0, 1.0).sum(-1)
            + _normal(y, effect, sigma).sum(-1)
            + _normal(mu, 0.0, 5.0)
            + _cauchy(tau, 5.0)
            + log_tau
        )

    def make_jax() -> JaxDensity:
        import jax.numpy as jnp

        yj, sj = jnp.asarray(y.numpy()), jnp.asarray(sigma.numpy())

        def lp(theta: Any) -> Any:
            trans, mu, log_tau = theta[:j], theta[j], theta[j + 1]
            tau = jnp.exp(log_tau)
            return (
                _jnormal(trans, 0.0, 1.0).sum()
                + _jnormal(yj, mu + tau * trans, sj).sum()
                + _jnormal(mu, 0.0, 5.0)
                + _jcauchy(tau, 5.0)
                + log_tau
            )

        return lp

    names = (*(f"theta_trans[{k + 1}]" for k in range(j)), "mu", "tau")
    return SmallModel(POSTERIORS[0], names, (j + 1,), log_density, make_jax)


def _gp_regr(data: dict[str, Any], dtype: torch.dtype) -> SmallModel:
    x = torch.tensor(data["x"], dtype=dtype)
    y = torch.tensor(data["y"], dtype=dtype)
    n = x.shape[0]
    sq_dist = (x[:, None] - x[None, :]) ** 2
    eye = torch.eye(n, dtype=dtype)
    zero = torch.zeros(n, dtype=dtype)
    gamma_shape, gamma_rate = 25.0, 4.0
    gamma_const = gamma_shape * math.log(gamma_rate) - math.lgamma(gamma_shape)

    def log_density(theta: Tensor) -> Tensor:
        rho, alpha, sigma = torch.exp(theta).unbind(-1)
        cov = (alpha**2)[:, None, None] * torch.exp(
            -0.5 * sq_dist / (rho**2)[:, None, None]
        ) + sigma[:, None, None] * eye
        likelihood = torch.distributions.MultivariateNormal(zero, covariance_matrix=cov)
        prior = (
            gamma_const
            + (gamma_shape - 1.0) * torch.log(rho)
            - gamma_rate * rho
            + _normal(alpha, 0.0, 2.0)
            + _normal(sigma, 0.0, 1.0)
        )
        return likelihood.log_prob(y) + prior + theta.sum(-1)

    def make_jax() -> JaxDensity:
        import jax.numpy as jnp
        import jax.scipy.linalg as jsl

        d2, yj = jnp.asarray(sq_dist.numpy()), jnp.asarray(y.numpy())

        def lp(theta: Any) -> Any:
            rho, alpha, sigma = jnp.exp(theta)
            cov = alpha**2 * jnp.exp(-0.5 * d2 / rho**2) + sigma * jnp.eye(n)
            chol = jnp.linalg.cholesky(cov)  # NaN where not positive definite
            white = jsl.solve_triangular(chol, yj, lower=True)
            likelihood = (
                -0.5 * jnp.sum(white**2) - jnp.sum(jnp.log(jnp.diagonal(chol))) - 0.5 * n * _LOG_2PI
            )
            prior = (
                gamma_const
                + (gamma_shape - 1.0) * jnp.log(rho)
                - gamma_rate * rho
                + _jnormal(alpha, 0.0, 2.0)
                + _jnormal(sigma, 0.0, 1.0)
            )
            return likelihood + prior + theta.sum()

        return lp

    return SmallModel(POSTERIORS[1], ("rho", "alpha", "sigma"), (0, 1, 2), log_density, make_jax)


def _kidiq(data: dict[str, Any], dtype: torch.dtype) -> SmallModel:
    score = torch.tensor(data["kid_score"], dtype=dtype)
    iq = torch.tensor(data["mom_iq"], dtype=dtype)

    def log_density(theta: Tensor) -> Tensor:
        b1, b2, log_sigma = theta.unbind(-1)
        sigma = torch.exp(log_sigma)
        mean = b1[:, None] + b2[:, None] * iq
        return _normal(score, mean, sigma[:, None]).sum(-1) + _cauchy(sigma, 2.5) + log_sigma

    def make_jax() -> JaxDensity:
        import jax.numpy as jnp

        sj, iqj = jnp.asarray(score.numpy()), jnp.asarray(iq.numpy())

        def lp(theta: Any) -> Any:
            b1, b2, log_sigma = theta
            sigma = jnp.exp(log_sigma)
            return _jnormal(sj, b1 + b2 * iqj, sigma).sum() + _jcauchy(sigma, 2.5) + log_sigma

        return lp

    return SmallModel(POSTERIORS[2], ("beta[1]", "beta[2]", "sigma"), (2,), log_density, make_jax)


def _blr(data: dict[str, Any], dtype: torch.dtype) -> SmallModel:
    x = torch.tensor(data["X"], dtype=dtype)
    y = torch.tensor(data["y"], dtype=dtype)
    d = int(data["D"])

    def log_density(theta: Tensor) -> Tensor:
        beta, log_sigma = theta[:, :d], theta[:, d]
        sigma = torch.exp(log_sigma)
        mean = beta @ x.T  # (P, N)
        return (
            _normal(beta, 0.0, 10.0).sum(-1)
            + _normal(sigma, 0.0, 10.0)
            + _normal(y, mean, sigma[:, None]).sum(-1)
            + log_sigma
        )

    def make_jax() -> JaxDensity:
        import jax.numpy as jnp

        xj, yj = jnp.asarray(x.numpy()), jnp.asarray(y.numpy())

        def lp(theta: Any) -> Any:
            beta, log_sigma = theta[:d], theta[d]
            sigma = jnp.exp(log_sigma)
            return (
                _jnormal(beta, 0.0, 10.0).sum()
                + _jnormal(sigma, 0.0, 10.0)
                + _jnormal(yj, xj @ beta, sigma).sum()
                + log_sigma
            )

        return lp

    names = (*(f"beta[{k + 1}]" for k in range(d)), "sigma")
    return SmallModel(POSTERIORS[3], names, (d,), log_density, make_jax)


def _jnormal(x: Any, loc: Any, scale: Any) -> Any:
    """Elementwise ``log N(x | loc, scale)`` in jax."""
    import jax.numpy as jnp

    z = (x - loc) / scale
    return -0.5 * z * z - jnp.log(scale) - 0.5 * _LOG_2PI


def _jcauchy(x: Any, scale: float) -> Any:
    """Elementwise ``log Cauchy(x | 0, scale)`` in jax."""
    import jax.numpy as jnp

    z = x / scale
    return -jnp.log1p(z * z) - math.log(scale) - _LOG_PI


_BUILDERS: dict[str, Callable[[dict[str, Any], torch.dtype], SmallModel]] = {
    POSTERIORS[0]: _eight_schools,
    POSTERIORS[1]: _gp_regr,
    POSTERIORS[2]: _kidiq,
    POSTERIORS[3]: _blr,
}


def load_model(
    name: str,
    root: str | os.PathLike[str] | None = None,
    dtype: torch.dtype = torch.float64,
) -> SmallModel:
    """One of :data:`POSTERIORS` with its data loaded.

    Parameters
    ----------
    name
        posteriordb name, e.g. ``"kidiq-kidscore_momiq"``.
    root
        The shared data folder (default ``$BAYESDL_DATA``).
    dtype
        Floating type of the torch density's data (float64: Stan's precision).
    """
    if name not in _BUILDERS:
        raise ValueError(f"name: must be one of {POSTERIORS}, got {name!r}")
    return _BUILDERS[name](load_data(name.split("-")[0], root), dtype)


def pyro_model(model: SmallModel) -> Callable[[], None]:
    """A Pyro model whose potential energy is ``-model.log_density``: one improper flat site
    ``theta`` of shape ``(D,)`` (identity transform) and a ``pyro.factor`` of the density."""
    import pyro
    from pyro.distributions import ImproperUniform, constraints

    def pyro_fn() -> None:
        theta = pyro.sample("theta", ImproperUniform(constraints.real, (), (model.dim,)))
        pyro.factor("log_density", model.log_density(theta[None])[0])

    return pyro_fn


def check_agreement(model: SmallModel, points: int = 5, seed: int = 0, rtol: float = 1e-7) -> float:
    """Check that the torch and jax densities agree up to a constant at random points.

    The points are uniform on ``[-2, 2]^D`` (Stan's default initialisation); the differences
    ``lp(theta_i) - lp(theta_0)`` of the two implementations are compared, in float64.

    Returns
    -------
    float
        The largest absolute mismatch of the differences.

    Raises
    ------
    AssertionError
        When a mismatch exceeds ``rtol`` times the scale of the differences (or 1e-9).
    """
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", True)
    rng = np.random.default_rng(seed)
    theta = rng.uniform(-2.0, 2.0, size=(points, model.dim))
    lp_torch = model.log_density(torch.as_tensor(theta, dtype=torch.float64)).double().numpy()
    lp_jax = np.asarray(jax.vmap(model.make_jax())(jnp.asarray(theta)), dtype=np.float64)
    if not (np.isfinite(lp_torch).all() and np.isfinite(lp_jax).all()):
        raise AssertionError(f"{model.name}: non-finite log density {lp_torch} / {lp_jax}")
    diff_torch, diff_jax = lp_torch - lp_torch[0], lp_jax - lp_jax[0]
    mismatch = float(np.abs(diff_torch - diff_jax).max())
    tolerance = max(rtol * float(np.abs(diff_torch).max()), 1e-9)
    if mismatch > tolerance:
        raise AssertionError(
            f"{model.name}: torch and jax log densities differ by {mismatch:.3g} "
            f"(tolerance {tolerance:.3g}) between points"
        )
    return mismatch
