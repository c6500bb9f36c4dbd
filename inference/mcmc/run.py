"""The MCMC algorithm of the bayesdl engine: warmup with adaptation, then sampling, chains batched.

:class:`MCMCAlgorithm` takes a transition (NUTS or HMC, from :mod:`.trajectory`), a log
density over ``theta (C, D)`` and initial values, and is run by the one driver
(:func:`~bayesdl.inference.driver.run`: progress bar, callbacks, Ctrl-C, NaN guard,
checkpoints and resume) through :func:`run_mcmc`. Everything that changes from transition to
transition is in its :class:`MCMCState` record, so a run resumed from a checkpoint gives the
draws of the run that was never stopped, bit for bit.

Warmup adapts a per-chain step size by dual averaging and per-chain mass matrices in Stan's
windows (:mod:`.adaptation`); the warmup draws are discarded. The result is a
:class:`~bayesdl.Posterior` whose ``sample_stats`` use ArviZ's names: ``lp``,
``acceptance_rate``, ``step_size``, ``tree_depth``, ``n_steps``, ``diverging``, ``energy``;
and ``density_raised``, the number of evaluations of the log density that raised in each
transition of each chain (:mod:`.robust`: each made that transition divergent; with
``compile=True`` the count also includes leaves computed past the end of a subtree, two leaves
per call, which are discarded). The same count over the warmup is
``attrs["density_raised_warmup"]``, and the first such error ``attrs["density_error"]``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from bayesdl.distributed import all_reduce_max, all_reduce_sum
from bayesdl.posterior import Posterior

from ..base import finish
from ..compilation import compiler_available, skip_guard_checks
from ..driver import Algorithm, RunControl, Seeds, gather_chains, run
from ..gradients import functional_value_and_grad, value_and_grad
from ..health import ProgressMonitor
from ..rng import ChainRNG
from ..state import state_record
from .adaptation import Adaptation, Warmup, find_step_size
from .integrators import IntegratorState
from .mass_matrix import Metric
from .robust import DensityMemory, RobustLogDensity, start_values
from .trajectory import TransitionInfo

if TYPE_CHECKING:  # pragma: no cover
    from bayesdl.inputs import Inputs
    from bayesdl.models import BNN

__all__ = ["MCMCAlgorithm", "MCMCState", "Transition", "run_mcmc"]

#: ``(state, step_size, metric, log_density_and_grad, rng) -> (state, info)``.
Transition = Callable[..., tuple[IntegratorState, TransitionInfo]]


@state_record
class MCMCState:
    """The state of a run of :class:`MCMCAlgorithm` between two transitions.

    Attributes
    ----------
    integrator
        Every chain's position, log density and gradient (momentum zero: each transition
        draws a new one).
    step_size
        ``(C,)`` step sizes of the next transition.
    metric
        The per-chain mass matrices (:class:`~.mass_matrix.Metric`).
    adaptation
        Dual averaging and the open mass-matrix window's estimate (used while warming up).
    rng
        Each chain's random stream.
    density
        What each :class:`~.robust.RobustLogDensity` of the run remembers (one, or two with
        ``compile=True``: the eager one and the compiled step's): the first error raised and
        the last failed positions.
    raised_warmup
        ``(C,)`` evaluations of the log density that raised during the warmup.
    divergences
        Divergent transitions while sampling, over all chains (for the progress bar).
    compiled
        Whether the transitions run the compiled step; ``None`` while ``compile="auto"`` has
        not decided yet (:func:`choose_compiled`).
    looped
        Whether ``compile="auto"`` chose whole compiled trajectories (NUTS on a CPU, a long
        run: :func:`choose_looped`).
    leaves
        Leapfrog steps of the lockstep batch (per transition, the most of any chain) while
        ``compile="auto"`` probes.
    """

    integrator: IntegratorState
    step_size: Tensor
    metric: Metric
    adaptation: Adaptation
    rng: ChainRNG
    density: list[DensityMemory]
    raised_warmup: Tensor
    divergences: int = 0
    compiled: bool | None = None
    looped: bool = False
    leaves: int = 0


class MCMCAlgorithm(Algorithm[MCMCState]):
    """``len(init_theta)`` chains of ``transition`` in lockstep: warmup, then sampling.

    Parameters
    ----------
    transition
        One NUTS or HMC transition of every chain (:data:`Transition`).
    log_density
        ``theta (C, D) -> (C,)``.
    init_theta
        Initial values ``(C, D)``; the log density must be finite there.
    seeds
        The run's seeds (each chain's random stream: :meth:`~..driver.Seeds.chain_rng`).
    warmup, draws
        Number of warmup transitions (discarded) and of kept draws.
    target_accept, dense_mass
        The warmup's adaptation (:class:`~.adaptation.Warmup`).
    step_size
        Initial step size; ``None`` finds one with Hoffman & Gelman's heuristic. With
        ``warmup=0`` it is used as is (no adaptation).
    compile
        ``True``: ``transition`` runs a compiled step (:mod:`bayesdl.inference.compilation`);
        its gradient is then taken with :func:`torch.func`
        (:func:`~bayesdl.inference.gradients.functional_value_and_grad`). ``"auto"``:
        ``transition`` is the eager one and ``compiled_transition`` the compiled one, chosen
        after the first transitions (:func:`choose_compiled`). Either way the transition gets
        a :class:`~.robust.RobustLogDensity`.
    compiled_transition
        With ``compile="auto"``, the compiled transition.
    looped_transition
        With ``compile="auto"``, a compiled transition that captures whole trajectories
        (:mod:`.looped`), where the chains' state is small enough, or ``None``.
    max_tree_depth, bnn, probe
        For the progress bar (:class:`~bayesdl.inference.health.ProgressMonitor`): the share
        of iterations at the depth cap, and the function-space R-hat at the probe inputs (with
        ``bnn``). Display only: rebuilt on resume, it never changes the draws.
    """

    def __init__(
        self,
        transition: Transition,
        log_density: Callable[[Tensor], Tensor],
        init_theta: Tensor,
        seeds: Seeds,
        *,
        warmup: int,
        draws: int,
        target_accept: float,
        dense_mass: bool,
        step_size: float | None,
        compile: bool | str = False,
        compiled_transition: Transition | None = None,
        looped_transition: Transition | None = None,
        max_tree_depth: int | None = None,
        bnn: BNN | None = None,
        probe: Inputs | None = None,
    ) -> None:
        chains = init_theta.shape[0]
        self.transition = transition
        self.compiled_transition = compiled_transition
        self.looped_transition = looped_transition
        self.init_theta = init_theta
        self.seeds = seeds
        self.warmup, self.draws = warmup, draws
        self.adapt = Warmup(warmup, target_accept, dense_mass)
        self.dense_mass = dense_mass
        self.step_size = step_size
        self.compile = compile
        self.density = RobustLogDensity(value_and_grad(log_density), chains)
        self.step_density = (
            RobustLogDensity(functional_value_and_grad(log_density), chains)
            if compile
            else self.density
        )
        self.total = warmup + draws
        self.densities = [self.density] if not compile else [self.density, self.step_density]
        self.monitor = ProgressMonitor(max_tree_depth, bnn, probe)

    def _lockstep_steps(self, info: TransitionInfo) -> int:
        """The most leapfrog steps any chain took in the transition; over every process when
        the chains are split over processes, so that all of them (and a run in one process)
        make the same ``compile="auto"`` choice."""
        steps = int(info.n_steps.max())
        return steps if self.seeds.block is None else all_reduce_max(steps)

    def stages(self) -> list[tuple[str, int]]:
        return [("warmup", self.warmup), ("sampling", self.draws)]

    def _take_raised(self) -> Tensor:
        """``(C,)`` evaluations that raised since the last call, over the run's densities."""
        raised = self.density.take_raised()
        return raised if not self.compile else raised + self.step_density.take_raised()

    def init(self) -> MCMCState:
        """Start at ``init_theta`` with a unit metric and the initial step size.

        Raises
        ------
        ValueError
            Naming ``init_theta`` and the chains, where the log density raises or is not
            finite at the starting point.
        """
        theta = self.init_theta.detach()
        chains, dim = theta.shape
        log_density, grad = start_values(self.density.raw, theta)
        bad = (~torch.isfinite(log_density)).nonzero().flatten().tolist()
        if bad:
            raise ValueError(f"init_theta: the log density is not finite for chain(s) {bad}")
        integrator = IntegratorState(theta, torch.zeros_like(theta), log_density, grad)
        rng = self.seeds.chain_rng(theta.device, theta.dtype)
        metric = Metric.identity(chains, dim, self.dense_mass, theta)
        first = 1.0 if self.step_size is None else self.step_size
        eps = torch.full((chains,), first, dtype=theta.dtype, device=theta.device)
        if self.step_size is None:
            eps = find_step_size(integrator, eps, metric, self.density, rng)
        return MCMCState(
            integrator=integrator,
            step_size=eps,
            metric=metric,
            adaptation=self.adapt.init(eps),
            rng=rng,
            density=[d.memory() for d in self.densities],
            raised_warmup=self._take_raised(),
            compiled=None if self.compile == "auto" else bool(self.compile),
        )

    def step(self, state: MCMCState, stage: str, i: int) -> tuple[MCMCState, dict[str, Any]]:
        """One transition of every chain; while warming up, then one adaptation step."""
        for density, memory in zip(self.densities, state.density, strict=True):
            density.recall(memory)
        used_eps = state.step_size
        if state.looped and self.looped_transition is not None:  # chosen by "auto"
            transition, density = self.looped_transition, self.step_density
        elif state.compiled and self.compiled_transition is not None:  # chosen by "auto"
            transition, density = self.compiled_transition, self.step_density
        else:
            transition = self.transition
            density = self.density if self.compile == "auto" else self.step_density
        with skip_guard_checks() if state.compiled else contextlib.nullcontext():
            integrator, info = transition(
                state.integrator, used_eps, state.metric, density, state.rng
            )
        state.integrator = integrator
        done = i + 1 if stage == "warmup" else self.warmup + i + 1
        if state.compiled is None:  # compile="auto" probing
            state.leaves += self._lockstep_steps(info)
            per_transition = state.leaves / done
            if self._probed(done, state.leaves, per_transition):
                device = integrator.position.device
                state.compiled = choose_compiled(per_transition, self.total, device)
                state.looped = state.compiled and choose_looped(
                    per_transition, self.total, self.looped_transition is not None
                )
        out: dict[str, Any] = {}
        if stage == "warmup":

            def retune(eps: Tensor, metric: Metric) -> Tensor:
                return find_step_size(integrator, eps, metric, self.density, state.rng)

            state.step_size, state.metric = self.adapt.update(
                state.adaptation, i, integrator, info.acceptance_rate, state.metric, retune
            )
            state.raised_warmup = state.raised_warmup + self._take_raised()
        else:
            raised = self._take_raised()
            out["draw"] = (integrator.position, _draw_stats(integrator, info, used_eps, raised))
            state.divergences += int(info.diverging.sum())
        state.density = [d.memory() for d in self.densities]
        out.update(
            finite=bool(torch.isfinite(integrator.log_density).all()),
            info=info,
            n_steps=info.n_steps,
            postfix={
                "step": f"{float(used_eps.mean()):.2g}",
                "accept": f"{float(info.acceptance_rate.mean()):.2f}",
                "depth": f"{float(info.tree_depth.float().mean()):.1f}",
                "div": state.divergences,
                **self.monitor.update(stage, integrator.position, info.tree_depth),
            },
        )
        return state, out

    def _probed(self, done: int, leaves: int, leaves_per_transition: float) -> bool:
        """Whether ``compile="auto"`` has probed enough after ``done`` transitions that took
        ``leaves`` lockstep leapfrog steps: :data:`AUTO_PROBE` transitions, or
        :data:`AUTO_PROBE_LEAVES` steps, or the whole run; or, where no loop can be chosen (a
        large state, a GPU: ``looped_transition`` is ``None``), a projection that already
        reaches :data:`AUTO_MIN_LEAVES`. The probe then only decides whether to compile, and
        an eager transition of a large state costs several compiled ones (a 64-chain MLP
        10-50-1 at depth 8: about 3 s against 0.5 s); a shorter projection waits for the full
        probe, so that a shallow first tree does not rule compiling out. That early end only in
        one process: ranks holding different numbers of chains may differ on the loop, and all
        of them must stop probing (a collective) at the same transition."""
        if done >= AUTO_PROBE or leaves >= AUTO_PROBE_LEAVES or done == self.total:
            return True
        return (
            self.seeds.block is None
            and self.looped_transition is None
            and leaves_per_transition * self.total >= AUTO_MIN_LEAVES
        )


#: ``compile="auto"`` decides after this many transitions (run eagerly), or ...
AUTO_PROBE = 10
#: ... as soon as they took this many lockstep leapfrog steps (deep trees from the start: a
#: 4-chain BNN at depth 8 decides after 4 transitions, not 10, saving a second of eager steps).
AUTO_PROBE_LEAVES = 1_000
#: ... to compile when the whole run's lockstep leapfrog steps, projected from those, reach
#: this many (see :func:`choose_compiled`).
AUTO_MIN_LEAVES = 10_000


def choose_compiled(leaves_per_transition: float, transitions: int, device: torch.device) -> bool:
    r"""``compile="auto"``'s choice: compile when the run is long enough to repay compiling.

    Compiling costs a fixed time (about 5-20 s on a CPU, for the first graph of a run) and
    saves a time per leapfrog step of the vectorised batch. On the four posteriordb models of
    ``benchmarks/small_models.py`` (4 chains x 2,000 transitions, 10,000-40,000 lockstep
    steps) compiled runs took 7-15 s against eager runs' 12-36 s, compilation included, the
    compiled run slower only once (eight schools, 14.7 s against 12.0 s, about 20,000 steps);
    on a BNN every default-length run is long enough. The choice is made on the run's
    projected number of such steps, :math:`\bar L \times (\text{warmup} + \text{draws})`
    with :math:`\bar L` the mean over the first :data:`AUTO_PROBE` transitions (or fewer, once
    they took :data:`AUTO_PROBE_LEAVES`, or once the projection reaches the threshold where no
    loop can be chosen: :meth:`MCMCAlgorithm._probed`) of the most leapfrog steps any
    chain took, against
    :data:`AUTO_MIN_LEAVES` (the measurements behind
    it are in ``benchmarks/RESULTS.md``). It depends only on the run's own transitions, so the
    same seed gives the same choice and the same draws. Never on a CPU without a C++
    compiler (``torch.compile`` would fall back after a warning).
    """
    if leaves_per_transition * transitions < AUTO_MIN_LEAVES:
        return False
    return compiler_available(device)


#: ``compile="auto"`` captures whole trajectories (where it can) when the run's projected
#: lockstep leapfrog steps reach this many (see :func:`choose_looped`).
AUTO_MIN_LOOPED_LEAVES = 40_000


def choose_looped(leaves_per_transition: float, transitions: int, available: bool) -> bool:
    r"""``compile="auto"``'s second choice, once it compiles: whole trajectories in one graph
    (:mod:`.looped`, where ``available``) rather than the tree in Python with compiled leaves.

    The loop saves the tree's Python: per lockstep leapfrog step, 36 microseconds on a 4-chain
    3-parameter regression, 33 on a 4-chain MLP (where the chains' state is small:
    :data:`~.nuts.LOOP_MAX_ELEMENTS`; ``benchmarks/looped_vs_leaves.py``). Its graph
    takes longer to build the first time, its C++ wrapper built apart from its kernels
    (:data:`~.looped.LOOP_OPTIONS`). Whole runs from an empty inductor cache
    (``benchmarks/RESULTS.md``, "The loop's wrapper built apart"):

    - kidiq, 4 x 1,000 + 1,000: 10.1 s looped against 11.0 s with the compiled leaves;
    - a 4-chain MLP at depth 8, 100 + 100: 25.7 against 23.3 s.

    From the on-disk cache of an earlier run they take 3.6-3.8 against 6.9-7.1 s, and 11.3
    against 12.9 s. The choice: a projected
    :math:`\bar L \times (\text{warmup} + \text{draws})` (as :func:`choose_compiled`) of
    at least :data:`AUTO_MIN_LOOPED_LEAVES`. The first transitions predict a run poorly:
    kidiq's project 12,800-105,600 steps over seeds 0-4 and its runs take 137,000-145,000
    (so it loops for some seeds only); the MLP's run projected just under 40,000, and keeps
    the compiled leaves. A lower threshold would have the densities the loop cannot capture
    (:mod:`.looped`) pay a failed build, and a warning, in more runs.
    """
    return available and leaves_per_transition * transitions >= AUTO_MIN_LOOPED_LEAVES


def _draw_stats(
    integrator: IntegratorState, info: TransitionInfo, step_size: Tensor, raised: Tensor
) -> dict[str, Tensor]:
    """A kept draw's ``sample_stats``, per chain."""
    return {
        "lp": integrator.log_density,
        "acceptance_rate": info.acceptance_rate,
        "step_size": step_size,
        "tree_depth": info.tree_depth,
        "n_steps": info.n_steps,
        "diverging": info.diverging,
        "energy": info.energy,
        "density_raised": raised,
    }


def run_mcmc(
    algorithm: MCMCAlgorithm,
    control: RunControl,
    *,
    desc: str,
    identity: Mapping[str, Any],
    bnn: BNN | None = None,
    attrs: Mapping[str, Any] | None = None,
    seeds: Seeds | None = None,
) -> Posterior:
    """Run ``algorithm`` on the driver (:func:`~bayesdl.inference.driver.run`); its Posterior.

    Parameters
    ----------
    control
        Progress, callbacks, checkpoint and resume.
    desc
        The progress bar's label.
    identity
        What a checkpoint must match to be resumed.
    bnn
        The model of the Posterior (``None`` for a generic log density).
    attrs
        The backend's attributes of the Posterior; the run adds ``warmup``, ``stopped``,
        ``density_raised_warmup`` and ``density_error``.
    seeds
        The run's seeds; in a run whose chains are split over processes (``seeds.block``),
        rank 0's Posterior gathers every chain (:func:`~bayesdl.inference.driver.gather_chains`).
    """
    result = run(algorithm, control, desc=desc, identity=identity)
    chains, dim = algorithm.init_theta.shape
    theta, stats = result.draws.stacked(chains, dim, algorithm.init_theta.dtype)
    state: MCMCState = result.state
    first_error = next((m.first_error for m in state.density if m.first_error), "")
    raised_warmup = state.raised_warmup.sum()
    group = control.ranks
    if seeds is not None and seeds.block is not None and group is not None:
        theta, stats, shared = gather_chains(theta, stats, seeds, group)
        raised_warmup = all_reduce_sum(raised_warmup)
        attrs = {**(attrs or {}), **shared}
    posterior = Posterior(
        theta,
        bnn,
        stats,
        kind="mcmc",
        partial=result.outcome.partial,
        attrs={
            **(attrs or {}),
            "warmup": algorithm.warmup,
            "stopped": result.outcome.reason or "",
            "density_raised_warmup": int(raised_warmup),
            "compiled": int(bool(state.compiled)),
            "looped": int(state.looped),
            "density_error": first_error,
        },
    )
    return finish(posterior, result.outcome)
