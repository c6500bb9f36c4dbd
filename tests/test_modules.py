"""Ordinary networks in a BNN: Dropout, BatchNorm, Embedding (integer inputs), several inputs
(tuple or dict), Pyro modules, deterministic modules, and pandas data."""

from __future__ import annotations

import pandas as pd
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.nn import PyroModule, PyroSample
from torch import nn

from bayesdl import inputs, likelihoods, priors
from bayesdl.inference import SGLD, SVGD, VI
from bayesdl.inference.base import Minibatches
from bayesdl.models import BNN, MLP


def _bnn(net: nn.Module, **kwargs) -> BNN:
    return BNN(net, priors.Gaussian(1.0), likelihoods.Gaussian(0.5), **kwargs)


def _fitted_batch_norm_net(x: torch.Tensor) -> nn.Module:
    """A Linear-BatchNorm-Linear net whose running statistics were fitted on ``x``."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 1))
    with torch.no_grad():
        for _ in range(3):
            net(x)
    return net


class TwoInputs(nn.Module):
    """``forward(a, c)``: two inputs of different widths."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Linear(3, 2)
        self.second = nn.Linear(2, 2)

    def forward(self, a: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.first(a) * self.second(c)


class Embedded(nn.Module):
    """Category indices ``(N, 1)`` -> an embedding -> one output."""

    def __init__(self, categories: int = 4) -> None:
        super().__init__()
        self.embed = nn.Embedding(categories, 2)
        self.head = nn.Linear(2, 1)

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(index[:, 0]))


def _two_input_data(n: int = 12) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
    torch.manual_seed(1)
    return (torch.randn(n, 3), torch.randn(n, 2)), torch.randn(n, 2)


# ---------------------------------------------------------------------- Dropout and modes
def test_dropout_net_in_train_mode_runs_deterministically_with_dropout_off():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 8), nn.Dropout(0.5), nn.Tanh(), nn.Linear(8, 1))
    assert net.training
    bnn = _bnn(net)
    assert not any(m.training for m in net.modules())
    x = torch.randn(6, 3)
    theta = bnn.init_theta(2, seed=0)
    f = bnn.forward(theta, x)
    torch.testing.assert_close(f, bnn.forward(theta, x))
    without_dropout = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1))
    values = bnn.unravel(theta[:1])
    without_dropout.load_state_dict(
        {k.replace("3.", "2."): v[0] for k, v in values.items()}, strict=True
    )
    torch.testing.assert_close(f[0], without_dropout(x))


def test_train_mode_after_construction_is_an_error_naming_the_fix():
    bnn = _bnn(nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.1), nn.Linear(4, 1)))
    bnn.net.train()
    with pytest.raises(ValueError, match=r"net: module .* is in train mode.*bnn\.net\.eval\(\)"):
        bnn.check_inputs(torch.randn(4, 3))
    bnn.net.eval()
    assert bnn.check_inputs(torch.randn(4, 3)).shape == (4, 3)


class AlwaysDropout(nn.Module):
    """Dropout that ignores the module's mode."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(nn.functional.dropout(x, 0.5, training=True))


def test_randomness_in_eval_mode_is_an_error_naming_the_fix():
    bnn = _bnn(AlwaysDropout())
    with pytest.raises(ValueError, match=r"net: the network draws random numbers.*nn\.Dropout"):
        bnn.forward(bnn.init_theta(2, seed=0), torch.randn(4, 3))


# ---------------------------------------------------------------------- BatchNorm
def test_batch_norm_with_statistics_never_updated_is_refused_naming_module_and_fix():
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 1))
    with pytest.raises(ValueError, match=r"net: BatchNorm module '1'.*never updated.*LayerNorm"):
        _bnn(net)
    assert net.training  # a refused net is left as it was


def test_batch_norm_without_running_statistics_is_refused():
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4, track_running_stats=False))
    with pytest.raises(ValueError, match=r"net: BatchNorm module '1'.*no running statistics"):
        _bnn(net)


def test_fitted_batch_norm_uses_its_running_statistics_and_keeps_them():
    torch.manual_seed(2)
    x = 3.0 + 2.0 * torch.randn(32, 3)
    net = _fitted_batch_norm_net(x)
    mean = net[1].running_mean.clone()
    bnn = _bnn(net)
    theta = bnn.init_theta(3, seed=0)
    f = bnn.forward(theta, x[:5])
    for p in range(3):
        state = {k: v[0] for k, v in bnn.unravel(theta[p : p + 1]).items()}
        reference = _fitted_batch_norm_net(x).eval()
        reference.load_state_dict({**reference.state_dict(), **state})
        torch.testing.assert_close(f[p], reference(x[:5]))
    # one row at a time gives the same outputs: no batch statistics are used
    torch.testing.assert_close(bnn.forward(theta, x[:1]), f[:, :1])
    torch.testing.assert_close(net[1].running_mean, mean)


def test_deterministic_batch_norm_keeps_its_affine_parameters_out_of_theta():
    x = torch.randn(32, 3)
    full = _bnn(_fitted_batch_norm_net(x))
    net = _fitted_batch_norm_net(x)
    with torch.no_grad():
        net[1].weight.zero_()  # the normalised features are dropped: outputs ignore x
    bnn = _bnn(net, deterministic=[nn.BatchNorm1d])
    assert bnn.num_params == full.num_params - 2 * 4
    assert not any(name.startswith("1.") for name in bnn.layout.names)
    y = torch.randn(32)
    posterior = SGLD(chains=2, burn_in=5, draws=5, batch_size=8).fit(
        bnn, x, y, seed=0, progress=False
    )
    assert posterior.theta.shape[-1] == bnn.num_params
    samples = posterior.predict(x).samples
    torch.testing.assert_close(samples, samples[:, :, :1].expand_as(samples))
    assert float(net[1].weight.detach().abs().max()) == 0.0


# ---------------------------------------------------------------------- deterministic=
def test_deterministic_name_pattern_fixes_a_submodule():
    torch.manual_seed(0)
    net = nn.Sequential()
    net.add_module("encoder", nn.Sequential(nn.Linear(3, 4), nn.Tanh()))
    net.add_module("head", nn.Linear(4, 1))
    bnn = _bnn(net, deterministic=["encoder.*"])
    assert bnn.layout.names == ("head.weight", "head.bias")
    assert "deterministic=['encoder.*']" in repr(bnn)
    assert bnn.num_params == 5
    # the module name itself matches every parameter under it
    assert _bnn(net, deterministic=["encoder"]).num_params == 5
    x = torch.randn(6, 3)
    theta = bnn.init_theta(2, seed=0)
    head = bnn.unravel(theta)
    expected = net.encoder(x) @ head["head.weight"].transpose(1, 2) + head["head.bias"][:, None]
    torch.testing.assert_close(bnn.forward(theta, x), expected)


def test_deterministic_entry_that_matches_nothing_is_an_error():
    net = MLP(3, [4], 1)
    with pytest.raises(ValueError, match=r"deterministic: 'encoder\.\*' matches no parameter"):
        _bnn(net, deterministic=["encoder.*"])
    with pytest.raises(ValueError, match=r"deterministic: .*BatchNorm1d.* matches no parameter"):
        _bnn(net, deterministic=[nn.BatchNorm1d])
    with pytest.raises(TypeError, match=r"deterministic: .*wrap a single one in a list"):
        _bnn(net, deterministic="*.bias")
    with pytest.raises(TypeError, match=r"deterministic: entries must be"):
        _bnn(net, deterministic=[3])
    with pytest.raises(ValueError, match=r"prior: every parameter is fixed"):
        _bnn(net, deterministic=["*"])


# ---------------------------------------------------------------------- integer inputs
def test_embedding_with_integer_inputs_fits_and_predicts_end_to_end():
    torch.manual_seed(0)
    index = torch.randint(0, 4, (40, 1))
    y = torch.tensor([-1.0, 0.0, 1.0, 2.0])[index[:, 0]] + 0.1 * torch.randn(40)
    bnn = _bnn(Embedded())
    assert bnn.check_inputs(index).dtype == torch.int64
    posterior = VI(steps=30, lr=0.05).fit(bnn, index, y, seed=0, progress=False)
    prediction = posterior.predict(index)
    assert prediction.mean.shape == (40,)
    assert torch.isfinite(prediction.mean).all()
    particles = SVGD(particles=3, steps=5).fit(bnn, index, y, seed=0, progress=False)
    assert torch.isfinite(particles.predict(torch.tensor([[0], [3]])).mean).all()


def test_integer_features_for_a_float_network_get_a_hint():
    bnn = _bnn(MLP(3, [4], 1))
    with pytest.raises(ValueError, match=r"x: the network cannot take .*convert them to float"):
        bnn.check_inputs(torch.ones(5, 3, dtype=torch.int64))


# ---------------------------------------------------------------------- tuple and dict inputs
def test_tuple_and_dict_inputs_are_passed_as_arguments():
    torch.manual_seed(0)
    bnn = _bnn(TwoInputs())
    (a, c), y = _two_input_data()
    theta = bnn.init_theta(3, seed=0)
    f = bnn.forward(theta, (a, c))
    assert f.shape == (3, 12, 2)
    torch.testing.assert_close(bnn.forward(theta, {"a": a, "c": c}), f)
    values = bnn.unravel(theta[1:2])
    net = TwoInputs()
    net.load_state_dict({k: v[0] for k, v in values.items()})
    torch.testing.assert_close(f[1], net(a, c))
    torch.testing.assert_close(
        bnn.log_joint(theta, (a, c), y), bnn.log_joint(theta, {"a": a, "c": c}, y)
    )
    trace = poutine.trace(bnn.model).get_trace({"a": a, "c": c}, y)
    assert trace.nodes["f"]["value"].shape == (12, 2)


def test_structured_inputs_are_checked_part_by_part():
    bnn = _bnn(TwoInputs())
    (a, c), _ = _two_input_data()
    with pytest.raises(ValueError, match=r"x: every part must have the same number of rows"):
        bnn.check_inputs((a, c[:5]))
    with pytest.raises(ValueError, match=r"x\[1\]: contains 2 NaN"):
        bnn.check_inputs((a, torch.where(torch.arange(12)[:, None] == 0, float("nan"), c)))
    with pytest.raises(ValueError, match=r"x: an empty tuple"):
        bnn.check_inputs(())
    with pytest.raises(TypeError, match=r"x\['c'\]: expected a tensor or array-like"):
        bnn.check_inputs({"a": a, "c": object()})
    with pytest.raises(TypeError, match=r"x: dict keys must be argument names"):
        bnn.check_inputs({0: a})
    with pytest.raises(ValueError, match=r"x: the network cannot take .*missing 1 required"):
        bnn.check_inputs(a)
    with pytest.raises(ValueError, match=r"y: has 12 rows but x has 5"):
        bnn.check_data((a[:5], c[:5]), torch.randn(12, 2))


def test_minibatches_slice_every_part_with_the_same_rows():
    x = {"a": torch.arange(10.0)[:, None], "c": torch.arange(10)[:, None] * 10}
    batches = Minibatches(x, torch.arange(10.0), batch_size=4, seed=0)
    assert batches.num_data == 10
    bx, by = next(batches)
    assert by.shape == (4,)
    torch.testing.assert_close(bx["a"][:, 0], by)
    torch.testing.assert_close(bx["c"][:, 0], (by * 10).long())


def test_structured_inputs_fit_predict_and_export_with_a_stochastic_gradient_sampler():
    bnn = _bnn(TwoInputs())
    (a, c), y = _two_input_data(24)
    x = {"a": a, "c": c}
    posterior = SGLD(chains=2, burn_in=5, draws=4, batch_size=8).fit(
        bnn, x, y, seed=0, progress=False
    )
    assert posterior.predict(x).mean.shape == (24, 2)
    metrics = posterior.evaluate(x, y)
    assert set(metrics) == {"rmse", "nll"}
    idata = posterior.to_arviz(x=x, y=y)
    assert set(idata.constant_data.data_vars) == {"x_a", "x_c"}


def test_backends_that_need_one_input_tensor_say_so():
    bnn = _bnn(TwoInputs())
    x, y = _two_input_data()
    with pytest.raises(TypeError, match=r"x: VI needs inputs as one tensor.*NUTS"):
        VI(steps=2).fit(bnn, x, y, progress=False)
    with pytest.raises(TypeError, match=r"x: SVGD needs inputs as one tensor"):
        SVGD(particles=2, steps=2).fit(bnn, x, y, progress=False)


# ---------------------------------------------------------------------- Pyro modules
def test_pyro_module_nets_are_refused():
    net = PyroModule[nn.Linear](3, 1)
    net.weight = PyroSample(dist.Normal(0.0, 1.0).expand([1, 3]).to_event(2))
    with pytest.raises(TypeError, match=r"net: module .* is a Pyro PyroLinear.*plain torch"):
        _bnn(net)
    inner = nn.Sequential(nn.Linear(3, 3), PyroModule[nn.Linear](3, 1))
    with pytest.raises(TypeError, match=r"net: module '1' is a Pyro"):
        _bnn(inner)


# ---------------------------------------------------------------------- pandas
def test_dataframe_and_series_convert_to_tensors():
    torch.manual_seed(0)
    bnn = _bnn(MLP(3, [4], 1))
    x = torch.randn(8, 3)
    y = torch.randn(8)
    frame = pd.DataFrame(x.numpy(), columns=["u", "v", "w"])
    frame["w"] = frame["w"].astype("float32")
    cx, cy = bnn.check_data(frame, pd.Series(y.numpy(), name="target"))
    torch.testing.assert_close(cx, x)
    torch.testing.assert_close(cy, bnn.check_data(x, y)[1])
    theta = bnn.init_theta(2, seed=0)
    torch.testing.assert_close(bnn.log_joint(theta, frame, y), bnn.log_joint(theta, x, y))


def test_dataframe_with_non_numeric_columns_is_a_type_error_naming_them():
    bnn = _bnn(MLP(2, [4], 1))
    frame = pd.DataFrame({"size": [1.0, 2.0], "colour": ["red", "blue"]})
    with pytest.raises(TypeError, match=r"x: the DataFrame's column\(s\) \['colour'\]"):
        bnn.check_inputs(frame)
    with pytest.raises(TypeError, match=r"y: the Series's values .* not of a numeric"):
        bnn.check_data(torch.randn(2, 2), pd.Series(["a", "b"]))


def test_parts_labels_and_row_helpers():
    x = (torch.zeros(3, 2), torch.ones(3, dtype=torch.int64))
    assert list(inputs.parts(x)) == ["x[0]", "x[1]"]
    assert list(inputs.parts({"t": x[0]}, variables=True)) == ["x_t"]
    assert inputs.num_rows(x) == 3
    assert inputs.row_shapes(x) == (("x[0]", (2,)), ("x[1]", ()))
    taken = inputs.take_rows(x, torch.tensor([2, 0]))
    assert taken[0].shape == (2, 2) and taken[1].dtype == torch.int64
