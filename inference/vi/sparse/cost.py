r"""What a sparse guide saves: stored parameters and theoretical training FLOPs.

Stored parameters
    A mean-field guide stores a mean and a standard deviation per active coordinate:
    ``2 * D`` for dense VI, ``2 * num_active`` for SSVI (the mask, one bit per coordinate, is
    not counted, as in Li et al. 2024).

Training FLOPs
    Counted as the multiply-accumulates of the ``Linear``/``Conv`` weights
    (:mod:`bayesdl.inference.vi.linear_layers`), the dominant cost; with the local
    reparameterisation trick the mean and variance paths double both the dense and the sparse cost,
    which cancels in the ratio. Per example, the forward pass of layer ``l`` at density :math:`d_l`
    costs :math:`d_l F_l`, and a training step forward plus backward (gradients with respect to
    activations and to weights) three times that. A step that ends in a mask update needs the
    *dense* weight gradient, :math:`F_l` instead of :math:`d_l F_l` (the accounting of RigL, Evci et
    al. 2020). With :math:`f_S = \sum_l d_l F_l`, :math:`f_D = \sum_l F_l`, ``steps`` steps of which
    ``u`` update the mask,

    .. math::
        \frac{\text{FLOPs}_\text{SSVI}}{\text{FLOPs}_\text{VI}}
            = \frac{(\texttt{steps} - u)\,3 f_S + u\,(2 f_S + f_D)}{\texttt{steps}\cdot 3 f_D}.

    These are theoretical FLOPs: the masked tensors here are stored densely, so wall-clock
    time does not fall with the density.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..linear_layers import LinearLayer

__all__ = ["training_flops_ratio"]


def training_flops_ratio(
    layers: Sequence[LinearLayer], density: Mapping[str, float], steps: int, updates: int
) -> float:
    """Theoretical training FLOPs of sparse relative to dense VI (see the module doc).

    Parameters
    ----------
    layers
        The network's linear layers
        (:func:`~bayesdl.inference.vi.linear_layers.probe_linear_layers`).
    density
        ``{weight name: density}``; weights not listed are dense.
    steps
        Optimisation steps.
    updates
        Steps that end in a mask update.
    """
    dense = sum(layer.macs for layer in layers)
    if dense == 0:
        return 1.0
    sparse = sum(density.get(layer.weight, 1.0) * layer.macs for layer in layers)
    total = (steps - updates) * 3 * sparse + updates * (2 * sparse + dense)
    return total / (steps * 3 * dense)
