"""Metrics, against hand-computed values and independent implementations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from bayesdl import diagnostics


def test_rmse_and_accuracy():
    assert diagnostics.rmse(torch.tensor([1.0, 2.0]), torch.tensor([0.0, 0.0])) == pytest.approx(
        math.sqrt(2.5)
    )
    probs = torch.tensor([[0.7, 0.3], [0.4, 0.6], [0.9, 0.1]])
    assert diagnostics.accuracy(probs, torch.tensor([0, 0, 0])) == pytest.approx(2 / 3)
    assert diagnostics.accuracy(torch.tensor([0.8, 0.2]), torch.tensor([1, 1])) == pytest.approx(
        0.5
    )


def test_ece_golden_value():
    # confidences 0.9 (correct), 0.9 (wrong) -> bin [0.867, 0.933): acc 0.5, conf 0.9 -> gap 0.4
    # confidence 0.6 (correct)              -> bin [0.6, 0.667):   acc 1.0, conf 0.6 -> gap 0.4
    probs = torch.tensor([[0.9, 0.1], [0.1, 0.9], [0.6, 0.4]])
    y = torch.tensor([0, 0, 0])
    assert diagnostics.expected_calibration_error(probs, y) == pytest.approx(
        2 / 3 * 0.4 + 1 / 3 * 0.4
    )
    perfect = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert diagnostics.expected_calibration_error(perfect, torch.tensor([0, 1])) == pytest.approx(
        0.0
    )


def test_brier_and_entropy():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    y = torch.tensor([0, 1])
    # (0.3^2 + 0.2^2 + 0.1^2 + 0.1^2 + 0.9^2 + 0.8^2) / 2
    assert diagnostics.brier_score(probs, y) == pytest.approx(
        (0.09 + 0.04 + 0.01 + 0.01 + 0.81 + 0.64) / 2
    )
    uniform = torch.full((1, 4), 0.25)
    assert float(diagnostics.predictive_entropy(uniform)) == pytest.approx(math.log(4))


def test_ood_auroc_matches_sklearn_with_ties():
    rng = np.random.default_rng(0)
    score_in = rng.integers(0, 5, 50).astype(float)
    score_out = rng.integers(2, 8, 40).astype(float)
    labels = np.r_[np.zeros(50), np.ones(40)]
    expected = roc_auc_score(labels, np.r_[score_in, score_out])
    assert diagnostics.ood_auroc(torch.tensor(score_in), torch.tensor(score_out)) == pytest.approx(
        expected
    )
    with pytest.raises(ValueError, match="score_in"):
        diagnostics.ood_auroc(torch.tensor([]), torch.tensor([1.0]))
