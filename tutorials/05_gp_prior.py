# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Functional priors: fit a network's weight prior to a Gaussian process
#
# A Gaussian prior on weights says little a person can check about the *functions* the
# network produces. A Gaussian process prior does: its kernel fixes their length-scale and
# amplitude. Tran, Rossi, Milios & Filippone ("All You Need is a Good Functional Prior for
# Bayesian Deep Learning", JMLR 2022) tune the weight prior so that the network's distribution
# over functions matches a chosen GP, by minimising the 1-Wasserstein distance between the two
# distributions of function values at *measurement sets* of inputs, with a Lipschitz critic.
#
# In bayesdl the fitted prior, a `GPMatched`, is an ordinary prior: `BNN(net, prior=fitted,
# ...)` works with every backend. This tutorial
#
# 1. looks at prior function draws from N(0, 1) weights, from fan-in-scaled weights and from
#    the GP-matched prior next to the GP's (RBF, length-scale 0.6, on [-6, 6], a 3x50 tanh MLP);
# 2. samples the posterior with NUTS on 1-D data with a gap, next to the exact GP posterior;
# 3. explains what the fitted scales mean, the two parameterisations of the fit (`"log"`, and
#    the paper's `"softplus"`) and how to bound the scales (`max_scale=`), on one UCI set;
# 4. compares the paper's fixed baseline (fan-in N(0, 1)) with the GP-matched prior on UCI
#    regression under the paper's protocol (fixed noise, adaptive SGHMC from a common start,
#    the prior refitted per split), *shortened* so that it runs in minutes, with paired
#    differences per split;
# 5. shows the table of the full-protocol benchmark (`benchmarks/gp_prior_uci.py`) if its
#    results file is there.
#
# `BAYESDL_SMOKE=1` runs everything with tiny settings in seconds (for CI); `BAYESDL_OUTPUT`
# changes where the results go (default `outputs/gp_prior`). The full run should take about a
# quarter of an hour on one CPU core (an estimate from timing its parts: mostly NUTS in
# section 2 and SGHMC in section 4); the settings are reduced from the paper's, as each
# section says.

# %%
import json
import math
import os
import pathlib
import time

import matplotlib

matplotlib.use("Agg")
import gpytorch
import matplotlib.pyplot as plt
import numpy as np
import torch

import bayesdl
from bayesdl import likelihoods, priors
from bayesdl.inference import NUTS, SGHMC
from bayesdl.models import BNN, MLP
from bayesdl.priors import measurement
from bayesdl.priors.functional import fit_gp_prior, prior_functions
from bayesdl.priors.gp import GPTarget, uci_target_kernel
from bayesdl.priors.gp_families import GaussianFamily
from bayesdl.priors.wasserstein import empirical_wasserstein

SMOKE = os.environ.get("BAYESDL_SMOKE") == "1"
OUT = pathlib.Path(os.environ.get("BAYESDL_OUTPUT", "outputs/gp_prior"))
OUT.mkdir(parents=True, exist_ok=True)
# Small matrix products dominate here; extra OpenMP threads only add synchronisation.
torch.set_num_threads(1)
report: dict = {"smoke": SMOKE}

# %% [markdown]
# ## 1. Three weight priors and the GP, in function space
# The target is a GP with an RBF kernel (length-scale 0.6, variance 1) on $[-6, 6]$ and the
# network a 3x50 tanh MLP. `fit_gp_prior` draws a fresh measurement set every step (here 32
# points uniform in $[-6, 6]$), draws functions from the GP and from the current weight prior,
# updates a Lipschitz critic that tells them apart, and moves the prior's per-layer scales to
# shrink the critic's estimate of the distance. The critic is *warm-started*: its network and
# its Adagrad state are kept from one outer step to the next, so `critic={"steps": 20}` means
# 20 more critic steps per outer step, not 20 steps of a fresh critic (Tran et al. train a
# fresh critic for up to 1000 steps each time; `critic={"steps": 1000, "warm_start": False}`
# is their schedule; the Notes of `fit_gp_prior` give the measurements comparing the two).
# Tran et al. use 800 outer steps and 512 functions on a 200-point grid;
# we use 300 outer steps and 256 functions (`fit_settings`): about a minute on one CPU core.
# This fit keeps bayesdl's default log-parameterised scales; section 3 says what that means.

# %%
kernel = gpytorch.kernels.RBFKernel()
kernel.lengthscale = 0.6
torch.manual_seed(0)
net = MLP(1, [50, 50, 50], 1, activation="tanh")
if SMOKE:
    fit_settings = dict(steps=3, num_functions=16, critic={"steps": 5, "hidden": (32,)})
else:
    fit_settings = dict(steps=300, num_functions=256, critic={"steps": 20})
start = time.perf_counter()
gp_prior = fit_gp_prior(
    net,
    kernel,
    measurement.uniform(-6.0, 6.0, 32),
    lr=0.02,
    seed=0,
    progress=not SMOKE,
    **fit_settings,
)
report["toy_fit"] = {
    "seconds": time.perf_counter() - start,
    "final_distance": gp_prior.final_distance,
    "exact_w1": gp_prior.history.exact,
    "scales": {k: float(v) for k, v in gp_prior.scales().items()},
    "settings": {k: str(v) for k, v in fit_settings.items()},
}
print(gp_prior)
print(json.dumps(report["toy_fit"], indent=2))
gp_prior.report().figure.savefig(OUT / "fit_report.png", dpi=100)
gp_prior.save(OUT / "gp_prior_toy.pt")

# %% [markdown]
# Prior function draws. With N(0, 1) on every weight, the 50 inputs of each hidden unit add
# up to pre-activations of standard deviation about 7: the tanh units saturate and the
# functions are step-like, with an amplitude set by the last layer's 50 inputs. Fan-in
# scaling, N(0, 1/fan_in), fixes the amplitude but not the length-scale. The GP-matched prior
# is tuned to the GP's amplitude and wiggliness. Each panel gives the exact empirical
# Wasserstein distance to the GP at 20 grid points (256 draws each; two independent GP samples
# are themselves about 3.7 apart: the finite-sample floor) and the relative Frobenius error
# of the covariance at those points.

# %%
grid = torch.linspace(-6, 6, 200)[:, None]
fan_in = priors.Gaussian(1.0, fan_in=True)
panels = {
    "N(0, 1) weights": priors.Gaussian(1.0),
    "fan-in scaled N(0, 1/fan_in)": fan_in,
    "GP-matched": gp_prior,
}
fig, axes = plt.subplots(1, 4, figsize=(18, 3.6), sharex=True)
gp_draws = GPTarget(kernel).sample(grid, 256)
gram = GPTarget(kernel).moments(grid[::10])[1]


def covariance_error(f):
    """Relative Frobenius error of the sample covariance at the 20 points vs the GP's Gram."""
    return float(torch.linalg.norm(torch.cov(f[:, ::10].T) - gram) / torch.linalg.norm(gram))


exact = {
    "GP vs GP (floor)": empirical_wasserstein(
        GPTarget(kernel).sample(grid, 256)[:, ::10], gp_draws[:, ::10]
    )
}
cov_error = {}
for ax, (title, prior) in zip(axes[:3], panels.items(), strict=True):
    bnn = BNN(net, prior, likelihoods.Gaussian(0.1))
    f = bnn.forward(bnn.init_theta(256, seed=1), grid)[..., 0].detach().double()
    exact[title] = empirical_wasserstein(f[:, ::10], gp_draws[:, ::10])
    cov_error[title] = covariance_error(f)
    ax.plot(grid[:, 0], f[:8].T, lw=1)
    ax.set_title(
        f"{title}\nexact W1 at 20 points {exact[title]:.2f}, covariance error {cov_error[title]:.0%}",
        fontsize=9,
    )
axes[3].plot(grid[:, 0], gp_draws[:8].T, lw=1)
axes[3].set_title("GP, RBF length-scale 0.6", fontsize=9)
for ax in axes[1:]:
    ax.set_ylim(-3.5, 3.5)
fig.tight_layout()
fig.savefig(OUT / "prior_draws.png", dpi=100)
report["toy_prior_w1"] = exact
report["toy_prior_covariance_error"] = cov_error
print(exact, cov_error)

# %% [markdown]
# How close can this family get at all? Minimising the covariance error at the 20 points
# *directly* over the eight per-layer scales (Adam on Monte Carlo covariances) gives the best
# a per-layer Gaussian prior on a 3x50 tanh network can do in this respect. A GP with
# length-scale 0.6 on a domain twenty length-scales wide is hard for it: the best error stays
# large, and the GP-matched prior, fitted on the distribution of function values rather than
# the covariance, lands near it.

# %%
family = GaussianFamily(net, "layer")
optimiser = torch.optim.Adam(family.parameters(), lr=0.05)
torch.manual_seed(3)
for _ in range(3 if SMOKE else 300):
    f = prior_functions(net, family.rsample(1024), grid[::10])
    loss = torch.linalg.norm(f.T @ f / f.shape[0] - gram.float()) / torch.linalg.norm(gram)
    optimiser.zero_grad()
    loss.backward()
    optimiser.step()
with torch.no_grad():
    best = covariance_error(prior_functions(net, family.rsample(4096), grid).double())
report["toy_best_covariance_error_per_layer_gaussian"] = best
print(f"best covariance error of the per-layer Gaussian family: {best:.0%}")

# %% [markdown]
# ## 2. The posterior on data with a gap
# 48 noisy observations (noise standard deviation 0.1) of a function drawn from a GP with a
# longer length-scale (1.5), on $[-5, 5]$ with a gap in $(-1.5, 1.5)$. We sample the posterior
# of the 3x50 network with NUTS under the N(0, 1) prior and under the GP-matched prior, and
# compare both with the exact posterior of the target GP (RBF length-scale 0.6, the same
# noise). Where the data say nothing, in the gap and beyond the data, a posterior should fall
# back on its prior: the GP-matched network's uncertainty there should look like the GP's.
#
# NUTS on 5,251 weights is slow on a CPU, so the chains are short. (Tran et al. use adaptive
# SGHMC with long runs; section 4 uses bayesdl's `SGHMC` with their settings, shortened.)

# %%
gen = torch.Generator().manual_seed(1)
x_all = 10 * torch.rand(80, 1, generator=gen, dtype=torch.float64) - 5
keep = (x_all[:, 0] < -1.5) | (x_all[:, 0] > 1.5)
truth_kernel = gpytorch.kernels.RBFKernel()
truth_kernel.lengthscale = 1.5
torch.manual_seed(2)
f_all = GPTarget(truth_kernel).sample(torch.cat([x_all, grid.double()]), 1)[0]
noise = 0.1
y_all = f_all[:80] + noise * torch.randn(80, generator=gen, dtype=torch.float64)
x_train, y_train = x_all[keep][:48].float(), y_all[:80][keep][:48].float()
x_gap, y_gap = x_all[~keep].float(), y_all[:80][~keep].float()
f_grid = f_all[80:]


def gp_posterior(x, y, x_new, noise):
    """Exact GP posterior mean and predictive standard deviation (target kernel, noise)."""
    target = GPTarget(kernel)
    k = target.moments(torch.cat([x, x_new]).double())[1]
    n = x.shape[0]
    chol = torch.linalg.cholesky(k[:n, :n] + noise**2 * torch.eye(n, dtype=k.dtype))
    cross = k[n:, :n]
    mean = cross @ torch.cholesky_solve(y.double()[:, None], chol)[:, 0]
    var = k[n:, n:].diagonal() - (
        torch.linalg.solve_triangular(chol, cross.T, upper=False) ** 2
    ).sum(0)
    return mean, (var.clamp_min(0) + noise**2).sqrt()


gp_mean, gp_std = gp_posterior(x_train, y_train, grid, noise)
nuts = (
    NUTS(chains=2, warmup=5, draws=5, max_tree_depth=4)
    if SMOKE
    else NUTS(chains=2, warmup=100, draws=100, max_tree_depth=6)
)
toy = {}
fig, axes = plt.subplots(1, 3, figsize=(18, 4), sharey=True)
in_gap = (grid[:, 0] > -1.5) & (grid[:, 0] < 1.5)
toy_priors = {"N(0, 1) weights": priors.Gaussian(1.0), "GP-matched": gp_prior}
for ax, (title, prior) in zip(axes[:2], toy_priors.items(), strict=True):
    bnn = BNN(net, prior, likelihoods.Gaussian(noise))
    start = time.perf_counter()
    post = nuts.fit(bnn, x_train, y_train, seed=0, progress=not SMOKE)
    seconds = time.perf_counter() - start
    pred = post.predict(grid)
    mean, std = pred.mean.double(), pred.std.double()
    toy[title] = {
        "seconds": seconds,
        "gap_test_ll": float(post.predict(x_gap).log_prob(y_gap).mean()),
        "gap_std_vs_gp": float((std[in_gap] - gp_std[in_gap]).abs().mean()),
        "std_vs_gp": float((std - gp_std).abs().mean()),
        "divergences": int(post.sample_stats["diverging"].sum()),
    }
    ax.fill_between(grid[:, 0], mean - 2 * std, mean + 2 * std, alpha=0.25, label="BNN ±2 sd")
    ax.plot(grid[:, 0], mean, label="BNN mean")
    ax.set_title(f"BNN posterior, {title} prior", fontsize=10)
gp_test_ll = float(
    torch.distributions.Normal(*gp_posterior(x_train, y_train, x_gap, noise))
    .log_prob(y_gap.double())
    .mean()
)
toy["GP (target)"] = {"gap_test_ll": gp_test_ll}
axes[2].fill_between(grid[:, 0], gp_mean - 2 * gp_std, gp_mean + 2 * gp_std, alpha=0.25, color="C2")
axes[2].plot(grid[:, 0], gp_mean, color="C2", label="GP mean")
axes[2].set_title("Exact GP posterior (target kernel)", fontsize=10)
for ax in axes:
    ax.plot(grid[:, 0], f_grid, "k--", lw=0.8, label="true function")
    ax.scatter(x_train[:, 0], y_train, s=8, color="k", zorder=3)
    ax.axvspan(-1.5, 1.5, color="grey", alpha=0.1)
    ax.legend(fontsize="x-small", loc="lower left")
fig.tight_layout()
fig.savefig(OUT / "posterior_gap.png", dpi=100)
report["toy_posterior"] = toy
print(json.dumps(toy, indent=2))


# %% [markdown]
# ## 3. What the fitted scales mean, and how to bound them
# A Gaussian `GPMatched` prior (Tran et al.'s GPi-G) has one number $\sigma$ per parameter
# tensor: a weight matrix with $n_{in}$ inputs per unit gets $W \sim \mathcal N(0,
# \sigma^2/n_{in})$, a bias vector $b \sim \mathcal N(0, \sigma^2)$. So $\sigma = 1$
# everywhere is the paper's fixed baseline, `priors.Gaussian(1.0, fan_in=True)`.
# `prior.values[name]["scale"]` holds $\sigma$; `prior.scales()` gives the standard
# deviation of each entry, $\sigma/\sqrt{n_{in}}$ (equal to $\sigma$ for biases).
#
# The fit moves the $\sigma$s with RMSprop, and *how* they are parameterised changes where
# it ends:
#
# - `parameterisation="log"` (bayesdl's default): $\sigma = e^r$. An RMSprop step changes $r$
#   by about `lr`, so $\sigma$ moves by a *factor*. On the UCI targets (a stationary GP on a
#   box that extends beyond skewed data) the objective rewards large input-layer scales, and
#   the log parameterisation gets there: large input weights and biases, hence tanh units
#   that are saturated (flat at $\pm 1$) over much of the data. On bostonHousing
#   (`benchmarks/RESULTS.md`, issue 13) that prior was *closer* to the GP in $W_1$ than the
#   softplus one, measured with an independent critic: it is where the stated objective
#   points, not a bug.
# - `parameterisation="softplus"` (Tran et al.'s code): $\sigma = \log(1 + e^r)$ from $r = 1$
#   ($\sigma_0 = 1.31$). Steps change $\sigma$ by about `lr`, an *additive* change, so the
#   same 200 steps end at smaller scales (on bostonHousing: input weight and bias $\sigma$
#   about 4.5 and 3.9, against 11 and 9 with `"log"`). The table below shows what happens on
#   yacht in this run.
# - `max_scale=` (a number, or a dict per parameter name) bounds every $\sigma$, enforced
#   after each update, under either parameterisation: use it when saturated units are not
#   what you want.
#
# Below: three fits for the paper's UCI network (1x100 tanh) and target (RBF-ARD with
# LogNormal hyperpriors, read through softplus as in the paper's code:
# `hyperprior_draws="softplus"`) on yacht, split 0, with the paper's measurement sets (100
# points, 70% training inputs and 30% uniform in the box of training and test inputs:
# `measurement.from_data(x_train, 100, 0.3, x_test=x_test)`), the paper's 200 outer steps and
# 128 functions, and a warm critic with 10 steps per outer step (about 20 s per fit on one
# core). For each we print $\sigma$ per tensor, the per-entry standard deviation, the exact
# empirical $W_1$ to the GP at one measurement set (256 draws each; noisy, and it includes a
# finite-sample floor) and the share of first-layer tanh units that are saturated
# ($|$pre-activation$| > 2$, where $\tanh' < 0.08$) at the training inputs, under the prior.


# %%


def uci_net(in_features):
    """The paper's UCI network: one hidden layer of 100 tanh units."""
    return MLP(in_features, [100], 1, activation="tanh")


if SMOKE:
    uci_fit = dict(steps=2, num_functions=16, critic={"steps": 3, "hidden": (16,)})
else:  # the paper's schedule, except for the warm critic (the paper: fresh, up to 200 steps)
    uci_fit = dict(
        steps=200,
        num_functions=128,
        critic={"steps": 10, "lr": 0.02, "threshold": 0.1, "warm_start": True},
    )


def fit_uci_prior(data, seed, **options):
    """A GP-matched Gaussian prior for the UCI network on one standardised split."""
    return fit_gp_prior(
        uci_net(data.in_features),
        uci_target_kernel(data.in_features),
        measurement.from_data(data.x_train, 100, 0.3, x_test=data.x_test),
        lr=0.05,
        hyperprior_draws="softplus",
        seed=seed,
        progress=False,
        **uci_fit,
        **options,
    )


def saturated_share(weight_sd, bias_sd, x):
    """Expected share of (unit, input) pairs with |pre-activation| > 2 under the prior:
    a = w.x + b is N(0, weight_sd^2 |x|^2 + bias_sd^2) for each unit."""
    sd = (weight_sd**2 * (x.double() ** 2).sum(1) + bias_sd**2).sqrt()
    return float(torch.erfc(2 / (sd * math.sqrt(2))).mean())


yacht0 = bayesdl.data.uci("yacht", split=0)
variants = {
    "log": dict(parameterisation="log"),
    "softplus": dict(parameterisation="softplus"),
    "log, max_scale=3": dict(parameterisation="log", max_scale=3.0),
}
baseline_sd = {
    name: 1 / math.sqrt(priors.fan_in_of(p))
    for name, p in uci_net(yacht0.in_features).named_parameters()
}
scale_rows = {
    "fan-in N(0, 1) (baseline)": {
        "sigma": dict.fromkeys(baseline_sd, 1.0),
        "sd": baseline_sd,
        "exact_w1": None,
        "seconds": 0.0,
    }
}
for label, options in variants.items():
    start = time.perf_counter()
    fitted = fit_uci_prior(yacht0, seed=0, **options)
    scale_rows[label] = {
        "sigma": {k: float(v["scale"]) for k, v in fitted.values.items()},
        "sd": {k: float(v) for k, v in fitted.scales().items()},
        "exact_w1": fitted.history.exact["after"],
        "seconds": time.perf_counter() - start,
    }
for row in scale_rows.values():
    row["saturated"] = saturated_share(
        row["sd"]["layers.0.weight"], row["sd"]["layers.0.bias"], yacht0.x_train
    )
names = list(scale_rows["log"]["sigma"])
lines = [
    "| prior | " + " | ".join(f"sigma {n}" for n in names) + " | sd layers.0.weight "
    "| saturated units | exact W1 | fit s |",
    "|---|" + "---|" * (len(names) + 4),
]
for label, row in scale_rows.items():
    w1 = "–" if row["exact_w1"] is None else f"{row['exact_w1']:.2f}"
    lines.append(
        f"| {label} | "
        + " | ".join(f"{row['sigma'][n]:.2f}" for n in names)
        + f" | {row['sd']['layers.0.weight']:.3f} | {row['saturated']:.0%} | {w1} "
        f"| {row['seconds']:.0f} |"
    )
scales_table = "\n".join(lines)
print(scales_table)
bounded = scale_rows["log, max_scale=3"]["sigma"]
print("bound respected:", all(v <= 3.0 + 1e-6 for v in bounded.values()))
report["scales_yacht_split0"] = scale_rows

fig, ax = plt.subplots(figsize=(8, 3.5))
for k, (label, row) in enumerate(scale_rows.items()):
    offsets = np.arange(len(names)) + (k - 1.5) * 0.2
    ax.bar(offsets, [row["sigma"][n] for n in names], width=0.2, label=label)
ax.set_xticks(range(len(names)), names)
ax.set_ylabel("sigma (W ~ N(0, sigma^2 / n_in))")
ax.set_title("Fitted scales, yacht split 0")
ax.legend(fontsize="x-small")
fig.tight_layout()
fig.savefig(OUT / "prior_scales.png", dpi=100)

# %% [markdown]
# Read the table for the run you made: compare the input-layer $\sigma$s of `log` and
# `softplus`, the share of saturated units each implies, and whether the bound held (every
# $\sigma$ of the bounded fit is at most 3). The exact $W_1$ column is one noisy estimate
# per fit; `benchmarks/RESULTS.md` compares the parameterisations with an independent critic
# over many measurement sets. Section 4 uses `"softplus"`, the paper's choice.

# %% [markdown]
# ## 4. UCI regression under the paper's protocol, shortened
# Tran et al.'s UCI comparison (their `uci_regression.ipynb`; `benchmarks/gp_prior_uci.py`
# runs it in full), here for two priors:
#
# - **fan-in N(0, 1)**, the paper's fixed baseline: `priors.Gaussian(1.0, fan_in=True)`,
#   weights $\mathcal N(0, 1/n_{in})$, biases $\mathcal N(0, 1)$;
# - **GP-matched Gaussian** (GPi-G), fitted as in section 3 with `"softplus"` scales,
#   *refitted on every split* with the measurement box over that split's training and test
#   inputs.
#
# Both use the 1x100 tanh network, inputs and targets standardised with the training split,
# a Gaussian likelihood with the noise variance *fixed* at 0.1 in standardised units
# (`likelihoods.Gaussian(math.sqrt(0.1))`), and adaptive SGHMC (Springenberg et al. 2016)
# with the paper's step settings: 4 chains, minibatches of 32, momentum decay 0.01, and the
# paper's lr 0.01, which is bayesdl's `lr=0.01**2` (the paper's lr is a square-root step;
# see `benchmarks/gp_prior_uci.py`). Every chain starts from the same point for both priors
# (weights $\mathcal N(0, 1/n_{in})$, biases 0), with the same seed, so the two runs on a
# split differ only in the prior.
# Test RMSE (of the predictive mean) and test log-likelihood (of the predictive mixture
# density, per point) are in the original units.
#
# **Shortened, plainly**: the paper runs 2,000 burn-in steps and keeps one sample every 2,000
# steps, 40 per chain with the first 10 dropped (82,000 steps per chain); here the burn-in is
# the same but a sample is kept every 250 steps (12,000 steps per chain, a seventh of the
# paper's), and only 3 splits each of yacht and energy are run (the standard splits number
# 20; the paper's notebook ran 10). The prior fit also differs from the paper's in one
# documented way, the warm critic (section 1); `benchmarks/gp_prior_uci.py`'s docstring lists
# the sampler's remaining small differences (no gradient clipping, for one). So the chains
# are less well mixed than the paper's and three splits are far too few to settle anything:
# the point is the protocol and the *paired* comparison (both priors on the same split, from
# the same start, with the same seed), not the verdict.

# %%
if SMOKE:
    UCI_SETS, UCI_SPLITS = ["yacht"], [0, 1]
    sghmc_settings = dict(chains=2, burn_in=20, thin=5, draws=6)
    DISCARD = 2
else:
    UCI_SETS, UCI_SPLITS = ["yacht", "energy"], [0, 1, 2]
    sghmc_settings = dict(chains=4, burn_in=2000, thin=250, draws=40)
    DISCARD = 10  # kept samples dropped at the start of each chain, as in the paper
NOISE_VARIANCE = 0.1


def common_start(net, chains, seed):
    """The paper's start, shared by every prior: weights N(0, 1/n_in), biases 0."""
    gen = torch.Generator().manual_seed(seed)
    start = {}
    for name, param in net.named_parameters():
        if name.endswith("bias"):
            start[name] = torch.zeros(chains, *param.shape)
        else:
            sd = 1 / math.sqrt(priors.fan_in_of(param))
            start[name] = sd * torch.randn(chains, *param.shape, generator=gen)
    return start


def test_metrics(bnn, theta, data):
    """Test RMSE of the predictive mean and mean log predictive density, original units."""
    flat = theta.reshape(-1, theta.shape[-1])
    with torch.no_grad():
        f = bnn.forward(flat, data.x_test)[..., 0].double()  # (draws, test points)
    y, scale = data.y_test.double(), float(data.y_scale)
    rmse = float(((f.mean(0) - y) ** 2).mean().sqrt()) * scale
    logp = torch.distributions.Normal(f, math.sqrt(NOISE_VARIANCE)).log_prob(y)
    ll = float((torch.logsumexp(logp, 0) - math.log(f.shape[0])).mean()) - math.log(scale)
    return {"rmse": rmse, "ll": ll}


def run_prior(prior, data, split):
    """Adaptive SGHMC from the common start; metrics on the kept samples."""
    net = uci_net(data.in_features)
    bnn = BNN(net, prior, likelihoods.Gaussian(math.sqrt(NOISE_VARIANCE)))
    seed = 1000 * split + 17  # the same start and minibatches for every prior on this split
    chains = sghmc_settings["chains"]
    sampler = SGHMC(
        lr=0.01**2,
        momentum_decay=0.01,
        batch_size=32,
        preconditioner="adaptive",
        **sghmc_settings,
    )
    start = time.perf_counter()
    post = sampler.fit(
        bnn,
        data.x_train,
        data.y_train,
        seed=seed,
        progress=False,
        init_theta=bnn.ravel(common_start(net, chains, seed)),
    )
    return {
        **test_metrics(bnn, post.theta[:, DISCARD:], data),
        "seconds": time.perf_counter() - start,
    }


PRIORS = ("fan-in N(0, 1)", "GP-matched (softplus)")
uci = {}
for name in UCI_SETS:
    per_split = {label: [] for label in PRIORS}
    fit_seconds = []
    for split in UCI_SPLITS:
        data = bayesdl.data.uci(name, split=split)
        start = time.perf_counter()
        matched = fit_uci_prior(data, seed=split, parameterisation="softplus")
        fit_seconds.append(time.perf_counter() - start)
        for label, prior in zip(PRIORS, (priors.Gaussian(1.0, fan_in=True), matched), strict=True):
            result = run_prior(prior, data, split)
            per_split[label].append({"split": split, **result})
            print(
                f"{name} split {split} {label}: RMSE {result['rmse']:.3f}, "
                f"LL {result['ll']:.3f} ({result['seconds']:.0f} s)"
            )
    uci[name] = {"per_split": per_split, "fit_seconds": fit_seconds}
report["uci"] = uci
report["uci_settings"] = {
    "splits": UCI_SPLITS,
    "fit": {k: str(v) for k, v in uci_fit.items()},
    "sghmc": {
        **sghmc_settings,
        "lr": 0.01**2,
        "momentum_decay": 0.01,
        "batch_size": 32,
        "discard": DISCARD,
    },
    "noise_variance": NOISE_VARIANCE,
}

# %% [markdown]
# The table: mean ± standard error over the splits run for each prior, and the **paired**
# difference GP-matched minus fan-in per split, its mean ± paired standard error, and on how
# many splits the GP-matched prior was better (lower RMSE, higher LL). The sentences under
# the table are computed from the numbers, not written in advance.


# %%
def mean_se(values):
    """Mean and standard error (None for one value)."""
    v = np.asarray(values, dtype=float)
    return float(v.mean()), (float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else None)


def pm(value, se):
    return f"{value:.3f}" + ("" if se is None else f" ± {se:.3f}")


def paired(values, base, higher_better):
    """Paired difference values - base: (mean, paired SE or None, splits won, splits)."""
    d = np.asarray(values, dtype=float) - np.asarray(base, dtype=float)
    won = int((d > 0).sum() if higher_better else (d < 0).sum())
    return (*mean_se(d), won, len(d))


def verdict(metric, mean, se, won, n):
    """One plain sentence about a paired difference, from the numbers."""
    better = "better" if (mean > 0) == (metric == "test LL") else "worse"
    if se is None:
        size = "one split only: no standard error"
    elif abs(mean) > 2 * se:
        size = f"more than two paired SEs from zero ({abs(mean) / se:.1f} SE)"
    else:
        size = f"within two paired SEs of zero ({abs(mean) / se:.1f} SE): not distinguishable"
    return (
        f"{metric}: GP-matched {better} on average by {abs(mean):.3f}, better on {won} of {n} "
        f"splits; {size}."
    )


base_label, gp_label = PRIORS
lines = [
    "| data set | prior | splits | RMSE | test LL | ΔRMSE (won) | ΔLL (won) |",
    "|---|---|---|---|---|---|---|",
]
verdicts = []
for name, entry in uci.items():
    rows = entry["per_split"]
    base = rows[base_label]
    for label in PRIORS:
        rs = rows[label]
        rmse, ll = [r["rmse"] for r in rs], [r["ll"] for r in rs]
        if label == base_label:
            d_rmse = d_ll = "–"
        else:
            pr = paired(rmse, [r["rmse"] for r in base], higher_better=False)
            pl = paired(ll, [r["ll"] for r in base], higher_better=True)
            d_rmse = f"{pm(pr[0], pr[1])} ({pr[2]}/{pr[3]})"
            d_ll = f"{pm(pl[0], pl[1])} ({pl[2]}/{pl[3]})"
            entry["paired"] = {"rmse": pr, "ll": pl}
            verdicts += [f"{name}: " + verdict("RMSE", *pr), f"{name}: " + verdict("test LL", *pl)]
        lines.append(
            f"| {name} | {label} | {len(rs)} | {pm(*mean_se(rmse))} | {pm(*mean_se(ll))} "
            f"| {d_rmse} | {d_ll} |"
        )
uci_table = "\n".join(lines)
print(uci_table)
print("\n".join(verdicts))
(OUT / "uci_table.md").write_text(uci_table + "\n\n" + "\n".join(verdicts) + "\n")

fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
for ax, key, title in (
    (axes[0], "rmse", "ΔRMSE per split, GP-matched − fan-in (below 0: GP-matched better)"),
    (axes[1], "ll", "ΔLL per split, GP-matched − fan-in (above 0: GP-matched better)"),
):
    for k, entry in enumerate(uci.values()):
        rows = entry["per_split"]
        d = [g[key] - b[key] for g, b in zip(rows[gp_label], rows[base_label], strict=True)]
        ax.plot([k] * len(d), d, "o", alpha=0.7)
    ax.axhline(0.0, color="k", lw=0.8)
    ax.set_xticks(range(len(uci)), list(uci))
    ax.set_title(title, fontsize=9)
fig.tight_layout()
fig.savefig(OUT / "uci.png", dpi=100)

# %% [markdown]
# ## 5. The full-protocol benchmark
# `benchmarks/gp_prior_uci.py` runs the paper's protocol without shortcuts (82,000 SGHMC steps
# per chain, 120 samples, the prior refitted per split) for the fan-in baseline, GPi-G and the
# hierarchical GPi-H (and rows with a second backend and with learned noise), and appends one
# JSON line per data set, split and row to `benchmarks/results/gp_prior_uci.json`. If that
# file is there (a source checkout; `BAYESDL_UCI_RESULTS` points elsewhere), the cell below
# summarises its fixed-noise SGHMC rows the same way as the table above; `python
# benchmarks/gp_prior_uci.py --report` prints every row. The summary states how many splits
# each set has. The paper's effect is small: in the reference code's own bostonHousing run
# (10 splits) the GP-matched prior was better in test LL on 7 splits, by a mean paired 0.097
# nats with a paired SE of 0.052. So with a handful of splits such a table is not evidence
# either way, whatever its sign.

# %%
results_path = pathlib.Path(
    os.environ.get(
        "BAYESDL_UCI_RESULTS",
        pathlib.Path(bayesdl.__file__).resolve().parents[1]
        / "benchmarks"
        / "results"
        / "gp_prior_uci.json",
    )
)
BENCH_ROWS = {"fanin": "fan-in N(0, 1)", "gpi-g": "GPi-G", "gpi-h": "GPi-H"}


def load_benchmark(path):
    """The fixed-noise SGHMC records of the benchmark's JSON-lines file, one settings group."""
    records = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line being written right now
            continue
        if record.get("row") in BENCH_ROWS:
            records.append(record)
    groups = {}
    for r in records:
        groups.setdefault(json.dumps(r.get("settings"), sort_keys=True), []).append(r)
    if not groups:
        return [], 0
    return max(groups.values(), key=len), len(groups)


bench = {}
if results_path.exists():
    records, n_settings = load_benchmark(results_path)
    by = {}
    for r in records:  # the last record of a (data set, row, split) wins
        by.setdefault(r["dataset"], {}).setdefault(r["row"], {})[r["split"]] = r
    lines = [
        "| data set | prior | splits | RMSE | test LL | ΔRMSE vs fan-in (won) "
        "| ΔLL vs fan-in (won) |",
        "|---|---|---|---|---|---|---|",
    ]
    bench_verdicts = []
    for name, rows in by.items():
        base = rows.get("fanin", {})
        for row, label in BENCH_ROWS.items():
            res = rows.get(row, {})
            if not res:
                continue
            splits = sorted(res)
            rmse, ll = [res[s]["rmse"] for s in splits], [res[s]["ll"] for s in splits]
            d_rmse = d_ll = "–"
            common = [s for s in splits if s in base]
            if row != "fanin" and common:
                pr = paired(
                    [res[s]["rmse"] for s in common], [base[s]["rmse"] for s in common], False
                )
                pl = paired([res[s]["ll"] for s in common], [base[s]["ll"] for s in common], True)
                d_rmse = f"{pm(pr[0], pr[1])} ({pr[2]}/{pr[3]})"
                d_ll = f"{pm(pl[0], pl[1])} ({pl[2]}/{pl[3]})"
                bench_verdicts += [
                    f"{name}, {label}: " + verdict("RMSE", *pr).replace("GP-matched ", ""),
                    f"{name}, {label}: " + verdict("test LL", *pl).replace("GP-matched ", ""),
                ]
            bench.setdefault(name, {})[row] = {"splits": splits, "rmse": rmse, "ll": ll}
            lines.append(
                f"| {name} | {label} | {len(splits)} | {pm(*mean_se(rmse))} "
                f"| {pm(*mean_se(ll))} | {d_rmse} | {d_ll} |"
            )
    counts = {name: len(rows.get("fanin", {})) for name, rows in by.items()}
    print(f"{results_path}: {len(records)} records", end="")
    if n_settings > 1:
        print(f" (the file mixes {n_settings} settings; the largest group is shown)", end="")
    print(f"; fan-in splits per data set: {counts}")
    print("\n".join(lines))
    print("\n".join(bench_verdicts))
    if not counts or min(counts.values()) < 10:
        print(
            "Fewer than 10 splits on some data set: not evidence either way yet; the run "
            "appends to the file, so rerun this cell later."
        )
else:
    print(f"no benchmark results at {results_path}: run benchmarks/gp_prior_uci.py first")
report["benchmark_fixed_noise"] = bench

# %% [markdown]
# What to take from sections 4 and 5: the sentences printed under each table, and no more.
# A paired difference within two paired standard errors of zero, or a split count in single
# digits, means the comparison has not decided between the priors on that set.

# %%
plt.close("all")
(OUT / "metrics.json").write_text(json.dumps(report, indent=2))
print("wrote", sorted(p.name for p in OUT.iterdir()))
