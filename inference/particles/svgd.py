r"""Stein variational gradient descent and repulsive ensembles on any BNN or log density.

``P`` particles are one tensor ``theta`` of shape ``(P, D)``; every forward and backward pass
runs for all of them at once (``torch.func.vmap`` inside :meth:`BNN.forward` and
:meth:`BNN.log_joint_fn`). Each step computes an update direction :math:`\phi` and hands
:math:`-\phi` to a ``torch.optim`` optimiser as the gradient (Adam by default).

This module is the backend: its settings, ``fit`` on a BNN and ``sample`` on a log density,
both run by :func:`~bayesdl.inference.driver.run` (checkpoints and bit-exact resume). The
parts: the update rules and their mathematics (w-SVGD, f-SVGD, h-SVGD, deep ensembles, WGD,
stochastic SVGD) in :mod:`.directions`; the run's state and steps in :mod:`.algorithm`; the
compiled step in :mod:`.compiled`; the annealing schedule in :mod:`.annealing`; the
measurement set in :mod:`.measurement`; the starting particles in :mod:`.initial`; the
settings' checks in :mod:`.settings`; scores and kernels in :mod:`.targets`, :mod:`.scores`
and :mod:`.stein_kernels`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from bayesdl._checks import check_count, check_positive
from bayesdl._seeding import child_seeds
from bayesdl.models import BNN
from bayesdl.posterior import Posterior

from ..base import Backend, Callback, finish
from ..driver import RunControl, RunResult, Seeds, identity_of, prepare, run
from ..health import particle_problems, warn_all
from ..loaders import LoaderBatches
from ..optimizers import OptimizerSpec, check_optimizer, check_optimizer_kwargs, resolve_optimizer
from .algorithm import SVGDRun, bnn_target
from .annealing import annealing
from .blocks import ParticleBlocks
from .initial import INITS, InitFn, check_density_particles, check_particles, draw_initial
from .measurement import check_measurement, checked_measurement, uniform_domain, warn_off_data
from .settings import (
    FUNCTION_SPACES,
    UPDATES,
    KernelLike,
    check_combination,
    check_density_run,
    check_model,
    check_prior_score,
    resolve_kernel,
    stable_repr,
    uses_functions,
)
from .targets import DensityTarget, MeasurementLike, PriorScore

__all__ = ["SVGD", "annealing", "uniform_domain"]

#: Streams of ``child_seeds(seed, 5)``: initial particles, minibatches, measurement points,
#: prior draws, Langevin noise.
_INIT, _BATCHES, _MEASUREMENT, _PRIOR, _NOISE = range(5)


class SVGD(Backend):
    r"""Stein variational gradient descent with weight, function or hybrid kernels.

    Also runs deep ensembles (``kernel=None``), repulsive ensembles (WGD, ``update="wgd-*"``)
    and stochastic SVGD (``stochastic=True``). The update rules are in :mod:`.directions`.

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
        if not (init in INITS or callable(init)):
            raise ValueError(f"init: expected one of {INITS} or a callable, got {init!r}")
        self.init = init
        self.kernel = resolve_kernel(kernel)
        if self.particles < 2 and self.kernel is not None:
            raise ValueError(
                f"particles: SVGD needs at least 2 particles (its kernel compares them and its "
                f"bandwidth is their median distance), got {self.particles}; for a single "
                "network use kernel=None (a MAP fit) or VI"
            )
        if function_space not in FUNCTION_SPACES:
            raise ValueError(
                f"function_space: expected one of {FUNCTION_SPACES}, got {function_space!r}"
            )
        if function_space != "logits" and not uses_functions(self.kernel):
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
        if update not in UPDATES:
            raise ValueError(f"update: must be one of {UPDATES}, got {update!r}")
        self.update = update
        check_combination(self.kernel, update, stochastic, self.optimizer, self.optimizer_kwargs)
        check_measurement(self.kernel, measurement, measurement_size)
        self.measurement = measurement
        self.measurement_size = measurement_size
        self.anneal_steps = (
            max(self.steps // 2, 1)
            if anneal_steps is None
            else check_count("anneal_steps", anneal_steps)
        )
        annealing(anneal, self.anneal_steps)  # checks anneal
        self.anneal = anneal
        check_prior_score(prior_score, prior_draws, ssge_eta, ssge_threshold)
        self.prior_score = prior_score
        self.prior_draws = max(self.particles, 2) if prior_draws is None else prior_draws
        self.ssge_eta = float(ssge_eta)
        self.ssge_threshold = ssge_threshold

    def __repr__(self) -> str:
        """The settings, with callables by name (no memory address), so that a checkpoint's
        record of the settings matches in another process."""
        args = ", ".join(
            f"{k}={stable_repr(v)}" for k, v in vars(self).items() if not k.startswith("_")
        )
        return f"SVGD({args})"

    # -------------------------------------------------------------- entry points
    def fit(
        self,
        bnn: BNN,
        x: Tensor | DataLoader,
        y: Tensor | None = None,
        *,
        seed: int | None = None,
        progress: bool = True,
        callbacks: Callback | Sequence[Callback] = (),
        init_theta: Tensor | None = None,
        num_data: int | None = None,
        checkpoint: str | os.PathLike | None = None,
        checkpoint_every: int | None = None,
        resume: str | os.PathLike | None = None,
        distributed: bool | None = None,
    ) -> Posterior:
        """Fit ``P`` particles to the posterior of ``bnn`` given ``(x, y)``.

        Parameters
        ----------
        bnn
            The model.
        x, y
            Training inputs and targets (checked before any work); or ``x`` a
            ``torch.utils.data.DataLoader`` of ``(x, y)`` batches (or an ``IterableDataset``,
            batched by ``batch_size``) and ``y=None``, for data that do not fit in memory
            (:mod:`bayesdl.inference.loaders`): each step takes the loader's next batch, whose
            size the loader sets (leave ``batch_size=None`` then; a shuffling loader is
            shuffled from ``seed``), and each batch is checked as it comes.
        seed
            Seed of the initial particles, the minibatches, the prior draws and the noise.
        progress
            Show a progress bar.
        callbacks
            Called after every step with a :class:`~bayesdl.inference.base.StepEvent`; its info
            holds ``theta`` (the current particles: read, do not modify; in a run over
            processes, this process's block), ``bandwidth``, ``gamma``, ``step_norm`` and, for
            weight-space scores, ``lp`` (of all particles).
        init_theta
            Initial particles ``(particles, D)``; default: as the backend's ``init`` says.
        num_data
            Size of the full data set if ``(x, y)`` is a subsample (scales the likelihood);
            default: the rows given, or the DataLoader's dataset length.
        checkpoint, checkpoint_every, resume
            Write the run's state (particles, optimiser state, every random stream, the
            minibatch stream) to ``checkpoint`` every ``checkpoint_every`` steps and when it
            stops; continue a run from such a file with ``resume`` (the result equals the
            uninterrupted run's; see :mod:`bayesdl.inference.driver`). In a run over
            processes each writes and resumes its own file (``path.rank<r>of<world>``).
        distributed
            Share the particles over the ``torch.distributed`` process group, in contiguous
            blocks (:mod:`bayesdl.distributed`): each process moves its block, and each step
            gathers what the kernel needs of the others' (positions and scores, or functions
            and function-space scores; :mod:`.blocks`). Every process reads the same
            minibatches (a DataLoader is not sharded; an ``IterableDataset`` must give every
            process the same batches, not shard itself by rank) and draws the same measurement
            points, prior draws and noise. Default: whenever a group of more than one process
            is initialised; ``False`` keeps the run in this process. The result equals the
            one-process run's up to the rounding of forward and backward passes over fewer
            particles and of sums split over processes. Such a run steps eagerly
            (``compile`` is ignored); it needs at least one particle per process.

        Returns
        -------
        Posterior
            ``kind="particles"``: one chain of ``P`` draws, with ``sample_stats["lp"]`` (the
            tempered log joint of each final particle on the last minibatch); marked partial
            after Ctrl-C. In a run over processes, rank 0's holds every particle in order and
            the others' their own block (``attrs["distributed"]`` says which).
        """
        control = RunControl.of(
            progress, callbacks, checkpoint, checkpoint_every, resume, distributed
        )
        blocks = ParticleBlocks(self.particles, control.ranks)
        blocks.check()
        seed = blocks.agreed_seed(seed)
        seeds = child_seeds(seed, 5)
        if init_theta is not None and isinstance(bnn, BNN):
            init_theta = check_particles(
                init_theta, self.particles, bnn.num_params, bnn.dtype, bnn.device
            )
        problem = prepare(
            bnn,
            x,
            y,
            chains=self.particles,
            seed=seed,
            init_theta=init_theta,
            num_data=num_data,
            tensor_inputs="SVGD",
            default_init=lambda model, _: draw_initial(
                self.init, model, self.particles, seeds[_INIT]
            ),
            split=control.ranks,
            batch_size=self.batch_size,
        )
        check_model(self.kernel, self.function_space, problem.bnn)
        warn_off_data(self.kernel, self.measurement, self.prior_score)
        measurement = checked_measurement(problem.bnn, self.measurement)
        # every process reads the same minibatches: the particles are split, not the data
        batches = problem.minibatches(self.batch_size, seeds[_BATCHES], group=None)
        target = bnn_target(
            self,
            problem.bnn,
            problem.x,
            problem.y,
            problem.num_data,
            seeds[_BATCHES],
            measurement,
            batches,
        )
        algorithm = SVGDRun(self, target, problem.init_theta, seeds[_MEASUREMENT:], blocks)
        identity = identity_of(self, problem, **blocks.identity())
        result = self._run(algorithm, control, identity, batches)
        return self._posterior(algorithm, result, problem.bnn)

    def sample(
        self,
        log_density: Callable[[Tensor], Tensor],
        init_theta: Tensor,
        *,
        seed: int | None = None,
        progress: bool = True,
        callbacks: Callback | Sequence[Callback] = (),
        checkpoint: str | os.PathLike | None = None,
        checkpoint_every: int | None = None,
        resume: str | os.PathLike | None = None,
        distributed: bool | None = None,
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
        progress, callbacks, checkpoint, checkpoint_every, resume
            As for :meth:`fit`. A checkpoint records the settings and the particles' shape,
            not the log density: resume only with the same one.
        distributed
            As for :meth:`fit`: every process gives all of ``init_theta`` and moves its block;
            ``log_density`` is called on a block's rows.

        Returns
        -------
        Posterior
            No BNN attached (no ``predict``); ``theta`` of shape ``(1, particles, D)`` (in a
            run over processes, as for :meth:`fit`).
        """
        control = RunControl.of(
            progress, callbacks, checkpoint, checkpoint_every, resume, distributed
        )
        check_density_run(self.kernel, self.batch_size, log_density)
        theta = check_density_particles(init_theta, self.particles)
        blocks = ParticleBlocks(self.particles, control.ranks)
        blocks.check()
        seeds = Seeds.of(blocks.agreed_seed(seed), self.particles).children(5)
        start, stop = blocks.block
        algorithm = SVGDRun(
            self, DensityTarget(log_density), theta[start:stop], seeds[_MEASUREMENT:], blocks
        )
        identity = {
            "backend": repr(self),
            "log_density": stable_repr(log_density),
            "particles": list(theta.shape),
            "dtype": str(theta.dtype),
            **blocks.identity(),
        }
        return self._posterior(algorithm, self._run(algorithm, control, identity), None)

    # -------------------------------------------------------------- the run and its result
    def _run(
        self,
        algorithm: SVGDRun,
        control: RunControl,
        identity: Mapping[str, Any],
        batches: Any = None,
    ) -> RunResult:
        desc = f"SVGD ({self.update}, {self.particles} particles)"
        with torch.no_grad(), algorithm.guards():
            return run(algorithm, control, desc=desc, identity=identity, batches=batches)

    def _posterior(self, algorithm: SVGDRun, result: RunResult, bnn: BNN | None) -> Posterior:
        """The final particles as a Posterior, after the exploding-particles checks."""
        state, outcome = algorithm.bind(result.state), result.outcome
        lp = algorithm.final_lp(state)
        final = state.theta.detach().clone()
        (final, start, lp), shared = algorithm.blocks.result(final, state.start, lp)
        if outcome.reason != "non-finite":  # that raises NonFiniteError below
            warn_all(particle_problems(start, final, lp, self.lr), stacklevel=4)
        batches = getattr(algorithm.target, "batches", None)
        batch_size = (
            batches.batch_size if isinstance(batches, LoaderBatches) else self.batch_size or 0
        )
        posterior = Posterior(
            final[None],
            bnn,
            {"lp": lp.detach()[None]},
            kind="particles",
            partial=outcome.partial,
            attrs={
                "inference": "svgd",
                "kernel": "ensemble" if self.kernel is None else repr(self.kernel),
                "update": self.update,
                "particles": self.particles,
                "steps": self.steps,
                "optimizer": self.optimizer.__name__,
                "lr": self.lr,
                "batch_size": batch_size,
                "stochastic": int(self.stochastic),
                "anneal": str(self.anneal),
                "init": self.init if isinstance(self.init, str) else "callable",
                "function_space": self.function_space,
                "compile": int(algorithm.compiled is not None),
                "stopped": outcome.reason or "",
                **shared,
            },
        )
        return finish(posterior, outcome)
