"""The dataset registry and user array files: shapes, splits, value ranges, binarization, and the
errors a bad file must raise before any run starts."""

import numpy as np
import pytest
import torch

from pyro_vae.data import DATASETS, SPLITS, load
from pyro_vae.errors import PyroVAEError

# From shared/data/README.md: train label counts of MNIST's 60,000 training images (our train
# and valid splits together) and the fractions of ones of the static binarization.
MNIST_TRAIN_LABEL_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
BINARIZED_MNIST_ONES = {"train": 0.130562, "valid": 0.131127, "test": 0.132512}


def is_binary(x: torch.Tensor) -> bool:
    return bool(((x == 0) | (x == 1)).all())


def total(data) -> int:
    return sum(data.x[s].shape[0] for s in SPLITS)


# --- digits (embedded, always available) ---------------------------------------------------------

@pytest.fixture(scope="module")
def digits():
    return load("digits")


def test_digits_shape_and_defaults(digits):
    assert digits.obs_shape == (1, 8, 8)
    assert digits.obs_dim == 64
    assert digits.likelihood == DATASETS["digits"].likelihood == "bernoulli"
    assert digits.binarize == "dynamic"
    for split in SPLITS:
        assert digits.x[split].dtype == torch.float32
        assert digits.x[split].shape[1] == 64
        assert digits.y[split].shape == (digits.x[split].shape[0],)


def test_digits_splits_nonempty_and_partition_the_data(digits):
    sizes = {s: digits.x[s].shape[0] for s in SPLITS}
    assert all(n > 0 for n in sizes.values()), sizes
    assert sum(sizes.values()) == 1797
    assert sizes["train"] > sizes["test"] > sizes["valid"]
    # Disjoint and complete: without binarization the three splits together are scikit-learn's
    # 1797 images, each once (compared as sorted rows, so as multisets).
    from sklearn.datasets import load_digits

    grey = load("digits", likelihood="gaussian", binarize="none")
    assert {s: grey.x[s].shape[0] for s in SPLITS} == sizes
    rows = torch.cat([grey.x[s] for s in SPLITS]).numpy()
    bunch = load_digits()
    expected = (bunch.images.reshape(-1, 64) / 16.0).astype(np.float32)
    np.testing.assert_array_equal(rows[np.lexsort(rows.T)], expected[np.lexsort(expected.T)])
    labels = torch.cat([grey.y[s] for s in SPLITS]).numpy()
    np.testing.assert_array_equal(np.sort(labels), np.sort(bunch.target))


def test_digits_train_keeps_grey_levels_in_unit_interval(digits):
    x = digits.x["train"]
    assert x.min() >= 0 and x.max() <= 1
    assert not is_binary(x), "dynamic binarization must resample from grey levels, not a fixed draw"


def test_digits_train_batches_are_binary_and_redrawn(digits):
    torch.manual_seed(0)
    first = torch.cat(list(digits.batches("train", 64)))
    second = torch.cat(list(digits.batches("train", 64)))
    assert first.shape == second.shape == digits.x["train"].shape
    assert is_binary(first) and is_binary(second)
    assert not torch.equal(first, second)
    # Each draw is a Bernoulli sample of the grey levels: pixels at 0 stay 0, at 1 stay 1.
    grey = digits.x["train"]
    assert (first[grey == 0] == 0).all() and (first[grey == 1] == 1).all()


@pytest.mark.parametrize("split", ["valid", "test"])
def test_digits_valid_and_test_are_one_fixed_binarization(digits, split):
    x = digits.x[split]
    assert is_binary(x)
    torch.manual_seed(1)
    assert torch.equal(torch.cat(list(digits.batches(split, 64))), x)
    assert torch.equal(torch.cat(list(digits.batches(split, 64))), x)
    # Fixed across loads and independent of the global seed, so bounds compare across runs.
    torch.manual_seed(2)
    np.random.seed(2)
    assert torch.equal(load("digits").x[split], x)


def test_digits_splits_do_not_depend_on_the_global_seed(digits):
    np.random.seed(123)
    torch.manual_seed(123)
    again = load("digits")
    assert torch.equal(again.x["train"], digits.x["train"])
    assert torch.equal(again.y["test"], digits.y["test"])


# --- real datasets -------------------------------------------------------------------------------

@pytest.mark.data
def test_mnist_from_raw_gz(mnist_root):
    data = load("mnist", data_dir=mnist_root)
    assert data.obs_shape == (1, 28, 28)
    assert {s: tuple(data.x[s].shape) for s in SPLITS} == {
        "train": (50000, 784), "valid": (10000, 784), "test": (10000, 784)}
    assert data.likelihood == "bernoulli" and data.binarize == "dynamic"
    assert data.x["train"].min() >= 0 and data.x["train"].max() <= 1
    assert is_binary(data.x["valid"]) and is_binary(data.x["test"])
    counts = torch.bincount(torch.cat([data.y["train"], data.y["valid"]]), minlength=10)
    assert counts.tolist() == MNIST_TRAIN_LABEL_COUNTS
    assert data.y["test"].shape == (10000,)


def test_mnist_missing_raises(tmp_path):
    with pytest.raises(PyroVAEError, match="MNIST not found"):
        load("mnist", data_dir=tmp_path)


@pytest.mark.data
def test_binarized_mnist(shared_data):
    data = load("binarized-mnist", data_dir=shared_data)
    assert data.obs_shape == (1, 28, 28)
    assert data.likelihood == "bernoulli" and data.binarize == "none"
    for split, n in (("train", 50000), ("valid", 10000), ("test", 10000)):
        x = data.x[split]
        assert tuple(x.shape) == (n, 784)
        assert is_binary(x)
        assert x.double().mean().item() == pytest.approx(BINARIZED_MNIST_ONES[split], abs=1e-5)


@pytest.mark.data
def test_frey_faces(shared_data):
    data = load("frey", data_dir=shared_data)
    assert data.obs_shape == (1, 28, 20)
    assert data.likelihood == "gaussian" and data.binarize == "none"
    assert total(data) == 1965
    assert all(data.x[s].shape[0] > 0 and data.x[s].shape[1] == 560 for s in SPLITS)
    x = torch.cat([data.x[s] for s in SPLITS])
    assert x.min().item() == pytest.approx(8 / 255)
    assert x.max().item() == pytest.approx(238 / 255)


def test_files_of_the_real_datasets_missing_raise(tmp_path):
    for name in ("binarized-mnist", "frey"):
        with pytest.raises(PyroVAEError, match="not found"):
            load(name, data_dir=tmp_path)


# --- a user's .npz / .npy files ------------------------------------------------------------------

def test_npz_vectors_with_labels(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.random((100, 6)).astype(np.float32)
    y = rng.integers(0, 3, 100)
    path = tmp_path / "vectors.npz"
    np.savez(path, x=x, y=y)
    data = load(str(path))
    assert data.obs_shape == (6,)
    assert total(data) == 100
    assert data.likelihood == "gaussian" and data.binarize == "none"
    # The split is a permutation of the rows, labels travelling with their rows.
    rows = torch.cat([data.x[s] for s in SPLITS])
    labels = torch.cat([data.y[s] for s in SPLITS])
    order = np.lexsort(x.T[::-1])
    got = np.lexsort(rows.numpy().T[::-1])
    np.testing.assert_array_equal(rows.numpy()[got], x[order])
    np.testing.assert_array_equal(labels.numpy()[got], y[order])


def test_npy_images_binary_default_to_bernoulli(tmp_path):
    rng = np.random.default_rng(1)
    x = (rng.random((60, 7, 5)) < 0.3).astype(np.uint8)
    path = tmp_path / "images.npy"
    np.save(path, x)
    data = load(str(path))
    assert data.obs_shape == (1, 7, 5)
    assert total(data) == 60
    assert data.likelihood == "bernoulli" and data.binarize == "none"
    assert all(data.y[s] is None for s in SPLITS)
    assert all(is_binary(data.x[s]) and data.x[s].shape[1] == 35 for s in SPLITS)


def test_npz_images_with_channel_axis_and_dynamic_binarization(tmp_path):
    x = np.random.default_rng(2).random((50, 1, 4, 4))
    path = tmp_path / "images.npz"
    np.savez(path, x=x)
    data = load(str(path), likelihood="bernoulli", binarize="dynamic")
    assert data.obs_shape == (1, 4, 4)
    assert not is_binary(data.x["train"])
    assert is_binary(data.x["valid"]) and is_binary(data.x["test"])


def _save(tmp_path, name, **arrays):
    path = tmp_path / name
    if name.endswith(".npy"):
        np.save(path, arrays["x"])
    else:
        np.savez(path, **arrays)
    return str(path)


def _grey(*shape):
    return np.random.default_rng(3).random(shape).astype(np.float32)


def _with(value, *shape):
    x = _grey(*shape)
    x[4, 1] = value
    return x


BAD_FILES = {
    "no x": (lambda p: _save(p, "d.npz", data=_grey(20, 3)), {}, "no array 'x'"),
    "1-d x": (lambda p: _save(p, "d.npz", x=_grey(20)), {}, "must have shape"),
    "5-d x": (lambda p: _save(p, "d.npy", x=_grey(20, 1, 1, 3, 3)), {}, "must have shape"),
    "4-d x with channels": (lambda p: _save(p, "d.npy", x=_grey(20, 3, 4, 4)), {}, "must have shape"),
    "no rows": (lambda p: _save(p, "d.npz", x=_grey(0, 3)), {}, "must have shape"),
    "labels of the wrong length": (lambda p: _save(p, "d.npz", x=_grey(20, 3), y=np.zeros(19)), {}, "'y'"),
    "NaN": (lambda p: _save(p, "d.npz", x=_with(np.nan, 40, 3)), {}, "NaN or Inf"),
    "Inf": (lambda p: _save(p, "d.npy", x=_with(np.inf, 40, 3)), {}, "NaN or Inf"),
    "-Inf under binarization": (lambda p: _save(p, "d.npy", x=_with(-np.inf, 40, 3)),
                                dict(likelihood="bernoulli", binarize="dynamic"), "NaN or Inf"),
    "grey levels, bernoulli, no binarization": (lambda p: _save(p, "d.npz", x=_grey(40, 3)),
                                                dict(likelihood="bernoulli", binarize="none"), "not binary"),
    "binarize values above 1": (lambda p: _save(p, "d.npz", x=_with(1.5, 40, 3)),
                                dict(likelihood="bernoulli", binarize="dynamic"), r"values in \[0, 1\]"),
    "binarize negative values": (lambda p: _save(p, "d.npz", x=_with(-0.5, 40, 3)),
                                 dict(likelihood="bernoulli", binarize="static"), r"values in \[0, 1\]"),
    "binarize under gaussian": (lambda p: _save(p, "d.npz", x=_grey(40, 3)),
                                dict(likelihood="gaussian", binarize="static"), "needs --likelihood bernoulli"),
    "too few rows to split": (lambda p: _save(p, "d.npz", x=_grey(3, 3)), {}, "too few"),
    "missing file": (lambda p: str(p / "absent.npz"), {}, "not found"),
    "truncated npz": (lambda p: _truncated(p, "d.npz"), {}, "cannot read"),
    "truncated npy": (lambda p: _truncated(p, "d.npy"), {}, "cannot read"),
    "not an array file": (lambda p: _garbage(p), {}, "cannot read"),
}


def _truncated(tmp_path, name):
    path = _save(tmp_path, name, x=_grey(200, 10))
    blob = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(blob[: len(blob) // 2])
    return path


def _garbage(tmp_path):
    path = tmp_path / "text.npz"
    path.write_text("x,y\n1,2\n")
    return str(path)


@pytest.mark.parametrize("case", BAD_FILES)
def test_bad_files_raise_the_package_error(tmp_path, case):
    make, kwargs, message = BAD_FILES[case]
    name = make(tmp_path)
    with pytest.raises(PyroVAEError, match=message):
        load(name, **kwargs)


def test_digits_without_binarization_under_bernoulli_is_rejected():
    with pytest.raises(PyroVAEError, match="not binary"):
        load("digits", likelihood="bernoulli", binarize="none")


def test_unknown_dataset_name_lists_the_registry():
    with pytest.raises(PyroVAEError) as err:
        load("cifar")
    for name in DATASETS:
        assert name in str(err.value)
