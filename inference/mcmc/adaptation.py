r"""Warmup adaptation as Stan does it, for every chain separately but as one batch.

* **Step size**: Nesterov dual averaging (Hoffman & Gelman 2014, algorithm 5) drives the mean
  acceptance statistic :math:`\bar\alpha` to a target :math:`\delta`:

  .. math::
      \bar H_t = (1 - \tfrac{1}{t + t_0})\bar H_{t-1} + \tfrac{1}{t + t_0}(\delta - \alpha_t),\quad
      \log\epsilon_t = \mu - \tfrac{\sqrt t}{\gamma}\bar H_t,\quad
      \log\bar\epsilon_t = t^{-\kappa}\log\epsilon_t + (1 - t^{-\kappa})\log\bar\epsilon_{t-1},

  with :math:`\mu = \log(10\,\epsilon_0)`, :math:`\gamma = 0.05`, :math:`t_0 = 10`,
  :math:`\kappa = 0.75`; after warmup the averaged :math:`\bar\epsilon` is used.
* **Mass matrix**: windowed estimates of the posterior (co)variance (Welford), regularised
  towards a multiple of the identity, :math:`\frac{n}{n+5}\hat\Sigma + 10^{-3}\frac{5}{n+5} I`,
  in Stan's windows: a fast initial buffer (75 draws), slow windows doubling from 25, and a
  fast terminal buffer (50 draws); shorter warmups are split 15% / 75% / 10%.
* **Initial step size**: the heuristic of Hoffman & Gelman (algorithm 4), rerun after every
  mass-matrix update: double or halve :math:`\epsilon` until the acceptance probability of one
  leapfrog step crosses 1/2.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from ..gradients import LogDensityAndGrad
from ..rng import ChainRNG
from ..state import state_record
from .integrators import IntegratorState, leapfrog
from .mass_matrix import Metric

__all__ = [
    "Adaptation",
    "DualAveraging",
    "Warmup",
    "Welford",
    "find_step_size",
    "mass_windows",
]


@state_record
class DualAveraging:
    """Per-chain dual averaging of the log step size towards ``target`` acceptance: a state
    record (start one with :meth:`start`).

    Attributes
    ----------
    target
        The target acceptance statistic :math:`\\delta`.
    mu
        ``(C,)`` float64, :math:`\\mu = \\log(10\\,\\epsilon_0)`.
    log_step, log_step_avg
        ``(C,)`` float64, :math:`\\log\\epsilon_t` and :math:`\\log\\bar\\epsilon_t`.
    h_avg
        ``(C,)`` float64, :math:`\\bar H_t`.
    t
        Transitions fed since the last (re)start.
    gamma, t0, kappa
        The constants of the module docstring.
    """

    target: float
    mu: Tensor
    log_step: Tensor
    log_step_avg: Tensor
    h_avg: Tensor
    t: int = 0
    gamma: float = 0.05
    t0: float = 10.0
    kappa: float = 0.75

    @classmethod
    def start(
        cls,
        step_size: Tensor,
        target: float,
        gamma: float = 0.05,
        t0: float = 10.0,
        kappa: float = 0.75,
    ) -> DualAveraging:
        """Dual averaging around ``step_size`` ``(C,)``."""
        zeros = torch.zeros_like(step_size, dtype=torch.float64)
        adapter = cls(target, zeros, zeros, zeros, zeros, 0, gamma, t0, kappa)
        adapter.restart(step_size)
        return adapter

    def restart(self, step_size: Tensor) -> None:
        """Start again around ``step_size`` (after a mass-matrix update)."""
        log_step = step_size.double().log()
        self.mu = math.log(10.0) + log_step
        self.log_step = log_step
        self.log_step_avg = torch.zeros_like(log_step)
        self.h_avg = torch.zeros_like(log_step)
        self.t = 0

    def update(self, accept_prob: Tensor) -> Tensor:
        """Feed one transition's acceptance statistics; return the next step sizes."""
        self.t += 1
        eta = 1.0 / (self.t + self.t0)
        accept = torch.nan_to_num(accept_prob.double(), nan=0.0)
        self.h_avg = (1 - eta) * self.h_avg + eta * (self.target - accept)
        self.log_step = self.mu - math.sqrt(self.t) / self.gamma * self.h_avg
        weight = self.t ** (-self.kappa)
        self.log_step_avg = weight * self.log_step + (1 - weight) * self.log_step_avg
        return self.log_step.exp()

    @property
    def final_step_size(self) -> Tensor:
        """The averaged step size, used after warmup."""
        return self.log_step_avg.exp()


@state_record
class Welford:
    """Running mean and (co)variance of every chain's positions: a state record (start one
    with :meth:`zeros`).

    Attributes
    ----------
    dense
        Whether ``m2`` holds full ``(C, D, D)`` sums of products or ``(C, D)`` squares.
    n
        Positions seen.
    mean
        ``(C, D)`` float64 running mean.
    m2
        Float64 sums of (cross-)products of deviations from the mean.
    """

    dense: bool
    n: int
    mean: Tensor
    m2: Tensor

    @classmethod
    def zeros(cls, chains: int, dim: int, dense: bool, like: Tensor) -> Welford:
        """No position seen yet, on the device of ``like``."""
        kw = {"dtype": torch.float64, "device": like.device}
        m2 = torch.zeros(chains, dim, dim, **kw) if dense else torch.zeros(chains, dim, **kw)
        return cls(dense, 0, torch.zeros(chains, dim, **kw), m2)

    def update(self, x: Tensor) -> None:
        x = x.double()
        self.n += 1
        delta = x - self.mean
        self.mean = self.mean + delta / self.n
        delta2 = x - self.mean
        if self.dense:
            self.m2 = self.m2 + delta.unsqueeze(-1) * delta2.unsqueeze(-2)
        else:
            self.m2 = self.m2 + delta * delta2

    def regularized(self) -> Tensor:
        """Stan's shrunk estimate ``n/(n+5) cov + 1e-3 * 5/(n+5) I``."""
        n = self.n
        cov = self.m2 / max(n - 1, 1)
        shrunk = (n / (n + 5.0)) * cov
        jitter = 1e-3 * 5.0 / (n + 5.0)
        if self.dense:
            eye = torch.eye(cov.shape[-1], dtype=cov.dtype, device=cov.device)
            return shrunk + jitter * eye
        return shrunk + jitter


def mass_windows(
    warmup: int, init_buffer: int = 75, term_buffer: int = 50, base_window: int = 25
) -> list[tuple[int, int]]:
    """Stan's slow adaptation windows ``[(start, end), ...]`` (end exclusive) for ``warmup``.

    Windows double in length; the last one stretches to ``warmup - term_buffer``. With fewer
    than ``init_buffer + term_buffer + base_window`` warmup steps the buffers are 15% and 10%
    of the warmup and one window fills the rest; under 20 steps there is no mass adaptation.
    """
    if warmup < 20:
        return []
    if warmup < init_buffer + term_buffer + base_window:
        init_buffer = int(0.15 * warmup)
        term_buffer = int(0.1 * warmup)
        base_window = warmup - init_buffer - term_buffer
    windows = []
    start, size = init_buffer, base_window
    end_slow = warmup - term_buffer
    while start < end_slow:
        end = start + size
        if end + 2 * size > end_slow:  # the next window would not fit: stretch this one
            end = end_slow
        windows.append((start, end))
        start, size = end, 2 * size
    return windows


def find_step_size(
    state: IntegratorState,
    step_size: Tensor,
    metric: Metric,
    log_density_and_grad: LogDensityAndGrad,
    rng: ChainRNG,
    max_iterations: int = 100,
) -> Tensor:
    """Hoffman & Gelman's heuristic for a first step size, per chain.

    From one momentum draw, take a single leapfrog step and double (or halve) the step size
    while the acceptance probability stays above (or below) 1/2. Chains stop independently.
    """
    momentum = metric.sample_momentum(rng.normal(state.position.shape[-1]))
    start = IntegratorState(state.position, momentum, state.log_density, state.grad)
    energy0 = -state.log_density.double() + metric.kinetic_energy(momentum).double()

    def log_accept(eps: Tensor) -> Tensor:
        new = leapfrog(start, eps, metric, log_density_and_grad)
        energy = -new.log_density.double() + metric.kinetic_energy(new.momentum).double()
        return torch.nan_to_num(energy0 - energy, nan=-math.inf)

    eps = step_size.clone().double()
    first = log_accept(eps)
    direction = torch.where(first > math.log(0.5), 1.0, -1.0).double()
    active = torch.ones_like(direction, dtype=torch.bool)
    for _ in range(max_iterations):
        if not bool(active.any()):
            break
        candidate = torch.where(active, eps * 2.0**direction, eps)
        log_a = log_accept(candidate.to(state.position.dtype))
        eps = candidate
        active = active & (direction * log_a > direction * math.log(0.5))
    return eps.clamp(min=1e-10, max=1e3).to(state.position.dtype)


@state_record
class Adaptation:
    """What the warmup adapts with, carried from transition to transition: a state record.

    Attributes
    ----------
    dual_averaging
        The step-size adaptation.
    welford
        The (co)variance estimate of the open mass-matrix window (``None`` between windows).
    """

    dual_averaging: DualAveraging
    welford: Welford | None = None


class Warmup:
    """Stan's warmup for one run, as ``init``/``update`` over an :class:`Adaptation` record.

    Holds only what is fixed for the run (length, target, the windows of
    :func:`mass_windows`); everything that changes is in the record.

    Parameters
    ----------
    warmup
        Number of warmup transitions.
    target_accept
        Target acceptance statistic of the dual averaging.
    dense
        Adapt dense (``(C, D, D)``) rather than diagonal mass matrices.
    """

    def __init__(self, warmup: int, target_accept: float, dense: bool) -> None:
        self.warmup, self.target_accept, self.dense = warmup, target_accept, dense
        windows = mass_windows(warmup)
        self.starts = {start for start, _ in windows}
        self.ends = {end for _, end in windows}

    def init(self, step_size: Tensor) -> Adaptation:
        """The adaptation before the first transition, around ``step_size`` ``(C,)``."""
        return Adaptation(DualAveraging.start(step_size, self.target_accept))

    def update(
        self,
        adaptation: Adaptation,
        i: int,
        state: IntegratorState,
        accept_prob: Tensor,
        metric: Metric,
        retune: Callable[[Tensor, Metric], Tensor],
    ) -> tuple[Tensor, Metric]:
        """After warmup transition ``i`` (0-based) to ``state``: the step sizes and metric of
        the next transition; ``adaptation`` is updated in place.

        The dual averaging takes the transition's acceptance statistics; inside a window the
        position joins the (co)variance estimate. At the end of a window the metric becomes its
        regularised estimate, ``retune(step_size, metric)`` finds a step size for it
        (:func:`find_step_size`) and the dual averaging restarts there. After the last warmup
        transition the step size is the averaged :math:`\\bar\\epsilon`.
        """
        dtype = state.position.dtype
        dual = adaptation.dual_averaging
        step_size = dual.update(accept_prob).to(dtype)
        if i in self.starts:
            chains, dim = state.position.shape
            adaptation.welford = Welford.zeros(chains, dim, self.dense, state.position)
        if adaptation.welford is not None:
            adaptation.welford.update(state.position)
        if i + 1 in self.ends and adaptation.welford is not None:
            metric = Metric(adaptation.welford.regularized().to(dtype))
            adaptation.welford = None
            step_size = retune(step_size, metric)
            dual.restart(step_size)
        if i + 1 == self.warmup:
            step_size = dual.final_step_size.to(dtype)
        return step_size, metric
