"""The functional view of a network: flat parameter vectors and vectorised forward passes.

Every backend that runs many chains or particles at once keeps their parameters in one
tensor ``theta`` of shape ``(P, D)``. This module holds the two pieces of machinery that view
needs, shared by :mod:`bayesdl.models` and :mod:`bayesdl.priors`:

* :class:`FlatLayout`: the bijection between a dict of named tensors and a flat vector, with
  a constraint per entry (a *site*), so that ``theta`` lives in the unconstrained space and
  the named values in the constrained one (the same transforms Pyro's MCMC uses,
  ``torch.distributions.biject_to(support)``);
* :func:`batched_forward`: one call of a module for all ``P`` parameter sets at once
  (:func:`torch.func.functional_call` under :func:`torch.func.vmap`), never a Python loop.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.distributions import biject_to, constraints

from bayesdl import inputs
from bayesdl.inputs import Inputs

__all__ = ["FlatLayout", "SiteSpec", "batched_forward", "call_with_parameters"]


@dataclass(frozen=True)
class SiteSpec:
    """One entry of a flat layout: a named tensor of fixed shape with a support.

    Parameters
    ----------
    name
        The site name (a Pyro sample-site name).
    shape
        Shape of one value of the site, without any batch dimensions.
    support
        The constraint of the site's values; the flat vector holds
        ``biject_to(support).inv(value)``.
    """

    name: str
    shape: torch.Size
    support: constraints.Constraint = constraints.real
    numel: int = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", torch.Size(self.shape))
        object.__setattr__(self, "numel", math.prod(self.shape))

    @property
    def is_real(self) -> bool:
        """Whether the site is unconstrained (its transform is the identity).

        Compared by type, so the answer survives pickling (which copies the constraint).
        """
        return type(self.support) is type(constraints.real)


class FlatLayout:
    """Bijection between named site values and a flat unconstrained vector ``theta``.

    ``theta`` has shape ``(*batch, D)`` with ``D = sum(site.numel)``; the sites occupy
    consecutive slices in the order given. Values are mapped to the unconstrained space with
    ``biject_to(site.support)``, exactly as Pyro's HMC does, so a ``theta`` here and a Pyro
    MCMC state are the same point.

    Parameters
    ----------
    sites
        The sites, in the order of the flat vector.
    """

    def __init__(self, sites: Sequence[SiteSpec]) -> None:
        names = [s.name for s in sites]
        if len(set(names)) != len(names):
            raise ValueError(f"sites: duplicate site names in {names}")
        self.sites: tuple[SiteSpec, ...] = tuple(sites)
        self.slices: dict[str, slice] = {}
        start = 0
        for site in self.sites:
            self.slices[site.name] = slice(start, start + site.numel)
            start += site.numel
        self.size = start
        self._transforms = {s.name: biject_to(s.support) for s in self.sites if not s.is_real}
        for name, transform in self._transforms.items():
            shape = self.sites[names.index(name)].shape
            if transform.inverse_shape(shape) != shape:
                raise ValueError(
                    f"sites: {name!r} has support {transform.codomain}, whose unconstraining "
                    "transform changes the shape; such sites are not supported"
                )

    @property
    def names(self) -> tuple[str, ...]:
        """Site names in flat order."""
        return tuple(s.name for s in self.sites)

    def __len__(self) -> int:
        return len(self.sites)

    def _check_theta(self, theta: Tensor) -> None:
        if not isinstance(theta, Tensor):
            raise TypeError(f"theta: expected a torch.Tensor, got {type(theta).__name__}")
        if theta.shape[-1:] != (self.size,):
            raise ValueError(
                f"theta: expected a last dimension of size D={self.size}, got shape "
                f"{tuple(theta.shape)}"
            )

    def unravel(self, theta: Tensor, constrained: bool = True) -> dict[str, Tensor]:
        """Split ``theta`` of shape ``(*batch, D)`` into ``{name: (*batch, *site.shape)}``.

        With ``constrained=True`` (default) the values are mapped to each site's support.
        """
        self._check_theta(theta)
        batch = theta.shape[:-1]
        out = {}
        for site in self.sites:
            value = theta[..., self.slices[site.name]].reshape(batch + site.shape)
            if constrained and not site.is_real:
                value = self._transforms[site.name](value)
            out[site.name] = value
        return out

    def ravel(self, values: Mapping[str, Tensor], constrained: bool = True) -> Tensor:
        """Inverse of :meth:`unravel`: concatenate named values into ``theta``.

        Every site must be present; the batch shape is read off the first site.
        """
        missing = [n for n in self.names if n not in values]
        if missing:
            raise ValueError(f"values: missing sites {missing}")
        first = self.sites[0]
        batch = values[first.name].shape[: values[first.name].dim() - len(first.shape)]
        parts = []
        for site in self.sites:
            value = values[site.name]
            if tuple(value.shape[len(batch) :]) != tuple(site.shape):
                raise ValueError(
                    f"values[{site.name!r}]: expected shape (*batch, {tuple(site.shape)}), "
                    f"got {tuple(value.shape)}"
                )
            if constrained and not site.is_real:
                value = self._transforms[site.name].inv(value)
            parts.append(value.reshape(*batch, site.numel))
        return torch.cat(parts, dim=-1)

    def log_abs_det_jacobian(self, theta: Tensor) -> Tensor:
        """``log |d value / d theta|`` summed over the constrained sites, shape ``(*batch,)``."""
        self._check_theta(theta)
        batch = theta.shape[:-1]
        total = theta.new_zeros(batch)
        for site in self.sites:
            if site.is_real:
                continue
            transform = self._transforms[site.name]
            u = theta[..., self.slices[site.name]].reshape(batch + site.shape)
            ladj = transform.log_abs_det_jacobian(u, transform(u))
            total = total + ladj.reshape(*batch, -1).sum(-1)
        return total


def batched_forward(
    module: nn.Module,
    params: Mapping[str, Tensor],
    x: Inputs,
    fixed: Mapping[str, Tensor] | None = None,
) -> Tensor:
    """Run ``module(x)`` for ``P`` parameter sets at once.

    Parameters
    ----------
    module
        Any ``nn.Module``; its own parameters are not used for the names in ``params``.
    params
        ``{name: (P, *shape)}`` batched parameter values.
    x
        Inputs shared by all ``P`` parameter sets: a tensor ``(N, ...)``, or a tuple or dict
        of tensors passed as ``module(*x)`` or ``module(**x)`` (:mod:`bayesdl.inputs`).
    fixed
        Parameters and buffers shared by all ``P`` (not batched).

    Returns
    -------
    Tensor
        ``(P, *module(x).shape)``.
    """
    fixed = dict(fixed or {})

    def one(p: Mapping[str, Tensor]) -> Tensor:
        return call_with_parameters(module, {**fixed, **p}, x)

    return torch.func.vmap(one)(dict(params))


def call_with_parameters(module: nn.Module, params: Mapping[str, Tensor], x: Inputs) -> Tensor:
    """``module(x)`` with the tensors in ``params`` in place of the named parameters/buffers.

    ``x`` is a tensor, or a tuple or dict of tensors passed as ``module(*x)`` or
    ``module(**x)``. :func:`torch.func.functional_call`, except under a TorchScript trace
    (Pyro's ``jit_compile``), which ``functional_call`` refuses: there the tensors are swapped
    into the module for the duration of the call and the originals put back after.
    """
    if not torch.jit.is_tracing():
        return inputs.call(
            lambda *args, **kwargs: torch.func.functional_call(module, dict(params), args, kwargs),
            x,
        )
    with _swapped(module, params):
        return inputs.call(module, x)


@contextlib.contextmanager
def _swapped(module: nn.Module, params: Mapping[str, Tensor]) -> Iterator[None]:
    saved = []
    try:
        for name, value in params.items():
            owner_name, _, attr = name.rpartition(".")
            owner = module.get_submodule(owner_name)
            slots = owner._parameters if attr in owner._parameters else owner._buffers
            saved.append((slots, attr, slots[attr]))
            slots[attr] = value
        yield
    finally:
        for slots, attr, original in reversed(saved):
            slots[attr] = original
