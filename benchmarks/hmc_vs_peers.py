"""NUTS on a BNN: bayesdl's vectorised engine against Pyro (jit and not) and NumPyro.

The same model everywhere: an MLP with one hidden layer of 50 tanh units, N(0, 1) priors on
every weight and bias, Gaussian noise with standard deviation 0.5 on standardised targets.
For each sampler: wall time, gradient evaluations per second (chain-gradients per second for
vectorised chains), ESS per second of the function values at 5 probe test inputs (min and
median over the probes), and test RMSE/NLL, so speed is compared at equal quality.

ESS is computed per chain and summed over chains: BNN posteriors are multimodal, chains settle
in different modes, and cross-chain ESS would count that against them. The cross-chain R-hat
is reported separately, as a diagnostic. Also measured: the cost of one vectorised gradient of
``bnn.log_joint`` (the limit for any sampler built on it) and a leapfrog step of the engine.

    python benchmarks/hmc_vs_peers.py --datasets diabetes --chains 1 4 16 64 --draws 150
    python benchmarks/hmc_vs_peers.py --samplers numpyro --numpyro-chains 64   # one contender
    python benchmarks/hmc_vs_peers.py --samplers bayesdl-compile numpyro       # NUTS(compile=True)

NumPyro runs only when installed (``pip install -e .[bench]``). The figures, commands and
machine of the published runs are in ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

import bayesdl
from bayesdl import likelihoods, priors
from bayesdl.arviz_bridge import import_arviz
from bayesdl.inference import NUTS
from bayesdl.models import BNN, MLP

HIDDEN = 50
SAMPLERS = ("bayesdl", "bayesdl-compile", "numpyro", "pyro", "pyro-nojit")
NOISE = 0.5
PROBES = 5


@dataclass
class Row:
    sampler: str
    chains: int
    seconds: float
    gradients: int
    ess_min: float
    ess_median: float
    rhat_max: float
    rmse: float
    nll: float
    extra: dict = field(default_factory=dict)

    @property
    def grads_per_second(self) -> float:
        return self.gradients / self.seconds

    def as_dict(self) -> dict:
        return {
            "sampler": self.sampler,
            "chains": self.chains,
            "seconds": round(self.seconds, 2),
            "chain_gradients_per_s": round(self.grads_per_second, 1),
            "ess_per_s_min": round(self.ess_min / self.seconds, 3),
            "ess_per_s_median": round(self.ess_median / self.seconds, 3),
            "rhat_max": round(self.rhat_max, 3),
            "test_rmse": round(self.rmse, 4),
            "test_nll": round(self.nll, 4),
            **self.extra,
        }


def load(name: str) -> bayesdl.data.Dataset:
    return (
        bayesdl.data.uci(name[4:], split=0)
        if name.startswith("uci:")
        else bayesdl.data.load(name, seed=0)
    )


def make_bnn(in_features: int) -> BNN:
    torch.manual_seed(0)
    return BNN(
        MLP(in_features, [HIDDEN], 1, "tanh"), priors.Gaussian(1.0), likelihoods.Gaussian(NOISE)
    )


def function_space_quality(f_probe: np.ndarray) -> tuple[float, float, float]:
    """Summed per-chain bulk ESS (min, median over probes) and max cross-chain R-hat of ``f``."""
    az = import_arviz()
    chains = f_probe.shape[0]
    ess = []
    for k in range(f_probe.shape[-1]):
        ess.append(sum(float(az.ess(f_probe[c : c + 1, :, k])) for c in range(chains)))
    rhat = (
        max(float(az.rhat(f_probe[..., k])) for k in range(f_probe.shape[-1]))
        if chains > 1
        else math.nan
    )
    return min(ess), statistics.median(ess), rhat


def score(bnn: BNN, theta: torch.Tensor, data) -> tuple[float, float, np.ndarray]:
    post = bayesdl.Posterior(theta.to(bnn.dtype), bnn)
    metrics = post.evaluate(data.x_test, data.y_test, y_scale=data.y_scale)
    f = post.predict(data.x_test[:PROBES]).samples[..., 0].numpy()
    return metrics["rmse"], metrics["nll"], f


class GradientCounter:
    """Callback summing the leapfrog steps (chain-gradients) of every iteration, warmup included;
    also the time of the first iteration's end (which includes any compilation)."""

    def __init__(self) -> None:
        self.total = 0
        self.first_done: float | None = None

    def __call__(self, event) -> None:
        self.total += int(sum(int(n) for n in event.info["n_steps"]))
        if self.first_done is None:
            self.first_done = time.perf_counter()


def run_bayesdl(bnn, data, chains, warmup, draws, depth, compile: bool = False) -> Row:
    counter = GradientCounter()
    start = time.perf_counter()
    nuts = NUTS(chains=chains, warmup=warmup, draws=draws, max_tree_depth=depth, compile=compile)
    post = nuts.fit(bnn, data.x_train, data.y_train, seed=0, progress=False, callbacks=[counter])
    seconds = time.perf_counter() - start
    grads = counter.total
    rmse, nll, f = score(bnn, post.theta, data)
    ess_min, ess_med, rhat = function_space_quality(f)
    mean_depth = float(post.sample_stats["tree_depth"].float().mean())
    # waste of lockstep chains: mean tree size / max tree size per iteration
    n = post.sample_stats["n_steps"].float()
    efficiency = float((n.mean(0) / n.max(0).values).mean())
    return Row(
        "bayesdl NUTS (compiled)" if compile else "bayesdl NUTS",
        chains,
        seconds,
        int(grads),
        ess_min,
        ess_med,
        rhat,
        rmse,
        nll,
        {
            "mean_tree_depth": round(mean_depth, 2),
            "lockstep_efficiency": round(efficiency, 3),
            "first_iteration_s": round(counter.first_done - start, 2),
        },
    )


def run_pyro(bnn, data, chains, warmup, draws, depth, jit: bool) -> Row:
    counter = GradientCounter()
    start = time.perf_counter()
    post = NUTS(
        chains=chains, warmup=warmup, draws=draws, max_tree_depth=depth, engine="pyro", jit=jit
    ).fit(bnn, data.x_train, data.y_train, seed=0, progress=False, callbacks=[counter])
    seconds = time.perf_counter() - start
    grads = counter.total
    rmse, nll, f = score(bnn, post.theta, data)
    ess_min, ess_med, rhat = function_space_quality(f)
    return Row(
        f"Pyro NUTS ({'jit' if jit else 'no jit'})",
        chains,
        seconds,
        int(grads),
        ess_min,
        ess_med,
        rhat,
        rmse,
        nll,
    )


def run_numpyro(bnn, data, chains, warmup, draws, depth) -> Row | None:
    try:
        import jax
        import jax.numpy as jnp
        import numpyro
        import numpyro.distributions as nd
        from numpyro.infer import MCMC
        from numpyro.infer import NUTS as NNUTS
    except ImportError:
        return None
    jax.config.update("jax_enable_x64", False)
    x = jnp.asarray(data.x_train.numpy())
    y = jnp.asarray(data.y_train.numpy())
    d = x.shape[1]

    def model(x, y=None):
        w1 = numpyro.sample("w1", nd.Normal(0, 1).expand([d, HIDDEN]).to_event(2))
        b1 = numpyro.sample("b1", nd.Normal(0, 1).expand([HIDDEN]).to_event(1))
        w2 = numpyro.sample("w2", nd.Normal(0, 1).expand([HIDDEN, 1]).to_event(2))
        b2 = numpyro.sample("b2", nd.Normal(0, 1).expand([1]).to_event(1))
        f = (jnp.tanh(x @ w1 + b1) @ w2 + b2)[:, 0]
        numpyro.sample("y", nd.Normal(f, NOISE), obs=y)

    mcmc = MCMC(
        NNUTS(model, max_tree_depth=depth),
        num_warmup=warmup,
        num_samples=draws,
        num_chains=chains,
        chain_method="vectorized",
        progress_bar=False,
    )
    start = time.perf_counter()
    mcmc.warmup(jax.random.PRNGKey(0), x, y, extra_fields=("num_steps",), collect_warmup=True)
    warmup_steps = int(np.asarray(mcmc.get_extra_fields()["num_steps"]).sum())
    mcmc.run(mcmc.post_warmup_state.rng_key, x, y, extra_fields=("num_steps",))
    jax.block_until_ready(mcmc.get_samples())
    seconds = time.perf_counter() - start
    samples = mcmc.get_samples(group_by_chain=True)
    grads = warmup_steps + int(np.asarray(mcmc.get_extra_fields()["num_steps"]).sum())
    # the same parameters in bayesdl's layout: layers.0.weight is (50, d) = w1^T, ...
    theta = torch.cat(
        [
            torch.as_tensor(np.array(samples["w1"])).transpose(-1, -2).reshape(chains, draws, -1),
            torch.as_tensor(np.array(samples["b1"])),
            torch.as_tensor(np.array(samples["w2"])).transpose(-1, -2).reshape(chains, draws, -1),
            torch.as_tensor(np.array(samples["b2"])),
        ],
        dim=-1,
    )
    rmse, nll, f = score(bnn, theta, data)
    ess_min, ess_med, rhat = function_space_quality(f)
    return Row(
        "NumPyro NUTS (vectorized)",
        chains,
        seconds,
        int(grads),
        ess_min,
        ess_med,
        rhat,
        rmse,
        nll,
        {"numpyro": numpyro.__version__},
    )


def gradient_cost(bnn: BNN, data, chains: int, repeats: int = 50) -> dict:
    """Median microseconds of one vectorised gradient of log_joint (eager and compiled), and of
    one eager leapfrog step."""
    from bayesdl.inference.compilation import compile_step, skip_guard_checks
    from bayesdl.inference.gradients import functional_value_and_grad, value_and_grad
    from bayesdl.inference.mcmc.integrators import IntegratorState, leapfrog
    from bayesdl.inference.mcmc.mass_matrix import Metric

    fn = bnn.log_joint_fn(data.x_train, data.y_train)
    log_density_and_grad = value_and_grad(fn)
    compiled = compile_step(lambda theta, log_density_and_grad: log_density_and_grad(theta))
    functional = functional_value_and_grad(fn)
    theta = bnn.init_theta(chains, seed=0)
    metric = Metric.identity(chains, theta.shape[1], False, theta)
    logp, grad = log_density_and_grad(theta)
    state = IntegratorState(theta, torch.zeros_like(theta), logp, grad)
    eps = torch.full((chains,), 1e-3)

    def timed(f: Callable[[], object]) -> float:
        for _ in range(5):
            f()
        runs = []
        for _ in range(5):
            t = time.perf_counter()
            for _ in range(repeats):
                f()
            runs.append((time.perf_counter() - t) / repeats * 1e6)
        return statistics.median(runs)

    grad_us = timed(lambda: log_density_and_grad(theta))
    step_us = timed(lambda: leapfrog(state, eps, metric, log_density_and_grad))
    with skip_guard_checks():  # as the samplers call their compiled steps
        compiled_us = timed(lambda: compiled(theta, functional))
    return {
        "chains": chains,
        "gradient_us": round(grad_us, 1),
        "compiled_gradient_us": round(compiled_us, 1),
        "leapfrog_us": round(step_us, 1),
        "leapfrog_over_gradient": round(step_us / grad_us, 3),
    }


def run_dataset(name: str, args: argparse.Namespace) -> dict:
    """Every chosen contender on one data set; rows are printed as they finish."""
    data = load(name)
    bnn = make_bnn(data.in_features)
    depth, warmup, draws = args.max_tree_depth, args.warmup, args.draws
    ours = {"bayesdl", "bayesdl-compile"} & set(args.samplers)
    costs = [gradient_cost(bnn, data, c) for c in args.chains] if ours else []
    results = []

    def record(row: dict) -> None:
        results.append(row)
        print(name, row, flush=True)

    for sampler in ("bayesdl", "bayesdl-compile"):
        if sampler in args.samplers:
            compile = sampler == "bayesdl-compile"
            for c in args.chains:
                record(run_bayesdl(bnn, data, c, warmup, draws, depth, compile).as_dict())
    if "numpyro" in args.samplers:
        for c in args.numpyro_chains:
            row = run_numpyro(bnn, data, c, warmup, draws, depth)
            if row is not None:
                record(row.as_dict())
    if "pyro" in args.samplers:
        record(run_pyro(bnn, data, args.pyro_chains, warmup, draws, depth, jit=True).as_dict())
    if "pyro-nojit" in args.samplers:
        n = args.nojit_iterations
        row = run_pyro(bnn, data, 1, n, n, depth, jit=False).as_dict()
        record({**row, "note": f"{n}+{n} iterations"})
    return {"gradient_cost": costs, "samplers": results}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--datasets", nargs="+", default=["diabetes", "uci:yacht"])
    parser.add_argument("--chains", nargs="+", type=int, default=[1, 4, 16, 64])
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--draws", type=int, default=200)
    parser.add_argument("--max-tree-depth", type=int, default=8, help="for every sampler")
    parser.add_argument(
        "--samplers",
        nargs="+",
        choices=SAMPLERS,
        default=list(SAMPLERS),
        help="which contenders to run",
    )
    parser.add_argument("--pyro-chains", type=int, default=4)
    parser.add_argument("--numpyro-chains", nargs="+", type=int, default=[4, 64])
    parser.add_argument(
        "--nojit-iterations", type=int, default=20, help="warmup = draws for Pyro without jit"
    )
    parser.add_argument("--out", default="benchmarks/results/hmc_vs_peers.json")
    args = parser.parse_args()
    report = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
        "torch": torch.__version__,
        "settings": vars(args),
        "datasets": {},
    }
    for name in args.datasets:
        report["datasets"][name] = run_dataset(name, args)
    with open(args.out, "w") as fh:
        json.dump(report, fh, indent=2)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
