r"""The leapfrog (velocity Verlet) integrator, for all chains at once.

One step of size :math:`\epsilon` (per chain, signed by the direction of integration):

.. math::
    p_{1/2} = p + \tfrac{\epsilon}{2}\nabla\log\pi(\theta), \quad
    \theta' = \theta + \epsilon M^{-1} p_{1/2}, \quad
    p' = p_{1/2} + \tfrac{\epsilon}{2}\nabla\log\pi(\theta').

It is volume-preserving and reversible, so the Metropolis correction of HMC needs only the
energy error :math:`H(\theta', p') - H(\theta, p)`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..gradients import LogDensityAndGrad
from ..state import state_record
from .mass_matrix import Metric

__all__ = ["IntegratorState", "leapfrog", "where"]


@state_record
@dataclass(frozen=True)
class IntegratorState:
    """Position, momentum, log density and its gradient of every chain: a state record.

    Attributes
    ----------
    position, momentum
        ``(C, D)``.
    log_density
        ``(C,)``, :math:`\\log\\pi` at ``position``.
    grad
        ``(C, D)``, its gradient.
    """

    position: Tensor
    momentum: Tensor
    log_density: Tensor
    grad: Tensor


def leapfrog(
    state: IntegratorState,
    step_size: Tensor,
    metric: Metric,
    log_density_and_grad: LogDensityAndGrad,
) -> IntegratorState:
    """One leapfrog step for every chain; ``step_size`` ``(C,)`` may be negative (backwards)."""
    eps = step_size.unsqueeze(-1).to(state.position.dtype)
    half_eps = 0.5 * eps
    momentum = state.momentum + half_eps * state.grad
    position = state.position + eps * metric.velocity(momentum)
    log_density, grad = log_density_and_grad(position)
    momentum = momentum + half_eps * grad
    return IntegratorState(position, momentum, log_density, grad)


def where(mask: Tensor, new: IntegratorState, old: IntegratorState) -> IntegratorState:
    """Per chain, ``new`` where ``mask`` ``(C,)`` is true, else ``old``."""
    m = mask.unsqueeze(-1)
    return IntegratorState(
        torch.where(m, new.position, old.position),
        torch.where(m, new.momentum, old.momentum),
        torch.where(mask, new.log_density, old.log_density),
        torch.where(m, new.grad, old.grad),
    )
