"""Network inputs: one tensor, or a tuple or dict of tensors sharing their rows.

A network's ``forward`` may take one tensor, several (``forward(x1, x2)``) or keyword
arguments (``forward(tokens=..., mask=...)``). Everywhere bayesdl takes inputs ``x`` it accepts:

* a tensor (or array-like, a pandas ``DataFrame``...) ``(N, ...)``, passed as ``forward(x)``;
* a ``tuple`` of them, passed as ``forward(*x)``;
* a ``dict`` ``{name: ...}`` of them, passed as ``forward(**x)``.

The parts of a tuple or dict must all have the same number of rows ``N`` (their leading
dimension): one example is one row of every part. A ``list`` is an array-like, not a tuple of
parts. Floating parts are cast to the network's dtype; integer parts (token or category
indices for ``nn.Embedding``) keep their integer dtype.

This module is the one place that counts, slices and moves rows of inputs, so the BNN,
the minibatching and the predictions handle every form the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeAlias

import torch
from torch import Tensor

from bayesdl._checks import as_tensor, check_finite

__all__ = [
    "Inputs",
    "call",
    "check_inputs",
    "device_of",
    "is_structured",
    "map_parts",
    "num_rows",
    "parts",
    "require_tensor",
    "row_shapes",
    "take_rows",
]

#: One tensor, a tuple of tensors (``forward(*x)``) or a dict of tensors (``forward(**x)``).
Inputs: TypeAlias = Tensor | tuple[Tensor, ...] | dict[str, Tensor]

_INTEGER_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


def is_structured(x: object) -> bool:
    """Whether ``x`` is a tuple or dict of parts rather than one tensor."""
    return isinstance(x, (tuple, Mapping))


def parts(x: Inputs, name: str = "x", *, variables: bool = False) -> dict[str, Tensor]:
    """The tensors of ``x`` labelled for messages, ``{"x": x}``, ``{"x[0]": ...}`` or
    ``{"x['a']": ...}``; with ``variables=True`` as variable names, ``x_0`` or ``x_a``."""
    if isinstance(x, tuple):
        keys: Mapping[Any, Tensor] = dict(enumerate(x))
    elif isinstance(x, Mapping):
        keys = x
    else:
        return {name: x}
    if variables:
        return {f"{name}_{key}": part for key, part in keys.items()}
    return {f"{name}[{key!r}]": part for key, part in keys.items()}


def map_parts(fn: Callable[[Tensor], Tensor], x: Inputs) -> Inputs:
    """``fn`` applied to every tensor of ``x``, keeping its form (tensor, tuple or dict)."""
    if isinstance(x, tuple):
        return tuple(fn(part) for part in x)
    if isinstance(x, Mapping):
        return {key: fn(part) for key, part in x.items()}
    return fn(x)


def num_rows(x: Inputs) -> int:
    """``N``, the number of examples (the leading dimension shared by every part)."""
    first = next(iter(parts(x).values()))
    return int(first.shape[0])


def take_rows(x: Inputs, index: Tensor | slice) -> Inputs:
    """The examples ``index`` (a slice or an index tensor) of every part of ``x``."""
    return map_parts(lambda part: part[index], x)


def device_of(x: Inputs) -> torch.device:
    """The device of the inputs (of their first part)."""
    return next(iter(parts(x).values())).device


def row_shapes(x: Inputs) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """The shape of one example of every part, ``((label, shape), ...)``: what a network's
    output width depends on, and what two sets of inputs must share."""
    return tuple((label, tuple(int(s) for s in part.shape[1:])) for label, part in parts(x).items())


def call(fn: Callable[..., Any], x: Inputs) -> Any:
    """``fn(x)``, ``fn(*x)`` or ``fn(**x)`` by the form of ``x``."""
    args, kwargs = _arguments(x)
    return fn(*args, **kwargs)


def _arguments(x: Inputs) -> tuple[tuple[Tensor, ...], dict[str, Tensor]]:
    """Positional and keyword arguments of ``forward`` for inputs ``x``."""
    if isinstance(x, tuple):
        return x, {}
    if isinstance(x, Mapping):
        return (), dict(x)
    return (x,), {}


def check_inputs(
    x: object, dtype: torch.dtype, device: torch.device | str, name: str = "x"
) -> Inputs:
    """Validate inputs and return them on ``device``, floating parts cast to ``dtype``.

    Parameters
    ----------
    x
        A tensor or array-like ``(N, ...)`` (at least two dimensions), or a tuple or dict of
        them (each at least one dimension, all with the same ``N``).
    dtype, device
        The network's floating dtype and device. Integer parts keep their dtype.
    name
        The argument's name in error messages.

    Raises
    ------
    TypeError, ValueError
        Naming ``name`` (or the part, ``x[1]``, ``x['tokens']``): an unconvertible value, a
        non-real dtype, an empty tuple or dict, a missing row dimension, parts with different
        numbers of rows, no rows, NaN or infinite values.
    """
    x = _as_parts(x, name)
    labelled = parts(x, name)
    for label, part in labelled.items():
        _check_part(label, part, minimum_dim=1 if is_structured(x) else 2)
    rows = {label: int(part.shape[0]) for label, part in labelled.items()}
    if len(set(rows.values())) > 1:
        raise ValueError(
            f"{name}: every part must have the same number of rows (one per example), got {rows}"
        )
    if next(iter(rows.values())) == 0:
        raise ValueError(f"{name}: is empty")

    def move(part: Tensor) -> Tensor:
        return part.to(device=device, dtype=dtype if part.is_floating_point() else part.dtype)

    x = map_parts(move, x)
    for label, part in parts(x, name).items():
        check_finite(label, part)
    return x


def require_tensor(x: Inputs, what: str, name: str = "x") -> Tensor:
    """``x`` itself if it is one tensor; a ``TypeError`` saying ``what`` needs one otherwise."""
    if is_structured(x):
        raise TypeError(
            f"{name}: {what} needs inputs as one tensor (N, ...), got a "
            f"{type(x).__name__} of {len(x)} parts; use a backend that takes them (NUTS, HMC, "
            "SGHMC, SGLD) or a network that takes one tensor"
        )
    return x  # type: ignore[return-value]


def _as_parts(x: object, name: str) -> Inputs:
    """Convert ``x`` (or each of its parts) to tensors, keeping a tuple or dict form."""
    if isinstance(x, Mapping):
        if not x:
            raise ValueError(f"{name}: an empty dict of inputs; give at least one part")
        bad = [key for key in x if not isinstance(key, str)]
        if bad:
            raise TypeError(f"{name}: dict keys must be argument names (str), got {bad}")
        return {key: as_tensor(f"{name}[{key!r}]", part) for key, part in x.items()}
    if isinstance(x, tuple):
        if not x:
            raise ValueError(f"{name}: an empty tuple of inputs; give at least one part")
        return tuple(as_tensor(f"{name}[{i}]", part) for i, part in enumerate(x))
    return as_tensor(name, x)


def _check_part(label: str, part: Tensor, minimum_dim: int) -> None:
    if not (part.is_floating_point() or part.dtype in _INTEGER_DTYPES):
        raise TypeError(f"{label}: expected real-valued or integer inputs, got dtype {part.dtype}")
    if part.dim() < minimum_dim:
        hint = "; for one feature use x[:, None]" if minimum_dim == 2 else ""
        raise ValueError(
            f"{label}: expected shape (N, ...) with one row per example, got "
            f"{tuple(part.shape)}{hint}"
        )
