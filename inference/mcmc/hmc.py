"""Hamiltonian Monte Carlo backends: the shared settings and entry points, and static HMC.

Two engines run the same declaration:

* ``engine="bayesdl"`` (default): all chains advance together as one batch on
  ``bnn.log_joint`` (:mod:`.trajectory`, :mod:`.adaptation`, :mod:`.run`), on the device of the
  BNN and data; ``sample(log_density, init_theta)`` runs it on any log density.
* ``engine="pyro"``: Pyro's kernels on ``bnn.model``, one per chain, stepped in lockstep
  (:mod:`.pyro_engine`).
"""

from __future__ import annotations

import math
import os
from abc import abstractmethod
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import pyro
import torch
from pyro.infer.autoguide.initialization import init_to_value
from torch import Tensor

from bayesdl._checks import check_count, check_positive, check_probability

from ..base import Backend, Callback
from ..compilation import compile_step
from ..driver import (
    Problem,
    RunControl,
    Seeds,
    check_init_theta,
    identity_of,
    prepare,
    split_chains,
)
from ..health import (
    DensityErrorWarning,
    density_problems,
    mcmc_problems,
    probe_inputs,
    warn_all,
)
from .pyro_engine import run_pyro_mcmc
from .robust import robust_step, start_values
from .run import MCMCAlgorithm, Transition, run_mcmc
from .trajectory import hmc_step, hmc_transition

if TYPE_CHECKING:  # pragma: no cover
    from bayesdl import Posterior
    from bayesdl.inputs import Inputs
    from bayesdl.models import BNN

__all__ = [
    "BNN_MAX_STEPS",
    "BNN_MAX_TREE_DEPTH",
    "DEFAULT_TRAJECTORY_LENGTH",
    "HMC",
    "MAX_STEPS",
    "MAX_TREE_DEPTH",
    "HamiltonianBackend",
]

#: :class:`HMC`'s integration time when neither ``num_steps`` nor ``trajectory_length`` is given:
#: a quarter period of a unit-scale Gaussian (see :class:`HMC`).
DEFAULT_TRAJECTORY_LENGTH = math.pi / 2
#: Default NUTS depth cap for ``sample`` on a generic density (Stan's, NumPyro's, Pyro's).
MAX_TREE_DEPTH = 10
#: Default NUTS depth cap for ``fit`` on a BNN (see :class:`HamiltonianBackend`).
BNN_MAX_TREE_DEPTH = 6
#: Default cap on HMC's steps per trajectory for ``sample`` on a generic density.
MAX_STEPS = 1024
#: Default cap on HMC's steps per trajectory for ``fit`` on a BNN: NUTS's cost at its cap.
BNN_MAX_STEPS = 2**BNN_MAX_TREE_DEPTH - 1

_ENGINES = ("bayesdl", "pyro")
_MASSES = ("diag", "dense")


class HamiltonianBackend(Backend):
    """Settings and entry points shared by :class:`HMC` and :class:`~.nuts.NUTS`.

    **Defaults that finish on a BNN.** The cost of an iteration is the number of leapfrog
    steps, each a gradient of the log joint over the full data. A BNN's posterior
    (non-identifiable, with long curved ridges) makes NUTS trees grow to any depth allowed:
    on the quickstart's MLP (10-20-1 tanh, 193 parameters, 353 rows) they reach depth 8-10
    through warmup and sampling at Stan's cap of 10, 1-2 s per iteration on one CPU core, an
    hour for the default 2,000 iterations. So ``fit`` caps NUTS trees at
    :data:`BNN_MAX_TREE_DEPTH` ``= 6`` and HMC trajectories at :data:`BNN_MAX_STEPS` ``= 63``
    steps unless told otherwise: at most 63 gradients per iteration, about 0.1 s there, and
    the defaults finish in a few minutes. A capped trajectory is still a valid MCMC
    transition, only a shorter move; when the cap binds in most iterations, a warning at the
    end of ``fit`` (and the progress bar's ``capped``) says so and what to do. ``sample``, on
    a generic density, keeps Stan's caps (:data:`MAX_TREE_DEPTH`, :data:`MAX_STEPS`).

    **Health checks.** At the end of ``fit`` and ``sample`` a
    :class:`~bayesdl.inference.ConvergenceWarning` names each
    problem of the run and its fix (:mod:`bayesdl.inference.health`): trees at the cap in most
    iterations,
    chains that have not mixed (function-space split R-hat above 1.1 at a few training inputs,
    two chains or more; also shown on the progress bar as ``R^f``), and stuck chains (nearly
    every transition divergent, acceptance about 0, or a chain that never moved). A
    :class:`~bayesdl.inference.DensityErrorWarning` says where the log density raised (each
    such proposal a divergence of its chain only; see :class:`~.nuts.NUTS`).
    """

    def __init__(
        self,
        chains: int,
        warmup: int,
        draws: int,
        target_accept: float,
        mass: str,
        engine: str,
        step_size: float | None,
        jit: bool,
        compile: bool | str,
    ) -> None:
        self.chains = check_count("chains", chains)
        self.warmup = check_count("warmup", warmup, minimum=0)
        self.draws = check_count("draws", draws)
        self.target_accept = check_probability("target_accept", target_accept)
        if mass not in _MASSES:
            raise ValueError(f"mass: must be one of {_MASSES}, got {mass!r}")
        self.mass = mass
        if engine not in _ENGINES:
            raise ValueError(f"engine: must be one of {_ENGINES}, got {engine!r}")
        self.engine = engine
        self.step_size = None if step_size is None else check_positive("step_size", step_size)
        self.jit = bool(jit)
        if not isinstance(compile, bool) and compile != "auto":
            raise TypeError(f"compile: expected True, False or 'auto', got {compile!r}")
        if compile is True and engine != "bayesdl":
            raise ValueError("compile: only the bayesdl engine compiles (Pyro's has jit)")
        self.compile = compile

    @abstractmethod
    def _transition(self, for_bnn: bool, device: torch.device, compiled: bool) -> Transition:
        """The bayesdl engine's transition for these settings (``for_bnn``: under ``fit``) on
        ``device``, running a compiled step or not."""

    def _looped_transition(self, for_bnn: bool, init_theta: Tensor) -> Transition | None:
        """A compiled transition that captures whole trajectories, for chains shaped like
        ``init_theta``, or ``None`` (the default: none)."""
        return None

    @abstractmethod
    def _pyro_kernel(self, model: Callable[..., Any], init_values: dict[str, Tensor]) -> Any:
        """One chain's Pyro kernel for these settings (on a BNN)."""

    def _caps(self, for_bnn: bool) -> dict[str, int | None]:
        """``max_tree_depth`` and ``max_steps`` in force, for the health checks."""
        return {"max_tree_depth": None, "max_steps": None}

    def _desc(self) -> str:
        """The progress bar's label, e.g. ``NUTS (bayesdl, compiled, 4 chains)``."""
        engine = {True: f"{self.engine}, compiled", "auto": f"{self.engine}, compile=auto"}.get(
            self.compile, self.engine
        )
        return f"{self.name.upper()} ({engine}, {self.chains} chains)"

    def _attrs(self) -> dict[str, Any]:
        return {
            "inference": self.name,
            "engine": self.engine,
            "mass": self.mass,
            "compile": self.compile if self.compile == "auto" else int(self.compile),
        }

    def fit(
        self,
        bnn: BNN,
        x: Tensor,
        y: Tensor,
        *,
        seed: int | Sequence[int] | None = None,
        progress: bool = True,
        callbacks: Callback | Sequence[Callback] = (),
        init_theta: Tensor | None = None,
        num_data: int | None = None,
        checkpoint: str | os.PathLike | None = None,
        checkpoint_every: int | None = None,
        resume: str | os.PathLike | None = None,
        distributed: bool | None = None,
    ) -> Posterior:
        """Sample the posterior of ``bnn`` given ``(x, y)``.

        Parameters
        ----------
        bnn
            The model.
        x, y
            Training inputs and targets (checked before any sampling).
        seed
            One seed, or one seed per chain; chain ``c`` depends only on its own seed.
        progress
            Show a progress bar.
        callbacks
            Called with a :class:`~bayesdl.inference.StepEvent` after every iteration.
        init_theta
            Initial unconstrained parameters ``(chains, D)``; default: draws from the prior.
        num_data
            Size of the full data set if ``(x, y)`` is a subsample (scales the likelihood).
        checkpoint, checkpoint_every, resume
            Write the run's state to ``checkpoint`` every ``checkpoint_every`` iterations and
            when it stops; continue a run from such a file with ``resume`` (the result equals
            the uninterrupted run's, bit for bit; see :mod:`bayesdl.inference.driver`). The
            bayesdl engine only: with ``engine="pyro"`` they are a ``ValueError``, because
            Pyro's kernels keep their state (adaptation, random state) inside Pyro objects
            that cannot be written to a checkpoint.
        distributed
            Split the chains over the ``torch.distributed`` process group, in contiguous
            blocks (:mod:`bayesdl.distributed`); rank 0's Posterior holds every chain, equal
            to a one-process run's with the same seed and chains, the other ranks' their own.
            Default: whenever a group of more than one process is initialised. The bayesdl
            engine only.

        Returns
        -------
        Posterior
            ``(chains, draws, D)`` draws with ``sample_stats``; marked partial after Ctrl-C.
        """
        if self.engine == "pyro" and (checkpoint is not None or resume is not None):
            raise ValueError(
                "checkpoint: engine='pyro' cannot write or resume checkpoints (Pyro's kernels "
                "keep their state inside Pyro objects); use engine='bayesdl'"
            )
        control = RunControl.of(
            progress, callbacks, checkpoint, checkpoint_every, resume, distributed
        )
        if self.engine == "pyro" and control.ranks is not None:
            raise ValueError(
                "distributed: engine='pyro' runs in one process; use engine='bayesdl' or "
                "distributed=False"
            )
        problem = prepare(
            bnn,
            x,
            y,
            chains=self.chains,
            seed=seed,
            init_theta=init_theta,
            num_data=num_data,
            split=control.ranks,
        )
        probe = probe_inputs(problem.x)
        if self.engine == "pyro":
            posterior = self._run_pyro(problem, control, probe)
        else:
            algorithm = self._algorithm(
                bnn.log_joint_fn(problem.x, problem.y, problem.num_data),
                problem.init_theta,
                problem.seeds,
                for_bnn=True,
                bnn=problem.bnn,
                probe=probe if control.progress else None,
            )
            posterior = run_mcmc(
                algorithm,
                control,
                desc=self._desc(),
                identity=identity_of(self, problem),
                bnn=problem.bnn,
                attrs=self._attrs(),
                seeds=problem.seeds,
            )
        warn_all(mcmc_problems(posterior, **self._caps(True), probe=probe))
        warn_all(density_problems(posterior), category=DensityErrorWarning)
        return posterior

    def _algorithm(
        self,
        log_density: Callable[[Tensor], Tensor],
        init_theta: Tensor,
        seeds: Seeds,
        *,
        for_bnn: bool,
        bnn: BNN | None = None,
        probe: Inputs | None = None,
    ) -> MCMCAlgorithm:
        """The bayesdl engine's algorithm for these settings."""
        device = init_theta.device
        auto = self.compile == "auto"
        return MCMCAlgorithm(
            self._transition(for_bnn, device, compiled=self.compile is True),
            log_density,
            init_theta,
            seeds,
            warmup=self.warmup,
            draws=self.draws,
            target_accept=self.target_accept,
            dense_mass=self.mass == "dense",
            step_size=self.step_size,
            compile=self.compile,
            compiled_transition=self._transition(for_bnn, device, compiled=True) if auto else None,
            looped_transition=self._looped_transition(for_bnn, init_theta) if auto else None,
            max_tree_depth=self._caps(for_bnn)["max_tree_depth"],
            bnn=bnn,
            probe=probe,
        )

    def _run_pyro(self, problem: Problem, control: RunControl, probe: Inputs) -> Posterior:
        """The run of :meth:`fit` on Pyro's kernels (no checkpoints)."""
        seed = problem.seeds.seed
        if isinstance(seed, tuple):
            raise ValueError("seed: the pyro engine takes one integer seed")
        return run_pyro_mcmc(
            self._pyro_kernel,
            problem.bnn,
            problem.x,
            problem.y,
            problem.init_theta,
            warmup=self.warmup,
            draws=self.draws,
            num_data=problem.num_data,
            seed=seed,
            progress=control.progress,
            callbacks=control.callbacks,
            desc=self._desc(),
            attrs=self._attrs(),
            max_tree_depth=self._caps(True)["max_tree_depth"],
            probe=probe if control.progress else None,
        )

    def sample(
        self,
        log_density: Callable[[Tensor], Tensor],
        init_theta: Tensor,
        *,
        seed: int | Sequence[int] | None = None,
        progress: bool = True,
        callbacks: Callback | Sequence[Callback] = (),
        checkpoint: str | os.PathLike | None = None,
        checkpoint_every: int | None = None,
        resume: str | os.PathLike | None = None,
        distributed: bool | None = None,
    ) -> Posterior:
        """Sample any log density with the bayesdl engine (like Pyro's ``potential_fn``).

        Parameters
        ----------
        log_density
            ``theta (P, D) -> (P,)``, differentiable, on unconstrained ``theta``; rows are
            independent chains.
        init_theta
            Initial values ``(chains, D)``.
        seed, progress, callbacks, distributed
            As for :meth:`fit`.
        checkpoint, checkpoint_every, resume
            As for :meth:`fit`. A log density cannot be fingerprinted: ``resume`` checks only
            that the file was written by a backend with these settings and an ``init_theta``
            of this shape, so resume with the same log density yourself.

        Returns
        -------
        Posterior
            With no BNN attached: ``theta`` ``(chains, draws, D)``, ``sample_stats``,
            ``to_arviz()``; no ``predict``.

        Raises
        ------
        ValueError
            If the log density raises, or is not finite, at the starting point of some chains
            (naming them). Where it raises later, at a proposal, that transition of that chain
            is divergent and the run goes on (see :class:`~.nuts.NUTS`).
        """
        if self.engine != "bayesdl":
            raise ValueError(
                "engine: sample() runs on the bayesdl engine; Pyro's runs on bnn.model"
            )
        control = RunControl.of(
            progress, callbacks, checkpoint, checkpoint_every, resume, distributed
        )
        if not callable(log_density):
            raise TypeError(f"log_density: expected a callable, got {type(log_density).__name__}")
        if not isinstance(init_theta, Tensor) or init_theta.dim() != 2:
            raise ValueError(
                f"init_theta: expected a tensor of shape (chains, D), got "
                f"{getattr(init_theta, 'shape', type(init_theta).__name__)}"
            )
        init_theta = check_init_theta(init_theta, self.chains, init_theta.shape[1])
        seeds = Seeds.of(seed, self.chains)
        if control.ranks is not None:
            init_theta, seeds = split_chains(init_theta, seeds, control.ranks)
        with torch.no_grad():
            probe = start_values(log_density, init_theta)
        if not isinstance(probe, Tensor) or tuple(probe.shape) != (init_theta.shape[0],):
            raise ValueError(
                f"log_density: must map theta (P, D) to shape (P,); got "
                f"{getattr(probe, 'shape', type(probe).__name__)} for P={init_theta.shape[0]}"
            )
        posterior = run_mcmc(
            self._algorithm(log_density, init_theta, seeds, for_bnn=False),
            control,
            desc=self._desc(),
            identity={"backend": repr(self), "init_theta": list(init_theta.shape)},
            attrs=self._attrs(),
            seeds=seeds,
        )
        warn_all(mcmc_problems(posterior, **self._caps(False)))
        warn_all(density_problems(posterior), category=DensityErrorWarning)
        return posterior


class HMC(HamiltonianBackend):
    r"""Hamiltonian Monte Carlo with a fixed trajectory (Neal 2011).

    Each transition runs ``num_steps`` leapfrog steps, or ``ceil(trajectory_length /
    step_size)`` with a trajectory length, and accepts the end point with probability
    ``min(1, exp(H_0 - H_L))``. Warmup adapts the per-chain step size by dual averaging and the
    mass matrix in Stan's windows, as :class:`~.nuts.NUTS` does.

    **Default trajectory.** With neither ``num_steps`` nor ``trajectory_length``, the trajectory
    length is :data:`DEFAULT_TRAJECTORY_LENGTH` :math:`= \pi/2` and the number of steps follows
    the adapted step size (capped by ``max_steps``). A fixed length rather than a fixed number of
    steps, because the step size is adapted: a fixed ``num_steps`` would make the distance
    travelled shrink or grow with whatever step size warmup finds. Why :math:`\pi/2`: after
    mass-matrix adaptation the posterior's marginal scales are about 1, and for a unit Gaussian
    the Hamiltonian flow rotates each ``(position, momentum)`` pair by the angle ``t``, so a
    quarter period ``t = pi/2`` maps the position onto the fresh, independent momentum: the
    end point is uncorrelated with the start. Pyro's default ``2*pi`` is a full period (it
    returns to the start on that Gaussian) at four times the cost. On a posterior far from
    Gaussian a longer trajectory, or :class:`~.nuts.NUTS`, may mix better.

    Parameters
    ----------
    chains, warmup, draws
        Number of chains, adaptation steps (discarded) and kept draws per chain.
    num_steps
        Leapfrog steps per transition (give this or ``trajectory_length``, not both).
    trajectory_length
        Integration time per transition; the number of steps follows the adapted step size.
        Default (neither given): :math:`\pi/2`, see above.
    target_accept
        Target acceptance probability of the step-size adaptation.
    mass
        ``"diag"`` or ``"dense"`` mass-matrix adaptation.
    engine
        ``"bayesdl"`` (vectorised chains) or ``"pyro"`` (Pyro's HMC kernel per chain).
    step_size
        Initial step size (default: Hoffman & Gelman's heuristic).
    max_steps
        Cap on the number of steps per transition when ``trajectory_length`` is given.
        Default (``None``): :data:`BNN_MAX_STEPS` ``= 63`` in ``fit`` on a BNN,
        :data:`MAX_STEPS` ``= 1024`` in ``sample`` (see :class:`HamiltonianBackend`); a warning
        at the end of the run says when it cut most trajectories. The Pyro engine has no cap.
    jit
        Compile Pyro's potential (engine ``"pyro"`` only).
    compile
        Capture each leapfrog step, gradient included, in one :func:`torch.compile` graph
        (bayesdl engine only), or ``"auto"``; see :class:`~.nuts.NUTS`.
    """

    name = "hmc"

    def __init__(
        self,
        chains: int = 4,
        warmup: int = 1000,
        draws: int = 1000,
        num_steps: int | None = None,
        trajectory_length: float | None = None,
        target_accept: float = 0.8,
        mass: str = "diag",
        engine: str = "bayesdl",
        step_size: float | None = None,
        max_steps: int | None = None,
        jit: bool = True,
        compile: bool | str = "auto",
    ) -> None:
        super().__init__(
            chains, warmup, draws, target_accept, mass, engine, step_size, jit, compile
        )
        if num_steps is not None and trajectory_length is not None:
            raise ValueError(
                "num_steps, trajectory_length: give at most one of them (neither: "
                f"trajectory_length={DEFAULT_TRAJECTORY_LENGTH:.4g}, i.e. pi/2)"
            )
        if num_steps is None and trajectory_length is None:
            trajectory_length = DEFAULT_TRAJECTORY_LENGTH
        self.num_steps = None if num_steps is None else check_count("num_steps", num_steps)
        self.trajectory_length = (
            None
            if trajectory_length is None
            else check_positive("trajectory_length", trajectory_length)
        )
        self.max_steps = None if max_steps is None else check_count("max_steps", max_steps)

    def _max_steps(self, for_bnn: bool) -> int:
        if self.max_steps is not None:
            return self.max_steps
        return BNN_MAX_STEPS if for_bnn else MAX_STEPS

    def _caps(self, for_bnn: bool) -> dict[str, int | None]:
        if self.num_steps is not None:  # a fixed number of steps is never cut
            return super()._caps(for_bnn)
        return {"max_tree_depth": None, "max_steps": self._max_steps(for_bnn)}

    def _transition(self, for_bnn: bool, device: torch.device, compiled: bool) -> Transition:
        step = robust_step(compile_step(hmc_step), hmc_step) if compiled else hmc_step
        max_steps = self._max_steps(for_bnn)

        def transition(state, step_size, metric, log_density_and_grad, rng):
            if self.num_steps is not None:
                steps = torch.full_like(step_size, self.num_steps, dtype=torch.long)
            else:
                steps = torch.ceil(self.trajectory_length / step_size).long()
                steps = steps.clamp(1, max_steps)
            return hmc_transition(
                state, step_size, metric, log_density_and_grad, rng, steps, step=step
            )

        return transition

    def _pyro_kernel(self, model: Callable[..., Any], init_values: dict[str, Tensor]) -> Any:
        return pyro.infer.HMC(
            model,
            num_steps=self.num_steps,
            trajectory_length=self.trajectory_length,
            target_accept_prob=self.target_accept,
            full_mass=self.mass == "dense",
            jit_compile=self.jit,
            ignore_jit_warnings=True,
            init_strategy=init_to_value(values=init_values),
            **({} if self.step_size is None else {"step_size": self.step_size}),
        )

    def _attrs(self) -> dict[str, Any]:
        steps = self.num_steps if self.num_steps is not None else f"L={self.trajectory_length}"
        return {**super()._attrs(), "num_steps": str(steps)}
