"""The conditional VAE (``--model cvae``): closed forms of a linear-Gaussian CVAE, labelled data
(observations keep their shape, the label travels beside them), the guides conditioned on the
label, and the command line."""

import json
import math

import numpy as np
import pyro
import pyro.distributions as dist
from pyro import poutine
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import pyro_vae
from pyro_vae import contract
from pyro_vae.cli import main
from pyro_vae.data import Data, load as load_dataset
from pyro_vae.exact import GRID_BOX, grid_posterior
from pyro_vae.evaluate import log_weight_terms, per_datapoint
from pyro_vae.guides import AmortizedGuide
from pyro_vae.models import ConditionalVAE, StandardNormal, WithLabel, onehot
from pyro_vae.objectives import trace_log_probs
from pyro_vae.run import load_data
from cli_errors import user_error
from linear_gaussian import B, SIGMA, W, FixedScaleNormal

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# Each class shifts the mean image by one column of M: the label must reach the decoder.
M = [[1.0, -1.0, 0.0], [0.0, 0.5, 2.0], [0.3, 0.0, -0.7], [-1.2, 0.4, 0.0], [0.0, 0.9, 0.6]]


@pytest.fixture
def double():
    """Closed forms are compared to 1e-8: float64 for the tests that ask for it."""
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(dtype)


class LabelAffineGuide(AmortizedGuide):
    """q(z|x, y) = N(A [x | e_y] + c, cov) with cov fixed: the features [x | e_y] are those of the
    package's ``WithLabel`` encoder on an identity trunk."""

    def __init__(self, A: torch.Tensor, c: torch.Tensor, cov: torch.Tensor, classes: int):
        super().__init__(WithLabel(nn.Identity(), classes), A.shape[0])
        self.register_buffer("A", A.clone())
        self.register_buffer("c", c.clone())
        self.register_buffer("cov", cov.clone())

    def loc(self, x, y):
        return self.features(x, y) @ self.A.T + self.c

    def dist(self, x, y=None):
        return dist.MultivariateNormal(self.loc(x, y), scale_tril=torch.linalg.cholesky(self.cov))

    @torch.no_grad()
    def mean(self, x, y=None, samples: int = 0):
        return self.loc(x, y)

    @torch.no_grad()
    def moments(self, x, y=None, samples: int = 0):
        loc = self.loc(x, y)
        return loc, self.cov.diagonal().expand_as(loc)


class LinearCVAE:
    """p(z) = N(0, I), p(x|z, y) = N(W z + M e_y + b, sigma^2 I): log p(x|y) = log N(x; b + M e_y,
    W W^T + sigma^2 I), and p(z|x, y) = N(A (x - b - M e_y), S) with S = (I + W^T W / sigma^2)^-1,
    A = S W^T / sigma^2."""

    def __init__(self):
        self.W, self.M, self.b = (torch.tensor(v, dtype=torch.float64) for v in (W, M, B))
        self.D, self.L = self.W.shape
        self.C = self.M.shape[1]

    def model(self) -> ConditionalVAE:
        decoder = nn.Linear(self.L + self.C, self.D)
        with torch.no_grad():
            decoder.weight.copy_(torch.cat([self.W, self.M], 1))
            decoder.bias.copy_(self.b)
        return ConditionalVAE(decoder, FixedScaleNormal(SIGMA), StandardNormal(self.L), self.L, self.C)

    def data(self, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """(x (n, D), y (n,)) drawn from the model, with a private generator."""
        g = torch.Generator().manual_seed(seed)
        y = torch.randint(self.C, (n,), generator=g)
        z = torch.randn(n, self.L, generator=g, dtype=torch.float64)
        x = z @ self.W.T + self.M[:, y].T + self.b + SIGMA * torch.randn(n, self.D, generator=g, dtype=torch.float64)
        return x, y

    def mean_image(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return z @ self.W.T + self.M[:, y].T + self.b

    def log_px_given_y(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        cov = self.W @ self.W.T + SIGMA ** 2 * torch.eye(self.D, dtype=torch.float64)
        return dist.MultivariateNormal(self.M[:, y].T + self.b, covariance_matrix=cov).log_prob(x)

    def posterior(self) -> tuple[torch.Tensor, torch.Tensor]:
        S = torch.linalg.inv(torch.eye(self.L, dtype=torch.float64) + self.W.T @ self.W / SIGMA ** 2)
        return S @ self.W.T / SIGMA ** 2, S

    def posterior_mean(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        A, _ = self.posterior()
        return (x - self.b - self.M[:, y].T) @ A.T

    def exact_guide(self) -> LabelAffineGuide:
        A, S = self.posterior()
        return LabelAffineGuide(torch.cat([A, -A @ self.M], 1), -A @ self.b, S, self.C)


# ---------------------------------------------------------------------------------------------
# the linear-Gaussian CVAE: every number in closed form


@pytest.mark.usefixtures("double")
def test_log_terms_match_the_closed_form_and_the_model_trace():
    lin = LinearCVAE()
    model, guide = lin.model(), lin.exact_guide()
    x, y = lin.data(7)
    z = torch.randn(7, lin.L, dtype=torch.float64)
    log_prior = dist.Normal(0.0, 1.0).log_prob(z).sum(-1)
    log_lik = dist.Normal(lin.mean_image(z, y), SIGMA).log_prob(x).sum(-1)
    terms = model.log_terms(x, z, y)
    torch.testing.assert_close(terms[0], log_prior, rtol=0, atol=1e-10)
    torch.testing.assert_close(terms[1], log_lik, rtol=0, atol=1e-10)
    torch.testing.assert_close(contract.log_joint(model, x, {"z": z}, y), log_prior + log_lik, rtol=0, atol=1e-10)
    # another label is another likelihood
    other = (y + 1) % lin.C
    expected_other = dist.Normal(lin.mean_image(z, other), SIGMA).log_prob(x).sum(-1)
    torch.testing.assert_close(model.log_terms(x, z, other)[1], expected_other, rtol=0, atol=1e-10)
    assert (expected_other - log_lik).abs().min() > 1e-3
    # the sites of model(x, y) replayed on guide(x, y) carry the same densities
    guide_trace = poutine.trace(guide).get_trace(x, y)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x, y)
    model_trace.compute_log_prob()
    drawn = guide_trace.nodes["z"]["value"]
    assert model_trace.nodes["x"]["value"] is x and drawn.shape == (7, lin.L)
    from_trace = model_trace.nodes["z"]["log_prob"] + model_trace.nodes["x"]["log_prob"]
    torch.testing.assert_close(from_trace, sum(model.log_terms(x, drawn, y)), rtol=0, atol=1e-10)
    expected = (dist.Normal(0.0, 1.0).log_prob(drawn).sum(-1)
                + dist.Normal(lin.mean_image(drawn, y), SIGMA).log_prob(x).sum(-1))
    torch.testing.assert_close(from_trace, expected, rtol=0, atol=1e-10)


@pytest.mark.usefixtures("double")
def test_exact_posterior_gives_log_p_x_given_y():
    """With q = p(z|x, y) every importance weight equals p(x|y): the estimate is exact for any K."""
    lin = LinearCVAE()
    model, guide = lin.model(), lin.exact_guide()
    x, y = lin.data(50)
    out = per_datapoint(model, guide, x, samples=3, y=y)
    expected = lin.log_px_given_y(x, y)
    torch.testing.assert_close(out["log_px"], expected, rtol=0, atol=1e-8)
    torch.testing.assert_close(out["elbo"], expected, rtol=0, atol=1e-8)
    # another label reaches model and guide alike: still exact, now for log p(x|y')
    other = (y + 1) % lin.C
    wrong = per_datapoint(model, guide, x, samples=3, y=other)["log_px"]
    torch.testing.assert_close(wrong, lin.log_px_given_y(x, other), rtol=0, atol=1e-8)
    assert (wrong - expected).abs().max() > 0.5
    # the guide's mean is the posterior mean for its label; the label moves it
    torch.testing.assert_close(guide.mean(x, y), lin.posterior_mean(x, y), rtol=0, atol=1e-10)
    assert (guide.mean(x, other) - guide.mean(x, y)).abs().max() > 0.1
    # evaluate takes the labels as its 4th argument and gives the same closed form
    result = pyro_vae.evaluate(model, guide, x, y, iw_samples=4, batch_size=16)
    assert result["n"] == 50
    assert result["nll"] == pytest.approx(-expected.mean().item(), abs=1e-8)
    assert result["elbo"] == pytest.approx(expected.mean().item(), abs=1e-8)


@pytest.mark.usefixtures("double")
def test_grid_quadrature_gives_log_p_x_given_y():
    lin = LinearCVAE()
    model = lin.model()
    x, y = lin.data(4, seed=1)
    axes, log_post, log_px = grid_posterior(model, x, n=200, bounds=(-6, 6, -6, 6), y=y)
    torch.testing.assert_close(log_px, lin.log_px_given_y(x, y), rtol=0, atol=1e-3)
    # the grid posterior's mean is that of p(z|x, y)
    post = log_post.exp()
    post = post / post.sum((1, 2), keepdim=True)
    zz = torch.stack(torch.meshgrid(axes[0], axes[1], indexing="xy"), -1)
    mean = (post[..., None] * zz).sum((1, 2))
    torch.testing.assert_close(mean, lin.posterior_mean(x, y), rtol=0, atol=1e-3)
    other = (y + 2) % lin.C
    torch.testing.assert_close(grid_posterior(model, x, n=200, bounds=(-6, 6, -6, 6), y=other)[2],
                               lin.log_px_given_y(x, other), rtol=0, atol=1e-3)


@pytest.mark.usefixtures("double")
def test_losses_take_the_label_and_the_kl_weight():
    """``loss(x, beta, y)``: with the exact guide the ELBO and IWAE losses at beta = 1 are exactly
    -sum log p(x|y); at another beta, -sum [log p(x|z, y) + beta (log p(z) - log q(z|x, y))] for
    the guide's own draw."""
    lin = LinearCVAE()
    model, guide = lin.model(), lin.exact_guide()
    x, y = lin.data(8, seed=3)
    other = (y + 1) % lin.C
    one = torch.ones(())
    for name in ("elbo", "iwae"):
        loss = pyro_vae.loss_fn(name, model, guide, particles=3)
        torch.testing.assert_close(loss(x, one, y), -lin.log_px_given_y(x, y).sum(), rtol=0, atol=1e-8)
        torch.testing.assert_close(loss(x, one, other), -lin.log_px_given_y(x, other).sum(), rtol=0, atol=1e-8)
    loss = pyro_vae.loss_fn("elbo", model, guide)
    beta = torch.tensor(0.3)
    pyro.set_rng_seed(6)
    value = loss(x, beta, y)
    pyro.set_rng_seed(6)
    q = guide.dist(x, y)
    z = q.rsample()
    expected = -(dist.Normal(lin.mean_image(z, y), SIGMA).log_prob(x).sum(-1)
                 + beta * (dist.Normal(0.0, 1.0).log_prob(z).sum(-1) - q.log_prob(z))).sum()
    torch.testing.assert_close(value, expected, rtol=0, atol=1e-8)


@pytest.mark.usefixtures("double")
def test_direct_scoring_equals_the_replayed_traces():
    lin = LinearCVAE()
    model, guide = lin.model(), lin.exact_guide()
    x, y = lin.data(6)
    pyro.set_rng_seed(5)
    traced = trace_log_probs(model, guide, x, y, particles=3, scaled=False)
    pyro.set_rng_seed(5)
    direct = log_weight_terms(model, guide, x, 3, y)
    for key in ("log_lik", "log_prior", "log_q"):
        assert direct[key].shape == (3, 6)
        torch.testing.assert_close(direct[key], traced[key], rtol=0, atol=1e-10)


@pytest.mark.usefixtures("double")
def test_samples_decodes_and_reconstructions_follow_the_label():
    lin = LinearCVAE()
    model, guide = lin.model(), lin.exact_guide()
    z = torch.zeros(3, lin.L, dtype=torch.float64)
    torch.testing.assert_close(model.decode_mean(z, torch.tensor([0, 1, 2])), (lin.M + lin.b[:, None]).T)
    z = torch.randn(6, lin.L, dtype=torch.float64)
    y = torch.tensor([2, 2, 0, 1, 0, 1])
    torch.testing.assert_close(model.decode_mean(z, y), lin.mean_image(z, y), rtol=0, atol=1e-12)
    # decode_mean without labels takes the classes in turn
    torch.testing.assert_close(model.decode_mean(z), lin.mean_image(z, torch.arange(6) % lin.C), rtol=0, atol=1e-12)
    # sample(n, y): E[x|z, y] for z from the prior, drawn from the same stream as the prior's own draw
    pyro.set_rng_seed(3)
    drawn = model.prior().sample((6,))
    pyro.set_rng_seed(3)
    torch.testing.assert_close(model.sample(6, y), lin.mean_image(drawn, y), rtol=0, atol=1e-12)
    pyro.set_rng_seed(3)
    torch.testing.assert_close(model.sample(6), lin.mean_image(drawn, torch.arange(6) % lin.C), rtol=0, atol=1e-12)
    # reconstruct(guide, x, y): one z ~ q(z|x, y), decoded with the same y
    x, labels = lin.data(5, seed=2)
    pyro.set_rng_seed(4)
    z = guide.dist(x, labels).sample()
    pyro.set_rng_seed(4)
    torch.testing.assert_close(model.reconstruct(guide, x, labels), lin.mean_image(z, labels), rtol=0, atol=1e-12)
    with pytest.raises(pyro_vae.PyroVAEError, match=r"must be integers in \[0, 3\)"):
        model.sample(2, torch.tensor([0, 3]))


@pytest.mark.usefixtures("double")
def test_diagnose_guides_of_the_linear_cvae_against_the_closed_form():
    """The exact guide against the exact grid reference, with the labels: log p(x|y) by quadrature,
    ELBO = log p(x|y) (no KL gap) and equal importance weights (ESS 1)."""
    lin = LinearCVAE()
    x, y = lin.data(3, seed=4)
    assert (lin.posterior_mean(x, y).abs() < GRID_BOX - 1).all()  # the default grid holds the posteriors
    report = pyro_vae.diagnose_guides(lin.model(), {"exact": lin.exact_guide()}, x, y, reference="grid", chains=2,
                                      draws=200, iw_samples=50, is_samples=100)
    expected = lin.log_px_given_y(x, y)
    rows = sorted(report["per_image"], key=lambda r: r["image"])
    assert [r["image"] for r in rows] == [0, 1, 2]
    for r, e in zip(rows, expected.tolist()):
        assert r["log_px"] == pytest.approx(e, abs=1e-3)
        assert r["elbo"] == pytest.approx(e, abs=1e-8)
        assert abs(r["kl_gap"]) < 1e-3
        assert r["ess_fraction"] == pytest.approx(1.0, abs=1e-6)
        # 400 draws of each of two samplers of the same posterior (sd < 0.5): their means agree
        assert r["mean_error"] < 0.15
    ref = report["draws"]["reference"]
    assert ref.shape == (2, 200, 3, 2)
    np.testing.assert_allclose(ref.reshape(-1, 3, 2).mean(0), lin.posterior_mean(x, y).numpy(), atol=0.1)


# ---------------------------------------------------------------------------------------------
# labels: a model function, a guide encoder and the data's batches


def test_onehot_rejects_missing_out_of_range_and_float_labels():
    like = torch.zeros(2, dtype=torch.float64)
    code = onehot(torch.tensor([2, 0]), 3, like)
    assert code.dtype == torch.float64
    torch.testing.assert_close(code, torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]], dtype=torch.float64))
    with pytest.raises(pyro_vae.PyroVAEError, match="call it with y"):
        onehot(None, 3, like)
    for bad in (torch.tensor([0, 3]), torch.tensor([-1, 0]), torch.tensor([0.0, 1.0]), torch.tensor([True, False])):
        with pytest.raises(pyro_vae.PyroVAEError, match=r"must be integers in \[0, 3\)"):
            onehot(bad, 3, like)


def test_with_label_joins_the_trunk_features_and_the_one_hot_label():
    torch.manual_seed(0)
    trunk = nn.Sequential(nn.Flatten(-3), nn.Linear(4, 3))
    encoder = WithLabel(trunk, 5)
    x, y = torch.rand(4, 1, 2, 2), torch.tensor([4, 0, 2, 2])
    h = encoder(x, y)
    assert h.shape == (4, 8)
    torch.testing.assert_close(h[:, :3], trunk(x))
    torch.testing.assert_close(h[:, 3:], F.one_hot(y, 5).float())
    with pytest.raises(pyro_vae.PyroVAEError, match="call it with y"):
        encoder(x, None)
    with pytest.raises(pyro_vae.PyroVAEError, match=r"must be integers in \[0, 5\)"):
        encoder(x, torch.tensor([0, 1, 5, 2]))


@pytest.mark.usefixtures("double")
def test_the_cvae_without_labels_or_with_bad_ones_is_an_error():
    lin = LinearCVAE()
    model, guide = lin.model(), lin.exact_guide()
    x, y = lin.data(4)
    z = torch.zeros(4, lin.L, dtype=torch.float64)
    missing = "conditioned on the label: call it with y"
    calls = {
        "model": lambda labels: model(x, labels),
        "guide": lambda labels: guide(x, labels),
        "log_terms": lambda labels: model.log_terms(x, z, labels),
        "log_joint": lambda labels: contract.log_joint(model, x, {"z": z}, labels),
        "per_datapoint": lambda labels: per_datapoint(model, guide, x, 2, y=labels),
        "evaluate": lambda labels: pyro_vae.evaluate(model, guide, x, labels, iw_samples=2),
        "loss": lambda labels: pyro_vae.loss_fn("elbo", model, guide)(x, torch.ones(()), *(
            () if labels is None else (labels,))),
        "grid": lambda labels: grid_posterior(model, x, n=10, y=labels),
        "reconstruct": lambda labels: model.reconstruct(guide, x, labels),
    }
    for name, call in calls.items():
        call(y)  # with the labels, fine
        with pytest.raises(pyro_vae.PyroVAEError, match=missing):
            call(None)
        for bad in (torch.tensor([0, 1, 3, 0]), torch.tensor([0, -1, 2, 0]), y.double()):
            with pytest.raises(pyro_vae.PyroVAEError, match=r"must be integers in \[0, 3\)"):
                call(bad)


def _index_data(binarize: str = "dynamic") -> Data:
    """Binary 1x2x2 images whose pixels are the bits of their row index, so a batch tells which
    rows it holds; 0/1 values binarize to themselves, so even dynamic binarization keeps them."""
    bits = torch.tensor([8, 4, 2, 1])
    sizes = {"train": 10, "valid": 4, "test": 5}
    x = {s: ((torch.arange(n)[:, None] & bits) > 0).to(torch.uint8).reshape(n, 1, 2, 2) for s, n in sizes.items()}
    y = {"train": torch.tensor([2, 0, 1, 2, 0, 1, 1, 0, 2, 2]), "valid": torch.tensor([1, 0, 2, 1]),
         "test": torch.tensor([0, 0, 2, 1, 2])}
    return Data("toy", x, y, (1, 2, 2), "bernoulli", binarize)


def _rows_of(x: torch.Tensor) -> torch.Tensor:
    return (x.reshape(x.shape[0], 4).round().long() * torch.tensor([8, 4, 2, 1])).sum(1)


@pytest.mark.parametrize("binarize", ["dynamic", "none"])
def test_batches_carry_the_labels_of_their_rows(binarize):
    data = _index_data(binarize)
    assert data.classes() == 3 and data.obs_dim == 4
    torch.manual_seed(1)
    for split in ("train", "valid", "test"):
        n = data.x[split].shape[0]
        for shuffle in (False, True):
            seen = []
            for x, y in data.batches(split, 3, shuffle=shuffle):
                assert x.shape[1:] == (1, 2, 2) and x.dtype == torch.get_default_dtype()
                assert y.dtype == torch.long and y.shape == (x.shape[0],)
                rows = _rows_of(x)
                assert torch.equal(y, data.y[split][rows]), (split, shuffle)
                seen.append(rows)
            order = torch.cat(seen)
            assert torch.equal(order.sort().values, torch.arange(n))
            assert torch.equal(order, torch.arange(n)) != shuffle  # shuffled batches really are shuffled
        x, y = data.batch(split, torch.tensor([3, 1]))
        assert torch.equal(_rows_of(x), torch.tensor([3, 1])) and torch.equal(y, data.y[split][[3, 1]])
        obs, labels = data.observations(split), data.labels(split)
        assert obs.shape == (n, 1, 2, 2) and torch.equal(_rows_of(obs), torch.arange(n))
        assert labels.dtype == torch.long and torch.equal(labels, data.y[split])


def test_digits_keep_their_image_shape_and_labels():
    data = load_dataset("digits")
    assert data.classes() == 10 and data.obs_shape == (1, 8, 8) and data.obs_dim == 64
    n = data.x["test"].shape[0]
    obs, labels = data.observations("test"), data.labels("test")
    assert obs.shape == (n, 1, 8, 8) and labels.shape == (n,) and labels.dtype == torch.long
    rows = torch.tensor([5, 0, n - 1])
    x, y = data.batch("test", rows)
    assert torch.equal(x, obs[rows]) and torch.equal(y, labels[rows])
    # each class's mean image differs from the others: labels belong to their images
    means = torch.stack([obs[labels == c].mean(0) for c in range(10)])
    assert torch.cdist(means.flatten(1), means.flatten(1)).add(torch.eye(10) * 1e3).min() > 0.5


@pytest.mark.parametrize("change, message", [
    (lambda d: d.y["valid"].__setitem__(1, -1), "found the negative label -1"),
    (lambda d: d.y["train"].masked_fill_(d.y["train"] == 1, 2), r"classes \[1\] are missing"),
    (lambda d: d.y.__setitem__("test", None), "needs labelled data"),
])
def test_classes_checks_the_labels(change, message):
    data = _index_data()
    change(data)
    with pytest.raises(pyro_vae.PyroVAEError, match=message):
        data.classes()


def _labelled_npz(path, y) -> str:
    x = np.random.default_rng(0).integers(0, 2, (len(y), 16)).astype(np.float32)
    np.savez(path, x=x, y=np.asarray(y, dtype=np.int64))
    return str(path)


def test_load_data_checks_the_labels_against_the_run(tmp_path):
    path = _labelled_npz(tmp_path / "three.npz", np.arange(40) % 3)
    config = pyro_vae.RunConfig(dataset=path, model="cvae", classes=2)
    with pytest.raises(pyro_vae.PyroVAEError, match=r"must be integers in \[0, 2\), found up to 2"):
        load_data(config)
    for classes in (3, None):
        data = load_data(pyro_vae.RunConfig(dataset=path, model="cvae", classes=classes))
        assert data.classes() == 3
    load_data(pyro_vae.RunConfig(dataset=path, model="vae", classes=2))  # an unconditional model reads no labels


# ---------------------------------------------------------------------------------------------
# the package's guides conditioned on the label


@pytest.mark.parametrize("guide", ["diag", "iaf"])
def test_guides_see_the_label_and_train(guide, device):
    config = pyro_vae.RunConfig(model="cvae", classes=10, likelihood="bernoulli", hidden=[32], latent_dim=3,
                                guide=guide, guide_options={"flows": 2, "flow_hidden": [16]} if guide == "iaf" else {})
    pair = pyro_vae.build(config, (1, 8, 8)).to(device)
    assert isinstance(pair.guide.encoder, WithLabel) and pair.guide.encoder.classes == 10
    x = torch.rand(6, 1, 8, 8, device=device).round()
    y = torch.arange(6, device=device) % 10
    other = y.roll(1)
    # the guide's features are h(x) joined with one-hot y
    h = pair.guide.features(x, y)
    torch.testing.assert_close(h[:, -10:], F.one_hot(y, 10).float())
    torch.testing.assert_close(h[:, :-10], pair.guide.encoder.trunk(x))
    torch.testing.assert_close(pair.guide.features(x, other)[:, :-10], h[:, :-10])
    # q(z|x, y): the same noise gives other draws under other labels, the same under the same
    with torch.no_grad():
        draws = []
        for labels in (y, other, y):
            pyro.set_rng_seed(1)
            q = pair.guide.dist(x, labels)
            z = q.rsample((4,))
            draws.append((z, q.log_prob(z)))
    assert torch.equal(draws[0][0], draws[2][0])
    assert (draws[0][0] - draws[1][0]).abs().amax((0, 2)).min() > 1e-4  # every row moves
    assert (draws[0][1] - draws[1][1]).abs().min() > 0 or guide == "diag"
    # p(x|z, y): the decoder's output depends on y
    z = torch.randn(6, 3, device=device)
    means = pair.model.decode_mean(z, y)
    assert means.shape == (6, 1, 8, 8)
    assert (means - pair.model.decode_mean(z, other)).abs().amax((1, 2, 3)).min() > 1e-4
    # the label gets into the loss, and every parameter gets a gradient
    loss = pyro_vae.loss_fn("elbo", pair.model, pair.guide)
    with torch.no_grad():
        values = []
        for labels in (y, other):
            pyro.set_rng_seed(2)
            values.append(loss(x, torch.ones((), device=device), labels))
    assert abs(values[0].item() - values[1].item()) > 1e-4
    loss(x, torch.ones((), device=device), y).backward()
    missing = [n for n, p in pair.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing


# ---------------------------------------------------------------------------------------------
# the command line


TINY = ["--dataset", "digits", "--model", "cvae", "--hidden", "32", "--latent-dim", "2", "--batch-size", "64",
        "--device", "cpu", "--quiet"]
QUICK = ["--images", "3", "--warmup", "50", "--draws", "50", "--iw-samples", "200", "--is-samples", "200",
         "--device", "cpu"]


@pytest.fixture(scope="module")
def cvae_run(tmp_path_factory):
    """A digits cvae run: 2 epochs, then resumed to 3."""
    run = tmp_path_factory.mktemp("cvae") / "run"
    pyro.set_rng_seed(0)
    assert main(["train", *TINY, "--epochs", "2", "--out", str(run)]) == 0
    assert main(["train", "--resume", "--epochs", "3", "--out", str(run), "--quiet"]) == 0
    return run


def _scored_by_hand(model, guide, x, y, samples: int, batch_size: int = 100) -> torch.Tensor:
    """log w (samples, N) of the run's diagonal guide and Bernoulli cvae, from their layers alone:
    q from the guide's trunk and head on [h(x) | e_y], p(x|z, y) from the decoder on [z | e_y],
    drawn chunk by chunk in the order the evaluation draws them."""
    parts = []
    with torch.no_grad():
        for i in range(0, x.shape[0], batch_size):
            xb, code = x[i:i + batch_size], F.one_hot(y[i:i + batch_size], model.classes).float()
            loc, raw = guide.head(torch.cat([guide.encoder.trunk(xb), code], -1)).chunk(2, -1)
            q = dist.Normal(loc, 1e-5 + F.softplus(raw)).to_event(1)
            z = q.rsample((samples,))
            logits = model.decoder(torch.cat([z, code.expand(samples, -1, -1)], -1)).reshape(z.shape[:2] + xb.shape[1:])
            log_lik = (xb * logits - F.softplus(logits)).sum((-3, -2, -1))
            parts.append(log_lik + dist.Normal(0.0, 1.0).log_prob(z).sum(-1) - q.log_prob(z))
    return torch.cat(parts, 1)


def test_command_line_trains_and_resumes_a_cvae(cvae_run):
    config = json.loads((cvae_run / "config.json").read_text())
    assert (config["model"], config["classes"]) == ("cvae", 10)
    assert pyro_vae.load_run(cvae_run, which="last.pt").train_state.epoch == 3
    model = pyro_vae.load_run(cvae_run).pair.model
    assert isinstance(model, ConditionalVAE) and model.classes == 10


def test_command_line_evaluate_scores_with_the_labels(cvae_run, capsys):
    capsys.readouterr()
    assert main(["evaluate", str(cvae_run), "--iw-samples", "20", "--device", "cpu", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["model"] == "cvae" and math.isfinite(result["nll"]) and result["nll"] <= -result["elbo"] + 1e-6
    assert json.loads((cvae_run / "eval.json").read_text())["nll"] == result["nll"]
    run = pyro_vae.load_run(cvae_run)
    data = load_data(run.config)
    x, y = data.observations("test"), data.labels("test")
    assert result["n"] == x.shape[0] == y.shape[0]
    pair = run.pair.eval()
    pyro.set_rng_seed(0)  # evaluate's default --seed
    log_w = _scored_by_hand(pair.model, pair.guide, x, y, 20)
    nll = -(torch.logsumexp(log_w, 0) - math.log(20)).mean().item()
    assert result["nll"] == pytest.approx(nll, rel=1e-5, abs=1e-4)
    assert result["elbo"] == pytest.approx(log_w.mean().item(), rel=1e-5, abs=1e-4)
    # the labels matter: scored with shuffled ones, the bound is another (and worse) number
    pyro.set_rng_seed(0)
    shuffled = _scored_by_hand(pair.model, pair.guide, x, y.roll(1), 20)
    wrong = -(torch.logsumexp(shuffled, 0) - math.log(20)).mean().item()
    assert wrong > nll + 0.02


def test_command_line_samples_by_label(cvae_run, tmp_path, capsys):
    from pyro_vae.plots import image_grid

    model = pyro_vae.load_run(cvae_run).pair.model
    for label in (3, 4):
        png = tmp_path / f"label{label}.png"
        assert main(["sample", str(cvae_run), "--label", str(label), "-n", "10", "--out", str(png),
                     "--device", "cpu"]) == 0
        assert png.read_bytes()[:8] == PNG_MAGIC
        # the images are E[x|z, y=label] for z from the prior under --seed 0
        pyro.set_rng_seed(0)
        z = model.prior().sample((10,))
        with torch.no_grad():
            expected = torch.sigmoid(model.decoder(torch.cat([z, F.one_hot(torch.full((10,), label), 10).float()], -1)))
        pyro.set_rng_seed(0)
        images = model.sample(10, torch.full((10,), label))
        torch.testing.assert_close(images, expected.reshape(10, 1, 8, 8))
        by_hand = image_grid(images, (1, 8, 8), tmp_path / f"hand{label}.png", nrow=10)
        assert png.read_bytes() == by_hand.read_bytes()
    assert (tmp_path / "label3.png").read_bytes() != (tmp_path / "label4.png").read_bytes()
    capsys.readouterr()
    assert "--label must be a class in [0, 10)" in user_error(
        capsys, ["sample", str(cvae_run), "--label", "10", "--out", str(tmp_path / "x.png"), "--device", "cpu"])
    assert not (tmp_path / "x.png").exists()


def test_command_line_diagnoses_a_cvae_run_with_the_labels(cvae_run, tmp_path, capsys):
    out = tmp_path / "diagnose"
    assert main(["diagnose", str(cvae_run), *QUICK, "--reference", "grid", "--out", str(out)]) == 0
    capsys.readouterr()
    report = json.loads((out / "diagnose.json").read_text())
    assert report["latent_dim"] == 2 and report["reference"]["method"] == "grid"
    images = report["images"]
    assert len(images) == 3 and len(report["per_image"]) == 3
    # log p(x|y) by a quadrature by hand on the default grid, from the decoder and the test labels
    run = pyro_vae.load_run(cvae_run)
    model = run.pair.model.eval()
    data = load_data(run.config)
    x, y = data.observations("test")[images], data.labels("test")[images]
    n = 120
    axis = torch.linspace(-GRID_BOX, GRID_BOX, n)
    zs = torch.stack(torch.meshgrid(axis, axis, indexing="xy"), -1).reshape(-1, 2)
    log_cell = 2 * math.log(2 * GRID_BOX / (n - 1))

    def log_px(labels):
        with torch.no_grad():
            code = F.one_hot(labels, 10).float()
            logits = model.decoder(torch.cat([zs[:, None].expand(-1, 3, -1), code.expand(zs.shape[0], -1, -1)], -1))
            log_lik = (x.flatten(1) * logits - F.softplus(logits)).sum(-1)
            return torch.logsumexp(log_lik + dist.Normal(0.0, 1.0).log_prob(zs).sum(-1)[:, None], 0) + log_cell

    expected, wrong = log_px(y), log_px((y + 1) % 10)
    for r in report["per_image"]:
        i = images.index(r["image"])
        assert r["log_px"] == pytest.approx(expected[i].item(), abs=1e-3)
        assert r["kl_gap"] == pytest.approx(r["log_px"] - r["elbo"])
        assert math.isfinite(r["khat"]) and 0 < r["ess_fraction"] <= 1 + 1e-9
    assert (wrong - expected).abs().max() > 0.02
    assert (out / "diagnose.md").is_file() and (out / "khat.png").read_bytes()[:8] == PNG_MAGIC


def test_command_line_refuses_what_a_cvae_cannot_do(tmp_path, capsys):
    labels_free = tmp_path / "x.npz"
    np.savez(labels_free, x=np.random.default_rng(0).integers(0, 2, (40, 16)).astype(np.float32))
    assert "needs labelled data" in user_error(
        capsys, ["train", "--dataset", str(labels_free), "--model", "cvae", "--out", str(tmp_path / "r")])
    assert not (tmp_path / "r").exists()
    # a class that only the test split holds: the model would never learn it
    for row in range(40):
        y = np.arange(40) % 2
        y[row] = 2
        path = _labelled_npz(tmp_path / "gap.npz", y)
        if 2 not in load_dataset(path).y["train"].tolist():
            break
    assert "classes [2] are missing" in user_error(
        capsys, ["train", "--dataset", path, "--model", "cvae", "--out", str(tmp_path / "r")])
    assert not (tmp_path / "r").exists()
    assert "unknown model 'nope'" in user_error(capsys, ["train", "--model", "nope", "--out", str(tmp_path / "r")])
    vae = tmp_path / "vae"
    assert main(["train", "--dataset", "digits", "--hidden", "16", "--latent-dim", "2", "--epochs", "1",
                 "--device", "cpu", "--quiet", "--out", str(vae)]) == 0
    assert "--label and --style-of need a run of a model with labels" in user_error(
        capsys, ["sample", str(vae), "--label", "3", "--out", str(tmp_path / "s.png")])


def test_command_line_evaluate_checks_the_labels_against_the_run(tmp_path, capsys):
    path = _labelled_npz(tmp_path / "three.npz", np.arange(40) % 3)
    run = tmp_path / "run"
    assert main(["train", "--dataset", path, "--model", "cvae", "--hidden", "8", "--latent-dim", "2",
                 "--batch-size", "16", "--epochs", "1", "--device", "cpu", "--quiet", "--out", str(run)]) == 0
    assert json.loads((run / "config.json").read_text())["classes"] == 3
    assert main(["evaluate", str(run), "--iw-samples", "5", "--device", "cpu", "--json"]) == 0
    capsys.readouterr()
    _labelled_npz(tmp_path / "three.npz", np.arange(40) % 4)  # the data file now holds a 4th class
    assert "must be integers in [0, 3), found up to 3" in user_error(
        capsys, ["evaluate", str(run), "--iw-samples", "5", "--device", "cpu"])
