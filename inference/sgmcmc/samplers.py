r"""Stochastic-gradient MCMC for data that do not fit a full batch: SGHMC and SGLD.

Both follow minibatch estimates :math:`g = \nabla_\theta \log\tilde p(\theta)` of the gradient
of the BNN's (tempered) log joint, with the likelihood scaled by ``num_data / batch_size``.
They target :math:`\tilde p` itself, so the BNN's ``temperature`` knob gives cold or tempered
posteriors with no change here (a cold posterior has a sharper density, so it needs a smaller
learning rate). With learning rate :math:`\eta`, diagonal preconditioner :math:`M^{-1}`
(:mod:`.preconditioners`) and :math:`\xi \sim \mathcal N(0, I)`:

* **SGHMC** (Chen et al. 2014, in the "SGD with momentum" parameterisation of Springenberg et
  al. 2016 and Wenzel et al. 2020), velocity :math:`v` and momentum decay (friction)
  :math:`\alpha`:

  .. math::
      v \leftarrow (1 - \alpha) v + \eta M^{-1} g + \sqrt{2\alpha\eta M^{-1}}\,\xi,\qquad
      \theta \leftarrow \theta + v.

  With the adaptive preconditioner the noise variance is :math:`2\alpha\eta M^{-1} - \eta^2`
  (floored at :math:`10^{-16}`), Springenberg et al.'s correction for the gradient noise.
* **SGLD** (Welling & Teh 2011; preconditioned as Li et al. 2016):

  .. math::
      \theta \leftarrow \theta + \tfrac{\eta}{2} M^{-1} g + \sqrt{\eta M^{-1}}\,\xi.

All chains step together as one ``(C, D)`` batch and share the minibatch of each step (every
chain is still a valid sampler; their gradient noise is correlated). Each chain's injected
noise comes from its own random stream.

**Default learning rate** (``lr=None``): :math:`\eta = c / N` with ``N = num_data`` (all
the rows given to ``fit``) and :math:`c` = :data:`DEFAULT_LR_PER_DATUM` :math:`= 0.01`. The
log joint is a prior plus :math:`N` likelihood terms (minibatch terms are scaled by
:math:`N/B`), so its gradient and its curvature grow linearly with :math:`N`: near a mode the
largest Hessian eigenvalue is about :math:`\lambda = N \lambda_1` with :math:`\lambda_1` the
per-datum curvature (Fisher information over the likelihood variance). Both updates are stable
on a quadratic only if :math:`\eta\lambda < 4` (SGLD: :math:`|1 - \eta\lambda/2| < 1`;
SGHMC: :math:`\eta\lambda < 2(2 - \alpha)`), so a fixed :math:`\eta` that works for a few
hundred rows diverges for tens of thousands (the old default ``lr=1e-4`` did from about 5,000
rows). With :math:`\eta = c/N` the condition becomes :math:`c\lambda_1 < 4`, independent of
:math:`N`; :math:`c = 0.01` allows :math:`\lambda_1` up to a few hundred with a margin for
SGHMC's momentum, which carries a gradient over about :math:`1/\alpha` steps while the chain
comes down from its prior draw. That covers tanh/ReLU MLPs on standardised inputs with a
likelihood scale of about 0.3 or more; the curvature grows as :math:`1/\sigma^2`, so a much
smaller likelihood scale, wide layers or a cold posterior need a smaller ``lr`` (given
explicitly, ``lr`` is used as it is).

**Temperature diagnostics** (Fortuin et al. 2022, after Leimkuhler & Matthews): at
stationarity the kinetic temperature
:math:`\frac1D\sum_i v_i^2 (2 - \alpha) / (2\eta M^{-1}_i)` (SGHMC only; the factor corrects
for the discrete friction) and the configurational temperature
:math:`-\frac1D\,\theta^\top g` both equal 1 in the frame of the sampled density; they are
reported multiplied by the BNN's temperature (for ``tempering="posterior"``), so that a sampler
in equilibrium shows :math:`T`. A value far from :math:`T` means the step size is too large or
the chain has not converged.
"""

from __future__ import annotations

import os
from abc import abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from bayesdl import inputs
from bayesdl._checks import check_count, check_positive, check_probability
from bayesdl.distributed import Ranks, all_reduce_sum
from bayesdl.posterior import Posterior

from ..base import Backend, Callback, Minibatches, finish
from ..driver import Algorithm, Problem, RunControl, identity_of, prepare, run
from ..gradients import value_and_grad
from ..rng import ChainRNG
from ..state import state_record
from .preconditioners import Identity, make_preconditioner
from .schedules import Constant, Schedule

if TYPE_CHECKING:  # pragma: no cover
    from bayesdl.models import BNN

__all__ = ["DEFAULT_LR_PER_DATUM", "SGHMC", "SGLD"]

#: ``c`` of the default learning rate ``lr = c / num_data`` (see the module docstring).
DEFAULT_LR_PER_DATUM = 0.01


class _StochasticGradientMCMC(Backend):
    """Settings and the run loop shared by :class:`SGHMC` and :class:`SGLD`."""

    has_momentum = False

    def __init__(
        self,
        chains: int,
        lr: float | None,
        batch_size: int | None,
        burn_in: int | None,
        draws: int | None,
        thin: int | None,
        schedule: Schedule | None,
        preconditioner: str | None,
        precondition_every: int | None,
    ) -> None:
        self.chains = check_count("chains", chains)
        self.lr = None if lr is None else check_positive("lr", lr)
        self.batch_size = None if batch_size is None else check_count("batch_size", batch_size)
        if schedule is None:
            schedule = Constant(
                1000 if burn_in is None else burn_in,
                200 if draws is None else draws,
                10 if thin is None else thin,
            )
        elif not isinstance(schedule, Schedule):
            raise TypeError(f"schedule: expected a Schedule, got {type(schedule).__name__}")
        elif (burn_in, draws, thin) != (None, None, None):
            raise ValueError("burn_in, draws, thin: give them to the schedule, not beside it")
        self.schedule = schedule
        if preconditioner not in (None, "layerwise", "adaptive"):
            raise ValueError(
                f"preconditioner: must be None, 'layerwise' or 'adaptive', got {preconditioner!r}"
            )
        self.preconditioner = preconditioner
        self.precondition_every = (
            None
            if precondition_every is None
            else check_count("precondition_every", precondition_every)
        )

    @abstractmethod
    def _update(
        self,
        theta: Tensor,
        velocity: Tensor,
        grad: Tensor,
        inverse_mass: Tensor,
        eta: float,
        noise: Tensor | None,
    ) -> tuple[Tensor, Tensor]:
        """One step: new ``(theta, velocity)`` from the gradient and (optional) noise."""

    def fit(
        self,
        bnn: BNN,
        x: Tensor | DataLoader,
        y: Tensor | None = None,
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
        """Sample the posterior of ``bnn`` given ``(x, y)`` with minibatch gradients.

        Parameters
        ----------
        bnn
            The model; its ``temperature`` sets the target.
        x, y
            All the training data (checked once, before any sampling); or ``x`` a
            ``torch.utils.data.DataLoader`` of ``(x, y)`` batches (or an ``IterableDataset``,
            batched by ``batch_size``) and ``y=None``, for data that do not fit in memory
            (:mod:`bayesdl.inference.loaders`; each batch is checked as it comes).
        seed
            One seed (minibatch order and every chain's noise), or one seed per chain (the
            minibatch order then follows the first).
        progress, callbacks
            As for every backend.
        init_theta
            Initial values ``(chains, D)``; default: draws from the prior.
        num_data
            Size of the full data set (default: the rows given, or the DataLoader's dataset
            length).
        checkpoint, checkpoint_every, resume
            Write the run's state to ``checkpoint`` every ``checkpoint_every`` steps and when
            it stops; continue a run from such a file with ``resume`` (the result equals the
            uninterrupted run's; see :mod:`bayesdl.inference.driver`).
        distributed
            Share each minibatch's rows over the ``torch.distributed`` process group and sum
            the gradients (data parallel; every process holds every chain). Default: whenever
            a group of more than one process is initialised (:mod:`bayesdl.distributed`). The
            result equals the one-process run's up to the order of floating-point sums.

        Returns
        -------
        Posterior
            ``(chains, draws, D)`` with ``sample_stats`` ``step_size``,
            ``configurational_temperature`` and (SGHMC) ``kinetic_temperature``.
        """
        control = RunControl.of(
            progress, callbacks, checkpoint, checkpoint_every, resume, distributed
        )
        problem = prepare(
            bnn,
            x,
            y,
            chains=self.chains,
            seed=seed,
            init_theta=init_theta,
            num_data=num_data,
            batch_size=self.batch_size,
        )
        batches = problem.minibatches(self.batch_size, problem.seeds.base, control.ranks)
        if (
            control.ranks is not None
            and problem.loader is None
            and batches.batch_size < control.ranks.world
        ):
            raise ValueError(
                f"batch_size: {batches.batch_size} rows cannot be shared over "
                f"{control.ranks.world} processes (give at least one row per process)"
            )
        algorithm = _Algorithm(self, problem, batches, control.ranks)
        result = run(
            algorithm,
            control,
            desc=f"{type(self).__name__} ({self.chains} chains)",
            identity=identity_of(self, problem),
            batches=batches,
        )
        draws, stats = result.draws.stacked(self.chains, problem.bnn.num_params, problem.bnn.dtype)
        posterior = Posterior(
            draws,
            problem.bnn,
            stats,
            kind="mcmc",
            partial=result.outcome.partial,
            attrs={
                "inference": self.name,
                "lr": algorithm.lr,
                "batch_size": batches.batch_size,
                "schedule": repr(self.schedule),
                "preconditioner": str(self.preconditioner),
                "stopped": result.outcome.reason or "",
                **_data_parallel_note(control.ranks),
            },
        )
        return finish(posterior, result.outcome)


def _data_parallel_note(group: Ranks | None) -> dict[str, str]:
    if group is None:
        return {}
    return {"distributed": f"rank {group.rank} of {group.world}: data parallel, all chains"}


@state_record
class SGMCMCState:
    """The state of a stochastic-gradient MCMC run.

    Attributes
    ----------
    theta, velocity
        Positions and velocities ``(C, D)`` (SGLD's velocity stays zero).
    preconditioner
        :math:`M^{-1}` and what it has observed (:mod:`.preconditioners`).
    rng
        Each chain's random stream.
    step
        Steps taken (the schedule's ``k``).
    last_kept
        The step whose update made the last kept draw (-1: none).
    """

    theta: Tensor
    velocity: Tensor
    preconditioner: Identity
    rng: ChainRNG
    step: int = 0
    last_kept: int = -1


class _Algorithm(Algorithm[SGMCMCState]):
    """SGHMC or SGLD as ``init``/``step`` for :func:`~bayesdl.inference.driver.run`."""

    def __init__(
        self,
        sampler: _StochasticGradientMCMC,
        problem: Problem,
        batches: Minibatches,
        group: Ranks | None = None,
    ) -> None:
        self.sampler = sampler
        self.group = group
        self.problem = problem
        self.batches = batches
        self.lr = DEFAULT_LR_PER_DATUM / batches.num_data if sampler.lr is None else sampler.lr
        bnn = problem.bnn
        self.temperature = bnn.temperature if bnn.tempering == "posterior" else 1.0

    def minibatch_gradient(self, theta: Tensor) -> tuple[Tensor, Tensor]:
        r"""The next minibatch's estimate of the log joint and its gradient, ``(C,)`` and
        ``(C, D)``.

        Over ``W`` processes, rank ``r`` scores its block of :math:`n_r` of the :math:`B` rows
        with the likelihood scaled by :math:`N / n_r` and weights the result by
        :math:`n_r / B`; the sum over ranks is the one-process estimate
        :math:`\log p(\theta) + \frac{N}{B}\sum_{i \in B} \log p(y_i \mid \theta)`.
        """
        xb, yb = next(self.batches)
        weight = 1.0
        if self.group is not None:
            rows = inputs.num_rows(xb)
            if self.problem.loader is not None:
                # each rank read its own rows: the global batch is their union
                total = int(all_reduce_sum(torch.tensor(float(rows))))
                weight = rows / total
            else:
                start, stop = self.group.block(rows)
                xb, yb = inputs.take_rows(xb, slice(start, stop)), yb[start:stop]
                weight = (stop - start) / rows
        log_joint = self.problem.bnn.log_joint_fn(xb, yb, self.batches.num_data, validate=False)
        lp, grad = value_and_grad(log_joint)(theta)
        if self.group is not None:  # one collective for both
            summed = all_reduce_sum(torch.cat([weight * lp[:, None], weight * grad], dim=1))
            lp, grad = summed[:, 0], summed[:, 1:]
        return lp, grad

    def stages(self) -> list[tuple[str, int]]:
        burn = self.sampler.schedule.burn_in
        return [("burn-in", burn), ("sampling", self.sampler.schedule.total_steps - burn)]

    def init(self) -> SGMCMCState:
        sampler, theta = self.sampler, self.problem.init_theta
        every = sampler.precondition_every or max(
            1, self.batches.num_data // self.batches.batch_size
        )
        precond = make_preconditioner(
            sampler.preconditioner, sampler.chains, theta, self.problem.bnn.layout, every
        )
        rng = self.problem.seeds.chain_rng(theta.device, theta.dtype)
        return SGMCMCState(theta, torch.zeros_like(theta), precond, rng)

    def step(self, state: SGMCMCState, stage: str, i: int) -> tuple[SGMCMCState, dict[str, Any]]:
        sampler, schedule = self.sampler, self.sampler.schedule
        k = state.step
        state.step += 1
        lp, grad = self.minibatch_gradient(state.theta)
        if not (bool(torch.isfinite(lp).all()) and bool(torch.isfinite(grad).all())):
            # the current theta has no finite density: drop it if it was just kept
            return state, {
                "finite": False,
                "lp": lp,
                "postfix": {},
                "drop_last": state.last_kept == k - 1,
            }
        if stage == "burn-in":
            state.preconditioner.observe(grad, k)
        inverse_mass = state.preconditioner.inverse_mass
        eta = self.lr * schedule.lr_factor(k)
        dim = state.theta.shape[1]
        noise = state.rng.normal(dim) if schedule.noise(k) else None
        config_t = self.temperature * -(state.theta * grad).sum(-1) / dim
        state.theta, state.velocity = sampler._update(
            state.theta, state.velocity, grad, inverse_mass, eta, noise
        )
        finite = bool(torch.isfinite(state.theta).all())
        info: dict[str, Any] = {
            "finite": finite,
            "lp": lp,
            "postfix": {"lr": f"{eta:.2g}", "T_conf": f"{float(config_t.mean()):.3g}"},
        }
        if finite and schedule.keep(k):  # never keep a non-finite draw
            state.last_kept = k
            stats = {
                "step_size": torch.full((sampler.chains,), eta, dtype=torch.float64),
                "configurational_temperature": config_t.detach().double(),
            }
            if sampler.has_momentum:
                kinetic = sampler._kinetic_temperature(state.velocity, inverse_mass, eta)
                stats["kinetic_temperature"] = (self.temperature * kinetic).double()
            info["draw"] = (state.theta, stats)
        return state, info


class SGHMC(_StochasticGradientMCMC):
    """Stochastic-gradient Hamiltonian Monte Carlo (see the module docstring for the update).

    Parameters
    ----------
    chains
        Number of chains, advanced together.
    lr
        Learning rate :math:`\\eta` (the step applied to the gradient of the log joint).
        Default ``None``: ``DEFAULT_LR_PER_DATUM / num_data`` ``= 0.01 / len(x)``, which keeps
        the step stable as the data grow (see the module docstring).
    momentum_decay
        Friction :math:`\\alpha` in (0, 1]: the fraction of the velocity lost per step.
    batch_size
        Minibatch size (``None``: full batch).
    burn_in, draws, thin
        For the default constant schedule: burn-in steps, kept draws, steps between draws.
    schedule
        A :class:`~.schedules.Schedule` instead (e.g. :class:`~.schedules.Cyclical`).
    preconditioner
        ``None``, ``"layerwise"`` or ``"adaptive"`` (the scale-adapted SGHMC of Springenberg
        et al. 2016, used by Tran et al. 2022); adapts during burn-in only.
    precondition_every
        Steps between refreshes of the layer-wise preconditioner (default: one epoch).
    """

    name = "sghmc"
    has_momentum = True

    def __init__(
        self,
        chains: int = 4,
        lr: float | None = None,
        momentum_decay: float = 0.05,
        batch_size: int | None = None,
        burn_in: int | None = None,
        draws: int | None = None,
        thin: int | None = None,
        schedule: Schedule | None = None,
        preconditioner: str | None = None,
        precondition_every: int | None = None,
    ) -> None:
        super().__init__(
            chains,
            lr,
            batch_size,
            burn_in,
            draws,
            thin,
            schedule,
            preconditioner,
            precondition_every,
        )
        self.momentum_decay = check_probability(
            "momentum_decay", momentum_decay, open_interval=False
        )
        if self.momentum_decay == 0:
            raise ValueError(
                "momentum_decay: must be > 0 (no friction, no stationary distribution)"
            )

    def _kinetic_temperature(self, velocity: Tensor, inverse_mass: Tensor, eta: float) -> Tensor:
        """``mean_i v_i^2 (2 - alpha) / (2 eta M^-1_i)``, 1 at stationarity.

        With friction alpha the stationary velocity variance is ``2 eta M^-1 / (2 - alpha)``
        (from ``Var = 2 alpha eta M^-1 / (1 - (1 - alpha)^2)``), not ``eta M^-1``.
        """
        alpha = self.momentum_decay
        return (velocity.detach() ** 2 * (2 - alpha) / (2 * eta * inverse_mass)).mean(-1)

    def _update(self, theta, velocity, grad, inverse_mass, eta, noise):
        alpha = self.momentum_decay
        velocity = (1 - alpha) * velocity + eta * inverse_mass * grad
        if noise is not None:
            variance = 2 * alpha * eta * inverse_mass
            if self.preconditioner == "adaptive":
                variance = (variance - eta**2).clamp_min(1e-16)
            velocity = velocity + variance.sqrt() * noise
        return theta + velocity, velocity


class SGLD(_StochasticGradientMCMC):
    """Stochastic-gradient Langevin dynamics (see the module docstring for the update).

    Parameters are those of :class:`SGHMC` without the momentum decay; the ``"adaptive"``
    preconditioner is SGHMC's only.
    """

    name = "sgld"

    def __init__(
        self,
        chains: int = 4,
        lr: float | None = None,
        batch_size: int | None = None,
        burn_in: int | None = None,
        draws: int | None = None,
        thin: int | None = None,
        schedule: Schedule | None = None,
        preconditioner: str | None = None,
        precondition_every: int | None = None,
    ) -> None:
        if preconditioner == "adaptive":
            raise ValueError("preconditioner: 'adaptive' is for SGHMC; use None or 'layerwise'")
        super().__init__(
            chains,
            lr,
            batch_size,
            burn_in,
            draws,
            thin,
            schedule,
            preconditioner,
            precondition_every,
        )

    def _update(self, theta, velocity, grad, inverse_mass, eta, noise):
        theta = theta + 0.5 * eta * inverse_mass * grad
        if noise is not None:
            theta = theta + (eta * inverse_mass).sqrt() * noise
        return theta, velocity
