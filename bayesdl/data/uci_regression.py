"""The UCI regression benchmarks of Hernández-Lobato & Adams (2015) and their split protocol.

The sets live in ``uci/<name>/`` of the shared data folder (``data.txt``,
``index_features.txt``, ``index_target.txt``, ``n_splits.txt``); the train/test splits are
regenerated from the protocol, not read from files (:func:`uci_split`).
"""

from __future__ import annotations

import math
import os
import pathlib

import numpy as np
import torch

from .checks import check_dtype
from .dataset import Dataset
from .paths import data_root, require_file
from .standardise import standardized_regression

__all__ = [
    "UCI_NAMES",
    "count_rows",
    "uci",
    "uci_dir",
    "uci_num_splits",
    "uci_split",
    "uci_split_indices",
]

#: The nine UCI regression benchmarks of Hernández-Lobato & Adams (2015), by folder name.
UCI_NAMES: tuple[str, ...] = (
    "bostonHousing",
    "concrete",
    "energy",
    "kin8nm",
    "naval-propulsion-plant",
    "power-plant",
    "protein-tertiary-structure",
    "wine-quality-red",
    "yacht",
)


def uci_dir(name: str, root: str | os.PathLike[str] | None) -> pathlib.Path:
    """The folder of UCI set ``name`` in the shared data folder (``ValueError`` for an unknown
    name, ``FileNotFoundError`` for a missing folder)."""
    if name not in UCI_NAMES:
        raise ValueError(f"name: unknown UCI data set {name!r}; choose one of {list(UCI_NAMES)}")
    path = data_root(root) / "uci" / name
    if not path.is_dir():
        raise FileNotFoundError(f"missing UCI folder {str(path)!r}")
    return path


def count_rows(path: pathlib.Path) -> int:
    """Number of non-blank lines, i.e. the rows ``numpy.loadtxt`` would read."""
    with open(require_file(path), encoding="utf-8") as handle:
        return sum(1 for line in handle if line.strip())


def uci_num_splits(name: str, root: str | os.PathLike[str] | None = None) -> int:
    """Number of standard train/test splits of a UCI set (from ``n_splits.txt``).

    Parameters
    ----------
    name : str
        One of :data:`UCI_NAMES`.
    root : str or path-like, optional
        The shared data folder (default: ``BAYESDL_DATA``).

    Returns
    -------
    int
        20 for all sets except protein-tertiary-structure (5).
    """
    path = require_file(uci_dir(name, root) / "n_splits.txt")
    return int(path.read_text(encoding="utf-8").split()[0])


def uci_split_indices(n: int, n_splits: int, split: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and test row indices of split ``split`` of ``n`` rows (see :func:`uci_split`)."""
    if isinstance(split, bool) or not isinstance(split, (int, np.integer)):
        raise TypeError(f"split: expected an integer, got {type(split).__name__}")
    if not 0 <= split < n_splits:
        raise ValueError(f"split: must lie in [0, {n_splits - 1}], got {split}")
    # The Hernández-Lobato & Adams protocol: one legacy stream seeded with 1, one permutation
    # per split in turn; split i is the i-th permutation drawn.
    rng = np.random.RandomState(1)  # the legacy stream is part of the protocol
    n_train = math.floor(n * 0.9 + 0.5)
    perm = np.empty(0, dtype=np.int64)
    for _ in range(split + 1):
        perm = rng.choice(range(n), n, replace=False)
    perm = np.asarray(perm, dtype=np.int64)
    return perm[:n_train], perm[n_train:]


def uci_split(
    name: str, split: int = 0, root: str | os.PathLike[str] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Regenerate the indices of a standard UCI train/test split.

    The splits follow the protocol of Hernández-Lobato & Adams (2015): a legacy
    ``numpy.random.RandomState(1)`` draws ``rng.choice(range(n), n, replace=False)`` once per
    split; the first ``floor(0.9 n + 0.5)`` entries are the training rows, the rest the test
    rows.

    Parameters
    ----------
    name : str
        One of :data:`UCI_NAMES`.
    split : int
        Split number in ``[0, uci_num_splits(name))``.
    root : str or path-like, optional
        The shared data folder (default: ``BAYESDL_DATA``).

    Returns
    -------
    train_idx, test_idx : numpy.ndarray
        int64 row indices into ``data.txt``.
    """
    folder = uci_dir(name, root)
    n_splits = uci_num_splits(name, root)
    n = count_rows(folder / "data.txt")
    return uci_split_indices(n, n_splits, split)


def uci(
    name: str,
    split: int = 0,
    root: str | os.PathLike[str] | None = None,
    dtype: torch.dtype = torch.float32,
) -> Dataset:
    """Load one standard split of a UCI regression benchmark.

    Parameters
    ----------
    name : str
        One of :data:`UCI_NAMES`.
    split : int
        Split number in ``[0, uci_num_splits(name))`` (see :func:`uci_split`).
    root : str or path-like, optional
        The shared data folder (default: ``BAYESDL_DATA``).
    dtype : torch.dtype
        Floating point dtype of the returned tensors.

    Returns
    -------
    Dataset
        Inputs ``(N, D)`` and targets ``(N,)``, both standardised with the training split's
        mean and (population) standard deviation; constant features get standard deviation 1.
        Use :meth:`Dataset.unstandardize_y` and :attr:`Dataset.y_scale` to report errors in
        the original units.
    """
    folder = uci_dir(name, root)
    dtype = check_dtype(dtype)
    data = np.loadtxt(require_file(folder / "data.txt"), dtype=np.float64, ndmin=2)
    features = np.loadtxt(require_file(folder / "index_features.txt"), dtype=np.int64, ndmin=1)
    target = int(np.loadtxt(require_file(folder / "index_target.txt"), dtype=np.int64))
    n_splits = uci_num_splits(name, root)
    train_idx, test_idx = uci_split_indices(data.shape[0], n_splits, split)
    x = data[:, features]
    y = data[:, target]
    return standardized_regression(
        name, x[train_idx], y[train_idx], x[test_idx], y[test_idx], dtype
    )
