"""Stein ensembles on Fashion-MNIST against deep ensembles: converged runs, several seeds.

The comparison of D'Angelo, Fortuin & Wenzel (2021) and D'Angelo & Fortuin (2021), run the way
their code runs it (``ratschlab/repulsive_ensembles``, ``exp_fmnist.py`` and
``training_mnist_hyper.py``): an MLP 784-100-10 (ReLU), members started from the network's own
(Kaiming-uniform) initialisation, minibatches of 128 with the log-likelihood scaled by
``N / 128``, Adam, 5 particles (their default ``n_particles``), functions compared on the
minibatch, the functional prior's score by SSGE from as many prior draws as particles. The
hybrid kernel compares class probabilities (their default ``logit_soft=0``); f-SVGD and fWGD
compare logits: with probabilities their function-space likelihood score ``[y = c] / p_c``
explodes when a member is confidently wrong, and all three seeds stopped with non-finite
values (steps 363, 913 and 6,890; the score is now bounded, ``1 / (p_c + eps)``, but not
re-run). The prior is a fan-in scaled Gaussian (weights N(0, 1/fan_in), biases N(0, 1)).
Methods:

* ``ensemble``: deep ensemble (``kernel=None``), net initialisation;
* ``ensemble-prior-init``: the same from prior draws, to show the initialisation confound;
* ``w-svgd``: SVGD, RBF kernel on the weights;
* ``f-svgd``: SVGD, RBF kernel on the functions, pulled back through each particle's Jacobian;
* ``h-svgd``: weight-space driving kernel, function-space repulsion (the composed kernel);
* ``fwgd``: repulsive ensemble, Wasserstein gradient descent in function space (SSGE);
* ``f-ensemble``: f-SVGD without repulsion (MAP fits under the SSGE functional prior), the
  control for f-SVGD's missing weight prior;
* ``ensemble-n01-prior-init``: the earlier comparison's setting, an N(0, 1) prior on every
  weight and members started from its draws.

Each run reports test accuracy, NLL, ECE (15 bins), the three OOD AUROCs against the 10,000
MNIST test digits (predictive entropy, mutual information, members' std of class
probabilities), the functional diversity on the test set (disagreement, pairwise KL) and the
wall time. Test accuracy is recorded every ``--eval-every`` steps so that the table shows the
runs have plateaued. Results are appended to a JSON file (one record per method and seed; a
record already there is skipped), and ``--report`` prints the table as mean +- standard error
over seeds, with paired differences to the net-initialised ensemble.

Usage::

    BAYESDL_DATA=../shared/data python benchmarks/svgd_fmnist.py \
        --seeds 0 --steps 10000 --out benchmarks/results/svgd_fmnist_seed0.json
    python benchmarks/svgd_fmnist.py --report benchmarks/results/svgd_fmnist_seed*.json

(one process per seed runs the seeds side by side, each on one thread).
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import platform
import statistics
import time

import torch

import bayesdl
from bayesdl import diagnostics, likelihoods, priors
from bayesdl.inference.base import NonFiniteError
from bayesdl.inference.particles.stein_kernels import RBF
from bayesdl.inference.particles.svgd import SVGD
from bayesdl.models import BNN, MLP

METHODS: dict[str, dict] = {
    "ensemble": dict(kernel=None),
    "ensemble-prior-init": dict(kernel=None, init="prior"),
    "w-svgd": dict(kernel="weight"),
    "f-svgd": dict(kernel="function"),
    "h-svgd": dict(kernel="hybrid", function_space="probs"),
    "fwgd": dict(kernel="function", update="wgd-ssge"),
    # f-SVGD with its repulsion switched off (a vanishing bandwidth: K = I, no repulsion): an
    # ensemble of MAP fits under the functional prior, the control that separates f-SVGD's
    # repulsion from its prior (f-SVGD applies no weight prior).
    "f-ensemble": dict(kernel=RBF("function", bandwidth=1e-30)),
    # The setting of the earlier comparison: N(0, 1) on every weight and prior-draw starts.
    "ensemble-n01-prior-init": dict(kernel=None, init="prior", prior="n01"),
}
PRIORS = {
    "fan-in": lambda: priors.Gaussian(1.0, fan_in=True),
    "n01": lambda: priors.Gaussian(1.0),
}
METRICS = (
    "accuracy",
    "nll",
    "ece",
    "auroc_entropy",
    "auroc_mutual_information",
    "auroc_std",
    "disagreement",
    "pairwise_kl",
    "seconds",
)


def member_probs(post, x: torch.Tensor, chunk: int = 2000) -> torch.Tensor:
    """Class probabilities of every member, ``(P, N, C)``."""
    with torch.no_grad():
        parts = [
            torch.softmax(post.bnn.forward(post.theta[0], x[i : i + chunk]), -1)
            for i in range(0, len(x), chunk)
        ]
    return torch.cat(parts, 1)


def evaluate(post, data, ood: torch.Tensor) -> dict[str, float]:
    """Accuracy, NLL, ECE, the three OOD AUROCs and the functional diversity."""
    probs_in = member_probs(post, data.x_test)
    probs_out = member_probs(post, ood)
    mean = probs_in.mean(0)
    y = data.y_test
    row = {
        "accuracy": diagnostics.accuracy(mean, y),
        "nll": float(-mean[torch.arange(len(y)), y].clamp_min(1e-12).log().mean()),
        "ece": diagnostics.expected_calibration_error(mean, y),
    }
    aurocs = diagnostics.ood_aurocs(probs_in, probs_out)
    row.update(aurocs)
    row.update(diagnostics.functional_diversity(probs_in))
    return row


def run(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    out = pathlib.Path(args.out)
    records = json.loads(out.read_text()) if out.exists() else []
    done = {(r["method"], r["seed"]) for r in records}
    failures: list[dict] = []
    data = bayesdl.data.fashion_mnist()
    ood, _ = bayesdl.data.mnist_test()
    if args.smoke:
        data = data.subsample(n_train=512, n_test=256, seed=0)
        ood = ood[:256]
    for seed in args.seeds:  # seeds outermost: every method gets seed 0 before any seed 1
        for method in args.methods:
            if (method, seed) in done:
                continue
            settings = dict(METHODS[method])
            prior = PRIORS[settings.pop("prior", "fan-in")]()
            torch.manual_seed(seed)
            bnn = BNN(MLP(784, [args.hidden], 10), prior, likelihoods.Categorical())
            trace: list[tuple[int, float]] = []

            def record(event, bnn=bnn, trace=trace) -> None:
                step = event.step + 1
                if step % args.eval_every == 0 and step < args.steps:
                    theta = event.info["theta"].detach().clone()
                    with torch.no_grad():
                        f = bnn.forward(theta, data.x_test[:2000])
                    acc = diagnostics.accuracy(torch.softmax(f, -1).mean(0), data.y_test[:2000])
                    trace.append((step, acc))

            svgd = SVGD(
                particles=args.particles,
                steps=args.steps,
                batch_size=128,
                lr=args.lr,
                **settings,
            )
            start = time.perf_counter()
            try:
                post = svgd.fit(
                    bnn,
                    data.x_train,
                    data.y_train,
                    seed=seed,
                    progress=args.progress,
                    callbacks=[record],
                )
            except NonFiniteError as err:  # record the failure, go on with the next run
                print(f"{method:20s} seed {seed}: {err}", flush=True)
                failures.append({"method": method, "seed": seed, "error": str(err)})
                out.with_suffix(".failures.json").write_text(json.dumps(failures, indent=1))
                continue
            seconds = time.perf_counter() - start
            row = {"method": method, "seed": seed, **evaluate(post, data, ood)}
            row.update(seconds=seconds, accuracy_trace=trace, partial=post.partial)
            row["settings"] = dict(
                particles=args.particles,
                steps=args.steps,
                lr=args.lr,
                hidden=args.hidden,
                threads=args.threads,
                smoke=args.smoke,
                machine=platform.processor() or platform.machine(),
                torch=torch.__version__,
            )
            records.append(row)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(records, indent=1))
            print(
                f"{method:20s} seed {seed}: "
                + "  ".join(f"{k} {row[k]:.4g}" for k in METRICS),
                flush=True,
            )


def _mean_se(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.4f}" if values else "-"
    se = statistics.stdev(values) / math.sqrt(len(values))
    return f"{statistics.mean(values):.4f} ± {se:.4f}"


def report(paths: list[str]) -> None:
    records = [r for path in paths for r in json.loads(pathlib.Path(path).read_text())]
    by = {(r["method"], r["seed"]): r for r in records}
    methods = [m for m in METHODS if any(r["method"] == m for r in records)]
    print("| method | seeds | " + " | ".join(METRICS) + " |")
    print("|---" * (len(METRICS) + 2) + "|")
    for m in methods:
        rows = [r for r in records if r["method"] == m]
        cells = [_mean_se([r[k] for r in rows]) for k in METRICS]
        print(f"| {m} | {len(rows)} | " + " | ".join(cells) + " |")
    print("\nPaired differences to `ensemble` (same seed), mean ± SE, and seeds where higher:")
    print("| method | " + " | ".join(METRICS[:-1]) + " |")
    print("|---" * len(METRICS) + "|")
    for m in methods:
        if m == "ensemble":
            continue
        seeds = [s for (mm, s) in by if mm == m and ("ensemble", s) in by]
        cells = []
        for k in METRICS[:-1]:
            diffs = [by[(m, s)][k] - by[("ensemble", s)][k] for s in seeds]
            higher = sum(d > 0 for d in diffs)
            cells.append(f"{_mean_se(diffs)} ({higher}/{len(diffs)})" if diffs else "-")
        print(f"| {m} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=10000)
    parser.add_argument("--particles", type=int, default=5, help="5: the reference default")
    parser.add_argument("--hidden", type=int, default=100)
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    parser.add_argument("--eval-every", type=int, default=2500)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="benchmarks/results/svgd_fmnist.json")
    parser.add_argument("--smoke", action="store_true", help="tiny data, for a quick check")
    parser.add_argument("--progress", action="store_true")
    parser.add_argument(
        "--report", nargs="+", metavar="JSON", help="print the table of these result files"
    )
    args = parser.parse_args()
    if args.report:
        report(args.report)
    else:
        run(args)


if __name__ == "__main__":
    main()
