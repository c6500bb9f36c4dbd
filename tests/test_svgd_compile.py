"""``SVGD(compile=True)``: the compiled step does what the eager one does.

A compiled step fuses and reorders floating-point operations, so the comparisons run a few
steps in float64, where compiled and eager particles agree to rounding. Runs that compile are
checked with dynamo's guards evaluated and recompiling made an error: one graph per run.
"""

from __future__ import annotations

import math
import os
import shutil

import pytest
import torch
from torch import nn

from bayesdl import likelihoods, priors
from bayesdl.inference import compilation
from bayesdl.inference.base import NonFiniteError
from bayesdl.inference.particles.compiled import compiled_step
from bayesdl.inference.particles.stein_kernels import IMQ, RBF, Kernel
from bayesdl.inference.particles.svgd import SVGD
from bayesdl.inference.particles.targets import DensityTarget
from bayesdl.models import BNN

#: torch.compile's CPU backend builds C++; without a compiler it falls back (tested below).
needs_compiler = pytest.mark.skipif(
    not any(shutil.which(c) for c in (os.environ.get("CXX", "g++"), "c++", "clang++")),
    reason="torch.compile needs a C++ compiler on the CPU",
)


def _problem() -> tuple[BNN, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 6), nn.Tanh(), nn.Linear(6, 1)).double()
    bnn = BNN(net, priors.Gaussian(1.0), likelihoods.Gaussian(scale=0.3))
    x = torch.randn(24, 2, dtype=torch.float64)
    y = torch.sin(x[:, 0]) + 0.1 * torch.randn(24, dtype=torch.float64)
    return bnn, x, y


def _fit_both(monkeypatch, **settings):
    """Eager and compiled fits, the compiled one with guards checked and no recompiling."""
    bnn, x, y = _problem()
    eager = SVGD(**settings).fit(bnn, x, y, seed=0, progress=False)
    monkeypatch.setattr(compilation, "SKIP_GUARDS", False)
    with torch._dynamo.config.patch(error_on_recompile=True):
        compiled = SVGD(**settings, compile=True).fit(bnn, x, y, seed=0, progress=False)
    return eager, compiled


def _assert_same(eager, compiled) -> None:
    torch.testing.assert_close(compiled.theta, eager.theta, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(
        compiled.sample_stats["lp"], eager.sample_stats["lp"], rtol=1e-9, atol=1e-9
    )
    assert compiled.attrs["compile"] == 1
    assert eager.attrs["compile"] == 0


def test_compile_checks_its_argument():
    with pytest.raises(TypeError, match="compile"):
        SVGD(compile="yes")


@pytest.mark.parametrize(
    "settings",
    [
        {"kernel": "function"},
        {"kernel": "hybrid"},
        {"kernel": "weight", "update": "wgd-kde"},
    ],
    ids=["function", "hybrid", "wgd"],
)
def test_what_is_not_compiled_runs_eagerly(settings):
    bnn, x, y = _problem()
    eager = SVGD(particles=4, steps=2, **settings).fit(bnn, x, y, seed=0, progress=False)
    fallback = SVGD(particles=4, steps=2, compile=True, **settings).fit(
        bnn, x, y, seed=0, progress=False
    )
    assert torch.equal(fallback.theta, eager.theta)
    assert fallback.attrs["compile"] == 0


@pytest.mark.parametrize(
    ("optimizer", "kwargs", "kind"),
    [
        (torch.optim.Adam, {}, "adam"),
        (torch.optim.Adam, {"amsgrad": False, "betas": (0.8, 0.9), "weight_decay": 0.1}, "adam"),
        (torch.optim.Adam, {"amsgrad": True}, "eager"),
        (torch.optim.SGD, {"momentum": 0, "weight_decay": 0.1}, "sgd"),
        (torch.optim.SGD, {"momentum": 0.9}, "eager"),
        (torch.optim.RMSprop, {}, "eager"),
    ],
)
def test_which_optimisers_update_inside_the_graph(optimizer, kwargs, kind):
    svgd = SVGD(particles=3, optimizer=optimizer, optimizer_kwargs=kwargs, compile=True)
    theta = torch.zeros(3, 2)
    target = DensityTarget(lambda t: -(t**2).sum(-1))
    step = compiled_step(svgd, target, theta, optimizer([theta], lr=svgd.lr, **kwargs))
    assert step is not None and step.kind == kind  # nothing compiles before the first call
    hybrid = SVGD(particles=3, kernel="hybrid", compile=True)
    assert compiled_step(hybrid, target, theta, torch.optim.Adam([theta])) is None


def test_a_step_that_cannot_compile_runs_eagerly_after_a_warning(monkeypatch):
    def broken_compile(fn, **kwargs):
        def fail(*args):
            raise RuntimeError("no C++ compiler\nsecond line")

        return fail

    monkeypatch.setattr(torch, "compile", broken_compile)
    bnn, x, y = _problem()
    eager = SVGD(particles=4, steps=3).fit(bnn, x, y, seed=0, progress=False)
    with pytest.warns(RuntimeWarning, match=r"could not compile svgd_step \(RuntimeError: no C"):
        fallback = SVGD(particles=4, steps=3, compile=True).fit(bnn, x, y, seed=0, progress=False)
    # eagerly, through torch.func and the step's own Adam: equal up to rounding
    torch.testing.assert_close(fallback.theta, eager.theta, rtol=1e-10, atol=1e-12)


@needs_compiler
@pytest.mark.filterwarnings("error::RuntimeWarning")  # a fallback to eager would hide the test
def test_compiled_minibatch_ensemble_matches_eager(monkeypatch):
    eager, compiled = _fit_both(monkeypatch, particles=3, kernel=None, steps=5, batch_size=8)
    _assert_same(eager, compiled)


@pytest.mark.slow
@needs_compiler
@pytest.mark.filterwarnings("error::RuntimeWarning")
@pytest.mark.parametrize("batch_size", [None, 8], ids=["full-batch", "minibatch"])
def test_compiled_weight_kernel_svgd_matches_eager(monkeypatch, batch_size):
    eager, compiled = _fit_both(
        monkeypatch, particles=5, kernel="weight", steps=5, batch_size=batch_size, anneal="linear"
    )
    _assert_same(eager, compiled)


@pytest.mark.slow
@needs_compiler
@pytest.mark.filterwarnings("error::RuntimeWarning")
@pytest.mark.parametrize(
    "settings",
    [
        # Langevin noise (matrix square root in the graph) with SGD updated in the graph
        {
            "kernel": RBF("weight", bandwidth="median"),
            "stochastic": True,
            "optimizer": torch.optim.SGD,
            "lr": 1e-3,
        },
        {"kernel": None, "stochastic": True, "optimizer": torch.optim.SGD, "lr": 1e-3},
        # an optimiser the graph does not reproduce: stepped eagerly after the direction
        {"kernel": "weight", "optimizer": torch.optim.RMSprop},
        # Adam with its options, a fixed-bandwidth IMQ kernel
        {
            "kernel": IMQ("weight", bandwidth=2.0),
            "optimizer_kwargs": {"betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.1},
        },
    ],
    ids=["stochastic-svgd", "sgld", "rmsprop", "adam-options-imq"],
)
def test_compiled_variants_match_eager(monkeypatch, settings):
    eager, compiled = _fit_both(monkeypatch, particles=4, steps=4, **settings)
    _assert_same(eager, compiled)


class _AutogradRBF(RBF):
    """An RBF whose profile derivative comes from the base class (autograd, or torch.func)."""

    profile_derivative = Kernel.profile_derivative


@pytest.mark.slow
@needs_compiler
@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_compiled_profile_derivative_from_autograd_matches_eager(monkeypatch):
    eager, compiled = _fit_both(monkeypatch, particles=4, steps=3, kernel=_AutogradRBF("weight"))
    _assert_same(eager, compiled)


@pytest.mark.slow
@needs_compiler
@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_compiled_sampling_keeps_callbacks_ctrl_c_and_the_nan_guard(monkeypatch):
    """On a bare log density: the same callback infos, Ctrl-C and NaN-guard outcomes."""

    def log_density(theta):
        wall = torch.where(theta[:, 0] > 1.5, math.nan, 1.0)  # NaN, and NaN scores, beyond
        return -0.5 * (theta**2).sum(-1) * wall

    def pulled(theta):  # pulls the particles over the same wall
        wall = torch.where(theta[:, 0] > 1.5, math.nan, 1.0)
        return -0.5 * ((theta - 3.0) ** 2).sum(-1) * wall

    init = torch.linspace(-1.0, 1.0, 8, dtype=torch.float64).reshape(4, 2)
    monkeypatch.setattr(compilation, "SKIP_GUARDS", False)
    results = {}
    for compile in (False, True):
        seen = []

        def record(event, seen=seen):
            seen.append({k: event.info[k] for k in ("gamma", "step_norm", "finite", "bandwidth")})
            if event.step == 2:
                raise KeyboardInterrupt

        svgd = SVGD(particles=4, steps=10, lr=0.1, kernel="weight", compile=compile)
        with torch._dynamo.config.patch(error_on_recompile=True):
            with pytest.warns(RuntimeWarning, match="interrupted"):
                stopped = svgd.sample(log_density, init, progress=False, callbacks=[record])
            # the particles are pulled over the wall: the NaN guard stops the run
            pushed = SVGD(particles=4, steps=200, lr=0.1, kernel="weight", compile=compile)
            with pytest.raises(NonFiniteError) as err:
                pushed.sample(pulled, init, progress=False)
        results[compile] = (seen, stopped, err.value.posterior)
    (seen_e, stopped_e, nan_e), (seen_c, stopped_c, nan_c) = results[False], results[True]
    assert len(seen_c) == len(seen_e) == 3
    for a, b in zip(seen_c, seen_e, strict=True):
        assert a.keys() == b.keys() and a["finite"] == b["finite"]
        assert math.isclose(a["step_norm"], b["step_norm"], rel_tol=1e-9)
        assert math.isclose(a["bandwidth"], b["bandwidth"], rel_tol=1e-9)
    assert stopped_c.partial and stopped_e.partial
    torch.testing.assert_close(stopped_c.theta, stopped_e.theta, rtol=1e-9, atol=1e-12)
    assert nan_c.attrs["stopped"] == nan_e.attrs["stopped"] == "non-finite"
    torch.testing.assert_close(nan_c.theta, nan_e.theta, rtol=1e-9, atol=1e-12)
    assert bool(torch.isfinite(nan_c.theta).all())


@needs_compiler
@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_a_compiled_run_resumes_with_adams_moments_from_the_checkpoint(monkeypatch, tmp_path):
    """Adam updated inside the graph keeps its count and moments in the run's state: a
    compiled run stopped after step 2 and resumed equals the uninterrupted compiled run.
    Each fit gets a fresh model, as a resumed run in a new process does (compiled runs of one
    BNN object in one process may differ in rounding: the first compiles other code)."""
    monkeypatch.setattr(compilation, "SKIP_GUARDS", False)
    svgd = SVGD(particles=3, kernel=None, steps=5, batch_size=8, compile=True)
    reference = svgd.fit(*_problem(), seed=0, progress=False)
    path = os.fspath(tmp_path / "run.ckpt")

    def stop(event):
        if event.step == 2:
            raise KeyboardInterrupt

    with pytest.warns(RuntimeWarning, match="interrupted"):
        svgd.fit(*_problem(), seed=0, progress=False, checkpoint=path, callbacks=stop)
    resumed = svgd.fit(*_problem(), seed=1, progress=False, resume=path)
    assert resumed.attrs["compile"] == 1 and not resumed.partial
    assert torch.equal(resumed.theta, reference.theta)
    assert torch.equal(resumed.sample_stats["lp"], reference.sample_stats["lp"])
