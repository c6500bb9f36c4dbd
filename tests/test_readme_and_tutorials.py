"""The README's snippet runs as written, and every tutorial runs in smoke mode.

A test whose data is missing skips with the reason: the shared data folder (``BAYESDL_DATA``)
for the tutorials listed in :data:`NEEDS_SHARED_DATA`. Fashion-MNIST (Debian package
``dataset-fashion-mnist``) and the MNIST test digits are never a reason to skip: without them
tutorials 03 and 04 run in smoke mode on a synthetic stand-in and say so.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
TUTORIALS = sorted((ROOT / "tutorials").glob("[0-9]*.py"))


def readme_snippet() -> str:
    """The first python code block of README.md (the quickstart snippet)."""
    text = (ROOT / "README.md").read_text()
    match = re.search(r"```python\n(.*?)```", text, flags=re.S)
    assert match, "README.md has no python code block"
    return match.group(1)


def _run(code: str, tmp_path: pathlib.Path, env: dict[str, str] | None = None) -> str:
    script = tmp_path / "snippet.py"
    script.write_text(code)
    result = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env={
            **os.environ,
            "MPLBACKEND": "Agg",
            "OMP_NUM_THREADS": os.environ.get("BAYESDL_TEST_THREADS", "1"),
            **(env or {}),
        },
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def test_readme_snippet_runs_with_fewer_draws(tmp_path):
    """The snippet's code path, quickly: only the sampler sizes are made smaller."""
    code = readme_snippet()
    small = code.replace("warmup=100, draws=100", "warmup=4, draws=4")
    small = small.replace("num_samples=20, warmup_steps=20", "num_samples=2, warmup_steps=2")
    assert small.count("=4") >= 2 and "num_samples=2" in small, "README snippet changed shape"
    out = _run(small, tmp_path)
    assert "rmse" in out and "r_hat" in out


@pytest.mark.slow
def test_readme_snippet_runs_as_written(tmp_path):
    out = _run(readme_snippet(), tmp_path)
    assert "rmse" in out and "r_hat" in out


#: Files each tutorial must write (beyond metrics.json and at least one plot).
EXPECTED_OUTPUTS = {
    "01_quickstart.py": {"posterior.nc", "predictive_bands.png", "function_trace.png"},
    "02_hmc.py": {"nuts_function_trace.png", "predictions.png", "cold_posterior.png"},
    "03_svgd.py": {"snelson_functions.png", "fmnist_metrics.png", "fmnist_entropy.png"},
    "04_vi_ssvi.py": {"vi_ssvi.png", "ssvi_0.1.pt", "dense_vi.pt"},
    "06_scale_out.py": {"scale_out_predictions.png", "nuts.pt"},
    "05_gp_prior.py": {
        "prior_draws.png",
        "posterior_gap.png",
        "fit_report.png",
        "prior_scales.png",
        "uci.png",
    },
}


#: Tutorials that read the shared data folder (UCI, Snelson) even in smoke mode; the others use
#: scikit-learn's bundled sets, Fashion-MNIST and MNIST, or the synthetic stand-in.
NEEDS_SHARED_DATA = {"02_hmc.py", "03_svgd.py", "05_gp_prior.py"}

#: Tutorials that fall back to ``bayesdl.data.synthetic_images`` in smoke mode.
STAND_IN = "using a synthetic stand-in for Fashion-MNIST/MNIST"


def _fashion_and_mnist_present() -> bool:
    """Whether ``data.fashion_mnist()`` and ``data.mnist_test()`` find their files."""
    fashion = pathlib.Path(
        os.environ.get("BAYESDL_FASHION_MNIST") or "/usr/share/datasets/fashion-mnist"
    )
    if not os.environ.get("BAYESDL_DATA"):
        return False
    mnist = pathlib.Path(os.environ["BAYESDL_DATA"]) / "mnist-test"
    files = [mnist / f"t10k-{kind}-ubyte.zip" for kind in ("images-idx3", "labels-idx1")]
    files += [
        fashion / f"{part}-{kind}-ubyte.gz"
        for part in ("train", "t10k")
        for kind in ("images-idx3", "labels-idx1")
    ]
    return all(path.is_file() for path in files)


@pytest.mark.parametrize("tutorial", TUTORIALS, ids=[t.name for t in TUTORIALS])
def test_tutorial_runs_in_smoke_mode(tutorial, tmp_path, request):
    if tutorial.name in NEEDS_SHARED_DATA:
        request.getfixturevalue("shared_data")  # skips with the reason when it is absent
    out_dir = tmp_path / "out"
    out = _run(
        tutorial.read_text(), tmp_path, {"BAYESDL_SMOKE": "1", "BAYESDL_OUTPUT": str(out_dir)}
    )
    if tutorial.name in ("03_svgd.py", "04_vi_ssvi.py"):
        assert (STAND_IN in out) == (not _fashion_and_mnist_present()), out[-2000:]
    produced = {p.name for p in out_dir.iterdir()}
    assert "metrics.json" in produced
    assert any(name.endswith(".png") for name in produced)
    assert EXPECTED_OUTPUTS.get(tutorial.name, set()) <= produced
    metrics = json.loads((out_dir / "metrics.json").read_text())
    assert metrics, "empty metrics"


def test_tutorial_04_smoke_uses_stand_in_without_fashion_mnist(tmp_path):
    """Without Fashion-MNIST a smoke run says it uses the stand-in and still writes its outputs."""
    out_dir = tmp_path / "out"
    env = {
        "BAYESDL_SMOKE": "1",
        "BAYESDL_OUTPUT": str(out_dir),
        "BAYESDL_FASHION_MNIST": str(tmp_path / "no-fashion-mnist"),
    }
    out = _run((ROOT / "tutorials" / "04_vi_ssvi.py").read_text(), tmp_path, env)
    assert STAND_IN in out and "dataset-fashion-mnist" in out
    assert "synthetic_images" in out
    assert EXPECTED_OUTPUTS["04_vi_ssvi.py"] | {"metrics.json"} <= {
        p.name for p in out_dir.iterdir()
    }


def test_tutorial_04_full_run_refuses_missing_data(tmp_path):
    """Outside smoke mode there is no substitution: the tutorial stops naming the package."""
    script = tmp_path / "tutorial.py"
    script.write_text((ROOT / "tutorials" / "04_vi_ssvi.py").read_text())
    env = {**os.environ, "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}
    env.pop("BAYESDL_SMOKE", None)
    env.update(
        BAYESDL_OUTPUT=str(tmp_path / "out"),
        BAYESDL_FASHION_MNIST=str(tmp_path / "no-fashion-mnist"),
    )
    result = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode != 0
    assert "FileNotFoundError" in result.stderr and "dataset-fashion-mnist" in result.stderr
    assert STAND_IN not in result.stdout


def check_bnn_against_ridge(report: dict) -> None:
    """Assert the quickstart's claim from its metrics.json: the BNN matches ridge on RMSE and
    beats it on NLL and 90% coverage.

    Tolerances are standard errors the tutorial computes on its test split: two paired standard
    errors of the squared-error difference for the RMSE, two binomial standard errors of a 90%
    coverage estimate for calibration.
    """
    comparison = report["comparison"]
    bnn, ridge, n = comparison["bnn"], comparison["ridge"], comparison["num_test"]
    # the tutorial's own scores agree with Posterior.evaluate and with each other
    assert report["evaluate"]["rmse"] == pytest.approx(bnn["rmse"], rel=1e-5)
    assert report["evaluate"]["nll"] == pytest.approx(bnn["nll"], rel=1e-5)
    assert comparison["mse_diff"] == pytest.approx(bnn["rmse"] ** 2 - ridge["rmse"] ** 2, rel=1e-6)
    assert comparison["coverage90_se"] == pytest.approx((0.9 * 0.1 / n) ** 0.5)
    assert bnn["nll"] < ridge["nll"], comparison
    allowance = 2 * comparison["coverage90_se"]
    assert abs(bnn["coverage90"] - 0.9) <= abs(ridge["coverage90"] - 0.9) + allowance, comparison
    assert comparison["mse_diff"] <= 2 * comparison["mse_diff_se"], comparison


def _comparison_report(**changes: float) -> dict:
    """A metrics.json as the quickstart writes it (split 0's numbers), with ``changes``."""
    bnn = {"rmse": 54.88, "nll": 5.422, "coverage90": 0.910}
    ridge = {"rmse": 56.87, "nll": 5.463, "coverage90": 0.888}
    bnn.update({k[4:]: v for k, v in changes.items() if k.startswith("bnn_")})
    n = 89
    return {
        "evaluate": {"rmse": bnn["rmse"], "nll": bnn["nll"]},
        "comparison": {
            "bnn": bnn,
            "ridge": ridge,
            "num_test": n,
            "mse_diff": bnn["rmse"] ** 2 - ridge["rmse"] ** 2,
            "mse_diff_se": 90.0,
            "coverage90_se": (0.9 * 0.1 / n) ** 0.5,
        },
    }


@pytest.mark.parametrize(
    "changes",
    [{"bnn_nll": 5.47}, {"bnn_coverage90": 0.80}, {"bnn_rmse": 59.95}],
    ids=["worse-nll", "under-covers", "worse-rmse"],
)
def test_bnn_against_ridge_check_fails_when_the_bnn_loses(changes):
    check_bnn_against_ridge(_comparison_report())
    with pytest.raises(AssertionError):
        check_bnn_against_ridge(_comparison_report(**changes))


@pytest.mark.slow
def test_quickstart_bnn_beats_ridge_on_nll_and_calibration(tmp_path):
    """The full quickstart (split 0): the comparison its metrics.json reports holds."""
    out_dir = tmp_path / "out"
    env = {"BAYESDL_SMOKE": "0", "BAYESDL_OUTPUT": str(out_dir), "BAYESDL_SPLIT": "0"}
    _run((ROOT / "tutorials" / "01_quickstart.py").read_text(), tmp_path, env)
    check_bnn_against_ridge(json.loads((out_dir / "metrics.json").read_text()))


def test_tutorial_06_runs_under_torchrun_with_two_processes(tmp_path):
    """The scale-out tutorial as its header says to run it: two processes (gloo), smoke mode;
    rank 0 gathers every chain and particle and alone writes the outputs."""
    out_dir = tmp_path / "out"
    script = tmp_path / "06_scale_out.py"
    script.write_text((ROOT / "tutorials" / "06_scale_out.py").read_text())
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", str(script)],
        cwd=tmp_path,
        env={
            **os.environ,
            "MPLBACKEND": "Agg",
            "OMP_NUM_THREADS": "1",
            "BAYESDL_SMOKE": "1",
            "BAYESDL_OUTPUT": str(out_dir),
        },
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "2 process(es)" in result.stdout
    assert "rank 0 of 2: all 4 chains" in result.stdout
    assert "rank 0 of 2: all 20 particles" in result.stdout
    metrics = json.loads((out_dir / "metrics.json").read_text())
    assert metrics["processes"] == 2
    assert {"nuts.pt", "scale_out_predictions.png"} <= {p.name for p in out_dir.iterdir()}
