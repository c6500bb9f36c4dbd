r"""Likelihoods: the distribution of a target given the network's output ``f``.

A likelihood maps network outputs ``f`` of shape ``(*batch, N, out)`` to a distribution over
the ``N`` targets, checks targets before any work, and summarises a set of posterior draws
into the posterior predictive mean and standard deviation.

Minibatches and temperature are the BNN's business, not the likelihood's: with ``num_data``
observations in the data set and a minibatch of ``B``, the BNN multiplies the minibatch
log-likelihood by ``num_data / B`` (an unbiased estimate of the full-data log-likelihood), and
divides by the temperature as :class:`bayesdl.models.BNN` documents.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import ClassVar

import pyro.distributions as dist
import torch
from torch import Tensor
from torch.distributions import Distribution

from ._checks import check_positive
from .priors.base import expand_right

_LOG_2PI = math.log(2 * math.pi)

__all__ = [
    "Bernoulli",
    "Categorical",
    "Gaussian",
    "HeteroscedasticGaussian",
    "Likelihood",
    "StudentT",
]


class Likelihood(ABC):
    """Base class: the observation model ``p(y | f)``.

    The shape contract (checked by :meth:`bayesdl.models.BNN.check_data` on every data set, and
    by :meth:`bayesdl.Posterior.evaluate`): for outputs ``f`` ``(*batch, N, out)`` and targets
    as :meth:`check_targets` returns them (``N`` rows), :meth:`log_prob` gives one value per
    target, ``(*batch, N)``, each depending on its own row only (outputs ``(N, 1)`` must not
    broadcast against targets ``(N,)``), and :meth:`summary` gives a mean with one value per
    target. A likelihood that breaks it is refused with a ``ValueError`` naming the shapes.
    """

    #: Whether targets are class labels (metrics: accuracy, ECE, Brier) or real values (RMSE).
    is_classifier: ClassVar[bool] = False

    def latent_sites(self) -> dict[str, Distribution]:
        """Latent sites of the likelihood (a learned noise scale), ``{name: distribution}``."""
        return {}

    def check_outputs(self, out_features: int) -> None:  # noqa: B027 - optional hook
        """Raise ``ValueError`` if the network's output width cannot feed this likelihood."""

    @abstractmethod
    def check_targets(self, y: Tensor, out_features: int) -> Tensor:
        """Validate targets ``y`` and return them in the form :meth:`predictive` observes."""

    @abstractmethod
    def predictive(self, f: Tensor, latents: Mapping[str, Tensor]) -> Distribution:
        """Distribution of the targets given outputs ``f`` ``(*batch, N, out)``.

        Its batch shape is ``(*batch, N)``: one (possibly multivariate) target per example.
        """

    def log_prob(self, f: Tensor, y: Tensor, latents: Mapping[str, Tensor]) -> Tensor:
        """Log-likelihood of each target, shape ``(*batch, N)``."""
        return self.predictive(f, latents).log_prob(y)

    @abstractmethod
    def summary(self, f: Tensor, latents: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Posterior predictive mean and standard deviation from draws ``f`` ``(S, N, out)``."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


def _check_float_targets(y: Tensor, out_features: int) -> Tensor:
    if y.dtype == torch.bool or y.is_complex():
        raise TypeError(f"y: expected real-valued regression targets, got dtype {y.dtype}")
    if y.dim() == 1:
        if out_features != 1:
            raise ValueError(
                f"y: has shape {tuple(y.shape)} but the network has {out_features} outputs; "
                f"pass targets of shape (N, {out_features})"
            )
        y = y[:, None]
    elif y.dim() != 2 or y.shape[1] != out_features:
        raise ValueError(
            f"y: expected shape (N,) or (N, {out_features}) for a network with {out_features} "
            f"output(s), got {tuple(y.shape)}"
        )
    return y


def _check_scale(scale: float | Distribution) -> float | Distribution:
    """A fixed positive noise scale, or a scalar prior over positive numbers."""
    if isinstance(scale, Distribution):
        if scale.batch_shape != () or scale.event_shape != ():
            raise ValueError(f"scale: the prior on the noise scale must be scalar, got {scale}")
        if bool(scale.support.check(torch.tensor(-1.0))):
            raise ValueError(f"scale: the prior's support must be positive, got {scale.support}")
        return scale
    return check_positive("scale", scale)


class _ScaledNoise(Likelihood):
    """Real-valued targets with one noise scale, fixed or learned (site ``"likelihood.scale"``)."""

    site = "likelihood.scale"

    def __init__(self, scale: float | Distribution = 1.0) -> None:
        self.scale: float | Distribution = _check_scale(scale)

    @property
    def learned(self) -> bool:
        """Whether the noise scale is a latent site."""
        return isinstance(self.scale, Distribution)

    def latent_sites(self) -> dict[str, Distribution]:
        return {self.site: self.scale} if self.learned else {}

    def noise_scale(self, latents: Mapping[str, Tensor], like: Tensor) -> Tensor:
        """The noise scale, shaped to broadcast against ``f`` of shape ``(*batch, N, out)``."""
        if self.learned:
            return expand_right(latents[self.site], 2)
        return like.new_full((), self.scale)  # filled on the device: no host-to-GPU copy

    def check_targets(self, y: Tensor, out_features: int) -> Tensor:
        return _check_float_targets(y, out_features)


def _summary(mean_f: Tensor, noise_var: Tensor) -> tuple[Tensor, Tensor]:
    """Predictive mean and std from draws of the mean ``(S, N, k)`` and the noise variance."""
    mean = mean_f.mean(0)
    std = (mean_f.var(0, correction=0) + noise_var.expand_as(mean_f).mean(0)).sqrt()
    if mean_f.shape[-1] == 1:
        return mean[..., 0], std[..., 0]
    return mean, std


class Gaussian(_ScaledNoise):
    r"""Gaussian observation noise, :math:`y \sim \mathcal N(f, \sigma^2)` per output.

    Parameters
    ----------
    scale
        The noise standard deviation ``sigma``: a fixed number > 0, or a Pyro distribution over
        positive numbers (``pyro.distributions.HalfNormal(1.0)``, say) to learn it; it is then
        the latent site ``"likelihood.scale"``.

    Notes
    -----
    Targets of shape ``(N,)`` and ``(N, 1)`` are both accepted for a single-output network.
    The predictive standard deviation includes the noise:
    ``Var[y] = Var_theta[f] + E_theta[sigma^2]``.
    """

    def predictive(self, f: Tensor, latents: Mapping[str, Tensor]) -> Distribution:
        return dist.Normal(f, self.noise_scale(latents, f)).to_event(1)

    def log_prob(self, f: Tensor, y: Tensor, latents: Mapping[str, Tensor]) -> Tensor:
        """``predictive(f).log_prob(y)`` written out: the sampler's inner loop calls it."""
        scale = self.noise_scale(latents, f)
        z = (y - f) / scale
        return (-0.5 * z.square() - scale.log()).sum(-1) - 0.5 * f.shape[-1] * _LOG_2PI

    def summary(self, f: Tensor, latents: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        return _summary(f, self.noise_scale(latents, f).square())


class StudentT(_ScaledNoise):
    r"""Student-t observation noise, :math:`y = f + \sigma \varepsilon`,
    :math:`\varepsilon \sim t_\nu`, per output: a Gaussian with heavy tails, robust to outliers.

    Parameters
    ----------
    scale
        The noise scale ``sigma`` (not the standard deviation): a fixed number > 0, or a Pyro
        distribution over positive numbers to learn it, as for :class:`Gaussian`; it is then the
        latent site ``"likelihood.scale"``.
    df
        Degrees of freedom ``nu`` > 0, fixed (default 4: heavy tails with a finite variance;
        as ``nu -> inf`` this becomes :class:`Gaussian`).

    Notes
    -----
    Targets as for :class:`Gaussian`. The predictive standard deviation includes the noise,
    ``Var[y] = Var_theta[f] + E_theta[sigma^2] nu / (nu - 2)``, which is infinite for
    ``nu <= 2``.
    """

    def __init__(self, scale: float | Distribution = 1.0, df: float = 4.0) -> None:
        super().__init__(scale)
        self.df = check_positive("df", df)

    def predictive(self, f: Tensor, latents: Mapping[str, Tensor]) -> Distribution:
        scale = self.noise_scale(latents, f)
        return dist.StudentT(f.new_tensor(self.df), f, scale).to_event(1)

    def log_prob(self, f: Tensor, y: Tensor, latents: Mapping[str, Tensor]) -> Tensor:
        """``predictive(f).log_prob(y)`` written out: the sampler's inner loop calls it."""
        scale = self.noise_scale(latents, f)
        nu = self.df
        z = (y - f) / scale
        const = math.lgamma((nu + 1) / 2) - math.lgamma(nu / 2) - 0.5 * math.log(nu * math.pi)
        per_output = -0.5 * (nu + 1) * torch.log1p(z.square() / nu) - scale.log()
        return per_output.sum(-1) + f.shape[-1] * const

    def summary(self, f: Tensor, latents: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        factor = self.df / (self.df - 2) if self.df > 2 else math.inf
        return _summary(f, self.noise_scale(latents, f).square() * factor)


class HeteroscedasticGaussian(Likelihood):
    r"""Gaussian noise whose scale the network predicts: :math:`y \sim \mathcal N(\mu, \sigma^2)`.

    The network has two outputs per target: for ``k`` targets, ``2k`` outputs, the means
    ``mu = f[..., :k]`` then the unconstrained scales ``r = f[..., k:]``, mapped to
    ``sigma = softplus(r) + min_scale``. The floor keeps ``sigma`` away from 0, so a network
    that fits a point exactly cannot send the log-likelihood to infinity.

    Parameters
    ----------
    min_scale
        The floor ``> 0`` added to the scale (default ``1e-3``, in the units of the targets;
        standardised targets have unit scale).

    Notes
    -----
    Targets of shape ``(N,)`` and ``(N, 1)`` are both accepted for a network with 2 outputs;
    ``(N, k)`` for ``2k`` outputs. The predictive mean is ``E_theta[mu]`` and the standard
    deviation includes the predicted noise: ``Var[y] = Var_theta[mu] + E_theta[sigma^2]``.
    """

    def __init__(self, min_scale: float = 1e-3) -> None:
        self.min_scale = check_positive("min_scale", min_scale)

    def check_outputs(self, out_features: int) -> None:
        if out_features % 2:
            raise ValueError(
                f"HeteroscedasticGaussian: the network has {out_features} output(s); it needs "
                "two per target (the means, then the unconstrained scales), an even number"
            )

    def check_targets(self, y: Tensor, out_features: int) -> Tensor:
        return _check_float_targets(y, out_features // 2)

    def mean_and_scale(self, f: Tensor) -> tuple[Tensor, Tensor]:
        """Split outputs ``(*batch, N, 2k)`` into the means and scales, each ``(*batch, N, k)``."""
        k = f.shape[-1] // 2
        return f[..., :k], torch.nn.functional.softplus(f[..., k:]) + self.min_scale

    def predictive(self, f: Tensor, latents: Mapping[str, Tensor]) -> Distribution:
        return dist.Normal(*self.mean_and_scale(f)).to_event(1)

    def log_prob(self, f: Tensor, y: Tensor, latents: Mapping[str, Tensor]) -> Tensor:
        """``predictive(f).log_prob(y)`` written out: the sampler's inner loop calls it."""
        mean, scale = self.mean_and_scale(f)
        z = (y - mean) / scale
        return (-0.5 * z.square() - scale.log()).sum(-1) - 0.5 * mean.shape[-1] * _LOG_2PI

    def summary(self, f: Tensor, latents: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        mean, scale = self.mean_and_scale(f)
        return _summary(mean, scale.square())


def _check_labels(y: Tensor) -> Tensor:
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise TypeError(
            f"y: expected integer class labels (torch.long), got dtype {y.dtype}; "
            "convert with y.long() if the values are whole numbers"
        )
    if y.dim() == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.dim() != 1:
        raise ValueError(f"y: expected class labels of shape (N,), got {tuple(y.shape)}")
    return y.long()


class Categorical(Likelihood):
    r"""Categorical likelihood on logits, :math:`y \sim \mathrm{Cat}(\mathrm{softmax}(f))`.

    Targets are integer class labels of shape ``(N,)`` in ``[0, out)``. The posterior predictive
    ``mean`` is the Bayesian model average of the class probabilities, and ``std`` their
    standard deviation across posterior draws (the epistemic part).
    """

    is_classifier = True

    def check_outputs(self, out_features: int) -> None:
        if out_features < 2:
            raise ValueError(
                f"Categorical: the network has {out_features} output(s); it needs one logit per "
                "class (use Bernoulli for a single logit)"
            )

    def check_targets(self, y: Tensor, out_features: int) -> Tensor:
        y = _check_labels(y)
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= out_features):
            raise ValueError(
                f"y: class labels must lie in [0, {out_features}), got range "
                f"[{int(y.min())}, {int(y.max())}]"
            )
        return y

    def predictive(self, f: Tensor, latents: Mapping[str, Tensor]) -> Distribution:
        return dist.Categorical(logits=f)

    def summary(self, f: Tensor, latents: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        probs = torch.softmax(f, dim=-1)
        return probs.mean(0), probs.std(0, correction=0)


class Bernoulli(Likelihood):
    r"""Bernoulli likelihood on one logit, :math:`y \sim \mathrm{Bernoulli}(\sigma(f))`.

    Targets are labels in {0, 1} of shape ``(N,)``: an integer or boolean tensor (or a float
    tensor holding exactly 0 and 1). ``mean`` is the averaged probability of class 1.
    """

    is_classifier = True

    def check_outputs(self, out_features: int) -> None:
        if out_features != 1:
            raise ValueError(
                f"Bernoulli: the network must have 1 output (a logit), got {out_features}"
            )

    def check_targets(self, y: Tensor, out_features: int) -> Tensor:
        if y.dim() == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if y.dim() != 1:
            raise ValueError(f"y: expected binary labels of shape (N,), got {tuple(y.shape)}")
        if y.is_complex():
            raise TypeError(f"y: expected binary labels, got dtype {y.dtype}")
        if y.numel() and not bool(((y == 0) | (y == 1)).all()):
            raise ValueError("y: Bernoulli labels must be 0 or 1")
        return y if y.is_floating_point() else y.float()

    def predictive(self, f: Tensor, latents: Mapping[str, Tensor]) -> Distribution:
        return dist.Bernoulli(logits=f[..., 0])

    def summary(self, f: Tensor, latents: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        probs = torch.sigmoid(f[..., 0])
        return probs.mean(0), probs.std(0, correction=0)
