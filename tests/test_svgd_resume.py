"""SVGD checkpoints: a run stopped and resumed equals the run never stopped, bit for bit.

The backend contract (tests/test_contract.py) checks this for weight-space SVGD; here for the
settings whose state is more than particles and Adam's moments: function-space kernels on
minibatches (measurement draws and SSGE prior draws, each a random stream of the state), the
hybrid kernel, stochastic SVGD's Langevin noise, and ``sample`` on a bare log density.
"""

from __future__ import annotations

import os
import warnings

import pytest
import torch

from bayesdl import likelihoods, priors
from bayesdl.inference import ConvergenceWarning
from bayesdl.inference.particles.svgd import SVGD
from bayesdl.models import BNN, MLP
from bayesdl.testing import stop_after

DTYPE = torch.float64


def regression(seed: int = 0, n: int = 24):
    """A 1-8-1 tanh MLP on a noisy sine."""
    torch.manual_seed(seed)
    net = MLP(1, [8], 1, activation="tanh").to(DTYPE)
    bnn = BNN(net, priors.Gaussian(1.0), likelihoods.Gaussian(0.1))
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, generator=gen, dtype=DTYPE) * 4 - 2
    y = torch.sin(2 * x[:, 0]) + 0.1 * torch.randn(n, generator=gen, dtype=DTYPE)
    return bnn, x, y


def fit(svgd: SVGD, seed: int = 0, **kwargs):
    bnn, x, y = regression()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return svgd.fit(bnn, x, y, seed=seed, progress=False, **kwargs)


def assert_same(resumed, reference) -> None:
    assert not resumed.partial
    assert torch.equal(resumed.theta, reference.theta)
    assert torch.equal(resumed.sample_stats["lp"], reference.sample_stats["lp"])


POOL = torch.linspace(-3.0, 3.0, 12, dtype=DTYPE)[:, None]


@pytest.mark.parametrize(
    "settings",
    [
        # the contract's test: function-space kernel, minibatches, SSGE prior draws
        {"kernel": "function", "batch_size": 8},
        # ... and measurement points drawn from a pool each step (its own generator)
        {"kernel": "function", "batch_size": 8, "measurement": POOL, "measurement_size": 4},
        {"kernel": "hybrid", "batch_size": 8, "anneal": "linear"},
        {"kernel": None, "stochastic": True, "optimizer": torch.optim.SGD, "lr": 1e-3},
    ],
    ids=["function", "function-pool", "hybrid", "langevin-ensemble"],
)
def test_a_run_interrupted_and_resumed_equals_the_uninterrupted_run(tmp_path, settings):
    def make() -> SVGD:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # measurement with an SSGE prior
            return SVGD(particles=3, steps=7, **settings)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        reference = fit(make())
        for stop in (0, 3):
            path = os.fspath(tmp_path / f"run{stop}.ckpt")
            with pytest.warns(RuntimeWarning, match="interrupted"):
                partial = fit(make(), checkpoint=path, callbacks=stop_after(stop))
            assert partial.partial
            assert not torch.equal(partial.theta, reference.theta)
            assert_same(fit(make(), seed=5, resume=path), reference)  # the file's streams


def test_a_periodic_checkpoint_resumes_a_function_space_run(tmp_path):
    """Resumed from the last periodic checkpoint (written every 2 steps) after a stop at
    step 4: steps 5 and 6 run again and give the uninterrupted run's particles."""
    svgd = SVGD(particles=3, steps=7, kernel="function", batch_size=8)
    reference = fit(svgd)
    path = os.fspath(tmp_path / "run.ckpt")
    with pytest.warns(RuntimeWarning, match="interrupted"):
        fit(svgd, checkpoint=path, checkpoint_every=2, callbacks=stop_after(4))
    assert_same(fit(svgd, resume=path), reference)


def test_resume_refuses_other_settings(tmp_path):
    path = os.fspath(tmp_path / "run.ckpt")
    with pytest.warns(RuntimeWarning, match="interrupted"):
        fit(SVGD(particles=3, steps=5, kernel="function"), checkpoint=path, callbacks=stop_after(1))
    with pytest.raises(ValueError, match=r"^resume: .*different run \(backend"):
        fit(SVGD(particles=3, steps=5, kernel="hybrid"), resume=path)


def test_settings_with_callables_are_recorded_without_memory_addresses():
    """A checkpoint's record of the settings must match in a new process: a callable setting
    is recorded by its qualified name, not its address."""

    def schedule(step):
        return 1.0

    text = repr(SVGD(particles=3, anneal=schedule))
    assert "anneal=<" in text and "schedule>" in text and " at 0x" not in text


def test_sample_on_a_log_density_resumes_exactly(tmp_path):
    def log_density(theta):
        return -0.5 * (theta**2).sum(-1)

    init = torch.linspace(-1.0, 1.0, 8, dtype=DTYPE).reshape(4, 2)
    svgd = SVGD(particles=4, steps=6, stochastic=True, optimizer=torch.optim.SGD, lr=1e-2)
    reference = svgd.sample(log_density, init, seed=3, progress=False)
    path = os.fspath(tmp_path / "run.ckpt")
    with pytest.warns(RuntimeWarning, match="interrupted"):
        svgd.sample(
            log_density, init, seed=3, progress=False, checkpoint=path, callbacks=stop_after(2)
        )
    resumed = svgd.sample(log_density, init, seed=9, progress=False, resume=path)
    assert_same(resumed, reference)
