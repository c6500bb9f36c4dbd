"""Argument checks shared across the package: one clear error naming the argument."""

from __future__ import annotations

import math
from numbers import Real

import numpy as np
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
    """Convert array-likes to a tensor (keeping integer dtypes), naming ``name`` on failure.

    A pandas ``DataFrame`` or ``Series`` (anything with ``to_numpy``) is converted through its
    values: float columns give a float tensor, integer columns an integer one; non-numeric
    columns (strings, categories, objects) are refused with a ``TypeError`` naming them.
    """
    if isinstance(value, Tensor):
        return value
    if callable(getattr(value, "to_numpy", None)):
        value = _frame_values(name, value)
    try:
        return torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(
            f"{name}: expected a tensor or array-like, got {type(value).__name__}"
        ) from err


def _frame_values(name: str, frame: object) -> np.ndarray:
    """The values of a pandas ``DataFrame`` or ``Series`` as a numeric numpy array (a copy)."""
    dtypes = getattr(frame, "dtypes", None)
    if hasattr(dtypes, "items"):  # a DataFrame: one dtype per column
        bad = [str(col) for col, dtype in dtypes.items() if not _is_numeric(dtype)]
        what = f"column(s) {bad} are"
    else:  # a Series
        bad = [] if _is_numeric(getattr(frame, "dtype", None)) else [frame]
        what = f"values (dtype {getattr(frame, 'dtype', None)}) are"
    if bad:
        raise TypeError(
            f"{name}: the {type(frame).__name__}'s {what} not of a numeric numpy dtype (bool, "
            "integer or float); convert them first (pandas.get_dummies or .cat.codes for "
            "categories and strings, .astype(float) for nullable numbers)"
        )
    return frame.to_numpy(copy=True)  # type: ignore[attr-defined]


def _is_numeric(dtype: object) -> bool:
    try:
        kind = np.dtype(dtype).kind
    except TypeError:  # a pandas extension dtype (category, string, nullable Int64...)
        return False
    return kind in "buif"


def check_finite(name: str, value: Tensor) -> None:
    """Raise ``ValueError`` naming ``name`` if a floating tensor holds NaN or inf."""
    if value.is_floating_point() and not bool(torch.isfinite(value).all()):
        bad = int((~torch.isfinite(value)).sum())
        raise ValueError(f"{name}: contains {bad} NaN or infinite value(s)")
