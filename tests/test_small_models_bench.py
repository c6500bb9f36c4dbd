"""The posteriordb densities of ``benchmarks/small_models.py``: torch, jax and Pyro agree.

Needs the shared data folder (``BAYESDL_DATA``) and, for the jax side, NumPyro's extra
(``pip install -e .[bench]``); skips otherwise.
"""

from __future__ import annotations

import math
import pathlib
import sys

import numpy as np
import pytest
import torch

BENCHMARKS = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.append(str(BENCHMARKS))

import posteriordb_models as pdb  # noqa: E402


@pytest.mark.parametrize("name", pdb.POSTERIORS)
def test_torch_and_jax_densities_agree(shared_data: pathlib.Path, name: str) -> None:
    """Differences of the log density between random points match in torch and jax."""
    pytest.importorskip("jax")
    model = pdb.load_model(name, shared_data)
    mismatch = pdb.check_agreement(model, points=6, seed=1)
    assert mismatch < 1e-6


@pytest.mark.parametrize("name", pdb.POSTERIORS)
def test_torch_density_is_vectorised(shared_data: pathlib.Path, name: str) -> None:
    """A batch of points gives the densities of the points one by one, and finite gradients."""
    model = pdb.load_model(name, shared_data)
    theta = torch.as_tensor(
        np.random.default_rng(0).uniform(-2, 2, (3, model.dim)), dtype=torch.float64
    )
    theta.requires_grad_(True)
    batch = model.log_density(theta)
    assert batch.shape == (3,)
    single = torch.stack([model.log_density(row[None])[0] for row in theta])
    torch.testing.assert_close(batch, single)
    (grad,) = torch.autograd.grad(batch.sum(), theta)
    assert torch.isfinite(grad).all()


def test_known_value_eight_schools(shared_data: pathlib.Path) -> None:
    """At theta = 0 (tau = 1, mu = 0) the density is a sum of closed-form terms."""
    model = pdb.load_model("eight_schools-eight_schools_noncentered", shared_data)
    data = pdb.load_data("eight_schools", shared_data)
    y, sigma = np.array(data["y"], float), np.array(data["sigma"], float)
    half_log_2pi = 0.5 * math.log(2 * math.pi)
    expected = (
        8 * (-half_log_2pi)  # theta_trans ~ N(0, 1) at 0
        + float(np.sum(-0.5 * (y / sigma) ** 2 - np.log(sigma) - half_log_2pi))
        + (-math.log(5) - half_log_2pi)  # mu ~ N(0, 5) at 0
        + (-math.log1p(1 / 25) - math.log(5) - math.log(math.pi))  # tau ~ Cauchy(0, 5) at 1
        + 0.0  # log-Jacobian log tau
    )
    value = float(model.log_density(torch.zeros(1, model.dim, dtype=torch.float64))[0])
    assert value == pytest.approx(expected, rel=1e-12)


def test_pyro_model_potential_is_minus_the_density(shared_data: pathlib.Path) -> None:
    """Pyro's potential energy of the wrapping model is the negative torch density."""
    from pyro.infer.autoguide.initialization import init_to_value
    from pyro.infer.mcmc.util import initialize_model

    model = pdb.load_model("kidiq-kidscore_momiq", shared_data)
    theta = torch.tensor([20.0, 0.6, math.log(18.0)], dtype=torch.float64)
    _, potential, _, _ = initialize_model(
        pdb.pyro_model(model),
        max_plate_nesting=0,
        init_strategy=init_to_value(values={"theta": theta}),
    )
    energy = float(potential({"theta": theta}))
    assert energy == pytest.approx(-float(model.log_density(theta[None])[0]), rel=1e-12)
