"""Where SVGD's particles start: ``init_theta`` checked, or the ``init`` setting's draws.

``init="net"`` re-initialises a fresh copy of the network per particle with its modules' own
``reset_parameters()`` (:meth:`BNN.init_theta`), ``"prior"`` draws from the prior, and a
callable ``(bnn, particles, seed) -> theta`` is checked like ``init_theta``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from bayesdl.models import BNN

__all__ = ["INITS", "InitFn", "check_density_particles", "check_particles", "draw_initial"]

#: The named starting rules.
INITS = ("net", "prior")

InitFn = Callable[[BNN, int, int], Tensor]


def check_particles(
    init_theta: object, particles: int, dim: int, dtype: torch.dtype, device: torch.device
) -> Tensor:
    """``init_theta`` ``(particles, dim)``, finite, as a fresh tensor of ``dtype`` on
    ``device``; ``ValueError`` naming ``init_theta`` otherwise."""
    if not isinstance(init_theta, Tensor) or tuple(init_theta.shape) != (particles, dim):
        raise ValueError(
            f"init_theta: expected a tensor of shape ({particles}, {dim}), got "
            f"{getattr(init_theta, 'shape', type(init_theta).__name__)}"
        )
    if not bool(torch.isfinite(init_theta).all()):
        raise ValueError("init_theta: contains NaN or infinite values")
    return init_theta.detach().to(dtype=dtype, device=device).clone()


def check_density_particles(init_theta: object, particles: int) -> Tensor:
    """``init_theta`` of ``SVGD.sample``: a floating ``(particles, D)`` tensor, any ``D``."""
    if not isinstance(init_theta, Tensor) or init_theta.dim() != 2:
        raise ValueError(
            f"init_theta: expected a tensor of shape ({particles}, D), got "
            f"{getattr(init_theta, 'shape', type(init_theta).__name__)}"
        )
    if not init_theta.is_floating_point():
        raise TypeError(f"init_theta: expected a floating tensor, got {init_theta.dtype}")
    return check_particles(
        init_theta, particles, init_theta.shape[1], init_theta.dtype, init_theta.device
    )


def draw_initial(init: str | InitFn, bnn: BNN, particles: int, seed: int) -> Tensor:
    """The starting particles ``(particles, D)`` the ``init`` setting asks for, checked."""
    if not callable(init):
        return bnn.init_theta(particles, seed, init=init)
    theta = init(bnn, particles, seed)
    if not isinstance(theta, Tensor):
        raise TypeError(f"init: the callable must return a tensor, got {type(theta).__name__}")
    try:
        return check_particles(theta, particles, bnn.num_params, bnn.dtype, bnn.device)
    except ValueError as err:
        raise ValueError(f"init: the callable's particles are wrong: {err}") from err
