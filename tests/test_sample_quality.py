"""Sample-quality metrics and the shipped feature nets.

The Fréchet distance is checked against the closed form of the moments it estimates and against
the diagonal case written out by hand; precision and recall against sets whose answer is known
exactly (identical sets, far-apart clusters, a subset of the real manifold). The shipped nets are
checked by their sha256 and by classifying the test splits again, here, with labels the nets
never saw."""

import shutil

import numpy as np
import pytest
import scipy.linalg
import torch

from pyro_vae import features
from pyro_vae.data import load as load_data
from pyro_vae.errors import PyroVAEError
from pyro_vae.features import train as feature_train
from pyro_vae.sample_quality import frechet_distance, gaussian_frechet, moments, precision_recall


def _random_cov(rng, d):
    a = rng.standard_normal((d, d))
    return a @ a.T + 0.1 * np.eye(d)


# --- Fréchet distance ------------------------------------------------------------------------


def test_frechet_of_a_set_against_itself_is_zero():
    x = torch.randn(500, 16, generator=torch.Generator().manual_seed(0)) * 3 + 5
    assert frechet_distance(x, x) < 1e-8
    assert frechet_distance(x, x.clone()) < 1e-8


def test_frechet_of_gaussian_samples_matches_the_closed_form_of_their_moments():
    rng = np.random.default_rng(1)
    mu1, mu2 = np.array([0.0, 1.0, -1.0]), np.array([0.5, 0.0, 1.0])
    cov1 = np.array([[2.0, 0.8, 0.3], [0.8, 1.0, -0.4], [0.3, -0.4, 1.5]])
    cov2 = np.array([[1.0, -0.5, 0.6], [-0.5, 2.0, 0.2], [0.6, 0.2, 0.8]])
    assert np.linalg.eigvalsh(cov1).min() > 0.1 and np.linalg.eigvalsh(cov2).min() > 0.1
    n = 200_000
    a = rng.multivariate_normal(mu1, cov1, size=n)
    b = rng.multivariate_normal(mu2, cov2, size=n)
    exact = gaussian_frechet(mu1, cov1, mu2, cov2)
    # the textbook form through scipy's general square root of cov1 cov2 (real for SPD pairs)
    textbook = np.sum((mu1 - mu2) ** 2) + np.trace(cov1 + cov2 - 2 * scipy.linalg.sqrtm(cov1 @ cov2).real)
    assert exact == pytest.approx(textbook, abs=1e-9) and exact > 5
    # sampling noise of the moments at this N: a standard deviation of about 0.02 on this distance
    assert frechet_distance(a, b) == pytest.approx(exact, abs=0.08)
    # the plug-in moments give the same number as the function on features
    assert frechet_distance(a, b) == pytest.approx(gaussian_frechet(*moments(a), *moments(b)), abs=1e-10)
    # and the closed form is not trivially satisfied: a shifted mean moves it by ||shift||^2
    assert gaussian_frechet(mu1 + np.array([2.0, 0, 0]), cov1, mu1, cov1) == pytest.approx(4.0, abs=1e-9)


def test_gaussian_frechet_diagonal_case_and_symmetry():
    rng = np.random.default_rng(2)
    for d in (1, 4, 30):
        mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
        v1, v2 = rng.uniform(0.01, 4, d), rng.uniform(0.01, 4, d)
        expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2)
        assert gaussian_frechet(mu1, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(expected, abs=1e-10)
        cov1, cov2 = _random_cov(rng, d), _random_cov(rng, d)
        assert gaussian_frechet(mu1, cov1, mu2, cov2) == pytest.approx(gaussian_frechet(mu2, cov2, mu1, cov1),
                                                                      abs=1e-10)


def test_gaussian_frechet_of_singular_covariances_is_finite_and_non_negative():
    # rank-1 covariances: round-off makes eigenvalues slightly negative, which must not give NaN
    v = np.array([[1.0], [2.0], [3.0]])
    cov = v @ v.T
    assert gaussian_frechet(np.zeros(3), cov, np.zeros(3), cov) == pytest.approx(0.0, abs=1e-7)
    assert gaussian_frechet(np.zeros(3), cov, np.zeros(3), np.zeros((3, 3))) == pytest.approx(14.0, abs=1e-9)


def test_frechet_errors():
    with pytest.raises(PyroVAEError, match="different sizes"):
        frechet_distance(np.zeros((5, 3)), np.zeros((5, 4)))
    with pytest.raises(PyroVAEError, match="NaN"):
        frechet_distance(np.full((5, 3), np.nan), np.zeros((5, 3)))
    with pytest.raises(PyroVAEError, match=r"shape \(N, D\)"):
        frechet_distance(np.zeros(5), np.zeros((5, 3)))
    with pytest.raises(PyroVAEError, match="one D"):
        gaussian_frechet(np.zeros(3), np.eye(3), np.zeros(2), np.eye(2))


# --- precision and recall --------------------------------------------------------------------


def test_precision_recall_of_identical_sets_is_one():
    x = torch.randn(700, 5, generator=torch.Generator().manual_seed(3))
    # chunk smaller than the set: the blockwise neighbour search and coverage are exercised
    result = precision_recall(x, x.clone(), k=3, chunk=256)
    assert result == {"precision": 1.0, "precision_se": 0.0, "recall": 1.0, "recall_se": 0.0}


def test_precision_recall_of_far_apart_clusters_is_zero():
    g = torch.Generator().manual_seed(4)
    real, fake = torch.randn(300, 4, generator=g), torch.randn(200, 4, generator=g) + 100
    result = precision_recall(real, fake, chunk=128)
    assert result["precision"] == 0.0 and result["recall"] == 0.0


def test_a_subset_of_the_real_manifold_has_full_precision_and_partial_recall():
    g = torch.Generator().manual_seed(5)
    real = torch.rand(2000, 2, generator=g)
    fake = real[real[:, 0] < 0.5]  # half the square: every sample realistic, half the variety missing
    result = precision_recall(real, fake, k=3, chunk=500)
    assert result["precision"] == 1.0
    assert 0.4 < result["recall"] < 0.65
    p = result["recall"]
    assert result["recall_se"] == pytest.approx(np.sqrt(p * (1 - p) / 2000))


def test_radii_are_the_kth_neighbour_among_the_others():
    # points on a line at 0, 1, 3, 6, 10: the 2nd nearest other point of 0 is 3 away, of 10 is 7 (4 to 6, 7 to 3)
    x = torch.tensor([[0.0], [1.0], [3.0], [6.0], [10.0]])
    from pyro_vae.sample_quality import _kth_neighbour_radii

    for chunk in (1, 2, 5):
        assert _kth_neighbour_radii(x.double(), 2, chunk).tolist() == [3.0, 2.0, 3.0, 4.0, 7.0]
    # the balls' edges: 10's ball (radius 7 with k = 2) holds 16.9 but not 17.1, and no other
    # ball reaches that far (6's radius is 4)
    assert precision_recall(x, torch.tensor([[16.6], [16.7], [16.8], [16.9]]), k=2)["precision"] == 1.0
    assert precision_recall(x, torch.tensor([[17.1], [17.2], [17.3], [17.4]]), k=2)["precision"] == 0.0
    # with k = 1 the same ball has radius 4: 13.9 inside, 14.1 outside
    assert precision_recall(x, torch.tensor([[13.7], [13.8], [13.9]]), k=1)["precision"] == 1.0
    assert precision_recall(x, torch.tensor([[14.1], [14.2], [14.3]]), k=1)["precision"] == 0.0


def test_precision_recall_errors():
    with pytest.raises(PyroVAEError, match="at least 4"):
        precision_recall(np.zeros((3, 2)), np.zeros((10, 2)), k=3)
    with pytest.raises(PyroVAEError, match="positive integer"):
        precision_recall(np.zeros((10, 2)), np.zeros((10, 2)), k=0)


# --- feature nets ----------------------------------------------------------------------------


def test_registry_and_dataset_lookup():
    assert set(features.FEATURE_NETS) >= {"mnist-cnn-v1", "digits-cnn-v1"}
    assert features.for_dataset("mnist") == features.for_dataset("binarized-mnist") == "mnist-cnn-v1"
    assert features.for_dataset("digits") == "digits-cnn-v1"
    assert features.for_dataset("frey") is None
    with pytest.raises(PyroVAEError, match="unknown feature net"):
        features.load("no-such-net")


@pytest.mark.parametrize("name", ["mnist-cnn-v1", "digits-cnn-v1"])
def test_shipped_files_match_the_registry(name):
    entry = features.FEATURE_NETS[name]
    path = features.shipped_path(name)
    assert path.is_file() and path.stat().st_size < 200_000
    assert features.sha256_of(path) == entry.sha256
    net, info = features.load(name)
    assert not net.training
    assert info["name"] == info["version"] == name and info["sha256"] == entry.sha256
    assert info["feature_dim"] == 64 and info["obs_shape"] == net.obs_shape
    assert info["trained_on"] in entry.datasets
    assert sum(p.numel() for p in net.parameters()) < 50_000


def test_digits_net_classifies_the_digits_test_split():
    net, info = features.load("digits-cnn-v1")
    data = load_data("digits", likelihood="gaussian", binarize="none")
    x, y = data.observations("test"), data.labels("test")
    assert x.shape[1:] == (1, 8, 8) and float(x.max()) == 1.0
    acc = features.accuracy(net, x, y)
    assert acc >= 0.95
    assert acc == pytest.approx(info["test_accuracy"], abs=1e-9)
    # the digits' default binarization is dynamic: the net reads 0/1 test images and samples too
    binary = torch.bernoulli(x, generator=torch.Generator().manual_seed(0))
    assert features.accuracy(net, binary, y) >= 0.9


@pytest.mark.data
def test_mnist_net_classifies_grey_and_binarized_mnist_test_images(mnist_root):
    net, info = features.load("mnist-cnn-v1")
    data = load_data("mnist", mnist_root, likelihood="gaussian", binarize="none")
    x, y = data.observations("test"), data.labels("test")
    assert x.shape == (10000, 1, 28, 28)
    grey = features.accuracy(net, x, y)
    binary = features.accuracy(net, torch.bernoulli(x, generator=torch.Generator().manual_seed(7)), y)
    assert grey >= 0.97 and binary >= 0.97
    assert grey == pytest.approx(info["test_accuracy"], abs=1e-9)


def test_extract_is_deterministic_and_independent_of_the_batch_size():
    net, _ = features.load("digits-cnn-v1")
    x = torch.rand(230, 1, 8, 8, generator=torch.Generator().manual_seed(8))
    a = features.extract(net, x, batch_size=500)
    assert a.shape == (230, 64) and a.dtype == torch.float64
    assert torch.equal(a, features.extract(net, x, batch_size=500))
    for batch_size in (1, 7, 100):
        torch.testing.assert_close(features.extract(net, x, batch_size=batch_size), a, rtol=1e-5, atol=1e-6)
    # flat observations of the right size are images too; a wrong shape is a one-line error
    torch.testing.assert_close(features.extract(net, x.reshape(230, 64)), a, rtol=1e-5, atol=1e-6)
    with pytest.raises(PyroVAEError, match=r"reads images of shape \(1, 8, 8\)"):
        features.extract(net, torch.rand(5, 1, 28, 28))


def test_a_corrupted_or_truncated_file_is_a_one_line_error(tmp_path, monkeypatch):
    name = "digits-cnn-v1"
    original = features.shipped_path(name)
    blob = original.read_bytes()
    copy = tmp_path / "features"
    copy.mkdir()
    monkeypatch.setattr(features, "HERE", copy)
    (copy / original.name).write_bytes(blob)
    features.load(name)  # the copy is intact
    for bad in (blob[: len(blob) // 2], blob[:-1] + bytes([blob[-1] ^ 1]), b""):
        (copy / original.name).write_bytes(bad)
        with pytest.raises(PyroVAEError, match="sha256") as err:
            features.load(name)
        assert "\n" not in str(err.value)
    (copy / original.name).unlink()
    with pytest.raises(PyroVAEError, match="missing"):
        features.load(name)
    # a user's file has no registry hash: the reader itself must refuse a truncated or foreign file
    for bad, message in ((blob[: len(blob) // 2], "cannot read"), (b"not a torch file", "cannot read")):
        path = tmp_path / "user.pt"
        path.write_bytes(bad)
        with pytest.raises(PyroVAEError, match=message) as err:
            features.load_file(path)
        assert "\n" not in str(err.value)
    torch.save({"format": "something/else"}, tmp_path / "other.pt")
    with pytest.raises(PyroVAEError, match="not a pyro_vae feature net"):
        features.load_file(tmp_path / "other.pt")
    with pytest.raises(PyroVAEError, match="not found"):
        features.load_file(tmp_path / "absent.pt")


def test_load_file_refuses_weights_of_another_shape(tmp_path):
    net = features.FeatureNet((1, 8, 8), 10)
    path = tmp_path / "net.pt"
    features.save(path, net, "mine", 0.5, 0, "x.npz")
    record = torch.load(path, weights_only=True)
    record["obs_shape"] = [3, 8, 8]
    torch.save(record, path)
    with pytest.raises(PyroVAEError, match="do not fit"):
        features.load_file(path)


def test_train_on_a_users_npz_and_read_it_back(tmp_path, capsys):
    # two classes a net can tell apart at once: a bright top half or a bright bottom half
    rng = np.random.default_rng(9)
    y = rng.integers(0, 2, 400)
    x = rng.uniform(0, 0.3, (400, 8, 8)).astype(np.float32)
    for i, label in enumerate(y):
        x[i, :4] += 0.7 * (label == 0)
        x[i, 4:] += 0.7 * (label == 1)
    npz = tmp_path / "halves.npz"
    np.savez(npz, x=x, y=y)
    out = tmp_path / "halves.pt"
    assert feature_train.main(["--dataset", str(npz), "--out", str(out), "--epochs", "3", "--batch-size", "32",
                               "--threads", "1"]) == 0
    assert "test accuracy" in capsys.readouterr().out
    net, info = features.load_file(out)
    assert info["name"] == "halves" and info["trained_on"] == "halves.npz" and info["obs_shape"] == (1, 8, 8)
    assert info["test_accuracy"] >= 0.9 and info["classes"] == 2
    first = features.sha256_of(out)
    shutil.move(out, tmp_path / "first.pt")
    feature_train.main(["--dataset", str(npz), "--out", str(out), "--epochs", "3", "--batch-size", "32",
                        "--threads", "1"])
    assert features.sha256_of(out) == first  # seeded and deterministic: the same bytes again
    # a dataset without labels, or outside [0, 1], is refused before training
    np.savez(tmp_path / "unlabelled.npz", x=x)
    np.savez(tmp_path / "bytes.npz", x=(x * 255).astype(np.float32) + 1, y=y)
    for bad, message in (("unlabelled.npz", "no labels"), ("bytes.npz", r"values in \[")):
        assert feature_train.main(["--dataset", str(tmp_path / bad), "--out", str(tmp_path / "no.pt")]) == 2
        assert message.replace("\\", "") in capsys.readouterr().err
