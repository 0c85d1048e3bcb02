"""Every registered guide and prior: sample shapes, log q(z|x) against the change-of-variables
formula, inverses, gradients, checkpoint round trips and short training runs."""

import json
import math

import pyro
import pytest
import torch
import torch.nn.functional as F
from pyro import poutine
from pyro.distributions import TransformedDistribution
from torch.autograd.functional import jacobian

import pyro_vae.run as run_module
import pyro_vae.train as train_module
from pyro_vae import guides, nets, priors
from pyro_vae.config import RunConfig
from pyro_vae.errors import PyroVAEError
from pyro_vae.evaluate import evaluate, log_weight_terms
from pyro_vae.guides import GUIDES, MIN_SCALE, AmortizedGuide, ConstantVariance, DiagonalGaussian, FlowGuide, \
    FullCovariance
from pyro_vae.models import PRIORS, VAE, Bernoulli
from pyro_vae.objectives import loss_fn, trace_log_probs
from pyro_vae.run import load_data, load_run
from pyro_vae.train import fit

LATENT = 3
OBS_SHAPE = (1, 8, 8)
PIXELS = 64
FLOW_OPTIONS = {"flows": 2, "flow_hidden": [16]}
# The prior's couplings have 64-wide hypernetworks: noise of 0.3 there sends log p(z) to -1e16.
PRIOR_NOISE = 0.1
# Planar and radial flows have no analytic inverse: they score only the samples they have just drawn.
NO_INVERSE = {"planar", "radial"}

DIGITS_TRAIN = 1258  # rows of the digits train split
BATCH = 128
STEPS_PER_EPOCH = DIGITS_TRAIN // BATCH
FAST_EPOCHS = math.ceil(60 / STEPS_PER_EPOCH)
SLOW_EPOCHS = math.ceil(300 / STEPS_PER_EPOCH)


def guide_options(name: str) -> dict:
    known = GUIDES[name].options()
    return {key: value for key, value in FLOW_OPTIONS.items() if key in known}


# small mixtures: a prior's own checks do not need the registry's defaults of 10 and 500 components
PRIOR_OPTIONS = {"mog": {"components": 3}, "vamp": {"pseudo_inputs": 5}}


def make_prior(name: str, dtype=torch.float64, guide=None):
    if guide is None:  # a prior built on the encoder (vamp) needs a guide to hold
        encoder, features, _ = nets.build("mlp", OBS_SHAPE, LATENT, [32], "relu", 1)
        guide = guides.build("diag", encoder, features, LATENT).to(dtype)
    return priors.build(name, LATENT, guide=guide, obs_shape=OBS_SHAPE, bounded=True,
                        **PRIOR_OPTIONS.get(name, {})).to(dtype)


def make_pair(name: str, prior: str = "standard", dtype=torch.float64):
    """(model, guide) on an MLP encoder/decoder for 8x8 binary images."""
    encoder, features, decoder = nets.build("mlp", OBS_SHAPE, LATENT, [32], "relu", 1)
    guide = guides.build(name, encoder, features, LATENT, **guide_options(name)).to(dtype)
    model = VAE(decoder, Bernoulli(), make_prior(prior, dtype, guide), LATENT)
    guides.attach(guide, model)
    return model.to(dtype), guide


def binary_batch(n: int, dtype=torch.float64) -> torch.Tensor:
    return torch.bernoulli(torch.full((n, PIXELS), 0.5, dtype=dtype))


@torch.no_grad()
def perturb(*modules, scale: float = 0.3) -> None:
    # Flows start near the identity, where a wrong log-determinant can still come out right.
    for module in modules:
        for p in module.parameters():
            p.add_(scale * torch.randn_like(p))


def row_jacobians(fn, z: torch.Tensor) -> torch.Tensor:
    """The (N, L, L) Jacobians of a map applied to each row of z (N, L); rows must not interact."""
    full = jacobian(fn, z)  # (N, L, N, L)
    rows = torch.arange(z.shape[0])
    blocks = full[rows, :, rows, :]
    across = full.clone()
    across[rows, :, rows, :] = 0
    assert across.abs().max() == 0, "one datapoint's latent moved another's"
    return blocks


def log_normal(z, loc, cov):
    """log N(z; loc, cov) written out, batched over leading dimensions."""
    diff = (z - loc).unsqueeze(-1)
    maha = (diff.mT @ torch.linalg.solve(cov, diff)).squeeze(-1).squeeze(-1)
    return -0.5 * (maha + torch.logdet(cov) + z.shape[-1] * math.log(2 * math.pi))


def _diagonal_moments(guide, x):
    loc, scale = guide.loc_scale(x)
    return loc, torch.diag_embed(scale ** 2)


def _full_moments(guide, x):
    loc, tril = guide.loc_tril(x)
    return loc, tril @ tril.mT


def _constant_variance_moments(guide, x):
    loc = guide.mean(x)
    scale = MIN_SCALE + F.softplus(guide.raw_scale)
    return loc, torch.diag_embed(scale ** 2).expand(loc.shape + (LATENT,))


# Mean and covariance of each Gaussian family from its own parameters, not from its distribution.
GAUSSIAN_MOMENTS = {DiagonalGaussian: _diagonal_moments, FullCovariance: _full_moments,
                    ConstantVariance: _constant_variance_moments}

GUIDE_NAMES = list(GUIDES)
FLOW_GUIDES = [name for name in GUIDE_NAMES if isinstance(make_pair(name)[1], FlowGuide)]
# the hamiltonian guide's density is that of its dynamics: tests/test_hamiltonian.py checks it
MODEL_DRIVEN = [name for name in GUIDE_NAMES if GUIDES[name].meta.get("model_driven")]
GAUSSIAN_GUIDES = [name for name in GUIDE_NAMES if name not in FLOW_GUIDES and name not in MODEL_DRIVEN]
INVERTIBLE_GUIDES = [name for name in FLOW_GUIDES if name not in NO_INVERSE]
PRIOR_NAMES = list(PRIORS)
FLOW_PRIORS = [name for name in PRIOR_NAMES if isinstance(make_prior(name)(), TransformedDistribution)]


def test_registry_partition():
    assert NO_INVERSE <= set(FLOW_GUIDES)
    assert INVERTIBLE_GUIDES and "realnvp" in FLOW_PRIORS
    for name in GAUSSIAN_GUIDES:
        assert type(make_pair(name)[1]) in GAUSSIAN_MOMENTS, f"no closed-form log q check for guide {name!r}"


# --- shapes --------------------------------------------------------------------------------------

@pytest.mark.parametrize("particles", [None, 5])
@pytest.mark.parametrize("n", [1, 7])
@pytest.mark.parametrize("name", GUIDE_NAMES)
def test_sample_and_log_prob_shapes(name, n, particles):
    _, guide = make_pair(name, dtype=torch.float32)
    x = binary_batch(n, torch.float32)
    if particles is None:
        trace = poutine.trace(guide).get_trace(x)
        batch = (n,)
    else:
        with pyro.plate("particles", particles, dim=-2):
            trace = poutine.trace(guide).get_trace(x)
        batch = (particles, n)
    site = trace.nodes["z"]
    assert site["value"].shape == batch + (LATENT,)
    log_q = site["fn"].log_prob(site["value"])
    assert log_q.shape == batch
    assert torch.isfinite(log_q).all()


# --- log q(z|x) ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", FLOW_GUIDES)
def test_flow_log_q_is_change_of_variables(name):
    _, guide = make_pair(name)
    perturb(guide)
    x = binary_batch(4)
    pyro.set_rng_seed(1)
    site = poutine.trace(guide).get_trace(x).nodes["z"]
    # scored at once: planar and radial can only score their cached samples
    log_q = site["fn"].log_prob(site["value"])

    pyro.set_rng_seed(1)  # the same base draw as the guide's
    base, transforms = guide.base_and_transforms(x)
    z0 = z = base.rsample()
    expected = base.log_prob(z)
    for t in transforms:
        expected = expected - torch.linalg.slogdet(row_jacobians(t, z)).logabsdet
        z = t(z)

    assert torch.allclose(z, site["value"], atol=1e-10, rtol=0)
    assert (z - z0).abs().max() > 1e-2, "the perturbed flow should not be the identity"
    assert torch.allclose(log_q, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", GAUSSIAN_GUIDES)
def test_gaussian_log_q_closed_form(name):
    _, guide = make_pair(name)
    perturb(guide)
    x = binary_batch(6)
    site = poutine.trace(guide).get_trace(x).nodes["z"]
    loc, cov = GAUSSIAN_MOMENTS[type(guide)](guide, x)
    assert torch.allclose(site["fn"].log_prob(site["value"]), log_normal(site["value"], loc, cov), atol=1e-6, rtol=0)


def test_full_covariance_cholesky_factor():
    _, guide = make_pair("full")
    perturb(guide)
    x = binary_batch(6)
    _, tril = guide.loc_tril(x)
    assert torch.equal(tril, tril.tril())
    assert (tril.diagonal(dim1=-2, dim2=-1) > 0).all()
    assert tril.tril(-1).abs().max() > 0, "the factor should carry correlations"
    with torch.no_grad():
        guide.head.bias.fill_(-100.0)  # softplus underflows to 0 here; MIN_SCALE must still hold
    _, tril = guide.loc_tril(x)
    assert (tril.diagonal(dim1=-2, dim2=-1) >= MIN_SCALE).all()


def test_constant_variance_scale_is_shared():
    _, guide = make_pair("const-var")
    perturb(guide)
    scales = [guide.dist(binary_batch(n)).base_dist.scale for n in (5, 3)]
    for scale in scales:
        assert torch.equal(scale, scales[0][:1].expand_as(scale))
    assert (scales[0] > 0).all()


# --- inverses ------------------------------------------------------------------------------------

def _check_round_trip(transforms, n=6):
    for t in transforms:
        z = 2 * torch.randn(n, LATENT, dtype=torch.float64)
        y = t(z)
        # a fresh tensor, so the inverse is computed rather than read from the transform's cache
        assert torch.allclose(t.inv(y.clone()), z, atol=1e-5, rtol=0), type(t).__name__


@pytest.mark.parametrize("name", INVERTIBLE_GUIDES)
def test_flow_guide_inverts(name):
    _, guide = make_pair(name)
    perturb(guide)
    x = binary_batch(6)
    _check_round_trip(guide.base_and_transforms(x)[1])
    q = guide.dist(x)
    z = q.rsample()
    assert torch.allclose(guide.dist(x).log_prob(z.clone()), q.log_prob(z), atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", FLOW_PRIORS)
def test_flow_prior_inverts(name):
    prior = make_prior(name)
    perturb(prior, scale=PRIOR_NOISE)
    _check_round_trip(prior().transforms)


# --- gradients -----------------------------------------------------------------------------------

@pytest.mark.parametrize("objective,particles", [("elbo", 1), ("iwae", 3)])
@pytest.mark.parametrize("prior", PRIOR_NAMES)
@pytest.mark.parametrize("name", GUIDE_NAMES)
def test_gradients_reach_every_parameter(name, prior, objective, particles):
    model, guide = make_pair(name, prior, dtype=torch.float32)
    loss = loss_fn(objective, model, guide, particles)(binary_batch(8, torch.float32), torch.tensor(1.0))
    loss.backward()
    named = list(guide.named_parameters(prefix="guide")) + list(model.named_parameters(prefix="model"))
    if name in FLOW_GUIDES:
        assert any(".steps." in key for key, _ in named)
    if prior in FLOW_PRIORS:
        assert any(key.startswith("model.prior.") for key, _ in named)
    for key, p in named:
        assert p.grad is not None, key
        assert torch.isfinite(p.grad).all(), key
        assert p.grad.abs().sum() > 0, key


# --- priors --------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", PRIOR_NAMES)
def test_prior_shapes_and_model_samples(name):
    prior = make_prior(name, torch.float32)
    p = prior()
    assert p.event_shape == (LATENT,) and p.batch_shape == ()
    z = p.sample((4,))
    assert z.shape == (4, LATENT)
    assert torch.isfinite(p.log_prob(z)).all() and p.log_prob(z).shape == (4,)
    model, _ = make_pair("diag", name, dtype=torch.float32)
    images = model.sample(5)
    assert images.shape == (5, PIXELS)
    assert ((images >= 0) & (images <= 1)).all()


def test_standard_prior_is_unit_normal():
    z = torch.randn(5, LATENT, dtype=torch.float64)
    expected = -0.5 * (z ** 2).sum(-1) - 0.5 * LATENT * math.log(2 * math.pi)
    assert torch.allclose(make_prior("standard")().log_prob(z), expected, atol=1e-12, rtol=0)


@pytest.mark.parametrize("name", FLOW_PRIORS)
def test_flow_prior_log_prob_is_change_of_variables(name):
    prior = make_prior(name)
    perturb(prior, scale=PRIOR_NOISE)
    p = prior()
    z = 2 * torch.randn(6, LATENT, dtype=torch.float64)  # arbitrary points, not the prior's samples
    log_p = p.log_prob(z)
    inputs = [z.clone()]
    for t in reversed(p.transforms):
        inputs.insert(0, t.inv(inputs[0].clone()))
    expected = p.base_dist.log_prob(inputs[0])
    for t, u, v in zip(p.transforms, inputs[:-1], inputs[1:]):
        assert torch.allclose(t(u.clone()), v, atol=1e-8, rtol=0)
        expected = expected - torch.linalg.slogdet(row_jacobians(t, u)).logabsdet
    assert torch.allclose(log_p, expected, atol=1e-6, rtol=0)


# --- checkpoints and training --------------------------------------------------------------------

@pytest.fixture
def fit_run(tmp_path, monkeypatch, device):
    """``fit`` that also hands back the (model, guide) pair it trained, as it stands in memory."""
    built = []

    def keep(*args, **kwargs):
        built.append(run_module.build(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(train_module, "build", keep)
    # figures are tested with training itself; here they would cost seconds per run
    monkeypatch.setattr(train_module, "_write_figures", lambda *args, **kwargs: None)

    def run(name: str, epochs: int):
        # latent_dim 3, not 2: nothing here needs the 2-D latent views
        config = RunConfig(dataset="digits", guide=name, guide_options=guide_options(name), latent_dim=LATENT,
                           hidden=[32], epochs=epochs, patience=epochs, batch_size=BATCH, device=device.type,
                           out=str(tmp_path / name))
        run_dir = fit(config, progress=False)
        assert len(built) == 1
        return run_dir, built[0]

    return run


@pytest.mark.parametrize("name", GUIDE_NAMES)
def test_checkpoint_reproduces_guide(name, fit_run, device):
    run_dir, saved = fit_run(name, epochs=1)
    checkpoint = load_run(run_dir, device)
    loaded = checkpoint.pair
    saved_state, loaded_state = saved.state_dict(), loaded.state_dict()
    assert list(saved_state) == list(loaded_state)
    assert all(torch.equal(saved_state[key], loaded_state[key]) for key in saved_state)

    x = load_data(checkpoint.config).observations("test", device)[:64]
    with torch.no_grad():
        draws = []
        for pair in (saved, loaded):
            pyro.set_rng_seed(3)
            q = pair.guide.dist(x)
            z = q.rsample()
            draws.append((z, q.log_prob(z)))  # at once: planar and radial score only cached samples
        assert torch.equal(draws[0][0], draws[1][0]) and torch.equal(draws[0][1], draws[1][1])
        if name not in NO_INVERSE and name not in MODEL_DRIVEN:
            z = torch.randn(64, LATENT, device=device)
            assert torch.equal(saved.guide.dist(x).log_prob(z.clone()), loaded.guide.dist(x).log_prob(z.clone()))

    results = []
    for pair in (saved, loaded):
        pyro.set_rng_seed(5)
        results.append(evaluate(pair.model, pair.guide, x, iw_samples=20))
    assert results[0] == results[1]
    numbers = [w for v in results[0].values() for w in (v.values() if isinstance(v, dict) else [v])]
    assert all(math.isfinite(v) for v in numbers)


def _check_training(fit_run, name: str, epochs: int, gain: float):
    run_dir, pair = fit_run(name, epochs)
    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == [STEPS_PER_EPOCH * (i + 1) for i in range(epochs)]
    assert all(math.isfinite(h["train_objective"]) and math.isfinite(h["valid_elbo"]) for h in history)
    assert all(torch.isfinite(p).all() for p in pair.parameters())
    # history[0] is already one epoch in; the rest of the run must still gain clearly
    assert history[-1]["valid_elbo"] > history[0]["valid_elbo"] + gain, [h["valid_elbo"] for h in history]


@pytest.mark.parametrize("name", GUIDE_NAMES)
def test_short_training_improves(name, fit_run):
    _check_training(fit_run, name, FAST_EPOCHS, gain=2.0)


@pytest.mark.slow
@pytest.mark.parametrize("name", GUIDE_NAMES)
def test_training_300_steps_improves(name, fit_run):
    _check_training(fit_run, name, SLOW_EPOCHS, gain=5.0)


# --- errors --------------------------------------------------------------------------------------

def _trunk():
    encoder, features, _ = nets.build("mlp", OBS_SHAPE, LATENT, [32], "relu", 1)
    return encoder, features


@pytest.mark.parametrize("name", GUIDE_NAMES)
def test_unknown_option_raises(name):
    with pytest.raises(PyroVAEError, match="no option not_an_option"):
        guides.build(name, *_trunk(), LATENT, **guide_options(name), not_an_option=1)


@pytest.mark.parametrize("name", [name for name in GUIDE_NAMES if "flows" not in GUIDES[name].options()])
def test_flow_option_rejected_by_families_without_flows(name):
    with pytest.raises(PyroVAEError, match="no option flows"):
        guides.build(name, *_trunk(), LATENT, flows=2)


@pytest.mark.parametrize("flows", [0, -1, 1.5])
@pytest.mark.parametrize("name", [name for name in GUIDE_NAMES if "flows" in GUIDES[name].options()])
def test_bad_flow_count_raises(name, flows):
    with pytest.raises(PyroVAEError, match="--flows"):
        guides.build(name, *_trunk(), LATENT, flows=flows)


def test_unknown_guide_lists_known_ones():
    with pytest.raises(PyroVAEError, match="unknown guide 'nope'") as err:
        guides.build("nope", *_trunk(), LATENT)
    assert str(err.value).split("choose from ")[1].split(", ") == GUIDE_NAMES


@pytest.mark.parametrize("prior", PRIOR_NAMES)
@pytest.mark.parametrize("name", GUIDE_NAMES)
def test_direct_scoring_equals_the_replayed_traces(name, prior):
    """Evaluation scores guide draws with ``guide.dist`` and ``model.log_terms`` instead of Pyro
    traces; from the same random stream both give the same draws and the same three terms."""
    model, guide = make_pair(name, prior)
    # the hamiltonian guide follows the model's gradients, which 0.3 of noise on a flow prior sends past 1e70
    perturb(model, guide, scale=0.05 if name in MODEL_DRIVEN else 0.3)
    x = binary_batch(5)
    with torch.no_grad():
        pyro.set_rng_seed(3)
        traced = trace_log_probs(model, guide, x, particles=4, scaled=False)
        pyro.set_rng_seed(3)
        direct = log_weight_terms(model, guide, x, 4)
    for key in ("log_lik", "log_prior", "log_q"):
        assert direct[key].shape == (4, 5)
        torch.testing.assert_close(direct[key], traced[key], rtol=1e-10, atol=1e-10)


def test_bernoulli_likelihood_scores_and_differentiates_as_torchs():
    """The suite's Bernoulli negates its cross-entropy in place: same log-probability and gradient
    as torch's out-of-place version, with broadcasting over particles."""
    logits = torch.randn(3, 5, PIXELS, dtype=torch.float64, requires_grad=True)
    x = binary_batch(5)
    ours = Bernoulli()(logits).log_prob(x)
    theirs = torch.distributions.Independent(torch.distributions.Bernoulli(logits=logits), 1).log_prob(x)
    assert ours.shape == (3, 5)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-12)
    grad_ours, = torch.autograd.grad(ours.sum(), logits)
    grad_theirs, = torch.autograd.grad(theirs.sum(), logits)
    torch.testing.assert_close(grad_ours, grad_theirs, rtol=0, atol=1e-12)
    torch.testing.assert_close(grad_ours, x - torch.sigmoid(logits), rtol=0, atol=1e-12)


def test_monte_carlo_mean_in_chunks_estimates_the_closed_form():
    """Flow guides estimate E_q[z|x] by drawing in chunks; on a diagonal Gaussian the same
    estimator must land within sampling error of the closed-form mean, whatever the chunking."""
    model, guide = make_pair("diag")
    perturb(guide)
    x = binary_batch(4)
    loc, scale = guide.loc_scale(x)
    with torch.no_grad():
        for samples, chunk in ((250, 100), (300, 300), (7, 3)):
            estimate = AmortizedGuide.mean(guide, x, samples, chunk)
            assert estimate.shape == loc.shape
            assert ((estimate - loc).abs() < 4.5 * scale / math.sqrt(samples)).all(), (samples, chunk)
