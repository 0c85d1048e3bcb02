"""``benchmarks/plain_flows.py``: every hand-written contender computes its suite guide's negative
ELBO, with the same gradient for every parameter, on the same parameters and the same noise; and
the checks notice the differences a contender could plausibly get wrong (a perturbed weight, the
missing permutation, pre-masked MADE weights, a gradient-blocking clamp)."""

import sys
from pathlib import Path

import pytest
import torch

from pyro_vae import objectives, run
from pyro_vae.config import RunConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import plain_flows  # noqa: E402
import throughput as tp  # noqa: E402

FLOWS = ("planar", "iaf", "coupling")
BATCH, LATENT = 16, 6
TOL = 1e-5

pytestmark = pytest.mark.usefixtures("f64")


def suite_pair(name):
    if name == "diag":  # the hand-written diag VAE is throughput.py's, of its widths only
        return tp.suite_pair(torch.device("cpu"))
    # small widths, and K = 3 so that IAF and coupling steps have permutations between them
    config = RunConfig(arch="mlp", hidden=[64], latent_dim=LATENT, activation="relu", likelihood="bernoulli",
                       guide=name, guide_options={"flows": 3, "flow_hidden": (32, 32)})
    return run.build(config, tp.OBS_SHAPE)


def batch():
    gen = torch.Generator().manual_seed(0)
    return torch.bernoulli(torch.rand(BATCH, *tp.OBS_SHAPE, generator=gen), generator=gen)


def parameters(pair, plain):
    """The two modules' parameters, paired in order."""
    suite = [pair.guide.encoder, pair.guide.head, pair.model.decoder]
    suite += [step.nn for step in getattr(pair.guide, "steps", [])]
    mine = [plain.encoder, plain.head, plain.decoder] + list(getattr(plain, "hypernets", []))
    out = [(a, b) for s, m in zip(suite, mine, strict=True) for a, b in zip(s.parameters(), m.parameters(), strict=True)]
    assert all(a.shape == b.shape for a, b in out)
    return out


def loss_and_grads(loss, params, x, beta):
    for p in params:
        p.grad = None
    torch.manual_seed(1)
    value = loss(x, torch.tensor(beta))
    value.backward()
    return value.item(), [p.grad.clone() for p in params], torch.get_rng_state()


def suite_losses(pair) -> list:
    """The loss the suite trains with, and Pyro's trace-based ELBO itself: the contender must
    match the mathematics, not only whichever computation ``loss_fn`` picks for the pair."""
    return [objectives.loss_fn("elbo", pair.model, pair.guide, 1),
            objectives.build("elbo", 1)(objectives.Scaled(pair.model), objectives.Scaled(pair.guide))]


def compare(pair, plain, beta):
    """(relative loss difference, worst relative gradient difference over parameters), the worst
    over the suite's losses."""
    x, pairs = batch(), parameters(pair, plain)
    p, p_grads, p_rng = loss_and_grads(plain, [b for _, b in pairs], x, beta)
    loss_diff = grad_diff = 0.0
    for suite in suite_losses(pair):
        s, s_grads, s_rng = loss_and_grads(suite, [a for a, _ in pairs], x, beta)
        assert torch.equal(s_rng, p_rng), "the two steps drew different amounts of noise"
        loss_diff = max(loss_diff, abs(s - p) / abs(s))
        grad_diff = max([grad_diff] + [((g - h).norm() / g.norm().clamp_min(1e-300)).item()
                                       for g, h in zip(s_grads, p_grads)])
    return loss_diff, grad_diff


@pytest.mark.parametrize("name", ("diag",) + FLOWS)
def test_suite_guide_draws_one_standard_normal_of_the_base_shape(name):
    """The premise of seeding both alike: the suite's guide takes one randn (N, L) per call, and
    nothing else, from torch's generator, as the contenders' ``torch.randn_like(loc)`` does."""
    pair, x = suite_pair(name), batch()
    torch.manual_seed(1)
    pair.guide(x)
    after_guide = torch.get_rng_state()
    torch.manual_seed(1)
    torch.randn(BATCH, pair.guide.latent_dim)
    assert torch.equal(after_guide, torch.get_rng_state())


@pytest.mark.parametrize("beta", (1.0, 0.5))
@pytest.mark.parametrize("name", ("diag",) + FLOWS)
def test_plain_contender_equals_suite_in_loss_and_gradients(name, beta):
    pair = suite_pair(name)
    loss_diff, grad_diff = compare(pair, plain_flows.plain_from(pair, name), beta)
    assert loss_diff < TOL and grad_diff < TOL


@pytest.mark.parametrize("name", FLOWS)
def test_a_perturbed_hypernetwork_weight_is_noticed(name):
    pair = suite_pair(name)
    plain = plain_flows.plain_from(pair, name)
    with torch.no_grad():
        plain.hypernets[-1].layers[-1].weight.add_(0.1)  # in the contender only
    assert compare(pair, plain, 1.0)[0] > TOL


@pytest.mark.parametrize("name", ("iaf", "coupling"))
def test_a_missing_permutation_is_noticed(name):
    pair = suite_pair(name)
    plain = plain_flows.plain_from(pair, name)
    plain.reverse_between = False
    assert compare(pair, plain, 1.0)[0] > TOL


def test_pre_masked_weights_agree_in_loss_but_not_in_gradients():
    """MADE weights masked once at copy time give the same loss, but gradients on the masked-out
    entries that the suite's masked layers never get: why the contender keeps its masks."""
    pair = suite_pair("iaf")
    plain = plain_flows.plain_from(pair, "iaf")
    for net in plain.hypernets:
        with torch.no_grad():
            for i, layer in enumerate(net.layers):
                layer.weight.mul_(getattr(net, f"mask{i}"))
        net.masked = False
    loss_diff, grad_diff = compare(pair, plain, 1.0)
    assert loss_diff < TOL and grad_diff > TOL


@pytest.mark.parametrize("name", ("iaf", "coupling"))
def test_clamped_log_scales_agree_and_a_plain_clamp_does_not(name, monkeypatch):
    """Log-scales pushed past both clamp limits: the contender's clamp passes gradients through,
    as Pyro's does; torch.clamp, which blocks them, is noticed."""
    pair = suite_pair(name)
    last = pair.guide.steps[0].nn.layers[-1]
    half = last.bias.numel() // 2  # outputs: means, then log-scales
    with torch.no_grad():
        last.bias[half:] = torch.tensor([10.0, -10.0]).repeat(half)[: last.bias.numel() - half]
    seen = []
    handle = last.register_forward_hook(lambda module, args, out: seen.append(out[..., half:].detach()))
    plain = plain_flows.plain_from(pair, name)
    loss_diff, grad_diff = compare(pair, plain, 1.0)
    handle.remove()
    assert (seen[0] > plain_flows.LOG_SCALE_MAX).any() and (seen[0] < plain_flows.LOG_SCALE_MIN).any()
    assert loss_diff < TOL and grad_diff < TOL
    monkeypatch.setattr(plain_flows, "clamp_keep_gradient",
                        lambda x: x.clamp(plain_flows.LOG_SCALE_MIN, plain_flows.LOG_SCALE_MAX))
    loss_diff, grad_diff = compare(pair, plain, 1.0)
    assert loss_diff < TOL and grad_diff > TOL


def test_unknown_guide_is_refused():
    with pytest.raises(ValueError, match="no hand-written contender"):
        plain_flows.plain_from(suite_pair("planar"), "radial")
