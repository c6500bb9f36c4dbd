"""Where the data live: the shared data folder and the Fashion-MNIST folder.

* the environment variable ``BAYESDL_DATA`` (:data:`DATA_ENV`) names the shared data folder,
  the one holding ``uci/``, ``snelson/`` and ``mnist-test/`` (:func:`data_root`);
* ``BAYESDL_FASHION_MNIST`` (:data:`FASHION_ENV`) names the Fashion-MNIST folder, by default
  :data:`FASHION_DEFAULT`, where the Debian package ``dataset-fashion-mnist`` installs it.

A missing folder or file is a ``FileNotFoundError`` that names it.
"""

from __future__ import annotations

import os
import pathlib

__all__ = ["DATA_ENV", "FASHION_DEFAULT", "FASHION_ENV", "data_root", "require_file"]

#: Environment variable naming the shared data folder.
DATA_ENV = "BAYESDL_DATA"
#: Environment variable naming the Fashion-MNIST folder.
FASHION_ENV = "BAYESDL_FASHION_MNIST"
#: Where the Debian package ``dataset-fashion-mnist`` installs Fashion-MNIST.
FASHION_DEFAULT = "/usr/share/datasets/fashion-mnist"


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
    env = os.environ.get(DATA_ENV, "")
    if not env:
        raise FileNotFoundError(
            f"no data folder: pass root=... or set the environment variable {DATA_ENV} "
            "to the shared data folder (the one holding uci/, snelson/, mnist-test/)"
        )
    path = pathlib.Path(env).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(
            f"{DATA_ENV}={env!r} is not an existing directory; set it to the shared data "
            "folder (the one holding uci/, snelson/, mnist-test/) or pass root=..."
        )
    return path


def require_file(path: pathlib.Path) -> pathlib.Path:
    """``path`` itself if it is an existing file, else a ``FileNotFoundError`` naming it."""
    if not path.is_file():
        raise FileNotFoundError(f"missing data file {str(path)!r}")
    return path
