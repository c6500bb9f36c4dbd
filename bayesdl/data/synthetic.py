"""A synthetic stand-in with Fashion-MNIST's shapes, for smoke runs without the real images."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .checks import check_count, check_dtype
from .dataset import Dataset
from .standardise import to_tensor

__all__ = ["synthetic_images"]


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
    num_train = check_count("num_train", num_train, 1)
    num_test = check_count("num_test", num_test, 1)
    num_classes = check_count("num_classes", num_classes, 2)
    image_size = check_count("image_size", image_size, 1)
    seed = check_count("seed", seed, 0)
    dtype = check_dtype(dtype)
    rng = np.random.default_rng(seed)
    blocks = 7
    repeat = -(-image_size // blocks)
    coarse = rng.uniform(0.0, 1.0, size=(num_classes, blocks, blocks))
    templates = np.kron(coarse, np.ones((repeat, repeat)))[:, :image_size, :image_size]

    def draw(n: int) -> tuple[Tensor, Tensor]:
        labels = rng.permutation(np.arange(n) % num_classes)
        noise = rng.normal(0.0, 0.25, size=(n, image_size, image_size))
        images = np.clip(templates[labels] + noise, 0.0, 1.0)
        return to_tensor(images[:, None], dtype), torch.from_numpy(labels.astype(np.int64))

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
