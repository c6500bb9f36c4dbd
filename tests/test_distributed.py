"""Runs shared over two processes (gloo on the CPU) equal the one-process runs.

Each test spawns two fresh processes (:func:`bayesdl.distributed.spawn`); the workers are the
module-level functions below. Small BNNs keep them quick.
"""

from __future__ import annotations

import os
import warnings

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from bayesdl import distributed, likelihoods, priors
from bayesdl.inference import NUTS, SGHMC, NonFiniteError
from bayesdl.models import BNN, MLP
from bayesdl.testing import FaultyMLP

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
    reason="torch.distributed with gloo is not available",
)


def _problem(faulty: bool = False) -> tuple[BNN, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(40, 2, generator=gen, dtype=torch.float64)
    y = torch.sin(x[:, 0]) + 0.1 * torch.randn(40, generator=gen, dtype=torch.float64)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = (FaultyMLP if faulty else MLP)(2, [5], 1, "tanh").double()
    return BNN(net, priors.Gaussian(1.0), likelihoods.Gaussian(0.3)), x, y


def _sghmc() -> SGHMC:
    return SGHMC(chains=3, lr=1e-3, batch_size=10, burn_in=10, draws=10, thin=1)


def _fit_sghmc(**kwargs: object) -> dict[str, object]:
    bnn, x, y = _problem()
    posterior = _sghmc().fit(bnn, x, y, seed=3, progress=False, **kwargs)
    return {"theta": posterior.theta, "attrs": dict(posterior.attrs)}


def _interrupted_on_rank_1(stop_at: int) -> dict[str, object]:
    bnn, x, y = _problem()
    rank = torch.distributed.get_rank()
    seen: list[int] = []

    def callback(event: object) -> None:
        seen.append(1)
        if rank == 1 and len(seen) == stop_at + 1:
            raise KeyboardInterrupt

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        posterior = _sghmc().fit(bnn, x, y, seed=3, progress=False, callbacks=callback)
    return {"steps": len(seen), "partial": posterior.partial, "theta": posterior.theta}


def _nan_on_rank_0(at: int) -> dict[str, object]:
    bnn, x, y = _problem(faulty=True)
    rank = torch.distributed.get_rank()
    seen: list[int] = []

    def callback(event: object) -> None:
        seen.append(1)
        if rank == 0 and len(seen) == at + 1:
            bnn.net.nan = True

    try:
        _sghmc().fit(bnn, x, y, seed=3, progress=False, callbacks=callback)
    except NonFiniteError as error:
        return {"steps": len(seen), "stopped": error.posterior.attrs["stopped"]}
    return {"steps": len(seen), "stopped": ""}


def _resume_sghmc(folder: str) -> dict[str, object]:
    bnn, x, y = _problem()
    path = os.path.join(folder, "run.ckpt")
    seen: list[int] = []

    def callback(event: object) -> None:
        seen.append(1)
        if len(seen) == 7:
            raise KeyboardInterrupt

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        _sghmc().fit(bnn, x, y, seed=3, progress=False, checkpoint=path, callbacks=callback)
    resumed = _sghmc().fit(bnn, x, y, seed=3, progress=False, resume=path)
    return {"theta": resumed.theta, "files": sorted(os.listdir(folder))}


def test_sghmc_data_parallel_equals_one_process():
    """The gradient of a minibatch is summed from two halves: equal up to the order of the
    floating-point sums (float64: rounding of 1e-16 relative per step, amplified over 20 steps
    of a contracting sampler, stays far below 1e-9)."""
    single = _fit_sghmc()
    ranks = distributed.spawn(_fit_sghmc, 2)
    for rank, result in enumerate(ranks):
        torch.testing.assert_close(result["theta"], single["theta"], rtol=0, atol=1e-9)
        assert result["attrs"]["distributed"].startswith(f"rank {rank} of 2: data parallel")


def test_ctrl_c_on_one_rank_stops_both_after_the_same_step():
    results = distributed.spawn(_interrupted_on_rank_1, 2, 5)
    assert [r["steps"] for r in results] == [6, 6]
    assert all(r["partial"] for r in results)
    torch.testing.assert_close(results[0]["theta"], results[1]["theta"], rtol=0, atol=0)


def test_nan_on_one_rank_stops_both():
    results = distributed.spawn(_nan_on_rank_0, 2, 4)
    assert [r["stopped"] for r in results] == ["non-finite", "non-finite"]
    assert results[0]["steps"] == results[1]["steps"] < 20


def test_checkpoint_per_rank_and_resume_under_two_processes(tmp_path):
    single = _fit_sghmc()
    results = distributed.spawn(_resume_sghmc, 2, str(tmp_path))
    assert results[0]["files"] == ["run.ckpt.rank0of2", "run.ckpt.rank1of2"]
    for result in results:
        torch.testing.assert_close(result["theta"], single["theta"], rtol=0, atol=1e-9)


def test_distributed_true_without_a_group_is_refused():
    bnn, x, y = _problem()
    with pytest.raises(ValueError, match=r"^distributed: no process group"):
        _sghmc().fit(bnn, x, y, progress=False, distributed=True)
    with pytest.raises(TypeError, match=r"^distributed: expected a bool"):
        _sghmc().fit(bnn, x, y, progress=False, distributed="yes")


def test_ranks_split_chains_into_contiguous_blocks():
    group = distributed.Ranks(1, 3)
    assert group.counts(7) == [3, 2, 2]
    assert group.block(7) == (3, 5)
    assert [distributed.Ranks(r, 3).block(7) for r in range(3)] == [(0, 3), (3, 5), (5, 7)]


def _loader_fit(batch_size: int) -> dict[str, object]:
    bnn, x, y = _problem()
    loader = DataLoader(TensorDataset(x, y), batch_size=batch_size)
    sampler = SGHMC(chains=3, lr=1e-3, burn_in=10, draws=10, thin=1)
    posterior = sampler.fit(bnn, loader, seed=3, progress=False)
    return {"theta": posterior.theta}


def test_a_dataloader_is_sharded_over_ranks_and_equals_one_process():
    """Each rank reads its half of the rows (DistributedSampler); the union of the two
    batches is the full data, so the run equals the one-process full-batch run up to the
    order of the sums (tolerance as above)."""
    bnn, x, y = _problem()
    sampler = SGHMC(chains=3, lr=1e-3, burn_in=10, draws=10, thin=1)
    single = sampler.fit(bnn, x, y, seed=3, progress=False)
    for result in distributed.spawn(_loader_fit, 2, 20):
        torch.testing.assert_close(result["theta"], single.theta, rtol=0, atol=1e-9)


def _nuts_fit(chains: int) -> dict[str, object]:
    bnn, x, y = _problem()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        posterior = NUTS(chains=chains, warmup=8, draws=6, max_tree_depth=4).fit(
            bnn, x, y, seed=5, progress=False
        )
    return {
        "theta": posterior.theta,
        "stats": dict(posterior.sample_stats),
        "attrs": dict(posterior.attrs),
    }


def test_nuts_chains_split_over_ranks_equal_one_process_bit_for_bit():
    single = _nuts_fit(3)
    results = distributed.spawn(_nuts_fit, 2, 3)
    root, other = results
    assert torch.equal(root["theta"], single["theta"])
    for name, value in single["stats"].items():
        assert torch.equal(root["stats"][name], value), name
    assert root["attrs"]["distributed"] == "rank 0 of 2: all 3 chains"
    assert torch.equal(other["theta"], single["theta"][2:])  # rank 1 holds chain 2
    assert other["attrs"]["distributed"].startswith("rank 1 of 2: chains 2-2 of 3")


def _nuts_sample() -> object:
    def log_density(theta: torch.Tensor) -> torch.Tensor:
        return -0.5 * (theta**2).sum(-1)

    init = torch.linspace(-1.0, 1.0, 8, dtype=torch.float64).reshape(4, 2)
    return NUTS(chains=4, warmup=10, draws=10).sample(log_density, init, seed=1, progress=False)


def test_nuts_sample_splits_chains_over_ranks():
    single = _nuts_sample()
    root = distributed.spawn(_nuts_sample, 2)[0]
    assert torch.equal(root.theta, single.theta)


def _auto_probe(loop_max_elements: int | None = None) -> list[float]:
    """The leapfrog steps ``compile="auto"`` projects for the run, on this process (the
    choice itself is stubbed out: no compiling); ``loop_max_elements=0``: no loop possible."""
    from bayesdl.inference.mcmc import nuts as nuts_module
    from bayesdl.inference.mcmc import run as mcmc_run

    projected: list[float] = []

    def record(leaves_per_transition: float, transitions: int, device: object) -> bool:
        projected.append(leaves_per_transition * transitions)
        return False

    scales = torch.tensor([1.0, 30.0], dtype=torch.float64)

    def log_density(theta: torch.Tensor) -> torch.Tensor:
        return -0.5 * ((theta * scales) ** 2).sum(-1)

    init = torch.linspace(-1.0, 1.0, 8, dtype=torch.float64).reshape(4, 2)
    saved = mcmc_run.choose_compiled, mcmc_run.AUTO_PROBE, mcmc_run.AUTO_MIN_LEAVES
    loop = nuts_module.LOOP_MAX_ELEMENTS
    mcmc_run.choose_compiled, mcmc_run.AUTO_PROBE = record, 3
    if loop_max_elements is not None:  # and any projection long enough to compile early
        nuts_module.LOOP_MAX_ELEMENTS, mcmc_run.AUTO_MIN_LEAVES = loop_max_elements, 1
    try:  # also called in the test's own process: put the modules back
        NUTS(chains=4, warmup=10, draws=2).sample(log_density, init, seed=1, progress=False)
    finally:
        mcmc_run.choose_compiled, mcmc_run.AUTO_PROBE, mcmc_run.AUTO_MIN_LEAVES = saved
        nuts_module.LOOP_MAX_ELEMENTS = loop
    return projected


def test_compile_auto_probes_the_lockstep_of_all_chains_on_every_rank():
    """Chains split over processes count, while ``compile="auto"`` probes, the most steps of
    any chain on any rank: every rank makes the choice a one-process run makes."""
    single = _auto_probe()
    assert distributed.spawn(_auto_probe, 2) == [single, single]


def test_split_runs_keep_the_whole_probe_where_no_loop_can_be_chosen():
    """One process ends the probe after one transition where no loop can be chosen; ranks
    (which may differ on the loop, holding different numbers of chains) all probe for
    AUTO_PROBE transitions: the projection is made from three transitions, not one."""
    whole_probe = _auto_probe()
    assert _auto_probe(0) != whole_probe  # one process: projected from the first transition
    ranks = distributed.spawn(_auto_probe, 2, 0)
    assert ranks == [whole_probe, whole_probe]


def _fit_and_save(folder: str) -> dict[str, object]:
    bnn, x, y = _problem()
    posterior = _sghmc().fit(bnn, x, y, seed=3, progress=False)
    posterior.save(os.path.join(folder, "posterior.pt"))
    return {"files": sorted(os.listdir(folder))}


def test_only_rank_0_writes_a_saved_posterior(tmp_path):
    folders = [tmp_path / "rank0", tmp_path / "rank1"]
    for folder in folders:
        folder.mkdir()
    results = distributed.spawn(_fit_on_own_folder, 2, [str(f) for f in folders])
    assert results[0]["files"] == ["posterior.pt"]
    assert results[1]["files"] == []


def _fit_on_own_folder(folders: list[str]) -> dict[str, object]:
    return _fit_and_save(folders[torch.distributed.get_rank()])


def _register_exit_marker(path: str) -> int:
    import atexit

    atexit.register(lambda: open(path, "w").close())
    return distributed.all_reduce_max(torch.distributed.get_rank())


def test_spawned_processes_end_without_the_interpreters_finalisation(tmp_path):
    """Finalisation can abort a process whose gloo threads still release tensors (SIGABRT
    after the result was stored): spawn's processes end before it, so exit handlers never
    run, while the results still come back."""
    marker = tmp_path / "finalised"
    assert distributed.spawn(_register_exit_marker, 2, str(marker)) == [1, 1]
    assert not marker.exists()
