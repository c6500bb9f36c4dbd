r"""A log density and its gradient in one call, for samplers that move all chains as a batch.

Every gradient-based sampler here (HMC and NUTS, SG-MCMC) needs, for positions
``theta`` ``(C, D)`` of ``C`` independent chains, the log density :math:`\log\pi(\theta_c)`
``(C,)`` and its gradient :math:`\nabla_{\theta_c}\log\pi(\theta_c)` ``(C, D)``. Because the
chains are independent, the gradient of the sum :math:`\sum_c \log\pi(\theta_c)` with
respect to ``theta`` is exactly the per-chain gradient, so one backward pass serves all chains.

Two ways to take it:

* :func:`value_and_grad` with :func:`torch.autograd.grad`: the fastest when run eagerly;
* :func:`functional_value_and_grad` with :func:`torch.func.grad_and_value`: slower eagerly,
  but :func:`torch.compile` captures it whole, backward pass included.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["LogDensityAndGrad", "functional_value_and_grad", "value_and_grad"]

#: ``theta (C, D) -> (log density (C,), gradient (C, D))``: the log density itself, not
#: Pyro's, NumPyro's or BlackJAX's potential energy (its negative).
LogDensityAndGrad = Callable[[Tensor], tuple[Tensor, Tensor]]


def value_and_grad(log_density: Callable[[Tensor], Tensor]) -> LogDensityAndGrad:
    r"""Wrap ``theta (C, D) -> (C,)`` into a function returning the value and its gradient.

    The vector-Jacobian product with ones, :math:`\nabla_\theta \sum_c \log\pi(\theta_c)`,
    is the per-chain gradient, because chains are independent. The value is detached.
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
