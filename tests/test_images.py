"""Every (architecture x likelihood x guide) of the registries on tiny uint8 images, grey and colour:
the data pipeline, the shapes a run produces, and one training step that changes every parameter;
and bits per dimension, NLL / (D ln 2), on a model whose likelihood is known exactly."""

import json
import math

import numpy as np
import pyro
import pytest
import torch

from pyro_vae import data as data_mod, objectives, run
from pyro_vae.cli import main
from pyro_vae.config import RunConfig
from pyro_vae.guides import GUIDES, MIN_SCALE
from pyro_vae.likelihoods import LIKELIHOODS
from pyro_vae.nets import ARCHITECTURES

ARCH_OPTIONS = {"resnet": {"channels": 4, "blocks": 1, "downsample": 1}}
SMALL_FLOWS = {"flows": 2, "flow_hidden": [8]}
LIKELIHOOD_OPTIONS = {"dmol": {"mixtures": 2}}


def _npz(path, channels: int, binary: bool, n: int = 24, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 2 if binary else 256, size=(n, channels, 8, 8), dtype=np.uint8)
    np.savez(path, x=x)
    return str(path)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("likelihood", list(LIKELIHOODS))
@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_every_architecture_likelihood_and_guide_trains_a_step(tmp_path, arch, likelihood, channels):
    binary = LIKELIHOODS[likelihood].meta.get("levels") == 2
    data = data_mod.load(_npz(tmp_path / "x.npz", channels, binary), likelihood=likelihood)
    assert data.obs_shape == (channels, 8, 8) and data.x["train"].dtype == torch.uint8
    x = data.observations("train")[:8]
    if LIKELIHOODS[likelihood].meta.get("levels") == 256:  # the model sees k / 255
        assert torch.equal(x * 255, (x * 255).round()) and x.max() <= 1
    for guide in GUIDES:
        if GUIDES[guide].meta.get("model_driven") and likelihood == "gaussian":
            # raw 0..255 values under a Gaussian: the hamiltonian guide's first leapfrog gradients reach
            # 1e8 and its loss's gradients overflow float32; its dynamics need data of a moderate scale
            continue
        config = RunConfig(arch=arch, arch_options=ARCH_OPTIONS.get(arch, {}), hidden=[16], latent_dim=2,
                           likelihood=likelihood, likelihood_options=LIKELIHOOD_OPTIONS.get(likelihood, {}),
                           guide=guide, guide_options={k: v for k, v in SMALL_FLOWS.items()
                                                       if k in GUIDES[guide].options()}).validate()
        pyro.set_rng_seed(0)
        pair = run.build(config, data.obs_shape)
        loss = objectives.loss_fn("elbo", pair.model, pair.guide)
        optimizer = torch.optim.Adam(pair.parameters(), lr=1e-2)
        before = [p.detach().clone() for p in pair.parameters()]
        value = loss(x, torch.ones(()))
        assert torch.isfinite(value), (arch, likelihood, guide)
        value.backward()
        optimizer.step()
        moved = [not torch.equal(b, p) for b, p in zip(before, pair.parameters())]
        assert all(moved), (arch, likelihood, guide, sum(moved), len(moved))
        with torch.no_grad():
            images = pair.model.sample(3)
            recon = pair.model.reconstruct(pair.guide, x[:3])
        assert images.shape == recon.shape == (3, channels, 8, 8), (arch, likelihood, guide)
        if LIKELIHOODS[likelihood].meta.get("levels"):  # means of pixel values in [0, 1]
            assert images.min() >= 0 and images.max() <= 1 + 1e-6


def test_bits_per_dim_is_the_nll_over_d_ln_2(tmp_path, capsys):
    """A categorical VAE whose decoder ignores z (its last weights zeroed) and whose guide is the
    prior has log p(x) = sum over pixels of log softmax(bias)[k], exactly for any K: every
    importance weight is p(x). evaluate's bits/dim are -log p(x) / (D ln 2)."""
    path = _npz(tmp_path / "x.npz", 1, binary=False, n=40)
    out = tmp_path / "run"
    assert main(["train", "--dataset", path, "--likelihood", "categorical", "--arch", "mlp", "--hidden", "8",
                 "--latent-dim", "2", "--epochs", "1", "--out", str(out), "--device", "cpu", "--quiet"]) == 0
    checkpoint = run.load_run(out)
    decoder = checkpoint.pair.model.decoder
    with torch.no_grad():
        last = [m for m in decoder.modules() if isinstance(m, torch.nn.Linear)][-1]
        last.weight.zero_()
        last.bias.copy_(torch.randn_like(last.bias))
        head = checkpoint.pair.guide.head  # q(z|x) = N(0, I), the prior
        head.weight.zero_()
        head.bias.copy_(torch.tensor([0.0, 0.0] + [math.log(math.expm1(1 - MIN_SCALE))] * 2))
    torch.save({**checkpoint.payload, "pair": checkpoint.pair.state_dict()}, out / "checkpoint.pt")
    capsys.readouterr()
    assert main(["evaluate", str(out), "--iw-samples", "3", "--device", "cpu", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    data = run.load_data(checkpoint.config)
    k = (data.observations("test") * 255).round().long().reshape(-1, 64)  # (N, D)
    log_softmax = last.bias.reshape(256, 64).log_softmax(0)  # (256 levels, D pixels)
    log_px = log_softmax.gather(0, k).sum(1)  # (N,): image n, pixel d scores level k[n, d]
    assert result["nll"] == pytest.approx(-log_px.mean().item(), rel=1e-5)
    assert result["nll_bits_per_dim"] == pytest.approx(-log_px.mean().item() / (64 * math.log(2)), rel=1e-5)
    assert result["elbo_bits_per_dim"] == pytest.approx(-result["elbo"] / (64 * math.log(2)), rel=1e-9)
    assert result["nll_bits_per_dim_se"] == pytest.approx(result["nll_se"] / (64 * math.log(2)), rel=1e-9)
    assert main(["evaluate", str(out), "--iw-samples", "3", "--device", "cpu"]) == 0
    assert "bits/dim" in capsys.readouterr().out


def test_evaluation_chunks_follow_the_likelihoods_outputs(tmp_path):
    """A categorical decoder gives 256 numbers per pixel: its importance-sampling chunks are sized
    by them, not as a Bernoulli's, so the memory budget holds."""
    from pyro_vae.evaluate import _chunk_size, _elements_per_sample

    shape = (1, 8, 8)
    sizes = {}
    for name in ("bernoulli", "categorical"):
        config = RunConfig(likelihood=name, hidden=[8], latent_dim=2).validate()
        model = run.build(config, shape).model
        sizes[name] = _chunk_size(5000, 100, _elements_per_sample(model, torch.zeros(100, *shape)), 2**23)
    assert sizes["bernoulli"] == min(5000, 2**23 // (100 * 4 * 64))  # 4 numbers per pixel, as before
    assert sizes["categorical"] == 2**23 // (100 * 512 * 64)
