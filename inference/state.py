"""Explicit algorithm state, and how it is written to and read from a checkpoint file.

Every algorithm keeps everything that the rest of a run depends on in one State record
(positions, velocities, adaptation, optimiser moments, masks, random streams), a dataclass
registered with :func:`state_record`. That is what makes a run resumable: the driver writes
the record, and on ``resume`` an algorithm continues from the record exactly as it would have
continued in memory, draw for draw.

**The file format** is a ``torch.save`` dict read back with ``weights_only=True`` (no pickled
code runs when a checkpoint is opened). Records are stored as plain containers:

* a registered dataclass as ``{"__record__": name, field: value, ...}``;
* a :class:`torch.Generator` as ``{"__generator__": state}`` (its byte state);
* tensors, numbers, strings, ``None``, lists, tuples and dicts with string keys as themselves.

:func:`from_payload` rebuilds only the registered record types; anything else in a file is an
error naming it.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import torch
from torch import Tensor

__all__ = [
    "CHECKPOINT_FORMAT",
    "from_payload",
    "read_checkpoint",
    "state_record",
    "to_payload",
    "write_checkpoint",
]

#: Marks a file written by :func:`write_checkpoint`, with its format version.
CHECKPOINT_FORMAT = ("bayesdl-checkpoint", 1)

_RECORDS: dict[str, type] = {}
_T = TypeVar("_T")


def state_record(cls: type[_T]) -> type[_T]:
    """Class decorator: a dataclass that may be written to and read from a checkpoint.

    The class is made a (mutable) dataclass if it is not one yet, and registered under its
    qualified module path, so that :func:`from_payload` can rebuild it.
    """
    if "__dataclass_fields__" not in cls.__dict__:  # not one yet (a subclass inherits it)
        cls = dataclasses.dataclass(cls)
    _RECORDS[_name(cls)] = cls
    return cls


def _name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def to_payload(value: Any) -> Any:
    """``value`` as plain containers that ``torch.load(weights_only=True)`` reads back."""
    if isinstance(value, Tensor):
        return value.detach()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, torch.Generator):
        return {"__generator__": value.get_state(), "device": str(value.device)}
    if isinstance(value, torch.dtype):
        return {"__dtype__": str(value).removeprefix("torch.")}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        name = _name(type(value))
        if name not in _RECORDS:
            raise TypeError(
                f"checkpoint: {name} is not a registered state record (decorate it with "
                "bayesdl.inference.state.state_record)"
            )
        fields = {f.name: to_payload(getattr(value, f.name)) for f in dataclasses.fields(value)}
        return {"__record__": name, **fields}
    if isinstance(value, (list, tuple)):
        items = [to_payload(v) for v in value]
        return items if isinstance(value, list) else {"__tuple__": items}
    if isinstance(value, Mapping):
        return {"__dict__": [[to_payload(k), to_payload(v)] for k, v in value.items()]}
    raise TypeError(
        f"checkpoint: cannot store a {type(value).__name__} in a checkpoint (state records "
        "hold tensors, numbers, strings, generators, lists, tuples, dicts and other records)"
    )


def from_payload(payload: Any) -> Any:
    """The inverse of :func:`to_payload`."""
    if isinstance(payload, list):
        return [from_payload(v) for v in payload]
    if not isinstance(payload, dict):
        return payload
    if "__generator__" in payload:
        generator = torch.Generator(device=payload["device"])
        generator.set_state(payload["__generator__"])
        return generator
    if "__dtype__" in payload:
        return getattr(torch, payload["__dtype__"])
    if "__tuple__" in payload:
        return tuple(from_payload(v) for v in payload["__tuple__"])
    if "__dict__" in payload:
        return {from_payload(k): from_payload(v) for k, v in payload["__dict__"]}
    if "__record__" in payload:
        cls = _RECORDS.get(payload["__record__"])
        if cls is None:
            raise ValueError(
                f"resume: the checkpoint holds a {payload['__record__']!r} record, which this "
                "version of bayesdl does not know"
            )
        fields = {k: from_payload(v) for k, v in payload.items() if k != "__record__"}
        return cls(**fields)
    raise ValueError("resume: the checkpoint holds a dict this version of bayesdl cannot read")


def write_checkpoint(path: str | os.PathLike, contents: Mapping[str, Any]) -> None:
    """Write ``contents`` (made plain by :func:`to_payload`) to ``path`` atomically.

    The file is written next to ``path`` and renamed over it, so an interruption while writing
    leaves the previous checkpoint intact.
    """
    target = pathlib.Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(target.name + ".partial")
    payload = {"format": list(CHECKPOINT_FORMAT)}
    payload.update((str(k), to_payload(v)) for k, v in contents.items())
    torch.save(payload, temporary)
    os.replace(temporary, target)


def read_checkpoint(path: object) -> dict[str, Any]:
    """What :func:`write_checkpoint` wrote to ``path``; errors name ``resume``."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(
            f"resume: expected the path of a checkpoint file, got {type(path).__name__}"
        )
    if not pathlib.Path(path).is_file():
        raise FileNotFoundError(f"resume: no checkpoint file at {os.fspath(path)!r}")
    try:
        try:  # tensors back on the device they were saved from
            payload = torch.load(path, weights_only=True)
        except RuntimeError as err:
            if "cuda" not in str(err).lower():
                raise
            payload = torch.load(path, map_location="cpu", weights_only=True)  # no GPU here
    except Exception as err:  # torch.load fails in many ways on foreign or damaged files
        raise ValueError(
            f"resume: {os.fspath(path)!r} is not a readable bayesdl checkpoint "
            f"({type(err).__name__}: {str(err)[:200]})"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != list(CHECKPOINT_FORMAT):
        raise ValueError(
            f"resume: {os.fspath(path)!r} is not a bayesdl checkpoint (written by "
            "fit(..., checkpoint=path))"
        )
    return {k: from_payload(v) for k, v in payload.items() if k != "format"}


def check_path(name: str, path: object) -> pathlib.Path | None:
    """``path`` as a ``Path`` (``None`` stays ``None``); ``TypeError``/``ValueError`` naming
    ``name`` for something that is not a file path."""
    if path is None:
        return None
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(
            f"{name}: expected a file path (str or os.PathLike), got {type(path).__name__}"
        )
    target = pathlib.Path(path)
    if target.is_dir():
        raise ValueError(f"{name}: {str(target)!r} is a folder; give a file name in it")
    return target


def map_tensors(value: Any, fn: Callable[[Tensor], Tensor]) -> Any:
    """``value`` with ``fn`` applied to every tensor inside it (records and other dataclasses,
    lists, tuples and named tuples, dicts)."""
    if isinstance(value, Tensor):
        return fn(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.replace(
            value,
            **{
                f.name: map_tensors(getattr(value, f.name), fn)
                for f in dataclasses.fields(value)
                if f.init
            },
        )
    if isinstance(value, list):
        return [map_tensors(v, fn) for v in value]
    if isinstance(value, tuple):
        items = [map_tensors(v, fn) for v in value]
        return type(value)(*items) if hasattr(value, "_fields") else tuple(items)
    if isinstance(value, dict):
        return {k: map_tensors(v, fn) for k, v in value.items()}
    return value
