r"""The BNN declaration: a network, a prior and a likelihood, as a Pyro model and a log density.

A :class:`BNN` offers two views of one density, both derived from the same
:class:`~bayesdl.priors.Prior` and :class:`~bayesdl.likelihoods.Likelihood` objects:

* :meth:`BNN.model` is a plain Pyro model, so ``pyro.infer.MCMC``, ``SVI`` and ``Predictive``
  work on it unchanged;
* :meth:`BNN.log_joint` evaluates the same log density for ``P`` chains or particles at once,
  on a flat unconstrained parameter tensor ``theta`` of shape ``(P, D)``.

The log joint, with ``B`` observations in the minibatch out of ``num_data``, temperature ``T``
and constrained values :math:`\vartheta = g(\theta)` (hyper-latent scales are positive), is

.. math::
    \log \tilde p(\theta) = \frac{1}{T_p}\Big[\log p(\vartheta)
        + \frac{1}{T_\ell}\frac{\texttt{num\_data}}{B}
          \sum_{b=1}^{B}\log p(y_b \mid f_\vartheta(x_b), \vartheta)\Big]
        + \log\Big|\frac{\partial g}{\partial \theta}\Big|,

with ``(T_p, T_l) = (T, 1)`` for ``tempering="posterior"`` (the default: the whole posterior is
tempered, :math:`p(\vartheta \mid D)^{1/T}`, the cold posterior of Wenzel et al. 2020) and
``(1, T)`` for ``tempering="likelihood"`` (only the data are over- or under-counted). The
Jacobian term is never tempered: it is the change of variables of the tempered density.
"""

from __future__ import annotations

import contextlib
import copy
import fnmatch
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.nn import PyroModule
from torch import Tensor, nn
from torch.distributions import biject_to
from torch.distributions.transforms import (
    AffineTransform,
    ComposeTransform,
    ExpTransform,
    Transform,
)

from bayesdl import inputs
from bayesdl._checks import as_tensor, check_count, check_finite, check_positive
from bayesdl._seeding import child_seeds, seeded
from bayesdl.functional import FlatLayout, SiteSpec, batched_forward, call_with_parameters
from bayesdl.inputs import Inputs
from bayesdl.likelihoods import Likelihood
from bayesdl.priors.base import Prior, PriorLike, select

__all__ = ["BNN"]

_TEMPERINGS = ("posterior", "likelihood")


@dataclass(frozen=True)
class _Weight:
    """A network parameter that is a sample site."""

    name: str
    module: str
    prior: Prior
    hierarchical: bool


@dataclass(frozen=True)
class _GaussianBlock:
    """The sites with a fixed Normal prior, scored together as one vector.

    ``log N(theta_c | loc, scale^2)`` summed over the columns ``c`` of those sites (``columns``
    is ``None`` when they are all of ``theta``): two tensor operations in place of a
    distribution per site, for the samplers' inner loop.
    """

    names: frozenset[str]
    columns: Tensor | None
    loc: Tensor
    inv_scale: Tensor
    const: float

    def log_prob(self, theta: Tensor) -> Tensor:
        if self.columns is not None:
            theta = theta.index_select(-1, self.columns)
        return self.const - 0.5 * ((theta - self.loc) * self.inv_scale).square().sum(-1)


@dataclass(frozen=True)
class _ScaleBlock:
    r"""The sites with a per-tensor inverse-Gamma scale prior, scored together in closed form.

    For tensor :math:`l` with :math:`n_l` entries :math:`w`, factor :math:`c_l` and
    hyperprior :math:`\sigma_l^2 \sim \mathrm{InvGamma}(a_l, b_l)`
    (:class:`~bayesdl.priors.base.InverseGammaScaleTerms`), the latent is stored as
    :math:`u_l = \log\sigma_l` and the log prior of :math:`(\sigma_l, w)` is

    .. math::
        \underbrace{a_l \log b_l - \log\Gamma(a_l) + \log 2 - (2a_l + 1) u_l
            - b_l e^{-2u_l}}_{\log p(\sigma_l)\text{: InvGamma on } \sigma_l^2,
            \text{ Jacobian of } \sigma^2 \mapsto \sigma}
        \; \underbrace{- n_l \log c_l - \tfrac{n_l}{2}\log 2\pi - n_l u_l
            - \frac{S_l}{2 c_l^2} e^{-2u_l}}_{\sum_i \log \mathcal N(w_i; 0, c_l^2\sigma_l^2)},
        \qquad S_l = \sum_i w_i^2,

    that is ``const - sum_l [k_l u_l + (b_l + h_l S_l) exp(-2 u_l)]`` with
    :math:`k_l = 2a_l + 1 + n_l` and :math:`h_l = 1/(2c_l^2)`: a few tensor operations for all
    tensors and chains, in place of two distributions per tensor per call. The log-det
    Jacobian of :math:`\sigma = e^u` is not included (:meth:`BNN.log_joint` adds it).
    """

    names: frozenset[str]
    latent_columns: Tensor
    weight_columns: Tensor
    layer_of_weight: Tensor
    slope: Tensor
    rate: Tensor
    half_inv_factor_sq: Tensor
    const: float

    def log_prob(self, theta: Tensor) -> Tensor:
        u = theta.index_select(-1, self.latent_columns)
        w = theta.index_select(-1, self.weight_columns)
        sums = u.new_zeros(u.shape).index_add(-1, self.layer_of_weight, w.square())
        energy = (self.rate + self.half_inv_factor_sq * sums) * torch.exp(-2 * u)
        return self.const - (self.slope * u + energy).sum(-1)


@dataclass(frozen=True)
class _JacobianPlan:
    """How to sum the log-det Jacobian: log-scale columns at once, other sites one by one."""

    exp_columns: Tensor
    others: tuple[tuple[slice, torch.Size, Transform], ...]


class BNN:
    """A Bayesian neural network: ``net`` with a ``prior`` on its parameters and a ``likelihood``.

    A declaration only: inference backends (``bayesdl.inference``) take a BNN and data and
    return a :class:`~bayesdl.Posterior`.

    Parameters
    ----------
    net
        Any plain ``torch.nn.Module`` mapping inputs ``(N, ...)`` to outputs ``(N, out)`` or
        ``(N,)``; its ``forward`` may take several tensors, given as a tuple or dict ``x``
        (:mod:`bayesdl.inputs`). Its current parameter values are the values of the parameters
        kept fixed. A ``PyroModule`` (with ``PyroSample`` attributes) is refused: the priors
        come from ``prior``. See *The network's mode* below for Dropout and BatchNorm.
    prior
        A :class:`~bayesdl.priors.Prior` for every parameter, a dict ``{name pattern: prior}``
        or a :class:`~bayesdl.priors.Select` rule (``None`` keeps a parameter fixed).
    likelihood
        A :class:`~bayesdl.likelihoods.Likelihood`.
    temperature
        ``T > 0``; ``T < 1`` gives a cold posterior.
    tempering
        ``"posterior"`` tempers prior and likelihood, ``p(theta | D)^(1/T)``; ``"likelihood"``
        tempers only the likelihood, ``p(D | theta)^(1/T) p(theta)``.
    deterministic
        Parameters kept fixed at their current values (not sample sites, not in ``theta``),
        whatever the prior says, as TyXe's ``hide_module_types``: module types (every
        parameter of their instances, ``nn.BatchNorm1d``) and name patterns (an
        :func:`fnmatch.fnmatch` glob on a parameter's name or on the name of a module holding
        it: ``"encoder"``, ``"encoder.*"``, ``"*.bias"``). An entry that matches no parameter
        is an error.

    Notes
    -----
    **The network's mode.** A BNN's network is a deterministic function of its parameters:
    ``BNN(...)`` puts ``net`` in eval mode (``net.eval()``) and every forward pass runs in it,
    so Dropout is off (the posterior over weights is the uncertainty, not dropout masks) and
    BatchNorm normalises with its running statistics, which are buffers held fixed. Those
    statistics must be fitted before ``BNN(...)`` (run the network in train mode over the data,
    a MAP warm-up, then build the BNN): a BatchNorm whose statistics were never updated, or
    that keeps none (``track_running_stats=False``), is refused with an error naming it. Its
    affine weight and bias are sample sites unless listed in ``deterministic``. Calling
    ``net.train()`` afterwards makes the next fit or prediction raise until ``net.eval()``.

    Attributes
    ----------
    layout : FlatLayout
        The sites of ``theta`` in order: for each parameter, its prior's latent sites then the
        parameter; then the likelihood's latent sites.
    """

    def __init__(
        self,
        net: nn.Module,
        prior: PriorLike,
        likelihood: Likelihood,
        temperature: float = 1.0,
        tempering: str = "posterior",
        deterministic: Sequence[type[nn.Module] | str] = (),
    ) -> None:
        if not isinstance(net, nn.Module):
            raise TypeError(f"net: expected a torch.nn.Module, got {type(net).__name__}")
        _check_plain_torch(net)
        _check_batch_norms(net)
        kept = _deterministic_parameters(net, deterministic)
        if not isinstance(likelihood, Likelihood):
            raise TypeError(
                f"likelihood: expected a bayesdl Likelihood, got {type(likelihood).__name__}"
            )
        if tempering not in _TEMPERINGS:
            raise ValueError(f"tempering: must be one of {_TEMPERINGS}, got {tempering!r}")
        self.net = net
        self.prior = select(prior)
        self.likelihood = likelihood
        self.temperature = check_positive("temperature", temperature)
        self.tempering = tempering

        modules = dict(net.named_modules())
        weights: list[_Weight] = []
        fixed: list[str] = []
        specs: list[SiteSpec] = []
        for name, param in net.named_parameters():
            owner = name.rsplit(".", 1)[0] if "." in name else ""
            chosen = None if name in kept else self.prior(name, param, modules[owner])
            if chosen is None:
                fixed.append(name)
                continue
            latents = chosen.latent_sites(name, param, modules[owner])
            weights.append(_Weight(name, owner, chosen, bool(latents)))
            for site, d in latents.items():
                specs.append(_latent_spec(site, d, f"the prior of {name!r}"))
            # Build the distribution once now, so a prior that cannot serve this parameter
            # (a conv prior on a Linear weight, say) fails here rather than mid-sampling.
            example = {
                site: biject_to(d.support)(param.new_zeros(d.event_shape))
                for site, d in latents.items()
            }
            chosen.distribution(name, param, modules[owner], example)
            specs.append(SiteSpec(name, param.shape))
        self.prior.check_names([n for n, _ in net.named_parameters() if n not in kept])
        for site, d in likelihood.latent_sites().items():
            specs.append(_latent_spec(site, d, "the likelihood"))
        if not weights:
            raise ValueError(
                "prior: every parameter is fixed (by the prior or deterministic=); a BNN needs "
                "at least one sample site"
            )
        self._weights = tuple(weights)
        self._fixed_names = tuple(fixed)
        self.deterministic = tuple(deterministic)
        net.eval()
        self._buffer_names = tuple(n for n, _ in net.named_buffers())
        self.layout = FlatLayout(specs)
        self._out_features: dict[tuple, int] = {}
        # Distributions, fused blocks and the Jacobian plan, built once per dtype and device.
        self._priors: dict[
            tuple, dist.Distribution | _GaussianBlock | _ScaleBlock | _JacobianPlan
        ] = {}

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_priors"] = {}
        return state

    # ------------------------------------------------------------------ structure
    @property
    def num_params(self) -> int:
        """``D``, the length of ``theta``."""
        return self.layout.size

    @property
    def dtype(self) -> torch.dtype:
        return next(self.net.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def ravel(self, sites: Mapping[str, Tensor], constrained: bool = True) -> Tensor:
        """Named site values ``{name: (*batch, *shape)}`` to ``theta`` ``(*batch, D)``."""
        return self.layout.ravel(sites, constrained=constrained)

    def unravel(self, theta: Tensor, constrained: bool = True) -> dict[str, Tensor]:
        """``theta`` ``(*batch, D)`` to named site values (constrained by default)."""
        return self.layout.unravel(theta, constrained=constrained)

    def _fixed(self) -> dict[str, Tensor]:
        """Parameters kept fixed and buffers: the network's tensors that are not sample sites."""
        fixed = {n: _template(self.net.get_parameter(n)) for n in self._fixed_names}
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
            param = _template(self.net.get_parameter(w.name))
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

    def _fixed_prior(self, w: _Weight, param: Tensor) -> dist.Distribution:
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

    def _gaussian_block(self) -> _GaussianBlock:
        """The fixed-Normal-prior sites as one :class:`_GaussianBlock` (built once)."""
        key = ("gaussian block", self.dtype, self.device)
        if key not in self._priors:
            with torch._C._DisableFuncTorch():  # as for _fixed_prior
                self._priors[key] = self._build_gaussian_block()
        return self._priors[key]

    def _build_gaussian_block(self) -> _GaussianBlock:
        names, columns, locs, scales = [], [], [], []
        for w in self._weights:
            param = _template(self.net.get_parameter(w.name))
            d = None if w.hierarchical else self._fixed_prior(w, param)
            if type(d) is not dist.Normal:
                continue
            names.append(w.name)
            span = self.layout.slices[w.name]
            columns.append(torch.arange(span.start, span.stop, device=param.device))
            locs.append(d.loc.expand(param.shape).reshape(-1))
            scales.append(d.scale.expand(param.shape).reshape(-1))
        empty = torch.zeros(0, dtype=self.dtype, device=self.device)
        column = torch.cat([empty.long(), *columns])
        scale = torch.cat([empty, *scales])
        return _GaussianBlock(
            names=frozenset(names),
            columns=None if column.numel() == self.num_params else column,
            loc=torch.cat([empty, *locs]),
            inv_scale=scale.reciprocal(),
            const=float(-scale.log().sum() - 0.5 * scale.numel() * math.log(2 * math.pi)),
        )

    def _scale_block(self) -> _ScaleBlock:
        """The inverse-Gamma-scale sites as one :class:`_ScaleBlock` (built once)."""
        key = ("scale block", self.dtype, self.device)
        if key not in self._priors:
            with torch._C._DisableFuncTorch():  # as for _fixed_prior
                self._priors[key] = self._build_scale_block()
        return self._priors[key]

    def _build_scale_block(self) -> _ScaleBlock:
        """Collect every hierarchical parameter whose prior has a closed form
        (:meth:`~bayesdl.priors.Prior.inverse_gamma_scale`) with its one latent scale site
        stored on the log scale; the others stay with their distributions."""
        names: list[str] = []
        latent_columns: list[int] = []
        weight_columns, layer_of_weight = [], []
        slope, rate, half_inv_factor_sq = [], [], []
        const = 0.0
        for w in self._weights:
            if not w.hierarchical:
                continue
            param = _template(self.net.get_parameter(w.name))
            module = self.net.get_submodule(w.module)
            terms = w.prior.inverse_gamma_scale(w.name, param, module)
            if terms is None:
                continue
            latents = w.prior.latent_sites(w.name, param, module)
            if set(latents) != {terms.site}:
                continue
            d = latents[terms.site]
            if tuple(d.event_shape) != () or not _is_exp(biject_to(d.support)):
                continue
            a, b, c, n = terms.concentration, terms.rate, terms.factor, param.numel()
            span = self.layout.slices[w.name]
            layer = len(latent_columns)
            names += [w.name, terms.site]
            latent_columns.append(self.layout.slices[terms.site].start)
            weight_columns.append(torch.arange(span.start, span.stop, device=param.device))
            layer_of_weight.append(torch.full((n,), layer, dtype=torch.long, device=param.device))
            slope.append(2 * a + 1 + n)
            rate.append(b)
            half_inv_factor_sq.append(0.5 / c**2)
            const += (
                a * math.log(b)
                - math.lgamma(a)
                + math.log(2)
                - n * math.log(c)
                - 0.5 * n * math.log(2 * math.pi)
            )
        options = {"dtype": self.dtype, "device": self.device}
        empty = torch.zeros(0, dtype=torch.long, device=self.device)
        return _ScaleBlock(
            names=frozenset(names),
            latent_columns=torch.tensor(latent_columns, dtype=torch.long, device=self.device),
            weight_columns=torch.cat([empty, *weight_columns]),
            layer_of_weight=torch.cat([empty, *layer_of_weight]),
            slope=torch.tensor(slope, **options),
            rate=torch.tensor(rate, **options),
            half_inv_factor_sq=torch.tensor(half_inv_factor_sq, **options),
            const=const,
        )

    def _jacobian_plan(self) -> _JacobianPlan:
        """Columns of the log-scale sites (:func:`_is_exp`: the log-det Jacobian is ``u``
        itself) and the other constrained sites with their transforms (built once)."""
        key = ("jacobian", self.device)
        if key not in self._priors:
            with torch._C._DisableFuncTorch():  # as for _fixed_prior
                columns, others = [], []
                for site in self.layout.sites:
                    if site.is_real:
                        continue
                    span = self.layout.slices[site.name]
                    transform = biject_to(site.support)
                    if _is_exp(transform):
                        columns.append(torch.arange(span.start, span.stop, device=self.device))
                    else:
                        others.append((span, site.shape, transform))
                empty = torch.zeros(0, dtype=torch.long, device=self.device)
                self._priors[key] = _JacobianPlan(torch.cat([empty, *columns]), tuple(others))
        return self._priors[key]

    def _log_abs_det_jacobian(self, theta: Tensor) -> Tensor:
        """``self.layout.log_abs_det_jacobian(theta)``, with the log-scale sites summed at once."""
        plan = self._jacobian_plan()
        batch = theta.shape[:-1]
        total = theta.index_select(-1, plan.exp_columns).sum(-1)
        for span, shape, transform in plan.others:
            u = theta[..., span].reshape(batch + shape)
            ladj = transform.log_abs_det_jacobian(u, transform(u))
            total = total + ladj.reshape(*batch, -1).sum(-1)
        return total

    def _likelihood_latents(self, values: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {s: values[s] for s in self.likelihood.latent_sites()}

    # ------------------------------------------------------------------ data checks
    def out_features(self, x: Inputs) -> int:
        """Output width of the network for inputs like ``x`` (raises ``ValueError`` naming x)."""
        shapes = inputs.row_shapes(x)
        key = (shapes, tuple(part.dtype for part in inputs.parts(x).values()))
        if key not in self._out_features:
            detached = {n: p.detach() for n, p in self.net.named_parameters()}
            try:
                with torch.no_grad():
                    out = call_with_parameters(self.net, detached, inputs.take_rows(x, slice(0, 1)))
            except (RuntimeError, ValueError, IndexError, TypeError) as err:
                raise ValueError(
                    f"x: the network cannot take inputs with per-example shapes {dict(shapes)}: "
                    f"{err}{_integer_hint(x)}"
                ) from err
            if not isinstance(out, Tensor) or out.dim() not in (1, 2):
                shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
                raise ValueError(f"net: outputs must have shape (N, out) or (N,), got {shape}")
            width = 1 if out.dim() == 1 else out.shape[1]
            self.likelihood.check_outputs(width)
            self._out_features[key] = width
        return self._out_features[key]

    def check_inputs(self, x: object) -> Inputs:
        """Validate inputs and return them on the network's device, ready for the network.

        ``x`` is a tensor or array-like ``(N, ...)`` (a pandas ``DataFrame`` too), or a tuple
        or dict of them passed to the network as ``forward(*x)`` or ``forward(**x)``
        (:mod:`bayesdl.inputs`). Floating inputs are cast to the network's dtype; integer
        inputs (indices for ``nn.Embedding``) keep their dtype.
        """
        self._check_eval_mode()
        x = inputs.check_inputs(x, self.dtype, self.device)
        self.out_features(x)
        return x

    def _check_eval_mode(self) -> None:
        """The network must still be in eval mode (``BNN(...)`` put it there)."""
        training = [name or "the network" for name, m in self.net.named_modules() if m.training]
        if training:
            raise ValueError(
                f"net: module {training[0]!r} is in train mode (net.train() was called after "
                "BNN(...)); a BNN evaluates its network in eval mode (Dropout off, BatchNorm "
                "with its running statistics): call bnn.net.eval()"
            )

    def check_data(self, x: object, y: object) -> tuple[Inputs, Tensor]:
        """Validate inputs and targets before any work; returns them ready for the model.

        Raises
        ------
        TypeError, ValueError
            Naming ``x`` or ``y``: non-finite values, mismatched lengths, a wrong input width,
            float labels for a classifier, labels out of range.
        """
        x = self.check_inputs(x)
        y = as_tensor("y", y)
        n = inputs.num_rows(x)
        if y.dim() == 0 or y.shape[0] != n:
            raise ValueError(
                f"y: has {y.shape[0] if y.dim() else 0} rows but x has {n}; "
                "they must have the same length"
            )
        if y.is_floating_point():
            check_finite("y", y)
        y = self.likelihood.check_targets(y.to(self.device), self.out_features(x))
        if y.is_floating_point():
            y = y.to(self.dtype)
        self._check_likelihood_shapes(x, y)
        return x, y

    def _check_likelihood_shapes(self, x: Inputs, y: Tensor) -> None:
        """The likelihood's shape contract on two rows: outputs ``(P, n, out)`` against targets
        ``y[:n]`` give one log-density per target, ``(P, n)``; a custom likelihood (or net)
        whose outputs would broadcast against the targets is refused here, before any work."""
        n = min(2, inputs.num_rows(x))
        out = self.out_features(x)
        f = torch.zeros(1, n, out, dtype=self.dtype, device=self.device)
        latents = {
            site: torch.distributions.biject_to(d.support)(
                torch.zeros(d.batch_shape + d.event_shape, dtype=self.dtype, device=self.device)
            )
            for site, d in self.likelihood.latent_sites().items()
        }
        name = type(self.likelihood).__name__
        mismatch = (
            f"(outputs and targets do not match: a network with {out} output(s) against "
            f"targets of shape {tuple(y.shape)})"
        )
        with torch.no_grad():
            lp = self.likelihood.log_prob(f, y[:n], latents)
            if tuple(lp.shape) != (1, n):
                raise ValueError(
                    f"y: {name}.log_prob gives shape {tuple(lp.shape)} for network outputs of "
                    f"shape {(1, n, out)} and targets of shape {tuple(y[:n].shape)}; it must "
                    f"give one value per target, {(1, n)} {mismatch}"
                )
            rows = [
                self.likelihood.log_prob(f[:, i : i + 1], y[i : i + 1], latents) for i in range(n)
            ]
            if not torch.allclose(lp, torch.cat(rows, dim=1), rtol=1e-4, atol=1e-5, equal_nan=True):
                raise ValueError(
                    f"y: {name}.log_prob of one target depends on the other targets (outputs "
                    f"of shape {(1, n, out)} broadcast against targets of shape "
                    f"{tuple(y[:n].shape)}); it must give one value per target {mismatch}"
                )

    def _num_data(self, num_data: int | None, batch: int) -> int:
        if num_data is None:
            return batch
        num_data = check_count("num_data", num_data)
        if num_data < batch:
            raise ValueError(f"num_data: {num_data} is smaller than the minibatch size {batch}")
        return num_data

    # ------------------------------------------------------------------ the Pyro model
    def model(self, x: Inputs, y: Tensor | None = None, num_data: int | None = None) -> Tensor:
        """The BNN as a Pyro model.

        Samples every site from its prior, evaluates the network, records the outputs as the
        deterministic site ``"f"`` and observes ``y`` at site ``"y"`` inside a ``"data"`` plate of
        size ``num_data`` (the minibatch is scaled by ``num_data / len(x)``).

        Returns
        -------
        Tensor
            Network outputs ``(N, out)``.
        """
        if y is None:
            x = self.check_inputs(x)
        else:
            x, y = self.check_data(x, y)
        n = inputs.num_rows(x)
        num_data = self._num_data(num_data, n)
        prior_scale = 1.0 / self.temperature if self.tempering == "posterior" else 1.0
        lik_scale = 1.0 / self.temperature if self.tempering == "likelihood" else 1.0
        with poutine.scale(scale=prior_scale):
            values = self._walk(lambda name, d, shape: pyro.sample(name, _to_shape(d, shape)))
            params = {w.name: values[w.name] for w in self._weights}
            f = call_with_parameters(self.net, {**self._fixed(), **params}, x)
            f = f[:, None] if f.dim() == 1 else f
            pyro.deterministic("f", f)
            subsample = torch.arange(n, device=inputs.device_of(x))
            with pyro.plate("data", num_data, subsample=subsample), poutine.scale(scale=lik_scale):
                pyro.sample(
                    "y", self.likelihood.predictive(f, self._likelihood_latents(values)), obs=y
                )
        return f

    # ------------------------------------------------------------------ the functional view
    def forward(self, theta: Tensor, x: Inputs) -> Tensor:
        """Network outputs for every row of ``theta``: ``(P, D)`` -> ``(P, N, out)``."""
        x = self.check_inputs(x)
        self._check_theta(theta)
        return self._forward(self.unravel(theta), x)

    def _forward(self, values: Mapping[str, Tensor], x: Inputs) -> Tensor:
        params = {w.name: values[w.name] for w in self._weights}
        try:
            f = batched_forward(self.net, params, x, self._fixed())
        except RuntimeError as err:
            if "randomness" not in str(err):
                raise
            raise ValueError(
                "net: the network draws random numbers in its forward pass even in eval mode "
                "(F.dropout(..., training=True), torch.randn...); a BNN needs a deterministic "
                "network: use nn.Dropout (off in eval mode) or remove the randomness"
            ) from err
        return f[..., None] if f.dim() == 2 else f

    def _check_theta(self, theta: Tensor) -> None:
        if not isinstance(theta, Tensor):
            raise TypeError(f"theta: expected a torch.Tensor, got {type(theta).__name__}")
        if theta.dim() != 2 or theta.shape[1] != self.num_params:
            raise ValueError(
                f"theta: expected shape (P, {self.num_params}), got {tuple(theta.shape)}"
            )
        if theta.dtype != self.dtype:
            raise TypeError(
                f"theta: expected dtype {self.dtype} (the network's), got {theta.dtype}"
            )

    def log_prior(self, theta: Tensor) -> Tensor:
        """Untempered log prior density of the constrained values, ``(P, D)`` -> ``(P,)``.

        The log-det Jacobian of the constraining transform is not included (see :meth:`log_joint`).
        """
        self._check_theta(theta)
        with pyro.validation_enabled(False):
            return self._log_prior(theta, self.unravel(theta))

    def _log_prior(self, theta: Tensor, values: Mapping[str, Tensor]) -> Tensor:
        """Sum of the sites' prior log densities, ``(P, D)`` -> ``(P,)``.

        ``values`` are ``theta`` unravelled. Sites with a fixed Normal prior are scored together
        on ``theta`` (:class:`_GaussianBlock`), and so are parameters with a per-tensor
        inverse-Gamma scale and their scale sites (:class:`_ScaleBlock`); every other site by
        its distribution.
        """
        gaussian = self._gaussian_block()
        scales = self._scale_block()
        total = gaussian.log_prob(theta)
        if scales.names:
            total = total + scales.log_prob(theta)

        def score(name: str, d: dist.Distribution, shape: torch.Size) -> Tensor:
            nonlocal total
            value = values[name]
            total = total + d.log_prob(value).reshape(value.shape[0], -1).sum(-1)
            return value

        self._walk(score, skip=gaussian.names | scales.names)
        return total

    def log_likelihood(
        self, theta: Tensor, x: Inputs, y: Tensor, num_data: int | None = None
    ) -> Tensor:
        """Untempered minibatch log-likelihood scaled by ``num_data / N``, ``(P,)``."""
        x, y = self.check_data(x, y)
        self._check_theta(theta)
        n = inputs.num_rows(x)
        scale = self._num_data(num_data, n) / n
        with pyro.validation_enabled(False):
            values = self.unravel(theta)
            f = self._forward(values, x)
            return self.likelihood.log_prob(f, y, self._likelihood_latents(values)).sum(-1) * scale

    def log_joint_fn(
        self, x: Inputs, y: Tensor, num_data: int | None = None, *, validate: bool = True
    ) -> Callable[[Tensor], Tensor]:
        """Check the data once and return ``theta (P, D) -> log_joint (P,)`` for samplers.

        The returned function skips the data checks of :meth:`log_joint`, for use in an inner
        loop; it is differentiable in ``theta`` and never raises on non-finite ``theta`` (the
        result is then non-finite, which samplers treat as a rejection).

        Parameters
        ----------
        x, y
            Data, or a minibatch of it.
        num_data
            Size of the full data set (the minibatch likelihood is scaled by ``num_data/len(x)``).
        validate
            Check ``x`` and ``y``; stochastic backends pass minibatches of data they checked
            once (``check_data``) with ``validate=False``.
        """
        if validate:
            x, y = self.check_data(x, y)
        n = inputs.num_rows(x)
        lik_scale = self._num_data(num_data, n) / n
        temperature = self.temperature
        posterior_tempering = self.tempering == "posterior"

        def log_joint(theta: Tensor) -> Tensor:
            with _unvalidated():
                values = self.unravel(theta)
                lp_prior = self._log_prior(theta, values)
                f = self._forward(values, x)
                latents = self._likelihood_latents(values)
                lp_lik = self.likelihood.log_prob(f, y, latents).sum(-1) * lik_scale
                jacobian = self._log_abs_det_jacobian(theta)
            if posterior_tempering:
                return (lp_prior + lp_lik) / temperature + jacobian
            return lp_prior + lp_lik / temperature + jacobian

        return log_joint

    def log_joint(self, theta: Tensor, x: Inputs, y: Tensor, num_data: int | None = None) -> Tensor:
        """Log joint density of unconstrained ``theta`` ``(P, D)`` -> ``(P,)``, tempered.

        Equals the log joint of a Pyro trace of :meth:`model` at the constrained values plus the
        log-det Jacobian of the constraining transforms: the negative of Pyro's HMC potential
        energy at the same point. See the module docstring for the formula.
        """
        self._check_theta(theta)
        return self.log_joint_fn(x, y, num_data)(theta)

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
        values = self._walk(lambda name, d, shape: _to_shape(d, shape).sample())
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
        values = self._walk(lambda name, d, shape: _to_shape(d, shape).sample())
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

    def __repr__(self) -> str:
        return (
            f"BNN(net={type(self.net).__name__}, D={self.num_params}, prior={self.prior!r}, "
            f"likelihood={self.likelihood!r}, temperature={self.temperature}, "
            f"tempering={self.tempering!r}{self._deterministic_repr()})"
        )

    def _deterministic_repr(self) -> str:
        if not self.deterministic:
            return ""
        entries = [e.__name__ if isinstance(e, type) else repr(e) for e in self.deterministic]
        return f", deterministic=[{', '.join(entries)}]"


def _check_plain_torch(net: nn.Module) -> None:
    """Refuse Pyro modules: their ``PyroSample`` attributes are not parameters a BNN sees."""
    for name, module in net.named_modules():
        if isinstance(module, PyroModule):
            raise TypeError(
                f"net: module {name or '(the network)'!r} is a Pyro {type(module).__name__}; "
                "a BNN takes a plain torch.nn.Module and puts the priors on it itself: build "
                "the network from torch.nn layers and give the priors with prior= "
                "(bayesdl.priors)"
            )


def _check_batch_norms(net: nn.Module) -> None:
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


def _deterministic_parameters(
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
        matched = _matching_parameters(net, entry)
        if not matched:
            raise ValueError(
                f"deterministic: {entry!r} matches no parameter of the network; check the "
                "name pattern against net.named_parameters() or the module type"
            )
        kept |= matched
    return frozenset(kept)


def _matching_parameters(net: nn.Module, entry: type[nn.Module] | str) -> set[str]:
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


def _integer_hint(x: Inputs) -> str:
    """A hint for a network that failed on integer inputs, which are passed unconverted."""
    if any(not part.is_floating_point() for part in inputs.parts(x).values()):
        return (
            "; integer inputs are passed to the network as integers (for nn.Embedding): "
            "if they are numeric features, convert them to float"
        )
    return ""


def _template(param: Tensor) -> Tensor:
    """A parameter's value as a constant: ``.data``, which a TorchScript trace (Pyro's jit)
    holds as a constant, or under :func:`torch.compile`, which cannot trace ``.data``,
    ``detach()``."""
    return param.detach() if torch.compiler.is_compiling() else param.data


def _unvalidated() -> contextlib.AbstractContextManager:
    """Pyro's argument validation off; under :func:`torch.compile` the caller has done it."""
    if torch.compiler.is_compiling():
        return contextlib.nullcontext()
    return pyro.validation_enabled(False)


def _to_shape(d: dist.Distribution, shape: torch.Size) -> dist.Distribution:
    """Expand ``d`` to cover ``shape`` and make all of it the event (one site, one tensor)."""
    batch_ndim = len(shape) - len(d.event_shape)
    d = d.expand(shape[:batch_ndim]) if tuple(d.batch_shape) != tuple(shape[:batch_ndim]) else d
    return d.to_event(batch_ndim) if batch_ndim else d


def _is_exp(transform: Transform) -> bool:
    r"""Whether ``transform`` is :math:`u \mapsto e^u`: ``ExpTransform``, or the
    ``ExpTransform`` then ``AffineTransform(0, 1)`` that ``biject_to(greater_than(0))`` gives
    (the support of a scale site built by transforming a positive distribution)."""
    if type(transform) is ExpTransform:
        return True
    if type(transform) is not ComposeTransform or len(transform.parts) != 2:
        return False
    first, second = transform.parts
    if type(first) is not ExpTransform or type(second) is not AffineTransform:
        return False
    try:
        return float(second.loc) == 0.0 and float(second.scale) == 1.0
    except (TypeError, ValueError, RuntimeError):  # a non-scalar loc or scale
        return False


def _latent_spec(site: str, d: dist.Distribution, owner: str) -> SiteSpec:
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
