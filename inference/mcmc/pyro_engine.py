"""Pyro's HMC and NUTS as a bayesdl engine: one Pyro kernel per chain, advanced in lockstep.

Pyro's own ``MCMC`` runs chains one after another (or in fragile worker processes) and loses
every draw if interrupted. Here the driver steps each chain's ``pyro.infer.NUTS`` kernel in
turn, so an interruption keeps all complete rounds, and each chain draws from its own random
stream: chain ``c`` gives the same draws whatever the number of chains.

The per-draw statistics Pyro's kernel keeps internally are read after each step:
``step_size``; ``diverging`` (Pyro records divergences of post-warmup draws);
``acceptance_rate``, recovered exactly from Pyro's running mean of the acceptance
probability; ``n_steps``, counted as calls of Pyro's ``potential_fn`` (one per leapfrog step); the
tree depth ``ceil(log2(n_steps + 1))`` derived from it; and ``lp``, the negative potential
energy (the tempered log joint of unconstrained ``theta``, as ``BNN.log_joint`` gives it).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import pyro
import torch

from bayesdl._seeding import child_seeds, seeded
from bayesdl.posterior import Posterior

from ..base import Callback, Driver, finish
from ..health import ProgressMonitor

if TYPE_CHECKING:  # pragma: no cover
    from torch import Tensor

    from bayesdl.inputs import Inputs
    from bayesdl.models import BNN

__all__ = ["run_pyro_mcmc"]

_STATS = ("lp", "acceptance_rate", "step_size", "diverging", "n_steps", "tree_depth")


class _CountingPotentialEnergy:
    """Wraps Pyro's ``potential_fn`` (the potential energy, the negative log density) and counts
    its calls (one per leapfrog step)."""

    def __init__(self, fn: Callable[[dict[str, Tensor]], Tensor]) -> None:
        self.fn = fn
        self.calls = 0

    def __call__(self, params: dict[str, Tensor]) -> Tensor:
        self.calls += 1
        return self.fn(params)


class _Chain:
    """One Pyro NUTS kernel, its state, its random stream and its statistics."""

    def __init__(self, kernel: pyro.infer.NUTS, seed: int, warmup: int, args: tuple) -> None:
        self.kernel = kernel
        with seeded(seed):
            kernel.setup(warmup, *args)
            self.rng = torch.get_rng_state()
        self.params = kernel.initial_params
        self.counter = _CountingPotentialEnergy(kernel.potential_fn)
        kernel.potential_fn = self.counter
        self.warmup = warmup
        self.is_nuts = isinstance(kernel, pyro.infer.NUTS)

    def step(self) -> dict[str, Any]:
        kernel = self.kernel
        mean_before = kernel._mean_accept_prob
        divergences_before = len(kernel._divergences)
        calls_before = self.counter.calls
        torch.set_rng_state(self.rng)
        self.params = kernel.sample(self.params)
        self.rng = torch.get_rng_state()
        n = kernel._t - self.warmup if kernel._t > self.warmup else kernel._t
        mean_after = kernel._mean_accept_prob
        accept = mean_after if n == 1 else n * mean_after - (n - 1) * mean_before
        n_steps = self.counter.calls - calls_before
        potential_energy = kernel._potential_energy_last
        return {
            "lp": -float(potential_energy) if potential_energy is not None else math.nan,
            "acceptance_rate": min(max(accept, 0.0), 1.0),
            "step_size": float(kernel.step_size),
            "diverging": len(kernel._divergences) > divergences_before,
            "n_steps": n_steps,
            "tree_depth": math.ceil(math.log2(n_steps + 1)) if self.is_nuts else 0,
        }


def run_pyro_mcmc(
    make_kernel: Callable[[Callable[..., Any], dict[str, Tensor]], Any],
    bnn: BNN,
    x: Tensor,
    y: Tensor,
    init_theta: Tensor,
    *,
    warmup: int,
    draws: int,
    num_data: int | None,
    seed: int | None,
    progress: bool,
    callbacks: Sequence[Callback],
    desc: str,
    attrs: dict[str, Any],
    max_tree_depth: int | None = None,
    probe: Inputs | None = None,
) -> Posterior:
    """Run ``len(init_theta)`` chains of a Pyro HMC/NUTS kernel on ``bnn.model`` in lockstep.

    ``make_kernel(model, init_values)`` builds one chain's kernel (``pyro.infer.NUTS(...)``)
    starting from the constrained values ``init_values``. ``max_tree_depth`` and ``probe``
    feed the progress bar's health entries (:class:`~bayesdl.inference.health.ProgressMonitor`).
    """
    num_chains = init_theta.shape[0]
    seeds = child_seeds(seed, num_chains, stream=1)
    draws_theta: list[Tensor] = []
    stats: dict[str, list[list[Any]]] = {k: [] for k in _STATS}
    monitor = ProgressMonitor(max_tree_depth, bnn, probe)
    with (
        torch.random.fork_rng(devices=[]),
        pyro.validation_enabled(False),
        warnings.catch_warnings(),
    ):
        # Pyro's jit_compile goes through torch.jit.trace, which newer torch flags as deprecated.
        warnings.filterwarnings(
            "ignore", message=".*torch.jit.trace.*", category=DeprecationWarning
        )
        chains = []
        for c in range(num_chains):
            kernel = make_kernel(bnn.model, bnn.unravel(init_theta[c]))
            chains.append(_Chain(kernel, seeds[c], warmup, (x, y, num_data)))

        def step(stage: str, i: int) -> dict[str, Any]:
            infos = [chain.step() for chain in chains]
            position = torch.stack([bnn.ravel(ch.params, constrained=False) for ch in chains])
            if stage == "sampling":
                draws_theta.append(position)
                for k in _STATS:
                    stats[k].append([info[k] for info in infos])
            lp = [info["lp"] for info in infos]
            return {
                "finite": all(math.isfinite(v) for v in lp),
                "lp": lp,
                "n_steps": [info["n_steps"] for info in infos],
                "postfix": {
                    "step": f"{sum(i['step_size'] for i in infos) / num_chains:.2g}",
                    "accept": f"{sum(c.kernel._mean_accept_prob for c in chains) / num_chains:.2f}",
                    "div": sum(len(c.kernel._divergences) for c in chains),
                    **monitor.update(
                        stage, position, torch.tensor([i["tree_depth"] for i in infos])
                    ),
                },
            }

        driver = Driver(
            [("warmup", warmup), ("sampling", draws)],
            progress=progress,
            callbacks=callbacks,
            desc=desc,
        )
        outcome = driver.run(step)
        for chain in chains:
            chain.kernel.cleanup()
    if draws_theta:
        theta = torch.stack(draws_theta, dim=1)
    else:
        theta = init_theta.new_zeros(num_chains, 0, init_theta.shape[-1])
    dtypes = {"diverging": torch.bool, "n_steps": torch.long, "tree_depth": torch.long}
    sample_stats = {
        k: torch.tensor(v, dtype=dtypes.get(k, torch.float64)).reshape(-1, num_chains).T
        for k, v in stats.items()
    }
    posterior = Posterior(
        theta,
        bnn,
        sample_stats,
        kind="mcmc",
        partial=outcome.partial,
        attrs={**attrs, "stopped": outcome.reason or ""},
    )
    return finish(posterior, outcome)
