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

Positive hyperparameters are optimised as logarithms (``log_scale``, ...), so that an RMSprop
step changes a scale by a fixed *fraction*: from a standard-normal start, the scales of a 1-D
toy often must grow or shrink by a factor of 10, which Tran et al.'s ``softplus``
parameterisation covers only in hundreds of steps at their learning rates. The fitted values
are read off with :meth:`WeightFamily.values` and become a
:class:`~bayesdl.priors.gp_matched.GPMatched` prior with exactly this density.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from .._checks import check_positive
from .base import fan_in_of

__all__ = ["FAMILIES", "PER", "GaussianFamily", "HierarchicalFamily", "WeightFamily", "make_family"]

#: Family names accepted by ``fit_gp_prior``.
FAMILIES = ("gaussian", "hierarchical")
#: Granularity of the Gaussian scales.
PER = ("layer", "parameter")

#: Shape a of the initial inverse-Gamma hyperprior of the hierarchical family (Tran et al.
#: initialise a raw softplus value of 3, softplus(3) = 3.05).
_INITIAL_CONCENTRATION = 3.0


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

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.shapes = {name: tuple(p.shape) for name, p in net.named_parameters()}
        if not self.shapes:
            raise ValueError("net: has no parameters to put a prior on")
        self.fan_in = {name: fan_in_of(p) for name, p in net.named_parameters()}
        first = next(net.parameters())
        self.dtype, self.device = first.dtype, first.device

    def _initial_scales(self, init_scale: float | Mapping[str, float]) -> dict[str, float]:
        """``init_scale`` as one positive number per parameter tensor (checked)."""
        if isinstance(init_scale, Mapping):
            missing = sorted(set(self.shapes) - set(init_scale))
            unknown = sorted(set(init_scale) - set(self.shapes))
            if missing or unknown:
                raise ValueError(
                    f"init_scale: expected one scale per parameter {sorted(self.shapes)}; "
                    f"missing {missing}, unknown {unknown}"
                )
            return {n: check_positive(f"init_scale[{n!r}]", init_scale[n]) for n in self.shapes}
        value = check_positive("init_scale", init_scale)
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
                    raw = getattr(self, f"log_{key}")[_param_name(name)]
                    raw.copy_(value.to(raw).log())

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
        standard-normal prior; ``sqrt(fan_in)``: standard-normal weights).
    """

    family = "gaussian"

    def __init__(
        self, net: nn.Module, per: str = "layer", init_scale: float | Mapping[str, float] = 1.0
    ) -> None:
        super().__init__(net)
        if per not in PER:
            raise ValueError(f"per: must be one of {PER}, got {per!r}")
        self._per = per
        initial = self._initial_scales(init_scale)
        self.log_scale = nn.ParameterDict(
            {
                _param_name(name): nn.Parameter(
                    torch.full(
                        shape if per == "parameter" else (),
                        math.log(initial[name]),
                        dtype=self.dtype,
                        device=self.device,
                    )
                )
                for name, shape in self.shapes.items()
            }
        )

    @property
    def per(self) -> str:
        return self._per

    def scale(self, name: str) -> Tensor:
        """:math:`\\sigma` of parameter ``name`` (before the fan-in factor)."""
        return self.log_scale[_param_name(name)].exp()

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
    """

    family = "hierarchical"

    def __init__(self, net: nn.Module, init_scale: float | Mapping[str, float] = 1.0) -> None:
        super().__init__(net)
        initial = self._initial_scales(init_scale)
        a = math.log(_INITIAL_CONCENTRATION)
        self.log_concentration = nn.ParameterDict(
            {
                _param_name(n): nn.Parameter(torch.tensor(a, dtype=self.dtype, device=self.device))
                for n in self.shapes
            }
        )
        self.log_rate = nn.ParameterDict(
            {
                _param_name(n): nn.Parameter(
                    torch.tensor(
                        math.log((_INITIAL_CONCENTRATION - 1) * initial[n] ** 2),
                        dtype=self.dtype,
                        device=self.device,
                    )
                )
                for n in self.shapes
            }
        )

    def concentration(self, name: str) -> Tensor:
        return self.log_concentration[_param_name(name)].exp()

    def rate(self, name: str) -> Tensor:
        return self.log_rate[_param_name(name)].exp()

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
    net: nn.Module, family: str, per: str, init_scale: float | Mapping[str, float] = 1.0
) -> WeightFamily:
    """The family named ``family`` over ``net``'s parameters (checks ``family`` and ``per``)."""
    if family not in FAMILIES:
        raise ValueError(f"family: must be one of {FAMILIES}, got {family!r}")
    if per not in PER:
        raise ValueError(f"per: must be one of {PER}, got {per!r}")
    if family == "hierarchical":
        if per != "layer":
            raise ValueError(
                "per: the hierarchical family has one scale per parameter tensor; use per='layer'"
            )
        return HierarchicalFamily(net, init_scale)
    return GaussianFamily(net, per, init_scale)
