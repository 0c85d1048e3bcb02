"""Hierarchical VAEs: a two-layer linear-Gaussian model built through the suite (exact log p(x)),
bottom-up and ladder inference, gradients, checkpoints, the CLI's layer errors and training."""

import json
import math

import pyro
import pyro.distributions as dist
import pytest
import torch

import pyro_vae
from cli_errors import user_error
from linear_gaussian import fit_guide, float64  # noqa: F401 (float64: an autouse fixture)
from pyro_vae import contract, objectives
from pyro_vae.config import RunConfig
from pyro_vae.errors import PyroVAEError
from pyro_vae.guides import FlowGuide
from pyro_vae.hierarchical import BottomUpGuide, HierarchicalVAE, LadderGuide, merge
from pyro_vae.run import LAST, build, load_checkpoint

D, L1, L2 = 5, 3, 2


def linear_config(inference: str) -> RunConfig:
    # identity activations make every network affine: the model is linear-Gaussian
    return RunConfig(latent_dim=[L1, L2], hidden=[6], layer_hidden=[4], activation="identity",
                     likelihood="gaussian", min_scale=0.01, inference=inference).validate()


def affine(net, d_in: int, d_out: int):
    """(A, c) of an affine network's first ``d_out`` outputs (its loc)."""
    with torch.no_grad():
        c = net(torch.zeros(d_in))[:d_out]
        return torch.stack([net(e)[:d_out] - c for e in torch.eye(d_in)], 1), c


def fix_scales(net, d_out: int, scale: float, min_scale: float):
    """Make the scale outputs of ``net`` the constant ``scale``: zero weights, bias softplus^-1."""
    last = net[-1]
    with torch.no_grad():
        last.weight[d_out:] = 0.0
        last.bias[d_out:] = math.log(math.expm1(scale - min_scale))


class Truth:
    """The suite's two-layer model with constant scales, and its marginal p(x) in closed form."""

    def __init__(self, model: HierarchicalVAE, s1=0.5, s0=0.3, min_scale=0.01):
        torch.manual_seed(5)
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.randn_like(p) * 0.6)
        fix_scales(model.conditionals[0].net, L1, s1, 1e-5)  # the layers' own floor (guides' MIN_SCALE)
        fix_scales(model.decoder, D, s0, min_scale)
        self.A, self.a = affine(model.conditionals[0].net, L2, L1)
        self.B, self.b = affine(model.decoder, L1, D)
        cov_z1 = self.A @ self.A.T + s1 ** 2 * torch.eye(L1)
        self.cov_z1 = cov_z1
        self.px = dist.MultivariateNormal(self.B @ self.a + self.b, self.B @ cov_z1 @ self.B.T + s0 ** 2 * torch.eye(D))


@pytest.mark.parametrize("inference", ["bottom-up", "ladder"])
def test_two_layer_linear_gaussian_evaluates_to_its_exact_likelihood(inference):
    pair = build(linear_config(inference), (D,))
    model, guide = pair.model, pair.guide
    assert isinstance(model, HierarchicalVAE) and model.latent_dims == (L1, L2)
    assert isinstance(guide, LadderGuide if inference == "ladder" else BottomUpGuide)
    truth = Truth(model)
    x = truth.px.sample((100,))
    fit_guide(model, guide, x, steps=1500, lr=0.02)
    pyro.set_rng_seed(0)
    result = pyro_vae.evaluate(model, guide, x, iw_samples=5000)
    exact = -truth.px.log_prob(x).mean().item()
    assert abs(result["nll"] - exact) < 0.05, (result["nll"], exact)
    assert -result["elbo"] > exact  # the ELBO is a bound, and this one is not tight
    assert set(result["kl_per_site"]) == {"z1", "z2"} and result["latent_dims"] == {"z1": L1, "z2": L2}


def test_ancestral_samples_follow_the_model():
    pair = build(linear_config("bottom-up"), (D,))
    truth = Truth(pair.model)
    z1, z2 = pair.model.ancestral(20000)
    assert z2.shape == (20000, L2) and z1.shape == (20000, L1)
    torch.testing.assert_close(z1.mean(0), truth.a, atol=0.05, rtol=0)
    torch.testing.assert_close(torch.cov(z1.T), truth.cov_z1, atol=0.08, rtol=0.05)
    assert pair.model.sample(7).shape == (7, D)


def test_precision_weighted_merge_is_the_normalized_product():
    g = torch.Generator().manual_seed(0)
    a = (torch.randn(4, generator=g), torch.rand(4, generator=g) + 0.2)
    b = (torch.randn(4, generator=g), torch.rand(4, generator=g) + 0.2)
    loc, scale = merge(a, b)
    z = torch.randn(50, 4, generator=g) * 3
    log_ratio = (dist.Normal(loc, scale).log_prob(z) - dist.Normal(*a).log_prob(z) - dist.Normal(*b).log_prob(z))
    torch.testing.assert_close(log_ratio - log_ratio[0], torch.zeros_like(log_ratio), atol=1e-10, rtol=0)


@pytest.mark.parametrize("inference, objective", [("bottom-up", "elbo"), ("bottom-up", "iwae"),
                                                  ("bottom-up", "elbo-jit"), ("ladder", "elbo"),
                                                  ("ladder", "meanfield"), ("ladder", "iwae")])
def test_gradients_reach_every_layer(inference, objective):
    config = RunConfig(latent_dim=[6, 4, 2], hidden=[16], layer_hidden=[8], inference=inference,
                       batch_norm=True, likelihood="bernoulli").validate()
    pair = build(config, (1, 4, 4))
    x = torch.bernoulli(torch.full((10, 1, 4, 4), 0.4))
    loss = objectives.loss_fn(objective, pair.model, pair.guide, particles=3)
    for _ in range(2):  # the JIT compiles on its first call
        pair.zero_grad(set_to_none=True)
        value = loss(x, torch.tensor(0.7))
        value.backward()
    missing = [name for name, p in pair.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing
    assert math.isfinite(value.item())


def test_meanfield_refused_for_bottom_up_inference(tmp_path):
    config = RunConfig(latent_dim=[4, 2], hidden=[16], epochs=1, objective="meanfield", out=str(tmp_path / "r"))
    with pytest.raises(PyroVAEError, match="model's order"):
        pyro_vae.fit(config, progress=False)
    assert not (tmp_path / "r").exists()
    # the default is the Monte-Carlo KL there, and the closed form for the ladder
    x = torch.bernoulli(torch.full((3, 1, 8, 8), 0.5))
    for inference, expected in (("bottom-up", "elbo"), ("ladder", "meanfield")):
        pair = build(RunConfig(latent_dim=[4, 2], hidden=[16], inference=inference, likelihood="bernoulli"), (1, 8, 8))
        assert objectives.default_objective(pair.model, pair.guide, x) == expected


def test_a_flow_on_the_bottom_layer():
    config = RunConfig(latent_dim=[4, 2], hidden=[16], guide="iaf", guide_options={"flows": 2, "flow_hidden": [8]},
                       likelihood="bernoulli").validate()
    pair = build(config, (1, 8, 8))
    assert isinstance(pair.guide.bottom, FlowGuide) and pair.guide.bottom.latent_dim == 4
    draws = contract.guide_draws(pair.guide, torch.bernoulli(torch.full((3, 1, 8, 8), 0.5)), None, 5)
    assert draws["z1"].shape == (5, 3, 4) and draws["z2"].shape == (5, 3, 2)


def _train(tmp_path, name, epochs, **options):
    config = RunConfig(latent_dim=[8, 4], hidden=[32], layer_hidden=[16], epochs=epochs, patience=1000, seed=3,
                       out=str(tmp_path / name), **options)
    return pyro_vae.fit(config, progress=False)


@pytest.mark.parametrize("inference", ["bottom-up", "ladder"])
def test_training_raises_the_validation_elbo(tmp_path, inference):
    # 34 epochs of 9 steps on the digits: about 300 steps
    run_dir = _train(tmp_path, inference, 34, inference=inference, warmup_epochs=5)
    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert history[-1]["step"] >= 300
    assert max(h["valid_elbo"] for h in history[-5:]) > history[0]["valid_elbo"] + 3.0
    result = pyro_vae.evaluate(*_pair(run_dir), _test(run_dir), iw_samples=50)
    assert set(result["active_units_per_site"]) == {"z1", "z2"}


def _pair(run_dir):
    run = pyro_vae.load_run(run_dir)
    return run.pair.model, run.pair.guide


def _test(run_dir):
    from pyro_vae.run import load_data

    return load_data(pyro_vae.load_run(run_dir).config).observations("test")


def test_resume_reproduces_a_straight_run_with_batch_norm(tmp_path):
    straight = _train(tmp_path, "straight", 3, inference="ladder", batch_norm=True)
    _train(tmp_path, "resumed", 2, inference="ladder", batch_norm=True)
    resumed = pyro_vae.fit(RunConfig(out=str(tmp_path / "resumed")), resume=True, progress=False, epochs=3)
    a, b = load_checkpoint(straight / LAST).payload["pair"], load_checkpoint(resumed / LAST).payload["pair"]
    assert list(a) == list(b) and any("running_mean" in k for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)
    # and a checkpoint rebuilds the same guide: the same draws from the same seed
    x = _test(straight)[:16]
    draws = []
    for run_dir in (straight, resumed):
        model, guide = _pair(run_dir)
        pyro.set_rng_seed(1)
        draws.append(pyro_vae.evaluate(model, guide, x, iw_samples=20))
    assert draws[0] == draws[1]


@pytest.mark.parametrize("argv, match", [
    (["--latent-dim", "0,5"], "--latent-dim must be a positive integer"),
    (["--latent-dim", "5", "--layer-hidden", "5"], "--layer-hidden sizes the networks between latent layers"),
    (["--latent-dim", "4", "--inference", "ladder"], "needs several stochastic layers"),
    (["--latent-dim", "4,2", "--inference", "ladder", "--guide", "iaf"], "takes --guide diag"),
    (["--latent-dim", "4,2", "--inference", "sideways"], "unknown inference 'sideways'"),
    (["--latent-dim", "4,2", "--model", "cvae"], "has one stochastic layer"),
    (["--latent-dim", "4,2", "--batch-norm", "--arch", "conv"], "--batch-norm applies to --arch mlp"),
])
def test_bad_layer_specifications_are_one_line_errors(capsys, tmp_path, argv, match):
    line = user_error(capsys, ["train", "--epochs", "1", "--out", str(tmp_path / "r"), *argv])
    assert match in line
    assert not (tmp_path / "r").exists()


def test_cli_trains_samples_and_diagnoses_two_layers(capsys, tmp_path):
    from pyro_vae.cli import main

    run = str(tmp_path / "run")
    assert main(["train", "--latent-dim", "4,2", "--hidden", "32", "--epochs", "2", "--quiet", "--out", run]) == 0
    assert main(["evaluate", run, "--iw-samples", "20", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["latent_dims"] == {"z1": 4, "z2": 2} and result["latent_dim"] == 6
    assert main(["sample", run, "-n", "8", "--out", str(tmp_path / "s.png")]) == 0
    out = str(tmp_path / "diag")
    assert main(["diagnose", run, "--images", "2", "--warmup", "30", "--draws", "30", "--iw-samples", "50",
                 "--is-samples", "50", "--out", out]) == 0
    report = json.loads((tmp_path / "diag" / "diagnose.json").read_text())
    assert report["latent_sites"] == {"z2": [2], "z1": [4]}
    assert set(report["per_dimension"]["run"]["site"]) == {"z1", "z2"}
