#!/bin/bash
# Issue 17's GPU run of benchmarks/hmc_vs_peers.py: bayesdl NUTS (compiled into CUDA graphs, and
# eager) against NumPyro on the same card, MLP 10-50-1 on diabetes, depth 6, 100 + 100.
#
# Run from the repository root of a copy holding .whl/ (wheels of pyro-ppl, pyro-api, arviz,
# xarray-einstats, h5netcdf, platformdirs for the GPU machine's Python) and .whl/head.tar
# (`git archive HEAD`): the package is assembled from that archive under /tmp/pkg, so files
# being edited beside it do not travel into the run. Results go to $OUT (or ./gpu_out).
set -u
OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT" /tmp/src /tmp/pkg
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
tar -xf .whl/head.tar -C /tmp/src
cp -r /tmp/src/bayesdl /tmp/pkg/
cp -r /tmp/src/models /tmp/pkg/bayesdl/models
cp -r /tmp/src/inference /tmp/pkg/bayesdl/inference
export PYTHONPATH=/tmp/pkg:/tmp/site XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1
cd /tmp/src
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, jax, numpyro; print(torch.__version__, jax.__version__, \
numpyro.__version__, jax.devices())" | tee -a "$OUT/gpu.txt"
python3 benchmarks/hmc_vs_peers.py --device cuda --datasets diabetes --max-tree-depth 6 \
    --warmup 100 --draws 100 --cost-chains 64 1024 --budget-seconds "${BUDGET:-380}" \
    --plan ${PLAN:-bayesdl-compile:64 numpyro:64 bayesdl:64 numpyro:1024 bayesdl-compile:1024 \
    numpyro:256 bayesdl-compile:256 numpyro:16 bayesdl-compile:16 numpyro:4 \
    bayesdl-compile:4 numpyro:1 bayesdl-compile:1 bayesdl:1024} \
    --out "$OUT/hmc_gpu.json" 2>&1 | grep -v "ConvergenceWarning\|^  warn" | tee "$OUT/log.txt"
