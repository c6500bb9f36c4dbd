"""SVGD's settings checked against each other and against the model.

The kernel a string names (:func:`resolve_kernel`), whether a kernel compares functions
(:func:`uses_functions`), which update rules, noise and optimisers go together
(:func:`check_combination`), and what a BNN must offer a function-space kernel
(:func:`check_model`). Every error names the argument at fault.
"""

from __future__ import annotations

import types
from typing import Any

import torch

from bayesdl._checks import check_count, check_positive
from bayesdl.likelihoods import Categorical
from bayesdl.models import BNN

from .stein_kernels import RBF, Hybrid, Kernel

__all__ = [
    "FUNCTION_SPACES",
    "KERNEL_NAMES",
    "UPDATES",
    "KernelLike",
    "check_combination",
    "check_density_run",
    "check_model",
    "check_prior_score",
    "resolve_kernel",
    "scores_functions",
    "stable_repr",
    "uses_functions",
]

#: The kernels a string names.
KERNEL_NAMES = ("weight", "function", "hybrid")
#: The update rules (:mod:`.directions`).
UPDATES = ("svgd", "wgd-kde", "wgd-sge", "wgd-ssge")
#: What a function-space kernel compares for a classifier.
FUNCTION_SPACES = ("logits", "probs")

KernelLike = str | Kernel | Hybrid | None


def resolve_kernel(kernel: KernelLike) -> Kernel | Hybrid | None:
    """The kernel ``kernel`` names: ``"weight"``/``"function"`` an RBF in that space,
    ``"hybrid"`` a weight-space driving and function-space repulsive RBF; a kernel or ``None``
    as it is."""
    if kernel is None or isinstance(kernel, (Kernel, Hybrid)):
        return kernel
    if kernel == "weight":
        return RBF("weight")
    if kernel == "function":
        return RBF("function")
    if kernel == "hybrid":
        return Hybrid(RBF("weight"), RBF("function"))
    raise ValueError(
        f"kernel: expected one of {KERNEL_NAMES}, a Kernel, a Hybrid or None, got {kernel!r}"
    )


def uses_functions(kernel: Kernel | Hybrid | None) -> bool:
    """Whether ``kernel`` (or either part of a Hybrid) compares the particles' functions."""
    if isinstance(kernel, Hybrid):
        return "function" in (kernel.driving.space, kernel.repulsion.space)
    return isinstance(kernel, Kernel) and kernel.space == "function"


def scores_functions(kernel: Kernel | Hybrid | None) -> bool:
    """Whether the update's score is taken in function space (a function-space Kernel)."""
    return isinstance(kernel, Kernel) and kernel.space == "function"


def check_combination(
    kernel: Kernel | Hybrid | None,
    update: str,
    stochastic: bool,
    optimizer: type,
    optimizer_kwargs: dict[str, Any],
) -> None:
    """``ValueError`` naming ``update`` or ``stochastic`` for settings that do not go together."""
    if update != "svgd":
        if kernel is None:
            raise ValueError(
                f"update: {update!r} needs a kernel to estimate the density gradient; "
                "kernel=None is a plain deep ensemble"
            )
        if isinstance(kernel, Hybrid):
            raise ValueError(
                f"update: {update!r} is defined for a weight- or function-space kernel, "
                "not a Hybrid"
            )
        if stochastic:
            raise ValueError(
                "stochastic: Langevin noise applies to update='svgd' only (WGD already "
                "accounts for the entropy through its density-gradient estimate)"
            )
    if stochastic:
        extra = [k for k in ("momentum", "weight_decay", "dampening") if optimizer_kwargs.get(k, 0)]
        if optimizer is not torch.optim.SGD or extra or optimizer_kwargs.get("nesterov"):
            raise ValueError(
                "stochastic: the Langevin noise is calibrated for plain SGD; use "
                "optimizer=torch.optim.SGD without momentum or weight decay (the name "
                "'sgd' means momentum 0.9: add optimizer_kwargs={'momentum': 0})"
            )


def check_density_run(
    kernel: Kernel | Hybrid | None, batch_size: int | None, log_density: object
) -> None:
    """What ``SVGD.sample`` on a bare log density needs: a callable, a weight-space kernel (no
    functions to compare) and no minibatches (no data); errors name the argument."""
    if not callable(log_density):
        raise TypeError(f"log_density: expected a callable, got {type(log_density).__name__}")
    if uses_functions(kernel):
        raise ValueError(
            "kernel: function-space kernels need a BNN (its outputs); use fit(bnn, x, y) or "
            "a weight-space kernel"
        )
    if batch_size is not None:
        raise ValueError("batch_size: sample() runs on a log density, it has no data")


def check_prior_score(
    prior_score: object, prior_draws: object, ssge_eta: object, ssge_threshold: object
) -> None:
    """The functional prior's settings: ``"ssge"`` or a callable, at least 2 prior draws (or
    ``None``), a positive ridge, a threshold in (0, 1] (or ``None``); errors name them."""
    if not (prior_score == "ssge" or callable(prior_score)):
        raise ValueError(f"prior_score: expected 'ssge' or a callable, got {prior_score!r}")
    if prior_draws is not None:
        check_count("prior_draws", prior_draws, minimum=2)
    check_positive("ssge_eta", ssge_eta)
    if ssge_threshold is not None:
        check_positive("ssge_threshold", ssge_threshold)
        if ssge_threshold > 1:  # type: ignore[operator]
            raise ValueError(f"ssge_threshold: must lie in (0, 1], got {ssge_threshold}")


def stable_repr(value: object) -> str:
    """``repr`` of a setting; a function or method by its qualified name (no memory address,
    so that a checkpoint's record of the settings matches in another process)."""
    if isinstance(value, (types.FunctionType, types.MethodType, types.BuiltinFunctionType)):
        return f"<{getattr(value, '__module__', '?')}.{value.__qualname__}>"
    return repr(value)


def check_model(kernel: Kernel | Hybrid | None, function_space: str, bnn: BNN) -> None:
    """``ValueError`` naming ``kernel`` or ``function_space`` if ``bnn`` cannot be fitted so.

    Function-space kernels update the network weights only, so the likelihood must have no
    latent sites; comparing class probabilities needs a Categorical likelihood.
    """
    if scores_functions(kernel) and bnn.likelihood.latent_sites():
        raise ValueError(
            "kernel: function-space kernels do not update the likelihood's latent sites "
            f"{sorted(bnn.likelihood.latent_sites())}; fix the noise scale or use a "
            "weight or hybrid kernel"
        )
    if function_space == "probs" and not isinstance(bnn.likelihood, Categorical):
        raise ValueError(
            "function_space: 'probs' compares class probabilities and needs a Categorical "
            f"likelihood, got {type(bnn.likelihood).__name__}"
        )
