r"""The annealing schedule :math:`\gamma_t` of SVGD's driving term (D'Angelo & Fortuin 2021).

A small :math:`\gamma_t` early lets the repulsion spread the particles before the score pulls
them to the modes. The schedule is a pure function of the step index, so a resumed run (which
continues from the step after its checkpoint) continues the schedule exactly.

References
----------
D'Angelo & Fortuin, "Annealed Stein Variational Gradient Descent", AABI 2021.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from bayesdl._checks import check_count

__all__ = ["ANNEALS", "annealing"]

#: The named schedules.
ANNEALS = ("linear", "hyper", "cyclic")


def annealing(
    anneal: str | Callable[[int], float] | None, anneal_steps: int
) -> Callable[[int], float]:
    r"""The annealing schedule :math:`\gamma_t` of SVGD's driving term, ``step -> gamma``.

    With ``T = anneal_steps`` and :math:`\gamma_t = 1` for ``t >= T`` (D'Angelo & Fortuin 2021,
    "Annealed SVGD": a small :math:`\gamma` early lets the repulsion spread the particles
    before the score pulls them to the modes):

    * ``None``: :math:`\gamma_t = 1`;
    * ``"linear"``: :math:`\gamma_t = t / T`;
    * ``"hyper"``: :math:`\gamma_t = \tanh\big((1.3\, t / T)^{10}\big)`;
    * ``"cyclic"``: five cycles, :math:`\gamma_t = \big((t \bmod c) / c\big)^{10}`,
      ``c = T / 5``;
    * a callable ``step -> gamma``, used as is.
    """
    if anneal is None:
        return lambda step: 1.0
    if callable(anneal):
        return anneal
    if anneal not in ANNEALS:
        raise ValueError(f"anneal: expected one of {ANNEALS}, a callable or None, got {anneal!r}")
    horizon = check_count("anneal_steps", anneal_steps)
    cycle = max(horizon / 5.0, 1.0)

    def schedule(step: int) -> float:
        if step >= horizon:
            return 1.0
        if anneal == "linear":
            return step / horizon
        if anneal == "hyper":
            return math.tanh((1.3 * step / horizon) ** 10)
        return ((step % cycle) / cycle) ** 10

    return schedule
