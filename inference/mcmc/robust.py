"""Log densities that raise: one chain's failure is a divergence of that chain, not of the run.

The bayesdl engine evaluates ``log_density(theta)`` for every chain at once, ``(C, D) -> (C,)``.
A density can raise at some proposals: torch's ``MultivariateNormal`` validates its covariance
(``ValueError``), and a Cholesky factorisation of a matrix that is not numerically positive
definite raises :class:`torch.linalg.LinAlgError` (a ``RuntimeError``), for instance when a
large warmup step sends a GP's length scale far out. Stan rejects such a proposal and NumPyro
treats a non-finite density as a divergence; a batched evaluation cannot tell which chain made
it raise. :class:`RobustLogDensity` therefore:

* evaluates the batch as usual (the fast path: a ``try`` costs nothing when nothing raises);
* when the batch raises one of the :func:`density errors <is_density_error>`, evaluates the
  chains one by one, gives each chain that raises log density ``-inf`` and gradient 0, and
  counts it. A leapfrog step to ``-inf`` is a divergence (infinite energy error), so that chain
  ends its trajectory there, as if the density were ``-inf``; the other chains go on;
* remembers the positions that raised: a chain that stopped keeps being integrated with step
  size zero (:mod:`.trajectory`), so it comes back to the same point, which is then skipped
  (``-inf`` again, not re-evaluated and not counted) while the others are evaluated together.

**Which errors.** ``ValueError``, ``RuntimeError`` (``LinAlgError`` included) and
``ArithmeticError``: what a numerical routine raises on bad values. Not ``TypeError``,
``AttributeError``, ``IndexError``, ``NameError`` (bugs in the density), nor
``NotImplementedError``, ``RecursionError`` or :class:`torch.OutOfMemoryError` (subclasses of
``RuntimeError`` that no proposal causes), nor ``KeyboardInterrupt``: those stop the run. A
chain whose position is NaN or infinite (after a non-finite gradient) is given ``-inf``
without being evaluated. Non-finite values that the density *returns* need none of this: a
NaN or infinite log density or gradient already makes an infinite or NaN energy error, hence a
divergence of that chain.

**Compiled steps.** A compiled step (:mod:`bayesdl.inference.compilation`) captures the density
in its graph, where a failure raises as it does eagerly (torch's checks run inside the graph).
:func:`robust_step` runs the graph with the plain log density and, when it raises a density
error, reruns that call eagerly with the robust one; it also runs eagerly while a
failure is remembered. The steps are written so that a rerun gives the same result (their only
in-place writes are rewritten from the inputs).

At the starting point there is no divergence to fall back on: :func:`start_values` raises a
``ValueError`` naming ``init_theta``, the chains and the exception.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..gradients import LogDensityAndGrad
from ..state import state_record

__all__ = [
    "DENSITY_ERRORS",
    "DensityMemory",
    "RobustLogDensity",
    "describe",
    "failing_rows",
    "is_density_error",
    "robust_step",
    "start_values",
]

#: The exception types a log density may raise at a proposal without stopping the run.
DENSITY_ERRORS: tuple[type[BaseException], ...] = (ValueError, RuntimeError, ArithmeticError)
#: Subclasses of those that are never a proposal's fault.
_NOT_DENSITY_ERRORS: tuple[type[BaseException], ...] = (
    NotImplementedError,
    RecursionError,
    torch.OutOfMemoryError,
)


def is_density_error(err: BaseException) -> bool:
    """Whether ``err`` is one a log density may raise at a bad proposal (module docstring)."""
    return isinstance(err, DENSITY_ERRORS) and not isinstance(err, _NOT_DENSITY_ERRORS)


def describe(err: BaseException) -> str:
    """``"LinAlgError: <first line of the message>"``."""
    first_line = (str(err).strip().splitlines() or [""])[0]
    name = type(err).__name__.lstrip("_")  # torch's is torch._C._LinAlgError
    if len(first_line) > 160:
        first_line = first_line[:160].rsplit(" ", 1)[0] + " ..."
    return f"{name}: {first_line}" if first_line else name


def failing_rows(fn: Callable[[Tensor], Any], theta: Tensor) -> dict[int, BaseException]:
    """Evaluate ``fn`` on each row ``theta[i:i+1]``; the density errors raised, by row.

    Errors that are not density errors propagate.
    """
    failed = {}
    for i in range(theta.shape[0]):
        try:
            fn(theta[i : i + 1])
        except Exception as err:
            if not is_density_error(err):
                raise
            failed[i] = err
    return failed


def start_values(fn: Callable[[Tensor], Any], theta: Tensor) -> Any:
    """``fn(theta)`` at the starting point; if it raises a density error, a ``ValueError``
    naming ``init_theta``, the chains at which it raises and the exception.

    Raises
    ------
    ValueError
        When ``fn`` raises a density error for some chains (evaluated one by one); the
        original error is re-raised if no chain raises on its own.
    """
    try:
        return fn(theta)
    except Exception as err:
        if not is_density_error(err):
            raise
        failed = failing_rows(fn, theta)
        if not failed:
            raise
        chains = sorted(failed)
        raise ValueError(
            f"init_theta: the log density raises at the starting point of chain(s) {chains} "
            f"({describe(failed[chains[0]])}); start those chains where the density is defined "
            "(init_theta=...)"
        ) from failed[chains[0]]


@state_record
class DensityMemory:
    """What a :class:`RobustLogDensity` carries from one transition to the next: a state
    record (:meth:`RobustLogDensity.memory`, :meth:`RobustLogDensity.recall`).

    Attributes
    ----------
    first_error
        The first density error raised, as :func:`describe` writes it (``None`` if none).
    failed, failed_rows
        The positions ``(C, D)`` of the last evaluation and which rows ``(C,)`` of it raised
        (``None`` when none did): they are skipped if evaluated again, and a compiled step
        runs eagerly while they are remembered (:func:`robust_step`).
    """

    first_error: str | None = None
    failed: Tensor | None = None
    failed_rows: Tensor | None = None


class RobustLogDensity:
    """``theta (C, D) -> (log density (C,), gradient (C, D))`` where a chain whose evaluation
    raises gets ``-inf`` and a zero gradient (see the module docstring).

    Parameters
    ----------
    log_density_and_grad
        The plain ``theta -> (log density, gradient)`` (:func:`.integrators.value_and_grad` or
        its functional version).
    chains
        Number of chains ``C``.

    Attributes
    ----------
    raw
        ``log_density_and_grad`` itself (what a compiled step captures).
    first_error
        The first density error raised, as :func:`describe` writes it (``None`` if none).
    """

    def __init__(self, log_density_and_grad: LogDensityAndGrad, chains: int) -> None:
        self.raw = log_density_and_grad
        self.first_error: str | None = None
        self._raised = torch.zeros(chains, dtype=torch.long)
        self._failed: Tensor | None = None  # (C, D) positions of the last failures
        self._failed_rows: Tensor | None = None  # (C,) which rows of _failed hold one

    @property
    def remembers_failure(self) -> bool:
        """Whether some chain raised at the last evaluation (its position is remembered)."""
        return self._failed is not None

    def memory(self) -> DensityMemory:
        """What this log density remembers (the failures), as a state record."""
        return DensityMemory(self.first_error, self._failed, self._failed_rows)

    def recall(self, memory: DensityMemory) -> None:
        """Remember what ``memory`` holds (as when it was taken by :meth:`memory`)."""
        self.first_error = memory.first_error
        self._failed, self._failed_rows = memory.failed, memory.failed_rows

    def take_raised(self) -> Tensor:
        """``(C,)`` evaluations that raised, per chain, since the last call; resets them."""
        raised, self._raised = self._raised, torch.zeros_like(self._raised)
        return raised

    def __call__(self, theta: Tensor) -> tuple[Tensor, Tensor]:
        if self._failed is None:
            try:
                return self.raw(theta)
            except Exception as err:
                if not is_density_error(err):
                    raise
            skip = torch.zeros(theta.shape[0], dtype=torch.bool)
            return self._evaluate(theta, skip, batch=False)
        same = (theta == self._failed).all(-1) & self._failed_rows
        skip = (same | ~torch.isfinite(theta).all(-1)).cpu()
        if not bool(skip.any()):
            self._failed = self._failed_rows = None
            return self(theta)
        return self._evaluate(theta, skip)

    def _evaluate(self, theta: Tensor, skip: Tensor, batch: bool = True) -> tuple[Tensor, Tensor]:
        """Rows ``~skip`` as one batch (unless ``batch`` is false: it has just raised), else
        one by one; ``-inf`` and 0 where skipped or raised.

        ``skip`` ``(C,)`` is a boolean tensor on the CPU; it is updated with the rows that raise.
        """
        index = (~skip).nonzero().flatten()
        parts: list[tuple[Tensor, Tensor, Tensor]] | None = None  # (rows, values, gradients)
        if batch:
            try:
                parts = [(index, *self.raw(theta[index.to(theta.device)]))] if len(index) else []
            except Exception as err:
                if not is_density_error(err):
                    raise
        if parts is None:
            parts = self._one_by_one(theta, index, skip)
        dtype = parts[0][1].dtype if parts else theta.dtype
        value = torch.full((theta.shape[0],), -torch.inf, dtype=dtype, device=theta.device)
        grad = torch.zeros_like(theta)
        for rows, v, g in parts:
            rows = rows.to(theta.device)
            value[rows], grad[rows] = v, g
        if bool(skip.any()):
            self._failed, self._failed_rows = theta.detach().clone(), skip.to(theta.device)
        else:
            self._failed = self._failed_rows = None
        return value, grad

    def _one_by_one(
        self, theta: Tensor, index: Tensor, skip: Tensor
    ) -> list[tuple[Tensor, Tensor, Tensor]]:
        """Rows ``index`` one by one; those that raise are counted and marked in ``skip``."""
        parts = []
        for r in index.tolist():
            row = theta[r : r + 1]
            if not bool(torch.isfinite(row).all()):
                skip[r] = True  # after a non-finite gradient: not the density's failure
                continue
            try:
                parts.append((index.new_tensor([r]), *self.raw(row)))
            except Exception as err:
                if not is_density_error(err):
                    raise
                self._raised[r] += 1
                self.first_error = self.first_error or describe(err)
                skip[r] = True
        return parts


def robust_step(compiled: Callable[..., Any], eager: Callable[..., Any]) -> Callable[..., Any]:
    """A compiled step that takes a :class:`RobustLogDensity` among its arguments.

    The graph runs with the log density's ``raw`` function (always the same object, so one
    graph serves the run). When it raises a density error, or while the log density remembers
    a failure, the call runs ``eager`` (the same step, not compiled) with the robust one.
    """

    def step(*args: Any) -> Any:
        robust = next((a for a in args if isinstance(a, RobustLogDensity)), None)
        if robust is None:
            return compiled(*args)
        if robust.remembers_failure:
            return eager(*args)
        plain = tuple(robust.raw if a is robust else a for a in args)
        try:
            return compiled(*plain)
        except Exception as err:
            if not is_density_error(err):
                raise
        return eager(*args)

    return step
