"""Bounds and likelihood estimates of ``pyro_vae.evaluate`` against a linear-Gaussian VAE's closed forms."""

import importlib
import math
import platform

import pyro
import pytest
import torch
from torch import nn

from linear_gaussian import TOL_SE, AffineGaussianGuide, LinearGaussian
from linear_gaussian import float64  # noqa: F401 (an autouse fixture)
from pyro_vae.evaluate import active_units, evaluate, per_datapoint
from pyro_vae.guides import AmortizedGuide, DiagonalGaussian
from pyro_vae.nets import mlp

# the package re-exports the function ``evaluate`` under the module's own name
evaluate_module = importlib.import_module("pyro_vae.evaluate")

N_DATA = 20
KEYS = {"elbo", "elbo_se", "recon", "kl", "kl_per_site", "nll", "nll_se", "iw_samples", "active_units",
        "active_units_per_site", "latent_dim", "latent_dims", "n"}


@pytest.fixture
def lg():
    return LinearGaussian()


@pytest.fixture
def x(lg):
    return lg.sample(N_DATA)


def mean_se(values: torch.Tensor) -> tuple[float, float]:
    return values.mean().item(), values.std().item() / math.sqrt(values.numel())


def replicated(model, guide, x, samples, reps, **kwargs):
    """``per_datapoint`` on ``reps`` copies of x: each estimate of shape (reps, N), rows independent."""
    per = per_datapoint(model, guide, x.repeat(reps, 1), samples, **kwargs)
    return {key: value.view(reps, -1) for key, value in per.items() if key != "kl_sites"}


def mean_error(estimates: torch.Tensor, exact: torch.Tensor) -> tuple[float, float]:
    """Mean error over the datapoints, with its standard error over the replicates: how the error
    differs from one datapoint to the next is no part of the Monte-Carlo noise."""
    return mean_se((estimates - exact).mean(1))


def test_exact_posterior_gives_closed_form(lg, x):
    guide = lg.exact_guide()
    truth = lg.log_px(x)
    # the closed-form ELBO of the exact posterior is log p(x): the helper's formulas agree
    torch.testing.assert_close(lg.elbo(x, guide), truth, rtol=0, atol=1e-9)
    per = replicated(lg.model(), guide, x, samples=100, reps=20)
    torch.testing.assert_close(per["log_px"], truth.expand(20, -1), rtol=0, atol=1e-6)
    torch.testing.assert_close(per["elbo"], truth.expand(20, -1), rtol=0, atol=1e-6)
    torch.testing.assert_close(per["recon"] - per["kl"], per["elbo"], rtol=0, atol=1e-9)
    # each term alone is a Monte-Carlo estimate of its closed form
    loc, cov = guide.mean(x), guide.cov
    for key, exact in (("recon", lg.expected_log_lik(x, loc, cov)), ("kl", lg.kl_to_prior(loc, cov))):
        err, se = mean_error(per[key], exact)
        assert abs(err) < TOL_SE * se, key


def test_diagonal_proposal_log_px_converges(lg, x):
    guide = lg.diagonal_guide()
    truth = lg.log_px(x)
    # a wrong correlation costs the ELBO over a nat; 5000 importance samples recover nearly all of it
    assert (truth - lg.elbo(x, guide)).mean() > 1.0
    per = per_datapoint(lg.model(), guide, x, samples=5000)
    err, se = mean_se(per["log_px"] - truth)
    assert abs(err) < 0.05
    assert err < TOL_SE * se  # an upper bound on log p(x) only in expectation


def test_iwae_bounds_are_ordered_and_grow_with_k(lg, x):
    model, guide = lg.model(), lg.diagonal_guide()
    truth, elbo = lg.log_px(x), lg.elbo(x, guide)
    reps = 200
    xs, truths = x.repeat(reps, 1), truth.repeat(reps)
    gaps = {}
    for k in (1, 5, 50, 500):
        per = per_datapoint(model, guide, xs, k)
        # log of a mean weight is never below the mean log weight of the same draws
        assert (per["log_px"] >= per["elbo"] - 1e-9).all()
        # each replicate's gap to log p(x), averaged over the datapoints
        gaps[k] = mean_se((per["log_px"] - truths).view(reps, -1).mean(1))
    elbo_gap = (elbo - truth).mean().item()
    assert abs(gaps[1][0] - elbo_gap) < TOL_SE * gaps[1][1]
    for k, (gap, se) in gaps.items():
        assert elbo_gap < gap + TOL_SE * se, k
        assert gap < TOL_SE * se, k
    # each step closes the gap by five or more standard errors of the difference, so a plain
    # comparison of the replicate averages is already robust
    ks = sorted(gaps)
    for small, large in zip(ks, ks[1:]):
        assert gaps[large][0] > gaps[small][0], (small, large)


def test_evaluate_reports_per_datapoint_summaries(lg, x):
    model = lg.model()
    guide = DiagonalGaussian(mlp([lg.D, 16], nn.Tanh, final_act=True), 16, lg.L)
    pyro.set_rng_seed(3)
    result = evaluate(model, guide, x, iw_samples=200, batch_size=len(x))
    pyro.set_rng_seed(3)
    per = per_datapoint(model, guide, x, 200)
    assert set(result) == KEYS
    log_px, log_px_se = mean_se(per["log_px"])
    elbo, elbo_se = mean_se(per["elbo"])
    assert result["nll"] == pytest.approx(-log_px, rel=1e-12)
    assert result["nll_se"] == pytest.approx(log_px_se, rel=1e-12)
    assert result["elbo"] == pytest.approx(elbo, rel=1e-12)
    assert result["elbo_se"] == pytest.approx(elbo_se, rel=1e-12)
    assert result["elbo"] == pytest.approx(result["recon"] - result["kl"], rel=1e-12)
    assert result["nll"] <= -result["elbo"]
    assert (result["iw_samples"], result["latent_dim"], result["n"]) == (200, lg.L, N_DATA)
    assert result["active_units"] == active_units(guide, x)[0]


def test_evaluate_with_exact_posterior_is_exact(lg, x):
    truth = lg.log_px(x)
    # seven points per batch: three batches, the last one short
    result = evaluate(lg.model(), lg.exact_guide(), x, iw_samples=50, batch_size=7)
    log_px, log_px_se = mean_se(truth)
    assert result["nll"] == pytest.approx(-log_px, abs=1e-6)
    assert result["elbo"] == pytest.approx(log_px, abs=1e-6)
    assert result["nll_se"] == pytest.approx(log_px_se, abs=1e-6)
    assert result["elbo_se"] == pytest.approx(log_px_se, abs=1e-6)
    assert result["elbo"] == pytest.approx(result["recon"] - result["kl"], abs=1e-9)
    # both posterior means vary with x, by 1 - S_ii in the model's own data distribution
    assert result["active_units"] == lg.L


def small_chunks(x, chunk):
    """A ``max_elements`` that makes ``per_datapoint`` draw ``chunk`` samples at a time."""
    return chunk * x.shape[0] * 4 * x.shape[-1]


def test_chunking_with_exact_posterior(lg, x, monkeypatch):
    model, guide = lg.model(), lg.exact_guide()
    draws = []
    original = evaluate_module.log_weight_terms

    def counted(model, guide, x, samples, y=None):
        draws.append(samples)
        return original(model, guide, x, samples, y)

    monkeypatch.setattr(evaluate_module, "log_weight_terms", counted)
    whole = per_datapoint(model, guide, x, 100)
    assert draws == [100]
    draws.clear()
    chunked = per_datapoint(model, guide, x, 100, max_elements=small_chunks(x, 7))
    assert draws == [7] * 14 + [2]
    truth = lg.log_px(x)
    for per in (whole, chunked):
        torch.testing.assert_close(per["log_px"], truth, rtol=0, atol=1e-6)
        torch.testing.assert_close(per["elbo"], truth, rtol=0, atol=1e-6)


def test_chunking_with_diagonal_proposal(lg, x):
    model, guide = lg.model(), lg.diagonal_guide()
    reps, samples = 20, 1000
    truth = lg.log_px(x)
    loc, cov = guide.mean(x), guide.cov
    exact = {"log_px": truth, "elbo": lg.elbo(x, guide), "recon": lg.expected_log_lik(x, loc, cov),
             "kl": lg.kl_to_prior(loc, cov)}
    errors = {}
    # 1000 samples in chunks of 30: 33 full chunks and a short one
    for max_elements in (2**23, small_chunks(x.repeat(reps, 1), 30)):
        pyro.set_rng_seed(5)
        per = replicated(model, guide, x, samples, reps, max_elements=max_elements)
        for key, value in exact.items():
            err, se = mean_error(per[key], value)
            # log_px is biased low by about Var(w) / 2K, about half a standard error here
            assert abs(err) < TOL_SE * se, key
        errors[max_elements] = mean_error(per["log_px"], truth)
    (a, a_se), (b, b_se) = errors.values()
    assert abs(a - b) < TOL_SE * math.hypot(a_se, b_se)


class MonteCarloMean(AffineGaussianGuide):
    """The same guide, but with the base class's sampled E_q[z|x], as flows without a closed form use."""

    mean = AmortizedGuide.mean


@pytest.mark.parametrize("guide_cls", [AffineGaussianGuide, MonteCarloMean])
def test_active_units_counts_dimensions_whose_mean_varies(guide_cls):
    x = torch.randn(600, 3, generator=torch.Generator().manual_seed(1))
    # dimension 0: a constant mean with the prior's unit variance, the picture of an unused unit;
    # dimension 1: a mean that follows x, with variance near 1 over x
    A = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    c = torch.tensor([0.7, -0.2])
    guide = guide_cls(A, c, torch.eye(2), diagonal=True)
    count, variances = active_units(guide, x)
    assert count == 1
    assert variances[0] < evaluate_module.ACTIVE_UNIT_THRESHOLD / 2
    assert variances[1] == pytest.approx(x[:, 0].var().item(), rel=0.05)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the allocator setting is glibc's")
def test_retain_freed_memory_takes_effect_on_glibc():
    # mallopt returns 0 for a setting it refuses; both must be accepted
    evaluate_module.retain_freed_memory.cache_clear()
    assert evaluate_module.retain_freed_memory() is True
