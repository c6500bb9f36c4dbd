"""One optimiser choice for VI, SSVI and SVGD: a name (any case) or a torch.optim class."""

from __future__ import annotations

import pytest
import torch

from bayesdl import likelihoods, priors
from bayesdl.inference import SSVI, SVGD, VI
from bayesdl.inference.optimizers import (
    OPTIMIZERS,
    check_optimizer,
    check_optimizer_kwargs,
    make_optimizer,
    resolve_optimizer,
)
from bayesdl.models import BNN, MLP


def _classification(n: int = 40):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, generator=gen)
    y = (x[:, 0] - x[:, 1] > 0).long()
    bnn = BNN(MLP(3, [6], 2), priors.Gaussian(1.0, fan_in=True), likelihoods.Categorical())
    return bnn, *bnn.check_data(x, y)


def _gaussian(theta: torch.Tensor) -> torch.Tensor:
    return -0.5 * (theta**2).sum(-1)


# ------------------------------------------------------------------------------ the helper
@pytest.mark.parametrize("name", ["adam", "Adam", "ADAGRAD", "rmsprop", "AdamW", "sgd"])
def test_a_name_in_any_case_is_its_class(name):
    spec = check_optimizer(name)
    assert spec == name.lower()
    cls, _ = resolve_optimizer(spec)
    assert cls is OPTIMIZERS[name.lower()]
    assert cls.__name__.lower() == name.lower()


def test_a_class_is_taken_as_it_is():
    class Custom(torch.optim.SGD):
        pass

    assert check_optimizer(Custom) is Custom
    assert resolve_optimizer(Custom, {"momentum": 0.5}) == (Custom, {"momentum": 0.5})


def test_the_name_sgd_means_momentum_that_kwargs_override():
    param = [torch.zeros(2, requires_grad=True)]
    assert make_optimizer("sgd", param, 0.1).param_groups[0]["momentum"] == 0.9
    assert make_optimizer("sgd", param, 0.1, {"momentum": 0.0}).param_groups[0]["momentum"] == 0
    assert make_optimizer(torch.optim.SGD, param, 0.1).param_groups[0]["momentum"] == 0
    adam = make_optimizer("adam", param, 0.3, {"betas": (0.5, 0.6)})
    assert type(adam) is torch.optim.Adam
    assert adam.param_groups[0]["lr"] == 0.3 and adam.param_groups[0]["betas"] == (0.5, 0.6)


def test_an_unknown_name_or_type_names_the_argument_and_lists_the_names():
    names = str(sorted(OPTIMIZERS))
    with pytest.raises(ValueError, match=r"^optimizer: must be one of") as err:
        check_optimizer("lbfgs")
    assert names in str(err.value)
    for bad in (3, torch.optim.Adam([torch.zeros(1, requires_grad=True)]), torch.nn.Linear):
        with pytest.raises(TypeError, match=r"^optimizer: expected a name") as err:
            check_optimizer(bad)
        assert names in str(err.value)
    with pytest.raises(ValueError, match=r"^map_optimizer:"):
        check_optimizer("newton", argument="map_optimizer")
    with pytest.raises(TypeError, match=r"^optimizer_kwargs:"):
        check_optimizer_kwargs([0.9])
    with pytest.raises(ValueError, match=r"^optimizer_kwargs:.*lr="):
        check_optimizer_kwargs({"lr": 0.1})
    assert check_optimizer_kwargs(None) == {}


# ------------------------------------------------------------------------------ each backend
@pytest.mark.parametrize("backend", ["vi", "ssvi", "svgd"])
def test_every_backend_refuses_a_bad_optimizer_naming_it(backend):
    cls = {"vi": VI, "ssvi": SSVI, "svgd": SVGD}[backend]
    with pytest.raises(ValueError, match=r"^optimizer:.*'adagrad'"):
        cls(optimizer="lbfgs")
    with pytest.raises(TypeError, match=r"^optimizer:.*'adagrad'"):
        cls(optimizer=torch.optim.Adam([torch.zeros(1, requires_grad=True)]))


@pytest.mark.parametrize("backend", ["vi", "ssvi"])
def test_variational_backends_take_a_name_or_its_class_alike(backend):
    bnn, x, y = _classification()
    make = {
        "vi": lambda opt: VI(steps=8, lr=0.05, draws=4, optimizer=opt),
        "ssvi": lambda opt: SSVI(density=0.5, update_every=3, steps=8, lr=0.05, optimizer=opt),
    }[backend]
    by_name = make("RMSprop").fit(bnn, x, y, seed=3, progress=False)
    by_class = make(torch.optim.RMSprop).fit(bnn, x, y, seed=3, progress=False)
    default = make("adam").fit(bnn, x, y, seed=3, progress=False)
    assert by_name.attrs["optimizer"] == "rmsprop"
    assert by_class.attrs["optimizer"] == "RMSprop"
    assert torch.equal(by_name.theta, by_class.theta)
    assert not torch.equal(by_name.theta, default.theta)  # the choice is not ignored


def test_svgd_takes_a_name_or_its_class_alike():
    init = torch.linspace(-2.0, 2.0, 12, dtype=torch.float64).reshape(4, 3)
    runs = {
        key: SVGD(particles=4, steps=10, lr=0.1, optimizer=opt, optimizer_kwargs=kwargs)
        .sample(_gaussian, init, seed=0, progress=False)
        .theta
        for key, opt, kwargs in [
            ("name", "Adagrad", None),
            ("class", torch.optim.Adagrad, None),
            ("adam", "adam", None),
            ("sgd-name", "sgd", {"weight_decay": 0.1}),
            ("sgd-class", torch.optim.SGD, {"momentum": 0.9, "weight_decay": 0.1}),
            ("sgd-plain", torch.optim.SGD, {"weight_decay": 0.1}),
        ]
    }
    assert torch.equal(runs["name"], runs["class"])
    assert not torch.equal(runs["name"], runs["adam"])
    assert torch.equal(runs["sgd-name"], runs["sgd-class"])  # "sgd" implies momentum 0.9
    assert not torch.equal(runs["sgd-name"], runs["sgd-plain"])


def test_svgd_fits_a_bnn_with_a_named_optimizer_as_with_the_default_class():
    bnn, x, y = _classification()
    by_name = SVGD(particles=3, steps=4, optimizer="adam").fit(bnn, x, y, seed=1, progress=False)
    default = SVGD(particles=3, steps=4).fit(bnn, x, y, seed=1, progress=False)
    assert by_name.attrs["optimizer"] == default.attrs["optimizer"] == "Adam"
    assert torch.equal(by_name.theta, default.theta)


def test_stochastic_svgd_takes_the_name_sgd_only_without_its_momentum():
    with pytest.raises(ValueError, match=r"^stochastic:.*momentum"):
        SVGD(particles=3, optimizer="sgd", stochastic=True)
    svgd = SVGD(particles=3, optimizer="SGD", optimizer_kwargs={"momentum": 0}, stochastic=True)
    assert svgd.optimizer is torch.optim.SGD and svgd.optimizer_kwargs == {"momentum": 0}
