"""Argument checks shared by the loaders: floating dtypes and counts (numpy integers too)."""

from __future__ import annotations

import numpy as np
import torch

from bayesdl import _checks

__all__ = ["check_count", "check_dtype"]


def check_dtype(dtype: object) -> torch.dtype:
    """``dtype`` itself if it is a floating point ``torch.dtype``, else a ``TypeError``."""
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype: expected a floating point torch.dtype, got {dtype!r}")
    return dtype


def check_count(name: str, value: object, minimum: int) -> int:
    """:func:`~bayesdl._checks.check_count`, also taking numpy integers."""
    return _checks.check_count(
        name, int(value) if isinstance(value, np.integer) else value, minimum=minimum
    )
