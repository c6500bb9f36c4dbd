r"""Measurement sets: the inputs at which a BNN prior and a GP are compared.

A functional prior is fitted by comparing the distributions of function values
:math:`f(X_M) \in \mathbb R^M` at a finite set of inputs :math:`X_M = \{x_1, \dots, x_M\}`,
the *measurement set* (Tran et al. 2022, section 3). It is either fixed (a tensor ``(M, d)``,
such as :func:`grid`) or drawn afresh at every outer step of the fit by a *sampler*, so that
the match holds over a region rather than at a few points:

* :func:`uniform`: ``M`` points uniform in a box;
* :func:`from_data`: a fraction of training inputs mixed with uniform points in their
  bounding box, as Tran et al. do for the UCI sets (70% data, 30% uniform).

A sampler is any callable ``sampler(generator) -> Tensor (M, d)`` taking a
:class:`torch.Generator`; :class:`MeasurementSampler` is the base class of the built-in ones.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from .._checks import as_tensor, check_count, check_finite, check_probability

__all__ = [
    "FromData",
    "MeasurementSampler",
    "Uniform",
    "draw",
    "from_data",
    "grid",
    "uniform",
]

Bound = float | Sequence[float] | Tensor
MeasurementLike = Tensor | Callable[[torch.Generator], Tensor]


def _bounds(low: Bound, high: Bound) -> tuple[Tensor, Tensor]:
    """``low`` and ``high`` as float64 vectors of one common length ``d`` with low < high."""
    lo = as_tensor("low", low).to(torch.float64).reshape(-1)
    hi = as_tensor("high", high).to(torch.float64).reshape(-1)
    check_finite("low", lo)
    check_finite("high", hi)
    if lo.numel() == 0 or hi.numel() == 0:
        raise ValueError("low, high: expected at least one coordinate")
    if lo.numel() != hi.numel():
        if lo.numel() == 1:
            lo = lo.expand_as(hi)
        elif hi.numel() == 1:
            hi = hi.expand_as(lo)
        else:
            raise ValueError(
                f"high: has {hi.numel()} coordinates but low has {lo.numel()}; they must match"
            )
    if not bool((hi > lo).all()):
        raise ValueError(
            f"high: must exceed low in every coordinate, got low={lo.tolist()}, high={hi.tolist()}"
        )
    return lo.clone(), hi.clone()


class MeasurementSampler(ABC):
    """Draws a fresh measurement set ``(M, d)`` at every call.

    Attributes
    ----------
    num_points : int
        ``M``, the number of points per draw.
    dim : int
        ``d``, the input dimension.
    """

    num_points: int
    dim: int

    @abstractmethod
    def __call__(self, generator: torch.Generator | None = None) -> Tensor:
        """One measurement set, float64 ``(num_points, dim)``, drawn with ``generator``."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_points={self.num_points}, dim={self.dim})"


class Uniform(MeasurementSampler):
    """``num_points`` points drawn uniformly in the box ``[low, high]`` (see :func:`uniform`)."""

    def __init__(self, low: Bound, high: Bound, num_points: int) -> None:
        self.low, self.high = _bounds(low, high)
        self.num_points = check_count("num_points", num_points)
        self.dim = self.low.numel()

    def __call__(self, generator: torch.Generator | None = None) -> Tensor:
        u = torch.rand(self.num_points, self.dim, generator=generator, dtype=torch.float64)
        return self.low + (self.high - self.low) * u


def _matrix(name: str, x: Tensor) -> Tensor:
    """``x`` as a checked float64 matrix ``(N, d)`` (errors name ``name``)."""
    x = as_tensor(name, x)
    if not x.is_floating_point():
        x = x.to(torch.float64)
    if x.dim() != 2 or x.shape[0] == 0:
        raise ValueError(f"{name}: expected a non-empty matrix (N, d), got {tuple(x.shape)}")
    check_finite(name, x)
    return x.detach().to(torch.float64).clone()


class FromData(MeasurementSampler):
    """A random subset of inputs mixed with uniform points in their bounding box.

    See :func:`from_data`.
    """

    def __init__(
        self,
        x: Tensor,
        num_points: int,
        uniform_fraction: float = 0.3,
        x_test: Tensor | None = None,
    ) -> None:
        self.x = _matrix("x", x)
        self.num_points = check_count("num_points", num_points)
        self.uniform_fraction = check_probability(
            "uniform_fraction", uniform_fraction, open_interval=False
        )
        self.num_uniform = round(self.uniform_fraction * self.num_points)
        self.num_data = self.num_points - self.num_uniform
        if self.num_data > self.x.shape[0]:
            raise ValueError(
                f"num_points: asks for {self.num_data} data points but x has only "
                f"{self.x.shape[0]} rows; lower num_points or raise uniform_fraction"
            )
        self.dim = self.x.shape[1]
        box = self.x
        if x_test is not None:
            x_test = _matrix("x_test", x_test)
            if x_test.shape[1] != self.dim:
                raise ValueError(
                    f"x_test: has {x_test.shape[1]} features but x has {self.dim}; they must match"
                )
            box = torch.cat([self.x, x_test])
        low, high = box.min(0).values, box.max(0).values
        # A constant feature gives a flat box side; widen it so uniform draws stay defined.
        flat = high <= low
        self.low = torch.where(flat, low - 0.5, low)
        self.high = torch.where(flat, high + 0.5, high)

    def __call__(self, generator: torch.Generator | None = None) -> Tensor:
        index = torch.randperm(self.x.shape[0], generator=generator)[: self.num_data]
        u = torch.rand(self.num_uniform, self.dim, generator=generator, dtype=torch.float64)
        return torch.cat([self.x[index], self.low + (self.high - self.low) * u])


def uniform(low: Bound, high: Bound, num_points: int) -> Uniform:
    """A sampler of ``num_points`` points uniform in the box ``[low, high]``.

    Parameters
    ----------
    low, high
        Corners of the box: numbers (one input dimension) or sequences of length ``d``; a
        number is broadcast against a sequence.
    num_points
        ``M``, points per draw.

    Examples
    --------
    >>> sampler = uniform(-6.0, 6.0, 50)
    >>> sampler(torch.Generator().manual_seed(0)).shape
    torch.Size([50, 1])
    """
    return Uniform(low, high, num_points)


def grid(low: Bound, high: Bound, num_points: int) -> Tensor:
    """A fixed regular grid on the box ``[low, high]``, float64 ``(M, d)``.

    Parameters
    ----------
    low, high
        Corners of the box (numbers, or sequences of length ``d``).
    num_points
        Points per axis (at least 2): ``M = num_points ** d``.
    """
    lo, hi = _bounds(low, high)
    num_points = check_count("num_points", num_points, minimum=2)
    axes = [
        torch.linspace(float(a), float(b), num_points, dtype=torch.float64)
        for a, b in zip(lo, hi, strict=True)
    ]
    if len(axes) == 1:
        return axes[0][:, None]
    mesh = torch.meshgrid(*axes, indexing="ij")
    return torch.stack([m.reshape(-1) for m in mesh], dim=-1)


def from_data(
    x: Tensor, num_points: int, uniform_fraction: float = 0.3, x_test: Tensor | None = None
) -> FromData:
    """A sampler mixing training inputs with uniform points in their bounding box.

    Each draw holds ``round((1 - uniform_fraction) * num_points)`` rows of ``x`` picked without
    replacement and the rest drawn uniformly in the box ``[min(x), max(x)]`` (per feature), or
    in the bounding box of ``x`` and ``x_test`` together when ``x_test`` is given. Tran et al.
    (2022) use 100 points with 30% uniform for the UCI sets, the data points from the training
    inputs and the box over training and test inputs: ``from_data(x_train, 100, 0.3,
    x_test=x_test)``. Test inputs only widen the box; no test row is ever drawn.

    Parameters
    ----------
    x
        Inputs ``(N, d)``.
    num_points
        ``M``, points per draw.
    uniform_fraction
        Fraction of uniform points, in ``[0, 1]``.
    x_test
        Optional further inputs ``(N', d)`` (test inputs) whose range widens the box.
    """
    return FromData(x, num_points, uniform_fraction, x_test)


def draw(measurement: MeasurementLike, generator: torch.Generator) -> Tensor:
    """One measurement set from a tensor (returned as is) or a sampler, checked.

    Raises
    ------
    TypeError, ValueError
        Naming ``measurement``: not a tensor or callable, not of shape ``(M, d)``, non-finite.
    """
    if isinstance(measurement, Tensor):
        x = measurement
    elif callable(measurement):
        x = measurement(generator)
        if not isinstance(x, Tensor):
            raise TypeError(
                f"measurement: the sampler returned {type(x).__name__}, expected a tensor (M, d)"
            )
    else:
        raise TypeError(
            "measurement: expected a tensor (M, d) or a sampler (a callable taking a "
            f"torch.Generator), got {type(measurement).__name__}"
        )
    if x.dim() != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(
            f"measurement: expected a non-empty matrix (M, d) of inputs, got shape "
            f"{tuple(x.shape)}; for one input feature use x[:, None]"
        )
    if not x.is_floating_point():
        raise TypeError(f"measurement: expected real-valued inputs, got dtype {x.dtype}")
    check_finite("measurement", x)
    return x
