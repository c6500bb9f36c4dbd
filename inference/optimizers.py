"""The optimisers of the gradient-based backends (VI, SSVI, SVGD), chosen one way everywhere.

A backend's ``optimizer`` argument takes either a name from :data:`OPTIMIZERS` (any case:
``"adam"``, ``"sgd"``, ...) or a ``torch.optim.Optimizer`` subclass; where the backend has an
``optimizer_kwargs`` argument, its keyword arguments go to the optimiser's constructor besides
the backend's ``lr``. A name may imply keyword arguments (:data:`NAME_KWARGS`: ``"sgd"`` has
momentum 0.9, the setting of Li et al. 2024), which ``optimizer_kwargs`` overrides; a class is
built with PyTorch's defaults.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "NAME_KWARGS",
    "OPTIMIZERS",
    "OptimizerSpec",
    "check_optimizer",
    "check_optimizer_kwargs",
    "make_optimizer",
    "resolve_optimizer",
]

#: Optimisers by name (the accepted names of an ``optimizer`` argument).
OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "sgd": torch.optim.SGD,
    "rmsprop": torch.optim.RMSprop,
    "adagrad": torch.optim.Adagrad,
}

#: Keyword arguments that a name implies (``optimizer_kwargs`` overrides them).
NAME_KWARGS: dict[str, dict[str, Any]] = {"sgd": {"momentum": 0.9}}

#: A name from :data:`OPTIMIZERS` (lower case once checked) or a ``torch.optim.Optimizer`` class.
OptimizerSpec = str | type[torch.optim.Optimizer]


def check_optimizer(optimizer: object, argument: str = "optimizer") -> OptimizerSpec:
    """Validate an optimiser name or ``torch.optim.Optimizer`` subclass.

    Parameters
    ----------
    optimizer
        A name from :data:`OPTIMIZERS`, in any case, or a ``torch.optim.Optimizer`` subclass.
    argument
        The argument's name, for the error messages.

    Returns
    -------
    The name in lower case, or the class itself.

    Raises
    ------
    ValueError
        For an unknown name; the message lists the accepted names.
    TypeError
        For anything else than a string or an optimiser class.
    """
    if isinstance(optimizer, str):
        if optimizer.lower() not in OPTIMIZERS:
            raise ValueError(
                f"{argument}: must be one of {sorted(OPTIMIZERS)} or a torch.optim.Optimizer "
                f"subclass, got {optimizer!r}"
            )
        return optimizer.lower()
    if isinstance(optimizer, type) and issubclass(optimizer, torch.optim.Optimizer):
        return optimizer
    raise TypeError(
        f"{argument}: expected a name (one of {sorted(OPTIMIZERS)}) or a torch.optim.Optimizer "
        f"subclass, got {optimizer!r}"
    )


def check_optimizer_kwargs(kwargs: object, argument: str = "optimizer_kwargs") -> dict[str, Any]:
    """Validate the optimiser's keyword arguments: ``None`` or a mapping without ``lr``.

    The learning rate is the backend's own ``lr`` argument, so a ``"lr"`` key is refused
    (``ValueError``) rather than silently overriding it; a non-mapping is a ``TypeError``.
    Returns a fresh ``dict`` (empty for ``None``).
    """
    if kwargs is not None and not isinstance(kwargs, Mapping):
        raise TypeError(f"{argument}: expected a dict, got {type(kwargs).__name__}")
    checked = dict(kwargs or {})
    if "lr" in checked:
        raise ValueError(f"{argument}: pass the learning rate as lr=, not in the kwargs")
    return checked


def resolve_optimizer(
    spec: OptimizerSpec, kwargs: Mapping[str, Any] | None = None
) -> tuple[type[torch.optim.Optimizer], dict[str, Any]]:
    """The class and keyword arguments that ``spec`` (checked by :func:`check_optimizer`) means.

    A name gives its class and the keyword arguments it implies (:data:`NAME_KWARGS`), updated
    by ``kwargs``; a class gives itself and ``kwargs``.
    """
    if isinstance(spec, str):
        return OPTIMIZERS[spec], {**NAME_KWARGS.get(spec, {}), **(kwargs or {})}
    return spec, dict(kwargs or {})


def make_optimizer(
    spec: OptimizerSpec,
    params: Iterable[Tensor],
    lr: float,
    kwargs: Mapping[str, Any] | None = None,
) -> torch.optim.Optimizer:
    """The optimiser ``spec`` (checked by :func:`check_optimizer`) over ``params``.

    Built as ``cls(params, lr=lr, **kwargs)`` with the class and keyword arguments of
    :func:`resolve_optimizer`.
    """
    cls, resolved = resolve_optimizer(spec, kwargs)
    return cls(params, lr=lr, **resolved)
