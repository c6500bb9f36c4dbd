"""Python's cyclic garbage collector kept off the objects that exist before a run.

A run's steps create short-lived Python objects (tensors, tuples, the step's info), enough to
trigger the cyclic collector every few steps; every tenth collection of the middle generation
is a full one, which visits every tracked object of the process: after ``torch.compile`` has
traced a model, millions of them. Keeping them off cut a kidiq run (4 chains x 1,000 +
1,000, the whole trajectory in one compiled loop, some 1.4 ms a transition) by 0.27 ± 0.11 s
of 7.1 s, and a 4-chain MLP's by 0.30 ± 0.11 s of 13.0 s (``benchmarks/frozen_heap_ab.py``;
``benchmarks/RESULTS.md``, "The collector kept off the heap").

:func:`frozen_heap` moves the objects alive at the start of a run to the collector's permanent
generation (:func:`gc.freeze`) and puts them back (:func:`gc.unfreeze`) when the run ends,
however it ends. Garbage made during the run is collected as usual; cycles among the objects
that were frozen are collected after the run. A process that froze objects itself (a server
before it forks, say) or that turned the collector off is left as it is.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

__all__ = ["frozen_heap"]


@contextlib.contextmanager
def frozen_heap() -> Iterator[None]:
    """Keep the cyclic garbage collector off the objects that exist now, until the block ends.

    A no-op when the collector is disabled or objects are frozen already (by the caller, or by
    an enclosing run), so that the caller's own :func:`gc.freeze` is never undone.
    """
    if not gc.isenabled() or gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
