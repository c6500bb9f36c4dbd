r"""Sparse subspace variational inference (SSVI; Li, Miao, Qiu & Zhang, ICLR 2024).

SSVI keeps the mean-field guide sparse from the first step to the last: the guide is
:math:`\mathcal N(\mu_k, \sigma_k^2)` on a fixed number of active coordinates of each weight
tensor and exactly :math:`\delta_0` elsewhere, and the ELBO's entropy and KL terms run over the
active coordinates only (:mod:`bayesdl.inference.vi.guides`, :mod:`bayesdl.inference.vi.elbo`).
Training alternates

* optimisation of :math:`(\mu, \rho)` on the active set by the functional VI engine (masked
  coordinates get exactly zero gradient: they enter through ``torch.where``), and
* every ``update_every`` steps, until a fraction ``drop_until`` of training, a remove-then-add
  update of each sparse weight's mask (:mod:`.masks`) with a cosine-decaying drop
  fraction; after that the mask is frozen.

Sparse sites are the weight tensors (sample sites of network parameters with two or more
dimensions) not listed in ``dense_layers``; biases, hyper-latents and likelihood latents stay
dense. The result is a :class:`~.posterior.SparsePosterior`, which saves only the
active coordinates.

Differences from the reference implementation (``ljb121002/SSVI``): a mask update follows the
optimiser step of the same iteration instead of replacing it, so SSVI at density 1 is the same
computation as dense VI; the initial means come from ``init`` (a prior draw by default, its
surviving entries scaled by ``1 / sqrt(density)`` to keep the dense network's pre-activation
scale) rather than from :math:`\mathcal N(0, 0.01^2)`; the initial mask is uniform at random
per sparse weight, as in the paper.

What it reports (``posterior.attrs["ssvi"]``, with the scalar ones also at the top level of
``attrs``): ``density`` per weight (``{name: active / numel}``), ``density_overall``
(active / D), ``stored_params`` and ``stored_params_dense`` (``2 * active`` against
``2 * D``), ``flops_ratio`` (theoretical training FLOPs against dense VI,
:mod:`.cost`), ``mask_updates`` and ``changed`` (coordinates grown per update).
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Sequence
from numbers import Real
from typing import TYPE_CHECKING, Any

import pyro
import torch
from torch import Tensor

from bayesdl._checks import check_count
from bayesdl._seeding import child_seeds

from ..data_parallel import DataShare
from ..elbo import FunctionalELBO
from ..guides import MeanField
from ..linear_layers import probe_linear_layers
from ..records import SEED_MASK, VIState
from ..vi import VI
from .cost import training_flops_ratio
from .masks import GROWTH, REMOVAL, SparseSite, random_mask
from .posterior import SparsePosterior
from .trainer import MaskState, SparseTrainer

if TYPE_CHECKING:  # pragma: no cover
    from bayesdl.models import BNN
    from bayesdl.posterior import Posterior

__all__ = ["SSVI"]


class SSVI(VI):
    """Sparse subspace VI: a mean-field guide on a sparse, evolving set of weights.

    Parameters
    ----------
    density
        Fraction of each sparse weight tensor that is active, in (0, 1].
    update_every
        Steps between mask updates (:math:`\\Delta T`).
    drop_fraction
        Initial drop fraction :math:`\\alpha_0` in [0, 1), cosine-decayed to 0.
    drop_until
        Fraction of the steps after which the mask is frozen, in [0, 1].
    removal
        Removal score: ``"snr_abs"`` (:math:`\\mathbb E|\\theta| / \\mathrm{sd}|\\theta|`),
        ``"abs_mean"`` (:math:`|\\mu|`), ``"snr"`` (:math:`|\\mu|/\\sigma`) or ``"mean_abs"``
        (:math:`\\mathbb E|\\theta|`).
    growth
        ``"grad"`` (largest dense :math:`|\\partial\\mathcal L/\\partial\\mu|`) or
        ``"random"``.
    dense_layers
        Name patterns (:func:`fnmatch.fnmatch`, matched against a parameter's name and its
        module's name) of weights kept dense, such as ``("conv1",)`` for the paper's dense
        first convolution.
    **vi_settings
        Every setting of :class:`~bayesdl.inference.VI` (``steps``, ``lr``, ``optimizer``,
        ``batch_size``, ``num_particles``, ``local_reparam``, ``kl``, ``kl_anneal``,
        ``init``, ``draws``, ...); the engine is the functional one.

    Examples
    --------
    >>> ssvi = SSVI(density=0.1, steps=5000, batch_size=128)
    >>> post = ssvi.fit(bnn, x, y, seed=0)  # doctest: +SKIP
    >>> post.attrs["ssvi"]["stored_params"], post.attrs["ssvi"]["flops_ratio"]  # doctest: +SKIP
    """

    name = "ssvi"

    def __init__(
        self,
        density: float = 0.1,
        update_every: int = 100,
        drop_fraction: float = 0.3,
        drop_until: float = 0.75,
        removal: str = "snr_abs",
        growth: str = "grad",
        dense_layers: Sequence[str] = (),
        **vi_settings: Any,
    ) -> None:
        engine = vi_settings.pop("engine", "functional")
        if engine != "functional":
            raise ValueError(f"engine: SSVI runs on the functional engine only, got {engine!r}")
        super().__init__(**vi_settings)
        self.density = _check_fraction("density", density, low_open=True, high_open=False)
        self.update_every = check_count("update_every", update_every)
        self.drop_fraction = _check_fraction(
            "drop_fraction", drop_fraction, low_open=False, high_open=True
        )
        self.drop_until = _check_fraction("drop_until", drop_until, low_open=False, high_open=False)
        if removal not in REMOVAL:
            raise ValueError(f"removal: must be one of {REMOVAL}, got {removal!r}")
        self.removal = removal
        if growth not in GROWTH:
            raise ValueError(f"growth: must be one of {GROWTH}, got {growth!r}")
        self.growth = growth
        if isinstance(dense_layers, str) or not all(isinstance(p, str) for p in dense_layers):
            raise TypeError(
                f"dense_layers: expected a sequence of name patterns, got {dense_layers!r}"
            )
        self.dense_layers = tuple(dense_layers)

    # ------------------------------------------------------------------ structure
    def sparse_sites(self, bnn: BNN) -> list[SparseSite]:
        """The weights SSVI restricts to a sparse subset, with their active counts.

        Raises
        ------
        ValueError
            If a sparse weight's prior is not factorised (a multivariate prior over filters
            cannot be restricted to a subset: list the weight in ``dense_layers``), or no
            weight is sparse.
        """
        parameters = dict(bnn.net.named_parameters())
        with pyro.validation_enabled(False):
            priors = bnn.site_priors(bnn.unravel(bnn.init_theta(1, seed=0)))
        sites = []
        for spec in bnn.layout.sites:
            if spec.name not in parameters or len(spec.shape) < 2 or not spec.is_real:
                continue
            module = spec.name.rsplit(".", 1)[0] if "." in spec.name else ""
            if any(
                fnmatch.fnmatchcase(spec.name, p) or fnmatch.fnmatchcase(module, p)
                for p in self.dense_layers
            ):
                continue
            if priors[spec.name].event_shape != ():
                raise ValueError(
                    f"dense_layers: the prior of {spec.name!r} "
                    f"({type(priors[spec.name]).__name__}) is not factorised over coordinates, "
                    "so SSVI cannot restrict it to a sparse subset; add it to dense_layers"
                )
            num_active = max(1, round(self.density * spec.numel))
            sites.append(SparseSite(spec.name, bnn.layout.slices[spec.name], num_active))
        if not sites:
            raise ValueError(
                "dense_layers: no weight tensor is left sparse; SSVI needs at least one"
            )
        return sites

    def update_steps(self) -> list[int]:
        """The steps (counted from 1) after which the mask is updated."""
        until = self.drop_until * self.steps
        return [t for t in range(self.update_every, self.steps + 1, self.update_every) if t < until]

    # ------------------------------------------------------------------ VI hooks
    def _check_model(self, bnn: BNN) -> None:
        self.sparse_sites(bnn)

    def _description(self) -> str:
        return f"SSVI (density {self.density:g})"

    def _masked_guide(self, bnn: BNN, family: MeanField, mask_seed: int) -> MeanField:
        """``family`` restricted to the initial random mask (means zeroed outside it).

        The mask is drawn from ``mask_seed``. With ``init="prior"`` the surviving means of each
        sparse weight are scaled by ``1 / sqrt(density)``: a prior draw is scaled for the dense
        fan-in, and without the factor each sparse layer would shrink its pre-activations by
        ``sqrt(density)``, leaving the biases to dominate the initial network (sparse fan-in
        scaling, as in sparse training, Evci et al. 2020).
        """
        generator = torch.Generator().manual_seed(mask_seed)
        sites = self.sparse_sites(bnn)
        mask = random_mask(bnn.num_params, sites, generator).to(family.loc.device)
        with torch.no_grad():
            loc = torch.where(mask, family.loc, 0.0)
            if self.init == "prior":
                for site in sites:
                    if site.density < 1:
                        loc[site.index] /= math.sqrt(site.density)
        return MeanField(loc, family.scale().detach(), mask)

    def mask_record(self, streams: list[int]) -> MaskState:
        # growth="random" draws from its own stream, so the mask stream never touches the
        # ELBO noise (SSVI at density 1 then repeats dense VI exactly)
        seed = child_seeds(streams[SEED_MASK], 1)[0]
        return MaskState(torch.Generator().manual_seed(seed))

    def start_guide(self, bnn: BNN, family: MeanField, state: VIState) -> MeanField:
        return self._masked_guide(bnn, family, state.mask_seed)

    def make_trainer(
        self,
        bnn: BNN,
        family: MeanField,
        elbo: FunctionalELBO,
        num_data: int,
        state: VIState,
        share: DataShare | None = None,
    ) -> SparseTrainer:
        sites = self.sparse_sites(bnn)
        return SparseTrainer(elbo, family, num_data, self, sites, state.sparse, share)

    def final_guide(self, bnn: BNN, family: MeanField, state: VIState) -> MeanField:
        if family.mask is not None:
            return family
        return self._masked_guide(bnn, family, state.mask_seed)

    def _extra_attrs(
        self, bnn: BNN, family: MeanField, state: VIState, x_example: Tensor
    ) -> dict[str, Any]:
        mask = family.mask
        parameters = dict(bnn.net.named_parameters())
        density = {}
        for spec in bnn.layout.sites:
            if spec.name in parameters and len(spec.shape) >= 2:
                density[spec.name] = float(mask[bnn.layout.slices[spec.name]].double().mean())
        layers = probe_linear_layers(bnn.net, x_example)
        active = int(mask.sum())
        changed = state.sparse.changed
        report = {
            "density": density,
            "density_overall": active / bnn.num_params,
            "num_active": active,
            "stored_params": 2 * active,
            "stored_params_dense": 2 * bnn.num_params,
            "flops_ratio": training_flops_ratio(
                layers, density, self.steps, len(self.update_steps())
            ),
            "mask_updates": len(changed),
            "changed": torch.tensor(changed, dtype=torch.long),
            "sparse_sites": [s.name for s in self.sparse_sites(bnn)],
        }
        scalars = {k: report[k] for k in ("density_overall", "stored_params", "flops_ratio")}
        scalars.update(
            density=self.density,
            update_every=self.update_every,
            drop_fraction=self.drop_fraction,
            drop_until=self.drop_until,
            removal=self.removal,
            growth=self.growth,
        )
        return {"ssvi": report, **scalars}

    def _make_posterior(self, theta: Tensor, bnn: BNN, stats: dict, **kwargs: Any) -> Posterior:
        mask = kwargs["attrs"]["variational"]["mask"]
        return SparsePosterior(theta, bnn, stats, mask=mask, **kwargs)


def _check_fraction(name: str, value: object, *, low_open: bool, high_open: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name}: expected a number, got {type(value).__name__}")
    value = float(value)
    low_ok = value > 0 if low_open else value >= 0
    high_ok = value < 1 if high_open else value <= 1
    if not (low_ok and high_ok):
        interval = ("(" if low_open else "[") + "0, 1" + (")" if high_open else "]")
        raise ValueError(f"{name}: must lie in {interval}, got {value}")
    return value
