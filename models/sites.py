"""The sites of a BNN: the layout of ``theta``, the prior of every site and prior draws.

:class:`ParameterSites` is the part of :class:`~bayesdl.models.BNN` that knows which parameters
are sample sites (:func:`~bayesdl.models.selection.discover_sites`) and how ``theta`` is laid
out: it ravels and unravels ``theta``, walks the sites in order with their priors (the one
traversal behind the Pyro model, the log prior and prior sampling), caches the fused prior
terms (:mod:`bayesdl.models.fused_prior`) and draws starting points from the prior. The two
views of the density, the Pyro model and the functional ``log_joint``, are in
:mod:`bayesdl.models.bnn`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping

import pyro
import pyro.distributions as dist
import torch
from torch import Tensor, nn

from bayesdl._checks import check_count
from bayesdl._seeding import child_seeds, seeded
from bayesdl.functional import FlatLayout
from bayesdl.likelihoods import Likelihood
from bayesdl.priors.base import PriorRule

from .fused_prior import (
    GaussianBlock,
    JacobianPlan,
    ScaleBlock,
    build_gaussian_block,
    build_jacobian_plan,
    build_scale_block,
)
from .selection import Weight, discover_sites

__all__ = ["ParameterSites", "template", "to_shape"]


def template(param: Tensor) -> Tensor:
    """A parameter's value as a constant: ``.data``, which a TorchScript trace (Pyro's jit)
    holds as a constant, or under :func:`torch.compile`, which cannot trace ``.data``,
    ``detach()``."""
    return param.detach() if torch.compiler.is_compiling() else param.data


def to_shape(d: dist.Distribution, shape: torch.Size) -> dist.Distribution:
    """Expand ``d`` to cover ``shape`` and make all of it the event (one site, one tensor)."""
    batch_ndim = len(shape) - len(d.event_shape)
    d = d.expand(shape[:batch_ndim]) if tuple(d.batch_shape) != tuple(shape[:batch_ndim]) else d
    return d.to_event(batch_ndim) if batch_ndim else d


class ParameterSites:
    """The sample sites of a network with a prior and a likelihood, laid out in ``theta``.

    A base of :class:`~bayesdl.models.BNN`, which sets ``net``, ``prior`` and ``likelihood``
    and then calls :meth:`_declare_sites`.

    Attributes
    ----------
    layout : FlatLayout
        The sites of ``theta`` in order: for each parameter, its prior's latent sites then the
        parameter; then the likelihood's latent sites.
    """

    net: nn.Module
    prior: PriorRule
    likelihood: Likelihood
    layout: FlatLayout

    def _declare_sites(self, kept: frozenset[str]) -> None:
        """Discover the sample sites (``kept``: the parameters ``deterministic=`` keeps fixed)
        and lay them out; the caches of priors and fused terms start empty."""
        weights, fixed, specs = discover_sites(self.net, self.prior, self.likelihood, kept)
        self._weights = weights
        self._fixed_names = fixed
        self._buffer_names = tuple(n for n, _ in self.net.named_buffers())
        self.layout = FlatLayout(specs)
        # Distributions, fused blocks and the Jacobian plan, built once per dtype and device.
        self._priors: dict[
            tuple, dist.Distribution | GaussianBlock | ScaleBlock | JacobianPlan
        ] = {}

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_priors"] = {}
        return state

    @property
    def num_params(self) -> int:
        """``D``, the length of ``theta``."""
        return self.layout.size

    @property
    def dtype(self) -> torch.dtype:
        """The network's dtype, which ``theta`` must have."""
        return next(self.net.parameters()).dtype

    @property
    def device(self) -> torch.device:
        """The network's device."""
        return next(self.net.parameters()).device

    def ravel(self, sites: Mapping[str, Tensor], constrained: bool = True) -> Tensor:
        """Named site values ``{name: (*batch, *shape)}`` to ``theta`` ``(*batch, D)``."""
        return self.layout.ravel(sites, constrained=constrained)

    def unravel(self, theta: Tensor, constrained: bool = True) -> dict[str, Tensor]:
        """``theta`` ``(*batch, D)`` to named site values (constrained by default)."""
        return self.layout.unravel(theta, constrained=constrained)

    def _fixed(self) -> dict[str, Tensor]:
        """Parameters kept fixed and buffers: the network's tensors that are not sample sites."""
        fixed = {n: template(self.net.get_parameter(n)) for n in self._fixed_names}
        fixed.update({n: self.net.get_buffer(n) for n in self._buffer_names})
        return fixed

    def _walk(
        self,
        visit: Callable[[str, dist.Distribution, torch.Size], Tensor],
        skip: frozenset[str] = frozenset(),
    ) -> dict[str, Tensor]:
        """Visit every site in order and collect the values ``visit(name, prior, shape)`` returns.

        The one traversal behind the Pyro model, the log prior and prior sampling: each
        parameter's latent sites first, then the parameter, whose prior is built from the latent
        values just visited; then the likelihood's latents. Parameters named in ``skip`` are
        left out with their latent sites (no distribution is built for them). Templates are
        detached so that a TorchScript trace (Pyro's ``jit_compile``) can hold them as constants.
        """
        values: dict[str, Tensor] = {}
        for w in self._weights:
            if w.name in skip:
                continue
            param = template(self.net.get_parameter(w.name))
            if not w.hierarchical:
                values[w.name] = visit(w.name, self._fixed_prior(w, param), param.shape)
                continue
            module = self.net.get_submodule(w.module)
            latents = w.prior.latent_sites(w.name, param, module)
            for site, d in latents.items():
                values[site] = visit(site, d, d.event_shape)
            d = w.prior.distribution(w.name, param, module, {s: values[s] for s in latents})
            values[w.name] = visit(w.name, d, param.shape)
        for site, d in self.likelihood.latent_sites().items():
            values[site] = visit(site, d, d.event_shape)
        return values

    def site_priors(self, values: Mapping[str, Tensor]) -> dict[str, dist.Distribution]:
        """The prior of every site given (batched) values of the hyper-latents.

        Each parameter's prior is built from the values of its latent sites in ``values``, as
        the log prior does; only the latent sites' values are needed.
        """
        priors: dict[str, dist.Distribution] = {}

        def visit(name: str, d: dist.Distribution, shape: torch.Size) -> Tensor | None:
            priors[name] = d
            return values.get(name)

        self._walk(visit)
        return priors

    def _fixed_prior(self, w: Weight, param: Tensor) -> dist.Distribution:
        """The prior of a parameter without latents, built once per dtype and device.

        Priors are settings, so the distribution never changes; it is built without argument
        validation (the values it scores come from samplers, not from users), and outside any
        :mod:`torch.func` transform the call may be under, so that no transform's wrapped
        tensors outlive it in the cache.
        """
        key = (w.name, param.dtype, param.device)
        if key not in self._priors:
            with pyro.validation_enabled(False), torch._C._DisableFuncTorch():
                module = self.net.get_submodule(w.module)
                self._priors[key] = w.prior.distribution(w.name, param, module, {})
        return self._priors[key]

    def _priors_built(self) -> bool:
        """Whether the prior was scored at the sites' dtype and device (the Gaussian block,
        which every log prior builds first, is cached)."""
        return self._gaussian_block_key() in self._priors

    def _gaussian_block_key(self) -> tuple[str, torch.dtype, torch.device]:
        """The key of :meth:`_gaussian_block` in the prior cache (per dtype and device)."""
        return ("gaussian block", self.dtype, self.device)

    def _gaussian_block(self) -> GaussianBlock:
        """The fixed-Normal-prior sites as one :class:`GaussianBlock` (built once)."""
        key = self._gaussian_block_key()
        if key not in self._priors:
            with torch._C._DisableFuncTorch():  # as for _fixed_prior
                normals = []
                for w in self._weights:
                    param = template(self.net.get_parameter(w.name))
                    prior = None if w.hierarchical else self._fixed_prior(w, param)
                    normals.append((w.name, param, prior))
                self._priors[key] = build_gaussian_block(
                    normals, self.layout, self.dtype, self.device
                )
        return self._priors[key]

    def _scale_block(self) -> ScaleBlock:
        """The inverse-Gamma-scale sites as one :class:`ScaleBlock` (built once)."""
        key = ("scale block", self.dtype, self.device)
        if key not in self._priors:
            with torch._C._DisableFuncTorch():  # as for _fixed_prior
                hierarchical = [
                    (w, template(self.net.get_parameter(w.name)), self.net.get_submodule(w.module))
                    for w in self._weights
                    if w.hierarchical
                ]
                self._priors[key] = build_scale_block(
                    hierarchical, self.layout, self.dtype, self.device
                )
        return self._priors[key]

    def _jacobian_plan(self) -> JacobianPlan:
        """Columns of the log-scale sites (:func:`is_exp`: the log-det Jacobian is ``u``
        itself) and the other constrained sites with their transforms (built once)."""
        key = ("jacobian", self.device)
        if key not in self._priors:
            with torch._C._DisableFuncTorch():  # as for _fixed_prior
                self._priors[key] = build_jacobian_plan(self.layout, self.device)
        return self._priors[key]

    def _log_abs_det_jacobian(self, theta: Tensor) -> Tensor:
        """``self.layout.log_abs_det_jacobian(theta)``, with the log-scale sites summed at once."""
        return self._jacobian_plan().log_abs_det_jacobian(theta)

    def _likelihood_latents(self, values: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The values of the likelihood's latent sites among ``values``."""
        return {s: values[s] for s in self.likelihood.latent_sites()}

    # ------------------------------------------------------------------ prior draws
    def init_theta(self, P: int, seed: int | None = None, init: str = "prior") -> Tensor:
        """``P`` starting points ``theta``, shape ``(P, D)``: prior draws or fresh networks.

        Parameters
        ----------
        P
            Number of starting points (chains, particles, ensemble members).
        seed
            Draw ``p`` depends only on ``seed`` and ``p`` (not on ``P``): each is seeded on its
            own from ``numpy.random.SeedSequence(seed)``.
        init
            ``"prior"``: draws from the prior (every site). ``"net"``: the network's own
            initialisation: a copy of ``net`` whose modules' ``reset_parameters()`` are called
            (PyTorch's Kaiming-uniform for ``Linear`` and ``Conv``), as a deep ensemble or
            D'Angelo et al.'s Stein ensembles start their members; the prior's hyper-latents and
            the likelihood's latent sites are still drawn from their priors. A network trained
            from prior draws starts with outputs of the scale of the prior functions (logits
            around +-80 for an N(0, 1) prior on a 784-100-10 MLP), which an optimiser does not
            undo in a few thousand steps.
        """
        P = check_count("P", P)
        if init not in ("prior", "net"):
            raise ValueError(f"init: expected 'prior' or 'net', got {init!r}")
        draw = self._sample_prior if init == "prior" else self._net_draw
        if init == "net":
            self._check_resettable()
        rows = []
        for s in child_seeds(seed, P):
            with seeded(s):
                rows.append(draw())
        return torch.stack(rows)

    def _check_resettable(self) -> None:
        """Every sample-site parameter must belong to a module with ``reset_parameters()``."""
        for w in self._weights:
            module = self.net.get_submodule(w.module)
            if not callable(getattr(module, "reset_parameters", None)):
                raise ValueError(
                    f"init: 'net' re-initialises parameters with their module's "
                    f"reset_parameters(), but {w.name!r} belongs to a {type(module).__name__}, "
                    "which has none; use init='prior' or pass initial values"
                )

    def _net_draw(self) -> Tensor:
        """One ``theta``: the weights of a re-initialised ``net``, other sites from the prior."""
        values = self._walk(lambda name, d, shape: to_shape(d, shape).sample())
        net = copy.deepcopy(self.net)
        with torch.no_grad():
            for module in net.modules():
                reset = getattr(module, "reset_parameters", None)
                if callable(reset):
                    reset()
        for w in self._weights:
            values[w.name] = net.get_parameter(w.name).detach()
        return self.ravel(values).to(device=self.device, dtype=self.dtype)

    def _sample_prior(self) -> Tensor:
        """One ``theta`` drawn from the prior, from torch's global generator."""
        values = self._walk(lambda name, d, shape: to_shape(d, shape).sample())
        return self.ravel(values).to(device=self.device, dtype=self.dtype)

    def sample_prior(self, P: int) -> Tensor:
        """``P`` draws of ``theta`` from the prior in one vectorised pass, ``(P, D)``.

        Every site is sampled once with a leading batch dimension (hierarchical latents first,
        passed batched to their parameters' priors), from torch's global generator: wrap the
        call in :func:`bayesdl._seeding.seeded` or a :class:`~bayesdl._seeding.PrivateStream`
        to seed it. Same distribution as :meth:`init_theta`, which seeds each draw on its own
        and is the one to use for initial values; this one is for backends that need many prior
        draws at every step (SSGE's functional prior scores).
        """
        P = check_count("P", P)

        def draw(name: str, d: dist.Distribution, shape: torch.Size) -> Tensor:
            batch = (P, *shape[: len(shape) - len(d.event_shape)])
            return d.expand(torch.broadcast_shapes(tuple(d.batch_shape), batch)).sample()

        return self.ravel(self._walk(draw)).to(device=self.device, dtype=self.dtype)
