"""Compiled NUTS: whole trajectories in one loop against the tree in Python with compiled leaves.

For each model, runs ``NUTS(compile="auto")`` with ``compile="auto"``'s thresholds at zero (so
it compiles after its probe) and without the limit on the chains' state size
(``LOOP_MAX_ELEMENTS``, which these runs measure), once looping (``inference/mcmc/looped.py``)
and once with the compiled leaves, alternating, ``--repeats`` times each, in one process (so
every run after the first of its kind finds its graph in the on-disk cache). Recorded per run:
the whole wall time, the time of the transition that compiled (the build), and the
steady-state time per lockstep leapfrog step (the kept draws' wall time over the most leapfrog
steps any chain took per draw, summed). Models: ``kidiq`` (posteriordb, 4 chains, float64) and
the MLP 10-50-1 on diabetes of ``hmc_vs_peers.py`` (``bnn4``, ``bnn64``: 4 or 64 chains,
depth 8). Results of models not run are kept in ``--out``.

    BAYESDL_DATA=../shared/data OMP_NUM_THREADS=1 python benchmarks/looped_vs_leaves.py \\
        --models kidiq bnn4 bnn64 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from hmc_vs_peers import load, make_bnn
from posteriordb_models import load_model

from bayesdl.inference import NUTS
from bayesdl.inference.mcmc import nuts as nuts_module
from bayesdl.inference.mcmc import run as mcmc_run

DEFAULT_OUT = "benchmarks/results/looped_vs_leaves.json"


class Clock:
    """A callback keeping the time of every step."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def __call__(self, event: object) -> None:
        self.times.append(time.perf_counter())


def kidiq(warmup: int, draws: int) -> Callable[[list], object]:
    model = load_model("kidiq-kidscore_momiq", dtype=torch.float64)
    init = torch.as_tensor(np.random.default_rng(0).uniform(-2, 2, size=(4, model.dim)))

    def run(callbacks: list) -> object:
        nuts = NUTS(chains=4, warmup=warmup, draws=draws)
        return nuts.sample(model.log_density, init, seed=0, progress=False, callbacks=callbacks)

    return run


def bnn(chains: int, warmup: int, draws: int) -> Callable[[list], object]:
    data = load("diabetes")

    def run(callbacks: list) -> object:
        nuts = NUTS(chains=chains, warmup=warmup, draws=draws, max_tree_depth=8)
        net = make_bnn(data.x_train.shape[1])
        return nuts.fit(
            net, data.x_train, data.y_train, seed=0, progress=False, callbacks=callbacks
        )

    return run


MODELS = {
    "kidiq": lambda: ("kidiq, 4 chains x 1000 + 1000", kidiq(1000, 1000), 1000),
    "bnn4": lambda: ("MLP 10-50-1 diabetes, 4 chains x 60 + 60, depth 8", bnn(4, 60, 60), 60),
    "bnn64": lambda: ("MLP 10-50-1 diabetes, 64 chains x 15 + 15, depth 8", bnn(64, 15, 15), 15),
}


def measure(run: Callable[[list], object], warmup: int, looped: bool) -> dict:
    """One run with the loop or with the compiled leaves."""
    mcmc_run.AUTO_MIN_LEAVES = 0
    mcmc_run.AUTO_MIN_LOOPED_LEAVES = 0 if looped else 10**15
    nuts_module.LOOP_MAX_ELEMENTS = 2**62  # the limit on the state's size is what is measured
    torch._dynamo.reset()
    clock = Clock()
    start = time.perf_counter()
    post = run([clock])
    times = np.array(clock.times) - start
    lockstep = post.sample_stats["n_steps"].max(0).values.double()
    steady = float(np.diff(times[warmup:]).sum() / lockstep[1:].sum())
    probe = mcmc_run.AUTO_PROBE
    build = float(np.diff(times[: probe + 2]).max())  # the compiling transition dominates
    assert post.attrs["looped"] == int(looped)
    return {
        "looped": bool(looped),
        "seconds": round(float(times[-1]), 2),
        "build_s": round(build, 2),
        "us_per_lockstep_step": round(steady * 1e6, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default=DEFAULT_OUT)
    args = parser.parse_args()
    torch.set_num_threads(1)
    report = {"models": {}}
    if os.path.exists(args.out):  # other models' results are kept
        with open(args.out) as fh:
            report = json.load(fh)
    report["machine"] = f"{platform.machine()}, {torch.get_num_threads()} torch threads"
    report["torch"] = torch.__version__
    for key in args.models:
        label, run, warmup = MODELS[key]()
        rows = [measure(run, warmup, looped) for _ in range(args.repeats) for looped in (1, 0)]
        for row in rows:
            print(key, row, flush=True)
        summary = {
            kind: statistics.median(
                r["us_per_lockstep_step"] for r in rows if r["looped"] == (kind == "loop")
            )
            for kind in ("loop", "leaves")
        }
        report["models"][key] = {"label": label, "runs": rows, "median_us": summary}
        with open(args.out, "w") as fh:
            json.dump(report, fh, indent=1)


if __name__ == "__main__":
    main()
