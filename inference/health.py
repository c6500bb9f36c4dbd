r"""The health of a run: what the progress bar shows, and the warnings at the end of ``fit``.

A run that goes wrong must say so, naming the cause and the fix. For HMC and NUTS:

* **depth cap**: trees that reach ``max_tree_depth`` (or HMC trajectories cut at
  ``max_steps``) in most iterations (more than :data:`CAP_FRACTION`) were stopped before they
  made a U-turn, so successive draws are strongly correlated;
* **no mixing**: the split R-hat (Gelman et al. 2013, BDA3 §11.4) of the network's outputs at
  a few training inputs (the *probe inputs*, :data:`PROBE_ROWS` of them) is above
  :data:`RHAT_MAX` with two chains or more. Function space, because weight-space R-hat is
  meaningless for networks (permuting hidden units leaves the function unchanged);
* **a density that raised** at some proposals (:mod:`bayesdl.inference.mcmc.robust`): each made
  a divergent transition of its chain; a :class:`DensityErrorWarning` names the error, the chains
  and how often, in warmup and while sampling;
* **stuck chains**: nearly every transition diverged (more than :data:`STUCK_FRACTION`), the
  mean acceptance is about 0 (below :data:`STUCK_ACCEPTANCE`), a chain never moved, or a
  chain ends frozen (its last transitions, at least :data:`FROZEN_TAIL` of the draws, all
  diverged without moving it: a density that turned NaN part-way): the draws are then the
  starting points (or one point), not the posterior.

For particle methods (SVGD, ensembles): **exploding particles**, whose root-mean-square size
grew more than :data:`EXPLOSION_FACTOR`-fold from the start, or whose final log joint is not
finite.

Split R-hat of draws :math:`\psi_{cs}` (each chain split into halves, so :math:`m = 2C`
sequences of length :math:`n`): with :math:`W` the mean within-sequence variance and
:math:`B/n` the variance of the sequence means,
:math:`\hat R = \sqrt{((n-1)/n\,W + B/n) / W}`. It is computed in torch, vectorised over probe
inputs and outputs, so it is cheap enough for the progress bar; ``post.to_arviz(probe=x)``
gives ArviZ's rank-normalised version and the ESS.
"""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from bayesdl import inputs

if TYPE_CHECKING:  # pragma: no cover
    from bayesdl import Posterior
    from bayesdl.inputs import Inputs
    from bayesdl.models import BNN

__all__ = [
    "CAP_FRACTION",
    "EXPLOSION_FACTOR",
    "FROZEN_TAIL",
    "PROBE_ROWS",
    "RHAT_MAX",
    "STUCK_ACCEPTANCE",
    "STUCK_FRACTION",
    "ConvergenceWarning",
    "DensityErrorWarning",
    "ProgressMonitor",
    "density_problems",
    "function_rhat",
    "mcmc_problems",
    "particle_problems",
    "probe_inputs",
    "split_rhat",
    "warn_all",
]


class ConvergenceWarning(UserWarning):
    """A run finished but its draws or particles are not trustworthy (the message says why and
    what to do). A ``UserWarning``, as scikit-learn's: filter it by this class."""


class DensityErrorWarning(ConvergenceWarning):
    """The log density raised at some proposals of an HMC/NUTS run; each such proposal was
    a divergent transition of its chain, the other chains went on
    (:mod:`bayesdl.inference.mcmc.robust`)."""


#: Warn when more than this share of the iterations hit the depth (or step) cap.
CAP_FRACTION = 0.5
#: Warn when the function-space split R-hat exceeds this (with two chains or more).
RHAT_MAX = 1.1
#: Probe inputs for the function-space R-hat: this many training rows, evenly spaced.
PROBE_ROWS = 8
#: Stuck chains: more than this share of the transitions diverged...
STUCK_FRACTION = 0.9
#: ...or the mean acceptance statistic is below this.
STUCK_ACCEPTANCE = 0.05
#: Exploding particles: their RMS size grew more than this factor during the run.
EXPLOSION_FACTOR = 1e3
#: A chain ends frozen if its last transitions (at least this share of the draws, and 3) all
#: diverged without moving it.
FROZEN_TAIL = 0.25
#: A chain counts as frozen if it never moved in at least this many draws.
_FROZEN_DRAWS = 10
#: Draws per vectorised forward pass when computing function values at the probe inputs.
_CHUNK = 256
#: The progress bar recomputes the R-hat every this many draws.
_RHAT_EVERY = 10


def split_rhat(values: Tensor) -> Tensor:
    """Split R-hat of draws ``(chains, draws, ...)``, vectorised over the trailing dimensions.

    NaN where there are fewer than 4 draws per chain; ``inf`` where the chains are constant
    but differ from each other.
    """
    draws = values.shape[1]
    half = draws // 2
    if half < 2:
        return torch.full(values.shape[2:], math.nan, dtype=torch.float64)
    v = values.double()
    halves = torch.cat([v[:, :half], v[:, draws - half :]], dim=0)
    within = halves.var(dim=1).mean(dim=0)
    between = half * halves.mean(dim=1).var(dim=0)
    pooled = (half - 1) / half * within + between / half
    return (pooled / within).sqrt()


def probe_inputs(x: Inputs, rows: int = PROBE_ROWS) -> Inputs:
    """``rows`` training inputs, evenly spaced through ``x`` (all of them if fewer)."""
    n = inputs.num_rows(x)
    index = torch.linspace(0, n - 1, min(rows, n)).round().long().unique()
    return inputs.take_rows(x, index.to(inputs.device_of(x)))


def function_values(bnn: BNN, theta: Tensor, probe: Inputs) -> Tensor:
    """The network's outputs at ``probe`` for draws ``(chains, draws, D)``: ``(C, S, n*out)``."""
    chains, draws, dim = theta.shape
    flat = theta.reshape(chains * draws, dim).to(dtype=bnn.dtype, device=bnn.device)
    with torch.no_grad():
        f = torch.cat([bnn.forward(part, probe) for part in flat.split(_CHUNK)])
    return f.reshape(chains, draws, -1).cpu()


def function_rhat(bnn: BNN, theta: Tensor, probe: Inputs) -> float:
    """The largest split R-hat of the network's outputs at ``probe``; NaN if undefined."""
    if theta.shape[0] < 2:
        return math.nan
    rhat = split_rhat(function_values(bnn, theta, probe))
    return float(rhat.max()) if rhat.numel() and not bool(rhat.isnan().all()) else math.nan


def _share(flags: Tensor) -> float:
    return float(flags.double().mean()) if flags.numel() else 0.0


def _cap_problem(posterior: Posterior, max_tree_depth: int | None, max_steps: int | None) -> str:
    stats, name = posterior.sample_stats, posterior.attrs.get("inference", "mcmc").upper()
    if max_tree_depth is not None and "tree_depth" in stats:
        share = _share(stats["tree_depth"] >= max_tree_depth)
        if share > CAP_FRACTION:
            return (
                f"{name}: trees hit the depth cap max_tree_depth={max_tree_depth} in "
                f"{share:.0%} of the iterations, so the trajectories were cut before they "
                "turned and successive draws are strongly correlated. Raise max_tree_depth "
                "(each level doubles the cost), reparameterise or tighten the prior (e.g. "
                "priors.Gaussian(fan_in=True)), learn the likelihood noise, or run a longer "
                "warmup"
            )
    if max_steps is not None and "n_steps" in stats:
        share = _share(stats["n_steps"] >= max_steps)
        if share > CAP_FRACTION:
            return (
                f"{name}: trajectories were cut at max_steps={max_steps} in {share:.0%} of the "
                "iterations (the adapted step size is small for the trajectory_length). Raise "
                "max_steps, lower trajectory_length, reparameterise or tighten the prior, or "
                "use NUTS"
            )
    return ""


def _frozen_ends(theta: Tensor, diverging: Tensor | None) -> list[tuple[int, int]]:
    """Chains that end frozen: ``(chain, first frozen draw)`` for each chain whose last
    ``k >= max(3, FROZEN_TAIL * draws)`` transitions all diverged and left it where it was
    (a log density that became NaN or infinite around the chain part-way through the run)."""
    if diverging is None or theta.shape[1] < 4:
        return []
    draws = theta.shape[1]
    # unmoved[c, i]: draw i equals draw i - 1 and transition i diverged (i >= 1)
    unmoved = (theta[:, 1:] == theta[:, :-1]).flatten(2).all(-1) & diverging[:, 1:].bool()
    minimum = max(3, math.ceil(FROZEN_TAIL * draws))
    ended = []
    for chain in range(theta.shape[0]):
        tail = 0
        for flag in reversed(unmoved[chain].tolist()):
            if not flag:
                break
            tail += 1
        if tail >= minimum:
            ended.append((chain, draws - tail))
    return ended


def _stuck_problem(posterior: Posterior) -> str:
    stats, theta = posterior.sample_stats, posterior.theta
    facts = []
    if "diverging" in stats and _share(stats["diverging"]) > STUCK_FRACTION:
        facts.append(f"{_share(stats['diverging']):.0%} of the transitions diverged")
    if "acceptance_rate" in stats:
        accept = float(stats["acceptance_rate"].double().mean())
        if accept < STUCK_ACCEPTANCE:
            facts.append(f"the mean acceptance is {accept:.3f}")
    if theta.shape[1] >= _FROZEN_DRAWS:
        frozen = (theta[:, 1:] == theta[:, :1]).flatten(1).all(-1).nonzero().flatten().tolist()
        if frozen:
            facts.append(f"chain(s) {frozen} never moved in {theta.shape[1]} draws")
    ended = _frozen_ends(theta, stats.get("diverging"))
    if ended:
        facts.append(
            "chain(s) "
            + ", ".join(f"{chain} from draw {start}" for chain, start in ended)
            + " stopped moving, every later transition divergent"
        )
    if not facts:
        return ""
    name = posterior.attrs.get("inference", "mcmc").upper()
    return (
        f"{name}: the chains are stuck: {', '.join(facts)}; the draws are (near) the starting "
        "points, not the posterior. A step size far too large (step_size= with warmup=0) or a "
        "log density that is NaN or infinite around the chains (a network returning NaN) does "
        "this. Let warmup adapt the step size (warmup > 0, step_size=None), check the "
        "network's outputs, or start elsewhere (init_theta=)"
    )


def _rhat_problem(posterior: Posterior, probe: Inputs | None) -> str:
    theta, bnn = posterior.theta, posterior.bnn
    if probe is None or bnn is None or theta.shape[0] < 2 or theta.shape[1] < 4:
        return ""
    rhat = function_rhat(bnn, theta, probe)
    if not rhat > RHAT_MAX:  # NaN (constant functions) says nothing about mixing
        return ""
    name = posterior.attrs.get("inference", "mcmc").upper()
    return (
        f"{name}: the chains have not mixed: the split R-hat of the network's outputs at "
        f"{inputs.num_rows(probe)} training inputs is up to {rhat:.3g} (above {RHAT_MAX}), so "
        "the chains disagree about the function. Run longer (more warmup and draws) or more "
        "chains; see post.to_arviz(probe=x) and az.summary(idata, var_names=['f'])"
    )


def mcmc_problems(
    posterior: Posterior,
    *,
    max_tree_depth: int | None = None,
    max_steps: int | None = None,
    probe: Inputs | None = None,
) -> list[str]:
    """What went wrong in an HMC/NUTS run, one message (cause and fix) per problem.

    Parameters
    ----------
    posterior
        The run's result (its ``sample_stats`` and draws; nothing if it has no draws).
    max_tree_depth
        NUTS's depth cap, to report trees that hit it.
    max_steps
        HMC's cap on the steps of a trajectory given by length, to report trajectories cut.
    probe
        Probe inputs for the function-space R-hat (needs a BNN attached to the posterior).
    """
    if posterior.theta.shape[1] == 0:
        return []
    stuck = _stuck_problem(posterior)
    if stuck:  # the other diagnostics are meaningless on frozen chains
        return [stuck]
    found = [_cap_problem(posterior, max_tree_depth, max_steps), _rhat_problem(posterior, probe)]
    return [message for message in found if message]


def particle_problems(initial: Tensor, final: Tensor, log_joint: Tensor, lr: float) -> list[str]:
    """Exploding particles: RMS size grown over :data:`EXPLOSION_FACTOR`-fold, or a
    non-finite final log joint (``initial``, ``final``: ``(P, D)``; ``log_joint``: ``(P,)``)."""
    start = float(initial.double().square().mean().sqrt())
    end = float(final.double().square().mean().sqrt())
    grown = end > EXPLOSION_FACTOR * max(start, 1.0)
    bad = (~torch.isfinite(log_joint)).nonzero().flatten().tolist()
    if not (grown or bad or not math.isfinite(end)):
        return []
    facts = []
    if grown or not math.isfinite(end):
        facts.append(f"the particles exploded: their RMS size went from {start:.3g} to {end:.3g}")
    if bad:
        facts.append(f"the log joint is not finite for particle(s) {bad}")
    return [
        f"lr: {'; '.join(facts)}. They are not posterior draws. Lower the learning rate "
        f"(lr={lr:g}; the default is 1e-2 with Adam), tighten the prior, or check the "
        "network's outputs"
    ]


def density_problems(posterior: Posterior) -> list[str]:
    """Where the log density of an HMC/NUTS run raised (at most one message).

    Reads ``sample_stats["density_raised"]`` and ``attrs["density_raised_warmup"]`` and
    ``attrs["density_error"]`` (:func:`bayesdl.inference.mcmc.run.run_mcmc`).
    """
    stats, attrs = posterior.sample_stats, posterior.attrs
    in_warmup = int(attrs.get("density_raised_warmup", 0))
    per_chain = stats["density_raised"].sum(-1) if "density_raised" in stats else None
    sampling = int(per_chain.sum()) if per_chain is not None else 0
    if not (in_warmup or sampling):
        return []
    name = attrs.get("inference", "mcmc").upper()
    error = attrs.get("density_error") or "an error"
    advice = (
        "If the density is undefined there, return -inf instead of raising (or constrain the "
        "parameters, e.g. add jitter to a covariance); see sample_stats['density_raised']"
    )
    if not sampling:
        return [
            f"{name}: the log density raised ({error}) at {in_warmup} proposal(s) during "
            "warmup, none while sampling; each such proposal was rejected as a divergence of "
            "its chain only (the other chains went on) and the draws are unaffected. " + advice
        ]
    chains = per_chain.nonzero().flatten().tolist()
    return [
        f"{name}: the log density raised ({error}) at {sampling} proposal(s) of chain(s) "
        f"{chains} while sampling ({in_warmup} during warmup); each was a divergent "
        "transition of that chain only, so these chains could not explore where the density "
        "raises. " + advice
    ]


def warn_all(
    problems: list[str],
    stacklevel: int = 3,
    category: type[ConvergenceWarning] = ConvergenceWarning,
) -> None:
    """Issue one ``category`` warning per problem (``stacklevel=3``: the caller of the
    caller)."""
    for message in problems:
        warnings.warn(message, category, stacklevel=stacklevel)


class ProgressMonitor:
    """The progress bar's view of a run's health: the running share of iterations at the depth
    cap (``capped``) and, while sampling, the function-space R-hat (``R^f``).

    Parameters
    ----------
    max_tree_depth
        The depth cap (``None``: no ``capped`` entry).
    bnn, probe
        The model and probe inputs of the R-hat (``None``: no ``R^f`` entry).
    """

    def __init__(self, max_tree_depth: int | None, bnn: BNN | None, probe: Inputs | None) -> None:
        self.max_tree_depth = max_tree_depth
        self.bnn, self.probe = bnn, probe
        self._stage: str | None = None
        self._capped = 0
        self._seen = 0
        self._functions: list[Tensor] = []
        self._rhat = math.nan

    def update(self, stage: str, position: Tensor, tree_depth: Tensor) -> dict[str, str]:
        """Record one iteration of every chain; return the postfix entries."""
        if stage != self._stage:
            self._stage, self._capped, self._seen = stage, 0, 0
        postfix = {}
        if self.max_tree_depth is not None:
            self._capped += int((tree_depth >= self.max_tree_depth).sum())
            self._seen += tree_depth.numel()
            postfix["capped"] = f"{self._capped / self._seen:.0%}"
        if stage == "sampling" and self.bnn is not None and self.probe is not None:
            self._track_rhat(position)
            if math.isfinite(self._rhat):
                flag = "!" if self._rhat > RHAT_MAX else ""
                postfix["R^f"] = f"{self._rhat:.2f}{flag}"
        return postfix

    def _track_rhat(self, position: Tensor) -> None:
        if position.shape[0] < 2:
            return
        with torch.no_grad():
            f = self.bnn.forward(position.detach(), self.probe)
        self._functions.append(f.reshape(f.shape[0], -1).cpu())
        if len(self._functions) % _RHAT_EVERY == 0:
            rhat = split_rhat(torch.stack(self._functions, dim=1))
            self._rhat = float(rhat.max()) if not bool(rhat.isnan().all()) else math.nan
