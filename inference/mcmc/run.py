"""The MCMC runner of the bayesdl engine: warmup with adaptation, then sampling, chains batched.

:func:`run_mcmc` takes a transition (NUTS or HMC, from :mod:`.trajectory`), a log density
over ``theta (C, D)`` and initial values, and runs it on the shared
:class:`~bayesdl.inference.base.Driver` (progress bar, callbacks, Ctrl-C, NaN guard). Warmup adapts
a per-chain step size by dual averaging and per-chain mass matrices in Stan's windows
(:mod:`.adaptation`); the warmup draws are discarded. The result is a :class:`~bayesdl.Posterior`
whose ``sample_stats`` use ArviZ's names: ``lp``, ``acceptance_rate``, ``step_size``,
``tree_depth``, ``n_steps``, ``diverging``, ``energy``; and ``density_raised``, the number of
evaluations of the log density that raised in each transition of each chain (:mod:`.robust`: each
made that transition divergent; with ``compile=True`` the count also includes leaves computed past
the end of a subtree, two leaves per call, which are discarded). The same count over the warmup is
``attrs["density_raised_warmup"]``, and the first such error ``attrs["density_error"]``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from bayesdl.posterior import Posterior

from ..base import Callback, Driver, finish
from ..compilation import skip_guard_checks
from ..health import ProgressMonitor
from ..rng import ChainRNG
from .adaptation import DualAveraging, Welford, find_step_size, mass_windows
from .integrators import IntegratorState, functional_value_and_grad, value_and_grad
from .mass_matrix import Metric
from .robust import RobustLogDensity, start_values
from .trajectory import TransitionInfo

if TYPE_CHECKING:  # pragma: no cover
    from bayesdl.inputs import Inputs
    from bayesdl.models import BNN

__all__ = ["Transition", "run_mcmc"]

#: ``(state, step_size, metric, log_density_and_grad, rng) -> (state, info)``.
Transition = Callable[..., tuple[IntegratorState, TransitionInfo]]

_STATS = (
    "lp",
    "acceptance_rate",
    "step_size",
    "tree_depth",
    "n_steps",
    "diverging",
    "energy",
    "density_raised",
)


def run_mcmc(
    transition: Transition,
    log_density: Callable[[Tensor], Tensor],
    init_theta: Tensor,
    *,
    warmup: int,
    draws: int,
    target_accept: float,
    dense_mass: bool,
    step_size: float | None,
    compile: bool = False,
    seed: int | Sequence[int] | None,
    progress: bool,
    callbacks: Sequence[Callback],
    desc: str,
    bnn: BNN | None = None,
    attrs: dict[str, Any] | None = None,
    max_tree_depth: int | None = None,
    probe: Inputs | None = None,
) -> Posterior:
    """Run ``len(init_theta)`` chains of ``transition`` in lockstep; see the module docstring.

    Parameters
    ----------
    step_size
        Initial step size; ``None`` finds one with Hoffman & Gelman's heuristic. With
        ``warmup=0`` it is used as is (no adaptation).
    compile
        The transition runs a compiled step (:mod:`bayesdl.inference.compilation`); its
        gradient is then taken with :func:`torch.func`
        (:func:`.integrators.functional_value_and_grad`). Either way the transition gets a
        :class:`~.robust.RobustLogDensity`.
    seed
        One base seed, or one seed per chain (``ChainRNG.from_seed``).
    max_tree_depth, probe
        For the progress bar (:class:`~bayesdl.inference.health.ProgressMonitor`): the share
        of iterations at the depth cap, and the function-space R-hat at the probe inputs (with
        ``bnn``).
    """
    chains, dim = init_theta.shape
    dtype, device = init_theta.dtype, init_theta.device
    density = RobustLogDensity(value_and_grad(log_density), chains)
    step_density = (
        RobustLogDensity(functional_value_and_grad(log_density), chains) if compile else density
    )
    log_density0, grad0 = start_values(density.raw, init_theta)
    bad = (~torch.isfinite(log_density0)).nonzero().flatten().tolist()
    if bad:
        raise ValueError(f"init_theta: the log density is not finite for chain(s) {bad}")
    state = IntegratorState(init_theta.detach(), torch.zeros_like(init_theta), log_density0, grad0)
    rng = ChainRNG.from_seed(seed, chains, device=device, dtype=dtype)
    metric = Metric.identity(chains, dim, dense_mass, init_theta)
    eps = torch.full((chains,), 1.0 if step_size is None else step_size, dtype=dtype, device=device)
    if step_size is None:
        eps = find_step_size(state, eps, metric, density, rng)

    def take_raised() -> Tensor:
        raised = density.take_raised()
        return raised if step_density is density else raised + step_density.take_raised()

    raised_warmup = take_raised()
    divergences = 0  # while sampling, for the progress bar
    adapter = DualAveraging(eps, target_accept)
    windows = mass_windows(warmup)
    starts = {s: e for s, e in windows}
    ends = {e for _, e in windows}
    welford: Welford | None = None
    kept_theta: list[Tensor] = []
    kept_stats: dict[str, list[Tensor]] = {k: [] for k in _STATS}
    monitor = ProgressMonitor(max_tree_depth, bnn, probe)

    def step(stage: str, i: int) -> dict[str, Any]:
        nonlocal state, eps, metric, welford, raised_warmup, divergences
        used_eps = eps
        with skip_guard_checks() if compile else contextlib.nullcontext():
            state, info = transition(state, eps, metric, step_density, rng)
        raised = take_raised()
        if stage == "warmup":
            eps = adapter.update(info.acceptance_rate).to(dtype)
            if i in starts:
                welford = Welford(chains, dim, dense_mass, init_theta)
            if welford is not None:
                welford.update(state.position)
            if i + 1 in ends and welford is not None:
                metric = Metric(welford.regularized().to(dtype))
                welford = None
                eps = find_step_size(state, eps, metric, density, rng)
                adapter.restart(eps)
                raised = raised + take_raised()
            if i + 1 == warmup:
                eps = adapter.final_step_size.to(dtype)
            raised_warmup = raised_warmup + raised
        else:
            kept_theta.append(state.position.detach().cpu())
            values = {
                "lp": state.log_density,
                "acceptance_rate": info.acceptance_rate,
                "step_size": used_eps,
                "tree_depth": info.tree_depth,
                "n_steps": info.n_steps,
                "diverging": info.diverging,
                "energy": info.energy,
                "density_raised": raised,
            }
            for k, v in values.items():
                kept_stats[k].append(v.detach().cpu())
            divergences += int(info.diverging.sum())  # a running count, not a sum over draws
        return {
            "finite": bool(torch.isfinite(state.log_density).all()),
            "info": info,
            "n_steps": info.n_steps,
            "postfix": {
                "step": f"{float(used_eps.mean()):.2g}",
                "accept": f"{float(info.acceptance_rate.mean()):.2f}",
                "depth": f"{float(info.tree_depth.float().mean()):.1f}",
                "div": divergences,
                **monitor.update(stage, state.position, info.tree_depth),
            },
        }

    outcome = Driver(
        [("warmup", warmup), ("sampling", draws)], progress=progress, callbacks=callbacks, desc=desc
    ).run(step)
    if kept_theta:
        theta = torch.stack(kept_theta, dim=1)
        sample_stats = {k: torch.stack(v, dim=1) for k, v in kept_stats.items()}
    else:
        theta = init_theta.detach().cpu().new_zeros(chains, 0, dim)
        sample_stats = {}
    posterior = Posterior(
        theta,
        bnn,
        sample_stats,
        kind="mcmc",
        partial=outcome.partial,
        attrs={
            **(attrs or {}),
            "warmup": warmup,
            "stopped": outcome.reason or "",
            "density_raised_warmup": int(raised_warmup.sum()),
            "density_error": density.first_error or step_density.first_error or "",
        },
    )
    return finish(posterior, outcome)
