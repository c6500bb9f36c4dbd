"""Offline data sets for tests, tutorials and benchmarks.

Nothing here downloads anything. The loaders read:

* the small data sets bundled with scikit-learn (:func:`load`);
* the shared data folder, given as ``root`` or by the environment variable ``BAYESDL_DATA``
  (:func:`uci`, :func:`uci_split`, :func:`snelson`, :func:`mnist_test`);
* Fashion-MNIST as installed by the Debian package ``dataset-fashion-mnist``
  (:func:`fashion_mnist`).

:func:`synthetic_images` makes a small random stand-in with Fashion-MNIST's shapes; the
tutorials' smoke runs (``BAYESDL_SMOKE=1``) use it, and say so, when the real images are absent.
No loader ever substitutes it silently: a missing file is a ``FileNotFoundError``.

Every loader returns torch tensors: inputs as floating point tensors of the requested
``dtype``, regression targets as floating point tensors of shape ``(N,)`` and class labels as
``int64`` tensors of shape ``(N,)``. Regression data are standardised with the statistics of the
training split only; :meth:`Dataset.unstandardize_y` maps predictions back to the original units.
"""

from __future__ import annotations

import dataclasses
import gzip
import math
import os
import pathlib
import zipfile
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ._checks import as_tensor, check_count, check_probability

__all__ = [
    "UCI_NAMES",
    "Dataset",
    "data_root",
    "fashion_mnist",
    "fashion_mnist_with_ood",
    "load",
    "mnist_test",
    "snelson",
    "synthetic_images",
    "uci",
    "uci_num_splits",
    "uci_split",
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

_SKLEARN_SETS: dict[str, str] = {
    "diabetes": "regression",
    "digits": "classification",
    "breast_cancer": "classification",
    "wine": "classification",
    "iris": "classification",
}

_DATA_ENV = "BAYESDL_DATA"
_FASHION_ENV = "BAYESDL_FASHION_MNIST"
_FASHION_DEFAULT = "/usr/share/datasets/fashion-mnist"
_IDX_IMAGES_MAGIC = 2051
_IDX_LABELS_MAGIC = 2049


# --------------------------------------------------------------------------------------------
# The container
# --------------------------------------------------------------------------------------------


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
        rng = np.random.default_rng(_check_count("seed", seed, 0))
        train_idx = _subset_indices("n_train", n_train, self.num_train, rng)
        test_idx = _subset_indices("n_test", n_test, self.num_test, rng)
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


def _subset_indices(
    name: str, size: int | None, total: int, rng: np.random.Generator
) -> np.ndarray | None:
    if size is None:
        return None
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
        raise TypeError(f"{name}: expected an integer or None, got {type(size).__name__}")
    if not 1 <= size <= total:
        raise ValueError(f"{name}: must lie in [1, {total}], got {size}")
    return np.sort(rng.choice(total, size=int(size), replace=False)).astype(np.int64)


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _fit_standardizer(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (population) std along axis 0, with std 1 where a column is constant."""
    values = np.asarray(values, dtype=np.float64)
    mean = values.mean(axis=0)
    std = values.std(axis=0)
    constant = std <= 1e-12 * np.maximum(1.0, np.abs(mean))
    std = np.where(constant, 1.0, std)
    return mean, std


def _tensor(values: np.ndarray, dtype: torch.dtype) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(values)).to(dtype)


def _check_dtype(dtype: object) -> torch.dtype:
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype: expected a floating point torch.dtype, got {dtype!r}")
    return dtype


def _standardized_regression(
    name: str,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray | None,
    dtype: torch.dtype,
) -> Dataset:
    """Standardise x and y with training statistics and wrap the result as a Dataset."""
    x_mean, x_std = _fit_standardizer(x_train)
    y_mean, y_std = _fit_standardizer(y_train)
    return Dataset(
        name=name,
        task="regression",
        x_train=_tensor((x_train - x_mean) / x_std, dtype),
        y_train=_tensor((y_train - y_mean) / y_std, dtype),
        x_test=_tensor((x_test - x_mean) / x_std, dtype),
        y_test=None if y_test is None else _tensor((y_test - y_mean) / y_std, dtype),
        x_mean=_tensor(x_mean, dtype),
        x_std=_tensor(x_std, dtype),
        y_mean=_tensor(y_mean, dtype),
        y_std=_tensor(y_std, dtype),
    )


def data_root(root: str | os.PathLike[str] | None = None) -> pathlib.Path:
    """Locate the shared data folder.

    Parameters
    ----------
    root : str or path-like, optional
        The folder. If omitted, the environment variable ``BAYESDL_DATA`` is used.

    Returns
    -------
    pathlib.Path
        The existing data folder.

    Raises
    ------
    FileNotFoundError
        If neither ``root`` nor ``BAYESDL_DATA`` names an existing directory.
    TypeError
        If ``root`` is not a path.
    """
    if root is not None:
        if not isinstance(root, (str, os.PathLike)):
            raise TypeError(
                f"root: expected a folder path (str or os.PathLike), got {type(root).__name__}"
            )
        path = pathlib.Path(root).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"root: data folder {str(path)!r} does not exist")
        return path
    env = os.environ.get(_DATA_ENV, "")
    if not env:
        raise FileNotFoundError(
            f"no data folder: pass root=... or set the environment variable {_DATA_ENV} "
            "to the shared data folder (the one holding uci/, snelson/, mnist-test/)"
        )
    path = pathlib.Path(env).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(
            f"{_DATA_ENV}={env!r} is not an existing directory; set it to the shared data "
            "folder (the one holding uci/, snelson/, mnist-test/) or pass root=..."
        )
    return path


def _require_file(path: pathlib.Path) -> pathlib.Path:
    if not path.is_file():
        raise FileNotFoundError(f"missing data file {str(path)!r}")
    return path


# --------------------------------------------------------------------------------------------
# scikit-learn bundled sets
# --------------------------------------------------------------------------------------------


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
    if name not in _SKLEARN_SETS:
        raise ValueError(f"name: unknown data set {name!r}; choose one of {sorted(_SKLEARN_SETS)}")
    seed = _check_count("seed", seed, 0)
    test_fraction = check_probability("test_fraction", test_fraction)
    dtype = _check_dtype(dtype)
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
    task = _SKLEARN_SETS[name]

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
            return _standardized_regression(
                name, x[train_idx], y[train_idx], x[test_idx], y[test_idx], dtype
            )
        return Dataset(
            name=name,
            task=task,
            x_train=_tensor(x[train_idx], dtype),
            y_train=_tensor(y[train_idx], dtype),
            x_test=_tensor(x[test_idx], dtype),
            y_test=_tensor(y[test_idx], dtype),
        )

    labels = y.astype(np.int64)
    x_mean: Tensor | None = None
    x_std: Tensor | None = None
    if standardize:
        mean, std = _fit_standardizer(x[train_idx])
        x = (x - mean) / std
        x_mean, x_std = _tensor(mean, dtype), _tensor(std, dtype)
    return Dataset(
        name=name,
        task=task,
        x_train=_tensor(x[train_idx], dtype),
        y_train=torch.from_numpy(labels[train_idx]),
        x_test=_tensor(x[test_idx], dtype),
        y_test=torch.from_numpy(labels[test_idx]),
        num_classes=len(bunch.target_names),
        x_mean=x_mean,
        x_std=x_std,
    )


# --------------------------------------------------------------------------------------------
# UCI regression benchmarks
# --------------------------------------------------------------------------------------------


def _uci_dir(name: str, root: str | os.PathLike[str] | None) -> pathlib.Path:
    if name not in UCI_NAMES:
        raise ValueError(f"name: unknown UCI data set {name!r}; choose one of {list(UCI_NAMES)}")
    path = data_root(root) / "uci" / name
    if not path.is_dir():
        raise FileNotFoundError(f"missing UCI folder {str(path)!r}")
    return path


def _count_rows(path: pathlib.Path) -> int:
    """Number of non-blank lines, i.e. the rows ``numpy.loadtxt`` would read."""
    with open(_require_file(path), encoding="utf-8") as handle:
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
    path = _require_file(_uci_dir(name, root) / "n_splits.txt")
    return int(path.read_text(encoding="utf-8").split()[0])


def _uci_split_indices(n: int, n_splits: int, split: int) -> tuple[np.ndarray, np.ndarray]:
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
    folder = _uci_dir(name, root)
    n_splits = uci_num_splits(name, root)
    n = _count_rows(folder / "data.txt")
    return _uci_split_indices(n, n_splits, split)


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
    folder = _uci_dir(name, root)
    dtype = _check_dtype(dtype)
    data = np.loadtxt(_require_file(folder / "data.txt"), dtype=np.float64, ndmin=2)
    features = np.loadtxt(_require_file(folder / "index_features.txt"), dtype=np.int64, ndmin=1)
    target = int(np.loadtxt(_require_file(folder / "index_target.txt"), dtype=np.int64))
    n_splits = uci_num_splits(name, root)
    train_idx, test_idx = _uci_split_indices(data.shape[0], n_splits, split)
    x = data[:, features]
    y = data[:, target]
    return _standardized_regression(
        name, x[train_idx], y[train_idx], x[test_idx], y[test_idx], dtype
    )


# --------------------------------------------------------------------------------------------
# Snelson toy data
# --------------------------------------------------------------------------------------------


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
    dtype = _check_dtype(dtype)
    folder = data_root(root) / "snelson"
    x_train = np.loadtxt(_require_file(folder / "snelson_train_inputs.dat"), ndmin=1)
    y_train = np.loadtxt(_require_file(folder / "snelson_train_outputs.dat"), ndmin=1)
    x_test = np.loadtxt(_require_file(folder / "snelson_test_inputs.dat"), ndmin=1)
    if x_train.shape[0] != y_train.shape[0]:
        raise ValueError(
            f"snelson: {x_train.shape[0]} training inputs but {y_train.shape[0]} outputs"
        )
    return _standardized_regression(
        "snelson",
        x_train.reshape(-1, 1),
        y_train.reshape(-1),
        x_test.reshape(-1, 1),
        None,
        dtype,
    )


# --------------------------------------------------------------------------------------------
# idx image files (MNIST, Fashion-MNIST)
# --------------------------------------------------------------------------------------------


def _maybe_gunzip(raw: bytes) -> bytes:
    return gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw


def _parse_idx(raw: bytes, magic: int, source: str) -> np.ndarray:
    """Parse an idx file of unsigned bytes (``magic`` 2051 images, 2049 labels)."""
    if len(raw) < 8:
        raise ValueError(f"{source}: too short to be an idx file ({len(raw)} bytes)")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise ValueError(f"{source}: bad idx magic number {found}, expected {magic}")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{source}: truncated idx header")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + math.prod(dims)
    if len(raw) != expected:
        raise ValueError(f"{source}: expected {expected} bytes for shape {dims}, got {len(raw)}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _images_to_tensor(images: np.ndarray, dtype: torch.dtype) -> Tensor:
    x = torch.from_numpy(images.copy()).to(dtype).div_(255.0)
    return x.unsqueeze(1)


def _labels_to_tensor(labels: np.ndarray) -> Tensor:
    return torch.from_numpy(labels.astype(np.int64))


def _read_idx_pair(
    images_raw: bytes, labels_raw: bytes, images_src: str, labels_src: str
) -> tuple[np.ndarray, np.ndarray]:
    images = _parse_idx(_maybe_gunzip(images_raw), _IDX_IMAGES_MAGIC, images_src)
    labels = _parse_idx(_maybe_gunzip(labels_raw), _IDX_LABELS_MAGIC, labels_src)
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"{images_src}, {labels_src}: shapes {images.shape} and {labels.shape} do not match"
        )
    return images, labels


def fashion_mnist(
    root: str | os.PathLike[str] | None = None, dtype: torch.dtype = torch.float32
) -> Dataset:
    """Load Fashion-MNIST (60,000 training and 10,000 test images, 10 classes).

    Parameters
    ----------
    root : str or path-like, optional
        Folder holding ``{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz``. Default: the
        environment variable ``BAYESDL_FASHION_MNIST``, else
        ``/usr/share/datasets/fashion-mnist`` (Debian package ``dataset-fashion-mnist``).
    dtype : torch.dtype
        Floating point dtype of the images.

    Returns
    -------
    Dataset
        Images ``(N, 1, 28, 28)`` scaled to [0, 1] (pixel / 255, not standardised) and int64
        labels; ``task="classification"``, ``num_classes=10``.

    Raises
    ------
    FileNotFoundError
        If the files are missing.
    """
    dtype = _check_dtype(dtype)
    if root is None:
        root = os.environ.get(_FASHION_ENV) or _FASHION_DEFAULT
    folder = pathlib.Path(root).expanduser()
    names = {
        (part, kind): folder / f"{part}-{kind}-ubyte.gz"
        for part in ("train", "t10k")
        for kind in ("images-idx3", "labels-idx1")
    }
    missing = [str(path) for path in names.values() if not path.is_file()]
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST files not found: {missing}. Install them with "
            f"`apt-get install dataset-fashion-mnist` (into {_FASHION_DEFAULT}) or set "
            f"{_FASHION_ENV} to the folder holding them."
        )
    arrays = {}
    for part in ("train", "t10k"):
        images_path = names[(part, "images-idx3")]
        labels_path = names[(part, "labels-idx1")]
        arrays[part] = _read_idx_pair(
            images_path.read_bytes(), labels_path.read_bytes(), str(images_path), str(labels_path)
        )
    return Dataset(
        name="fashion_mnist",
        task="classification",
        x_train=_images_to_tensor(arrays["train"][0], dtype),
        y_train=_labels_to_tensor(arrays["train"][1]),
        x_test=_images_to_tensor(arrays["t10k"][0], dtype),
        y_test=_labels_to_tensor(arrays["t10k"][1]),
        num_classes=10,
    )


def _read_zip_member(path: pathlib.Path) -> bytes:
    with zipfile.ZipFile(_require_file(path)) as archive:
        members = [info for info in archive.infolist() if not info.is_dir()]
        if len(members) != 1:
            raise ValueError(f"{path}: expected one file in the archive, found {len(members)}")
        return archive.read(members[0])


def mnist_test(
    root: str | os.PathLike[str] | None = None, dtype: torch.dtype = torch.float32
) -> tuple[Tensor, Tensor]:
    """Load the 10,000 MNIST test images (for out-of-distribution evaluation).

    Parameters
    ----------
    root : str or path-like, optional
        The shared data folder (default: ``BAYESDL_DATA``); the files are
        ``mnist-test/t10k-{images-idx3,labels-idx1}-ubyte.zip``.
    dtype : torch.dtype
        Floating point dtype of the images.

    Returns
    -------
    images : Tensor
        ``(10000, 1, 28, 28)`` in [0, 1] (pixel / 255).
    labels : Tensor
        int64 ``(10000,)`` digits 0-9.
    """
    dtype = _check_dtype(dtype)
    folder = data_root(root) / "mnist-test"
    images_path = folder / "t10k-images-idx3-ubyte.zip"
    labels_path = folder / "t10k-labels-idx1-ubyte.zip"
    images, labels = _read_idx_pair(
        _read_zip_member(images_path),
        _read_zip_member(labels_path),
        str(images_path),
        str(labels_path),
    )
    return _images_to_tensor(images, dtype), _labels_to_tensor(labels)


# --------------------------------------------------------------------------------------------
# Synthetic stand-in (smoke runs without the real images)
# --------------------------------------------------------------------------------------------


def _check_count(name: str, value: object, minimum: int) -> int:
    """:func:`~bayesdl._checks.check_count`, also taking numpy integers."""
    return check_count(
        name, int(value) if isinstance(value, np.integer) else value, minimum=minimum
    )


def synthetic_images(
    num_train: int = 512,
    num_test: int = 128,
    num_classes: int = 10,
    image_size: int = 28,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> Dataset:
    """A small synthetic image classification set with Fashion-MNIST's shapes.

    A stand-in for smoke runs and tests on machines without the real images; it is never
    returned in place of real data by the other loaders. Each class has a random blocky
    template (a 7x7 grid of grey levels, upsampled); an image is its class's template plus
    Gaussian pixel noise, clipped to [0, 1]. Classes are balanced and learnable, so accuracies
    are meaningful, and a different ``seed`` gives different templates (usable as
    out-of-distribution inputs).

    Parameters
    ----------
    num_train, num_test : int
        Number of training and test images (>= 1).
    num_classes : int
        Number of classes (>= 2).
    image_size : int
        Height and width of the images (>= 1).
    seed : int
        Seed of the ``numpy.random.default_rng`` stream; the same seed gives the same data.
    dtype : torch.dtype
        Floating point dtype of the images.

    Returns
    -------
    Dataset
        ``name="synthetic_images"``, images ``(N, 1, image_size, image_size)`` in [0, 1],
        int64 labels ``(N,)``; ``task="classification"``.
    """
    num_train = _check_count("num_train", num_train, 1)
    num_test = _check_count("num_test", num_test, 1)
    num_classes = _check_count("num_classes", num_classes, 2)
    image_size = _check_count("image_size", image_size, 1)
    seed = _check_count("seed", seed, 0)
    dtype = _check_dtype(dtype)
    rng = np.random.default_rng(seed)
    blocks = 7
    repeat = -(-image_size // blocks)
    coarse = rng.uniform(0.0, 1.0, size=(num_classes, blocks, blocks))
    templates = np.kron(coarse, np.ones((repeat, repeat)))[:, :image_size, :image_size]

    def draw(n: int) -> tuple[Tensor, Tensor]:
        labels = rng.permutation(np.arange(n) % num_classes)
        noise = rng.normal(0.0, 0.25, size=(n, image_size, image_size))
        images = np.clip(templates[labels] + noise, 0.0, 1.0)
        return _tensor(images[:, None], dtype), torch.from_numpy(labels.astype(np.int64))

    x_train, y_train = draw(num_train)
    x_test, y_test = draw(num_test)
    return Dataset(
        name="synthetic_images",
        task="classification",
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        num_classes=num_classes,
    )


def fashion_mnist_with_ood(
    stand_in: tuple[int, int] | None = None,
) -> tuple[Dataset, Tensor]:
    """Fashion-MNIST and the MNIST test images (its out-of-distribution set), or a stand-in.

    Parameters
    ----------
    stand_in : (num_train, num_test) or None
        ``None``: the real data, or the loaders' ``FileNotFoundError`` if it is missing. A pair:
        where the real data is missing, :func:`synthetic_images` of that size (and
        ``num_test`` images of another seed as the OOD set), with a printed note saying so.
        For smoke runs of tutorials only: never a silent substitution.

    Returns
    -------
    (Dataset, Tensor)
        The classification set and the OOD images ``(M, 1, 28, 28)``.
    """
    try:
        return fashion_mnist(), mnist_test()[0]
    except FileNotFoundError as missing:
        if stand_in is None:
            raise
        num_train, num_test = stand_in
        print(f"smoke run: {missing}")
        print("smoke run: using a synthetic stand-in for Fashion-MNIST/MNIST")
        ood = synthetic_images(num_test, num_test, seed=1).x_test
        return synthetic_images(num_train, num_test, seed=0), ood
