"""``compile="auto"`` on a 64-chain BNN before and after two changes of issue 18, same process
settings, variants interleaved.

* ``before``: the eager probe lasts until 1,000 lockstep leapfrog steps (four transitions at
  depth 8), and every compiled leaf runs the U-turn checks against all ``K`` checkpoint slots
  and writes its checkpoint (the masks discard what does not matter);
* ``early``: the probe ends after the first transition when no loop can be chosen and the
  projection already reaches the threshold (``MCMCAlgorithm._probed``);
* ``both`` (the library now): also, with two leaves per call, the even leaf skips the U-turn
  checks and the odd leaf the checkpoint write (``trajectory.nuts_leaves``).

The older behaviours are restored by patching the module attributes in this process only.
Each variant runs in its own process (a fresh dynamo cache; inductor's on-disk cache kept),
through ``ab.py``, which now starts with one unrecorded run of each variant
(``results/auto_probe_ab.json`` was measured before it did).

    BAYESDL_DATA=../shared/data OMP_NUM_THREADS=1 python benchmarks/auto_probe_ab.py \\
        --transitions 30 --repeats 3
"""

from __future__ import annotations

import argparse

import ab

VARIANTS = ("before", "early", "both")


def all_checks_leaves(sub, signed_step, energy0, u_leaves, slots, closes, active, *rest, **kw):
    """``nuts_leaves`` as it was: every leaf checks all slots and writes its checkpoint."""
    from bayesdl.inference.mcmc import trajectory

    for i in range(u_leaves.shape[1]):
        new = trajectory.nuts_leaf(
            sub, signed_step, energy0, u_leaves[:, i], slots[i], closes[i], *rest, **kw
        )
        sub = new if i == 0 else trajectory._keep(active[i], new, sub)
    return sub


def run_variant(variant: str, args: argparse.Namespace) -> dict:
    """One whole ``NUTS(compile="auto")`` run of ``variant`` in this process."""
    import hmc_vs_peers
    import torch

    from bayesdl.inference.mcmc import nuts, run

    torch.set_num_threads(1)
    if variant == "before":
        run.MCMCAlgorithm._probed = lambda self, done, leaves, per_transition: (
            done >= run.AUTO_PROBE or leaves >= run.AUTO_PROBE_LEAVES or done == self.total
        )
    if variant in ("before", "early"):
        nuts.nuts_leaves = all_checks_leaves
    data = hmc_vs_peers.load("diabetes")
    bnn = hmc_vs_peers.make_bnn(data.x_train.shape[1])
    row = hmc_vs_peers.run_bayesdl(
        bnn, data, args.chains, args.transitions, args.transitions, 8, compile="auto", seed=0
    )
    return {
        "variant": variant,
        "seconds": row.seconds,
        "chain_gradients": row.gradients,
        "first_iteration_s": row.extra["first_iteration_s"],
        "compiled": row.extra["compiled"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transitions", type=int, default=30, help="warmup = draws = this")
    parser.add_argument("--chains", type=int, default=64)
    parser.add_argument("--out", default="benchmarks/results/auto_probe_ab.json")
    ab.main(__file__, parser, VARIANTS, run_variant)


if __name__ == "__main__":
    main()
