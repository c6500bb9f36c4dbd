"""Plain ``nn.Module`` architectures for Bayesian deep learning.

Nothing here is Bayesian: the networks are ordinary modules that a
:class:`~bayesdl.models.BNN` turns into a model. They avoid layers whose behaviour depends on
``.train()``/``.eval()`` or on batch statistics (batch norm, dropout), which have no place in a
posterior over weights and break vectorised evaluation of many parameter sets.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from bayesdl._checks import check_count

__all__ = ["MLP", "ConvNet", "ResNet", "activation"]

_ACTIVATIONS = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "elu": nn.ELU,
    "sigmoid": nn.Sigmoid,
    "softplus": nn.Softplus,
    "identity": nn.Identity,
}


def activation(name: str) -> nn.Module:
    """An activation module by name: one of ``relu, tanh, gelu, silu, elu, sigmoid, softplus``
    or ``identity``."""
    if name not in _ACTIVATIONS:
        raise ValueError(f"activation: must be one of {sorted(_ACTIVATIONS)}, got {name!r}")
    return _ACTIVATIONS[name]()


class MLP(nn.Module):
    """Fully connected network ``in -> hidden[0] -> ... -> out``.

    Parameters
    ----------
    in_features
        Input width.
    hidden
        Widths of the hidden layers (empty for a linear model).
    out_features
        Output width.
    activation
        Name of the hidden activation (``"relu"``, ``"tanh"``, ...).

    Notes
    -----
    Parameters are named ``layers.<i>.weight`` and ``layers.<i>.bias`` for the ``i``-th
    ``Linear`` layer, so priors can be selected per layer by name pattern.
    """

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int],
        out_features: int,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        check_count("in_features", in_features)
        check_count("out_features", out_features)
        hidden = [check_count(f"hidden[{i}]", h) for i, h in enumerate(hidden)]
        self.act = globals()["activation"](activation)
        widths = [in_features, *hidden, out_features]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(widths))

    def forward(self, x: Tensor) -> Tensor:
        x = x.flatten(1)
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = self.act(x)
        return x


class ConvNet(nn.Module):
    """Two 3x3 convolutions with max-pooling and a linear read-out, for 28x28 images.

    ``conv1 -> act -> pool -> conv2 -> act -> pool -> fc``, the CNN of Fortuin et al. (2022)
    for MNIST/Fashion-MNIST. Parameters: ``conv1.*``, ``conv2.*``, ``fc.*``.

    Parameters
    ----------
    in_channels
        Input channels (1 for grey-scale).
    num_classes
        Output width.
    channels
        Channels of the two convolutions.
    image_size
        Side length of the square input images.
    activation
        Activation name.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        channels: tuple[int, int] = (16, 32),
        image_size: int = 28,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        check_count("in_channels", in_channels)
        check_count("num_classes", num_classes)
        check_count("image_size", image_size, minimum=4)
        c1, c2 = (check_count(f"channels[{i}]", c) for i, c in enumerate(channels))
        self.conv1 = nn.Conv2d(in_channels, c1, 3, padding=1)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1)
        self.act = globals()["activation"](activation)
        self.pool = nn.MaxPool2d(2)
        side = image_size // 4
        self.fc = nn.Linear(c2 * side * side, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool(self.act(self.conv1(x)))
        x = self.pool(self.act(self.conv2(x)))
        return self.fc(x.flatten(1))


class _Block(nn.Module):
    """Pre-activation residual block without normalisation: ``x + conv(act(conv(act(x))))``."""

    def __init__(self, c_in: int, c_out: int, stride: int, act: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.act = activation(act)
        self.shortcut = (
            nn.Conv2d(c_in, c_out, 1, stride=stride) if stride != 1 or c_in != c_out else None
        )

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(self.act(x))
        h = self.conv2(self.act(h))
        return h + (x if self.shortcut is None else self.shortcut(x))


class ResNet(nn.Module):
    """A small pre-activation ResNet without batch norm (as in D'Angelo et al.'s SVGD ResNets).

    A 3x3 stem, then stages of residual blocks (the first block of each stage after the first
    halves the resolution), global average pooling and a linear read-out.

    Parameters
    ----------
    in_channels
        Input channels.
    num_classes
        Output width.
    widths
        Channels of each stage.
    blocks
        Residual blocks per stage.
    activation
        Activation name.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        widths: Sequence[int] = (16, 32, 64),
        blocks: int = 1,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        check_count("in_channels", in_channels)
        check_count("num_classes", num_classes)
        check_count("blocks", blocks)
        widths = [check_count(f"widths[{i}]", w) for i, w in enumerate(widths)]
        if not widths:
            raise ValueError("widths: expected at least one stage")
        self.stem = nn.Conv2d(in_channels, widths[0], 3, padding=1)
        stages = []
        c_in = widths[0]
        for s, w in enumerate(widths):
            for b in range(blocks):
                stride = 2 if (s > 0 and b == 0) else 1
                stages.append(_Block(c_in, w, stride, activation))
                c_in = w
        self.blocks = nn.Sequential(*stages)
        self.act = globals()["activation"](activation)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        h = self.act(self.blocks(self.stem(x)))
        return self.fc(torch.mean(h, dim=(-2, -1)))
