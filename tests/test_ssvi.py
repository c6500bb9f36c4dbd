"""Sparse subspace VI: masks, criteria, schedule, equivalence with dense VI, sparse storage."""

from __future__ import annotations

import math

import pytest
import torch

from bayesdl import Posterior, likelihoods, priors
from bayesdl.inference import StepEvent
from bayesdl.inference.vi.elbo import FunctionalELBO
from bayesdl.inference.vi.guides import MeanField
from bayesdl.inference.vi.linear_layers import LinearLayer, probe_linear_layers
from bayesdl.inference.vi.sparse.cost import training_flops_ratio
from bayesdl.inference.vi.sparse.masks import (
    SparseSite,
    drop_fraction_at,
    removal_score,
    update_mask,
)
from bayesdl.inference.vi.sparse.posterior import SparsePosterior, pack_mask, unpack_mask
from bayesdl.inference.vi.sparse.ssvi import SSVI
from bayesdl.inference.vi.sparse.trainer import SparseTrainer
from bayesdl.inference.vi.vi import VI
from bayesdl.models import BNN, MLP, ConvNet


def _classification(n: int = 60, hidden: int = 16, prior=None):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=gen)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    bnn = BNN(
        MLP(4, [hidden], 2), prior or priors.Gaussian(1.0, fan_in=True), likelihoods.Categorical()
    )
    return bnn, *bnn.check_data(x, y)


# ------------------------------------------------------------------------------ settings
@pytest.mark.parametrize(
    "kwargs, arg",
    [
        ({"density": 0.0}, "density"),
        ({"density": 1.5}, "density"),
        ({"update_every": 0}, "update_every"),
        ({"drop_fraction": 1.0}, "drop_fraction"),
        ({"drop_until": -0.1}, "drop_until"),
        ({"removal": "magnitude"}, "removal"),
        ({"growth": "momentum"}, "growth"),
        ({"engine": "pyro"}, "engine"),
        ({"steps": 0}, "steps"),
    ],
)
def test_settings_are_checked(kwargs, arg):
    with pytest.raises(ValueError, match=rf"^{arg}:"):
        SSVI(**kwargs)
    with pytest.raises(TypeError, match=r"^dense_layers:"):
        SSVI(dense_layers="conv1")


def test_sparse_sites_are_the_weights_outside_dense_layers():
    bnn, _, _ = _classification()
    sites = SSVI(density=0.25).sparse_sites(bnn)
    assert [s.name for s in sites] == ["layers.0.weight", "layers.1.weight"]
    assert [s.num_active for s in sites] == [16, 8]  # round(0.25 * 64), round(0.25 * 32)
    kept = SSVI(dense_layers=("layers.0",)).sparse_sites(bnn)
    assert [s.name for s in kept] == ["layers.1.weight"]
    with pytest.raises(ValueError, match=r"^dense_layers:.*no weight"):
        SSVI(dense_layers=("layers.*",)).sparse_sites(bnn)


def test_a_multivariate_prior_must_stay_dense():
    net = ConvNet(1, 2, channels=(2, 2), image_size=4)
    bnn = BNN(
        net,
        priors.Select({"conv*.weight": priors.CorrelatedConv()}, default=priors.Gaussian(1.0)),
        likelihoods.Categorical(),
    )
    with pytest.raises(ValueError, match=r"^dense_layers:.*conv1.weight"):
        SSVI().sparse_sites(bnn)
    sites = SSVI(dense_layers=("conv*",)).sparse_sites(bnn)
    assert [s.name for s in sites] == ["fc.weight"]


# ------------------------------------------------------------------------------ criteria
# Golden values, by hand from theta ~ N(mu, sigma^2):
#   E|theta|   = mu erf(mu / (sigma sqrt 2)) + sigma sqrt(2/pi) exp(-mu^2 / (2 sigma^2))
#   Var|theta| = mu^2 + sigma^2 - E|theta|^2
# (mu, sigma) = (0, 1):    E|theta| = sqrt(2/pi) = 0.7978845608;
#                          snr_abs = sqrt(2/pi) / sqrt(1 - 2/pi) = 0.79788456 / 0.60281027
#                                  = 1.3236081
# (mu, sigma) = (-2, 0.5): E|theta| = 2 erf(2.8284271) + 0.5 * 0.79788456 * e^-8
#                                   = 1.99987332 + 0.00013383 = 2.00000715;
#                          Var = 4.25 - 4.0000286 = 0.2499714,
#                          snr_abs = 2.00000715 / 0.4999714 = 4.000243
# (mu, sigma) = (1, 1):    E|theta| = erf(0.70710678) + 0.79788456 e^-0.5 = 0.68268949 + 0.48394145
#                                   = 1.16663094; Var = 2 - 1.36102774, snr_abs = 1.4594610
# (mu, sigma) = (0.3, 2):  E|theta| = 1.6136879; snr_abs = 1.3237577
_LOC = torch.tensor([0.0, -2.0, 1.0, 0.3], dtype=torch.float64)
_SCALE = torch.tensor([1.0, 0.5, 1.0, 2.0], dtype=torch.float64)
_GOLDEN = {
    "abs_mean": [0.0, 2.0, 1.0, 0.3],
    "snr": [0.0, 4.0, 1.0, 0.15],
    "mean_abs": [0.7978845608, 2.000007145, 1.166630941, 1.613687939],
    "snr_abs": [1.323608097, 4.00024296, 1.459460995, 1.323757722],
}


@pytest.mark.parametrize("criterion", sorted(_GOLDEN))
def test_removal_criteria_golden_values(criterion):
    score = removal_score(criterion, _LOC, _SCALE)
    torch.testing.assert_close(score, torch.tensor(_GOLDEN[criterion], dtype=torch.float64))


def test_removal_scores_stay_finite_for_confident_weights():
    score = removal_score("snr_abs", torch.tensor([5.0, -40.0]), torch.tensor([1e-3, 1e-4]))
    assert torch.isfinite(score).all() and (score > 1e3).all()


def test_drop_fraction_schedule_golden_values():
    # alpha_t = alpha_0 / 2 (1 + cos(pi t / T_end)), alpha_0 = 0.3, T_end = 75
    assert drop_fraction_at(0, 0.3, 75) == pytest.approx(0.3)
    assert drop_fraction_at(25, 0.3, 75) == pytest.approx(0.15 * 1.5)  # cos(pi/3) = 1/2
    assert drop_fraction_at(37.5, 0.3, 75) == pytest.approx(0.15)
    assert drop_fraction_at(75, 0.3, 75) == 0.0
    assert drop_fraction_at(90, 0.3, 75) == 0.0


def test_mask_update_golden_example():
    # one site of 8 coordinates with 6 active; drop floor(0.34 * 6) = 2.
    # removal scores |mu| of the active ones: 0.9, 0.1, 0.5, 0.05, 0.7, 0.3 -> keep 0, 4, 2, 5
    # growth scores |grad| of the rest: 1: 0.2, 3: 0.4, 6: 0.3, 7: 0.6 -> add 7 and 3
    # coordinate 3 was dropped and added back, so it did not change; 1 left, 7 entered.
    mask = torch.tensor([1, 1, 1, 1, 1, 1, 0, 0], dtype=torch.bool)
    loc = torch.tensor([0.9, -0.1, 0.5, 0.05, -0.7, 0.3, 0.0, 0.0])
    grad = torch.tensor([5.0, 0.2, 9.0, 0.4, 1.0, 1.0, 0.3, 0.6])
    site = SparseSite("w", slice(0, 8), 6)
    update = update_mask(mask, [site], loc, torch.ones(8), grad, 0.34, "abs_mean", "grad")
    assert update.mask.tolist() == [1, 0, 1, 1, 1, 1, 0, 1]
    assert update.grown.nonzero().flatten().tolist() == [7]
    assert update.dropped.nonzero().flatten().tolist() == [1]
    assert int(update.mask.sum()) == 6
    unchanged = update_mask(mask, [site], loc, torch.ones(8), grad, 0.1, "abs_mean", "grad")
    assert torch.equal(unchanged.mask, mask)  # floor(0.1 * 6) = 0: nothing to drop


# ------------------------------------------------------------------------------ costs
def test_training_flops_ratio_golden_value():
    # MLP 4 -> 8 -> 2: 32 + 16 weight MACs per example, both at density 1/2: f_S = 24, f_D = 48.
    # 10 steps, one of which updates the mask:
    # (9 * 3 * 24 + (2 * 24 + 48)) / (10 * 3 * 48) = 744 / 1440
    layers = [
        LinearLayer("a", "a.weight", "a.bias", 1, 32, 1),
        LinearLayer("b", "b.weight", None, 1, 16, 1),
    ]
    ratio = training_flops_ratio(layers, {"a.weight": 0.5, "b.weight": 0.5}, 10, 1)
    assert ratio == pytest.approx(744 / 1440)
    assert training_flops_ratio(layers, {}, 10, 3) == pytest.approx(1.0)


def test_conv_layer_macs_count_output_positions():
    net = ConvNet(1, 3, channels=(2, 4), image_size=8)
    layers = {layer.module: layer for layer in probe_linear_layers(net, torch.zeros(1, 1, 8, 8))}
    assert layers["conv1"].macs == 2 * 1 * 9 * 64  # 3x3 filters at 8x8 positions
    assert layers["conv2"].macs == 4 * 2 * 9 * 16  # at 4x4 after pooling
    assert layers["fc"].macs == 3 * 4 * 2 * 2 and layers["fc"].positions == 1


def test_ssvi_reports_density_storage_and_flops():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(20, 4, generator=gen)
    y = (x[:, 0] > 0).long()
    bnn = BNN(MLP(4, [8], 2), priors.Gaussian(1.0), likelihoods.Categorical())
    post = SSVI(density=0.5, steps=10, update_every=4, draws=3).fit(
        bnn, x, y, seed=0, progress=False
    )
    report = post.attrs["ssvi"]
    assert report["density"] == {"layers.0.weight": 0.5, "layers.1.weight": 0.5}
    assert report["num_active"] == 16 + 8 + 8 + 2  # sparse weights + dense biases
    # D = 4 * 8 + 8 + 8 * 2 + 2 = 58
    assert report["stored_params"] == 68 and report["stored_params_dense"] == 116
    assert report["density_overall"] == pytest.approx(34 / 58)
    # update steps: 4 and 8 are multiples of 4, only 4 < 0.75 * 10: the golden ratio above
    assert report["mask_updates"] == 1
    assert post.attrs["flops_ratio"] == pytest.approx(744 / 1440)


# ------------------------------------------------------------------------------ behaviour
def test_density_one_is_dense_vi_under_the_same_seed():
    bnn, x, y = _classification()
    settings = dict(steps=40, lr=0.02, batch_size=20, num_particles=2, draws=10)
    dense = VI(**settings).fit(bnn, x, y, seed=5, progress=False)
    sparse = SSVI(density=1.0, update_every=5, **settings).fit(bnn, x, y, seed=5, progress=False)
    assert sparse.attrs["ssvi"]["mask_updates"] == 5  # after steps 5, 10, 15, 20, 25 < 30
    assert torch.equal(sparse.theta, dense.theta)
    assert torch.equal(sparse.attrs["elbo_trace"], dense.attrs["elbo_trace"])
    for key in ("loc", "scale"):
        assert torch.equal(sparse.attrs["variational"][key], dense.attrs["variational"][key])


def test_active_count_is_fixed_and_the_mask_moves_then_freezes():
    bnn, x, y = _classification(hidden=32)
    seen: list[StepEvent] = []
    ssvi = SSVI(density=0.2, steps=60, update_every=10, drop_until=0.75, lr=0.05, draws=4)
    post = ssvi.fit(bnn, x, y, seed=0, progress=False, callbacks=[seen.append])
    active = {e.info["num_active"] for e in seen}
    assert len(active) == 1
    changed = post.attrs["ssvi"]["changed"].tolist()
    assert len(changed) == len(ssvi.update_steps()) == 4  # 10, 20, 30, 40 < 45
    assert changed[0] > 0  # the mask moves early on
    updates = [e.step + 1 for e in seen if "mask_changed" in e.info]
    assert updates == [10, 20, 30, 40]  # and is frozen after drop_until
    for site in ssvi.sparse_sites(bnn):
        assert int(post.mask[site.index].sum()) == site.num_active


def test_masked_coordinates_are_zero_in_draws_and_get_no_gradient():
    bnn, x, y = _classification()
    post = SSVI(density=0.3, steps=20, update_every=5, draws=50).fit(
        bnn, x, y, seed=0, progress=False
    )
    mask = post.mask
    assert isinstance(post, SparsePosterior) and not bool(mask.all())
    assert (post.theta[..., ~mask] == 0).all()
    assert (post.attrs["variational"]["loc"][~mask] == 0).all()
    for local_reparam, kl in [(True, "analytic"), (False, "mc")]:
        guide = MeanField(torch.randn(bnn.num_params), torch.full((bnn.num_params,), 0.1), mask)
        elbo = FunctionalELBO(bnn, x, local_reparam=local_reparam, kl=kl, num_particles=3)
        elbo(guide, x, y, 60).objective.backward()
        for grad in (guide.loc.grad, guide.raw_scale.grad):
            assert (grad[~mask] == 0).all()
            assert (grad[mask] != 0).float().mean() > 0.9


def test_random_growth_and_other_criteria_run():
    bnn, x, y = _classification()
    for removal in ("abs_mean", "snr", "mean_abs"):
        post = SSVI(density=0.3, steps=12, update_every=3, removal=removal, growth="random").fit(
            bnn, x, y, seed=0, progress=False
        )
        assert post.attrs["removal"] == removal and post.attrs["growth"] == "random"
        assert torch.isfinite(post.theta).all()


def test_ctrl_c_returns_a_sparse_partial_posterior():
    bnn, x, y = _classification()

    def interrupt(event: StepEvent) -> None:
        if event.stage == "map" and event.step == 2:
            raise KeyboardInterrupt

    with pytest.warns(RuntimeWarning, match="interrupted during map step 2"):
        post = SSVI(density=0.3, steps=10, init="map", init_steps=20, draws=4).fit(
            bnn, x, y, seed=0, progress=False, callbacks=[interrupt]
        )
    assert post.partial and isinstance(post, SparsePosterior)
    assert (post.theta[..., ~post.mask] == 0).all()
    assert post.predict(x).samples.shape == (1, 4, 60, 2)


# ------------------------------------------------------------------------------ storage
@pytest.mark.parametrize("size", [1, 7, 8, 9, 100])
def test_mask_packing_round_trips(size):
    mask = torch.rand(size, generator=torch.Generator().manual_seed(size)) > 0.5
    packed = pack_mask(mask)
    assert packed.dtype == torch.uint8 and packed.numel() == math.ceil(size / 8)
    assert torch.equal(unpack_mask(packed, size), mask)


def test_sparse_posterior_saves_only_the_active_coordinates(tmp_path):
    bnn, x, y = _classification(hidden=32)
    post = SSVI(density=0.1, steps=5, draws=30).fit(bnn, x, y, seed=0, progress=False)
    post.save(tmp_path / "ssvi.pt")
    payload = torch.load(tmp_path / "ssvi.pt", weights_only=True)
    assert "theta" not in payload
    assert payload["theta_active"].shape == (1, 30, post.num_active)
    assert payload["attrs"]["variational"]["loc"].shape == (post.num_active,)
    loaded = SparsePosterior.load(tmp_path / "ssvi.pt", bnn=bnn)
    assert isinstance(loaded, SparsePosterior)
    assert torch.equal(loaded.theta, post.theta) and torch.equal(loaded.mask, post.mask)
    for key in ("loc", "scale", "mask"):
        assert torch.equal(loaded.attrs["variational"][key], post.attrs["variational"][key])
    dense = Posterior(post.theta, bnn, kind="variational")
    dense.save(tmp_path / "dense.pt")
    assert (tmp_path / "ssvi.pt").stat().st_size < (tmp_path / "dense.pt").stat().st_size
    assert type(SparsePosterior.load(tmp_path / "dense.pt", bnn=bnn)) is Posterior
    through_core = Posterior.load(tmp_path / "ssvi.pt", bnn=bnn)
    assert isinstance(through_core, SparsePosterior) and torch.equal(through_core.theta, post.theta)


def test_sparse_posterior_rejects_draws_outside_its_mask():
    mask = torch.tensor([True, False, True])
    with pytest.raises(ValueError, match=r"^theta:"):
        SparsePosterior(torch.ones(1, 2, 3), mask=mask)
    with pytest.raises(ValueError, match=r"^mask:"):
        SparsePosterior(torch.zeros(1, 2, 3), mask=torch.ones(4, dtype=torch.bool))


def test_initial_sparse_means_keep_the_dense_scale():
    """With init="prior", the surviving means are scaled by 1/sqrt(density) (here 1/0.5)."""
    bnn, _, _ = _classification()
    ssvi = SSVI(density=0.25)
    prior_draw = ssvi._initial_guide(bnn, seed=7)
    guide = ssvi._masked_guide(bnn, prior_draw, mask_seed=4)
    for site in ssvi.sparse_sites(bnn):
        active = guide.mask[site.index]
        expected = prior_draw.loc.detach()[site.index][active] / 0.5
        torch.testing.assert_close(guide.loc.detach()[site.index][active], expected)
        assert (guide.loc.detach()[site.index][~active] == 0).all()
    warm = SSVI(density=0.25, init=Posterior(prior_draw.loc.detach()[None, None], bnn))
    unscaled = warm._masked_guide(bnn, prior_draw, mask_seed=4)
    site = ssvi.sparse_sites(bnn)[0]
    active = unscaled.mask[site.index]
    torch.testing.assert_close(
        unscaled.loc.detach()[site.index][active], prior_draw.loc.detach()[site.index][active]
    )


def test_grown_coordinates_restart_at_zero_mean_and_the_sites_mean_scale():
    from bayesdl.inference.optimizers import make_optimizer

    bnn, x, y = _classification(hidden=32)
    ssvi = SSVI(density=0.2, steps=20, update_every=10, drop_fraction=0.6, lr=0.05)
    guide = ssvi._masked_guide(bnn, ssvi._initial_guide(bnn, 0), mask_seed=5)
    elbo = FunctionalELBO(bnn, x, local_reparam=True, kl="analytic", num_particles=1)
    record = ssvi.mask_record([1, 2, 3, 4, 5])
    trainer = SparseTrainer(elbo, guide, 60, ssvi, ssvi.sparse_sites(bnn), record)
    optimizer = make_optimizer("adam", trainer.parameters(), 0.05)
    for step in range(10):
        optimizer.zero_grad()
        loss, _ = trainer.loss(x, y, 1.0, step)
        loss.backward()
        optimizer.step()
    guide = trainer.guide
    before, raw_before = guide.mask.clone(), guide.raw_scale.detach().clone()
    info = trainer.after_step(10, optimizer)
    grown, dropped = guide.mask & ~before, before & ~guide.mask
    assert info["mask_changed"] == int(grown.sum()) == int(dropped.sum()) > 0
    assert (guide.loc.detach()[grown] == 0).all()
    for site in trainer.sites:
        new = grown[site.index]
        if bool(new.any()):
            kept = (before & guide.mask)[site.index]
            expected = raw_before[site.index][kept].mean()
            torch.testing.assert_close(
                guide.raw_scale.detach()[site.index][new], expected.expand(int(new.sum()))
            )
    for moment in ("exp_avg", "exp_avg_sq"):
        assert (optimizer.state[guide.loc][moment][grown | dropped] == 0).all()


def test_sparse_posterior_load_and_save_give_clear_errors(tmp_path):
    """A damaged file or a folder names ``path``, as ``Posterior.load``/``save`` do."""
    from bayesdl.inference.vi.sparse.posterior import SparsePosterior

    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(b"not a posterior")
    with pytest.raises(ValueError, match="path"):
        SparsePosterior.load(damaged)
    with pytest.raises(TypeError, match="path"):
        SparsePosterior.load(None)
    with pytest.raises(FileNotFoundError, match="path"):
        SparsePosterior.load(tmp_path / "missing.pt")
