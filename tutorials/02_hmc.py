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
# # Hamiltonian Monte Carlo for BNNs: vectorised NUTS, SGHMC and cold posteriors
#
# On the UCI *yacht* data (hydrodynamic resistance of sailing yachts, 308 designs, the first
# of the 20 standard splits) we
#
# 1. sample a one-hidden-layer BNN with **NUTS**, four chains advancing together as one batch
#    (`engine="bayesdl"`), and check convergence **in function space** with ArviZ;
# 2. sample the same model with **SGHMC** on minibatches (the scale-adapted variant of
#    Springenberg et al. that Tran et al. use) and compare the predictive quality;
# 3. sweep the **temperature** of the posterior, $p(\theta\mid D)^{1/T}$ for
#    $T \in \{1, 0.3, 0.1, 0.03\}$, and plot the test NLL against $T$ (Wenzel et al.'s cold
#    posterior experiment, in miniature).
#
# `BAYESDL_SMOKE=1` runs it in seconds; `BAYESDL_OUTPUT` sets the output folder
# (default `outputs/hmc`).

# %%
import json
import os
import pathlib
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pyro.distributions as dist

import bayesdl
from bayesdl import likelihoods, priors
from bayesdl.arviz_bridge import import_arviz
from bayesdl.inference import NUTS, SGHMC
from bayesdl.models import BNN, MLP
from bayesdl.plots import plot_function_diagnostics

az = import_arviz()
SMOKE = os.environ.get("BAYESDL_SMOKE") == "1"
OUT = pathlib.Path(os.environ.get("BAYESDL_OUTPUT", "outputs/hmc"))
OUT.mkdir(parents=True, exist_ok=True)
report: dict = {}

# %% [markdown]
# ## Data and model
# Inputs and targets are standardised with the training split's statistics; metrics are
# reported in the original units (`y_scale`). The network has 50 tanh units; weights get
# $\mathcal N(0, 1/\text{fan-in})$ priors, biases $\mathcal N(0, 1)$, and the noise scale is
# learned with a half-normal prior (it becomes the latent site `likelihood.scale`).

# %%
data = bayesdl.data.uci("yacht", split=0)
if SMOKE:
    data = data.subsample(n_train=40, n_test=10, seed=0)
HIDDEN = 5 if SMOKE else 50
print(data)


def make_bnn(temperature: float = 1.0) -> BNN:
    return BNN(
        MLP(data.in_features, [HIDDEN], 1, activation="tanh"),
        prior=priors.Select(default=priors.Gaussian(1.0, fan_in=True), bias=priors.Gaussian(1.0)),
        likelihood=likelihoods.Gaussian(dist.HalfNormal(0.5)),
        temperature=temperature,
    )


bnn = make_bnn()
print(bnn)

# %% [markdown]
# ## NUTS, four chains in one batch
# All chains take their leapfrog steps together: one vectorised gradient of `bnn.log_joint`
# per step for the four of them. A chain whose trajectory has stopped waits, masked, for the
# others; `lockstep efficiency` below is the mean tree size over the largest tree of each
# iteration, the share of that work that was not wasted.
#
# `compile=True` hands each leaf of the trajectory (the leapfrog step with its gradient and the
# tree's bookkeeping) to `torch.compile`: the first iteration takes some seconds longer, and
# every leaf after it runs several times faster than eagerly (`benchmarks/RESULTS.md`). The
# smoke run skips it, because for a few draws compiling costs more than it saves.

# %%
nuts_settings = (
    dict(chains=4, warmup=8, draws=8) if SMOKE else dict(chains=4, warmup=300, draws=300)
)
start = time.perf_counter()
post_nuts = NUTS(**nuts_settings, max_tree_depth=4 if SMOKE else 8, compile=not SMOKE).fit(
    bnn, data.x_train, data.y_train, seed=0
)
seconds_nuts = time.perf_counter() - start
n_steps = post_nuts.sample_stats["n_steps"].float()
report["nuts"] = {
    **post_nuts.evaluate(data.x_test, data.y_test, y_scale=data.y_scale),
    "seconds": seconds_nuts,
    "divergences": int(post_nuts.sample_stats["diverging"].sum()),
    "mean_tree_depth": float(post_nuts.sample_stats["tree_depth"].float().mean()),
    "acceptance_rate": float(post_nuts.sample_stats["acceptance_rate"].mean()),
    "lockstep_efficiency": float((n_steps.mean(0) / n_steps.max(0).values).mean()),
}
print(json.dumps(report["nuts"], indent=2))

# %% [markdown]
# ## Convergence in function space
# The weights of a BNN are not identifiable (hidden units can be permuted, signs flipped),
# so R-hat over weights says little. The function values at test inputs are what we predict
# with; `to_arviz` stores them as `f`, and ArviZ computes R-hat and ESS on them. Chains that
# sit in different modes with different *functions* show up here.

# %%
idata = post_nuts.to_arviz(x=data.x_test, y=data.y_test)
summary = az.summary(idata, var_names=["f"])
print(summary[["mean", "sd", "ess_bulk", "ess_tail", "r_hat"]].head(8))
report["nuts"]["f_rhat_max"] = float(summary["r_hat"].max())
report["nuts"]["f_ess_bulk_median"] = float(summary["ess_bulk"].median())
report["nuts"]["bfmi_min"] = float(np.min(az.bfmi(idata)))
fig = plot_function_diagnostics(idata, probes=4)
fig.savefig(OUT / "nuts_function_trace.png", dpi=100)
plt.close(fig)

# %% [markdown]
# Read these numbers before the predictions. In the full run (4 chains x 300 draws, trees
# capped at depth 8) some function values have an R-hat up to about 1.4 and a bulk ESS under
# 20: the chains have not mixed between the modes they found, although each mode predicts
# well (see the test RMSE above). Longer chains, or more of them (in the vectorised engine they
# cost little extra), are needed before trusting the posterior spread.

# %% [markdown]
# ## The same model with SGHMC
# Minibatches of 32, the scale-adapted preconditioner of Springenberg et al. (estimated during
# burn-in, then frozen), one draw every 50 steps. The temperature diagnostics of Fortuin et
# al. should read about 1 when the sampler is in equilibrium.

# %%
sghmc_settings = (
    dict(burn_in=20, draws=5, thin=2) if SMOKE else dict(burn_in=3000, draws=200, thin=50)
)


def run_sghmc(model: BNN, seed: int = 0):
    sampler = SGHMC(
        chains=4,
        lr=1e-4,
        momentum_decay=0.05,
        batch_size=32,
        preconditioner="adaptive",
        **sghmc_settings,
    )
    return sampler.fit(model, data.x_train, data.y_train, seed=seed, progress=not SMOKE)


start = time.perf_counter()
post_sghmc = run_sghmc(bnn)
report["sghmc"] = {
    **post_sghmc.evaluate(data.x_test, data.y_test, y_scale=data.y_scale),
    "seconds": time.perf_counter() - start,
    "kinetic_temperature": float(post_sghmc.sample_stats["kinetic_temperature"].mean()),
    "configurational_temperature": float(
        post_sghmc.sample_stats["configurational_temperature"].mean()
    ),
    "f_rhat_max": float(
        az.summary(post_sghmc.to_arviz(probe=data.x_test), var_names=["f"])["r_hat"].max()
    ),
}
print(json.dumps(report["sghmc"], indent=2))

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharex=True, sharey=True)
for ax, (name, post) in zip(axes, [("NUTS", post_nuts), ("SGHMC", post_sghmc)], strict=True):
    pred = post.predict(data.x_test)
    mean = data.unstandardize_y(pred.mean).numpy()
    err = 2 * pred.std.numpy() * data.y_scale
    observed = data.unstandardize_y(data.y_test).numpy()
    ax.errorbar(observed, mean, yerr=err, fmt="o", ms=3, alpha=0.7)
    lim = [observed.min(), observed.max()]
    ax.plot(lim, lim, "k--", lw=1)
    ax.set_title(
        f"{name}: RMSE {report[name.lower()]['rmse']:.2f}, NLL {report[name.lower()]['nll']:.2f}"
    )
    ax.set_xlabel("observed resistance")
axes[0].set_ylabel("predicted (mean ± 2 sd)")
fig.tight_layout()
fig.savefig(OUT / "predictions.png", dpi=110)
plt.close(fig)

# %% [markdown]
# ## Cold posteriors
# `temperature` is one knob on the BNN; every backend samples the tempered posterior
# $p(\theta\mid D)^{1/T}$ it defines. The learning rate stays the same for every $T$: the
# scale-adapted preconditioner divides the gradient, which grows as $1/T$, by its running
# root mean square, so the steps keep their size in parameter space. (Shrinking the learning
# rate with $T$ as well would shrink the steps twice, and the coldest chains would not reach
# the posterior within the burn-in.)

# %%
temperatures = [1.0, 0.3] if SMOKE else [1.0, 0.3, 0.1, 0.03]
sweep = []
for t in temperatures:
    post_t = run_sghmc(make_bnn(temperature=t), seed=1)
    metrics = post_t.evaluate(data.x_test, data.y_test, y_scale=data.y_scale)
    sweep.append({"temperature": t, **metrics})
    print(sweep[-1])
report["cold_posterior_sweep"] = sweep

fig, ax = plt.subplots(figsize=(5, 3.5))
ax.plot([s["temperature"] for s in sweep], [s["nll"] for s in sweep], "o-")
ax.set_xscale("log")
ax.set_xlabel("temperature T")
ax.set_ylabel("test NLL (original units)")
ax.set_title("SGHMC on yacht: test NLL against temperature")
fig.tight_layout()
fig.savefig(OUT / "cold_posterior.png", dpi=110)
plt.close(fig)

# %%
(OUT / "metrics.json").write_text(json.dumps(report, indent=2))
print("wrote", sorted(p.name for p in OUT.iterdir()))
