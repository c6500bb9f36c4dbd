"""Ctrl-C at step boundaries: a SIGINT handler that asks the driver loop to stop.

A ``KeyboardInterrupt`` raised wherever a SIGINT happens to land can land inside a vectorised
step, inside a :mod:`torch.func` transform, and crash there (``NotImplementedError: Cannot
access storage of BatchedTensorImpl``) instead of stopping the run. While a
:class:`~bayesdl.inference.base.Driver` loop runs, :class:`StepBoundaryInterrupt` replaces the
SIGINT handler by one that only sets a flag; the driver reads the flag after each step and stops
there, so the run returns its partial Posterior as a Ctrl-C always did. A second SIGINT while
the flag is set raises ``KeyboardInterrupt`` at once, wherever it lands, and the run raises it:
the way out of a step that takes too long.

The handler is installed only in the main thread (Python runs signal handlers there and nowhere
else); elsewhere, or when SIGINT is ignored (``SIG_IGN``) or handled outside Python, nothing is
installed and a ``KeyboardInterrupt`` stops the loop wherever it lands, as before. The previous
handler is put back when the loop ends, however it ends.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType

__all__ = ["StepBoundaryInterrupt"]


class StepBoundaryInterrupt:
    """Context manager: while active, SIGINT sets :attr:`requested` instead of raising.

    Attributes
    ----------
    requested
        A SIGINT arrived while the context was active: stop at the next step boundary.
    forced
        A second SIGINT arrived while :attr:`requested` was set; the handler raised
        ``KeyboardInterrupt``, which the driver lets through.
    installed
        The handler was installed (main thread, SIGINT neither ignored nor handled outside
        Python).

    Examples
    --------
    >>> with StepBoundaryInterrupt() as interrupt:
    ...     for i in range(3):
    ...         if interrupt.requested:
    ...             break
    """

    def __init__(self) -> None:
        self.requested = False
        self.forced = False
        self.installed = False
        self._previous: signal.Handlers | object | None = None

    def __enter__(self) -> StepBoundaryInterrupt:
        if threading.current_thread() is not threading.main_thread():
            return self
        previous = signal.getsignal(signal.SIGINT)
        if previous is None or previous == signal.SIG_IGN:
            return self  # handled outside Python, or deliberately ignored: leave it so
        try:
            signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread of the main interpreter
            return self
        self._previous = previous
        self.installed = True
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self.installed:
            signal.signal(signal.SIGINT, self._previous)  # type: ignore[arg-type]
            self.installed = False

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        """The SIGINT handler: the first asks to stop at the next step, a second stops now."""
        if self.requested:
            self.forced = True
            raise KeyboardInterrupt
        self.requested = True
