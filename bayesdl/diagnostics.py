r"""Metrics of predictive quality, and function-space convergence diagnostics through ArviZ.

Metrics take posterior predictive summaries (means, class probabilities, log densities), or
the class probabilities of every member (posterior draw, particle, ensemble member) shaped
``(S, N, C)``, not posteriors, so they serve every backend alike. Convergence diagnostics are
ArviZ's own (``az.rhat``, ``az.ess``), computed on function values at probe inputs: weight-space
R-hat is meaningless for neural networks, whose posteriors are invariant to permuting hidden
units.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from ._checks import as_tensor, check_count, check_finite
from .arviz_bridge import import_arviz

if TYPE_CHECKING:  # pragma: no cover
    from .posterior import Posterior

__all__ = [
    "MemberStatistics",
    "accuracy",
    "brier_score",
    "disagreement",
    "expected_calibration_error",
    "function_space_diagnostics",
    "functional_diversity",
    "member_std",
    "mutual_information",
    "ood_auroc",
    "ood_aurocs",
    "ood_scores",
    "pairwise_kl",
    "predictive_entropy",
    "rmse",
]


def _class_probs(probs: Tensor) -> Tensor:
    """``(N,)`` probabilities of class 1 become ``(N, 2)``; ``(N, C)`` passes through."""
    return torch.stack([1 - probs, probs], dim=-1) if probs.dim() == 1 else probs


def _check_rows(name: str, value: Tensor, y: Tensor) -> None:
    if value.dim() == 0 or y.dim() == 0 or value.shape[0] != y.shape[0] or len(y) == 0:
        raise ValueError(
            f"{name}: has shape {tuple(value.shape)} but y has {tuple(y.shape)}; they need the "
            "same number of rows (one per example), at least one"
        )


def _check_classification(probs: object, y: object) -> tuple[Tensor, Tensor]:
    """Validate predictive class probabilities ``(N, C)`` (or ``(N,)`` for class 1) and labels
    ``(N,)``; return them as ``(N, C)`` probabilities and long labels."""
    probs, y = as_tensor("probs", probs).detach(), as_tensor("y", y).detach()
    if not probs.is_floating_point() or probs.dim() not in (1, 2):
        raise TypeError(
            f"probs: expected class probabilities of shape (N, C), or (N,) for class 1 of a "
            f"binary classifier (Predictive.mean), got dtype {probs.dtype} and shape "
            f"{tuple(probs.shape)}"
        )
    y = y[:, 0] if y.dim() == 2 and y.shape[1] == 1 else y
    _check_rows("probs", probs, y)
    probs = _class_probs(probs)
    _check_probability_values("probs", probs)
    labels = y.long()
    if y.dim() != 1 or bool((labels != y).any()) or bool((labels < 0).any()):
        raise ValueError(f"y: expected integer class labels of shape (N,), got {tuple(y.shape)}")
    if int(labels.max()) >= probs.shape[-1]:
        raise ValueError(
            f"y: label {int(labels.max())} is out of range for {probs.shape[-1]} classes"
        )
    return probs, labels


def rmse(mean: Tensor, y: Tensor) -> float:
    r"""Root mean squared error :math:`\sqrt{\frac1N\sum_n \lVert \bar y_n - y_n \rVert^2 / d}`."""
    mean, y = as_tensor("mean", mean), as_tensor("y", y)
    _check_rows("mean", mean, y)
    if mean.numel() != y.numel():
        raise ValueError(
            f"mean: has shape {tuple(mean.shape)} but y has {tuple(y.shape)}; give one "
            "predicted value per target"
        )
    return float(torch.sqrt(torch.mean((mean.reshape(y.shape) - y) ** 2)))


def accuracy(probs: Tensor, y: Tensor) -> float:
    """Fraction of targets equal to the most probable class."""
    probs, y = _check_classification(probs, y)
    return float((probs.argmax(-1) == y).double().mean())


def expected_calibration_error(probs: Tensor, y: Tensor, bins: int = 15) -> float:
    r"""Expected calibration error with equal-width confidence bins (Guo et al. 2017).

    .. math::
        \mathrm{ECE} = \sum_{b=1}^{B} \frac{|S_b|}{N}
            \big|\mathrm{acc}(S_b) - \mathrm{conf}(S_b)\big|,

    where :math:`S_b` holds the examples whose top-class probability falls in bin ``b`` of
    ``(0, 1]``.
    """
    probs, y = _check_classification(probs, y)
    bins = check_count("bins", bins)
    confidence, predicted = probs.max(-1)
    correct = (predicted == y).double()
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
    probs, y = _check_classification(probs, y)
    onehot = torch.nn.functional.one_hot(y, probs.shape[-1]).to(probs.dtype)
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
        as_tensor(name, s).detach().cpu().double().reshape(-1)
        for name, s in (("score_in", score_in), ("score_out", score_out))
    )
    check_finite("score_in", score_in)
    check_finite("score_out", score_out)
    scores = np.concatenate([score_in.numpy(), score_out.numpy()])
    ranks = rankdata(scores)
    n_in, n_out = len(score_in), len(score_out)
    if n_in == 0 or n_out == 0:
        raise ValueError("ood_auroc: both score_in and score_out need at least one score")
    u = ranks[n_in:].sum() - n_out * (n_out + 1) / 2
    return float(u / (n_in * n_out))


#: Tolerance on the sum over classes of member probabilities (float32 softmax is well within it).
_SUM_TOLERANCE = 1e-3


def _check_member_probs(member_probs: object, name: str = "member_probs") -> Tensor:
    """Validate per-member class probabilities; return them ``(S, N, C)`` in float64.

    ``(S, N)`` is read as the probabilities of class 1 of a binary classifier (Bernoulli) and
    becomes ``(S, N, 2)``.
    """
    probs = torch.as_tensor(member_probs)
    if not probs.is_floating_point():
        raise TypeError(f"{name}: expected real class probabilities, got dtype {probs.dtype}")
    if probs.dim() not in (2, 3):
        raise ValueError(
            f"{name}: expected class probabilities of shape (S, N, C) (members, inputs, classes) "
            f"or (S, N) for a binary classifier, got {tuple(probs.shape)}"
        )
    if probs.shape[0] == 0 or probs.shape[1] == 0:
        raise ValueError(
            f"{name}: needs at least one member and one input, got {tuple(probs.shape)}"
        )
    probs = probs.detach().double()
    if probs.dim() == 2:
        probs = torch.stack([1 - probs, probs], dim=-1)
    _check_probability_values(name, probs)
    return probs


def _check_probability_values(name: str, probs: Tensor) -> None:
    """Class probabilities: finite, in [0, 1], summing to 1 over the last dimension."""
    check_finite(name, probs)
    if bool((probs < 0).any()) or bool((probs > 1).any()):
        raise ValueError(f"{name}: probabilities must lie in [0, 1] (logits given?)")
    if bool(((probs.sum(-1) - 1).abs() > _SUM_TOLERANCE).any()):
        raise ValueError(
            f"{name}: class probabilities must sum to 1 over the last dimension (logits given? "
            "apply softmax first)"
        )


def _log(probs: Tensor) -> Tensor:
    """``log p`` with zeros clamped at the smallest positive float (so ``0 log 0 = 0``)."""
    return torch.log(probs.clamp_min(torch.finfo(probs.dtype).tiny))


class MemberStatistics:
    r"""Per-input statistics of the members' class probabilities, accumulated in chunks.

    Every OOD score and diversity measure of this module is a function of a few sums over the
    :math:`S` members (draws, particles) at each input :math:`n`, which this object keeps in
    float64, ``O(N C)`` memory whatever :math:`S`: the mean and sum of squared deviations of
    :math:`p_{snc}` (merged across chunks with Chan et al.'s pairwise update, so no variance is
    lost to cancellation), :math:`\sum_s H[p_{sn}]`, :math:`\sum_s \log p_{snc}`, and the votes
    :math:`n_{nc} = \#\{s : \arg\max_{c'} p_{snc'} = c\}`. Feed it with :meth:`update` one chunk
    of members at a time (``Posterior.evaluate`` does, over chunks of draws); the functions
    :func:`ood_scores`, :func:`functional_diversity` and friends are one-chunk uses of it.

    References
    ----------
    Chan, Golub & LeVeque (1979), "Updating formulae and a pairwise algorithm for computing
    sample variances".
    """

    def __init__(self) -> None:
        self.count = 0
        self._mean: Tensor | None = None
        self._m2: Tensor | None = None
        self._entropy_sum: Tensor | None = None
        self._log_sum: Tensor | None = None
        self._votes: Tensor | None = None

    def update(self, probs: Tensor, log_probs: Tensor | None = None) -> MemberStatistics:
        """Add a chunk of members.

        Parameters
        ----------
        probs
            Class probabilities ``(s, N, C)`` of ``s`` more members (``(s, N)``: class 1 of a
            binary classifier).
        log_probs
            Their logarithms, if known more precisely than ``log(probs)`` (``log_softmax`` of
            logits, say), used for the pairwise KL, where a class one member rules out counts;
            by default ``log(probs)`` with zeros clamped at the smallest positive float.
            Entropies always use the clamped ``log(probs)``, as :func:`predictive_entropy`
            does, so the mutual information of identical members is exactly zero.

        Returns
        -------
        MemberStatistics
            ``self``, for chaining.
        """
        probs = _check_member_probs(probs, "probs")
        if log_probs is None:
            log_probs = _log(probs)
        else:
            log_probs = torch.as_tensor(log_probs).detach().double()
            if log_probs.dim() == 2:
                log_probs = torch.stack([torch.log1p(-log_probs.exp()), log_probs], dim=-1)
            if log_probs.shape != probs.shape:
                raise ValueError(
                    f"log_probs: shape {tuple(log_probs.shape)} != probs' {tuple(probs.shape)}"
                )
        if self._mean is not None and probs.shape[1:] != self._mean.shape:
            raise ValueError(
                f"probs: inputs and classes {tuple(probs.shape[1:])} differ from the earlier "
                f"chunks' {tuple(self._mean.shape)}"
            )
        n_b = probs.shape[0]
        mean_b = probs.mean(0)
        m2_b = ((probs - mean_b) ** 2).sum(0)
        entropy_b = -(probs * _log(probs)).sum(-1).sum(0)  # as predictive_entropy, so MI(S=1) = 0
        log_b = log_probs.sum(0)
        votes_b = torch.nn.functional.one_hot(probs.argmax(-1), probs.shape[-1]).sum(0)
        if self._mean is None:
            self._mean, self._m2, self._entropy_sum = mean_b, m2_b, entropy_b
            self._log_sum, self._votes = log_b, votes_b
        else:
            n_a, n = self.count, self.count + n_b
            delta = mean_b - self._mean
            self._mean = self._mean + delta * (n_b / n)
            self._m2 = self._m2 + m2_b + delta**2 * (n_a * n_b / n)
            self._entropy_sum = self._entropy_sum + entropy_b
            self._log_sum = self._log_sum + log_b
            self._votes = self._votes + votes_b
        self.count += n_b
        return self

    def _require(self, members: int) -> None:
        if self.count < members:
            raise ValueError(f"member_probs: needs at least {members} member(s), got {self.count}")

    @property
    def mean(self) -> Tensor:
        """Mean class probabilities over members (the Bayesian model average), ``(N, C)``."""
        self._require(1)
        return self._mean

    def entropy(self) -> Tensor:
        r"""Predictive entropy :math:`H[\bar p_n]` of the mean probabilities, ``(N,)``."""
        return predictive_entropy(self.mean)

    def mutual_information(self) -> Tensor:
        r"""BALD score :math:`H[\bar p_n] - \frac1S \sum_s H[p_{sn}]`, ``(N,)``, clamped at 0
        against rounding."""
        return (self.entropy() - self._entropy_sum / self.count).clamp_min(0)

    def std(self) -> Tensor:
        r"""Members' standard deviation of each class probability, averaged over classes,
        ``(N,)``."""
        self._require(1)
        return (self._m2 / self.count).sqrt().mean(-1)

    def disagreement(self) -> float:
        r"""Mean over pairs of members of the fraction of inputs where their labels differ."""
        self._require(2)
        s = self.count
        agree = (self._votes * (self._votes - 1)).sum(-1).double() / (s * (s - 1))
        return float((1 - agree).mean())

    def pairwise_kl(self) -> float:
        r"""Mean over ordered pairs of members and inputs of :math:`\mathrm{KL}(p_i \,\|\, p_j)`."""
        self._require(2)
        s = self.count
        # sum_{i != j} KL(p_i || p_j)
        #   = S sum_i sum_c p_ic log p_ic - sum_c (sum_i p_ic) (sum_j log p_jc)
        total = -s * self._entropy_sum - (s * self._mean * self._log_sum).sum(-1)
        return float((total / (s * (s - 1))).clamp_min(0).mean())

    def ood_scores(self) -> dict[str, Tensor]:
        """``{"entropy", "mutual_information", "std"}``, each ``(N,)``: see :func:`ood_scores`."""
        return {
            "entropy": self.entropy(),
            "mutual_information": self.mutual_information(),
            "std": self.std(),
        }

    def diversity(self) -> dict[str, float]:
        """``{"disagreement", "pairwise_kl"}``: see :func:`functional_diversity`."""
        return {"disagreement": self.disagreement(), "pairwise_kl": self.pairwise_kl()}


def _stats(member_probs: object, name: str = "member_probs") -> MemberStatistics:
    return MemberStatistics().update(_check_member_probs(member_probs, name))


def mutual_information(member_probs: Tensor) -> Tensor:
    r"""Mutual information between the label and the member (the BALD score), per input.

    .. math::
        \mathrm{MI}_n = H\Big[\frac1S \sum_{s} p_{sn}\Big] - \frac1S \sum_{s} H[p_{sn}],
        \qquad H[p] = -\sum_c p_c \log p_c,

    the entropy of the mean prediction minus the members' mean entropy: the epistemic part of
    the predictive entropy, zero when all members agree (Houlsby et al. 2011; Depeweg et al.
    2018).

    Parameters
    ----------
    member_probs
        Class probabilities of every member, ``(S, N, C)`` (``(S, N)``: probabilities of class 1
        of a binary classifier).

    Returns
    -------
    Tensor
        ``(N,)``, float64, in ``[0, log C]``.

    References
    ----------
    Houlsby, Huszár, Ghahramani & Lengyel (2011), "Bayesian active learning for classification
    and preference learning". Depeweg, Hernández-Lobato, Doshi-Velez & Udluft (2018),
    "Decomposition of uncertainty in Bayesian deep learning for efficient and risk-sensitive
    learning".
    """
    return _stats(member_probs).mutual_information()


def member_std(member_probs: Tensor) -> Tensor:
    r"""Members' standard deviation of the class probabilities, averaged over classes, per input.

    .. math::
        \sigma_n = \frac1C \sum_{c} \sqrt{\frac1S \sum_{s} (p_{snc} - \bar p_{nc})^2},

    the "std" OOD score of D'Angelo, Fortuin & Wenzel (2021): how much the members disagree on
    the class probabilities (population standard deviation, as ``Predictive.std``).

    Parameters
    ----------
    member_probs
        Class probabilities of every member, ``(S, N, C)`` (``(S, N)``: binary classifier).

    Returns
    -------
    Tensor
        ``(N,)``, float64, in ``[0, 1/2]``.

    References
    ----------
    D'Angelo, Fortuin & Wenzel (2021), "On Stein variational neural network ensembles".
    """
    return _stats(member_probs).std()


def ood_scores(member_probs: Tensor) -> dict[str, Tensor]:
    """The three OOD scores of each input, higher meaning "more likely out of distribution".

    Parameters
    ----------
    member_probs
        Class probabilities of every member, ``(S, N, C)`` (``(S, N)``: binary classifier).

    Returns
    -------
    dict
        ``"entropy"``: :func:`predictive_entropy` of the mean probabilities;
        ``"mutual_information"``: :func:`mutual_information`; ``"std"``: :func:`member_std`.
        Each ``(N,)``, float64.
    """
    return _stats(member_probs).ood_scores()


def ood_aurocs(member_probs_in: Tensor, member_probs_out: Tensor) -> dict[str, float]:
    """AUROC of telling OOD inputs from in-distribution ones by each of the three OOD scores.

    Parameters
    ----------
    member_probs_in, member_probs_out
        Members' class probabilities at in-distribution and at OOD inputs, ``(S, N_in, C)`` and
        ``(S', N_out, C)`` (``(S, N)`` for a binary classifier).

    Returns
    -------
    dict
        ``auroc_entropy``, ``auroc_mutual_information``, ``auroc_std``: :func:`ood_auroc` of the
        scores of :func:`ood_scores` (0.5 is chance, 1 perfect separation). D'Angelo, Fortuin &
        Wenzel (2021) report the entropy and std scores.
    """
    stats_in = _stats(member_probs_in, "member_probs_in")
    stats_out = _stats(member_probs_out, "member_probs_out")
    if stats_in.mean.shape[-1] != stats_out.mean.shape[-1]:
        raise ValueError(
            f"member_probs_out: has {stats_out.mean.shape[-1]} classes, member_probs_in "
            f"{stats_in.mean.shape[-1]}"
        )
    return _aurocs(stats_in, stats_out)


def _aurocs(stats_in: MemberStatistics, stats_out: MemberStatistics) -> dict[str, float]:
    scores_in, scores_out = stats_in.ood_scores(), stats_out.ood_scores()
    return {f"auroc_{k}": ood_auroc(scores_in[k], scores_out[k]) for k in scores_in}


def disagreement(member_probs: Tensor) -> float:
    r"""Mean pairwise disagreement of the members' predicted classes.

    .. math::
        \frac{2}{S(S-1)} \sum_{i<j} \frac1N \sum_n [\hat y_{in} \ne \hat y_{jn}]
        = \frac1N \sum_n \Big(1 - \sum_c \frac{n_{nc}(n_{nc} - 1)}{S(S-1)}\Big),

    with :math:`\hat y_{sn} = \arg\max_c p_{snc}` (the first class on ties) and
    :math:`n_{nc}` the number of members predicting class :math:`c` at input :math:`n` (the
    right-hand form is how it is computed: ``O(S N C)``, not ``O(S^2 N)``). A measure of
    functional diversity (Fort, Hu & Lakshminarayanan 2019; D'Angelo, Fortuin & Wenzel 2021).

    Parameters
    ----------
    member_probs
        Class probabilities of every member, ``(S, N, C)`` (``(S, N)``: binary classifier),
        ``S >= 2``.

    Returns
    -------
    float
        In ``[0, 1]``.
    """
    return _stats(member_probs).disagreement()


def pairwise_kl(member_probs: Tensor) -> float:
    r"""Mean pairwise Kullback-Leibler divergence between the members' predictive distributions.

    .. math::
        \frac{1}{S(S-1)} \sum_{i \ne j} \frac1N \sum_n \mathrm{KL}(p_{in} \,\|\, p_{jn}),
        \quad \mathrm{KL}(p \,\|\, q) = \sum_c p_c \log\frac{p_c}{q_c},

    over ordered pairs (KL is not symmetric), computed in ``O(S N C)`` from
    :math:`\sum_{i \ne j} \mathrm{KL}(p_i \| p_j) = S \sum_i \sum_c p_{ic} \log p_{ic} -
    \sum_c \big(\sum_i p_{ic}\big)\big(\sum_j \log p_{jc}\big)`. Zero probabilities are clamped
    at the smallest positive float64 inside the logarithm, so a member that rules out a class
    another one allows gives a large but finite divergence.

    Parameters
    ----------
    member_probs
        Class probabilities of every member, ``(S, N, C)`` (``(S, N)``: binary classifier),
        ``S >= 2``.

    Returns
    -------
    float
        ``>= 0``.

    References
    ----------
    D'Angelo, Fortuin & Wenzel (2021), "On Stein variational neural network ensembles".
    """
    return _stats(member_probs).pairwise_kl()


def functional_diversity(member_probs: Tensor) -> dict[str, float]:
    """:func:`disagreement` and :func:`pairwise_kl` of the members, in one pass.

    Parameters
    ----------
    member_probs
        Class probabilities of every member, ``(S, N, C)`` (``(S, N)``: binary classifier),
        ``S >= 2``.

    Returns
    -------
    dict
        ``{"disagreement": float, "pairwise_kl": float}``.
    """
    return _stats(member_probs).diversity()


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
