"""Image classification sets: Fashion-MNIST, the MNIST test images (its out-of-distribution
set) and :func:`fashion_mnist_with_ood`, which stands in synthetic images for smoke runs only
when asked to."""

from __future__ import annotations

import os
import pathlib

import torch
from torch import Tensor

from .checks import check_dtype
from .dataset import Dataset
from .idx import images_to_tensor, labels_to_tensor, read_idx_pair, read_zip_member
from .paths import FASHION_DEFAULT, FASHION_ENV, data_root
from .synthetic import synthetic_images

__all__ = ["fashion_mnist", "fashion_mnist_with_ood", "mnist_test"]


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
    dtype = check_dtype(dtype)
    if root is None:
        root = os.environ.get(FASHION_ENV) or FASHION_DEFAULT
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
            f"`apt-get install dataset-fashion-mnist` (into {FASHION_DEFAULT}) or set "
            f"{FASHION_ENV} to the folder holding them."
        )
    arrays = {}
    for part in ("train", "t10k"):
        images_path = names[(part, "images-idx3")]
        labels_path = names[(part, "labels-idx1")]
        arrays[part] = read_idx_pair(
            images_path.read_bytes(), labels_path.read_bytes(), str(images_path), str(labels_path)
        )
    return Dataset(
        name="fashion_mnist",
        task="classification",
        x_train=images_to_tensor(arrays["train"][0], dtype),
        y_train=labels_to_tensor(arrays["train"][1]),
        x_test=images_to_tensor(arrays["t10k"][0], dtype),
        y_test=labels_to_tensor(arrays["t10k"][1]),
        num_classes=10,
    )


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
    dtype = check_dtype(dtype)
    folder = data_root(root) / "mnist-test"
    images_path = folder / "t10k-images-idx3-ubyte.zip"
    labels_path = folder / "t10k-labels-idx1-ubyte.zip"
    images, labels = read_idx_pair(
        read_zip_member(images_path),
        read_zip_member(labels_path),
        str(images_path),
        str(labels_path),
    )
    return images_to_tensor(images, dtype), labels_to_tensor(labels)


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
