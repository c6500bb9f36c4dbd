r"""Schedules of the variational backends (optimisers: :mod:`bayesdl.inference.optimizers`).

* :func:`make_lr_scheduler`: a constant or cosine-annealed learning rate over the run.
* :func:`kl_weight`: the KL-annealing weight :math:`\beta_t` that multiplies the KL term of
  the ELBO (:mod:`.elbo`), separate from the BNN's temperature. ``None`` keeps
  :math:`\beta_t = 1`; a fraction ``a`` in (0, 1] warms it up linearly,
  :math:`\beta_t = \min(1, (t + 1) / (a \cdot \texttt{steps}))` (Li et al. 2024 use ``a = 0.5``);
  a callable ``(t, steps) -> beta`` gives any schedule.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from numbers import Real

import torch

__all__ = [
    "KLAnneal",
    "check_kl_anneal",
    "check_lr_schedule",
    "kl_weight",
    "make_lr_scheduler",
]

_LR_SCHEDULES = ("constant", "cosine")

KLAnneal = float | Callable[[int, int], float] | None


def check_lr_schedule(schedule: object) -> str:
    """Validate a learning-rate schedule name."""
    if schedule not in _LR_SCHEDULES:
        raise ValueError(f"lr_schedule: must be one of {_LR_SCHEDULES}, got {schedule!r}")
    return schedule  # type: ignore[return-value]


def make_lr_scheduler(
    schedule: str, optimizer: torch.optim.Optimizer, steps: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """``None`` for a constant rate, else cosine annealing to 0 over ``steps`` steps."""
    if schedule == "constant":
        return None
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)


def check_kl_anneal(kl_anneal: object) -> KLAnneal:
    """Validate ``kl_anneal``: ``None``, a warm-up fraction in (0, 1], or a callable."""
    if kl_anneal is None or callable(kl_anneal):
        return kl_anneal  # type: ignore[return-value]
    if isinstance(kl_anneal, bool) or not isinstance(kl_anneal, Real):
        raise TypeError(
            "kl_anneal: expected None, a warm-up fraction in (0, 1] or a callable "
            f"(step, steps) -> weight, got {type(kl_anneal).__name__}"
        )
    value = float(kl_anneal)
    if not 0 < value <= 1:
        raise ValueError(f"kl_anneal: a warm-up fraction must lie in (0, 1], got {value}")
    return value


def kl_weight(kl_anneal: KLAnneal, step: int, steps: int) -> float:
    """The KL weight :math:`\\beta_t` at step ``step`` (0-based) of ``steps``."""
    if kl_anneal is None:
        return 1.0
    if callable(kl_anneal):
        beta = float(kl_anneal(step, steps))
        if not math.isfinite(beta) or beta < 0:
            raise ValueError(f"kl_anneal: returned {beta} at step {step}; expected a finite >= 0")
        return beta
    return min(1.0, (step + 1) / (kl_anneal * steps))
