r"""Mean-field variational inference as a bayesdl backend.

:class:`VI` fits a mean-field Gaussian :math:`q(\theta)` over the BNN's flat unconstrained
parameters by maximising the ELBO of :mod:`.elbo` with a stochastic-gradient optimiser on
minibatches (the likelihood scaled by ``num_data / batch_size``), and returns ``draws`` samples
from the fitted guide as one chain of a :class:`~bayesdl.Posterior` of kind ``"variational"``.

Two engines compute the same ELBO (same expectation, a test checks it):

* ``"functional"`` (default): vectorised over particles with ``torch.func``, the local
  reparameterisation trick for ``Linear``/``Conv`` layers (Kingma et al. 2015) and closed-form
  KL terms where the prior allows (:mod:`.elbo`);
* ``"pyro"``: Pyro's ``Trace_ELBO`` on ``bnn.model`` with an autoguide (:mod:`.pyro_engine`).

Where the result lives
----------------------
* ``posterior.theta``: ``(1, draws, D)`` draws from the guide;
* ``posterior.sample_stats["log_q"]``: ``(1, draws)``, the guide's log density at each draw;
* ``posterior.attrs["variational"]``: the guide's ``loc`` and ``scale`` ``(D,)`` (see
  :mod:`.guides`);
* ``posterior.attrs["elbo_trace"]``: ``(1, steps)``, the ELBO estimate at each optimisation
  step (with the KL weighted by the annealing weight of that step). It is not a
  ``sample_stats`` entry because those are per draw, and the trace is per step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Real
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from bayesdl import inputs
from bayesdl._checks import check_count, check_positive
from bayesdl._seeding import child_seeds, seeded
from bayesdl.posterior import Posterior

from ..base import Backend, Callback, Driver, Minibatches, RunOutcome, as_callbacks, finish
from ..checks import check_bnn, check_start
from ..optimizers import check_optimizer, make_optimizer
from .elbo import ElboEstimate, FunctionalELBO
from .guides import ATTR, MeanField, guide_from_posterior
from .optim import check_kl_anneal, check_lr_schedule, kl_weight, make_lr_scheduler
from .pyro_engine import PyroTrainer

if TYPE_CHECKING:  # pragma: no cover
    from bayesdl.models import BNN

__all__ = ["SEED_MASK", "VI", "FunctionalTrainer"]

_ENGINES = ("functional", "pyro")
_GUIDES = ("mean_field",)
_INITS = ("prior", "map")
_KLS = ("analytic", "mc")
#: Child-seed streams of one fit: initial guide, minibatch order, ELBO noise, final draws, masks.
#: ``SEED_MASK`` is unused by VI and reserved for the masks of SSVI
#: (:class:`~bayesdl.inference.SSVI`), which draws from the same five streams.
_SEED_INIT, _SEED_BATCHES, _SEED_NOISE, _SEED_DRAWS, SEED_MASK = range(5)


class FunctionalTrainer:
    """The functional engine's loss for a :class:`MeanField` guide.

    The trainer interface of the VI loop: :meth:`parameters` to optimise, :meth:`loss` (the
    negative ELBO at a minibatch, with what to record), :meth:`after_step` (a hook after each
    optimiser step; SSVI subclasses it to update its masks) and :meth:`family` (the guide).

    Parameters
    ----------
    elbo
        The ELBO estimator.
    family
        The guide whose parameters are optimised.
    num_data
        Size of the whole data set (scales a minibatch's log-likelihood).
    """

    def __init__(self, elbo: FunctionalELBO, family: MeanField, num_data: int) -> None:
        self.elbo = elbo
        self.guide = family
        self.num_data = num_data
        self.last: ElboEstimate | None = None  # the latest estimate (SSVI reads its gradient)

    def parameters(self) -> list[Tensor]:
        return self.guide.parameters()

    def loss(self, x: Tensor, y: Tensor, beta: float, step: int) -> tuple[Tensor, dict[str, Any]]:
        estimate = self.elbo(self.guide, x, y, self.num_data, beta)
        self.last = estimate
        objective = estimate.objective
        return -objective, {"elbo": float(objective.detach()), "kl": estimate.kl}

    def after_step(self, step: int, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        return {}

    def family(self) -> MeanField:
        return self.guide


class _PyroAdapter:
    """:class:`PyroTrainer` behind the trainer interface of the driver loop."""

    def __init__(self, trainer: PyroTrainer) -> None:
        self.trainer = trainer

    def parameters(self) -> list[Tensor]:
        return self.trainer.parameters()

    def loss(self, x: Tensor, y: Tensor, beta: float, step: int) -> tuple[Tensor, dict[str, Any]]:
        loss, objective = self.trainer.loss(x, y, beta)
        return loss, {"elbo": objective}

    def after_step(self, step: int, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        return {}

    def family(self) -> MeanField:
        return self.trainer.family()


class VI(Backend):
    r"""Mean-field Gaussian variational inference (Blundell et al. 2015) on any BNN.

    Parameters
    ----------
    steps
        Optimisation steps.
    lr
        Learning rate.
    optimizer
        A name, in any case: ``"adam"``, ``"adamw"``, ``"sgd"`` (momentum 0.9), ``"rmsprop"``,
        ``"adagrad"``; or a ``torch.optim.Optimizer`` subclass (built as ``cls(params, lr=lr)``).
        The same choice as :class:`~bayesdl.inference.SVGD`'s
        (:mod:`bayesdl.inference.optimizers`).
    batch_size
        Examples per minibatch; ``None`` uses the full data set at every step.
    num_particles
        Draws from the guide averaged per ELBO estimate.
    guide
        The variational family: ``"mean_field"`` (independent Gaussians over unconstrained
        ``theta``).
    local_reparam
        Sample the pre-activations of ``Linear``/``Conv`` layers instead of their weights (the
        local reparameterisation trick). ``None``: on for the functional engine, off for Pyro's
        (which has no such trick; ``True`` there raises).
    kl
        ``"analytic"``: closed-form entropy and prior terms where they exist (Gaussian, Laplace
        and correlated-Gaussian priors; Monte Carlo for heavy-tailed priors and hyper-latents);
        ``"mc"``: every term from draws. ``None``: analytic for the functional engine, ``"mc"``
        for Pyro's (its autoguides sample through a ``Delta`` site, so its KL is Monte Carlo).
    kl_anneal
        KL-annealing weight :math:`\beta_t` on the KL term, separate from the BNN's
        temperature: ``None`` (:math:`\beta = 1`), a warm-up fraction ``a`` in (0, 1]
        (linear from :math:`1 / (a\,\mathrm{steps})` to 1 over the first ``a * steps`` steps),
        or a callable ``(step, steps) -> beta``.
    init
        Initial guide means: ``"prior"`` (one draw from the prior), ``"map"`` (``init_steps``
        steps of MAP optimisation of the log joint from a prior draw), or a
        :class:`~bayesdl.Posterior` of the same BNN (a VI/SSVI posterior continues from its
        guide; any other from the mean and standard deviation of its draws).
    draws
        Draws from the fitted guide kept in the Posterior.
    engine
        ``"functional"`` or ``"pyro"`` (see the module doc).
    init_scale
        Initial standard deviation of every coordinate (except with a VI posterior as ``init``).
    init_steps
        MAP steps for ``init="map"``.
    lr_schedule
        ``"constant"`` or ``"cosine"`` (annealed to 0 over ``steps``).

    Examples
    --------
    >>> post = VI(steps=2000, lr=1e-2, batch_size=128).fit(bnn, x, y, seed=0)  # doctest: +SKIP
    >>> post.attrs["variational"]["scale"]  # the fitted standard deviations  # doctest: +SKIP
    """

    name = "vi"

    def __init__(
        self,
        steps: int = 1000,
        lr: float = 1e-2,
        optimizer: str | type[torch.optim.Optimizer] = "adam",
        batch_size: int | None = None,
        num_particles: int = 1,
        guide: str = "mean_field",
        local_reparam: bool | None = None,
        kl: str | None = None,
        kl_anneal: float | Any | None = None,
        init: str | Posterior = "prior",
        draws: int = 200,
        *,
        engine: str = "functional",
        init_scale: float = 1e-2,
        init_steps: int = 500,
        lr_schedule: str = "constant",
    ) -> None:
        self.steps = check_count("steps", steps)
        self.lr = check_positive("lr", lr)
        self.optimizer = check_optimizer(optimizer)
        self.batch_size = None if batch_size is None else check_count("batch_size", batch_size)
        self.num_particles = check_count("num_particles", num_particles)
        if guide not in _GUIDES:
            raise ValueError(f"guide: must be one of {_GUIDES}, got {guide!r}")
        self.guide = guide
        if engine not in _ENGINES:
            raise ValueError(f"engine: must be one of {_ENGINES}, got {engine!r}")
        self.engine = engine
        if local_reparam is not None and not isinstance(local_reparam, bool):
            raise TypeError(f"local_reparam: expected a bool or None, got {local_reparam!r}")
        if local_reparam and engine == "pyro":
            raise ValueError(
                "local_reparam: the Pyro engine samples weights directly; use "
                "local_reparam=False (or None) with engine='pyro'"
            )
        self.local_reparam = engine == "functional" if local_reparam is None else local_reparam
        if kl is not None and kl not in _KLS:
            raise ValueError(f"kl: must be one of {_KLS} or None, got {kl!r}")
        if kl == "analytic" and engine == "pyro":
            raise ValueError(
                "kl: Pyro's autoguides sample every site through a Delta, so its KL is Monte "
                "Carlo; use kl='mc' (or None) with engine='pyro'"
            )
        self.kl = kl or ("analytic" if engine == "functional" else "mc")
        self.kl_anneal = check_kl_anneal(kl_anneal)
        if isinstance(init, str):
            if init not in _INITS:
                raise ValueError(f"init: must be one of {_INITS} or a Posterior, got {init!r}")
        elif not isinstance(init, Posterior):
            raise TypeError(f"init: expected 'prior', 'map' or a Posterior, got {init!r}")
        self.init = init
        self.draws = check_count("draws", draws)
        self.init_scale = check_positive("init_scale", init_scale)
        self.init_steps = check_count("init_steps", init_steps)
        self.lr_schedule = check_lr_schedule(lr_schedule)

    # ------------------------------------------------------------------ fit
    def fit(
        self,
        bnn: BNN,
        x: Tensor,
        y: Tensor,
        *,
        seed: int | None = None,
        progress: bool = True,
        callbacks: Sequence[Callback] = (),
        num_data: int | None = None,
    ) -> Posterior:
        """Fit the guide to the posterior of ``bnn`` given ``(x, y)``.

        Parameters
        ----------
        bnn
            The model.
        x, y
            Training inputs and targets (checked before any work).
        seed
            Seed; the same seed gives the same guide and draws. The global RNG is untouched.
        progress
            Show a progress bar.
        callbacks
            Called with a :class:`~bayesdl.inference.base.StepEvent` after every step; its
            ``info`` holds ``elbo`` and ``beta`` (and SSVI's mask statistics).
        num_data
            Size of the full data set if ``(x, y)`` is a subsample (scales the likelihood).

        Returns
        -------
        Posterior
            ``(1, draws, D)`` draws from the fitted guide, ``kind="variational"``; marked
            partial after Ctrl-C (the draws then come from the guide as it was).
        """
        bnn = check_bnn(bnn)
        x, y = bnn.check_data(x, y)
        inputs.require_tensor(x, type(self).__name__)
        callbacks = as_callbacks(callbacks)
        num_data = _check_num_data(num_data, x.shape[0])
        self._check_model(bnn)
        seeds = child_seeds(seed, 5)
        batches = Minibatches(x, y, self.batch_size, seeds[_SEED_BATCHES])
        family = self._initial_guide(bnn, seeds[_SEED_INIT])
        check_start(bnn, family.loc.detach()[None], x, y)
        trace: list[float] = []
        with seeded(seeds[_SEED_NOISE]):
            runner = _Runner(self, bnn, family, batches, num_data, seeds, trace)
            stages = ([("map", self.init_steps)] if self.init == "map" else []) + [
                ("fit", self.steps)
            ]
            outcome = Driver(
                stages, progress=progress, callbacks=callbacks, desc=self._description()
            ).run(runner.step)
            family = runner.current_family()
        family = self._final_guide(bnn, family, seeds)
        posterior = self._posterior(bnn, family, trace, outcome, seeds[_SEED_DRAWS], runner, x[:1])
        return finish(posterior, outcome)

    # ------------------------------------------------------------------ hooks for SSVI
    def _check_model(self, bnn: BNN) -> None:
        """Raise before any work if the backend cannot serve ``bnn`` (SSVI adds checks)."""

    def _make_trainer(
        self, bnn: BNN, family: MeanField, x: Tensor, y: Tensor, num_data: int, seeds: list[int]
    ) -> Any:
        if self.engine == "pyro":
            return _PyroAdapter(PyroTrainer(bnn, family, x, y, num_data, self.num_particles))
        elbo = FunctionalELBO(
            bnn,
            x,
            local_reparam=self.local_reparam,
            kl=self.kl,
            num_particles=self.num_particles,
        )
        return FunctionalTrainer(elbo, family, num_data)

    def _final_guide(self, bnn: BNN, family: MeanField, seeds: list[int]) -> MeanField:
        """The guide the draws come from (SSVI masks one that never reached its trainer)."""
        return family

    def _extra_attrs(
        self, bnn: BNN, family: MeanField, trainer: Any, x_example: Tensor
    ) -> dict[str, Any]:
        return {}

    def _make_posterior(self, theta: Tensor, bnn: BNN, stats: dict, **kwargs: Any) -> Posterior:
        return Posterior(theta, bnn, stats, **kwargs)

    def _description(self) -> str:
        return f"VI ({self.engine})"

    # ------------------------------------------------------------------ pieces
    def _initial_guide(self, bnn: BNN, seed: int) -> MeanField:
        """The guide before optimisation (``init="map"`` starts from a prior draw)."""
        D = bnn.num_params
        if isinstance(self.init, Posterior):
            return self._guide_from(self.init, D, bnn)
        loc = bnn.init_theta(1, seed)[0]
        return MeanField(loc, torch.full_like(loc, self.init_scale))

    def _guide_from(self, posterior: Posterior, D: int, bnn: BNN) -> MeanField:
        if posterior.num_params != D:
            raise ValueError(
                f"init: the posterior has D={posterior.num_params} parameters, the BNN D={D}"
            )
        dtype, device = bnn.dtype, bnn.device
        if isinstance(posterior.attrs.get(ATTR), dict):
            stored = guide_from_posterior(posterior)
            loc = stored.loc.detach().to(dtype=dtype, device=device)
            scale = stored.scale().detach().to(dtype=dtype, device=device)
            if stored.mask is not None:
                mask = stored.mask.to(device)
                loc = torch.where(mask, loc, 0.0)
                scale = torch.where(mask, scale, self.init_scale)
            return MeanField(loc, scale)
        if posterior.num_draws == 0:
            raise ValueError("init: the posterior has no draws")
        draws = posterior.theta.reshape(-1, D).to(dtype=dtype, device=device)
        loc = draws.mean(0)
        if draws.shape[0] > 1:
            scale = draws.std(0).clamp_min(torch.finfo(dtype).tiny)
        else:
            scale = torch.full_like(loc, self.init_scale)
        return MeanField(loc, scale)

    def _posterior(
        self,
        bnn: BNN,
        family: MeanField,
        trace: list[float],
        outcome: RunOutcome,
        seed: int,
        runner: _Runner,
        x_example: Tensor,
    ) -> Posterior:
        generator = torch.Generator(device=family.loc.device).manual_seed(seed)
        theta = family.sample(self.draws, generator=generator)
        log_q = family.log_prob(theta)
        attrs: dict[str, Any] = {
            "inference": self.name,
            "engine": self.engine,
            "guide": self.guide,
            "steps": self.steps,
            "steps_run": len(trace),
            "lr": self.lr,
            "optimizer": self.optimizer
            if isinstance(self.optimizer, str)
            else self.optimizer.__name__,
            "batch_size": self.batch_size or 0,
            "num_particles": self.num_particles,
            "local_reparam": int(runner.uses_local_reparam),
            "kl": self.kl,
            "kl_anneal": self.kl_anneal
            if isinstance(self.kl_anneal, float)
            else str(self.kl_anneal),
            "init": self.init if isinstance(self.init, str) else "posterior",
            "temperature": bnn.temperature,
            "tempering": bnn.tempering,
            "final_elbo": trace[-1] if trace else math.nan,
            "stopped": outcome.reason or "",
            ATTR: family.state(),
            "elbo_trace": torch.tensor(trace, dtype=torch.float64)[None],
        }
        attrs.update(self._extra_attrs(bnn, family, runner.trainer, x_example))
        return self._make_posterior(
            theta[None],
            bnn,
            {"log_q": log_q[None]},
            kind="variational",
            partial=outcome.partial,
            attrs=attrs,
        )


class _Runner:
    """The step function of one fit: a MAP stage (optional), then the ELBO optimisation."""

    def __init__(
        self,
        vi: VI,
        bnn: BNN,
        family: MeanField,
        batches: Minibatches,
        num_data: int,
        seeds: list[int],
        trace: list[float],
    ) -> None:
        self.vi = vi
        self.bnn = bnn
        self.batches = batches
        self.num_data = num_data
        self.seeds = seeds
        self.trace = trace
        self.family = family
        self.trainer: Any = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: Any = None
        self.map_theta: Tensor | None = None
        self.map_optimizer: torch.optim.Optimizer | None = None

    @property
    def uses_local_reparam(self) -> bool:
        elbo = getattr(self.trainer, "elbo", None)
        return bool(elbo is not None and elbo.uses_local_reparam)

    def current_family(self) -> MeanField:
        """The guide as it is now (during the MAP stage: centred at the current estimate)."""
        if self.trainer is not None:
            return self.trainer.family()
        if self.map_theta is not None:
            loc = self.map_theta.detach()[0]
            return MeanField(loc, self.family.scale().detach())
        return self.family

    def step(self, stage: str, i: int) -> dict[str, Any]:
        if stage == "map":
            return self._map_step(i)
        return self._fit_step(i)

    def _map_step(self, i: int) -> dict[str, Any]:
        if self.map_theta is None:
            self.map_theta = self.family.loc.detach().clone()[None].requires_grad_(True)
            self.map_optimizer = make_optimizer(self.vi.optimizer, [self.map_theta], self.vi.lr)
        x, y = next(self.batches)
        log_joint = self.bnn.log_joint_fn(x, y, self.num_data, validate=False)(self.map_theta)[0]
        if not torch.isfinite(log_joint):
            return {"finite": False, "log_joint": float(log_joint.detach())}
        self.map_optimizer.zero_grad(set_to_none=True)
        (-log_joint).backward()
        self.map_optimizer.step()
        value = float(log_joint.detach())
        return {"log_joint": value, "postfix": {"log_joint": f"{value:.4g}"}}

    def _start(self, x: Tensor, y: Tensor) -> None:
        family = self.current_family()
        self.trainer = self.vi._make_trainer(self.bnn, family, x, y, self.num_data, self.seeds)
        self.optimizer = make_optimizer(self.vi.optimizer, self.trainer.parameters(), self.vi.lr)
        self.scheduler = make_lr_scheduler(self.vi.lr_schedule, self.optimizer, self.vi.steps)

    def _fit_step(self, i: int) -> dict[str, Any]:
        x, y = next(self.batches)
        if self.trainer is None:
            self._start(x, y)
        beta = kl_weight(self.vi.kl_anneal, i, self.vi.steps)
        self.optimizer.zero_grad(set_to_none=True)
        loss, info = self.trainer.loss(x, y, beta, i)
        if not torch.isfinite(loss):
            return {"finite": False, **info}
        loss.backward()
        params = self.trainer.parameters()
        if not all(bool(torch.isfinite(p.grad).all()) for p in params if p.grad is not None):
            return {"finite": False, **info}
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        self.trace.append(info["elbo"])
        info = {**info, "beta": beta, "postfix": {"elbo": f"{info['elbo']:.4g}"}}
        info.update(self.trainer.after_step(i + 1, self.optimizer))
        return info


def _check_num_data(num_data: int | None, n: int) -> int:
    if num_data is None:
        return n
    if isinstance(num_data, bool) or not isinstance(num_data, Real) or int(num_data) != num_data:
        raise TypeError(f"num_data: expected an integer, got {num_data!r}")
    if num_data < n:
        raise ValueError(f"num_data: {num_data} is smaller than the number of examples {n}")
    return int(num_data)
