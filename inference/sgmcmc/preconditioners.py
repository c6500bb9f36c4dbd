r"""Diagonal preconditioners :math:`M^{-1}` of the stochastic-gradient samplers, one per chain.

A preconditioner observes the stochastic gradients during burn-in and is frozen afterwards,
so the sampler targets the same density throughout the sampling phase.

* :class:`Identity`: :math:`M^{-1} = I`.
* :class:`Layerwise` (Wenzel et al. 2020; Fortuin et al. 2022): one scalar per site (layer),
  from RMSprop averages :math:`\bar v_l` of the squared gradients,
  :math:`M^{-1}_l = (\bar v_l / \min_{l'} \bar v_{l'})^{-1/2}`, refreshed every ``every`` steps.
  Only the ratios matter: the base learning rate sets the scale.
* :class:`Adaptive` (Springenberg et al. 2016, the scale-adapted SGHMC Tran et al. 2022 use):
  per coordinate, with a window :math:`\tau` that adapts to how fast the gradient moments drift,

  .. math::
      r = \frac{1}{\tau + 1},\quad \hat g \leftarrow (1 - r)\hat g + r g,\quad
      \hat v \leftarrow (1 - r)\hat v + r g^2,\quad
      \tau \leftarrow \tau + 1 - \tau\frac{\hat g^2}{\hat v},\qquad
      M^{-1} = \hat v^{-1/2}.
"""

from __future__ import annotations

import torch
from torch import Tensor

from bayesdl.functional import FlatLayout

from ..state import state_record

__all__ = ["Adaptive", "Identity", "Layerwise", "make_preconditioner"]

_EPS = 1e-16


@state_record
class Identity:
    """:math:`M^{-1} = I`; the base of the preconditioners, each a state record.

    Attributes
    ----------
    inverse_mass
        :math:`M^{-1}` per chain and coordinate, ``(C, D)``.
    """

    inverse_mass: Tensor

    def observe(self, grad: Tensor, step: int) -> None:
        """Record a stochastic gradient ``(C, D)`` seen during burn-in."""


@state_record
class Layerwise(Identity):
    """One scale per site, from RMSprop averages of squared gradients (see module docstring).

    Attributes
    ----------
    bounds
        ``[start, stop)`` of each site in ``theta``.
    every
        Steps between refreshes of :math:`M^{-1}`.
    decay
        RMSprop's decay of the squared-gradient average.
    square_avg, count
        The average so far, and the number of gradients it has seen.
    """

    bounds: list[list[int]]
    every: int
    decay: float = 0.99
    square_avg: Tensor | None = None
    count: int = 0

    def observe(self, grad: Tensor, step: int) -> None:
        if self.square_avg is None:
            self.square_avg = torch.zeros_like(grad)
        self.count += 1
        self.square_avg = self.decay * self.square_avg + (1 - self.decay) * grad.detach() ** 2
        if self.count % self.every == 0:
            debiased = self.square_avg / (1 - self.decay**self.count)
            per_layer = torch.stack([debiased[:, a:b].mean(-1) for a, b in self.bounds], dim=-1)
            scale = (per_layer / per_layer.min(-1, keepdim=True).values.clamp_min(_EPS)).rsqrt()
            for k, (a, b) in enumerate(self.bounds):
                self.inverse_mass[:, a:b] = scale[:, k : k + 1]


@state_record
class Adaptive(Identity):
    """Springenberg et al.'s scale adaptation (see module docstring).

    Attributes
    ----------
    tau, g, v
        The adaptive window and the running first and second gradient moments, ``(C, D)``.
    """

    tau: Tensor | None = None
    g: Tensor | None = None
    v: Tensor | None = None

    def observe(self, grad: Tensor, step: int) -> None:
        grad = grad.detach()
        if self.tau is None:
            self.tau, self.g, self.v = (torch.ones_like(grad) for _ in range(3))
        r = 1.0 / (self.tau + 1.0)
        self.g = (1 - r) * self.g + r * grad
        self.v = (1 - r) * self.v + r * grad**2
        self.tau = self.tau + 1.0 - self.tau * self.g**2 / (self.v + _EPS)
        self.inverse_mass = (self.v + _EPS).rsqrt()


def make_preconditioner(
    kind: str | None, chains: int, like: Tensor, layout: FlatLayout | None, every: int
) -> Identity:
    """The preconditioner named ``kind`` (``None``, ``"layerwise"`` or ``"adaptive"``)."""
    ones = torch.ones_like(like)
    if kind is None:
        return Identity(ones)
    if kind == "adaptive":
        return Adaptive(ones)
    if kind == "layerwise":
        if layout is None:
            raise ValueError("preconditioner: 'layerwise' needs the BNN's sites (layers)")
        bounds = [[layout.slices[n].start, layout.slices[n].stop] for n in layout.names]
        return Layerwise(ones, bounds, every)
    raise ValueError(f"preconditioner: must be None, 'layerwise' or 'adaptive', got {kind!r}")
