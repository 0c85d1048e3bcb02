"""``pyro-vae compare`` end to end, and the grid quadrature behind its exact posteriors."""

import json

import pyro
import pytest
import torch

from linear_gaussian import LinearGaussian
from pyro_vae.cli import main
from pyro_vae.exact import grid_posterior

TINY = ["--dataset", "digits", "--hidden", "32", "--batch-size", "64", "--device", "cpu", "--quiet"]


def test_quadrature_matches_the_closed_form_log_px():
    torch.set_default_dtype(torch.float64)
    try:
        truth = LinearGaussian()
        x = truth.sample(20, seed=3)
        axes, log_post, log_px = grid_posterior(truth.model(), x, n=300, bounds=(-6, 6, -6, 6))
        assert torch.allclose(log_px, truth.log_px(x), atol=1e-4)
        # the normalized grid posterior has the closed-form posterior covariance
        cell = (axes[0, 1] - axes[0, 0]) * (axes[1, 1] - axes[1, 0])
        w = log_post[0].exp() * cell
        zz = torch.stack(torch.meshgrid(axes[0], axes[1], indexing="xy"), -1)
        mean = (w[..., None] * zz).sum((0, 1))
        centred = zz - mean
        cov = (w[..., None, None] * centred[..., :, None] * centred[..., None, :]).sum((0, 1))
        assert w.sum().item() == pytest.approx(1.0, abs=1e-6)
        assert torch.allclose(cov, truth.posterior_cov(), atol=1e-4)
    finally:
        torch.set_default_dtype(torch.float32)


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare") / "cmp"
    pyro.set_rng_seed(0)
    assert main(["compare", "--guides", "diag,iaf", "--epochs", "3", "--flows", "2", "--flow-hidden", "16",
                 "--iw-samples", "300", "--images", "2", "--out", str(out), *TINY]) == 0
    return out


def test_compare_writes_table_and_figures(compared):
    for name in ("compare.md", "compare.json", "posteriors.png", "interpolations.png"):
        assert (compared / name).is_file(), name
    table = json.loads((compared / "compare.json").read_text())
    assert [r["guide"] for r in table["rows"]] == ["diag", "iaf"]
    assert table["latent_dim"] == 2
    for row in table["rows"]:
        assert row["iw_samples"] == 300
        assert row["elbo"] <= -row["nll"] + 1e-3
        # two estimates of the same log p(x): importance sampling and quadrature on the grid
        assert row["nll"] == pytest.approx(row["nll_quadrature"], abs=0.3)
        assert row["guide_parameters"] > 0 and row["seconds_per_epoch"] > 0
    # only the flow guide carries the flow option
    iaf_config = json.loads((compared / "runs" / "iaf" / "config.json").read_text())
    diag_config = json.loads((compared / "runs" / "diag" / "config.json").read_text())
    assert iaf_config["guide_options"] == {"flows": 2, "flow_hidden": [16], "stable": False}  # defaults recorded
    assert diag_config["guide_options"] == {}
    md = (compared / "compare.md").read_text()
    assert "| diag |" in md and "| iaf |" in md and "K = 300" in md


def test_compare_reloads_runs(compared, tmp_path):
    runs = f"{compared / 'runs' / 'diag'},{compared / 'runs' / 'iaf'}"
    out = tmp_path / "again"
    pyro.set_rng_seed(0)
    assert main(["compare", "--guides", "diag,iaf", "--runs", runs, "--iw-samples", "300", "--images", "1",
                 "--out", str(out), "--quiet"]) == 0
    first = json.loads((compared / "compare.json").read_text())["rows"]
    again = json.loads((out / "compare.json").read_text())["rows"]
    assert [r["elbo"] for r in again] == [r["elbo"] for r in first]


def _error(capsys, argv):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pyro-vae: error: ")
    return err[0]


def test_compare_bad_input(capsys, tmp_path, compared):
    assert "choose from" in _error(capsys, ["compare", "--guides", "diag,nope", "--out", str(tmp_path / "a")])
    assert "--runs" in _error(capsys, ["compare", "--guides", "diag,iaf", "--runs", str(compared / "runs" / "diag"),
                                       "--out", str(tmp_path / "b")])
    assert "once" in _error(capsys, ["compare", "--guides", "diag,diag", "--out", str(tmp_path / "c")])
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_compare_refuses_runs_of_different_latent_sizes(capsys, tmp_path, compared):
    other = tmp_path / "other"
    assert main(["train", *TINY, "--latent-dim", "3", "--guide", "full", "--epochs", "1", "--out", str(other)]) == 0
    message = _error(capsys, ["compare", "--guides", "diag,full", "--runs", f"{compared / 'runs' / 'diag'},{other}",
                              "--out", str(tmp_path / "out")])
    assert "latent size" in message
    assert not (tmp_path / "out").exists()
