"""Plots of posterior predictives and function-space MCMC diagnostics (matplotlib, ArviZ)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from .arviz_bridge import import_arviz

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes

    from .posterior import Posterior, Predictive

__all__ = ["plot_function_diagnostics", "plot_predictive_1d", "plot_predictive_bands"]


def _axes(ax: Axes | None, figsize: tuple[float, float]) -> Axes:
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=figsize)[1]


def _regression_summary(pred: Predictive) -> tuple[np.ndarray, np.ndarray]:
    if pred.likelihood.is_classifier or pred.mean.dim() != 1:
        raise ValueError("pred: band plots need a single-output regression predictive")
    return pred.mean.cpu().numpy(), pred.std.cpu().numpy()


def plot_predictive_bands(pred: Predictive, y: Tensor, ax: Axes | None = None) -> Axes:
    """Predictive mean with 1 and 2 standard-deviation bands against the observed targets.

    The test points are sorted by predictive mean, so inputs of any dimension fit on one axis;
    the title reports how many targets fall inside the 2-sd band (about 95% if calibrated).
    """
    ax = _axes(ax, (8, 4))
    mean, std = _regression_summary(pred)
    y = np.asarray(y.cpu() if isinstance(y, Tensor) else y, dtype=float).reshape(-1)
    order = np.argsort(mean)
    idx = np.arange(len(mean))
    m, s = mean[order], std[order]
    ax.fill_between(idx, m - 2 * s, m + 2 * s, alpha=0.2, color="C0", label="±2 sd")
    ax.fill_between(idx, m - s, m + s, alpha=0.3, color="C0", label="±1 sd")
    ax.plot(idx, m, color="C0", lw=1.5, label="predictive mean")
    ax.scatter(idx, y[order], s=8, color="k", zorder=3, label="observed")
    inside = float(np.mean(np.abs(y - mean) <= 2 * std))
    ax.set_title(f"Posterior predictive, test points sorted by mean ({inside:.0%} inside ±2 sd)")
    ax.set_xlabel("test point (sorted by predictive mean)")
    ax.set_ylabel("y")
    ax.legend(loc="upper left", fontsize="small")
    return ax


def plot_predictive_1d(
    posterior: Posterior,
    x_grid: Tensor,
    x_train: Tensor | None = None,
    y_train: Tensor | None = None,
    *,
    num_functions: int = 20,
    seed: int = 0,
    ax: Axes | None = None,
) -> Axes:
    """Posterior predictive over a 1-D input grid: bands, sampled functions and the data."""
    ax = _axes(ax, (8, 4))
    pred = posterior.predict(x_grid)
    mean, std = _regression_summary(pred)
    grid = x_grid.reshape(-1).cpu().numpy()
    ax.fill_between(grid, mean - 2 * std, mean + 2 * std, alpha=0.2, color="C0", label="±2 sd")
    f = pred.samples.flatten(0, 1)[..., 0]
    picks = torch.randperm(len(f), generator=torch.Generator().manual_seed(seed))[:num_functions]
    for i, k in enumerate(picks.tolist()):
        ax.plot(
            grid,
            f[k].cpu().numpy(),
            color="C1",
            lw=0.6,
            alpha=0.5,
            label="draws of f" if i == 0 else None,
        )
    ax.plot(grid, mean, color="C0", lw=1.5, label="predictive mean")
    if x_train is not None and y_train is not None:
        ax.scatter(
            x_train.reshape(-1).cpu(),
            y_train.reshape(-1).cpu(),
            s=8,
            color="k",
            zorder=3,
            label="data",
        )
    ax.legend(loc="upper left", fontsize="small")
    return ax


def plot_function_diagnostics(idata: Any, probes: int = 4) -> Any:
    """ArviZ trace plot (densities per chain and traces) of ``f`` at the first ``probes`` inputs.

    Returns the figure of ``az.plot_trace``; ``idata`` must hold ``f`` (``Posterior.to_arviz``
    with ``x`` or ``probe``).
    """
    az = import_arviz()
    posterior = idata["posterior"] if not hasattr(idata, "posterior") else idata.posterior
    count = min(probes, posterior["f"].sizes["probe"])
    axes = az.plot_trace(
        idata,
        var_names=["f"],
        coords={"probe": list(range(count)), "out": [0]},
        compact=False,
        kind="rank_bars",
        figsize=(10, 2.2 * count),
    )
    fig = np.asarray(axes).ravel()[0].figure
    fig.suptitle("Function values at probe inputs: per-chain densities and rank plots")
    fig.tight_layout()
    return fig
