"""The compiled BNN gradient with and without the bias folded into the batched product.

``inference/graph_passes.py`` rewrites ``bmm(x, W) + b`` as ``baddbmm(b, x, W)`` in the graphs
``compile_step`` hands to inductor on a CPU. This measures what that buys: the log density
and gradient of the benchmark MLP (10-50-1, tanh, diabetes, float32; ``hmc_vs_peers.py``'s
model) compiled both ways, at several chain counts, the two variants alternating within each
repeat, and JAX's ``jit(vmap(value_and_grad))`` of the same density beside them when JAX is
installed (NumPyro's gradient).

    BAYESDL_DATA=../shared/data OMP_NUM_THREADS=1 \\
      XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" \\
      python benchmarks/bias_into_bmm.py --chains 4 64 --repeats 8
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

import hmc_vs_peers

from bayesdl.inference.compilation import compile_step
from bayesdl.inference.gradients import functional_value_and_grad


def per_call_ms(fn: Callable[[], object], calls: int) -> float:
    """Milliseconds per call of ``fn`` over ``calls`` calls, after five warm-up calls."""
    for _ in range(5):
        fn()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls * 1e3


def jax_gradient(x: torch.Tensor, y: torch.Tensor, theta: torch.Tensor) -> Callable[[], object]:
    """NumPyro's view of the same density: ``jit(vmap(value_and_grad))`` over the chains."""
    import jax
    import jax.numpy as jnp

    xj, yj, tj = (jnp.asarray(t.numpy()) for t in (x, y, theta))
    d, hidden = x.shape[1], hmc_vs_peers.HIDDEN

    def log_density(t):  # the layout of bayesdl's theta: W1 (H, d), b1, W2 (1, H), b2
        w1 = t[: hidden * d].reshape(hidden, d)
        b1 = t[hidden * d : hidden * (d + 1)]
        w2 = t[hidden * (d + 1) : hidden * (d + 2)]
        f = jnp.tanh(xj @ w1.T + b1) @ w2 + t[-1]
        return -0.5 * (t**2).sum() - 0.5 * (((yj - f) / hmc_vs_peers.NOISE) ** 2).sum()

    gradient = jax.jit(jax.vmap(jax.value_and_grad(log_density)))
    return lambda: gradient(tj)[1].block_until_ready()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chains", nargs="+", type=int, default=[4, 64])
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--calls", type=int, default=100, help="calls per timing")
    parser.add_argument("--out", default="benchmarks/results/bias_into_bmm.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = hmc_vs_peers.load("diabetes")
    x, y = data.x_train, data.y_train
    bnn = hmc_vs_peers.make_bnn(x.shape[1])
    log_joint = bnn.log_joint_fn(x, y)
    log_joint(torch.zeros(1, bnn.num_params))  # builds the prior's cached blocks eagerly
    results = []
    for chains in args.chains:
        seeded = torch.Generator().manual_seed(0)
        theta = 0.3 * torch.randn(chains, bnn.num_params, generator=seeded)
        variants = {
            "bias folded (default)": compile_step(functional_value_and_grad(log_joint)),
            "bmm + add": compile_step(
                functional_value_and_grad(log_joint), options={"post_grad_custom_pre_pass": None}
            ),
        }
        calls = {name: (lambda f=f, t=theta: f(t)) for name, f in variants.items()}
        try:
            calls["jax (NumPyro's gradient)"] = jax_gradient(x, y, theta)
        except ImportError:
            pass
        reference = variants["bmm + add"](theta)[1]
        difference = variants["bias folded (default)"](theta)[1] - reference
        times: dict[str, list[float]] = {name: [] for name in calls}
        for _ in range(args.repeats):
            for name, call in calls.items():
                times[name].append(per_call_ms(call, args.calls))
        row = {
            "chains": chains,
            "max_rel_grad_difference": float(difference.abs().max() / reference.abs().max()),
            "ms_per_call": times,
            "median_ms": {name: statistics.median(t) for name, t in times.items()},
        }
        results.append(row)
        print(json.dumps({k: row[k] for k in ("chains", "median_ms", "max_rel_grad_difference")}))
    out = {
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "command": " ".join(sys.argv),
        "results": results,
    }
    Path(args.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
