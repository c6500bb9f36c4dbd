r"""The Stein update direction :math:`\phi` of SVGD and repulsive ensembles, one step's worth.

:class:`SteinDirection` maps the particles ``theta`` ``(P, D)``, a minibatch and the annealing
factor to :math:`\phi` ``(P, D)``; the backend hands :math:`-\phi` to its optimiser as the
gradient. It holds only the settings (kernel, update rule, noise); the random stream of the
Langevin noise is passed in (the run keeps it in its state).

Update directions (``s_j`` is the score :math:`\nabla \log p(\cdot_j \mid D)` of the tempered
posterior, with the minibatch log-likelihood scaled by ``num_data / B``; :math:`\gamma_t` an
optional annealing factor on the driving term):

* **w-SVGD** (Liu & Wang 2016), a weight-space kernel:
  :math:`\phi_i = \frac1P \sum_j [\gamma_t\, k(w_j, w_i)\, s_j + \nabla_{w_j} k(w_j, w_i)]`.
* **f-SVGD** (Wang et al. 2019; D'Angelo, Fortuin & Wenzel 2021), a function-space kernel on
  the particles' outputs :math:`f_i = f(X_M; w_i)` at a measurement set :math:`X_M` (the
  minibatch, plus optional extra inputs): the same update is formed in function space, with the
  function-space score :math:`\nabla_f \log p(y_B \mid f) \cdot \frac{N}{B} +
  \nabla_f \log p_{\mathrm{prior}}(f)`, and pulled back to the weights with one
  vector-Jacobian product, :math:`\phi_i = J_i^\top \phi_f(f_i)`,
  :math:`J_i = \partial f_i / \partial w_i`. The functional prior's score is estimated with
  SSGE (:func:`~.scores.ssge_score`) from the functions of fresh prior draws at
  :math:`X_M` (or given exactly, e.g. :class:`~.scores.GaussianProcessScore`).
  The weight prior enters only through this functional prior.
* **h-SVGD**, a :class:`~.stein_kernels.Hybrid` kernel: the weight-space score
  smoothed by the driving kernel, plus the repulsion of the composed function-space kernel
  :math:`k_f(f(w_j), f(w_i))`, differentiated in :math:`w_j` through particle *j*'s Jacobian:
  :math:`\phi_i = \frac1P \sum_j [\gamma_t\, k_w(w_j, w_i)\, s_j
  + J_j^\top \nabla_{f_j} k_f(f_j, f_i)]`. Not a KL gradient flow; see ``Hybrid``.
* **deep ensemble** (``kernel=None``): :math:`\phi_i = \gamma_t s_i`, independent MAP fits.
* **WGD / repulsive ensembles** (D'Angelo & Fortuin 2021), ``update="wgd-kde"|"wgd-sge"|
  "wgd-ssge"``: :math:`\phi_i = \gamma_t s_i - \widehat{\nabla \log \rho}(\cdot_i)`, the
  Wasserstein gradient flow of the KL divergence with the particles' density gradient estimated
  by a kernel density estimate, the Stein gradient estimator or SSGE
  (:mod:`~.scores`), in weight space or, with a function-space kernel, in
  function space (fWGD, pulled back through :math:`J_i`).
* **stochastic SVGD** (``stochastic=True``, Gallego & Insua 2018): Langevin noise with the
  kernel matrix as diffusion, :math:`\xi = \sqrt{2 / (P\,\mathrm{lr})}\,K^{1/2}\eta`,
  :math:`\eta \sim \mathcal N(0, I_{P \times D})`, added to :math:`\phi`; after a plain SGD
  step the particles move by :math:`\mathrm{lr}\,\phi + \sqrt{2\,\mathrm{lr}/P}\,K^{1/2}\eta`.
  The drift of SVGD is :math:`D\nabla\log\Pi + \nabla\cdot D` with :math:`D = K/P` and
  :math:`\Pi = \prod_i p(w_i \mid D)`, so with this noise :math:`\Pi` is invariant for any
  finite ``P`` (as ``lr -> 0``), provided the bandwidth is fixed: a median-heuristic bandwidth
  depends on all the particles, which the divergence term ignores. D'Angelo et al.'s code
  draws independent noise per pair,
  :math:`\sum_j \sqrt{2 k_{ij}/(P\,\mathrm{lr})}\,\eta_{ij}`, which has the right variance
  per particle but not the cross-particle correlation; here the matrix square root is used.
  With ``kernel=None`` the noise is :math:`\sqrt{2/\mathrm{lr}}\,\eta`: parallel SGLD.
  Exact for weight-space kernels; for function-space kernels the noise is drawn in function
  space and pulled back, as in D'Angelo et al., which is a heuristic.

References
----------
Liu & Wang, "Stein Variational Gradient Descent", NeurIPS 2016.
Wang, Ren, Zhu & Zhang, "Function Space Particle Optimization for Bayesian Neural Networks",
ICLR 2019.
Gallego & Insua, "Stochastic Gradient MCMC with Repulsive Forces", 2018.
D'Angelo, Fortuin & Wenzel, "On Stein Variational Neural Network Ensembles", 2021.
D'Angelo & Fortuin, "Repulsive Deep Ensembles are Bayesian", NeurIPS 2021.
D'Angelo & Fortuin, "Annealed Stein Variational Gradient Descent", AABI 2021.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .blocks import ParticleBlocks
from .scores import kde_score, sge_score, ssge_score
from .settings import uses_functions
from .stein_kernels import Hybrid, Kernel, KernelMatrix
from .targets import BNNTarget, DensityTarget, FunctionStreams, pull_back, pull_back_pairs

__all__ = ["SteinDirection", "matrix_sqrt", "standard_normal"]

Target = DensityTarget | BNNTarget


@dataclass(frozen=True)
class SteinDirection:
    """The update direction of one SVGD setting (see the module docstring for the rules).

    Attributes
    ----------
    kernel
        A Kernel (its ``space`` says where it acts), a Hybrid, or ``None`` (deep ensemble).
    update
        ``"svgd"``, or a WGD update ``"wgd-kde"``, ``"wgd-sge"``, ``"wgd-ssge"``.
    stochastic
        Add the Langevin noise of stochastic SVGD (its scale depends on ``lr``).
    lr
        The learning rate the noise is calibrated for.
    ssge_eta
        Ridge of the SGE/SSGE estimates of the particles' density gradient.
    """

    kernel: Kernel | Hybrid | None
    update: str = "svgd"
    stochastic: bool = False
    lr: float = 1e-2
    ssge_eta: float = 0.01

    @classmethod
    def of(cls, svgd: Any) -> SteinDirection:
        """The direction of an :class:`~.svgd.SVGD` backend's settings."""
        return cls(svgd.kernel, svgd.update, svgd.stochastic, svgd.lr, svgd.ssge_eta)

    def __call__(
        self,
        target: Target,
        theta: Tensor,
        batch: Any,
        gamma: float,
        noise: torch.Generator,
        streams: FunctionStreams | None = None,
        blocks: ParticleBlocks | None = None,
    ) -> tuple[Tensor, dict[str, Any]]:
        """The update ``phi`` ``(P, D)`` for the particles ``theta``, and step statistics
        (``bandwidth``, and ``lp`` for weight-space scores).

        ``noise`` drives the Langevin noise; ``streams`` the measurement and prior draws of
        function-space kernels (:meth:`BNNTarget.streams`). In a run whose particles are
        shared over processes, ``theta`` is this process's block and so is ``phi``;
        ``blocks`` gathers what the kernel needs of the others (:mod:`.blocks`), and ``lp``
        is that of all particles."""
        blocks = ParticleBlocks(theta.shape[0]) if blocks is None else blocks
        kernel = self.kernel
        if isinstance(kernel, Hybrid):
            return self._hybrid(target, theta, batch, gamma, noise, streams, blocks)
        if isinstance(kernel, Kernel) and kernel.space == "function":
            return self._function_space(target, theta, batch, gamma, noise, streams, blocks)
        score, lp = target.weight_score(theta, batch)
        every, score, lp = blocks.gather(theta, score, lp)
        info: dict[str, Any] = {"lp": lp, "bandwidth": math.nan}
        if kernel is None:
            phi = gamma * score
            if self.stochastic:
                phi = phi + math.sqrt(2.0 / self.lr) * standard_normal(every, noise)
            return blocks.own(phi), info
        phi, info["bandwidth"] = self.combine(kernel, every, score, gamma, noise)
        return blocks.own(phi), info

    def combine(
        self, kernel: Kernel, x: Tensor, score: Tensor, gamma: float, noise: torch.Generator
    ) -> tuple[Tensor, float]:
        """SVGD or WGD direction in the space of ``x`` ``(P, M)`` given the score there,
        and the kernel's bandwidth (NaN for WGD)."""
        p = x.shape[0]
        if self.update == "svgd":
            km = kernel(x)
            phi = (gamma * (km.value @ score) + km.repulsion) / p
            if self.stochastic:
                phi = phi + self.langevin(km, x, noise)
            return phi, km.bandwidth
        if self.update == "wgd-kde":
            density_score = kde_score(x, kernel=kernel)
        elif self.update == "wgd-sge":
            density_score = sge_score(x, kernel=kernel, eta=self.ssge_eta)
        else:
            density_score = ssge_score(x, x, kernel=kernel, eta=self.ssge_eta)
        return gamma * score - density_score, math.nan

    def langevin(self, km: KernelMatrix, x: Tensor, noise: torch.Generator) -> Tensor:
        r"""Stochastic SVGD's noise :math:`\sqrt{2 / (P\,\mathrm{lr})}\,K^{1/2}\eta`."""
        p = x.shape[0]
        eta = standard_normal(x, noise)
        return math.sqrt(2.0 / (p * self.lr)) * (matrix_sqrt(km.value) @ eta)

    def _function_space(
        self,
        target: Target,
        theta: Tensor,
        batch: Any,
        gamma: float,
        noise: torch.Generator,
        streams: FunctionStreams | None,
        blocks: ParticleBlocks,
    ) -> tuple[Tensor, dict[str, Any]]:
        assert isinstance(target, BNNTarget) and isinstance(self.kernel, Kernel)
        assert streams is not None
        fun = target.functions(theta, batch, streams)
        every = fun.with_outputs(*blocks.gather(fun.f.detach())) if blocks.shared else fun
        score = target.function_score(every, batch, streams)
        phi_f, h = self.combine(self.kernel, every.flat, score, gamma, noise)
        with torch.enable_grad():
            phi = pull_back(fun, blocks.own(phi_f))
        return phi, {"bandwidth": h}

    def _hybrid(
        self,
        target: Target,
        theta: Tensor,
        batch: Any,
        gamma: float,
        noise: torch.Generator,
        streams: FunctionStreams | None,
        blocks: ParticleBlocks,
    ) -> tuple[Tensor, dict[str, Any]]:
        assert isinstance(self.kernel, Hybrid)
        driving, repulsive = self.kernel.driving, self.kernel.repulsion
        score, lp = target.weight_score(theta, batch)
        fun = None
        if uses_functions(self.kernel):
            assert isinstance(target, BNNTarget) and streams is not None
            fun = target.functions(theta, batch, streams)
            every, score, lp, f = blocks.gather(theta, score, lp, fun.f.detach())
            flat = f.flatten(1)
        else:
            every, score, lp = blocks.gather(theta, score, lp)

        def space_of(kernel: Kernel) -> Tensor:
            return flat if kernel.space == "function" else every

        kd = driving(space_of(driving))
        kr = kd if repulsive is driving else repulsive(space_of(repulsive))
        p = every.shape[0]
        if repulsive.space == "function":
            # sum_j grad_{w_j} k_f(f(w_j), f(w_i)) = sum_j J_j^T grad_{f_j} k_f(f_j, f_i),
            # each process summing over its own particles j
            grads = repulsive.pair_gradients(flat, kr.bandwidth)
            with torch.enable_grad():
                repulsion = pull_back_pairs(fun, blocks.columns(grads))  # type: ignore[arg-type]
            repulsion = blocks.sum(repulsion)
        else:
            repulsion = kr.repulsion
        phi = (gamma * (kd.value @ score) + repulsion) / p
        if self.stochastic:
            phi = phi + self.langevin(kd, every, noise)
        return blocks.own(phi), {"lp": lp, "bandwidth": kr.bandwidth}


def matrix_sqrt(k: Tensor) -> Tensor:
    """Symmetric square root of a PSD matrix (eigenvalues clamped at 0)."""
    values, vectors = torch.linalg.eigh(k)
    return (vectors * values.clamp_min(0.0).sqrt()) @ vectors.T


def standard_normal(x: Tensor, generator: torch.Generator) -> Tensor:
    """Standard normal draws of ``x``'s shape, dtype and device from ``generator``."""
    return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
