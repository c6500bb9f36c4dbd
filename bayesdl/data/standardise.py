r"""Standardisation with the training split's statistics.

Inputs and targets are mapped to :math:`(v - \mu) / \sigma`, with :math:`\mu` and
:math:`\sigma` the mean and population standard deviation of the training split only (a
constant column gets :math:`\sigma = 1`); the test split is mapped with the same statistics.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .dataset import Dataset

__all__ = ["fit_standardizer", "standardized_regression", "to_tensor"]


def fit_standardizer(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (population) std along axis 0, with std 1 where a column is constant."""
    values = np.asarray(values, dtype=np.float64)
    mean = values.mean(axis=0)
    std = values.std(axis=0)
    constant = std <= 1e-12 * np.maximum(1.0, np.abs(mean))
    std = np.where(constant, 1.0, std)
    return mean, std


def to_tensor(values: np.ndarray, dtype: torch.dtype) -> Tensor:
    """A numpy array as a contiguous torch tensor of ``dtype``."""
    return torch.from_numpy(np.ascontiguousarray(values)).to(dtype)


def standardized_regression(
    name: str,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray | None,
    dtype: torch.dtype,
) -> Dataset:
    """Standardise x and y with training statistics and wrap the result as a Dataset."""
    x_mean, x_std = fit_standardizer(x_train)
    y_mean, y_std = fit_standardizer(y_train)
    return Dataset(
        name=name,
        task="regression",
        x_train=to_tensor((x_train - x_mean) / x_std, dtype),
        y_train=to_tensor((y_train - y_mean) / y_std, dtype),
        x_test=to_tensor((x_test - x_mean) / x_std, dtype),
        y_test=None if y_test is None else to_tensor((y_test - y_mean) / y_std, dtype),
        x_mean=to_tensor(x_mean, dtype),
        x_std=to_tensor(x_std, dtype),
        y_mean=to_tensor(y_mean, dtype),
        y_std=to_tensor(y_std, dtype),
    )
