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
    python benchmarks/hmc_vs_peers.py --plan bayesdl-auto:4 numpyro:4          # the defaults
    python benchmarks/hmc_vs_peers.py --device cuda --datasets diabetes --max-tree-depth 6 \
        --plan bayesdl-compile:64 numpyro:64 bayesdl:64 --budget-seconds 400   # on a GPU

On a GPU (``--device cuda``) the BNN, the data and every chain live on the GPU; NumPyro runs on
the same card (its default device; ``XLA_PYTHON_CLIENT_PREALLOCATE=false`` so that both fit).
``bayesdl-compile`` then captures its leaves in CUDA graphs (``NUTS(compile=True)``); each of
its rows records the compiled graphs and CUDA-graph recordings made after the first transition
(``graphs_after_first``, which must be 0) and dynamo's and inductor's counters. The
gradient-cost rows add the *CUDA-graph limit*: one vectorised gradient of the log joint
captured in a CUDA graph and replayed, the floor under any sampler's cost per chain-gradient.
``--plan sampler:chains ...`` runs contenders in that order (the most important first) and
``--budget-seconds`` skips the rest once the time is spent; results are written after every
row, so a run cut short keeps what it measured.

NumPyro runs only when installed (``pip install -e .[bench]``). The figures, commands and
machine of the published runs are in ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
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
SAMPLERS = ("bayesdl", "bayesdl-compile", "bayesdl-auto", "numpyro", "pyro", "pyro-nojit")
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


def load(name: str, device: str = "cpu") -> bayesdl.data.Dataset:
    """The data set, with its tensors on ``device``."""
    data = (
        bayesdl.data.uci(name[4:], split=0)
        if name.startswith("uci:")
        else bayesdl.data.load(name, seed=0)
    )
    moved = {k: getattr(data, k).to(device) for k in ("x_train", "y_train", "x_test", "y_test")}
    return dataclasses.replace(data, **moved)


def make_bnn(in_features: int, device: str = "cpu") -> BNN:
    torch.manual_seed(0)
    net = MLP(in_features, [HIDDEN], 1, "tanh").to(device)
    return BNN(net, priors.Gaussian(1.0), likelihoods.Gaussian(NOISE))


def synchronize() -> None:
    """Wait for the GPU's queued work (timings of asynchronous launches)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def compile_counters() -> dict:
    """Dynamo's and inductor's counters (graphs compiled, CUDA graphs recorded or skipped)."""
    from torch._dynamo.utils import counters

    return {group: dict(values) for group, values in counters.items() if values}


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
    f = post.predict(data.x_test[:PROBES]).samples[..., 0].cpu().numpy()
    return metrics["rmse"], metrics["nll"], f


class GradientCounter:
    """Callback summing the leapfrog steps (chain-gradients) of every iteration, warmup included;
    also the time of the first iteration's end (which includes any compilation) and the
    compile counters then."""

    def __init__(self) -> None:
        self.total = 0
        self.first_done: float | None = None
        self.counters_after_first: dict = {}

    def __call__(self, event) -> None:
        self.total += int(sum(int(n) for n in event.info["n_steps"]))
        if self.first_done is None:
            synchronize()
            self.first_done = time.perf_counter()
            self.counters_after_first = compile_counters()


def _graphs(counters: dict) -> int:
    """Graphs compiled and CUDA graphs recorded, as counted by dynamo and inductor."""
    stats, inductor = counters.get("stats", {}), counters.get("inductor", {})
    recorded = sum(v for k, v in inductor.items() if "cudagraph" in k and "record" in k)
    return int(stats.get("unique_graphs", 0)) + int(recorded)


def run_bayesdl(
    bnn, data, chains, warmup, draws, depth, compile: bool | str = False, seed: int = 0
) -> Row:
    counter = GradientCounter()
    synchronize()
    start = time.perf_counter()
    nuts = NUTS(chains=chains, warmup=warmup, draws=draws, max_tree_depth=depth, compile=compile)
    post = nuts.fit(bnn, data.x_train, data.y_train, seed=seed, progress=False, callbacks=[counter])
    synchronize()
    seconds = time.perf_counter() - start
    counters = compile_counters()
    grads = counter.total
    rmse, nll, f = score(bnn, post.theta, data)
    ess_min, ess_med, rhat = function_space_quality(f)
    mean_depth = float(post.sample_stats["tree_depth"].float().mean())
    # waste of lockstep chains: mean tree size / max tree size per iteration
    n = post.sample_stats["n_steps"].float()
    efficiency = float((n.mean(0) / n.max(0).values).mean())
    name = {True: "bayesdl NUTS (compiled)", "auto": "bayesdl NUTS (compile=auto)"}
    return Row(
        name.get(compile, "bayesdl NUTS"),
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
            "graphs_after_first": _graphs(counters) - _graphs(counter.counters_after_first),
            "compiled": post.attrs.get("compiled"),
            "looped": post.attrs.get("looped"),
            "compile_counters": counters,
            "device": str(bnn.device),
        },
    )


def run_pyro(bnn, data, chains, warmup, draws, depth, jit: bool, seed: int = 0) -> Row:
    counter = GradientCounter()
    start = time.perf_counter()
    post = NUTS(
        chains=chains, warmup=warmup, draws=draws, max_tree_depth=depth, engine="pyro", jit=jit
    ).fit(bnn, data.x_train, data.y_train, seed=seed, progress=False, callbacks=[counter])
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


def run_numpyro(bnn, data, chains, warmup, draws, depth, seed: int = 0) -> Row | None:
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
    x = jnp.asarray(data.x_train.cpu().numpy())
    y = jnp.asarray(data.y_train.cpu().numpy())
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
    mcmc.warmup(jax.random.PRNGKey(seed), x, y, extra_fields=("num_steps",), collect_warmup=True)
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
        {"numpyro": numpyro.__version__, "device": str(jax.devices()[0])},
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
    eps = torch.full((chains,), 1e-3, device=theta.device)

    def timed(f: Callable[[], object]) -> float:
        for _ in range(5):
            f()
        runs = []
        for _ in range(5):
            synchronize()
            t = time.perf_counter()
            for _ in range(repeats):
                f()
            synchronize()
            runs.append((time.perf_counter() - t) / repeats * 1e6)
        return statistics.median(runs)

    grad_us = timed(lambda: log_density_and_grad(theta))
    step_us = timed(lambda: leapfrog(state, eps, metric, log_density_and_grad))
    with skip_guard_checks():  # as the samplers call their compiled steps
        compiled_us = timed(lambda: compiled(theta, functional))
    row = {
        "chains": chains,
        "gradient_us": round(grad_us, 1),
        "compiled_gradient_us": round(compiled_us, 1),
        "leapfrog_us": round(step_us, 1),
        "leapfrog_over_gradient": round(step_us / grad_us, 3),
    }
    if theta.is_cuda:
        try:
            graph_us = timed(captured_gradient(functional, theta))
        except RuntimeError as error:  # an operation that cannot be captured: say which
            row["cuda_graph_error"] = f"{type(error).__name__}: {str(error)[:300]}"
        else:
            row["cuda_graph_gradient_us"] = round(graph_us, 1)
            row["cuda_graph_chain_gradients_per_s"] = round(chains / graph_us * 1e6, 1)
    return row


def captured_gradient(functional: Callable, theta: torch.Tensor) -> Callable[[], object]:
    """One vectorised gradient of the log joint captured in a CUDA graph: its replay, the
    floor under a sampler's cost per chain-gradient (no Python, no launches but one)."""
    import pyro

    static = theta.clone()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with pyro.validation_enabled(False), torch.cuda.stream(stream):
        for _ in range(3):  # warm up outside the capture (allocations, lazy initialisation)
            functional(static)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with pyro.validation_enabled(False), torch.cuda.graph(graph):
        functional(static)
    return graph.replay


def run_dataset(name: str, args: argparse.Namespace, report: dict) -> dict:
    """Every chosen contender on one data set; rows are printed and written as they finish."""
    data = load(name, args.device)
    bnn = make_bnn(data.in_features, args.device)
    depth, warmup, draws = args.max_tree_depth, args.warmup, args.draws
    plan = args.plan or default_plan(args)
    ours = any(sampler.startswith("bayesdl") for sampler, _ in plan)
    results: dict = {"gradient_cost": [], "samplers": [], "skipped": []}
    report["datasets"][name] = results
    deadline = time.perf_counter() + args.budget_seconds

    def record(row: dict) -> None:
        results["samplers"].append(row)
        print(name, row, flush=True)
        write(report, args.out)

    if ours:
        for c in args.cost_chains or sorted({c for _, c in plan}):
            results["gradient_cost"].append(gradient_cost(bnn, data, c))
            print(name, results["gradient_cost"][-1], flush=True)
            write(report, args.out)
    for sampler, c in plan:
        if time.perf_counter() > deadline:
            results["skipped"].append(f"{sampler}:{c}")
            continue
        try:
            if sampler.startswith("bayesdl"):
                compile = {"bayesdl": False, "bayesdl-compile": True, "bayesdl-auto": "auto"}
                row = run_bayesdl(bnn, data, c, warmup, draws, depth, compile[sampler], args.seed)
                record(row.as_dict())
            elif sampler == "numpyro":
                row = run_numpyro(bnn, data, c, warmup, draws, depth, args.seed)
                if row is not None:
                    record(row.as_dict())
            elif sampler == "pyro":
                row = run_pyro(bnn, data, c, warmup, draws, depth, jit=True, seed=args.seed)
                record(row.as_dict())
            elif sampler == "pyro-nojit":
                n = args.nojit_iterations
                row = run_pyro(bnn, data, 1, n, n, depth, jit=False).as_dict()
                record({**row, "note": f"{n}+{n} iterations"})
        except Exception as error:  # a failed contender is recorded; the others still run
            record({"sampler": sampler, "chains": c, "error": f"{type(error).__name__}: {error}"})
    return results


def default_plan(args: argparse.Namespace) -> list[tuple[str, int]]:
    """Without ``--plan``: each chosen sampler at its chain counts, in the order of SAMPLERS."""
    plan = []
    for sampler in ("bayesdl", "bayesdl-compile", "bayesdl-auto"):
        if sampler in args.samplers:
            plan += [(sampler, c) for c in args.chains]
    if "numpyro" in args.samplers:
        plan += [("numpyro", c) for c in args.numpyro_chains]
    if "pyro" in args.samplers:
        plan.append(("pyro", args.pyro_chains))
    if "pyro-nojit" in args.samplers:
        plan.append(("pyro-nojit", 1))
    return plan


def plan_entry(text: str) -> tuple[str, int]:
    """``sampler:chains`` from the command line."""
    sampler, _, chains = text.partition(":")
    if sampler not in SAMPLERS or not chains.isdigit():
        raise argparse.ArgumentTypeError(f"expected sampler:chains with a sampler in {SAMPLERS}")
    return sampler, int(chains)


def write(report: dict, path: str) -> None:
    with open(path, "w") as fh:
        json.dump(report, fh, indent=2)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--datasets", nargs="+", default=["diabetes", "uci:yacht"])
    parser.add_argument("--chains", nargs="+", type=int, default=[1, 4, 16, 64])
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--draws", type=int, default=200)
    parser.add_argument("--max-tree-depth", type=int, default=8, help="for every sampler")
    parser.add_argument("--seed", type=int, default=0, help="every sampler's seed")
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
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument(
        "--plan",
        nargs="+",
        type=plan_entry,
        help="sampler:chains contenders in this order (instead of --samplers/--chains)",
    )
    parser.add_argument(
        "--cost-chains", nargs="+", type=int, help="chain counts of the gradient-cost rows"
    )
    parser.add_argument(
        "--budget-seconds",
        type=float,
        default=math.inf,
        help="start no contender after this many seconds (the rest are listed as skipped)",
    )
    args = parser.parse_args()
    machine = f"{platform.machine()}, {torch.get_num_threads()} torch threads"
    if args.device.startswith("cuda"):
        machine += f", {torch.cuda.get_device_name()}"
    report = {
        "machine": machine,
        "torch": torch.__version__,
        "settings": {**vars(args), "plan": [f"{s}:{c}" for s, c in args.plan or []]},
        "environment": {k: os.environ.get(k, "") for k in ("XLA_PYTHON_CLIENT_PREALLOCATE",)},
        "datasets": {},
    }
    for name in args.datasets:
        run_dataset(name, args, report)
    write(report, args.out)
    print(json.dumps(report, indent=2))
    regraphed = [
        f"{name}: {row['sampler']} with {row['chains']} chains"
        for name, results in report["datasets"].items()
        for row in results["samplers"]
        if row.get("graphs_after_first")
    ]
    if regraphed:  # compile=True must never compile or record a graph after its first step
        raise SystemExit(f"graphs compiled or recorded after the first transition: {regraphed}")


if __name__ == "__main__":
    main()
