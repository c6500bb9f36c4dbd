"""The backend protocol and the one driver loop every backend runs on.

A backend is a small object of settings with ``fit(bnn, x, y, *, seed, progress, callbacks)``
returning a :class:`~bayesdl.Posterior`. Internally each algorithm takes one step at a time;
:class:`Driver` owns the loop around the steps:

* a progress bar (tqdm) over all stages, silenced with ``progress=False``; when stderr is not
  a terminal (a log file, a pipe, CI) the bar is compact: it is redrawn at most every
  :data:`NON_TTY_PERCENT` percent of the steps and at most every :data:`NON_TTY_SECONDS`
  seconds (tqdm's ``miniters``/``mininterval``), so a log gets a few dozen updates instead of
  one carriage-return update per step;
* callbacks, called after every step with a :class:`StepEvent` (``callbacks=`` takes a list of
  callables or a single one, :func:`as_callbacks`);
* Ctrl-C at step boundaries: while the loop runs, a SIGINT only sets a flag
  (:class:`~.interrupt.StepBoundaryInterrupt`), read after each step, so it never lands inside
  a (vectorised) step; the loop stops after the step in progress and the backend returns the
  draws made so far in a Posterior marked ``partial``. A second SIGINT before that step ends
  raises ``KeyboardInterrupt`` at once, out of the run. A ``KeyboardInterrupt`` raised by a
  callback, or reaching the loop when no handler could be installed (not the main thread),
  stops the loop as the first SIGINT does;
* a NaN guard: a step whose info reports ``finite=False`` stops the loop; the backend then
  raises :class:`NonFiniteError`, which carries the partial Posterior;
* Python's cyclic garbage collector kept off the objects that existed before the run
  (:func:`~.frozen_heap.frozen_heap`): its full collections otherwise revisit, every few
  hundred steps, everything ``torch.compile`` left in memory.
"""

from __future__ import annotations

import math
import sys
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor
from tqdm.auto import tqdm

from bayesdl import inputs
from bayesdl._checks import check_count
from bayesdl.inputs import Inputs

from .frozen_heap import frozen_heap
from .interrupt import StepBoundaryInterrupt

if TYPE_CHECKING:  # pragma: no cover
    from bayesdl import Posterior
    from bayesdl.models import BNN

__all__ = [
    "Backend",
    "Callback",
    "Driver",
    "Minibatches",
    "NonFiniteError",
    "RunOutcome",
    "StepEvent",
    "as_callbacks",
    "finish",
]

#: Off a terminal, the progress bar is redrawn at most once per this percentage of the steps...
NON_TTY_PERCENT = 5
#: ...and at most once per this many seconds (both must have passed).
NON_TTY_SECONDS = 10.0


@dataclass(frozen=True)
class StepEvent:
    """What a callback sees after each step.

    Attributes
    ----------
    stage
        The stage of the run (``"warmup"``, ``"sampling"``, ...).
    step
        Index of the step within its stage.
    info
        Backend-specific statistics of the step (per-chain tensors or numbers).
    """

    stage: str
    step: int
    info: Mapping[str, Any]


Callback = Callable[[StepEvent], None]


@dataclass(frozen=True)
class RunOutcome:
    """How a driver loop ended: ``reason`` is None when every step ran."""

    reason: str | None = None
    stage: str | None = None
    step: int | None = None

    @property
    def partial(self) -> bool:
        return self.reason is not None


class NonFiniteError(FloatingPointError):
    """A run produced NaN or infinite values; ``posterior`` holds what was drawn before."""

    def __init__(self, message: str, posterior: Posterior) -> None:
        super().__init__(message)
        self.posterior = posterior


#: Stop codes exchanged between processes (the largest wins), and back.
_STOP_CODES = {None: 0, "interrupted": 1, "non-finite": 2}
_STOP_REASONS = {code: reason for reason, code in _STOP_CODES.items()}


class Driver:
    """Runs ``step(stage, i)`` over the stages, with progress, callbacks, Ctrl-C and NaN guard.

    Parameters
    ----------
    stages
        ``[(stage name, number of steps), ...]`` in order.
    progress
        Show a tqdm progress bar.
    callbacks
        Called with a :class:`StepEvent` after every step: a list (or tuple) of callables, or
        one callable (see :func:`as_callbacks`).
    desc
        Progress bar label.
    agree
        In a run over several processes (:mod:`bayesdl.distributed`), called after every step
        with this process's stop code (0: go on, 1: interrupted, 2: non-finite) and returning
        the largest over all processes, so that every process stops after the same step.

    On a terminal (or in a notebook) the bar updates as tqdm does by default. Otherwise
    (``sys.stderr`` is not a TTY) at most ``100 / NON_TTY_PERCENT`` intermediate updates are
    written, none sooner than ``NON_TTY_SECONDS`` after the previous one, plus the opening and
    the final line.
    """

    def __init__(
        self,
        stages: Sequence[tuple[str, int]],
        *,
        progress: bool = True,
        callbacks: Callback | Sequence[Callback] = (),
        desc: str = "",
        agree: Callable[[int], int] | None = None,
    ) -> None:
        self.stages = [(name, int(n)) for name, n in stages]
        self.progress = progress
        self.callbacks = as_callbacks(callbacks)
        self.desc = desc
        self.agree = agree

    def run(
        self,
        step: Callable[[str, int], Mapping[str, Any]],
        start: tuple[int, int] = (0, 0),
    ) -> RunOutcome:
        """Run every step from ``start``; return how the loop ended.

        ``start`` is ``(stage index, step index)`` of the first step to run (a resumed run
        starts where its checkpoint stopped; the progress bar counts the steps before as done).

        ``step`` returns an info mapping; its optional key ``"postfix"`` (a dict) is shown on
        the progress bar and its optional key ``"finite"`` (bool) feeds the NaN guard.

        A SIGINT during step ``i`` (or its callbacks) lets that step and its callbacks finish,
        then ends the loop with ``RunOutcome("interrupted", stage, i)``; a non-finite step
        reports ``"non-finite"`` first. A SIGINT after the last step leaves the run complete.

        Raises
        ------
        KeyboardInterrupt
            On a second SIGINT while the first is pending (:class:`.StepBoundaryInterrupt`),
            also when the step turned it into another error (then the ``__cause__``).
        """
        total = sum(n for _, n in self.stages)
        done = sum(n for _, n in self.stages[: start[0]]) + start[1]
        bar = tqdm(
            total=total,
            initial=done,
            desc=self.desc,
            disable=not self.progress,
            **_bar_options(total),
        )
        stage, i = None, None
        with frozen_heap(), StepBoundaryInterrupt() as interrupt:
            try:
                for index, (stage, n) in enumerate(self.stages):
                    if index < start[0]:
                        continue
                    for i in range(start[1] if index == start[0] else 0, n):
                        info = step(stage, i)
                        if self.progress:
                            bar.set_description(f"{self.desc} [{stage}]", refresh=False)
                            bar.set_postfix(info.get("postfix", {}), refresh=False)
                            bar.update()
                        event = StepEvent(stage, i, info)
                        stop = False
                        try:
                            for cb in self.callbacks:
                                cb(event)
                        except KeyboardInterrupt:  # a callback's Ctrl-C: stop after this step
                            if interrupt.forced:
                                raise
                            stop = True
                        if interrupt.forced:  # a step that swallowed the second one
                            raise KeyboardInterrupt
                        if not info.get("finite", True):
                            code = _STOP_CODES["non-finite"]
                        elif stop or interrupt.requested:
                            code = _STOP_CODES["interrupted"]
                        else:
                            code = 0
                        if self.agree is not None:  # every process stops at the same step
                            code = self.agree(code)
                        if code:
                            return RunOutcome(_STOP_REASONS[code], stage, i)
            except KeyboardInterrupt:
                if interrupt.forced:
                    raise
                return RunOutcome("interrupted", stage, i)
            except Exception as error:
                if interrupt.forced:  # e.g. turned into another error inside torch.func
                    raise KeyboardInterrupt from error
                raise
            finally:
                bar.close()
        return RunOutcome()


def as_callbacks(callbacks: object) -> tuple[Callback, ...]:
    """The callbacks of a run as a tuple: a single callable, or a sequence of callables.

    Every backend's ``fit(callbacks=...)`` goes through this, so ``callbacks=my_fn`` and
    ``callbacks=[my_fn]`` are the same.

    Raises
    ------
    TypeError
        Naming ``callbacks`` if it is neither, or holds something that is not callable.
    """
    if callable(callbacks):
        return (callbacks,)
    if isinstance(callbacks, (str, bytes, Mapping)) or not isinstance(
        callbacks, (Sequence, set, frozenset)
    ):
        raise TypeError(
            "callbacks: expected a callable or a list of callables (each called with a "
            f"StepEvent after every step), got {type(callbacks).__name__}"
        )
    for cb in callbacks:
        if not callable(cb):
            raise TypeError(
                f"callbacks: expected a callable or a list of callables, got a list holding "
                f"{type(cb).__name__}"
            )
    return tuple(callbacks)


def _bar_options(total: int) -> dict[str, Any]:
    """tqdm options: tqdm's defaults on a terminal or in a notebook, compact elsewhere."""
    stream = sys.stderr
    isatty = getattr(stream, "isatty", None)
    try:
        terminal = bool(isatty()) if callable(isatty) else False
    except (ValueError, OSError):  # a closed or detached stream
        terminal = False
    notebook = any(cls.__module__ == "tqdm.notebook" for cls in tqdm.__mro__)
    if terminal or notebook:  # tqdm.auto chose the widget in a notebook: its own pace
        return {"file": stream, "dynamic_ncols": True}
    return {
        "file": stream,
        "miniters": max(1, math.ceil(total * NON_TTY_PERCENT / 100)),
        "mininterval": NON_TTY_SECONDS,
        # tqdm's monitor thread would otherwise reset miniters to 1 after maxinterval seconds
        "maxinterval": float("inf"),
        "ascii": True,
    }


def finish(posterior: Posterior, outcome: RunOutcome) -> Posterior:
    """Return the posterior, warning if it is partial; raise :class:`NonFiniteError` on NaN."""
    where = f"during {outcome.stage} step {outcome.step}"
    if outcome.reason == "non-finite":
        raise NonFiniteError(
            f"non-finite values {where}; the draws made before are in the error's .posterior "
            "(try a smaller step size or learning rate, or check the data and priors)",
            posterior,
        )
    if outcome.reason == "interrupted":
        warnings.warn(
            f"interrupted {where}: returning the {posterior.num_draws} draws per chain made so "
            "far, marked partial",
            RuntimeWarning,
            stacklevel=3,
        )
    return posterior


class Minibatches:
    """Endless minibatches of ``(x, y)``: a fresh random permutation every epoch.

    Every example is used once per epoch; the last, shorter batch of an epoch is dropped so
    that every minibatch has ``batch_size`` examples (the likelihood is scaled by
    ``num_data / batch_size``). With ``batch_size=None`` (or at least ``len(x)``) every batch
    is the full data set, in order.

    Parameters
    ----------
    x, y
        Checked data (``BNN.check_data``); ``x`` may be a tuple or dict of tensors
        (:mod:`bayesdl.inputs`), whose parts are sliced together.
    batch_size
        Examples per minibatch, or ``None`` for full batches.
    seed
        Seed of the permutations (a private generator: the global RNG is untouched).
    """

    def __init__(self, x: Inputs, y: Tensor, batch_size: int | None, seed: int | None) -> None:
        self.x, self.y = x, y
        self.num_data = inputs.num_rows(x)
        if batch_size is None or check_count("batch_size", batch_size) >= self.num_data:
            self.batch_size = self.num_data
        else:
            self.batch_size = batch_size
        self._generator = torch.Generator(device="cpu")
        if seed is None:
            self._generator.seed()
        else:
            self._generator.manual_seed(seed)
        self._order: Tensor | None = None
        self._position = 0

    def state(self) -> dict[str, Any]:
        """Where the stream of minibatches is: generator, this epoch's order, position."""
        return {
            "generator": self._generator.get_state(),
            "order": self._order,
            "position": self._position,
        }

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Continue from :meth:`state` (of a run on the same data and batch size)."""
        self._generator.set_state(state["generator"])
        self._order = state["order"]
        self._position = int(state["position"])

    @property
    def full_batch(self) -> bool:
        return self.batch_size == self.num_data

    def __iter__(self) -> Minibatches:
        return self

    def __next__(self) -> tuple[Inputs, Tensor]:
        if self.full_batch:
            return self.x, self.y
        if self._order is None or self._position + self.batch_size > self.num_data:
            self._order = torch.randperm(self.num_data, generator=self._generator)
            self._position = 0
        index = self._order[self._position : self._position + self.batch_size]
        index = index.to(inputs.device_of(self.x))
        self._position += self.batch_size
        return inputs.take_rows(self.x, index), self.y[index]


class Backend(ABC):
    """An inference backend: settings, and ``fit`` returning a Posterior."""

    #: The backend's name in the registry (``bayesdl.inference.get(name)``).
    name: ClassVar[str]

    @abstractmethod
    def fit(
        self,
        bnn: BNN,
        x: Tensor,
        y: Tensor,
        *,
        seed: int | None = None,
        progress: bool = True,
        callbacks: Callback | Sequence[Callback] = (),
    ) -> Posterior:
        """Infer the posterior of ``bnn`` given data ``(x, y)``.

        Every backend checks, before any work, that ``bnn`` is a BNN, the data, the callbacks
        (one callable or a list, :func:`as_callbacks`) and that the network and likelihood are
        finite at the starting point (:func:`~.checks.check_start`).
        """

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"
