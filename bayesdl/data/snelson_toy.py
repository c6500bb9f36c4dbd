"""The Snelson 1-D regression toy, from ``snelson/`` of the shared data folder."""

from __future__ import annotations

import os

import numpy as np
import torch

from .checks import check_dtype
from .dataset import Dataset
from .paths import data_root, require_file
from .standardise import standardized_regression

__all__ = ["snelson"]


def snelson(
    root: str | os.PathLike[str] | None = None, dtype: torch.dtype = torch.float32
) -> Dataset:
    """Load the Snelson 1-D regression toy (200 training points).

    Parameters
    ----------
    root : str or path-like, optional
        The shared data folder (default: ``BAYESDL_DATA``).
    dtype : torch.dtype
        Floating point dtype of the returned tensors.

    Returns
    -------
    Dataset
        ``x_train`` ``(200, 1)``, ``y_train`` ``(200,)``, ``x_test`` the test grid ``(M, 1)``,
        ``y_test`` ``None``. Inputs and targets are standardised with the training statistics.
    """
    dtype = check_dtype(dtype)
    folder = data_root(root) / "snelson"
    x_train = np.loadtxt(require_file(folder / "snelson_train_inputs.dat"), ndmin=1)
    y_train = np.loadtxt(require_file(folder / "snelson_train_outputs.dat"), ndmin=1)
    x_test = np.loadtxt(require_file(folder / "snelson_test_inputs.dat"), ndmin=1)
    if x_train.shape[0] != y_train.shape[0]:
        raise ValueError(
            f"snelson: {x_train.shape[0]} training inputs but {y_train.shape[0]} outputs"
        )
    return standardized_regression(
        "snelson",
        x_train.reshape(-1, 1),
        y_train.reshape(-1),
        x_test.reshape(-1, 1),
        None,
        dtype,
    )
