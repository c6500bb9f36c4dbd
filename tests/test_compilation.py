"""``compile=True``: the samplers' compiled steps do what the eager ones do.

A compiled step fuses and reorders floating-point operations, so compiled and eager chains
agree to rounding only while no accept/reject decision falls within rounding of its threshold;
the comparisons run a few transitions in float64 at a fixed step size, where that holds.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import warnings

import pyro
import pytest
import torch
from statistical.blr import check_gaussian_draws, linear_regression
from torch import nn

from bayesdl import likelihoods, priors
from bayesdl.inference import HMC, NUTS, compilation
from bayesdl.inference.compilation import compile_step, skip_guard_checks
from bayesdl.inference.gradients import functional_value_and_grad, value_and_grad
from bayesdl.inference.mcmc import trajectory
from bayesdl.inference.mcmc.integrators import IntegratorState
from bayesdl.inference.mcmc.mass_matrix import Metric
from bayesdl.inference.mcmc.nuts import CUDA_LEAVES_PER_CALL, leaves_per_call
from bayesdl.inference.mcmc.trajectory import hmc_step, hmc_transition, nuts_leaves, nuts_transition
from bayesdl.inference.rng import ChainRNG
from bayesdl.models import BNN, MLP
from bayesdl.testing import StepRecorder, stop_after

#: torch.compile's CPU backend builds C++; without a compiler it falls back (tested below).
needs_compiler = pytest.mark.skipif(
    not any(shutil.which(c) for c in (os.environ.get("CXX", "g++"), "c++", "clang++")),
    reason="torch.compile needs a C++ compiler on the CPU",
)


def _correlated_gaussian(dim: int = 4):
    a = torch.randn(dim, dim, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    precision = torch.linalg.inv(a @ a.T + 0.5 * torch.eye(dim, dtype=torch.float64))
    return lambda theta: -0.5 * ((theta @ precision) * theta).sum(-1)


def _start(log_density, chains: int, dim: int) -> tuple[IntegratorState, Metric]:
    theta = torch.randn(
        chains, dim, generator=torch.Generator().manual_seed(5), dtype=torch.float64
    )
    value, grad = value_and_grad(log_density)(theta)
    inverse_mass = torch.linspace(0.5, 2.0, chains * dim, dtype=torch.float64)
    metric = Metric(inverse_mass.reshape(chains, dim))
    return IntegratorState(theta, torch.zeros_like(theta), value, grad), metric


@needs_compiler
@pytest.mark.filterwarnings("error::RuntimeWarning")  # a fallback to eager would hide the test
def test_compiled_nuts_and_hmc_transitions_match_eager_ones():
    log_density = _correlated_gaussian()
    eager_log_density_and_grad = value_and_grad(log_density)
    compiled_log_density_and_grad = functional_value_and_grad(log_density)
    step_size = torch.tensor([0.3, 0.2, 0.25], dtype=torch.float64)
    leaves = compile_step(nuts_leaves)
    step = compile_step(hmc_step)
    for name in ("nuts", "hmc"):
        eager, metric = _start(log_density, 3, 4)
        compiled = eager
        rng_eager = ChainRNG.of([1, 2, 3], dtype=torch.float64)
        rng_compiled = ChainRNG.of([1, 2, 3], dtype=torch.float64)
        for _ in range(4):
            if name == "nuts":
                eager, info_e = nuts_transition(
                    eager,
                    step_size,
                    metric,
                    eager_log_density_and_grad,
                    rng_eager,
                    max_tree_depth=5,
                )
                compiled, info_c = nuts_transition(
                    compiled,
                    step_size,
                    metric,
                    compiled_log_density_and_grad,
                    rng_compiled,
                    max_tree_depth=5,
                    leaves=leaves,
                    leaves_per_call=2,
                )
            else:
                steps = torch.tensor([3, 5, 4])
                eager, info_e = hmc_transition(
                    eager, step_size, metric, eager_log_density_and_grad, rng_eager, steps
                )
                compiled, info_c = hmc_transition(
                    compiled,
                    step_size,
                    metric,
                    compiled_log_density_and_grad,
                    rng_compiled,
                    steps,
                    step=step,
                )
            torch.testing.assert_close(compiled.position, eager.position, rtol=1e-10, atol=1e-10)
            torch.testing.assert_close(compiled.grad, eager.grad, rtol=1e-10, atol=1e-10)
            assert torch.equal(info_c.n_steps, info_e.n_steps)
            assert torch.equal(info_c.tree_depth, info_e.tree_depth)
        assert int(info_e.n_steps.max()) > 1  # the trees grew


@pytest.mark.parametrize("out_of_place", [False, True])
@pytest.mark.parametrize("per_call", [2, 4, 8])
def test_several_leaves_per_call_give_the_same_transitions(per_call, out_of_place, monkeypatch):
    """Leaves past a subtree's end or after every chain stopped change nothing; nor does
    writing the checkpoints out of place (as the CUDA-graph leaves do, 8 per call)."""
    monkeypatch.setattr(trajectory, "OUT_OF_PLACE_CHECKPOINTS", out_of_place)
    log_density = _correlated_gaussian()
    log_density_and_grad = value_and_grad(log_density)
    step_size = torch.tensor([0.6, 0.42, 0.48], dtype=torch.float64)
    one, metric = _start(log_density, 3, 4)
    several = one
    rng_one = ChainRNG.of([1, 2, 3], dtype=torch.float64)
    rng_several = ChainRNG.of([1, 2, 3], dtype=torch.float64)
    steps, depths = [], []
    for _ in range(6):
        one, info_one = nuts_transition(one, step_size, metric, log_density_and_grad, rng_one, 5)
        several, info_several = nuts_transition(
            several,
            step_size,
            metric,
            log_density_and_grad,
            rng_several,
            5,
            leaves_per_call=per_call,
        )
        assert torch.equal(several.position, one.position)
        for field in ("n_steps", "tree_depth", "acceptance_rate", "energy", "diverging"):
            assert torch.equal(getattr(info_several, field), getattr(info_one, field))
        steps.append(info_one.n_steps)
        depths.append(info_one.tree_depth)
    steps, depths = torch.cat(steps), torch.cat(depths)
    assert bool((steps < 2**depths - 1).any())  # a subtree stopped part-way


def test_leaves_per_call_on_a_gpu_are_the_ones_tested_above():
    assert leaves_per_call(torch.device("cuda", 0)) == CUDA_LEAVES_PER_CALL == 8
    assert leaves_per_call(torch.device("cpu")) == 2


def test_cuda_graph_steps_are_chosen_by_the_device_of_the_arguments():
    state, _ = _start(_correlated_gaussian(3), 2, 3)
    assert not compilation._on_cuda((state, torch.zeros(2), 1.0))
    meta = IntegratorState(*(torch.empty(2, 3, device="meta") for _ in range(4)))
    assert not compilation._on_cuda((meta,))  # neither a CPU nor a CUDA tensor decides it


@needs_compiler
@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_compiled_nuts_on_a_bnn_matches_eager_draws():
    """The BNN's log joint (vmap over the network, priors, likelihood) compiles whole."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 6), nn.Tanh(), nn.Linear(6, 1)).double()
    bnn = BNN(net, priors.Gaussian(1.0), likelihoods.Gaussian(scale=0.3))
    x = torch.randn(25, 2, dtype=torch.float64)
    y = torch.sin(x[:, 0]) + 0.1 * torch.randn(25, dtype=torch.float64)
    draws = []
    for compile in (False, True):
        nuts = NUTS(chains=2, warmup=0, draws=3, step_size=0.05, max_tree_depth=4, compile=compile)
        draws.append(nuts.fit(bnn, x, y, seed=0, progress=False))
    eager, compiled = draws
    torch.testing.assert_close(compiled.theta, eager.theta, rtol=1e-9, atol=1e-9)
    assert torch.equal(compiled.sample_stats["n_steps"], eager.sample_stats["n_steps"])
    assert compiled.attrs["compile"] == 1


@needs_compiler
@pytest.mark.filterwarnings("error::RuntimeWarning")
@pytest.mark.parametrize(
    "sampler",
    [
        NUTS(chains=3, warmup=40, draws=5, max_tree_depth=5, compile=True),
        NUTS(chains=3, warmup=40, draws=5, max_tree_depth=5, mass="dense", compile=True),
        HMC(chains=3, warmup=40, draws=5, trajectory_length=1.0, compile=True),
    ],
    ids=["nuts-diag", "nuts-dense", "hmc"],
)
def test_whole_compiled_runs_never_need_a_second_graph(monkeypatch, sampler):
    """With guards checked and recompiling an error, whole runs (mass adaptation included)
    pass: the guard checks that the samplers skip could never have failed."""
    monkeypatch.setattr(compilation, "SKIP_GUARDS", False)
    init = torch.randn(3, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with torch._dynamo.config.patch(error_on_recompile=True):
        post = sampler.sample(_correlated_gaussian(), init, seed=2, progress=False)
    assert post.theta.shape == (3, 5, 4)


@needs_compiler
def test_a_step_that_needs_a_new_graph_gets_one_while_guards_are_skipped():
    step = compile_step(lambda x: 2 * x)
    with skip_guard_checks():
        torch.testing.assert_close(step(torch.ones(3)), torch.full((3,), 2.0))
        x = torch.arange(4, dtype=torch.float64)
        torch.testing.assert_close(step(x), 2 * x)


def test_a_step_that_cannot_compile_runs_eagerly_after_a_warning(monkeypatch):
    def broken_compile(fn, **kwargs):
        def fail(*args):
            raise RuntimeError("no C++ compiler\nsecond line")

        return fail

    monkeypatch.setattr(torch, "compile", broken_compile)
    log_density = _correlated_gaussian()
    init = torch.zeros(2, 4, dtype=torch.float64)
    eager = NUTS(chains=2, warmup=10, draws=5).sample(log_density, init, seed=1, progress=False)
    with pytest.warns(RuntimeWarning, match=r"could not compile nuts_leaves \(RuntimeError: no C"):
        fallback = NUTS(chains=2, warmup=10, draws=5, compile=True).sample(
            log_density, init, seed=1, progress=False
        )
    # eagerly, but with the torch.func gradient: equal up to rounding
    torch.testing.assert_close(fallback.theta, eager.theta, rtol=1e-8, atol=1e-8)


def test_a_step_that_raises_on_its_first_call_is_not_taken_for_a_compiler_failure(monkeypatch):
    # a log density that raises at the first proposal (inference/mcmc/robust.py) raises eagerly too:
    # its error propagates, without the fallback warning, and later calls still run compiled
    calls = []

    def fake_compile(fn, **kwargs):
        def compiled(*args):
            calls.append("compiled")
            return fn(*args)

        return compiled

    monkeypatch.setattr(torch, "compile", fake_compile)

    def step(x):
        if bool((x < 0).any()):
            raise ValueError("bad proposal")
        return 2 * x

    compiled_step = compile_step(step)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        with pytest.raises(ValueError, match="bad proposal"):
            compiled_step(-torch.ones(2))
        torch.testing.assert_close(compiled_step(torch.ones(2)), torch.full((2,), 2.0))
        torch.testing.assert_close(compiled_step(torch.ones(2)), torch.full((2,), 2.0))
    assert calls == ["compiled"] * 3


def test_compile_checks_its_argument():
    with pytest.raises(TypeError, match="compile"):
        NUTS(compile="yes")
    with pytest.raises(ValueError, match="compile"):
        HMC(num_steps=3, engine="pyro", compile=True)


def test_log_joint_first_called_under_torch_func_keeps_working_eagerly():
    """Caches built inside a torch.func transform must not keep its wrapped tensors."""
    net = nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1)).double()
    bnn = BNN(net, priors.Gaussian(1.0), likelihoods.Gaussian(scale=0.3))
    x, y = torch.randn(5, 2, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    log_joint = bnn.log_joint_fn(x, y)
    theta = bnn.init_theta(3, seed=0)
    grad = torch.func.grad(lambda t: log_joint(t).sum())(theta)
    value, eager_grad = value_and_grad(log_joint)(theta)
    torch.testing.assert_close(grad, eager_grad)
    torch.testing.assert_close(value, bnn.log_joint(theta, x, y))


@pytest.mark.slow
@needs_compiler
@pytest.mark.filterwarnings("error::RuntimeWarning")
@pytest.mark.parametrize("mass", ["diag", "dense"])
def test_compiled_nuts_recovers_the_linear_regression_posterior(mass, seed):
    """The closed-form posterior, as for the eager engine (tests/statistical/test_hmc_nuts.py)."""
    problem = linear_regression(seed=seed)
    post = NUTS(chains=4, warmup=300, draws=400, mass=mass, compile=True).fit(
        problem.bnn, problem.x, problem.y, seed=seed, progress=False
    )
    check_gaussian_draws(post.theta, problem.mean, problem.precision, z_max=4.0)


@needs_compiler
@pytest.mark.filterwarnings("error::RuntimeWarning")  # no fallback to eager
def test_compiled_nuts_resumed_after_ctrl_c_equals_the_uninterrupted_run(tmp_path):
    """Stopped inside the open mass-matrix window (warmup 25: window [3, 23)), a compiled run
    resumed from its checkpoint continues with the same streams, adaptation and metric: the
    draws and statistics are those of the run never stopped, bit for bit."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 1))
    bnn = BNN(net, priors.Gaussian(1.0), likelihoods.Gaussian(scale=0.3))
    x = torch.randn(20, 2, generator=torch.Generator().manual_seed(1))
    y = torch.sin(x[:, 0])

    def nuts() -> NUTS:
        return NUTS(chains=2, warmup=25, draws=6, max_tree_depth=4, compile=True)

    reference = nuts().fit(bnn, x, y, seed=0, progress=False)
    path = tmp_path / "nuts.ckpt"
    with pytest.warns(RuntimeWarning, match="interrupted during"):
        partial = nuts().fit(
            bnn, x, y, seed=0, progress=False, checkpoint=path, callbacks=stop_after(12)
        )
    assert partial.partial and partial.theta.shape[1] == 0
    resumed = nuts().fit(bnn, x, y, seed=1, progress=False, resume=path)  # the file's streams
    assert not resumed.partial
    assert torch.equal(resumed.theta, reference.theta)
    assert set(resumed.sample_stats) == set(reference.sample_stats)
    for name, value in reference.sample_stats.items():
        assert torch.equal(resumed.sample_stats[name], value), name
    assert resumed.attrs == reference.attrs


def _tiny_bnn_problem():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(30, 2, generator=gen)
    y = torch.sin(x[:, 0]) + 0.1 * torch.randn(30, generator=gen)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 1))
    return BNN(net, priors.Gaussian(1.0), likelihoods.Gaussian(0.3)), x, y


def test_compile_auto_stays_eager_on_a_short_run_and_draws_as_eager():
    bnn, x, y = _tiny_bnn_problem()
    settings = {"chains": 2, "warmup": 6, "draws": 6, "max_tree_depth": 3}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        auto = NUTS(**settings, compile="auto").fit(bnn, x, y, seed=0, progress=False)
        eager = NUTS(**settings, compile=False).fit(bnn, x, y, seed=0, progress=False)
    assert auto.attrs["compiled"] == 0 and auto.attrs["compile"] == "auto"
    assert torch.equal(auto.theta, eager.theta)


@needs_compiler
def test_compile_auto_compiles_a_long_run_after_its_probe_and_resumes_alike(monkeypatch, tmp_path):
    from bayesdl.inference.mcmc import run as mcmc_run

    monkeypatch.setattr(mcmc_run, "AUTO_MIN_LEAVES", 0)  # every run counts as long
    bnn, x, y = _tiny_bnn_problem()
    nuts = NUTS(chains=2, warmup=12, draws=6, max_tree_depth=3, compile="auto")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        whole = nuts.fit(bnn, x, y, seed=0, progress=False)
        eager = NUTS(chains=2, warmup=12, draws=6, max_tree_depth=3, compile=False).fit(
            bnn, x, y, seed=0, progress=False
        )
    assert whole.attrs["compiled"] == 1
    assert not torch.equal(whole.theta, eager.theta)  # compiled from the 11th transition on
    path = tmp_path / "run.ckpt"

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nuts.fit(
            bnn, x, y, seed=0, progress=False, checkpoint=path, callbacks=stop_after(4)
        )  # before the choice
        resumed = nuts.fit(bnn, x, y, progress=False, resume=path)
    assert resumed.attrs["compiled"] == 1
    torch.testing.assert_close(resumed.theta, whole.theta, rtol=0, atol=0)


def test_compile_auto_never_compiles_without_a_compiler(monkeypatch):
    from bayesdl.inference.mcmc import run as mcmc_run

    monkeypatch.setattr(mcmc_run, "AUTO_MIN_LEAVES", 0)
    monkeypatch.setattr(compilation.shutil, "which", lambda name: None)
    assert not mcmc_run.choose_compiled(100.0, 1000, torch.device("cpu"))
    monkeypatch.setattr(mcmc_run, "AUTO_MIN_LEAVES", 10**9)
    monkeypatch.undo()
    assert not mcmc_run.choose_compiled(10.0, 100, torch.device("cpu"))  # 1,000 < 20,000


def test_compile_takes_true_false_or_auto():
    with pytest.raises(TypeError, match=r"^compile: expected True, False or 'auto'"):
        NUTS(compile="yes")
    with pytest.raises(ValueError, match=r"^compile: only the bayesdl engine"):
        NUTS(compile=True, engine="pyro")


@pytest.mark.parametrize(("probe_leaves", "decided_after"), [(1, 1), (10**9, 4)])
def test_compile_auto_decides_after_its_probe_or_once_it_took_enough_steps(
    monkeypatch, probe_leaves, decided_after
):
    """Deep trees from the first transition end the eager probe early (AUTO_PROBE_LEAVES);
    otherwise it lasts AUTO_PROBE transitions."""
    from bayesdl.inference.mcmc import run as mcmc_run

    recorder = StepRecorder()
    decisions = []

    def spy(leaves_per_transition, transitions, device):
        decisions.append(len(recorder.events) + 1)  # the transition being taken
        return False

    monkeypatch.setattr(mcmc_run, "choose_compiled", spy)
    monkeypatch.setattr(mcmc_run, "AUTO_PROBE", 4)
    monkeypatch.setattr(mcmc_run, "AUTO_PROBE_LEAVES", probe_leaves)
    init = torch.zeros(2, 4, dtype=torch.float64)
    NUTS(chains=2, warmup=5, draws=5, max_tree_depth=3).sample(
        _correlated_gaussian(), init, seed=0, progress=False, callbacks=[recorder]
    )
    assert decisions == [decided_after]


@pytest.mark.parametrize(
    ("loop_max_elements", "min_leaves", "decided_after"),
    [(0, 1, 1), (0, 10**9, 4), (10**9, 1, 4)],
    ids=["no-loop-long-run", "no-loop-short-run", "loop-possible"],
)
def test_compile_auto_compiles_after_one_transition_where_no_loop_can_be_chosen(
    monkeypatch, loop_max_elements, min_leaves, decided_after
):
    """Where the state is too large to loop, a first transition that already projects
    AUTO_MIN_LEAVES ends the (eager, costly) probe; a shorter projection, or a state that
    could loop, waits for the whole probe."""
    from bayesdl.inference.mcmc import nuts as nuts_module
    from bayesdl.inference.mcmc import run as mcmc_run

    recorder = StepRecorder()
    decisions = []

    def spy(leaves_per_transition, transitions, device):
        decisions.append(len(recorder.events) + 1)
        return False

    monkeypatch.setattr(mcmc_run, "choose_compiled", spy)
    monkeypatch.setattr(mcmc_run, "AUTO_PROBE", 4)
    monkeypatch.setattr(mcmc_run, "AUTO_PROBE_LEAVES", 10**9)
    monkeypatch.setattr(mcmc_run, "AUTO_MIN_LEAVES", min_leaves)
    monkeypatch.setattr(nuts_module, "LOOP_MAX_ELEMENTS", loop_max_elements)
    init = torch.zeros(2, 4, dtype=torch.float64)
    NUTS(chains=2, warmup=5, draws=5, max_tree_depth=3).sample(
        _correlated_gaussian(), init, seed=0, progress=False, callbacks=[recorder]
    )
    assert decisions == [decided_after]


@needs_compiler
@pytest.mark.parametrize(
    "prior",
    [priors.Gaussian(1.0), priors.StudentT(3.0), priors.InverseGammaScale()],
    ids=["gaussian", "student-t", "hierarchical"],
)
def test_a_fresh_bnns_log_joint_compiles_whole(prior):
    """``torch.compile(..., fullgraph=True)`` of the log joint's gradient, before anything
    evaluated it eagerly: the prior's cached blocks are built when ``log_joint_fn`` returns,
    not inside the compiled function (their first build there broke the graph, and the rest
    ran eagerly, some 8x slower, without a word)."""
    torch.manual_seed(0)
    bnn = BNN(MLP(3, [8], 1, "tanh"), prior, likelihoods.Gaussian(0.5))
    x, y = torch.randn(20, 3), torch.randn(20)
    log_joint = bnn.log_joint_fn(x, y)
    theta = 0.1 * torch.randn(4, bnn.num_params)
    compiled = torch.compile(functional_value_and_grad(log_joint), fullgraph=True)
    with pyro.validation_enabled(False):  # as compile_step: validation cannot be captured
        value, grad = compiled(theta)
    expected_value, expected_grad = value_and_grad(log_joint)(theta)
    torch.testing.assert_close(value, expected_value)
    torch.testing.assert_close(grad, expected_grad)


_EAGER_RUN = """
import sys, torch
from bayesdl.inference import NUTS
log_density = lambda theta: -0.5 * (theta**2).sum(-1)
nuts = NUTS(chains=2, warmup=5, draws=5)
post = nuts.sample(log_density, torch.zeros(2, 3), seed=0, progress=False)
assert post.attrs["compiled"] == 0, post.attrs
compiler = ("torch._dynamo.convert_frame", "torch._inductor.compile_fx")
print(sorted(m for m in compiler if m in sys.modules))
"""


def test_a_run_that_does_not_compile_does_not_import_the_compiler():
    """``compile="auto"`` builds its compiled steps at their first call: a short run, which
    stays eager, never imports dynamo or inductor (about 1.5 s in a fresh process)."""
    result = subprocess.run(
        [sys.executable, "-c", _EAGER_RUN], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"
