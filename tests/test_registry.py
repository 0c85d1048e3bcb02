"""The one registry type: the same error for an unknown name everywhere, declared options, the
CLI's flags and help built from the tables, and the default objective read from the pair."""

import contextlib
import io

import pytest
import torch

import pyro_vae
from pyro_vae import cli, objectives
from pyro_vae.config import RunConfig
from pyro_vae.errors import PyroVAEError
from pyro_vae.nets import ACTIVATIONS
from pyro_vae.registry import Option, Registry
from pyro_vae.run import build

REGISTRIES = {"dataset": pyro_vae.DATASETS, "model": pyro_vae.MODELS, "guide": pyro_vae.GUIDES,
              "prior": pyro_vae.PRIORS, "likelihood": pyro_vae.LIKELIHOODS, "objective": pyro_vae.OBJECTIVES,
              "architecture": pyro_vae.ARCHITECTURES, "activation": ACTIVATIONS}


@pytest.mark.parametrize("kind", REGISTRIES)
def test_every_kind_is_one_registry_with_one_error(kind):
    registry = REGISTRIES[kind]
    assert isinstance(registry, Registry) and registry.kind == kind and len(registry) >= 2
    with pytest.raises(PyroVAEError) as err:
        registry["no-such-name"]
    assert str(err.value) == f"unknown {kind} 'no-such-name'; choose from {', '.join(registry)}"
    for name, entry in registry.items():
        assert entry.name == name and entry.about and "\n" not in entry.about
        assert registry[name] is entry and name in registry
    assert ["x"] not in registry  # an unhashable value is simply not a name


def _help(*argv) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        cli.main(list(argv) + ["--help"])
    return " ".join(out.getvalue().split())


def test_train_help_names_every_entry_and_option():
    text = _help("train")
    for kind, registry in REGISTRIES.items():
        for name in registry:
            assert name in text, (kind, name)
    for name, (option, entries) in pyro_vae.GUIDES.all_options().items():
        assert "--" + name.replace("_", "-") in text
        assert option.help.split()[0] in text


def test_guide_flags_follow_declared_options(tmp_path):
    flags = {field: (flag, kwargs) for flag, field, kwargs in cli.GUIDE_FLAGS}
    assert set(flags) == set(pyro_vae.GUIDES.all_options())
    assert flags["stable"][1]["action"] == "store_const"
    assert flags["flow_hidden"][1]["type"]("16,8") == [16, 8]
    assert flags["bound"][1]["type"] is float and flags["bins"][1]["type"] is int
    # a flag reaches the guide's options, and only guides declaring it accept it
    args = cli._parser().parse_args(["train", "--guide", "spline", "--bins", "4", "--flows", "2"])
    assert cli._train_config(args).guide_options == {"bins": 4, "flows": 2}
    with pytest.raises(PyroVAEError, match="guide 'diag' takes no option bins"):
        pyro_vae.GUIDES.check_options("diag", {"bins": 4})


def test_declared_options_and_defaults():
    table = Registry("thing")

    def make(size: int = 3, name: str = "a"):
        return size, name

    entry = table.add("one", make, "a thing", {"size": "how big", "name": Option("b", "what it is called")})
    assert entry.options() == {"size": 3, "name": "b"}
    assert table.check_options("one", {"size": 5}) == {"size": 5, "name": "b"}
    with pytest.raises(PyroVAEError, match="thing 'one' takes no option colour; its options: size, name"):
        table.check_options("one", {"colour": 1})
    with pytest.raises(ValueError):
        table.add("one", make, "twice")


@pytest.mark.parametrize("guide, prior, expected", [
    ("diag", "standard", "meanfield"), ("const-var", "standard", "meanfield"), ("full", "standard", "elbo"),
    ("iaf", "standard", "elbo"), ("planar", "standard", "elbo"), ("diag", "realnvp", "elbo")])
def test_default_objective_is_analytic_where_the_kl_is(guide, prior, expected):
    config = RunConfig(guide=guide, prior=prior, latent_dim=3, hidden=[8], likelihood="bernoulli",
                       guide_options={"flows": 1, "flow_hidden": [4]} if guide in ("iaf", "planar") else {})
    pair = build(config, (1, 2, 2))
    x = torch.bernoulli(torch.full((4, 1, 2, 2), 0.5))
    assert objectives.default_objective(pair.model, pair.guide, x) == expected


def test_training_stores_the_resolved_objective(tmp_path):
    run_dir = pyro_vae.fit(RunConfig(latent_dim=2, hidden=[16], epochs=1, out=str(tmp_path / "run")), progress=False)
    assert RunConfig.load(run_dir / "config.json").objective == "meanfield"
    run_dir = pyro_vae.fit(RunConfig(latent_dim=2, hidden=[16], epochs=1, objective="elbo", out=str(tmp_path / "mc")),
                           progress=False)
    assert RunConfig.load(run_dir / "config.json").objective == "elbo"
