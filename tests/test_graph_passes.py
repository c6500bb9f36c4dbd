"""The bias of a batched product folded into it (``inference/graph_passes.py``)."""

from __future__ import annotations

import pytest
import torch
from torch._inductor.utils import run_and_get_code
from torch.fx.experimental.proxy_tensor import make_fx

from bayesdl.inference.compilation import compile_step, compiler_available
from bayesdl.inference.graph_passes import bias_into_batched_matmul

aten = torch.ops.aten


def _operands(dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(3, 5, 4, generator=g, dtype=dtype)
    w = torch.randn(3, 4, 6, generator=g, dtype=dtype)
    bias = torch.randn(3, 1, 6, generator=g, dtype=dtype)
    return a, w, bias


def _targets(gm: torch.fx.GraphModule) -> list[object]:
    return [n.target for n in gm.graph.nodes if n.op == "call_function"]


@pytest.mark.parametrize("bias_first", [False, True])
def test_a_broadcast_bias_is_added_inside_the_batched_product(bias_first):
    def layer(a, w, bias):
        return torch.tanh(bias + torch.bmm(a, w) if bias_first else torch.bmm(a, w) + bias)

    args = _operands()
    gm = make_fx(layer)(*args)
    assert bias_into_batched_matmul(gm.graph) == 1
    gm.recompile()
    assert aten.baddbmm.default in _targets(gm)
    assert aten.bmm.default not in _targets(gm) and aten.add.Tensor not in _targets(gm)
    torch.testing.assert_close(gm(*args), layer(*args))


def _full_operand(a, w, bias):  # a second product-sized operand, not a bias
    return torch.bmm(a, w) + torch.bmm(a, w).exp()


def _scaled_bias(a, w, bias):  # alpha= scales the bias
    return torch.add(torch.bmm(a, w), bias, alpha=2.0)


def _product_used_twice(a, w, bias):
    product = torch.bmm(a, w)
    return product + bias, product


def _promoted(a, w, bias):  # float32 product + float64 bias: a float64 sum
    return torch.bmm(a, w) + bias.double()


@pytest.mark.parametrize("fn", [_full_operand, _scaled_bias, _product_used_twice, _promoted])
def test_other_additions_are_left_alone(fn):
    gm = make_fx(fn)(*_operands())
    before = _targets(gm)
    assert bias_into_batched_matmul(gm.graph) == 0
    assert _targets(gm) == before


@pytest.mark.skipif(
    not compiler_available(torch.device("cpu")), reason="torch.compile needs a C++ compiler"
)
def test_compile_step_folds_the_bias_on_the_cpu_and_can_be_told_not_to():
    def layer(a, w, bias):
        return torch.tanh(torch.bmm(a, w) + bias).sum(-1)

    args = _operands()
    folded, (code,) = run_and_get_code(compile_step(layer), *args)
    plain, (plain_code,) = run_and_get_code(
        compile_step(layer, options={"post_grad_custom_pre_pass": None}), *args
    )
    assert "baddbmm" in code and "baddbmm" not in plain_code
    torch.testing.assert_close(folded, layer(*args))
    torch.testing.assert_close(plain, layer(*args))
