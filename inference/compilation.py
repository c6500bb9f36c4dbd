"""Opt-in capture of a sampler's inner step with :func:`torch.compile`.

Eager PyTorch pays a fixed cost per tensor operation (dispatch on the CPU, a kernel launch on a
GPU), and one NUTS leaf is a leapfrog step, a gradient and some thirty small operations of
bookkeeping. :func:`compile_step` hands such a step, gradient included, to
:func:`torch.compile`, which fuses it into a few kernels. The step must be a function of
tensors (it may write into them in place) whose shapes do not change during a run (the
samplers' leaves are written that way), so it compiles once per run.

Compiling costs seconds to a minute, once per run, and pays off on long runs and on many
chains. Each call of :func:`compile_step` compiles afresh: runs with other data, temperatures
or models never fill up :mod:`torch._dynamo`'s per-function cache (whose overflow would run
the step eagerly, without a word). When compilation fails (no C++ compiler, an operation that
cannot be captured), the step runs eagerly after a warning that says why.

**On a GPU** a step's cost is bound by kernel launches (some hundreds per leaf), whatever the
number of chains. There :func:`compile_step` also captures the compiled step in a CUDA graph
(inductor's ``triton.cudagraphs``, what ``mode="reduce-overhead"`` turns on): one replay
launches all its kernels. The graph reads its inputs from static buffers (copied in at each
call) and writes its outputs to memory the next replay reuses, so each call starts a new
graph step (:func:`torch.compiler.cudagraph_mark_step_begin`) and returns copies of the
outputs. A step captured this way must not write into its inputs in place (CUDA graphs would
then be skipped): the samplers' leaves write their checkpoints out of place on a GPU
(:func:`~bayesdl.inference.mcmc.trajectory.nuts_leaf`).

Before each call of a compiled function, :mod:`torch._dynamo` checks its *guards* (for a BNN
some two thousand: every attribute of the network, prior and likelihood that the step reads)
to decide whether the graph still applies, which takes about as long as the rest of a 4-chain
NUTS leaf. Within a sampler's run they cannot fail: the step's inputs keep their shapes, dtypes
and devices, and the log density stays the same function (as MCMC requires). The samplers
therefore run their transitions inside :func:`skip_guard_checks`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.util
import os
import shutil
import types
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pyro
import torch

from .state import map_tensors

__all__ = ["compile_step", "compiler_available", "skip_guard_checks"]


def _cpu_options() -> dict[str, Any]:
    """Inductor's options for the CPU.

    - ``tanh(x) = 2 / (1 + exp(-2x)) - 1`` in the kernels, not Sleef's tanh: the gradient of
      a tanh network takes a third less time, for an absolute error of a few units in the
      last place (a relative one near ``x = 0``, where it does not matter to a log density).
    - The bias of a vectorised linear layer added inside its matrix product
      (:mod:`.graph_passes`, imported here: it imports inductor): the activation after it
      then runs as one flat vectorised loop, a fifth off a 64-chain MLP gradient.
    """
    from .graph_passes import BiasIntoBatchedMatmul

    return {"cpp.use_decompose_tanh": True, "post_grad_custom_pre_pass": BiasIntoBatchedMatmul()}


#: Whether :func:`skip_guard_checks` skips them (the tests turn it off to check, with
#: recompilation made an error, that no step of a whole run ever needs a new graph).
SKIP_GUARDS = True


def compiler_available(device: torch.device) -> bool:
    """Whether :func:`torch.compile` can build code for ``device``: a C++ compiler on a CPU
    (``$CXX``, ``c++``, ``g++`` or ``clang++``), Triton on a GPU."""
    if device.type == "cuda":
        return importlib.util.find_spec("triton") is not None
    names = (os.environ.get("CXX", ""), "c++", "g++", "clang++")
    return any(name and shutil.which(name) for name in names)


def skip_guard_checks() -> contextlib.AbstractContextManager:
    """Run compiled steps without re-checking dynamo's guards (see the module docstring).

    Only around calls of steps from :func:`compile_step` whose inputs keep their types, shapes,
    dtypes and devices, and whose log density does not read Python state that changes (a
    callback that edits an attribute the log density reads would go unnoticed).
    """
    if not SKIP_GUARDS:
        return contextlib.nullcontext()
    return torch.compiler.set_stance(skip_guard_eval_unsafe=True)


def compile_step(
    fn: Callable[..., Any],
    fallback: Callable[..., Any] | None = None,
    options: dict[str, Any] | None = None,
    note: str = "",
) -> Callable[..., Any]:
    """``fn`` compiled with :func:`torch.compile` (static shapes), falling back to ``fallback``.

    Pyro's argument validation is turned off around each call: the samplers' values need no
    checking and validation cannot be captured. The first call compiles, with guards built
    even inside :func:`skip_guard_checks`; if that raises and ``fallback`` (default: ``fn``
    itself, eagerly) does not, a :class:`RuntimeWarning` names the error (and ends with
    ``note``) and ``fallback`` serves every call (if it raises too, its error propagates: the
    step failed, not the compiler). ``options`` are inductor's, added to the library's own. A
    later call that needs another graph inside :func:`skip_guard_checks` (dynamo refuses to
    build one there) gets it built with guards.
    """
    # a copy of the code object: dynamo keeps its compiled graphs per code object
    fresh = types.FunctionType(
        fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__
    )

    @functools.cache
    def build(on_cuda: bool) -> Callable[..., Any]:
        """The compiled step, made at the first call (so that a run that never compiles never
        imports the compiler: some 1.5 s)."""
        if not on_cuda:
            cpu_options = {**_cpu_options(), **(options or {})}
            return torch.compile(fresh, dynamic=False, options=cpu_options)
        cuda_options = {**(options or {}), "triton.cudagraphs": True}
        compiled_cuda = torch.compile(fresh, dynamic=False, options=cuda_options)

        def graphed(*args: Any) -> Any:
            """The CUDA-graph step: a new graph step per call, outputs copied out of the
            graph's memory (the next replay overwrites it)."""
            torch.compiler.cudagraph_mark_step_begin()
            return map_tensors(compiled_cuda(*args), torch.clone)

        return graphed

    instead = fn if fallback is None else fallback
    runner: Callable[..., Any] | None = None  # the compiled step once it works, else instead

    def step(*args: Any) -> Any:
        nonlocal runner
        with pyro.validation_enabled(False):
            if runner is not None:
                try:
                    return runner(*args)
                except RuntimeError as err:  # raised before the graph runs: nothing has changed
                    if runner is instead or "skip_guard_eval_unsafe" not in str(err):
                        raise
                with torch.compiler.set_stance("default"):  # a new graph, built with guards
                    return runner(*args)
            compiled = build(_on_cuda(args))
            try:
                with torch.compiler.set_stance("default"):  # guards are built, not skipped
                    out = compiled(*args)
            except Exception as err:  # a failure of the compiler, or of the step itself
                # the step's own error (a log density that raises,
                # :mod:`bayesdl.inference.mcmc.robust`) raises in the fallback too: it
                # propagates, and the next call tries the graph again
                out = instead(*args)
                first_line = (str(err).splitlines() or [""])[0]
                warnings.warn(
                    f"torch.compile could not compile {fn.__name__} "
                    f"({type(err).__name__}: {first_line}); "
                    + ("running it eagerly" if fallback is None else f"running {instead.__name__}")
                    + note,
                    RuntimeWarning,
                    stacklevel=2,
                )
                runner = instead
                return out
            runner = compiled
            return out

    return step


def _on_cuda(args: tuple[Any, ...]) -> bool:
    """Whether a tensor among a step's arguments, or in their tuples and dataclass records (two
    levels down), is on a GPU."""

    def tensors(value: Any, depth: int) -> Iterator[torch.Tensor]:
        if isinstance(value, torch.Tensor):
            yield value
        elif depth > 0 and isinstance(value, (tuple, list)):
            for item in value:
                yield from tensors(item, depth - 1)
        elif depth > 0 and dataclasses.is_dataclass(value) and not isinstance(value, type):
            for field in dataclasses.fields(value):
                yield from tensors(getattr(value, field.name, None), depth - 1)

    return any(t.is_cuda for t in tensors(list(args), 3))
