"""The Hamiltonian guide: volume-preserving leapfrog steps, the tempering's log-determinant, K = 0
against the diagonal guide, the linear-Gaussian KL gap, gradients, save/load, and its refusals."""

from __future__ import annotations

import math

import pyro
import pytest
import torch
from torch import nn
from torch.autograd.functional import jacobian

from cli_errors import user_error
from linear_gaussian import LinearGaussian, fit_guide
from pyro_vae import contract, guides, objectives, run
from pyro_vae.config import RunConfig
from pyro_vae.evaluate import evaluate, per_datapoint
from pyro_vae.guides.base import DiagonalGaussian
from pyro_vae.guides.hamiltonian import HamiltonianGuide, leapfrog, temperatures


def _banana(z):
    """A non-quadratic log-density, so the leapfrog map is not linear."""
    return -0.5 * (z[..., 0] ** 2 + (z[..., 1] - z[..., 0] ** 2) ** 2 + 0.5 * z[..., 2:].pow(4).sum(-1))


def _grad(z):
    with torch.enable_grad():
        z = z if z.requires_grad else z.detach().requires_grad_()
        (g,) = torch.autograd.grad(_banana(z).sum(), z, create_graph=True)
    return g


@pytest.mark.usefixtures("f64")
def test_each_leapfrog_step_preserves_volume():
    eps = torch.tensor([0.3, 0.1, 0.2])

    def step(state):
        z, rho = state[:3], state[3:]
        z, rho, _ = leapfrog(z, rho, eps, _grad)
        return torch.cat([z, rho])

    for seed in range(3):
        state = torch.randn(6, generator=torch.Generator().manual_seed(seed))
        J = jacobian(step, state)
        assert not torch.allclose(J, torch.eye(6))  # it moves
        assert torch.linalg.slogdet(J)[1].abs().item() < 1e-10


@pytest.mark.usefixtures("f64")
def test_the_tempering_schedule_and_its_log_determinant():
    beta0, steps, d = torch.tensor(0.3), 4, 3
    t = temperatures(beta0, steps)
    assert t[0].item() == pytest.approx(1 / 0.3) and t[-1].item() == pytest.approx(1.0)
    assert (t[1:] < t[:-1]).all()  # the momentum cools at every step
    betas = 1 / t
    for k in range(1, steps + 1):
        J = jacobian(lambda rho: rho * (t[k] / t[k - 1]).sqrt(), torch.randn(d))
        closed = 0.5 * d * math.log(betas[k - 1] / betas[k])
        assert torch.linalg.slogdet(J)[1].item() == pytest.approx(closed, abs=1e-12)
    # all K steps together: (d / 2) log beta_0, the term that cancels log N(rho_0; 0, I / beta_0)'s
    total = sum(0.5 * d * math.log(betas[k - 1] / betas[k]) for k in range(1, steps + 1))
    assert total == pytest.approx(0.5 * d * math.log(0.3), abs=1e-12)


def _pair(guide="hamiltonian", latent=3, **options):
    config = RunConfig(dataset="digits", likelihood="bernoulli", guide=guide, latent_dim=latent, hidden=[16],
                       guide_options=options).validate()
    return run.build(config, (1, 8, 8))


def _x(n=6):
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(1)).round()


def test_with_no_steps_the_bound_is_the_diagonal_guides():
    torch.manual_seed(0)
    h = _pair(leapfrog=0)
    d = _pair("diag")
    d.load_state_dict(h.state_dict(), strict=False)  # the same encoder, head and decoder
    x = _x()
    results = []
    for pair in (h, d):
        pyro.set_rng_seed(7)
        results.append(per_datapoint(pair.model, pair.guide, x, 50))
    for key in ("elbo", "log_px", "kl"):
        torch.testing.assert_close(results[0][key], results[1][key], rtol=0, atol=1e-6)


def test_gradients_reach_the_encoder_the_step_sizes_and_the_tempering():
    torch.manual_seed(0)
    pair = _pair(leapfrog=3, tempering="learned")
    loss = objectives.loss_fn("elbo", pair.model, pair.guide)
    (loss(_x(), torch.tensor(1.0)) / 6).backward()
    guide = pair.guide
    for name, p in (("head", guide.head.weight), ("step sizes", guide.raw_step), ("tempering", guide.raw_beta0)):
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    free = _pair(leapfrog=3, tempering="free")
    (objectives.loss_fn("elbo", free.model, free.guide)(_x(), torch.tensor(1.0)) / 6).backward()
    assert free.guide.raw_alpha.grad.abs().sum() > 0
    fixed = _pair(leapfrog=3, tempering="fixed").guide
    assert not [n for n, _ in fixed.named_parameters() if "beta0" in n or "alpha" in n]
    assert fixed.beta0().item() == pytest.approx(0.5, abs=1e-6)
    assert _pair(leapfrog=3, tempering="none").guide.beta0().item() == 1.0
    assert torch.equal(_pair(leapfrog=3, tempering="none").guide.log_alphas(), torch.zeros(3))
    # learned and free tempering only cool the momentum, whatever their parameters
    with torch.no_grad():
        guide.raw_beta0.fill_(30.0)
        free.guide.raw_alpha.fill_(30.0)
    for g in (guide, free.guide):
        assert (g.log_alphas() <= 0).all() and g.beta0().item() <= 1.0


def test_the_default_objective_is_the_monte_carlo_elbo():
    """The guide's site is a Delta with the extended bound's log-density: Pyro's 'KL' of a Delta is
    that Monte-Carlo term itself, so the analytic-KL objective is not chosen for it."""
    pair = _pair(leapfrog=1)
    assert objectives.default_objective(pair.model, pair.guide, _x()) == "elbo"


def test_the_dynamics_follow_the_models_own_density():
    """grad log p(x, z) of the dynamics is the model's, read through its trace."""
    torch.manual_seed(0)
    pair = _pair(leapfrog=1)
    x, z = _x(4), torch.randn(4, 3, requires_grad=True)
    grad = pair.guide._grad_log_joint(x, None, keep_graph=False)(z)
    by_hand, = torch.autograd.grad(contract.log_joint(pair.model, x, {"z": z}).sum(), z)
    torch.testing.assert_close(grad, by_hand)


@pytest.mark.usefixtures("f64")
def test_closes_most_of_the_diagonal_guides_gap_on_a_linear_gaussian_model():
    """The decoder fixed at the truth; the same 500 steps for the diagonal guide and the
    Hamiltonian one (K = 5); gap = log p(x) - ELBO, exact log p(x)."""
    lg = LinearGaussian()
    model = lg.model()
    x = lg.sample(256, seed=3)
    gaps = {}
    for name, make in (("diag", lambda: DiagonalGaussian(nn.Identity(), lg.D, lg.L)),
                       ("hamiltonian", lambda: HamiltonianGuide(nn.Identity(), lg.D, lg.L, leapfrog=5,
                                                                step_size=0.3))):
        torch.manual_seed(0)
        guide = make()
        guides.attach(guide, model)
        fit_guide(model, guide, x, steps=500, lr=0.02)
        torch.manual_seed(1)
        elbo = per_datapoint(model, guide, x, 2000)["elbo"]
        gaps[name] = (lg.log_px(x) - elbo).mean().item()
    assert gaps["diag"] > 0.2  # the correlated posterior leaves the mean-field guide a visible gap
    assert gaps["hamiltonian"] <= 0.2 * gaps["diag"], gaps


def test_save_and_load_reproduce_the_evaluation(tmp_path):
    torch.manual_seed(0)
    pair = _pair(leapfrog=2)
    torch.save(pair.state_dict(), tmp_path / "s.pt")
    again = _pair(leapfrog=2)
    again.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    results = []
    for p in (pair, again):
        pyro.set_rng_seed(4)
        results.append(evaluate(p.model, p.guide, _x(), iw_samples=16))
    assert results[0] == results[1] and math.isfinite(results[0]["nll"])


@pytest.mark.parametrize("prior", ["standard", "vamp", "mog", "realnvp"])
@pytest.mark.parametrize("objective", ["elbo", "iwae"])
def test_trains_with_every_prior_and_objective(prior, objective):
    torch.manual_seed(0)
    options = {"vamp": {"pseudo_inputs": 4}, "mog": {"components": 2}}.get(prior, {})
    config = RunConfig(dataset="digits", likelihood="bernoulli", guide="hamiltonian", guide_options={"leapfrog": 2},
                       prior=prior, prior_options=options, latent_dim=2, hidden=[16], objective=objective,
                       particles=2 if objective == "iwae" else 1).validate()
    pair = run.build(config, (1, 8, 8))
    loss = objectives.loss_fn(objective, pair.model, pair.guide, particles=config.particles)
    optimizer = torch.optim.Adam(pair.parameters(), lr=1e-2)
    x = _x(16)
    first = None
    for _ in range(15):
        optimizer.zero_grad()
        value = loss(x, torch.tensor(1.0)) / 16
        value.backward()
        optimizer.step()
        first = value.item() if first is None else first
    assert value.item() < first and math.isfinite(evaluate(pair.model, pair.guide, x, iw_samples=8)["nll"])


@pytest.mark.parametrize("argv,needle", [
    (["--guide", "hamiltonian", "--latent-dim", "4,2"], "one latent layer"),
    (["--guide", "hamiltonian", "--model", "m2"], "does not take a label enumerated"),
    (["--guide", "hamiltonian", "--leapfrog", "-1"], "--leapfrog must be a non-negative integer"),
    (["--guide", "hamiltonian", "--tempering", "hot"], "--tempering must be one of none, fixed, learned, free"),
    (["--guide", "hamiltonian", "--step-size", "0"], "--step-size must be a positive number"),
    (["--guide", "hamiltonian", "--beta0", "1.5"], "--beta0 must be in (0, 1]"),
    (["--guide", "hamiltonian", "--objective", "elbo-jit"], "elbo-jit traces the guide once"),
])
def test_refusals_are_one_line(argv, needle, tmp_path, capsys):
    assert needle in user_error(capsys, ["train", "--dataset", "digits", "--epochs", "1", "--out",
                                         str(tmp_path / "run"), *argv])
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_diagnostics_say_their_weights_are_the_extended_spaces():
    from pyro_vae.diagnose import diagnose_guides, markdown

    torch.manual_seed(0)
    pair = _pair(leapfrog=1, latent=2)
    report = diagnose_guides(pair.model, {"hamiltonian": pair.guide}, _x(2), reference="grid", chains=1, draws=50,
                             iw_samples=50, is_samples=100)
    assert len(report["notes"]) == 1 and "augmented importance weights" in report["notes"][0]
    assert "**Note:** hamiltonian: k-hat" in markdown({**report, "dataset": "digits", "model_of": "a test"})
    assert all(math.isfinite(r["khat"]) for r in report["per_image"])
