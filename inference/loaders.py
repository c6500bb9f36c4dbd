"""Minibatches from a ``torch.utils.data.DataLoader``: data that do not fit in memory.

The minibatch backends (SGHMC, SGLD) take a DataLoader (or an ``IterableDataset``, batched
by a DataLoader of ``batch_size``) in place of ``x`` with ``y=None``; each batch is a pair
``(x, y)``. :class:`LoaderBatches` turns it into the endless stream of checked minibatches that
:class:`~.base.Minibatches` gives for tensors:

* an epoch is one pass over the loader; the next epoch starts a new pass;
* a shuffling loader is re-shuffled each epoch from the run's seed (the loader's sampler draws
  from torch's global generator, which is run on a private stream here: the caller's random
  state is untouched and the order follows ``seed``). A loader with its own ``generator``
  keeps it;
* ``num_data`` (the size of the data set, which scales the likelihood) is
  ``len(loader.dataset)``, or given to ``fit`` when the dataset has no length;
* in a run over several processes (:mod:`bayesdl.distributed`) a map-style dataset is sharded
  with a :class:`~torch.utils.data.DistributedSampler`: each rank reads its own rows
  (an ``IterableDataset`` must shard itself, by rank);
* a checkpoint records the epoch and the batches read in it; ``resume`` starts that epoch's
  pass again and skips those batches, which gives the same batches when the loader's order is
  reproducible (shuffled from the run's seed, or not shuffled).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from torch import Tensor
from torch.utils.data import DataLoader, DistributedSampler, IterableDataset, RandomSampler

from bayesdl._seeding import child_seeds, seeded
from bayesdl.distributed import Ranks

__all__ = ["LoaderBatches", "as_loader", "dataset_size", "first_batch", "is_loader"]

#: The seed stream of the epochs' shuffles (beside those of :mod:`bayesdl._seeding`'s users).
_EPOCH_STREAM = 7


def is_loader(x: object) -> bool:
    """Whether ``x`` is data given as a DataLoader or an ``IterableDataset``."""
    return isinstance(x, (DataLoader, IterableDataset))


def as_loader(data: object, batch_size: int | None) -> DataLoader:
    """``data`` as a DataLoader: itself, or an ``IterableDataset`` batched by ``batch_size``."""
    if isinstance(data, DataLoader):
        if batch_size is not None:
            raise ValueError(
                "batch_size: the DataLoader sets the batch size; leave batch_size=None"
            )
        return data
    if batch_size is None:
        raise ValueError("batch_size: an IterableDataset needs a batch_size to be batched")
    return DataLoader(data, batch_size=batch_size)


def _shard(loader: DataLoader, group: Ranks, seed: int) -> DataLoader:
    """The loader of this rank's rows: a DistributedSampler over the same dataset."""
    if isinstance(loader.dataset, IterableDataset):
        return loader  # an IterableDataset shards itself (by torch.distributed.get_rank())
    sampler = DistributedSampler(
        loader.dataset,
        num_replicas=group.world,
        rank=group.rank,
        shuffle=isinstance(loader.sampler, RandomSampler),
        seed=seed,
    )
    return DataLoader(
        loader.dataset,
        batch_size=loader.batch_size,
        sampler=sampler,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        drop_last=loader.drop_last,
    )


class LoaderBatches:
    """Endless checked minibatches ``(x, y)`` from a DataLoader; see the module docstring.

    Parameters
    ----------
    loader
        Yields ``(x, y)`` batches.
    check
        ``(x, y) -> (x, y)``: the BNN's data check (``BNN.check_data``), run on every batch.
    num_data
        Size of the whole data set.
    seed
        Seed of the epochs' shuffles (``None``: fresh entropy).
    group
        The processes of a distributed run: the loader is sharded over them.
    """

    #: A loader's batches are never the full data set.
    full_batch = False

    def __init__(
        self,
        loader: DataLoader,
        check: Callable[[Any, Any], tuple[Any, Tensor]],
        num_data: int,
        seed: int | None,
        group: Ranks | None = None,
    ) -> None:
        self.seed = child_seeds(seed, 1)[0]
        self.sharded = group is not None and not isinstance(loader.dataset, IterableDataset)
        self.loader = _shard(loader, group, self.seed) if group is not None else loader
        self.check = check
        self.num_data = num_data
        self.batch_size = loader.batch_size
        self.epoch = 0
        self.position = 0
        self._iterator: Iterator[Any] | None = None
        self._first: Any = None

    def _start_epoch(self) -> None:
        sampler = getattr(self.loader, "sampler", None)
        if isinstance(sampler, DistributedSampler):
            sampler.set_epoch(self.epoch)
        epoch_seed = child_seeds(self.seed, self.epoch + 1, stream=_EPOCH_STREAM)[self.epoch]
        # a sampler draws its shuffle from the global generator when its first batch is
        # read: open the pass and read that batch on a private stream
        with seeded(epoch_seed):
            self._iterator = iter(self.loader)
            self._first = next(self._iterator, None)
        if self._first is None:
            raise ValueError("x: the DataLoader yields no batches")

    def _read(self) -> Any:
        if self._first is not None:
            batch, self._first = self._first, None
            return batch
        return next(self._iterator)

    def __iter__(self) -> LoaderBatches:
        return self

    def __next__(self) -> tuple[Any, Tensor]:
        if self._iterator is None:
            self._start_epoch()
        try:
            batch = self._read()
        except StopIteration:
            self.epoch, self.position = self.epoch + 1, 0
            self._start_epoch()
            batch = self._read()
        self.position += 1
        return self.check(*_pair(batch))

    def state(self) -> dict[str, int]:
        """Where the stream is: the epoch and the batches read in it."""
        return {"epoch": self.epoch, "position": self.position}

    def load_state(self, state: Mapping[str, int]) -> None:
        """Continue from :meth:`state`: restart that epoch's pass and skip what was read."""
        self.epoch, skip = int(state["epoch"]), int(state["position"])
        self._start_epoch()
        for _ in range(skip):
            self._read()
        self.position = skip


def _pair(batch: object) -> tuple[Any, Any]:
    """A batch as ``(x, y)``; ``TypeError`` naming ``x`` otherwise."""
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    raise TypeError(
        f"x: each batch of the DataLoader must be a pair (x, y), got a {type(batch).__name__}"
        + (f" of {len(batch)}" if isinstance(batch, (tuple, list)) else "")
    )


def first_batch(loader: DataLoader) -> tuple[Any, Any]:
    """The first batch of ``loader`` in a pass on a fixed private stream (the same whatever
    the run's seed): what the checks before a run look at."""
    with seeded(0):
        batch = next(iter(loader), None)
    if batch is None:
        raise ValueError("x: the DataLoader yields no batches")
    return _pair(batch)


def dataset_size(loader: DataLoader, num_data: object) -> object:
    """``num_data`` if given, else the dataset's length; ``ValueError`` naming ``num_data``
    when the dataset has none."""
    if num_data is not None:
        return num_data
    try:
        return len(loader.dataset)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(
            "num_data: the DataLoader's dataset has no length; give num_data (the number of "
            "examples in the data set, which scales the likelihood)"
        ) from None
