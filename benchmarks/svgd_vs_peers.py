"""SVGD speed: bayesdl against Pyro's SVGD, and the function/hybrid kernels' overhead.

The same BNN and target for every contender: an MLP 10-50-1 (ReLU) with N(0, 1) priors on
every weight and Gaussian noise of standard deviation 0.5, on the 353 training points of the
diabetes data (scikit-learn's, 80/20 split, standardised), full batch.

Contenders, per step (one update of all particles):

* ``pyro``: ``pyro.infer.SVGD`` with ``RBFSteinKernel`` in ``mode="multivariate"`` (standard
  SVGD), Adam; the model is written for Pyro's particle plate (batched matrix products);
* ``bayesdl-weight``, ``bayesdl-function``, ``bayesdl-hybrid``: ``bayesdl.inference.SVGD`` with
  each kernel, Adam (the function kernel's measurement set is the 353 inputs, its prior score
  SSGE from ``P`` fresh prior draws per step);
* ``bayesdl-weight-compile``: the weight kernel with ``SVGD(compile=True)``: score, kernel,
  direction and Adam update in one ``torch.compile`` graph (compiled during the first repeat's
  warm-up, which is not timed);
* ``fwd+bwd``: one vectorised forward and backward pass of the log joint for all particles
  (``BNN.log_joint_fn`` and ``autograd.grad``), the floor any SVGD step pays.

Each contender runs ``--steps`` steps after ``--warmup`` discarded ones; the median step time is
taken; this is repeated ``--repeats`` times in alternation (so every contender sees the same
machine load) and the median over repeats is reported, with the range. Ratios compare numbers
from the same run.

Usage::

    BAYESDL_DATA=../shared/data python benchmarks/svgd_vs_peers.py \
        [--particles 20 100] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVGD as PyroSVGD
from pyro.infer import RBFSteinKernel
from pyro.optim import Adam

import bayesdl
from bayesdl import likelihoods, priors
from bayesdl.inference.compilation import skip_guard_checks
from bayesdl.inference.particles.algorithm import bnn_target
from bayesdl.inference.particles.compiled import compiled_step
from bayesdl.inference.particles.directions import SteinDirection
from bayesdl.inference.particles.svgd import SVGD
from bayesdl.models import BNN, MLP

HIDDEN, NOISE, LR = 50, 0.5, 1e-3
PYRO = "pyro (RBFSteinKernel, multivariate)"


def pyro_model(x: torch.Tensor, y: torch.Tensor) -> None:
    """The MLP as a Pyro model vectorised over Pyro's particle plate (dim -2)."""
    d = x.shape[1]
    w1 = pyro.sample("w1", dist.Normal(0.0, 1.0).expand([HIDDEN, d]).to_event(2))
    b1 = pyro.sample("b1", dist.Normal(0.0, 1.0).expand([HIDDEN]).to_event(1))
    w2 = pyro.sample("w2", dist.Normal(0.0, 1.0).expand([1, HIDDEN]).to_event(2))
    b2 = pyro.sample("b2", dist.Normal(0.0, 1.0).expand([1]).to_event(1))
    # Collapse the particle plate's batch dimensions to one: weights (P, ...), outputs (P, N).
    w1, b1 = w1.reshape(-1, HIDDEN, d), b1.reshape(-1, 1, HIDDEN)
    w2, b2 = w2.reshape(-1, 1, HIDDEN), b2.reshape(-1, 1)
    hidden = torch.relu(x @ w1.transpose(-1, -2) + b1)  # (P, N, HIDDEN)
    f = (hidden @ w2.transpose(-1, -2)).squeeze(-1) + b2  # (P, N)
    with pyro.plate("data", x.shape[0], dim=-1):
        pyro.sample("y", dist.Normal(f, NOISE), obs=y)


def pyro_stepper(particles: int, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    svgd = PyroSVGD(
        pyro_model,
        RBFSteinKernel(),
        Adam({"lr": LR}),
        num_particles=particles,
        max_plate_nesting=1,
        mode="multivariate",
    )
    return lambda: svgd.step(x, y)


def bayesdl_stepper(
    bnn: BNN, kernel: str, particles: int, x: torch.Tensor, y: torch.Tensor
) -> Callable[[], None]:
    """One step of bayesdl's SVGD, through its internals (no driver, no progress bar)."""
    svgd = SVGD(particles=particles, kernel=kernel, lr=LR)
    target = bnn_target(svgd, bnn, x, y, len(x), 0)
    streams, direction = target.streams(1, 2), SteinDirection.of(svgd)
    theta = bnn.init_theta(particles, 0)
    optimizer = torch.optim.Adam([theta], lr=LR)
    noise = torch.Generator().manual_seed(0)

    def step() -> None:
        with torch.no_grad():
            phi, _ = direction(target, theta, target.next_batch(), 1.0, noise, streams)
            theta.grad = -phi
            optimizer.step()

    return step


def compiled_stepper(
    bnn: BNN, kernel: str | None, particles: int, x: torch.Tensor, y: torch.Tensor
) -> Callable[[], None]:
    """One step of ``SVGD(compile=True)``, through its internals (as :func:`bayesdl_stepper`)."""
    svgd = SVGD(particles=particles, kernel=kernel, lr=LR, compile=True)
    target = bnn_target(svgd, bnn, x, y, len(x), 0)
    theta = bnn.init_theta(particles, 0)
    optimizer = torch.optim.Adam([theta], lr=LR)
    noise = torch.Generator().manual_seed(0)
    compiled = compiled_step(svgd, target, theta, optimizer)
    assert compiled is not None and compiled.kind == "adam"
    moments = compiled.moments(theta)

    def step() -> None:
        with torch.no_grad(), skip_guard_checks():
            compiled(theta, target.next_batch(), 1.0, noise, moments)

    return step


def plain_stepper(bnn: BNN, particles: int, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    log_joint = bnn.log_joint_fn(x, y)
    theta = bnn.init_theta(particles, 0)

    def step() -> None:
        leaf = theta.detach().requires_grad_(True)
        torch.autograd.grad(log_joint(leaf).sum(), leaf)

    return step


def median_step_ms(step: Callable[[], None], steps: int, warmup: int) -> float:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--particles", type=int, nargs="+", default=[20, 100])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    data = bayesdl.data.load("diabetes", seed=0)
    x, y = data.x_train, data.y_train
    torch.manual_seed(0)
    bnn = BNN(MLP(10, [HIDDEN], 1), priors.Gaussian(1.0), likelihoods.Gaussian(NOISE))
    print(
        f"# SVGD step time, MLP 10-{HIDDEN}-1 on {len(x)} points (D={bnn.num_params}); "
        f"torch {torch.__version__}, pyro {pyro.__version__}, {platform.processor() or 'cpu'}, "
        f"{torch.get_num_threads()} thread(s), no GPU; median of {args.steps} steps, "
        f"median [range] over {args.repeats} repeats; load average at start "
        f"{' '.join(f'{v:.1f}' for v in os.getloadavg())}"
    )
    print()
    print("| particles | contender | ms/step | vs Pyro | vs fwd+bwd |")
    print("|---|---|---|---|---|")
    # bayesdl's target takes data checked once by BNN.check_data, as SVGD.fit hands it over
    # (targets of shape (N, 1) here; unchecked (N,) targets would broadcast against the outputs)
    xc, yc = bnn.check_data(x, y)
    for particles in args.particles:
        contenders = {
            PYRO: pyro_stepper(particles, x, y),
            "bayesdl weight": bayesdl_stepper(bnn, "weight", particles, xc, yc),
            "bayesdl-weight-compile": compiled_stepper(bnn, "weight", particles, xc, yc),
            "bayesdl function": bayesdl_stepper(bnn, "function", particles, xc, yc),
            "bayesdl hybrid": bayesdl_stepper(bnn, "hybrid", particles, xc, yc),
            "fwd+bwd (the floor)": plain_stepper(bnn, particles, x, y),
        }
        runs: dict[str, list[float]] = {name: [] for name in contenders}
        for _ in range(args.repeats):
            for name, step in contenders.items():
                runs[name].append(median_step_ms(step, args.steps, args.warmup))
        medians = {name: statistics.median(v) for name, v in runs.items()}
        pyro_ms = medians[PYRO]
        floor = medians["fwd+bwd (the floor)"]
        for name, values in runs.items():
            ms = medians[name]
            print(
                f"| {particles} | {name} | {ms:.2f} [{min(values):.2f}-{max(values):.2f}] | "
                f"{pyro_ms / ms:.1f}x faster | {ms / floor:.2f}x |"
            )
        for name in ("bayesdl weight", "bayesdl-weight-compile"):
            ratios = [p / c for p, c in zip(runs[PYRO], runs[name], strict=True)]
            print(
                f"| {particles} | Pyro / {name}, per repeat | "
                f"{' '.join(f'{r:.1f}x' for r in ratios)} | | |"
            )
        print(f"# load average after {particles} particles: {os.getloadavg()}")


if __name__ == "__main__":
    main()
