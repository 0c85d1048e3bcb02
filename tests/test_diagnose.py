"""``diagnose``: reference posteriors, PSIS k-hat, the variance law and the ArviZ adapter, checked
against the linear-Gaussian model's closed-form posterior and against ArviZ itself; then the
``pyro-vae diagnose`` command end to end on tiny digits runs, and its user errors."""

import json
import math
import warnings

import numpy as np
import pyro.distributions as dist
import pytest
import torch
from scipy import stats
from torch import nn

from cli_errors import user_error
from linear_gaussian import float64  # noqa: F401  (autouse fixture)
from linear_gaussian import TOL_SE, AffineGaussianGuide, FixedScaleNormal, LinearGaussian, fit_guide
from pyro_vae import diagnose as diagnose_mod
from pyro_vae import diagnostics, guides
from pyro_vae.cli import main
from pyro_vae.exact import grid_posterior, posterior_window
from pyro_vae.diagnose import aggregate_posterior, energy_distance, grid_reference, guide_diagnostics, nuts_reference
from pyro_vae.evaluate import ACTIVE_UNIT_THRESHOLD, log_weight_terms
from pyro_vae.models import VAE, StandardNormal
from pyro_vae.run import load_data, load_run

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)  # ArviZ announces its 1.x refactor on import
    import arviz as az

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def exact_posterior(truth: LinearGaussian, x: torch.Tensor):
    A, c = truth.posterior_affine()
    return (x @ A.T + c).numpy(), truth.posterior_cov().numpy()


def mean_field_guide(truth: LinearGaussian) -> AffineGaussianGuide:
    """The best diagonal Gaussian, KL(q || p)-optimal: exact means, variances 1 / diag(precision),
    narrower than the posterior marginals along its correlated direction."""
    A, c = truth.posterior_affine()
    precision = torch.linalg.inv(truth.posterior_cov())
    return AffineGaussianGuide(A, c, torch.diag(1.0 / precision.diagonal()), diagonal=True)


# --- reference posteriors ---------------------------------------------------------------------------

def test_nuts_reference_matches_the_exact_posterior():
    truth = LinearGaussian()
    model = truth.model()
    # a parameter the caller froze must stay frozen, and the others trainable
    model.decoder.bias.requires_grad_(False)
    before = {name: p.requires_grad for name, p in model.named_parameters()}
    x = truth.sample(3, seed=2)

    draws = nuts_reference(model, x, chains=2, warmup=200, draws=400, seed=0)

    assert {name: p.requires_grad for name, p in model.named_parameters()} == before
    assert draws.shape == (2, 400, 3, truth.L)
    assert np.all(diagnostics.rhat(draws) < 1.05)
    mean, cov = exact_posterior(truth, x)
    sd = np.sqrt(np.diag(cov))
    # the MC standard error of a chain average is sd / sqrt(ESS of the mean)
    ess = diagnostics.ess(draws, "mean")
    assert np.all(np.abs(draws.mean((0, 1)) - mean) < TOL_SE * sd / np.sqrt(ess))
    for i, j in ((0, 0), (1, 1), (0, 1)):
        # products of draws centred on the exact mean average to cov[i, j]; their own ESS and
        # spread give the error of that average
        prod = (draws[..., i] - mean[:, i]) * (draws[..., j] - mean[:, j])
        se = prod.std((0, 1)) / np.sqrt(diagnostics.ess(prod, "mean"))
        assert np.all(np.abs(prod.mean((0, 1)) - cov[i, j]) < TOL_SE * se), (i, j)


def test_grid_reference_draws_the_exact_posterior():
    truth = LinearGaussian()
    x = truth.sample(3, seed=2)
    draws = grid_reference(truth.model(), x, chains=2, draws=10000)
    assert draws.shape == (2, 10000, 3, 2)
    mean, cov = exact_posterior(truth, x)
    flat = draws.reshape(-1, 3, 2)
    n = flat.shape[0]
    sd = np.sqrt(np.diag(cov))
    # independent draws: sd / sqrt(n) for means, sqrt((S_ii S_jj + S_ij^2) / n) for covariances
    assert np.all(np.abs(flat.mean(0) - mean) < TOL_SE * sd / np.sqrt(n))
    se_cov = np.sqrt((np.outer(np.diag(cov), np.diag(cov)) + cov ** 2) / n)
    for i in range(3):
        assert np.all(np.abs(np.cov(flat[:, i].T) - cov) < TOL_SE * se_cov), i


class Banana(nn.Module):
    """x = (z1, z2 + z1^2) + noise: posteriors that are skewed, and differently in z1 and z2."""

    def forward(self, z):
        return torch.stack([z[..., 0], z[..., 1] + z[..., 0] ** 2], -1)


def test_grid_reference_on_a_skewed_posterior():
    # a Gaussian posterior looks the same in both axes once standardized, so only a skewed one
    # shows a mix-up of the grid's (z2, z1) indexing
    model = VAE(Banana(), FixedScaleNormal(0.5), StandardNormal(2), 2)
    x = torch.tensor([[0.0, 1.5], [1.0, 0.5], [-0.5, -1.0]])
    flat = grid_reference(model, x, chains=2, draws=10000).reshape(-1, 3, 2)
    n = flat.shape[0]
    for i in range(3):
        # moments by quadrature on a 3x finer grid over the same window: the window (mean +- 4 sd)
        # leaves out a little of the long tail, which these checks are fine enough to see
        axes, log_post, _ = grid_posterior(model, x[i:i + 1], n=600, bounds=posterior_window(model, x[i:i + 1]))
        zz = torch.stack(torch.meshgrid(axes[0], axes[1], indexing="xy"), -1).numpy()
        w = log_post[0].exp().numpy()
        w = w / w.sum()
        mean = np.einsum("ab,abk->k", w, zz)
        c = zz - mean
        cov = np.einsum("ab,abk,abl->kl", w, c, c)
        third = np.einsum("ab,abk->k", w, c ** 3)
        # standard errors from the influence function of each moment, evaluated on the draws
        d = flat[:, i] - mean
        checks = [(d.mean(0), 0.0, d),
                  (np.cov(d.T), cov, d[:, :, None] * d[:, None, :]),
                  (((d - d.mean(0)) ** 3).mean(0), third, d ** 3 - 3 * np.diag(cov) * d)]
        for estimate, expected, influence in checks:
            se = influence.std(0) / math.sqrt(n)
            assert np.all(np.abs(estimate - expected) < TOL_SE * se), (i, estimate, expected)


# --- importance weights: PSIS k-hat, ESS, ELBO ------------------------------------------------------

def _train_full_guide(truth: LinearGaussian, model, steps: int = 300):
    # the exact posterior mean is affine in x: an identity trunk lets the head represent it exactly
    guide = guides.build("full", nn.Identity(), truth.D, truth.L)
    fit_guide(model, guide, truth.sample(256, seed=1), steps, lr=2e-2)
    return guide


def test_exact_guide_has_constant_weights():
    truth = LinearGaussian()
    x = truth.sample(8, seed=3)
    d = guide_diagnostics(truth.model(), truth.exact_guide(), x, 4000)
    # p(x, z) / p(z|x) = p(x) for every z
    np.testing.assert_allclose(d["ess_fraction"], 1.0, atol=1e-9)
    np.testing.assert_allclose(d["elbo"], truth.log_px(x).numpy(), atol=1e-6)


def test_psis_separates_a_full_guide_from_a_mean_field_one():
    truth = LinearGaussian()
    model = truth.model()
    for p in model.parameters():
        p.requires_grad_(False)
    x = truth.sample(8, seed=3)
    log_px = truth.log_px(x).numpy()
    samples = 4000

    full = guide_diagnostics(model, _train_full_guide(truth, model), x, samples)
    mean_field = mean_field_guide(truth)
    diag = guide_diagnostics(model, mean_field, x, samples)

    for d in (full, diag):
        assert d["khat"].shape == d["ess_fraction"].shape == d["elbo"].shape == (8,)
        assert np.all((d["ess_fraction"] > 0) & (d["ess_fraction"] <= 1 + 1e-12))
    gap_full, gap_diag = np.median(log_px - full["elbo"]), np.median(log_px - diag["elbo"])
    assert np.median(full["khat"]) < diagnose_mod.KHAT_GOOD
    # q too narrow along the posterior's correlated direction: with correlation rho, w = p/q has
    # infinite variance once rho^2 > 1/4 (here 0.74), which is k > 1/2
    assert np.median(diag["khat"]) > diagnose_mod.KHAT_GOOD
    assert np.median(diag["khat"]) > np.median(full["khat"])
    assert np.median(diag["ess_fraction"]) < np.median(full["ess_fraction"])
    # a few hundredths of a nat from log p(x) on these unseen x, against the mean-field 0.67
    assert gap_full < 0.1
    assert gap_diag > gap_full + 0.5

    # the mean-field ELBO is known in closed form; its MC error is sd(log w) / sqrt(samples)
    z = mean_field.dist(x).sample((samples,))
    mean, cov = exact_posterior(truth, x)
    posterior = dist.MultivariateNormal(torch.as_tensor(mean), covariance_matrix=torch.as_tensor(cov))
    sd_log_w = (posterior.log_prob(z) - mean_field.dist(x).log_prob(z)).std(0).numpy()
    expected = truth.elbo(x, mean_field).numpy()
    assert np.all(np.abs(diag["elbo"] - expected) < TOL_SE * sd_log_w / math.sqrt(samples))


def test_psis_khat_is_arviz_psislw():
    rng = np.random.default_rng(0)
    alphas = np.array([1.1, 2.0, 4.0, 10.0])
    # log-Pareto(alpha) weights have tail shape k = 1 / alpha; a few 1-D heavy-tailed rows more
    lw = np.concatenate([np.log(rng.pareto(alphas[:, None], size=(len(alphas), 10000))),
                         np.log(np.abs(rng.standard_cauchy((2, 10000)))), rng.normal(size=(1, 10000))])
    lw32 = lw.astype(np.float32)
    given = lw.copy()
    khat = diagnostics.psis_khat(lw)
    np.testing.assert_array_equal(khat, az.psislw(lw.copy())[1])
    np.testing.assert_array_equal(lw, given)  # the caller's weights are left alone
    assert khat.shape == (lw.shape[0],)
    # single precision is read as double, not passed through at its own precision
    np.testing.assert_array_equal(diagnostics.psis_khat(lw32), az.psislw(lw32.astype(np.float64))[1])
    # about 0.9 against 0.1: apart by several times the estimate's error at 10,000 draws
    assert khat[0] > khat[3] + 0.4


# --- aggregate posterior ----------------------------------------------------------------------------

class ClosedFormAffineGuide(AffineGaussianGuide):
    """A diagonal affine guide whose moments are exact rather than Monte-Carlo."""

    @torch.no_grad()
    def moments(self, x, samples: int = 0):
        loc = self.loc(x)
        return loc, self.cov.diagonal().expand_as(loc)


def _mixture_cumulants(a, p, s):
    """First four cumulants of a * Bernoulli(p) + N(0, s^2): those of the two parts add."""
    pq = p * (1 - p)
    return a * p, s ** 2 + a ** 2 * pq, a ** 3 * pq * (1 - 2 * p), a ** 4 * pq * (1 - 6 * pq)


def _influence(z: np.ndarray) -> dict:
    """Influence functions of the sample mean, variance, skewness and excess kurtosis, per column
    of independent draws z: their spread over the draws, over sqrt(n), is each statistic's
    standard error."""
    c = z - z.mean(0)
    m2, m3, m4 = (c ** 2).mean(0), (c ** 3).mean(0), (c ** 4).mean(0)
    d2 = c ** 2 - m2
    return {"aggregate_mean": c, "aggregate_variance": d2,
            "aggregate_skewness": (c ** 3 - m3 - 3 * m2 * c) / m2 ** 1.5 - 1.5 * m3 / m2 ** 2.5 * d2,
            "aggregate_excess_kurtosis": (c ** 4 - m4 - 4 * m3 * c) / m2 ** 2 - 2 * m4 / m2 ** 3 * d2}


def test_aggregate_posterior_variance_law_and_moments():
    n, a, p, b = 20000, 3.0, 0.2, 0.05
    sigma = torch.tensor([0.5, 1.2, 1.0])
    x = torch.stack([(torch.rand(n) < p).double(), torch.randn(n)], 1)
    # dim 0: mean a * x0, so q(z) is a Gaussian mixture; dim 1: one mean for all x; dim 2: a mean
    # that varies with x, but by less than the active-unit threshold
    A = torch.tensor([[a, 0.0], [0.0, 0.0], [0.0, b]])
    c = torch.tensor([0.0, 0.7, 0.0])
    guide = ClosedFormAffineGuide(A, c, torch.diag(sigma ** 2), diagonal=True)

    # one draw per image keeps the draws independent, which the standard errors below assume;
    # batches of 500 images make 40 of them to concatenate
    out = aggregate_posterior(guide, x, draws_per_image=1)

    # the law of total variance on these very x, to rounding
    mu = (x @ A.T + c).numpy()
    np.testing.assert_allclose(out["mean_variance"], (sigma ** 2).numpy(), rtol=1e-12)
    np.testing.assert_allclose(out["variance_of_means"], mu.var(0, ddof=1), rtol=1e-10, atol=1e-15)
    np.testing.assert_allclose(out["variance_law"], (sigma ** 2).numpy() + mu.var(0, ddof=1), rtol=1e-10)
    assert out["variance_of_means"][1] == 0
    assert 0 < out["variance_of_means"][2] < ACTIVE_UNIT_THRESHOLD
    assert out["active"] == [True, False, False]

    z = out["samples"]
    assert z.shape == (n, 3)
    np.testing.assert_allclose(out["aggregate_mean"], z.mean(0), rtol=1e-12)
    np.testing.assert_allclose(out["aggregate_variance"], z.var(0, ddof=1), rtol=1e-12)
    np.testing.assert_allclose(out["aggregate_skewness"], stats.skew(z, axis=0, bias=True), rtol=1e-10)
    np.testing.assert_allclose(out["aggregate_excess_kurtosis"], stats.kurtosis(z, axis=0, fisher=True, bias=True),
                               rtol=1e-10)

    k1, k2, k3, k4 = _mixture_cumulants(a, p, sigma[0].item())
    variances = [k2, sigma[1].item() ** 2, sigma[2].item() ** 2 + b ** 2]
    expected = {"aggregate_mean": [k1, 0.7, 0.0], "aggregate_variance": variances, "variance_law": variances,
                "aggregate_skewness": [k3 / k2 ** 1.5, 0.0, 0.0],
                "aggregate_excess_kurtosis": [k4 / k2 ** 2, 0.0, 0.0]}
    influence = _influence(z)
    # the variance law varies with the x drawn only, through the variance of the means
    influence["variance_law"] = (mu - mu.mean(0)) ** 2 - mu.var(0)
    for key, values in expected.items():
        se = influence[key].std(0) / math.sqrt(n)
        assert np.all(np.abs(np.array(out[key]) - values) <= TOL_SE * se + 1e-12), (key, out[key], values)

    # several draws per image over uneven batches: every image is drawn equally often, so the
    # aggregate mean is that of mu on these x, up to the noise of the draws alone
    k, m = 7, 1000
    more = aggregate_posterior(guide, x[:m], draws_per_image=k, batch_size=300)
    assert more["samples"].shape == (k * m, 3)
    np.testing.assert_allclose(more["variance_law"], (sigma ** 2).numpy() + mu[:m].var(0, ddof=1), rtol=1e-10)
    assert np.all(np.abs(np.array(more["aggregate_mean"]) - mu[:m].mean(0)) < TOL_SE * sigma.numpy() / math.sqrt(k * m))


# --- energy distance --------------------------------------------------------------------------------

def _mean_abs_normal(m: float, var: float) -> float:
    s = math.sqrt(var)
    return s * math.sqrt(2 / math.pi) * math.exp(-m ** 2 / (2 * var)) + m * (1 - 2 * stats.norm.cdf(-m / s))


def test_energy_distance_against_closed_forms():
    rng = np.random.default_rng(0)
    n, reps, shift = 500, 20, 1.0
    same = np.array([energy_distance(rng.normal(size=(n, 2)), rng.normal(size=(n, 2))) for _ in range(reps)])
    shifted = np.array([energy_distance(rng.normal(size=(n, 1)), rng.normal(shift, size=(n, 1)))
                        for _ in range(reps)])
    # the estimate averages |A - A'| over all n^2 pairs, zeros on the diagonal included, so its
    # expectation is the energy distance plus E|X - X'| (1/n + 1/m)
    same_expected = math.sqrt(math.pi) * 2 / n  # E|X - X'| = sqrt(pi) for 2-D standard normals
    within = 2 / math.sqrt(math.pi)  # E|X - X'| in 1-D
    shifted_expected = 2 * _mean_abs_normal(shift, 2.0) - 2 * within + within * 2 / n
    for values, expected in ((same, same_expected), (shifted, shifted_expected)):
        assert abs(values.mean() - expected) < TOL_SE * values.std(ddof=1) / math.sqrt(reps)
    assert shifted.min() > 10 * same.max()
    a, b = rng.normal(size=(200, 2)), rng.normal(size=(300, 2))
    assert energy_distance(a, b) == pytest.approx(energy_distance(b, a), rel=1e-12)


# --- InferenceData ----------------------------------------------------------------------------------

def test_inference_data_round_trips_through_netcdf(tmp_path):
    rng = np.random.default_rng(0)
    draws = {name: rng.normal(size=(2, 7, 3, 2)) for name in ("reference", "diag", "full")}
    images = [4, 10, 17]
    path = diagnostics.save_netcdf(diagnostics.inference_data(draws, images), tmp_path / "posteriors.nc")
    assert [p.name for p in tmp_path.iterdir()] == ["posteriors.nc"]  # no temporary file left

    for loaded in (az.from_netcdf(str(path)), diagnostics.load_netcdf(path)):
        z = loaded.posterior["z"]
        assert z.dims == ("chain", "draw", "source", "image", "z_dim")
        assert list(z.coords["source"].values) == list(draws)
        assert list(z.coords["image"].values) == images
        assert list(z.coords["z_dim"].values) == [0, 1]
        assert list(z.coords["chain"].values) == [0, 1]
        assert list(z.coords["draw"].values) == list(range(7))
        for name, values in draws.items():
            np.testing.assert_array_equal(z.sel(source=name).values, values)


# --- the command line -------------------------------------------------------------------------------

TINY = ["--dataset", "digits", "--hidden", "32", "--quiet", "--device", "cpu"]
QUICK = ["--images", "3", "--warmup", "50", "--draws", "50", "--iw-samples", "200", "--is-samples", "200",
         "--device", "cpu"]


def _train(out, *args):
    assert main(["train", *args, "--out", str(out)]) == 0
    return str(out)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, _one_thread):
    root = tmp_path_factory.mktemp("runs")
    return {guide: _train(root / guide, *TINY, "--latent-dim", "2", "--epochs", "2", "--guide", guide)
            for guide in ("diag", "full")}


@pytest.fixture(scope="module")
def wide_run(tmp_path_factory, _one_thread):
    return _train(tmp_path_factory.mktemp("wide") / "run", *TINY, "--latent-dim", "3", "--epochs", "1")


@pytest.fixture(scope="module")
def file_run(tmp_path_factory, runs):
    # binary 8x8 images: the same observation shape and latent size as the digits runs, another dataset
    root = tmp_path_factory.mktemp("file")
    x = (np.random.default_rng(0).random((300, 8, 8)) < 0.3).astype(np.float32)
    np.savez(root / "binary.npz", x=x)
    run = _train(root / "run", "--dataset", str(root / "binary.npz"), "--hidden", "32", "--quiet", "--device", "cpu",
                 "--latent-dim", "2", "--epochs", "1")
    # only the dataset differs, so that is what the command must notice
    assert load_run(run).obs_shape == load_run(runs["diag"]).obs_shape
    return run


def _kl_gap_tolerance(report, samples: int) -> dict:
    """Per (guide, image): 4 standard errors of an ELBO averaged over ``samples`` log-weights,
    from a fresh, larger set of log-weights of the same model and guide."""
    model = load_run(report["model_of"]).pair.model.eval()
    x = load_data(load_run(report["model_of"]).config).observations("test")[report["images"]]
    tol = {}
    for name, run_dir in report["runs"].items():
        with torch.no_grad():
            terms = log_weight_terms(model, load_run(run_dir).pair.guide.eval(), x, 2000)
        sd = (terms["log_lik"] + terms["log_prior"] - terms["log_q"]).double().std(0)
        for image, s in zip(report["images"], sd.tolist()):
            # plus room for the error of log p(x) by quadrature, far smaller on these broad posteriors
            tol[name, image] = TOL_SE * s / math.sqrt(samples) + 1e-3
    return tol


class TestCommandLine:
    @pytest.fixture(autouse=True)
    def float64(self):
        # runs and data are float32: the command runs under torch's default dtype, not the
        # module's float64
        yield

    def test_diagnose_nuts_end_to_end(self, capsys, tmp_path, runs):
        out = tmp_path / "diagnose"
        assert main(["diagnose", runs["diag"], runs["full"], *QUICK, "--out", str(out)]) == 0
        captured = capsys.readouterr()
        report = json.loads((out / "diagnose.json").read_text())

        images = report["images"]
        assert len(images) == 3 == len(set(images))
        assert report["runs"] == {"diag": runs["diag"], "full": runs["full"]}
        assert report["model_of"] == runs["diag"] and report["latent_dim"] == 2
        rows = report["per_image"]
        assert sorted((r["guide"], r["image"]) for r in rows) == sorted((g, i) for g in ("diag", "full")
                                                                       for i in images)
        tol = _kl_gap_tolerance(report, 200)
        for r in rows:
            assert math.isfinite(r["khat"]), r
            assert 0 < r["ess_fraction"] <= 1 + 1e-9, r
            assert r["kl_gap"] >= -tol[r["guide"], r["image"]], r
            assert r["kl_gap"] == pytest.approx(r["log_px"] - r["elbo"])
            assert r["energy_distance"] >= 0 and math.isfinite(r["mean_error"]) and math.isfinite(r["cov_error"])
        # with a 2-D latent log p(x) is the quadrature's, the same for every guide
        for i in images:
            assert len({r["log_px"] for r in rows if r["image"] == i}) == 1

        assert set(report["per_dimension"]) == {"diag", "full"}
        for d in report["per_dimension"].values():
            assert all(len(v) == 2 for v in d.values())
            np.testing.assert_allclose(d["variance_law"], np.add(d["mean_variance"], d["variance_of_means"]))
            assert d["active"] == [v > ACTIVE_UNIT_THRESHOLD for v in d["variance_of_means"]]
            assert all(v > 0 for v in d["aggregate_variance"])

        idata = az.from_netcdf(str(out / "posteriors.nc"))
        z = idata.posterior["z"]
        assert z.dims == ("chain", "draw", "source", "image", "z_dim")
        assert z.shape == (2, 50, 3, 3, 2)
        assert list(z.coords["source"].values) == ["reference", "diag", "full"]
        assert list(z.coords["image"].values) == images
        # the reported r-hat and ESS are ArviZ's on the stored reference draws
        ref = az.convert_to_dataset({"z": z.sel(source="reference").values})
        np.testing.assert_allclose(report["reference"]["rhat"], az.rhat(ref)["z"].values, rtol=1e-6)
        np.testing.assert_allclose(report["reference"]["ess_bulk"], az.ess(ref, method="bulk")["z"].values, rtol=1e-6)

        for name in ("khat.png", "variance_law.png", "aggregate.png", f"pairs_image{images[0]}.png",
                     f"pairs_image{images[1]}.png"):
            assert (out / name).read_bytes()[:8] == PNG_MAGIC, name
        assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]

        np.testing.assert_allclose(report["reference"]["ess_tail"], az.ess(ref, method="tail")["z"].values, rtol=1e-6)

        # 2 chains x 50 draws after 50 warm-up steps: far too few for the thresholds, so warnings are
        # expected, each exactly when its threshold is crossed
        ref_report, warned = report["reference"], report["warnings"]
        assert warned
        assert any("r-hat" in w for w in warned) == (ref_report["max_rhat"] > diagnose_mod.RHAT_LIMIT)
        low_ess = min(ref_report["min_ess_bulk"], ref_report["min_ess_tail"]) < diagnose_mod.ESS_PER_CHAIN_MIN * 2
        assert any("ESS" in w for w in warned) == low_ess
        assert captured.err.strip().splitlines() == [f"pyro-vae: warning: {w}" for w in warned]
        markdown = (out / "diagnose.md").read_text()
        assert markdown.count("**Warning:**") == len(warned)
        for r in rows:
            assert f"| {r['image']} | {r['guide']} | {r['khat']:.2f}" in markdown
        assert f"wrote {out}/diagnose.md" in captured.out

    def test_diagnose_grid_reference(self, capsys, tmp_path, runs):
        out = tmp_path / "diagnose"
        assert main(["diagnose", runs["diag"], runs["full"], *QUICK, "--reference", "grid", "--out", str(out)]) == 0
        captured = capsys.readouterr()
        report = json.loads((out / "diagnose.json").read_text())
        assert report["reference"]["method"] == "grid"
        assert report["warnings"] == [] and captured.err == ""
        assert len(report["per_image"]) == 6
        z = az.from_netcdf(str(out / "posteriors.nc")).posterior["z"]
        assert z.shape == (2, 50, 3, 3, 2)
        assert np.isfinite(z.values).all()
        for name in ("diagnose.md", "khat.png", "variance_law.png", "aggregate.png"):
            assert (out / name).is_file(), name

    @pytest.mark.parametrize("case", ["missing run", "other latent size", "other dataset", "grid in 3-D",
                                      "no images", "no draws", "negative warm-up"])
    def test_diagnose_user_errors(self, capsys, tmp_path, request, case):
        def run(name):
            return request.getfixturevalue(name)

        argv, words = {
            "missing run": lambda: ([run("runs")["diag"], str(tmp_path / "absent")], ["not found", "absent"]),
            "other latent size": lambda: ([run("runs")["diag"], run("wide_run")], ["latent size"]),
            "other dataset": lambda: ([run("runs")["diag"], run("file_run")], ["another dataset"]),
            "grid in 3-D": lambda: ([run("wide_run"), "--reference", "grid"], ["2-D", "3"]),
            "no images": lambda: ([run("runs")["diag"], "--images", "0"], ["--images"]),
            "no draws": lambda: ([run("runs")["diag"], "--draws", "0"], ["--draws"]),
            "negative warm-up": lambda: ([run("runs")["diag"], "--warmup", "-1"], ["--warmup"]),
        }[case]()
        capsys.readouterr()  # what training the runs printed
        out = tmp_path / "diagnose"
        before = sorted(tmp_path.iterdir())
        line = user_error(capsys, ["diagnose", *argv, "--device", "cpu", "--out", str(out)])
        for word in words:
            assert word in line, line
        assert not out.exists()
        assert sorted(tmp_path.iterdir()) == before
