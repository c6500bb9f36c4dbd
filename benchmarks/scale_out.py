r"""Runs shared over processes (``torch.distributed``, gloo): 1 against 2 processes on the CPU.

For each family, the same run in one process and in two (:func:`bayesdl.distributed.spawn`,
one torch thread per process), and for reference one process with two threads:

* ``nuts``: NUTS, 4 chains split over the processes, MLP 10-50-1 on diabetes, depth 6:
  chain-gradients per second;
* ``sghmc``: SGHMC, 4 chains, minibatches of 64 rows split over the processes (data
  parallel): steps per second;
* ``svgd``: SVGD, 20 particles split over the processes (weight-space RBF kernel): steps per
  second.

In every process the collectives (``torch.distributed.all_reduce`` and ``all_gather``) are
timed and their payload counted, so each row has the communication time and bytes per step.
Repeats are interleaved (repeat ``r`` of every configuration before repeat ``r + 1``); each
fit is preceded by a short one in the same process (imports, first-call costs).

From the measured bytes per step, ``--report`` also writes a model (not a measurement) of a
step on N GPUs: :math:`t_N = t_1 / N + c_N`, with the compute :math:`t_1` split evenly and a
ring all-reduce / all-gather costing :math:`c_N = 2 (N - 1) \alpha + 2 \frac{N - 1}{N}
\frac{B}{\beta}` (latency :math:`\alpha`, bandwidth :math:`\beta`, bytes :math:`B` per step),
for stated :math:`\alpha, \beta`.

Usage (from the repository root)::

    OMP_NUM_THREADS=1 python benchmarks/scale_out.py --repeats 3
    python benchmarks/scale_out.py --report        # markdown table of the JSON lines
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
import sys
import time
import warnings

import torch
import torch.distributed as dist

import bayesdl
from bayesdl import distributed, likelihoods, priors
from bayesdl.inference import NUTS, SGHMC, SVGD
from bayesdl.models import BNN, MLP

FAMILIES = ("nuts", "sghmc", "svgd")
#: (label, processes, torch threads per process)
LAYOUTS = (("1 process, 1 thread", 1, 1), ("2 processes", 2, 1), ("1 process, 2 threads", 1, 2))
#: The collectives' assumed latency (s) and bandwidth (bytes/s) on N GPUs, for the model only:
#: NVLink-class links within a node (the order of magnitude, not a measurement).
MODEL_LINKS = {"NVLink (alpha 10 us, beta 100 GB/s)": (10e-6, 100e9)}


def problem() -> tuple[BNN, torch.Tensor, torch.Tensor]:
    data = bayesdl.data.load("diabetes", seed=0)
    torch.manual_seed(0)
    net = MLP(data.in_features, [50], 1, "tanh")
    bnn = BNN(net, priors.Gaussian(1.0, fan_in=True), likelihoods.Gaussian(0.6))
    return bnn, data.x_train, data.y_train


def backend(family: str, short: bool):
    if family == "nuts":
        n = 3 if short else 40
        return NUTS(chains=4, warmup=n, draws=n, max_tree_depth=6)
    if family == "sghmc":
        return SGHMC(chains=4, batch_size=64, burn_in=10 if short else 600, draws=10, thin=1)
    return SVGD(particles=20, steps=10 if short else 600)


class Collectives:
    """Times torch.distributed's all_reduce and all_gather calls and counts their bytes."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.bytes = 0
        self.calls = 0

    def install(self) -> None:
        for name in ("all_reduce", "all_gather"):
            original = getattr(dist, name)
            setattr(dist, name, self._timed(original))

    def _timed(self, original):
        def call(*args, **kwargs):
            tensors = [a for a in args if isinstance(a, torch.Tensor)]
            tensors += [t for a in args if isinstance(a, list) for t in a]
            start = time.perf_counter()
            out = original(*args, **kwargs)
            self.seconds += time.perf_counter() - start
            self.bytes += sum(t.numel() * t.element_size() for t in tensors)
            self.calls += 1
            return out

        return call


class Counter:
    """Counts steps and (NUTS) chain-gradients of a run."""

    def __init__(self) -> None:
        self.steps = 0
        self.gradients = 0

    def __call__(self, event) -> None:
        self.steps += 1
        n_steps = event.info.get("n_steps")
        if n_steps is not None:
            self.gradients += int(n_steps.sum())


def measure(family: str, threads: int) -> dict:
    """One timed fit of ``family`` in this process (in a group if one is initialised)."""
    torch.set_num_threads(threads)
    bnn, x, y = problem()
    collectives = Collectives()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        backend(family, short=True).fit(bnn, x, y, seed=1, progress=False)
        if dist.is_initialized():
            collectives.install()
        counter = Counter()
        start = time.perf_counter()
        backend(family, short=False).fit(bnn, x, y, seed=0, progress=False, callbacks=counter)
        seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "steps": counter.steps,
        # NUTS: this process's chains' gradients (summed over processes in run)
        "work": counter.gradients if family == "nuts" else counter.steps,
        "comm_s_per_step": collectives.seconds / counter.steps,
        "comm_bytes_per_step": collectives.bytes / counter.steps,
        "comm_calls_per_step": collectives.calls / counter.steps,
    }


def run(args: argparse.Namespace) -> None:
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for repeat in range(args.repeats):
        for family in args.families:
            for label, processes, threads in LAYOUTS:
                if processes == 1:
                    result = measure(family, threads)
                else:
                    ranks = distributed.spawn(measure, processes, family, threads)
                    result = {
                        **ranks[0],
                        "seconds": max(r["seconds"] for r in ranks),
                        "work": sum(r["work"] for r in ranks)
                        if family == "nuts"
                        else ranks[0]["work"],
                    }
                result["work_per_s"] = result["work"] / result["seconds"]
                record = {
                    "family": family,
                    "layout": label,
                    "processes": processes,
                    "threads": threads,
                    "repeat": repeat,
                    "machine": f"{platform.machine()}, {os.cpu_count()} cpus",
                    "torch": torch.__version__,
                    **result,
                }
                print(json.dumps(record), flush=True)
                with out.open("a") as fh:
                    fh.write(json.dumps(record) + "\n")


def report(path: str) -> None:
    rows = [json.loads(line) for line in pathlib.Path(path).read_text().splitlines() if line]
    unit = {"nuts": "chain-grads/s", "sghmc": "steps/s", "svgd": "steps/s"}
    print(
        "| family | layout | work per second (median, range) | vs 1 process, 1 thread | "
        "communication per step | bytes per step |"
    )
    print("|---|---|---|---|---|---|")
    for family in FAMILIES:
        base = None
        for label, _, _ in LAYOUTS:
            sel = [r for r in rows if r["family"] == family and r["layout"] == label]
            if not sel:
                continue
            work = [r["work_per_s"] for r in sel]
            med = statistics.median(work)
            base = med if base is None else base
            comm = statistics.median(r["comm_s_per_step"] for r in sel) * 1e3
            size = statistics.median(r["comm_bytes_per_step"] for r in sel)
            print(
                f"| {family} | {label} | {med:,.0f} {unit[family]} ({min(work):,.0f}-"
                f"{max(work):,.0f}, n={len(work)}) | {med / base:.2f}x | {comm:.2f} ms | "
                f"{size:,.0f} |"
            )
    print()
    print("Model of a step on N GPUs (not measured): t_N = t_1 / N + ring collectives")
    for link, (alpha, beta) in MODEL_LINKS.items():
        for family in FAMILIES:
            sel = [r for r in rows if r["family"] == family and r["processes"] == 2]
            one = [r for r in rows if r["family"] == family and r["layout"] == LAYOUTS[0][0]]
            if not sel or not one:
                continue
            t1 = statistics.median(r["seconds"] / r["steps"] for r in one)
            size = statistics.median(r["comm_bytes_per_step"] for r in sel)
            calls = statistics.median(r["comm_calls_per_step"] for r in sel)
            cells = []
            for n in (2, 4, 8):
                comm = calls * 2 * (n - 1) * alpha + 2 * (n - 1) / n * size / beta
                cells.append(f"N={n}: {t1 / (t1 / n + comm):.2f}x")
            print(f"- {family}, {link}: " + ", ".join(cells))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--families", nargs="+", choices=FAMILIES, default=list(FAMILIES))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/results/scale_out.jsonl")
    parser.add_argument("--report", action="store_true", help="print the table of --out")
    args = parser.parse_args()
    if args.report:
        report(args.out)
    else:
        run(args)


if __name__ == "__main__":
    sys.exit(main())
