"""The contract every inference backend keeps, as a test class a backend's tests inherit.

As GPyTorch ships its kernel test base classes, bayesdl ships :class:`BackendContract`: a
backend's test module subclasses it, supplies a factory of the backend with settings small
enough for a test, and inherits one test per clause of the contract::

    from bayesdl.inference import NUTS
    from bayesdl.testing import BackendContract

    class TestNUTSContract(BackendContract):
        sampling_stage = "sampling"

        def make_backend(self):
            return NUTS(chains=2, warmup=4, draws=6)

The checks run under pytest (they are ``test_*`` methods of a ``Test*`` class); pytest is
imported only inside them, so ``import bayesdl`` and ``import bayesdl.testing`` do not need it.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import shutil
import signal
import tempfile
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor

from bayesdl import likelihoods, priors
from bayesdl.inference.base import Backend, NonFiniteError, StepEvent
from bayesdl.inference.health import ConvergenceWarning
from bayesdl.models import BNN, MLP

if TYPE_CHECKING:  # pragma: no cover
    from bayesdl import Posterior

__all__ = ["BackendContract", "FaultyMLP", "StepRecorder", "press_ctrl_c", "stop_after"]


class FaultyMLP(MLP):
    """An :class:`~bayesdl.models.MLP` that can be told to fail on its next forward passes.

    Attributes
    ----------
    nan
        While set, every forward pass returns NaN (a network that breaks down mid-run).
    sigint
        If set, the next forward pass sends SIGINT to the process (Ctrl-C landing inside a step,
        also inside a :mod:`torch.func` transform), then clears it.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.nan = False
        self.sigint = False

    def forward(self, x: Tensor) -> Tensor:
        if self.sigint:
            self.sigint = False
            signal.raise_signal(signal.SIGINT)
        out = super().forward(x)
        return out * math.nan if self.nan else out


class StepRecorder:
    """A callback keeping every :class:`~bayesdl.inference.StepEvent`; optionally acts once.

    Parameters
    ----------
    at
        After the event with this index (0-based, over all stages), call ``action``.
    action
        What to do then (e.g. make the network fail from the next step on).
    """

    def __init__(self, at: int | None = None, action: Callable[[], None] | None = None) -> None:
        self.events: list[StepEvent] = []
        self.at = at
        self.action = action

    def __call__(self, event: StepEvent) -> None:
        self.events.append(event)
        if self.action is not None and len(self.events) - 1 == self.at:
            self.action()

    @property
    def steps(self) -> list[tuple[str, int]]:
        """``(stage, step)`` of every event, in order."""
        return [(e.stage, e.step) for e in self.events]


class BackendContract:
    """What every backend's ``fit`` must keep; subclass it and supply :meth:`make_backend`.

    Every check fits a tiny Bayesian MLP (:attr:`num_rows` rows, two inputs, :attr:`hidden`
    tanh units, Gaussian prior and likelihood) with the backend :meth:`make_backend` returns:

    * **same seed, same draws**; another seed, other draws;
    * the **global torch RNG is untouched** by a seeded ``fit``;
    * ``progress=False`` writes **nothing** to stdout or stderr;
    * **callbacks** are called once per step with a :class:`~bayesdl.inference.StepEvent`,
      given one callable or a list of them;
    * **bad arguments are refused** before any work with an error naming the argument: ``x``
      and ``y`` with different row counts, NaN in ``x``, something that is not a BNN,
      callbacks that are not callable;
    * the **NaN guard**: a network that returns NaN from some step on does not end the run
      silently: it raises :class:`~bayesdl.inference.NonFiniteError` carrying a partial
      Posterior of finite draws, or it returns finite draws with a
      :class:`~bayesdl.inference.ConvergenceWarning` (HMC and NUTS reject NaN proposals as
      divergent);
    * **Ctrl-C** (a SIGINT sent from inside a step's forward pass) stops the run after that
      step with a partial Posterior, a ``RuntimeWarning``, the SIGINT handler put back; with
      :attr:`sampling_stage` set, the draws so far equal those of the uninterrupted run;
    * **checkpoint and resume**: a run stopped by Ctrl-C at any of several steps (in every
      stage) with ``checkpoint=path``, then resumed with ``resume=path``, returns the draws
      and sample statistics of the uninterrupted run, bit for bit; so does a resume from a
      checkpoint written every few steps (``checkpoint_every``); a checkpoint of another
      run (other data) is refused, naming ``resume``;
    * the returned Posterior **predicts** finite values with the right shapes.

    Whether a backend recovers the posterior (Bayesian linear regression) is checked by the
    slow statistical tests (``tests/statistical/``), not here.

    Attributes
    ----------
    num_rows
        Rows of the training data.
    hidden
        Hidden units of the network.
    sampling_stage
        The stage (``StepEvent.stage``) of which every step keeps one draw per chain (MCMC,
        SG-MCMC with ``thin=1``), or ``None`` when the draws are made at the end (VI, SVGD).
    """

    num_rows: ClassVar[int] = 20
    hidden: ClassVar[int] = 4
    sampling_stage: ClassVar[str | None] = None

    #: The reference run of each subclass (seed 0), made once and shared by its checks.
    _references: ClassVar[dict[type, tuple[Posterior, list[tuple[str, int]]]]] = {}

    # ------------------------------------------------------------------ to supply
    def make_backend(self) -> Backend:
        """The backend under test, with settings small enough for a test (a few steps)."""
        raise NotImplementedError(f"{type(self).__name__} must define make_backend()")

    # ------------------------------------------------------------------ helpers
    def problem(self) -> tuple[BNN, Tensor, Tensor]:
        """A fresh tiny regression problem: ``(bnn, x, y)``, the same on every call."""
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(self.num_rows, 2, generator=gen)
        y = torch.sin(x[:, 0]) + 0.1 * torch.randn(self.num_rows, generator=gen)
        with torch.random.fork_rng():
            torch.manual_seed(0)
            net = FaultyMLP(2, [self.hidden], 1, "tanh")
        return BNN(net, priors.Gaussian(1.0), likelihoods.Gaussian(0.3)), x, y

    def fit(
        self,
        seed: int = 0,
        problem: tuple[BNN, Tensor, Tensor] | None = None,
        **kwargs: Any,
    ) -> Posterior:
        """Fit ``problem`` (default: a fresh :meth:`problem`) with a fresh backend.

        ``kwargs`` go to ``fit`` (``progress=False`` unless given); a
        :class:`~bayesdl.inference.ConvergenceWarning` is ignored (a few steps may warn).
        """
        bnn, x, y = self.problem() if problem is None else problem
        kwargs.setdefault("progress", False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            return self.make_backend().fit(bnn, x, y, seed=seed, **kwargs)

    def reference(self) -> tuple[Posterior, list[tuple[str, int]]]:
        """The run with seed 0 and its ``(stage, step)`` events (fitted once per class)."""
        cls = type(self)
        if cls not in BackendContract._references:
            recorder = StepRecorder()
            posterior = self.fit(seed=0, callbacks=recorder)  # a single callable
            BackendContract._references[cls] = (posterior, recorder.steps)
        return BackendContract._references[cls]

    # ------------------------------------------------------------------ the contract
    def test_same_seed_same_draws_other_seed_other_draws(self) -> None:
        reference, _ = self.reference()
        again = self.fit(seed=0)
        assert torch.equal(again.theta, reference.theta), "seed=0 twice gave different draws"
        other = self.fit(seed=1)
        assert not torch.equal(other.theta, reference.theta), "seed=1 gave the draws of seed=0"

    def test_fit_leaves_the_global_rng_untouched(self) -> None:
        state = torch.get_rng_state()
        self.fit(seed=0)
        assert torch.equal(torch.get_rng_state(), state), "fit(seed=0) used the global RNG"

    def test_progress_false_writes_nothing(self) -> None:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # warnings are not progress output
                self.fit(seed=0, progress=False)
        assert out.getvalue() == "" and err.getvalue() == "", (out.getvalue(), err.getvalue())

    def test_callbacks_see_every_step_given_one_callable_or_a_list(self) -> None:
        _, steps = self.reference()  # fitted with one callable
        assert steps, "a single callable as callbacks was never called"
        by_stage: dict[str, list[int]] = {}
        for stage, step in steps:
            by_stage.setdefault(stage, []).append(step)
        for stage, numbers in by_stage.items():
            assert numbers == list(range(len(numbers))), (stage, numbers)
        first, second = StepRecorder(), StepRecorder()
        self.fit(seed=0, callbacks=[first, second])
        assert first.steps == steps and second.steps == steps
        assert all(isinstance(e, StepEvent) for e in first.events)

    def test_bad_arguments_are_refused_naming_them(self) -> None:
        import pytest

        bnn, x, y = self.problem()
        backend = self.make_backend()
        with pytest.raises(ValueError, match=r"^y: has \d+ rows but x has \d+"):
            backend.fit(bnn, x, y[:-1], progress=False)
        x_nan = x.clone()
        x_nan[3, 1] = math.nan
        with pytest.raises(ValueError, match=r"^x: contains 1 NaN"):
            backend.fit(bnn, x_nan, y, progress=False)
        with pytest.raises(TypeError, match=r"^bnn: expected a bayesdl BNN.*got str"):
            backend.fit("not a bnn", x, y, progress=False)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match=r"^callbacks: expected a callable"):
            backend.fit(bnn, x, y, progress=False, callbacks=[print, 3])  # type: ignore[list-item]

    def test_a_network_turning_nan_mid_run_is_not_silent(self) -> None:
        _, steps = self.reference()
        bnn, x, y = self.problem()
        at = len(steps) // 2

        def poison() -> None:
            bnn.net.nan = True

        recorder = StepRecorder(at=at, action=poison)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                posterior = self.make_backend().fit(
                    bnn, x, y, seed=0, progress=False, callbacks=recorder
                )
            except NonFiniteError as error:
                posterior = error.posterior
                assert posterior.partial and posterior.attrs.get("stopped") == "non-finite"
                assert len(recorder.events) < len(steps), "the run went on after the NaN"
            else:
                warned = [w for w in caught if issubclass(w.category, ConvergenceWarning)]
                assert warned, f"NaN outputs from step {at + 1} on: no error, no warning"
        assert torch.isfinite(posterior.theta).all()
        assert posterior.theta.shape[-1] == bnn.num_params

    def test_ctrl_c_returns_the_draws_so_far(self) -> None:
        import pytest

        reference, steps = self.reference()
        bnn, x, y = self.problem()
        at = len(steps) // 2

        def arm() -> None:
            bnn.net.sigint = True  # SIGINT from inside the next step's forward pass

        recorder = StepRecorder(at=at, action=arm)
        handler = signal.getsignal(signal.SIGINT)
        with pytest.warns(RuntimeWarning, match="interrupted during"):
            posterior = self.fit(seed=0, problem=(bnn, x, y), callbacks=recorder)
        assert signal.getsignal(signal.SIGINT) is handler, "the SIGINT handler was not restored"
        assert len(recorder.events) == at + 2, "the run did not stop after the interrupted step"
        assert posterior.partial and posterior.attrs.get("stopped", "interrupted") == "interrupted"
        assert torch.isfinite(posterior.theta).all()
        if self.sampling_stage is None:
            assert posterior.theta.shape == reference.theta.shape
        else:
            kept = sum(stage == self.sampling_stage for stage, _ in recorder.steps)
            torch.testing.assert_close(posterior.theta, reference.theta[:, :kept])

    def test_resume_after_ctrl_c_equals_the_uninterrupted_run(self) -> None:
        import pytest

        reference, steps = self.reference()
        stops = sorted({0, len(steps) // 3, len(steps) // 2, len(steps) - 2} - {-1})
        for stop in stops:
            with tempfile.TemporaryDirectory() as folder:
                path = os.path.join(folder, "run.ckpt")
                with pytest.warns(RuntimeWarning, match="interrupted during"):
                    partial = self.fit(seed=0, checkpoint=path, callbacks=stop_after(stop))
                assert partial.partial
                resumed = self.fit(seed=1, resume=path)  # the file's streams, not seed=1
            _assert_same_run(resumed, reference, f"resumed after step {stop}")

    def test_resume_from_a_periodic_checkpoint_equals_the_uninterrupted_run(self) -> None:
        reference, steps = self.reference()
        every = max(1, len(steps) // 3)
        with tempfile.TemporaryDirectory() as folder:
            path, copy = os.path.join(folder, "run.ckpt"), os.path.join(folder, "copy.ckpt")

            def keep_first() -> None:  # the file as written after step `every`
                shutil.copyfile(path, copy)

            finished = self.fit(
                seed=0,
                checkpoint=path,
                checkpoint_every=every,
                callbacks=StepRecorder(every - 1, keep_first),
            )
            _assert_same_run(finished, reference, "a run writing checkpoints")
            _assert_same_run(self.fit(seed=0, resume=copy), reference, f"resumed at {every}")
            _assert_same_run(self.fit(seed=0, resume=path), reference, "resumed when done")

    def test_resume_refuses_the_checkpoint_of_another_run(self) -> None:
        import pytest

        bnn, x, y = self.problem()
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "run.ckpt")
            with pytest.warns(RuntimeWarning, match="interrupted during"):
                self.fit(seed=0, checkpoint=path, callbacks=stop_after(1))
            with pytest.raises(ValueError, match=r"^resume: .*different run \(data"):
                self.fit(seed=0, problem=(bnn, x, y + 1.0), resume=path)
            with pytest.raises(FileNotFoundError, match=r"^resume: no checkpoint"):
                self.fit(seed=0, resume=os.path.join(folder, "missing.ckpt"))

    def test_the_posterior_predicts_finite_values_of_the_right_shape(self) -> None:
        posterior, _ = self.reference()
        bnn, _, _ = self.problem()
        assert not posterior.partial
        assert posterior.theta.dim() == 3 and posterior.theta.shape[-1] == bnn.num_params
        assert torch.isfinite(posterior.theta).all()
        x_new = torch.linspace(-2.0, 2.0, 14).reshape(7, 2)
        predictive = posterior.predict(x_new)
        chains, draws = posterior.theta.shape[:2]
        assert predictive.samples.shape == (chains, draws, 7, 1)
        assert predictive.mean.shape == (7,) and predictive.std.shape == (7,)
        for values in (predictive.samples, predictive.mean, predictive.std):
            assert torch.isfinite(values).all()
        assert (predictive.std > 0).all()


def press_ctrl_c() -> None:
    """A callback's action: Ctrl-C (a callback's ``KeyboardInterrupt`` stops the run as a
    SIGINT does, after the step)."""
    raise KeyboardInterrupt


def stop_after(event: int) -> StepRecorder:
    """A callback that presses Ctrl-C after the run's ``event``-th step (0-based, counted over
    all stages), keeping the events it saw."""
    return StepRecorder(event, press_ctrl_c)


def _assert_same_run(posterior: Posterior, reference: Posterior, what: str) -> None:
    """The draws and sample statistics of ``posterior`` equal ``reference``'s exactly."""
    assert not posterior.partial, f"{what}: the posterior is partial"
    assert torch.equal(posterior.theta, reference.theta), f"{what}: other draws"
    assert set(posterior.sample_stats) == set(reference.sample_stats), what
    for name, value in reference.sample_stats.items():
        other = posterior.sample_stats[name]
        same = torch.equal(other, value) if isinstance(value, Tensor) else other == value
        assert same, f"{what}: sample_stats[{name!r}] differs"
