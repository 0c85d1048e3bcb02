"""Priors: the VampPrior and the mixture of Gaussians against hand-written densities, gradients,
every guide and the hierarchical models, save/load/sample."""

from __future__ import annotations

import math

import pytest
import torch

from cli_errors import user_error
from pyro_vae import priors, run
from pyro_vae.evaluate import _elements_per_sample
from pyro_vae.evaluate import evaluate as evaluate_fn
from pyro_vae.config import RunConfig
from pyro_vae.guides import GUIDES
from pyro_vae.priors import PRIORS, MixturePrior

SHAPE = (1, 8, 8)


def _pair(guide="diag", prior="vamp", latent=4, **kw):
    options = {"vamp": {"pseudo_inputs": 6}, "mog": {"components": 3}}.get(prior, {})
    options.update(kw.pop("prior_options", {}))
    config = RunConfig(dataset="digits", likelihood="bernoulli", guide=guide, prior=prior, prior_options=options,
                       latent_dim=latent, hidden=[16], **kw).validate()
    return run.build(config, SHAPE)


def _x(n=5, seed=0):
    return torch.rand(n, *SHAPE, generator=torch.Generator().manual_seed(seed)).round()


def test_vamp_log_density_is_the_hand_written_mixture():
    pair = _pair()
    prior = pair.model.prior
    z = torch.randn(7, 3, 4)
    u = prior.pseudo_inputs()
    loc, scale = pair.guide.loc_scale(u)  # (K, L) each
    per = torch.distributions.Normal(loc, scale).log_prob(z[..., None, :]).sum(-1)  # (7, 3, K)
    by_hand = torch.logsumexp(per, -1) - math.log(u.shape[0])
    torch.testing.assert_close(prior().log_prob(z), by_hand, rtol=0, atol=1e-5)
    assert ((u > 0) & (u < 1)).all()  # bounded data: pseudo-inputs in the data's range


def test_gradients_reach_the_pseudo_inputs_and_the_encoder():
    pair = _pair()
    loss = -pair.model.prior().log_prob(torch.randn(10, 4)).mean()
    loss.backward()
    assert pair.model.prior.pseudo.grad is not None and pair.model.prior.pseudo.grad.abs().sum() > 0
    head = pair.guide.head.weight.grad
    assert head is not None and head.abs().sum() > 0
    # the guide is held by reference: its parameters are the guide's, listed once
    names = [n for n, _ in pair.named_parameters()]
    assert not any(n.startswith("model.prior._guide") for n in names)


@pytest.mark.parametrize("covariance", ["diag", "full"])
def test_mixture_log_density_is_the_hand_written_mixture(covariance):
    torch.manual_seed(1)
    prior = MixturePrior(3, components=4, covariance=covariance)
    with torch.no_grad():
        prior.logits.copy_(torch.randn(4))
        prior.raw_scale.add_(0.3 * torch.randn(4, 3))
        if covariance == "full":
            prior.off_diagonal.copy_(0.5 * torch.randn_like(prior.off_diagonal))
    z = torch.randn(6, 3)
    tril = prior.scale_tril()
    assert torch.equal(tril, torch.tril(tril)) and (torch.diagonal(tril, dim1=-2, dim2=-1) > 0).all()
    weights = prior.logits.log_softmax(-1)
    per = torch.stack([torch.distributions.MultivariateNormal(prior.loc[k], scale_tril=tril[k]).log_prob(z) + weights[k]
                       for k in range(4)], -1)
    torch.testing.assert_close(prior().log_prob(z), torch.logsumexp(per, -1), rtol=0, atol=1e-5)
    (-prior().log_prob(z).mean()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in prior.parameters())


def test_set_parameters_round_trips():
    prior = MixturePrior(3, components=2, covariance="full")
    a = torch.randn(2, 3, 3)
    cov = a @ a.transpose(-1, -2) + 0.1 * torch.eye(3)
    tril = torch.linalg.cholesky(cov)
    loc, weights = torch.randn(2, 3), torch.tensor([0.3, 0.7])
    prior.set_parameters(weights, loc, tril)
    torch.testing.assert_close(prior.scale_tril(), tril, rtol=0, atol=1e-5)
    torch.testing.assert_close(prior.logits.softmax(-1), weights)
    torch.testing.assert_close(prior.loc.data, loc)


@pytest.mark.parametrize("guide", list(GUIDES))
def test_vamp_works_with_every_guide(guide):
    pair = _pair(guide)
    result = evaluate_fn(pair.model, pair.guide, _x(), iw_samples=8)
    assert math.isfinite(result["elbo"]) and math.isfinite(result["nll"])
    components = pair.guide.prior_components(pair.model.prior.pseudo_inputs())
    assert components.batch_shape == (6,) and components.event_shape == (4,)


@pytest.mark.parametrize("inference,guide", [("bottom-up", "diag"), ("bottom-up", "iaf"), ("ladder", "diag")])
def test_vamp_on_the_top_layer(inference, guide):
    pair = _pair(guide, latent=[4, 3], inference=inference)
    prior = pair.model.prior
    assert prior().event_shape == (3,)
    u = prior.pseudo_inputs()
    if inference == "ladder":
        loc, scale = pair.guide.estimates(u)[-1]
    else:  # the bottom layer at its mean, then the layer above
        loc, scale = pair.guide.ups[-1](pair.guide.bottom.prior_components(u).mean)
    z = torch.randn(5, 3)
    per = torch.distributions.Normal(loc, scale).log_prob(z[:, None]).sum(-1)
    torch.testing.assert_close(prior().log_prob(z), torch.logsumexp(per, -1) - math.log(6), rtol=0, atol=1e-5)
    assert math.isfinite(evaluate_fn(pair.model, pair.guide, _x(), iw_samples=4)["nll"])


@pytest.mark.parametrize("model", ["cvae", "m2"])
def test_vamp_refuses_guides_that_take_the_label(model):
    config = RunConfig(dataset="digits", likelihood="bernoulli", prior="vamp", model=model, classes=10,
                       hidden=[16]).validate()
    with pytest.raises(priors.PyroVAEError, match="label"):
        run.build(config, SHAPE)


@pytest.mark.parametrize("name", list(PRIORS))
def test_every_prior_saves_loads_and_samples(name, tmp_path):
    torch.manual_seed(0)
    pair = _pair("diag", name)
    with torch.no_grad():  # move every parameter off its initial value
        for p in pair.model.prior.parameters():
            p.add_(0.1 * torch.randn_like(p))
    torch.save(pair.state_dict(), tmp_path / "state.pt")
    torch.manual_seed(5)
    again = _pair("diag", name)
    again.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    z = torch.randn(9, 4)
    torch.testing.assert_close(again.model.prior().log_prob(z), pair.model.prior().log_prob(z))
    torch.manual_seed(3)
    a = pair.model.sample(4)
    torch.manual_seed(3)
    b = again.model.sample(4)
    torch.testing.assert_close(a, b)
    assert a.shape == (4, *SHAPE)


def test_evaluation_chunks_count_the_mixture():
    x = _x()
    plain, vamp = _pair(prior="standard"), _pair(prior="vamp", prior_options={"pseudo_inputs": 500})
    extra = _elements_per_sample(vamp.model, x) - _elements_per_sample(plain.model, x)
    assert extra == 2 * 500 * 4


@pytest.mark.parametrize("argv,needle", [
    (["--prior", "vamp", "--pseudo-inputs", "0"], "--pseudo-inputs must be a positive integer"),
    (["--prior", "mog", "--covariance", "banded"], "--covariance must be one of diag, full"),
    (["--prior", "standard", "--components", "3"], "takes no option components"),
    (["--prior", "vamp", "--model", "cvae"], "label"),
])
def test_prior_options_are_checked_at_the_boundary(argv, needle, tmp_path, capsys):
    out = tmp_path / "run"
    assert needle in user_error(capsys, ["train", "--dataset", "digits", "--epochs", "1", "--out", str(out), *argv])
    assert not (out / "checkpoint.pt").exists()
