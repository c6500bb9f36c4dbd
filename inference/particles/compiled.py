"""SVGD's step captured by :func:`torch.compile` (``SVGD(compile=True)``).

For ``update="svgd"`` with a weight-space :class:`~.stein_kernels.Kernel` or the deep
ensemble, :class:`CompiledStep` puts the weight-space score (through :func:`torch.func`), the
kernel matrix and its repulsion, the direction, the Langevin noise term and, for Adam and SGD
without momentum, the optimiser's update in one graph, compiled once per run
(:mod:`~bayesdl.inference.compilation`). :func:`kernel_matrix` is
:meth:`Kernel.__call__ <.stein_kernels.Kernel.__call__>` written without host syncs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ..compilation import compile_step
from ..state import state_record
from .directions import matrix_sqrt, standard_normal
from .stein_kernels import Kernel, pair_median, pairwise_sq_dists
from .targets import BNNTarget, DensityTarget

if TYPE_CHECKING:  # pragma: no cover
    from .svgd import SVGD

__all__ = [
    "GRAPH_OPTIMIZERS",
    "NEUTRAL_KWARGS",
    "CompiledStep",
    "GraphMoments",
    "compiled_step",
    "kernel_matrix",
    "median_bandwidth_tensor",
]

#: Keyword arguments of Adam and SGD that the compiled step's own update reproduces.
GRAPH_OPTIMIZERS: dict[type, tuple[str, ...]] = {
    torch.optim.Adam: ("betas", "eps", "weight_decay"),
    torch.optim.SGD: ("weight_decay",),
}
#: Keyword arguments that, at these values, change nothing of the update above.
NEUTRAL_KWARGS: dict[type, dict[str, Any]] = {
    torch.optim.Adam: {"amsgrad": False, "maximize": False, "foreach": None, "fused": None},
    torch.optim.SGD: {"momentum": 0, "dampening": 0, "nesterov": False, "maximize": False},
}


def median_bandwidth_tensor(sq_dists: Tensor, rule: str) -> Tensor:
    """:func:`~.stein_kernels.median_bandwidth` without a host sync (compilable)."""
    num = sq_dists.shape[0]
    if num < 2:
        return sq_dists.new_tensor(1.0)
    med = pair_median(sq_dists)
    h = 2.0 * med if rule == "median" else med / math.log(num + 1)
    return torch.where(med > 0, h, torch.ones_like(h))


def kernel_matrix(kernel: Kernel, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``kernel(x)``'s value, repulsion and bandwidth, the bandwidth kept a tensor.

    The same arithmetic as :meth:`Kernel.__call__`, written so that :func:`torch.compile`
    captures it whole: the median heuristic without ``bool``/``float`` on tensors, and the
    profile's derivative, where a kernel takes it from autograd, through :func:`torch.func`.
    A kernel that overrides the bandwidth hook keeps its own (which may break the graph).
    """
    z = kernel.embed(x)
    sq = pairwise_sq_dists(z)
    if type(kernel).bandwidth is Kernel.bandwidth:
        if isinstance(kernel.fixed_bandwidth, str):
            h = median_bandwidth_tensor(sq, kernel.fixed_bandwidth)
        else:
            h = sq.new_tensor(kernel.fixed_bandwidth)
        h = h * kernel.bandwidth_factor
    else:
        h = kernel.bandwidth(sq)
    h = h.detach()
    r = sq / h
    value = kernel.profile(r)
    if type(kernel).profile_derivative is Kernel.profile_derivative:
        slope = torch.func.grad(lambda t: kernel.profile(t).sum())(r)
    else:
        slope = kernel.profile_derivative(r)
    repulsion = (2.0 / h) * (slope @ z - slope.sum(1, keepdim=True) * z)
    if kernel.metric_factor is not None:
        repulsion = repulsion @ kernel.metric_factor.to(dtype=x.dtype, device=x.device).T
    return value, repulsion, h


@state_record
class GraphMoments:
    """The optimiser state of an update made inside the compiled graph (part of the run's
    state): Adam's step count and moments (``None`` for SGD, or when the optimiser steps
    eagerly and keeps its own state).
    """

    count: int = 0
    exp_avg: Tensor | None = None
    exp_avg_sq: Tensor | None = None


def compiled_step(
    svgd: SVGD, target: DensityTarget | BNNTarget, theta: Tensor, optimizer: torch.optim.Optimizer
) -> CompiledStep | None:
    """The compiled step for ``svgd``'s setting, or ``None`` where it runs eagerly (WGD
    updates, function-space and hybrid kernels)."""
    kernel = svgd.kernel
    if svgd.update != "svgd" or not (
        kernel is None or (isinstance(kernel, Kernel) and kernel.space == "weight")
    ):
        return None
    return CompiledStep(svgd, target, theta, optimizer)


class CompiledStep:
    """One SVGD step (score, kernel, direction and optimiser update) in a compiled graph.

    Called as ``step(theta, batch, gamma, noise, moments) -> (phi, info, finite, step_norm)``,
    it updates ``theta`` (the optimiser's parameter) and ``moments`` in place like the eager
    step: no update (and no change of the optimiser's state) when ``phi`` is not finite. Every
    input of the graph is a tensor of fixed shape (the annealing factor and Adam's bias
    corrections too), so it compiles once per run. The Langevin noise is drawn from the run's
    generator outside the graph, in the same order. Adam's bias corrections are computed in
    Python floats, as ``torch.optim.Adam`` does. The instance holds only what is fixed for the
    run; Adam's count and moments are the :class:`GraphMoments` of the run's state.
    """

    def __init__(
        self,
        svgd: SVGD,
        target: DensityTarget | BNNTarget,
        theta: Tensor,
        optimizer: torch.optim.Optimizer,
    ) -> None:
        self.optimizer = optimizer
        self.stochastic = svgd.stochastic
        self.dtype, self.device = theta.dtype, theta.device
        self.particles = theta.shape[0]
        kwargs = svgd.optimizer_kwargs
        allowed = GRAPH_OPTIMIZERS.get(svgd.optimizer)
        neutral = NEUTRAL_KWARGS.get(svgd.optimizer, {})
        kwargs = {k: v for k, v in kwargs.items() if k not in neutral or neutral[k] != v}
        in_graph = allowed is not None and type(optimizer) is svgd.optimizer
        in_graph = in_graph and not set(kwargs) - set(allowed or ())
        self.kind = svgd.optimizer.__name__.lower() if in_graph else "eager"
        group = optimizer.param_groups[0]
        self.lr = float(group["lr"])
        self.weight_decay = float(group.get("weight_decay", 0.0))
        self.betas = tuple(float(b) for b in group.get("betas", (0.9, 0.999)))
        self.eps = float(group.get("eps", 1e-8))
        self.noise_scale = (
            math.sqrt(2.0 / svgd.lr)
            if svgd.kernel is None
            else math.sqrt(2.0 / (self.particles * svgd.lr))
        )
        self.has_kernel = svgd.kernel is not None
        self.step = compile_step(self._graph(svgd.kernel, target))

    def moments(self, theta: Tensor) -> GraphMoments:
        """The optimiser state before the first step: Adam's zero moments."""
        if self.kind != "adam":
            return GraphMoments()
        return GraphMoments(0, torch.zeros_like(theta), torch.zeros_like(theta))

    def _graph(
        self, kernel: Kernel | None, target: DensityTarget | BNNTarget
    ) -> Callable[..., Any]:
        """The function to compile: ``(theta, state..., data, scalars, eta) -> results``."""
        if isinstance(target, BNNTarget):
            bnn, num_data = target.bnn, target.num_data

            def log_joint(theta: Tensor, xb: Tensor, yb: Tensor) -> Tensor:
                return bnn.log_joint_fn(xb, yb, num_data, validate=False)(theta)

        else:
            log_density = target.log_density

            def log_joint(theta: Tensor, xb: Tensor, yb: Tensor) -> Tensor:
                return log_density(theta)

        def summed(theta: Tensor, xb: Tensor, yb: Tensor) -> tuple[Tensor, Tensor]:
            lp = log_joint(theta, xb, yb)
            return lp.sum(), lp

        score_and_lp = torch.func.grad_and_value(summed, has_aux=True)
        kind, stochastic, noise_scale = self.kind, self.stochastic, self.noise_scale
        lr, weight_decay, eps = self.lr, self.weight_decay, self.eps
        beta1, beta2 = self.betas
        particles = self.particles

        def svgd_step(
            theta: Tensor,
            exp_avg: Tensor | None,
            exp_avg_sq: Tensor | None,
            xb: Tensor | None,
            yb: Tensor | None,
            gamma: Tensor,
            step_size: Tensor,
            bias_correction2_sqrt: Tensor,
            eta: Tensor | None,
        ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
            score, (_, lp) = score_and_lp(theta, xb, yb)
            if kernel is None:
                phi = gamma * score
                h = torch.full((), math.nan, dtype=theta.dtype, device=theta.device)
                if stochastic:
                    phi = phi + noise_scale * eta
            else:
                value, repulsion, h = kernel_matrix(kernel, theta)
                phi = (gamma * (value @ score) + repulsion) / particles
                if stochastic:
                    phi = phi + noise_scale * (matrix_sqrt(value) @ eta)
            ok = torch.isfinite(phi).all()
            if kind != "eager":
                grad = -phi
                if weight_decay != 0:
                    grad = grad.add(theta, alpha=weight_decay)
                if kind == "adam":
                    new_avg = exp_avg.lerp(grad, 1 - beta1)
                    new_avg_sq = (exp_avg_sq * beta2).addcmul(grad, grad, value=1 - beta2)
                    denom = (new_avg_sq.sqrt() / bias_correction2_sqrt).add(eps)
                    new_theta = theta - step_size * (new_avg / denom)
                    exp_avg.copy_(torch.where(ok, new_avg, exp_avg))
                    exp_avg_sq.copy_(torch.where(ok, new_avg_sq, exp_avg_sq))
                else:
                    new_theta = theta.add(grad, alpha=-lr)
                theta.copy_(torch.where(ok, new_theta, theta))
                ok_theta = ok & torch.isfinite(theta).all()
            else:
                ok_theta = ok
            step_norm = phi.norm() / math.sqrt(particles)
            return phi, lp, h, ok, ok_theta, step_norm

        return svgd_step

    def __call__(
        self,
        theta: Tensor,
        batch: Any,
        gamma: float,
        noise: torch.Generator,
        moments: GraphMoments,
    ) -> tuple[Tensor, dict[str, Any], bool, float]:
        xb, yb = (None, None) if batch is None else batch
        eta = standard_normal(theta, noise) if self.stochastic else None
        scalars = {"dtype": torch.float64, "device": self.device}
        if self.kind == "adam":
            step = moments.count + 1
            beta1, beta2 = self.betas
            step_size = self.lr / (1 - beta1**step)
            correction = (1 - beta2**step) ** 0.5
            state = (moments.exp_avg, moments.exp_avg_sq)
        else:
            step_size, correction, state = 0.0, 1.0, (None, None)
        phi, lp, h, ok, ok_theta, norm = self.step(
            theta,
            *state,
            xb,
            yb,
            torch.tensor(gamma, dtype=theta.dtype, device=self.device),
            torch.tensor(step_size, **scalars),
            torch.tensor(correction, **scalars),
            eta,
        )
        finite = bool(ok)
        if finite:
            moments.count += 1
            if self.kind == "eager":
                theta.grad = -phi
                self.optimizer.step()
                finite = bool(torch.isfinite(theta).all())
            else:
                finite = bool(ok_theta)
        info: dict[str, Any] = {"bandwidth": float(h) if self.has_kernel else math.nan, "lp": lp}
        return phi, info, finite, float(norm) if finite else math.nan
