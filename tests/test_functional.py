"""Flat layouts and vectorised forward passes."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import biject_to, constraints

from bayesdl.functional import FlatLayout, SiteSpec, batched_forward, call_with_parameters


def _layout() -> FlatLayout:
    return FlatLayout(
        [
            SiteSpec("w", (2, 3)),
            SiteSpec("s", (), constraints.positive),
            SiteSpec("v", (4,), constraints.interval(-1.0, 2.0)),
        ]
    )


def test_layout_slices_and_round_trip():
    layout = _layout()
    assert layout.size == 6 + 1 + 4 and layout.names == ("w", "s", "v")
    theta = torch.randn(5, 7, layout.size, dtype=torch.float64)
    values = layout.unravel(theta)
    assert values["w"].shape == (5, 7, 2, 3) and values["s"].shape == (5, 7)
    assert bool((values["s"] > 0).all()) and bool(((values["v"] > -1) & (values["v"] < 2)).all())
    torch.testing.assert_close(values["w"], theta[..., :6].reshape(5, 7, 2, 3))
    torch.testing.assert_close(layout.ravel(values), theta)
    one = layout.unravel(theta[0, 0])
    assert one["s"].shape == () and one["w"].shape == (2, 3)


def test_log_abs_det_jacobian_matches_autograd():
    layout = _layout()
    theta = torch.randn(layout.size, dtype=torch.float64)

    def constrained(t):
        return torch.cat([v.reshape(-1) for v in layout.unravel(t).values()])

    jac = torch.autograd.functional.jacobian(constrained, theta)
    expected = torch.linalg.slogdet(jac).logabsdet
    torch.testing.assert_close(layout.log_abs_det_jacobian(theta[None])[0], expected)


def test_layout_errors():
    layout = _layout()
    with pytest.raises(ValueError, match="theta"):
        layout.unravel(torch.zeros(3, layout.size + 1))
    with pytest.raises(TypeError, match="theta"):
        layout.unravel([0.0] * layout.size)
    with pytest.raises(ValueError, match="missing"):
        layout.ravel({"w": torch.zeros(2, 3)})
    with pytest.raises(ValueError, match="duplicate"):
        FlatLayout([SiteSpec("a", ()), SiteSpec("a", (2,))])
    with pytest.raises(ValueError, match="changes the shape"):
        FlatLayout([SiteSpec("p", (3,), constraints.simplex)])
    assert biject_to(constraints.positive)(torch.tensor(0.0)) == 1.0


def test_batched_forward_equals_a_loop():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Flatten(), torch.nn.Linear(8, 3))
    x = torch.randn(5, 1, 4, 4)
    params = {n: torch.randn(4, *p.shape) for n, p in net.named_parameters()}
    out = batched_forward(net, params, x)
    assert out.shape == (4, 5, 3)
    for p in range(4):
        expected = call_with_parameters(net, {n: v[p] for n, v in params.items()}, x)
        torch.testing.assert_close(out[p], expected)


class _Gate(torch.nn.Module):
    """``forward(a, gate)``: a linear map of ``a`` scaled by ``gate``."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(3, 2)

    def forward(self, a: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        return self.linear(a) * gate


def test_batched_forward_passes_tuple_and_dict_inputs_as_arguments():
    torch.manual_seed(0)
    net = _Gate()
    a, gate = torch.randn(5, 3), torch.randn(5, 1)
    params = {n: torch.randn(4, *p.shape) for n, p in net.named_parameters()}
    out = batched_forward(net, params, (a, gate))
    assert out.shape == (4, 5, 2)
    torch.testing.assert_close(batched_forward(net, params, {"gate": gate, "a": a}), out)
    for p in range(4):
        weight, bias = params["linear.weight"][p], params["linear.bias"][p]
        torch.testing.assert_close(out[p], (a @ weight.T + bias) * gate)


@pytest.mark.filterwarnings("ignore:`torch.jit.trace` is deprecated:DeprecationWarning")
def test_call_with_parameters_under_a_trace_restores_the_module():
    net = torch.nn.Linear(2, 1)
    original = net.weight
    values = {"weight": torch.ones(1, 2), "bias": torch.zeros(1)}
    traced = torch.jit.trace(lambda x: call_with_parameters(net, values, x), torch.ones(3, 2))
    torch.testing.assert_close(traced(torch.ones(3, 2)), torch.full((3, 1), 2.0))
    assert net.weight is original
