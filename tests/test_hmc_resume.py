"""Checkpoint and resume of the bayesdl HMC/NUTS engine beyond the backend contract: warmup
with mass-matrix windows, ``sample`` on a generic log density, and the Pyro engine's refusal.

(``tests/test_contract.py`` checks ``fit`` with a warmup too short for mass adaptation; the
compiled engine is checked in ``tests/test_compilation.py``.)
"""

from __future__ import annotations

import pytest
import torch

from bayesdl import likelihoods, priors
from bayesdl.inference import HMC, NUTS, DensityErrorWarning
from bayesdl.models import BNN, MLP
from bayesdl.testing import stop_after


def _gaussian(theta: torch.Tensor) -> torch.Tensor:
    scales = torch.tensor([1.0, 3.0, 0.5], dtype=theta.dtype)
    return -0.5 * ((theta / scales) ** 2).sum(-1)


def _assert_same(resumed, reference) -> None:
    assert not resumed.partial
    assert torch.equal(resumed.theta, reference.theta)
    assert set(resumed.sample_stats) == set(reference.sample_stats)
    for name, value in reference.sample_stats.items():
        assert torch.equal(resumed.sample_stats[name], value), name
    assert resumed.attrs == reference.attrs


@pytest.mark.parametrize(
    "sampler",
    [
        NUTS(chains=2, warmup=30, draws=6, mass="dense"),
        HMC(chains=2, warmup=30, draws=6),  # the number of steps follows the step size
    ],
    ids=["nuts-dense", "hmc"],
)
@pytest.mark.parametrize("stop", [10, 26, 31])  # in the window [4, 27), after it, sampling
def test_sample_resumed_after_ctrl_c_equals_the_uninterrupted_run(tmp_path, sampler, stop):
    init = torch.zeros(2, 3)
    reference = sampler.sample(_gaussian, init, seed=3, progress=False)
    path = tmp_path / "run.ckpt"
    with pytest.warns(RuntimeWarning, match="interrupted during"):
        sampler.sample(
            _gaussian, init, seed=3, progress=False, checkpoint=path, callbacks=stop_after(stop)
        )
    _assert_same(sampler.sample(_gaussian, init, seed=4, progress=False, resume=path), reference)


def test_sample_refuses_the_checkpoint_of_another_shape_or_setting(tmp_path):
    path = tmp_path / "run.ckpt"
    NUTS(chains=2, warmup=3, draws=2).sample(
        _gaussian, torch.zeros(2, 3), seed=0, progress=False, checkpoint=path
    )
    with pytest.raises(ValueError, match=r"^resume: .*different run \(init_theta"):
        NUTS(chains=2, warmup=3, draws=2).sample(
            lambda t: -0.5 * (t**2).sum(-1), torch.zeros(2, 4), progress=False, resume=path
        )
    with pytest.raises(ValueError, match=r"^resume: .*different run \(backend"):
        NUTS(chains=2, warmup=3, draws=3).sample(
            _gaussian, torch.zeros(2, 3), progress=False, resume=path
        )


def test_a_resumed_run_leaves_the_global_rng_untouched(tmp_path):
    path = tmp_path / "run.ckpt"
    nuts = NUTS(chains=2, warmup=5, draws=4)
    with pytest.warns(RuntimeWarning, match="interrupted during"):
        nuts.sample(
            _gaussian,
            torch.zeros(2, 3),
            seed=0,
            progress=False,
            checkpoint=path,
            callbacks=stop_after(3),
        )
    state = torch.get_rng_state()
    nuts.sample(_gaussian, torch.zeros(2, 3), progress=False, resume=path)
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("option", ["checkpoint", "resume"])
def test_the_pyro_engine_refuses_checkpoints_naming_checkpoint(tmp_path, option):
    torch.manual_seed(0)
    bnn = BNN(MLP(2, [3], 1, "tanh"), priors.Gaussian(1.0), likelihoods.Gaussian(0.3))
    x, y = torch.randn(10, 2), torch.randn(10)
    with pytest.raises(ValueError, match=r"^checkpoint: engine='pyro' cannot"):
        NUTS(chains=1, warmup=2, draws=2, engine="pyro").fit(
            bnn, x, y, progress=False, **{option: tmp_path / "run.ckpt"}
        )


def _raising(theta: torch.Tensor) -> torch.Tensor:
    """A wide Gaussian that raises beyond ``|theta_0| = 2`` (as a failed factorisation does)."""
    if bool((theta[:, 0].abs() > 2.0).any()):
        raise ValueError("outside the domain")
    return -0.5 * ((theta / 3.0) ** 2).sum(-1)


def test_a_density_that_raises_resumes_with_its_counts_and_first_error(tmp_path):
    nuts = NUTS(chains=2, warmup=25, draws=10)
    init = torch.zeros(2, 2, dtype=torch.float64)
    with pytest.warns(DensityErrorWarning):
        reference = nuts.sample(_raising, init, seed=1, progress=False)
    raised = int(reference.sample_stats["density_raised"].sum())
    assert raised > 0 and reference.attrs["density_raised_warmup"] > 0
    assert "outside the domain" in reference.attrs["density_error"]
    for stop in (5, 30):
        path = tmp_path / f"run{stop}.ckpt"
        with pytest.warns(RuntimeWarning, match="interrupted during"):
            nuts.sample(
                _raising, init, seed=1, progress=False, checkpoint=path, callbacks=stop_after(stop)
            )
        with pytest.warns(DensityErrorWarning):
            resumed = nuts.sample(_raising, init, progress=False, resume=path)
        _assert_same(resumed, reference)
