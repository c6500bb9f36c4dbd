"""Inference backends: each takes a BNN and data and returns a :class:`~bayesdl.Posterior`.

Backends are named in one registry, so ``bayesdl.inference.get("nuts")`` (and the CLI) can
find them.
"""

from .base import Backend, Callback, NonFiniteError, StepEvent
from .health import ConvergenceWarning, DensityErrorWarning
from .mcmc.hmc import HMC
from .mcmc.nuts import NUTS
from .particles.svgd import SVGD
from .sgmcmc.samplers import SGHMC, SGLD
from .sgmcmc.schedules import Constant, Cyclical
from .vi.sparse.posterior import SparsePosterior
from .vi.sparse.ssvi import SSVI
from .vi.vi import VI

#: Every backend by name.
BACKENDS: dict[str, type[Backend]] = {
    "hmc": HMC,
    "nuts": NUTS,
    "sghmc": SGHMC,
    "sgld": SGLD,
    "ssvi": SSVI,
    "svgd": SVGD,
    "vi": VI,
}


def get(name: str) -> type[Backend]:
    """The backend class registered as ``name`` (case-insensitive)."""
    key = name.lower() if isinstance(name, str) else name
    if key not in BACKENDS:
        raise ValueError(f"name: unknown backend {name!r}; available: {sorted(BACKENDS)}")
    return BACKENDS[key]


__all__ = [
    "BACKENDS",
    "HMC",
    "NUTS",
    "SGHMC",
    "SGLD",
    "SSVI",
    "SVGD",
    "VI",
    "Backend",
    "Callback",
    "Constant",
    "ConvergenceWarning",
    "Cyclical",
    "DensityErrorWarning",
    "NonFiniteError",
    "SparsePosterior",
    "StepEvent",
    "get",
]
