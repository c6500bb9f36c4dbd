"""Ctrl-C at step boundaries, for every backend.

A SIGINT sent while a run's loop is active, wherever it lands (inside the network's forward
pass under a :mod:`torch.func` transform, in a callback), lets the step in progress finish and
its callbacks run, then the run returns the draws made so far in a Posterior marked
``partial``; a second SIGINT raises ``KeyboardInterrupt`` out of the run; the SIGINT handler
in place before the run is back after it.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from torch._C._functorch import peek_interpreter_stack

from bayesdl import Posterior, likelihoods, priors
from bayesdl.inference import HMC, NUTS, SGHMC, SGLD, SSVI, SVGD, VI, StepEvent
from bayesdl.inference.base import Driver, RunOutcome
from bayesdl.inference.interrupt import StepBoundaryInterrupt
from bayesdl.models import BNN, MLP

pytestmark = pytest.mark.filterwarnings("ignore::bayesdl.inference.ConvergenceWarning")


@dataclass
class Tripwire:
    """Counts calls; sends SIGINT (``signals`` times) on call number ``at`` (1-based)."""

    at: int | None = None
    signals: int = 1
    calls: int = 0
    under_torch_func: list[bool] = field(default_factory=list)

    def __call__(self) -> None:
        self.calls += 1
        if self.calls == self.at:
            self.under_torch_func.append(peek_interpreter_stack() is not None)
            for _ in range(self.signals):
                signal.raise_signal(signal.SIGINT)


TRIP = Tripwire()


class TripMLP(MLP):
    """An MLP whose forward pass calls :data:`TRIP` (so also inside vectorised log densities)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        TRIP()
        return super().forward(x)


def _problem() -> tuple[BNN, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(24, 2, generator=gen)
    y = torch.sin(x[:, 0]) + 0.1 * torch.randn(24, generator=gen)
    bnn = BNN(TripMLP(2, [4], 1, "tanh"), priors.Gaussian(1.0), likelihoods.Gaussian(0.3))
    return bnn, x, y


def _log_density(theta: torch.Tensor) -> torch.Tensor:
    TRIP()
    return -0.5 * (theta**2).sum(-1)


_INIT = torch.linspace(-1.0, 1.0, 6, dtype=torch.float64).reshape(2, 3)


def _fit(backend: Any) -> Callable[[list[Any]], Posterior]:
    def run(callbacks: list[Any]) -> Posterior:
        bnn, x, y = _problem()
        return backend.fit(bnn, x, y, seed=1, progress=False, callbacks=callbacks)

    return run


def _sample(backend: Any) -> Callable[[list[Any]], Posterior]:
    def run(callbacks: list[Any]) -> Posterior:
        return backend.sample(_log_density, _INIT, seed=1, progress=False, callbacks=callbacks)

    return run


#: name -> (run(callbacks) -> Posterior, whether every step of stage "sampling" keeps a draw)
RUNS: dict[str, tuple[Callable[[list[Any]], Posterior], bool]] = {
    "nuts": (_fit(NUTS(chains=2, warmup=5, draws=6)), True),
    "nuts-pyro": (_fit(NUTS(chains=2, warmup=3, draws=4, engine="pyro", jit=False)), True),
    "hmc": (_fit(HMC(chains=2, warmup=5, draws=6, num_steps=3)), True),
    "hmc-pyro": (
        _fit(HMC(chains=2, warmup=3, draws=4, num_steps=3, engine="pyro", jit=False)),
        True,
    ),
    "sghmc": (_fit(SGHMC(chains=2, lr=1e-3, burn_in=3, draws=6, thin=1, batch_size=8)), True),
    "sgld": (_fit(SGLD(chains=2, lr=1e-3, burn_in=3, draws=6, thin=1, batch_size=8)), True),
    "svgd": (_fit(SVGD(particles=4, steps=6)), False),
    "vi": (_fit(VI(steps=6, draws=5, batch_size=8)), False),
    "ssvi": (_fit(SSVI(density=0.5, steps=6, update_every=3, draws=5)), False),
    "nuts-sample": (_sample(NUTS(chains=2, warmup=5, draws=6)), True),
}


class Recorder:
    """A callback keeping the events seen and the call count of :data:`TRIP` after each."""

    def __init__(self) -> None:
        self.events: list[StepEvent] = []
        self.marks: list[int] = []

    def __call__(self, event: StepEvent) -> None:
        self.events.append(event)
        self.marks.append(TRIP.calls)


@pytest.fixture
def sentinel_handler():
    """A SIGINT handler of our own around the test; the run must put it back."""
    seen: list[int] = []

    def handler(signum: int, frame: object) -> None:
        seen.append(signum)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield handler, seen
    finally:
        signal.signal(signal.SIGINT, previous)


def _uninterrupted(name: str) -> tuple[Posterior, Recorder]:
    global TRIP
    TRIP = Tripwire()
    recorder = Recorder()
    post = RUNS[name][0]([recorder])
    assert not post.partial
    return post, recorder


def _trip_points(marks: list[int]) -> list[tuple[int, int]]:
    """``(step index, call number)``: first and last call of the second, middle, last step."""
    points = []
    for j in sorted({1, len(marks) // 2, len(marks) - 1}):
        first, last = marks[j - 1] + 1, marks[j]
        points += [(j, call) for call in sorted({first, last}) if call <= last]
    return points


@pytest.mark.parametrize("name", list(RUNS))
def test_sigint_anywhere_in_a_step_returns_the_draws_so_far(name, sentinel_handler):
    global TRIP
    handler, seen = sentinel_handler
    full, dry = _uninterrupted(name)
    points = _trip_points(dry.marks)
    assert len(points) >= 3, dry.marks
    under_torch_func = []
    for j, call in points:
        TRIP = Tripwire(at=call)
        recorder = Recorder()
        event = dry.events[j]
        with pytest.warns(RuntimeWarning, match=f"interrupted during {event.stage} step"):
            post = RUNS[name][0]([recorder])
        under_torch_func += TRIP.under_torch_func
        # the step in progress finished, with its callbacks, and the run stopped there
        assert len(recorder.events) == j + 1, (j, call)
        assert post.partial and post.attrs.get("stopped", "interrupted") == "interrupted"
        assert torch.isfinite(post.theta).all()
        if RUNS[name][1]:
            kept = sum(e.stage == "sampling" for e in recorder.events)
            assert post.theta.shape == (full.theta.shape[0], kept, full.theta.shape[2])
            # the draws so far are those of the uninterrupted run with the same seed
            torch.testing.assert_close(post.theta, full.theta[:, :kept])
        else:
            assert post.theta.shape == full.theta.shape
        assert signal.getsignal(signal.SIGINT) is handler
    assert seen == []  # every SIGINT went to the run's handler
    if name in ("nuts", "hmc", "sghmc", "sgld"):  # the case of the crash: inside torch.func
        assert any(under_torch_func), name


@pytest.mark.parametrize("name", list(RUNS))
def test_sigint_from_a_callback_stops_after_that_step(name, sentinel_handler):
    handler, _ = sentinel_handler
    full, dry = _uninterrupted(name)
    j = len(dry.events) - 2
    events: list[StepEvent] = []

    def stop(event: StepEvent) -> None:
        events.append(event)
        if len(events) == j + 1:
            signal.raise_signal(signal.SIGINT)

    with pytest.warns(RuntimeWarning, match=f"interrupted during {dry.events[j].stage} step"):
        post = RUNS[name][0]([stop])
    assert len(events) == j + 1 and post.partial
    assert post.theta.shape[0] == full.theta.shape[0]
    assert signal.getsignal(signal.SIGINT) is handler


@pytest.mark.parametrize("name", list(RUNS))
def test_a_second_sigint_raises_at_once(name, sentinel_handler):
    global TRIP
    handler, seen = sentinel_handler
    _, dry = _uninterrupted(name)
    j = len(dry.marks) // 2
    TRIP = Tripwire(at=dry.marks[j - 1] + 1, signals=2)
    recorder = Recorder()
    with pytest.raises(KeyboardInterrupt):
        RUNS[name][0]([recorder])
    assert len(recorder.events) == j  # the step in progress did not finish
    assert signal.getsignal(signal.SIGINT) is handler and seen == []


def test_the_handler_is_restored_when_a_step_raises(sentinel_handler):
    handler, _ = sentinel_handler

    def step(stage: str, i: int) -> dict[str, Any]:
        assert signal.getsignal(signal.SIGINT) is not handler
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        Driver([("a", 3)], progress=False).run(step)
    assert signal.getsignal(signal.SIGINT) is handler


def test_a_second_sigint_that_a_step_swallows_or_turns_into_an_error_still_raises():
    def swallowing(stage: str, i: int) -> dict[str, Any]:
        signal.raise_signal(signal.SIGINT)
        try:
            signal.raise_signal(signal.SIGINT)
        except KeyboardInterrupt:
            pass
        return {}

    with pytest.raises(KeyboardInterrupt):
        Driver([("a", 3)], progress=False).run(swallowing)

    def converting(stage: str, i: int) -> dict[str, Any]:
        signal.raise_signal(signal.SIGINT)
        try:
            signal.raise_signal(signal.SIGINT)
        except KeyboardInterrupt as error:  # as torch.func may do
            raise NotImplementedError("Cannot access storage of BatchedTensorImpl") from error
        return {}

    with pytest.raises(KeyboardInterrupt) as caught:
        Driver([("a", 3)], progress=False).run(converting)
    assert isinstance(caught.value.__cause__, NotImplementedError)


def test_a_sigint_during_a_non_finite_step_reports_the_non_finite_step():
    def step(stage: str, i: int) -> dict[str, Any]:
        signal.raise_signal(signal.SIGINT)
        return {"finite": False}

    assert Driver([("a", 3)], progress=False).run(step) == RunOutcome("non-finite", "a", 0)


def test_no_handler_is_installed_when_sigint_is_ignored():
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with StepBoundaryInterrupt() as interrupt:
            assert not interrupt.installed
            assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


def test_outside_the_main_thread_a_keyboard_interrupt_stops_the_loop_as_before():
    before = signal.getsignal(signal.SIGINT)
    results: dict[str, Any] = {}

    def step(stage: str, i: int) -> dict[str, Any]:
        results.setdefault("handler", signal.getsignal(signal.SIGINT))
        if i == 2:
            raise KeyboardInterrupt
        return {}

    def work() -> None:
        with StepBoundaryInterrupt() as interrupt:
            results["installed"] = interrupt.installed
        results["outcome"] = Driver([("a", 5)], progress=False).run(step)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert results["installed"] is False and results["handler"] is before
    assert results["outcome"] == RunOutcome("interrupted", "a", 2)
