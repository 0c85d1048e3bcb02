"""Colour and 8-bit images: CIFAR-10 and SVHN read from small files written here in exactly
torchvision's on-disk formats, the layout rule of a user's 4-d uint8 arrays, the 8-bit data a
discretized likelihood (registry meta ``levels=256``) needs, and the greyscale-only binarization.

Expected values come from the arrays the tests wrote, indexed by hand, and from torchvision's own
CIFAR10 / SVHN classes reading the same files (their MD5 check, which a small file cannot pass,
patched out here only)."""

import pickle
import urllib.error

import numpy as np
import pytest
import scipy.io
import torch

from cli_errors import user_error
from pyro_vae import datasets_images
from pyro_vae.data import DATASETS, SPLITS, VALID_LAST, _split_last, load
from pyro_vae.errors import PyroVAEError
from pyro_vae.likelihoods import LIKELIHOODS
from pyro_vae.registry import Entry

EIGHT_BIT = ("dlogistic", "dmol", "categorical")
CIFAR_PER_BATCH, CIFAR_TEST, SVHN_TRAIN, SVHN_TEST = 4, 3, 30, 7


@pytest.fixture
def eight_bit(monkeypatch):
    """The discretized likelihoods in the registry: the real ones where likelihoods.py has them,
    otherwise stand-ins with the same registry meta (levels=256) that the data checks read."""
    for name in EIGHT_BIT:
        if name not in LIKELIHOODS:
            monkeypatch.setitem(LIKELIHOODS._entries, name,
                                Entry(name, _stand_in, "stand-in for a test", meta={"levels": 256}))
    assert all(LIKELIHOODS[n].meta.get("levels") == 256 for n in EIGHT_BIT)
    return EIGHT_BIT


def _stand_in(*args, **kwargs):
    raise AssertionError("a stand-in likelihood is only for the data checks")


@pytest.fixture
def no_download(monkeypatch):
    """Fails the test if anything is fetched: nothing is downloaded without --download."""
    calls = []
    monkeypatch.setattr(datasets_images, "_download", lambda name, data_dir: calls.append((name, data_dir)))
    yield calls
    assert calls == [], "a loader downloaded without --download"


def one_line(err) -> str:
    message = str(err.value)
    assert "\n" not in message and (err.value.__cause__ is None)
    return message


# --- CIFAR-10 ------------------------------------------------------------------------------------

def write_cifar(root, str_keys=(1,), seed=0):
    """torchvision's cifar-10-batches-py/: five training batches and a test batch, each a pickled
    dict with data (N, 3072) uint8 (the red, green and blue 32x32 planes of an image, row-major)
    and labels, plus batches.meta. Files numbered in ``str_keys`` (1-5 training, 6 test, 7 meta)
    have str keys (as the published Python 2 pickles load with latin1), the others bytes keys
    (b'data', as Python 3 pickles them). Returns (train rows (N, 3072), labels, test rows, labels)."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    found = []
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"], start=1):
        n = CIFAR_TEST if name == "test_batch" else CIFAR_PER_BATCH
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [(7 * (CIFAR_PER_BATCH * i + j) + 3) % 10 for j in range(n)]  # every class in the first 10
        entry = {"batch_label": f"batch {i}", "labels": labels, "data": data,
                 "filenames": [f"{i}_{j}.png" for j in range(n)]}
        if i not in str_keys:
            entry = {k.encode(): v for k, v in entry.items()}
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f)
        found.append((data, np.array(labels)))
    meta = {"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"],
            "num_vis": 3072, "num_cases_per_batch": 10000}
    with open(folder / "batches.meta", "wb") as f:  # number 7 of str_keys
        pickle.dump(meta if 7 in str_keys else {k.encode(): v for k, v in meta.items()}, f)
    return (np.concatenate([d for d, _ in found[:5]]), np.concatenate([y for _, y in found[:5]]), *found[5])


def test_cifar10_round_trips_pixels_labels_and_channels(tmp_path, eight_bit, no_download):
    x_train, y_train, x_test, y_test = write_cifar(tmp_path)
    data = load("cifar10", data_dir=tmp_path)
    assert DATASETS["cifar10"].likelihood == data.likelihood == "dlogistic" and data.binarize == "none"
    assert data.obs_shape == (3, 32, 32) and data.obs_dim == 3072
    n_valid = len(x_train) // 10  # 20 images: the last tenth (the last 5000 of the real 50,000)
    expect = {"train": (x_train[:-n_valid], y_train[:-n_valid]), "valid": (x_train[-n_valid:], y_train[-n_valid:]),
              "test": (x_test, y_test)}
    for split in SPLITS:
        x, y = data.x[split], data.y[split]
        assert x.dtype == torch.uint8 and y.dtype == torch.int64 and data.scale[split] == 255.0
        assert tuple(x.shape) == (len(expect[split][0]), 3, 32, 32)
        rows, labels = expect[split]
        for i in range(len(rows)):  # pixel (c, h, w) is byte c * 1024 + h * 32 + w of its row
            for c, h, w in ((0, 0, 0), (1, 5, 7), (2, 31, 30), (0, 31, 31), (2, 0, 1)):
                assert x[i, c, h, w].item() == rows[i, c * 1024 + h * 32 + w]
        np.testing.assert_array_equal(x.numpy().reshape(len(rows), -1), rows)
        np.testing.assert_array_equal(y.numpy(), labels)
        assert torch.equal(data.observations(split), x.float() / 255)
    assert data.classes() == 10


def test_cifar10_reads_as_torchvision_does(tmp_path, monkeypatch, eight_bit, no_download):
    """torchvision's CIFAR10 on the same files (its MD5 check patched out), converted back from
    its (N, H, W, C) to (N, C, H, W): the same images and labels, in the same order."""
    import torchvision.datasets.cifar as tv_cifar

    write_cifar(tmp_path, str_keys=range(1, 8))  # torchvision indexes entry["data"]: str keys only
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *args, **kwargs: True)
    data = load("cifar10", data_dir=tmp_path)
    train, test = tv_cifar.CIFAR10(str(tmp_path), train=True), tv_cifar.CIFAR10(str(tmp_path), train=False)
    ours = np.concatenate([data.x["train"].numpy(), data.x["valid"].numpy()])
    np.testing.assert_array_equal(ours, train.data.transpose(0, 3, 1, 2))
    np.testing.assert_array_equal(np.concatenate([data.y["train"], data.y["valid"]]), train.targets)
    np.testing.assert_array_equal(data.x["test"].numpy(), test.data.transpose(0, 3, 1, 2))
    np.testing.assert_array_equal(data.y["test"].numpy(), test.targets)


def test_validation_split_is_the_last_5000_training_images():
    """The rule on full-size sets (CIFAR-10's 50,000, SVHN's 73,257): fixed, in file order, disjoint."""
    for n in (50000, 73257):
        x = np.arange(n, dtype=np.int64)[:, None]
        raw = _split_last(x, x[:, 0] % 10, x[:7], x[:7, 0], "name")
        assert VALID_LAST == 5000 and raw.x["valid"].shape[0] == 5000 and raw.x["train"].shape[0] == n - 5000
        np.testing.assert_array_equal(raw.x["valid"][:, 0], np.arange(n - 5000, n))
        np.testing.assert_array_equal(raw.x["train"][:, 0], np.arange(n - 5000))
        assert not set(raw.x["train"][:, 0]) & set(raw.x["valid"][:, 0])
    with pytest.raises(PyroVAEError, match="too few"):
        _split_last(np.zeros((9, 1)), np.zeros(9), np.zeros((2, 1)), np.zeros(2), "tiny")


def test_small_splits_are_disjoint_and_cover_the_training_file(tmp_path, eight_bit, no_download):
    x_train, _, _, _ = write_cifar(tmp_path)
    data = load("cifar10", data_dir=tmp_path)
    train = {bytes(r) for r in data.x["train"].numpy().reshape(-1, 3072)}
    valid = {bytes(r) for r in data.x["valid"].numpy().reshape(-1, 3072)}
    assert not train & valid and train | valid == {bytes(r) for r in x_train}
    again = load("cifar10", data_dir=tmp_path)  # the same for every run
    assert all(torch.equal(data.x[s], again.x[s]) for s in SPLITS)


# --- SVHN ----------------------------------------------------------------------------------------

def write_svhn(root, seed=1, y_dtype=np.uint8):
    """torchvision's SVHN files under root/svhn: X (32, 32, 3, N) uint8 and y (N, 1), labels 1..10
    (10 is the digit 0). Returns {split: (X, y)}."""
    rng = np.random.default_rng(seed)
    folder = root / "svhn"
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for split, n in (("train", SVHN_TRAIN), ("test", SVHN_TEST)):
        x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        y = (np.arange(n) % 10 + 1).astype(y_dtype)[:, None]  # every label 1..10, 10 included
        rng.shuffle(y)
        scipy.io.savemat(folder / f"{split}_32x32.mat", {"X": x, "y": y})
        written[split] = (x, y)
    return written


def test_svhn_round_trips_pixels_labels_and_channels(tmp_path, eight_bit, no_download):
    written = write_svhn(tmp_path)
    data = load("svhn", data_dir=tmp_path)
    assert DATASETS["svhn"].likelihood == data.likelihood == "dlogistic" and data.binarize == "none"
    assert data.obs_shape == (3, 32, 32)
    n_valid = SVHN_TRAIN // 10
    x, y = written["train"]
    cut = {"train": slice(0, SVHN_TRAIN - n_valid), "valid": slice(SVHN_TRAIN - n_valid, SVHN_TRAIN),
           "test": slice(0, SVHN_TEST)}
    for split in SPLITS:
        x, y = written["test" if split == "test" else "train"]
        x, y = x[..., cut[split]], y[cut[split], 0]
        got, labels = data.x[split], data.y[split]
        assert got.dtype == torch.uint8 and labels.dtype == torch.int64 and data.scale[split] == 255.0
        assert tuple(got.shape) == (y.shape[0], 3, 32, 32)
        for n in range(y.shape[0]):  # X[h, w, c, n] is pixel (c, h, w) of image n
            for h, w, c in ((0, 0, 0), (3, 9, 1), (31, 2, 2), (17, 31, 0)):
                assert got[n, c, h, w].item() == x[h, w, c, n]
        np.testing.assert_array_equal(got.numpy(), x.transpose(3, 2, 0, 1))
        np.testing.assert_array_equal(labels.numpy(), np.where(y == 10, 0, y))
    all_labels = torch.cat([data.y[s] for s in SPLITS])
    assert all_labels.min() == 0 and all_labels.max() == 9 and (all_labels == 0).sum() > 0
    assert data.x["valid"].shape[0] == n_valid
    train = {bytes(r) for r in data.x["train"].numpy().reshape(len(data.x["train"]), -1)}
    assert not train & {bytes(r) for r in data.x["valid"].numpy().reshape(n_valid, -1)}


def test_svhn_reads_as_torchvision_does(tmp_path, monkeypatch, eight_bit, no_download):
    import torchvision.datasets.svhn as tv_svhn

    write_svhn(tmp_path, y_dtype=np.float64)  # y as MATLAB doubles: the same labels
    monkeypatch.setattr(tv_svhn, "check_integrity", lambda *args, **kwargs: True)
    data = load("svhn", data_dir=tmp_path)
    for split, ours in (("train", ("train", "valid")), ("test", ("test",))):
        theirs = tv_svhn.SVHN(str(tmp_path / "svhn"), split=split)
        np.testing.assert_array_equal(np.concatenate([data.x[s].numpy() for s in ours]), theirs.data)
        np.testing.assert_array_equal(np.concatenate([data.y[s].numpy() for s in ours]), theirs.labels)


# --- missing files, --download, malformed files --------------------------------------------------

def test_missing_files_name_the_path_and_download_is_opt_in(tmp_path, eight_bit, no_download):
    for name, folder in (("cifar10", "cifar-10-batches-py"), ("svhn", "svhn")):
        with pytest.raises(PyroVAEError, match="not found") as err:
            load(name, data_dir=tmp_path)
        message = one_line(err)
        assert str(tmp_path / folder) in message and "--download" in message
    write_cifar(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(PyroVAEError, match="lacks data_batch_3;"):
        load("cifar10", data_dir=tmp_path)
    write_svhn(tmp_path)
    (tmp_path / "svhn" / "test_32x32.mat").unlink()
    with pytest.raises(PyroVAEError, match="lacks test_32x32.mat;"):
        load("svhn", data_dir=tmp_path)


def test_download_goes_to_torchvision_only_when_asked(tmp_path, monkeypatch, eight_bit):
    calls = []
    monkeypatch.setattr(datasets_images, "_download", lambda name, data_dir: calls.append((name, data_dir)))
    write_cifar(tmp_path)
    write_svhn(tmp_path)
    load("cifar10", data_dir=tmp_path)
    load("svhn", data_dir=tmp_path)
    assert calls == []
    load("cifar10", data_dir=tmp_path, download=True)
    load("svhn", data_dir=tmp_path, download=True)
    assert calls == [("cifar10", tmp_path), ("svhn", tmp_path)]


def test_failed_download_is_one_error(tmp_path, monkeypatch, eight_bit):
    """torchvision's own download path, its network call replaced by one that fails."""
    import torchvision.datasets.cifar as tv_cifar
    import torchvision.datasets.utils as tv_utils

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network here")

    monkeypatch.setattr(tv_cifar, "download_and_extract_archive", offline)
    monkeypatch.setattr(tv_utils, "download_url", offline)
    for name in ("cifar10", "svhn"):
        with pytest.raises(PyroVAEError, match=f"--download of {name} into .* failed: .*no network here") as err:
            load(name, data_dir=tmp_path, download=True)
        one_line(err)


def _pickle(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def _svhn_mat(path, **arrays):
    scipy.io.savemat(path, arrays)


BAD_IMAGE_FILES = {
    "truncated CIFAR batch": ("cifar10", lambda d: (d / "data_batch_2").write_bytes(
        (d / "data_batch_2").read_bytes()[:500]), "cannot read .*data_batch_2 as a pickled CIFAR-10 batch"),
    "CIFAR batch of the wrong width": ("cifar10", lambda d: _pickle(d / "test_batch", {
        b"data": np.zeros((3, 1024), np.uint8), b"labels": [0, 1, 2]}), r"'data' must be \(N, 3072\) uint8"),
    "CIFAR batch of floats": ("cifar10", lambda d: _pickle(d / "test_batch", {
        b"data": np.zeros((3, 3072)), b"labels": [0, 1, 2]}), r"'data' must be \(N, 3072\) uint8"),
    "CIFAR labels of the wrong length": ("cifar10", lambda d: _pickle(d / "test_batch", {
        b"data": np.zeros((3, 3072), np.uint8), b"labels": [0, 1]}), "'labels' must be 3 integers 0..9"),
    "CIFAR label 10": ("cifar10", lambda d: _pickle(d / "data_batch_1", {
        b"data": np.zeros((2, 3072), np.uint8), b"labels": [3, 10]}), "'labels' must be 2 integers 0..9"),
    "CIFAR batch not a dict": ("cifar10", lambda d: _pickle(d / "data_batch_5", [1, 2]), "not a dict"),
    "SVHN X channels-first": ("svhn", lambda d: _svhn_mat(d / "train_32x32.mat", X=np.zeros((3, 32, 32, 4), np.uint8),
                                                         y=np.ones((4, 1))), r"X must be \(32, 32, 3, N\) uint8"),
    "SVHN without y": ("svhn", lambda d: _svhn_mat(d / "test_32x32.mat", X=np.zeros((32, 32, 3, 4), np.uint8)),
                       "y must hold 4 labels 1..10"),
    "SVHN label 0": ("svhn", lambda d: _svhn_mat(d / "test_32x32.mat", X=np.zeros((32, 32, 3, 2), np.uint8),
                                                 y=np.array([[0], [3]])), "y must hold 2 labels 1..10"),
    "SVHN not a .mat file": ("svhn", lambda d: (d / "train_32x32.mat").write_text("X,y\n"),
                             "cannot read .*train_32x32.mat as SVHN's .mat file"),
}


@pytest.mark.parametrize("case", BAD_IMAGE_FILES)
def test_malformed_dataset_files_raise_one_error(tmp_path, eight_bit, no_download, case):
    name, spoil, message = BAD_IMAGE_FILES[case]
    if name == "cifar10":
        write_cifar(tmp_path)
        spoil(tmp_path / "cifar-10-batches-py")
    else:
        write_svhn(tmp_path)
        spoil(tmp_path / "svhn")
    with pytest.raises(PyroVAEError, match=message) as err:
        load(name, data_dir=tmp_path)
    one_line(err)


# --- a user's 4-d uint8 arrays: (N, C, H, W) or (N, H, W, C) -------------------------------------

def _save(tmp_path, name, **arrays):
    path = tmp_path / name
    if name.endswith(".npy"):
        np.save(path, arrays["x"])
    else:
        np.savez(path, **arrays)
    return str(path)


def _pixels(*shape, seed=4):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def stored(data) -> np.ndarray:
    return np.concatenate([data.x[s].numpy() for s in SPLITS])


def sorted_rows(rows):
    flat = np.asarray(rows).reshape(len(rows), -1)
    return flat[np.lexsort(flat.T[::-1])]


@pytest.mark.parametrize("shape, channels_last", [
    ((40, 5, 6, 3), True),  # RGB channels-last
    ((40, 7, 6, 4), True),  # RGBA channels-last
    ((40, 8, 8, 1), True),  # grey channels-last
    ((40, 3, 5, 6), False),  # already (N, C, H, W)
    ((40, 1, 9, 7), False),
    ((40, 3, 5, 4), False),  # ambiguous: the second axis could be channels, so it is
    ((40, 4, 6, 3), False),
    ((40, 6, 5, 7), False),  # no axis looks like channels: as stored
])
def test_uint8_npz_layout_rule(tmp_path, shape, channels_last):
    x = _pixels(*shape)
    data = load(_save(tmp_path, "images.npz", x=x), likelihood="gaussian")
    expect = x.transpose(0, 3, 1, 2) if channels_last else x
    assert data.obs_shape == expect.shape[1:]
    assert all(data.x[s].dtype == torch.uint8 and data.scale[s] == 1.0 for s in SPLITS)  # gaussian: as stored
    np.testing.assert_array_equal(sorted_rows(stored(data)), sorted_rows(expect))


def test_channels_last_pixels_land_on_their_channel(tmp_path):
    x = np.zeros((30, 5, 6, 3), np.uint8)
    x[..., 0], x[..., 1], x[..., 2] = 10, 20, 30  # R, G, B
    x[:, 2, 4, 1] = 99  # one green pixel at row 2, column 4
    data = load(_save(tmp_path, "rgb.npy", x=x), likelihood="gaussian")
    got = stored(data)
    assert got.shape == (30, 3, 5, 6)
    assert (got[:, 0] == 10).all() and (got[:, 2] == 30).all()
    assert (got[:, 1, 2, 4] == 99).all() and ((got[:, 1] == 20).sum() == 30 * 29)


def test_float_4d_arrays_are_never_transposed(tmp_path):
    x = _pixels(30, 5, 6, 3).astype(np.float32)
    data = load(_save(tmp_path, "f.npz", x=x))
    assert data.obs_shape == (5, 6, 3)


def test_posterior_sd_follows_a_transposed_x(tmp_path):
    x = _pixels(30, 5, 6, 3)
    data = load(_save(tmp_path, "sd.npz", x=x, x_sd=x.astype(np.float32) / 1000), likelihood="gaussian")
    assert data.obs_shape == (3, 5, 6) and tuple(data.sd["train"].shape[1:]) == (3, 5, 6)
    assert torch.equal(data.sd["train"], data.x["train"].float() / 1000)


# --- 8-bit data under a discretized likelihood ---------------------------------------------------

def test_uint8_file_is_8_bit_under_a_discretized_likelihood(tmp_path, eight_bit):
    x = _pixels(40, 3, 4, 4)
    path = _save(tmp_path, "rgb.npz", x=x)
    for likelihood in eight_bit:
        data = load(path, likelihood=likelihood)
        assert all(data.x[s].dtype == torch.uint8 and data.scale[s] == 255.0 for s in SPLITS)
        np.testing.assert_array_equal(sorted_rows(stored(data)), sorted_rows(x))
        obs = torch.cat([data.observations(s) for s in SPLITS])
        assert torch.equal(obs * 255, obs.mul(255).round()) and obs.max() <= 1  # the model sees k / 255
    gaussian = load(path)  # unchanged: a uint8 file under gaussian is used as stored
    assert gaussian.likelihood == "gaussian" and all(gaussian.scale[s] == 1.0 for s in SPLITS)


def test_integer_valued_floats_are_8_bit(tmp_path, eight_bit):
    x = _pixels(40, 1, 5, 5).astype(np.float64)
    x[0, 0, 0, :2] = (0, 255)
    data = load(_save(tmp_path, "ints.npy", x=x), likelihood="dlogistic")
    assert all(data.x[s].dtype == torch.uint8 and data.scale[s] == 255.0 for s in SPLITS)
    np.testing.assert_array_equal(sorted_rows(stored(data)), sorted_rows(x.astype(np.uint8)))


@pytest.mark.data
def test_mnist_keeps_its_grey_levels_under_dlogistic(mnist_root, eight_bit):
    data = load("mnist", data_dir=mnist_root, likelihood="dlogistic", binarize="none")
    grey = load("mnist", data_dir=mnist_root, likelihood="gaussian", binarize="none")
    for split in SPLITS:
        assert data.x[split].dtype == torch.uint8 and data.scale[split] == 255.0
        assert torch.equal(data.x[split], grey.x[split])
    assert len(torch.unique(data.x["test"])) == 256


@pytest.mark.data
def test_frey_keeps_its_grey_levels_under_categorical(shared_data, eight_bit):
    data = load("frey", data_dir=shared_data, likelihood="categorical")
    stored_ = torch.cat([data.x[s] for s in SPLITS])
    assert stored_.dtype == torch.uint8 and stored_.min() == 8 and stored_.max() == 238
    assert all(data.scale[s] == 255.0 for s in SPLITS)
    assert torch.cat([data.observations(s) for s in SPLITS]).max().item() == pytest.approx(238 / 255)


def _with(value, dtype=np.float32):
    x = _pixels(40, 1, 4, 4).astype(dtype)
    x[4, 0, 1, 2] = value
    return x


# (make the data path, given tmp_path; load keywords; the message)
BAD_8_BIT = {
    "non-integer values": (lambda p: _save(p, "d.npz", x=_with(12.5)), dict(likelihood="dlogistic"),
                           r"scores 8-bit pixels \(integers 0..255\), and the \w+ split of .* holds non-integer "
                           r"values \(e.g. 12.5\)"),
    "values in [0, 1]": (lambda p: _save(p, "d.npz", x=_pixels(40, 6).astype(np.float32) / 255),
                         dict(likelihood="categorical"), "non-integer values"),
    "values above 255": (lambda p: _save(p, "d.npy", x=_with(256)), dict(likelihood="dmol"),
                         r"holds values in \[0, 256\]"),
    "negative values": (lambda p: _save(p, "d.npz", x=_with(-1)), dict(likelihood="dlogistic"),
                        r"holds values in \[-1, 25\d\]"),
    "binarize dynamic": (lambda p: _save(p, "d.npz", x=_pixels(40, 1, 4, 4)),
                         dict(likelihood="dlogistic", binarize="dynamic"),
                         "--binarize dynamic would make them 0/1: pass --binarize none"),
    "binarize static": (lambda p: _save(p, "d.npz", x=_pixels(40, 1, 4, 4)),
                        dict(likelihood="categorical", binarize="static"), "--binarize static would make them 0/1"),
    "posterior rows": (lambda p: _save(p, "d.npz", x=_pixels(40, 6).astype(np.float32), x_sd=np.ones((40, 6))),
                       dict(likelihood="dlogistic"), r"holds posterior rows \(x_sd\).*cannot score"),
    "digits' 17 levels": (lambda p: "digits", dict(likelihood="dlogistic", binarize="none"),
                          r"digits has 17 levels \(0..16\)"),
    "colour, dynamic": (lambda p: _save(p, "c.npz", x=_pixels(40, 6, 6, 3)), dict(likelihood="bernoulli",
                                                                                  binarize="dynamic"),
                        r"--binarize dynamic draws one 0/1 value per grey level, and .* has 3 channels \(colour\)"),
    "colour floats, static": (lambda p: _save(p, "c.npy", x=_pixels(40, 3, 4, 4).astype(np.float32) / 255),
                              dict(likelihood="bernoulli", binarize="static"), r"has 3 channels \(colour\)"),
}


@pytest.mark.parametrize("case", BAD_8_BIT)
def test_bad_8_bit_inputs_raise_one_error(tmp_path, eight_bit, case):
    make, kwargs, message = BAD_8_BIT[case]
    with pytest.raises(PyroVAEError, match=message) as err:
        load(make(tmp_path), **kwargs)
    one_line(err)


def test_colour_datasets_refuse_binarization(tmp_path, eight_bit, no_download):
    write_cifar(tmp_path)
    write_svhn(tmp_path)
    for name in ("cifar10", "svhn"):
        for binarize in ("dynamic", "static"):
            with pytest.raises(PyroVAEError, match=f"--binarize {binarize} .* 3 channels") as err:
                load(name, data_dir=tmp_path, likelihood="bernoulli", binarize=binarize)
            assert "dlogistic" in one_line(err)  # the message points at the 8-bit likelihoods


def test_grey_binarization_unchanged(tmp_path):
    data = load(_save(tmp_path, "g.npz", x=_pixels(40, 1, 4, 4).astype(np.float32) / 255), likelihood="bernoulli",
                binarize="static")
    assert all(((data.x[s] == 0) | (data.x[s] == 1)).all() for s in SPLITS)


# --- through the command line: exit code 2, one line ---------------------------------------------

TINY = ["--latent-dim", "2", "--hidden", "8", "--batch-size", "8", "--epochs", "1", "--device", "cpu", "--quiet"]

CLI_CASES = {
    "missing cifar10": (lambda p: ["--dataset", "cifar10", "--data-dir", str(p / "none")],
                        ["cifar10 not found", "cifar-10-batches-py", "--download"]),
    "missing svhn": (lambda p: ["--dataset", "svhn", "--data-dir", str(p / "none")],
                     ["svhn not found", "train_32x32.mat"]),
    "colour binarized": (lambda p: ["--dataset", "cifar10", "--data-dir", _cifar_dir(p), "--binarize", "dynamic"],
                         ["--binarize dynamic", "3 channels (colour)"]),
    "non-integer 8-bit": (lambda p: ["--dataset", _save(p, "d.npz", x=_with(0.5)), "--likelihood", "dlogistic"],
                          ["non-integer values"]),
    "out of range 8-bit": (lambda p: ["--dataset", _save(p, "d.npz", x=_with(300.0)), "--likelihood", "categorical"],
                           ["values in [0, 300]"]),
    "8-bit binarized": (lambda p: ["--dataset", _save(p, "d.npz", x=_pixels(40, 1, 4, 4)), "--likelihood",
                                   "dlogistic", "--binarize", "static"], ["would make them 0/1"]),
    "8-bit posterior rows": (lambda p: ["--dataset", _save(p, "d.npz", x=_pixels(40, 6).astype(np.float32),
                                                           x_sd=np.ones((40, 6))), "--likelihood", "dmol"],
                             ["posterior rows (x_sd)"]),
    "mnist-style default binarization under dlogistic": (lambda p: ["--dataset", "digits", "--likelihood",
                                                                    "dlogistic"], ["would make them 0/1"]),
}


def _cifar_dir(tmp_path):
    write_cifar(tmp_path / "data")
    return str(tmp_path / "data")


@pytest.mark.parametrize("case", CLI_CASES)
def test_cli_data_errors(capsys, tmp_path, monkeypatch, eight_bit, no_download, case):
    make, words = CLI_CASES[case]
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    line = user_error(capsys, ["train", *TINY, *make(tmp_path), "--out", str(out)])
    for word in words:
        assert word in line
    assert not out.exists()
