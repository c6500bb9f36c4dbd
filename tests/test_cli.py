"""The ``bayesdl`` command."""

from __future__ import annotations

import json

import pytest

from bayesdl.cli import main


def test_backends_lists_the_registry(capsys):
    assert main(["backends"]) == 0
    assert "nuts" in capsys.readouterr().out


def test_datasets(capsys, shared_data):
    assert main(["datasets"]) == 0
    out = capsys.readouterr().out
    assert "uci:yacht" in out and "present" in out


def test_fit_writes_posterior_and_metrics(tmp_path, shared_data):
    out = tmp_path / "fit"
    code = main(
        [
            "fit",
            "uci:yacht",
            "--hidden",
            "5",
            "--chains",
            "1",
            "--warmup",
            "3",
            "--draws",
            "3",
            "--quiet",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    assert {p.name for p in out.iterdir()} == {"metrics.json", "posterior.pt", "posterior.nc"}
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["data"] == "uci:yacht" and metrics["rmse"] > 0


def test_fit_rejects_unknown_data():
    with pytest.raises(SystemExit, match="unknown data set"):
        main(["fit", "mnist", "--quiet"])
