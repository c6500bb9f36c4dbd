"""One SVGD run as ``init``/``step`` over an explicit :class:`SVGDState` (:mod:`..driver`).

The :class:`SVGDRun` instance holds what is fixed for the run: the target (model, data,
minibatch stream), the update direction, the annealing schedule, the compiled step, and one
optimiser built over a persistent leaf tensor. Everything that changes from step to step is
in the :class:`SVGDState`: the particles, the optimiser's ``state_dict()``, the moments of an
update made inside the compiled graph, and every random stream. A State read from a checkpoint
is bound to the run before its first step (:meth:`SVGDRun.bind`): the particles are copied
into the leaf and the optimiser loads the state dict, so that the resumed run continues
exactly as the uninterrupted one. The annealing position is the step index, which the driver
restores.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ..base import Minibatches
from ..compilation import skip_guard_checks
from ..driver import Algorithm
from ..loaders import LoaderBatches
from ..state import state_record
from .annealing import annealing
from .blocks import ParticleBlocks
from .compiled import GraphMoments, compiled_step
from .directions import SteinDirection
from .targets import BNNTarget, DensityTarget, FunctionStreams, MeasurementLike

if TYPE_CHECKING:  # pragma: no cover
    from bayesdl.models import BNN

    from .svgd import SVGD

__all__ = ["SVGDRun", "SVGDState", "bnn_target"]


def bnn_target(
    svgd: SVGD,
    bnn: BNN,
    x: Tensor,
    y: Tensor,
    num_data: int,
    batch_seed: int | None,
    measurement: MeasurementLike = None,
    batches: Minibatches | LoaderBatches | None = None,
) -> BNNTarget:
    """The target of ``svgd`` on a BNN and its checked data, with ``svgd``'s settings
    (``measurement``: the checked measurement inputs). Its minibatches are ``batches``, or by
    default those of ``(x, y)`` of ``svgd.batch_size`` rows in the order ``batch_seed`` draws."""
    if batches is None:
        batches = Minibatches(x, y, svgd.batch_size, batch_seed)
    return BNNTarget(
        bnn,
        batches,
        num_data=num_data,
        measurement=measurement,
        measurement_size=svgd.measurement_size,
        prior_score=svgd.prior_score,
        prior_draws=svgd.prior_draws,
        ssge_eta=svgd.ssge_eta,
        ssge_threshold=svgd.ssge_threshold,
        function_space=svgd.function_space,
    )


@state_record
class SVGDState:
    """The state of an SVGD run.

    Attributes
    ----------
    theta
        The particles ``(P, D)`` (during a run, the optimiser's parameter itself).
    start
        The particles before the first step (for the end-of-run checks).
    optimizer
        The optimiser's ``state_dict()`` (moments, step counts).
    moments
        The optimiser state of an update made inside the compiled graph.
    noise
        The generator of the Langevin noise (stochastic SVGD).
    streams
        The measurement and prior draws of a function-space score (``None`` without).
    """

    theta: Tensor
    start: Tensor
    optimizer: dict[str, Any]
    moments: GraphMoments
    noise: torch.Generator
    streams: FunctionStreams | None = None


class SVGDRun(Algorithm[SVGDState]):
    """SVGD (any kernel, update and optimiser) as ``init``/``step`` for
    :func:`~bayesdl.inference.driver.run`.

    Parameters
    ----------
    svgd
        The backend's settings.
    target
        The log density, or the BNN and its data.
    init_theta
        The initial particles ``(P, D)``.
    seeds
        Seeds of the measurement draws, the prior draws and the Langevin noise.
    blocks
        In a run whose particles are shared over processes, which of them this process holds
        (``init_theta`` is then its block); the update gathers the others' each step
        (:mod:`.blocks`). Such a run steps eagerly (``compile`` is ignored).
    """

    def __init__(
        self,
        svgd: SVGD,
        target: DensityTarget | BNNTarget,
        init_theta: Tensor,
        seeds: Sequence[int],
        blocks: ParticleBlocks | None = None,
    ) -> None:
        self.svgd = svgd
        self.target = target
        self.seeds = list(seeds)
        self.blocks = ParticleBlocks(init_theta.shape[0]) if blocks is None else blocks
        self.leaf = init_theta.detach().clone()
        try:
            self.optimizer = svgd.optimizer([self.leaf], lr=svgd.lr, **svgd.optimizer_kwargs)
        except (TypeError, ValueError) as err:
            raise TypeError(
                f"optimizer_kwargs: {svgd.optimizer.__name__} rejected them: {err}"
            ) from err
        self.compiled = (
            compiled_step(svgd, target, self.leaf, self.optimizer)
            if svgd.compile and not self.blocks.shared
            else None
        )
        self.direction = SteinDirection.of(svgd)
        self.schedule = annealing(svgd.anneal, svgd.anneal_steps)

    def guards(self) -> contextlib.AbstractContextManager[Any]:
        """Where the run's steps go: with a compiled step, dynamo's guards are not re-checked
        (:func:`~..compilation.skip_guard_checks`)."""
        return skip_guard_checks() if self.compiled is not None else contextlib.nullcontext()

    def stages(self) -> list[tuple[str, int]]:
        return [("svgd", self.svgd.steps)]

    def init(self) -> SVGDState:
        theta = self.leaf
        streams = None
        if isinstance(self.target, BNNTarget):
            streams = self.target.streams(self.seeds[0], self.seeds[1])
        moments = GraphMoments() if self.compiled is None else self.compiled.moments(theta)
        noise = torch.Generator(device=theta.device).manual_seed(self.seeds[2])
        return SVGDState(theta, theta.clone(), self.optimizer.state_dict(), moments, noise, streams)

    def bind(self, state: SVGDState) -> SVGDState:
        """``state`` with its particles in the optimiser's leaf and the optimiser's state
        loaded from it (a State read from a checkpoint); a bound State as it is."""
        leaf = self.leaf
        if state.theta is leaf:
            return state
        with torch.no_grad():
            leaf.copy_(state.theta)
        state.theta = leaf
        state.start = state.start.to(device=leaf.device, dtype=leaf.dtype)
        self.optimizer.load_state_dict(state.optimizer)
        moments = state.moments
        for name in ("exp_avg", "exp_avg_sq"):
            value = getattr(moments, name)
            if value is not None:
                setattr(moments, name, value.to(device=leaf.device, dtype=leaf.dtype))
        return state

    def step(self, state: SVGDState, stage: str, i: int) -> tuple[SVGDState, dict[str, Any]]:
        state = self.bind(state)
        theta = state.theta
        previous = theta.detach().clone()
        batch = self.target.next_batch()
        gamma = float(self.schedule(i))
        if self.compiled is not None:
            phi, info, finite, step_norm = self.compiled(
                theta, batch, gamma, state.noise, state.moments
            )
        else:
            phi, info = self.direction(
                self.target, theta, batch, gamma, state.noise, state.streams, self.blocks
            )
            finite, norm = self._check(phi)
            if finite:
                theta.grad = -phi
                self.optimizer.step()
                finite = bool(torch.isfinite(theta).all())
            step_norm = float(norm / math.sqrt(self.blocks.particles)) if finite else math.nan
        if not finite:  # the NaN guard: keep the last finite particles
            with torch.no_grad():
                theta.copy_(previous)
        state.optimizer = self.optimizer.state_dict()
        postfix = {"h": f"{info['bandwidth']:.3g}", "|phi|": f"{step_norm:.3g}"}
        if "lp" in info:
            postfix["lp"] = f"{float(info['lp'].mean()):.4g}"
        return state, {
            **info,
            "theta": theta,
            "gamma": gamma,
            "step_norm": step_norm,
            "finite": finite,
            "postfix": postfix,
        }

    def _check(self, phi: Tensor) -> tuple[bool, Tensor]:
        """Whether the whole update is finite (over every process's particles, so that all
        keep or all undo the step), and its norm."""
        if not self.blocks.shared:
            return bool(torch.isfinite(phi).all()), phi.norm()
        local = torch.stack([(~torch.isfinite(phi)).sum().to(phi.dtype), phi.square().sum()])
        bad, square = self.blocks.sum(local)
        return not bool(bad), square.sqrt()

    def final_lp(self, state: SVGDState) -> Tensor:
        """The tempered log joint of each final particle on the last minibatch."""
        state = self.bind(state)
        return self.target.log_joint(state.theta.detach(), self.target.last_batch())
