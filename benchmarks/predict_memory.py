"""Benchmark: peak memory of ``Posterior.predict`` on 50,000 rows for the tutorials' MLPs.

Each case runs in a fresh subprocess, which builds the BNN, random draws of ``theta`` and
random inputs, records its peak resident set size (``ru_maxrss``), calls ``post.predict(x)``
and then the predictive mean, and reports how far the peak rose above the level before the
call. Networks (random weights: memory does not depend on their values):

- ``quickstart``: tutorial 01's ``MLP(10, [20], 1, "tanh")``, Gaussian likelihood, 2 chains x
  100 draws;
- ``fmnist-10``, ``fmnist-100``: tutorials 03/04's ``MLP(784, [100], 10)``, Categorical
  likelihood, 10 and 100 draws (SVGD particles, VI draws).

Run from the repository root::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/predict_memory.py --label after

The table is printed and merged under ``--label`` into
``benchmarks/results/predict_memory.json`` (``before`` was measured at commit 865388e, whose
default chunk counted network outputs only). ``--chunk-size`` passes an explicit chunk size;
``--rows`` changes the 50,000 rows; ``--smoke`` runs every case on 500 rows in seconds.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import resource
import subprocess
import sys
import time

RESULTS = pathlib.Path(__file__).parent / "results" / "predict_memory.json"

#: name: (in_features, hidden, out_features, activation, likelihood, chains, draws)
CASES = {
    "quickstart": (10, [20], 1, "tanh", "Gaussian", 2, 100),
    "fmnist-10": (784, [100], 10, "relu", "Categorical", 1, 10),
    "fmnist-100": (784, [100], 10, "relu", "Categorical", 1, 100),
}


def _peak_mib() -> float:
    """Peak resident set size of this process so far, in MiB (``ru_maxrss`` is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(case: str, rows: int, chunk_size: int | None) -> dict:
    """Run one case in this process and return its figures (called in the subprocess)."""
    import torch

    from bayesdl import Posterior, likelihoods, priors
    from bayesdl.models import BNN, MLP

    n_in, hidden, n_out, activation, likelihood, chains, draws = CASES[case]
    torch.manual_seed(0)
    bnn = BNN(
        MLP(n_in, hidden, n_out, activation),
        priors.Gaussian(1.0, fan_in=True),
        getattr(likelihoods, likelihood)(),
    )
    post = Posterior(0.1 * torch.randn(chains, draws, bnn.num_params), bnn)
    x = torch.randn(rows, n_in)
    post.predict(x[:2])  # imports and one-off set-up outside the measurement
    base = _peak_mib()
    start = time.perf_counter()
    pred = post.predict(x, chunk_size=chunk_size)
    seconds = time.perf_counter() - start
    predict_peak = _peak_mib()
    pred.mean  # noqa: B018 (the predictive summary, computed on first access)
    return {
        "case": case,
        "rows": rows,
        "draws": chains * draws,
        "chunk_size": chunk_size,
        "predict_mib": round(predict_peak - base, 1),
        "with_mean_mib": round(_peak_mib() - base, 1),
        "outputs_mib": round(pred.samples.numel() * pred.samples.element_size() / 2**20, 1),
        "seconds": round(seconds, 2),
    }


def run_case(case: str, rows: int, chunk_size: int | None) -> dict:
    """Measure one case in a fresh subprocess, so earlier cases do not raise its peak."""
    command = [sys.executable, __file__, "--child", case, "--rows", str(rows)]
    if chunk_size is not None:
        command += ["--chunk-size", str(chunk_size)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--label", default="after", help="key of these results in the JSON")
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--chunk-size", type=int, default=None)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--smoke", action="store_true", help="500 rows, nothing written")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.rows, args.chunk_size)))
        return
    rows = 500 if args.smoke else args.rows
    results = [run_case(case, rows, args.chunk_size) for case in args.cases]
    print(
        f"{'case':<12} {'rows':>7} {'draws':>6} {'predict MiB':>12} {'+mean MiB':>10} "
        f"{'outputs MiB':>12} {'seconds':>8}"
    )
    for r in results:
        print(
            f"{r['case']:<12} {r['rows']:>7} {r['draws']:>6} {r['predict_mib']:>12} "
            f"{r['with_mean_mib']:>10} {r['outputs_mib']:>12} {r['seconds']:>8}"
        )
    if args.smoke:
        return
    stored = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    stored[args.label] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared)",
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "results": results,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(stored, indent=2) + "\n")


if __name__ == "__main__":
    main()
