"""Minibatch backends take data as a DataLoader (or IterableDataset): data that do not fit in
memory (:mod:`bayesdl.inference.loaders`)."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

from bayesdl import likelihoods, priors
from bayesdl.inference import SGHMC, SGLD
from bayesdl.models import BNN, MLP
from bayesdl.testing import stop_after


def _problem() -> tuple[BNN, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(30, 2, generator=gen)
    y = torch.sin(x[:, 0]) + 0.1 * torch.randn(30, generator=gen)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = MLP(2, [4], 1, "tanh")
    return BNN(net, priors.Gaussian(1.0), likelihoods.Gaussian(0.3)), x, y


def _sampler(**kwargs: object) -> SGHMC:
    return SGHMC(chains=2, lr=1e-3, burn_in=6, draws=6, thin=1, **kwargs)


class _Stream(IterableDataset):
    """Rows one at a time, with no length (a stream read from disk)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __iter__(self):
        return iter(zip(self.x, self.y, strict=True))


def test_a_full_batch_loader_equals_the_tensors():
    bnn, x, y = _problem()
    tensors = _sampler().fit(bnn, x, y, seed=0, progress=False)
    loader = DataLoader(TensorDataset(x, y), batch_size=len(x))
    from_loader = _sampler().fit(bnn, loader, seed=0, progress=False)
    torch.testing.assert_close(from_loader.theta, tensors.theta, rtol=0, atol=0)


def test_a_shuffled_loader_follows_the_seed_and_leaves_the_global_rng_alone():
    bnn, x, y = _problem()
    loader = DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True)
    state = torch.get_rng_state()
    first = SGLD(chains=2, lr=1e-3, burn_in=6, draws=6, thin=1).fit(
        bnn, loader, seed=4, progress=False
    )
    assert torch.equal(torch.get_rng_state(), state), "the loader's shuffles used the global RNG"
    again = SGLD(chains=2, lr=1e-3, burn_in=6, draws=6, thin=1).fit(
        bnn, loader, seed=4, progress=False
    )
    assert torch.equal(first.theta, again.theta)
    other = SGLD(chains=2, lr=1e-3, burn_in=6, draws=6, thin=1).fit(
        bnn, loader, seed=5, progress=False
    )
    assert not torch.equal(first.theta, other.theta)


def test_resume_with_a_shuffled_loader_equals_the_uninterrupted_run(tmp_path):
    bnn, x, y = _problem()
    loader = DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True)  # 3 batches an epoch
    whole = _sampler().fit(bnn, loader, seed=2, progress=False)
    path = tmp_path / "run.ckpt"
    stop = stop_after(4)  # the fifth step: inside the second epoch
    with pytest.warns(RuntimeWarning, match="interrupted"):
        _sampler().fit(bnn, loader, seed=2, progress=False, checkpoint=path, callbacks=stop)
    resumed = _sampler().fit(bnn, loader, seed=2, progress=False, resume=path)
    assert torch.equal(resumed.theta, whole.theta)


def test_an_iterable_dataset_needs_batch_size_and_num_data():
    bnn, x, y = _problem()
    with pytest.raises(ValueError, match=r"^batch_size: an IterableDataset"):
        _sampler().fit(bnn, _Stream(x, y), progress=False)
    with pytest.raises(ValueError, match=r"^num_data: the DataLoader's dataset has no length"):
        _sampler(batch_size=10).fit(bnn, _Stream(x, y), progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        post = _sampler(batch_size=10).fit(bnn, _Stream(x, y), num_data=30, seed=0, progress=False)
    assert post.theta.shape == (2, 6, bnn.num_params)
    assert torch.isfinite(post.theta).all()


def test_bad_loaders_are_refused_naming_the_argument():
    bnn, x, y = _problem()
    loader = DataLoader(TensorDataset(x, y), batch_size=8)
    with pytest.raises(ValueError, match=r"^y: with data as a DataLoader"):
        _sampler().fit(bnn, loader, y, progress=False)
    with pytest.raises(ValueError, match=r"^batch_size: the DataLoader sets the batch size"):
        _sampler(batch_size=4).fit(bnn, loader, progress=False)
    with pytest.raises(TypeError, match=r"^x: each batch of the DataLoader must be a pair"):
        _sampler().fit(bnn, DataLoader(TensorDataset(x), batch_size=8), progress=False)
    bad = y.clone()
    bad[20] = float("nan")  # in the third batch: found when that batch is read
    with pytest.raises(ValueError, match=r"^y: .*NaN"):
        _sampler().fit(bnn, DataLoader(TensorDataset(x, bad), batch_size=8), progress=False)


def test_predict_and_evaluate_take_a_dataloader():
    bnn, x, y = _problem()
    posterior = _sampler().fit(bnn, x, y, seed=0, progress=False)
    loader = DataLoader(TensorDataset(x, y), batch_size=7)  # 5 batches, the last of 2 rows
    whole = posterior.predict(x)
    batched = posterior.predict(loader)
    torch.testing.assert_close(batched.samples, whole.samples)
    torch.testing.assert_close(batched.log_prob(y), whole.log_prob(y))
    inputs_only = posterior.predict(DataLoader(x, batch_size=7))
    torch.testing.assert_close(inputs_only.samples, whole.samples)
    expected = posterior.evaluate(x, y)
    got = posterior.evaluate(loader)
    assert got.keys() == expected.keys()
    for name in expected:
        assert abs(got[name] - expected[name]) <= 1e-6 * max(1.0, abs(expected[name])), name
    with pytest.raises(ValueError, match=r"^y: with x a DataLoader"):
        posterior.evaluate(loader, y)
    with pytest.raises(TypeError, match=r"^x: to evaluate, each batch"):
        posterior.evaluate(DataLoader(x, batch_size=7))
    with pytest.raises(ValueError, match=r"^y: has 29 rows but x has 30"):
        batched.log_prob(y[:-1])
