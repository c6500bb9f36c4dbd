"""Runs with Python's cyclic garbage collector kept off the heap (``frozen``, the library now:
``inference/frozen_heap.py``) against runs without (``collector``: ``frozen_heap`` patched to
do nothing), variants interleaved, each run in its own process from a warm inductor cache.

* ``--model kidiq``: posteriordb's kidiq, ``NUTS(chains=4)`` with its defaults (1,000 +
  1,000; ``compile="auto"``) on the plain torch density;
* ``--model bnn4``: the MLP 10-50-1 on diabetes of ``hmc_vs_peers.py``, 4 chains x 100 + 100,
  depth 8, ``compile="auto"``.

    BAYESDL_DATA=../shared/data OMP_NUM_THREADS=1 python benchmarks/frozen_heap_ab.py \\
        --model kidiq --repeats 5 --out benchmarks/results/frozen_heap_ab_kidiq.json
"""

from __future__ import annotations

import argparse
import contextlib
import time

import ab

VARIANTS = ("collector", "frozen")


def run_variant(variant: str, args: argparse.Namespace) -> dict:
    """One whole run of ``args.model`` with ``variant`` in this process."""
    import hmc_vs_peers
    import numpy as np
    import torch
    from posteriordb_models import load_model

    from bayesdl.inference import NUTS, base

    torch.set_num_threads(1)
    if variant == "collector":
        base.frozen_heap = contextlib.nullcontext
    if args.model == "kidiq":
        model = load_model("kidiq-kidscore_momiq")
        init = torch.as_tensor(np.random.default_rng(0).uniform(-2, 2, size=(4, model.dim)))
        start = time.perf_counter()
        post = NUTS(chains=4).sample(model.log_density, init, seed=0, progress=False)
        seconds = time.perf_counter() - start
    else:
        data = hmc_vs_peers.load("diabetes")
        bnn = hmc_vs_peers.make_bnn(data.x_train.shape[1])
        start = time.perf_counter()
        nuts = NUTS(chains=4, warmup=100, draws=100, max_tree_depth=8)
        post = nuts.fit(bnn, data.x_train, data.y_train, seed=0, progress=False)
        seconds = time.perf_counter() - start
    return {
        "variant": variant,
        "model": args.model,
        "seconds": round(seconds, 3),
        "compiled": post.attrs.get("compiled"),
        "looped": post.attrs.get("looped"),
        "n_steps": int(post.sample_stats["n_steps"].sum()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("kidiq", "bnn4"), default="kidiq")
    parser.add_argument("--out", default="benchmarks/results/frozen_heap_ab.json")
    ab.main(__file__, parser, VARIANTS, run_variant)


if __name__ == "__main__":
    main()
