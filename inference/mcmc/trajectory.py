r"""HMC and NUTS transitions for a batch of chains in lockstep.

**NUTS** (Hoffman & Gelman 2014; the multinomial variant of Betancourt 2017, as in Stan).
Each transition draws a momentum and doubles a trajectory in random directions. Leaf
:math:`k` of the trajectory has weight :math:`w_k = e^{-H_k}`; the new state is drawn
from the leaves with probability proportional to :math:`w_k`, by progressive sampling:
uniform within each new subtree, and *biased* when a new subtree joins the tree
(accept its proposal with probability :math:`\min(1, W_\text{new} / W_\text{old})`).
Doubling stops when the trajectory makes a U-turn,

.. math::
    (M^{-1}p^-)\cdot\rho \le 0 \;\text{ or }\; (M^{-1}p^+)\cdot\rho \le 0,
    \qquad \rho = \textstyle\sum_k p_k,

checked for the whole tree and, inside every new subtree, for each of its aligned blocks of
2, 4, ... leaves (which the recursive algorithm checks as its sub-subtrees); when the energy
error exceeds a threshold (a divergence); or at the maximum depth. A subtree that turns or
diverges is discarded.

Subtrees are built iteratively, leaf by leaf, for all chains at once. Leaf ``n`` of a subtree
closes the blocks ending at ``n``: as many as ``n`` has trailing one bits. Their left ends
are the even leaves ``a = n - 2^m + 1``, and the momentum and running momentum sum of leaf
``a`` are kept in checkpoint slot ``popcount(a)``: leaves whose blocks are still open never
share a slot, so ``max_tree_depth`` slots suffice (the same bookkeeping as NumPyro's iterative
NUTS). A chain that stops is masked: its state no longer changes while the others continue,
and the transition ends when every chain has stopped. A leaf is :func:`nuts_leaf`, a function
whose tensors keep their shapes from leaf to leaf (it writes one checkpoint slot in place,
chosen by an index tensor, and checks all ``max_tree_depth`` slots under a mask of those the
leaf closes); :func:`nuts_leaves` chains a few of them, and ``compile=True`` captures that in
one graph which serves the whole run (:mod:`bayesdl.inference.compilation`). Run eagerly, a
leaf gets Python indices instead and skips what cannot matter: even leaves close no block (no U-turn
check), and odd leaves write no slot (theirs is never read); the draws are the same, bit for bit.

**HMC** runs a fixed number of leapfrog steps per chain (chains with fewer steps are
masked) and accepts the end point with probability :math:`\min(1, e^{H_0 - H_L})`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from ..gradients import LogDensityAndGrad
from ..rng import ChainRNG
from .integrators import IntegratorState, leapfrog, where
from .mass_matrix import Metric

__all__ = [
    "TransitionInfo",
    "draw_transition",
    "hmc_step",
    "hmc_transition",
    "nuts_leaf",
    "nuts_leaves",
    "nuts_trajectory",
    "nuts_transition",
]


@dataclass(frozen=True)
class TransitionInfo:
    """Per-chain statistics of one transition (all of shape ``(C,)``)."""

    acceptance_rate: Tensor
    n_steps: Tensor
    tree_depth: Tensor
    diverging: Tensor
    energy: Tensor


def _energy(state: IntegratorState, metric: Metric) -> Tensor:
    return -state.log_density.double() + metric.kinetic_energy(state.momentum).double()


def _is_turning(metric: Metric, p_start: Tensor, p_end: Tensor, rho: Tensor) -> Tensor:
    """Generalised no-U-turn criterion (Betancourt 2017) for every chain."""
    return ((metric.velocity(p_start) * rho).sum(-1) <= 0) | (
        (metric.velocity(p_end) * rho).sum(-1) <= 0
    )


class _Subtree(NamedTuple):
    """The state of a subtree being built, and the transition's running statistics."""

    edge: IntegratorState  # the leaf most recently added
    building: Tensor  # (C,) chains still extending this subtree
    log_weight: Tensor  # (C,) float64, log of the sum of the leaf weights
    proposal: tuple[Tensor, Tensor, Tensor, Tensor]  # position, log density, grad, energy
    rho: Tensor  # (C, D) sum of the leaves' momenta
    ckpt_velocity: Tensor  # (K, C, D) velocity at the left end of each open block (in place)
    ckpt_rho: Tensor  # (K, C, D) momentum sum before that leaf (in place)
    accept_sum: Tensor  # (C,) float64
    n_steps: Tensor  # (C,) long
    diverging: Tensor  # (C,) bool


#: Whether compiled leaves write their checkpoints out of place: ``None`` (on a GPU only), or
#: forced either way (the tests check on a CPU that both give the same draws).
OUT_OF_PLACE_CHECKPOINTS: bool | None = None


def out_of_place_checkpoints(buffer: Tensor) -> bool:
    """Whether a compiled leaf writes into ``buffer`` out of place (see
    :data:`OUT_OF_PLACE_CHECKPOINTS`)."""
    if OUT_OF_PLACE_CHECKPOINTS is None:
        return buffer.is_cuda
    return OUT_OF_PLACE_CHECKPOINTS


def nuts_leaf(
    sub: _Subtree,
    signed_step: Tensor,
    energy0: Tensor,
    u_leaf: Tensor,
    slot: Tensor | int | None,
    closes: Tensor | slice | None,
    metric: Metric,
    log_density_and_grad: LogDensityAndGrad,
    divergence_threshold: float,
    out_of_place: bool = False,
) -> _Subtree:
    """Add one leaf to every chain's subtree: a leapfrog step and its bookkeeping.

    Writes the leaf's checkpoint into ``sub.ckpt_velocity`` and ``sub.ckpt_rho`` in place (one
    slot: on a CPU, rewriting the whole buffers at every leaf would cost more than the rest of
    the bookkeeping together); on a GPU, in a compiled step, out of place (a CUDA graph may not
    write into its inputs, and the copy is one fused kernel:
    :func:`out_of_place_checkpoints`). The returned subtree holds the buffers written.

    Parameters
    ----------
    sub
        The subtree so far.
    signed_step
        ``(C,)`` step sizes, negative for chains integrating backwards.
    energy0
        ``(C,)`` energy at the start of the transition.
    u_leaf
        ``(C,)`` uniforms of the progressive sampling at this leaf.
    slot, closes
        The checkpoint slot this leaf writes and the slots it closes, in one of two forms.
        Tensors (compiled steps): ``(1,)`` index of the slot and ``(K,)`` mask of the slots
        closed, everything that depends on the leaf's index, so that the operations are the
        same for every leaf and one compiled graph serves the whole trajectory. Python
        values (eager steps, which then skip the work that does not matter): the slot an even
        leaf opens, or ``None`` (an odd leaf's write is never read), and the ``slice`` of the
        slots an odd leaf closes, or ``None`` (an even leaf closes none: no U-turn check).
        Both give the same result.
    metric, log_density_and_grad, divergence_threshold
        As in :func:`nuts_transition`.
    out_of_place
        Write the checkpoint out of place on any device (a loop body may not write into its
        carried tensors: :mod:`.looped`).
    """
    building = sub.building
    edge = leapfrog(sub.edge, torch.where(building, signed_step, 0.0), metric, log_density_and_grad)
    velocity = metric.velocity(edge.momentum)
    energy = -edge.log_density.double() + 0.5 * (edge.momentum * velocity).sum(-1).double()
    delta = energy - energy0
    minus_delta = -delta
    finite = torch.isfinite(delta)
    log_w = torch.where(finite, minus_delta, -math.inf)
    accept = torch.where(building & finite, torch.exp(torch.clamp(minus_delta, max=0.0)), 0.0)
    # progressive sampling within the subtree: the leaf replaces the proposal w.p. w / W
    log_weight = torch.logaddexp(sub.log_weight, log_w)
    take = u_leaf < torch.exp(log_w - log_weight)
    proposal = _select(take, (edge.position, edge.log_density, edge.grad, energy), sub.proposal)
    ckpt_velocity, ckpt_rho = sub.ckpt_velocity, sub.ckpt_rho
    if isinstance(slot, Tensor):
        if out_of_place or out_of_place_checkpoints(ckpt_velocity):  # a CUDA graph or a loop
            ckpt_velocity = ckpt_velocity.index_copy(0, slot, velocity.unsqueeze(0))
            ckpt_rho = ckpt_rho.index_copy(0, slot, sub.rho.unsqueeze(0))
        else:
            ckpt_velocity.index_copy_(0, slot, velocity.unsqueeze(0))
            ckpt_rho.index_copy_(0, slot, sub.rho.unsqueeze(0))
    elif slot is not None:
        ckpt_velocity[slot] = velocity
        ckpt_rho[slot] = sub.rho
    rho = sub.rho + edge.momentum
    stop = ~(delta <= divergence_threshold)  # diverging
    div = stop
    if closes is not None:
        if isinstance(closes, Tensor):
            closing_velocity, closing_rho = ckpt_velocity, ckpt_rho
        else:
            closing_velocity, closing_rho = ckpt_velocity[closes], ckpt_rho[closes]
        block_rho = rho - closing_rho
        turns = ((closing_velocity * block_rho).sum(-1) <= 0) | (
            (velocity * block_rho).sum(-1) <= 0
        )
        if isinstance(closes, Tensor):
            turns = turns & closes[:, None]
        stop = stop | turns.any(0)
    return _Subtree(
        edge=edge,
        building=building & ~stop,
        log_weight=log_weight,
        proposal=proposal,
        rho=rho,
        ckpt_velocity=ckpt_velocity,
        ckpt_rho=ckpt_rho,
        accept_sum=sub.accept_sum + accept,
        n_steps=sub.n_steps + building,
        diverging=sub.diverging | (building & div),
    )


def nuts_leaves(
    sub: _Subtree,
    signed_step: Tensor,
    energy0: Tensor,
    u_leaves: Tensor,
    slots: Tensor,
    closes: Tensor,
    active: Tensor,
    metric: Metric,
    log_density_and_grad: LogDensityAndGrad,
    divergence_threshold: float,
    out_of_place: bool = False,
) -> _Subtree:
    """``L`` consecutive leaves (:func:`nuts_leaf`) in one call, so in one compiled graph.

    ``u_leaves`` ``(C, L)``, ``slots`` ``(L, 1)`` and ``closes`` ``(L, K)`` hold each leaf's
    arguments; leaf ``l > 0`` is discarded unless ``active[l]`` (leaves past the end of a
    subtree shorter than ``L``). Leaves after every chain has stopped cost time but change
    nothing: stopped chains take steps of size zero and their subtrees are discarded.

    With ``L`` even, a call starts at an even leaf of its subtree (calls take ``L`` leaves at a
    time from leaf 0), so the parity of each leaf is known when the graph is built: an even
    leaf closes no block (its U-turn checks over all ``K`` slots are skipped) and an odd
    leaf's checkpoint is never read (not written; see :func:`_leaf_tables`). Skipping them
    changes no result: the masks discarded what they computed.
    """
    paired = u_leaves.shape[1] % 2 == 0
    for i in range(u_leaves.shape[1]):
        new = nuts_leaf(
            sub,
            signed_step,
            energy0,
            u_leaves[:, i],
            None if paired and i % 2 else slots[i],
            None if paired and i % 2 == 0 else closes[i],
            metric,
            log_density_and_grad,
            divergence_threshold,
            out_of_place,
        )
        sub = new if i == 0 else _keep(active[i], new, sub)
    return sub


def _keep(mask: Tensor, new: _Subtree, old: _Subtree) -> _Subtree:
    """``new`` if the 0-d ``mask`` is true, else ``old`` (the checkpoints are shared)."""

    def pick(a: Tensor, b: Tensor) -> Tensor:
        return torch.where(mask, a, b)

    return _Subtree(
        edge=where(mask, new.edge, old.edge),
        building=pick(new.building, old.building),
        log_weight=pick(new.log_weight, old.log_weight),
        proposal=_select(mask, new.proposal, old.proposal),
        rho=pick(new.rho, old.rho),
        ckpt_velocity=new.ckpt_velocity,
        ckpt_rho=new.ckpt_rho,
        accept_sum=pick(new.accept_sum, old.accept_sum),
        n_steps=pick(new.n_steps, old.n_steps),
        diverging=pick(new.diverging, old.diverging),
    )


@functools.cache
def _leaf_tables(
    max_tree_depth: int, leaves_per_call: int, device: torch.device
) -> tuple[Tensor, Tensor, Tensor]:
    """For every leaf index ``n`` of a subtree, the checkpoint slot it writes and those it
    closes; and, for ``k = 0 .. L``, the mask of a call whose first ``k`` leaves are active
    (``L`` is ``leaves_per_call``, at most the leaves of the largest subtree).

    Even leaf ``n`` opens slot ``popcount(n)``. Odd leaf ``n`` closes the blocks ending at it,
    as many as its trailing one bits ``t``, in slots ``popcount(n) - 1`` down to
    ``popcount(n) - t``; it opens nothing, and writes slot ``popcount(n)``, which no open block
    holds (their left ends have fewer one bits than ``n``). Built once per depth, leaves per
    call and device (read-only): building them takes milliseconds, a whole small transition.
    """
    leaves = 2 ** max(max_tree_depth - 1, 0)
    slots = torch.tensor([[n.bit_count()] for n in range(leaves)])
    closes = torch.zeros(leaves, max_tree_depth, dtype=torch.bool)
    for n in range(1, leaves, 2):
        trailing_ones = (~n & (n + 1)).bit_length() - 1
        closes[n, n.bit_count() - trailing_ones : n.bit_count()] = True
    lanes = torch.arange(min(leaves_per_call, leaves) + 1)
    first = lanes[:, None] > lanes[:-1]
    return slots.to(device), closes.to(device), first.to(device)


@functools.cache
def _eager_leaf_tables(max_tree_depth: int) -> tuple[tuple[int | None, slice | None], ...]:
    """For every leaf index ``n`` of a subtree, the slot it writes and the slots it closes in
    the Python form of :func:`nuts_leaf` (see :func:`_leaf_tables`): even leaf ``n`` opens
    slot ``popcount(n)`` and closes none; odd leaf ``n`` writes none (its slot is never read)
    and closes ``popcount(n) - t`` to ``popcount(n) - 1``, ``t`` its trailing one bits."""
    table: list[tuple[int | None, slice | None]] = []
    for n in range(2 ** max(max_tree_depth - 1, 0)):
        if n % 2 == 0:
            table.append((n.bit_count(), None))
        else:
            trailing_ones = (~n & (n + 1)).bit_length() - 1
            table.append((None, slice(n.bit_count() - trailing_ones, n.bit_count())))
    return tuple(table)


def nuts_transition(
    state: IntegratorState,
    step_size: Tensor,
    metric: Metric,
    log_density_and_grad: LogDensityAndGrad,
    rng: ChainRNG,
    max_tree_depth: int = 10,
    divergence_threshold: float = 1000.0,
    leaves: Callable[..., _Subtree] = nuts_leaves,
    leaves_per_call: int = 1,
) -> tuple[IntegratorState, TransitionInfo]:
    """One multinomial NUTS transition for every chain.

    Parameters
    ----------
    state
        Current position, log density and gradient of each chain (momentum is ignored).
    step_size
        ``(C,)`` step sizes.
    metric
        Per-chain mass matrices.
    log_density_and_grad
        ``theta -> (log density, gradient)``.
    rng
        Per-chain random streams; a transition takes, from each chain's stream, one momentum
        and ``2 * max_tree_depth + 2**max_tree_depth`` uniforms (:func:`draw_transition`).
    max_tree_depth
        Maximum number of doublings.
    divergence_threshold
        Energy error above which a trajectory is divergent.
    leaves
        :func:`nuts_leaves` or a compiled version of it.
    leaves_per_call
        Leaves per call of ``leaves`` (at most those of the largest subtree): 2 halves the
        fixed cost of calling a compiled step, much of a leaf's time with few chains on a CPU.
        The draws do not depend on it.

    Returns
    -------
    (IntegratorState, TransitionInfo)
        The new state (momentum zero: it is resampled next time) and the statistics.
    """
    momentum, uniforms = draw_transition(state, metric, rng, max_tree_depth)
    return nuts_trajectory(
        state,
        momentum,
        uniforms,
        step_size,
        metric,
        log_density_and_grad,
        max_tree_depth,
        divergence_threshold,
        leaves,
        leaves_per_call,
    )


def draw_transition(
    state: IntegratorState, metric: Metric, rng: ChainRNG, max_tree_depth: int
) -> tuple[Tensor, Tensor]:
    """The random numbers of one NUTS transition: each chain's momentum ``(C, D)`` and
    ``2 * max_tree_depth + 2**max_tree_depth`` uniforms ``(C, U)`` (directions, merges, leaves:
    the leaves of subtree ``j`` use columns ``2^j - 1`` to ``2^(j+1) - 2`` of the last block)."""
    momentum = metric.sample_momentum(rng.normal(state.position.shape[-1]))
    return momentum, rng.uniform(2 * max_tree_depth + 2**max_tree_depth)


def nuts_trajectory(
    state: IntegratorState,
    momentum: Tensor,
    uniforms: Tensor,
    step_size: Tensor,
    metric: Metric,
    log_density_and_grad: LogDensityAndGrad,
    max_tree_depth: int = 10,
    divergence_threshold: float = 1000.0,
    leaves: Callable[..., _Subtree] = nuts_leaves,
    leaves_per_call: int = 1,
) -> tuple[IntegratorState, TransitionInfo]:
    """The trajectory of :func:`nuts_transition` from its random numbers
    (:func:`draw_transition`), tree logic in Python.

    Notes
    -----
    A chain that has stopped keeps being integrated with step size zero, which leaves its
    state unchanged without masking every tensor; its leaves are never used.
    """
    chains = state.position.shape[0]
    device = state.position.device
    go_right = uniforms[:, :max_tree_depth] < 0.5
    u_merge = uniforms[:, max_tree_depth : 2 * max_tree_depth]
    u_leaf = uniforms[:, 2 * max_tree_depth :]
    slots, closes, first = _leaf_tables(max_tree_depth, leaves_per_call, device)
    per_call = first.shape[1]
    # the plain leaves one at a time: call nuts_leaf directly, with Python indices
    eager = leaves is nuts_leaves and per_call == 1
    eager_tables = _eager_leaf_tables(max_tree_depth)
    u_columns = u_leaf.t()  # u_columns[k]: the uniforms of leaf column k

    start = IntegratorState(state.position, momentum, state.log_density, state.grad)
    energy0 = _energy(start, metric)
    left = right = start
    # no leaf input may alias another (a compiled leaf would need a second graph for that case)
    proposal = (state.position, state.log_density, state.grad, energy0.clone())
    log_weight_tree = torch.zeros(chains, dtype=torch.float64, device=device)
    rho = momentum.clone()
    done = torch.zeros(chains, dtype=torch.bool, device=device)
    depth = torch.zeros(chains, dtype=torch.long, device=device)
    sub = first_subtree(start, proposal, max_tree_depth)

    for j in range(max_tree_depth):
        active = ~done
        if not bool(active.any()):
            break
        depth = depth + active.long()
        forward = go_right[:, j]
        signed_step = torch.where(forward, step_size, -step_size)

        # ---- build a subtree of 2^j leaves from the edge, per_call leaves at a time
        sub = sub._replace(
            edge=where(forward, right, left),
            building=active,
            log_weight=torch.full_like(log_weight_tree, -math.inf),
            proposal=proposal,
            rho=torch.zeros_like(rho),
        )
        for n in range(0, 2**j, per_call):
            column = 2**j - 1 + n  # subtree j uses the uniforms of columns [2^j - 1, 2^(j+1) - 1)
            if eager:  # one leaf, indexed by Python values (see nuts_leaf)
                slot, closing = eager_tables[n]
                sub = nuts_leaf(
                    sub,
                    signed_step,
                    energy0,
                    u_columns[column],
                    slot,
                    closing,
                    metric,
                    log_density_and_grad,
                    divergence_threshold,
                )
            else:
                block = slice(n, n + per_call)
                sub = leaves(
                    sub,
                    signed_step,
                    energy0,
                    u_leaf[:, column : column + per_call],
                    slots[block],
                    closes[block],
                    first[min(per_call, 2**j - n)],
                    metric,
                    log_density_and_grad,
                    divergence_threshold,
                )
            if not bool(sub.building.any()):
                break

        # ---- join the subtree to the tree (chains whose subtree stopped early are done)
        done, left, right, proposal, log_weight_tree, rho = join_subtree(
            sub, forward, u_merge[:, j], done, left, right, proposal, log_weight_tree, rho, metric
        )

    position, log_density, grad, energy = proposal
    info = TransitionInfo(
        acceptance_rate=sub.accept_sum / sub.n_steps.clamp(min=1),
        n_steps=sub.n_steps,
        tree_depth=depth,
        diverging=sub.diverging,
        energy=energy,
    )
    return IntegratorState(position, torch.zeros_like(position), log_density, grad), info


def first_subtree(
    start: IntegratorState, proposal: tuple[Tensor, ...], max_tree_depth: int
) -> _Subtree:
    """A transition's subtree record before its first doubling: statistics and checkpoint
    buffers zero (they carry over from subtree to subtree); the other fields, set at every
    doubling, hold the start point and ``proposal``, with no chain building."""
    chains, dim = start.position.shape
    device = start.position.device
    stopped = torch.zeros(chains, dtype=torch.bool, device=device)
    return _Subtree(
        edge=start,
        building=stopped,
        log_weight=torch.full((chains,), -math.inf, dtype=torch.float64, device=device),
        proposal=proposal,
        rho=torch.zeros_like(start.momentum),
        ckpt_velocity=start.momentum.new_zeros(max_tree_depth, chains, dim),
        ckpt_rho=start.momentum.new_zeros(max_tree_depth, chains, dim),
        accept_sum=torch.zeros(chains, dtype=torch.float64, device=device),
        n_steps=torch.zeros(chains, dtype=torch.long, device=device),
        diverging=torch.zeros_like(stopped),
    )


def join_subtree(
    sub: _Subtree,
    forward: Tensor,
    u_merge: Tensor,
    done: Tensor,
    left: IntegratorState,
    right: IntegratorState,
    proposal: tuple[Tensor, ...],
    log_weight: Tensor,
    rho: Tensor,
    metric: Metric,
) -> tuple[Tensor, IntegratorState, IntegratorState, tuple[Tensor, ...], Tensor, Tensor]:
    r"""Join a finished subtree to the tree, for the chains whose subtree is valid (did not
    turn or diverge inside; the other chains still going are done).

    The subtree's proposal replaces the tree's with probability :math:`\min(1, W_\text{new}
    / W_\text{old})` (``u_merge`` ``(C,)``: biased progressive sampling), its edge becomes
    the tree's edge in its direction (``forward`` ``(C,)``), and a U-turn of the joined tree
    ends the chain. Returns the new ``done, left, right, proposal, log_weight, rho``.
    """
    valid = sub.building
    done = done | ~valid
    take = valid & (u_merge < torch.exp(sub.log_weight - log_weight))
    proposal = _select(take, sub.proposal, proposal)
    log_weight = torch.where(valid, torch.logaddexp(log_weight, sub.log_weight), log_weight)
    rho = torch.where(valid.unsqueeze(-1), rho + sub.rho, rho)
    right = where(valid & forward, sub.edge, right)
    left = where(valid & ~forward, sub.edge, left)
    done = done | (valid & _is_turning(metric, left.momentum, right.momentum, rho))
    return done, left, right, proposal, log_weight, rho


def _select(mask: Tensor, new: tuple[Tensor, ...], old: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """Per chain, the tuple ``new`` where ``mask`` ``(C,)`` is true, else ``old`` (tensors of
    shape ``(C,)`` or ``(C, D)``)."""
    column = mask.unsqueeze(-1)
    return tuple(
        torch.where(mask if a.dim() == 1 else column, a, b) for a, b in zip(new, old, strict=True)
    )


def hmc_step(
    state: IntegratorState,
    step_size: Tensor,
    moving: Tensor,
    energy0: Tensor,
    metric: Metric,
    log_density_and_grad: LogDensityAndGrad,
    divergence_threshold: float,
) -> tuple[IntegratorState, Tensor]:
    """One leapfrog step of the chains still ``moving`` (the others take a step of size zero,
    which leaves them where they are); also which of them diverge."""
    state = leapfrog(state, torch.where(moving, step_size, 0.0), metric, log_density_and_grad)
    return state, moving & ~(_energy(state, metric) - energy0 <= divergence_threshold)


def hmc_transition(
    state: IntegratorState,
    step_size: Tensor,
    metric: Metric,
    log_density_and_grad: LogDensityAndGrad,
    rng: ChainRNG,
    num_steps: Tensor,
    divergence_threshold: float = 1000.0,
    step: Callable[..., tuple[IntegratorState, Tensor]] = hmc_step,
) -> tuple[IntegratorState, TransitionInfo]:
    """One HMC transition with ``num_steps`` ``(C,)`` leapfrog steps per chain.

    Takes one momentum and one uniform from each chain's stream. ``step`` is
    :func:`hmc_step` or a compiled version of it.
    """
    momentum = metric.sample_momentum(rng.normal(state.position.shape[-1]))
    u = rng.uniform(1)[:, 0]
    start = IntegratorState(state.position, momentum, state.log_density, state.grad)
    energy0 = _energy(start, metric)
    current = start
    moving = num_steps > 0
    diverging = torch.zeros_like(moving)
    for k in range(int(num_steps.max())):
        moving = moving & (k < num_steps)
        current, div = step(
            current, step_size, moving, energy0, metric, log_density_and_grad, divergence_threshold
        )
        diverging = diverging | div
        moving = moving & ~div
    delta = _energy(current, metric) - energy0
    accept = torch.where(torch.isfinite(delta), torch.exp(torch.clamp(-delta, max=0.0)), 0.0)
    accepted = ~diverging & (u < accept)
    new_state = where(accepted, current, start)
    info = TransitionInfo(
        acceptance_rate=torch.where(diverging, 0.0, accept),
        n_steps=num_steps.clone(),
        tree_depth=torch.zeros_like(num_steps),
        diverging=diverging,
        energy=_energy(new_state, metric),
    )
    return new_state, info
