"""VI through Pyro: ``Trace_ELBO`` on ``bnn.model`` with a diagonal-normal autoguide.

The reference path of :class:`~bayesdl.inference.VI` (``engine="pyro"``): the ELBO is Pyro's
own, computed by ``pyro.infer.Trace_ELBO`` on the BNN's Pyro model, the computation
``pyro.infer.SVI`` performs at each step. The guide is ``AutoDiagonalNormal``, a mean-field
Gaussian over the packed unconstrained latents, the same family as the functional path.
Parameters are module-local
(``pyro.settings module_local_params``): nothing touches Pyro's global parameter store.

KL annealing multiplies the log density of every site except the observed ``"y"``, in model
and guide alike, by :math:`\\beta_t`, which scales exactly the KL term.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pyro
from pyro.infer.autoguide import AutoDiagonalNormal
from pyro.infer.autoguide.initialization import init_to_value
from pyro.poutine.messenger import Messenger
from torch import Tensor

from .guides import MeanField

if TYPE_CHECKING:  # pragma: no cover
    from bayesdl.models import BNN

__all__ = ["PyroTrainer"]


class _ScaleLatents(Messenger):
    """Multiply the log density of every sample site but the observations by ``weight``."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = 1.0

    def _process_message(self, msg: dict[str, Any]) -> None:
        if msg["type"] == "sample" and msg["name"] != "y":
            msg["scale"] = self.weight * msg["scale"]


class PyroTrainer:
    """Pyro's ELBO and guide for one VI run.

    Parameters
    ----------
    bnn
        The model.
    family
        The initial mean-field guide (its means and scales seed the autoguide's).
    x, y
        One minibatch, used once to trace the model.
    num_data
        Size of the data set.
    num_particles
        Particles of ``Trace_ELBO`` (Pyro evaluates them one after another).
    """

    def __init__(
        self,
        bnn: BNN,
        family: MeanField,
        x: Tensor,
        y: Tensor,
        num_data: int,
        num_particles: int,
    ) -> None:
        self.bnn = bnn
        self.num_data = num_data
        init = {k: v.detach() for k, v in bnn.unravel(family.loc.detach()).items()}
        self._scaler = _ScaleLatents()
        self._elbo = pyro.infer.Trace_ELBO(num_particles=num_particles)
        with pyro.settings.context(module_local_params=True):
            guide = AutoDiagonalNormal(bnn.model, init_loc_fn=init_to_value(values=init))
            guide(x, y, num_data)  # trace the model once to lay out the latents
            order = [name for name, _ in guide.prototype_trace.iter_stochastic_nodes()]
            if order != list(bnn.layout.names):
                raise RuntimeError(
                    f"the autoguide packs the sites as {order}, the BNN as "
                    f"{list(bnn.layout.names)}; the two layouts must agree"
                )
            guide.scale = pyro.nn.PyroParam(family.scale().detach().clone(), guide.scale_constraint)
        self.guide = guide

    def parameters(self) -> list[Tensor]:
        """The guide's unconstrained parameters (for a torch optimiser)."""
        with pyro.settings.context(module_local_params=True):
            return list(self.guide.parameters())

    def loss(self, x: Tensor, y: Tensor, beta: float) -> tuple[Tensor, float]:
        """Negative annealed ELBO (differentiable) and the ELBO estimate at ``beta``."""
        self._scaler.weight = beta
        with pyro.settings.context(module_local_params=True), self._scaler:
            loss = self._elbo.differentiable_loss(self.bnn.model, self.guide, x, y, self.num_data)
        return loss, -float(loss.detach())

    def family(self) -> MeanField:
        """The current guide as a :class:`MeanField` over ``theta``."""
        with pyro.settings.context(module_local_params=True):
            return MeanField(self.guide.loc.detach(), self.guide.scale.detach())
