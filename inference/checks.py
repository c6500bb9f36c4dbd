"""Checks every backend runs before any work: the model, and whether the run can start.

:func:`check_bnn` turns a wrong first argument of ``fit`` into a ``TypeError`` naming ``bnn``.
:func:`check_start` evaluates the likelihood once at the starting parameters on the few rows
with the largest targets (and with zero targets if that fails), so that data whose scale
overflows the likelihood (``y`` of order ``1e200`` in float64, ``1e20`` in float32) or a
network that returns NaN is reported as such, naming ``y`` or the network, instead of failing
later as a non-finite step or a bad ``init_theta``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from bayesdl import inputs

if TYPE_CHECKING:  # pragma: no cover
    from bayesdl.inputs import Inputs
    from bayesdl.models import BNN

__all__ = ["PROBE_LARGEST", "check_bnn", "check_start"]

#: Rows scored by :func:`check_start`: those with the largest ``|y|``.
PROBE_LARGEST = 8


def check_bnn(bnn: object) -> BNN:
    """Return ``bnn`` if it is a :class:`~bayesdl.models.BNN`, else raise ``TypeError``."""
    from bayesdl.models import BNN

    if not isinstance(bnn, BNN):
        raise TypeError(
            f"bnn: expected a bayesdl BNN (bayesdl.models.BNN(net, prior, likelihood)), got "
            f"{type(bnn).__name__}"
        )
    return bnn


def check_start(bnn: BNN, theta: Tensor, x: Inputs, y: Tensor) -> None:
    """Raise ``ValueError`` if the network or the likelihood is not finite at ``theta``.

    Scores the :data:`PROBE_LARGEST` rows with the largest ``|y|`` at every row of ``theta``
    ``(P, D)`` (cheap: a forward pass on a few rows), with their targets and with zero targets.

    Raises
    ------
    ValueError
        Naming ``net`` if the network's outputs are NaN or infinite; naming ``y`` if the
        outputs are finite and the likelihood is finite at zero targets but overflows at the
        data's (the data's scale is the cause: standardise ``y``).
    """
    rows = _largest_rows(y)
    x_rows, y_rows = inputs.take_rows(x, rows), y[rows]
    with torch.no_grad():
        f = bnn.forward(theta, x_rows)
        if not bool(torch.isfinite(f).all()):
            bad = (~torch.isfinite(f.reshape(f.shape[0], -1))).any(-1).nonzero().flatten()
            raise ValueError(
                "net: the network's outputs are NaN or infinite at the starting parameters "
                f"(rows {bad.tolist()} of init_theta); check the network's forward pass, "
                "the inputs' scale, or start elsewhere (init_theta=...)"
            )
        if bool(torch.isfinite(bnn.log_likelihood(theta, x_rows, y_rows)).all()):
            return
        at_zero = bnn.log_likelihood(theta, x_rows, torch.zeros_like(y_rows))
    if bool(torch.isfinite(at_zero).all()):
        biggest = float(y_rows.detach().abs().max())
        raise ValueError(
            f"y: the likelihood overflows at the data's targets (|y| up to {biggest:.3g} in "
            f"{y.dtype}) while it is finite at y = 0: the data's scale is too large. "
            "Standardise y ((y - mean) / std, as bayesdl.data.load does) and scale the "
            "predictions back"
        )


def _largest_rows(y: Tensor) -> Tensor:
    """Indices of the :data:`PROBE_LARGEST` rows with the largest ``|y|``."""
    size = y.detach().abs().reshape(y.shape[0], -1).amax(-1).double()
    return torch.argsort(size)[-PROBE_LARGEST:].to(y.device)
