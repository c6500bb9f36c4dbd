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


def _fit(args: argparse.Namespace) -> int:
    from bayesdl import likelihoods, priors
    from bayesdl.inference import get
    from bayesdl.models import BNN, MLP

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
    backend = get(args.backend)(chains=args.chains, warmup=args.warmup, draws=args.draws)
    post = backend.fit(bnn, ds.x_train, ds.y_train, seed=args.seed, progress=not args.quiet)
    metrics = post.evaluate(ds.x_test, ds.y_test, **({} if classifier else {"y_scale": ds.y_scale}))
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    post.save(out / "posterior.pt")
    post.to_arviz(x=ds.x_test, y=ds.y_test).to_netcdf(str(out / "posterior.nc"))
    (out / "metrics.json").write_text(json.dumps({"data": args.data, **metrics}, indent=2))
    print(json.dumps(metrics, indent=2))
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bayesdl", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("backends", help="list the inference backends").set_defaults(run=_backends)
    sub.add_parser("datasets", help="list the data sets and whether they are present").set_defaults(
        run=_datasets
    )
    fit = sub.add_parser("fit", help="fit an MLP BNN to a data set and write its posterior")
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
    fit.add_argument("--backend", default="nuts")
    fit.add_argument("--chains", type=int, default=2)
    fit.add_argument("--warmup", type=int, default=200)
    fit.add_argument("--draws", type=int, default=200)
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument("--out", default="outputs/fit")
    fit.add_argument("--quiet", action="store_true", help="no progress bar")
    fit.set_defaults(run=_fit)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``bayesdl`` command."""
    args = _parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
