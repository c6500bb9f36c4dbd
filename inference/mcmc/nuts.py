"""The No-U-Turn Sampler (Hoffman & Gelman 2014) as a bayesdl backend."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pyro
import torch
from pyro.infer.autoguide.initialization import init_to_value
from torch import Tensor

from bayesdl._checks import check_count

from ..compilation import compile_step
from . import looped
from .hmc import BNN_MAX_TREE_DEPTH, MAX_TREE_DEPTH, HamiltonianBackend
from .looped import (
    LOOP_OPTIONS,
    looped_nuts_trajectory,
    looped_transition,
    python_tree_trajectory,
)
from .robust import robust_step
from .run import Transition
from .trajectory import nuts_leaves, nuts_transition

__all__ = ["NUTS"]


#: Leaves per call of a compiled step on a CPU: two halve the fixed cost of a call.
CPU_LEAVES_PER_CALL = 2
#: On a GPU, where a call is a CUDA-graph replay plus copies in and out and a host sync
#: (about two leaves' time with 64 chains), eight leaves per call; leaves past the end of a
#: shorter subtree are discarded (:func:`~.trajectory.nuts_leaves`).
CUDA_LEAVES_PER_CALL = 8


def leaves_per_call(device: torch.device) -> int:
    """Leaves per call of the compiled NUTS step on ``device``."""
    return CUDA_LEAVES_PER_CALL if device.type == "cuda" else CPU_LEAVES_PER_CALL


#: The most elements ``chains * dim * max_tree_depth`` of the checkpoint buffers for which
#: ``compile="auto"`` may capture whole trajectories (:mod:`.looped`): the loop's body copies
#: them at every iteration (it may not write into what it carries). Measured per lockstep
#: leapfrog step (``benchmarks/looped_vs_leaves.py``): the loop 2.8x faster on kidiq (4 x 3 x
#: 10 elements), 1.24x on a 4-chain MLP 10-50-1 (4 x 601 x 8), no faster with 64 chains of it
#: (64 x 601 x 8; 0.76-1.02x over four pairs of runs).
LOOP_MAX_ELEMENTS = 2**16


def _compiled_leaves() -> Callable[..., Any]:
    """:func:`~.trajectory.nuts_leaves` compiled, rerun eagerly where the density raises
    (:mod:`.robust`)."""
    return robust_step(compile_step(nuts_leaves), nuts_leaves)


class NUTS(HamiltonianBackend):
    """No-U-Turn Hamiltonian Monte Carlo on the full data set.

    Multinomial NUTS with the generalised U-turn criterion, as in Stan. Warmup adapts a
    per-chain step size by dual averaging towards ``target_accept`` and per-chain mass matrices
    (diagonal or dense) from windowed variance estimates, as Stan does; the warmup draws are
    discarded. With the default ``engine="bayesdl"`` all chains advance together as one batch
    on ``bnn.log_joint`` (chains whose trajectories stop early wait, masked, for the others);
    ``engine="pyro"`` runs Pyro's NUTS on ``bnn.model``, one kernel per chain.

    Parameters
    ----------
    chains
        Number of independent chains.
    warmup
        Adaptation steps per chain (discarded).
    draws
        Kept draws per chain.
    target_accept
        Target mean acceptance statistic of the step-size adaptation, in (0, 1).
    max_tree_depth
        Maximum number of trajectory doublings (at most ``2**max_tree_depth - 1`` leapfrog
        steps per draw). Default (``None``): :data:`~.hmc.BNN_MAX_TREE_DEPTH` ``= 6`` in
        ``fit`` on a BNN, where trees otherwise grow to depth 8-10 and the defaults take an
        hour on the quickstart's MLP, and Stan's :data:`~.hmc.MAX_TREE_DEPTH` ``= 10`` in
        ``sample`` (see :class:`~.hmc.HamiltonianBackend`). When trees hit the cap in most
        iterations, the progress bar's ``capped`` and a warning at the end of the run say so.
    mass
        ``"diag"`` or ``"dense"`` mass-matrix adaptation.
    engine
        ``"bayesdl"`` (vectorised chains, any device) or ``"pyro"``.
    step_size
        Initial step size (default: Hoffman & Gelman's heuristic).
    jit
        Compile Pyro's potential with TorchScript (``engine="pyro"`` only; without it Pyro
        re-runs the model at every gradient and takes minutes per hundred draws).
    compile
        ``"auto"`` (default): run the first transitions eagerly and compile the rest when the
        run is long enough to repay compiling (:func:`~.run.choose_compiled`: a projected
        10,000 leapfrog steps of the batch, and a C++ compiler on a CPU; ``attrs["compiled"]``
        says what was chosen). On a CPU, a run projected to 40,000 such steps captures whole
        trajectories in one graph instead (:mod:`.looped`, :func:`~.run.choose_looped`;
        ``attrs["looped"]``). ``True``:
        capture the trajectory's leaves (leapfrog step, gradient and tree bookkeeping), two
        per call (eight, in a CUDA graph, on a GPU), in one :func:`torch.compile` graph
        (bayesdl engine only); ``False``: never. Compiling takes 5-30 s once per run; after
        that a leaf takes 3-6x less time than eagerly on a CPU (``benchmarks/RESULTS.md``).
        The log density must be traceable by :func:`torch.func` (BNNs are) and must not
        change during the run; if compilation fails, the run goes on eagerly after a
        ``RuntimeWarning`` (a whole-trajectory loop that fails goes on with the compiled
        leaves: torch 2.13 cannot loop a density that reads ``.T`` of a tensor it closes
        over, write ``x.t()``, nor one with a Cholesky factorisation, as a
        ``MultivariateNormal``'s; :mod:`.looped`). A call whose density raises is rerun
        eagerly (see below).

    Notes
    -----
    **Densities that raise.** When the log density or its gradient raises at one chain's
    proposal (``ValueError``, ``RuntimeError`` such as :class:`torch.linalg.LinAlgError`,
    ``ArithmeticError``; e.g. a ``MultivariateNormal`` whose covariance is not numerically
    positive definite), the chains are evaluated one by one and the proposal of each chain
    that raises gets log density ``-inf``: a divergent transition of that chain only, while
    the others go on (:mod:`.robust`). ``sample_stats["density_raised"]`` counts these
    evaluations per chain and draw (``attrs["density_raised_warmup"]`` over the warmup), and a
    :class:`~bayesdl.inference.DensityErrorWarning` at the end of the run names the error.
    At the starting point a density that raises is a ``ValueError`` naming ``init_theta``,
    the chains and the error. Densities that return NaN or ``-inf`` need none of this: a
    non-finite density or gradient is a divergence.

    Examples
    --------
    >>> post = NUTS(chains=4, warmup=500, draws=500).fit(bnn, x, y, seed=0)  # doctest: +SKIP
    >>> post = NUTS(chains=4).sample(log_density, torch.zeros(4, 2), seed=0)  # doctest: +SKIP
    """

    name = "nuts"

    def __init__(
        self,
        chains: int = 4,
        warmup: int = 1000,
        draws: int = 1000,
        target_accept: float = 0.8,
        max_tree_depth: int | None = None,
        mass: str = "diag",
        engine: str = "bayesdl",
        step_size: float | None = None,
        jit: bool = True,
        compile: bool | str = "auto",
    ) -> None:
        super().__init__(
            chains, warmup, draws, target_accept, mass, engine, step_size, jit, compile
        )
        self.max_tree_depth = (
            None if max_tree_depth is None else check_count("max_tree_depth", max_tree_depth)
        )

    def _depth(self, for_bnn: bool) -> int:
        if self.max_tree_depth is not None:
            return self.max_tree_depth
        return BNN_MAX_TREE_DEPTH if for_bnn else MAX_TREE_DEPTH

    def _caps(self, for_bnn: bool) -> dict[str, int | None]:
        return {"max_tree_depth": self._depth(for_bnn), "max_steps": None}

    def _transition(self, for_bnn: bool, device: torch.device, compiled: bool) -> Transition:
        depth = self._depth(for_bnn)
        leaves = nuts_leaves
        per_call = 1
        if compiled:
            leaves, per_call = _compiled_leaves(), leaves_per_call(device)

        def transition(state, step_size, metric, log_density_and_grad, rng):
            return nuts_transition(
                state,
                step_size,
                metric,
                log_density_and_grad,
                rng,
                max_tree_depth=depth,
                leaves=leaves,
                leaves_per_call=per_call,
            )

        return transition

    def _looped_transition(self, for_bnn: bool, init_theta: Tensor) -> Transition | None:
        depth = self._depth(for_bnn)
        chains, dim = init_theta.shape
        if init_theta.is_cuda or not looped.available():  # CUDA graphs cannot hold the loop
            return None
        if chains * dim * depth > LOOP_MAX_ELEMENTS:
            return None
        trajectory = compile_step(
            looped_nuts_trajectory,
            fallback=python_tree_trajectory(_compiled_leaves(), CPU_LEAVES_PER_CALL),
            options=LOOP_OPTIONS,
            note=(
                ", the same transitions (torch cannot capture every density in the loop: see"
                " bayesdl.inference.mcmc.looped)"
            ),
        )
        eager = python_tree_trajectory(nuts_leaves, 1)  # where the density raises
        return looped_transition(depth, robust_step(trajectory, eager), looped.LEAVES_PER_ITERATION)

    def _pyro_kernel(self, model: Callable[..., Any], init_values: dict[str, Tensor]) -> Any:
        return pyro.infer.NUTS(
            model,
            target_accept_prob=self.target_accept,
            max_tree_depth=self._depth(for_bnn=True),
            full_mass=self.mass == "dense",
            jit_compile=self.jit,
            ignore_jit_warnings=True,
            init_strategy=init_to_value(values=init_values),
            **({} if self.step_size is None else {"step_size": self.step_size}),
        )
