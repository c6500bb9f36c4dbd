"""Whole NUTS trajectories in one loop (``inference/mcmc/looped.py``): the same transitions as
the tree in Python, compiled or not, and ``compile="auto"``'s choice of them."""

from __future__ import annotations

import os
import shutil

import pytest
import torch

from bayesdl.inference import NUTS, compilation
from bayesdl.inference.gradients import functional_value_and_grad, value_and_grad
from bayesdl.inference.mcmc import run as mcmc_run
from bayesdl.inference.mcmc.integrators import IntegratorState
from bayesdl.inference.mcmc.looped import (
    LEAVES_PER_ITERATION,
    LOOP_OPTIONS,
    looped_nuts_trajectory,
    looped_transition,
)
from bayesdl.inference.mcmc.mass_matrix import Metric
from bayesdl.inference.mcmc.trajectory import nuts_transition
from bayesdl.inference.rng import ChainRNG
from bayesdl.testing import stop_after

needs_compiler = pytest.mark.skipif(
    not any(shutil.which(c) for c in (os.environ.get("CXX", "g++"), "c++", "clang++")),
    reason="torch.compile needs a C++ compiler on the CPU",
)

#: One step size per chain: trees of every depth up to the cap, and a divergent chain.
STEP_SIZES = (0.05, 0.4, 1.1, 60.0)


def _gaussian(dim: int = 3):
    a = torch.randn(dim, dim, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    precision = torch.linalg.inv(a @ a.T + 0.3 * torch.eye(dim, dtype=torch.float64))
    return lambda theta: -0.5 * ((theta @ precision) * theta).sum(-1)


def _start(log_density, dense: bool) -> tuple[IntegratorState, Metric, torch.Tensor]:
    chains, dim = len(STEP_SIZES), 3
    theta = torch.randn(
        chains, dim, generator=torch.Generator().manual_seed(2), dtype=torch.float64
    )
    value, grad = value_and_grad(log_density)(theta)
    scales = torch.linspace(0.5, 2.0, chains * dim, dtype=torch.float64).reshape(chains, dim)
    metric = Metric(torch.diag_embed(scales) if dense else scales)
    step = torch.tensor(STEP_SIZES, dtype=torch.float64)
    return IntegratorState(theta, torch.zeros_like(theta), value, grad), metric, step


def _assert_same(a, b, exact: bool) -> None:
    (state_a, info_a), (state_b, info_b) = a, b
    for name in ("n_steps", "tree_depth", "diverging"):
        assert torch.equal(getattr(info_a, name), getattr(info_b, name)), name
    tol = {"rtol": 0.0, "atol": 0.0} if exact else {"rtol": 1e-9, "atol": 1e-9}
    torch.testing.assert_close(state_a.position, state_b.position, **tol)
    torch.testing.assert_close(state_a.log_density, state_b.log_density, **tol)
    torch.testing.assert_close(info_a.acceptance_rate, info_b.acceptance_rate, **tol)
    torch.testing.assert_close(info_a.energy, info_b.energy, **tol)


@pytest.mark.parametrize(
    ("dense", "per_iteration"), [(False, 1), (True, 3)], ids=["diag-1", "dense-3"]
)
def test_the_loop_takes_the_python_trees_transitions_bit_for_bit(dense, per_iteration):
    """Run eagerly, the loop is the same operations on the same random numbers: the capped,
    the divergent and the U-turning chains of one batch all end where the tree in Python
    ends them, whatever the leaves per iteration (3: subtrees end inside iterations)."""
    log_density = _gaussian()
    state, metric, step = _start(log_density, dense)
    loop = looped_transition(5, looped_nuts_trajectory, per_iteration)
    depths = set()
    for seed in range(3):
        python = nuts_transition(
            state, step, metric, value_and_grad(log_density), ChainRNG.from_seed(seed, 4), 5
        )
        looped = loop(
            state, step, metric, functional_value_and_grad(log_density), ChainRNG.from_seed(seed, 4)
        )
        _assert_same(python, looped, exact=True)
        depths |= set(python[1].tree_depth.tolist())
        assert bool(python[1].diverging[-1])
    assert {1, 5} <= depths  # a chain stopped at once, and one at the cap


@needs_compiler
@pytest.mark.filterwarnings("error::RuntimeWarning")  # no fallback to the tree in Python
def test_the_compiled_loop_matches_the_python_tree_to_rounding():
    log_density = _gaussian()
    state, metric, step = _start(log_density, dense=False)
    trajectory = compilation.compile_step(looped_nuts_trajectory, options=LOOP_OPTIONS)
    loop = looped_transition(5, trajectory, LEAVES_PER_ITERATION)
    with compilation.skip_guard_checks():
        for seed in range(3):
            python = nuts_transition(
                state, step, metric, value_and_grad(log_density), ChainRNG.from_seed(seed, 4), 5
            )
            looped = loop(
                state,
                step,
                metric,
                functional_value_and_grad(log_density),
                ChainRNG.from_seed(seed, 4),
            )
            _assert_same(python, looped, exact=False)


def test_only_chains_with_small_checkpoint_buffers_loop():
    """``chains * dim * max_tree_depth`` up to LOOP_MAX_ELEMENTS (measured: larger states lose
    more to the loop's copies than the Python it saves)."""
    nuts = NUTS(max_tree_depth=8)
    assert nuts._looped_transition(False, torch.zeros(4, 601)) is not None
    assert nuts._looped_transition(False, torch.zeros(64, 601)) is None


def _auto_everything(monkeypatch) -> None:
    monkeypatch.setattr(mcmc_run, "AUTO_MIN_LEAVES", 0)
    monkeypatch.setattr(mcmc_run, "AUTO_MIN_LOOPED_LEAVES", 0)
    monkeypatch.setattr(mcmc_run, "AUTO_PROBE", 3)


@needs_compiler
@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_compile_auto_loops_long_small_runs_and_resumes_alike(monkeypatch, tmp_path):
    """A run long enough (thresholds lowered) loops; its checkpoint says so, and the resumed
    run continues with loops: the draws are those of the run never stopped, bit for bit."""
    _auto_everything(monkeypatch)
    init = torch.randn(2, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def nuts() -> NUTS:
        return NUTS(chains=2, warmup=8, draws=6, max_tree_depth=4)

    reference = nuts().sample(_gaussian(), init, seed=0, progress=False)
    assert reference.attrs["compiled"] == 1 and reference.attrs["looped"] == 1
    path = tmp_path / "run.ckpt"
    with pytest.warns(RuntimeWarning, match="interrupted during"):
        nuts().sample(
            _gaussian(), init, seed=0, progress=False, checkpoint=path, callbacks=stop_after(10)
        )
    resumed = nuts().sample(_gaussian(), init, seed=0, progress=False, resume=path)
    assert torch.equal(resumed.theta, reference.theta)
    assert resumed.attrs == reference.attrs


@needs_compiler
def test_a_loop_that_cannot_compile_runs_the_tree_in_python_after_a_warning(monkeypatch):
    """Where :func:`torch.compile` cannot build the loop, the compiled leaves serve instead."""
    _auto_everything(monkeypatch)
    real_compile = torch.compile

    def no_loops(fn, **kwargs):
        if fn.__name__ != "looped_nuts_trajectory":
            return real_compile(fn, **kwargs)

        def fail(*args):
            raise RuntimeError("no loops here")

        return fail

    monkeypatch.setattr(torch, "compile", no_loops)
    init = torch.randn(2, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    settings = {"chains": 2, "warmup": 8, "draws": 6, "max_tree_depth": 4}
    pattern = r"looped_nuts_trajectory \(RuntimeError: no loops.*see bayesdl.inference.mcmc.looped"
    with pytest.warns(RuntimeWarning, match=pattern):
        fallback = NUTS(**settings).sample(_gaussian(), init, seed=0, progress=False)
    monkeypatch.setattr(mcmc_run, "AUTO_MIN_LOOPED_LEAVES", 10**12)
    leaves = NUTS(**settings).sample(_gaussian(), init, seed=0, progress=False)
    assert fallback.attrs["looped"] == 1 and leaves.attrs["looped"] == 0
    assert torch.equal(fallback.theta, leaves.theta)


@needs_compiler
@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_cached_loops_are_told_apart_by_their_bodies(tmp_path):
    """The loop's graph is cached on disk (``LOOP_OPTIONS`` marks ``while_loop`` cacheable):
    two densities of the same shapes, whose graphs differ only inside the loop's body, must
    not share a cache entry."""
    from torch._dynamo.utils import counters
    from torch._inductor.utils import fresh_cache

    state, metric, step = _start(_gaussian(), dense=False)

    def run(log_density):
        torch._dynamo.reset()
        trajectory = compilation.compile_step(looped_nuts_trajectory, options=LOOP_OPTIONS)
        value, grad = value_and_grad(log_density)(state.position)
        start = IntegratorState(state.position, state.momentum, value, grad)
        with compilation.skip_guard_checks():
            looped = looped_transition(5, trajectory)(
                start,
                step,
                metric,
                functional_value_and_grad(log_density),
                ChainRNG.from_seed(0, 4),
            )
        python = nuts_transition(
            start, step, metric, value_and_grad(log_density), ChainRNG.from_seed(0, 4), 5
        )
        _assert_same(python, looped, exact=False)

    wide = _gaussian()

    def narrow(theta):
        return 4.0 * wide(theta)

    with fresh_cache(dir=str(tmp_path)):
        counters.clear()
        run(wide)
        run(narrow)
        run(wide)
        assert counters["inductor"]["fxgraph_cache_miss"] == 2
        assert counters["inductor"]["fxgraph_cache_hit"] == 1
