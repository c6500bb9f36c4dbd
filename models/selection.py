"""Which parameters of a network become sample sites, and with which priors.

Site discovery for :class:`~bayesdl.models.BNN`: the network must be plain torch
(:func:`check_plain_torch`) with fitted BatchNorm statistics (:func:`check_batch_norms`);
``deterministic=`` keeps parameters fixed (:func:`deterministic_parameters`); the prior rule
picks a prior, or none, for every other parameter; :func:`discover_sites` lists the chosen
parameters (:class:`Weight`) and the site specifications of ``theta`` in order: for each
parameter, its prior's latent sites then the parameter; then the likelihood's latent sites.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass

import pyro.distributions as dist
from pyro.nn import PyroModule
from torch import nn
from torch.distributions import biject_to

from bayesdl.functional import SiteSpec
from bayesdl.likelihoods import Likelihood
from bayesdl.priors.base import Prior, PriorRule

__all__ = [
    "Weight",
    "check_batch_norms",
    "check_plain_torch",
    "deterministic_parameters",
    "discover_sites",
    "latent_spec",
    "matching_parameters",
]


@dataclass(frozen=True)
class Weight:
    """A network parameter that is a sample site."""

    name: str
    module: str
    prior: Prior
    hierarchical: bool


def check_plain_torch(net: nn.Module) -> None:
    """Refuse Pyro modules: their ``PyroSample`` attributes are not parameters a BNN sees."""
    for name, module in net.named_modules():
        if isinstance(module, PyroModule):
            raise TypeError(
                f"net: module {name or '(the network)'!r} is a Pyro {type(module).__name__}; "
                "a BNN takes a plain torch.nn.Module and puts the priors on it itself: build "
                "the network from torch.nn layers and give the priors with prior= "
                "(bayesdl.priors)"
            )


def check_batch_norms(net: nn.Module) -> None:
    """BatchNorm runs on its running statistics (eval mode): they must exist and be fitted."""
    for name, module in net.named_modules():
        if not isinstance(module, nn.modules.batchnorm._BatchNorm):
            continue
        label = f"net: BatchNorm module {name!r} ({type(module).__name__})"
        fixes = (
            "remove it, use nn.LayerNorm, or fit its running statistics before BNN(...) (run "
            "the network in train mode over the data, e.g. a MAP warm-up; "
            f"deterministic=[nn.{type(module).__name__}] then keeps its affine parameters "
            "fixed too)"
        )
        if not module.track_running_stats or module.num_batches_tracked is None:
            raise ValueError(
                f"{label} has no running statistics (track_running_stats=False), so each "
                f"prediction would depend on the other examples in its batch; {fixes}"
            )
        if int(module.num_batches_tracked) == 0:
            raise ValueError(
                f"{label} has running statistics that were never updated (num_batches_tracked "
                f"is 0), so it would normalise with mean 0 and variance 1; {fixes}"
            )


def deterministic_parameters(
    net: nn.Module, deterministic: Sequence[type[nn.Module] | str]
) -> frozenset[str]:
    """Names of the parameters that ``deterministic`` keeps fixed.

    A module type keeps every parameter of its instances (and their submodules); a string is
    an :func:`fnmatch.fnmatch` glob, as in :class:`~bayesdl.priors.Select`, on a parameter's
    full name or on the name of a module holding it (``"encoder"``, ``"encoder.*"``,
    ``"*.bias"``). Each entry must match at least one parameter.
    """
    if isinstance(deterministic, (str, type)) or not isinstance(deterministic, Sequence):
        raise TypeError(
            "deterministic: expected a list of module types and name patterns, got "
            f"{deterministic!r}; wrap a single one in a list"
        )
    kept: set[str] = set()
    for entry in deterministic:
        matched = matching_parameters(net, entry)
        if not matched:
            raise ValueError(
                f"deterministic: {entry!r} matches no parameter of the network; check the "
                "name pattern against net.named_parameters() or the module type"
            )
        kept |= matched
    return frozenset(kept)


def matching_parameters(net: nn.Module, entry: type[nn.Module] | str) -> set[str]:
    """The parameters one entry of ``deterministic`` matches."""
    if isinstance(entry, type) and issubclass(entry, nn.Module):
        return {
            f"{name}.{p}" if name else p
            for name, module in net.named_modules()
            if isinstance(module, entry)
            for p, _ in module.named_parameters()
        }
    if not isinstance(entry, str):
        raise TypeError(
            "deterministic: entries must be torch.nn.Module subclasses or name patterns, got "
            f"{entry!r}"
        )
    matched = set()
    for name, _ in net.named_parameters():
        pieces = name.split(".")
        holders = [".".join(pieces[:i]) for i in range(1, len(pieces) + 1)]
        if any(fnmatch.fnmatchcase(holder, entry) for holder in holders):
            matched.add(name)
    return matched


def latent_spec(site: str, d: dist.Distribution, owner: str) -> SiteSpec:
    """The site specification of latent site ``site`` with prior ``d``, owned by ``owner`` (named
    in errors): it must be unbatched and continuous."""
    if d.batch_shape != ():
        raise ValueError(
            f"{owner}: latent site {site!r} must have an empty batch shape (use .to_event()), "
            f"got batch shape {tuple(d.batch_shape)}"
        )
    if d.support.is_discrete:
        raise ValueError(
            f"{owner}: latent site {site!r} is discrete; only continuous sites are supported"
        )
    return SiteSpec(site, d.event_shape, d.support)


def discover_sites(
    net: nn.Module, prior: PriorRule, likelihood: Likelihood, kept: frozenset[str]
) -> tuple[tuple[Weight, ...], tuple[str, ...], list[SiteSpec]]:
    """The parameters that become sample sites, those kept fixed, and the sites of ``theta``.

    Parameters
    ----------
    net
        The network.
    prior
        The prior rule (:func:`~bayesdl.priors.base.select` of the user's ``prior``): a
        :class:`~bayesdl.priors.Prior` or ``None`` (fixed) for each parameter.
    likelihood
        The likelihood, whose latent sites come last.
    kept
        Parameters that ``deterministic=`` keeps fixed, whatever the prior says.

    Returns
    -------
    weights : tuple of Weight
        The sample-site parameters, in ``net.named_parameters()`` order.
    fixed : tuple of str
        The parameters kept fixed (by the prior or ``deterministic=``).
    specs : list of SiteSpec
        The sites of ``theta`` in order: for each weight, its prior's latent sites then the
        weight; then the likelihood's latent sites.

    Raises
    ------
    ValueError
        If a prior cannot serve its parameter, a latent site is batched or discrete, a prior
        rule names no parameter, or every parameter is fixed.
    """
    modules = dict(net.named_modules())
    weights: list[Weight] = []
    fixed: list[str] = []
    specs: list[SiteSpec] = []
    for name, param in net.named_parameters():
        owner = name.rsplit(".", 1)[0] if "." in name else ""
        chosen = None if name in kept else prior(name, param, modules[owner])
        if chosen is None:
            fixed.append(name)
            continue
        latents = chosen.latent_sites(name, param, modules[owner])
        weights.append(Weight(name, owner, chosen, bool(latents)))
        for site, d in latents.items():
            specs.append(latent_spec(site, d, f"the prior of {name!r}"))
        # Build the distribution once now, so a prior that cannot serve this parameter
        # (a conv prior on a Linear weight, say) fails here rather than mid-sampling.
        example = {
            site: biject_to(d.support)(param.new_zeros(d.event_shape))
            for site, d in latents.items()
        }
        chosen.distribution(name, param, modules[owner], example)
        specs.append(SiteSpec(name, param.shape))
    prior.check_names([n for n, _ in net.named_parameters() if n not in kept])
    for site, d in likelihood.latent_sites().items():
        specs.append(latent_spec(site, d, "the likelihood"))
    if not weights:
        raise ValueError(
            "prior: every parameter is fixed (by the prior or deterministic=); a BNN needs "
            "at least one sample site"
        )
    return tuple(weights), tuple(fixed), specs
