"""SVGD with its particles shared over two processes (gloo on the CPU), and SVGD from a
DataLoader.

**Tolerance of the two-process runs.** Each step every process gathers the others' positions
and scores (or functions at the measurement set), forms the kernel over all ``P`` particles,
exactly the matrices of the one-process run, and keeps its own rows of the update; the
random draws (minibatches, measurement points, SSGE prior draws, Langevin noise) come from
streams every process holds alike. What differs is rounding only: the forward and backward
passes run over a block of the particles instead of all of them (batched matrix products of
another shape may sum in another order), and the hybrid kernel's pulled-back repulsion is
summed over the two processes. Each is a relative error of a few float64 epsilons
(``~1e-15``) per step in the update ``phi``; Adam's step ``lr * m / sqrt(v)`` carries a
relative error of ``phi`` over into a relative error of the step (``lr = 1e-2``), and over
``T = 12`` steps of a smooth flow on a 1-8-1 network the particles' error grows at most by a
factor ``(1 + lr * L)^T`` with a Lipschitz constant ``L`` of the update of order ``10^2``
here, i.e. a few ``e-14``. ``atol = 1e-9`` leaves five orders of margin for the growth and is
still twelve orders below a one-step difference of the run (``lr * |phi| ~ 1e-2``). (On
the machine these tests were written on, the small runs below agree bit for bit.)
"""

from __future__ import annotations

import os
import warnings

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from bayesdl import distributed, likelihoods, priors
from bayesdl.inference import ConvergenceWarning
from bayesdl.inference.particles.svgd import SVGD
from bayesdl.models import BNN, MLP

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
    reason="torch.distributed with gloo is not available",
)

DTYPE = torch.float64
ATOL = 1e-9  # see the module docstring

#: The settings run over two processes: 5 particles, blocks of 3 and 2.
SETTINGS = {
    "weight": {"kernel": "weight", "batch_size": 8},
    "stochastic": {
        "kernel": "weight",
        "batch_size": 8,
        "stochastic": True,
        "optimizer": torch.optim.SGD,
        "lr": 1e-3,
    },
    "function": {"kernel": "function", "batch_size": 8},
    "hybrid": {"kernel": "hybrid", "batch_size": 8},
}


def _problem() -> tuple[BNN, torch.Tensor, torch.Tensor]:
    """A 1-8-1 tanh MLP on a noisy sine."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = MLP(1, [8], 1, activation="tanh").to(DTYPE)
    bnn = BNN(net, priors.Gaussian(1.0), likelihoods.Gaussian(0.1))
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(24, 1, generator=gen, dtype=DTYPE) * 4 - 2
    y = torch.sin(2 * x[:, 0]) + 0.1 * torch.randn(24, generator=gen, dtype=DTYPE)
    return bnn, x, y


def _svgd(**settings: object) -> SVGD:
    return SVGD(particles=5, steps=12, **settings)


def _fit(svgd: SVGD, x: object = None, y: object = None, **kwargs: object) -> object:
    bnn, x0, y0 = _problem()
    x = x0 if x is None else x
    y = y0 if x is x0 else y
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", RuntimeWarning)  # "interrupted"
        return svgd.fit(bnn, x, y, seed=3, progress=False, **kwargs)


def _summary(posterior: object) -> dict[str, object]:
    return {
        "theta": posterior.theta,
        "lp": posterior.sample_stats["lp"],
        "partial": posterior.partial,
        "attrs": dict(posterior.attrs),
    }


def _stop_after(step: int):
    """A callback that stops the run (as Ctrl-C does) after ``step``."""

    def callback(event: object) -> None:
        if event.step == step:
            raise KeyboardInterrupt

    return callback


def _shuffled_loader() -> DataLoader:
    _, x, y = _problem()
    return DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True)


# ------------------------------------------------------------------------ workers
def _fits() -> dict[str, object]:
    """Every setting, and a shuffled DataLoader, in one process of the group."""
    out = {name: _summary(_fit(_svgd(**s))) for name, s in SETTINGS.items()}
    out["loader"] = _summary(_fit(_svgd(kernel="function"), _shuffled_loader()))
    try:
        _fit(SVGD(particles=1, kernel=None, steps=2))
    except ValueError as error:
        out["too_few"] = str(error)
    return out


def _interrupted_on_rank_1(stop: int) -> dict[str, object]:
    rank = torch.distributed.get_rank()
    seen: list[int] = []

    def callback(event: object) -> None:
        seen.append(event.step)
        if rank == 1 and event.step == stop:
            raise KeyboardInterrupt

    posterior = _fit(_svgd(**SETTINGS["function"]), callbacks=callback)
    return {"steps": len(seen), **_summary(posterior)}


def _resumed(folder: str) -> dict[str, object]:
    path = os.path.join(folder, "run.ckpt")
    whole = _fit(_svgd(**SETTINGS["hybrid"]))
    _fit(_svgd(**SETTINGS["hybrid"]), checkpoint=path, callbacks=_stop_after(5))
    resumed = _fit(_svgd(**SETTINGS["hybrid"]), resume=path)
    return {
        "whole": _summary(whole),
        "resumed": _summary(resumed),
        "files": sorted(os.listdir(folder)),
    }


def _sampled() -> object:
    def log_density(theta: torch.Tensor) -> torch.Tensor:
        return -0.5 * (theta**2).sum(-1)

    init = torch.linspace(-1.0, 1.0, 10, dtype=DTYPE).reshape(5, 2)
    svgd = SVGD(particles=5, steps=10, stochastic=True, optimizer=torch.optim.SGD, lr=1e-2)
    return _summary(svgd.sample(log_density, init, seed=1, progress=False))


# ------------------------------------------------------------------------ two processes
def test_two_processes_equal_one_process_within_rounding():
    single = {name: _summary(_fit(_svgd(**s))) for name, s in SETTINGS.items()}
    single["loader"] = _summary(_fit(_svgd(kernel="function"), _shuffled_loader()))
    root, other = distributed.spawn(_fits, 2)
    for name, reference in single.items():
        torch.testing.assert_close(root[name]["theta"], reference["theta"], rtol=0, atol=ATOL)
        torch.testing.assert_close(root[name]["lp"], reference["lp"], rtol=0, atol=ATOL)
        assert root[name]["attrs"]["distributed"] == "rank 0 of 2: all 5 particles"
        # rank 1 holds particles 3 and 4, the same as rank 0's copies of them
        assert torch.equal(other[name]["theta"], root[name]["theta"][:, 3:])
        assert torch.equal(other[name]["lp"], root[name]["lp"][:, 3:])
        assert other[name]["attrs"]["distributed"].startswith("rank 1 of 2: particles 3-4 of 5")
        assert not root[name]["partial"]
    for result in (root, other):
        assert result["too_few"].startswith("particles: 1 particles cannot be shared over 2")


def test_ctrl_c_on_one_rank_stops_both_after_the_same_step():
    results = distributed.spawn(_interrupted_on_rank_1, 2, 4)
    assert [r["steps"] for r in results] == [5, 5]
    assert all(r["partial"] for r in results)
    single = _fit(_svgd(**SETTINGS["function"]), callbacks=_stop_after(4))
    torch.testing.assert_close(results[0]["theta"], single.theta, rtol=0, atol=ATOL)


def test_checkpoint_per_rank_and_resume_equal_the_uninterrupted_run(tmp_path):
    for result in distributed.spawn(_resumed, 2, str(tmp_path)):
        assert result["files"] == ["run.ckpt.rank0of2", "run.ckpt.rank1of2"]
        assert torch.equal(result["resumed"]["theta"], result["whole"]["theta"])
        assert torch.equal(result["resumed"]["lp"], result["whole"]["lp"])
        assert not result["resumed"]["partial"]


def test_sample_shares_the_particles_and_their_noise():
    single = _sampled()
    root, other = distributed.spawn(_sampled, 2)
    torch.testing.assert_close(root["theta"], single["theta"], rtol=0, atol=ATOL)
    assert torch.equal(other["theta"], root["theta"][:, 3:])


def test_distributed_true_without_a_group_is_refused():
    bnn, x, y = _problem()
    with pytest.raises(ValueError, match=r"^distributed: no process group"):
        _svgd().fit(bnn, x, y, progress=False, distributed=True)
    with pytest.raises(TypeError, match=r"^distributed: expected a bool"):
        _svgd().fit(bnn, x, y, progress=False, distributed="yes")


# ------------------------------------------------------------------------ DataLoader
@pytest.mark.parametrize("kernel", ["weight", "function"])
def test_a_full_batch_loader_equals_the_tensors(kernel):
    _, x, y = _problem()
    tensors = _fit(_svgd(kernel=kernel))
    loader = DataLoader(TensorDataset(x, y), batch_size=len(x))
    from_loader = _fit(_svgd(kernel=kernel), loader)
    assert torch.equal(from_loader.theta, tensors.theta)
    assert torch.equal(from_loader.sample_stats["lp"], tensors.sample_stats["lp"])
    assert from_loader.attrs["batch_size"] == len(x)


def test_a_loader_sets_the_batch_size():
    _, x, y = _problem()
    loader = DataLoader(TensorDataset(x, y), batch_size=8)
    with pytest.raises(ValueError, match=r"^batch_size: the DataLoader sets"):
        _fit(_svgd(batch_size=8), loader)
    with pytest.raises(ValueError, match=r"^y: with data as a DataLoader"):
        _fit(_svgd(), loader, y)


def test_resume_with_a_shuffled_loader_equals_the_uninterrupted_run(tmp_path):
    whole = _fit(_svgd(kernel="function"), _shuffled_loader())
    path = tmp_path / "run.ckpt"
    stopped = _fit(
        _svgd(kernel="function"), _shuffled_loader(), checkpoint=path, callbacks=_stop_after(4)
    )
    assert stopped.partial  # stopped inside the second epoch (3 batches an epoch)
    resumed = _fit(_svgd(kernel="function"), _shuffled_loader(), resume=path)
    assert torch.equal(resumed.theta, whole.theta)
    assert torch.equal(resumed.sample_stats["lp"], whole.sample_stats["lp"])
    # a run resumed from its final checkpoint reads its last batch again for lp
    again = _fit(_svgd(kernel="function"), _shuffled_loader(), checkpoint=tmp_path / "end.ckpt")
    at_end = _fit(_svgd(kernel="function"), _shuffled_loader(), resume=tmp_path / "end.ckpt")
    assert torch.equal(at_end.sample_stats["lp"], again.sample_stats["lp"])
    assert torch.equal(at_end.theta, whole.theta)
