"""The inference driver, the backend registry, and NUTS through Pyro."""

from __future__ import annotations

import pytest
import torch

import bayesdl.inference as inference
from bayesdl import Posterior, likelihoods, priors
from bayesdl.inference import NUTS, NonFiniteError, StepEvent
from bayesdl.inference.base import Driver, RunOutcome, finish
from bayesdl.models import BNN, MLP


def _linear_problem(n: int = 30):
    torch.manual_seed(0)
    x = torch.randn(n, 2)
    y = x @ torch.tensor([1.0, -0.5]) + 0.3 + 0.4 * torch.randn(n)
    bnn = BNN(torch.nn.Linear(2, 1), priors.Gaussian(1.0), likelihoods.Gaussian(0.4))
    return bnn, x, y


def test_registry():
    assert inference.get("nuts") is NUTS
    assert inference.get("NUTS") is NUTS
    assert inference.get("hmc") is inference.HMC
    with pytest.raises(ValueError, match="unknown backend"):
        inference.get("gibbs")


@pytest.mark.parametrize(
    "kwargs, arg",
    [
        ({"chains": 0}, "chains"),
        ({"draws": 0}, "draws"),
        ({"warmup": -1}, "warmup"),
        ({"target_accept": 1.0}, "target_accept"),
        ({"max_tree_depth": 0}, "max_tree_depth"),
        ({"mass": "full"}, "mass"),
        ({"engine": "stan"}, "engine"),
    ],
)
def test_nuts_settings_are_checked(kwargs, arg):
    with pytest.raises(ValueError, match=arg):
        NUTS(**kwargs)
    with pytest.raises(TypeError, match="chains"):
        NUTS(chains=2.0)


def test_bad_data_fails_before_any_sampling(monkeypatch):
    bnn, x, y = _linear_problem()
    called = []
    monkeypatch.setattr(
        "bayesdl.inference.mcmc.hmc.run_pyro_mcmc", lambda *a, **k: called.append(1)
    )
    monkeypatch.setattr("bayesdl.inference.mcmc.hmc.run_mcmc", lambda *a, **k: called.append(1))
    x_bad = x.clone()
    x_bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match=r"^x:"):
        NUTS(chains=1, warmup=1, draws=1).fit(bnn, x_bad, y)
    with pytest.raises(ValueError, match=r"^y:"):
        NUTS(chains=1, warmup=1, draws=1).fit(bnn, x, y[:-1])
    with pytest.raises(ValueError, match="init_theta"):
        NUTS(chains=2, warmup=1, draws=1).fit(bnn, x, y, init_theta=torch.zeros(3, 3))
    assert not called


@pytest.mark.parametrize("engine", ["bayesdl", "pyro"])
def test_nuts_runs_and_records_sampler_statistics(engine):
    bnn, x, y = _linear_problem()
    post = NUTS(chains=2, warmup=30, draws=20, engine=engine).fit(bnn, x, y, seed=0, progress=False)
    assert isinstance(post, Posterior) and not post.partial
    assert post.theta.shape == (2, 20, 3)
    assert post.attrs["engine"] == engine
    stats = post.sample_stats
    expected = {"lp", "acceptance_rate", "step_size", "diverging", "n_steps", "tree_depth"}
    bayesdl_only = {"energy", "density_raised"}
    assert set(stats) == (expected | bayesdl_only if engine == "bayesdl" else expected)
    assert all(v.shape == (2, 20) for v in stats.values())
    assert ((stats["acceptance_rate"] >= 0) & (stats["acceptance_rate"] <= 1)).all()
    assert (stats["n_steps"] >= 1).all()
    assert (stats["n_steps"] < 2 ** stats["tree_depth"]).all()
    # lp is the log joint of the stored draw
    lp = bnn.log_joint(post.theta.reshape(-1, 3), x, y).reshape(2, 20)
    torch.testing.assert_close(stats["lp"].float(), lp, rtol=1e-4, atol=1e-4)
    # the step size is fixed after warmup
    assert (stats["step_size"] == stats["step_size"][:, :1]).all()


@pytest.mark.parametrize("engine", ["bayesdl", "pyro"])
def test_nuts_chains_do_not_depend_on_the_number_of_chains(engine):
    bnn, x, y = _linear_problem()
    two = NUTS(chains=2, warmup=10, draws=5, engine=engine).fit(bnn, x, y, seed=3, progress=False)
    one = NUTS(chains=1, warmup=10, draws=5, engine=engine).fit(bnn, x, y, seed=3, progress=False)
    torch.testing.assert_close(two.theta[:1], one.theta)
    again = NUTS(chains=1, warmup=10, draws=5, engine=engine).fit(bnn, x, y, seed=3, progress=False)
    assert torch.equal(again.theta, one.theta)


@pytest.mark.parametrize("engine", ["bayesdl", "pyro"])
def test_ctrl_c_returns_the_draws_made_so_far(engine):
    bnn, x, y = _linear_problem()
    seen: list[StepEvent] = []

    def interrupt(event: StepEvent) -> None:
        seen.append(event)
        if event.stage == "sampling" and event.step == 6:
            raise KeyboardInterrupt

    with pytest.warns(RuntimeWarning, match="interrupted during sampling step 6"):
        post = NUTS(chains=2, warmup=10, draws=50, engine=engine).fit(
            bnn, x, y, seed=0, progress=False, callbacks=[interrupt]
        )
    assert post.partial and post.attrs["stopped"] == "interrupted"
    assert post.theta.shape == (2, 7, 3)
    assert post.sample_stats["lp"].shape == (2, 7)
    assert [e.stage for e in seen].count("warmup") == 10
    assert post.predict(x).samples.shape == (2, 7, 30, 1)


def test_ctrl_c_during_warmup_returns_an_empty_partial_posterior():
    bnn, x, y = _linear_problem()

    def interrupt(event: StepEvent) -> None:
        raise KeyboardInterrupt

    with pytest.warns(RuntimeWarning, match="interrupted during warmup step 0"):
        post = NUTS(chains=2, warmup=10, draws=10).fit(
            bnn, x, y, progress=False, callbacks=[interrupt]
        )
    assert post.partial and post.num_draws == 0


def test_driver_stops_on_non_finite_steps_and_finish_raises_with_the_draws():
    calls = []

    def step(stage, i):
        calls.append((stage, i))
        return {"finite": not (stage == "b" and i == 2)}

    outcome = Driver([("a", 3), ("b", 5)], progress=False).run(step)
    assert outcome == RunOutcome("non-finite", "b", 2)
    assert calls[-1] == ("b", 2) and len(calls) == 6
    post = Posterior(torch.zeros(1, 2, 3), partial=True)
    with pytest.raises(NonFiniteError, match="step 2") as err:
        finish(post, outcome)
    assert err.value.posterior is post
    assert finish(post, RunOutcome()) is post


def test_driver_rejects_non_callable_callbacks():
    with pytest.raises(TypeError, match="callbacks"):
        Driver([("a", 1)], callbacks=[3])


def test_minibatches_cover_each_epoch_once_and_are_seeded():
    from bayesdl.inference.base import Minibatches

    x = torch.arange(10.0)[:, None]
    y = torch.arange(10)
    batches = Minibatches(x, y, batch_size=3, seed=0)
    epoch = [next(batches) for _ in range(3)]
    seen = torch.cat([b[1] for b in epoch])
    assert len(set(seen.tolist())) == 9  # 3 batches of 3, the 10th example waits for the next epoch
    assert all(torch.equal(bx[:, 0].long(), by) for bx, by in epoch)
    again = Minibatches(x, y, batch_size=3, seed=0)
    assert all(torch.equal(next(again)[1], b[1]) for b in epoch)
    full = Minibatches(x, y, batch_size=None, seed=0)
    assert full.full_batch and torch.equal(next(full)[1], y)
    assert Minibatches(x, y, batch_size=50, seed=0).full_batch
    with pytest.raises(ValueError, match="batch_size"):
        Minibatches(x, y, batch_size=0, seed=0)


def test_nuts_with_hierarchical_prior_and_learned_noise():
    import pyro.distributions as dist

    _, x, y = _linear_problem()
    bnn = BNN(
        MLP(2, [3], 1, "tanh"),
        priors.Select(
            {"*.weight": priors.InverseGammaScale(2.0, 2.0)}, default=priors.Gaussian(1.0)
        ),
        likelihoods.Gaussian(dist.HalfNormal(1.0)),
    )
    post = NUTS(chains=1, warmup=15, draws=10, max_tree_depth=5).fit(
        bnn, x, y, seed=0, progress=False
    )
    sites = post.sites()
    assert sites["layers.0.weight_scale"].shape == (1, 10) and bool(
        (sites["likelihood.scale"] > 0).all()
    )
    lp = bnn.log_joint(post.theta[0], x, y)
    torch.testing.assert_close(post.sample_stats["lp"][0].float(), lp, rtol=1e-4, atol=1e-3)


def _bar_updates(text: str) -> int:
    """Redraws of a tqdm bar written to a file: each starts with a carriage return or newline."""
    return sum(1 for part in text.replace("\n", "\r").split("\r") if part.strip())


@pytest.mark.parametrize("seconds", [0.0, None])
def test_progress_bar_is_compact_when_stderr_is_not_a_terminal(monkeypatch, seconds):
    import io

    import bayesdl.inference.base as base

    stream = io.StringIO()  # not a TTY, as a log file
    monkeypatch.setattr("sys.stderr", stream)
    if seconds is not None:  # no time limit: only the percentage bounds the updates
        monkeypatch.setattr(base, "NON_TTY_SECONDS", seconds)
    # a slow run: tqdm's clock advances a second per reading (tqdm's defaults would then
    # redraw at every step)
    clock = iter(range(10**6))
    monkeypatch.setattr("tqdm.std.time", lambda: float(next(clock)))
    outcome = Driver([("warmup", 1000), ("sampling", 1000)], progress=True, desc="t").run(
        lambda stage, i: {"postfix": {"i": i}}
    )
    assert outcome == RunOutcome()
    text = stream.getvalue()
    assert "2000/2000" in text  # the final state is written
    # at most one redraw per NON_TTY_PERCENT percent, plus the opening and closing lines
    assert 2 <= _bar_updates(text) <= 100 // base.NON_TTY_PERCENT + 3


def test_progress_bar_of_a_backend_is_compact_off_a_terminal(monkeypatch):
    import io

    import bayesdl.inference.base as base
    from bayesdl.inference import SGLD

    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    monkeypatch.setattr(base, "NON_TTY_SECONDS", 0.0)
    bnn, x, y = _linear_problem()
    SGLD(chains=2, burn_in=500, draws=100, thin=5).fit(bnn, x, y, seed=0, progress=True)
    assert "1000/1000" in stream.getvalue()
    assert _bar_updates(stream.getvalue()) <= 100 // base.NON_TTY_PERCENT + 3


def test_progress_bar_keeps_tqdms_pace_on_a_terminal(monkeypatch):
    import io

    import bayesdl.inference.base as base

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr("sys.stderr", Terminal())
    assert "miniters" not in base._bar_options(1000)
    monkeypatch.setattr("sys.stderr", io.StringIO())
    assert base._bar_options(1000)["miniters"] == 1000 * base.NON_TTY_PERCENT // 100
