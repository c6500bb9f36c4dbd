"""VI and SSVI checkpoints: a run stopped anywhere and resumed equals the run never stopped.

The contract (``tests/test_contract.py``) checks resume on a few steps of the default settings;
these runs stop where VI keeps the most state: in the MAP stage of ``init="map"`` (MAP
estimate and its optimiser), in the fit stage with momentum and a cosine learning rate
(optimiser and scheduler state), and in SSVI between two mask updates (mask, moments zeroed
at changed coordinates, the growth stream).
"""

from __future__ import annotations

import os
import warnings

import pytest
import torch

from bayesdl import Posterior, likelihoods, priors
from bayesdl.inference import SSVI, VI, StepEvent
from bayesdl.models import BNN, MLP


def _problem() -> tuple[BNN, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(40, 3, generator=gen, dtype=torch.float64)
    y = torch.sin(x[:, 0]) + x[:, 1] + 0.2 * torch.randn(40, generator=gen, dtype=torch.float64)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = MLP(3, [8], 1, activation="tanh").double()
    return BNN(net, priors.Gaussian(1.0), likelihoods.Gaussian(0.3)), x, y


def _stop_after(stage: str, step: int):
    def callback(event: StepEvent) -> None:
        if (event.stage, event.step) == (stage, step):
            raise KeyboardInterrupt

    return callback


def _fit(backend, **kwargs) -> Posterior:
    bnn, x, y = _problem()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "interrupted during ..."
        return backend.fit(bnn, x, y, progress=False, **kwargs)


def _assert_same(resumed: Posterior, reference: Posterior) -> None:
    assert not resumed.partial
    assert torch.equal(resumed.theta, reference.theta)
    assert torch.equal(resumed.sample_stats["log_q"], reference.sample_stats["log_q"])
    assert torch.equal(resumed.attrs["elbo_trace"], reference.attrs["elbo_trace"])
    for key, value in reference.attrs["variational"].items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(resumed.attrs["variational"][key], value), key


def _stopped_and_resumed(make, stage: str, step: int, tmp_path) -> Posterior:
    path = os.path.join(tmp_path, "run.ckpt")
    partial = _fit(make(), seed=3, checkpoint=path, callbacks=_stop_after(stage, step))
    assert partial.partial and partial.attrs["stopped"] == "interrupted"
    return _fit(make(), seed=11, resume=path)  # the file's streams, not seed=11


@pytest.mark.parametrize("step", [0, 4])
def test_vi_with_map_init_resumed_from_the_map_stage_equals_the_uninterrupted_run(step, tmp_path):
    def make() -> VI:
        return VI(steps=12, draws=5, init="map", init_steps=8, batch_size=16, lr=1e-2)

    reference = _fit(make(), seed=3)
    _assert_same(_stopped_and_resumed(make, "map", step, tmp_path), reference)


def test_vi_with_momentum_and_cosine_lr_resumed_mid_fit_equals_the_uninterrupted_run(tmp_path):
    def make() -> VI:
        return VI(
            steps=16,
            draws=5,
            batch_size=16,
            optimizer="sgd",
            lr=1e-4,
            lr_schedule="cosine",
            kl_anneal=0.5,
            num_particles=2,
        )

    reference = _fit(make(), seed=3)
    _assert_same(_stopped_and_resumed(make, "fit", 6, tmp_path), reference)


@pytest.mark.parametrize("growth", ["grad", "random"])
def test_ssvi_resumed_between_mask_updates_equals_the_uninterrupted_run(growth, tmp_path):
    def make() -> SSVI:
        return SSVI(density=0.4, steps=24, update_every=4, draws=5, batch_size=16, growth=growth)

    reference = _fit(make(), seed=3)
    assert len(reference.attrs["ssvi"]["changed"]) >= 3  # updates before and after the stop
    resumed = _stopped_and_resumed(make, "fit", 5, tmp_path)  # after update 1, before update 2
    _assert_same(resumed, reference)
    assert torch.equal(resumed.attrs["ssvi"]["changed"], reference.attrs["ssvi"]["changed"])


def test_a_resumed_run_leaves_the_global_rng_untouched(tmp_path):
    path = os.path.join(tmp_path, "run.ckpt")
    _fit(VI(steps=6, draws=2), seed=0, checkpoint=path, callbacks=_stop_after("fit", 2))
    state = torch.get_rng_state()
    _fit(VI(steps=6, draws=2), seed=0, resume=path)
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("argument", ["checkpoint", "resume"])
def test_the_pyro_engine_refuses_checkpoints_naming_the_argument(argument, tmp_path):
    path = os.path.join(tmp_path, "run.ckpt")
    with pytest.raises(ValueError, match=f"^{argument}: the Pyro engine"):
        _fit(VI(steps=2, draws=2, engine="pyro"), seed=0, **{argument: path})


def test_the_recorded_settings_name_a_kl_schedule_without_its_address():
    def warm_up(step: int, steps: int) -> float:
        return min(1.0, (step + 1) / steps)

    text = repr(VI(kl_anneal=warm_up))
    assert f"kl_anneal={warm_up.__module__}.{warm_up.__qualname__}," in text
    assert " at 0x" not in text
