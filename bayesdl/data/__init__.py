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

The package holds one module per source: :mod:`~bayesdl.data.bundled` (scikit-learn's sets),
:mod:`~bayesdl.data.uci_regression`, :mod:`~bayesdl.data.snelson_toy`,
:mod:`~bayesdl.data.images` (Fashion-MNIST, MNIST) with :mod:`~bayesdl.data.idx` (their file
format) and :mod:`~bayesdl.data.synthetic`; and the shared parts: :mod:`~bayesdl.data.dataset`
(the container), :mod:`~bayesdl.data.standardise`, :mod:`~bayesdl.data.paths` (where the data
live) and :mod:`~bayesdl.data.checks`.
"""

from .bundled import load
from .dataset import Dataset
from .images import fashion_mnist, fashion_mnist_with_ood, mnist_test
from .paths import data_root
from .snelson_toy import snelson
from .synthetic import synthetic_images
from .uci_regression import UCI_NAMES, uci, uci_num_splits, uci_split

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
