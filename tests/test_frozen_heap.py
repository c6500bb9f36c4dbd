"""The run loop keeps the cyclic garbage collector off the objects that existed before it
(:mod:`bayesdl.inference.frozen_heap`), and leaves the collector as it found it."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from bayesdl.inference.base import Driver
from bayesdl.inference.frozen_heap import frozen_heap


@pytest.fixture
def collector() -> Iterator[None]:
    """A collector enabled, nothing frozen, before and after the test."""
    was_enabled = gc.isenabled()
    gc.unfreeze()
    gc.enable()
    yield
    gc.unfreeze()
    if not was_enabled:
        gc.disable()


class Cycle:
    """An object in a reference cycle, freed only by the cyclic collector."""

    def __init__(self) -> None:
        self.me = self


def test_a_run_freezes_what_existed_before_it_and_unfreezes_after(collector: None) -> None:
    before = Cycle()
    seen: list[int] = []

    def step(stage: str, i: int) -> dict:
        seen.append(gc.get_freeze_count())
        return {}

    Driver([("a", 3)], progress=False).run(step)
    assert min(seen) > 0 and all(n == seen[0] for n in seen)  # frozen throughout the run
    assert gc.get_freeze_count() == 0
    # the object frozen during the run is collectable again after it
    ref = weakref.ref(before)
    del before
    gc.collect()
    assert ref() is None


def test_garbage_made_during_a_run_is_collected_during_it(collector: None) -> None:
    refs: list[weakref.ref] = []

    def step(stage: str, i: int) -> dict:
        if i == 0:
            refs.append(weakref.ref(Cycle()))
        else:
            gc.collect()
            assert refs[0]() is None
        return {}

    Driver([("a", 2)], progress=False).run(step)


def test_a_run_that_raises_unfreezes(collector: None) -> None:
    def step(stage: str, i: int) -> dict:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        Driver([("a", 1)], progress=False).run(step)
    assert gc.get_freeze_count() == 0


def test_a_callers_own_freeze_is_kept(collector: None) -> None:
    gc.freeze()
    frozen = gc.get_freeze_count()
    with frozen_heap():
        Cycle()
    assert gc.get_freeze_count() == frozen


def test_a_disabled_collector_is_left_alone(collector: None) -> None:
    gc.disable()
    with frozen_heap():
        assert gc.get_freeze_count() == 0
    assert not gc.isenabled() and gc.get_freeze_count() == 0


def test_nested_runs_unfreeze_once_at_the_end(collector: None) -> None:
    with frozen_heap():
        outer = gc.get_freeze_count()
        with frozen_heap():
            pass
        assert gc.get_freeze_count() == outer  # the inner block did not unfreeze
    assert gc.get_freeze_count() == 0
