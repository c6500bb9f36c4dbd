r"""VI and SSVI as ``init``/``step`` over a :class:`~.records.VIState`, for the one driver.

A fit runs an optional ``"map"`` stage (``init="map"``: ``init_steps`` optimiser steps on
:math:`-\log p(\theta, \mathcal D)` from the initial guide's means), then the ``"fit"`` stage:
optimiser steps on the negative ELBO, the KL weighted by :math:`\beta_t`
(:func:`~.optim.kl_weight`). At the first fit step the guide is centred at the MAP estimate
(if any) and handed to the backend's :meth:`~.vi.VI.start_guide` (SSVI masks it).

**What the State holds, what the algorithm keeps.** Everything that changes from step to
step is in the :class:`~.records.VIState` each step returns: the guide's leaves, the MAP
estimate, the ``state_dict()`` of the optimiser and learning-rate scheduler, the noise stream,
SSVI's masks, counters and the ELBO trace. ``torch.optim`` objects cannot be written to a
checkpoint, so the algorithm keeps the live optimiser, scheduler and trainer of the State it
last returned (:class:`_Live`), built over the State's own tensors; given any other State (the
first step of a stage, or a State read from a checkpoint) it builds fresh ones over that
State's tensors and loads the stored state dicts into them. Either way the next step computes
the same numbers, so a resumed run repeats the uninterrupted one bit for bit.

**Noise.** The ELBO's draws come from torch's global generator (``torch.randn``, Pyro); each
step runs with the State's stream swapped in (:class:`bayesdl._seeding.PrivateStream`), so the
caller's random state is untouched and the stream continues from step to step and across a
resume.

**Over several processes** (:mod:`.data_parallel`): each step evaluates this process's share
of the minibatch (:class:`~.data_parallel.DataShare`), weighted so that the sum over processes
is the one-process estimate; the ELBO (or log joint) and the gradients are summed over the
processes before the optimiser step, so every process keeps the same guide. The values that
decide a non-finite step are the sums, the same on every process.

The Pyro engine's guide lives in a Pyro autoguide, which the algorithm keeps for the run; the
State mirrors its means and scales after each step, but a Pyro run cannot be resumed
(:meth:`~.vi.VI.fit` refuses ``checkpoint`` and ``resume`` with ``engine="pyro"``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor

from bayesdl._seeding import PrivateStream

from ..base import Minibatches
from ..driver import Algorithm, Problem
from ..loaders import LoaderBatches
from ..optimizers import make_optimizer
from .data_parallel import DataShare
from .elbo import FunctionalELBO
from .guides import MeanField
from .optim import kl_weight, make_lr_scheduler
from .pyro_engine import PyroTrainer
from .records import SEED_DRAWS, SEED_MASK, SEED_NOISE, VIState
from .trainers import PyroAdapter

if TYPE_CHECKING:  # pragma: no cover
    from .vi import VI

__all__ = ["VIAlgorithm"]


@dataclass
class _Live:
    """The optimiser (and fit stage's scheduler and trainer) over one State's tensors."""

    state: VIState
    stage: str
    optimizer: torch.optim.Optimizer
    scheduler: Any = None
    trainer: Any = None


class VIAlgorithm(Algorithm[VIState]):
    """One VI or SSVI fit: settings of ``vi``, data of ``problem``, minibatches ``batches``.

    Parameters
    ----------
    vi
        The backend (its settings and hooks).
    problem
        The checked inputs; ``problem.init_theta[0]`` are the initial guide's means.
    batches
        The run's minibatch stream.
    streams
        The child seeds of the fit (:mod:`.records`).
    raw_scale
        The initial guide's :math:`\\rho` ``(D,)``.
    share
        How the minibatches are shared over processes (default: one process).
    """

    def __init__(
        self,
        vi: VI,
        problem: Problem,
        batches: Minibatches | LoaderBatches,
        streams: list[int],
        raw_scale: Tensor,
        share: DataShare | None = None,
    ) -> None:
        self.vi = vi
        self.problem = problem
        self.batches = batches
        self.streams = streams
        self.raw_scale = raw_scale
        self.share = DataShare(None, False) if share is None else share
        self._elbo: FunctionalELBO | None = None
        self._live: _Live | None = None
        # the vehicle of the State's noise stream (its own seed is never used)
        self._stream = PrivateStream(0, problem.bnn.device)

    # ------------------------------------------------------------------ Algorithm
    def stages(self) -> list[tuple[str, int]]:
        vi = self.vi
        return ([("map", vi.init_steps)] if vi.init == "map" else []) + [("fit", vi.steps)]

    def init(self) -> VIState:
        stream = PrivateStream(self.streams[SEED_NOISE], self.problem.bnn.device)
        return VIState(
            loc=self.problem.init_theta[0].detach(),
            raw_scale=self.raw_scale.detach(),
            noise=stream.cpu,
            noise_cuda=list(stream.cuda),
            draws_seed=self.streams[SEED_DRAWS],
            mask_seed=self.streams[SEED_MASK],
            sparse=self.vi.mask_record(self.streams),
        )

    def step(self, state: VIState, stage: str, i: int) -> tuple[VIState, dict[str, Any]]:
        self._to_device(state)
        stream = self._stream
        stream.cpu, stream.cuda = state.noise, list(state.noise_cuda)
        with stream:
            info = self._map_step(state) if stage == "map" else self._fit_step(state, i)
        state.noise, state.noise_cuda = stream.cpu, list(stream.cuda)
        state.steps += 1
        return state, info

    def _to_device(self, state: VIState) -> None:
        """Move the guide of a State read from a checkpoint (on the CPU) to the BNN's device.

        The optimiser's and scheduler's state dicts follow their parameters when loaded; the
        random streams' states are CPU byte tensors wherever the run is.
        """
        device = self.problem.bnn.device
        if state.loc.device == device:
            return
        state.loc, state.raw_scale = state.loc.to(device), state.raw_scale.to(device)
        if state.mask is not None:
            state.mask = state.mask.to(device)
        if state.map_theta is not None:
            state.map_theta = state.map_theta.to(device)

    # ------------------------------------------------------------------ results
    def family(self, state: VIState) -> MeanField:
        """The guide as it is in ``state`` (during the MAP stage: centred at the estimate)."""
        self._to_device(state)  # a State resumed when already done took no step here
        if not state.started and state.map_theta is not None:
            return MeanField(state.map_theta.detach()[0], F.softplus(state.raw_scale.detach()))
        return MeanField.from_raw(state.loc, state.raw_scale, state.mask)

    def uses_local_reparam(self, state: VIState) -> bool:
        """Whether the fit stage ran (or runs) layers with the local reparameterisation."""
        return self.vi.engine == "functional" and state.started and self.elbo().uses_local_reparam

    def elbo(self) -> FunctionalELBO:
        """The functional engine's ELBO estimator (fixed for the run; built once)."""
        if self._elbo is None:
            vi = self.vi
            self._elbo = FunctionalELBO(
                self.problem.bnn,
                self.problem.x,
                local_reparam=vi.local_reparam,
                kl=vi.kl,
                num_particles=vi.num_particles,
            )
        return self._elbo

    # ------------------------------------------------------------------ MAP stage
    def _map_step(self, state: VIState) -> dict[str, Any]:
        if state.map_theta is None:
            state.map_theta = state.loc.detach().clone()[None]
        live = self._map_live(state)
        theta = state.map_theta
        shard = self.share.split(*next(self.batches))
        bnn = self.problem.bnn
        log_joint_fn = bnn.log_joint_fn(shard.x, shard.y, self.problem.num_data, validate=False)
        log_joint = log_joint_fn(theta)[0]
        if self.share.group is not None:  # this process's share of the estimate
            log_joint = shard.weight * log_joint
        total = self.share.total(log_joint.detach())
        if not torch.isfinite(total):
            return {"finite": False, "log_joint": float(total)}
        live.optimizer.zero_grad(set_to_none=True)
        (-log_joint).backward()
        self.share.reduce_gradients([theta])
        live.optimizer.step()
        value = float(total)
        return {"log_joint": value, "postfix": {"log_joint": f"{value:.4g}"}}

    def _map_live(self, state: VIState) -> _Live:
        live = self._live
        if live is not None and live.state is state and live.stage == "map":
            return live
        state.map_theta = state.map_theta.detach().requires_grad_(True)
        optimizer = make_optimizer(self.vi.optimizer, [state.map_theta], self.vi.lr)
        if state.optimizer is not None:
            optimizer.load_state_dict(state.optimizer)
        self._live = _Live(state, "map", optimizer)
        return self._live

    # ------------------------------------------------------------------ fit stage
    def _fit_step(self, state: VIState, i: int) -> dict[str, Any]:
        vi = self.vi
        shard = self.share.split(*next(self.batches))
        if not state.started:
            self._start(state)
        live = self._fit_live(state, shard.x, shard.y)
        beta = kl_weight(vi.kl_anneal, i, vi.steps)
        live.optimizer.zero_grad(set_to_none=True)
        loss, info = live.trainer.loss(shard.x, shard.y, beta, i, shard.rows)
        total = loss.detach()
        if self.share.group is not None:  # this process's share; the sums decide and report
            loss = shard.weight * loss
            parts = torch.stack([loss.detach(), loss.new_tensor(shard.weight * info["elbo"])])
            sums = self.share.total(parts)
            total, info = sums[0], {**info, "elbo": float(sums[1])}
        if not torch.isfinite(total):
            return {"finite": False, **info}
        loss.backward()
        params = live.trainer.parameters()
        self.share.reduce_gradients(params)
        if not all(bool(torch.isfinite(p.grad).all()) for p in params if p.grad is not None):
            return {"finite": False, **info}
        live.optimizer.step()
        if live.scheduler is not None:
            live.scheduler.step()
        state.trace.append(info["elbo"])
        info = {**info, "beta": beta, "postfix": {"elbo": f"{info['elbo']:.4g}"}}
        info.update(live.trainer.after_step(i + 1, live.optimizer))
        return info

    def _start(self, state: VIState) -> None:
        """The guide of the fit stage: the MAP estimate's (if any), as the backend starts it."""
        family = self.vi.start_guide(self.problem.bnn, self.family(state), state)
        state.loc, state.raw_scale, state.mask = family.loc, family.raw_scale, family.mask
        state.map_theta, state.optimizer, state.scheduler = None, None, None
        state.started = True

    def _fit_live(self, state: VIState, x: Tensor, y: Tensor) -> _Live:
        live = self._live
        if live is not None and live.state is state and live.stage == "fit":
            return live
        vi, problem = self.vi, self.problem
        family = MeanField.from_raw(state.loc, state.raw_scale, state.mask)
        state.loc, state.raw_scale = family.loc, family.raw_scale
        if vi.engine == "pyro":
            pyro = PyroTrainer(problem.bnn, family, x, y, problem.num_data, vi.num_particles)
            trainer: Any = PyroAdapter(pyro)
        else:
            trainer = vi.make_trainer(
                problem.bnn, family, self.elbo(), problem.num_data, state, self.share
            )
        optimizer = make_optimizer(vi.optimizer, trainer.parameters(), vi.lr)
        scheduler = make_lr_scheduler(vi.lr_schedule, optimizer, vi.steps)
        if state.optimizer is not None:
            optimizer.load_state_dict(state.optimizer)
        if scheduler is not None and state.scheduler is not None:
            scheduler.load_state_dict(state.scheduler)
        self._live = _Live(state, "fit", optimizer, scheduler, trainer)
        return self._live

    def record(self, state: VIState) -> VIState:
        """Copy what the live objects changed into the State: the guide's tensors and the
        optimiser's and scheduler's state (the driver asks before a checkpoint and at the end,
        not at every step: building the state dicts costs a step's tenth on a small model)."""
        live = self._live
        if live is None or live.state is not state:
            return state
        if live.stage == "fit":
            family = live.trainer.family()
            state.loc, state.raw_scale, state.mask = family.loc, family.raw_scale, family.mask
            state.scheduler = None if live.scheduler is None else live.scheduler.state_dict()
        state.optimizer = live.optimizer.state_dict()
        return state
