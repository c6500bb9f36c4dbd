"""The No-U-Turn Sampler (Hoffman & Gelman 2014) as a bayesdl backend."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from bayesdl._checks import check_count, check_probability

from .base import Backend, Callback
from .pyro_engine import run_pyro_nuts

if TYPE_CHECKING:  # pragma: no cover
    from torch import Tensor

    from bayesdl import Posterior
    from bayesdl.models import BNN

__all__ = ["NUTS"]

_ENGINES = ("pyro",)
_MASSES = ("diag", "dense")


class NUTS(Backend):
    """No-U-Turn Hamiltonian Monte Carlo on the full data set.

    Warmup adapts the step size by dual averaging towards ``target_accept`` and the mass
    matrix (diagonal or dense) from windowed variance estimates, as Stan does; the warmup draws
    are discarded.

    Parameters
    ----------
    chains
        Number of independent chains.
    warmup
        Adaptation steps per chain (discarded).
    draws
        Kept draws per chain.
    target_accept
        Target mean acceptance probability of the step-size adaptation, in (0, 1).
    max_tree_depth
        Maximum number of trajectory doublings (at most ``2**max_tree_depth - 1`` leapfrog
        steps per draw).
    mass
        ``"diag"`` or ``"dense"`` mass-matrix adaptation.
    engine
        ``"pyro"``: Pyro's NUTS on ``bnn.model``, one kernel per chain, stepped in lockstep.
    jit
        Compile the potential energy with TorchScript (Pyro's ``jit_compile``); without it,
        Pyro re-runs the model at every gradient and takes minutes per hundred draws even for
        small networks.

    Examples
    --------
    >>> post = NUTS(chains=2, warmup=100, draws=100).fit(bnn, x, y, seed=0)  # doctest: +SKIP
    """

    name = "nuts"

    def __init__(
        self,
        chains: int = 4,
        warmup: int = 1000,
        draws: int = 1000,
        target_accept: float = 0.8,
        max_tree_depth: int = 10,
        mass: str = "diag",
        engine: str = "pyro",
        jit: bool = True,
    ) -> None:
        self.chains = check_count("chains", chains)
        self.warmup = check_count("warmup", warmup, minimum=0)
        self.draws = check_count("draws", draws)
        self.target_accept = check_probability("target_accept", target_accept)
        self.max_tree_depth = check_count("max_tree_depth", max_tree_depth)
        if mass not in _MASSES:
            raise ValueError(f"mass: must be one of {_MASSES}, got {mass!r}")
        self.mass = mass
        if engine not in _ENGINES:
            raise ValueError(f"engine: must be one of {_ENGINES}, got {engine!r}")
        self.engine = engine
        self.jit = bool(jit)

    def fit(
        self,
        bnn: BNN,
        x: Tensor,
        y: Tensor,
        *,
        seed: int | None = None,
        progress: bool = True,
        callbacks: Sequence[Callback] = (),
        init_theta: Tensor | None = None,
        num_data: int | None = None,
    ) -> Posterior:
        """Sample the posterior of ``bnn`` given ``(x, y)``.

        Parameters
        ----------
        bnn
            The model.
        x, y
            Training inputs and targets (checked before any sampling).
        seed
            Seed; chain ``c`` depends only on ``seed`` and ``c``.
        progress
            Show a progress bar.
        callbacks
            Called with a :class:`~bayesdl.inference.base.StepEvent` after every iteration.
        init_theta
            Initial unconstrained parameters ``(chains, D)``; default: draws from the prior.
        num_data
            Size of the full data set if ``(x, y)`` is a subsample (scales the likelihood).

        Returns
        -------
        Posterior
            ``(chains, draws, D)`` draws with ``sample_stats``; marked partial after Ctrl-C.
        """
        x, y = bnn.check_data(x, y)
        if init_theta is None:
            init_theta = bnn.init_theta(self.chains, seed)
        elif not isinstance(init_theta, torch.Tensor) or tuple(init_theta.shape) != (
            self.chains,
            bnn.num_params,
        ):
            raise ValueError(
                f"init_theta: expected a tensor of shape ({self.chains}, {bnn.num_params}), got "
                f"{getattr(init_theta, 'shape', type(init_theta).__name__)}"
            )
        return run_pyro_nuts(
            bnn,
            x,
            y,
            init_theta.to(dtype=bnn.dtype, device=bnn.device),
            warmup=self.warmup,
            draws=self.draws,
            target_accept=self.target_accept,
            max_tree_depth=self.max_tree_depth,
            dense_mass=self.mass == "dense",
            jit=self.jit,
            num_data=num_data,
            seed=seed,
            progress=progress,
            callbacks=callbacks,
            attrs={"inference": "nuts", "engine": self.engine, "warmup": self.warmup},
        )
