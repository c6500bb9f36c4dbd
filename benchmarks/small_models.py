r"""NUTS on small models: bayesdl (defaults, eager, compiled) against NumPyro and Pyro.

Four posteriordb posteriors (``benchmarks/posteriordb_models.py``: eight schools non-centred,
GP regression, kidiq, sblrc BLR), each written once as a plain torch log density over a flat
unconstrained vector (Stan's parameterisation) and once in jax; every sampler targets that
same density (checked at random points before the runs):

* ``bayesdl``: ``NUTS(chains, warmup, draws).sample(log_density, init)`` with the library's
  defaults, whatever they are;
* ``bayesdl-eager``: the same with ``compile=False`` (dropped from the default list while it
  is the default, since it would repeat ``bayesdl``);
* ``bayesdl-compile``: the same with ``compile=True`` (the tree in Python, compiled leaves);
* ``bayesdl-looped``: the defaults, with ``compile="auto"``'s threshold for whole compiled
  trajectories (``AUTO_MIN_LOOPED_LEAVES``) at zero: whenever it compiles, it loops;
* ``numpyro``: NumPyro's NUTS on the jax density (``potential_fn``), chains vectorised;
* ``pyro``: Pyro's NUTS (``jit_compile=True``) on a Pyro model whose only factor is the torch
  density; its chains run one after another in this process, and its time is their sum.

Every sampler uses its own defaults otherwise (target acceptance 0.8, maximum tree depth 10,
diagonal mass matrix adapted in Stan's windows) and float64, from the same initial values
(uniform on [-2, 2], Stan's default, drawn from the repeat's seed). Recorded per run: the whole
wall time (compilation included), bulk ESS (ArviZ, cross-chain) min over Stan's parameters and
per second, the mean tree depth (``ceil(log2(n_leapfrog + 1))`` per draw, the same formula for
every sampler) and leapfrog steps per draw, divergences, and the posterior means with their
MCSE (ArviZ); for bayesdl also what ``compile="auto"`` chose (``compiled``, ``looped``) and
the compiler's fallbacks (``compile_fallbacks``: a graph ``torch.compile`` could not build, so
that a ``looped`` run that fell back to the compiled leaves shows as such). The report
compares each sampler's means with the reference sampler's (NumPyro's by default) of the same
repeat: ``max over parameters of |Δmean| / sqrt(MCSE_a² + MCSE_b²)``; values of a few units
are noise, much larger ones mean the samplers disagree.

Compilation is counted in every run: bayesdl's runs start from a reset dynamo cache
(``torch._dynamo.reset()``) and, by default, an empty inductor cache folder (a user's first
run; ``--inductor-cache kept`` reuses the on-disk cache of earlier runs, as a user's later
runs do), NumPyro compiles a fresh closure per run, and Pyro traces each chain's potential. With
``--threads 1`` (the default) torch runs one thread and XLA's Eigen thread pool is off
(``XLA_FLAGS=--xla_cpu_multi_thread_eigen=false`` unless ``XLA_FLAGS`` is set).

A run that raises (e.g. a GP covariance that is not numerically positive definite in torch's
argument validation) is recorded with its error and the script goes on.

Usage (from the repository root)::

    BAYESDL_DATA=../shared/data OMP_NUM_THREADS=1 python benchmarks/small_models.py
    python benchmarks/small_models.py --repeats 3            # resumes: skips finished runs
    python benchmarks/small_models.py --report               # markdown table of the JSON
    python benchmarks/small_models.py --warmup 100 --draws 100 --out /tmp/s.json   # smoke run

Results are appended as JSON lines (one record per model, sampler and repeat) to ``--out``;
repeats are interleaved (repeat ``r`` of every model and sampler before repeat ``r + 1``).
NumPyro runs only when installed (``pip install -e .[bench]``).
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import math
import os
import pathlib
import platform
import statistics
import tempfile
import time
import traceback
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from gp_prior_uci import append_record, load_records
from hmc_vs_peers import GradientCounter
from posteriordb_models import POSTERIORS, SmallModel, check_agreement, load_model
from posteriordb_models import pyro_model as make_pyro_model

from bayesdl.arviz_bridge import import_arviz
from bayesdl.inference import NUTS

SAMPLERS = ("bayesdl", "bayesdl-eager", "bayesdl-compile", "bayesdl-looped", "numpyro", "pyro")
SHORT = {
    "eight_schools-eight_schools_noncentered": "eight_schools",
    "gp_pois_regr-gp_regr": "gp_regr",
    "kidiq-kidscore_momiq": "kidiq",
    "sblrc-blr": "sblrc-blr",
}
DEFAULT_OUT = "benchmarks/results/small_models.json"


# ------------------------------------------------------------------------- set-up


def resolve_model(name: str) -> str:
    """A posteriordb name from its full or short name (``kidiq``, ``gp_regr``, ...)."""
    for full, short in SHORT.items():
        if name in (full, short):
            return full
    raise argparse.ArgumentTypeError(f"unknown model {name!r}; one of {sorted(SHORT.values())}")


def eager_is_default() -> bool:
    """Whether ``NUTS()`` runs eagerly by default (then ``bayesdl-eager`` repeats ``bayesdl``)."""
    default = inspect.signature(NUTS).parameters["compile"].default
    return default is False


def initial_values(model: SmallModel, chains: int, seed: int) -> np.ndarray:
    """Stan's default initialisation: ``theta (chains, D)`` uniform on ``[-2, 2]``."""
    return np.random.default_rng(seed).uniform(-2.0, 2.0, size=(chains, model.dim))


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence the tracers' and samplers' warnings during a timed run."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


@contextlib.contextmanager
def fresh_inductor_cache() -> Iterator[None]:
    """A new, empty inductor cache folder for the duration of a run (deleted after, also when
    the run raises)."""
    from torch._inductor import utils

    maker = getattr(utils, "fresh_cache", None) or utils.fresh_inductor_cache
    with tempfile.TemporaryDirectory(prefix="small_models_inductor_") as parent:
        with maker(dir=parent):
            yield


@contextlib.contextmanager
def always_loop() -> Iterator[None]:
    """``compile="auto"`` captures whole trajectories whenever it compiles."""
    from bayesdl.inference.mcmc import run as mcmc_run

    saved = mcmc_run.AUTO_MIN_LOOPED_LEAVES
    mcmc_run.AUTO_MIN_LOOPED_LEAVES = 0
    try:
        yield
    finally:
        mcmc_run.AUTO_MIN_LOOPED_LEAVES = saved


def tree_depth(n_steps: np.ndarray) -> np.ndarray:
    """``ceil(log2(n + 1))``: the depth of a NUTS tree of ``n`` leapfrog steps."""
    return np.ceil(np.log2(np.asarray(n_steps, dtype=np.float64) + 1.0))


# ------------------------------------------------------------------------- samplers
# Each runner returns (theta (C, N, D) unconstrained, n_steps (C, N), diverging (C, N), extra).

Draws = tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]


def run_bayesdl(
    model: SmallModel, init: np.ndarray, args: argparse.Namespace, seed: int, compile: bool | None
) -> Draws:
    """bayesdl's NUTS on the torch density; ``compile=None`` keeps the library's default."""
    kwargs = {} if compile is None else {"compile": compile}
    torch._dynamo.reset()  # every compiled run pays its own tracing (the disk cache is kept)
    nuts = NUTS(chains=len(init), warmup=args.warmup, draws=args.draws, **kwargs)
    counter = GradientCounter()
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:  # the compiler's fallbacks, kept
        warnings.simplefilter("always", RuntimeWarning)
        post = nuts.sample(
            model.log_density,
            torch.as_tensor(init, dtype=torch.float64),
            seed=seed,
            progress=False,
            callbacks=[counter],
        )
    first = (counter.first_done or start) - start
    stats = post.sample_stats
    extra = {
        "first_iteration_s": round(first, 2),
        "chain_gradients": counter.total,
        "compile": str(getattr(nuts, "compile", "")),
        "compiled": post.attrs.get("compiled"),
        "looped": post.attrs.get("looped"),
        "partial": bool(post.partial),
        "compile_fallbacks": [
            str(w.message)[:300] for w in caught if "could not compile" in str(w.message)
        ],
    }
    return (
        post.theta.double().numpy(),
        stats["n_steps"].numpy(),
        stats["diverging"].numpy().astype(bool),
        extra,
    )


def run_numpyro(model: SmallModel, init: np.ndarray, args: argparse.Namespace, seed: int) -> Draws:
    """NumPyro's NUTS on the jax density, chains vectorised (as ``hmc_vs_peers.py``)."""
    import jax
    import jax.numpy as jnp
    import numpyro
    from numpyro.infer import MCMC
    from numpyro.infer import NUTS as NumPyroNUTS

    jax.config.update("jax_enable_x64", True)
    log_density = model.make_jax()

    def potential(theta: Any) -> Any:
        return -log_density(theta)

    mcmc = MCMC(
        NumPyroNUTS(potential_fn=potential),
        num_warmup=args.warmup,
        num_samples=args.draws,
        num_chains=len(init),
        chain_method="vectorized",
        progress_bar=False,
    )
    mcmc.run(
        jax.random.PRNGKey(seed),
        init_params=jnp.asarray(init),
        extra_fields=("num_steps", "diverging"),
    )
    theta = np.asarray(jax.block_until_ready(mcmc.get_samples(group_by_chain=True)))
    fields = mcmc.get_extra_fields(group_by_chain=True)
    return (
        theta.astype(np.float64),
        np.asarray(fields["num_steps"]),
        np.asarray(fields["diverging"]).astype(bool),
        {"numpyro": numpyro.__version__, "chain_method": "vectorized"},
    )


class _CountingPotential:
    """A Pyro potential function that counts its calls (one per leapfrog step)."""

    def __init__(self, fn: Any) -> None:
        self.fn = fn
        self.calls = 0

    def __call__(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        self.calls += 1
        return self.fn(params)


def run_pyro(model: SmallModel, init: np.ndarray, args: argparse.Namespace, seed: int) -> Draws:
    """Pyro's NUTS (jit) on a Pyro model of the torch density, one chain after another.

    Each chain's kernel is stepped by hand (``setup``, then ``sample`` per iteration), as
    Pyro's ``MCMC`` does, so that its potential calls (leapfrog steps) can be counted.
    """
    import pyro
    from pyro.infer.autoguide.initialization import init_to_value

    fn = make_pyro_model(model)
    thetas, steps, divergent = [], [], []
    total = args.warmup + args.draws
    for c, start_value in enumerate(init):
        pyro.set_rng_seed(seed * 1000 + c)
        kernel = pyro.infer.NUTS(
            fn,
            jit_compile=True,
            ignore_jit_warnings=True,
            max_plate_nesting=0,  # no plates; guessing would sample the improper site
            init_strategy=init_to_value(
                values={"theta": torch.as_tensor(start_value, dtype=torch.float64)}
            ),
        )
        kernel.setup(args.warmup)
        counted = _CountingPotential(kernel.potential_fn)
        kernel.potential_fn = counted
        params = kernel.initial_params
        chain_theta, chain_steps = [], []
        for i in range(total):
            before = counted.calls
            params = kernel.sample(params)
            if i >= args.warmup:
                chain_theta.append(params["theta"].detach().double().numpy().copy())
                chain_steps.append(counted.calls - before)
        flags = np.zeros(args.draws, dtype=bool)
        flags[[d for d in kernel.diagnostics()["divergences"] if 0 <= d < args.draws]] = True
        kernel.cleanup()
        thetas.append(np.stack(chain_theta))
        steps.append(np.asarray(chain_steps))
        divergent.append(flags)
    return np.stack(thetas), np.stack(steps), np.stack(divergent), {"pyro": pyro.__version__}


def run_sampler(
    sampler: str, model: SmallModel, init: np.ndarray, args: argparse.Namespace, seed: int
) -> tuple[float, Draws]:
    """Run one sampler; return its whole wall time and its draws."""
    fresh = args.inductor_cache == "fresh" and sampler.startswith("bayesdl")
    start = time.perf_counter()
    with quiet(), fresh_inductor_cache() if fresh else contextlib.nullcontext():
        if sampler == "bayesdl":
            draws = run_bayesdl(model, init, args, seed, None)
        elif sampler == "bayesdl-eager":
            draws = run_bayesdl(model, init, args, seed, False)
        elif sampler == "bayesdl-compile":
            draws = run_bayesdl(model, init, args, seed, True)
        elif sampler == "bayesdl-looped":
            with always_loop():
                draws = run_bayesdl(model, init, args, seed, None)
        elif sampler == "numpyro":
            draws = run_numpyro(model, init, args, seed)
        elif sampler == "pyro":
            draws = run_pyro(model, init, args, seed)
        else:  # pragma: no cover - argparse restricts the choices
            raise ValueError(sampler)
    return time.perf_counter() - start, draws


# ------------------------------------------------------------------------- summaries


def summarise(model: SmallModel, seconds: float, draws: Draws) -> dict[str, Any]:
    """Wall time, ESS, tree depth, divergences and means +- MCSE of one run."""
    az = import_arviz()
    theta, n_steps, diverging, extra = draws
    values = model.constrain(theta)  # (C, N, D), Stan's parameters
    dataset = az.convert_to_dataset({"x": values})
    with quiet():
        ess = np.asarray(az.ess(dataset, method="bulk")["x"].values, dtype=np.float64)
        mcse = np.asarray(az.mcse(dataset, method="mean")["x"].values, dtype=np.float64)
        rhat = np.asarray(az.rhat(dataset)["x"].values, dtype=np.float64)
    ess_min = float(np.nanmin(ess)) if np.isfinite(ess).any() else math.nan
    return {
        "seconds": round(seconds, 3),
        "ess_bulk_min": round(ess_min, 1),
        "ess_per_s": round(ess_min / seconds, 3),
        "rhat_max": round(float(np.nanmax(rhat)), 4),
        "mean_tree_depth": round(float(tree_depth(n_steps).mean()), 3),
        "leapfrog_per_draw": round(float(np.mean(n_steps)), 2),
        "divergences": int(np.sum(diverging)),
        "params": list(model.names),
        "mean": [float(v) for v in values.mean(axis=(0, 1))],
        "mcse": [float(v) for v in mcse],
        "ess_bulk": [round(float(v), 1) for v in ess],
        **extra,
    }


def agreement(a: dict[str, Any], b: dict[str, Any]) -> float:
    """``max |mean_a - mean_b| / sqrt(mcse_a^2 + mcse_b^2)`` over parameters."""
    ma, mb = np.asarray(a["mean"]), np.asarray(b["mean"])
    sa, sb = np.asarray(a["mcse"]), np.asarray(b["mcse"])
    return float(np.max(np.abs(ma - mb) / np.sqrt(sa**2 + sb**2)))


# ------------------------------------------------------------------------- records and report


def settings(args: argparse.Namespace) -> dict[str, Any]:
    """The settings that make two records comparable (a resumed run must match them)."""
    return {
        "chains": args.chains,
        "warmup": args.warmup,
        "draws": args.draws,
        "inductor_cache": args.inductor_cache,
    }


def _median_spread(values: Sequence[float], digits: int) -> str:
    """``median [min-max]`` (or the one value)."""
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return "-"
    med = f"{statistics.median(vals):.{digits}f}"
    if len(vals) == 1:
        return med
    return f"{med} [{min(vals):.{digits}f}-{max(vals):.{digits}f}]"


def report(path: pathlib.Path, reference: str = "numpyro") -> str:
    """Markdown tables (one per settings) of the records in ``path``: median and range over
    repeats."""
    latest: dict[str, dict[str, Any]] = {}  # the last record of each run (a retried error)
    for r in load_records(path):
        if r.get("benchmark") == "small_models":
            key = json.dumps([r["settings"], r["model"], r["sampler"], r["repeat"]])
            latest[key] = r
    records = list(latest.values())
    if not records:
        return f"no records in {path}"
    out: list[str] = []
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        s = r["settings"]
        title = f"{s['chains']} chains × {s['warmup']} + {s['draws']}"
        title += f", {s.get('inductor_cache', 'kept')} inductor cache"
        groups.setdefault(title, []).append(r)
    for title, rows in groups.items():
        repeats = len({r["repeat"] for r in rows})
        out.append(
            f"### {title} ({repeats} repeat{'s' if repeats > 1 else ''}; "
            f"median [min-max]; agreement vs {reference})\n"
        )
        out.append(
            "| model | sampler | wall s | ESS/s (bulk, min) | mean depth | leapfrog/draw "
            "| divergences | max abs(Δ)/MCSE | errors |"
        )
        out.append("|---|---|---|---|---|---|---|---|---|")
        ok = [r for r in rows if "error" not in r]
        refs = {(r["model"], r["repeat"]): r for r in ok if r["sampler"] == reference}
        totals: dict[str, list[float]] = {}
        models = [m for m in POSTERIORS if any(r["model"] == m for r in rows)]
        for m in models:
            for sampler in SAMPLERS:
                runs = [r for r in rows if r["model"] == m and r["sampler"] == sampler]
                if not runs:
                    continue
                good = [r for r in runs if "error" not in r]
                errors = len(runs) - len(good)
                z = [
                    agreement(r, refs[(m, r["repeat"])])
                    for r in good
                    if (m, r["repeat"]) in refs and sampler != reference
                ]
                if good:
                    totals.setdefault(sampler, []).append(
                        statistics.median(r["seconds"] for r in good)
                    )
                out.append(
                    f"| {SHORT[m]} | {sampler} "
                    f"| {_median_spread([r['seconds'] for r in good], 1)} "
                    f"| {_median_spread([r['ess_per_s'] for r in good], 1)} "
                    f"| {_median_spread([r['mean_tree_depth'] for r in good], 2)} "
                    f"| {_median_spread([r['leapfrog_per_draw'] for r in good], 1)} "
                    f"| {_median_spread([r['divergences'] for r in good], 0)} "
                    f"| {_median_spread(z, 1)} "
                    f"| {errors or ''} |"
                )
        out.append("")
        out.append(
            "Total wall time over the models (sum of medians; a sampler with an error "
            "on a model misses that model): "
            + ", ".join(f"{s} {sum(v):.1f} s ({len(v)} models)" for s, v in totals.items())
        )
        errs = [r for r in rows if "error" in r]
        for r in errs:
            out.append(
                f"\n- error: {SHORT[r['model']]} / {r['sampler']} / repeat {r['repeat']}: "
                f"{r['error'].splitlines()[0][:300]}"
            )
        out.append("")
    return "\n".join(out)


# ------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--models",
        nargs="+",
        type=resolve_model,
        default=list(POSTERIORS),
        help="posteriordb names or short names: " + ", ".join(SHORT.values()),
    )
    p.add_argument(
        "--samplers",
        nargs="+",
        choices=SAMPLERS,
        default=None,
        help="contenders (default: all; bayesdl-eager only when it differs from the defaults)",
    )
    p.add_argument("--repeats", type=int, default=1, help="interleaved repeats (seeds 0, 1, ...)")
    p.add_argument("--chains", type=int, default=4)
    p.add_argument("--warmup", type=int, default=1000)
    p.add_argument("--draws", type=int, default=1000)
    p.add_argument(
        "--inductor-cache",
        choices=("fresh", "kept"),
        default="fresh",
        help="fresh: every bayesdl run compiles from an empty inductor cache (a user's first "
        "run); kept: the on-disk cache of earlier runs is used (a user's later runs)",
    )
    p.add_argument("--out", default=DEFAULT_OUT, help="JSON-lines results file (appended)")
    p.add_argument("--report", action="store_true", help="print the markdown table and exit")
    p.add_argument(
        "--retry-errors",
        action="store_true",
        help="rerun runs recorded with an error (by default an error is a result and is kept)",
    )
    p.add_argument("--reference", default="numpyro", choices=SAMPLERS, help="for agreement")
    p.add_argument(
        "--data",
        default=os.environ.get("BAYESDL_DATA", "../shared/data"),
        help="shared data folder (default: $BAYESDL_DATA, else ../shared/data)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads, and XLA's when XLA_FLAGS is unset (1: shared machine)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> None:
    """Run the benchmark (resuming) or print the report."""
    args = build_parser().parse_args(argv)
    path = pathlib.Path(args.out)
    if args.report:
        print(report(path, args.reference))
        return
    if args.samplers is None:
        args.samplers = [s for s in SAMPLERS if not (s == "bayesdl-eager" and eager_is_default())]
    torch.set_num_threads(args.threads)
    if args.threads == 1 and "XLA_FLAGS" not in os.environ:  # before jax is imported
        os.environ["XLA_FLAGS"] = "--xla_cpu_multi_thread_eigen=false"
    models = {name: load_model(name, args.data) for name in args.models}
    if "numpyro" in args.samplers:
        try:
            for model in models.values():
                check_agreement(model)
        except ImportError:
            print("NumPyro/jax not installed: numpyro skipped", flush=True)
            args.samplers = [s for s in args.samplers if s != "numpyro"]
    base = {
        "benchmark": "small_models",
        "settings": settings(args),
        "machine": f"{platform.machine()}, {os.cpu_count()} cpus, {args.threads} threads",
        "torch": torch.__version__,
    }
    done = {
        (r["model"], r["sampler"], r["repeat"])
        for r in load_records(path)
        if r.get("benchmark") == "small_models"
        and r.get("settings") == base["settings"]
        and not (args.retry_errors and "error" in r)
    }
    for repeat in range(args.repeats):
        for name, model in models.items():
            init = initial_values(model, args.chains, seed=repeat)
            for sampler in args.samplers:
                if (name, sampler, repeat) in done:
                    continue
                record = {**base, "model": name, "sampler": sampler, "repeat": repeat}
                try:
                    seconds, draws = run_sampler(sampler, model, init, args, seed=repeat)
                    record.update(summarise(model, seconds, draws))
                    line = (
                        f"{record['seconds']:.1f} s, ESS/s {record['ess_per_s']:.1f}, "
                        f"depth {record['mean_tree_depth']:.2f}, "
                        f"div {record['divergences']}"
                    )
                except Exception as exc:  # a run that raises is a result, not a crash
                    message = str(exc).strip().splitlines() or [""]
                    record["error"] = f"{type(exc).__name__}: {message[0]}"[:300]
                    record["traceback"] = "".join(traceback.format_tb(exc.__traceback__))[-3000:]
                    line = f"ERROR {record['error']}"
                append_record(path, record)
                print(f"[{repeat}] {SHORT[name]} / {sampler}: {line}", flush=True)
    print(report(path, args.reference))


if __name__ == "__main__":
    main()
