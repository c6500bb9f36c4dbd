"""The prior interface and the rule that chooses a prior for each parameter.

A :class:`Prior` turns one parameter tensor of a network into a Pyro distribution over that
tensor. Hierarchical priors also declare *latent sites* (a layer's scale, say): ordinary Pyro
sample sites with a constrained support, sampled before the parameter they govern.

Batch convention
----------------
``distribution`` receives its latents with any leading batch shape: ``()`` inside the Pyro
model, ``(P,)`` inside the vectorised ``log_joint``. It must return a distribution whose
shape ``batch_shape + event_shape`` broadcasts against ``(*batch, *param.shape)``; the
helper :func:`expand_right` turns a latent of shape ``(*batch, *s)`` into one that broadcasts
against a parameter.
"""

from __future__ import annotations

import fnmatch
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from pyro.distributions import Distribution
from torch import Tensor, nn

__all__ = [
    "InverseGammaScaleTerms",
    "Predicate",
    "Prior",
    "PriorRule",
    "Select",
    "expand_right",
    "fan_in_of",
    "select",
]

Predicate = Callable[[str, Tensor, nn.Module], bool]


def fan_in_of(param: Tensor) -> int:
    """Fan-in of a parameter tensor: ``shape[1] * prod(shape[2:])`` for weights, 1 for biases.

    For a ``Linear`` weight ``(out, in)`` this is ``in``; for a ``Conv2d`` weight
    ``(out, in, kh, kw)`` it is ``in * kh * kw`` (He/Neal scaling). One-dimensional tensors
    (biases, scales) are not scaled.
    """
    if param.dim() < 2:
        return 1
    return int(param.shape[1] * math.prod(param.shape[2:]))


def expand_right(value: Tensor, ndim: int) -> Tensor:
    """Append ``ndim`` singleton dimensions so ``value`` broadcasts against a parameter."""
    return value.reshape(*value.shape, *([1] * ndim))


@dataclass(frozen=True)
class InverseGammaScaleTerms:
    r"""A parameter's prior in the closed form of a per-tensor inverse-Gamma scale.

    .. math::
        \sigma^2 \sim \mathrm{InvGamma}(a, b), \qquad
        w_i \mid \sigma \sim \mathcal N(0, c^2 \sigma^2), \quad i = 1, \dots, n,

    with the standard deviation :math:`\sigma` the one latent site ``site`` (positive support,
    sampled as :math:`u = \log\sigma`). :meth:`Prior.inverse_gamma_scale` returns it so that
    ``BNN.log_joint`` can score all such tensors at once (see ``models/bnn.py``) instead of
    building a distribution per site per call.

    Attributes
    ----------
    site
        Name of the latent scale site.
    concentration, rate
        :math:`a, b > 0`.
    factor
        :math:`c > 0` (``1/sqrt(fan_in)`` for a fan-in-scaled prior, else 1).
    """

    site: str
    concentration: float
    rate: float
    factor: float


class Prior(ABC):
    """A prior over one parameter tensor of a network.

    Subclasses implement :meth:`distribution`; hierarchical priors also override
    :meth:`latent_sites`. A prior holds settings only; it is shared by every parameter it is
    selected for, and by the Pyro model and the vectorised ``log_joint`` alike.
    """

    def latent_sites(self, name: str, param: Tensor, module: nn.Module) -> dict[str, Distribution]:
        """Hyper-latent sites this prior adds for parameter ``name``.

        Returns
        -------
        dict
            ``{site_name: distribution}``, each with an empty batch shape (the site's shape is
            its event shape). Site names must be unique across the network; prefix them with
            ``name``.
        """
        return {}

    @abstractmethod
    def distribution(
        self, name: str, param: Tensor, module: nn.Module, latents: Mapping[str, Tensor]
    ) -> Distribution:
        """The distribution of the parameter ``name`` given its latents' values.

        Parameters
        ----------
        name
            Full parameter name in the network (``"layers.0.weight"``).
        param
            The parameter tensor itself (for its shape, dtype and device; not its value).
        module
            The module that owns the parameter.
        latents
            Values of the sites declared by :meth:`latent_sites`, each of shape
            ``(*batch, *site_shape)``.
        """

    def inverse_gamma_scale(
        self, name: str, param: Tensor, module: nn.Module
    ) -> InverseGammaScaleTerms | None:
        """The prior of ``name`` as :class:`InverseGammaScaleTerms`, or ``None`` (the default).

        An optional fast path: a prior whose latent sites and distribution for ``name`` are
        exactly a per-tensor inverse-Gamma scale returns their parameters, and the vectorised
        log density scores it in closed form. It must describe the same density as
        :meth:`latent_sites` and :meth:`distribution`; a subclass that overrides either should
        return ``None`` here.
        """
        return None

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


class PriorRule(ABC):
    """Chooses the prior (or ``None``: keep the parameter fixed) for each parameter."""

    @abstractmethod
    def __call__(self, name: str, param: Tensor, module: nn.Module) -> Prior | None:
        """The prior for parameter ``name``."""

    def check_names(self, names: Sequence[str]) -> None:
        """Raise ``ValueError`` if the rule does not fit a network with these parameter names.

        ``BNN`` calls it with the names it offered the rule, after choosing every prior. The
        default accepts any names.
        """
        return None


_UNSET = object()


class Select(PriorRule):
    """Choose priors by parameter-name patterns or predicates.

    The first matching rule wins, in the order given; then, for biases (parameters whose name
    ends in ``bias``), the ``bias`` prior if one is given; then ``default``. A rule mapping
    to ``None`` keeps the matching parameters fixed at their current values (deterministic
    parameters, not sample sites).

    Parameters
    ----------
    rules
        ``{pattern: prior}`` where a pattern is an :func:`fnmatch.fnmatch` glob on the full
        parameter name (``"conv*.weight"``, ``"layers.2.*"``) or a predicate
        ``(name, param, module) -> bool``.
    default
        Prior for parameters no rule matches. If not given, an unmatched parameter is an error.
    bias
        Prior for biases no rule matches (default: ``default``).

    Examples
    --------
    >>> from bayesdl import priors
    >>> rule = priors.Select({"conv*.weight": priors.CorrelatedConv(lengthscale=1.0)},
    ...                      default=priors.Gaussian(1.0, fan_in=True), bias=priors.Gaussian(1.0))
    """

    def __init__(
        self,
        rules: Mapping[str | Predicate, Prior | None] | None = None,
        *,
        default: Prior | object | None = _UNSET,
        bias: Prior | object | None = _UNSET,
    ) -> None:
        rules = dict(rules or {})
        for key, prior in rules.items():
            if not (isinstance(key, str) or callable(key)):
                raise TypeError(f"rules: keys must be name patterns or predicates, got {key!r}")
            _check_prior(f"rules[{key!r}]", prior)
        if default is not _UNSET:
            _check_prior("default", default)
        if bias is not _UNSET:
            _check_prior("bias", bias)
        self.rules = rules
        self.default = default
        self.bias = bias

    def __call__(self, name: str, param: Tensor, module: nn.Module) -> Prior | None:
        for key, prior in self.rules.items():
            matched = (
                fnmatch.fnmatchcase(name, key) if isinstance(key, str) else key(name, param, module)
            )
            if matched:
                return prior
        if self.bias is not _UNSET and name.rsplit(".", 1)[-1] == "bias":
            return self.bias  # type: ignore[return-value]
        if self.default is not _UNSET:
            return self.default  # type: ignore[return-value]
        raise ValueError(
            f"prior: no rule matches parameter {name!r}; add a pattern for it or a default"
        )

    def check_names(self, names: Sequence[str]) -> None:
        """Raise ``ValueError`` naming any name pattern that matches none of ``names`` (a typo
        would otherwise leave its prior unused); predicates are not checked."""
        for key in self.rules:
            if isinstance(key, str) and not any(fnmatch.fnmatchcase(n, key) for n in names):
                raise ValueError(
                    f"prior: the pattern {key!r} matches no parameter of the network; its "
                    f"parameters are {list(names)} (patterns are fnmatch globs on these names)"
                )

    def __repr__(self) -> str:
        parts = [repr(self.rules)]
        if self.default is not _UNSET:
            parts.append(f"default={self.default!r}")
        if self.bias is not _UNSET:
            parts.append(f"bias={self.bias!r}")
        return f"Select({', '.join(parts)})"


def _check_prior(name: str, prior: object) -> None:
    if prior is not None and not isinstance(prior, Prior):
        raise TypeError(f"{name}: expected a bayesdl Prior or None, got {type(prior).__name__}")


PriorLike = Prior | PriorRule | Mapping[str, Prior | None]


def select(prior: PriorLike) -> PriorRule:
    """Normalise what ``BNN(prior=...)`` accepts into a :class:`PriorRule`.

    A single :class:`Prior` applies to every parameter; a mapping is ``Select(mapping)`` with no
    default (every parameter must match a pattern); a :class:`PriorRule` is used as is.
    """
    if isinstance(prior, PriorRule):
        return prior
    if isinstance(prior, Prior):
        return Select(default=prior)
    if isinstance(prior, Mapping):
        return Select(prior)
    raise TypeError(
        "prior: expected a Prior, a PriorRule or a dict of name patterns, got "
        f"{type(prior).__name__}"
    )
