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

This module holds the declaration, its data checks and the two views. Which parameters become
sites and with which priors is :mod:`bayesdl.models.selection`; the layout of ``theta``, the
traversal of the sites with their priors and prior draws are :mod:`bayesdl.models.sites` (the
base class :class:`~bayesdl.models.sites.ParameterSites`); the fused prior terms of the inner
loop are :mod:`bayesdl.models.fused_prior`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import Tensor, nn

from bayesdl import inputs
from bayesdl._checks import as_tensor, check_count, check_finite, check_positive
from bayesdl.functional import batched_forward, call_with_parameters
from bayesdl.inputs import Inputs
from bayesdl.likelihoods import Likelihood
from bayesdl.priors.base import PriorLike, select

from .selection import check_batch_norms, check_plain_torch, deterministic_parameters
from .sites import ParameterSites, to_shape

__all__ = ["BNN"]

_TEMPERINGS = ("posterior", "likelihood")


class BNN(ParameterSites):
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
        check_plain_torch(net)
        check_batch_norms(net)
        kept = deterministic_parameters(net, deterministic)
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
        self._declare_sites(kept)
        self.deterministic = tuple(deterministic)
        net.eval()
        self._out_features: dict[tuple, int] = {}

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
            values = self._walk(lambda name, d, shape: pyro.sample(name, to_shape(d, shape)))
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
        on ``theta`` (:class:`~bayesdl.models.fused_prior.GaussianBlock`), and so are
        parameters with a per-tensor inverse-Gamma scale and their scale sites
        (:class:`~bayesdl.models.fused_prior.ScaleBlock`); every other site by its distribution.
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
        if not (torch.compiler.is_compiling() or self._priors_built()):
            self._build_prior_caches()
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

    def _build_prior_caches(self) -> None:
        """Build the prior's cached terms (:meth:`_gaussian_block`, :meth:`_fixed_prior`, ...)
        now, by scoring a zero ``theta``: built on the first call of a compiled log joint,
        they would break its graph, and the rest of it would run eagerly."""
        theta = torch.zeros(1, self.num_params, dtype=self.dtype, device=self.device)
        with _unvalidated():
            self._log_prior(theta, self.unravel(theta))
            self._log_abs_det_jacobian(theta)

    def log_joint(self, theta: Tensor, x: Inputs, y: Tensor, num_data: int | None = None) -> Tensor:
        """Log joint density of unconstrained ``theta`` ``(P, D)`` -> ``(P,)``, tempered.

        Equals the log joint of a Pyro trace of :meth:`model` at the constrained values plus the
        log-det Jacobian of the constraining transforms: the negative of Pyro's HMC potential
        energy at the same point. See the module docstring for the formula.
        """
        self._check_theta(theta)
        return self.log_joint_fn(x, y, num_data)(theta)

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


def _integer_hint(x: Inputs) -> str:
    """A hint for a network that failed on integer inputs, which are passed unconverted."""
    if any(not part.is_floating_point() for part in inputs.parts(x).values()):
        return (
            "; integer inputs are passed to the network as integers (for nn.Embedding): "
            "if they are numeric features, convert them to float"
        )
    return ""


def _unvalidated() -> contextlib.AbstractContextManager:
    """Pyro's argument validation off; under :func:`torch.compile` the caller has done it."""
    if torch.compiler.is_compiling():
        return contextlib.nullcontext()
    return pyro.validation_enabled(False)
