r"""Local reparameterisation: weight noise drawn independently for every example.

Under a mean-field Gaussian over the weights of a layer, :math:`W = M + S \odot E` with
:math:`E_{ij} \sim \mathcal N(0, 1)`, the ELBO's expected log-likelihood is a sum over examples,
so only the distribution of each example's outputs matters. Drawing the weight noise afresh for
every example (instead of once per minibatch) leaves that expectation unchanged and removes the
correlation between examples from the gradient estimator, which lowers its variance
(Kingma, Salimans & Welling 2015). Two exact ways to do it:

* ``Linear`` layers on vectors (one output position per example): each pre-activation is
  Gaussian with mean :math:`\sum_j M_{ij} x_j + m_i` and variance
  :math:`\sum_j S_{ij}^2 x_j^2 + s_i^2`, independent across units, so it is drawn directly
  (the local reparameterisation trick proper): a second matrix product gives the variances.
* Convolutions: one filter is applied at every position, so the outputs of one example are
  correlated across positions, and drawing them independently per position (as the trick is
  often applied to convolutions) changes the objective. Here each example gets its own filter
  perturbation :math:`S \odot E_n`, applied to all its positions at once with one grouped
  convolution (one group per example): exact, and the same cost as the mean convolution.

:func:`local_reparameterization` installs this on selected layers of a network for the duration
of a forward pass: the network runs with the weight *means* as its parameters, and a forward
hook on each selected layer adds the noise to its output.

In a run shared over processes (:mod:`.data_parallel`) a process holds a block of the rows of
a global minibatch (:class:`RowBlock`): it draws the noise of every row of the global
minibatch and keeps its block's, so each example gets the noise it gets in one process.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bayesdl.functional import SiteSpec

from .linear_layers import LinearLayer

__all__ = ["LayerNoise", "RowBlock", "local_reparameterization", "reparameterizable"]

_CONVS = {nn.Conv1d: F.conv1d, nn.Conv2d: F.conv2d, nn.Conv3d: F.conv3d}


@dataclass(frozen=True)
class LayerNoise:
    """Standard deviations of one layer's weights and bias (``bias`` None if not random)."""

    weight: Tensor
    bias: Tensor | None


@dataclass(frozen=True)
class RowBlock:
    """This process's rows ``[start, stop)`` of a global minibatch of ``total`` rows."""

    start: int
    stop: int
    total: int

    def standard_normal(
        self, shape: Sequence[int], dtype: torch.dtype, device: torch.device
    ) -> Tensor:
        """Noise of ``shape`` for this block's rows: ``shape[0]`` is ``tiles`` copies of the
        block's rows (particles stacked along the rows), and the draw is the global
        minibatch's ``(tiles, total, *shape[1:])``, of which the block's rows are kept."""
        count = self.stop - self.start
        tiles, rest = divmod(shape[0], count)
        if rest:
            raise ValueError(f"shape: {shape[0]} rows are not copies of a block of {count}")
        full = torch.randn(tiles, self.total, *shape[1:], dtype=dtype, device=device)
        return full[:, self.start : self.stop].reshape(*shape)


def _standard_normal(
    shape: Sequence[int], dtype: torch.dtype, device: torch.device, rows: RowBlock | None
) -> Tensor:
    """``torch.randn(shape)``, or a block's rows of the global draw (:class:`RowBlock`)."""
    if rows is None:
        return torch.randn(*shape, dtype=dtype, device=device)
    return rows.standard_normal(shape, dtype, device)


def reparameterizable(
    net: nn.Module, layers: Sequence[LinearLayer], sites: Sequence[SiteSpec]
) -> list[LinearLayer]:
    """The layers local reparameterisation applies to.

    A layer qualifies if it runs once per forward pass, its weight is an unconstrained sample
    site, its bias is absent, fixed or an unconstrained site, and it is either a ``Linear``
    layer with one output position per example or a zero-padded convolution.
    """
    support = {site.name: site.is_real for site in sites}
    chosen = []
    for layer in layers:
        module = net.get_submodule(layer.module)
        if layer.calls != 1 or not support.get(layer.weight, False):
            continue
        if type(module) is nn.Linear and layer.positions != 1:
            continue
        if getattr(module, "padding_mode", "zeros") != "zeros":
            continue
        if layer.bias is not None and not support.get(layer.bias, True):
            continue  # a constrained bias site is not Gaussian under the guide
        chosen.append(layer)
    return chosen


def _linear_noise(x: Tensor, noise: LayerNoise, like: Tensor, rows: RowBlock | None) -> Tensor:
    """Pre-activation noise of a Linear layer: ``sqrt(x^2 S^2 + s^2) * eps``."""
    var_b = None if noise.bias is None else noise.bias.square()
    var = F.linear(x * x, noise.weight.square(), var_b)
    # clamp: a finite gradient where the variance is exactly zero (masked weights)
    std = var.clamp_min(torch.finfo(var.dtype).tiny).sqrt()
    return std * _standard_normal(like.shape, like.dtype, like.device, rows)


def _conv_noise(module: nn.Module, x: Tensor, noise: LayerNoise, rows: RowBlock | None) -> Tensor:
    """Output noise of a convolution with an independent filter perturbation per example."""
    n = x.shape[0]
    out_channels = noise.weight.shape[0]
    eps = _standard_normal((n, *noise.weight.shape), x.dtype, x.device, rows)
    filters = (noise.weight * eps).reshape(n * out_channels, *noise.weight.shape[1:])
    grouped = x.reshape(1, n * x.shape[1], *x.shape[2:])
    out = _CONVS[type(module)](
        grouped,
        filters,
        None,
        module.stride,
        module.padding,
        module.dilation,
        n * module.groups,
    )
    out = out.reshape(n, out_channels, *out.shape[2:])
    if noise.bias is not None:
        bias = noise.bias * _standard_normal((n, out_channels), x.dtype, x.device, rows)
        out = out + bias.reshape(n, out_channels, *([1] * (out.dim() - 2)))
    return out


@contextlib.contextmanager
def local_reparameterization(
    net: nn.Module, noise: Mapping[str, LayerNoise], rows: RowBlock | None = None
) -> Iterator[None]:
    """Within the block, add per-example weight noise to the named layers of ``net``.

    Parameters
    ----------
    net
        The network; run it (``torch.func.functional_call``) with the weight means as the
        parameters of the named layers.
    noise
        ``{module name: LayerNoise}``: the standard deviations of each layer's weights and bias.
    rows
        The block of a global minibatch the inputs are, in a run shared over processes (the
        noise of those rows in the global draw); ``None``: the inputs are the whole minibatch.

    Notes
    -----
    Noise comes from torch's global generator (inside ``torch.func.vmap(...,
    randomness="different")`` each vmapped call gets its own). The hooks are removed on exit,
    also after an exception.
    """
    handles = []

    def hook_for(layer_noise: LayerNoise):
        def hook(module: nn.Module, args: tuple, output: Tensor) -> Tensor:
            if type(module) is nn.Linear:
                return output + _linear_noise(args[0], layer_noise, output, rows)
            return output + _conv_noise(module, args[0], layer_noise, rows)

        return hook

    try:
        for name, layer_noise in noise.items():
            module = net.get_submodule(name)
            handles.append(module.register_forward_hook(hook_for(layer_noise)))
        yield
    finally:
        for handle in handles:
            handle.remove()
