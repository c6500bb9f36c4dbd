"""Opt-in capture of a sampler's inner step with :func:`torch.compile`.

Eager PyTorch pays a fixed cost per tensor operation (dispatch on the CPU, a kernel launch on a
GPU), and one NUTS leaf is a leapfrog step, a gradient and some thirty small operations of
bookkeeping. :func:`compile_step` hands such a step, gradient included, to
:func:`torch.compile`, which fuses it into a few kernels. The step must be a pure function of
tensors whose shapes do not change during a run (the samplers' leaves are written that way),
so it compiles once per run.

Compiling costs seconds to a minute, once per run, and pays off on long runs and on many
chains. Each call of :func:`compile_step` compiles afresh: runs with other data, temperatures
or models never fill up :mod:`torch._dynamo`'s per-function cache (whose overflow would run
the step eagerly, without a word). When compilation fails (no C++ compiler, an operation that
cannot be captured), the step runs eagerly after a warning that says why.
"""

from __future__ import annotations

import types
import warnings
from collections.abc import Callable
from typing import Any

import pyro
import torch

__all__ = ["compile_step"]


def compile_step(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` compiled with :func:`torch.compile` (static shapes), falling back to ``fn``.

    Pyro's argument validation is turned off around each call: the samplers' values need no
    checking and validation cannot be captured. The first call compiles; if that raises, a
    :class:`RuntimeWarning` names the error and ``fn`` itself serves every call.
    """
    # a copy of the code object: dynamo keeps its compiled graphs per code object
    fresh = types.FunctionType(
        fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__
    )
    compiled = torch.compile(fresh, dynamic=False)
    runner: Callable[..., Any] | None = None  # the compiled step once it works, else fn

    def step(*args: Any) -> Any:
        nonlocal runner
        with pyro.validation_enabled(False):
            if runner is not None:
                return runner(*args)
            try:
                out = compiled(*args)
            except Exception as err:  # any failure of the compiler
                first_line = (str(err).splitlines() or [""])[0]
                warnings.warn(
                    f"compile=True: torch.compile could not compile {fn.__name__} "
                    f"({type(err).__name__}: {first_line}); running it eagerly",
                    RuntimeWarning,
                    stacklevel=2,
                )
                runner = fn
                return fn(*args)
            runner = compiled
            return out

    return step
