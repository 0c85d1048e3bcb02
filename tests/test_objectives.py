"""The objectives registry checked against closed forms on a linear-Gaussian VAE."""

import math

import pyro
import pytest
import torch
from torch import nn

from linear_gaussian import TOL_SE, LinearGaussian
from linear_gaussian import float64  # noqa: F401 (an autouse fixture)
from pyro_vae.evaluate import per_datapoint
from pyro_vae.guides import DiagonalGaussian
from pyro_vae.nets import mlp
from pyro_vae.objectives import Scaled, loss_fn

N_DATA = 20


@pytest.fixture
def lg():
    return LinearGaussian()


@pytest.fixture
def x(lg):
    return lg.sample(N_DATA)


def mlp_guide(lg):
    return DiagonalGaussian(mlp([lg.D, 16, 8], nn.Tanh, final_act=True), 8, lg.L)


def replicates(loss, x, beta, n):
    """Mean and standard error of ``loss(x, beta)`` over ``n`` independent draws."""
    values = torch.stack([loss(x, torch.tensor(beta)).detach() for _ in range(n)])
    return values.mean().item(), values.std().item() / math.sqrt(n)


@pytest.mark.parametrize("beta", [1.0, 0.5])
def test_elbo_matches_closed_form(lg, x, beta):
    model = lg.model()
    # mis-specified in mean, scale and correlation, so the ELBO sits well below log p(x)
    guide = lg.diagonal_guide(scale=1.3, shift=0.2)
    mean, se = replicates(loss_fn("elbo", model, guide, particles=400), x, beta, 40)
    truth = -lg.elbo(x, guide, beta).sum().item()
    assert abs(mean - truth) < TOL_SE * se
    # the estimate is precise enough to tell the bound from log p(x) and from the other beta
    assert abs(truth + lg.log_px(x).sum().item()) > 10 * se
    assert abs(truth + lg.elbo(x, guide, 1.5 - beta).sum().item()) > 10 * se


@pytest.mark.parametrize("beta", [1.0, 0.5])
def test_meanfield_equals_monte_carlo_elbo(lg, x, beta):
    model = lg.model()
    guide = lg.diagonal_guide(scale=1.3, shift=0.2)
    mf, mf_se = replicates(loss_fn("meanfield", model, guide, particles=400), x, beta, 40)
    mc, mc_se = replicates(loss_fn("elbo", model, guide, particles=400), x, beta, 40)
    assert abs(mf - mc) < TOL_SE * math.hypot(mf_se, mc_se)
    assert abs(mf + lg.elbo(x, guide, beta).sum().item()) < TOL_SE * mf_se


def test_meanfield_kl_term_is_analytic(lg, x):
    model, guide = lg.model(), lg.diagonal_guide(scale=1.3, shift=0.2)
    loss = loss_fn("meanfield", model, guide, particles=5)
    # same draws, so the sampled reconstruction term cancels and only beta * KL remains
    pyro.set_rng_seed(1)
    full = loss(x, torch.tensor(1.0))
    pyro.set_rng_seed(1)
    half = loss(x, torch.tensor(0.5))
    kl = lg.kl_to_prior(guide.mean(x), guide.cov).sum()
    torch.testing.assert_close(full - half, 0.5 * kl, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("particles", [1, 7, 64])
@pytest.mark.parametrize("name", ["elbo", "meanfield", "iwae"])
def test_exact_posterior_makes_every_bound_tight(lg, x, name, particles):
    # with q = p(z|x) every importance weight equals p(x), so the estimate has no variance
    loss = loss_fn(name, lg.model(), lg.exact_guide(), particles)(x, torch.tensor(1.0))
    torch.testing.assert_close(loss, -lg.log_px(x).sum(), rtol=0, atol=1e-6)


def test_iwae_with_one_particle_is_the_elbo(lg, x):
    guide = lg.diagonal_guide()
    mean, se = replicates(loss_fn("iwae", lg.model(), guide, particles=1), x, 1.0, 200)
    assert abs(mean + lg.elbo(x, guide).sum().item()) < TOL_SE * se


def test_iwae_loss_is_minus_the_importance_weighted_bound(lg, x):
    k, reps = 10, 200
    model, guide = lg.model(), lg.diagonal_guide()
    loss_mean, loss_se = replicates(loss_fn("iwae", model, guide, particles=k), x, 1.0, reps)
    # the evaluator's K-sample estimate, on every datapoint ``reps`` times over
    per = per_datapoint(model, guide, x.repeat(reps, 1), k)["log_px"].view(reps, -1).sum(1)
    ref_mean, ref_se = per.mean().item(), per.std().item() / math.sqrt(reps)
    assert abs(loss_mean + ref_mean) < TOL_SE * math.hypot(loss_se, ref_se)
    elbo, log_px = lg.elbo(x, guide).sum().item(), lg.log_px(x).sum().item()
    assert elbo + 10 * loss_se < -loss_mean < log_px + TOL_SE * loss_se


def test_jit_elbo_matches_elbo(lg, x):
    model, guide = lg.model(), mlp_guide(lg)
    eager = loss_fn("elbo", model, guide, particles=4)
    jit = loss_fn("elbo-jit", model, guide, particles=4)
    # compiling runs the function more than once and so draws extra random numbers
    jit(x, torch.tensor(1.0))
    params = list(model.parameters()) + list(guide.parameters())
    for seed, beta in ((1, 1.0), (2, 0.3)):
        results = []
        for loss in (eager, jit):
            pyro.set_rng_seed(seed)
            value = loss(x, torch.tensor(beta))
            results.append((value, torch.autograd.grad(value, params)))
        (v_eager, g_eager), (v_jit, g_jit) = results
        torch.testing.assert_close(v_jit, v_eager, rtol=1e-5, atol=0)
        for a, b in zip(g_jit, g_eager):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("particles", [1, 3])
def test_elbo_matches_pyros_trace_elbo(lg, x, particles):
    """The suite's lean `elbo` is Pyro's Trace_ELBO estimator: same draws, same loss and gradients."""
    model, guide = lg.model(), mlp_guide(lg)
    ours = loss_fn("elbo", model, guide, particles=particles)
    # the KL weight is applied from outside the model and guide, by the same messenger for both
    stock = pyro.infer.Trace_ELBO(num_particles=particles, vectorize_particles=True, max_plate_nesting=1)(
        Scaled(model), Scaled(guide))
    params = list(model.parameters()) + list(guide.parameters())
    for seed, beta in ((1, 1.0), (2, 0.3)):
        results = []
        for loss in (ours, stock):
            pyro.set_rng_seed(seed)
            value = loss(x, torch.tensor(beta))
            results.append((value, torch.autograd.grad(value, params)))
        (v_ours, g_ours), (v_stock, g_stock) = results
        torch.testing.assert_close(v_ours, v_stock, rtol=1e-10, atol=0)
        for a, b in zip(g_ours, g_stock):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["elbo", "elbo-jit", "meanfield", "iwae"])
def test_gradients_reach_every_parameter(lg, x, name):
    model, guide = lg.model(), mlp_guide(lg)
    loss = loss_fn(name, model, guide, particles=3)(x, torch.tensor(1.0))
    loss.backward()
    named = [("model." + n, p) for n, p in model.named_parameters()]
    named += [("guide." + n, p) for n, p in guide.named_parameters()]
    assert {"model.decoder.weight", "model.decoder.bias", "guide.head.weight"} <= {n for n, _ in named}
    for n, p in named:
        assert p.grad is not None, n
        assert torch.isfinite(p.grad).all(), n
        assert (p.grad != 0).any(), n
