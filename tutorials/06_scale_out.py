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
# # Scaling out: chains, particles and data over processes with `torch.distributed`
#
# The same script runs in one process (`python 06_scale_out.py`) or in several, launched by
# PyTorch's own launcher:
#
#     torchrun --nproc_per_node=2 tutorials/06_scale_out.py
#
# Under torchrun every process runs this file; `bayesdl.distributed.init()` joins them into
# one group (gloo on CPUs, NCCL on GPUs), and from then on every backend shares its work over
# the group by itself:
#
# 1. **NUTS**: the chains are split into blocks, one per process; each chain keeps its own
#    random stream, so rank 0's posterior holds every chain, bit for bit what one process
#    would have drawn with the same seed;
# 2. **SGHMC on a streamed data set**: the data live in a file on disk (a NumPy memory map),
#    read batch by batch through a `torch.utils.data.DataLoader`; under torchrun the loader is
#    sharded (`DistributedSampler`), each process reads its own rows, and the minibatch
#    gradients are summed over processes (data parallel);
# 3. **an SVGD ensemble**: the particles are split over the processes; each step they gather
#    what the Stein kernel needs and update their own particles.
#
# Only rank 0 shows progress bars, prints and writes files (`Posterior.save` does nothing on
# the other ranks). `BAYESDL_SMOKE=1` runs it in seconds; `BAYESDL_OUTPUT` sets the output
# folder (default `outputs/scale_out`).
#
# **On N GPUs**: `torchrun --nproc_per_node=N`; `init()` picks NCCL and each process's GPU
# (`LOCAL_RANK`), and the network goes to that device (`.to(device)` below) before the BNN is
# declared. Nothing else changes.

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
from torch.utils.data import DataLoader, Dataset

import bayesdl
from bayesdl import distributed, likelihoods, priors
from bayesdl.inference import NUTS, SGHMC, SVGD
from bayesdl.models import BNN, MLP

SMOKE = os.environ.get("BAYESDL_SMOKE") == "1"
OUT = pathlib.Path(os.environ.get("BAYESDL_OUTPUT", "outputs/scale_out"))

# under torchrun (it sets RANK), join the group; in a plain run, one process
group = distributed.init() if "RANK" in os.environ else None
ROOT = group is None or group.root
device = (
    torch.device("cuda", torch.cuda.current_device())
    if torch.cuda.is_available() and group is not None
    else torch.device("cpu")
)
if ROOT:
    OUT.mkdir(parents=True, exist_ok=True)
    processes = 1 if group is None else group.world
    print(f"{processes} process(es), device {device}")
report: dict = {"processes": 1 if group is None else group.world}

# %% [markdown]
# ## Data and model
# Scikit-learn's diabetes data (442 patients, 10 inputs), standardised with the training
# split's statistics; metrics in the original units. One hidden layer of 50 tanh units, a
# fan-in Gaussian prior and Gaussian noise.

# %%
data = bayesdl.data.load("diabetes", seed=0)


def make_bnn() -> BNN:
    torch.manual_seed(0)
    net = MLP(data.in_features, [50], 1, "tanh").to(device)
    return BNN(net, priors.Gaussian(1.0, fan_in=True), likelihoods.Gaussian(0.6))


def scores(posterior: bayesdl.Posterior) -> dict:
    return posterior.evaluate(data.x_test, data.y_test, y_scale=data.y_scale)


# %% [markdown]
# ## 1. NUTS, chains split over the processes
# With two processes each runs two of the four chains; `attrs["distributed"]` says which
# chains a process holds.

# %%
start = time.perf_counter()
nuts = NUTS(chains=4, warmup=10 if SMOKE else 200, draws=10 if SMOKE else 200)
nuts_posterior = nuts.fit(make_bnn(), data.x_train, data.y_train, seed=0, progress=ROOT)
report["nuts"] = {**scores(nuts_posterior), "seconds": time.perf_counter() - start}
if ROOT:
    print("NUTS", nuts_posterior.attrs.get("distributed", "one process"), report["nuts"])
nuts_posterior.save(OUT / "nuts.pt")  # rank 0 writes; the others do nothing

# %% [markdown]
# ## 2. SGHMC on data streamed from disk
# The training data are written to a `.npy` file and read through a memory map, a row at a
# time, as a data set too large for memory would be. The DataLoader's batches are `(x, y)`
# pairs; `num_data` comes from the data set's length. Under torchrun each process reads its
# shard of every epoch.


# %%
class MemoryMapped(Dataset):
    """Rows of a NumPy file on disk, read on demand."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path = path
        self.rows = np.load(path, mmap_mode="r")

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        row = torch.from_numpy(np.array(self.rows[i], dtype=np.float32))
        return row[:-1], row[-1]


table = OUT / f"train_rank{0 if group is None else group.rank}.npy"
np.save(table, torch.cat([data.x_train, data.y_train[:, None]], dim=1).numpy())
loader = DataLoader(MemoryMapped(table), batch_size=32, shuffle=True)
start = time.perf_counter()
sghmc = SGHMC(
    chains=4,
    preconditioner="adaptive",
    burn_in=50 if SMOKE else 3000,
    draws=10 if SMOKE else 200,
    thin=1 if SMOKE else 20,
)
sghmc_posterior = sghmc.fit(make_bnn(), loader, seed=0, progress=ROOT)
report["sghmc"] = {**scores(sghmc_posterior), "seconds": time.perf_counter() - start}
if ROOT:
    print("SGHMC", sghmc_posterior.attrs.get("distributed", "one process"), report["sghmc"])

# %% [markdown]
# ## 3. An SVGD ensemble, particles split over the processes
# Twenty particles with the RBF kernel in weight space; each step the processes gather the
# particles and their scores, compute the kernel over all twenty and move their own.

# %%
start = time.perf_counter()
svgd = SVGD(particles=20, steps=20 if SMOKE else 2000, lr=1e-3)
svgd_posterior = svgd.fit(make_bnn(), data.x_train, data.y_train, seed=0, progress=ROOT)
report["svgd"] = {**scores(svgd_posterior), "seconds": time.perf_counter() - start}
if ROOT:
    print("SVGD", svgd_posterior.attrs.get("distributed", "one process"), report["svgd"])

# %% [markdown]
# ## Predictions
# Rank 0 holds every chain and particle, so it draws the predictive bands of all three.

# %%
if ROOT:
    order = torch.argsort(data.y_test)
    fig, ax = plt.subplots(figsize=(7, 4))
    truth = (data.y_test[order] * data.y_scale).numpy()
    ax.plot(truth, "k.", label="test targets")
    for name, posterior in (
        ("NUTS", nuts_posterior),
        ("SGHMC", sghmc_posterior),
        ("SVGD", svgd_posterior),
    ):
        mean = (posterior.predict(data.x_test).mean[order] * data.y_scale).numpy()
        ax.plot(mean, label=name)
    ax.set_xlabel("test patients, sorted by target")
    ax.set_ylabel("disease progression")
    ax.legend()
    fig.savefig(OUT / "scale_out_predictions.png", dpi=120, bbox_inches="tight")
    (OUT / "metrics.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
