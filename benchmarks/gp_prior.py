"""Speed and quality of GP-prior fitting (Tran et al. 2022) in the UCI setting.

Two measurements, both on CPU:

1. **Critic step** (the inner loop, 40,000 of them per fit with the paper's settings): bayesdl's
   critic, whose gradient penalty uses the closed-form input gradient of the MLP and one fused
   forward pass, against the reference code's approach (a separate forward pass per batch and
   autograd's double backward for the penalty, as in ``optbnn``'s ``WassersteinDistance``),
   re-implemented here as the peer. Same sizes (M = 100 measurement points, 128 functions per
   distribution, a 100 -> 200 -> 200 -> 1 Softplus critic, Adagrad), same run, medians over
   repeats, for 1 and 2 threads.
2. **A full fit** with the paper's UCI settings on bostonHousing split 0: a 1x50 tanh MLP, the
   hierarchical RBF-ARD target (log lengthscale ~ N(log sqrt(2D), 1), log variance ~ N(0.1, 1)),
   100 measurement points (70% training inputs, 30% uniform in the train+test box), 128
   functions, 200 outer steps (RMSprop, lr 0.05), up to 200 critic steps (Adagrad, lr 0.02,
   early stop below a gradient norm of 0.1), a fresh critic every outer step (the paper's
   schedule). Reports the wall time and the final distance.

3. **Fresh against warm-started critics** (issue 13): the UCI-setting fit on bostonHousing
   split 0 as Tran et al. run it (a 1x100 tanh MLP, the same target and measurement set, data
   points from the training inputs and the uniform box over training and test inputs, the
   variance hyperprior drawn through softplus as in their code, 128 functions, 200 outer
   steps) once per configuration: a fresh critic every outer step (``--fresh-steps`` critic
   steps) against a warm-started one (critic network and Adagrad state kept, ``--warm-steps``
   per outer step), for each weight parameterisation in ``--parameterisations``. Each fitted
   prior is then scored by an *independent* critic: for ``--check-sets`` new measurement sets
   from a separate seed, a fresh critic (1,000 Adagrad steps, no early stop) is trained on
   256 new BNN and 256 new GP draws and the dual estimate is read on another 256 of each. The
   same check also scores the fan-in N(0, 1) start. Each fit runs on one thread; its wall
   time and its CPU time (``time.process_time``, what the wall time is on an idle core) are
   recorded with the load average, since the machine is shared.

Usage::

    BAYESDL_DATA=../shared/data python benchmarks/gp_prior.py            # everything
    BAYESDL_DATA=../shared/data python benchmarks/gp_prior.py --no-fit   # critic steps only
    BAYESDL_DATA=../shared/data python benchmarks/gp_prior.py --device cuda --threads 1
    BAYESDL_DATA=../shared/data OMP_NUM_THREADS=1 python benchmarks/gp_prior.py --compare \
        --out benchmarks/results/gp_prior_warm_vs_fresh.json     # comparison 3 only
    BAYESDL_DATA=../shared/data OMP_NUM_THREADS=1 python benchmarks/gp_prior.py --compare \
        --fresh-steps 200 --parameterisations softplus \
        --out benchmarks/results/gp_prior_warm_vs_fresh200.json  # the paper's fresh schedule

Results go to ``--out`` (JSON) and are printed as markdown.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import platform
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

import bayesdl
from bayesdl.models import MLP
from bayesdl.priors import measurement
from bayesdl.priors.functional import fit_gp_prior, prior_functions
from bayesdl.priors.gp import GPTarget, uci_target_kernel
from bayesdl.priors.gp_families import make_family
from bayesdl.priors.wasserstein import Critic, dual_estimate


class _ReferenceCritic(nn.Module):
    """The peer: the same MLP, evaluated the way the reference code does it."""

    def __init__(self, num_inputs: int) -> None:
        super().__init__()
        self.lin1 = nn.Linear(num_inputs, 200)
        self.lin2 = nn.Linear(200, 200)
        self.lin3 = nn.Linear(200, 1)
        for layer in (self.lin1, self.lin2, self.lin3):
            nn.init.xavier_normal_(layer.weight)
            nn.init.normal_(layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin3(F.softplus(self.lin2(F.softplus(self.lin1(x)))))


def _reference_fit(f_p: torch.Tensor, f_q: torch.Tensor, steps: int) -> None:
    """Critic training as in the reference: separate passes, double backward for the penalty."""
    critic = _ReferenceCritic(f_p.shape[1]).to(f_p.device)
    optimiser = torch.optim.Adagrad(critic.parameters(), lr=0.02)
    for _ in range(steps):
        optimiser.zero_grad()
        objective = -(critic(f_p).mean() - critic(f_q).mean())
        eps = torch.rand(f_p.shape[0], 1, device=f_p.device)
        x = (eps * f_p + (1 - eps) * f_q).requires_grad_(True)
        y = critic(x)
        (grad,) = torch.autograd.grad(y, x, torch.ones_like(y), create_graph=True)
        objective = objective + 10 * ((grad.norm(2, dim=1) - 1) ** 2).mean()
        objective.backward()
        optimiser.step()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def critic_step_times(
    repeats: int, threads: list[int], device: torch.device, steps: int = 50
) -> list[dict]:
    """Median milliseconds per critic step, bayesdl vs the reference approach."""
    gen = torch.Generator().manual_seed(0)
    f_p = torch.randn(128, 100, generator=gen).to(device)
    f_q = (0.5 * torch.randn(128, 100, generator=gen) + 0.3).to(device)
    ours = Critic(steps=steps, threshold=None)
    rows = []
    for n_threads in threads:
        torch.set_num_threads(n_threads)
        timings: dict[str, list[float]] = {"bayesdl": [], "reference": []}
        Critic(steps=5, threshold=None).fit(f_p, f_q)  # warm-up: allocator, kernels, caches
        _reference_fit(f_p, f_q, 5)
        for _ in range(repeats):
            for name, run in (
                ("bayesdl", lambda: ours.fit(f_p, f_q)),
                ("reference", lambda: _reference_fit(f_p, f_q, steps)),
            ):
                torch.manual_seed(0)
                _sync(device)
                start = time.perf_counter()
                run()
                _sync(device)
                timings[name].append(1000 * (time.perf_counter() - start) / steps)
        ours_ms = statistics.median(timings["bayesdl"])
        ref_ms = statistics.median(timings["reference"])
        rows.append(
            {
                "threads": n_threads,
                "bayesdl_ms_per_step": ours_ms,
                "reference_ms_per_step": ref_ms,
                "speedup": ref_ms / ours_ms,
                "all_bayesdl": timings["bayesdl"],
                "all_reference": timings["reference"],
            }
        )
        print(
            f"critic step, {n_threads} thread(s): bayesdl {ours_ms:.2f} ms, reference "
            f"{ref_ms:.2f} ms, ratio {ref_ms / ours_ms:.2f}"
        )
    return rows


def full_fit(
    dataset: str, threads: int, steps: int, critic_steps: int, seed: int, device: torch.device
) -> dict:
    torch.set_num_threads(threads)
    data = bayesdl.data.uci(dataset, split=0)
    torch.manual_seed(0)
    net = MLP(data.in_features, [50], 1, activation="tanh").to(device)
    start = time.perf_counter()
    prior = fit_gp_prior(
        net,
        uci_target_kernel(data.in_features),
        measurement.from_data(data.x_train, 100, uniform_fraction=0.3, x_test=data.x_test),
        steps=steps,
        num_functions=128,
        critic={"steps": critic_steps, "lr": 0.02, "threshold": 0.1, "warm_start": False},
        lr=0.05,
        seed=seed,
        progress=False,
    )
    seconds = time.perf_counter() - start
    history = prior.history
    row = {
        "device": str(device),
        "dataset": dataset,
        "threads": threads,
        "steps": steps,
        "critic_steps": critic_steps,
        "seconds": seconds,
        "first_distance": float(history.distance[0]),
        "final_distance": prior.final_distance,
        "mean_critic_steps": float(history.critic_steps.float().mean()),
        "exact_w1": history.exact,
        "scales": {k: float(v) for k, v in prior.scales().items()},
    }
    print(
        f"full fit ({dataset}, {device}, {threads} thread(s)): {seconds:.0f} s, distance "
        f"{row['first_distance']:.2f} -> {row['final_distance']:.2f}, exact W1 "
        f"{history.exact['before']:.2f} -> {history.exact['after']:.2f} "
        f"(GP vs GP {history.exact['gp_vs_gp']:.2f}), critic steps "
        f"{row['mean_critic_steps']:.0f}"
    )
    return row


def independent_distance(
    prior: bayesdl.priors.Prior | None,
    net: nn.Module,
    target: GPTarget,
    sampler: measurement.FromData,
    *,
    sets: int,
    seed: int = 12345,
    draws: int = 256,
    critic_steps: int = 1000,
) -> dict:
    """The W1 of a fitted prior (``None``: the fan-in N(0, 1) start) by an independent critic.

    Per measurement set: a fresh critic trained on ``draws`` BNN and GP functions, its dual
    estimate read on ``draws`` new ones (a held-out lower-bound estimate of W1).
    """
    family = make_family(
        net,
        "gaussian" if prior is None else prior.family,
        "layer" if prior is None else prior.per,
        1.0,
        "log",
    )
    if prior is not None:
        family.load_values(prior.values)
    generator = torch.Generator().manual_seed(seed)
    critic = Critic(steps=critic_steps, threshold=None)
    values = []
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for _ in range(sets):
            x = sampler(generator).float()
            with torch.no_grad():
                f = prior_functions(net, family.rsample(2 * draws), x)
            g = target.sample(x, 2 * draws).float()
            fit = critic.fit(f[:draws], g[:draws])
            with torch.no_grad():
                values.append(float(dual_estimate(fit.network, f[draws:], g[draws:])))
    return {
        "mean": statistics.fmean(values),
        "se": statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else math.nan,
        "per_set": values,
    }


def compare_critics(args: argparse.Namespace) -> list[dict]:
    """Comparison 3 of the module docstring: fresh vs warm-started critics, independent check."""
    torch.set_num_threads(1)
    data = bayesdl.data.uci(args.dataset, split=0)
    sampler = measurement.from_data(data.x_train, 100, 0.3, x_test=data.x_test)
    kernel = uci_target_kernel(data.in_features)
    target = GPTarget(kernel, hyperprior_draws="softplus")
    torch.manual_seed(0)
    net = MLP(data.in_features, [100], 1, activation="tanh")
    rows = []
    start_check = independent_distance(None, net, target, sampler, sets=args.check_sets)
    print(
        f"fan-in N(0, 1) start: independent W1 {start_check['mean']:.2f} +- {start_check['se']:.2f}"
    )
    rows.append({"config": "fan-in N(0,1) start (no fit)", "independent_w1": start_check})
    configs = [
        (p, warm, args.warm_steps if warm else args.fresh_steps)
        for p in args.parameterisations
        for warm in ((True,) if args.warm_only else (True, False))
    ]
    for parameterisation, warm, steps in configs:
        print(f"load average before the fit: {os.getloadavg()}", flush=True)
        t0, cpu0 = time.perf_counter(), time.process_time()
        prior = fit_gp_prior(
            net,
            kernel,
            sampler,
            family="gaussian",
            steps=args.steps,
            num_functions=128,
            critic={"steps": steps, "lr": 0.02, "threshold": 0.1, "warm_start": warm},
            lr=0.05,
            parameterisation=parameterisation,
            hyperprior_draws="softplus",
            seed=args.seed,
            progress=False,
        )
        seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - cpu0
        load = os.getloadavg()
        check = independent_distance(prior, net, target, sampler, sets=args.check_sets)
        row = {
            "config": f"{'warm' if warm else 'fresh'} critic, {steps} steps, {parameterisation}",
            "parameterisation": parameterisation,
            "warm_start": warm,
            "critic_steps_per_outer_step": steps,
            "total_critic_steps": int(prior.history.critic_steps.sum()),
            "seconds": seconds,
            "cpu_seconds": cpu_seconds,
            "load_average_after_fit": load,
            "final_distance_own_critic": prior.final_distance,
            "independent_w1": check,
            "scales": {
                k: float(v)
                for k, v in prior.summary()["hyperparameters"].items()
                for v in [v["scale"]]
            },
        }
        rows.append(row)
        print(
            f"{row['config']}: {seconds:.1f} s wall, {cpu_seconds:.1f} s CPU (load "
            f"{load[0]:.2f}), own critic "
            f"{prior.final_distance:.2f}, independent W1 {check['mean']:.2f} +- "
            f"{check['se']:.2f}, critic steps {row['total_critic_steps']}, scales "
            + ", ".join(f"{k} {v:.2f}" for k, v in row["scales"].items()),
            flush=True,
        )
    for parameterisation in [] if args.warm_only else args.parameterisations:
        warm, fresh = (
            next(
                r
                for r in rows
                if r.get("parameterisation") == parameterisation and r["warm_start"] is w
            )
            for w in (True, False)
        )
        diff = [
            a - b
            for a, b in zip(
                warm["independent_w1"]["per_set"], fresh["independent_w1"]["per_set"], strict=True
            )
        ]
        paired = {
            "mean": statistics.fmean(diff),
            "se": statistics.stdev(diff) / math.sqrt(len(diff)) if len(diff) > 1 else math.nan,
            "time_ratio_fresh_over_warm": fresh["seconds"] / warm["seconds"],
            "cpu_ratio_fresh_over_warm": fresh["cpu_seconds"] / warm["cpu_seconds"],
        }
        rows.append({"config": f"paired warm - fresh, {parameterisation}", "paired": paired})
        print(
            f"{parameterisation}: independent W1 warm - fresh {paired['mean']:+.2f} +- "
            f"{paired['se']:.2f} (paired over measurement sets), fresh/warm CPU time "
            f"{paired['cpu_ratio_fresh_over_warm']:.1f}x",
            flush=True,
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--dataset", default="bostonHousing")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--critic-steps", type=int, default=200)
    parser.add_argument("--fit-threads", type=int, nargs="+", default=[1])
    parser.add_argument("--no-fit", action="store_true")
    parser.add_argument("--compare", action="store_true", help="run comparison 3 only")
    parser.add_argument("--warm-steps", type=int, default=20)
    parser.add_argument("--fresh-steps", type=int, default=50)
    parser.add_argument("--parameterisations", nargs="+", default=["softplus", "log"])
    parser.add_argument("--check-sets", type=int, default=5)
    parser.add_argument("--warm-only", action="store_true", help="comparison 3 without fresh")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="outputs/benchmarks/gp_prior.json")
    args = parser.parse_args()
    device = torch.device(args.device)

    machine = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "load_average_at_start": os.getloadavg(),
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else "none",
    }
    print(json.dumps(machine))
    results: dict = {"machine": machine}
    if args.compare:
        results["warm_vs_fresh"] = compare_critics(args)
        results["load_average_at_end"] = os.getloadavg()
        out = pathlib.Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2))
        print("wrote", out)
        return
    results["critic_step"] = critic_step_times(args.repeats, args.threads, device)
    if not args.no_fit:
        results["full_fit"] = [
            full_fit(args.dataset, t, args.steps, args.critic_steps, args.seed, device)
            for t in args.fit_threads
        ]
    results["load_average_at_end"] = os.getloadavg()
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print("wrote", out)


if __name__ == "__main__":
    main()
