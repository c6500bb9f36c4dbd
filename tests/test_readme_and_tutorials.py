"""The README's snippet runs as written, and every tutorial runs in smoke mode."""

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


def test_readme_snippet_runs_with_fewer_draws(tmp_path, shared_data):
    """The snippet's code path, quickly: only the sampler sizes are made smaller."""
    code = readme_snippet()
    small = code.replace("warmup=100, draws=100", "warmup=4, draws=4")
    small = small.replace("num_samples=20, warmup_steps=20", "num_samples=2, warmup_steps=2")
    assert small.count("=4") >= 2 and "num_samples=2" in small, "README snippet changed shape"
    out = _run(small, tmp_path)
    assert "rmse" in out and "r_hat" in out


@pytest.mark.slow
def test_readme_snippet_runs_as_written(tmp_path, shared_data):
    out = _run(readme_snippet(), tmp_path)
    assert "rmse" in out and "r_hat" in out


#: Files each tutorial must write (beyond metrics.json and at least one plot).
EXPECTED_OUTPUTS = {
    "01_quickstart.py": {"posterior.nc", "predictive_bands.png", "function_trace.png"},
    "02_hmc.py": {"nuts_function_trace.png", "predictions.png", "cold_posterior.png"},
    "03_svgd.py": {"snelson_functions.png", "fmnist_metrics.png", "fmnist_entropy.png"},
    "04_vi_ssvi.py": {"vi_ssvi.png", "ssvi_0.1.pt", "dense_vi.pt"},
    "05_gp_prior.py": {
        "prior_draws.png",
        "posterior_gap.png",
        "fit_report.png",
        "prior_scales.png",
        "uci.png",
    },
}


@pytest.mark.parametrize("tutorial", TUTORIALS, ids=[t.name for t in TUTORIALS])
def test_tutorial_runs_in_smoke_mode(tutorial, tmp_path, shared_data):
    out_dir = tmp_path / "out"
    _run(tutorial.read_text(), tmp_path, {"BAYESDL_SMOKE": "1", "BAYESDL_OUTPUT": str(out_dir)})
    produced = {p.name for p in out_dir.iterdir()}
    assert "metrics.json" in produced
    assert any(name.endswith(".png") for name in produced)
    assert EXPECTED_OUTPUTS.get(tutorial.name, set()) <= produced
    metrics = json.loads((out_dir / "metrics.json").read_text())
    assert metrics, "empty metrics"
