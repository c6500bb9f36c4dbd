"""A Posterior whose draws live in a sparse subspace, saved as its active coordinates only.

SSVI's guide is exactly zero outside a mask :math:`\\gamma` (see :mod:`.masks`), so every
draw is too. :class:`SparsePosterior` behaves as a :class:`~bayesdl.Posterior` in every respect
(predict, evaluate, to_arviz), and adds the mask; :meth:`SparsePosterior.save` writes only the
active coordinates of the draws and of the guide's parameters, plus the mask packed eight
coordinates to a byte, and :meth:`SparsePosterior.load` restores the dense view. Files written
by ``Posterior.save`` load too, and ``Posterior.load`` reads these files (it hands them here).

The file is the dense Posterior's payload with three changes: ``format`` is
``"bayesdl.SparsePosterior/1"`` (the dense format is kept under ``dense_format``), ``theta`` is
replaced by ``theta_active`` ``(chains, draws, num_active)`` with ``mask`` (packed bits) and
``num_params``, and every ``(D,)`` tensor of ``attrs["variational"]`` is stored at the active
coordinates only.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from bayesdl.posterior import Posterior, read_payload, save_target

from ..guides import ATTR

if TYPE_CHECKING:  # pragma: no cover
    from bayesdl.models import BNN

__all__ = ["SparsePosterior", "pack_mask", "unpack_mask"]

_FORMAT = "bayesdl.SparsePosterior/1"
_BITS = 8
_VECTORS = ("loc", "scale")


def pack_mask(mask: Tensor) -> Tensor:
    """A bool mask ``(D,)`` as ``uint8`` bytes, eight coordinates per byte (little-endian)."""
    size = mask.numel()
    padded = torch.zeros(-(-size // _BITS) * _BITS, dtype=torch.uint8)
    padded[:size] = mask.reshape(-1).to(torch.uint8).cpu()
    weights = 2 ** torch.arange(_BITS, dtype=torch.uint8)
    return (padded.reshape(-1, _BITS) * weights).sum(-1, dtype=torch.uint8)


def unpack_mask(packed: Tensor, size: int) -> Tensor:
    """Inverse of :func:`pack_mask`."""
    shifts = torch.arange(_BITS, dtype=torch.uint8)
    bits = (packed[:, None] >> shifts) & 1
    return bits.reshape(-1)[:size].bool()


class SparsePosterior(Posterior):
    """A :class:`~bayesdl.Posterior` with a mask: every draw is zero outside it.

    Parameters
    ----------
    theta, bnn, sample_stats, kind, partial, attrs
        As for :class:`~bayesdl.Posterior`.
    mask
        Bool ``(D,)``, the active coordinates.

    Raises
    ------
    ValueError
        If ``mask`` has the wrong shape or a draw is nonzero outside it.
    """

    def __init__(
        self,
        theta: Tensor,
        bnn: BNN | None = None,
        sample_stats: Mapping[str, Tensor] | None = None,
        *,
        mask: Tensor,
        kind: str = "variational",
        partial: bool = False,
        attrs: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(theta, bnn, sample_stats, kind=kind, partial=partial, attrs=attrs)
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
            raise TypeError(f"mask: expected a bool tensor, got {type(mask).__name__}")
        if mask.shape != (self.num_params,):
            raise ValueError(f"mask: expected shape ({self.num_params},), got {tuple(mask.shape)}")
        if bool((self.theta[..., ~mask.to(self.theta.device)] != 0).any()):
            raise ValueError("theta: draws must be exactly zero outside the mask")
        self.mask = mask.detach().cpu()

    @property
    def num_active(self) -> int:
        """Active coordinates."""
        return int(self.mask.sum())

    def __repr__(self) -> str:
        base = super().__repr__()[:-1]
        return f"Sparse{base}, active={self.num_active})"

    def save(self, path: str | os.PathLike) -> None:
        """Save as :meth:`Posterior.save` does, but only the active coordinates (module doc)."""
        buffer = io.BytesIO()
        super().save(buffer)
        buffer.seek(0)
        payload = torch.load(buffer, map_location="cpu", weights_only=True)
        mask = self.mask
        payload["dense_format"] = payload["format"]
        payload["format"] = _FORMAT
        payload["theta_active"] = payload.pop("theta")[..., mask].clone()
        payload["mask"] = pack_mask(mask)
        payload["num_params"] = self.num_params
        payload["attrs"] = _map_variational(payload["attrs"], lambda t: t[mask].clone(), None)
        torch.save(payload, save_target(path))

    @classmethod
    def load(cls, path: str | os.PathLike, bnn: BNN | None = None) -> Posterior:
        """Load a file from :meth:`save` (or a dense ``Posterior.save`` file, returned as is).

        Parameters
        ----------
        path
            The file.
        bnn
            The BNN of the draws; if omitted, the pickled BNN in the file is restored (only
            load files you trust).
        """
        payload = read_payload(path)
        if payload.get("format") != _FORMAT:
            if hasattr(path, "seek"):
                path.seek(0)
            return Posterior.load(path, bnn)
        size = int(payload.pop("num_params"))
        mask = unpack_mask(payload.pop("mask"), size)
        active = payload.pop("theta_active")
        theta = active.new_zeros(*active.shape[:-1], size)
        theta[..., mask] = active

        def expand(t: Tensor) -> Tensor:
            full = t.new_zeros(size)
            full[mask] = t
            return full

        payload["theta"] = theta
        payload["attrs"] = _map_variational(payload["attrs"], expand, mask)
        payload["format"] = payload.pop("dense_format")
        buffer = io.BytesIO()
        torch.save(payload, buffer)
        buffer.seek(0)
        dense = Posterior.load(buffer, bnn)
        return cls(
            dense.theta,
            dense.bnn,
            dense.sample_stats,
            mask=mask,
            kind=dense.kind,
            partial=dense.partial,
            attrs=dense.attrs,
        )


def _map_variational(attrs: Mapping[str, Any], fn: Any, mask: Tensor | None) -> dict[str, Any]:
    """Apply ``fn`` to the guide's ``loc`` and ``scale`` in ``attrs["variational"]``, and drop
    its ``mask`` (``mask=None``, saving: the file keeps one packed copy) or restore it."""
    attrs = dict(attrs)
    stored = attrs.get(ATTR)
    if isinstance(stored, Mapping):
        mapped = {k: v for k, v in stored.items() if k != "mask"}
        for key in _VECTORS:
            if isinstance(mapped.get(key), Tensor):
                mapped[key] = fn(mapped[key])
        if mask is not None:
            mapped["mask"] = mask.clone()
        attrs[ATTR] = mapped
    return attrs
