"""The container every loader returns: :class:`Dataset`, a train/test split of torch tensors."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from bayesdl._checks import as_tensor

from .checks import check_count

__all__ = ["Dataset", "subset_indices"]


@dataclass(frozen=True, eq=False)
class Dataset:
    """A train/test split held as torch tensors.

    Parameters
    ----------
    name : str
        Name of the data set (for example ``"yacht"``).
    task : str
        ``"regression"`` or ``"classification"``.
    x_train, y_train : Tensor
        Training inputs ``(N, ...)`` and targets ``(N,)`` (float for regression, int64 labels
        for classification).
    x_test : Tensor
        Test inputs ``(M, ...)``.
    y_test : Tensor or None
        Test targets ``(M,)``, or ``None`` where the data set has no test targets.
    num_classes : int or None
        Number of classes for classification, ``None`` for regression.
    x_mean, x_std : Tensor or None
        Training-split input statistics used for standardisation (``None`` if the inputs were
        not standardised). Stored inputs are ``(x_raw - x_mean) / x_std``.
    y_mean, y_std : Tensor or None
        Training-split target statistics (0-d tensors) used for standardisation, ``None`` if the
        targets were not standardised.
    """

    name: str
    task: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor | None
    num_classes: int | None = None
    x_mean: Tensor | None = None
    x_std: Tensor | None = None
    y_mean: Tensor | None = None
    y_std: Tensor | None = None

    def __post_init__(self) -> None:
        if self.task not in ("regression", "classification"):
            raise ValueError(f"task: must be 'regression' or 'classification', got {self.task!r}")
        if self.x_train.shape[0] != self.y_train.shape[0]:
            raise ValueError(
                f"y_train: expected {self.x_train.shape[0]} rows to match x_train, "
                f"got {self.y_train.shape[0]}"
            )
        if self.y_test is not None and self.x_test.shape[0] != self.y_test.shape[0]:
            raise ValueError(
                f"y_test: expected {self.x_test.shape[0]} rows to match x_test, "
                f"got {self.y_test.shape[0]}"
            )

    @property
    def y_scale(self) -> float:
        """Standard deviation used to standardise the targets (1.0 if not standardised)."""
        return 1.0 if self.y_std is None else float(self.y_std)

    @property
    def num_train(self) -> int:
        """Number of training examples."""
        return int(self.x_train.shape[0])

    @property
    def num_test(self) -> int:
        """Number of test examples."""
        return int(self.x_test.shape[0])

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input example, ``tuple(x_train.shape[1:])``."""
        return tuple(self.x_train.shape[1:])

    @property
    def in_features(self) -> int:
        """Number of input features: the product of :attr:`input_shape`."""
        return math.prod(self.input_shape)

    def unstandardize_y(self, y: Tensor) -> Tensor:
        """Map standardised targets (or predictions) back to the original units.

        Parameters
        ----------
        y : Tensor
            Values on the standardised scale.

        Returns
        -------
        Tensor
            ``y * y_std + y_mean``, or ``y`` unchanged if the targets were not standardised.
        """
        y = as_tensor("y", y)
        if self.y_std is None or self.y_mean is None:
            return y
        std = self.y_std.to(device=y.device)
        mean = self.y_mean.to(device=y.device)
        if y.is_floating_point():
            std, mean = std.to(y.dtype), mean.to(y.dtype)
        return y * std + mean

    def subsample(
        self, n_train: int | None = None, n_test: int | None = None, seed: int = 0
    ) -> Dataset:
        """Return a random subset of the training and/or test split.

        Parameters
        ----------
        n_train, n_test : int or None
            Number of examples to keep (drawn without replacement); ``None`` keeps all.
        seed : int
            Seed (>= 0) of the ``numpy.random.default_rng`` stream; the same seed gives the same
            subset.

        Returns
        -------
        Dataset
            A new data set with the same name, task and standardisation statistics. Kept
            examples stay in their original order.
        """
        rng = np.random.default_rng(check_count("seed", seed, 0))
        train_idx = subset_indices("n_train", n_train, self.num_train, rng)
        test_idx = subset_indices("n_test", n_test, self.num_test, rng)
        changes: dict[str, Tensor | None] = {}
        if train_idx is not None:
            index = torch.from_numpy(train_idx)
            changes["x_train"] = self.x_train[index]
            changes["y_train"] = self.y_train[index]
        if test_idx is not None:
            index = torch.from_numpy(test_idx)
            changes["x_test"] = self.x_test[index]
            changes["y_test"] = None if self.y_test is None else self.y_test[index]
        return dataclasses.replace(self, **changes)

    def __repr__(self) -> str:
        classes = "" if self.num_classes is None else f", num_classes={self.num_classes}"
        return (
            f"Dataset(name={self.name!r}, task={self.task!r}, num_train={self.num_train}, "
            f"num_test={self.num_test}, input_shape={self.input_shape}{classes})"
        )


def subset_indices(
    name: str, size: int | None, total: int, rng: np.random.Generator
) -> np.ndarray | None:
    """Sorted int64 indices of ``size`` of ``total`` rows drawn without replacement, or ``None``
    (keep all) when ``size`` is ``None``; ``name`` is the argument named in errors."""
    if size is None:
        return None
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
        raise TypeError(f"{name}: expected an integer or None, got {type(size).__name__}")
    if not 1 <= size <= total:
        raise ValueError(f"{name}: must lie in [1, {total}], got {size}")
    return np.sort(rng.choice(total, size=int(size), replace=False)).astype(np.int64)
