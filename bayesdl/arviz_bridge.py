"""Build ArviZ data through ``arviz.from_dict``, for ArviZ 0.x (InferenceData) and 1.x (DataTree).

ArviZ 0.x takes each group as a keyword (``from_dict(posterior=..., sample_stats=...)``); 1.x
takes one mapping of groups (``from_dict({"posterior": ..., ...})``) and returns an xarray
``DataTree``. Everything else in bayesdl goes through :func:`from_groups`.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["from_groups", "import_arviz"]


def import_arviz() -> Any:
    """Import ArviZ, silencing the refactoring notice ArviZ 0.23 prints at import."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, module="arviz")
        import arviz

    return arviz


def from_groups(
    groups: Mapping[str, Mapping[str, np.ndarray]],
    *,
    coords: Mapping[str, Any] | None = None,
    dims: Mapping[str, list[str]] | None = None,
    attrs: Mapping[str, Mapping[str, Any]] | None = None,
) -> Any:
    """Create ArviZ data from ``{group: {variable: array}}``.

    Parameters
    ----------
    groups
        Group name (``posterior``, ``sample_stats``, ...) to variables. Arrays of sampled groups
        have leading ``(chain, draw)`` dimensions.
    coords, dims
        As ``arviz.from_dict`` takes them.
    attrs
        Attributes per group, ``{group: {name: value}}`` (values: strings or numbers).

    Returns
    -------
    arviz.InferenceData or xarray.DataTree
    """
    az = import_arviz()
    groups = {k: dict(v) for k, v in groups.items() if v}
    params = inspect.signature(az.from_dict).parameters
    if "posterior_predictive" in params:  # ArviZ 0.x
        data = az.from_dict(**groups, coords=dict(coords or {}), dims=dict(dims or {}))
        for group, values in (attrs or {}).items():
            if group in groups:
                getattr(data, group).attrs.update(values)
    else:  # ArviZ 1.x: one mapping of groups, a DataTree back
        data = az.from_dict(groups, coords=dict(coords or {}), dims=dict(dims or {}))
        for group, values in (attrs or {}).items():
            if group in groups:
                data[group].attrs.update(values)
    return data
