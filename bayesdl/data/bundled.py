"""The small data sets bundled with scikit-learn (:func:`load`): no download, no data folder."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from bayesdl._checks import check_probability

from .checks import check_count, check_dtype
from .dataset import Dataset
from .standardise import fit_standardizer, standardized_regression, to_tensor

__all__ = ["SKLEARN_SETS", "load"]

#: The bundled sets :func:`load` reads, with their tasks.
SKLEARN_SETS: dict[str, str] = {
    "diabetes": "regression",
    "digits": "classification",
    "breast_cancer": "classification",
    "wine": "classification",
    "iris": "classification",
}


def load(
    name: str,
    seed: int = 0,
    test_fraction: float = 0.2,
    standardize: bool = True,
    dtype: torch.dtype = torch.float32,
) -> Dataset:
    """Load one of the small data sets bundled with scikit-learn (no download).

    Parameters
    ----------
    name : str
        ``"diabetes"`` (regression, 442 x 10), ``"digits"`` (1797 flattened 8x8 images,
        10 classes), ``"breast_cancer"``, ``"wine"`` or ``"iris"`` (classification).
    seed : int
        Seed of the ``numpy.random.default_rng`` permutation that splits the data.
    test_fraction : float
        Fraction of the examples held out for testing, in (0, 1). The test split has
        ``ceil(n * test_fraction)`` examples (the scikit-learn ``train_test_split``
        convention: 89 of 442 for diabetes at 0.2).
    standardize : bool
        Standardise the inputs (and, for regression, the targets) with the training split's
        mean and standard deviation; constant features get standard deviation 1.
    dtype : torch.dtype
        Floating point dtype of the inputs (and regression targets).

    Returns
    -------
    Dataset
        Inputs ``(N, D)``; targets float ``(N,)`` for regression, int64 labels ``(N,)`` for
        classification.

    Raises
    ------
    TypeError, ValueError
        If ``name`` is unknown, ``seed`` is not an integer >= 0, ``test_fraction`` is not
        in (0, 1), ``standardize`` is not a bool or ``dtype`` not a floating dtype.
    """
    if name not in SKLEARN_SETS:
        raise ValueError(f"name: unknown data set {name!r}; choose one of {sorted(SKLEARN_SETS)}")
    seed = check_count("seed", seed, 0)
    test_fraction = check_probability("test_fraction", test_fraction)
    dtype = check_dtype(dtype)
    if not isinstance(standardize, (bool, np.bool_)):
        raise TypeError(f"standardize: expected True or False, got {standardize!r}")

    from sklearn import datasets as skd  # imported lazily: sklearn is slow to import

    loader = {
        "diabetes": skd.load_diabetes,
        "digits": skd.load_digits,
        "breast_cancer": skd.load_breast_cancer,
        "wine": skd.load_wine,
        "iris": skd.load_iris,
    }[name]
    bunch = loader()
    x = np.asarray(bunch.data, dtype=np.float64)
    y = np.asarray(bunch.target)
    task = SKLEARN_SETS[name]

    n = x.shape[0]
    n_test = math.ceil(n * test_fraction - 1e-9)
    n_train = n - n_test
    if n_test < 1 or n_train < 1:
        raise ValueError(
            f"test_fraction: {test_fraction} leaves {n_train} training and {n_test} test "
            f"examples out of {n}; both must be >= 1"
        )
    perm = np.random.default_rng(seed).permutation(n)
    train_idx, test_idx = perm[:n_train], perm[n_train:]

    if task == "regression":
        y = y.astype(np.float64)
        if standardize:
            return standardized_regression(
                name, x[train_idx], y[train_idx], x[test_idx], y[test_idx], dtype
            )
        return Dataset(
            name=name,
            task=task,
            x_train=to_tensor(x[train_idx], dtype),
            y_train=to_tensor(y[train_idx], dtype),
            x_test=to_tensor(x[test_idx], dtype),
            y_test=to_tensor(y[test_idx], dtype),
        )

    labels = y.astype(np.int64)
    x_mean: Tensor | None = None
    x_std: Tensor | None = None
    if standardize:
        mean, std = fit_standardizer(x[train_idx])
        x = (x - mean) / std
        x_mean, x_std = to_tensor(mean, dtype), to_tensor(std, dtype)
    return Dataset(
        name=name,
        task=task,
        x_train=to_tensor(x[train_idx], dtype),
        y_train=torch.from_numpy(labels[train_idx]),
        x_test=to_tensor(x[test_idx], dtype),
        y_test=torch.from_numpy(labels[test_idx]),
        num_classes=len(bunch.target_names),
        x_mean=x_mean,
        x_std=x_std,
    )
