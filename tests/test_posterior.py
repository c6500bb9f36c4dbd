"""Posterior: predictions, metrics, the ArviZ export, and save/load."""

from __future__ import annotations

import math
import warnings

import matplotlib
import numpy as np
import pyro.distributions as dist
import pytest
import torch

matplotlib.use("Agg")

from bayesdl import Posterior, diagnostics, likelihoods, priors
from bayesdl import posterior as posterior_module
from bayesdl._memory import PROBE_DRAWS, forward_cost
from bayesdl.arviz_bridge import import_arviz
from bayesdl.models import BNN, MLP

az = import_arviz()
C, S = 3, 40


def _regression(learned: bool = False) -> tuple[Posterior, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    noise = dist.HalfNormal(1.0) if learned else 0.5
    bnn = BNN(MLP(2, [6], 1, "tanh"), priors.Gaussian(1.0), likelihoods.Gaussian(noise))
    theta = 0.3 * torch.randn(C, S, bnn.num_params)
    stats = {"lp": torch.randn(C, S), "diverging": torch.zeros(C, S, dtype=torch.bool)}
    x = torch.randn(12, 2)
    y = torch.randn(12)
    return Posterior(theta, bnn, stats, attrs={"inference": "test"}), x, y


def _classifier() -> tuple[Posterior, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    bnn = BNN(MLP(2, [6], 3), priors.Gaussian(1.0), likelihoods.Categorical())
    theta = torch.randn(C, S, bnn.num_params)
    x = torch.randn(15, 2)
    y = torch.randint(0, 3, (15,))
    return Posterior(theta, bnn, kind="particles"), x, y


def test_predict_regression_summaries_from_the_definition():
    post, x, y = _regression(learned=True)
    pred = post.predict(x)
    f = post.bnn.forward(post.theta.reshape(C * S, -1), x)[..., 0]
    sigma = post.sites()["likelihood.scale"].reshape(C * S, 1)
    assert pred.samples.shape == (C, S, 12, 1)
    torch.testing.assert_close(pred.mean, f.mean(0))
    # law of total variance: Var f + E sigma^2
    torch.testing.assert_close(pred.std, (f.var(0, correction=0) + (sigma**2).mean(0)).sqrt())
    normal = torch.distributions.Normal(f, sigma)
    expected = torch.logsumexp(normal.log_prob(y), 0) - math.log(C * S)
    torch.testing.assert_close(pred.log_prob(y), expected)
    assert pred.log_likelihood(y).shape == (C, S, 12)
    assert pred.sample(seed=1).shape == (C, S, 12, 1)
    torch.testing.assert_close(pred.sample(seed=1), pred.sample(seed=1))


def test_evaluate_regression_in_original_units():
    post, x, y = _regression()
    pred = post.predict(x)
    m = post.evaluate(x, y)
    assert set(m) == {"rmse", "nll"}
    assert m["rmse"] == pytest.approx(float(((pred.mean - y) ** 2).mean().sqrt()), rel=1e-6)
    assert m["nll"] == pytest.approx(-float(pred.log_prob(y).mean()), rel=1e-6)
    scaled = post.evaluate(x, y, y_scale=3.0)
    assert scaled["rmse"] == pytest.approx(3 * m["rmse"], rel=1e-6)
    assert scaled["nll"] == pytest.approx(m["nll"] + math.log(3.0), rel=1e-6)
    with pytest.raises(ValueError, match="y_scale"):
        post.evaluate(x, y, y_scale=0.0)


def test_classifier_predictions_and_metrics():
    post, x, y = _classifier()
    pred = post.predict(x)
    probs = torch.softmax(pred.samples.flatten(0, 1), -1)
    torch.testing.assert_close(pred.mean, probs.mean(0))
    torch.testing.assert_close(pred.mean.sum(-1), torch.ones(15))
    m = post.evaluate(x, y)
    assert set(m) == {"accuracy", "nll", "ece", "brier"}
    assert m["accuracy"] == pytest.approx(float((pred.mean.argmax(-1) == y).float().mean()))
    assert 0 <= m["ece"] <= 1 and 0 <= m["brier"] <= 2


def test_to_arviz_groups_and_axes():
    post, x, y = _regression(learned=True)
    idata = post.to_arviz(x=x, y=y)
    assert set(idata.groups()) >= {
        "posterior",
        "posterior_predictive",
        "log_likelihood",
        "sample_stats",
        "observed_data",
        "constant_data",
    }
    w = idata.posterior["layers.0.weight"]
    assert w.dims[:2] == ("chain", "draw") and w.shape == (C, S, 6, 2)
    np.testing.assert_allclose(
        w.values[1, 7], post.sites()["layers.0.weight"][1, 7].numpy(), rtol=1e-6
    )
    assert idata.posterior["f"].dims == ("chain", "draw", "probe", "out")
    assert idata.posterior["f"].shape == (C, S, 12, 1)
    assert idata.log_likelihood["y"].shape == (C, S, 12)
    assert idata.posterior_predictive["y"].shape == (C, S, 12)
    assert idata.observed_data["y"].shape == (12,)
    assert idata.sample_stats["lp"].shape == (C, S)
    assert idata.posterior.attrs["draws_are"] == "mcmc"
    assert idata.posterior.attrs["inference"] == "test"


def test_arviz_functions_work_on_the_export(tmp_path):
    post, x, y = _regression()
    idata = post.to_arviz(x=x, y=y)
    summary = az.summary(idata, var_names=["f"])
    assert len(summary) == 12 and "r_hat" in summary and "ess_bulk" in summary
    loo = az.loo(idata)
    assert np.isfinite(loo.elpd_loo)
    axes = az.plot_trace(idata, var_names=["f"], coords={"probe": [0, 1]})
    assert axes.shape[0] == 1
    idata.to_netcdf(str(tmp_path / "post.nc"))
    assert (tmp_path / "post.nc").stat().st_size > 0


def test_probe_only_export_and_particles_attr():
    post, x, _ = _classifier()
    idata = post.to_arviz(probe=x[:4])
    assert idata.posterior["f"].shape == (C, S, 4, 3)
    assert idata.posterior.attrs["rhat_applies"] == 0
    assert "posterior_predictive" not in idata.groups()


def test_save_load_round_trip_is_exact(tmp_path):
    post, x, y = _regression(learned=True)
    path = tmp_path / "post.pt"
    post.save(path)
    loaded = Posterior.load(path)
    assert torch.equal(loaded.theta, post.theta)
    assert loaded.sample_stats.keys() == post.sample_stats.keys()
    assert all(torch.equal(loaded.sample_stats[k], v) for k, v in post.sample_stats.items())
    assert (loaded.kind, loaded.partial, loaded.attrs) == (post.kind, post.partial, post.attrs)
    torch.testing.assert_close(loaded.predict(x).samples, post.predict(x).samples, rtol=0, atol=0)
    assert loaded.evaluate(x, y) == post.evaluate(x, y)
    again = Posterior.load(path, bnn=post.bnn)
    assert again.bnn is post.bnn


def test_save_without_picklable_bnn_warns_and_needs_bnn(tmp_path):
    post, x, _ = _regression()
    post.bnn.prior = priors.Select({lambda n, p, m: True: priors.Gaussian(1.0)})
    with pytest.warns(UserWarning, match="could not be pickled"):
        post.save(tmp_path / "p.pt")
    loaded = Posterior.load(tmp_path / "p.pt")
    assert loaded.bnn is None
    with pytest.raises(ValueError, match="no BNN"):
        loaded.predict(x)


def test_posterior_checks():
    post, x, _ = _regression()
    with pytest.raises(ValueError, match="theta"):
        Posterior(torch.zeros(3, 4), post.bnn)
    with pytest.raises(ValueError, match="theta"):
        Posterior(torch.zeros(1, 2, post.bnn.num_params + 1), post.bnn)
    with pytest.raises(ValueError, match="kind"):
        Posterior(post.theta, post.bnn, kind="smc")
    with pytest.raises(ValueError, match="sample_stats"):
        Posterior(post.theta, post.bnn, {"lp": torch.zeros(2, 2)})
    empty = Posterior(post.theta[:, :0], post.bnn, partial=True)
    with pytest.raises(ValueError, match="no draws"):
        empty.predict(x)
    bare = Posterior(post.theta, None)
    assert set(bare.sites()) == {"theta"}
    assert bare.to_arviz().posterior["theta"].shape == (C, S, post.bnn.num_params)


OOD_KEYS = {
    "auroc_entropy",
    "auroc_mutual_information",
    "auroc_std",
    "disagreement",
    "pairwise_kl",
    "disagreement_ood",
    "pairwise_kl_ood",
}


def test_evaluate_with_ood_inputs_reports_every_score():
    post, x, y = _classifier()
    ood_x = 4 + 3 * torch.randn(10, 2, generator=torch.Generator().manual_seed(1))
    m = post.evaluate(x, y, ood_x=ood_x)
    assert set(m) == {"accuracy", "nll", "ece", "brier"} | OOD_KEYS
    assert m == pytest.approx(post.evaluate(x, y) | {k: m[k] for k in OOD_KEYS})
    for k in ("auroc_entropy", "auroc_mutual_information", "auroc_std"):
        assert 0 <= m[k] <= 1
    assert 0 < m["disagreement"] <= 1 and 0 < m["disagreement_ood"] <= 1
    assert m["pairwise_kl"] > 0 and m["pairwise_kl_ood"] > 0
    # the same numbers as the diagnostics functions on every draw's class probabilities
    probs_in, probs_out = post.predict(x).member_probs(), post.predict(ood_x).member_probs()
    assert probs_in.shape == (C * S, 15, 3)
    expected = diagnostics.ood_aurocs(probs_in, probs_out)
    expected |= diagnostics.functional_diversity(probs_in)
    expected |= {f"{k}_ood": v for k, v in diagnostics.functional_diversity(probs_out).items()}
    assert {k: m[k] for k in OOD_KEYS} == pytest.approx(expected, rel=1e-9)
    # draws taken in uneven chunks give the same result
    assert post.evaluate(x, y, ood_x=ood_x, chunk_size=7) == pytest.approx(m, rel=1e-9)


def test_evaluate_ood_for_a_binary_classifier_and_one_draw():
    torch.manual_seed(0)
    bnn = BNN(MLP(2, [5], 1), priors.Gaussian(1.0), likelihoods.Bernoulli())
    post = Posterior(torch.randn(2, 6, bnn.num_params), bnn)
    x, ood_x = torch.randn(9, 2), 5 * torch.randn(7, 2)
    y = torch.randint(0, 2, (9,))
    m = post.evaluate(x, y, ood_x=ood_x)
    assert OOD_KEYS <= set(m)
    probs = post.predict(x).member_probs()
    assert probs.shape == (12, 9, 2)
    torch.testing.assert_close(probs[..., 1].mean(0), post.predict(x).mean.double())
    assert m["auroc_std"] == pytest.approx(
        diagnostics.ood_auroc(
            diagnostics.member_std(probs[..., 1]),
            diagnostics.member_std(post.predict(ood_x).member_probs()),
        )
    )
    one = Posterior(post.theta[:1, :1], bnn).evaluate(x, y, ood_x=ood_x)
    assert math.isnan(one["disagreement"]) and math.isnan(one["pairwise_kl_ood"])
    assert one["auroc_mutual_information"] == 0.5 and one["auroc_std"] == 0.5


def test_evaluate_ood_checks_its_argument():
    post, x, y = _classifier()
    with pytest.raises(ValueError, match="ood_x"):
        post.evaluate(x, y, ood_x=torch.randn(5))
    with pytest.raises(ValueError, match="ood_x"):
        post.evaluate(x, y, ood_x=torch.randn(5, 3))
    with pytest.raises(ValueError, match="ood_x"):
        post.evaluate(x, y, ood_x=torch.full((5, 2), float("nan")))
    reg, xr, yr = _regression()
    with pytest.raises(ValueError, match=r"ood_x: .*regression"):
        reg.evaluate(xr, yr, ood_x=xr)
    with pytest.raises(ValueError, match="member_probs"):
        reg.predict(xr).member_probs()


# ------------------------------------------------------------------ memory of predict
def _planned(
    monkeypatch: pytest.MonkeyPatch, hidden: int, draws: int, rows: int = 4000
) -> tuple[int, int]:
    """Default (draws, rows) per forward pass of predict under a 4 MiB budget."""
    monkeypatch.setattr(posterior_module, "PREDICT_MEMORY_BUDGET", 4 * 2**20)
    torch.manual_seed(0)
    bnn = BNN(MLP(10, [hidden], 1, "tanh"), priors.Gaussian(1.0), likelihoods.Gaussian(0.5))
    post = Posterior(torch.zeros(1, draws, bnn.num_params), bnn)
    return post._chunks(bnn.check_inputs(torch.randn(rows, 10)), None)


def test_default_chunk_shrinks_as_draws_and_activations_grow(monkeypatch):
    few_draws = _planned(monkeypatch, hidden=20, draws=10)
    many_draws = _planned(monkeypatch, hidden=20, draws=100)
    wide = _planned(monkeypatch, hidden=200, draws=100)
    # all draws at once, over chunks of rows: ten times the draws, about a tenth of the rows
    assert few_draws[0] == 10 and many_draws[0] == 100
    assert few_draws[1] < 4000 and many_draws[1] < few_draws[1] / 5
    # ten times the hidden units: fewer (draw, row) pairs per pass
    assert wide[0] * wide[1] < many_draws[0] * many_draws[1] / 5
    # small problems run in one pass; an explicit chunk_size (draws, at all rows) wins
    assert _planned(monkeypatch, hidden=20, draws=10, rows=50) == (10, 50)
    post, x, _ = _regression()
    assert post._chunks(post.bnn.check_inputs(x), 7) == (7, 12)


def test_forward_cost_counts_the_hidden_activations():
    torch.manual_seed(0)
    costs = {}
    x = torch.randn(16, 10)
    for hidden in (20, 200):
        bnn = BNN(MLP(10, [hidden], 1, "tanh"), priors.Gaussian(1.0), likelihoods.Gaussian())
        theta = torch.zeros(PROBE_DRAWS, bnn.num_params)

        def forward(p: int, r: int, bnn: BNN = bnn, theta: torch.Tensor = theta) -> torch.Tensor:
            return bnn.forward(theta[:p], x[:r])

        costs[hidden] = forward_cost(forward, 16)
    for hidden, cost in costs.items():
        # at the peak at least one (draws, rows, hidden) float32 activation is held, and no
        # more than the few tensors a layer makes (matmul, bias, tanh, output)
        assert 4 * hidden <= cost.per_draw_row <= 4 * (4 * hidden + 4)
    assert costs[200].per_draw_row > 5 * costs[20].per_draw_row


@pytest.mark.parametrize(("budget", "rows"), [(2**20, 300), (1, 5)])
def test_predict_in_chunks_of_rows_and_draws_matches_one_pass(monkeypatch, budget, rows):
    post, _, _ = _regression(learned=True)
    x = torch.randn(rows, 2)
    whole = post.predict(x, chunk_size=C * S)
    monkeypatch.setattr(posterior_module, "PREDICT_MEMORY_BUDGET", budget)
    # 1 MiB: all draws over chunks of rows; 1 byte: one draw at one row at a time
    draws, rows_per_chunk = post._chunks(x, None)
    assert draws == (C * S if budget > 1 else 1) and rows_per_chunk < rows
    chunked = post.predict(x)
    torch.testing.assert_close(chunked.samples, whole.samples, rtol=0, atol=0)
    torch.testing.assert_close(chunked.std, whole.std)


def test_chunk_size_must_be_a_positive_integer():
    post, x, y = _regression()
    clf, xc, _ = _classifier()
    for bad, error in ((0, ValueError), (-1, ValueError), (1.5, TypeError), (True, TypeError)):
        with pytest.raises(error, match="chunk_size"):
            post.predict(x, chunk_size=bad)
        with pytest.raises(error, match="chunk_size"):
            post.evaluate(x, y, chunk_size=bad)
        with pytest.raises(error, match="chunk_size"):
            clf.predict(xc).member_statistics(chunk_size=bad)


# ------------------------------------------------------------------ clear errors
def test_posterior_refuses_non_finite_draws_and_a_non_bnn():
    post, _, _ = _regression()
    bad = post.theta.clone()
    bad[1, 3, 0] = float("nan")
    with pytest.raises(ValueError, match="theta: contains 1 NaN"):
        Posterior(bad, post.bnn)
    assert Posterior(bad, post.bnn, partial=True).partial  # the draw that stopped a run
    with pytest.raises(TypeError, match=r"bnn: expected a bayesdl\.models\.BNN"):
        Posterior(post.theta, "my net")
    with pytest.raises(TypeError, match="attrs: expected a dict"):
        Posterior(post.theta, post.bnn, attrs=3)
    with pytest.raises(TypeError, match="sample_stats: expected a dict"):
        Posterior(post.theta, post.bnn, sample_stats=[1])


def test_evaluate_and_to_arviz_check_y_scale_and_seed():
    post, x, y = _regression()
    with pytest.raises(TypeError, match="y_scale"):
        post.evaluate(x, y, y_scale="abc")
    with pytest.raises(ValueError, match="y_scale"):
        post.evaluate(x, y, y_scale=-1.0)
    with pytest.raises(TypeError, match="seed"):
        post.to_arviz(x, y, seed="a")
    with pytest.raises(ValueError, match=r"probe: expected shape \(N, \.\.\.\)"):
        post.to_arviz(probe=torch.randn(5))
    with pytest.raises(ValueError, match="seed"):
        post.predict(x).sample(seed=-1)


def test_save_checks_path_and_creates_missing_folders(tmp_path):
    post, _, _ = _regression()
    with pytest.raises(TypeError, match="path: expected a file path"):
        post.save(None)
    with pytest.raises(ValueError, match=r"path: .* is a folder"):
        post.save(tmp_path)
    nested = tmp_path / "runs" / "one" / "post.pt"
    post.save(nested)
    assert torch.equal(Posterior.load(nested).theta, post.theta)


def test_load_refuses_damaged_and_foreign_files(tmp_path):
    post, _, _ = _regression()
    good = tmp_path / "post.pt"
    post.save(good)
    raw = good.read_bytes()
    (tmp_path / "truncated.pt").write_bytes(raw[: len(raw) // 2])
    corrupted = bytearray(raw)
    corrupted[100:400] = bytes(300)
    (tmp_path / "corrupted.pt").write_bytes(bytes(corrupted))
    (tmp_path / "notes.txt").write_text("not a posterior")
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    torch.save({"format": "other/1"}, tmp_path / "other.pt")
    for name in ("truncated.pt", "corrupted.pt", "notes.txt", "tensor.pt", "other.pt"):
        with pytest.raises(ValueError, match=rf"path: .*{name}.* not a .*saved bayesdl Posterior"):
            Posterior.load(tmp_path / name)
    with pytest.raises(ValueError, match=r"path: .* is a folder"):
        Posterior.load(tmp_path)
    with pytest.raises(FileNotFoundError, match="path: no file"):
        Posterior.load(tmp_path / "missing.pt")
    with pytest.raises(TypeError, match="path"):
        Posterior.load(None)
    with pytest.raises(TypeError, match=r"bnn: expected a bayesdl\.models\.BNN"):
        Posterior.load(good, bnn="my net")
    payload = torch.load(good, weights_only=True)
    payload["bnn"] = b"not a pickle"
    torch.save(payload, tmp_path / "bad_bnn.pt")
    with pytest.raises(ValueError, match=r"path: the BNN stored .* bnn=\.\.\."):
        Posterior.load(tmp_path / "bad_bnn.pt")


def test_load_checks_the_parameter_layout(tmp_path):
    post, x, _ = _regression()
    post.save(tmp_path / "post.pt")
    # 2-6-1 and 4-4-1 both have D=25 parameters, in differently shaped sites
    other = BNN(MLP(4, [4], 1, "tanh"), priors.Gaussian(1.0), likelihoods.Gaussian(0.5))
    assert other.num_params == post.num_params
    with pytest.raises(ValueError, match=r"bnn: .*site 0 is 'layers.0.weight' of shape \(6, 2\)"):
        Posterior.load(tmp_path / "post.pt", bnn=other)
    # a file from before layouts were saved loads, with a warning that it cannot be checked
    payload = torch.load(tmp_path / "post.pt", weights_only=True)
    del payload["layout"]
    torch.save(payload, tmp_path / "old.pt")
    with pytest.warns(UserWarning, match="without its parameter layout"):
        old = Posterior.load(tmp_path / "old.pt", bnn=post.bnn)
    assert torch.equal(old.predict(x).samples, post.predict(x).samples)
    # draws saved without a BNN (a bare log density) take one on load, quietly
    Posterior(post.theta).save(tmp_path / "bare.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert Posterior.load(tmp_path / "bare.pt", bnn=post.bnn).bnn is post.bnn


def test_non_finite_predictions_warn_in_predict_and_stop_evaluate():
    post, x, y = _regression()
    theta = post.theta.clone()
    theta[0, 2] = float("inf")  # one draw whose outputs are not finite
    bad = Posterior(theta, post.bnn, partial=True)
    with pytest.warns(RuntimeWarning, match=r"predict: .*for 1 of 120 draws .*flat draw 2"):
        bad.predict(x)
    with (
        pytest.warns(RuntimeWarning, match="predict"),
        pytest.raises(ValueError, match=r"evaluate: .*NaN or infinite"),
    ):
        bad.evaluate(x, y)
