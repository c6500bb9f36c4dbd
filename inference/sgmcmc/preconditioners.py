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

__all__ = ["Adaptive", "Identity", "Layerwise", "make_preconditioner"]

_EPS = 1e-16


class Identity:
    """:math:`M^{-1} = I`."""

    def __init__(self, chains: int, like: Tensor) -> None:
        self.inverse_mass = torch.ones_like(like)

    def observe(self, grad: Tensor, step: int) -> None:
        """Record a stochastic gradient ``(C, D)`` seen during burn-in."""


class Layerwise(Identity):
    """One scale per site, from RMSprop averages of squared gradients (see module docstring)."""

    def __init__(
        self, chains: int, like: Tensor, layout: FlatLayout, every: int, decay: float = 0.99
    ) -> None:
        super().__init__(chains, like)
        self.slices = [layout.slices[name] for name in layout.names]
        self.every = every
        self.decay = decay
        self.square_avg = torch.zeros_like(like)
        self.count = 0

    def observe(self, grad: Tensor, step: int) -> None:
        self.count += 1
        self.square_avg = self.decay * self.square_avg + (1 - self.decay) * grad.detach() ** 2
        if self.count % self.every == 0:
            debiased = self.square_avg / (1 - self.decay**self.count)
            per_layer = torch.stack([debiased[:, s].mean(-1) for s in self.slices], dim=-1)
            scale = (per_layer / per_layer.min(-1, keepdim=True).values.clamp_min(_EPS)).rsqrt()
            for k, s in enumerate(self.slices):
                self.inverse_mass[:, s] = scale[:, k : k + 1]


class Adaptive(Identity):
    """Springenberg et al.'s scale adaptation (see module docstring)."""

    def __init__(self, chains: int, like: Tensor) -> None:
        super().__init__(chains, like)
        self.tau = torch.ones_like(like)
        self.g = torch.ones_like(like)
        self.v = torch.ones_like(like)

    def observe(self, grad: Tensor, step: int) -> None:
        grad = grad.detach()
        r = 1.0 / (self.tau + 1.0)
        self.g = (1 - r) * self.g + r * grad
        self.v = (1 - r) * self.v + r * grad**2
        self.tau = self.tau + 1.0 - self.tau * self.g**2 / (self.v + _EPS)
        self.inverse_mass = (self.v + _EPS).rsqrt()


def make_preconditioner(
    kind: str | None, chains: int, like: Tensor, layout: FlatLayout | None, every: int
) -> Identity:
    """The preconditioner named ``kind`` (``None``, ``"layerwise"`` or ``"adaptive"``)."""
    if kind is None:
        return Identity(chains, like)
    if kind == "adaptive":
        return Adaptive(chains, like)
    if kind == "layerwise":
        if layout is None:
            raise ValueError("preconditioner: 'layerwise' needs the BNN's sites (layers)")
        return Layerwise(chains, like, layout, every)
    raise ValueError(f"preconditioner: must be None, 'layerwise' or 'adaptive', got {kind!r}")
