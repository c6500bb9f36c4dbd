r"""A whole NUTS transition as one loop of tensors, for :func:`torch.compile` to capture.

:func:`~.trajectory.nuts_transition` drives the tree from Python: a compiled call per one or
two leaves, and some twenty eager operations per doubling. On a small model (a few parameters,
a few chains) that Python is the run: a 3-parameter regression spends about 3 ms per
transition for some 10 microseconds of arithmetic. :func:`looped_nuts_trajectory` is the
same trajectory written as one :func:`torch._higher_order_ops.while_loop` whose body adds one leaf
(:func:`~.trajectory.nuts_leaf`, with the checkpoint slot and the slots it closes read from
tables by the leaf's index) and, when the subtree is complete (all its :math:`2^j` leaves
added, or every chain stopped), joins it to the tree and opens the next one. Everything that
depends on the tree's shape is a tensor (depth ``j``, leaf ``n``, the chains still going), so
:func:`torch.compile` captures the transition in one graph with its control flow, and a call
is one transition.

The draws are those of :func:`~.trajectory.nuts_transition`, up to rounding (bit for bit when
the loop runs uncompiled; ``tests/test_looped.py``): the same random numbers, used in the same
order, and the same operations per leaf. Each iteration adds :data:`LEAVES_PER_ITERATION`
leaves (those past the end of the subtree masked, as :func:`~.trajectory.nuts_leaves` does).
The join is computed at every iteration and kept only where a subtree ends, and the body writes
the checkpoint buffers out of place (a loop's body may not write into what it carries).

Measured (CPU, one thread; ``benchmarks/looped_vs_leaves.py``), per lockstep leapfrog step
against the tree in Python with compiled leaves: kidiq (4 chains, 3 parameters, 434
observations) 20 against 56 microseconds, a 4-chain MLP 10-50-1 on diabetes 137 against 170;
64 chains of it gain nothing (the copies of the checkpoint buffers cost as much as the Python
saved: :data:`~.nuts.LOOP_MAX_ELEMENTS`). The graph takes longer to build the first time
(its C++ wrapper is built apart from its kernels to shorten that: :data:`LOOP_OPTIONS`);
``compile="auto"`` loops only runs long enough to repay that (:func:`~.run.choose_looped`).
Not every density can be captured in the loop by torch 2.13. Two of the benchmark's four
posteriors are not: sblrc's regression, which reads ``.T`` of a tensor it closes over (dynamo
fails on that under :func:`torch.func.grad_and_value` inside the loop, "Expected FakeTensor";
``x.t()`` traces), and the GP regression, a ``MultivariateNormal`` log density (inductor fails
on a :func:`torch.linalg.cholesky` inside the loop, "Expected positional argument", with its
C++ wrapper or without). The run then goes on with the compiled leaves after a
:class:`RuntimeWarning` naming the error (the same transitions, so the same draws), having
spent the failed attempt: with a warm inductor cache, about 0.6 s on sblrc's regression and 2 s
on the GP regression.

Graphs that hold a loop are not cached by :func:`torch.compile` by default;
:data:`LOOP_OPTIONS` marks ``while_loop`` cacheable, which the cache keys by the loop's body
too (tested), so that later runs of the same model and shapes compile in about a second.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor

try:  # a private module of torch 2.x: without it, compiled runs keep the tree in Python
    from torch._higher_order_ops.while_loop import while_loop
except ImportError:  # pragma: no cover - depends on the torch build
    while_loop = None

from ..gradients import LogDensityAndGrad
from .integrators import IntegratorState, where
from .mass_matrix import Metric
from .trajectory import (
    TransitionInfo,
    _energy,
    _leaf_tables,
    _Subtree,
    draw_transition,
    first_subtree,
    join_subtree,
    nuts_leaves,
    nuts_trajectory,
)

__all__ = [
    "LEAVES_PER_ITERATION",
    "LOOP_OPTIONS",
    "available",
    "looped_nuts_trajectory",
    "looped_transition",
    "python_tree_trajectory",
]

#: Inductor's options for the loop: its wrapper in C++ (the loop then runs in compiled code;
#: with the Python wrapper each leaf costs some 20 microseconds of Python, twice the C++
#: wrapper's whole leaf on a small model; compiling takes a few seconds longer), built apart
#: from the kernels (the wrapper at ``-O1``, the kernels at ``-O3``: kidiq's loop compiles in
#: 3.1 s of g++ instead of 7.8 s, at the same speed per step, once the two precompiled
#: headers this needs exist on the machine; the very first build on a machine builds them and
#: takes as long either way, 16 s of g++), and the on-disk cache for graphs holding
#: ``while_loop`` (module docstring).
LOOP_OPTIONS = {
    "cpp_wrapper": True,
    "cpp_wrapper_build_separate": True,
    "unsafe_marked_cacheable_functions": {"torch.ops.higher_order.while_loop": torch.__version__},
}


class _Tree(NamedTuple):
    """The tree of one transition so far (all per chain)."""

    left: IntegratorState
    right: IntegratorState
    proposal: tuple[Tensor, Tensor, Tensor, Tensor]  # position, log density, grad, energy
    log_weight: Tensor  # float64, log of the sum of the leaf weights
    rho: Tensor  # (C, D) sum of the leaves' momenta
    done: Tensor  # bool
    depth: Tensor  # long


def _pack(j: Tensor, n: Tensor, tree: _Tree, sub: _Subtree) -> tuple[Tensor, ...]:
    """The loop's carried state, flat: the subtree ``j`` and its next leaf ``n``, the tree and
    the subtree. (Stacking the tensors by dtype into a few, tried, made a transition slower:
    the views taken back cost more than the handles saved.)"""
    return (
        j,
        n,
        *_fields(tree.left),
        *_fields(tree.right),
        *tree.proposal,
        tree.log_weight,
        tree.rho,
        tree.done,
        tree.depth,
        *_fields(sub.edge),
        sub.building,
        sub.log_weight,
        *sub.proposal,
        sub.rho,
        sub.ckpt_velocity,
        sub.ckpt_rho,
        sub.accept_sum,
        sub.n_steps,
        sub.diverging,
    )


#: The position of ``tree.done`` in :func:`_pack`'s tuple.
_DONE = 16


def _unpack(carried: tuple[Tensor, ...]) -> tuple[Tensor, Tensor, _Tree, _Subtree]:
    """The inverse of :func:`_pack`."""
    j, n, *t = carried
    tree = _Tree(
        left=IntegratorState(*t[0:4]),
        right=IntegratorState(*t[4:8]),
        proposal=tuple(t[8:12]),
        log_weight=t[12],
        rho=t[13],
        done=t[14],
        depth=t[15],
    )
    sub = _Subtree(
        edge=IntegratorState(*t[16:20]),
        building=t[20],
        log_weight=t[21],
        proposal=tuple(t[22:26]),
        rho=t[26],
        ckpt_velocity=t[27],
        ckpt_rho=t[28],
        accept_sum=t[29],
        n_steps=t[30],
        diverging=t[31],
    )
    return j, n, tree, sub


def _fields(state: IntegratorState) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return (state.position, state.momentum, state.log_density, state.grad)


def available() -> bool:
    """Whether this torch has the loop (:func:`torch._higher_order_ops.while_loop`)."""
    return while_loop is not None


#: Leaves per iteration of the loop (leaves past the end of a subtree are masked).
LEAVES_PER_ITERATION = 2


def looped_nuts_trajectory(
    position: Tensor,
    log_density: Tensor,
    grad: Tensor,
    momentum: Tensor,
    uniforms: Tensor,
    step_size: Tensor,
    metric: Metric,
    log_density_and_grad: LogDensityAndGrad,
    slots: Tensor,
    closes: Tensor,
    lanes: Tensor,
    divergence_threshold: float,
) -> tuple[Tensor, ...]:
    """The trajectory of one NUTS transition from drawn ``momentum`` and ``uniforms``.

    A function of tensors only (the tables ``slots`` ``(2^(K-1), 1)`` and ``closes``
    ``(2^(K-1), K)`` from :func:`~.trajectory._leaf_tables`, ``K`` the maximum depth), for
    :func:`torch.compile`. Returns the proposal (position, log density, gradient, energy) and
    the statistics (mean acceptance, leapfrog steps, depth, divergence) per chain.
    """
    chains = position.shape[0]
    max_depth = closes.shape[1]
    device = position.device
    go_right = uniforms[:, :max_depth] < 0.5
    # copies, not views: the loop's closed-over tensors may not alias one another
    u_merge = uniforms[:, max_depth : 2 * max_depth].clone()
    u_leaf = uniforms[:, 2 * max_depth :].clone()
    start = IntegratorState(position, momentum, log_density, grad)
    energy0 = _energy(start, metric)
    minus_inf = torch.full((chains,), -math.inf, dtype=torch.float64, device=device)

    def column(table: Tensor, index: Tensor) -> Tensor:
        """``table[:, index]`` for a 0-d index tensor."""
        return table.index_select(1, index.reshape(1)).squeeze(1)

    def opened(j: Tensor, tree: _Tree, sub: _Subtree) -> _Subtree:
        """The empty subtree ``j`` grown from the edge its direction points to."""
        forward = column(go_right, j.clamp(max=max_depth - 1))
        return sub._replace(
            edge=where(forward, tree.right, tree.left),
            building=~tree.done,
            log_weight=minus_inf,
            proposal=tree.proposal,
            rho=torch.zeros_like(tree.rho),
        )

    def cond(j: Tensor, *carried: Tensor) -> Tensor:
        return (j < max_depth) & (~carried[_DONE - 1]).any()

    def body(*carried: Tensor) -> tuple[Tensor, ...]:
        j, n, tree, sub = _unpack(carried)
        forward = column(go_right, j)
        leaf = n + lanes  # this iteration's leaves; those past the subtree's end are masked
        size = 1 << j
        sub = nuts_leaves(
            sub,
            torch.where(forward, step_size, -step_size),
            energy0,
            u_leaf.index_select(1, (size - 1 + leaf).clamp(max=u_leaf.shape[1] - 1)),
            slots.index_select(0, leaf.clamp(max=slots.shape[0] - 1)),
            closes.index_select(0, leaf.clamp(max=closes.shape[0] - 1)),
            leaf < size,
            metric,
            log_density_and_grad,
            divergence_threshold,
            out_of_place=True,
        )
        n = n + lanes.shape[0]
        finished = (n >= size) | ~sub.building.any()
        # where the subtree is finished: join it, and open the next one
        done, left, right, proposal, log_weight, rho = join_subtree(
            sub,
            forward,
            column(u_merge, j),
            tree.done,
            tree.left,
            tree.right,
            tree.proposal,
            tree.log_weight,
            tree.rho,
            metric,
        )
        next_j = j + 1
        depth = tree.depth + (~done & (next_j < max_depth)).long()
        joined = _Tree(left, right, proposal, log_weight, rho, done, depth)
        after = _pack(next_j, torch.zeros_like(n), joined, opened(next_j, joined, sub))
        return tuple(  # what carries over from subtree to subtree is selected by neither
            a if a is b else torch.where(finished, a, b)
            for a, b in zip(after, _pack(j, n, tree, sub), strict=True)
        )

    done = torch.zeros(chains, dtype=torch.bool, device=device)
    proposal = (position, log_density, grad, energy0)
    tree = _Tree(
        left=start,
        right=start,
        proposal=proposal,
        log_weight=torch.zeros(chains, dtype=torch.float64, device=device),
        rho=momentum,
        done=done,
        depth=torch.ones(chains, dtype=torch.long, device=device),
    )
    sub = first_subtree(start, proposal, max_depth)
    j = torch.zeros((), dtype=torch.long, device=device)
    # copies: a loop may not carry one tensor twice, nor its own inputs
    carried = tuple(t.clone() for t in _pack(j, torch.zeros_like(j), tree, opened(j, tree, sub)))
    _, _, tree, sub = _unpack(while_loop(cond, body, carried))
    acceptance_rate = sub.accept_sum / sub.n_steps.clamp(min=1)
    return (*tree.proposal, acceptance_rate, sub.n_steps, tree.depth, sub.diverging)


def _flat_results(state: IntegratorState, info: TransitionInfo) -> tuple[Tensor, ...]:
    """A transition's result as :func:`looped_nuts_trajectory` returns it."""
    return (
        state.position,
        state.log_density,
        state.grad,
        info.energy,
        info.acceptance_rate,
        info.n_steps,
        info.tree_depth,
        info.diverging,
    )


def _from_flat_results(results: tuple[Tensor, ...]) -> tuple[IntegratorState, TransitionInfo]:
    """The inverse of :func:`_flat_results` (momentum zero: it is drawn anew next time)."""
    position, log_density, grad, energy, accept, n_steps, depth, diverging = results
    info = TransitionInfo(accept, n_steps, depth, diverging, energy)
    return IntegratorState(position, torch.zeros_like(position), log_density, grad), info


def python_tree_trajectory(leaves: Callable[..., Any], leaves_per_call: int) -> Callable[..., Any]:
    """:func:`looped_nuts_trajectory`'s signature and results, computed by
    :func:`~.trajectory.nuts_trajectory` (the tree in Python) with ``leaves`` (the plain
    :func:`~.trajectory.nuts_leaves` or a compiled version) ``leaves_per_call`` at a time: what
    runs when the loop cannot be compiled, or a density raised inside it."""

    def trajectory(
        position,
        log_density,
        grad,
        momentum,
        uniforms,
        step_size,
        metric,
        log_density_and_grad,
        slots,
        closes,
        lanes,
        divergence_threshold,
    ):
        state = IntegratorState(position, torch.zeros_like(position), log_density, grad)
        new, info = nuts_trajectory(
            state,
            momentum,
            uniforms,
            step_size,
            metric,
            log_density_and_grad,
            closes.shape[1],
            divergence_threshold,
            leaves,
            leaves_per_call,
        )
        return _flat_results(new, info)

    trajectory.__name__ = f"the tree in Python with {leaves_per_call} leaves per call"
    return trajectory


def looped_transition(
    max_tree_depth: int,
    trajectory: Callable[..., Any],
    leaves_per_iteration: int = 1,
    divergence_threshold: float = 1000.0,
) -> Callable[..., tuple[IntegratorState, TransitionInfo]]:
    """A NUTS :data:`~.run.Transition` that draws its random numbers
    (:func:`~.trajectory.draw_transition`) and runs ``trajectory`` on them:
    :func:`looped_nuts_trajectory` (``leaves_per_iteration`` leaves per iteration of its
    loop), a compiled version of it, or :func:`python_tree_trajectory`. The random numbers
    are those of :func:`~.trajectory.nuts_transition`, and the draws do not depend on
    ``leaves_per_iteration``."""

    def transition(state, step_size, metric, log_density_and_grad, rng):
        momentum, uniforms = draw_transition(state, metric, rng, max_tree_depth)
        device = state.position.device
        slots, closes, _ = _leaf_tables(max_tree_depth, 1, device)
        lanes = _lanes(leaves_per_iteration, device)
        results = trajectory(
            state.position,
            state.log_density,
            state.grad,
            momentum,
            uniforms,
            step_size,
            metric,
            log_density_and_grad,
            slots,
            closes,
            lanes,
            divergence_threshold,
        )
        return _from_flat_results(results)

    return transition


@functools.cache
def _lanes(leaves_per_iteration: int, device: torch.device) -> Tensor:
    """``arange(leaves_per_iteration)`` on ``device`` (read-only; its shape tells the loop how
    many leaves an iteration adds)."""
    return torch.arange(leaves_per_iteration, device=device)
