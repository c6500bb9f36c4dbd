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

from abc import abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from bayesdl._checks import check_count, check_positive, check_probability
from bayesdl.posterior import Posterior

from ..base import Backend, Callback, Driver, Minibatches, as_callbacks, finish
from ..checks import check_bnn, check_start
from ..mcmc.integrators import value_and_grad
from ..rng import ChainRNG
from .preconditioners import make_preconditioner
from .schedules import Constant, Schedule

if TYPE_CHECKING:  # pragma: no cover
    from bayesdl.models import BNN

__all__ = ["DEFAULT_LR_PER_DATUM", "SGHMC", "SGLD"]

#: ``c`` of the default learning rate ``lr = c / num_data`` (see the module docstring).
DEFAULT_LR_PER_DATUM = 0.01

_STATS = ("step_size", "configurational_temperature", "kinetic_temperature")


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
        x: Tensor,
        y: Tensor,
        *,
        seed: int | Sequence[int] | None = None,
        progress: bool = True,
        callbacks: Sequence[Callback] = (),
        init_theta: Tensor | None = None,
    ) -> Posterior:
        """Sample the posterior of ``bnn`` given ``(x, y)`` with minibatch gradients.

        Parameters
        ----------
        bnn
            The model; its ``temperature`` sets the target.
        x, y
            All the training data (checked once, before any sampling).
        seed
            One seed (minibatch order and every chain's noise), or one seed per chain (the
            minibatch order then follows the first).
        progress, callbacks
            As for every backend.
        init_theta
            Initial values ``(chains, D)``; default: draws from the prior.

        Returns
        -------
        Posterior
            ``(chains, draws, D)`` with ``sample_stats`` ``step_size``,
            ``configurational_temperature`` and (SGHMC) ``kinetic_temperature``.
        """
        bnn = check_bnn(bnn)
        x, y = bnn.check_data(x, y)
        callbacks = as_callbacks(callbacks)
        base_seed = seed if seed is None or isinstance(seed, int) else int(next(iter(seed)))
        if init_theta is None:
            init_theta = bnn.init_theta(self.chains, base_seed)
        elif not isinstance(init_theta, Tensor) or tuple(init_theta.shape) != (
            self.chains,
            bnn.num_params,
        ):
            raise ValueError(
                f"init_theta: expected a tensor of shape ({self.chains}, {bnn.num_params}), got "
                f"{getattr(init_theta, 'shape', type(init_theta).__name__)}"
            )
        theta = init_theta.detach().to(dtype=bnn.dtype, device=bnn.device).clone()
        check_start(bnn, theta, x, y)
        batches = Minibatches(x, y, self.batch_size, base_seed)
        rng = ChainRNG.from_seed(seed, self.chains, device=theta.device, dtype=theta.dtype)
        lr = DEFAULT_LR_PER_DATUM / batches.num_data if self.lr is None else self.lr
        every = self.precondition_every or max(1, batches.num_data // batches.batch_size)
        precond = make_preconditioner(self.preconditioner, self.chains, theta, bnn.layout, every)
        velocity = torch.zeros_like(theta)
        schedule = self.schedule
        temperature = bnn.temperature if bnn.tempering == "posterior" else 1.0
        dim = theta.shape[1]
        kept: list[Tensor] = []
        stats: dict[str, list[Tensor]] = {k: [] for k in _STATS}
        step_index = 0
        last_kept = [-1]  # the step whose update made the last kept draw

        def step(stage: str, i: int) -> dict[str, Any]:
            nonlocal theta, velocity, step_index
            k = step_index
            step_index += 1
            xb, yb = next(batches)
            log_density_and_grad = value_and_grad(
                bnn.log_joint_fn(xb, yb, batches.num_data, validate=False)
            )
            lp, grad = log_density_and_grad(theta)
            if not (bool(torch.isfinite(lp).all()) and bool(torch.isfinite(grad).all())):
                # the current theta has no finite density: drop it if it was just kept
                if last_kept[0] == k - 1:
                    _drop_last(kept, stats)
                return {"finite": False, "lp": lp, "postfix": {}}
            if stage == "burn-in":
                precond.observe(grad, k)
            eta = lr * schedule.lr_factor(k)
            noise = rng.normal(dim) if schedule.noise(k) else None
            config_t = temperature * -(theta * grad).sum(-1) / dim
            theta, velocity = self._update(theta, velocity, grad, precond.inverse_mass, eta, noise)
            finite = bool(torch.isfinite(theta).all())
            if finite and schedule.keep(k):  # never keep a non-finite draw
                last_kept[0] = k
                kept.append(theta.detach().cpu())
                stats["step_size"].append(torch.full((self.chains,), eta, dtype=torch.float64))
                stats["configurational_temperature"].append(config_t.detach().double().cpu())
                if self.has_momentum:
                    kinetic = self._kinetic_temperature(velocity, precond.inverse_mass, eta)
                    stats["kinetic_temperature"].append((temperature * kinetic).double().cpu())
            return {
                "finite": finite,
                "lp": lp,
                "postfix": {"lr": f"{eta:.2g}", "T_conf": f"{float(config_t.mean()):.3g}"},
            }

        burn = schedule.burn_in
        outcome = Driver(
            [("burn-in", burn), ("sampling", schedule.total_steps - burn)],
            progress=progress,
            callbacks=callbacks,
            desc=f"{type(self).__name__} ({self.chains} chains)",
        ).run(step)
        names = _STATS if self.has_momentum else _STATS[:2]
        if kept:
            draws = torch.stack(kept, dim=1)
            sample_stats = {k: torch.stack(stats[k], dim=1) for k in names}
        else:
            draws = theta.detach().cpu().new_zeros(self.chains, 0, dim)
            sample_stats = {}
        posterior = Posterior(
            draws,
            bnn,
            sample_stats,
            kind="mcmc",
            partial=outcome.partial,
            attrs={
                "inference": self.name,
                "lr": lr,
                "batch_size": batches.batch_size,
                "schedule": repr(schedule),
                "preconditioner": str(self.preconditioner),
                "stopped": outcome.reason or "",
            },
        )
        return finish(posterior, outcome)


def _drop_last(kept: list[Tensor], stats: dict[str, list[Tensor]]) -> None:
    """Remove the last kept draw and its statistics."""
    kept.pop()
    for values in stats.values():
        if values:
            values.pop()


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
