r"""Reparameterised weight-prior families whose hyperparameters are fitted to a GP.

A family is a weight prior :math:`p_\psi(w)` with hyperparameters :math:`\psi` that draws
weights as a differentiable function of :math:`\psi` and standard noise, so that function
values :math:`f(X_M; w)` at a measurement set carry gradients to :math:`\psi` (Tran et al.
2022, section 4). For a parameter tensor with fan-in :math:`n_\mathrm{in}`
(:func:`~bayesdl.priors.base.fan_in_of`: the input width of a weight, 1 for a bias):

* ``"gaussian"`` (GPi-G): :math:`w = \sigma\,\varepsilon/\sqrt{n_\mathrm{in}}`,
  :math:`\varepsilon \sim \mathcal N(0, 1)`, with one :math:`\sigma` per parameter tensor
  (``per="layer"``) or one per entry (``per="parameter"``);
* ``"hierarchical"`` (GPi-H): per parameter tensor a precision
  :math:`\tau \sim \mathrm{Gamma}(a, b)`, :math:`\sigma = \tau^{-1/2}` (so
  :math:`\sigma^2 \sim \mathrm{InvGamma}(a, b)`), then :math:`w = \sigma\,\varepsilon /
  \sqrt{n_\mathrm{in}}`; the Gamma draw is reparameterised implicitly (``rsample``). Each
  function draw gets its own :math:`\sigma`, as the prior says (the reference code shares one
  draw across a batch of functions, which understates their diversity).

Positive hyperparameters :math:`\theta` (scales, Gamma shape and rate) are optimised through
an unconstrained raw value :math:`r` (``raw_scale``, ...), in one of two parameterisations:

* ``"softplus"`` (Tran et al.'s code): :math:`\theta = \log(1 + e^r)`. An RMSprop step moves
  :math:`r` by about the learning rate, so for :math:`\theta \gtrsim 1` it moves
  :math:`\theta` by an *additive* amount (:math:`\mathrm{d}\theta/\mathrm{d}r =
  \mathrm{sigmoid}(r) \le 1`). The reference starts every raw value at :math:`r = 1`
  (:math:`\theta_0 = \mathrm{softplus}(1) = 1.313`), and the hierarchical shape and rate at
  :math:`r = 3` (:math:`a_0 = b_0 = 3.049`).
* ``"log"``: :math:`\theta = e^r`, so a step changes :math:`\theta` by a fixed *fraction*.
  Scales that must grow or shrink tenfold get there in tens of steps; scales the objective
  pushes up (saturating tanh units) also run away faster.

An optional upper bound on the scales (``max_scale``) is enforced by projection after every
optimiser step (:meth:`WeightFamily.project`). The fitted values are read off with
:meth:`WeightFamily.values` and become a :class:`~bayesdl.priors.gp_matched.GPMatched` prior
with exactly this density.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from .._checks import check_positive
from .base import fan_in_of

__all__ = [
    "FAMILIES",
    "PARAMETERISATIONS",
    "PER",
    "GaussianFamily",
    "HierarchicalFamily",
    "WeightFamily",
    "make_family",
]

#: Family names accepted by ``fit_gp_prior``.
FAMILIES = ("gaussian", "hierarchical")
#: Granularity of the Gaussian scales.
PER = ("layer", "parameter")
#: Maps from raw values to positive hyperparameters.
PARAMETERISATIONS = ("softplus", "log")
#: Tran et al.'s raw starting value of every Gaussian scale (softplus(1) = 1.313).
REFERENCE_RAW_SCALE = 1.0
#: Tran et al.'s raw starting value of the hierarchical shape and rate (softplus(3) = 3.049).
REFERENCE_RAW_GAMMA = 3.0
#: Smallest Gamma shape the scale bound leaves (the RMS scale needs a > 1).
_MIN_BOUNDED_CONCENTRATION = 1.01

#: Shape a of the initial inverse-Gamma hyperprior of the hierarchical family (Tran et al.
#: initialise a raw softplus value of 3, softplus(3) = 3.05).
_INITIAL_CONCENTRATION = 3.0


def positive(raw: Tensor, parameterisation: str) -> Tensor:
    """The positive hyperparameter of raw value ``raw`` (softplus or exp)."""
    return torch.nn.functional.softplus(raw) if parameterisation == "softplus" else raw.exp()


def unconstrained(value: float | Tensor, parameterisation: str) -> Tensor:
    r"""The raw value of a positive hyperparameter: the inverse of :func:`positive`.

    The softplus inverse is :math:`r = v + \log(1 - e^{-v})`, written with ``expm1`` so it
    stays accurate for small :math:`v`.
    """
    value = torch.as_tensor(value, dtype=torch.float64)
    if parameterisation == "softplus":
        return value + torch.log(-torch.expm1(-value))
    return value.log()


def check_parameterisation(parameterisation: object) -> str:
    if parameterisation not in PARAMETERISATIONS:
        raise ValueError(
            f"parameterisation: must be one of {PARAMETERISATIONS}, got {parameterisation!r}"
        )
    return str(parameterisation)


def _param_name(name: str) -> str:
    """A parameter name usable as an ``nn.ParameterDict`` key (no dots)."""
    return name.replace(".", "/")


class WeightFamily(nn.Module):
    """A reparameterised prior over every parameter of ``net``.

    Parameters
    ----------
    net
        The network; its parameter names and shapes define the family.
    """

    family: str

    def __init__(
        self,
        net: nn.Module,
        parameterisation: str = "log",
        max_scale: float | Mapping[str, float] | None = None,
    ) -> None:
        super().__init__()
        self.parameterisation = check_parameterisation(parameterisation)
        self.shapes = {name: tuple(p.shape) for name, p in net.named_parameters()}
        if not self.shapes:
            raise ValueError("net: has no parameters to put a prior on")
        self.fan_in = {name: fan_in_of(p) for name, p in net.named_parameters()}
        first = next(net.parameters())
        self.dtype, self.device = first.dtype, first.device
        self.max_scale = None if max_scale is None else self._per_tensor("max_scale", max_scale)

    def _raw(self, value: float) -> nn.Parameter:
        """A 0-d raw parameter holding the positive ``value``."""
        raw = unconstrained(value, self.parameterisation)
        return nn.Parameter(raw.to(dtype=self.dtype, device=self.device))

    def _initial_scales(self, init_scale: float | Mapping[str, float]) -> dict[str, float]:
        """``init_scale`` as one positive number per parameter tensor (checked)."""
        return self._per_tensor("init_scale", init_scale)

    def _per_tensor(self, arg: str, init_scale: float | Mapping[str, float]) -> dict[str, float]:
        """``arg``: one positive number, or one per parameter tensor (checked)."""
        if isinstance(init_scale, Mapping):
            missing = sorted(set(self.shapes) - set(init_scale))
            unknown = sorted(set(init_scale) - set(self.shapes))
            if missing or unknown:
                raise ValueError(
                    f"{arg}: expected one scale per parameter {sorted(self.shapes)}; "
                    f"missing {missing}, unknown {unknown}"
                )
            return {n: check_positive(f"{arg}[{n!r}]", init_scale[n]) for n in self.shapes}
        value = check_positive(arg, init_scale)
        return dict.fromkeys(self.shapes, value)

    @property
    def per(self) -> str:
        return "layer"

    @abstractmethod
    def rsample(self, num_draws: int) -> dict[str, Tensor]:
        """``num_draws`` weight draws ``{name: (num_draws, *shape)}``, differentiable in psi."""

    @abstractmethod
    def values(self) -> dict[str, dict[str, Tensor]]:
        """The hyperparameters, constrained, detached, float64 on the CPU:
        ``{name: {field: tensor}}``."""

    def load_values(self, values: Mapping[str, Mapping[str, Tensor]]) -> None:
        """Set the hyperparameters to constrained ``values`` (the inverse of :meth:`values`)."""
        with torch.no_grad():
            for name, entry in values.items():
                for key, value in entry.items():
                    raw = getattr(self, f"raw_{key}")[_param_name(name)]
                    raw.copy_(unconstrained(value, self.parameterisation).to(raw))

    @abstractmethod
    def project(self) -> None:
        """Enforce ``max_scale`` in place (a no-op without a bound)."""

    def finite(self) -> bool:
        """Whether every raw hyperparameter is finite."""
        return all(bool(torch.isfinite(p).all()) for p in self.parameters())


class GaussianFamily(WeightFamily):
    r"""Gaussian weights with a fitted scale: :math:`w = \sigma \varepsilon / \sqrt{n_{in}}`.

    Parameters
    ----------
    net
        The network.
    per
        ``"layer"``: one scale per parameter tensor; ``"parameter"``: one per entry.
    init_scale
        Initial :math:`\sigma`, one number or one per parameter name (1: the fan-in-scaled
        standard-normal prior; ``sqrt(fan_in)``: standard-normal weights). ``None``: the
        parameterisation's default start, :math:`\mathrm{softplus}(1) = 1.313` (Tran et al.'s
        raw value 1) for ``"softplus"``, 1 for ``"log"``.
    parameterisation
        ``"softplus"`` or ``"log"`` (see the module docstring).
    max_scale
        Optional upper bound on :math:`\sigma` (one number or one per parameter name).
    """

    family = "gaussian"

    def __init__(
        self,
        net: nn.Module,
        per: str = "layer",
        init_scale: float | Mapping[str, float] | None = None,
        parameterisation: str = "log",
        max_scale: float | Mapping[str, float] | None = None,
    ) -> None:
        super().__init__(net, parameterisation, max_scale)
        if per not in PER:
            raise ValueError(f"per: must be one of {PER}, got {per!r}")
        self._per = per
        if init_scale is None:
            init_scale = (
                float(positive(torch.tensor(REFERENCE_RAW_SCALE), "softplus"))
                if self.parameterisation == "softplus"
                else 1.0
            )
        initial = self._initial_scales(init_scale)
        self.raw_scale = nn.ParameterDict(
            {
                _param_name(name): nn.Parameter(
                    unconstrained(initial[name], self.parameterisation)
                    .to(dtype=self.dtype, device=self.device)
                    .expand(shape if per == "parameter" else ())
                    .clone()
                )
                for name, shape in self.shapes.items()
            }
        )
        self.project()

    @property
    def per(self) -> str:
        return self._per

    def scale(self, name: str) -> Tensor:
        r""":math:`\sigma` of parameter ``name`` (before the fan-in factor)."""
        return positive(self.raw_scale[_param_name(name)], self.parameterisation)

    def project(self) -> None:
        if self.max_scale is None:
            return
        with torch.no_grad():
            for name, bound in self.max_scale.items():
                raw = self.raw_scale[_param_name(name)]
                limit = unconstrained(bound, self.parameterisation).to(raw)
                raw.copy_(torch.minimum(raw, limit))

    def rsample(self, num_draws: int) -> dict[str, Tensor]:
        draws = {}
        for name, shape in self.shapes.items():
            eps = torch.randn(num_draws, *shape, dtype=self.dtype, device=self.device)
            draws[name] = eps * (self.scale(name) / math.sqrt(self.fan_in[name]))
        return draws

    def values(self) -> dict[str, dict[str, Tensor]]:
        return {
            name: {"scale": self.scale(name).detach().to("cpu", torch.float64).clone()}
            for name in self.shapes
        }


class HierarchicalFamily(WeightFamily):
    r"""Per-layer scale with a fitted inverse-Gamma hyperprior.

    :math:`\sigma^2 \sim \mathrm{InvGamma}(a, b)` (precision :math:`\tau = \sigma^{-2} \sim
    \mathrm{Gamma}(a, b)`), :math:`w = \sigma\varepsilon/\sqrt{n_{in}}`; ``a`` and ``b`` are
    fitted per parameter tensor.

    Parameters
    ----------
    net
        The network.
    init_scale
        Initial root-mean-square scale :math:`s` (one number or one per parameter name):
        ``a = 3`` and ``b = 2 s**2``, so that :math:`E[\sigma^2] = b / (a - 1) = s^2`.
        ``None``: the parameterisation's default start, Tran et al.'s raw values 3 for
        ``"softplus"`` (:math:`a = b = 3.049`, :math:`s = 1.22`), :math:`s = 1` for ``"log"``.
    parameterisation
        ``"softplus"`` or ``"log"``.
    max_scale
        Optional upper bound on the root-mean-square scale :math:`\sqrt{b/(a-1)}`, enforced
        by raising :math:`a` to at least 1.01 and then lowering :math:`b` to at most
        :math:`s_\max^2 (a - 1)`.
    """

    family = "hierarchical"

    def __init__(
        self,
        net: nn.Module,
        init_scale: float | Mapping[str, float] | None = None,
        parameterisation: str = "log",
        max_scale: float | Mapping[str, float] | None = None,
    ) -> None:
        super().__init__(net, parameterisation, max_scale)
        if init_scale is None and self.parameterisation == "softplus":
            gamma = float(positive(torch.tensor(REFERENCE_RAW_GAMMA), "softplus"))
            start = dict.fromkeys(self.shapes, (gamma, gamma))
        else:
            initial = self._initial_scales(1.0 if init_scale is None else init_scale)
            a = _INITIAL_CONCENTRATION
            start = {n: (a, (a - 1) * s**2) for n, s in initial.items()}
        self.raw_concentration = nn.ParameterDict(
            {_param_name(n): self._raw(start[n][0]) for n in self.shapes}
        )
        self.raw_rate = nn.ParameterDict(
            {_param_name(n): self._raw(start[n][1]) for n in self.shapes}
        )
        self.project()

    def concentration(self, name: str) -> Tensor:
        return positive(self.raw_concentration[_param_name(name)], self.parameterisation)

    def rate(self, name: str) -> Tensor:
        return positive(self.raw_rate[_param_name(name)], self.parameterisation)

    def project(self) -> None:
        if self.max_scale is None:
            return
        with torch.no_grad():
            for name, bound in self.max_scale.items():
                key = _param_name(name)
                a = self.concentration(name).clamp_min(_MIN_BOUNDED_CONCENTRATION)
                b = torch.minimum(self.rate(name), bound**2 * (a - 1))
                for raw, value in ((self.raw_concentration[key], a), (self.raw_rate[key], b)):
                    raw.copy_(unconstrained(value.double(), self.parameterisation).to(raw))

    def rsample(self, num_draws: int) -> dict[str, Tensor]:
        draws = {}
        for name, shape in self.shapes.items():
            precision = torch.distributions.Gamma(self.concentration(name), self.rate(name))
            scale = precision.rsample((num_draws,)).clamp_min(1e-30).rsqrt()
            eps = torch.randn(num_draws, *shape, dtype=self.dtype, device=self.device)
            factor = scale / math.sqrt(self.fan_in[name])
            draws[name] = eps * factor.reshape(num_draws, *([1] * len(shape)))
        return draws

    def values(self) -> dict[str, dict[str, Tensor]]:
        return {
            name: {
                "concentration": self.concentration(name).detach().to("cpu", torch.float64).clone(),
                "rate": self.rate(name).detach().to("cpu", torch.float64).clone(),
            }
            for name in self.shapes
        }


def make_family(
    net: nn.Module,
    family: str,
    per: str,
    init_scale: float | Mapping[str, float] | None = 1.0,
    parameterisation: str = "log",
    max_scale: float | Mapping[str, float] | None = None,
) -> WeightFamily:
    """The family named ``family`` over ``net``'s parameters (checks every argument)."""
    if family not in FAMILIES:
        raise ValueError(f"family: must be one of {FAMILIES}, got {family!r}")
    if per not in PER:
        raise ValueError(f"per: must be one of {PER}, got {per!r}")
    if family == "hierarchical":
        if per != "layer":
            raise ValueError(
                "per: the hierarchical family has one scale per parameter tensor; use per='layer'"
            )
        return HierarchicalFamily(net, init_scale, parameterisation, max_scale)
    return GaussianFamily(net, per, init_scale, parameterisation, max_scale)
