"""The measurement set of function-space kernels: extra inputs besides the minibatch.

``SVGD(measurement=...)`` takes a tensor (a pool of inputs, of which ``measurement_size`` rows
are drawn each step), a callable ``generator -> inputs`` such as :func:`uniform_domain`, or
``None`` (measure on the minibatch only). Here are the setting's checks and
:func:`uniform_domain`; the draws themselves are made by
:class:`~.targets.BNNTarget`, from a generator kept in the run's state.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import Tensor

from bayesdl._checks import check_count
from bayesdl.models import BNN

from .settings import scores_functions, uses_functions
from .stein_kernels import Hybrid, Kernel
from .targets import MeasurementLike

__all__ = ["check_measurement", "checked_measurement", "uniform_domain", "warn_off_data"]


def uniform_domain(
    x: Tensor, size: int, margin: float = 0.1
) -> Callable[[torch.Generator], Tensor]:
    """Measurement points drawn uniformly from the bounding box of the inputs ``x``.

    Returns a callable for ``SVGD(measurement=...)``: each call draws ``size`` points uniformly
    in the box ``[min - margin * range, max + margin * range]`` of every input feature. Points
    between and beyond the data are where function-space repulsion creates the in-between
    uncertainty of a 1-D regression.
    """
    if not isinstance(x, Tensor) or x.dim() < 2 or x.shape[0] == 0:
        raise ValueError(f"x: expected inputs of shape (N, ...), got {getattr(x, 'shape', x)}")
    size = check_count("size", size)
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or margin < 0:
        raise ValueError(f"margin: expected a number >= 0, got {margin!r}")
    low, high = x.min(0).values, x.max(0).values
    width = high - low
    low, high = low - margin * width, high + margin * width

    def draw(generator: torch.Generator) -> Tensor:
        u = torch.rand((size, *low.shape), generator=generator, dtype=x.dtype)
        return low + u.to(x.device) * (high - low)

    return draw


def check_measurement(kernel: Kernel | Hybrid | None, measurement: object, size: object) -> None:
    """The ``measurement`` and ``measurement_size`` settings; errors name them."""
    if measurement is not None:
        if not uses_functions(kernel):
            raise ValueError(
                "measurement: extra measurement inputs are only used by function-space kernels"
            )
        if not (isinstance(measurement, Tensor) or callable(measurement)):
            raise TypeError(
                "measurement: expected a tensor of inputs, a callable generator -> inputs, "
                f"or None, got {type(measurement).__name__}"
            )
    if size is not None:
        check_count("measurement_size", size)
        if not isinstance(measurement, Tensor):
            raise ValueError("measurement_size: only applies to a tensor of measurement inputs")


def checked_measurement(bnn: BNN, measurement: MeasurementLike) -> MeasurementLike:
    """A tensor of measurement inputs checked as the BNN's inputs (errors name
    ``measurement``); a callable or ``None`` as it is."""
    if not isinstance(measurement, Tensor):
        return measurement
    try:
        return bnn.check_inputs(measurement)
    except (TypeError, ValueError) as err:
        message = str(err).removeprefix("x: ")
        raise type(err)(f"measurement: {message}") from err


def warn_off_data(
    kernel: Kernel | Hybrid | None, measurement: MeasurementLike, prior_score: object
) -> None:
    """Warn when extra measurement points meet an SSGE prior score, which does not hold
    away from the data (the particles' functions then over-spread)."""
    if measurement is not None and prior_score == "ssge" and scores_functions(kernel):
        warnings.warn(
            "measurement: points away from the data with an SSGE estimate of the "
            "functional prior's score, which does not hold there, so the particles' "
            "functions over-spread. Pass an exact prior score "
            "(prior_score=GaussianProcessScore(...)) or measure on the data "
            "(measurement=None)",
            UserWarning,
            stacklevel=3,
        )
