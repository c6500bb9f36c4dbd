"""A rewrite of the graphs :func:`~.compilation.compile_step` hands to inductor on a CPU.

Vectorised over chains or particles (:func:`torch.func.vmap`), a network's ``nn.Linear``
layer becomes a batched matrix product followed by the addition of the broadcast bias,
``bmm(x, W) + b``. Inductor fuses that addition, and the activation after it, into the loop
of the next reduction (the next layer's product over the hidden units). With hidden widths
that are not a multiple of the vector length (50 units: three 16-wide vectors and a masked
tail), the activation then runs in the masked, nested loop. As ``baddbmm(b, x, W)`` (the
bias added inside the matrix product, as BLAS does with ``beta = 1``) the activation runs as
one flat vectorised loop over the product's output instead.

Measured on the CPU machine (MLP 10-50-1 on diabetes, float32, one thread, the compiled
log density and gradient, medians of 8 interleaved repeats): 1.57 ms against 2.05 ms at 64
chains, 0.152 against 0.168 ms at 4 (``benchmarks/bias_into_bmm.py``, ``benchmarks/RESULTS.md``).
"""

from __future__ import annotations

import torch
from torch import fx
from torch._inductor.custom_graph_pass import CustomGraphPass, get_hash_for_files

__all__ = ["BiasIntoBatchedMatmul", "bias_into_batched_matmul"]

_aten = torch.ops.aten


def bias_into_batched_matmul(graph: fx.Graph) -> int:
    r"""Rewrite ``add(bmm(a, b), bias)`` as ``baddbmm(bias, a, b)`` in ``graph``, in place.

    Only where the product has no other user and ``bias`` is a smaller tensor of the same
    dtype that broadcasts to the product's shape (a bias, not a second full operand), so that
    the result is unchanged: :math:`\mathrm{bias} + a\,b` either way, up to rounding.
    (Inductor runs the pass on the bodies of :func:`torch.while_loop` too.)

    Returns
    -------
    int
        How many additions were rewritten.
    """
    rewritten = 0
    for node in list(graph.nodes):
        pair = _bias_and_product(node)
        if pair is None:
            continue
        bias, product = pair
        with graph.inserting_before(node):
            fused = graph.call_function(_aten.baddbmm.default, (bias, *product.args))
        fused.meta = dict(node.meta)
        node.replace_all_uses_with(fused)
        graph.erase_node(node)
        graph.erase_node(product)
        rewritten += 1
    return rewritten


def _bias_and_product(node: fx.Node) -> tuple[fx.Node, fx.Node] | None:
    """``(bias, bmm node)`` where ``node`` is an addition :func:`bias_into_batched_matmul`
    rewrites, else ``None``."""
    if node.op != "call_function" or node.target is not _aten.add.Tensor:
        return None
    if len(node.args) != 2 or node.kwargs:  # alpha= scales the bias: left alone
        return None
    for product, bias in (node.args, node.args[::-1]):
        if not (isinstance(product, fx.Node) and isinstance(bias, fx.Node)):
            continue
        if product.target is not _aten.bmm.default or len(product.users) != 1:
            continue
        out, b, total = product.meta.get("val"), bias.meta.get("val"), node.meta.get("val")
        if not all(isinstance(t, torch.Tensor) for t in (out, b, total)):
            continue
        if (
            b.dtype == out.dtype == total.dtype
            and b.device == out.device
            and total.shape == out.shape
            and b.numel() < out.numel()
        ):
            return bias, product
    return None


class BiasIntoBatchedMatmul(CustomGraphPass):
    """:func:`bias_into_batched_matmul` as inductor's ``post_grad_custom_pre_pass``; its
    ``uuid`` (part of the compiled-graph cache key) changes with this module's source."""

    def __call__(self, graph: fx.Graph) -> None:
        bias_into_batched_matmul(graph)

    def uuid(self) -> bytes:
        return get_hash_for_files((__file__,))
