"""The conditional VAE (``--model cvae``): closed forms of a linear-Gaussian CVAE, labelled data,
the guides conditioned on the label, and the command line."""

import json
import math

import pyro
import pyro.distributions as dist
from pyro import poutine
import pytest
import torch
from torch import nn

import pyro_vae
from pyro_vae.cli import main
from pyro_vae.compare import grid_posterior
from pyro_vae.data import Data
from pyro_vae.evaluate import log_weight_terms, per_datapoint
from pyro_vae.objectives import trace_log_probs
from pyro_vae.models import ConditionalVAE, StandardNormal
from cli_errors import user_error
from linear_gaussian import B, SIGMA, W, AffineGaussianGuide, FixedScaleNormal

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


class LinearCVAE:
    """p(z) = N(0, I), p(x|z, y) = N(W z + M e_y + b, sigma^2 I): log p(x|y) = log N(x; b + M e_y,
    W W^T + sigma^2 I), and p(z|x, y) is Gaussian with a mean affine in the row [x | e_y]."""

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

    def rows(self, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        y = torch.randint(self.C, (n,), generator=g)
        z = torch.randn(n, self.L, generator=g, dtype=torch.float64)
        x = z @ self.W.T + self.M[:, y].T + self.b + SIGMA * torch.randn(n, self.D, generator=g, dtype=torch.float64)
        return torch.cat([x, nn.functional.one_hot(y, self.C).double()], 1), y

    def log_px_given_y(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        cov = self.W @ self.W.T + SIGMA ** 2 * torch.eye(self.D, dtype=torch.float64)
        return dist.MultivariateNormal(self.M[:, y].T + self.b, covariance_matrix=cov).log_prob(x)

    def exact_guide(self) -> AffineGaussianGuide:
        S = torch.linalg.inv(torch.eye(self.L, dtype=torch.float64) + self.W.T @ self.W / SIGMA ** 2)
        A = S @ self.W.T / SIGMA ** 2
        return AffineGaussianGuide(torch.cat([A, -A @ self.M], 1), -A @ self.b, S)


@pytest.mark.usefixtures("double")
def test_log_joint_matches_the_closed_form_and_the_model_trace():
    lin = LinearCVAE()
    model, guide = lin.model(), lin.exact_guide()
    rows, y = lin.rows(7)
    z = torch.randn(7, lin.L, dtype=torch.float64)
    x = rows[:, : lin.D]
    expected = (dist.Normal(0.0, 1.0).log_prob(z).sum(-1)
                + dist.Normal(z @ lin.W.T + lin.M[:, y].T + lin.b, SIGMA).log_prob(x).sum(-1))
    torch.testing.assert_close(model.log_joint(rows, z), expected, rtol=0, atol=1e-10)
    guide_trace = poutine.trace(guide).get_trace(rows)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(rows)
    model_trace.compute_log_prob()
    drawn = guide_trace.nodes["z"]["value"]
    from_trace = model_trace.nodes["z"]["log_prob"] + model_trace.nodes["x"]["log_prob"]
    torch.testing.assert_close(from_trace, model.log_joint(rows, drawn), rtol=0, atol=1e-10)


@pytest.mark.usefixtures("double")
def test_exact_posterior_gives_log_p_x_given_y():
    """With q = p(z|x, y) every importance weight equals p(x|y): the estimate is exact for any K."""
    lin = LinearCVAE()
    rows, y = lin.rows(50)
    out = per_datapoint(lin.model(), lin.exact_guide(), rows, samples=3)
    expected = lin.log_px_given_y(rows[:, : lin.D], y)
    torch.testing.assert_close(out["log_px"], expected, rtol=0, atol=1e-8)
    torch.testing.assert_close(out["elbo"], expected, rtol=0, atol=1e-8)
    wrong = rows.clone()
    wrong[:, lin.D:] = wrong[:, lin.D:].roll(1, dims=1)  # another label: another likelihood
    assert (per_datapoint(lin.model(), lin.exact_guide(), wrong, samples=3)["log_px"] - expected).abs().max() > 0.5


@pytest.mark.usefixtures("double")
def test_grid_quadrature_gives_log_p_x_given_y():
    lin = LinearCVAE()
    rows, y = lin.rows(4, seed=1)
    _, _, log_px = grid_posterior(lin.model(), rows, n=200, bounds=(-6, 6, -6, 6))
    torch.testing.assert_close(log_px, lin.log_px_given_y(rows[:, : lin.D], y), rtol=0, atol=1e-3)


def _data(y_valid=(0, 1, 2)) -> Data:
    x = {s: torch.rand(3, 4).round() for s in ("train", "valid", "test")}
    y = {"train": torch.tensor([2, 0, 1]), "valid": torch.tensor(y_valid), "test": torch.tensor([1, 1, 0])}
    return Data("toy", x, y, (4,), "bernoulli", "dynamic")


def test_with_labels_appends_one_hot_columns():
    data = _data()
    labelled = data.with_labels()
    assert labelled.label_columns == 3 and labelled.obs_dim == 4
    for split in ("train", "valid", "test"):
        assert torch.equal(labelled.x[split][:, :4], data.x[split])
        assert torch.equal(labelled.x[split][:, 4:].argmax(1), data.y[split])
        assert torch.equal(labelled.x[split][:, 4:].sum(1), torch.ones(3))
    assert data.with_labels(5).label_columns == 5
    batch = next(labelled.batches("train", 3))  # dynamic binarization leaves the one-hot columns alone
    assert torch.equal(batch[:, 4:].sort(0).values, labelled.x["train"][:, 4:].sort(0).values)


@pytest.mark.parametrize("y_valid, classes, message", [
    ((0, -1, 2), None, "must be integers in"),
    ((0, 1, 2), 2, "must be integers in"),
])
def test_with_labels_rejects_bad_labels(y_valid, classes, message):
    with pytest.raises(pyro_vae.PyroVAEError, match=message):
        _data(y_valid).with_labels(classes)


def test_with_labels_needs_labels():
    data = _data()
    data.y["test"] = None
    with pytest.raises(pyro_vae.PyroVAEError, match="needs labelled data"):
        data.with_labels()


@pytest.mark.parametrize("guide", ["diag", "iaf"])
def test_guides_see_the_label_and_train(guide, device):
    config = pyro_vae.RunConfig(model="cvae", classes=10, likelihood="bernoulli", hidden=[32], latent_dim=3,
                                guide=guide, guide_options={"flows": 2, "flow_hidden": [16]} if guide == "iaf" else {})
    pair = pyro_vae.build(config, (1, 8, 8)).to(device)
    x = torch.rand(6, 64, device=device).round()
    labels = nn.functional.one_hot(torch.arange(6, device=device) % 10, 10).float()
    row, other = torch.cat([x, labels], 1), torch.cat([x, labels.roll(1, 0)], 1)
    assert not torch.allclose(pair.guide.mean(row, samples=2000), pair.guide.mean(other, samples=2000), atol=1e-3)
    loss = pyro_vae.loss_fn("elbo", pair.model, pair.guide)
    loss(row, torch.ones((), device=device)).backward()
    missing = [n for n, p in pair.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing


@pytest.mark.usefixtures("double")
def test_samples_follow_the_label():
    lin = LinearCVAE()
    model = lin.model()
    z = torch.zeros(3, lin.L, dtype=torch.float64)
    means = model.decode_mean(z, torch.tensor([0, 1, 2]))
    torch.testing.assert_close(means, (lin.M + lin.b[:, None]).T)
    with pytest.raises(pyro_vae.PyroVAEError, match="must be integers in"):
        model.sample(2, torch.tensor([0, 3]))


TINY = ["--dataset", "digits", "--model", "cvae", "--hidden", "32", "--latent-dim", "2", "--batch-size", "64",
        "--device", "cpu", "--quiet"]


def test_command_line_train_resume_evaluate_sample(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *TINY, "--epochs", "2", "--out", str(run)]) == 0
    config = json.loads((run / "config.json").read_text())
    assert (config["model"], config["classes"]) == ("cvae", 10)
    assert main(["train", "--resume", "--epochs", "3", "--out", str(run), "--quiet"]) == 0
    assert pyro_vae.load_run(run, which="last.pt").train_state.epoch == 3
    assert main(["evaluate", str(run), "--iw-samples", "20", "--device", "cpu", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["model"] == "cvae" and math.isfinite(result["nll"]) and result["nll"] <= -result["elbo"] + 1e-6
    png = tmp_path / "three.png"
    assert main(["sample", str(run), "--label", "3", "-n", "10", "--out", str(png), "--device", "cpu"]) == 0
    assert png.read_bytes()[:8] == PNG_MAGIC
    capsys.readouterr()
    assert "must be integers in [0, 10)" in user_error(
        capsys, ["sample", str(run), "--label", "10", "--out", str(tmp_path / "x.png"), "--device", "cpu"])
    assert not (tmp_path / "x.png").exists()


def test_command_line_refuses_what_a_cvae_cannot_do(tmp_path, capsys):
    labels_free = tmp_path / "x.npz"
    import numpy as np
    np.savez(labels_free, x=np.random.default_rng(0).integers(0, 2, (40, 16)).astype(np.float32))
    assert "needs labelled data" in user_error(
        capsys, ["train", "--dataset", str(labels_free), "--model", "cvae", "--out", str(tmp_path / "r")])
    assert not (tmp_path / "r").exists()
    assert "unknown model 'nope'" in user_error(capsys, ["train", "--model", "nope", "--out", str(tmp_path / "r")])
    vae = tmp_path / "vae"
    assert main(["train", "--dataset", "digits", "--hidden", "16", "--latent-dim", "2", "--epochs", "1",
                 "--device", "cpu", "--quiet", "--out", str(vae)]) == 0
    assert "--label needs a run trained with --model cvae" in user_error(
        capsys, ["sample", str(vae), "--label", "3", "--out", str(tmp_path / "s.png")])


@pytest.mark.usefixtures("double")
def test_direct_scoring_equals_the_replayed_traces():
    lin = LinearCVAE()
    model, guide = lin.model(), lin.exact_guide()
    rows, _ = lin.rows(6)
    pyro.set_rng_seed(5)
    traced = trace_log_probs(model, guide, rows, particles=3, scaled=False)
    pyro.set_rng_seed(5)
    direct = log_weight_terms(model, guide, rows, 3)
    for key in ("log_lik", "log_prior", "log_q"):
        torch.testing.assert_close(direct[key], traced[key], rtol=0, atol=1e-10)
