"""The one run of every backend: checks, seeds, the step loop, draws, checkpoints and resume.

An algorithm is written as ``init() -> State`` and ``step(state, stage, i) -> (State, Info)``
over an explicit State record (:mod:`.state`); everything around the steps is here, the same
for every backend:

* :func:`prepare` checks the model and data, resolves ``num_data``, the seed streams
  (:class:`Seeds`) and the initial parameters (``init_theta``, or draws from the prior), and
  checks that the run can start (:func:`~.checks.check_start`);
* :func:`run` runs the steps on the :class:`~.base.Driver` loop (progress bar, callbacks,
  Ctrl-C at step boundaries, the NaN guard), keeps the draws a step hands back
  (:class:`Draws`), and writes and reads **checkpoints**.

**Checkpoint and resume.** With ``checkpoint=path`` the run writes its state (the algorithm's
State record, the draws so far, the minibatch stream and where in the stages it is) to
``path`` every ``checkpoint_every`` steps, and when it stops (finished, or after Ctrl-C).
``resume=path`` continues a run from such a file: the algorithm's state is read instead of
initialised, and the run goes on from the step after the checkpoint. Because every random
stream and every adapted quantity is in the State, **a resumed run returns the same posterior,
bit for bit, as the run that was never stopped** (on the same machine, data and settings; the
file records the settings, the parameter layout and a fingerprint of the data, and ``resume``
refuses a file that does not match). ``seed`` and ``init_theta`` are not used on resume: the
file's random streams and positions continue.
"""

from __future__ import annotations

import dataclasses
import math
import os
import pathlib
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from numbers import Real
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from bayesdl import inputs
from bayesdl._checks import check_count
from bayesdl._seeding import child_seeds
from bayesdl.distributed import Ranks, agree_stop, gather_blocks, ranks

from .base import Callback, Driver, Minibatches, RunOutcome, as_callbacks
from .checks import check_bnn, check_start
from .loaders import LoaderBatches, as_loader, dataset_size, first_batch, is_loader
from .memory import keep_freed_memory
from .rng import ChainRNG
from .state import check_path, read_checkpoint, state_record, write_checkpoint

if TYPE_CHECKING:  # pragma: no cover
    from bayesdl.inputs import Inputs
    from bayesdl.models import BNN

__all__ = [
    "CHECKPOINT_SECONDS",
    "Algorithm",
    "Draws",
    "Problem",
    "RunControl",
    "RunResult",
    "Seeds",
    "check_init_theta",
    "check_num_data",
    "gather_chains",
    "identity_of",
    "prepare",
    "run",
    "split_chains",
]

#: Without ``checkpoint_every``, a checkpoint is written at most this often (seconds of run).
CHECKPOINT_SECONDS = 300.0

State = TypeVar("State")


class Algorithm(ABC, Generic[State]):
    """One inference algorithm of a run: stages, and ``init``/``step`` over a State record.

    An instance is built for one run (it may hold the run's log density, data and compiled
    functions); everything that changes from step to step is in the State it returns, never in
    the instance, so that a State read from a checkpoint continues the run exactly.
    """

    @abstractmethod
    def stages(self) -> Sequence[tuple[str, int]]:
        """``[(stage name, number of steps), ...]`` in order (e.g. warmup, then sampling)."""

    @abstractmethod
    def init(self) -> State:
        """The State before the first step."""

    @abstractmethod
    def step(self, state: State, stage: str, i: int) -> tuple[State, dict[str, Any]]:
        """Step ``i`` of ``stage``: the new State and the step's info.

        The info is what callbacks see (:class:`~.base.StepEvent`); keys the driver reads:

        ``finite`` (bool, default True)
            False stops the run (the NaN guard).
        ``postfix`` (dict)
            Shown on the progress bar.
        ``draw`` (``(theta, stats)``)
            A draw to keep: ``theta`` ``(chains, D)`` and a dict of per-chain statistics.
        ``drop_last`` (bool)
            Remove the last kept draw (it turned out not to be finite).
        """

    def record(self, state: State) -> State:
        """``state`` with everything the algorithm keeps in live objects copied into it.

        An algorithm may keep, for speed, objects that mirror parts of its State between steps
        (a ``torch.optim`` optimiser over the State's tensors, whose moments would otherwise be
        copied into the State at every step); the driver calls this before it writes a
        checkpoint and when the run ends, so that the State is then complete. Default: the
        State is always complete.
        """
        return state


@state_record
class Draws:
    """The draws kept so far: one ``(chains, D)`` tensor per kept step, and their statistics.

    Attributes
    ----------
    theta
        Kept positions, on the CPU.
    stats
        Per-chain statistics of each kept draw, by name.
    """

    theta: list[Tensor] = field(default_factory=list)
    stats: dict[str, list[Tensor]] = field(default_factory=dict)

    def append(self, theta: Tensor, stats: Mapping[str, Tensor]) -> None:
        self.theta.append(theta.detach().cpu())
        for name, value in stats.items():
            self.stats.setdefault(name, []).append(value.detach().cpu())

    def drop_last(self) -> None:
        self.theta.pop()
        for values in self.stats.values():
            values.pop()

    def __len__(self) -> int:
        return len(self.theta)

    def stacked(self, chains: int, dim: int, dtype: torch.dtype) -> tuple[Tensor, dict]:
        """``theta`` ``(chains, draws, D)`` and statistics ``(chains, draws)``; with no draw,
        an empty ``(chains, 0, D)`` and no statistics."""
        if not self.theta:
            return torch.zeros(chains, 0, dim, dtype=dtype), {}
        stats = {k: torch.stack(v, dim=1) for k, v in self.stats.items()}
        return torch.stack(self.theta, dim=1), stats


@dataclass(frozen=True)
class Seeds:
    """The seed streams of a run, from ``fit(..., seed=)``.

    ``seed`` is one integer (or ``None``: fresh entropy), or one integer per chain. ``base``
    seeds what a run does once (initial draws, minibatch order); chain ``c``'s stream
    (:meth:`chain_rng`) depends only on its own seed, so a chain makes the same draws alone or
    beside others.
    """

    seed: int | tuple[int, ...] | None
    chains: int
    block: tuple[int, int] | None = None

    @classmethod
    def of(cls, seed: object, chains: int) -> Seeds:
        if seed is None or (isinstance(seed, int) and not isinstance(seed, bool)):
            if seed is not None and seed < 0:
                raise ValueError(f"seed: expected a non-negative integer or None, got {seed!r}")
            return cls(seed, chains)
        if isinstance(seed, (str, bytes)) or not isinstance(seed, Sequence):
            raise TypeError(
                f"seed: expected an integer, None, or one integer per chain, got "
                f"{type(seed).__name__}"
            )
        seeds = tuple(seed)
        if len(seeds) != chains or not all(
            isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds
        ):
            raise ValueError(
                f"seed: expected an integer or {chains} non-negative integers (one per chain), "
                f"got {seed!r}"
            )
        return cls(seeds, chains)

    @property
    def base(self) -> int | None:
        """The seed itself, or the first per-chain seed."""
        return self.seed[0] if isinstance(self.seed, tuple) else self.seed

    def chain_rng(self, device: torch.device | str, dtype: torch.dtype) -> ChainRNG:
        """One random stream per chain (:class:`~.rng.ChainRNG`); in a run split over
        processes, those of this process's :attr:`block` of chains (the same streams)."""
        rng = ChainRNG.from_seed(self.seed, self.chains, device=device, dtype=dtype)
        if self.block is not None:
            rng.generators = rng.generators[self.block[0] : self.block[1]]
        return rng

    def children(self, n: int) -> list[int]:
        """``n`` further independent seeds derived from :attr:`base`."""
        return child_seeds(self.base, n)


@dataclass(frozen=True)
class RunControl:
    """How a run is driven, as given to ``fit``: progress, callbacks, checkpoints, resume."""

    progress: bool = True
    callbacks: tuple[Callback, ...] = ()
    checkpoint: Any = None
    checkpoint_every: int | None = None
    resume: Any = None
    ranks: Ranks | None = None

    @classmethod
    def of(
        cls,
        progress: bool = True,
        callbacks: Callback | Sequence[Callback] = (),
        checkpoint: object = None,
        checkpoint_every: object = None,
        resume: object = None,
        distributed: bool | None = None,
    ) -> RunControl:
        """Checked options; errors name the argument. ``distributed`` chooses whether the
        run is shared over the process group (:func:`bayesdl.distributed.ranks`)."""
        every = (
            None if checkpoint_every is None else check_count("checkpoint_every", checkpoint_every)
        )
        if every is not None and checkpoint is None:
            raise ValueError("checkpoint_every: give checkpoint=path too (where to write)")
        if (
            resume is not None
            and not isinstance(resume, (str, bytes))
            and not hasattr(resume, "__fspath__")
        ):
            raise TypeError(
                f"resume: expected the path of a checkpoint file, got {type(resume).__name__}"
            )
        group = ranks(distributed)
        return cls(
            bool(progress) and (group is None or group.root),
            as_callbacks(callbacks),
            _per_rank(check_path("checkpoint", checkpoint), group),
            every,
            _per_rank(resume, group),
            group,
        )


@dataclass
class Problem:
    """A BNN run's checked inputs (:func:`prepare`).

    Attributes
    ----------
    bnn, x, y
        The model and the checked data (with a DataLoader: its first batch).
    num_data
        Size of the full data set (the likelihood is scaled by ``num_data / len(x)``).
    init_theta
        Initial parameters ``(chains, D)`` on the BNN's dtype and device.
    seeds
        The run's seed streams.
    """

    bnn: BNN
    x: Inputs
    y: Tensor
    num_data: int
    init_theta: Tensor
    seeds: Seeds
    loader: DataLoader | None = None

    def minibatches(
        self, batch_size: int | None, seed: int | None, group: Ranks | None = None
    ) -> Minibatches | LoaderBatches:
        """The run's stream of minibatches: of the tensors ``(x, y)`` (``batch_size`` rows,
        :class:`~.base.Minibatches`), or of the DataLoader the data came in
        (:class:`~.loaders.LoaderBatches`, sharded over ``group``)."""
        if self.loader is None:
            return Minibatches(self.x, self.y, batch_size, seed)
        return LoaderBatches(self.loader, self.bnn.check_data, self.num_data, seed, group)

    @property
    def block(self) -> tuple[int, int] | None:
        """This process's ``[start, stop)`` of the chains in a run split over processes."""
        return self.seeds.block


def _per_rank(path: Any, group: Ranks | None) -> Any:
    """In a run over several processes each writes (and resumes from) its own file:
    ``path`` with ``.rank<r>of<world>`` appended."""
    if path is None or group is None:
        return path
    return pathlib.Path(f"{os.fspath(path)}.rank{group.rank}of{group.world}")


def check_num_data(num_data: object, rows: int) -> int:
    """``num_data`` as an int, at least the number of rows given (default: that number)."""
    if num_data is None:
        return rows
    if isinstance(num_data, bool) or not isinstance(num_data, Real) or int(num_data) != num_data:
        raise TypeError(f"num_data: expected an integer, got {num_data!r}")
    if num_data < rows:
        raise ValueError(f"num_data: {num_data} is smaller than the number of examples {rows}")
    return int(num_data)


def check_init_theta(init_theta: object, chains: int, dim: int) -> Tensor:
    """``init_theta`` if it is a floating tensor of shape ``(chains, dim)``; errors name it."""
    if not isinstance(init_theta, Tensor) or tuple(init_theta.shape) != (chains, dim):
        raise ValueError(
            f"init_theta: expected a tensor of shape ({chains}, {dim}), got "
            f"{getattr(init_theta, 'shape', type(init_theta).__name__)}"
        )
    if not init_theta.is_floating_point():
        raise TypeError(f"init_theta: expected a floating tensor, got {init_theta.dtype}")
    return init_theta


def prepare(
    bnn: object,
    x: object,
    y: object,
    *,
    chains: int,
    seed: object,
    init_theta: object = None,
    num_data: object = None,
    tensor_inputs: str | None = None,
    default_init: Callable[[BNN, Seeds], Tensor] | None = None,
    split: Ranks | None = None,
    batch_size: int | None = None,
) -> Problem:
    """Check everything a BNN run needs before any work; see :class:`Problem`.

    Parameters
    ----------
    chains
        Rows of ``init_theta`` (chains or particles).
    seed
        ``fit``'s seed (:class:`Seeds`).
    init_theta
        Initial parameters ``(chains, D)``, or ``None`` for ``default_init`` (default: draws
        from the prior seeded by ``seeds.base``).
    tensor_inputs
        A backend that needs ``x`` as one tensor names itself here (tuple or dict inputs are
        then a ``TypeError``).
    batch_size
        With data as an ``IterableDataset``: the size of its batches (:mod:`.loaders`).
    split
        Share the chains over these processes: the Problem holds this process's block of
        ``init_theta`` and of the chains' seed streams (the same as in a one-process run).
    """
    bnn = check_bnn(bnn)
    loader = None
    if is_loader(x):
        if y is not None:
            raise ValueError(
                "y: with data as a DataLoader its batches are (x, y) pairs; give y=None"
            )
        loader = as_loader(x, batch_size)
        num_data = dataset_size(loader, num_data)
        x, y = first_batch(loader)
    x, y = bnn.check_data(x, y)
    if tensor_inputs is not None:
        inputs.require_tensor(x, tensor_inputs)
    rows = inputs.num_rows(x)
    num_data = check_num_data(num_data, rows)
    seeds = Seeds.of(seed, chains)
    if init_theta is None:
        if default_init is None:
            theta = bnn.init_theta(chains, seeds.base)
        else:
            theta = default_init(bnn, seeds)
    else:
        theta = check_init_theta(init_theta, chains, bnn.num_params)
    if split is not None:
        theta, seeds = split_chains(theta, seeds, split)
    theta = theta.detach().to(dtype=bnn.dtype, device=bnn.device).clone()
    check_start(bnn, theta, x, y)
    return Problem(bnn, x, y, num_data, theta, seeds, loader)


def split_chains(theta: Tensor, seeds: Seeds, group: Ranks) -> tuple[Tensor, Seeds]:
    """This process's block of the chains: its rows of ``theta`` and its chains' seed streams
    (the streams those chains have in a one-process run)."""
    if seeds.chains < group.world:
        raise ValueError(
            f"chains: {seeds.chains} chains cannot be shared over {group.world} processes "
            "(give at least one chain per process, or distributed=False)"
        )
    start, stop = group.block(seeds.chains)
    return theta[start:stop], dataclasses.replace(seeds, block=(start, stop))


def fingerprint(x: Inputs, y: Tensor) -> list[Any]:
    """A cheap fingerprint of the data: each part's name, shape, dtype and float64 sums."""
    out: list[Any] = []
    for name, part in [*inputs.parts(x).items(), ("y", y)]:
        values = part.detach().double()
        out.append(
            [
                name,
                list(part.shape),
                str(part.dtype),
                float(values.sum()),
                float((values * values).sum()),
            ]
        )
    return out


def identity_of(backend: object, problem: Problem, **extra: Any) -> dict[str, Any]:
    """What a checkpoint of ``backend`` on ``problem`` must match to be resumed: the
    settings (``repr``), the parameter layout, the data's fingerprint and ``num_data``."""
    layout = [[site.name, list(site.shape)] for site in problem.bnn.layout.sites]
    return {
        "backend": repr(backend),
        "layout": layout,
        "data": fingerprint(problem.x, problem.y),
        "num_data": problem.num_data,
        **extra,
    }


@dataclass
class RunResult:
    """What :func:`run` hands back to the backend: the final State, the kept draws, how the
    loop ended."""

    state: Any
    draws: Draws
    outcome: RunOutcome


def run(
    algorithm: Algorithm[Any],
    control: RunControl,
    *,
    desc: str,
    identity: Mapping[str, Any],
    batches: Minibatches | LoaderBatches | None = None,
) -> RunResult:
    """Run ``algorithm`` to the end of its stages (or until Ctrl-C or a non-finite step).

    Parameters
    ----------
    control
        Progress, callbacks, checkpoint and resume (:class:`RunControl`).
    desc
        The progress bar's label.
    identity
        What a checkpoint must match to be resumed here (the backend's settings, the
        parameter layout, the data's fingerprint...), compared key by key on resume.
    batches
        The run's minibatch stream, whose position is checkpointed with the State.
    """
    keep_freed_memory()  # a step's tensors reuse freed memory (see .memory)
    identity = dict(identity)
    stages = [(name, int(n)) for name, n in algorithm.stages()]
    start = (0, 0)
    if control.resume is not None:
        saved = read_checkpoint(control.resume)
        _check_identity(saved.get("identity", {}), identity, control.resume)
        state, draws = saved["state"], saved["draws"]
        if batches is not None and saved.get("batches") is not None:
            batches.load_state(saved["batches"])
        start = tuple(saved["position"])
    else:
        state, draws = algorithm.init(), Draws()
    position = list(start)
    last_write = [time.monotonic()]

    def save() -> None:
        algorithm.record(state)
        write_checkpoint(
            control.checkpoint,
            {
                "identity": identity,
                "position": list(position),
                "state": state,
                "draws": draws,
                "batches": None if batches is None else batches.state(),
            },
        )
        last_write[0] = time.monotonic()

    offsets = [sum(n for _, n in stages[:k]) for k in range(len(stages))]
    names = [name for name, _ in stages]

    def step(stage: str, i: int) -> Mapping[str, Any]:
        nonlocal state
        state, info = algorithm.step(state, stage, i)
        if info.get("drop_last") and len(draws):
            draws.drop_last()
        if "draw" in info and info.get("finite", True):
            theta, stats = info["draw"]
            draws.append(theta, stats)
        k = names.index(stage)
        position[:] = [k, i + 1] if i + 1 < stages[k][1] else [k + 1, 0]
        if control.checkpoint is not None and info.get("finite", True):
            done = offsets[k] + i + 1
            every = control.checkpoint_every
            due = (
                done % every == 0
                if every is not None
                else time.monotonic() - last_write[0] >= CHECKPOINT_SECONDS
            )
            if due:
                save()
        return info

    agree = None if control.ranks is None else agree_stop
    outcome = Driver(
        stages, progress=control.progress, callbacks=control.callbacks, desc=desc, agree=agree
    ).run(step, start)
    if control.checkpoint is not None and outcome.reason != "non-finite":
        save()
    return RunResult(algorithm.record(state), draws, outcome)


def gather_chains(
    theta: Tensor, stats: Mapping[str, Tensor], seeds: Seeds, group: Ranks | None
) -> tuple[Tensor, dict[str, Tensor], dict[str, Any]]:
    """In a run whose chains were split over processes: every chain's draws on rank 0, in
    chain order; the other ranks keep their own. Returns ``(theta, stats, attrs)`` with
    ``attrs["distributed"]`` saying which chains a posterior holds (empty in one process).

    ``theta`` is ``(chains of this process, draws, D)``, each of ``stats`` ``(chains, draws)``.
    """
    if group is None or seeds.block is None:
        return theta, dict(stats), {}
    chains = seeds.chains
    counts = group.counts(chains)
    whole = gather_blocks(theta, counts)
    whole_stats = {k: gather_blocks(v, counts) for k, v in sorted(stats.items())}
    start, stop = seeds.block
    if group.root:
        return whole, whole_stats, {"distributed": f"rank 0 of {group.world}: all {chains} chains"}
    note = (
        f"rank {group.rank} of {group.world}: chains {start}-{stop - 1} of {chains} (rank 0 "
        "holds all)"
    )
    return theta, dict(stats), {"distributed": note}


def _check_identity(saved: Mapping[str, Any], current: Mapping[str, Any], path: object) -> None:
    """``ValueError`` naming ``resume`` and the first thing that differs."""
    for key in sorted(set(saved) | set(current)):
        if _normal(saved.get(key)) != _normal(current.get(key)):
            raise ValueError(
                f"resume: the checkpoint {str(path)!r} was written by a different run ({key}: "
                f"{_short(saved.get(key))} in the file, {_short(current.get(key))} now); resume "
                "with the same backend settings, model and data"
            )


def _normal(value: Any) -> Any:
    """Compare floats to 12 significant digits (a checksum written and read back)."""
    if isinstance(value, float):
        return float(f"{value:.12g}") if math.isfinite(value) else str(value)
    if isinstance(value, (list, tuple)):
        return [_normal(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _normal(v) for k, v in value.items()}
    return value


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."
