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

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .mass_matrix import Metric

__all__ = [
    "IntegratorState",
    "LogDensityAndGrad",
    "functional_value_and_grad",
    "leapfrog",
    "value_and_grad",
    "where",
]

#: ``theta (C, D) -> (log density (C,), gradient (C, D))``: the log density itself, not
#: Pyro's, NumPyro's or BlackJAX's potential energy (its negative).
LogDensityAndGrad = Callable[[Tensor], tuple[Tensor, Tensor]]


@dataclass(frozen=True)
class IntegratorState:
    """Position, momentum, log density and its gradient of every chain."""

    position: Tensor
    momentum: Tensor
    log_density: Tensor
    grad: Tensor


def value_and_grad(log_density: Callable[[Tensor], Tensor]) -> LogDensityAndGrad:
    """Wrap ``theta (C, D) -> (C,)`` into a function returning the value and its gradient.

    The vector-Jacobian product with ones (the gradient of the sum) is the per-chain
    gradient, because chains are independent.
    """

    def log_density_and_grad(theta: Tensor) -> tuple[Tensor, Tensor]:
        with torch.enable_grad():
            theta = theta.detach().requires_grad_(True)
            value = log_density(theta)
            (grad,) = torch.autograd.grad(value, theta, torch.ones_like(value))
        return value.detach(), grad

    return log_density_and_grad


def functional_value_and_grad(log_density: Callable[[Tensor], Tensor]) -> LogDensityAndGrad:
    """As :func:`value_and_grad`, through :func:`torch.func.grad_and_value`.

    Slower than autograd when run eagerly, but :func:`torch.compile` captures it whole (with
    the backward pass), which it cannot do for ``torch.autograd.grad``; for compiled steps.
    """

    def summed(theta: Tensor) -> tuple[Tensor, Tensor]:
        value = log_density(theta)
        return value.sum(), value

    grad_and_value = torch.func.grad_and_value(summed, has_aux=True)

    def log_density_and_grad(theta: Tensor) -> tuple[Tensor, Tensor]:
        grad, (_, value) = grad_and_value(theta)
        return value, grad

    return log_density_and_grad


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
