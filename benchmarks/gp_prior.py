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
   early stop below a gradient norm of 0.1). Reports the wall time and the final distance.

Usage::

    BAYESDL_DATA=../shared/data python benchmarks/gp_prior.py            # everything
    BAYESDL_DATA=../shared/data python benchmarks/gp_prior.py --no-fit   # critic steps only
    BAYESDL_DATA=../shared/data python benchmarks/gp_prior.py --device cuda --threads 1

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

import gpytorch
import torch
import torch.nn.functional as F
from torch import nn

import bayesdl
from bayesdl.models import MLP
from bayesdl.priors import measurement
from bayesdl.priors.functional import fit_gp_prior
from bayesdl.priors.wasserstein import Critic


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


def uci_kernel(dim: int) -> gpytorch.kernels.Kernel:
    """Tran et al.'s UCI target: RBF-ARD, lengthscale sqrt(2D), LogNormal hyperpriors."""
    base = gpytorch.kernels.RBFKernel(
        ard_num_dims=dim,
        lengthscale_prior=gpytorch.priors.LogNormalPrior(math.log(math.sqrt(2 * dim)), 1.0),
    )
    base.lengthscale = math.sqrt(2 * dim)
    return gpytorch.kernels.ScaleKernel(
        base, outputscale_prior=gpytorch.priors.LogNormalPrior(0.1, 1.0)
    )


def full_fit(
    dataset: str, threads: int, steps: int, critic_steps: int, seed: int, device: torch.device
) -> dict:
    torch.set_num_threads(threads)
    data = bayesdl.data.uci(dataset, split=0)
    x_all = torch.cat([data.x_train, data.x_test])
    torch.manual_seed(0)
    net = MLP(data.in_features, [50], 1, activation="tanh").to(device)
    start = time.perf_counter()
    prior = fit_gp_prior(
        net,
        uci_kernel(data.in_features),
        measurement.from_data(x_all, 100, uniform_fraction=0.3),
        steps=steps,
        num_functions=128,
        critic={"steps": critic_steps, "lr": 0.02, "threshold": 0.1},
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--dataset", default="bostonHousing")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--critic-steps", type=int, default=200)
    parser.add_argument("--fit-threads", type=int, nargs="+", default=[1])
    parser.add_argument("--no-fit", action="store_true")
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
    results = {
        "machine": machine,
        "critic_step": critic_step_times(args.repeats, args.threads, device),
    }
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
