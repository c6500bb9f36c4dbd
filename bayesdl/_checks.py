"""Argument checks shared across the package: one clear error naming the argument."""

from __future__ import annotations

import math
from numbers import Real

import torch
from torch import Tensor

__all__ = ["as_tensor", "check_count", "check_finite", "check_positive", "check_probability"]


def check_positive(name: str, value: object) -> float:
    """Return ``value`` as a float, or raise if it is not a finite number > 0."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name}: expected a positive number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name}: must be a finite number > 0, got {value}")
    return value


def check_probability(name: str, value: object, *, open_interval: bool = True) -> float:
    """Return ``value`` as a float in (0, 1) (or [0, 1]), or raise."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name}: expected a number in (0, 1), got {type(value).__name__}")
    value = float(value)
    ok = 0 < value < 1 if open_interval else 0 <= value <= 1
    if not ok:
        raise ValueError(
            f"{name}: must lie in {'(0, 1)' if open_interval else '[0, 1]'}, got {value}"
        )
    return value


def check_count(name: str, value: object, *, minimum: int = 1) -> int:
    """Return ``value`` as an int >= ``minimum``, or raise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected an integer, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name}: must be >= {minimum}, got {value}")
    return value


def as_tensor(name: str, value: object) -> Tensor:
    """Convert array-likes to a tensor (keeping integer dtypes), naming ``name`` on failure."""
    if isinstance(value, Tensor):
        return value
    try:
        return torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(
            f"{name}: expected a tensor or array-like, got {type(value).__name__}"
        ) from err


def check_finite(name: str, value: Tensor) -> None:
    """Raise ``ValueError`` naming ``name`` if a floating tensor holds NaN or inf."""
    if value.is_floating_point() and not bool(torch.isfinite(value).all()):
        bad = int((~torch.isfinite(value)).sum())
        raise ValueError(f"{name}: contains {bad} NaN or infinite value(s)")
