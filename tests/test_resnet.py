"""``--arch resnet``: weight-normalized residual convolutions for (C, H, W) images of any size, with
architecture and likelihood options as first-class run options (config, CLI flags, checks)."""

import dataclasses
import json
import math

import numpy as np
import pyro
import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import pyro_vae
from cli_errors import user_error
from pyro_vae import cli, likelihoods, nets, objectives, run
from pyro_vae.config import RunConfig
from pyro_vae.errors import PyroVAEError
from pyro_vae.guides import GUIDES
from pyro_vae.hierarchical import GaussianLayer
from pyro_vae.registry import Option
from pyro_vae.semisupervised import SemiSupervisedLoss, TrainingPlan

TINY = {"channels": 4, "blocks": 1, "downsample": 1}
SMALL_FLOWS = {"flows": 2, "flow_hidden": [8]}


def tiny_config(**changes) -> RunConfig:
    base = dict(arch="resnet", arch_options=dict(TINY), hidden=[16], latent_dim=2, likelihood="gaussian")
    return RunConfig(**{**base, **changes}).validate()


def guide_options(name: str) -> dict:
    return {k: v for k, v in SMALL_FLOWS.items() if k in GUIDES[name].options()}


def pixels(n: int, shape: tuple, likelihood: str, seed: int = 0) -> torch.Tensor:
    """8-bit images scaled to [0, 1] (binarized for the Bernoulli likelihood)."""
    raw = np.random.default_rng(seed).integers(0, 256, size=(n, *shape), dtype=np.uint8)
    x = torch.from_numpy(raw).float() / 255
    return torch.bernoulli(x) if likelihood == "bernoulli" else x


def convolutions(module: nn.Module) -> list[nn.Conv2d]:
    return [m for m in module.modules() if isinstance(m, nn.Conv2d)]


def assert_tiny(net: nn.Module, out_channels: int | None = None) -> None:
    """``net`` was built with the options TINY (not the defaults): 4 channels, 1 block at 2 resolutions."""
    assert sum(isinstance(m, nets.ResidualBlock) for m in net.modules()) == 2
    widths = {m.out_channels for m in convolutions(net)}
    assert widths == ({4} if out_channels is None else {4, out_channels}), widths


# --- shapes -----------------------------------------------------------------------------------

@pytest.mark.parametrize("shape, downsample", [((1, 28, 20), 2), ((3, 8, 8), 2), ((3, 7, 5), 1), ((1, 4, 9), 2),
                                               ((3, 32, 32), 3)])
@pytest.mark.parametrize("lead", [(), (5,), (2, 3)], ids=["no batch", "batch", "particles x batch"])
def test_encoder_and_decoder_shapes(shape, downsample, lead):
    c, h, w = shape
    out_channels = 2 * c
    encoder, features, decoder = nets.build("resnet", shape, 3, [32, 16], "relu", out_channels, channels=8,
                                            blocks=1, downsample=downsample)
    assert features == 16
    x = torch.rand(lead + shape)
    assert encoder(x).shape == lead + (16,)
    assert encoder(x.reshape(lead + (c * h * w,))).shape == lead + (16,)  # flat observations (..., D) as well
    z = torch.randn(lead + (3,))
    assert decoder(z).shape == lead + (out_channels * h * w,)
    # laid out as (out_channels, H, W) flattened: the decoder's image, cropped back to H x W
    image = decoder.net(z.reshape(-1, 3))
    assert image.shape == (max(1, math.prod(lead)), out_channels, h, w)
    torch.testing.assert_close(decoder(z), image.reshape(lead + (-1,)), rtol=0, atol=0)


def test_leading_dimensions_and_batch_rows_are_independent():
    encoder, _, decoder = nets.build("resnet", (3, 8, 6), 4, [16], "elu", 6, **TINY)
    x, z = torch.rand(2, 3, 3, 8, 6), torch.randn(2, 3, 4)
    h = encoder(x)
    torch.testing.assert_close(h.reshape(6, -1), encoder(x.reshape(6, 3, 8, 6)))
    # no batch statistics: a row's features are those it has alone
    torch.testing.assert_close(h[1, 2], encoder(x[1, 2]))
    torch.testing.assert_close(decoder(z)[0, 1], decoder(z[0, 1]))


def test_pixels_in_0_1_are_mapped_to_minus_1_1_inside_the_encoder():
    encoder, _, _ = nets.build("resnet", (1, 4, 4), 2, [8], "relu", 1, **TINY)
    first = encoder.net[0]
    assert isinstance(first, nets.ScaleInput) and not list(first.parameters())
    torch.testing.assert_close(first(torch.tensor([0.0, 0.5, 1.0])), torch.tensor([-1.0, 0.0, 1.0]))


def test_declared_options_shape_the_network():
    entry = nets.ARCHITECTURES["resnet"]
    assert entry.options() == {"channels": 64, "blocks": 2, "downsample": 2}
    for blocks, downsample, channels in ((1, 1, 8), (3, 2, 5)):
        encoder, _, decoder = nets.build("resnet", (1, 8, 8), 2, [8], "relu", 1, channels=channels, blocks=blocks,
                                         downsample=downsample)
        for net in (encoder, decoder):
            assert sum(isinstance(m, nets.ResidualBlock) for m in net.modules()) == blocks * (downsample + 1)
            assert {m.out_channels for m in convolutions(net)} <= {channels, 1}
        strided = [m for m in convolutions(encoder) if m.stride == (2, 2)]
        assert len(strided) == downsample
        assert sum(isinstance(m, nn.Upsample) for m in decoder.modules()) == downsample


def test_a_residual_block_adds_its_branch_to_its_input():
    block = nets.ResidualBlock(3, nn.ReLU)
    x = torch.randn(2, 3, 5, 4)
    torch.testing.assert_close(block(x), x + block.branch(x))
    last = block.branch[-1]
    with torch.no_grad():  # a zero scale g of weight norm (and a zero bias) silences the branch
        last.parametrizations.weight.original0.zero_()
        last.bias.zero_()
    torch.testing.assert_close(block(x), x)


def test_weight_normalized_convolutions():
    encoder, _, decoder = nets.build("resnet", (3, 8, 8), 2, [8], "relu", 6, **TINY)
    convs = convolutions(encoder) + convolutions(decoder)
    # each side: the stem (or output) convolution, two blocks of two, one strided (or upsampling) convolution
    assert len(convs) == 12
    for conv in convs:
        assert parametrize.is_parametrized(conv, "weight")
        assert type(conv.parametrizations.weight[0]).__name__ == "_WeightNorm"
        g, v = conv.parametrizations.weight.original0, conv.parametrizations.weight.original1
        # w = g v / |v| per output channel
        norm = v.flatten(1).norm(dim=1).reshape(-1, 1, 1, 1)
        torch.testing.assert_close(conv.weight, g * v / norm)
    assert not [m for m in encoder.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@pytest.mark.parametrize("shape, options, words", [
    ((784,), {}, ["images (C, H, W)", "(784,)"]),
    ((28, 28), {}, ["images (C, H, W)", "(28, 28)"]),
    ((1, 1, 28, 28), {}, ["images (C, H, W)"]),
    ((1, 2, 8), {}, ["at least 4x4", "(1, 2, 8)"]),
    ((1, 8, 8), {"downsample": 4}, ["at least 16x16", "--downsample 4"]),
])
def test_non_images_are_refused(shape, options, words):
    with pytest.raises(PyroVAEError) as err:
        nets.build("resnet", shape, 2, [8], "relu", 1, **options)
    message = str(err.value)
    assert "--arch resnet" in message and "\n" not in message
    for word in words:
        assert word in message


@pytest.mark.parametrize("arch, options, match", [
    ("mlp", {"channels": 8}, "--channels applies to --arch resnet, not --arch mlp"),
    ("conv", {"blocks": 1}, "--blocks applies to --arch resnet, not --arch conv"),
    ("resnet", {"width": 8}, "no architecture takes option 'width'; --arch resnet takes channels, blocks, downsample"),
    ("mlp", {"width": 8}, "no architecture takes option 'width'; --arch mlp takes no options"),
    ("resnet", {"channels": 0}, "--channels must be a positive integer, got 0"),
    ("resnet", {"blocks": True}, "--blocks must be a positive integer, got True"),
    ("resnet", {"downsample": 1.0}, "--downsample must be a positive integer, got 1.0"),
])
def test_bad_architecture_options(arch, options, match):
    with pytest.raises(PyroVAEError, match=match):
        nets.build(arch, (1, 8, 8), 2, [8], "relu", 1, **options)


def test_batch_norm_is_refused():
    with pytest.raises(PyroVAEError, match="--batch-norm applies to --arch mlp"):
        nets.build("resnet", (1, 8, 8), 2, [8], "relu", 1, batch_norm=True)


# --- training steps ---------------------------------------------------------------------------

def one_step(pair, loss, *args):
    """One Adam step; returns (loss value, names of parameters without a gradient, names unchanged)."""
    before = {name: p.detach().clone() for name, p in pair.named_parameters()}
    optimizer = torch.optim.Adam(pair.parameters(), lr=1e-2)
    pair.zero_grad(set_to_none=True)
    value = loss(*args)
    value.backward()
    no_grad = [n for n, p in pair.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()
               or not p.grad.abs().sum() > 0]
    optimizer.step()
    unchanged = [n for n, p in pair.named_parameters() if torch.equal(p.detach(), before[n])]
    return value.item(), no_grad, unchanged


@pytest.mark.parametrize("channels, likelihood", [(1, "bernoulli"), (3, "gaussian")])
@pytest.mark.parametrize("guide", list(GUIDES))
def test_a_training_step_with_every_guide(guide, channels, likelihood):
    config = tiny_config(guide=guide, guide_options=guide_options(guide), likelihood=likelihood)
    shape = (channels, 6, 5)
    pair = run.build(config, shape)
    x = pixels(4, shape, likelihood)
    loss = objectives.loss_fn("elbo", pair.model, pair.guide, particles=2)
    value, no_grad, unchanged = one_step(pair, loss, x, torch.tensor(1.0))
    assert math.isfinite(value)
    assert not no_grad, no_grad
    assert not unchanged, unchanged
    # the guide reads the dense layer of hidden[-1] features on top of the residual trunk
    assert any(isinstance(m, nets.ResidualBlock) for m in pair.guide.modules())
    assert pair.guide.dist(x).sample().shape == (4, 2)
    assert_tiny(pair.guide.encoder)
    assert_tiny(pair.model.decoder, channels * (1 if likelihood == "bernoulli" else 2))


@pytest.mark.parametrize("objective", ["elbo-jit", "iwae", "meanfield"])
def test_other_objectives_run_through_weight_norm(objective):
    pair = run.build(tiny_config(), (3, 5, 4))
    loss = objectives.loss_fn(objective, pair.model, pair.guide, particles=2)
    for _ in range(2):  # the JIT compiles on its first call
        value, no_grad, unchanged = one_step(pair, loss, pixels(3, (3, 5, 4), "gaussian"), torch.tensor(1.0))
    assert math.isfinite(value) and not no_grad and not unchanged


def test_cvae_and_m2_with_resnet():
    shape = (3, 6, 6)
    x, y = pixels(6, shape, "gaussian"), torch.tensor([0, 1, 2, 0, 1, 2])
    cvae = run.build(tiny_config(model="cvae", classes=3), shape)
    assert_tiny(cvae.model.decoder, 6)
    assert_tiny(cvae.guide.encoder.trunk)
    value, no_grad, unchanged = one_step(cvae, objectives.loss_fn("elbo", cvae.model, cvae.guide), x,
                                         torch.tensor(1.0), y)
    assert math.isfinite(value) and not no_grad and not unchanged
    m2 = run.build(tiny_config(model="m2", classes=3), shape)
    # the classifier q(y|x) has its own residual trunk
    assert_tiny(m2.guide.classifier)
    assert_tiny(m2.guide.z_guide.encoder.trunk)
    assert_tiny(m2.model.decoder, 6)
    plan = TrainingPlan(torch.arange(2), torch.arange(2, 6), 2, 4, 1.0)
    loss = SemiSupervisedLoss(m2.model, m2.guide, "elbo", plan)
    value, no_grad, unchanged = one_step(m2, loss, x, torch.tensor(1.0), torch.tensor([0, 1, -1, -1, -1, -1]))
    assert math.isfinite(value) and not no_grad and not unchanged


@pytest.mark.parametrize("inference", ["bottom-up", "ladder"])
def test_two_layer_model_with_resnet(inference):
    config = tiny_config(latent_dim=[4, 2], layer_hidden=[8], inference=inference)
    shape = (3, 6, 5)
    pair = run.build(config, shape)
    # only x <-> z_1 is convolutional; the networks between latent layers stay MLPs
    between = list(pair.model.conditionals) + [m for m in pair.guide.modules() if isinstance(m, GaussianLayer)]
    assert between and not any(convolutions(net) for net in between)
    assert_tiny(pair.model.decoder, 6)
    assert_tiny(pair.guide.bottom.encoder if inference == "bottom-up" else pair.guide.encoder)
    value, no_grad, unchanged = one_step(pair, objectives.loss_fn("elbo", pair.model, pair.guide),
                                         pixels(4, shape, "gaussian"), torch.tensor(1.0))
    assert math.isfinite(value) and not no_grad and not unchanged


# --- checkpoints ------------------------------------------------------------------------------

def test_a_checkpoint_reloads_with_identical_outputs(tmp_path):
    config = tiny_config(guide="iaf", guide_options=SMALL_FLOWS)
    shape = (3, 6, 5)
    pair = run.build(config, shape)
    optimizer = run.make_optimizer(pair, 1e-2)
    x = pixels(4, shape, "gaussian")
    loss = objectives.loss_fn("elbo", pair.model, pair.guide)
    for _ in range(3):  # g and v of weight norm move apart from their initial w = v
        optimizer.zero_grad()
        loss(x, torch.tensor(1.0)).backward()
        optimizer.step()
    run.save_checkpoint(tmp_path / "checkpoint.pt", config, shape, pair, optimizer, run.TrainState())
    state = pair.state_dict()
    assert any(k.endswith("parametrizations.weight.original0") for k in state)
    loaded = pyro_vae.load_run(tmp_path).pair
    assert list(loaded.state_dict()) == list(state)
    z = torch.randn(2, 4, 2)
    assert torch.equal(pair.guide.encoder(x), loaded.guide.encoder(x))
    assert torch.equal(pair.model.decoder(z), loaded.model.decoder(z))
    pyro.set_rng_seed(3)
    first = pair.guide.dist(x).sample()
    pyro.set_rng_seed(3)
    assert torch.equal(first, loaded.guide.dist(x).sample())


# --- configuration and command line -----------------------------------------------------------

def test_config_json_round_trip(tmp_path):
    config = tiny_config(arch_options={"channels": 8, "blocks": 3}, likelihood_options={"anything": 2})
    config.save(tmp_path / "config.json")
    loaded = RunConfig.load(tmp_path / "config.json")
    assert loaded == config
    assert loaded.arch_options == {"channels": 8, "blocks": 3} and loaded.likelihood_options == {"anything": 2}
    assert RunConfig().arch_options == {} and RunConfig().likelihood_options == {}
    # a config written before the options existed still loads
    data = config.to_dict()
    del data["arch_options"], data["likelihood_options"]
    assert RunConfig.from_dict(data).validate().arch_options == {}


def test_options_are_checked_before_any_data_is_read():
    for options, match in (({"channels": 8}, "--channels applies to --arch resnet, not --arch mlp"),
                           ({"depth": 8}, "no architecture takes option 'depth'")):
        with pytest.raises(PyroVAEError, match=match):
            run.check_names(RunConfig(arch_options=options))
    run.check_names(tiny_config())


@pytest.mark.parametrize("field, value, match", [
    ("arch_options", {"channels": 0}, "--channels must be a positive integer"),
    ("arch_options", {"blocks": -2}, "--blocks must be a positive integer"),
    ("arch_options", {"blocks": "2"}, "--blocks must be a positive integer"),
    ("arch_options", [1, 2], "arch_options must be a mapping"),
    ("likelihood_options", "mixtures=3", "likelihood_options must be a mapping"),
])
def test_config_validates_options(field, value, match):
    with pytest.raises(PyroVAEError, match=match):
        RunConfig(**{field: value}).validate()


def test_flags_follow_the_declared_options():
    for flags, registry in ((cli.ARCH_FLAGS, nets.ARCHITECTURES), (cli.LIKELIHOOD_FLAGS, likelihoods.LIKELIHOODS)):
        assert {field for _, field, _ in flags} == set(registry.all_options())
    arch = {field: (flag, kwargs) for flag, field, kwargs in cli.ARCH_FLAGS}
    assert {k: v[0] for k, v in arch.items()} == {"channels": "--channels", "blocks": "--blocks",
                                                 "downsample": "--downsample"}
    assert all(kwargs["type"] is int and "resnet" in kwargs["help"] for _, kwargs in arch.values())
    every = [flag for flag, _, _ in cli.TRAIN_FLAGS + cli.ALL_OPTION_FLAGS]
    assert len(every) == len(set(every))
    args = cli._parser().parse_args(["train", "--arch", "resnet", "--channels", "8", "--downsample", "1"])
    config = cli._train_config(args)
    assert config.arch_options == {"channels": 8, "downsample": 1} and config.likelihood_options == {}
    # every declared likelihood option reaches config.likelihood_options
    for name, (option, _) in likelihoods.LIKELIHOODS.all_options().items():
        value = ",".join(map(str, option.default)) if isinstance(option.default, (list, tuple)) else str(option.default)
        argv = ["train", "--" + name.replace("_", "-")] + ([] if isinstance(option.default, bool) else [value])
        assert cli._train_config(cli._parser().parse_args(argv)).likelihood_options == {name: option.default}


def test_likelihood_flags_whatever_the_registry_declares(monkeypatch):
    flag = cli._option_flag("knots", Option(5, "test: knots"), ["fake"])
    monkeypatch.setattr(cli, "ALL_OPTION_FLAGS", cli.ALL_OPTION_FLAGS + [flag])
    monkeypatch.setattr(cli, "OPTION_FLAGS", tuple((flags + [flag], f) if f == "likelihood_options" else (flags, f)
                                                   for flags, f in cli.OPTION_FLAGS))
    args = cli._parser().parse_args(["train", "--knots", "7", "--channels", "3"])
    config = cli._train_config(args)
    assert config.likelihood_options == {"knots": 7} and config.arch_options == {"channels": 3}
    assert cli._train_config(cli._parser().parse_args(["train"])).likelihood_options == {}


def test_likelihood_options_are_checked_and_passed_to_the_builder(monkeypatch):
    everywhere = likelihoods.LIKELIHOODS.all_options()
    config = tiny_config(likelihood_options={"no_such_option": 3})
    with pytest.raises(PyroVAEError, match="no likelihood takes option 'no_such_option'"):
        run.check_names(config)
    with pytest.raises(PyroVAEError, match="no likelihood takes option 'no_such_option'"):
        run.check_names(dataclasses.replace(config, likelihood=None))
    for name, (_, takers) in everywhere.items():  # e.g. --mixtures of dmol
        if "gaussian" not in takers:
            with pytest.raises(PyroVAEError, match=f"applies to --likelihood {takers[0]}, not --likelihood gaussian"):
                run.check_names(tiny_config(likelihood_options={name: 1}))
    calls = []
    real = likelihoods.build

    def recording(name, obs_shape, min_scale=0.01, **options):
        calls.append(options)
        return real(name, obs_shape, min_scale)

    monkeypatch.setattr(likelihoods, "build", recording)
    monkeypatch.setattr(run, "check_likelihood_options", lambda name, options: None)
    run.build(tiny_config(), (1, 4, 4))
    run.build(tiny_config(likelihood_options={"knots": 3}), (1, 4, 4))
    assert calls == [{}, {"knots": 3}]


@pytest.fixture
def colour_npz(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, size=(40, 3, 8, 8), dtype=np.uint8).astype(np.float32) / 255
    path = tmp_path / "colour.npz"
    np.savez(path, x=x, y=np.arange(40) % 2)
    return str(path)


def test_cli_trains_and_evaluates_a_resnet(capsys, tmp_path, colour_npz):
    out = tmp_path / "run"
    argv = ["train", "--dataset", colour_npz, "--arch", "resnet", "--channels", "8", "--blocks", "1", "--downsample",
            "1", "--epochs", "1", "--hidden", "16", "--latent-dim", "2", "--batch-size", "16", "--device", "cpu",
            "--quiet", "--out", str(out)]
    assert cli.main(argv) == 0
    saved = json.loads((out / "config.json").read_text())
    assert saved["arch"] == "resnet" and saved["arch_options"] == {"channels": 8, "blocks": 1, "downsample": 1}
    assert saved["likelihood"] == "gaussian" and saved["likelihood_options"] == {}
    checkpoint = pyro_vae.load_run(out)
    assert checkpoint.obs_shape == (3, 8, 8)
    assert {m.out_channels for m in convolutions(checkpoint.pair.model.decoder)} == {8, 6}
    # a reloaded run computes what the saved parameters say, the same every time
    again = pyro_vae.load_run(out)
    x = torch.from_numpy(np.load(colour_npz)["x"][:5])
    z = torch.randn(3, 5, 2)
    assert torch.equal(checkpoint.pair.model.decoder(z), again.pair.model.decoder(z))
    pyro.set_rng_seed(0)
    first = checkpoint.pair.guide.dist(x).sample()
    pyro.set_rng_seed(0)
    assert torch.equal(first, again.pair.guide.dist(x).sample())
    capsys.readouterr()
    assert cli.main(["evaluate", str(out), "--iw-samples", "4", "--json", "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert math.isfinite(result["elbo"]) and math.isfinite(result["nll"])


def _config_file(path, **fields):
    path.write_text(json.dumps(fields))
    return str(path)


BAD_CLI = {
    "non-positive channels": (lambda p, d: ["--arch", "resnet", "--channels", "0"],
                              ["--channels must be a positive integer, got 0"]),
    "negative blocks": (lambda p, d: ["--arch", "resnet", "--blocks", "-1"], ["--blocks must be a positive integer"]),
    "channels not an integer": (lambda p, d: ["--arch", "resnet", "--channels", "eight"],
                                ["--channels", "invalid int"]),
    "an option for mlp": (lambda p, d: ["--channels", "8"], ["--channels applies to --arch resnet, not --arch mlp"]),
    "an option for conv": (lambda p, d: ["--arch", "conv", "--downsample", "1"],
                           ["--downsample applies to --arch resnet, not --arch conv"]),
    "unknown flag": (lambda p, d: ["--arch", "resnet", "--widths", "4"], ["unrecognized arguments", "--widths"]),
    "unknown option in a config file": (
        lambda p, d: ["--config", _config_file(p / "c.json", arch="resnet", arch_options={"width": 4})],
        ["no architecture takes option 'width'"]),
    "unknown likelihood option in a config file": (
        lambda p, d: ["--config", _config_file(p / "c.json", likelihood_options={"no_such_option": 4})],
        ["no likelihood takes option 'no_such_option'"]),
    "flat data": (lambda p, d: ["--arch", "resnet", "--dataset", _npz(p / "flat.npz", (40, 12))],
                  ["--arch resnet needs images (C, H, W)", "(12,)"]),
    "too small for the stages": (lambda p, d: ["--arch", "resnet", "--dataset", d, "--downsample", "4"],
                                 ["at least 16x16", "(3, 8, 8)"]),
    "batch norm": (lambda p, d: ["--arch", "resnet", "--dataset", d, "--batch-norm"],
                   ["--batch-norm applies to --arch mlp"]),
}


def _npz(path, shape):
    np.savez(path, x=np.random.default_rng(0).random(shape).astype(np.float32))
    return str(path)


@pytest.mark.parametrize("case", BAD_CLI)
def test_bad_options_are_one_line_errors(capsys, tmp_path, monkeypatch, colour_npz, case):
    make, words = BAD_CLI[case]
    monkeypatch.chdir(tmp_path)
    args = make(tmp_path, colour_npz)
    out = tmp_path / "run"
    line = user_error(capsys, ["train", "--epochs", "1", "--hidden", "8", "--latent-dim", "2", "--quiet",
                               "--device", "cpu", *args, "--out", str(out)])
    for word in words:
        assert word in line, line
    assert not out.exists()


def test_train_help_lists_the_architecture_options(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag in ("--channels", "--blocks", "--downsample", "resnet:"):
        assert flag in text
    for name in likelihoods.LIKELIHOODS.all_options():
        assert "--" + name.replace("_", "-") in text
