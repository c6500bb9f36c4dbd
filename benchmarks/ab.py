"""Before-and-after runs of the library, variants interleaved, each run in its own process.

A benchmark script that compares variants (an older behaviour patched back in against the
library as it is) calls :func:`main` with its variants and a ``run_variant(variant, args)``
returning one run's figures. Each run is a child process of the script (a fresh dynamo cache,
inductor's on-disk cache kept and filled by one unrecorded run of every variant first), the
variants alternate within each repeat, and the rows, the median seconds per variant and the
command go to ``--out`` as JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

RunVariant = Callable[[str, argparse.Namespace], dict[str, Any]]


def main(
    script: str,
    parser: argparse.ArgumentParser,
    variants: Sequence[str],
    run_variant: RunVariant,
    argv: Sequence[str] | None = None,
) -> None:
    """Parse ``argv`` with ``parser`` (which defines ``--out``; ``--repeats`` and the child's
    hidden ``--variant`` are added here), then run one variant (in a child) or all of them,
    interleaved, each in a child."""
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats")
    parser.add_argument("--variant", choices=variants, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.variant:  # a child process: one run, its row on stdout
        print(json.dumps(run_variant(args.variant, args)))
        return
    child_args = list(sys.argv[1:] if argv is None else argv)

    def child(variant: str) -> dict[str, Any]:
        command = [sys.executable, script, *child_args, "--variant", variant]
        out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        return json.loads(out.strip().splitlines()[-1])

    for variant in variants:  # not recorded: fills inductor's cache with every variant's graphs
        child(variant)
    rows = []
    for repeat in range(args.repeats):
        for variant in variants:
            rows.append({"repeat": repeat, **child(variant)})
            print(json.dumps(rows[-1]), flush=True)
    medians = {
        v: statistics.median(r["seconds"] for r in rows if r["variant"] == v) for v in variants
    }
    print(json.dumps({"median_seconds": medians}))
    result = {
        "machine": platform.processor() or platform.machine(),
        "command": " ".join([Path(script).name, *child_args]),
        "settings": {k: v for k, v in vars(args).items() if k != "variant"},
        "rows": rows,
        "median_seconds": medians,
    }
    Path(args.out).write_text(json.dumps(result, indent=1))
