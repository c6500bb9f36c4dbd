"""Every backend's fit timed on two revisions of bayesdl, side by side (a refactor's cost).

Each revision is assembled from ``git archive <rev>`` into a folder of its own (the package
``bayesdl`` with ``models`` and ``inference`` inside, as the installed package is) and each run
is a fresh ``python`` process importing it, so the two revisions never share a module. The
runs are interleaved (repeat ``r`` of every backend on both revisions before repeat ``r + 1``);
each process fits once briefly (first-call costs) and then times one fit. Reported: the median
and range of the fit's seconds per revision, and their ratio.

    OMP_NUM_THREADS=1 python benchmarks/revisions.py f655486 HEAD --repeats 3
    python benchmarks/revisions.py --report
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "revisions.jsonl"

#: name -> (backend expression, chains/particles shown) on MLP 10-20-1, diabetes, seed 0.
BACKENDS = {
    "nuts": "NUTS(chains=4, warmup=60, draws=60)",
    "nuts-compile": "NUTS(chains=4, warmup=60, draws=60, compile=True)",
    "hmc": "HMC(chains=4, warmup=60, draws=60, num_steps=10)",
    "sghmc": "SGHMC(chains=4, batch_size=32, burn_in=1500, draws=100, thin=5)",
    "sgld": "SGLD(chains=4, batch_size=32, burn_in=1500, draws=100, thin=5)",
    "svgd": "SVGD(particles=20, steps=1000, batch_size=64)",
    "vi": "VI(steps=2000, batch_size=64)",
    "ssvi": "SSVI(density=0.5, steps=2000, batch_size=64)",
}

#: What each process runs: one short fit, then one timed fit.
CHILD = """
import time, warnings, torch
import bayesdl
from bayesdl import likelihoods, priors
from bayesdl.inference import NUTS, HMC, SGHMC, SGLD, SVGD, VI, SSVI
from bayesdl.models import BNN, MLP
warnings.simplefilter("ignore")
torch.set_num_threads(1)
data = bayesdl.data.load("diabetes", seed=0)
def bnn():
    torch.manual_seed(0)
    net = MLP(data.in_features, [20], 1, "tanh")
    return BNN(net, priors.Gaussian(1.0, fan_in=True), likelihoods.Gaussian(0.6))
backend = {expr}
short = {short}
short.fit(bnn(), data.x_train, data.y_train, seed=1, progress=False)
start = time.perf_counter()
backend.fit(bnn(), data.x_train, data.y_train, seed=0, progress=False)
print("SECONDS", time.perf_counter() - start)
"""


def short_version(expression: str) -> str:
    """The backend with a few steps (warm-up of first-call costs and compilation caches)."""
    for key, value in (
        ("warmup=60", "warmup=2"),
        ("draws=60", "draws=2"),
        ("burn_in=1500", "burn_in=5"),
        ("draws=100", "draws=2"),
        ("steps=1000", "steps=3"),
        ("steps=2000", "steps=3"),
    ):
        expression = expression.replace(key, value)
    return expression


def assemble(revision: str, folder: pathlib.Path) -> pathlib.Path:
    """The package of ``revision`` under ``folder``: ``folder/pkg`` goes on PYTHONPATH."""
    source = folder / "src"
    source.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "archive", revision], cwd=ROOT, check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(source)], input=archive, check=True)
    package = folder / "pkg" / "bayesdl"
    shutil.copytree(source / "bayesdl", package)
    shutil.copytree(source / "models", package / "models")
    shutil.copytree(source / "inference", package / "inference")
    return folder / "pkg"


#: Runs before anything else in a child: drops an editable install's finder, so that the
#: assembled package on PYTHONPATH is the one imported.
SITECUSTOMIZE = """import sys
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()
                    and "editable" not in type(f).__module__.lower()]
"""


def time_fit(path: pathlib.Path, backend: str) -> float:
    expr = BACKENDS[backend]
    code = CHILD.format(expr=expr, short=short_version(expr))
    env = {**os.environ, "PYTHONPATH": f"{path}:{path.parent}", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=path.parent
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("SECONDS")]
    if result.returncode != 0 or not lines:
        raise RuntimeError(f"{backend}: {result.stderr[-2000:]}")
    return float(lines[-1].split()[1])


def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for revision in args.revisions:
            folder = pathlib.Path(tmp) / revision.replace("/", "_")
            paths[revision] = assemble(revision, folder)
            (folder / "sitecustomize.py").write_text(SITECUSTOMIZE)
        commits = {
            rev: subprocess.run(
                ["git", "rev-parse", "--short", rev], cwd=ROOT, capture_output=True, text=True
            ).stdout.strip()
            for rev in args.revisions
        }
        for repeat in range(args.repeats):
            for backend in args.backends:
                for revision in args.revisions:
                    seconds = time_fit(paths[revision], backend)
                    record = {
                        "backend": backend,
                        "revision": commits[revision],
                        "repeat": repeat,
                        "seconds": seconds,
                        "load": os.getloadavg()[0],
                    }
                    print(json.dumps(record), flush=True)
                    with open(args.out, "a") as fh:
                        fh.write(json.dumps(record) + "\n")


def report(path: str) -> None:
    rows = [json.loads(line) for line in pathlib.Path(path).read_text().splitlines() if line]
    revisions = list(dict.fromkeys(r["revision"] for r in rows))
    print("| backend | " + " | ".join(revisions) + " | ratio (last / first) |")
    print("|---|" + "---|" * (len(revisions) + 1))
    for backend in dict.fromkeys(r["backend"] for r in rows):
        cells, medians = [], []
        for revision in revisions:
            values = [
                r["seconds"] for r in rows if (r["backend"], r["revision"]) == (backend, revision)
            ]
            medians.append(statistics.median(values))
            cells.append(f"{medians[-1]:.2f} s ({min(values):.2f}-{max(values):.2f})")
        print(f"| {backend} | " + " | ".join(cells) + f" | {medians[-1] / medians[0]:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("revisions", nargs="*", default=["f655486", "HEAD"])
    parser.add_argument("--backends", nargs="+", choices=list(BACKENDS), default=list(BACKENDS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(OUT))
    parser.add_argument("--report", action="store_true")
    args = parser.parse_args()
    if args.report:
        report(args.out)
    else:
        run(args)


if __name__ == "__main__":
    main()
