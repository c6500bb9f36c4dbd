r"""Metrics of predictive quality, and function-space convergence diagnostics through ArviZ.

Metrics take posterior predictive summaries (means, class probabilities, log densities), not
posteriors, so they serve every backend alike. Convergence diagnostics are ArviZ's own
(``az.rhat``, ``az.ess``), computed on function values at probe inputs: weight-space R-hat is
meaningless for neural networks, whose posteriors are invariant to permuting hidden units.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from .arviz_bridge import import_arviz

if TYPE_CHECKING:  # pragma: no cover
    from .posterior import Posterior

__all__ = [
    "accuracy",
    "brier_score",
    "expected_calibration_error",
    "function_space_diagnostics",
    "ood_auroc",
    "predictive_entropy",
    "rmse",
]


def _class_probs(probs: Tensor) -> Tensor:
    """``(N,)`` probabilities of class 1 become ``(N, 2)``; ``(N, C)`` passes through."""
    return torch.stack([1 - probs, probs], dim=-1) if probs.dim() == 1 else probs


def rmse(mean: Tensor, y: Tensor) -> float:
    r"""Root mean squared error :math:`\sqrt{\frac1N\sum_n \lVert \bar y_n - y_n \rVert^2 / d}`."""
    return float(torch.sqrt(torch.mean((mean.reshape(y.shape) - y) ** 2)))


def accuracy(probs: Tensor, y: Tensor) -> float:
    """Fraction of targets equal to the most probable class."""
    return float((_class_probs(probs).argmax(-1) == y.long()).double().mean())


def expected_calibration_error(probs: Tensor, y: Tensor, bins: int = 15) -> float:
    r"""Expected calibration error with equal-width confidence bins (Guo et al. 2017).

    .. math::
        \mathrm{ECE} = \sum_{b=1}^{B} \frac{|S_b|}{N}
            \big|\mathrm{acc}(S_b) - \mathrm{conf}(S_b)\big|,

    where :math:`S_b` holds the examples whose top-class probability falls in bin ``b`` of
    ``(0, 1]``.
    """
    probs = _class_probs(probs)
    confidence, predicted = probs.max(-1)
    correct = (predicted == y.long()).double()
    edges = torch.linspace(0, 1, bins + 1, dtype=confidence.dtype, device=confidence.device)
    index = torch.bucketize(confidence, edges[1:-1], right=False)
    ece = 0.0
    n = len(y)
    for b in range(bins):
        in_bin = index == b
        count = int(in_bin.sum())
        if count:
            gap = correct[in_bin].mean() - confidence[in_bin].double().mean()
            ece += count / n * abs(float(gap))
    return ece


def brier_score(probs: Tensor, y: Tensor) -> float:
    r"""Multi-class Brier score :math:`\frac1N\sum_n\sum_c (p_{nc} - [y_n = c])^2`."""
    probs = _class_probs(probs)
    onehot = torch.nn.functional.one_hot(y.long(), probs.shape[-1]).to(probs.dtype)
    return float(((probs - onehot) ** 2).sum(-1).mean())


def predictive_entropy(probs: Tensor) -> Tensor:
    r"""Entropy of the predictive class distribution, :math:`-\sum_c p_c \log p_c`, per example."""
    probs = _class_probs(probs)
    return -(probs * torch.log(probs.clamp_min(torch.finfo(probs.dtype).tiny))).sum(-1)


def ood_auroc(score_in: Tensor, score_out: Tensor) -> float:
    """Area under the ROC curve for telling out-of-distribution inputs from in-distribution ones.

    Higher scores (predictive entropy, say) should mean "out of distribution"; 0.5 is chance.
    Equals the probability that a random OOD input scores above a random in-distribution one,
    ties counting one half (the Mann-Whitney statistic).
    """
    from scipy.stats import rankdata

    score_in, score_out = (
        torch.as_tensor(s).detach().cpu().double() for s in (score_in, score_out)
    )
    scores = np.concatenate([score_in.numpy(), score_out.numpy()])
    ranks = rankdata(scores)
    n_in, n_out = len(score_in), len(score_out)
    if n_in == 0 or n_out == 0:
        raise ValueError("ood_auroc: both score_in and score_out need at least one score")
    u = ranks[n_in:].sum() - n_out * (n_out + 1) / 2
    return float(u / (n_in * n_out))


def function_space_diagnostics(posterior: Posterior, probe: Tensor) -> Any:
    """R-hat and bulk/tail ESS of the function values at ``probe`` inputs, through ArviZ.

    Returns
    -------
    pandas.DataFrame
        ``az.summary`` of the variable ``f`` (one row per probe input and output).
    """
    az = import_arviz()
    idata = posterior.to_arviz(probe=probe)
    return az.summary(idata, var_names=["f"], kind="all")
