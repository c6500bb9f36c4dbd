"""Benchmark: mean-field VI and sparse subspace VI (SSVI) on Fashion-MNIST, and VI step speed.

Two parts, written as one Markdown section (default ``benchmarks/results/vi_ssvi.md``):

1. **Step time**: the functional VI engine (vectorised, local reparameterisation, closed-form
   KL) against Pyro's ``SVI`` + ``AutoNormal`` + ``Trace_ELBO`` on the same BNN (the code a Pyro
   user writes), and against bayesdl's own Pyro engine; on a small regression MLP (UCI
   concrete, 8-50-1, full batch) and the Fashion-MNIST MLP (784-200-200-10, batch 128), with
   1 and 8 particles. Peers run interleaved, ``--repeats`` times; each run reports the median
   step time after warm-up, and the table gives the median over runs (and the range).
2. **Quality**: dense VI against SSVI at densities 0.5, 0.2, 0.1, 0.05 on Fashion-MNIST
   (60k training images, the 784-200-200-10 ReLU MLP, ``--epochs`` epochs of batch 128):
   accuracy, NLL, ECE, MNIST out-of-distribution AUROC (predictive entropy), stored
   parameters, theoretical training FLOPs relative to dense VI, and wall time.

Run from the repository root (``OMP_NUM_THREADS=1`` is the setting used for the numbers in
``benchmarks/results/vi_ssvi.md``: on a shared two-core machine two OpenMP threads per process
are many times slower than one)::

    OMP_NUM_THREADS=1 BAYESDL_DATA=../shared/data .venv/bin/python benchmarks/vi_ssvi.py

``--device cuda`` runs both parts on a GPU (the BNN and the data on the device).
``--smoke`` runs every code path on tiny subsets in seconds (the numbers mean nothing).
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import pathlib
import platform
import statistics
import time

import pyro
import torch

import bayesdl
from bayesdl import likelihoods, priors
from bayesdl.diagnostics import accuracy, expected_calibration_error, ood_auroc, predictive_entropy
from bayesdl.inference.base import Minibatches
from bayesdl.inference.vi.sparse.ssvi import SSVI
from bayesdl.inference.vi.vi import VI
from bayesdl.models import BNN, MLP

DENSITIES = (0.5, 0.2, 0.1, 0.05)


DEVICE = torch.device("cpu")


def fmnist_bnn() -> BNN:
    torch.manual_seed(0)
    return BNN(
        MLP(784, [200, 200], 10).to(DEVICE),
        priors.Gaussian(1.0, fan_in=True),
        likelihoods.Categorical(),
    )


def regression_bnn(in_features: int) -> BNN:
    torch.manual_seed(0)
    return BNN(
        MLP(in_features, [50], 1, activation="relu").to(DEVICE),
        priors.Gaussian(1.0, fan_in=True),
        likelihoods.Gaussian(0.3),
    )


# ----------------------------------------------------------------------------------- timing
def time_bayesdl(bnn, x, y, batch, particles, steps, warmup, engine, local_reparam, num_data):
    """Median step time of bayesdl's VI (seconds), from the gaps between callbacks."""
    stamps: list[float] = []
    vi = VI(
        steps=warmup + steps,
        lr=1e-3,
        batch_size=batch,
        num_particles=particles,
        engine=engine,
        local_reparam=local_reparam,
        draws=1,
    )
    vi.fit(
        bnn,
        x,
        y,
        seed=0,
        progress=False,
        num_data=num_data,
        callbacks=[lambda event: stamps.append(time.perf_counter())],
    )
    gaps = [b - a for a, b in zip(stamps[warmup:], stamps[warmup + 1 :], strict=False)]
    return statistics.median(gaps)


def time_pyro_svi(bnn, x, y, batch, particles, steps, warmup, num_data):
    """Median step time of ``pyro.infer.SVI`` + ``AutoNormal`` + ``Trace_ELBO`` (seconds)."""
    pyro.clear_param_store()
    guide = pyro.infer.autoguide.AutoNormal(bnn.model)
    svi = pyro.infer.SVI(
        bnn.model,
        guide,
        pyro.optim.Adam({"lr": 1e-3}),
        pyro.infer.Trace_ELBO(num_particles=particles),
    )
    batches = Minibatches(*bnn.check_data(x, y), batch, seed=0)
    gaps = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        svi.step(*next(batches), num_data)
        if i >= warmup:
            gaps.append(time.perf_counter() - start)
    pyro.clear_param_store()
    return statistics.median(gaps)


def timing(args) -> list[dict]:
    concrete = bayesdl.data.uci("concrete", split=0)
    fm = bayesdl.data.fashion_mnist()
    cases = [
        (
            "concrete 8-50-1, full batch (927)",
            regression_bnn(8),
            concrete.x_train,
            concrete.y_train,
            None,
        ),
        ("F-MNIST 784-200-200-10, batch 128", fmnist_bnn(), fm.x_train, fm.y_train, 128),
    ]
    steps, warmup = (3, 2) if args.smoke else (args.timing_steps, 5)
    rows = []
    for label, bnn, x, y, batch in cases:
        if args.smoke:
            x, y = x[:256], y[:256]
        num_data = x.shape[0]
        for particles in (1, 8):
            timed = functools.partial(
                time_bayesdl, bnn, x, y, batch, particles, steps, warmup, num_data=num_data
            )
            peers = {
                "bayesdl functional (LRT)": functools.partial(timed, "functional", True),
                "bayesdl functional (no LRT)": functools.partial(timed, "functional", False),
                "bayesdl engine='pyro'": functools.partial(timed, "pyro", None),
                "Pyro SVI + AutoNormal": functools.partial(
                    time_pyro_svi, bnn, x, y, batch, particles, steps, warmup, num_data
                ),
            }
            runs: dict[str, list[float]] = {name: [] for name in peers}
            for _ in range(args.repeats):  # interleaved, so load changes hit every peer
                for name, run in peers.items():
                    runs[name].append(run())
            reference = statistics.median(runs["Pyro SVI + AutoNormal"])
            for name, values in runs.items():
                median = statistics.median(values)
                rows.append(
                    {
                        "case": label,
                        "particles": particles,
                        "peer": name,
                        "ms_per_step": 1000 * median,
                        "ms_min": 1000 * min(values),
                        "ms_max": 1000 * max(values),
                        "speedup_vs_pyro_svi": reference / median,
                    }
                )
                print(rows[-1], flush=True)
    return rows


# ----------------------------------------------------------------------------------- quality
def evaluate(post, x_test, y_test, x_ood) -> dict:
    pred = post.predict(x_test)
    probs = pred.mean
    in_entropy = predictive_entropy(probs)
    out_entropy = predictive_entropy(post.predict(x_ood).mean)
    return {
        "accuracy": accuracy(probs, y_test),
        "nll": -float(pred.log_prob(y_test).mean()),
        "ece": expected_calibration_error(probs, y_test),
        "ood_auroc": ood_auroc(in_entropy.cpu(), out_entropy.cpu()),
    }


def quality(args) -> list[dict]:
    fm = bayesdl.data.fashion_mnist()
    mnist_x, _ = bayesdl.data.mnist_test()
    x, y, x_test, y_test, x_ood = (
        t.to(DEVICE) for t in (fm.x_train, fm.y_train, fm.x_test, fm.y_test, mnist_x)
    )
    if args.smoke:
        x, y, x_test, y_test, x_ood = x[:512], y[:512], x_test[:256], y_test[:256], x_ood[:256]
    steps = max(1, args.epochs * (x.shape[0] // 128)) if not args.smoke else 20
    common = dict(
        steps=steps,
        lr=1e-3,
        batch_size=128,
        kl_anneal=0.5,
        init_scale=1e-2,
        lr_schedule="cosine",
        draws=args.draws,
    )
    configs = [("dense VI", None)] + [(f"SSVI {d:g}", d) for d in DENSITIES]
    rows = []
    for label, density in configs:
        bnn = fmnist_bnn()
        backend = VI(**common) if density is None else SSVI(density=density, **common)
        start = time.perf_counter()
        post = backend.fit(bnn, x, y, seed=0, progress=False)
        seconds = time.perf_counter() - start
        metrics = evaluate(post, x_test, y_test, x_ood)
        stored = post.attrs["ssvi"]["stored_params"] if density else 2 * bnn.num_params
        rows.append(
            {
                "method": label,
                "density": density or 1.0,
                **metrics,
                "stored_params": stored,
                "compression": 2 * bnn.num_params / stored,
                "flops_ratio": post.attrs["flops_ratio"] if density else 1.0,
                "fit_seconds": seconds,
                "final_elbo": post.attrs["final_elbo"],
            }
        )
        print(rows[-1], flush=True)
    return rows, steps


# ----------------------------------------------------------------------------------- report
def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    device = (
        f"GPU {torch.cuda.get_device_name(DEVICE)}" if DEVICE.type == "cuda" else "no GPU (CPU run)"
    )
    return (
        f"{cpu}, {os.cpu_count()} cores visible, torch {torch.__version__} "
        f"({torch.get_num_threads()} intra-op threads), pyro {pyro.__version__}, "
        f"Python {platform.python_version()}; {device}"
    )


def markdown(timing_rows, quality_rows, steps, args) -> str:
    lines = [
        "## Variational inference: dense VI and sparse subspace VI (SSVI)",
        "",
        f"Measured {datetime.date.today()} on {machine()}. Timings are medians of "
        "interleaved repeats (other jobs may share the machine).",
        "",
        "Command: `OMP_NUM_THREADS=1 BAYESDL_DATA=../shared/data .venv/bin/python "
        f"benchmarks/vi_ssvi.py --epochs {args.epochs} --draws {args.draws} "
        f"--repeats {args.repeats} --timing-steps {args.timing_steps} --device {args.device}"
        + (" --skip-timing" if args.skip_timing else "")
        + (" --skip-quality" if args.skip_quality else "")
        + "`",
        "",
    ]
    if timing_rows:
        lines += [
            "### Time per VI step: functional engine against Pyro SVI",
            "",
            "Adam, lr 1e-3; one step = one minibatch ELBO estimate, its gradient and the update. "
            f"Median over {args.repeats} interleaved runs of the median step time after 5 "
            f"warm-up steps ({args.timing_steps} timed steps per run); range over runs in "
            "brackets. Speed-up = Pyro SVI + AutoNormal time / peer time.",
            "",
            "| model | particles | peer | ms / step | speed-up vs Pyro SVI |",
            "|---|---|---|---|---|",
        ]
        for r in timing_rows:
            lines.append(
                f"| {r['case']} | {r['particles']} | {r['peer']} | {r['ms_per_step']:.1f} "
                f"[{r['ms_min']:.1f}-{r['ms_max']:.1f}] | {r['speedup_vs_pyro_svi']:.1f}x |"
            )
        lines.append("")
    if quality_rows:
        dense = quality_rows[0]
        lines += [
            "### Fashion-MNIST: dense VI against SSVI",
            "",
            f"MLP 784-200-200-10 (ReLU), N(0, 1/fan_in) prior, temperature 1; {steps} steps "
            f"({args.epochs} epochs) of batch 128, Adam lr 1e-3 with cosine decay, KL warm-up "
            "over the first half, local reparameterisation, closed-form KL; SSVI: mask update "
            "every 100 steps, drop fraction 0.3 (cosine), frozen after 75%, SNR(|theta|) "
            f"removal, gradient growth. Test metrics on the 10k test images with {args.draws} "
            "draws from the guide; OOD AUROC: predictive entropy, Fashion-MNIST test against "
            "the 10k MNIST test images. One seed (0).",
            "",
            "| method | accuracy | NLL | ECE | OOD AUROC | stored params | compression "
            "| train FLOPs vs dense | fit time (s) |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in quality_rows:
            lines.append(
                f"| {r['method']} | {r['accuracy']:.4f} | {r['nll']:.4f} | {r['ece']:.4f} | "
                f"{r['ood_auroc']:.4f} | {r['stored_params']:,} | {r['compression']:.1f}x | "
                f"{r['flops_ratio']:.3f} | {r['fit_seconds']:.0f} |"
            )
        at = {r["density"]: r for r in quality_rows}
        if 0.1 in at:
            drop = dense["accuracy"] - at[0.1]["accuracy"]
            side = "below" if drop >= 0 else "above"
            lines += [
                "",
                f"At density 0.1: accuracy {abs(100 * drop):.2f} points {side} dense VI "
                f"(target: a drop of at most 3 points), with {at[0.1]['compression']:.1f}x "
                "fewer stored parameters (target: at least 10x). FLOPs are theoretical "
                "(multiply-accumulates of the weights): the masked tensors are stored densely, "
                "so the fit times do not fall with the density.",
            ]
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--draws", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--timing-steps", type=int, default=30)
    parser.add_argument("--skip-timing", action="store_true")
    parser.add_argument("--skip-quality", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="tiny subsets, seconds")
    parser.add_argument("--out", default="benchmarks/results/vi_ssvi.md")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--json", default=None, help="also write the raw numbers here")
    args = parser.parse_args()
    global DEVICE
    DEVICE = torch.device(args.device)
    timing_rows = [] if args.skip_timing else timing(args)
    quality_rows, steps = ([], 0) if args.skip_quality else quality(args)
    text = markdown(timing_rows, quality_rows, steps, args)
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    if args.json:
        pathlib.Path(args.json).write_text(
            json.dumps({"timing": timing_rows, "quality": quality_rows}, indent=2)
        )
    print(text)


if __name__ == "__main__":
    main()
