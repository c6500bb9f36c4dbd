"""Every backend keeps the backend contract (:class:`bayesdl.testing.BackendContract`).

Each class supplies the backend with settings small enough for a test and inherits the checks.
"""

from __future__ import annotations

from bayesdl.inference import HMC, NUTS, SGHMC, SGLD, SSVI, SVGD, VI, Backend
from bayesdl.testing import BackendContract


class TestNUTSContract(BackendContract):
    sampling_stage = "sampling"

    def make_backend(self) -> Backend:
        return NUTS(chains=2, warmup=4, draws=6)


class TestHMCContract(BackendContract):
    sampling_stage = "sampling"

    def make_backend(self) -> Backend:
        return HMC(chains=2, warmup=4, draws=6, num_steps=3)


class TestSGHMCContract(BackendContract):
    sampling_stage = "sampling"

    def make_backend(self) -> Backend:
        return SGHMC(chains=2, lr=1e-3, burn_in=4, draws=6, thin=1, batch_size=8)


class TestSGLDContract(BackendContract):
    sampling_stage = "sampling"

    def make_backend(self) -> Backend:
        return SGLD(chains=2, lr=1e-3, burn_in=4, draws=6, thin=1, batch_size=8)


class TestSVGDContract(BackendContract):
    def make_backend(self) -> Backend:
        return SVGD(particles=3, steps=8, batch_size=8)


class TestVIContract(BackendContract):
    def make_backend(self) -> Backend:
        return VI(steps=8, draws=4, batch_size=8)


class TestSSVIContract(BackendContract):
    def make_backend(self) -> Backend:
        return SSVI(density=0.5, steps=8, update_every=3, draws=4)
