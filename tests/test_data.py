"""The dataset registry and user array files: shapes, stored dtypes, splits, value ranges,
binarization, the per-batch conversion to floats, and the errors a bad file must raise before any
run starts.

``data.x[split]`` is what is STORED (uint8 for 8-bit or binary sources, with ``data.scale[split]``
the divisor into [0, 1]); ``data.observations`` / ``data.batches`` / ``data.batch`` give the floats
the model scores. Expected values are computed here independently (from scikit-learn, the raw
MNIST/Frey files, the README's published statistics, or the arrays the test wrote)."""

import gzip

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


def sorted_rows(rows: np.ndarray) -> np.ndarray:
    """Rows (N, ...) flattened and sorted lexicographically: compares splits as multisets."""
    flat = np.asarray(rows).reshape(len(rows), -1)
    return flat[np.lexsort(flat.T[::-1])]


def all_observations(data) -> torch.Tensor:
    return torch.cat([data.observations(s) for s in SPLITS])


def epoch(data, split, batch_size=64, **kwargs):
    """One pass of ``data.batches``: the x and y of every batch concatenated (y None if unlabelled)."""
    pairs = list(data.batches(split, batch_size, **kwargs))
    assert all(isinstance(p, tuple) and len(p) == 2 for p in pairs), "batches must yield (x, y) pairs"
    xs, ys = zip(*pairs)
    return torch.cat(xs), (None if ys[0] is None else torch.cat(ys))


def assert_bernoulli_mean(binary: torch.Tensor, probs: torch.Tensor, sigmas: float = 5.0):
    """The draws' fraction of ones is their probabilities' mean within ``sigmas`` standard errors."""
    p = probs.double()
    err = (p * (1 - p)).sum().sqrt().item() / p.numel()
    assert abs(binary.double().mean().item() - p.mean().item()) < sigmas * err + 1e-12


# --- digits (embedded, always available) ---------------------------------------------------------

@pytest.fixture(scope="module")
def digits():
    return load("digits")


@pytest.fixture(scope="module")
def digits_grey():
    """The same splits without binarization: grey levels 0..16 in every split."""
    return load("digits", likelihood="gaussian", binarize="none")


@pytest.fixture(scope="module")
def sklearn_digits():
    from sklearn.datasets import load_digits

    return load_digits()


def test_digits_shape_and_defaults(digits):
    assert digits.obs_shape == (1, 8, 8)
    assert digits.obs_dim == 64
    assert digits.likelihood == DATASETS["digits"].likelihood == "bernoulli"
    assert digits.binarize == "dynamic"
    assert digits.classes() == 10
    for split in SPLITS:
        n = digits.x[split].shape[0]
        assert digits.x[split].dtype == torch.uint8
        assert tuple(digits.x[split].shape) == (n, 1, 8, 8)
        assert digits.y[split].shape == (n,)
        assert digits.y[split].dtype == torch.int64
        assert torch.equal(digits.labels(split), digits.y[split])
        obs = digits.observations(split)
        assert obs.dtype == torch.float32 and tuple(obs.shape) == (n, 1, 8, 8)
    # Training grey levels are stored 0..16; valid/test are stored already binarized (0/1).
    assert digits.scale["train"] == 16.0
    assert digits.scale["valid"] == digits.scale["test"] == 1.0


def test_digits_splits_nonempty_and_partition_the_data(digits, digits_grey, sklearn_digits):
    sizes = {s: digits.x[s].shape[0] for s in SPLITS}
    assert all(n > 0 for n in sizes.values()), sizes
    assert sum(sizes.values()) == 1797
    assert sizes["train"] > sizes["test"] > sizes["valid"]
    # Disjoint and complete: without binarization the three splits together are scikit-learn's
    # 1797 images, each once, with its own label (compared as sorted (image, label) rows, so as
    # multisets).
    assert {s: digits_grey.x[s].shape[0] for s in SPLITS} == sizes
    for split in SPLITS:
        assert torch.equal(digits_grey.y[split], digits.y[split]), "the split must not depend on binarization"
    obs = all_observations(digits_grey).reshape(-1, 64).double().numpy()
    labels = torch.cat([digits_grey.labels(s) for s in SPLITS]).numpy()
    expected = (sklearn_digits.images.reshape(-1, 64) / 16.0).astype(np.float32).astype(np.float64)
    np.testing.assert_array_equal(sorted_rows(np.column_stack([obs, labels])),
                                  sorted_rows(np.column_stack([expected, sklearn_digits.target])))


def test_digits_are_stored_as_uint8_grey_levels_and_observed_as_the_float_images(digits_grey, sklearn_digits):
    """8-bit storage: the stored bytes are scikit-learn's grey levels 0..16, and what the model
    sees is exactly the old float representation images / 16 in float32."""
    for split in SPLITS:
        assert digits_grey.x[split].dtype == torch.uint8
        assert digits_grey.scale[split] == 16.0
    stored = torch.cat([digits_grey.x[s] for s in SPLITS]).numpy()
    assert stored.shape == (1797, 1, 8, 8)
    np.testing.assert_array_equal(sorted_rows(stored), sorted_rows(sklearn_digits.images.astype(np.uint8)))
    # Row by row (the same row of the same split), floats are the stored bytes / 16 exactly.
    for split in SPLITS:
        obs = digits_grey.observations(split)
        assert obs.dtype == torch.float32 and obs.shape == digits_grey.x[split].shape
        expected = digits_grey.x[split].numpy().astype(np.float32) / np.float32(16)
        np.testing.assert_array_equal(obs.numpy(), expected)
    obs = all_observations(digits_grey).numpy()
    np.testing.assert_array_equal(sorted_rows(obs), sorted_rows((sklearn_digits.images / 16.0).astype(np.float32)))


def test_digits_train_keeps_grey_levels_in_unit_interval(digits):
    x = digits.x["train"]
    assert x.dtype == torch.uint8 and x.min() >= 0 and x.max() == 16 == digits.scale["train"]
    grey = x.float() / digits.scale["train"]
    assert grey.min() >= 0 and grey.max() <= 1
    assert not is_binary(grey), "dynamic binarization must resample from grey levels, not a fixed draw"
    assert ((x > 0) & (x < 16)).any()


def test_digits_train_batches_are_binary_and_redrawn(digits):
    torch.manual_seed(0)
    first, y_first = epoch(digits, "train")
    second, y_second = epoch(digits, "train")
    assert first.shape == second.shape == digits.x["train"].shape
    assert first.dtype == second.dtype == torch.float32
    assert is_binary(first) and is_binary(second)
    assert not torch.equal(first, second)
    # Unshuffled, the labels are the split's labels in order.
    assert torch.equal(y_first, digits.y["train"]) and torch.equal(y_second, digits.y["train"])
    # Each draw is a Bernoulli sample of the grey levels: pixels at 0 stay 0, at 1 (16/16) stay 1.
    grey = digits.x["train"].double() / 16
    for draw in (first, second):
        assert (draw[grey == 0] == 0).all() and (draw[grey == 1] == 1).all()
        assert_bernoulli_mean(draw, grey)
    # Drawn from the global torch RNG, so a seeded run repeats its draws.
    torch.manual_seed(0)
    assert torch.equal(epoch(digits, "train")[0], first)


def test_digits_train_observations_are_one_fixed_binarization(digits):
    """For evaluation the dynamically binarized training split is scored on one fixed draw."""
    torch.manual_seed(5)
    np.random.seed(5)
    x = digits.observations("train")
    assert x.dtype == torch.float32 and x.shape == digits.x["train"].shape
    assert is_binary(x)
    grey = digits.x["train"].double() / 16
    assert (x[grey == 0] == 0).all() and (x[grey == 1] == 1).all()
    assert_bernoulli_mean(x, grey)
    torch.manual_seed(6)
    np.random.seed(6)
    assert torch.equal(digits.observations("train"), x)
    assert torch.equal(load("digits").observations("train"), x)
    assert digits.x["train"].dtype == torch.uint8, "observations must not replace the stored grey levels"


@pytest.mark.parametrize("split", ["valid", "test"])
def test_digits_valid_and_test_are_one_fixed_binarization(digits, digits_grey, split):
    stored = digits.x[split]
    assert stored.dtype == torch.uint8 and is_binary(stored)
    x = digits.observations(split)
    assert x.dtype == torch.float32 and is_binary(x)
    assert torch.equal(x, stored.float())
    torch.manual_seed(1)
    assert torch.equal(epoch(digits, split)[0], x)
    assert torch.equal(epoch(digits, split)[0], x)
    # The draw is of this split's own grey levels (same rows as without binarization).
    grey = digits_grey.x[split].double() / 16
    assert (x[grey == 0] == 0).all() and (x[grey == 1] == 1).all()
    assert_bernoulli_mean(x, grey)
    # Fixed across loads and independent of the global seed, so bounds compare across runs.
    torch.manual_seed(2)
    np.random.seed(2)
    again = load("digits")
    assert torch.equal(again.x[split], stored)
    assert torch.equal(again.observations(split), x)
    # Static binarization scores valid/test on the very same draw.
    assert torch.equal(load("digits", binarize="static").observations(split), x)


def test_digits_splits_do_not_depend_on_the_global_seed(digits):
    np.random.seed(123)
    torch.manual_seed(123)
    again = load("digits")
    assert torch.equal(again.x["train"], digits.x["train"])
    assert torch.equal(again.y["test"], digits.y["test"])


def test_batch_returns_the_rows_asked_for(digits_grey, sklearn_digits, device):
    rows = torch.tensor([5, 0, 17, 5])
    x, y = digits_grey.batch("valid", rows, device)
    assert x.device.type == device.type and y.device.type == device.type
    assert x.dtype == torch.float32 and tuple(x.shape) == (4, 1, 8, 8)
    expected = digits_grey.x["valid"][rows].numpy().astype(np.float32) / np.float32(16)
    np.testing.assert_array_equal(x.cpu().numpy(), expected)
    assert torch.equal(y.cpu(), digits_grey.y["valid"][rows])
    # Each image is a scikit-learn digit carrying that digit's label.
    images = sklearn_digits.images.reshape(-1, 64).astype(np.float32) / np.float32(16)
    for row, label in zip(x.cpu().reshape(4, 64).numpy(), y.cpu().numpy()):
        match = (images == row).all(axis=1)
        assert match.any() and label in sklearn_digits.target[match]


def test_batches_on_a_device_yield_pairs_whose_labels_match_the_rows(tmp_path, device):
    """Rows whose first column encodes their index, labels a function of the index: under shuffling
    every (x, y) pair must still belong together."""
    n = 103
    index = np.arange(n)
    x = np.column_stack([index / n, np.random.default_rng(4).random((n, 2))]).astype(np.float32)
    y = (index * 7) % 5
    path = tmp_path / "indexed.npz"
    np.savez(path, x=x, y=y)
    data = load(str(path))
    for split in SPLITS:
        for shuffle in (False, True):
            pairs = list(data.batches(split, 8, shuffle=shuffle, device=device))
            rows = data.x[split].shape[0]
            assert len(pairs) == -(-rows // 8)
            assert [len(b[0]) for b in pairs[:-1]] == [8] * (len(pairs) - 1)
            seen = []
            for xb, yb in pairs:
                assert xb.device.type == device.type and yb.device.type == device.type
                assert xb.dtype == torch.float32 and yb.dtype == torch.int64 and xb.shape[1:] == (3,)
                i = np.rint(xb[:, 0].cpu().numpy() * n).astype(np.int64)
                np.testing.assert_array_equal(yb.cpu().numpy(), (i * 7) % 5)
                np.testing.assert_array_equal(xb.cpu().numpy(), x[i])
                seen.append(i)
            seen = np.concatenate(seen)
            assert len(set(seen.tolist())) == rows, "every row once per epoch"
    assert sum(data.x[s].shape[0] for s in SPLITS) == n


def test_observations_and_labels_on_a_device(digits, device):
    obs = digits.observations("test", device=device)
    assert obs.device.type == device.type
    assert torch.equal(obs.cpu(), digits.observations("test"))
    labels = digits.labels("test", device=device)
    assert labels.device.type == device.type and torch.equal(labels.cpu(), digits.y["test"])


# --- real datasets -------------------------------------------------------------------------------

def _idx(path, header):
    with gzip.open(path, "rb") as f:
        return np.frombuffer(f.read(), dtype=np.uint8, offset=header)


@pytest.mark.data
def test_mnist_from_raw_gz(mnist_root):
    data = load("mnist", data_dir=mnist_root)
    assert data.obs_shape == (1, 28, 28) and data.obs_dim == 784
    assert {s: tuple(data.x[s].shape) for s in SPLITS} == {
        "train": (50000, 1, 28, 28), "valid": (10000, 1, 28, 28), "test": (10000, 1, 28, 28)}
    assert data.likelihood == "bernoulli" and data.binarize == "dynamic"
    assert all(data.x[s].dtype == torch.uint8 for s in SPLITS)
    # Training grey levels stored 0..255 (scale 255), so in the unit interval once divided.
    assert data.scale["train"] == 255.0 and data.x["train"].max() == 255
    grey = data.x["train"].float() / data.scale["train"]
    assert grey.min() >= 0 and grey.max() <= 1 and not is_binary(grey)
    assert is_binary(data.x["valid"]) and is_binary(data.x["test"])
    assert data.scale["valid"] == data.scale["test"] == 1.0
    for split in SPLITS:
        obs = data.observations(split)
        assert obs.dtype == torch.float32 and obs.shape == data.x[split].shape and is_binary(obs)
    counts = torch.bincount(torch.cat([data.labels("train"), data.labels("valid")]), minlength=10)
    assert counts.tolist() == MNIST_TRAIN_LABEL_COUNTS
    assert data.y["test"].shape == (10000,)
    assert data.classes() == 10


@pytest.mark.data
def test_mnist_is_stored_as_the_raw_bytes_and_observed_as_bytes_over_255(mnist_root):
    raw = mnist_root / "MNIST" / "raw"
    train = _idx(raw / "train-images-idx3-ubyte.gz", 16).reshape(60000, 1, 28, 28)
    test = _idx(raw / "t10k-images-idx3-ubyte.gz", 16).reshape(10000, 1, 28, 28)
    train_y = _idx(raw / "train-labels-idx1-ubyte.gz", 8)
    test_y = _idx(raw / "t10k-labels-idx1-ubyte.gz", 8)
    expected = {"train": (train[:50000], train_y[:50000]), "valid": (train[50000:], train_y[50000:]),
                "test": (test, test_y)}
    dynamic = load("mnist", data_dir=mnist_root)
    np.testing.assert_array_equal(dynamic.x["train"].numpy(), expected["train"][0])
    grey = load("mnist", data_dir=mnist_root, likelihood="gaussian", binarize="none")
    for split, (images, labels) in expected.items():
        assert grey.x[split].dtype == torch.uint8 and grey.scale[split] == 255.0
        np.testing.assert_array_equal(grey.x[split].numpy(), images)
        np.testing.assert_array_equal(grey.labels(split).numpy(), labels)
        obs = grey.observations(split)
        assert obs.dtype == torch.float32
        np.testing.assert_array_equal(obs.numpy(), images.astype(np.float32) / np.float32(255))


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
        assert tuple(x.shape) == (n, 1, 28, 28)
        assert x.dtype == torch.uint8 and data.scale[split] == 1.0
        assert is_binary(x)
        obs = data.observations(split)
        assert obs.dtype == torch.float32 and torch.equal(obs, x.float())
        assert obs.double().mean().item() == pytest.approx(BINARIZED_MNIST_ONES[split], abs=1e-5)
        assert data.labels(split) is None
    xb, yb = next(iter(data.batches("train", 100)))
    assert tuple(xb.shape) == (100, 1, 28, 28) and xb.dtype == torch.float32 and yb is None
    assert torch.equal(xb, data.observations("train")[:100]), "a statically binarized train split is not redrawn"


@pytest.mark.data
def test_frey_faces(shared_data):
    data = load("frey", data_dir=shared_data)
    assert data.obs_shape == (1, 28, 20)
    assert data.likelihood == "gaussian" and data.binarize == "none"
    assert total(data) == 1965
    assert all(data.x[s].shape[0] > 0 and tuple(data.x[s].shape[1:]) == (1, 28, 20) for s in SPLITS)
    assert all(data.x[s].dtype == torch.uint8 and data.scale[s] == 255.0 for s in SPLITS)
    assert all(data.y[s] is None for s in SPLITS)
    stored = torch.cat([data.x[s] for s in SPLITS])
    assert stored.min().item() == 8 and stored.max().item() == 238
    x = all_observations(data)
    assert x.dtype == torch.float32
    assert x.min().item() == pytest.approx(8 / 255)
    assert x.max().item() == pytest.approx(238 / 255)
    # The splits partition the file's 1965 images (28 rows x 20 columns, one column of ff each).
    with np.load(shared_data / "FreyFaces" / "frey_faces.npz") as f:
        faces = f["ff"].T.reshape(-1, 1, 28, 20)
    np.testing.assert_array_equal(sorted_rows(stored.numpy()), sorted_rows(faces))
    np.testing.assert_array_equal(sorted_rows(x.numpy()), sorted_rows(faces.astype(np.float32) / np.float32(255)))
    with pytest.raises(PyroVAEError, match="labels"):
        data.classes()


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
    assert data.classes() == 3
    # The split is a permutation of the rows, labels travelling with their rows.
    for rows in (torch.cat([data.x[s] for s in SPLITS]), all_observations(data)):
        labels = torch.cat([data.labels(s) for s in SPLITS])
        assert rows.dtype == torch.float32 and labels.dtype == torch.int64
        order = np.lexsort(x.T[::-1])
        got = np.lexsort(rows.numpy().T[::-1])
        np.testing.assert_array_equal(rows.numpy()[got], x[order])
        np.testing.assert_array_equal(labels.numpy()[got], y[order])


def test_float_user_file_keeps_float32_values_as_stored(tmp_path):
    """Floats are used as stored: float32 in memory, scale 1, not divided by 255 even when large."""
    x = np.random.default_rng(5).random((40, 2, 3)) * 200  # float64 grey values 0..200
    path = tmp_path / "floats.npy"
    np.save(path, x)
    data = load(str(path))
    assert data.likelihood == "gaussian" and data.obs_shape == (1, 2, 3)
    for split in SPLITS:
        assert data.x[split].dtype == torch.float32 and data.scale[split] == 1.0
        assert torch.equal(data.observations(split), data.x[split])
        assert epoch(data, split, 7)[0].dtype == torch.float32
    np.testing.assert_array_equal(sorted_rows(all_observations(data).numpy()),
                                  sorted_rows(x.astype(np.float32)[:, None]))


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
    assert all(data.labels(s) is None for s in SPLITS)
    assert all(is_binary(data.x[s]) and tuple(data.x[s].shape[1:]) == (1, 7, 5) for s in SPLITS)
    assert all(data.x[s].dtype == torch.uint8 and data.scale[s] == 1.0 for s in SPLITS)
    np.testing.assert_array_equal(sorted_rows(all_observations(data).numpy()),
                                  sorted_rows(x[:, None].astype(np.float32)))
    xb, yb = next(iter(data.batches("train", 10)))
    assert xb.dtype == torch.float32 and tuple(xb.shape) == (10, 1, 7, 5) and yb is None


def test_npz_grey_images_without_channel_axis_get_one(tmp_path):
    x = np.random.default_rng(6).random((30, 4, 6)).astype(np.float32)
    path = tmp_path / "hw.npz"
    np.savez(path, x=x)
    data = load(str(path))
    assert data.obs_shape == (1, 4, 6) and data.obs_dim == 24
    assert all(tuple(data.x[s].shape[1:]) == (1, 4, 6) for s in SPLITS)
    # Same images, rows and columns not transposed or mixed.
    np.testing.assert_array_equal(sorted_rows(torch.cat([data.x[s] for s in SPLITS]).numpy()),
                                  sorted_rows(x[:, None]))


def test_npz_images_with_channel_axis_and_dynamic_binarization(tmp_path):
    x = np.random.default_rng(2).random((50, 1, 4, 4))
    path = tmp_path / "images.npz"
    np.savez(path, x=x)
    data = load(str(path), likelihood="bernoulli", binarize="dynamic")
    assert data.obs_shape == (1, 4, 4)
    assert data.x["train"].dtype == torch.float32
    assert not is_binary(data.x["train"])
    assert data.x["train"].min() >= 0 and data.x["train"].max() <= 1
    assert is_binary(data.x["valid"]) and is_binary(data.x["test"])
    assert is_binary(data.observations("valid")) and is_binary(data.observations("train"))
    torch.manual_seed(0)
    first, second = epoch(data, "train", 16)[0], epoch(data, "train", 16)[0]
    assert is_binary(first) and is_binary(second) and not torch.equal(first, second)


def test_npy_images_with_three_channels_load(tmp_path):
    """Any number of channels: an (N, 3, H, W) array keeps its channels apart."""
    rng = np.random.default_rng(7)
    x = rng.random((40, 3, 5, 4)).astype(np.float32)
    x[:, 1] += 10  # channel c has values in [10 c, 10 c + 1): a mixed-up axis would show
    x[:, 2] += 20
    path = tmp_path / "rgb.npy"
    np.save(path, x)
    data = load(str(path))
    assert data.obs_shape == (3, 5, 4) and data.obs_dim == 60
    assert data.likelihood == "gaussian"
    assert total(data) == 40
    for split in SPLITS:
        assert tuple(data.x[split].shape[1:]) == (3, 5, 4)
        obs = data.observations(split)
        for c in range(3):
            assert (obs[:, c] >= 10 * c).all() and (obs[:, c] < 10 * c + 1).all()
    np.testing.assert_array_equal(sorted_rows(all_observations(data).numpy()), sorted_rows(x))


def test_integer_valued_float_labels_become_integers(tmp_path):
    x = _grey(40, 3)
    y = np.arange(40) % 4 * 1.0
    path = _save(tmp_path, "d.npz", x=x, y=y)
    data = load(path)
    assert all(data.labels(s).dtype == torch.int64 for s in SPLITS)
    assert sorted(torch.cat([data.labels(s) for s in SPLITS]).tolist()) == sorted(y.astype(int).tolist())
    assert data.classes() == 4


def test_classes_checks_the_labels(tmp_path):
    negative = _save(tmp_path, "neg.npz", x=_grey(40, 3), y=np.arange(40) % 3 - 1)
    with pytest.raises(PyroVAEError, match="negative"):
        load(negative).classes()
    unlabelled = _save(tmp_path, "none.npz", x=_grey(40, 3))
    with pytest.raises(PyroVAEError, match="labels"):
        load(unlabelled).classes()


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
    "no rows": (lambda p: _save(p, "d.npz", x=_grey(0, 3)), {}, "must have shape"),
    "strings as x": (lambda p: _save(p, "d.npz", x=np.array(["a", "b"] * 20).reshape(20, 2)), {}, "real numbers"),
    "labels of the wrong length": (lambda p: _save(p, "d.npz", x=_grey(20, 3), y=np.zeros(19)), {}, "'y'"),
    "string labels": (lambda p: _save(p, "d.npz", x=_grey(20, 3), y=np.array(["cat", "dog"] * 10)), {},
                      "'y'.*integer labels"),
    "non-integer labels": (lambda p: _save(p, "d.npz", x=_grey(20, 3), y=np.arange(20) / 3), {},
                           "'y'.*integer labels"),
    "NaN labels": (lambda p: _save(p, "d.npz", x=_grey(20, 3), y=np.where(np.arange(20) == 3, np.nan, 1.0)), {},
                   "'y'.*integer labels"),
    "object labels": (lambda p: _save(p, "d.npz", x=_grey(20, 3), y=np.array([1, "a"] * 10, dtype=object)), {},
                      "cannot read"),
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
    with pytest.raises(PyroVAEError, match=message) as err:
        load(name, **kwargs)
    # One clear message: a single line, no chained traceback of numpy's internals behind it.
    assert "\n" not in str(err.value)
    assert err.value.__cause__ is None
    assert err.value.__context__ is None or err.value.__suppress_context__


def test_digits_without_binarization_under_bernoulli_is_rejected():
    with pytest.raises(PyroVAEError, match="not binary"):
        load("digits", likelihood="bernoulli", binarize="none")


def test_unknown_dataset_name_lists_the_registry():
    with pytest.raises(PyroVAEError) as err:
        load("cifar")
    for name in DATASETS:
        assert name in str(err.value)
