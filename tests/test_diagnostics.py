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


def _two_members(pairs: list[tuple[float, float]]) -> torch.Tensor:
    """Two members, two classes: ``pairs[n] = (P_1(class 0), P_2(class 0))`` at input n."""
    p0 = torch.tensor(pairs, dtype=torch.float64).T  # (S=2, N)
    return torch.stack([p0, 1 - p0], dim=-1)  # (S, N, C=2)


# Six inputs, two members, two classes; each input is (member 1, member 2)'s P(class 0), in
# dyadic numbers so means and deviations are exact and the ties below are exact ties. With
# H(q) = -q ln q - (1 - q) ln(1 - q): H(1/2) = 0.6931, H(5/8) = 0.6616, H(3/4) = 0.5623, H(1) = 0.
#
#   input           mean   entropy H(mean)   MI = H(mean) - (H(p1)+H(p2))/2     std = |p1-p2|/2
#   in  (1/2, 1/2)  1/2    0.6931            0                                  0
#   in  (3/4, 3/4)  3/4    0.5623            0                                  0
#   in  (1,   1/2)  3/4    0.5623            0.5623 - (0 + 0.6931)/2 = 0.2158   1/4
#   out (3/4, 1/4)  1/2    0.6931            0.6931 - 0.5623 = 0.1308           1/4
#   out (3/4, 1/2)  5/8    0.6616            0.6616 - (0.5623+0.6931)/2 = 0.0338 1/8
#   out (1,   1/4)  5/8    0.6616            0.6616 - (0 + 0.5623)/2 = 0.3804   3/8
#
# (std: both classes have the same spread |p1 - p2|/2, so the mean over classes is that.)
# AUROC = (OOD-above-in pairs + ties / 2) / 9, counting for each OOD input against the 3 in:
#   entropy: 0.6931 ties 0.6931, beats 0.5623 twice -> 2.5; 0.6616 -> 2; 0.6616 -> 2: 6.5 / 9
#   MI:      0.1308 beats 0, 0, not 0.2158 -> 2; 0.0338 -> 2; 0.3804 beats all -> 3: 7 / 9
#   std:     1/4 beats 0, 0, ties 1/4 -> 2.5; 1/8 -> 2; 3/8 -> 3:                   7.5 / 9
SIX_IN = [(0.5, 0.5), (0.75, 0.75), (1.0, 0.5)]
SIX_OUT = [(0.75, 0.25), (0.75, 0.5), (1.0, 0.25)]


def test_ood_aurocs_golden_six_points():
    probs_in, probs_out = _two_members(SIX_IN), _two_members(SIX_OUT)
    aurocs = diagnostics.ood_aurocs(probs_in, probs_out)
    assert aurocs == {
        "auroc_entropy": pytest.approx(6.5 / 9),
        "auroc_mutual_information": pytest.approx(7 / 9),
        "auroc_std": pytest.approx(7.5 / 9),
    }
    # float32 input gives the same exact ties
    assert diagnostics.ood_aurocs(probs_in.float(), probs_out.float()) == aurocs
    h = math.log(2), -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    scores = diagnostics.ood_scores(probs_in)
    np.testing.assert_allclose(scores["entropy"], [h[0], h[1], h[1]], rtol=1e-12)
    np.testing.assert_allclose(scores["mutual_information"], [0, 0, h[1] - h[0] / 2], atol=1e-15)
    np.testing.assert_allclose(scores["std"], [0, 0, 0.25], rtol=0, atol=0)
    torch.testing.assert_close(
        diagnostics.mutual_information(probs_out),
        diagnostics.ood_scores(probs_out)["mutual_information"],
    )
    torch.testing.assert_close(
        diagnostics.member_std(probs_out), torch.tensor([0.25, 0.125, 0.375], dtype=torch.float64)
    )


def test_binary_member_probs_read_as_class_one():
    probs = _two_members(SIX_OUT)
    torch.testing.assert_close(diagnostics.member_std(probs[..., 1]), diagnostics.member_std(probs))
    torch.testing.assert_close(
        diagnostics.mutual_information(probs[..., 1]), diagnostics.mutual_information(probs)
    )


def test_disagreement_and_kl_golden_two_members():
    # input a: member 1 (0.8, 0.2) -> class 0, member 2 (0.4, 0.6) -> class 1: disagree
    # input b: member 1 (0.4, 0.6) -> class 1, member 2 (0.2, 0.8) -> class 1: agree
    # one pair, 1 of 2 inputs -> disagreement 1/2
    probs = torch.tensor([[[0.8, 0.2], [0.4, 0.6]], [[0.4, 0.6], [0.2, 0.8]]])
    assert diagnostics.disagreement(probs) == pytest.approx(0.5)
    # KL(p || q) = sum_c p_c ln(p_c / q_c), both orders, averaged over 2 ordered pairs x 2 inputs
    kl_12_a = 0.8 * math.log(0.8 / 0.4) + 0.2 * math.log(0.2 / 0.6)  # 0.8 ln 2 - 0.2 ln 3
    kl_21_a = 0.4 * math.log(0.4 / 0.8) + 0.6 * math.log(0.6 / 0.2)  # -0.4 ln 2 + 0.6 ln 3
    kl_12_b = 0.4 * math.log(0.4 / 0.2) + 0.6 * math.log(0.6 / 0.8)  # 0.4 ln 2 + 0.6 ln 3/4
    kl_21_b = 0.2 * math.log(0.2 / 0.4) + 0.8 * math.log(0.8 / 0.6)  # -0.2 ln 2 + 0.8 ln 4/3
    expected = (kl_12_a + kl_21_a + kl_12_b + kl_21_b) / 4
    assert diagnostics.pairwise_kl(probs) == pytest.approx(expected, rel=1e-6)
    assert diagnostics.functional_diversity(probs) == {
        "disagreement": pytest.approx(0.5),
        "pairwise_kl": pytest.approx(expected, rel=1e-6),
    }
    # identical members: no diversity
    same = probs[:1].expand(3, -1, -1)
    assert diagnostics.functional_diversity(same) == {
        "disagreement": 0.0,
        "pairwise_kl": pytest.approx(0.0, abs=1e-12),
    }


def test_disagreement_averages_over_pairs():
    # three members predicting classes 0, 1, 1 at one input: pairs (1,2), (1,3) disagree,
    # (2,3) agree -> 2/3; at a second input all predict 2 -> 0; mean 1/3
    eye = torch.eye(3) * 0.7 + 0.1
    probs = torch.stack(
        [
            torch.stack([eye[0], eye[2]]),
            torch.stack([eye[1], eye[2]]),
            torch.stack([eye[1], eye[2]]),
        ]
    )
    assert diagnostics.disagreement(probs) == pytest.approx(1 / 3)


def test_diversity_matches_brute_force_pairs_and_chunks_merge():
    gen = torch.Generator().manual_seed(0)
    probs = torch.softmax(3 * torch.randn(6, 9, 4, generator=gen, dtype=torch.float64), -1)
    s = probs.shape[0]
    labels = probs.argmax(-1)
    pairs = [(i, j) for i in range(s) for j in range(s) if i != j]
    dis = np.mean([float((labels[i] != labels[j]).double().mean()) for i, j in pairs])
    kl = np.mean(
        [float((probs[i] * (probs[i].log() - probs[j].log())).sum(-1).mean()) for i, j in pairs]
    )
    assert diagnostics.disagreement(probs) == pytest.approx(dis)
    assert diagnostics.pairwise_kl(probs) == pytest.approx(kl, rel=1e-9)
    # accumulating in uneven chunks gives the one-pass values
    stats = diagnostics.MemberStatistics()
    for part in (probs[:1], probs[1:4], probs[4:]):
        stats.update(part)
    assert stats.diversity() == {
        "disagreement": pytest.approx(dis),
        "pairwise_kl": pytest.approx(kl, rel=1e-9),
    }
    torch.testing.assert_close(stats.std(), probs.std(0, correction=0).mean(-1))
    torch.testing.assert_close(
        stats.ood_scores()["entropy"], diagnostics.predictive_entropy(probs.mean(0))
    )


def test_member_metrics_reject_bad_input_naming_it():
    good = _two_members(SIX_IN)
    with pytest.raises(ValueError, match=r"member_probs: .*shape"):
        diagnostics.ood_scores(good[0, 0])
    with pytest.raises(ValueError, match=r"member_probs: .*at least 2"):
        diagnostics.disagreement(good[:1])
    with pytest.raises(ValueError, match=r"member_probs: .*at least 2"):
        diagnostics.pairwise_kl(good[:1])
    with pytest.raises(ValueError, match=r"member_probs: .*sum to 1"):
        diagnostics.member_std(2 * good / 3)
    with pytest.raises(ValueError, match=r"member_probs: .*NaN"):
        diagnostics.mutual_information(good * float("nan"))
    with pytest.raises(ValueError, match=r"member_probs: .*\[0, 1\]"):
        diagnostics.member_std(torch.tensor([[[1.5, -0.5]]]))
    with pytest.raises(TypeError, match="member_probs"):
        diagnostics.member_std(torch.ones(2, 3, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="member_probs_out"):
        diagnostics.ood_aurocs(good, torch.full((2, 3, 4), 0.25))
    with pytest.raises(ValueError, match="member_probs_in"):
        diagnostics.ood_aurocs(good[:, :0], good)


def test_predictive_metrics_reject_bad_input_naming_it():
    probs = torch.tensor([[0.7, 0.3], [0.4, 0.6], [0.9, 0.1]])
    y = torch.tensor([0, 1, 0])
    metrics = (
        diagnostics.accuracy,
        diagnostics.expected_calibration_error,
        diagnostics.brier_score,
    )
    for metric in metrics:
        with pytest.raises(ValueError, match="probs: has shape"):
            metric(probs, torch.tensor([0, 1]))  # rows differ
        with pytest.raises(ValueError, match=r"probs: .*sum to 1 .*softmax"):
            metric(torch.tensor([[0.5, 0.5], [0.5, 0.1], [0.0, 0.0]]), y)
        with pytest.raises(ValueError, match=r"probs: .*\[0, 1\] \(logits given\?\)"):
            metric(torch.tensor([[2.0, -1.0], [0.5, 0.5], [1.0, 0.0]]), y)
        with pytest.raises(ValueError, match="probs: contains 1 NaN"):
            metric(torch.tensor([[0.5, 0.5], [float("nan"), 0.5], [1.0, 0.0]]), y)
        with pytest.raises(ValueError, match="y: label 2 is out of range for 2 classes"):
            metric(probs, torch.tensor([0, 2, 1]))
        with pytest.raises(ValueError, match="y: expected integer class labels"):
            metric(probs, torch.tensor([0.5, 1.0, 0.0]))
        with pytest.raises(TypeError, match="probs"):
            metric(torch.zeros(3, 2, 2), y)
    # whole-number float labels and (N, 1) labels are labels
    assert diagnostics.accuracy(probs, torch.tensor([[0.0], [1.0], [0.0]])) == 1.0
    with pytest.raises(ValueError, match="bins"):
        diagnostics.expected_calibration_error(probs, y, bins=0)
    with pytest.raises(ValueError, match="mean: has shape"):
        diagnostics.rmse(torch.zeros(3, 2), torch.zeros(3))
    with pytest.raises(ValueError, match="mean: has shape"):
        diagnostics.rmse(torch.zeros(4), torch.zeros(3))
    with pytest.raises(TypeError, match="mean"):
        diagnostics.rmse("abc", torch.zeros(3))
    with pytest.raises(ValueError, match="score_out: contains 1 NaN"):
        diagnostics.ood_auroc(torch.zeros(3), torch.tensor([0.0, float("nan")]))
