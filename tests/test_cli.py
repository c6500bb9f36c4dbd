"""The ``bayesdl`` command."""

from __future__ import annotations

import json

import pytest
import torch

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


# Every backend end to end on a bundled data set (no shared folder needed), with settings small
# enough for seconds each; the posterior's (chain, draw) shape shows the settings reached it.
_TINY = {
    "nuts": (["--chains", "1", "--warmup", "3", "--draws", "3", "--max-tree-depth", "3"], (1, 3)),
    "hmc": (["--chains", "2", "--warmup", "3", "--draws", "2", "--num-steps", "3"], (2, 2)),
    "svgd": (["--particles", "4", "--steps", "5", "--lr", "0.01", "--kernel", "function"], (1, 4)),
    "vi": (["--steps", "5", "--lr", "0.01", "--draws", "5"], (1, 5)),
    "ssvi": (["--steps", "5", "--draws", "6", "--density", "0.5", "--batch-size", "64"], (1, 6)),
    "sghmc": (
        ["--chains", "2", "--burn-in", "5", "--draws", "3", "--thin", "1", "--lr", "1e-4"],
        (2, 3),
    ),
    "sgld": (
        ["--chains", "1", "--burn-in", "5", "--draws", "4", "--thin", "1", "--batch-size", "32"],
        (1, 4),
    ),
}


def test_every_registered_backend_has_a_cli_test():
    from bayesdl import cli
    from bayesdl.inference import BACKENDS

    assert set(_TINY) == set(BACKENDS) == set(cli._BACKEND_NAMES)


@pytest.mark.parametrize("backend", sorted(_TINY))
def test_fit_runs_every_backend(backend, tmp_path, capsys):
    import arviz as az

    options, (chains, draws) = _TINY[backend]
    out = tmp_path / backend
    argv = ["fit", "diabetes", "--hidden", "5", "--quiet", "--backend", backend, "--out", str(out)]
    assert main([*argv, *options]) == 0
    assert {p.name for p in out.iterdir()} == {"metrics.json", "posterior.pt", "posterior.nc"}
    assert (out / "posterior.pt").stat().st_size > 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["data"] == "diabetes" and metrics["backend"] == backend
    assert 0 < metrics["rmse"] < float("inf") and metrics["nll"] == metrics["nll"]
    sizes = az.from_netcdf(str(out / "posterior.nc")).posterior.sizes
    assert (sizes["chain"], sizes["draw"]) == (chains, draws)
    assert '"rmse"' in capsys.readouterr().out


def test_fit_resumes_from_its_checkpoint(tmp_path):
    """A finished run's checkpoint resumes to the same posterior; another run's is refused."""
    options, _ = _TINY["sghmc"]
    ckpt = tmp_path / "run.ckpt"
    base = ["fit", "diabetes", "--hidden", "5", "--quiet", "--backend", "sghmc", *options]
    assert main([*base, "--out", str(tmp_path / "a"), "--checkpoint", str(ckpt)]) == 0
    assert main([*base, "--out", str(tmp_path / "b"), "--resume", str(ckpt)]) == 0
    first = torch.load(tmp_path / "a" / "posterior.pt", weights_only=False)["theta"]
    again = torch.load(tmp_path / "b" / "posterior.pt", weights_only=False)["theta"]
    assert torch.equal(first, again)
    with pytest.raises(SystemExit, match=r"resume: .*different run"):
        main([*base, "--out", str(tmp_path / "c"), "--resume", str(ckpt), "--lr", "2e-4"])


@pytest.mark.parametrize(
    ("backend", "option", "value"),
    [
        ("nuts", "--particles", "3"),
        ("svgd", "--chains", "2"),
        ("vi", "--warmup", "3"),
        ("sghmc", "--kernel", "weight"),
        ("sgld", "--momentum-decay", "0.1"),
        ("hmc", "--max-tree-depth", "3"),
        ("ssvi", "--compile", None),
    ],
)
def test_fit_rejects_an_option_that_does_not_apply(backend, option, value, tmp_path):
    argv = ["fit", "diabetes", "--quiet", "--backend", backend, "--out", str(tmp_path / "x")]
    argv += [option] if value is None else [option, value]
    with pytest.raises(SystemExit, match=rf"{option} does not apply to --backend {backend}"):
        main(argv)
    assert not (tmp_path / "x").exists()  # refused before any fitting


def test_fit_rejects_an_unknown_backend():
    with pytest.raises(SystemExit, match="unknown --backend 'bogus'"):
        main(["fit", "diabetes", "--quiet", "--backend", "bogus"])


def test_fit_reports_a_bad_backend_setting_with_the_backend():
    with pytest.raises(SystemExit, match=r"--backend svgd: .*particles"):
        main(["fit", "diabetes", "--quiet", "--backend", "svgd", "--particles", "0"])


def test_fit_help_says_which_options_apply_to_which_backend(capsys):
    with pytest.raises(SystemExit) as info:
        main(["fit", "--help"])
    assert info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--particles PARTICLES [svgd]" in text
    assert "--warmup WARMUP [nuts, hmc]" in text
    assert "svgd --particles --kernel --steps --lr --batch-size --compile" in text
    assert "sghmc --chains --draws --lr --batch-size --burn-in --thin" in text
    assert "vi --draws --steps --lr --batch-size" in text


def test_readme_fit_commands_parse_and_build_their_backend():
    """Each ``bayesdl fit`` line of the README's command-line section is valid (not run)."""
    import pathlib
    import shlex

    from bayesdl import cli
    from bayesdl.inference import get

    readme = (pathlib.Path(__file__).parents[1] / "README.md").read_text()
    lines = [ln for ln in readme.splitlines() if ln.startswith("bayesdl fit ")]
    assert len(lines) >= 2
    backends = set()
    for line in lines:
        args = cli._parser().parse_args(shlex.split(line.split("#")[0])[1:])
        backend = args.backend.lower()
        get(backend)(**cli._backend_settings(args))
        backends.add(backend)
    assert len(backends) >= 4
