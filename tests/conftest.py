"""Shared fixtures. Seeds are fixed so runs are repeatable; set BAYESDL_TEST_SEED to vary them
(every statistical tolerance is derived from Monte Carlo error, not tuned to a seed)."""

from __future__ import annotations

import os
import pathlib
import signal

import pytest
import torch
from pyro.infer.mcmc.util import initialize_model

SEED = int(os.environ.get("BAYESDL_TEST_SEED", "0"))


@pytest.fixture
def seed() -> int:
    """The base seed of a test (``BAYESDL_TEST_SEED``, default 0)."""
    return SEED


@pytest.fixture
def shared_data() -> pathlib.Path:
    """The shared data folder (``BAYESDL_DATA``), or skip when it is absent."""
    env = os.environ.get("BAYESDL_DATA")
    if not env:
        pytest.skip("BAYESDL_DATA is not set: the shared data folder is needed for this test")
    path = pathlib.Path(env)
    if not path.is_dir():
        pytest.skip(f"BAYESDL_DATA={env!r} is not a directory: shared data folder absent")
    return path


@pytest.fixture(autouse=True, scope="session")
def _sigint_not_ignored():
    """Give the suite Python's own SIGINT handler when it was started with SIGINT ignored (a
    background job of a non-interactive shell inherits ``SIG_IGN``): the Ctrl-C tests send
    SIGINT to this process and must receive it. Restored after the session."""
    ignored = signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    if ignored:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    if ignored:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.fixture(autouse=True, scope="session")
def _torch_threads():
    """Run the suite single-threaded (``BAYESDL_TEST_THREADS`` to change it).

    The tests use small tensors, for which OpenMP threads only add synchronisation; on a loaded
    machine they slowed small operations a hundredfold.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("BAYESDL_TEST_THREADS", "1")))
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _float64_default():
    """Tests run in float32 unless they ask otherwise; restore torch's default dtype after."""
    dtype = torch.get_default_dtype()
    yield
    torch.set_default_dtype(dtype)


def _pyro_log_joint(bnn, theta: torch.Tensor, args: tuple) -> torch.Tensor:
    """Log joint of unconstrained theta from Pyro itself: -potential energy, one row at a time."""
    _, potential, _, _ = initialize_model(bnn.model, args)
    rows = []
    for row in theta:
        unconstrained = {k: v[0] for k, v in bnn.unravel(row[None], constrained=False).items()}
        rows.append(-potential(unconstrained))
    return torch.stack(rows)


@pytest.fixture
def pyro_log_joint():
    """``(bnn, theta, model_args) -> (P,)``: the reference every ``bnn.log_joint`` test uses."""
    return _pyro_log_joint
