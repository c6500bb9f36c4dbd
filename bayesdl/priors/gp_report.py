"""The figure of a GP-matched prior fit: distance trace and function draws before and after."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from .gp_matched import FitHistory

__all__ = ["report_figure"]


def _draws(ax: Axes, x: np.ndarray, f: np.ndarray, title: str, color: str) -> None:
    one_d = x.shape[1] == 1
    grid = x[:, 0] if one_d else np.arange(x.shape[0])
    order = np.argsort(grid)
    for row in f:
        ax.plot(grid[order], row[order], color=color, lw=0.8, alpha=0.7)
    ax.set_title(title, fontsize="medium")
    ax.set_xlabel("x" if one_d else "measurement point")


def report_figure(history: FitHistory, num_functions: int = 10, title: str = "") -> Figure:
    """Four panels: the distance per outer step, then prior function draws at the display
    inputs from the initial BNN prior, the fitted BNN prior and the GP (first output).

    Inputs of one dimension are plotted against ``x``; otherwise against the index of the
    measurement point (the draws are still comparable point by point).
    """
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(17, 3.6))
    distance = history.distance.numpy()
    ax = axes[0]
    if distance.size:
        steps = np.arange(1, distance.size + 1)
        ax.plot(steps, distance, lw=1, color="C0")
    ax.set_xlabel("outer step")
    ax.set_ylabel("critic estimate of W1")
    heading = "Wasserstein distance (critic)"
    exact = history.exact
    if {"before", "after", "gp_vs_gp"} <= set(exact):
        # Exact empirical distances carry a finite-sample floor (GP vs GP), so they are
        # reported as numbers rather than drawn against the critic's estimates.
        heading += (
            f"\nexact W1: before {exact['before']:.2f}, fitted {exact['after']:.2f}, "
            f"GP vs GP {exact['gp_vs_gp']:.2f}"
        )
    ax.set_title(heading, fontsize="medium")
    display = history.display
    if display:
        x = display["x"].numpy()
        k = max(1, int(num_functions))
        panels = [
            ("before", "BNN prior, before", "C3"),
            ("after", "BNN prior, fitted", "C0"),
            ("gp", "GP prior (target)", "C2"),
        ]
        for ax, (key, label, color) in zip(axes[1:], panels, strict=True):
            _draws(ax, x, display[key][:k].numpy(), label, color)
        low, high = axes[3].get_ylim()
        axes[2].set_ylim(low, high)
        axes[3].set_ylim(low, high)
    else:
        for ax in axes[1:]:
            ax.set_axis_off()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
