r"""The linear layers of a network: which parameters they own, how often they run, their cost.

Variational backends treat ``Linear`` and ``Conv{1,2,3}d`` layers specially: their outputs are
linear in the weights, so the local reparameterisation trick applies to them, and their
multiply-accumulates are the theoretical FLOPs that sparse training saves. One probe pass of
the network on a single example finds, for each such layer,

* its weight and bias parameter names,
* how many times it runs per forward pass (a layer applied twice shares its weights between
  the calls, which the local reparameterisation trick would wrongly treat as independent),
* its multiply-accumulates per example, :math:`\mathrm{MACs} = |W| \cdot S`, with ``|W|`` the
  number of weights and ``S`` the number of output positions per output channel (1 for a
  ``Linear`` layer on vectors, ``H_out * W_out`` for a ``Conv2d``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = ["LINEAR_TYPES", "LinearLayer", "probe_linear_layers"]

#: Layers whose outputs are linear in their weights, ``out = W * x + b``.
LINEAR_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass(frozen=True)
class LinearLayer:
    """One ``Linear``/``ConvNd`` module of a network, as seen in a probe pass.

    Attributes
    ----------
    module
        The module's name in ``net.named_modules()``.
    weight, bias
        Full parameter names (``"layers.0.weight"``); ``bias`` is None without a bias.
    calls
        Times the module ran in one forward pass.
    macs
        Multiply-accumulates of the weights per example (summed over the calls).
    positions
        Output positions per example and output channel in one call (1 for a ``Linear`` layer
        on vectors, ``H_out * W_out`` for a ``Conv2d``).
    """

    module: str
    weight: str
    bias: str | None
    calls: int
    macs: int
    positions: int


def probe_linear_layers(net: nn.Module, x: Tensor) -> list[LinearLayer]:
    """Run ``net`` on one example of ``x`` and describe its linear layers, in module order.

    Only modules whose type is exactly one of :data:`LINEAR_TYPES` count (a subclass may
    override ``forward``); modules that never ran are left out.
    """
    counts: dict[str, int] = {}
    macs: dict[str, int] = {}
    positions: dict[str, int] = {}
    handles = []

    def recorder(name: str):
        def hook(module: nn.Module, args: tuple, output: Tensor) -> None:
            counts[name] = counts.get(name, 0) + 1
            channels = output.shape[1] if output.dim() > 1 else output.shape[-1]
            if type(module) is nn.Linear:
                where = output.numel() // output.shape[-1]
            else:
                where = output.numel() // (output.shape[0] * channels)
            positions[name] = where
            macs[name] = macs.get(name, 0) + module.weight.numel() * where

        return hook

    modules = {n: m for n, m in net.named_modules() if type(m) in LINEAR_TYPES}
    try:
        for name, module in modules.items():
            handles.append(module.register_forward_hook(recorder(name)))
        detached = {n: p.detach() for n, p in net.named_parameters()}
        with torch.no_grad():
            torch.func.functional_call(net, detached, (x[:1],))
    finally:
        for handle in handles:
            handle.remove()
    layers = []
    for name, module in modules.items():
        if name not in counts:
            continue
        prefix = f"{name}." if name else ""
        bias = f"{prefix}bias" if module.bias is not None else None
        layers.append(
            LinearLayer(name, f"{prefix}weight", bias, counts[name], macs[name], positions[name])
        )
    return layers
