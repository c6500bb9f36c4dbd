"""Memory of a forward pass, measured on a few rows, to size the chunks of a prediction.

Predicting at ``N`` inputs for ``S`` draws holds, besides the ``(S, N, out)`` outputs, every
hidden activation of the network for the draws and rows evaluated at once. That working memory
is what :func:`plan_chunks` bounds. It is measured rather than guessed: :func:`forward_cost`
runs the forward pass on one and four draws at a few rows, records the peak of the bytes its
tensors hold (every tensor an operation allocates, until it is freed), and fits

    bytes(P draws, R rows) = fixed + per_draw * P + per_row * R + per_draw_row * P * R

(``per_draw``: copies of the weights; ``per_row``: copies of the inputs shared by the draws;
``per_draw_row``: the activations). The measurement sees every operation, those of modules and
of functional calls alike, on any device.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

__all__ = ["PROBE_DRAWS", "ForwardCost", "forward_cost", "peak_bytes", "plan_chunks"]

#: Rows per chunk below which :func:`plan_chunks` splits the draws instead of the rows further.
MIN_ROWS = 64
#: Draws of the larger probes of :func:`forward_cost` (the smaller ones take one draw).
PROBE_DRAWS = 4
_PROBE_ROWS = 16


class _PeakBytes(TorchDispatchMode):
    """Tracks the bytes held by the tensors that operations create, and their peak.

    A storage counts from the first operation that returns it until the last tensor viewing
    it is garbage-collected; storages that existed before (inputs, parameters) never count.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._views: dict[int, list[int]] = {}  # storage address: [tensors alive, bytes]

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        # torch wraps the handler of a dispatch mode in ``torch._dynamo.disable`` unless this
        # says no; that wrapping imports torch._dynamo (seconds) for a mode never compiled.
        return False

    def __torch_dispatch__(
        self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None
    ) -> Any:
        out = func(*args, **(kwargs or {}))
        older = {_address(t) for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor):
                self._track(leaf, older)
        self.peak = max(self.peak, self.live)
        return out

    def _track(self, tensor: torch.Tensor, older: set[int]) -> None:
        """Count ``tensor``'s storage if new; a view of a storage made before counts nothing."""
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if key not in self._views:
            if key in older:
                return
            self._views[key] = [0, storage.nbytes()]
            self.live += storage.nbytes()
        self._views[key][0] += 1
        weakref.finalize(tensor, self._release, key)

    def _release(self, key: int) -> None:
        entry = self._views.get(key)
        if entry is None:
            return
        entry[0] -= 1
        if entry[0] == 0:
            self.live -= entry[1]
            del self._views[key]


def _address(tensor: torch.Tensor) -> int:
    return tensor.untyped_storage().data_ptr()


def peak_bytes(fn: Callable[[], object]) -> int:
    """Peak bytes held by the tensors created while running ``fn()`` without gradients."""
    with torch.no_grad(), _PeakBytes() as tracker:
        result = fn()
        del result
    return tracker.peak


@dataclass(frozen=True)
class ForwardCost:
    """Bytes held by a forward pass of ``P`` draws at ``R`` rows (module docstring)."""

    fixed: float
    per_draw: float
    per_row: float
    per_draw_row: float

    def bytes(self, draws: int, rows: int) -> float:
        """Peak bytes of one forward pass of ``draws`` draws at ``rows`` rows."""
        return (
            self.fixed
            + self.per_draw * draws
            + self.per_row * rows
            + self.per_draw_row * draws * rows
        )

    def rows_within(self, budget: float, draws: int) -> int:
        """The most rows that ``draws`` draws can take within ``budget`` bytes (maybe 0)."""
        room = budget - self.fixed - self.per_draw * draws
        per_row = self.per_row + self.per_draw_row * draws
        if per_row <= 0:
            return 0 if room < 0 else 2**62
        return max(0, math.floor(room / per_row))

    def draws_within(self, budget: float, rows: int) -> int:
        """The most draws that can take ``rows`` rows within ``budget`` bytes (maybe 0)."""
        room = budget - self.fixed - self.per_row * rows
        per_draw = self.per_draw + self.per_draw_row * rows
        if per_draw <= 0:
            return 0 if room < 0 else 2**62
        return max(0, math.floor(room / per_draw))


def forward_cost(forward: Callable[[int, int], object], num_rows: int) -> ForwardCost:
    """Measure :class:`ForwardCost` from four small forward passes.

    Parameters
    ----------
    forward
        ``forward(draws, rows)`` runs the forward pass of ``draws`` draws (1 or
        :data:`PROBE_DRAWS`) at the first ``rows`` rows of the inputs.
    num_rows
        The rows available (the probes use at most 16).
    """
    high = min(num_rows, _PROBE_ROWS)
    low = max(1, high // 2)
    m11, m12, m21, m22 = (
        peak_bytes(lambda p=p, r=r: forward(p, r)) for p in (1, PROBE_DRAWS) for r in (low, high)
    )
    span = high - low
    slope1 = (m12 - m11) / span if span else 0.0  # per_row + per_draw_row
    slope2 = (m22 - m21) / span if span else 0.0  # per_row + PROBE_DRAWS * per_draw_row
    per_draw_row = max(0.0, (slope2 - slope1) / (PROBE_DRAWS - 1))
    per_row = max(0.0, slope1 - per_draw_row)
    per_draw = max(0.0, (m21 - m11) / (PROBE_DRAWS - 1) - low * per_draw_row)
    fixed = max(0.0, m11 - per_draw - low * (per_row + per_draw_row))
    return ForwardCost(fixed, per_draw, per_row, per_draw_row)


def plan_chunks(cost: ForwardCost, draws: int, rows: int, budget: float) -> tuple[int, int]:
    """Draws and rows per forward pass so that each pass stays within ``budget`` bytes.

    All draws at once over chunks of rows when that leaves at least :data:`MIN_ROWS` rows per
    chunk (or all of them); otherwise :data:`MIN_ROWS` rows and as many draws as fit; at worst
    one draw at as many rows as fit, and never less than one draw and one row (a single pass
    that exceeds the budget alone cannot be split further).

    Returns
    -------
    tuple of int
        ``(draws per chunk, rows per chunk)``, each at least 1 and at most ``draws``, ``rows``.
    """
    floor_rows = min(rows, MIN_ROWS)
    rows_all = cost.rows_within(budget, draws)
    if rows_all >= floor_rows:
        return draws, min(rows, rows_all)
    fitting = cost.draws_within(budget, floor_rows)
    if fitting >= 1:
        return min(draws, fitting), floor_rows
    return 1, max(1, min(rows, cost.rows_within(budget, 1)))
