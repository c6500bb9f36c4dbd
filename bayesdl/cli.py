"""The ``bayesdl`` command: list backends and data sets, fit an MLP regression or classifier."""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
from collections.abc import Sequence

__all__ = ["main"]

_SKLEARN = ("diabetes", "digits", "breast_cancer", "wine", "iris")


def _backends(_: argparse.Namespace) -> int:
    from bayesdl.inference import BACKENDS

    for name, cls in BACKENDS.items():
        doc = (cls.__doc__ or "").strip().splitlines()[0]
        print(f"{name:10s} {doc}")
    return 0


def _datasets(_: argparse.Namespace) -> int:
    from bayesdl import data

    print("scikit-learn (bundled):", ", ".join(_SKLEARN))
    try:
        root = data.data_root()
    except FileNotFoundError as err:
        print(f"UCI, Snelson, MNIST test set: unavailable ({err})")
    else:
        for name in data.UCI_NAMES:
            present = (root / "uci" / name / "data.txt").is_file()
            print(f"{'uci:' + name:33s}{'present' if present else 'missing'}")
        for name in ("snelson", "mnist-test"):
            print(f"{name:33s}{'present' if (root / name).is_dir() else 'missing'}")
    fashion = pathlib.Path(
        os.environ.get("BAYESDL_FASHION_MNIST", "/usr/share/datasets/fashion-mnist")
    )
    status = "present" if fashion.is_dir() else "missing (apt-get install dataset-fashion-mnist)"
    print(f"{'fashion-mnist':33s}{status}")
    return 0


def _load(name: str, split: int, seed: int):
    from bayesdl import data

    if name in _SKLEARN:
        return data.load(name, seed=seed)
    if name.startswith("uci:"):
        return data.uci(name[4:], split=split)
    raise SystemExit(f"bayesdl fit: unknown data set {name!r}; use one of {_SKLEARN} or uci:<name>")


#: The backend settings the CLI exposes: flag -> (constructor keyword, backends it applies to,
#: argparse keywords). Each is passed to the chosen backend only when it applies; one given that
#: does not apply is an error naming the option and the backend.
_MCMC = ("nuts", "hmc")
_SGMCMC = ("sghmc", "sgld")
_VI = ("vi", "ssvi")
_OPTIONS: dict[str, tuple[str, tuple[str, ...], dict]] = {
    "--chains": (
        "chains",
        _MCMC + _SGMCMC,
        {"type": int, "help": "chains (default: 2 for nuts/hmc)"},
    ),
    "--warmup": ("warmup", _MCMC, {"type": int, "help": "warm-up iterations (default 200)"}),
    "--draws": (
        "draws",
        _MCMC + _SGMCMC + _VI,
        {
            "type": int,
            "help": "draws kept per chain, or drawn from the guide (default: 200 for nuts/hmc)",
        },
    ),
    "--target-accept": ("target_accept", _MCMC, {"type": float}),
    "--max-tree-depth": ("max_tree_depth", ("nuts",), {"type": int}),
    "--num-steps": ("num_steps", ("hmc",), {"type": int, "help": "leapfrog steps per iteration"}),
    "--trajectory-length": ("trajectory_length", ("hmc",), {"type": float}),
    "--step-size": ("step_size", _MCMC, {"type": float, "help": "initial step size"}),
    "--mass": ("mass", _MCMC, {"help": "mass matrix, e.g. diag or dense"}),
    "--particles": ("particles", ("svgd",), {"type": int, "help": "number of particles"}),
    "--kernel": (
        "kernel",
        ("svgd",),
        {"choices": ("weight", "function", "hybrid"), "help": "SVGD kernel"},
    ),
    "--steps": ("steps", ("svgd", *_VI), {"type": int, "help": "optimisation steps"}),
    "--lr": ("lr", ("svgd", *_VI, *_SGMCMC), {"type": float, "help": "learning rate / step size"}),
    "--batch-size": (
        "batch_size",
        ("svgd", *_VI, *_SGMCMC),
        {"type": int, "help": "minibatch size (default: full batch)"},
    ),
    "--burn-in": ("burn_in", _SGMCMC, {"type": int, "help": "burn-in steps"}),
    "--thin": ("thin", _SGMCMC, {"type": int, "help": "keep every thin-th step"}),
    "--momentum-decay": ("momentum_decay", ("sghmc",), {"type": float}),
    "--preconditioner": (
        "preconditioner",
        _SGMCMC,
        {"choices": ("layerwise", "adaptive"), "help": "SG-MCMC preconditioner"},
    ),
    "--density": ("density", ("ssvi",), {"type": float, "help": "fraction of weights kept"}),
    "--compile": (
        "compile",
        (*_MCMC, "svgd"),
        {"action": "store_true", "help": "compile the hot loop with torch.compile"},
    ),
}

#: The CLI's own defaults where they differ from the backend's (today's NUTS behaviour).
_CLI_DEFAULTS: dict[str, dict[str, object]] = {
    "nuts": {"chains": 2, "warmup": 200, "draws": 200},
    "hmc": {"chains": 2, "warmup": 200, "draws": 200},
}

_BACKEND_NAMES = ("hmc", "nuts", "sghmc", "sgld", "ssvi", "svgd", "vi")


def _dest(flag: str) -> str:
    return flag[2:].replace("-", "_")


def _applicable(backend: str) -> list[str]:
    """The option flags that apply to ``backend``."""
    return [flag for flag, (_, backends, _) in _OPTIONS.items() if backend in backends]


def _backend_settings(args: argparse.Namespace) -> dict[str, object]:
    """The keyword arguments of the chosen backend: its options given, on top of CLI defaults.

    Raises SystemExit naming the option and the backend when an option given does not apply.
    """
    backend = args.backend.lower()
    settings = dict(_CLI_DEFAULTS.get(backend, {}))
    for flag, (keyword, backends, _) in _OPTIONS.items():
        if not hasattr(args, _dest(flag)):  # not given (argparse.SUPPRESS)
            continue
        if backend not in backends:
            raise SystemExit(
                f"bayesdl fit: {flag} does not apply to --backend {backend} "
                f"(it applies to {', '.join(backends)}); "
                f"options for {backend}: {' '.join(_applicable(backend))}"
            )
        settings[keyword] = getattr(args, _dest(flag))
    return settings


def _fit(args: argparse.Namespace) -> int:
    from bayesdl import likelihoods, priors
    from bayesdl.inference import get
    from bayesdl.models import BNN, MLP

    args.backend = args.backend.lower()
    if args.backend not in _BACKEND_NAMES:
        raise SystemExit(
            f"bayesdl fit: unknown --backend {args.backend!r}; "
            f"use one of {', '.join(_BACKEND_NAMES)}"
        )
    settings = _backend_settings(args)
    try:
        backend = get(args.backend)(**settings)
    except (TypeError, ValueError) as err:
        raise SystemExit(f"bayesdl fit --backend {args.backend}: {err}") from err
    ds = _load(args.data, args.split, args.seed)
    classifier = ds.task == "classification"
    out_features = ds.num_classes if classifier else 1
    likelihood = likelihoods.Categorical() if classifier else likelihoods.Gaussian(args.noise)
    net = MLP(ds.in_features, args.hidden, out_features, activation=args.activation)
    bnn = BNN(
        net,
        priors.Select(
            default=priors.Gaussian(args.prior_scale, fan_in=args.fan_in), bias=priors.Gaussian(1.0)
        ),
        likelihood,
        temperature=args.temperature,
    )
    resumable = {
        name: value
        for name, value in (
            ("checkpoint", args.checkpoint),
            ("checkpoint_every", args.checkpoint_every),
            ("resume", args.resume),
        )
        if value is not None
    }
    try:
        post = backend.fit(
            bnn, ds.x_train, ds.y_train, seed=args.seed, progress=not args.quiet, **resumable
        )
    except (FileNotFoundError, TypeError, ValueError) as err:
        if not resumable:
            raise
        raise SystemExit(f"bayesdl fit: {err}") from err
    metrics = post.evaluate(ds.x_test, ds.y_test, **({} if classifier else {"y_scale": ds.y_scale}))
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    post.save(out / "posterior.pt")
    post.to_arviz(x=ds.x_test, y=ds.y_test).to_netcdf(str(out / "posterior.nc"))
    (out / "metrics.json").write_text(
        json.dumps({"data": args.data, "backend": args.backend, **metrics}, indent=2)
    )
    print(json.dumps(metrics, indent=2))
    return 0


def _fit_epilog() -> str:
    lines = ["backend options (any other backend option is an error):"]
    for name in _BACKEND_NAMES:
        lines.append(f"  {name:6s} {' '.join(_applicable(name))}")
    lines.append(
        "unset options take the backend's own defaults "
        "(but nuts/hmc: --chains 2 --warmup 200 --draws 200)"
    )
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bayesdl", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("backends", help="list the inference backends").set_defaults(run=_backends)
    sub.add_parser("datasets", help="list the data sets and whether they are present").set_defaults(
        run=_datasets
    )
    fit = sub.add_parser(
        "fit",
        help="fit an MLP BNN to a data set and write its posterior",
        description="Fit an MLP BNN to a data set; write posterior.pt, posterior.nc, metrics.json.",
        epilog=_fit_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    fit.add_argument("data", help=f"one of {', '.join(_SKLEARN)} or uci:<name>")
    fit.add_argument("--split", type=int, default=0, help="UCI split (default 0)")
    fit.add_argument(
        "--hidden", type=int, nargs="*", default=[50], help="hidden widths (default 50)"
    )
    fit.add_argument("--activation", default="tanh")
    fit.add_argument("--prior-scale", type=float, default=1.0)
    fit.add_argument(
        "--fan-in", action="store_true", help="divide weight prior scales by sqrt(fan_in)"
    )
    fit.add_argument(
        "--noise", type=float, default=0.5, help="Gaussian noise sd (standardised units)"
    )
    fit.add_argument("--temperature", type=float, default=1.0)
    fit.add_argument(
        "--backend", default="nuts", help=f"one of {', '.join(_BACKEND_NAMES)} (default nuts)"
    )
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument("--out", default="outputs/fit")
    fit.add_argument("--quiet", action="store_true", help="no progress bar")
    fit.add_argument(
        "--checkpoint", help="write the run's state to this file (periodically and when it stops)"
    )
    fit.add_argument(
        "--checkpoint-every", type=int, help="steps between checkpoints (default: every 5 min)"
    )
    fit.add_argument(
        "--resume", help="continue the run saved in this checkpoint (same data and options)"
    )
    group = fit.add_argument_group("backend options (each applies only to the backends in [...])")
    for flag, (_, backends, kwargs) in _OPTIONS.items():
        kwargs = dict(kwargs)
        applies = f"[{', '.join(backends)}]"
        kwargs["help"] = f"{applies} {kwargs.get('help', '')}".rstrip()
        group.add_argument(flag, default=argparse.SUPPRESS, **kwargs)
    fit.set_defaults(run=_fit)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``bayesdl`` command."""
    args = _parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
