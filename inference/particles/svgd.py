r"""Stein variational gradient descent and repulsive ensembles on any BNN or log density.

``P`` particles are one tensor ``theta`` of shape ``(P, D)``; every forward and backward pass
runs for all of them at once (``torch.func.vmap`` inside :meth:`BNN.forward` and
:meth:`BNN.log_joint_fn`). Each step computes an update direction :math:`\phi` and hands
:math:`-\phi` to a ``torch.optim`` optimiser as the gradient (Adam by default).

Update directions (``s_j`` is the score :math:`\nabla \log p(\cdot_j \mid D)` of the tempered
posterior, with the minibatch log-likelihood scaled by ``num_data / B``; :math:`\gamma_t` an
optional annealing factor on the driving term):

* **w-SVGD** (Liu & Wang 2016), a weight-space kernel:
  :math:`\phi_i = \frac1P \sum_j [\gamma_t\, k(w_j, w_i)\, s_j + \nabla_{w_j} k(w_j, w_i)]`.
* **f-SVGD** (Wang et al. 2019; D'Angelo, Fortuin & Wenzel 2021), a function-space kernel on
  the particles' outputs :math:`f_i = f(X_M; w_i)` at a measurement set :math:`X_M` (the
  minibatch, plus optional extra inputs): the same update is formed in function space, with the
  function-space score :math:`\nabla_f \log p(y_B \mid f) \cdot \frac{N}{B} +
  \nabla_f \log p_{\mathrm{prior}}(f)`, and pulled back to the weights with one
  vector-Jacobian product, :math:`\phi_i = J_i^\top \phi_f(f_i)`,
  :math:`J_i = \partial f_i / \partial w_i`. The functional prior's score is estimated with
  SSGE (:func:`~.scores.ssge_score`) from the functions of fresh prior draws at
  :math:`X_M` (or given exactly, e.g. :class:`~.scores.GaussianProcessScore`).
  The weight prior enters only through this functional prior.
* **h-SVGD**, a :class:`~.stein_kernels.Hybrid` kernel: the weight-space score
  smoothed by the driving kernel, plus the repulsion of the composed function-space kernel
  :math:`k_f(f(w_j), f(w_i))`, differentiated in :math:`w_j` through particle *j*'s Jacobian:
  :math:`\phi_i = \frac1P \sum_j [\gamma_t\, k_w(w_j, w_i)\, s_j
  + J_j^\top \nabla_{f_j} k_f(f_j, f_i)]`. Not a KL gradient flow; see ``Hybrid``.
* **deep ensemble** (``kernel=None``): :math:`\phi_i = \gamma_t s_i`, independent MAP fits.
* **WGD / repulsive ensembles** (D'Angelo & Fortuin 2021), ``update="wgd-kde"|"wgd-sge"|
  "wgd-ssge"``: :math:`\phi_i = \gamma_t s_i - \widehat{\nabla \log \rho}(\cdot_i)`, the
  Wasserstein gradient flow of the KL divergence with the particles' density gradient estimated
  by a kernel density estimate, the Stein gradient estimator or SSGE
  (:mod:`~.scores`), in weight space or, with a function-space kernel, in
  function space (fWGD, pulled back through :math:`J_i`).
* **stochastic SVGD** (``stochastic=True``, Gallego & Insua 2018): Langevin noise with the
  kernel matrix as diffusion, :math:`\xi = \sqrt{2 / (P\,\mathrm{lr})}\,K^{1/2}\eta`,
  :math:`\eta \sim \mathcal N(0, I_{P \times D})`, added to :math:`\phi`; after a plain SGD
  step the particles move by :math:`\mathrm{lr}\,\phi + \sqrt{2\,\mathrm{lr}/P}\,K^{1/2}\eta`.
  The drift of SVGD is :math:`D\nabla\log\Pi + \nabla\cdot D` with :math:`D = K/P` and
  :math:`\Pi = \prod_i p(w_i \mid D)`, so with this noise :math:`\Pi` is invariant for any
  finite ``P`` (as ``lr -> 0``), provided the bandwidth is fixed: a median-heuristic bandwidth
  depends on all the particles, which the divergence term ignores. D'Angelo et al.'s code
  draws independent noise per pair,
  :math:`\sum_j \sqrt{2 k_{ij}/(P\,\mathrm{lr})}\,\eta_{ij}`, which has the right variance
  per particle but not the cross-particle correlation; here the matrix square root is used.
  With ``kernel=None`` the noise is :math:`\sqrt{2/\mathrm{lr}}\,\eta`: parallel SGLD.
  Exact for weight-space kernels; for function-space kernels the noise is drawn in function
  space and pulled back, as in D'Angelo et al., which is a heuristic.

References
----------
Liu & Wang, "Stein Variational Gradient Descent", NeurIPS 2016.
Wang, Ren, Zhu & Zhang, "Function Space Particle Optimization for Bayesian Neural Networks",
ICLR 2019.
Gallego & Insua, "Stochastic Gradient MCMC with Repulsive Forces", 2018.
D'Angelo, Fortuin & Wenzel, "On Stein Variational Neural Network Ensembles", 2021.
D'Angelo & Fortuin, "Repulsive Deep Ensembles are Bayesian", NeurIPS 2021.
D'Angelo & Fortuin, "Annealed Stein Variational Gradient Descent", AABI 2021.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from bayesdl import inputs
from bayesdl._checks import check_count, check_positive
from bayesdl._seeding import child_seeds
from bayesdl.likelihoods import Categorical
from bayesdl.models import BNN
from bayesdl.posterior import Posterior

from ..base import Backend, Callback, Driver, as_callbacks, finish
from ..checks import check_bnn, check_start
from ..compilation import compile_step, skip_guard_checks
from ..health import particle_problems, warn_all
from ..optimizers import OptimizerSpec, check_optimizer, check_optimizer_kwargs, resolve_optimizer
from .scores import kde_score, sge_score, ssge_score
from .stein_kernels import RBF, Hybrid, Kernel, KernelMatrix, pair_median, pairwise_sq_dists
from .targets import (
    BNNTarget,
    DensityTarget,
    MeasurementLike,
    PriorScore,
    pull_back,
    pull_back_pairs,
)

__all__ = ["SVGD", "annealing", "uniform_domain"]

_KERNEL_NAMES = ("weight", "function", "hybrid")
_UPDATES = ("svgd", "wgd-kde", "wgd-sge", "wgd-ssge")
_ANNEALS = ("linear", "hyper", "cyclic")

_INITS = ("net", "prior")
_FUNCTION_SPACES = ("logits", "probs")

KernelLike = str | Kernel | Hybrid | None
InitFn = Callable[[BNN, int, int], Tensor]


# ---------------------------------------------------------------------------- settings helpers
def _resolve_kernel(kernel: KernelLike) -> Kernel | Hybrid | None:
    if kernel is None or isinstance(kernel, (Kernel, Hybrid)):
        return kernel
    if kernel == "weight":
        return RBF("weight")
    if kernel == "function":
        return RBF("function")
    if kernel == "hybrid":
        return Hybrid(RBF("weight"), RBF("function"))
    raise ValueError(
        f"kernel: expected one of {_KERNEL_NAMES}, a Kernel, a Hybrid or None, got {kernel!r}"
    )


def _uses_functions(kernel: Kernel | Hybrid | None) -> bool:
    if isinstance(kernel, Hybrid):
        return "function" in (kernel.driving.space, kernel.repulsion.space)
    return isinstance(kernel, Kernel) and kernel.space == "function"


def annealing(
    anneal: str | Callable[[int], float] | None, anneal_steps: int
) -> Callable[[int], float]:
    r"""The annealing schedule :math:`\gamma_t` of SVGD's driving term, ``step -> gamma``.

    With ``T = anneal_steps`` and :math:`\gamma_t = 1` for ``t >= T`` (D'Angelo & Fortuin 2021,
    "Annealed SVGD": a small :math:`\gamma` early lets the repulsion spread the particles
    before the score pulls them to the modes):

    * ``None``: :math:`\gamma_t = 1`;
    * ``"linear"``: :math:`\gamma_t = t / T`;
    * ``"hyper"``: :math:`\gamma_t = \tanh\big((1.3\, t / T)^{10}\big)`;
    * ``"cyclic"``: five cycles, :math:`\gamma_t = \big((t \bmod c) / c\big)^{10}`,
      ``c = T / 5``;
    * a callable ``step -> gamma``, used as is.
    """
    if anneal is None:
        return lambda step: 1.0
    if callable(anneal):
        return anneal
    if anneal not in _ANNEALS:
        raise ValueError(f"anneal: expected one of {_ANNEALS}, a callable or None, got {anneal!r}")
    horizon = check_count("anneal_steps", anneal_steps)
    cycle = max(horizon / 5.0, 1.0)

    def schedule(step: int) -> float:
        if step >= horizon:
            return 1.0
        if anneal == "linear":
            return step / horizon
        if anneal == "hyper":
            return math.tanh((1.3 * step / horizon) ** 10)
        return ((step % cycle) / cycle) ** 10

    return schedule


def uniform_domain(
    x: Tensor, size: int, margin: float = 0.1
) -> Callable[[torch.Generator], Tensor]:
    """Measurement points drawn uniformly from the bounding box of the inputs ``x``.

    Returns a callable for ``SVGD(measurement=...)``: each call draws ``size`` points uniformly
    in the box ``[min - margin * range, max + margin * range]`` of every input feature. Points
    between and beyond the data are where function-space repulsion creates the in-between
    uncertainty of a 1-D regression.
    """
    if not isinstance(x, Tensor) or x.dim() < 2 or x.shape[0] == 0:
        raise ValueError(f"x: expected inputs of shape (N, ...), got {getattr(x, 'shape', x)}")
    size = check_count("size", size)
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or margin < 0:
        raise ValueError(f"margin: expected a number >= 0, got {margin!r}")
    low, high = x.min(0).values, x.max(0).values
    width = high - low
    low, high = low - margin * width, high + margin * width

    def draw(generator: torch.Generator) -> Tensor:
        u = torch.rand((size, *low.shape), generator=generator, dtype=x.dtype)
        return low + u.to(x.device) * (high - low)

    return draw


# ---------------------------------------------------------------------------- the backend
class SVGD(Backend):
    r"""Stein variational gradient descent with weight, function or hybrid kernels.

    Also runs deep ensembles (``kernel=None``), repulsive ensembles (WGD, ``update="wgd-*"``)
    and stochastic SVGD (``stochastic=True``). The update rules are in the module docstring.

    Parameters
    ----------
    particles
        Number of particles ``P`` (the draws of the result): at least 2 with a kernel; 1 is
        allowed for ``kernel=None`` (a single MAP fit).
    kernel
        ``"weight"`` (RBF on ``theta``), ``"function"`` (RBF on the outputs at the measurement
        set), ``"hybrid"`` (weight-space driving kernel, function-space repulsion), a
        :class:`~.stein_kernels.Kernel` (its ``space`` says where it acts), a
        :class:`~.stein_kernels.Hybrid`, or ``None`` (deep ensemble: no kernel).
    steps
        Number of updates.
    optimizer
        The optimiser fed ``-phi`` as the gradient (Adam by default): a ``torch.optim.Optimizer``
        subclass, or a name as :class:`~bayesdl.inference.VI` takes it, in any case
        (``"adam"``, ``"adamw"``, ``"sgd"``, ``"rmsprop"``, ``"adagrad"``;
        :mod:`bayesdl.inference.optimizers`). The name ``"sgd"`` means momentum 0.9, as for VI;
        the class ``torch.optim.SGD`` has PyTorch's defaults (no momentum).
    lr
        Learning rate.
    optimizer_kwargs
        Further keyword arguments of the optimiser (they override those a name implies).
    batch_size
        Minibatch size (``None``: full batch); the log-likelihood is scaled by
        ``num_data / batch_size``.
    stochastic
        Add the Langevin noise of stochastic SVGD; needs plain SGD (``optimizer=torch.optim.SGD``,
        or ``"sgd"`` with ``optimizer_kwargs={"momentum": 0}``; no momentum or weight decay),
        since an adaptive preconditioner breaks the noise calibration.
    measurement
        Function-space kernels only: extra measurement inputs besides the minibatch, either a
        tensor ``(n, ...)`` (a pool, of which ``measurement_size`` rows are drawn each step) or
        a callable ``generator -> (n, ...)`` (e.g. :func:`uniform_domain`). By default
        (``None``) the measurement set is the minibatch, on the data, as in D'Angelo et al.'s
        code. Away from the data the functional prior's score must hold there too, and the
        SSGE estimate does not: the particles' functions then spread far wider than the
        posterior's (Snelson with a 1-50-1 tanh net and 50 uniform points per step: predictive
        sd 1.8 outside the data with 20 prior draws, 1.9 with 200, against 0.52 measuring on
        the data and 0.22 for NUTS; ``tutorials/03_svgd.py``). Use extra points with an exact
        prior score (``prior_score=`` :class:`~.scores.GaussianProcessScore`,
        e.g. the GP a :class:`~bayesdl.priors.GPMatched` prior was fitted to); with SSGE a
        warning says so.
    measurement_size
        Rows drawn from a measurement pool per step (default: the whole pool).
    anneal
        Annealing of the driving term, see :func:`annealing`.
    anneal_steps
        Length of the annealing phase, a positive integer (default: half the steps).
    update
        ``"svgd"``, or a Wasserstein-gradient-descent (repulsive ensemble) update with a
        ``"wgd-kde"``, ``"wgd-sge"`` or ``"wgd-ssge"`` estimate of the particles' density
        gradient, in the kernel's space.
    function_space
        What a function-space kernel compares, for classifiers: ``"logits"`` (default; the
        network's outputs) or ``"probs"`` (the class probabilities, D'Angelo et al.'s
        ``logit_soft=0``). The function-space score, the SSGE prior score and the pull-back
        are all taken in the chosen space. Confident softmax outputs are nearly identical
        across particles, so the median-heuristic bandwidth on probabilities is tiny; logits
        keep the kernel informative; and f-SVGD's likelihood score in probability space,
        :math:`1/(p_y + \epsilon)`, is huge where a member is confidently wrong (on
        Fashion-MNIST it stopped every run until bounded by :math:`\epsilon`). The hybrid
        kernel uses the function space for its repulsion only, where probabilities are safe.
        Regression and Bernoulli outputs are compared as they are (``"logits"`` only).
    prior_score
        Function space: ``"ssge"`` (estimate the functional prior's score from the functions of
        fresh prior draws) or a callable ``(f (P, N, C), x (N, ...)) -> (P, N, C)`` giving it
        exactly, e.g. :class:`~.scores.GaussianProcessScore`.
    prior_draws
        Prior draws per step for SSGE (default: ``particles``, as D'Angelo et al., whose code
        draws as many prior functions as there are particles; at least 2).
    ssge_eta
        Ridge of the SSGE/SGE estimates (:func:`~.scores.ssge_score`): 0.01 as
        in D'Angelo et al. The SSGE kernel is an RBF with the median heuristic
        (:math:`\sigma` the median pairwise distance of the prior functions), as theirs.
    init
        Where the particles start when ``fit`` gets no ``init_theta``: ``"net"`` (default) a
        fresh copy of the network per particle, re-initialised by its modules'
        ``reset_parameters()`` from the particle's own seeded stream (PyTorch's Kaiming-uniform
        for ``Linear``); ``"prior"`` draws from the prior (:meth:`BNN.init_theta`); or a
        callable ``(bnn, particles, seed) -> theta (particles, D)``. ``"net"`` is the default
        because it is how deep ensembles and D'Angelo et al.'s reference code start: from
        prior draws (N(0, 1) weights) the members start with huge outputs and stay far apart
        and unconverged, which by itself moves a deep ensemble's OOD AUROC by several points
        while costing accuracy and NLL, confounding any comparison of kernels.
    ssge_threshold
        Eigenvalue truncation of the functional prior's SSGE estimate. D'Angelo et al. keep
        every eigenpair (``None``); the default keeps those making up 95% of the spectrum,
        because from 20 samples of a 2-D Gaussian the untruncated estimate of the score is off
        by 180% (relative error) against 50% truncated, and on Bayesian linear regression the
        truncated estimate halves the jitter of f-SVGD's predictive mean. (WGD's SSGE estimate
        of the particles' own density keeps every eigenpair: truncating it there biases the
        particles' spread.)
    compile
        Capture each step with :func:`torch.compile` (:mod:`~bayesdl.inference.compilation`):
        the weight-space score (through :func:`torch.func`, with the network's forward and
        backward passes), the kernel matrix and its repulsion, the update direction, the
        stochastic-SVGD noise term and, for ``Adam`` (``betas``, ``eps``, ``weight_decay``) and
        ``SGD`` without momentum (``weight_decay``), the optimiser's update itself, in one
        graph compiled once per run (full batch or minibatches alike); other optimisers step
        eagerly after the compiled direction. Compiled are ``update="svgd"`` with a
        weight-space :class:`~.stein_kernels.Kernel` and the deep ensemble
        (``kernel=None``). Function-space and hybrid kernels and the WGD updates run eagerly
        (the setting is then ignored; ``attrs["compile"]`` of the result says which ran).
        Compiling takes tens of seconds once per run and pays off on small ensembles, where
        eager PyTorch's per-operation overhead dominates a step (MLP 10-50-1, 20 particles, one
        CPU thread: about 0.5 ms per step against 6 ms eagerly; ``benchmarks/RESULTS.md``).
        Results match the eager path to rounding, and Ctrl-C, callbacks, the NaN guard and
        the seeds behave as there; as for NUTS, dynamo's guards are not re-checked during the
        run, so a callback must not change what the log density reads. If compilation fails
        (e.g. no C++ compiler), a warning says why and the step runs eagerly.

    Notes
    -----
    The string kernels use Liu & Wang's bandwidth ``med / log(P + 1)``, which suits neural
    networks; on low-dimensional unimodal targets pass ``RBF(bandwidth="median")``, which is
    more accurate there (see :func:`~.stein_kernels.median_bandwidth`).

    Function-space kernels update the network weights only: the prior's hyper-latents
    (hierarchical scales) are marginalised by the functional prior and keep their initial
    values, and a learned likelihood noise is not supported (use a weight or hybrid kernel).

    Examples
    --------
    >>> svgd = SVGD(particles=20, kernel="function", steps=2000)
    >>> post = svgd.fit(bnn, x, y, seed=0)  # doctest: +SKIP
    """

    name = "svgd"

    def __init__(
        self,
        particles: int = 20,
        kernel: KernelLike = "weight",
        steps: int = 1000,
        optimizer: OptimizerSpec = torch.optim.Adam,
        lr: float = 1e-2,
        optimizer_kwargs: Mapping[str, Any] | None = None,
        batch_size: int | None = None,
        stochastic: bool = False,
        measurement: MeasurementLike = None,
        measurement_size: int | None = None,
        anneal: str | Callable[[int], float] | None = None,
        anneal_steps: int | None = None,
        update: str = "svgd",
        prior_score: str | PriorScore = "ssge",
        prior_draws: int | None = None,
        ssge_eta: float = 0.01,
        ssge_threshold: float | None = 0.95,
        init: str | InitFn = "net",
        function_space: str = "logits",
        compile: bool = False,
    ) -> None:
        self.particles = check_count("particles", particles)
        if not isinstance(compile, bool):
            raise TypeError(f"compile: expected a bool, got {type(compile).__name__}")
        self.compile = compile
        if not (init in _INITS or callable(init)):
            raise ValueError(f"init: expected one of {_INITS} or a callable, got {init!r}")
        self.init = init
        self.kernel = _resolve_kernel(kernel)
        if self.particles < 2 and self.kernel is not None:
            raise ValueError(
                f"particles: SVGD needs at least 2 particles (its kernel compares them and its "
                f"bandwidth is their median distance), got {self.particles}; for a single "
                "network use kernel=None (a MAP fit) or VI"
            )
        if function_space not in _FUNCTION_SPACES:
            raise ValueError(
                f"function_space: expected one of {_FUNCTION_SPACES}, got {function_space!r}"
            )
        if function_space != "logits" and not _uses_functions(self.kernel):
            raise ValueError(
                "function_space: only function-space and hybrid kernels compare functions"
            )
        self.function_space = function_space
        self.steps = check_count("steps", steps)
        spec = check_optimizer(optimizer)
        self.lr = check_positive("lr", lr)
        # the class and its keyword arguments (a name's implied ones updated by the user's)
        self.optimizer, self.optimizer_kwargs = resolve_optimizer(
            spec, check_optimizer_kwargs(optimizer_kwargs)
        )
        self.batch_size = None if batch_size is None else check_count("batch_size", batch_size)
        if not isinstance(stochastic, bool):
            raise TypeError(f"stochastic: expected a bool, got {type(stochastic).__name__}")
        self.stochastic = stochastic
        if update not in _UPDATES:
            raise ValueError(f"update: must be one of {_UPDATES}, got {update!r}")
        self.update = update
        self._check_combination()
        self._check_measurement(measurement, measurement_size)
        self.measurement = measurement
        self.measurement_size = measurement_size
        self.anneal_steps = (
            max(self.steps // 2, 1)
            if anneal_steps is None
            else check_count("anneal_steps", anneal_steps)
        )
        self._schedule = annealing(anneal, self.anneal_steps)
        self.anneal = anneal
        if not (prior_score == "ssge" or callable(prior_score)):
            raise ValueError(f"prior_score: expected 'ssge' or a callable, got {prior_score!r}")
        self.prior_score = prior_score
        self.prior_draws = max(self.particles, 2) if prior_draws is None else prior_draws
        check_count("prior_draws", self.prior_draws, minimum=2)
        self.ssge_eta = check_positive("ssge_eta", ssge_eta)
        if ssge_threshold is not None:
            check_positive("ssge_threshold", ssge_threshold)
            if ssge_threshold > 1:
                raise ValueError(f"ssge_threshold: must lie in (0, 1], got {ssge_threshold}")
        self.ssge_threshold = ssge_threshold

    # -------------------------------------------------------------- checks
    def _check_combination(self) -> None:
        if self.update != "svgd":
            if self.kernel is None:
                raise ValueError(
                    f"update: {self.update!r} needs a kernel to estimate the density gradient; "
                    "kernel=None is a plain deep ensemble"
                )
            if isinstance(self.kernel, Hybrid):
                raise ValueError(
                    f"update: {self.update!r} is defined for a weight- or function-space kernel, "
                    "not a Hybrid"
                )
            if self.stochastic:
                raise ValueError(
                    "stochastic: Langevin noise applies to update='svgd' only (WGD already "
                    "accounts for the entropy through its density-gradient estimate)"
                )
        if self.stochastic:
            kwargs = self.optimizer_kwargs
            extra = [k for k in ("momentum", "weight_decay", "dampening") if kwargs.get(k, 0)]
            if self.optimizer is not torch.optim.SGD or extra or kwargs.get("nesterov"):
                raise ValueError(
                    "stochastic: the Langevin noise is calibrated for plain SGD; use "
                    "optimizer=torch.optim.SGD without momentum or weight decay (the name "
                    "'sgd' means momentum 0.9: add optimizer_kwargs={'momentum': 0})"
                )

    def _check_measurement(self, measurement: object, size: object) -> None:
        if measurement is not None:
            if not _uses_functions(self.kernel):
                raise ValueError(
                    "measurement: extra measurement inputs are only used by function-space kernels"
                )
            if not (isinstance(measurement, Tensor) or callable(measurement)):
                raise TypeError(
                    "measurement: expected a tensor of inputs, a callable generator -> inputs, "
                    f"or None, got {type(measurement).__name__}"
                )
        if size is not None:
            check_count("measurement_size", size)
            if not isinstance(measurement, Tensor):
                raise ValueError("measurement_size: only applies to a tensor of measurement inputs")

    # -------------------------------------------------------------- entry points
    def fit(
        self,
        bnn: BNN,
        x: Tensor,
        y: Tensor,
        *,
        seed: int | None = None,
        progress: bool = True,
        callbacks: Sequence[Callback] = (),
        init_theta: Tensor | None = None,
        num_data: int | None = None,
    ) -> Posterior:
        """Fit ``P`` particles to the posterior of ``bnn`` given ``(x, y)``.

        Parameters
        ----------
        bnn
            The model.
        x, y
            Training inputs and targets (checked before any work).
        seed
            Seed of the initial particles, the minibatches, the prior draws and the noise.
        progress
            Show a progress bar.
        callbacks
            Called after every step with a :class:`~bayesdl.inference.base.StepEvent`; its info
            holds ``theta`` (the current particles: read, do not modify), ``bandwidth``,
            ``gamma``, ``step_norm`` and, for weight-space scores, ``lp``.
        init_theta
            Initial particles ``(particles, D)``; default: as the backend's ``init`` says.
        num_data
            Size of the full data set if ``(x, y)`` is a subsample (scales the likelihood).

        Returns
        -------
        Posterior
            ``kind="particles"``: one chain of ``P`` draws, with ``sample_stats["lp"]`` (the
            tempered log joint of each final particle on the last minibatch); marked partial
            after Ctrl-C.
        """
        bnn = check_bnn(bnn)
        x, y = bnn.check_data(x, y)
        inputs.require_tensor(x, "SVGD")
        function_score = isinstance(self.kernel, Kernel) and self.kernel.space == "function"
        if function_score and bnn.likelihood.latent_sites():
            raise ValueError(
                "kernel: function-space kernels do not update the likelihood's latent sites "
                f"{sorted(bnn.likelihood.latent_sites())}; fix the noise scale or use a "
                "weight or hybrid kernel"
            )
        if self.function_space == "probs" and not isinstance(bnn.likelihood, Categorical):
            raise ValueError(
                "function_space: 'probs' compares class probabilities and needs a Categorical "
                f"likelihood, got {type(bnn.likelihood).__name__}"
            )
        if (
            self.measurement is not None
            and self.prior_score == "ssge"
            and isinstance(self.kernel, Kernel)
            and self.kernel.space == "function"
        ):
            warnings.warn(
                "measurement: points away from the data with an SSGE estimate of the "
                "functional prior's score, which does not hold there, so the particles' "
                "functions over-spread. Pass an exact prior score "
                "(prior_score=GaussianProcessScore(...)) or measure on the data "
                "(measurement=None)",
                UserWarning,
                stacklevel=2,
            )
        if num_data is None:
            num_data = x.shape[0]
        elif check_count("num_data", num_data) < x.shape[0]:
            raise ValueError(f"num_data: {num_data} is smaller than the {x.shape[0]} examples")
        measurement = _checked_measurement(bnn, self.measurement)
        # Independent streams: initial particles, minibatches, measurement points, prior draws
        # and Langevin noise.
        seeds = child_seeds(seed, 5)
        theta = self._initial(init_theta, bnn.num_params, bnn.dtype, bnn.device)
        if theta is None:
            theta = self._draw_initial(bnn, seeds[0])
        check_start(bnn, theta, x, y)
        target = self._target(bnn, x, y, num_data, measurement, seeds[1:4])
        return self._run(target, theta, bnn, seeds[4], progress, callbacks)

    def _target(
        self,
        bnn: BNN,
        x: Tensor,
        y: Tensor,
        num_data: int,
        measurement: MeasurementLike,
        seeds: Sequence[int],
    ) -> BNNTarget:
        """The BNN and its data (already checked by :meth:`fit`), with this backend's settings."""
        return BNNTarget(
            bnn,
            x,
            y,
            num_data=num_data,
            batch_size=self.batch_size,
            measurement=measurement,
            measurement_size=self.measurement_size,
            prior_score=self.prior_score,
            prior_draws=self.prior_draws,
            ssge_eta=self.ssge_eta,
            ssge_threshold=self.ssge_threshold,
            function_space=self.function_space,
            seeds=seeds,
        )

    def sample(
        self,
        log_density: Callable[[Tensor], Tensor],
        init_theta: Tensor,
        *,
        seed: int | None = None,
        progress: bool = True,
        callbacks: Sequence[Callback] = (),
    ) -> Posterior:
        """Run the particles on any differentiable log density ``(P, D) -> (P,)``.

        Weight-space kernels (or ``kernel=None``) only: there are no functions to compare.

        Parameters
        ----------
        log_density
            Unnormalised log density of unconstrained ``theta``, vectorised over rows.
        init_theta
            Initial particles ``(particles, D)``.
        seed
            Seed of the noise of stochastic SVGD (the rest is deterministic).
        progress, callbacks
            As for :meth:`fit`.

        Returns
        -------
        Posterior
            No BNN attached (no ``predict``); ``theta`` of shape ``(1, particles, D)``.
        """
        if not callable(log_density):
            raise TypeError(f"log_density: expected a callable, got {type(log_density).__name__}")
        if _uses_functions(self.kernel):
            raise ValueError(
                "kernel: function-space kernels need a BNN (its outputs); use fit(bnn, x, y) or "
                "a weight-space kernel"
            )
        if self.batch_size is not None:
            raise ValueError("batch_size: sample() runs on a log density, it has no data")
        if not isinstance(init_theta, Tensor) or init_theta.dim() != 2:
            raise ValueError(
                f"init_theta: expected a tensor of shape ({self.particles}, D), got "
                f"{getattr(init_theta, 'shape', type(init_theta).__name__)}"
            )
        if not init_theta.is_floating_point():
            raise TypeError(f"init_theta: expected a floating tensor, got {init_theta.dtype}")
        theta = self._initial(init_theta, init_theta.shape[1], init_theta.dtype, init_theta.device)
        seeds = child_seeds(seed, 5)
        return self._run(DensityTarget(log_density), theta, None, seeds[4], progress, callbacks)

    def _draw_initial(self, bnn: BNN, seed: int) -> Tensor:
        """The starting particles the ``init`` setting asks for, checked."""
        if not callable(self.init):
            return bnn.init_theta(self.particles, seed, init=self.init)
        theta = self.init(bnn, self.particles, seed)
        if not isinstance(theta, Tensor):
            raise TypeError(f"init: the callable must return a tensor, got {type(theta).__name__}")
        try:
            checked = self._initial(theta, bnn.num_params, bnn.dtype, bnn.device)
        except ValueError as err:
            raise ValueError(f"init: the callable's particles are wrong: {err}") from err
        assert checked is not None
        return checked

    def _initial(
        self, init_theta: Tensor | None, dim: int, dtype: torch.dtype, device: torch.device
    ) -> Tensor | None:
        if init_theta is None:
            return None
        if not isinstance(init_theta, Tensor) or tuple(init_theta.shape) != (self.particles, dim):
            raise ValueError(
                f"init_theta: expected a tensor of shape ({self.particles}, {dim}), got "
                f"{getattr(init_theta, 'shape', type(init_theta).__name__)}"
            )
        if not bool(torch.isfinite(init_theta).all()):
            raise ValueError("init_theta: contains NaN or infinite values")
        return init_theta.detach().to(dtype=dtype, device=device).clone()

    # -------------------------------------------------------------- the loop
    def _run(
        self,
        target: DensityTarget | BNNTarget,
        theta: Tensor,
        bnn: BNN | None,
        noise_seed: int,
        progress: bool,
        callbacks: Sequence[Callback],
    ) -> Posterior:
        callbacks = as_callbacks(callbacks)
        theta = theta.detach().clone()
        start = theta.clone()
        try:
            optimizer = self.optimizer([theta], lr=self.lr, **self.optimizer_kwargs)
        except (TypeError, ValueError) as err:
            raise TypeError(
                f"optimizer_kwargs: {self.optimizer.__name__} rejected them: {err}"
            ) from err
        noise = torch.Generator(device=theta.device).manual_seed(noise_seed)
        last_batch: list[Any] = [None]
        compiled = self._compiled_step(target, theta, optimizer) if self.compile else None

        def step(stage: str, i: int) -> dict[str, Any]:
            batch = target.next_batch()
            last_batch[0] = batch
            gamma = float(self._schedule(i))
            if compiled is not None:
                phi, info, finite, step_norm = compiled(theta, batch, gamma, noise)
            else:
                phi, info = self._direction(target, theta, batch, gamma, noise)
                finite = bool(torch.isfinite(phi).all())
                if finite:
                    theta.grad = -phi
                    optimizer.step()
                    finite = bool(torch.isfinite(theta).all())
                step_norm = float(phi.norm() / math.sqrt(theta.shape[0])) if finite else math.nan
            postfix = {"h": f"{info['bandwidth']:.3g}", "|phi|": f"{step_norm:.3g}"}
            if "lp" in info:
                postfix["lp"] = f"{float(info['lp'].mean()):.4g}"
            return {
                **info,
                "theta": theta,
                "gamma": gamma,
                "step_norm": step_norm,
                "finite": finite,
                "postfix": postfix,
            }

        previous = theta.detach().clone()

        def guarded(stage: str, i: int) -> dict[str, Any]:
            previous.copy_(theta.detach())
            info = step(stage, i)
            if not info["finite"]:
                with torch.no_grad():
                    theta.copy_(previous)
            return info

        kernel_name = "ensemble" if self.kernel is None else repr(self.kernel)
        driver = Driver(
            [("svgd", self.steps)],
            progress=progress,
            callbacks=callbacks,
            desc=f"SVGD ({self.update}, {self.particles} particles)",
        )
        guards = skip_guard_checks() if compiled is not None else contextlib.nullcontext()
        with torch.no_grad(), guards:
            outcome = driver.run(guarded)
        final = theta.detach()
        batch = last_batch[0] if last_batch[0] is not None else target.next_batch()
        lp = target.log_joint(final, batch)
        if outcome.reason != "non-finite":  # that raises NonFiniteError below
            warn_all(particle_problems(start, final, lp, self.lr), stacklevel=4)
        posterior = Posterior(
            final[None],
            bnn,
            {"lp": lp.detach()[None]},
            kind="particles",
            partial=outcome.partial,
            attrs={
                "inference": "svgd",
                "kernel": kernel_name,
                "update": self.update,
                "particles": self.particles,
                "steps": self.steps,
                "optimizer": self.optimizer.__name__,
                "lr": self.lr,
                "batch_size": self.batch_size or 0,
                "stochastic": int(self.stochastic),
                "anneal": str(self.anneal),
                "init": self.init if isinstance(self.init, str) else "callable",
                "function_space": self.function_space,
                "compile": int(compiled is not None),
                "stopped": outcome.reason or "",
            },
        )
        return finish(posterior, outcome)

    def _compiled_step(
        self, target: DensityTarget | BNNTarget, theta: Tensor, optimizer: torch.optim.Optimizer
    ) -> _CompiledStep | None:
        """The compiled step for this setting, or ``None`` where it runs eagerly."""
        kernel = self.kernel
        if self.update != "svgd" or not (
            kernel is None or (isinstance(kernel, Kernel) and kernel.space == "weight")
        ):
            return None
        return _CompiledStep(self, target, theta, optimizer)

    # -------------------------------------------------------------- one update direction
    def _direction(
        self,
        target: DensityTarget | BNNTarget,
        theta: Tensor,
        batch: Any,
        gamma: float,
        noise: torch.Generator,
    ) -> tuple[Tensor, dict[str, Any]]:
        """The update ``phi`` ``(P, D)`` for the current particles, and step statistics."""
        kernel = self.kernel
        if isinstance(kernel, Hybrid):
            return self._hybrid(target, theta, batch, gamma, noise)
        if isinstance(kernel, Kernel) and kernel.space == "function":
            return self._function_space(target, theta, batch, gamma, noise)
        score, lp = target.weight_score(theta, batch)
        info: dict[str, Any] = {"lp": lp, "bandwidth": math.nan}
        if kernel is None:
            phi = gamma * score
            if self.stochastic:
                phi = phi + math.sqrt(2.0 / self.lr) * _randn_like(theta, noise)
            return phi, info
        phi, info["bandwidth"] = self._combine(kernel, theta, score, gamma, noise)
        return phi, info

    def _combine(
        self, kernel: Kernel, x: Tensor, score: Tensor, gamma: float, noise: torch.Generator
    ) -> tuple[Tensor, float]:
        """SVGD or WGD direction in the space of ``x`` ``(P, M)`` given the score there."""
        p = x.shape[0]
        if self.update == "svgd":
            km = kernel(x)
            phi = (gamma * (km.value @ score) + km.repulsion) / p
            if self.stochastic:
                phi = phi + self._langevin(km, x, noise)
            return phi, km.bandwidth
        if self.update == "wgd-kde":
            density_score, h = kde_score(x, kernel=kernel), math.nan
        elif self.update == "wgd-sge":
            density_score, h = sge_score(x, kernel=kernel, eta=self.ssge_eta), math.nan
        else:
            density_score = ssge_score(x, x, kernel=kernel, eta=self.ssge_eta)
            h = math.nan
        return gamma * score - density_score, h

    def _langevin(self, km: KernelMatrix, x: Tensor, noise: torch.Generator) -> Tensor:
        p = x.shape[0]
        eta = _randn_like(x, noise)
        return math.sqrt(2.0 / (p * self.lr)) * (_matrix_sqrt(km.value) @ eta)

    def _function_space(
        self,
        target: DensityTarget | BNNTarget,
        theta: Tensor,
        batch: Any,
        gamma: float,
        noise: torch.Generator,
    ) -> tuple[Tensor, dict[str, Any]]:
        assert isinstance(target, BNNTarget) and isinstance(self.kernel, Kernel)
        fun = target.functions(theta, batch)
        score = target.function_score(fun, batch)
        phi_f, h = self._combine(self.kernel, fun.flat, score, gamma, noise)
        with torch.enable_grad():
            phi = pull_back(fun, phi_f)
        return phi, {"bandwidth": h}

    def _hybrid(
        self,
        target: DensityTarget | BNNTarget,
        theta: Tensor,
        batch: Any,
        gamma: float,
        noise: torch.Generator,
    ) -> tuple[Tensor, dict[str, Any]]:
        assert isinstance(self.kernel, Hybrid)
        driving, repulsive = self.kernel.driving, self.kernel.repulsion
        score, lp = target.weight_score(theta, batch)
        fun = None
        if _uses_functions(self.kernel):
            assert isinstance(target, BNNTarget)
            fun = target.functions(theta, batch)

        def space_of(kernel: Kernel) -> Tensor:
            return fun.flat if kernel.space == "function" else theta  # type: ignore[union-attr]

        kd = driving(space_of(driving))
        kr = kd if repulsive is driving else repulsive(space_of(repulsive))
        p = theta.shape[0]
        if repulsive.space == "function":
            # sum_j grad_{w_j} k_f(f(w_j), f(w_i)) = sum_j J_j^T grad_{f_j} k_f(f_j, f_i)
            grads = repulsive.pair_gradients(fun.flat, kr.bandwidth)  # type: ignore[union-attr]
            with torch.enable_grad():
                repulsion = pull_back_pairs(fun, grads)  # type: ignore[arg-type]
        else:
            repulsion = kr.repulsion
        phi = (gamma * (kd.value @ score) + repulsion) / p
        if self.stochastic:
            phi = phi + self._langevin(kd, theta, noise)
        return phi, {"lp": lp, "bandwidth": kr.bandwidth}


def _checked_measurement(bnn: BNN, measurement: MeasurementLike) -> MeasurementLike:
    """A tensor of measurement inputs checked as the BNN's inputs (errors name
    ``measurement``); a callable or ``None`` as it is."""
    if not isinstance(measurement, Tensor):
        return measurement
    try:
        return bnn.check_inputs(measurement)
    except (TypeError, ValueError) as err:
        message = str(err).removeprefix("x: ")
        raise type(err)(f"measurement: {message}") from err


def _matrix_sqrt(k: Tensor) -> Tensor:
    """Symmetric square root of a PSD matrix (eigenvalues clamped at 0)."""
    values, vectors = torch.linalg.eigh(k)
    return (vectors * values.clamp_min(0.0).sqrt()) @ vectors.T


def _randn_like(x: Tensor, generator: torch.Generator) -> Tensor:
    return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)


# ---------------------------------------------------------------------------- compile=True
#: Keyword arguments of Adam and SGD that the compiled step's own update reproduces.
_GRAPH_OPTIMIZERS: dict[type, tuple[str, ...]] = {
    torch.optim.Adam: ("betas", "eps", "weight_decay"),
    torch.optim.SGD: ("weight_decay",),
}
#: Keyword arguments that, at these values, change nothing of the update above.
_NEUTRAL_KWARGS: dict[type, dict[str, Any]] = {
    torch.optim.Adam: {"amsgrad": False, "maximize": False, "foreach": None, "fused": None},
    torch.optim.SGD: {"momentum": 0, "dampening": 0, "nesterov": False, "maximize": False},
}


def _median_bandwidth_tensor(sq_dists: Tensor, rule: str) -> Tensor:
    """:func:`~.stein_kernels.median_bandwidth` without a host sync (compilable)."""
    num = sq_dists.shape[0]
    if num < 2:
        return sq_dists.new_tensor(1.0)
    med = pair_median(sq_dists)
    h = 2.0 * med if rule == "median" else med / math.log(num + 1)
    return torch.where(med > 0, h, torch.ones_like(h))


def _kernel_matrix(kernel: Kernel, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``kernel(x)``'s value, repulsion and bandwidth, the bandwidth kept a tensor.

    The same arithmetic as :meth:`Kernel.__call__`, written so that :func:`torch.compile`
    captures it whole: the median heuristic without ``bool``/``float`` on tensors, and the
    profile's derivative, where a kernel takes it from autograd, through :func:`torch.func`.
    A kernel that overrides the bandwidth hook keeps its own (which may break the graph).
    """
    z = kernel._embed(x)
    sq = pairwise_sq_dists(z)
    if type(kernel).bandwidth is Kernel.bandwidth:
        if isinstance(kernel.fixed_bandwidth, str):
            h = _median_bandwidth_tensor(sq, kernel.fixed_bandwidth)
        else:
            h = sq.new_tensor(kernel.fixed_bandwidth)
        h = h * kernel.bandwidth_factor
    else:
        h = kernel.bandwidth(sq)
    h = h.detach()
    r = sq / h
    value = kernel.profile(r)
    if type(kernel).profile_derivative is Kernel.profile_derivative:
        slope = torch.func.grad(lambda t: kernel.profile(t).sum())(r)
    else:
        slope = kernel.profile_derivative(r)
    repulsion = (2.0 / h) * (slope @ z - slope.sum(1, keepdim=True) * z)
    if kernel._factor is not None:
        repulsion = repulsion @ kernel._factor.to(dtype=x.dtype, device=x.device).T
    return value, repulsion, h


class _CompiledStep:
    """One SVGD step (score, kernel, direction and optimiser update) in a compiled graph.

    Called as ``step(theta, batch, gamma, noise) -> (phi, info, finite, step_norm)``, it updates
    ``theta`` in place like the eager loop of :meth:`SVGD._run`: no update (and no change of the
    optimiser's state) when ``phi`` is not finite. Every input of the graph is a tensor of fixed
    shape (the annealing factor and Adam's bias corrections too), so it compiles once per run.
    The Langevin noise is drawn from the run's generator outside the graph, in the same order.
    Adam's bias corrections are computed in Python floats, as ``torch.optim.Adam`` does.
    """

    def __init__(
        self,
        svgd: SVGD,
        target: DensityTarget | BNNTarget,
        theta: Tensor,
        optimizer: torch.optim.Optimizer,
    ) -> None:
        self.optimizer = optimizer
        self.stochastic = svgd.stochastic
        self.dtype, self.device = theta.dtype, theta.device
        self.particles = theta.shape[0]
        kwargs = svgd.optimizer_kwargs
        allowed = _GRAPH_OPTIMIZERS.get(svgd.optimizer)
        neutral = _NEUTRAL_KWARGS.get(svgd.optimizer, {})
        kwargs = {k: v for k, v in kwargs.items() if k not in neutral or neutral[k] != v}
        in_graph = allowed is not None and type(optimizer) is svgd.optimizer
        in_graph = in_graph and not set(kwargs) - set(allowed or ())
        self.kind = svgd.optimizer.__name__.lower() if in_graph else "eager"
        group = optimizer.param_groups[0]
        self.lr = float(group["lr"])
        self.weight_decay = float(group.get("weight_decay", 0.0))
        self.betas = tuple(float(b) for b in group.get("betas", (0.9, 0.999)))
        self.eps = float(group.get("eps", 1e-8))
        self.count = 0  # Adam's step count
        if self.kind == "adam":
            self.exp_avg = torch.zeros_like(theta)
            self.exp_avg_sq = torch.zeros_like(theta)
        self.noise_scale = (
            math.sqrt(2.0 / svgd.lr)
            if svgd.kernel is None
            else math.sqrt(2.0 / (self.particles * svgd.lr))
        )
        self.has_kernel = svgd.kernel is not None
        self.step = compile_step(self._graph(svgd.kernel, target))

    def _graph(
        self, kernel: Kernel | None, target: DensityTarget | BNNTarget
    ) -> Callable[..., Any]:
        """The function to compile: ``(theta, state..., data, scalars, eta) -> results``."""
        if isinstance(target, BNNTarget):
            bnn, num_data = target.bnn, target.num_data

            def log_joint(theta: Tensor, xb: Tensor, yb: Tensor) -> Tensor:
                return bnn.log_joint_fn(xb, yb, num_data, validate=False)(theta)

        else:
            log_density = target.log_density

            def log_joint(theta: Tensor, xb: Tensor, yb: Tensor) -> Tensor:
                return log_density(theta)

        def summed(theta: Tensor, xb: Tensor, yb: Tensor) -> tuple[Tensor, Tensor]:
            lp = log_joint(theta, xb, yb)
            return lp.sum(), lp

        score_and_lp = torch.func.grad_and_value(summed, has_aux=True)
        kind, stochastic, noise_scale = self.kind, self.stochastic, self.noise_scale
        lr, weight_decay, eps = self.lr, self.weight_decay, self.eps
        beta1, beta2 = self.betas
        particles = self.particles

        def svgd_step(
            theta: Tensor,
            exp_avg: Tensor | None,
            exp_avg_sq: Tensor | None,
            xb: Tensor | None,
            yb: Tensor | None,
            gamma: Tensor,
            step_size: Tensor,
            bias_correction2_sqrt: Tensor,
            eta: Tensor | None,
        ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
            score, (_, lp) = score_and_lp(theta, xb, yb)
            if kernel is None:
                phi = gamma * score
                h = torch.full((), math.nan, dtype=theta.dtype, device=theta.device)
                if stochastic:
                    phi = phi + noise_scale * eta
            else:
                value, repulsion, h = _kernel_matrix(kernel, theta)
                phi = (gamma * (value @ score) + repulsion) / particles
                if stochastic:
                    phi = phi + noise_scale * (_matrix_sqrt(value) @ eta)
            ok = torch.isfinite(phi).all()
            if kind != "eager":
                grad = -phi
                if weight_decay != 0:
                    grad = grad.add(theta, alpha=weight_decay)
                if kind == "adam":
                    new_avg = exp_avg.lerp(grad, 1 - beta1)
                    new_avg_sq = (exp_avg_sq * beta2).addcmul(grad, grad, value=1 - beta2)
                    denom = (new_avg_sq.sqrt() / bias_correction2_sqrt).add(eps)
                    new_theta = theta - step_size * (new_avg / denom)
                    exp_avg.copy_(torch.where(ok, new_avg, exp_avg))
                    exp_avg_sq.copy_(torch.where(ok, new_avg_sq, exp_avg_sq))
                else:
                    new_theta = theta.add(grad, alpha=-lr)
                theta.copy_(torch.where(ok, new_theta, theta))
                ok_theta = ok & torch.isfinite(theta).all()
            else:
                ok_theta = ok
            step_norm = phi.norm() / math.sqrt(particles)
            return phi, lp, h, ok, ok_theta, step_norm

        return svgd_step

    def __call__(
        self, theta: Tensor, batch: Any, gamma: float, noise: torch.Generator
    ) -> tuple[Tensor, dict[str, Any], bool, float]:
        xb, yb = (None, None) if batch is None else batch
        eta = _randn_like(theta, noise) if self.stochastic else None
        scalars = {"dtype": torch.float64, "device": self.device}
        if self.kind == "adam":
            step = self.count + 1
            beta1, beta2 = self.betas
            step_size = self.lr / (1 - beta1**step)
            correction = (1 - beta2**step) ** 0.5
            state = (self.exp_avg, self.exp_avg_sq)
        else:
            step_size, correction, state = 0.0, 1.0, (None, None)
        phi, lp, h, ok, ok_theta, norm = self.step(
            theta,
            *state,
            xb,
            yb,
            torch.tensor(gamma, dtype=theta.dtype, device=self.device),
            torch.tensor(step_size, **scalars),
            torch.tensor(correction, **scalars),
            eta,
        )
        finite = bool(ok)
        if finite:
            self.count += 1
            if self.kind == "eager":
                theta.grad = -phi
                self.optimizer.step()
                finite = bool(torch.isfinite(theta).all())
            else:
                finite = bool(ok_theta)
        info: dict[str, Any] = {"bandwidth": float(h) if self.has_kernel else math.nan, "lp": lp}
        return phi, info, finite, float(norm) if finite else math.nan
