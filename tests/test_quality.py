"""ELBO surgery and the prior hole against closed forms and brute force; `quality`, `refit-prior`
and two-stage sampling from the command line."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

from cli_errors import user_error
from linear_gaussian import LinearGaussian
from pyro_vae import contract, quality
from pyro_vae.cli import main
from pyro_vae.config import RunConfig
from pyro_vae.run import build, load_run


def _surgery(model, guide, x, **kw):
    return quality.surgery(model, guide, x, generator=torch.Generator().manual_seed(0), **kw)


def _closed_forms(lg, guide):
    """I(x; z) and KL(q(z) || p(z)) of the Gaussian aggregate posterior of an affine guide on
    data from the model: q(z) = N(A b + c, A S_x A^T + C)."""
    sx = lg.W @ lg.W.T + lg.sigma ** 2 * torch.eye(lg.D)
    cov = guide.A @ sx @ guide.A.T + guide.cov
    mean = guide.A @ lg.b + guide.c
    mi = 0.5 * (torch.logdet(cov) - torch.logdet(guide.cov))
    marginal = 0.5 * (torch.trace(cov) + mean @ mean - lg.L - torch.logdet(cov))
    return mi.item(), marginal.item()


@pytest.mark.usefixtures("f64")
@pytest.mark.parametrize("scale", [1.0, 1.5])
def test_surgery_matches_the_closed_forms_of_a_linear_gaussian_model(scale):
    lg = LinearGaussian()
    model, guide = lg.model(), lg.diagonal_guide(scale=scale)
    x = lg.sample(20000, seed=1)
    r = _surgery(model, guide, x, codes=2000)
    mi, marginal = _closed_forms(lg, guide)
    assert r["exact_mixture"] and r["codes"] == 2000
    assert abs(r["mutual_information"] - mi) < 3 * r["mutual_information_se"], (r, mi)
    assert abs(r["marginal_kl"] - marginal) < 3 * r["marginal_kl_se"], (r, marginal)
    assert r["mutual_information"] + r["marginal_kl"] == pytest.approx(r["kl"], abs=1e-6)


@pytest.mark.usefixtures("f64")
@pytest.mark.parametrize("mixture", [None, 7])
def test_surgery_estimator_by_brute_force(mixture):
    """Each draw's log q_hat(z) is the weighted mixture of the module docstring, the terms add up to
    the draw's KL term, and that is log q(z|x) - log p(z) of the same draw."""
    lg = LinearGaussian()
    model, guide = lg.model(), lg.diagonal_guide(scale=1.2)
    x = lg.sample(30, seed=2)
    torch.manual_seed(4)
    r = _surgery(model, guide, x, codes=5, mixture=mixture)
    n, m = 30, r["mixture_images"]
    rows = r["mixture_rows"]
    torch.manual_seed(4)  # the same draws again
    values, log_q, log_p = quality.code_terms(model, guide, x[rows[:5]])
    z = values["z"]
    pairs = torch.stack([guide.dist(x[rows]).log_prob(z[s]) for s in range(5)])  # (5, m)
    for s in range(5):
        others = torch.logsumexp(torch.cat([pairs[s, :s], pairs[s, s + 1:]]), 0)
        expected = torch.logaddexp(pairs[s, s] - math.log(n), others + math.log((n - 1) / (n * (m - 1))))
        assert r["log_q_codes"][s].item() == pytest.approx(expected.item(), abs=1e-9)
    assert r["kl"] == pytest.approx((log_q - log_p).mean().item(), abs=1e-9)
    assert r["mutual_information"] + r["marginal_kl"] == pytest.approx(r["kl"], abs=1e-6)
    assert r["exact_mixture"] == (mixture is None)


@pytest.mark.usefixtures("f64")
def test_matrix_path_equals_the_trace_path():
    lg = LinearGaussian()
    guide = lg.diagonal_guide(scale=1.3, shift=0.2)
    x, z = lg.sample(11, seed=3), {"z": torch.randn(6, lg.L)}
    fast = quality.diagonal_log_prob_matrix(guide, x, z)
    torch.testing.assert_close(fast, contract.guide_log_prob(guide, x, z), rtol=0, atol=1e-9)
    assert quality.diagonal_log_prob_matrix(lg.exact_guide(), x, z) is None  # full covariance: the trace path


@pytest.mark.usefixtures("f64")
@pytest.mark.parametrize("name", ["iaf", "coupling", "full"])
def test_guide_log_prob_broadcasts_draws_against_rows(name):
    config = RunConfig(dataset="digits", likelihood="bernoulli", guide=name, latent_dim=3, hidden=[8]).validate()
    guide = build(config, (1, 4, 4)).guide.double()
    x, z = torch.rand(5, 1, 4, 4).round(), {"z": torch.randn(4, 3)}
    pairs = contract.guide_log_prob(guide, x, z)
    by_row = torch.stack([guide.dist(x).log_prob(z["z"][s].expand(5, 3)) for s in range(4)])
    torch.testing.assert_close(pairs, by_row, rtol=0, atol=1e-8)


@pytest.mark.usefixtures("f64")
def test_planar_guides_are_reported_unavailable():
    config = RunConfig(dataset="digits", likelihood="bernoulli", guide="planar", latent_dim=3, hidden=[8]).validate()
    pair = build(config, (1, 4, 4)).double()
    x = torch.rand(20, 1, 4, 4).round()
    out = quality.assess(pair.model, pair.guide, x, x, features=lambda images: images.reshape(len(images), -1),
                         samples=20, codes=10)
    assert set(out["unavailable"]) == {"mutual_information", "marginal_kl", "prior_hole"}
    assert "only at its own draws" in out["unavailable"]["prior_hole"]
    assert math.isfinite(out["fid"]) and 0 <= out["precision"] <= 1


@pytest.mark.usefixtures("f64")
def test_prior_hole_of_the_exact_posterior_and_of_a_shifted_one():
    lg = LinearGaussian()
    model, x = lg.model(), lg.sample(4000, seed=5)
    for guide, low, high in ((lg.exact_guide(), 0.0, 0.03), (lg.diagonal_guide(shift=3.0), 0.5, 1.0)):
        r = _surgery(model, guide, x, codes=4000)
        hole = quality.prior_hole(model, guide, x, None, r["log_q_codes"], r["mixture_rows"], 4000)
        # the exact posterior's aggregate is the prior: about 1% of its draws fall below the 1% line
        assert low <= hole["fraction"] <= high, hole


@pytest.mark.usefixtures("f64")
def test_surgery_of_a_hierarchical_model_adds_up():
    config = RunConfig(dataset="digits", likelihood="bernoulli", latent_dim=[3, 2], hidden=[8]).validate()
    pair = build(config, (1, 4, 4)).double().eval()
    x = torch.rand(40, 1, 4, 4).round()
    r = _surgery(pair.model, pair.guide, x, codes=20)
    assert r["mutual_information"] + r["marginal_kl"] == pytest.approx(r["kl"], abs=1e-6)
    assert r["mutual_information"] <= math.log(40) + 1e-9  # I(x; z) of an N-image mixture is at most log N
    assert contract.prior_draws(pair.model, x[:3]).keys() == {"z1", "z2"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("quality") / "run"
    assert main(["train", "--dataset", "digits", "--latent-dim", "4", "--hidden", "32", "--epochs", "3", "--quiet",
                 "--prior", "vamp", "--pseudo-inputs", "20", "--out", str(out)]) == 0
    return out


def test_quality_command_writes_every_measure(trained, capsys):
    assert main(["quality", str(trained), "--samples", "200", "--codes", "200", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    saved = json.loads((trained / "quality.json").read_text())
    assert printed == saved
    for key in ("mutual_information", "marginal_kl", "kl", "precision", "recall", "prior_hole", "prior_hole_standard"):
        assert math.isfinite(saved[key]) and math.isfinite(saved[key + "_se"]), key
    assert math.isfinite(saved["fid"]) and saved["fid"] >= 0
    assert saved["features"]["name"] == "digits-cnn-v1" and len(saved["features"]["sha256"]) == 64
    assert saved["kl"] == pytest.approx(saved["mutual_information"] + saved["marginal_kl"], abs=1e-6)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only directories")
def test_quality_prints_before_it_fails_to_write(trained, capsys):
    os.chmod(trained, 0o555)
    try:
        code = main(["quality", str(trained), "--samples", "50", "--codes", "50"])
    finally:
        os.chmod(trained, 0o755)
    captured = capsys.readouterr()
    assert code == 2 and "ELBO surgery" in captured.out and "could not write" in captured.err


@pytest.mark.parametrize("argv,needle", [
    (["--samples", "0"], "--samples must be a positive integer"),
    (["--features", "nowhere.pt"], "nowhere.pt"),
])
def test_quality_checks_its_arguments(trained, capsys, argv, needle):
    assert needle in user_error(capsys, ["quality", str(trained), *argv])


@pytest.mark.parametrize("density", ["gmm", "realnvp"])
def test_refit_prior_writes_a_run_with_the_fitted_prior(trained, tmp_path, capsys, density):
    out = tmp_path / density
    assert main(["refit-prior", str(trained), "--prior", density, "--components", "3", "--out", str(out)]) == 0
    record = json.loads((out / "refit.json").read_text())
    source, refitted = load_run(trained), load_run(out)
    assert refitted.config.prior == record["prior"] and source.config.prior == "vamp"
    # the same decoder and guide; only the prior differs
    for (name, a), (_, b) in zip(source.pair.guide.state_dict().items(), refitted.pair.guide.state_dict().items()):
        assert torch.equal(a, b), name
    assert math.isfinite(record["log_density_per_code"]["valid"])
    assert main(["evaluate", str(out), "--iw-samples", "20"]) == 0
    assert main(["sample", str(out), "-n", "8", "--out", str(tmp_path / "s.png")]) == 0
    capsys.readouterr()
    assert "not empty" in user_error(capsys, ["refit-prior", str(trained), "--prior", density, "--out", str(out)])


def test_refit_gmm_fits_codes_better_than_the_standard_normal(trained, tmp_path):
    from pyro_vae.refit import codes, refit
    from pyro_vae.run import run_data

    record = refit(trained, "gmm", tmp_path / "g", components=5)
    checkpoint = load_run(trained)
    valid = codes(checkpoint.pair, run_data(checkpoint), "valid", "cpu", False)
    standard = torch.distributions.Normal(0.0, 1.0).log_prob(valid).sum(-1).mean().item()
    assert record["log_density_per_code"]["valid"] > standard


def test_two_stage_samples_through_both_stages(trained, tmp_path, capsys):
    from pyro_vae import two_stage

    codes = tmp_path / "codes.npz"
    assert main(["encode", str(trained), "--what", "posterior", "--out", str(codes)]) == 0
    second = tmp_path / "second"
    assert main(["train", "--dataset", str(codes), "--likelihood", "gaussian", "--latent-dim", "4", "--hidden", "32",
                 "--epochs", "2", "--quiet", "--out", str(second)]) == 0
    assert main(["sample", str(second), "-n", "8", "--out", str(tmp_path / "two.png")]) == 0
    assert (tmp_path / "two.png").stat().st_size > 0
    stage = load_run(second)
    first, sites, sizes = two_stage.first_stage(stage.config)
    z = torch.randn(3, 4)
    images = two_stage.decode(first, sites, sizes, z, draw=False)
    torch.testing.assert_close(images, first.pair.model.decode_mean(z))
    assert main(["quality", str(second), "--samples", "100", "--codes", "100", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["two_stage"] and math.isfinite(result["fid"])
    # a first stage retrained after its codes were written is refused
    assert main(["train", "--dataset", "digits", "--latent-dim", "4", "--hidden", "32", "--epochs", "1", "--quiet",
                 "--out", str(tmp_path / "other")]) == 0
    (trained / "checkpoint.pt").rename(tmp_path / "kept.pt")
    (tmp_path / "other" / "checkpoint.pt").rename(trained / "checkpoint.pt")
    try:
        assert "changed after it wrote" in user_error(capsys, ["sample", str(second), "--out", str(tmp_path / "x.png")])
    finally:
        (tmp_path / "kept.pt").rename(trained / "checkpoint.pt")


class _PlainModel(torch.nn.Module):
    """A user's own pair in plain Pyro, outside every registry: the trace path throughout."""

    def __init__(self, d=6, latent=2):
        super().__init__()
        self.latent, self.out = latent, torch.nn.Linear(latent, d)

    def forward(self, x, y=None):
        import pyro
        import pyro.distributions as dist

        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("code", dist.Normal(x.new_zeros(self.latent), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.out(z)).to_event(1), obs=x)


class _PlainGuide(torch.nn.Module):
    def __init__(self, d=6, latent=2):
        super().__init__()
        self.net = torch.nn.Linear(d, 2 * latent)

    def forward(self, x, y=None):
        import pyro
        import pyro.distributions as dist

        loc, raw = self.net(x).chunk(2, -1)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("code", dist.Normal(loc, torch.nn.functional.softplus(raw) + 0.1).to_event(1))


@pytest.mark.usefixtures("f64")
def test_a_plain_pyro_pair_gets_every_measure():
    torch.manual_seed(0)
    model, guide = _PlainModel(), _PlainGuide()
    x = torch.rand(60, 6).round()
    out = quality.assess(model, guide, x[:40], x[40:], features=lambda images: images, samples=20, codes=30)
    assert out["mutual_information"] + out["marginal_kl"] == pytest.approx(out["kl"], abs=1e-6)
    assert 0 <= out["prior_hole"] <= 1 and "prior_hole_standard" not in out  # no suite prior to swap
    assert math.isfinite(out["fid"]) and out["sample_images"] == 20
