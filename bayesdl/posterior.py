"""The result of every inference backend: draws of ``theta`` that predict, score and export.

A :class:`Posterior` holds draws shaped ``(chains, draws, D)`` of the flat unconstrained
parameters of a :class:`~bayesdl.models.BNN`, per-draw sampler statistics, and the BNN itself.
MCMC gives several chains; SVGD particles and VI draws come as one chain, with :attr:`kind`
saying what the draws are (R-hat does not apply to them).
"""

from __future__ import annotations

import importlib
import itertools
import math
import os
import pathlib
import pickle
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from functools import cached_property
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from . import inputs
from ._checks import as_tensor, check_count, check_finite, check_positive
from ._memory import PROBE_DRAWS, forward_cost, plan_chunks
from ._seeding import seeded
from .arviz_bridge import from_groups
from .diagnostics import (
    MemberStatistics,
    accuracy,
    brier_score,
    expected_calibration_error,
    ood_auroc,
    rmse,
)
from .inputs import Inputs
from .likelihoods import Likelihood

if TYPE_CHECKING:  # pragma: no cover
    from bayesdl.models import BNN

__all__ = [
    "KINDS",
    "PREDICT_MEMORY_BUDGET",
    "Posterior",
    "Predictive",
    "read_payload",
    "save_target",
]

#: What the draws of a posterior are: MCMC draws, ensemble/SVGD particles, or variational draws.
KINDS = ("mcmc", "particles", "variational")

_FORMAT = "bayesdl.Posterior/1"
#: Formats that extend this one, and the class that loads them (imported when such a file is read).
_EXTENDED_FORMATS = {
    "bayesdl.SparsePosterior/1": "bayesdl.inference.vi.sparse.posterior:SparsePosterior",
}
#: Bytes a forward pass may hold at once while predicting (default 256 MiB): hidden activations
#: of every draw and row evaluated together, measured on a few rows (:mod:`bayesdl._memory`).
#: The ``(chains, draws, N, out)`` outputs themselves come on top. Set
#: ``bayesdl.posterior.PREDICT_MEMORY_BUDGET`` to change it; an explicit ``chunk_size`` wins.
PREDICT_MEMORY_BUDGET = 256 * 2**20
#: Class probabilities per chunk of draws while accumulating OOD and diversity statistics (each
#: element is held in float64 several times over: probabilities, their logs, votes).
_MAX_STAT_ELEMENTS = 2**22


def _member_class_probs(
    likelihood: Likelihood, f: Tensor, latents: Mapping[str, Tensor]
) -> tuple[Tensor, Tensor]:
    """Class probabilities and their logs per draw, ``(S, N, C)`` in float64, from outputs ``f``.

    Read from the likelihood's predictive distribution: a ``Categorical`` gives ``C`` classes,
    a ``Bernoulli`` two (``P(y=0)``, ``P(y=1)``). The logs come from the logits
    (``log_softmax``, ``logsigmoid``), so they stay finite where the probabilities underflow.
    """
    predictive = likelihood.predictive(f.double(), latents)
    if isinstance(predictive, torch.distributions.Categorical):
        log_probs = torch.log_softmax(predictive.logits, dim=-1)
    elif isinstance(predictive, torch.distributions.Bernoulli):
        logits = predictive.logits
        log_probs = torch.stack(
            [torch.nn.functional.logsigmoid(-logits), torch.nn.functional.logsigmoid(logits)],
            dim=-1,
        )
    else:
        raise ValueError(
            f"likelihood: class probabilities need a Categorical or Bernoulli predictive "
            f"distribution, {type(likelihood).__name__} gives {type(predictive).__name__}"
        )
    return log_probs.exp(), log_probs


def _stats_chunk(chunk_size: int | None, n: int, out: int) -> int:
    """Draws per chunk when accumulating member statistics at ``n`` inputs, ``out`` outputs."""
    if chunk_size is not None:
        return check_count("chunk_size", chunk_size)
    return max(1, _MAX_STAT_ELEMENTS // (n * max(out, 2)))


class Predictive:
    """Posterior predictive at a set of inputs.

    Attributes
    ----------
    samples : Tensor
        Network outputs ``f`` for every draw, ``(chains, draws, N, out)`` (logits for classifiers).
    """

    def __init__(
        self,
        samples: Tensor,
        likelihood: Likelihood,
        latents: Mapping[str, Tensor],
        check_targets: Callable[[Tensor], Tensor],
    ) -> None:
        self.samples = samples
        self.likelihood = likelihood
        self._latents = dict(latents)
        self._check_targets = check_targets

    @property
    def num_draws(self) -> int:
        """Total number of posterior draws, ``chains * draws``."""
        return self.samples.shape[0] * self.samples.shape[1]

    def _flat(self) -> tuple[Tensor, dict[str, Tensor]]:
        return self.samples.flatten(0, 1), {k: v.flatten(0, 1) for k, v in self._latents.items()}

    @cached_property
    def _summary(self) -> tuple[Tensor, Tensor]:
        return self.likelihood.summary(*self._flat())

    @property
    def mean(self) -> Tensor:
        """Posterior predictive mean: ``E[y]`` for regression (``(N,)`` for one output, else
        ``(N, out)``), class probabilities ``(N, C)`` for ``Categorical``, ``P(y=1)`` ``(N,)`` for
        ``Bernoulli``."""
        return self._summary[0]

    @property
    def std(self) -> Tensor:
        """Posterior predictive standard deviation: including the observation noise for
        regression; the spread of class probabilities across draws for classifiers."""
        return self._summary[1]

    def log_likelihood(self, y: Tensor) -> Tensor:
        """``log p(y_n | theta_s)`` for every draw and target, ``(chains, draws, N)``."""
        y = self._check_targets(y)
        if y.shape[0] != self.samples.shape[2]:
            raise ValueError(f"y: has {y.shape[0]} rows, the predictions {self.samples.shape[2]}")
        ll = self.likelihood.log_prob(self.samples, y, self._latents)
        if ll.shape != self.samples.shape[:3]:
            raise ValueError(
                f"likelihood: {type(self.likelihood).__name__}.log_prob gives shape "
                f"{tuple(ll.shape)} for outputs {tuple(self.samples.shape)} and targets "
                f"{tuple(y.shape)}; expected one value per draw and target, "
                f"{tuple(self.samples.shape[:3])}"
            )
        return ll

    def log_prob(self, y: Tensor) -> Tensor:
        r"""Log posterior predictive density of each target, ``(N,)``:
        :math:`\log \frac1S \sum_s p(y_n \mid \theta_s)`."""
        ll = self.log_likelihood(y).flatten(0, 1)
        return torch.logsumexp(ll, dim=0) - math.log(ll.shape[0])

    def _require_classifier(self, what: str) -> None:
        if not self.likelihood.is_classifier:
            raise ValueError(
                f"{what}: needs class probabilities, but the likelihood "
                f"({type(self.likelihood).__name__}) is not a classifier"
            )

    def member_probs(self) -> Tensor:
        """Class probabilities of every draw, ``(chains * draws, N, C)``, float64 (classifiers).

        The input of the member-level metrics of :mod:`bayesdl.diagnostics`
        (:func:`~bayesdl.diagnostics.ood_scores`,
        :func:`~bayesdl.diagnostics.functional_diversity`, ...). A ``Bernoulli`` classifier gives
        ``C = 2`` columns, ``P(y=0)`` and ``P(y=1)``. This holds all draws at once; for many draws
        prefer :meth:`member_statistics`, which accumulates in chunks.
        """
        self._require_classifier("member_probs")
        return _member_class_probs(self.likelihood, *self._flat())[0]

    def member_statistics(self, chunk_size: int | None = None) -> MemberStatistics:
        """The draws' class probabilities summarised for OOD scores and diversity (classifiers).

        Accumulated over chunks of draws into ``O(N C)`` sums
        (:class:`~bayesdl.diagnostics.MemberStatistics`), so the ``(S, N, C)`` probabilities
        are never held at once.

        Parameters
        ----------
        chunk_size
            Draws converted to probabilities at once (default: about 4M class probabilities).
        """
        self._require_classifier("member_statistics")
        f, latents = self._flat()
        stats = MemberStatistics()
        chunk = _stats_chunk(chunk_size, f.shape[1], f.shape[-1])
        for i in range(0, f.shape[0], chunk):
            part = {k: v[i : i + chunk] for k, v in latents.items()}
            stats.update(*_member_class_probs(self.likelihood, f[i : i + chunk], part))
        return stats

    def sample(self, seed: int | None = None) -> Tensor:
        """One draw of ``y`` from the likelihood per posterior draw, ``(chains, draws, N, ...)``."""
        predictive = self.likelihood.predictive(self.samples, self._latents)
        if seed is None:
            return predictive.sample()
        with seeded(check_count("seed", seed, minimum=0)):
            return predictive.sample()


class Posterior:
    """Draws from (an approximation of) the posterior of a BNN.

    Parameters
    ----------
    theta
        Draws of the flat unconstrained parameters, ``(chains, draws, D)``.
    bnn
        The BNN the draws belong to (``None`` for a bare log density: no ``predict``).
    sample_stats
        Per-draw statistics ``{name: (chains, draws)}``, with ArviZ's names where one exists
        (``lp``, ``acceptance_rate``, ``step_size``, ``tree_depth``, ``n_steps``,
        ``diverging``, ``energy``).
    kind
        ``"mcmc"``, ``"particles"`` (SVGD, ensembles) or ``"variational"`` (draws from a guide).
    partial
        Whether the run stopped early (Ctrl-C, non-finite values); the draws are those made so far.
        Only a partial posterior may hold non-finite draws (those that stopped the run).
    attrs
        Metadata (backend settings, timings), strings and numbers.

    Attributes
    ----------
    sample_dims : tuple
        ``("chain", "draw")``, the names of the two leading dimensions of ``theta``.
    """

    sample_dims = ("chain", "draw")

    def __init__(
        self,
        theta: Tensor,
        bnn: BNN | None = None,
        sample_stats: Mapping[str, Tensor] | None = None,
        *,
        kind: str = "mcmc",
        partial: bool = False,
        attrs: Mapping[str, Any] | None = None,
    ) -> None:
        if not isinstance(theta, Tensor) or theta.dim() != 3:
            raise ValueError(
                f"theta: expected a tensor of shape (chains, draws, D), got "
                f"{getattr(theta, 'shape', type(theta).__name__)}"
            )
        _check_bnn(bnn)
        if bnn is not None and theta.shape[-1] != bnn.num_params:
            raise ValueError(
                f"theta: last dimension {theta.shape[-1]} != the BNN's D={bnn.num_params}"
            )
        if not partial:
            check_finite("theta", theta)
        if kind not in KINDS:
            raise ValueError(f"kind: must be one of {KINDS}, got {kind!r}")
        _check_mapping("sample_stats", sample_stats)
        _check_mapping("attrs", attrs)
        stats = {}
        for name, value in (sample_stats or {}).items():
            value = torch.as_tensor(value)
            if tuple(value.shape[:2]) != tuple(theta.shape[:2]):
                raise ValueError(
                    f"sample_stats[{name!r}]: expected leading shape {tuple(theta.shape[:2])}, "
                    f"got {tuple(value.shape)}"
                )
            stats[name] = value
        self.theta = theta.detach()
        self.bnn = bnn
        self.sample_stats = stats
        self.kind = kind
        self.partial = bool(partial)
        self.attrs = dict(attrs or {})

    # ------------------------------------------------------------------ shape
    @property
    def num_chains(self) -> int:
        return self.theta.shape[0]

    @property
    def num_draws(self) -> int:
        """Draws per chain."""
        return self.theta.shape[1]

    @property
    def num_params(self) -> int:
        return self.theta.shape[2]

    def __repr__(self) -> str:
        flag = ", partial" if self.partial else ""
        return (
            f"Posterior(kind={self.kind!r}, chains={self.num_chains}, draws={self.num_draws}, "
            f"D={self.num_params}{flag})"
        )

    # ------------------------------------------------------------------ values
    def sites(self, constrained: bool = True) -> dict[str, Tensor]:
        """Named site values ``{name: (chains, draws, *shape)}``.

        Without a BNN (a bare log density) this is ``{"theta": theta}``.
        """
        if self.bnn is None:
            return {"theta": self.theta}
        return self.bnn.unravel(self.theta, constrained=constrained)

    def _require_bnn(self, what: str) -> BNN:
        if self.bnn is None:
            raise ValueError(
                f"{what}: this posterior has no BNN attached (it came from a bare log density)"
            )
        if self.num_draws == 0:
            raise ValueError(f"{what}: the posterior has no draws (the run stopped during warmup)")
        return self.bnn

    def predict(self, x: Tensor | DataLoader, *, chunk_size: int | None = None) -> Predictive:
        """Network outputs at ``x`` for every draw, with posterior predictive summaries.

        Parameters
        ----------
        x
            Inputs ``(N, ...)``; or a ``torch.utils.data.DataLoader`` whose batches are inputs
            or ``(x, y)`` pairs (inputs that do not fit in memory at once: the outputs of the
            batches are concatenated, in the loader's order).
        chunk_size
            Draws evaluated at once, at all rows. Default: chosen from the memory of a forward
            pass, measured on a few rows, so that the activations held at once stay within
            :data:`PREDICT_MEMORY_BUDGET` (all draws over chunks of rows where that leaves
            enough rows per chunk, else fewer draws at a time).

        Raises
        ------
        TypeError, ValueError
            Naming ``x`` or ``chunk_size`` (an integer >= 1, or ``None``).
        """
        bnn = self._require_bnn("predict")
        if isinstance(x, DataLoader):
            return self._predict_batches(x, chunk_size, targets=False)[0]
        x = bnn.check_inputs(x)
        draws, rows = self._chunks(x, chunk_size)
        chunks = (f for f, _ in self._output_chunks(x, draws, rows))
        f = _concatenate(chunks, self.num_chains * self.num_draws)
        _warn_non_finite(f)
        samples = f.reshape(self.num_chains, self.num_draws, *f.shape[1:])
        return Predictive(
            samples, bnn.likelihood, self._latents(), lambda y: bnn.check_data(x, y)[1]
        )

    def _predict_batches(
        self, loader: DataLoader, chunk_size: int | None, *, targets: bool
    ) -> tuple[Predictive, Tensor | None, Inputs]:
        """:meth:`predict` over a DataLoader's batches: the predictive at all its rows, the
        concatenated targets (with ``targets``, each batch an ``(x, y)`` pair), and the first
        batch's inputs (for shape checks)."""
        bnn = self.bnn
        assert bnn is not None
        samples, ys, first = [], [], None
        for batch in loader:
            pair = isinstance(batch, (tuple, list))
            xb = batch[0] if pair else batch
            if targets:
                if not (pair and len(batch) == 2):
                    raise TypeError("x: to evaluate, each batch of the DataLoader must be (x, y)")
                xb, yb = bnn.check_data(xb, batch[1])
                ys.append(yb)
            samples.append(self.predict(xb, chunk_size=chunk_size).samples)
            first = xb if first is None else first
        if first is None:
            raise ValueError("x: the DataLoader yields no batches")
        outputs = torch.cat(samples, dim=2)
        rows = outputs.shape[2]

        def check_targets(y: Tensor) -> Tensor:
            y = as_tensor("y", y)
            if y.dim() == 0 or y.shape[0] != rows:
                raise ValueError(f"y: has {y.shape[0] if y.dim() else 0} rows but x has {rows}")
            if y.is_floating_point():
                check_finite("y", y)
            y = bnn.likelihood.check_targets(y.to(bnn.device), bnn.out_features(first))
            return y.to(bnn.dtype) if y.is_floating_point() else y

        predictive = Predictive(outputs, bnn.likelihood, self._latents(), check_targets)
        return predictive, torch.cat(ys) if targets else None, first

    def _chunks(self, x: Inputs, chunk_size: int | None) -> tuple[int, int]:
        """Draws and rows evaluated at once at checked inputs ``x``: ``chunk_size`` draws at all
        rows if given, else a plan within :data:`PREDICT_MEMORY_BUDGET`."""
        n = inputs.num_rows(x)
        if chunk_size is not None:
            return check_count("chunk_size", chunk_size), n
        bnn = self.bnn
        assert bnn is not None
        flat = self.theta.flatten(0, 1)
        picked = torch.arange(PROBE_DRAWS) % len(flat)  # any draws: memory does not depend on them
        values = bnn.unravel(flat[picked].to(device=bnn.device, dtype=bnn.dtype))

        def probe(draws: int, rows: int) -> Tensor:
            some = {k: v[:draws] for k, v in values.items()}
            return bnn._forward(some, inputs.take_rows(x, slice(0, rows)))

        cost = forward_cost(probe, n)
        return plan_chunks(cost, self.num_chains * self.num_draws, n, PREDICT_MEMORY_BUDGET)

    def _latents(self) -> dict[str, Tensor]:
        """The likelihood's latent sites (a learned noise scale), ``(chains, draws, *shape)``."""
        assert self.bnn is not None
        with torch.no_grad():
            values = self.bnn.unravel(self.theta)
        return {k: values[k] for k in self.bnn.likelihood.latent_sites()}

    def _output_chunks(
        self, x: Inputs, draws: int, rows: int
    ) -> Iterator[tuple[Tensor, dict[str, Tensor]]]:
        """Network outputs ``(draws, N, out)`` at checked inputs ``x`` for successive chunks of
        the flattened draws, with the matching latent values; each chunk is computed ``rows``
        rows at a time."""
        bnn = self.bnn
        assert bnn is not None
        flat = self.theta.flatten(0, 1).to(device=bnn.device, dtype=bnn.dtype)
        latents = {k: v.flatten(0, 1) for k, v in self._latents().items()}
        for i in range(0, len(flat), draws):
            f = self._outputs_by_rows(flat[i : i + draws], x, rows)
            yield f, {k: v[i : i + draws] for k, v in latents.items()}

    def _outputs_by_rows(self, theta: Tensor, x: Inputs, rows: int) -> Tensor:
        """Outputs ``(P, N, out)`` of draws ``theta`` ``(P, D)``, ``rows`` rows at a time,
        written into one tensor."""
        bnn = self.bnn
        assert bnn is not None
        n = inputs.num_rows(x)
        values = bnn.unravel(theta)
        f: Tensor | None = None
        for j in range(0, n, rows):
            with torch.no_grad():  # x was checked once: no BNN.forward checks per chunk
                part = bnn._forward(values, inputs.take_rows(x, slice(j, j + rows)))
            if rows >= n:
                return part
            if f is None:
                f = part.new_empty((part.shape[0], n, *part.shape[2:]))
            f[:, j : j + rows] = part
        assert f is not None
        return f

    def evaluate(
        self,
        x: Tensor | DataLoader,
        y: Tensor | None = None,
        *,
        y_scale: float = 1.0,
        ood_x: Tensor | None = None,
        chunk_size: int | None = None,
    ) -> dict[str, float]:
        r"""Predictive metrics on held-out data, and for classifiers OOD detection and diversity.

        Regression: ``rmse`` of the predictive mean and ``nll``, the mean negative log
        posterior predictive density. Classification: ``accuracy``, ``nll``, ``ece`` (15 bins)
        and ``brier``, plus with ``ood_x``:

        - ``auroc_entropy``, ``auroc_mutual_information``, ``auroc_std``: AUROC of telling
          ``ood_x`` from ``x`` by the predictive entropy of the mean class probabilities, by the
          mutual information (BALD: entropy of the mean minus the draws' mean entropy), and by
          the draws' standard deviation of the class probabilities averaged over classes
          (D'Angelo, Fortuin & Wenzel 2021); see :func:`~bayesdl.diagnostics.ood_scores`.
        - ``disagreement``, ``pairwise_kl``: functional diversity of the draws on ``x``, the
          mean pairwise disagreement of their predicted classes and the mean pairwise
          :math:`\mathrm{KL}(p_i \| p_j)` over ordered pairs
          (:func:`~bayesdl.diagnostics.functional_diversity`); NaN with a single draw.
        - ``disagreement_ood``, ``pairwise_kl_ood``: the same on ``ood_x``.

        Every draw (chains and draws together; SVGD particles, ensemble members, VI draws) is a
        member, so these work for every backend. The class probabilities are never held for all
        draws at once: they are accumulated over chunks of draws in float64
        (:meth:`Predictive.member_statistics`), from the outputs :meth:`predict` already holds
        at ``x``, and from outputs computed and dropped chunk by chunk at ``ood_x``.

        Parameters
        ----------
        x, y
            Inputs and targets; or ``x`` a ``torch.utils.data.DataLoader`` of ``(x, y)``
            batches and ``y=None`` (data that do not fit in memory at once).
        y_scale
            Standard deviation used to standardise the targets (``Dataset.y_scale``): metrics are
            then reported in the original units (``rmse * y_scale``,
            ``nll + out * log(y_scale)``).
        ood_x
            Out-of-distribution inputs, shaped like ``x`` (classifiers only: a regression model
            raises ``ValueError``, since these scores need class probabilities; score OOD
            inputs of a regression by hand, e.g. ``ood_auroc(pred_in.std, pred_out.std)``).
        chunk_size
            Draws evaluated at once (default: a memory budget, as in :meth:`predict`).

        Raises
        ------
        ValueError
            Naming ``x``, ``y``, ``y_scale`` or ``ood_x``.
        """
        bnn = self._require_bnn("evaluate")
        scale = check_positive("y_scale", y_scale)
        pred = None
        if isinstance(x, DataLoader):
            if y is not None:
                raise ValueError("y: with x a DataLoader its batches are (x, y) pairs; give y=None")
            pred, y, x = self._predict_batches(x, chunk_size, targets=True)
        else:
            x, y = bnn.check_data(x, y)
        if ood_x is not None:
            if not bnn.likelihood.is_classifier:
                raise ValueError(
                    "ood_x: OOD and diversity metrics need class probabilities, but the "
                    f"likelihood ({type(bnn.likelihood).__name__}) is a regression likelihood; "
                    "score OOD inputs of a regression by hand, e.g. with "
                    "diagnostics.ood_auroc(pred_in.std, pred_out.std)"
                )
            ood_x = _check_named_inputs(bnn, ood_x, "ood_x")
            if inputs.row_shapes(ood_x) != inputs.row_shapes(x):
                raise ValueError(
                    f"ood_x: rows of shape {dict(inputs.row_shapes(ood_x))}, x has "
                    f"{dict(inputs.row_shapes(x))}"
                )
        if pred is None:
            pred = self.predict(x, chunk_size=chunk_size)
        if not bool(torch.isfinite(pred.samples).all()):
            raise ValueError(
                "evaluate: the network's outputs at x are NaN or infinite for some draws (see "
                "the warning of predict); drop those draws before computing metrics"
            )
        nll = -float(pred.log_prob(y).mean())
        if bnn.likelihood.is_classifier:
            probs = pred.mean
            metrics = {
                "accuracy": accuracy(probs, y),
                "nll": nll,
                "ece": expected_calibration_error(probs, y),
                "brier": brier_score(probs, y),
            }
            if ood_x is not None:
                metrics.update(self._ood_metrics(pred, ood_x, chunk_size))
            return metrics
        mean = pred.mean
        if mean.shape != y.shape and not (y.shape[-1] == 1 and mean.shape == y.shape[:-1]):
            raise ValueError(
                f"likelihood: {type(bnn.likelihood).__name__}.summary gives a predictive mean "
                f"of shape {tuple(mean.shape)} for targets of shape {tuple(y.shape)}; it must "
                "have one value per target"
            )
        return {
            "rmse": rmse(pred.mean, y) * scale,
            "nll": nll + y.shape[-1] * math.log(scale),
        }

    def _ood_metrics(
        self, pred: Predictive, ood_x: Tensor, chunk_size: int | None
    ) -> dict[str, float]:
        """OOD AUROCs and diversity from the predictions at ``x`` and draws streamed at ``ood_x``
        (whose outputs are never all held at once)."""
        assert self.bnn is not None
        stats_in = pred.member_statistics(chunk_size)
        stats_out = MemberStatistics()
        out = self.bnn.out_features(ood_x)
        draws = _stats_chunk(chunk_size, inputs.num_rows(ood_x), out)
        planned, rows = self._chunks(ood_x, chunk_size)
        for f, latents in self._output_chunks(ood_x, min(draws, planned), rows):
            stats_out.update(*_member_class_probs(self.bnn.likelihood, f, latents))
        scores_in, scores_out = stats_in.ood_scores(), stats_out.ood_scores()
        metrics = {f"auroc_{k}": ood_auroc(scores_in[k], scores_out[k]) for k in scores_in}
        for suffix, stats in (("", stats_in), ("_ood", stats_out)):
            many = stats.count >= 2
            metrics[f"disagreement{suffix}"] = stats.disagreement() if many else math.nan
            metrics[f"pairwise_kl{suffix}"] = stats.pairwise_kl() if many else math.nan
        return metrics

    # ------------------------------------------------------------------ ArviZ
    def to_arviz(
        self,
        x: Tensor | None = None,
        y: Tensor | None = None,
        probe: Tensor | None = None,
        *,
        seed: int = 0,
    ) -> Any:
        """Export to ArviZ (``InferenceData`` with ArviZ 0.x, ``DataTree`` with 1.x).

        Groups: ``posterior`` (every site in constrained space, ``(chain, draw, *shape)``, and
        ``f``, the network outputs at the probe inputs, ``(chain, draw, probe, out)``, so
        ``az.summary(idata, var_names=["f"])`` gives R-hat and ESS in function space);
        ``sample_stats``; with ``x``: ``posterior_predictive`` (``y`` drawn from the likelihood)
        and ``constant_data`` (``x``); with ``y`` too: ``log_likelihood`` (``y`` per observation,
        for ``az.loo``) and ``observed_data``.

        Parameters
        ----------
        x, y
            Inputs and targets to predict and score.
        probe
            Probe inputs for ``f`` (default: ``x``; no ``f`` without either).
        seed
            Seed of the posterior predictive draws.
        """
        check_count("seed", seed, minimum=0)
        groups: dict[str, dict[str, np.ndarray]] = {
            "posterior": {k: _np(v) for k, v in self.sites().items()},
            "sample_stats": {k: _np(v) for k, v in self.sample_stats.items()},
        }
        dims: dict[str, list[str]] = {}
        coords: dict[str, Any] = {}
        if y is not None and x is None:
            raise ValueError("y: targets need their inputs x")
        if probe is not None:
            probe = _check_named_inputs(self._require_bnn("probe"), probe, "probe")
        probe = x if probe is None else probe
        if probe is not None:
            f = self.predict(probe).samples
            groups["posterior"]["f"] = _np(f)
            dims["f"] = ["probe", "out"]
            coords.update(probe=np.arange(f.shape[2]), out=np.arange(f.shape[3]))
        if x is not None:
            bnn = self._require_bnn("to_arviz")
            x = bnn.check_inputs(x)
            pred = self.predict(x)
            y_pred = _squeeze_out(pred.sample(seed), bnn)
            groups["posterior_predictive"] = {"y": _np(y_pred)}
            coords["obs"] = np.arange(inputs.num_rows(x))
            dims["y"] = ["obs", *_extra_dims("y", y_pred.shape[3:], coords)]
            groups["constant_data"] = _constant_data(x, coords, dims)
            if y is not None:
                y = bnn.check_data(x, y)[1]
                groups["log_likelihood"] = {"y": _np(pred.log_likelihood(y))}
                groups["observed_data"] = {"y": _np(_squeeze_out(y, bnn))}
        attrs = {
            "inference_library": "bayesdl",
            "draws_are": self.kind,
            "rhat_applies": int(self.kind == "mcmc"),
            "partial": int(self.partial),
        }
        attrs.update({k: v for k, v in self.attrs.items() if isinstance(v, (str, int, float))})
        return from_groups(
            groups, coords=coords, dims=dims, attrs={"posterior": attrs, "sample_stats": attrs}
        )

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike | BinaryIO) -> None:
        """Save draws, statistics, metadata and the BNN declaration to one file.

        The BNN is pickled; if it cannot be (a prior rule with a lambda, say), the draws are
        still saved with a warning, and :meth:`load` then needs ``bnn=``. The BNN's parameter
        layout (site names and shapes) is saved too, so that :meth:`load` can check that the
        draws belong to the BNN it is given.

        Parameters
        ----------
        path
            The file to write (replaced if it exists); missing parent folders are created.
            Or a binary file object open for writing.

        In a run shared over processes (``attrs["distributed"]``, :mod:`bayesdl.distributed`),
        only rank 0, whose posterior holds every chain or particle, writes; on the other ranks
        ``save`` does nothing, so a script that saves runs unchanged under torchrun.

        Raises
        ------
        TypeError, ValueError
            Naming ``path``: not a path (``None``, say), or an existing folder.
        """
        target = save_target(path)
        if self.attrs.get("distributed") and _process_rank() > 0:
            return
        try:
            bnn_bytes = pickle.dumps(self.bnn) if self.bnn is not None else None
        except (pickle.PicklingError, AttributeError, TypeError) as err:
            warnings.warn(
                f"save: the BNN could not be pickled ({err}); saved the draws only, load them "
                "with Posterior.load(path, bnn=...)",
                stacklevel=2,
            )
            bnn_bytes = None
        payload = {
            "format": _FORMAT,
            "theta": self.theta,
            "sample_stats": self.sample_stats,
            "kind": self.kind,
            "partial": self.partial,
            "attrs": self.attrs,
            "bnn": bnn_bytes,
            "layout": None if self.bnn is None else _layout(self.bnn),
        }
        torch.save(payload, target)

    @classmethod
    def load(cls, path: str | os.PathLike | BinaryIO, bnn: BNN | None = None) -> Posterior:
        """Load a posterior written by :meth:`save`.

        Parameters
        ----------
        path
            The file (or a binary file object open for reading).
        bnn
            The BNN the draws belong to: its parameter layout (site names and shapes) must be
            the one saved in the file (files saved without a layout, by older versions, load
            with a warning). If omitted, the pickled BNN stored in the file is restored: only
            load files you trust (unpickling can run code).

        Raises
        ------
        TypeError, ValueError
            Naming ``path`` (not a file saved by :meth:`save`: truncated, corrupted, another
            format) or ``bnn`` (not a BNN, or a network whose layout differs from the saved
            one).
        FileNotFoundError
            If there is no file at ``path``.
        """
        _check_bnn(bnn)
        payload = read_payload(path)
        fmt = payload.get("format")
        if fmt in _EXTENDED_FORMATS and cls is Posterior:
            module, name = _EXTENDED_FORMATS[fmt].split(":")
            return getattr(importlib.import_module(module), name).load(path, bnn)
        if fmt != _FORMAT or not _PAYLOAD_KEYS <= payload.keys():
            raise ValueError(
                f"path: {_describe(path)} is not a saved bayesdl Posterior (no {_FORMAT!r} "
                "record); save posteriors with Posterior.save"
            )
        if bnn is None and payload["bnn"] is not None:
            bnn = _unpickle_bnn(payload["bnn"], path)
        elif bnn is not None:
            _check_layout(payload, bnn, path)
        return cls(
            payload["theta"],
            bnn,
            payload["sample_stats"],
            kind=payload["kind"],
            partial=payload["partial"],
            attrs=payload["attrs"],
        )


#: What a file written by ``Posterior.save`` holds, besides the layout (absent in older files).
_PAYLOAD_KEYS = {"format", "theta", "sample_stats", "kind", "partial", "attrs", "bnn"}


def _process_rank() -> int:
    """This process's rank in an initialised ``torch.distributed`` group (0 without one)."""
    distributed = torch.distributed
    if distributed.is_available() and distributed.is_initialized():
        return distributed.get_rank()
    return 0


def _describe(path: object) -> str:
    """``path`` for messages: the quoted path, or the type of a file object."""
    if isinstance(path, (str, os.PathLike)):
        return repr(os.fspath(path))
    return f"the {type(path).__name__} given"


def save_target(path: object) -> str | os.PathLike | BinaryIO:
    """Check where :meth:`Posterior.save` writes, creating missing parent folders.

    For formats that extend :class:`Posterior` (such as ``SparsePosterior``) and save their
    own payload: ``path`` itself if it is a binary file object, else its ``pathlib.Path``;
    ``TypeError``/``ValueError`` naming ``path`` if it is neither a path nor a file, or a
    folder.
    """
    if hasattr(path, "write"):
        return path  # type: ignore[return-value]
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(
            f"path: expected a file path (str or os.PathLike) or a binary file object, got "
            f"{type(path).__name__}"
        )
    target = pathlib.Path(path)
    if target.is_dir():
        raise ValueError(
            f"path: {str(target)!r} is a folder; give a file name in it, such as "
            f"{str(target / 'posterior.pt')!r}"
        )
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"path: cannot create the folder of {str(target)!r}: {err}") from err
    return target


def read_payload(path: object) -> dict[str, Any]:
    """The dict stored by :meth:`Posterior.save`; ``ValueError`` naming ``path`` otherwise.

    Also read by the formats that extend :class:`Posterior` (such as ``SparsePosterior``).
    """
    if not (hasattr(path, "read") or isinstance(path, (str, os.PathLike))):
        raise TypeError(
            f"path: expected a file path (str or os.PathLike) or a binary file object, got "
            f"{type(path).__name__}"
        )
    if isinstance(path, (str, os.PathLike)) and pathlib.Path(path).is_dir():
        raise ValueError(f"path: {_describe(path)} is a folder, not a saved Posterior")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"path: no file at {_describe(path)}") from None
    except PermissionError:
        raise
    except Exception as err:  # torch.load fails in many ways on foreign or damaged files
        raise ValueError(
            f"path: {_describe(path)} is not a readable saved bayesdl Posterior (truncated, "
            f"corrupted or another format: {type(err).__name__}: {str(err)[:200]})"
        ) from None
    if not isinstance(payload, dict):
        raise ValueError(
            f"path: {_describe(path)} holds a {type(payload).__name__}, not a saved bayesdl "
            "Posterior; save posteriors with Posterior.save"
        )
    return payload


def _unpickle_bnn(data: bytes, path: object) -> BNN:
    """The BNN pickled in a saved file; ``ValueError`` saying to pass ``bnn=`` if it fails."""
    try:
        bnn = pickle.loads(data)
    except Exception as err:  # a class renamed or removed since, a damaged pickle...
        raise ValueError(
            f"path: the BNN stored in {_describe(path)} cannot be restored "
            f"({type(err).__name__}: {err}); pass the network with Posterior.load(path, bnn=...)"
        ) from err
    _check_bnn(bnn)
    return bnn


def _layout(bnn: BNN) -> list[list[Any]]:
    """The BNN's sites in flat order, ``[[name, [*shape]], ...]``, as saved in a file."""
    return [[site.name, list(site.shape)] for site in bnn.layout.sites]


def _check_layout(payload: Mapping[str, Any], bnn: BNN, path: object) -> None:
    """Check that ``bnn`` has the parameter layout saved with the draws (files of a posterior
    without a BNN have none: only the number of parameters is checked then)."""
    saved = payload.get("layout")
    if "layout" not in payload:
        warnings.warn(
            f"load: {_describe(path)} was saved without its parameter layout (by an older "
            "bayesdl), so it cannot be checked that its draws belong to this bnn; save it "
            "again to store the layout",
            stacklevel=3,
        )
        return
    if saved is None:
        return
    expected = [(str(name), tuple(shape)) for name, shape in saved]
    actual = [(name, tuple(shape)) for name, shape in _layout(bnn)]
    for i, (want, got) in enumerate(itertools.zip_longest(expected, actual)):
        if want != got:
            raise ValueError(
                f"bnn: not the network the draws in {_describe(path)} belong to: site {i} is "
                f"{_site(want)} in the file but {_site(got)} in bnn; pass the BNN the posterior "
                "was fitted with (same parameters, priors and likelihood)"
            )


def _site(site: tuple[str, tuple[int, ...]] | None) -> str:
    return "missing" if site is None else f"{site[0]!r} of shape {site[1]}"


def _concatenate(chunks: Iterable[Tensor], total: int) -> Tensor:
    """Chunks ``(P_i, ...)`` with ``sum(P_i) = total`` as one tensor, written in place as they
    come (never held twice over, as ``torch.cat`` of a list would)."""
    out: Tensor | None = None
    start = 0
    for part in chunks:
        if out is None:
            if len(part) == total:
                return part
            out = part.new_empty((total, *part.shape[1:]))
        out[start : start + len(part)] = part
        start += len(part)
    assert out is not None
    return out


def _warn_non_finite(f: Tensor) -> None:
    """Warn if the outputs ``(S, N, out)`` of some draws are not finite."""
    finite = torch.isfinite(f).flatten(1).all(1)
    bad = int((~finite).sum())
    if bad:
        first = int((~finite).nonzero()[0, 0])
        warnings.warn(
            f"predict: the network's outputs are NaN or infinite for {bad} of {len(f)} draws "
            f"(the first: flat draw {first}, i.e. theta.flatten(0, 1)[{first}]), so predictions "
            "that average over them are not finite; such draws come from a diverged run (see "
            "posterior.partial and sample_stats) or inputs far outside the data. Keep the "
            "finite draws with Posterior(theta, bnn), theta of shape (1, draws, D)",
            RuntimeWarning,
            stacklevel=3,
        )


def _check_mapping(name: str, value: object) -> None:
    if value is not None and not isinstance(value, Mapping):
        raise TypeError(f"{name}: expected a dict (or None), got {type(value).__name__}")


def _check_bnn(bnn: object) -> None:
    """Raise ``TypeError`` naming ``bnn`` unless it is a :class:`~bayesdl.models.BNN` or None."""
    from bayesdl.models import BNN  # imported here: importing bayesdl must not import models

    if bnn is not None and not isinstance(bnn, BNN):
        raise TypeError(
            f"bnn: expected a bayesdl.models.BNN (the network the draws belong to) or None, "
            f"got {type(bnn).__name__}"
        )


def _check_named_inputs(bnn: BNN, x: object, name: str) -> Inputs:
    """``bnn.check_inputs`` for an argument not called ``x``: its errors name ``name`` (or its
    part, ``name[0]``)."""
    try:
        return bnn.check_inputs(x)
    except (TypeError, ValueError) as err:
        message = str(err)
        if message.startswith(("x:", "x[")):
            message = f"{name}{message[1:]}"
        elif not message.startswith(f"{name}:"):
            message = f"{name}: {message}"
        raise type(err)(message) from None


def _constant_data(
    x: Inputs, coords: dict[str, Any], dims: dict[str, list[str]]
) -> dict[str, np.ndarray]:
    """The inputs as ArviZ ``constant_data``: ``x``, or one variable per part of a tuple or
    dict (``x_0``, ``x_1``; ``x_tokens``), each with dimensions ``(obs, ...)``."""
    named = inputs.parts(x, variables=True)
    for name, part in named.items():
        dims[name] = ["obs", *_extra_dims(name, part.shape[1:], coords)]
    return {name: _np(part) for name, part in named.items()}


def _np(value: Tensor) -> np.ndarray:
    return value.detach().cpu().numpy()


def _extra_dims(name: str, shape: tuple[int, ...], coords: dict[str, Any]) -> list[str]:
    """Name the dimensions after ``obs`` of variable ``name`` and give them coordinates."""
    names = [f"{name}_dim_{i}" for i in range(len(shape))]
    coords.update({n: np.arange(size) for n, size in zip(names, shape, strict=True)})
    return names


def _squeeze_out(y: Tensor, bnn: BNN) -> Tensor:
    """Drop the output dimension of single-output regression targets for ArviZ."""
    if not bnn.likelihood.is_classifier and y.shape[-1] == 1:
        return y[..., 0]
    return y
