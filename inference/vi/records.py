"""The state of a VI or SSVI run (:func:`~bayesdl.inference.state.state_record`), and its seeds.

One fit derives :data:`NUM_SEED_STREAMS` child seeds from ``seed``
(:func:`bayesdl._seeding.child_seeds`), one per use, so that no use shifts another's draws:
the initial guide, the minibatch order, the ELBO noise, the final draws, and SSVI's masks.
The seeds still needed after the first step (noise, draws, masks) are carried by
:class:`VIState`, since ``seed`` is not used when a run is resumed.
"""

from __future__ import annotations

from dataclasses import field
from typing import Any

from torch import Tensor

from ..state import state_record

__all__ = [
    "NUM_SEED_STREAMS",
    "SEED_BATCHES",
    "SEED_DRAWS",
    "SEED_INIT",
    "SEED_MASK",
    "SEED_NOISE",
    "VIState",
]

#: Indices of the child seeds of one fit: initial guide, minibatch order, ELBO noise, final
#: draws, SSVI's masks (unused by VI; both backends draw the same five so that SSVI at
#: density 1 repeats VI).
SEED_INIT, SEED_BATCHES, SEED_NOISE, SEED_DRAWS, SEED_MASK = range(5)
NUM_SEED_STREAMS = 5


@state_record
class VIState:
    r"""Everything of a VI/SSVI run that changes from step to step.

    Attributes
    ----------
    loc, raw_scale
        The guide's leaves :math:`\mu` and :math:`\rho` ``(D,)``
        (:class:`~.guides.MeanField`, :math:`\sigma = \mathrm{softplus}(\rho)`).
    noise, noise_cuda
        The stream the ELBO noise is drawn from: the CPU (and CUDA) state of torch's global
        generator as swapped in for each step by :class:`bayesdl._seeding.PrivateStream`.
    draws_seed
        Seed of the final draws from the guide.
    mask_seed
        Seed of SSVI's initial mask (unused by VI).
    mask
        The guide's active set ``(D,)`` (SSVI, once the fit stage started), else ``None``.
    map_theta
        The MAP estimate ``(1, D)`` during the ``"map"`` stage (``init="map"``).
    optimizer, scheduler
        ``state_dict()`` of the optimiser and learning-rate scheduler of the current stage
        (``None`` before its first step). The run's algorithm keeps the live optimiser and
        loads these into a fresh one when it continues a State it did not make (resume).
    started
        Whether the fit stage has started (the guide is then in :attr:`loc`,
        :attr:`raw_scale` and :attr:`mask`; before, the MAP stage may move :attr:`map_theta`).
    steps
        Steps taken, over all stages.
    trace
        The ELBO estimate of every fit step.
    sparse
        SSVI's mask record (:class:`~.sparse.trainer.MaskState`); ``None`` for VI.
    """

    loc: Tensor
    raw_scale: Tensor
    noise: Tensor
    noise_cuda: list[Tensor]
    draws_seed: int
    mask_seed: int
    mask: Tensor | None = None
    map_theta: Tensor | None = None
    optimizer: dict[str, Any] | None = None
    scheduler: dict[str, Any] | None = None
    started: bool = False
    steps: int = 0
    trace: list[float] = field(default_factory=list)
    sparse: Any = None
