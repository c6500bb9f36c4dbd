"""The run loop keeps the cyclic garbage collector off the objects that existed before it
(:mod:`bayesdl.inference.frozen_heap`), and leaves the collector as it found it.

Whether an object is frozen is read from :func:`gc.get_objects`, which lists the collector's
generations but not its permanent one (:func:`gc.get_freeze_count` is no measure: frozen
objects freed meanwhile leave the count).
"""

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


def frozen(obj: object) -> bool:
    """Whether ``obj`` is in the collector's permanent generation (not in the others)."""
    return not any(o is obj for o in gc.get_objects())


def test_a_run_freezes_what_existed_before_it_and_unfreezes_after(collector: None) -> None:
    old = [Cycle()]
    seen: list[tuple[bool, bool]] = []

    def step(stage: str, i: int) -> dict:
        seen.append((frozen(old[0]), frozen(Cycle())))
        return {}

    Driver([("a", 3)], progress=False).run(step)
    assert seen == [(True, False)] * 3  # the old object frozen throughout, new ones not
    assert not frozen(old[0]) and gc.get_freeze_count() == 0
    ref = weakref.ref(old.pop())  # and collectable again
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
    before = Cycle()

    def step(stage: str, i: int) -> dict:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        Driver([("a", 1)], progress=False).run(step)
    assert not frozen(before) and gc.get_freeze_count() == 0


def test_a_callers_own_freeze_is_kept(collector: None) -> None:
    before = Cycle()
    gc.freeze()
    with frozen_heap():
        during = Cycle()
    assert frozen(before)  # still frozen: the block did not unfreeze the caller's objects
    assert not frozen(during)  # nor did it freeze


def test_a_disabled_collector_is_left_alone(collector: None) -> None:
    before = Cycle()
    gc.disable()
    with frozen_heap():
        assert not frozen(before)
    assert not gc.isenabled() and not frozen(before)


def test_nested_runs_unfreeze_once_at_the_end(collector: None) -> None:
    before = Cycle()
    with frozen_heap():
        with frozen_heap():
            pass
        assert frozen(before)  # the inner block did not unfreeze
    assert not frozen(before)
