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
# # Variational inference, dense and sparse: VI and SSVI on Fashion-MNIST
#
# When a network is too big to sample, variational inference fits a simple distribution to
# its posterior instead. `bayesdl.inference.VI` fits a *mean-field* Gaussian, one mean and one
# standard deviation per weight, by maximising the evidence lower bound (ELBO) on minibatches.
# `bayesdl.inference.SSVI` (sparse subspace VI, Li et al., ICLR 2024) does the same on a sparse,
# evolving subset of the weights: every other weight is exactly zero from the first step to
# the last, so the fitted posterior stores ten or twenty times fewer numbers.
#
# We train a 784-200-200-10 MLP on Fashion-MNIST with dense VI and with SSVI at densities 0.5,
# 0.2, 0.1 and 0.05, and compare test accuracy, negative log-likelihood (NLL), calibration
# (ECE), out-of-distribution detection on MNIST digits (AUROC of the predictive entropy), the
# number of stored parameters, the theoretical training FLOPs and the wall time.
#
# Run this file as a script or open it with jupytext. `BAYESDL_SMOKE=1` runs it on tiny
# subsets in seconds (for CI; the numbers then mean nothing); `BAYESDL_OUTPUT` changes where
# the results go (default `outputs/vi_ssvi`). The MNIST test images come from the shared data
# folder (`BAYESDL_DATA`); Fashion-MNIST from the Debian package `dataset-fashion-mnist`.

# %%
import json
import os
import pathlib
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

import bayesdl
from bayesdl import likelihoods, priors
from bayesdl.diagnostics import accuracy, expected_calibration_error, ood_auroc, predictive_entropy
from bayesdl.inference.vi.sparse.posterior import SparsePosterior
from bayesdl.inference.vi.sparse.ssvi import SSVI
from bayesdl.inference.vi.vi import VI
from bayesdl.models import BNN, MLP

SMOKE = os.environ.get("BAYESDL_SMOKE") == "1"
OUT = pathlib.Path(os.environ.get("BAYESDL_OUTPUT", "outputs/vi_ssvi"))
OUT.mkdir(parents=True, exist_ok=True)
EPOCHS = 3  # the benchmark (benchmarks/vi_ssvi.py) trains for 10
DRAWS = 5 if SMOKE else 50
DENSITIES = (0.5, 0.1) if SMOKE else (0.5, 0.2, 0.1, 0.05)

# %% [markdown]
# ## Data
# 60,000 training and 10,000 test images of clothing, pixels scaled to [0, 1]. The MNIST test
# digits serve as out-of-distribution inputs: a model that knows what it does not know should
# be less certain on them.

# %%
# Smoke runs only: a synthetic stand-in with the same shapes where the images are missing.
fashion, mnist_x = bayesdl.data.fashion_mnist_with_ood(stand_in=(512, 128) if SMOKE else None)
if SMOKE:
    fashion = fashion.subsample(n_train=512, n_test=128, seed=0)
    mnist_x = mnist_x[:128]
x, y = fashion.x_train, fashion.y_train
x_test, y_test = fashion.x_test, fashion.y_test
print(fashion, "OOD inputs:", tuple(mnist_x.shape))

# %% [markdown]
# ## The model
# An MLP with two hidden layers of 200 ReLU units. Every weight gets an independent Gaussian
# prior with standard deviation $1/\sqrt{\text{fan-in}}$ (biases: standard normal), and the
# labels a categorical likelihood on the logits. Temperature 1: we approximate the Bayes
# posterior itself.


# %%
def make_bnn() -> BNN:
    torch.manual_seed(0)
    return BNN(
        MLP(784, [200, 200], 10),
        prior=priors.Gaussian(scale=1.0, fan_in=True),
        likelihood=likelihoods.Categorical(),
    )


bnn = make_bnn()
print(bnn)

# %% [markdown]
# ## The settings
# Both methods share every optimisation setting: Adam with a learning rate decaying from
# $10^{-3}$ to 0 on a cosine, minibatches of 128 (the likelihood is scaled by
# $N/128$), guide standard deviations starting at 0.01, and the KL term of the ELBO warmed up
# linearly over the first half of training (`kl_anneal=0.5`, separate from the temperature).
# The functional engine samples each layer's pre-activations instead of its weights (the local
# reparameterisation trick) and computes the Gaussian prior's KL divergence in closed form.
#
# SSVI adds its own: a random initial mask per weight matrix with the given density (the
# surviving initial means are scaled by $1/\sqrt{\text{density}}$, so the sparse network starts
# with the dense network's pre-activation scale); every 100 steps it drops the active weights
# with the lowest signal-to-noise ratio of $|\theta|$ and activates as many inactive ones with
# the largest ELBO gradient; the fraction it swaps decays from 0.3 to 0 on a cosine, and the
# mask is frozen for the last quarter of training.

# %%
steps = 5 if SMOKE else EPOCHS * (x.shape[0] // 128)
common = dict(
    steps=steps,
    lr=1e-3,
    batch_size=128,
    kl_anneal=0.5,
    init_scale=1e-2,
    lr_schedule="cosine",
    draws=DRAWS,
)
print(f"{steps} steps per fit")

# %% [markdown]
# ## Fitting
# One dense VI run and one SSVI run per density, all from the same seed. Each returns a
# `Posterior` of `DRAWS` draws from the fitted guide; SSVI's is a `SparsePosterior` that also
# carries its mask.

# %%
posteriors, seconds = {}, {}
runs = [("dense VI", VI(**common))]
runs += [(f"SSVI {d:g}", SSVI(density=d, **common)) for d in DENSITIES]
for label, backend in runs:
    start = time.perf_counter()
    posteriors[label] = backend.fit(make_bnn(), x, y, seed=0, progress=not SMOKE)
    seconds[label] = time.perf_counter() - start
    print(
        f"{label}: {seconds[label]:.0f} s, final ELBO {posteriors[label].attrs['final_elbo']:.4g}"
    )

# %% [markdown]
# ## Evaluation
# Predictions average the class probabilities over the draws (the Bayesian model average).
# The out-of-distribution score is the entropy of that average: AUROC 1 means every MNIST
# digit is more uncertain than every Fashion-MNIST test image, 0.5 is chance.

# %%
rows = []
entropies = {}
for label, post in posteriors.items():
    pred = post.predict(x_test)
    probs = pred.mean
    entropy_in = predictive_entropy(probs)
    entropy_out = predictive_entropy(post.predict(mnist_x).mean)
    entropies[label] = (entropy_in, entropy_out)
    sparse = isinstance(post, SparsePosterior)
    rows.append(
        {
            "method": label,
            "density": post.attrs["density"] if sparse else 1.0,
            "accuracy": accuracy(probs, y_test),
            "nll": -float(pred.log_prob(y_test).mean()),
            "ece": expected_calibration_error(probs, y_test),
            "ood_auroc": ood_auroc(entropy_in.cpu(), entropy_out.cpu()),
            "stored_params": post.attrs["stored_params"] if sparse else 2 * bnn.num_params,
            "flops_ratio": post.attrs["flops_ratio"] if sparse else 1.0,
            "fit_seconds": seconds[label],
        }
    )

header = "| method | accuracy | NLL | ECE | OOD AUROC | stored params | train FLOPs | fit (s) |"
print(header)
print("|---" * 8 + "|")
for r in rows:
    print(
        f"| {r['method']} | {r['accuracy']:.4f} | {r['nll']:.4f} | {r['ece']:.4f} | "
        f"{r['ood_auroc']:.4f} | {r['stored_params']:,} | {r['flops_ratio']:.3f} | "
        f"{r['fit_seconds']:.0f} |"
    )

# %% [markdown]
# "Stored params" counts a mean and a standard deviation per active weight (biases stay
# dense). "Train FLOPs" are the theoretical multiply-accumulates of training relative to dense
# VI, including the dense gradient SSVI needs at each mask update: here the masked weights are
# stored as dense tensors, so the wall time does not fall with the density.
#
# What SSVI kept: the density of each weight matrix (the same for all, by design) and how many
# weights each mask update swapped; the swaps shrink with the cosine schedule and stop when
# the mask freezes.

# %%
ssvi_01 = posteriors["SSVI 0.1"]
print("density per layer:", ssvi_01.attrs["ssvi"]["density"])
print("weights swapped per update:", ssvi_01.attrs["ssvi"]["changed"].tolist())

# %% [markdown]
# ## Plots
# Left: accuracy and NLL against the number of stored parameters. Middle: the ELBO estimate
# at every step, smoothed (its KL term is weighted by the warm-up, so it first falls as the
# weight grows). Right: predictive entropy on Fashion-MNIST test images and on MNIST digits,
# for dense VI and SSVI at density 0.1.

# %%
fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
stored = np.array([r["stored_params"] for r in rows])
ax = axes[0]
ax.set_xscale("log")
(acc_line,) = ax.plot(stored, [r["accuracy"] for r in rows], "o-", label="accuracy")
ax.set_xticks(stored, [f"{s / 1e3:.0f}k" for s in stored])
ax.minorticks_off()
ax.set_xlabel("stored parameters (2 per active weight)")
ax.set_ylabel("test accuracy")
twin = ax.twinx()
(nll_line,) = twin.plot(stored, [r["nll"] for r in rows], "s--", color="C1", label="NLL")
twin.set_ylabel("test NLL")
for r in rows:
    ax.annotate(
        r["method"],
        (r["stored_params"], r["accuracy"]),
        xytext=(4, -12),
        textcoords="offset points",
        fontsize=8,
    )
ax.legend(handles=[acc_line, nll_line], loc="center right", fontsize=8)
ax.set_title("quality against size")
ax = axes[1]
window = max(1, steps // 50)
for label, post in posteriors.items():
    trace = post.attrs["elbo_trace"][0].numpy()
    smooth = np.convolve(trace, np.ones(window) / window, mode="valid")
    ax.plot(np.arange(len(smooth)) + window, smooth, label=label, lw=1)
ax.set_xlabel("step")
ax.set_ylabel(f"ELBO estimate (moving average of {window})")
ax.legend(fontsize=8)
ax.set_title("optimisation")
ax = axes[2]
bins = np.linspace(0, np.log(10), 40)
for label, colour in [("dense VI", "C0"), ("SSVI 0.1", "C3")]:
    entropy_in, entropy_out = entropies[label]
    ax.hist(
        entropy_in.numpy(), bins, alpha=0.4, density=True, color=colour, label=f"{label}: F-MNIST"
    )
    ax.hist(
        entropy_out.numpy(),
        bins,
        density=True,
        histtype="step",
        color=colour,
        label=f"{label}: MNIST",
    )
ax.set_xlabel("predictive entropy")
ax.legend(fontsize=8)
ax.set_title("in- and out-of-distribution")
fig.tight_layout()
fig.savefig(OUT / "vi_ssvi.png", dpi=110)
plt.close(fig)

# %% [markdown]
# ## Sparse storage
# A `SparsePosterior` saves only the active coordinates of its draws and of its guide, plus
# the mask packed eight weights to a byte; `SparsePosterior.load` restores it.

# %%
ssvi_01.save(OUT / "ssvi_0.1.pt")
posteriors["dense VI"].save(OUT / "dense_vi.pt")
sizes = {name: (OUT / name).stat().st_size for name in ("ssvi_0.1.pt", "dense_vi.pt")}
restored = SparsePosterior.load(OUT / "ssvi_0.1.pt", bnn=make_bnn())
assert torch.equal(restored.theta, ssvi_01.theta)
print({k: f"{v / 1e6:.1f} MB" for k, v in sizes.items()})

# %%
report = {
    "settings": {k: v for k, v in common.items()},
    "results": rows,
    "file_bytes": sizes,
    "smoke": SMOKE,
}
(OUT / "metrics.json").write_text(json.dumps(report, indent=2))
print("wrote", sorted(p.name for p in OUT.iterdir()))
