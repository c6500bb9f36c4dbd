"""Runs across processes: chains, particles and data shared over ``torch.distributed``.

A script runs unchanged under ``torchrun --nproc_per_node=N script.py`` once it has called
:func:`init` (or ``torch.distributed.init_process_group()`` itself): every backend then sees the
process group and shares its work across the ranks (``fit(..., distributed=False)`` keeps a run
in one process even then). What is shared depends on the family:

* **NUTS / HMC**: the chains are split into contiguous blocks, one per rank
  (:meth:`Ranks.block`); each chain keeps its own random stream, so the draws gathered on rank
  0 equal those of a one-process run with the same seed and number of chains.
* **SGHMC / SGLD / VI / SSVI**: data parallel. Every rank draws the same global minibatch,
  evaluates its share of the rows (or reads its own shard of a DataLoader), and the gradients
  are summed over ranks (:func:`all_reduce_sum`); chains, guides and random streams are
  replicated, so every rank holds the same result.
* **SVGD**: the particles are split into blocks; each step the ranks gather what the kernel
  needs (positions and scores, or function values at the measurement set), compute the kernel
  over all particles and update their own block.

Every step, the ranks agree on whether to stop (:func:`agree_stop`): a Ctrl-C or a non-finite
value on any rank stops all of them after the same step. The Posterior on rank 0 holds every
chain or particle; the other ranks return theirs, marked in ``attrs["distributed"]``. With
``checkpoint=path`` each rank writes ``path.rank<r>of<world>`` (and ``resume=path`` reads it),
so a run resumes under torchrun with the same number of processes. Only rank 0 shows a
progress bar.

Communication is through PyTorch's collectives: gloo on CPUs, NCCL on GPUs (:func:`init`
chooses).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = [
    "Ranks",
    "agree_stop",
    "all_reduce_sum",
    "gather_blocks",
    "init",
    "ranks",
    "spawn",
]


def init(backend: str | None = None) -> Ranks:
    """Join the process group that ``torchrun`` (or the environment) describes.

    Parameters
    ----------
    backend
        ``"gloo"`` or ``"nccl"``; default: NCCL when CUDA is available, gloo otherwise. With
        NCCL each process takes the GPU ``LOCAL_RANK``.

    Returns
    -------
    Ranks
        This process's rank and the world size (already initialised groups are reused).
    """
    if backend is not None and backend not in ("gloo", "nccl"):
        raise ValueError(f"backend: expected 'gloo', 'nccl' or None, got {backend!r}")
    if not dist.is_available():
        raise RuntimeError("torch.distributed is not available in this build of PyTorch")
    if not dist.is_initialized():
        if backend is None:
            backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
    return Ranks(dist.get_rank(), dist.get_world_size())


@dataclass(frozen=True)
class Ranks:
    """This process's place in the group: ``rank`` of ``world`` processes."""

    rank: int
    world: int

    @property
    def root(self) -> bool:
        """Rank 0, which gathers the complete Posterior and writes files."""
        return self.rank == 0

    def counts(self, n: int) -> list[int]:
        """How many of ``n`` items each rank holds: contiguous blocks, the first ``n % world``
        ranks one more."""
        base, extra = divmod(n, self.world)
        return [base + (r < extra) for r in range(self.world)]

    def block(self, n: int) -> tuple[int, int]:
        """``[start, stop)`` of this rank's block of ``n`` items."""
        counts = self.counts(n)
        start = sum(counts[: self.rank])
        return start, start + counts[self.rank]


def ranks(distributed: bool | None = None) -> Ranks | None:
    """The group a run shares its work over, or ``None`` for a one-process run.

    ``distributed=None`` follows the process group (initialised with more than one process);
    ``True`` requires one; ``False`` runs in this process alone.
    """
    if distributed is not None and not isinstance(distributed, bool):
        raise TypeError(f"distributed: expected a bool or None, got {type(distributed).__name__}")
    active = dist.is_available() and dist.is_initialized()
    if distributed and not active:
        raise ValueError(
            "distributed: no process group is initialised; call bayesdl.distributed.init() "
            "under torchrun first"
        )
    if distributed is False or not active or dist.get_world_size() == 1:
        return None
    return Ranks(dist.get_rank(), dist.get_world_size())


def _device() -> torch.device:
    """The device collectives run on: the current GPU under NCCL, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def agree_stop(code: int) -> int:
    """The largest stop ``code`` over all ranks (0: go on); every rank calls it each step."""
    return all_reduce_max(code)


def all_reduce_max(value: int) -> int:
    """The largest ``value`` over all ranks (every rank calls it)."""
    flag = torch.tensor([int(value)], device=_device())
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return int(flag.item())


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """The sum of ``tensor`` over all ranks (a new tensor; the argument is unchanged)."""
    out = tensor.detach().clone().to(_device())
    dist.all_reduce(out)
    return out.to(tensor.device)


def gather_blocks(block: Tensor, counts: Sequence[int], dim: int = 0) -> Tensor:
    """Every rank's ``block`` concatenated along ``dim`` in rank order, on every rank.

    ``counts[r]`` is the size of rank ``r``'s block along ``dim`` (blocks are padded to the
    largest for the collective and cut back).
    """
    block = block.detach()
    largest = max(counts)
    padded = block.movedim(dim, 0)
    if padded.shape[0] < largest:
        fill = padded.new_zeros((largest - padded.shape[0], *padded.shape[1:]))
        padded = torch.cat([padded, fill])
    padded = padded.contiguous().to(_device())
    parts = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(parts, padded)
    whole = torch.cat([p[:c] for p, c in zip(parts, counts, strict=True)])
    return whole.to(block.device).movedim(0, dim)


def spawn(fn: Callable[..., Any], nprocs: int, *args: Any, backend: str = "gloo") -> list[Any]:
    """Run ``fn(*args)`` in ``nprocs`` fresh local processes joined in one group; return each
    rank's result, in rank order.

    For tests and notebooks, where ``torchrun`` is not at hand. ``fn`` must be importable by
    name (defined at the top level of a module) and its result picklable. An exception in a
    process is raised here, naming the rank.
    """
    import socket
    import tempfile

    import torch.multiprocessing as mp

    if isinstance(nprocs, bool) or not isinstance(nprocs, int) or nprocs < 1:
        raise ValueError(f"nprocs: expected a positive integer, got {nprocs!r}")
    with socket.socket() as probe:  # a free port for the group's rendezvous
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with tempfile.TemporaryDirectory() as folder:
        mp.start_processes(
            _spawned,
            args=(fn, args, nprocs, port, backend, folder),
            nprocs=nprocs,
            join=True,
            start_method="spawn",
        )
        results = [torch.load(f"{folder}/{r}.pt", weights_only=False) for r in range(nprocs)]
    return results


def _spawned(
    rank: int,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    world: int,
    port: int,
    backend: str,
    folder: str,
) -> None:
    """One process of :func:`spawn`: join the group, run ``fn``, store its result, and end
    the process at once.

    Ending with :func:`os._exit` skips the interpreter's finalisation: there, a gloo worker
    thread still releasing the last collective's tensors needs the GIL, the interpreter
    ends the thread, and the C++ runtime aborts the process (``terminate called without an
    active exception``, SIGABRT) after its result was stored. An exception still ends the
    process through :mod:`torch.multiprocessing`, which reports it.
    """
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    dist.init_process_group(backend, rank=rank, world_size=world)
    try:
        result = fn(*args)
        torch.save(result, f"{folder}/{rank}.pt")
        dist.barrier()  # no rank tears the group down while another still uses it
    finally:
        dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
