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
* ``posterior.attrs["distributed"]``: in a fit shared over processes, which rank returned it
  (every rank returns the same guide and draws).

Data and processes
------------------
``fit`` takes the data as tensors or as a ``torch.utils.data.DataLoader`` of ``(x, y)`` batches
(or an ``IterableDataset`` batched by ``batch_size``), for data that do not fit in memory
(:mod:`bayesdl.inference.loaders`). Under a ``torch.distributed`` process group the fit is data
parallel (:mod:`.data_parallel`): every process holds the whole guide and evaluates its share
of each minibatch, and the gradients are summed over the processes.

The steps themselves (a MAP stage, then the ELBO optimisation) are
:class:`~.algorithm.VIAlgorithm`, run by :func:`~bayesdl.inference.driver.run`, which also
writes checkpoints and resumes from them; the trainers of the two engines are in
:mod:`.trainers`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from bayesdl._checks import check_count, check_positive
from bayesdl.posterior import Posterior

from ..base import Backend, Callback, RunOutcome, finish
from ..driver import RunControl, Seeds, identity_of, prepare, run
from ..optimizers import check_optimizer
from .algorithm import VIAlgorithm
from .data_parallel import DataShare
from .elbo import FunctionalELBO
from .guides import ATTR, MeanField, guide_from_posterior
from .optim import check_kl_anneal, check_lr_schedule
from .records import NUM_SEED_STREAMS, SEED_BATCHES, SEED_INIT, VIState
from .trainers import FunctionalTrainer

if TYPE_CHECKING:  # pragma: no cover
    from bayesdl.models import BNN

__all__ = ["VI"]

_ENGINES = ("functional", "pyro")
_GUIDES = ("mean_field",)
_INITS = ("prior", "map")
_KLS = ("analytic", "mc")


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

    def __repr__(self) -> str:
        """The settings, as for every backend; a callable ``kl_anneal`` is shown by its
        qualified name, not its address, so that the settings a checkpoint records match
        those of the same fit in another process (``resume`` compares them)."""
        text = super().__repr__()
        if callable(self.kl_anneal):
            fn = self.kl_anneal
            name = getattr(fn, "__qualname__", type(fn).__qualname__)
            text = text.replace(repr(fn), f"{getattr(fn, '__module__', '')}.{name}")
        return text

    # ------------------------------------------------------------------ fit
    def fit(
        self,
        bnn: BNN,
        x: Tensor | DataLoader,
        y: Tensor | None = None,
        *,
        seed: int | None = None,
        progress: bool = True,
        callbacks: Callback | Sequence[Callback] = (),
        num_data: int | None = None,
        checkpoint: str | os.PathLike | None = None,
        checkpoint_every: int | None = None,
        resume: str | os.PathLike | None = None,
        distributed: bool | None = None,
    ) -> Posterior:
        """Fit the guide to the posterior of ``bnn`` given ``(x, y)``.

        Parameters
        ----------
        bnn
            The model.
        x, y
            Training inputs and targets (checked before any work); or ``x`` a
            ``torch.utils.data.DataLoader`` of ``(x, y)`` batches (or an ``IterableDataset``,
            batched by ``batch_size``) and ``y=None``, for data that do not fit in memory
            (:mod:`bayesdl.inference.loaders`; each batch is checked as it comes, a shuffling
            loader is shuffled from ``seed``, and ``batch_size`` must be ``None`` with a
            DataLoader, which sets it).
        seed
            Seed; the same seed gives the same guide and draws. The global RNG is untouched.
        progress
            Show a progress bar.
        callbacks
            Called with a :class:`~bayesdl.inference.base.StepEvent` after every step; its
            ``info`` holds ``elbo`` and ``beta`` (and SSVI's mask statistics).
        num_data
            Size of the full data set if ``(x, y)`` is a subsample (scales the likelihood);
            default: the rows given, or the DataLoader's dataset length.
        checkpoint, checkpoint_every, resume
            Write the run's state to ``checkpoint`` every ``checkpoint_every`` steps and when
            it stops; continue a run from such a file with ``resume`` (the result equals the
            uninterrupted run's; see :mod:`bayesdl.inference.driver`). The Pyro engine keeps
            its guide in Pyro objects and cannot write or resume checkpoints (``ValueError``).
        distributed
            Share each minibatch's rows over the ``torch.distributed`` process group (data
            parallel: every process holds the whole guide and the same noise stream, weights
            its share of the ELBO by its share of the rows, and the gradients are summed over
            the processes, so every process keeps the same guide; a DataLoader is sharded so
            that each process reads its own rows). Default: whenever a group of more than one
            process is initialised (:mod:`bayesdl.distributed`). The result equals the
            one-process run's on the same global minibatches up to the order of
            floating-point sums. Each process writes (and resumes from) its own checkpoint
            file. The Pyro engine runs in one process only (``ValueError``; give
            ``distributed=False`` under a process group).

        Returns
        -------
        Posterior
            ``(1, draws, D)`` draws from the fitted guide, ``kind="variational"``; marked
            partial after Ctrl-C (the draws then come from the guide as it was).
        """
        control = RunControl.of(
            progress, callbacks, checkpoint, checkpoint_every, resume, distributed
        )
        if self.engine == "pyro":
            if control.ranks is not None:
                raise ValueError(
                    "distributed: the Pyro engine runs in one process only; use "
                    "engine='functional' to share a fit over processes, or distributed=False"
                )
            for name, value in (("checkpoint", checkpoint), ("resume", resume)):
                if value is not None:
                    raise ValueError(
                        f"{name}: the Pyro engine keeps its guide in Pyro objects, which a "
                        "checkpoint cannot hold; use engine='functional' to checkpoint a run"
                    )
        streams = Seeds.of(seed, 1).children(NUM_SEED_STREAMS)
        initial: list[MeanField] = []

        def initial_loc(bnn: BNN, _: Seeds) -> Tensor:
            initial.append(self._initial_guide(bnn, streams[SEED_INIT]))
            return initial[0].loc.detach()[None]

        problem = prepare(
            bnn,
            x,
            y,
            chains=1,
            seed=seed,
            num_data=num_data,
            tensor_inputs=type(self).__name__,
            default_init=initial_loc,
            batch_size=self.batch_size,
        )
        bnn, x = problem.bnn, problem.x
        self._check_model(bnn)
        batches = problem.minibatches(self.batch_size, streams[SEED_BATCHES], control.ranks)
        share = DataShare(control.ranks, sharded=problem.loader is not None)
        if control.ranks is not None and problem.loader is None:
            share.check_rows(batches.batch_size)
        raw_scale = initial[0].raw_scale.detach()
        algorithm = VIAlgorithm(self, problem, batches, streams, raw_scale, share)
        result = run(
            algorithm,
            control,
            desc=self._description(),
            identity=identity_of(self, problem),
            batches=batches,
        )
        state: VIState = result.state
        family = self.final_guide(bnn, algorithm.family(state), state)
        posterior = self._posterior(bnn, family, state, result.outcome, algorithm, x[:1])
        return finish(posterior, result.outcome)

    # ------------------------------------------------------------------ hooks (SSVI overrides)
    def mask_record(self, streams: list[int]) -> Any:
        """What the backend adds to the run's State (SSVI: its masks' record); VI: ``None``."""
        return None

    def start_guide(self, bnn: BNN, family: MeanField, state: VIState) -> MeanField:
        """The guide the fit stage starts from, given the initial (or MAP-centred) one."""
        return family

    def make_trainer(
        self,
        bnn: BNN,
        family: MeanField,
        elbo: FunctionalELBO,
        num_data: int,
        state: VIState,
        share: DataShare | None = None,
    ) -> FunctionalTrainer:
        """The functional engine's trainer of ``family`` (built again on resume); ``share``
        is for trainers with statistics of their own to sum over processes (SSVI's)."""
        return FunctionalTrainer(elbo, family, num_data)

    def final_guide(self, bnn: BNN, family: MeanField, state: VIState) -> MeanField:
        """The guide the draws come from (SSVI masks one that never reached the fit stage)."""
        return family

    def _check_model(self, bnn: BNN) -> None:
        """Raise before any step if the backend cannot serve ``bnn`` (SSVI adds checks)."""

    def _extra_attrs(
        self, bnn: BNN, family: MeanField, state: VIState, x_example: Tensor
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
        state: VIState,
        outcome: RunOutcome,
        algorithm: VIAlgorithm,
        x_example: Tensor,
    ) -> Posterior:
        generator = torch.Generator(device=family.loc.device).manual_seed(state.draws_seed)
        theta = family.sample(self.draws, generator=generator)
        log_q = family.log_prob(theta)
        trace = state.trace
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
            "batch_size": self.batch_size or _loader_batch_size(algorithm.problem.loader),
            "num_particles": self.num_particles,
            "local_reparam": int(algorithm.uses_local_reparam(state)),
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
        attrs.update(self._extra_attrs(bnn, family, state, x_example))
        attrs.update(algorithm.share.note())
        return self._make_posterior(
            theta[None],
            bnn,
            {"log_q": log_q[None]},
            kind="variational",
            partial=outcome.partial,
            attrs=attrs,
        )


def _loader_batch_size(loader: DataLoader | None) -> int:
    """The batch size a DataLoader sets (0: none given, or full batches of tensors)."""
    return 0 if loader is None else int(loader.batch_size or 0)
