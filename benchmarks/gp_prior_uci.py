r"""GP-matched priors on UCI regression under Tran et al.'s (JMLR 2022) protocol.

For every data set and split (the standard Hernández-Lobato & Adams splits, inputs and targets
standardised with the training split's statistics) this benchmark

1. fits two GP-matched priors (:func:`bayesdl.priors.functional.fit_gp_prior`) for a 1 x 100
   tanh MLP: the Gaussian family (GPi-G) and the hierarchical family (GPi-H). The target is
   the paper's hierarchical RBF-ARD GP (log lengthscale ~ N(log sqrt(2D), 1), log variance
   ~ N(0.1, 1)); the measurement set has 100 points, 70% training inputs and 30% uniform in
   the bounding box of the training *and* test inputs, redrawn every outer step; 200 outer
   steps (RMSprop, lr 0.05), 128 functions per distribution, the paper's softplus
   parameterisation (sigma_0 = softplus(1)) and softplus-read hyperprior draws, critic Adagrad
   lr 0.02 with early stop at gradient norm 0.1. The prior is refitted for every split, as in
   the paper. One deviation by default: the critic is warm-started (network and Adagrad state
   kept) with 10 steps per outer step, where the paper trains a fresh critic for up to 200;
   ``fit_gp_prior``'s docstring documents that both reach the same distance (independent
   critic), and ``--critic fresh`` restores the paper's schedule.
2. samples the posterior with adaptive SGHMC for three priors: the paper's fixed baseline
   (fan-in N(0, 1): weights N(0, 1/n_in), biases N(0, 1)), GPi-G and GPi-H, all from the
   SAME start (weights N(0, 1/n_in), biases 0; one start per chain, shared by the priors);
3. fits one extra row with a second backend (mean-field VI) on the GPi-G prior;
4. (second pass) repeats the three SGHMC rows with a learned noise scale.

Rows (``--rows``):

* ``fanin``, ``gpi-g``, ``gpi-h``: fixed noise variance 0.1 in standardised units (the paper);
* ``gpi-g-vi``: GPi-G prior, fixed noise, mean-field VI (functional engine);
* ``fanin-learned``, ``gpi-g-learned``, ``gpi-h-learned``: noise std learned with a
  HalfNormal(1) prior (standardised units), started at sqrt(0.1).

Adaptive SGHMC: mapping to the paper's settings
-----------------------------------------------
The reference sampler (Springenberg et al. 2016, as in ``optbnn``'s ``AdaptiveSGHMC``) updates

    v <- v - lr^2 M^-1 grad U - mdecay v + N(0, 2 lr^2 mdecay M^-1 - lr^4),   theta <- theta + v

where ``grad U`` is the full-data gradient of the negative log joint (the per-example loss
times ``scale_grad = N``) and ``M^-1 = 1 / sqrt(v_hat)`` adapts during burn-in. bayesdl's SGHMC
(``inference/sgmcmc/samplers.py``) updates
``v <- (1 - alpha) v + eta M^-1 g + N(0, 2 alpha eta M^-1 - eta^2)`` with ``g`` the full-data
gradient of the log joint and the same adaptive ``M^-1``.
The two coincide for ``alpha = mdecay`` and ``eta = lr^2``: the paper's lr 1e-2 is bayesdl's
``lr=1e-4`` (``--lr`` takes the paper's value and squares it). Remaining differences: the
reference clips the per-example gradient norm at 100 (bayesdl does not clip); the reference
updates the adaptation window tau from the previous moment estimates, bayesdl from the new
ones (Springenberg's order); bayesdl runs the 4 chains as one batch sharing minibatches
(the reference runs them one after another); for GPi-H the per-layer scale is a latent site
sampled by SGHMC jointly with the weights (the reference Gibbs-resamples it every 1,000
steps).

Schedule: 2,000 burn-in steps (the preconditioner adapts there only), then one sample every
2,000 steps, 40 per chain of which the first 10 are dropped: 120 samples from 82,000 steps per
chain.

Reported per data set: test RMSE and test log-likelihood in original units, mean +- SE over
splits; for each prior the paired difference to ``fanin`` +- paired SE and the splits won;
R-hat (split-R-hat over the 4 chains) of the test predictions; the published MC-dropout rows
(same splits, and all 20).

Usage::

    BAYESDL_DATA=../shared/data OMP_NUM_THREADS=1 python benchmarks/gp_prior_uci.py \
        --splits 0-9                                   # run (resumes; skips finished rows)
    python benchmarks/gp_prior_uci.py --report         # markdown table from the JSON
    python benchmarks/gp_prior_uci.py --quick --out /tmp/x.json   # a smoke test in seconds

Results are appended as JSON lines (one record per data set, split and row) to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyro.distributions as dist
import torch
from torch import Tensor

import bayesdl
from bayesdl import likelihoods, priors
from bayesdl.models import BNN, MLP
from bayesdl.priors import measurement
from bayesdl.priors.functional import fit_gp_prior
from bayesdl.priors.gp import uci_target_kernel
from bayesdl.priors.gp_matched import GPMatched

DEFAULT_SETS = ("bostonHousing", "concrete", "energy", "yacht", "wine-quality-red")
PRIMARY_ROWS = ("fanin", "gpi-g", "gpi-h", "gpi-g-vi")
SECONDARY_ROWS = ("fanin-learned", "gpi-g-learned", "gpi-h-learned")
ALL_ROWS = PRIMARY_ROWS + SECONDARY_ROWS
BASELINE = "fanin"
NOISE_VARIANCE = 0.1
DEFAULT_OUT = "benchmarks/results/gp_prior_uci.json"


# ------------------------------------------------------------------------------- records


def load_records(path: pathlib.Path) -> list[dict[str, Any]]:
    """All records in the JSON-lines file ``path`` (empty if it does not exist).

    Parameters
    ----------
    path
        The results file.

    Returns
    -------
    list of dict
        One dict per line; malformed lines (an interrupted write) are skipped.
    """
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def append_record(path: pathlib.Path, record: dict[str, Any]) -> None:
    """Append one record as a JSON line to ``path`` (created with its folder if needed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        handle.write(json.dumps(record) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


# ------------------------------------------------------------------------------- set-up


def make_net(in_features: int, width: int) -> MLP:
    """The paper's UCI network: one hidden layer of ``width`` tanh units."""
    return MLP(in_features, [width], 1, activation="tanh")


def fit_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """Settings passed to ``fit_gp_prior`` (besides the net, kernel and measurement set).

    Parameters
    ----------
    args
        The parsed command line.

    Returns
    -------
    dict
        Keyword arguments of :func:`fit_gp_prior`.
    """
    warm = args.critic == "warm"
    steps = args.critic_steps if args.critic_steps is not None else (10 if warm else 200)
    return {
        "steps": args.fit_steps,
        "num_functions": args.num_functions,
        "lr": 0.05,
        "critic": {"steps": steps, "lr": 0.02, "threshold": 0.1, "warm_start": warm},
        "parameterisation": args.parameterisation,
        "hyperprior_draws": args.hyperprior_draws,
        "max_scale": args.max_scale,
    }


def fit_prior(
    family: str, data: bayesdl.data.Dataset, args: argparse.Namespace, seed: int
) -> tuple[GPMatched, dict[str, Any]]:
    """Fit a GP-matched prior of ``family`` on one split.

    Parameters
    ----------
    family
        ``"gaussian"`` or ``"hierarchical"``.
    data
        The standardised split.
    args
        The parsed command line (fit settings).
    seed
        Seed of the fit.

    Returns
    -------
    prior, record
        The fitted prior and a JSON-ready summary (hyperparameters, seconds, distances).
    """
    net = make_net(data.in_features, args.width)
    kwargs = fit_kwargs(args)
    start = time.perf_counter()
    prior = fit_gp_prior(
        net,
        uci_target_kernel(data.in_features),
        measurement.from_data(
            data.x_train, args.measurement_points, 0.3, x_test=data.x_test
        ),  # 70% training inputs, 30% uniform in the train+test box
        family=family,
        seed=seed,
        progress=False,
        **kwargs,
    )
    seconds = time.perf_counter() - start
    values = {n: {k: float(v) for k, v in e.items()} for n, e in prior.values.items()}
    record = {
        "family": family,
        "seconds": seconds,
        "values": values,
        "shapes": {k: list(v) for k, v in prior.shapes.items()},
        "final_distance": float(prior.final_distance),
        "exact_w1": {k: float(v) for k, v in prior.history.exact.items()},
        "settings": {k: (v if not isinstance(v, dict) else dict(v)) for k, v in kwargs.items()},
    }
    return prior, record


def prior_from_record(record: dict[str, Any]) -> GPMatched:
    """Rebuild a fitted prior from its stored record (resuming a split)."""
    return GPMatched(
        record["family"],
        {n: {k: torch.tensor(v) for k, v in e.items()} for n, e in record["values"].items()},
        {k: tuple(v) for k, v in record["shapes"].items()},
    )


def common_start(net: MLP, chains: int, seed: int) -> dict[str, Tensor]:
    """The paper's start: weights ~ N(0, 1/n_in), biases 0, one draw per chain.

    Parameters
    ----------
    net
        The network (names and shapes only).
    chains
        Number of chains.
    seed
        Seed of the draw; the same seed gives the same start for every prior.

    Returns
    -------
    dict
        ``{parameter name: (chains, *shape)}``.
    """
    gen = torch.Generator().manual_seed(seed)
    start = {}
    for name, param in net.named_parameters():
        if name.endswith("bias"):
            start[name] = torch.zeros(chains, *param.shape)
        else:
            fan_in = priors.fan_in_of(param)
            start[name] = torch.randn(chains, *param.shape, generator=gen) / math.sqrt(fan_in)
    return start


def initial_theta(bnn: BNN, weights: dict[str, Tensor], chains: int) -> Tensor:
    """Flat unconstrained ``theta`` ``(chains, D)`` holding ``weights`` and neutral latents.

    Hierarchical scales start at ``sqrt(rate / concentration)`` of their fitted inverse-Gamma
    (the scale whose precision is the prior mean precision); a learned noise scale starts at
    ``sqrt(0.1)``, the paper's fixed value.
    """
    sites: dict[str, Tensor] = {}
    prior = bnn.prior
    for name in bnn.layout.names:
        if name in weights:
            sites[name] = weights[name]
        elif name == likelihoods.Gaussian.site:
            sites[name] = torch.full((chains,), math.sqrt(NOISE_VARIANCE))
        elif name.endswith("_scale"):
            owner = name[: -len("_scale")]
            values = _gp_values(prior)[owner]
            scale = math.sqrt(float(values["rate"]) / float(values["concentration"]))
            sites[name] = torch.full((chains,), scale)
        else:
            raise ValueError(f"no start value for site {name!r}")
    return bnn.ravel(sites)


def _gp_values(prior: Any) -> dict[str, dict[str, Tensor]]:
    """The fitted values of a (possibly wrapped) GP-matched prior."""
    for candidate in (prior, getattr(prior, "default", None)):
        if isinstance(candidate, GPMatched):
            return candidate.values
    raise ValueError("hierarchical scale sites need a GPMatched prior")


# ------------------------------------------------------------------------------- metrics


def split_rhat(draws: np.ndarray) -> np.ndarray:
    """Split-R-hat (Gelman et al. 2013) of ``draws`` ``(chains, n, ...)`` per trailing entry."""
    n = draws.shape[1]
    half = n // 2
    parts = np.concatenate([draws[:, :half], draws[:, n - half :]], axis=0)
    m = parts.shape[1]
    means = parts.mean(1)
    within = parts.var(1, ddof=1).mean(0)
    between = m * means.var(0, ddof=1)
    var_hat = (m - 1) / m * within + between / m
    return np.sqrt(var_hat / np.maximum(within, 1e-300))


def predictive_metrics(bnn: BNN, theta: Tensor, data: bayesdl.data.Dataset) -> dict[str, float]:
    """Test RMSE, test log-likelihood (original units) and R-hat of the test predictions.

    Parameters
    ----------
    bnn
        The model.
    theta
        Kept draws ``(chains, draws, D)``.
    data
        The standardised split.

    Returns
    -------
    dict
        ``rmse``, ``ll`` (mean per test point of the log of the predictive mixture density),
        ``rhat_max``, ``rhat_median`` (over test points; NaN for one chain) and
        ``noise_std`` (posterior mean noise std, standardised units).
    """
    chains, draws, _ = theta.shape
    flat = theta.reshape(chains * draws, -1).to(bnn.dtype)
    with torch.no_grad():
        f = bnn.forward(flat, data.x_test)[..., 0].double()  # (S, M)
        values = bnn.unravel(flat)
    if likelihoods.Gaussian.site in values:
        sigma = values[likelihoods.Gaussian.site].double().reshape(-1, 1)
    else:
        sigma = torch.full((f.shape[0], 1), float(bnn.likelihood.scale), dtype=torch.float64)
    y = data.y_test.double()
    scale = float(data.y_scale)
    mean = f.mean(0)
    rmse = float(((mean - y) ** 2).mean().sqrt()) * scale
    logp = dist.Normal(f, sigma).log_prob(y)  # (S, M)
    ll = float((torch.logsumexp(logp, 0) - math.log(f.shape[0])).mean()) - math.log(scale)
    out = {"rmse": rmse, "ll": ll, "noise_std": float(sigma.mean())}
    if chains > 1 and draws > 3:
        rhat = split_rhat(f.reshape(chains, draws, -1).numpy())
        out["rhat_max"] = float(np.nanmax(rhat))
        out["rhat_median"] = float(np.nanmedian(rhat))
    return out


# ------------------------------------------------------------------------------- one split


def row_spec(row: str) -> tuple[str, bool, str]:
    """``(prior, learned_noise, backend)`` of a row name."""
    learned = row.endswith("-learned")
    backend = "vi" if row.endswith("-vi") else "sghmc"
    prior = row.removesuffix("-learned").removesuffix("-vi")
    return prior, learned, backend


def run_row(
    row: str,
    data: bayesdl.data.Dataset,
    fitted: dict[str, GPMatched],
    args: argparse.Namespace,
    split: int,
) -> dict[str, Any]:
    """Sample (or fit) one row on one split and return its metrics."""
    from bayesdl.inference import SGHMC, VI

    prior_name, learned, backend = row_spec(row)
    net = make_net(data.in_features, args.width)
    if prior_name == "fanin":
        prior: Any = priors.Gaussian(1.0, fan_in=True)  # fan_in_of(bias) = 1: biases N(0, 1)
    elif prior_name == "gpi-g":
        prior = fitted["gaussian"]
    else:
        prior = fitted["hierarchical"]
    noise: Any = dist.HalfNormal(torch.tensor(1.0)) if learned else math.sqrt(NOISE_VARIANCE)
    bnn = BNN(net, prior, likelihoods.Gaussian(noise))
    seed = 1000 * split + 17
    start = time.perf_counter()
    if backend == "sghmc":
        weights = common_start(net, args.chains, seed)
        theta0 = initial_theta(bnn, weights, args.chains)
        sampler = SGHMC(
            chains=args.chains,
            lr=args.lr**2,  # Springenberg's lr is a square-root step: eta = lr^2
            momentum_decay=args.mdecay,
            batch_size=args.batch_size,
            burn_in=args.burn_in,
            draws=args.samples,
            thin=args.thin,
            preconditioner="adaptive",
        )
        post = sampler.fit(
            bnn, data.x_train, data.y_train, seed=seed, progress=False, init_theta=theta0
        )
        theta = post.theta[:, args.discard :]
        extra: dict[str, Any] = {
            "partial": bool(post.partial),
            "kinetic_temperature": float(
                post.sample_stats["kinetic_temperature"][:, args.discard :].mean()
            ),
        }
    else:
        vi = VI(
            steps=args.vi_steps,
            lr=args.vi_lr,
            batch_size=args.batch_size,
            init="map",
            init_steps=args.vi_init_steps,
            draws=args.vi_draws,
        )
        post = vi.fit(bnn, data.x_train, data.y_train, seed=seed, progress=False)
        theta = post.theta
        extra = {"partial": bool(post.partial)}
    seconds = time.perf_counter() - start
    metrics = predictive_metrics(bnn, theta, data)
    return {
        **metrics,
        **extra,
        "seconds": seconds,
        "num_samples": int(theta.shape[0] * theta.shape[1]),
    }


def settings_record(args: argparse.Namespace) -> dict[str, Any]:
    """The run settings stored with every record."""
    keys = (
        "width chains lr mdecay batch_size burn_in thin samples discard fit_steps num_functions "
        "critic critic_steps parameterisation hyperprior_draws max_scale measurement_points "
        "vi_steps vi_lr vi_init_steps vi_draws"
    ).split()
    return {k: getattr(args, k) for k in keys}


def run_split(
    name: str, split: int, rows: Sequence[str], args: argparse.Namespace, path: pathlib.Path
) -> None:
    """Run the ``rows`` of (``name``, ``split``) not yet in ``path``, appending each result."""
    records = load_records(path)
    done = {r["row"] for r in records if r.get("dataset") == name and r.get("split") == split}
    todo = [r for r in rows if r not in done]
    if not todo:
        return
    torch.manual_seed(split)
    data = bayesdl.data.uci(name, split=split)
    fitted: dict[str, GPMatched] = {}
    needs = {
        "gaussian": any(row_spec(r)[0] == "gpi-g" for r in todo),
        "hierarchical": any(row_spec(r)[0] == "gpi-h" for r in todo),
    }
    base = {"dataset": name, "split": split, "settings": settings_record(args)}
    for family, needed in needs.items():
        if not needed:
            continue
        key = f"fit-{family}"
        stored = [
            r
            for r in records
            if r.get("dataset") == name and r.get("split") == split and r.get("row") == key
        ]
        if stored:
            fitted[family] = prior_from_record(stored[-1]["fit"])
            continue
        prior, fit_record = fit_prior(family, data, args, seed=split)
        fitted[family] = prior
        append_record(path, {**base, "row": key, "fit": fit_record})
        print(
            f"{name} split {split} {key}: {fit_record['seconds']:.0f} s, "
            f"distance {fit_record['final_distance']:.3f}",
            flush=True,
        )
    for row in todo:
        result = run_row(row, data, fitted, args, split)
        append_record(path, {**base, "row": row, **result})
        rhat = result.get("rhat_max", float("nan"))
        print(
            f"{name} split {split} {row}: RMSE {result['rmse']:.3f}, LL {result['ll']:.3f}, "
            f"R-hat max {rhat:.3f}, {result['seconds']:.0f} s",
            flush=True,
        )


# ------------------------------------------------------------------------------- report


def published(name: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-split published MC-dropout test RMSE and log-likelihood (1 x 50, 20 splits)."""
    folder = bayesdl.data.data_root() / "uci" / name / "published"
    rmse = np.loadtxt(folder / "test_MC_rmse_100_xepochs_1_hidden_layers.txt", ndmin=1)
    ll = np.loadtxt(folder / "test_ll_100_xepochs_1_hidden_layers.txt", ndmin=1)
    return rmse, ll


def _mean_se(values: Sequence[float]) -> str:
    v = np.asarray(values, dtype=float)
    if len(v) == 0:
        return "–"
    if len(v) == 1:
        return f"{v[0]:.3f}"
    return f"{v.mean():.3f} ± {v.std(ddof=1) / math.sqrt(len(v)):.3f}"


def _paired(values: Sequence[float], base: Sequence[float], higher_better: bool) -> str:
    d = np.asarray(values, dtype=float) - np.asarray(base, dtype=float)
    if len(d) == 0:
        return "–"
    won = int((d > 0).sum() if higher_better else (d < 0).sum())
    se = f" ± {d.std(ddof=1) / math.sqrt(len(d)):.3f}" if len(d) > 1 else ""
    return f"{d.mean():+.3f}{se} ({won}/{len(d)})"


def report(path: pathlib.Path) -> str:
    """The markdown table of everything in ``path``.

    Per data set and row: splits run, test RMSE and test LL (mean ± SE over splits), the
    paired difference to ``fanin`` on the splits both have (± paired SE, splits won: lower
    RMSE, higher LL), the median of the per-split maximum R-hat of test predictions, and the
    published MC-dropout rows on the same splits and on all 20.
    """
    records = [r for r in load_records(path) if r.get("row") in ALL_ROWS]
    fits = [r for r in load_records(path) if str(r.get("row", "")).startswith("fit-")]
    lines = [
        "| data set | row | splits | RMSE | test LL | ΔRMSE vs fan-in (won) | ΔLL vs fan-in (won) "
        "| R-hat max (median over splits) | s/split |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    names = sorted(
        {r["dataset"] for r in records},
        key=lambda n: (DEFAULT_SETS.index(n) if n in DEFAULT_SETS else 99, n),
    )
    for name in names:
        by_row: dict[str, dict[int, dict[str, Any]]] = {}
        for r in records:
            if r["dataset"] == name:
                by_row.setdefault(r["row"], {})[r["split"]] = r
        base = by_row.get(BASELINE, {})
        for row in ALL_ROWS:
            if row not in by_row:
                continue
            res = by_row[row]
            splits = sorted(res)
            rmse = [res[s]["rmse"] for s in splits]
            ll = [res[s]["ll"] for s in splits]
            paired = [s for s in splits if s in base]
            if row == BASELINE:
                d_rmse = d_ll = "–"
            else:
                d_rmse = _paired(
                    [res[s]["rmse"] for s in paired], [base[s]["rmse"] for s in paired], False
                )
                d_ll = _paired(
                    [res[s]["ll"] for s in paired], [base[s]["ll"] for s in paired], True
                )
            rhats = [res[s]["rhat_max"] for s in splits if "rhat_max" in res[s]]
            rhat = f"{np.median(rhats):.2f}" if rhats else "–"
            secs = np.mean([res[s]["seconds"] for s in splits])
            lines.append(
                f"| {name} | {row} | {len(splits)} | {_mean_se(rmse)} | {_mean_se(ll)} | "
                f"{d_rmse} | {d_ll} | {rhat} | {secs:.0f} |"
            )
        base_splits = sorted(base) or sorted({s for res in by_row.values() for s in res})
        try:
            pub_rmse, pub_ll = published(name)
        except (FileNotFoundError, OSError):
            continue
        same = [s for s in base_splits if s < len(pub_rmse)]
        lines.append(
            f"| {name} | MC dropout (published, same splits) | {len(same)} | "
            f"{_mean_se(pub_rmse[same])} | {_mean_se(pub_ll[same])} | | | | |"
        )
        lines.append(
            f"| {name} | MC dropout (published, all) | {len(pub_rmse)} | {_mean_se(pub_rmse)} | "
            f"{_mean_se(pub_ll)} | | | | |"
        )
    distinct = {json.dumps(r.get("settings"), sort_keys=True) for r in records + fits}
    if len(distinct) > 1:
        lines.append("")
        lines.append(
            f"WARNING: the records mix {len(distinct)} different settings (see their "
            "'settings' field); filter the file before comparing."
        )
    if fits:
        fit_s = np.mean([r["fit"]["seconds"] for r in fits])
        lines.append("")
        lines.append(f"Prior fits: {len(fits)}, mean {fit_s:.0f} s each.")
    return "\n".join(lines)


# ------------------------------------------------------------------------------- main


def parse_splits(text: str) -> list[int]:
    """``"0-9"`` or ``"0,3,5"`` (or a mix) to a list of split numbers."""
    out: list[int] = []
    for part in text.split(","):
        if "-" in part:
            lo, hi = part.split("-")
            out.extend(range(int(lo), int(hi) + 1))
        elif part:
            out.append(int(part))
    return out


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", nargs="+", default=list(DEFAULT_SETS), help="UCI set names")
    p.add_argument("--splits", default="0-9", help="splits, e.g. '0-9' or '0,2,4'")
    p.add_argument(
        "--rows",
        nargs="+",
        default=list(PRIMARY_ROWS),
        choices=ALL_ROWS,
        help="rows of the first pass (every split of every set)",
    )
    p.add_argument(
        "--then-rows",
        nargs="*",
        default=list(SECONDARY_ROWS),
        choices=ALL_ROWS,
        help="rows of a second pass over the same splits (after the first is done)",
    )
    p.add_argument("--out", default=DEFAULT_OUT, help="JSON-lines results file (appended)")
    p.add_argument("--report", action="store_true", help="print the markdown table and exit")
    p.add_argument(
        "--data",
        default=os.environ.get("BAYESDL_DATA", "../shared/data"),
        help="shared data folder (default: $BAYESDL_DATA, else ../shared/data)",
    )
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: shared machine)")
    p.add_argument("--quick", action="store_true", help="tiny settings, for a smoke test")
    g = p.add_argument_group("network and prior fit (paper: 1x100 tanh, 200 x 128, M = 100)")
    g.add_argument("--width", type=int, default=100, help="hidden units")
    g.add_argument("--fit-steps", type=int, default=200, help="outer steps of the prior fit")
    g.add_argument("--num-functions", type=int, default=128, help="functions per batch")
    g.add_argument(
        "--critic",
        choices=("warm", "fresh"),
        default="warm",
        help="warm: critic and its Adagrad state kept across outer steps (bayesdl's default, "
        "as the reference keeps its optimiser); fresh: a new critic every outer step",
    )
    g.add_argument(
        "--critic-steps",
        type=int,
        default=None,
        help="critic steps per outer step (default: 10 warm, 200 fresh as in the paper)",
    )
    g.add_argument(
        "--parameterisation",
        choices=("softplus", "log"),
        default="softplus",
        help="scale parameterisation of the fit (softplus: the paper's, sigma_0 = 1.313)",
    )
    g.add_argument(
        "--hyperprior-draws",
        choices=("softplus", "value"),
        default="softplus",
        help="GP hyperprior draws read through softplus, as in the paper's code",
    )
    g.add_argument(
        "--max-scale", type=float, default=None, help="optional bound on the fitted scales"
    )
    g.add_argument("--measurement-points", type=int, default=100, help="measurement set size")
    g = p.add_argument_group("adaptive SGHMC (paper's values; lr in Springenberg's units)")
    g.add_argument("--chains", type=int, default=4, help="chains")
    g.add_argument("--lr", type=float, default=1e-2, help="paper's lr; bayesdl's lr is lr**2")
    g.add_argument("--mdecay", type=float, default=1e-2, help="momentum decay")
    g.add_argument("--batch-size", type=int, default=32, help="minibatch size")
    g.add_argument("--burn-in", type=int, default=2000, help="burn-in (adaptation) steps")
    g.add_argument("--thin", type=int, default=2000, help="steps between kept samples")
    g.add_argument("--samples", type=int, default=40, help="samples kept per chain")
    g.add_argument("--discard", type=int, default=10, help="first kept samples dropped")
    g = p.add_argument_group("second backend: mean-field VI on the GPi-G prior")
    g.add_argument("--vi-steps", type=int, default=20000, help="VI steps")
    g.add_argument("--vi-lr", type=float, default=1e-2, help="VI Adam learning rate")
    g.add_argument("--vi-init-steps", type=int, default=2000, help="MAP steps before VI")
    g.add_argument("--vi-draws", type=int, default=120, help="draws from the fitted guide")
    return p


def main(argv: Sequence[str] | None = None) -> None:
    """Run the benchmark (resuming) or print the report."""
    args = build_parser().parse_args(argv)
    path = pathlib.Path(args.out)
    os.environ["BAYESDL_DATA"] = str(pathlib.Path(args.data).resolve())
    if args.report:
        print(report(path))
        return
    torch.set_num_threads(args.threads)
    if args.quick:
        args.fit_steps, args.num_functions, args.critic_steps = 3, 16, 5
        args.burn_in, args.thin, args.samples, args.discard = 50, 10, 8, 2
        args.vi_steps, args.vi_init_steps, args.vi_draws = 50, 20, 8
    splits = parse_splits(args.splits)
    for rows in (args.rows, args.then_rows):
        if not rows:
            continue
        for split in splits:  # interleave the sets: every set gets split k before split k + 1
            for name in args.datasets:
                run_split(name, split, rows, args, path)
    print(report(path))


if __name__ == "__main__":
    main()
