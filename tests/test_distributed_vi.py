"""VI and SSVI data parallel over two processes (gloo on the CPU), and from DataLoaders.

The two-process runs spawn fresh processes (:func:`bayesdl.distributed.spawn`); the workers
are the module-level functions below. Everything runs in float64 on small BNNs.

**Tolerance of "equals the one-process run".** A two-process step computes the same numbers
as a one-process step on the same global minibatch except for the order of floating-point
sums: the log-likelihood of the 10 rows is summed as two halves of 5, each weighted by
``n_r / B = 1/2`` (exact in binary), the KL term is counted as two halves (exact), and the
gradients are summed over the two processes. The guide's draws and the per-example noise of
the local reparameterisation are the same numbers in both runs. So a step's gradient differs
by rounding only: a few ulps (``2**-52 ~ 2.2e-16`` relative) of the summed terms, whose size
is O(100) here (40 rows, noise scale 0.3), i.e. ~1e-13 absolute. A step moves the guide by
``lr`` times that (SGD, ``lr = 1e-3``; Adam's step is the ratio of two moments that carry the
same relative rounding, ~1e-15 of a step of at most ``lr = 1e-2``), so each step adds ~1e-16
to a guide value, and the 23 steps (3 MAP + 20 ELBO) of contracting optimisation (small
steps, no expansion larger than ``1 + lr * L`` with ``lr * L < 1``) leave ~1e-14 at most.
Measured: at most 1.5e-15 on the guide and the draws. We use ``atol = 1e-10`` there, 1e4
above the bound. The ELBO trace is O(1e3), so its ulp is ~1e-13 (measured 2.3e-13); it is
compared with ``rtol = 1e-12``. Real errors are far larger: summing the processes' unweighted
losses (every gradient doubled) moves the SGD guide by ~2.7, drawing the per-example noise of
the wrong rows by ~7e-3 (both measured). VI uses SGD on purpose: Adam is invariant to a
uniform scaling of the gradients and would hide the first error.

SSVI's masks are decisions on the summed dense gradient (top-k of its magnitudes); they are
compared exactly (a tie broken differently by rounding would need two magnitudes within
~1e-13 of each other).
"""

from __future__ import annotations

import os
import warnings

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from bayesdl import distributed, likelihoods, priors
from bayesdl._seeding import seeded
from bayesdl.inference import SSVI, VI
from bayesdl.inference.vi.local_reparam import LayerNoise, RowBlock, local_reparameterization
from bayesdl.models import BNN, MLP

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
    reason="torch.distributed with gloo is not available",
)

#: Tolerances of "equals the one-process run": see the module docstring.
ATOL = 1e-10
TRACE_RTOL = 1e-12


def _problem() -> tuple[BNN, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(40, 2, generator=gen, dtype=torch.float64)
    y = torch.sin(x[:, 0]) + 0.1 * torch.randn(40, generator=gen, dtype=torch.float64)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = MLP(2, [6], 1, "tanh").double()
    return BNN(net, priors.Gaussian(1.0), likelihoods.Gaussian(0.3)), x, y


def _vi(**kwargs: object) -> VI:
    settings = dict(
        steps=20,
        batch_size=10,
        num_particles=2,
        init="map",
        init_steps=3,
        draws=6,
        optimizer="sgd",
        lr=1e-3,
    )
    return VI(**{**settings, **kwargs})


def _ssvi(**kwargs: object) -> SSVI:
    settings = dict(
        density=0.5, update_every=4, drop_fraction=0.5, steps=20, batch_size=10, draws=6
    )
    return SSVI(**{**settings, **kwargs})


def _summary(posterior: object) -> dict[str, object]:
    attrs = posterior.attrs
    return {
        "theta": posterior.theta,
        "loc": attrs["variational"]["loc"],
        "scale": attrs["variational"]["scale"],
        "mask": attrs["variational"].get("mask"),
        "trace": attrs["elbo_trace"],
        "note": attrs.get("distributed", ""),
        "local_reparam": attrs["local_reparam"],
    }


def _assert_close(result: dict[str, object], single: dict[str, object]) -> None:
    for name in ("theta", "loc", "scale"):
        torch.testing.assert_close(result[name], single[name], rtol=0, atol=ATOL, msg=name)
    torch.testing.assert_close(result["trace"], single["trace"], rtol=TRACE_RTOL, atol=0)


# ------------------------------------------------------------------ workers (both ranks)
def _fit_both() -> dict[str, object]:
    """VI (MAP stage, then the ELBO with the local reparameterisation) and SSVI (gradient
    growth) on minibatches of 10 rows, five per process."""
    bnn, x, y = _problem()
    vi = _vi().fit(bnn, x, y, seed=3, progress=False)
    ssvi = _ssvi().fit(bnn, x, y, seed=3, progress=False)
    return {"vi": _summary(vi), "ssvi": _summary(ssvi)}


def _loader_fits() -> dict[str, object]:
    """A DataLoader sharded over the ranks: unshuffled full halves (each rank reads every
    other row), and a shuffled one of 8 rows a batch (each rank 4)."""
    bnn, x, y = _problem()
    halves = DataLoader(TensorDataset(x, y), batch_size=20)
    whole = _vi(init="prior", batch_size=None).fit(bnn, halves, seed=3, progress=False)
    shuffled = DataLoader(TensorDataset(x, y), batch_size=4, shuffle=True)
    sparse = _ssvi(batch_size=None).fit(bnn, shuffled, seed=3, progress=False)
    return {"halves": _summary(whole), "shuffled": _summary(sparse)}


def _errors_under_a_group() -> list[str]:
    bnn, x, y = _problem()
    messages = []
    for fit in (
        lambda: VI(steps=2, engine="pyro").fit(bnn, x, y, progress=False),
        lambda: VI(steps=2, batch_size=1).fit(bnn, x, y, progress=False),
    ):
        try:
            fit()
        except ValueError as error:
            messages.append(str(error))
    # distributed=False keeps the fit in this process, the Pyro engine included
    VI(steps=2, engine="pyro").fit(bnn, x, y, progress=False, distributed=False)
    return messages


def _resume_both(folder: str) -> dict[str, object]:
    bnn, x, y = _problem()
    path = os.path.join(folder, "run.ckpt")
    seen: list[int] = []

    def stop(event: object) -> None:
        seen.append(1)
        if len(seen) == 9:
            raise KeyboardInterrupt

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        _ssvi().fit(bnn, x, y, seed=3, progress=False, checkpoint=path, callbacks=stop)
    resumed = _ssvi().fit(bnn, x, y, seed=3, progress=False, resume=path)
    return {"ssvi": _summary(resumed), "files": sorted(os.listdir(folder))}


# ------------------------------------------------------------------ two processes
def test_vi_and_ssvi_data_parallel_equal_the_one_process_run():
    bnn, x, y = _problem()
    single_vi = _summary(_vi().fit(bnn, x, y, seed=3, progress=False))
    single_ssvi = _summary(_ssvi().fit(bnn, x, y, seed=3, progress=False))
    assert single_vi["local_reparam"] == 1
    results = distributed.spawn(_fit_both, 2)
    for rank, result in enumerate(results):
        _assert_close(result["vi"], single_vi)
        _assert_close(result["ssvi"], single_ssvi)
        # the masks are decisions on summed gradients: the same masks, exactly
        assert torch.equal(result["ssvi"]["mask"], single_ssvi["mask"])
        assert result["vi"]["note"] == f"rank {rank} of 2: data parallel, whole guide"
    # every rank holds the same guide, bit for bit
    for name in ("theta", "loc", "scale", "trace"):
        assert torch.equal(results[0]["vi"][name], results[1]["vi"][name]), name
        assert torch.equal(results[0]["ssvi"][name], results[1]["ssvi"][name]), name


def test_a_dataloader_sharded_over_two_ranks():
    """Unshuffled halves: rank 0 reads rows 0, 2, 4, ..., rank 1 rows 1, 3, 5, ...
    (DistributedSampler), so the global minibatch is the data in that order: the run equals
    the one-process full-batch run on the reordered tensors (the per-example noise follows
    the rows). Shuffled: both ranks keep the same guide, bit for bit."""
    bnn, x, y = _problem()
    order = torch.cat([torch.arange(0, 40, 2), torch.arange(1, 40, 2)])
    single = _summary(
        _vi(init="prior", batch_size=None).fit(bnn, x[order], y[order], seed=3, progress=False)
    )
    results = distributed.spawn(_loader_fits, 2)
    for result in results:
        _assert_close(result["halves"], single)
    for name in ("theta", "loc", "scale", "trace", "mask"):
        assert torch.equal(results[0]["shuffled"][name], results[1]["shuffled"][name]), name
    assert results[0]["shuffled"]["trace"].shape == (1, 20)


def test_resume_under_two_processes_equals_the_one_process_run(tmp_path):
    bnn, x, y = _problem()
    single = _summary(_ssvi().fit(bnn, x, y, seed=3, progress=False))
    results = distributed.spawn(_resume_both, 2, str(tmp_path))
    assert results[0]["files"] == ["run.ckpt.rank0of2", "run.ckpt.rank1of2"]
    for result in results:
        _assert_close(result["ssvi"], single)
        assert torch.equal(result["ssvi"]["mask"], single["mask"])


def test_errors_under_a_process_group_name_the_argument():
    messages = distributed.spawn(_errors_under_a_group, 2)[0]
    assert messages[0].startswith("distributed: the Pyro engine runs in one process only")
    assert messages[1].startswith("batch_size: 1 rows cannot be shared over 2 processes")


# ------------------------------------------------------------------ one process
@pytest.mark.parametrize("conv", [False, True])
def test_a_block_of_rows_gets_the_noise_of_those_rows_in_the_global_minibatch(conv):
    """Local reparameterisation on rows 3-6 of 8 (two particles stacked along the rows, as
    the ELBO tiles them): exactly rows 3-6 of each particle's output on all 8 rows."""
    gen = torch.Generator().manual_seed(0)
    layer = (nn.Conv1d(2, 3, 3, padding=1) if conv else nn.Linear(4, 3)).double()
    x = torch.randn(8, *((2, 5) if conv else (4,)), generator=gen, dtype=torch.float64)
    std_w = torch.rand(layer.weight.shape, generator=gen, dtype=torch.float64)
    std_b = torch.rand(3, generator=gen, dtype=torch.float64)
    noise = {"": LayerNoise(std_w, std_b)}
    with seeded(1), local_reparameterization(layer, noise):
        whole = layer(x.repeat(2, *([1] * (x.dim() - 1))))
    block = x[3:7].repeat(2, *([1] * (x.dim() - 1)))
    with seeded(1), local_reparameterization(layer, noise, RowBlock(3, 7, 8)):
        part = layer(block)
    assert torch.equal(
        part.reshape(2, 4, *part.shape[1:]), whole.reshape(2, 8, *part.shape[1:])[:, 3:7]
    )
    with pytest.raises(ValueError, match=r"^shape: 5 rows are not copies of a block of 4"):
        RowBlock(3, 7, 8).standard_normal((5, 3), torch.float64, torch.device("cpu"))


def test_a_full_batch_loader_equals_the_tensors_exactly():
    bnn, x, y = _problem()
    tensors = _vi(batch_size=None).fit(bnn, x, y, seed=1, progress=False)
    loader = DataLoader(TensorDataset(x, y), batch_size=len(x))
    from_loader = _vi(batch_size=None).fit(bnn, loader, seed=1, progress=False)
    assert torch.equal(from_loader.theta, tensors.theta)
    assert torch.equal(from_loader.attrs["elbo_trace"], tensors.attrs["elbo_trace"])
    assert from_loader.attrs["batch_size"] == len(x)
    assert "distributed" not in from_loader.attrs


def test_a_shuffled_loader_follows_the_seed_and_leaves_the_global_rng_alone():
    bnn, x, y = _problem()
    loader = DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True)
    state = torch.get_rng_state()
    first = _ssvi(batch_size=None).fit(bnn, loader, seed=4, progress=False)
    assert torch.equal(torch.get_rng_state(), state), "the fit used the global RNG"
    again = _ssvi(batch_size=None).fit(bnn, loader, seed=4, progress=False)
    assert torch.equal(first.theta, again.theta)
    other = _ssvi(batch_size=None).fit(bnn, loader, seed=5, progress=False)
    assert not torch.equal(first.theta, other.theta)


@pytest.mark.parametrize("backend", [_vi, _ssvi])
def test_resume_from_a_loader_checkpoint_equals_the_uninterrupted_run(tmp_path, backend):
    bnn, x, y = _problem()
    loader = DataLoader(TensorDataset(x[:30], y[:30]), batch_size=8, shuffle=True)  # 4 a pass
    whole = backend(batch_size=None).fit(bnn, loader, seed=2, progress=False)
    path = tmp_path / "run.ckpt"
    seen: list[int] = []

    def stop(event: object) -> None:
        seen.append(1)
        if len(seen) == 10:  # the tenth batch: inside the third pass
            raise KeyboardInterrupt

    with pytest.warns(RuntimeWarning, match="interrupted"):
        backend(batch_size=None).fit(
            bnn, loader, seed=2, progress=False, checkpoint=path, callbacks=stop
        )
    resumed = backend(batch_size=None).fit(bnn, loader, seed=2, progress=False, resume=path)
    assert torch.equal(resumed.theta, whole.theta)
    assert torch.equal(resumed.attrs["elbo_trace"], whole.attrs["elbo_trace"])
    assert torch.equal(resumed.sample_stats["log_q"], whole.sample_stats["log_q"])


def test_bad_inputs_name_the_argument():
    bnn, x, y = _problem()
    loader = DataLoader(TensorDataset(x, y), batch_size=8)
    with pytest.raises(ValueError, match=r"^y: with data as a DataLoader"):
        VI(steps=2).fit(bnn, loader, y, progress=False)
    with pytest.raises(ValueError, match=r"^batch_size: the DataLoader sets the batch size"):
        VI(steps=2, batch_size=8).fit(bnn, loader, progress=False)
    with pytest.raises(ValueError, match=r"^distributed: no process group"):
        VI(steps=2).fit(bnn, x, y, progress=False, distributed=True)
    with pytest.raises(TypeError, match=r"^distributed: expected a bool"):
        SSVI(steps=2).fit(bnn, x, y, progress=False, distributed="yes")
    with pytest.raises(ValueError, match=r"^distributed: no process group"):
        VI(steps=2, engine="pyro").fit(bnn, x, y, progress=False, distributed=True)
    bad = DataLoader(TensorDataset(x), batch_size=8)  # batches of x alone
    with pytest.raises(TypeError, match=r"^x: each batch of the DataLoader must be a pair"):
        VI(steps=2).fit(bnn, bad, progress=False)
