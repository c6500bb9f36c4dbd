"""The idx file format of (Fashion-)MNIST: unsigned-byte arrays with a big-endian header.

An idx file starts with a magic number (2051 for images, 2049 for labels) whose last byte is
the number of dimensions, then one big-endian 32-bit size per dimension, then the bytes. Files
may be gzip-compressed, or the one member of a zip archive.
"""

from __future__ import annotations

import gzip
import math
import pathlib
import zipfile

import numpy as np
import torch
from torch import Tensor

from .paths import require_file

__all__ = [
    "IDX_IMAGES_MAGIC",
    "IDX_LABELS_MAGIC",
    "images_to_tensor",
    "labels_to_tensor",
    "maybe_gunzip",
    "parse_idx",
    "read_idx_pair",
    "read_zip_member",
]

#: Magic number of an idx file of images (3 dimensions).
IDX_IMAGES_MAGIC = 2051
#: Magic number of an idx file of labels (1 dimension).
IDX_LABELS_MAGIC = 2049


def maybe_gunzip(raw: bytes) -> bytes:
    """``raw`` decompressed if it is gzip data, else unchanged."""
    return gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw


def parse_idx(raw: bytes, magic: int, source: str) -> np.ndarray:
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


def images_to_tensor(images: np.ndarray, dtype: torch.dtype) -> Tensor:
    """``(N, H, W)`` bytes to ``(N, 1, H, W)`` pixels / 255 of ``dtype``."""
    x = torch.from_numpy(images.copy()).to(dtype).div_(255.0)
    return x.unsqueeze(1)


def labels_to_tensor(labels: np.ndarray) -> Tensor:
    """Label bytes as an int64 tensor."""
    return torch.from_numpy(labels.astype(np.int64))


def read_idx_pair(
    images_raw: bytes, labels_raw: bytes, images_src: str, labels_src: str
) -> tuple[np.ndarray, np.ndarray]:
    """Parse an images file and a labels file (raw bytes, gzip or not) that must match."""
    images = parse_idx(maybe_gunzip(images_raw), IDX_IMAGES_MAGIC, images_src)
    labels = parse_idx(maybe_gunzip(labels_raw), IDX_LABELS_MAGIC, labels_src)
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"{images_src}, {labels_src}: shapes {images.shape} and {labels.shape} do not match"
        )
    return images, labels


def read_zip_member(path: pathlib.Path) -> bytes:
    """The bytes of the one file in the zip archive ``path``."""
    with zipfile.ZipFile(require_file(path)) as archive:
        members = [info for info in archive.infolist() if not info.is_dir()]
        if len(members) != 1:
            raise ValueError(f"{path}: expected one file in the archive, found {len(members)}")
        return archive.read(members[0])
