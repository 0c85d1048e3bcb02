"""``benchmarks/nll.py``: the smoke tier end to end, its results files, resuming, and bits/dim.

The whole smoke tier (7 cells on the bundled digits) runs once per module, about 2 minutes on a
busy 2-core machine, so it stays in the default test run. The 8-bit cells are checked on tiny
networks: Frey faces end to end (real data), CIFAR-10 on a small file in its layout.
"""

import dataclasses
import importlib.util
import json
import math
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("nll_bench", ROOT / "benchmarks" / "nll.py")
nll = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = nll  # dataclasses look their module up while the file executes
_spec.loader.exec_module(nll)
table = nll.nll_table

ISSUE_GUIDES = ("diag", "full", "planar", "radial", "coupling", "iaf")


def _records(results: Path, tier: str, device: str) -> list[dict]:
    return table.read_records(results, tier, device)


def _latest(records: list[dict]) -> dict:
    out = {}
    for r in sorted(records, key=lambda r: r["finished"]):
        out[r["id"]] = r
    return out


def _md_rows(path: Path) -> dict:
    """The result table of a generated markdown file: cell id -> {column header: text}."""
    lines = path.read_text().splitlines()
    header = next(line for line in lines if line.startswith("| cell |"))
    names = [h.strip() for h in header.strip("|").split("|")]
    rows = {}
    for line in lines[lines.index(header) + 2:]:
        if not line.startswith("| `"):
            break
        values = [v.strip() for v in line.strip("|").split("|")]
        rows[values[0].strip("`")] = dict(zip(names, values))
    return rows


def _pm(text: str) -> tuple[float, float]:
    value, se = text.split(" (")[0].removeprefix("≈ ").split(" ± ")
    return float(value), float(se)


def _run(argv, results, work, device="cpu"):
    return nll.main([*argv, "--device", device, "--results", str(results), "--work", str(work)])


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, request):
    device = request.config.getoption("--device")
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("--device cuda asked for but no GPU is available")
    base = tmp_path_factory.mktemp("nll")
    results, work = base / "results", base / "work"
    assert _run(["--tier", "smoke"], results, work, device) == 0
    return results, work, device


def test_the_smoke_tier_declares_every_guide_of_the_issue_and_an_iwae_cell():
    cells = nll.TIERS["smoke"]
    assert {c.guide for c in cells if c.objective == "elbo"} == set(ISSUE_GUIDES)
    assert any(c.objective == "iwae" and c.particles == 5 for c in cells)
    assert {c.dataset for c in cells} == {"digits"}
    for tier, cells in nll.TIERS.items():
        assert len({c.id for c in cells}) == len(cells), tier


def test_the_hamiltonian_cells_stand_beside_the_flows_at_one_budget():
    for tier in ("standard", "paper"):
        cells = {c.id: c for c in nll.TIERS[tier]}
        hamiltonian = [c for c in cells.values() if c.guide == "hamiltonian"]
        assert sorted(c.flows for c in hamiltonian) == [1, 5, 10], tier
        flows = [c for c in cells.values() if c.dataset == "binarized-mnist" and c.guide in ("planar", "iaf")
                 and c.flows == 4 and c.arch == "mlp" and c.hidden == (400,)]
        assert len(flows) == 2, tier
        for c in hamiltonian:
            assert c.id == f"binarized-mnist.mlp400-z40.hamiltonian{c.flows}.elbo1"
            assert c.config(None, "cpu", Path("x")).guide_options == {"leapfrog": c.flows}
            assert all((c.epochs, c.batch_size, c.lr, c.hidden, c.latent_dim, c.test_stride)
                       == (f.epochs, f.batch_size, f.lr, f.hidden, f.latent_dim, f.test_stride) for f in flows)


def test_every_cell_is_in_the_results_with_finite_numbers(smoke):
    results, _, device = smoke
    latest = _latest(_records(results, "smoke", device))
    assert set(latest) == {c.id for c in nll.TIERS["smoke"]}
    for r in latest.values():
        for key in ("neg_elbo", "neg_elbo_se", "nll", "nll_se", "seconds_per_epoch", "wall_seconds", "peak_rss_mib"):
            assert math.isfinite(r[key]), (r["id"], key)
        assert r["iw_samples"] == 500 and r["test"]["n"] > 0 and r["epochs"] >= 1
        assert 0 <= r["active_units"] <= r["latent_dim"]
        assert r["parameters"]["model"] > 0 and r["parameters"]["guide"] > 0
        assert r["machine"]["torch"] and r["machine"]["pyro"] and r["date"]


def test_the_importance_sampled_nll_is_below_the_negative_elbo(smoke):
    results, _, device = smoke
    for r in _records(results, "smoke", device):
        # log-mean-exp of the same log weights is >= their mean (Jensen), image by image
        assert r["nll"] <= r["neg_elbo"] + 1e-4, r["id"]


def test_the_markdown_table_matches_the_json_lines(smoke):
    results, _, device = smoke
    latest = _latest(_records(results, "smoke", device))
    rows = _md_rows(results / f"smoke-{device}.md")
    assert set(rows) == set(latest)
    for cell_id, row in rows.items():
        r = latest[cell_id]
        assert _pm(row["−ELBO ± se"]) == pytest.approx((r["neg_elbo"], r["neg_elbo_se"]), abs=0.006)
        assert _pm(row["NLL ± se (IS)"]) == pytest.approx((r["nll"], r["nll_se"]), abs=0.006)
        assert row["NLL ± se (IS)"].endswith(f"({r['iw_samples']})")
        assert row["active units"] == f"{r['active_units']}/{r['latent_dim']}"
        assert row["epochs (best)"] == f"{r['epochs']} ({r['best_epoch']})"
        assert int(row["parameters"].replace(",", "")) == r["parameters"]["model"] + r["parameters"]["guide"]
        assert float(row["s/epoch"].rstrip(" †")) == pytest.approx(r["seconds_per_epoch"], abs=0.006)
    text = (results / f"smoke-{device}.md").read_text()
    assert "| torch |" in text and "| pyro |" in text and "| commit |" in text


def test_a_second_run_skips_every_cell_and_force_retrains(smoke, monkeypatch, capsys):
    results, work, device = smoke
    before = _records(results, "smoke", device)
    md_before = (results / f"smoke-{device}.md").read_text()
    trained = []
    real_fit = nll.fit

    def forbidden(config, **kwargs):
        raise AssertionError(f"{config.out} was trained again")

    monkeypatch.setattr(nll, "fit", forbidden)
    assert _run(["--tier", "smoke"], results, work, device) == 0
    assert _records(results, "smoke", device) == before
    assert (results / f"smoke-{device}.md").read_text() == md_before
    assert capsys.readouterr().out.count("skipped") == len(nll.TIERS["smoke"])

    def counting(config, **kwargs):
        trained.append(Path(config.out).name)
        return real_fit(config, **kwargs)

    monkeypatch.setattr(nll, "fit", counting)
    assert _run(["--tier", "smoke", "--only", "full.elbo", "--force"], results, work, device) == 0
    forced = [c.id for c in nll.TIERS["smoke"] if "full.elbo" in c.id]
    assert trained == forced
    after = _records(results, "smoke", device)
    assert len(after) == len(before) + 1 and after[-1]["id"] == forced[0] and not after[-1]["resumed"]
    # the table shows the newest line of the forced cell
    row = _md_rows(results / f"smoke-{device}.md")[forced[0]]
    assert _pm(row["NLL ± se (IS)"]) == pytest.approx((after[-1]["nll"], after[-1]["nll_se"]), abs=0.006)


def test_bits_per_dim_is_the_discretized_density_in_bits():
    d = 560
    assert table.bits_per_dim(0.0, d) == pytest.approx(math.log2(255))
    assert table.bits_per_dim(1000.0, d) == pytest.approx((1000 / d + math.log(255)) / math.log(2))
    assert table.bits_se(d * math.log(2), d) == pytest.approx(1.0)
    # against the exact probability of a grey level under a Gaussian pixel: P(bin) ~ density / 255
    mu, sigma, x = 0.4, 0.05, 100 / 255
    normal = torch.distributions.Normal(torch.tensor(mu, dtype=torch.float64), sigma)
    half = 0.5 / 255
    p_bin = (normal.cdf(torch.tensor(x + half, dtype=torch.float64)) -
             normal.cdf(torch.tensor(x - half, dtype=torch.float64))).item()
    nats = -normal.log_prob(torch.tensor(x, dtype=torch.float64)).item()
    assert table.bits_per_dim(nats, 1) == pytest.approx(-math.log2(p_bin), rel=1e-4)


@pytest.mark.data
def test_a_frey_cell_reports_bits_per_dim_consistent_with_nats(shared_data, tmp_path, monkeypatch):
    with np.load(shared_data / "FreyFaces" / "frey_faces.npz") as d:
        assert d["ff"].dtype == np.uint8  # 8-bit grey levels, which the loader divides by 255:
    from pyro_vae.data import load
    x = load("frey", shared_data).observations("test")
    assert torch.allclose(x * table.FREY_LEVEL_SCALE, (x * table.FREY_LEVEL_SCALE).round(), atol=1e-4)

    cell = nll.make_cell("frey", "frey", "diag", None, "elbo", 1, nll.Budget(epochs=2, batch_size=100, iw_samples=20))
    monkeypatch.setitem(nll.TIERS, "frey-check", [cell])
    results = tmp_path / "results"
    assert nll.main(["--tier", "frey-check", "--threads", "1", "--data-dir", str(shared_data),
                     "--results", str(results), "--work", str(tmp_path / "work")]) == 0
    (r,) = _records(results, "frey-check", "cpu")
    dim = 28 * 20
    assert r["nll_bits_per_dim"] == pytest.approx((r["nll"] + dim * math.log(255)) / (dim * math.log(2)))
    assert r["neg_elbo_bits_per_dim"] == pytest.approx((r["neg_elbo"] + dim * math.log(255)) / (dim * math.log(2)))
    assert r["nll_bits_per_dim_se"] == pytest.approx(r["nll_se"] / (dim * math.log(2)))
    assert r["nll"] <= r["neg_elbo"] + 1e-4
    assert r["neg_elbo_bits_per_dim_se"] == pytest.approx(r["neg_elbo_se"] / (dim * math.log(2)))
    assert "likelihood_levels" not in r  # an approximation, marked as such in the table
    row = _md_rows(results / "frey-check-cpu.md")[cell.id]
    assert row["−ELBO bits/dim ± se"].startswith("≈ ") and row["NLL bits/dim ± se (IS)"].startswith("≈ ")
    shown = _pm(row["−ELBO bits/dim ± se"])
    assert shown == pytest.approx((r["neg_elbo_bits_per_dim"], r["neg_elbo_bits_per_dim_se"]), abs=0.0006)
    assert _pm(row["NLL bits/dim ± se (IS)"]) == pytest.approx((r["nll_bits_per_dim"], r["nll_bits_per_dim_se"]),
                                                               abs=0.0006)
    assert row["published bits/dim (ANCHORS.md)"] == ""  # van den Berg et al.'s pixels are categorical


def test_published_figures_sit_only_beside_cells_of_their_setting():
    by_id = {c.id: c.anchors for cells in nll.TIERS.values() for c in cells}
    assert all(not by_id[c.id] for c in nll.TIERS["smoke"])
    static_k50 = "binarized-mnist.mlp200-200-tanh-z50.diag.iwae50"
    assert by_id[static_k50] == ["burda-static-iwae50"]
    assert by_id["mnist-dynamic.mlp200-200-tanh-z50.diag.iwae5"] == ["burda-dynamic-iwae5"]
    assert set(by_id["binarized-mnist.mlp400-z40.diag.elbo1"]) == {"rm-dlgm-diag", "pythae-vae"}
    assert by_id["binarized-mnist.mlp400-z40.planar80.elbo1"] == ["rm-planar-80"]
    for cell_id, keys in by_id.items():
        for key in keys:  # static figures beside static cells only, dynamic beside dynamic
            assert ("dynamic" in key) == cell_id.startswith("mnist-dynamic"), (cell_id, key)


HIERARCHICAL_IDS = {
    "standard": [
        "mnist-dynamic.mlp200-200-tanh-z100-50-lh100-100.diag.elbo1",
        "mnist-dynamic.mlp200-200-tanh-z100-50-lh100-100.diag.iwae5",
        "mnist-dynamic.mlp200-200-tanh-z100-50-lh100-100-bn.diag.ladder.elbo1",
    ],
    "paper": [f"mnist-dynamic.mlp200-200-tanh-z100-50-lh100-100.diag.{obj}{k}"
              for obj in ("elbo", "iwae") for k in (1, 5, 50)]
    + ["mnist-dynamic.mlp512-512-z64-32-16-8-4-lh160-160-bn.diag.ladder.elbo1"],
}


def _cell_of(record: dict):
    """The Cell a results line was written for, from its stored fields (JSON lists back to tuples)."""
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in record["cell"].items()}
    return nll.Cell(**fields)


def test_the_results_in_the_repository_keep_their_ids():
    """Lines written before hierarchical cells existed lack their fields: the defaults must give
    back the very id each line is keyed by, and that id must still be a declared cell."""
    results = ROOT / "benchmarks" / "results"
    for tier in ("smoke", "standard"):
        declared = {c.id for c in nll.TIERS[tier]}
        for r in _records(results, tier, "cpu"):
            assert _cell_of(r).id == r["id"], r["id"]
            assert r["id"] in declared, r["id"]


def test_the_hierarchical_cells_are_declared_with_distinct_readable_ids():
    for tier, ids in HIERARCHICAL_IDS.items():
        declared = [c.id for c in nll.TIERS[tier]]
        assert [i for i in declared if "-z100-50" in i or "-z64-" in i] == ids
    # --only with the full id of a standard-tier hierarchical cell selects that cell alone (in the
    # paper tier, as for the one-layer cells, "...elbo5" is also part of "...elbo50")
    declared = [c.id for c in nll.TIERS["standard"]]
    assert all(sum(i in other for other in declared) == 1 for i in HIERARCHICAL_IDS["standard"])
    by_id = {c.id: c for c in nll.TIERS["paper"] + nll.TIERS["standard"]}
    ladder = by_id["mnist-dynamic.mlp200-200-tanh-z100-50-lh100-100-bn.diag.ladder.elbo1"]
    assert (ladder.inference, ladder.batch_norm, ladder.warmup_epochs, ladder.epochs) == ("ladder", True, 5, 25)
    lvae = by_id["mnist-dynamic.mlp512-512-z64-32-16-8-4-lh160-160-bn.diag.ladder.elbo1"]
    assert (lvae.epochs, lvae.batch_size, lvae.warmup_epochs, lvae.iw_samples) == (2000, 256, 200, 5000)
    two = by_id["mnist-dynamic.mlp200-200-tanh-z100-50-lh100-100.diag.iwae5"]
    one = by_id["mnist-dynamic.mlp200-200-tanh-z50.diag.iwae5"]
    assert [getattr(two, f) for f in ("epochs", "batch_size", "test_stride", "iw_samples")] == \
        [getattr(one, f) for f in ("epochs", "batch_size", "test_stride", "iw_samples")]
    with pytest.raises(ValueError, match="layer_hidden"):
        dataclasses.replace(two, layer_hidden=None)
    with pytest.raises(ValueError, match="layer_hidden"):
        dataclasses.replace(one, layer_hidden=(100, 100))


@pytest.mark.parametrize("cell_id", [i for ids in HIERARCHICAL_IDS.values() for i in ids])
def test_every_hierarchical_cell_validates_builds_and_trains_one_step(cell_id, tmp_path):
    from pyro_vae import hierarchical, objectives, run
    cell = next(c for cells in nll.TIERS.values() for c in cells if c.id == cell_id)
    config = cell.config(None, "cpu", tmp_path / "run").validate()
    run.check_names(config)
    assert config.latent_dims == list(cell.latent_dims) and config.layer_hidden == list(cell.layer_hidden)
    pair = run.build(config, (1, 28, 28))
    assert pair.model.latent_dims == cell.latent_dims
    guide_type = hierarchical.LadderGuide if cell.inference == "ladder" else hierarchical.BottomUpGuide
    assert type(pair.guide) is guide_type
    x = torch.bernoulli(torch.full((4, 1, 28, 28), 0.3))
    objectives.check_objective(cell.objective, pair.model, pair.guide, x)
    loss = objectives.loss_fn(cell.objective, pair.model, pair.guide, cell.particles)(x, torch.tensor(1.0))
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in pair.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_a_hierarchical_cell_records_and_shows_every_layer(tmp_path, monkeypatch):
    """A two-layer ladder cell on the bundled digits, end to end: per-layer active units in the
    line and in the table."""
    net = nll.Net("mlp", (32,), "relu", (6, 3), layer_hidden=(16,), inference="ladder", batch_norm=True)
    monkeypatch.setitem(nll.NETS, "tiny2", net)
    cell = nll.make_cell("digits", "tiny2", "diag", None, "elbo", 1,
                         nll.Budget(epochs=2, batch_size=128, iw_samples=10, warmup_epochs=1))
    assert cell.id == "digits-dynamic.mlp32-z6-3-lh16-bn.diag.ladder.elbo1"
    monkeypatch.setitem(nll.TIERS, "hier-check", [cell])
    results = tmp_path / "results"
    assert _run(["--tier", "hier-check", "--threads", "1"], results, tmp_path / "work") == 0
    (r,) = _records(results, "hier-check", "cpu")
    assert r["latent_dims_per_site"] == {"z1": 6, "z2": 3} and r["latent_dim"] == 9
    assert set(r["active_units_per_site"]) == {"z1", "z2"} and set(r["kl_per_site"]) == {"z1", "z2"}
    assert sum(r["active_units_per_site"].values()) == r["active_units"]
    assert r["nll"] <= r["neg_elbo"] + 1e-4
    # the ladder guide shares the model's p(z1|z2) network: counted once in the total
    shared = sum(p.numel() for p in nll.load_run(tmp_path / "work" / "cpu" / cell.id, torch.device("cpu"),
                                                 nll.BEST).pair.model.conditionals.parameters())
    params = r["parameters"]
    assert shared > 0 and params["total"] == params["model"] + params["guide"] - shared
    row = _md_rows(results / "hier-check-cpu.md")[cell.id]
    assert int(row["parameters"].replace(",", "")) == params["total"]
    units = r["active_units_per_site"]
    assert row["active units"] == f"{r['active_units']}/9 (z1 {units['z1']}/6, z2 {units['z2']}/3)"


def test_the_hierarchical_cells_stand_beside_the_figures_of_their_setting():
    by_id = {c.id: c.anchors for cells in nll.TIERS.values() for c in cells}
    for obj in ("elbo", "iwae"):
        for k in (1, 5, 50):
            cell_id = f"mnist-dynamic.mlp200-200-tanh-z100-50-lh100-100.diag.{obj}{k}"
            assert by_id[cell_id] == [f"burda2-dynamic-{obj}{k}"]
    assert by_id["mnist-dynamic.mlp200-200-tanh-z100-50-lh100-100-bn.diag.ladder.elbo1"] == []
    assert by_id["mnist-dynamic.mlp512-512-z64-32-16-8-4-lh160-160-bn.diag.ladder.elbo1"] == \
        ["lvae5-dynamic-finetuned-iw10"]
    values = {key: table.ANCHORS[key].value for key in table.ANCHORS}
    assert [values[f"burda2-dynamic-elbo{k}"] for k in (1, 5, 50)] == [85.33, 85.01, 84.78]
    assert [values[f"burda2-dynamic-iwae{k}"] for k in (1, 5, 50)] == [85.33, 83.89, 82.90]
    assert values["lvae5-dynamic-finetuned-iw10"] == 81.74
    # the one-layer figures stay beside the one-layer cells only
    assert by_id["mnist-dynamic.mlp200-200-tanh-z50.diag.elbo1"] == ["burda-dynamic-elbo1"]


@pytest.mark.parametrize("argv, message", [
    (["--tier", "huge"], "unknown --tier 'huge'; choose from smoke, standard, paper"),
    (["--tier", "smoke", "--only", "no-such-cell"], "matches no cell"),
    (["--tier", "smoke", "--threads", "0"], "--threads must be a positive integer"),
    (["--tier", "smoke", "--bogus"], "unrecognized arguments: --bogus"),
])
def test_bad_input_prints_one_line_and_exits_2(argv, message, tmp_path, capsys):
    assert nll.main([*argv, "--results", str(tmp_path / "r"), "--work", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("nll.py: error: ") and message in err
    assert not (tmp_path / "r").exists() and not (tmp_path / "w").exists()


def test_cuda_without_a_gpu_is_a_user_error(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert nll.main(["--tier", "smoke", "--device", "cuda", "--results", str(tmp_path)]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err


# --- 8-bit cells: bits/dim, CIFAR-10 ----------------------------------------------------------------

EIGHT_BIT_IDS = {
    "standard": [f"{data}.mlp128-tanh-z10.{guide}.elbo1" for data in ("frey-categorical", "frey-dmol5")
                 for guide in ("diag", "iaf4")]
    + [f"mnist-dmol3.mlp256-z32.{guide}.elbo1" for guide in ("diag", "iaf4")],
    "paper": [f"frey-categorical.mlp128-tanh-z10.{guide}.elbo1" for guide in ("diag", "planar4", "iaf4")]
    + [f"cifar10-dlogistic.resnet512-c128-b4-d2-elu-z128.{guide}.elbo1" for guide in ("diag", "iaf4")],
}


def _declared(cell_id: str):
    return next(c for cells in nll.TIERS.values() for c in cells if c.id == cell_id)


def test_the_8bit_cells_are_declared_with_their_likelihood_options_and_budgets():
    for tier, ids in EIGHT_BIT_IDS.items():
        declared = [c.id for c in nll.TIERS[tier]]
        assert [i for i in declared if nll.TIERS[tier][declared.index(i)].levels == 256] == ids
        # --only with an id, or with the data part, picks exactly those cells
        assert all(sum(i in other for other in declared) == 1 for i in ids)
    by_id = {c.id: c for tier in ("paper", "standard") for c in nll.TIERS[tier]}  # standard's where both declare
    cat = by_id["frey-categorical.mlp128-tanh-z10.diag.elbo1"]
    assert (cat.likelihood, cat.likelihood_options, cat.hidden, cat.latent_dim) == ("categorical", {}, (128,), 10)
    assert (cat.epochs, cat.batch_size, cat.lr, cat.iw_samples, cat.test_stride) == (10, 50, 3e-3, 50, 1)
    dmol = by_id["frey-dmol5.mlp128-tanh-z10.iaf4.elbo1"]
    assert (dmol.likelihood, dmol.likelihood_options, dmol.flows) == ("dmol", {"mixtures": 5}, 4)
    assert (dmol.epochs, dmol.batch_size, dmol.iw_samples) == (30, 25, 200)
    mnist = by_id["mnist-dmol3.mlp256-z32.diag.elbo1"]
    assert (mnist.dataset, mnist.binarize, mnist.likelihood_options) == ("mnist", "none", {"mixtures": 3})
    assert (mnist.epochs, mnist.iw_samples, mnist.test_stride) == (2, 100, 20)
    paper = {c.id: c for c in nll.TIERS["paper"]}
    slow = paper["frey-categorical.mlp128-tanh-z10.diag.elbo1"]  # van den Berg et al.'s budget
    assert (slow.epochs, slow.batch_size, slow.lr, slow.patience, slow.warmup_epochs) == (2000, 100, 5e-4, 100, 100)
    cifar = by_id["cifar10-dlogistic.resnet512-c128-b4-d2-elu-z128.iaf4.elbo1"]
    assert (cifar.epochs, cifar.batch_size, cifar.iw_samples, cifar.test_stride) == (1000, 64, 256, 10)
    assert cifar.arch_options == {"channels": 128, "blocks": 4, "downsample": 2} and cifar.likelihood == "dlogistic"
    config = cifar.config(None, "cuda", Path("out"))
    assert config.arch_options == cifar.arch_options and config.likelihood_options == {}
    assert by_id["frey-dmol5.mlp128-tanh-z10.diag.elbo1"].config(None, "cpu", Path("o")).likelihood_options == \
        {"mixtures": 5}
    # the Bernoulli and Gaussian cells keep their ids: no likelihood named, no options
    assert {c.id for c in nll.TIERS["standard"] if c.levels != 256} >= {
        "frey.mlp200-tanh-z10.diag.elbo1", "binarized-mnist.mlp400-z40.diag.elbo1"}


def test_a_cell_names_every_option_its_likelihood_and_architecture_declare():
    cell = _declared("frey-dmol5.mlp128-tanh-z10.diag.elbo1")
    with pytest.raises(ValueError, match="mixtures"):
        dataclasses.replace(cell, likelihood_options={})  # the package's default would be implicit
    with pytest.raises(ValueError, match="name each"):
        dataclasses.replace(cell, likelihood_options={"mixtures": 5, "bins": 3})
    assert dataclasses.replace(cell, likelihood_options={"mixtures": 7}).id.startswith("frey-dmol7.")
    cifar = _declared("cifar10-dlogistic.resnet512-c128-b4-d2-elu-z128.diag.elbo1")
    with pytest.raises(ValueError, match="blocks"):
        dataclasses.replace(cifar, arch_options={"channels": 128, "downsample": 2})
    with pytest.raises(ValueError, match="arch 'mlp'"):
        dataclasses.replace(cell, arch_options={"channels": 8})


@pytest.mark.parametrize("cell_id", [i for ids in EIGHT_BIT_IDS.values() for i in ids])
def test_every_8bit_cell_validates_builds_and_trains_one_step(cell_id, tmp_path):
    from pyro_vae import objectives, run
    cell = _declared(cell_id)
    config = cell.config(None, "cpu", tmp_path / "run").validate()
    run.check_names(config)
    shape = {"frey": (1, 28, 20), "mnist": (1, 28, 28), "cifar10": (3, 32, 32)}[cell.dataset]
    pair = run.build(config, shape)
    x = torch.randint(0, 256, (2,) + shape).float() / 255  # 8-bit values k/255, as the data loader gives them
    loss = objectives.loss_fn(cell.objective, pair.model, pair.guide, cell.particles)(x, torch.tensor(1.0))
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in pair.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in pair.model.parameters())


def test_bits_fields_are_exact_for_8bit_cells_and_the_bin_width_conversion_for_gaussian_frey():
    d = 560
    uniform = d * math.log(256)  # a uniform categorical: exactly 8 bits per pixel
    result = {"elbo": -uniform - 7.0, "elbo_se": d * math.log(2), "nll": uniform, "nll_se": 2 * d * math.log(2)}
    cat = _declared("frey-categorical.mlp128-tanh-z10.diag.elbo1")
    bits = nll.bits_fields(cat, result, d)
    assert bits["nll_bits_per_dim"] == pytest.approx(8.0) and bits["nll_bits_per_dim_se"] == pytest.approx(2.0)
    assert bits["neg_elbo_bits_per_dim"] == pytest.approx(8.0 + 7.0 / (d * math.log(2)))
    assert bits["neg_elbo_bits_per_dim_se"] == pytest.approx(1.0)
    assert bits["likelihood_levels"] == 256 and bits["dims"] == d
    gauss = nll.bits_fields(_declared("frey.mlp200-tanh-z10.diag.elbo1"), result, d)
    assert gauss["nll_bits_per_dim"] == pytest.approx(8.0 + math.log2(255))  # + D ln 255: the bin width
    assert "likelihood_levels" not in gauss
    assert nll.bits_fields(_declared("binarized-mnist.mlp400-z40.diag.elbo1"), result, 784) == {}


def test_8bit_figures_stand_beside_cells_of_their_data_and_likelihood_only():
    by_id = {c.id: c.anchors for cells in nll.TIERS.values() for c in cells}
    for data in ("frey-categorical", "frey-dmol5"):
        assert by_id[f"{data}.mlp128-tanh-z10.diag.elbo1"] == ["vdberg-frey-diag"]
        assert by_id[f"{data}.mlp128-tanh-z10.iaf4.elbo1"] == ["vdberg-frey-iaf"]
    assert by_id["frey-categorical.mlp128-tanh-z10.planar4.elbo1"] == ["vdberg-frey-planar"]
    assert by_id["frey.mlp200-tanh-z10.diag.elbo1"] == [] and by_id["frey.mlp200-tanh-z10.planar4.elbo1"] == []
    assert by_id["mnist-dmol3.mlp256-z32.diag.elbo1"] == []
    assert by_id["cifar10-dlogistic.resnet512-c128-b4-d2-elu-z128.iaf4.elbo1"] == ["kingma-cifar10-iaf"]
    assert by_id["cifar10-dlogistic.resnet512-c128-b4-d2-elu-z128.diag.elbo1"] == []
    values = {k: (a.value, a.metric) for k, a in table.ANCHORS.items()}
    assert values["vdberg-frey-diag"] == (4.53, "neg_elbo_bits_per_dim")
    assert values["vdberg-frey-planar"] == (4.40, "neg_elbo_bits_per_dim")
    assert values["vdberg-frey-iaf"] == (4.47, "neg_elbo_bits_per_dim")
    assert values["kingma-cifar10-iaf"] == (3.11, "nll_bits_per_dim")


def _repository_line(cell_id: str) -> dict:
    results = ROOT / "benchmarks" / "results"
    return next(r for r in _records(results, "standard", "cpu") if r["id"] == cell_id)


def test_the_table_shows_bits_per_dim_for_8bit_cells_and_nats_for_the_others():
    """Built from lines of the repository's results (a Bernoulli and a Gaussian Frey cell) and an
    8-bit line made from one of them: bits/dim columns filled for the 8-bit line only, exact; the
    Gaussian line's marked ≈; the published bits/dim beside the 8-bit line with its gap."""
    nats = _repository_line("binarized-mnist.mlp400-z40.diag.elbo1")
    gauss = _repository_line("frey.mlp200-tanh-z10.diag.elbo1")
    cell = _declared("frey-categorical.mlp128-tanh-z10.diag.elbo1")
    d = 560
    eight = {**gauss, "id": cell.id, "cell": dataclasses.asdict(cell), "anchors": cell.anchors,
             "neg_elbo": 2600.0, "neg_elbo_se": 11.0, "nll": 2590.0, "nll_se": 10.0, "iw_samples": 50,
             "finished": gauss["finished"] + "Z"}
    eight.update(nll.bits_fields(cell, {"elbo": -2600.0, "elbo_se": 11.0, "nll": 2590.0, "nll_se": 10.0}, d))
    text = table.markdown("standard", "cpu", [nats, gauss, eight], ["cifar10-x", "other-y"], "cmd",
                          needs={"cifar10-x": "CIFAR-10 and a GPU"})
    rows = _md_rows_text(text)
    assert rows[nats["id"]]["−ELBO bits/dim ± se"] == "" and rows[nats["id"]]["NLL bits/dim ± se (IS)"] == ""
    assert rows[nats["id"]]["published bits/dim (ANCHORS.md)"] == ""
    assert "R&M DLGM diagonal" in rows[nats["id"]]["published nats (ANCHORS.md)"]
    assert rows[gauss["id"]]["NLL bits/dim ± se (IS)"].startswith("≈ ")
    row = rows[eight["id"]]
    per = d * math.log(2)
    assert _pm(row["−ELBO bits/dim ± se"]) == pytest.approx((2600.0 / per, 11.0 / per), abs=0.0006)
    assert _pm(row["NLL bits/dim ± se (IS)"]) == pytest.approx((2590.0 / per, 10.0 / per), abs=0.0006)
    assert row["NLL bits/dim ± se (IS)"].endswith("(50)") and not row["NLL bits/dim ± se (IS)"].startswith("≈")
    gap = 2600.0 / per - 4.53
    # footnotes number the figures as they appear: the nats row's two come first
    assert row["published bits/dim (ANCHORS.md)"] == f"vdB no flow: −ELBO 4.53 [3] (ours {gap:+.2f})"
    assert row["published nats (ANCHORS.md)"] == ""
    assert "vdB no flow: −ELBO 4.53 bits/dim" in text and "exact, nats / (D ln 2)" in text
    assert "Declared but not yet in the results: `other-y`." in text
    assert "Declared for a machine with CIFAR-10 and a GPU" in text and "`cifar10-x`" in text


def _md_rows_text(text: str) -> dict:
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("| cell |"))
    names = [h.strip() for h in header.strip("|").split("|")]
    rows = {}
    for line in lines[lines.index(header) + 2:]:
        if not line.startswith("| `"):
            break
        values = [v.strip() for v in line.strip("|").split("|")]
        assert len(values) == len(names), line
        rows[values[0].strip("`")] = dict(zip(names, values))
    return rows


def _tiny_net(monkeypatch, name: str, net):
    monkeypatch.setitem(nll.NETS, name, net)


@pytest.mark.data
@pytest.mark.parametrize("data", ["frey-categorical", "frey-dmol"])
def test_a_frey_8bit_cell_reports_exact_bits_per_dim(data, shared_data, tmp_path, monkeypatch):
    _tiny_net(monkeypatch, "tiny8", nll.Net("mlp", (16,), "tanh", 2))
    cell = nll.make_cell(data, "tiny8", "diag", None, "elbo", 1,
                         nll.Budget(epochs=1, batch_size=50, iw_samples=5, test_stride=10))
    monkeypatch.setitem(nll.TIERS, "frey8-check", [cell])
    results = tmp_path / "results"
    assert nll.main(["--tier", "frey8-check", "--threads", "1", "--data-dir", str(shared_data),
                     "--results", str(results), "--work", str(tmp_path / "work")]) == 0
    (r,) = _records(results, "frey8-check", "cpu")
    d = 28 * 20
    assert r["likelihood_levels"] == 256 and r["dims"] == d
    # probabilities of levels: bits are nats / (D ln 2), no bin width added
    assert r["nll_bits_per_dim"] == pytest.approx(r["nll"] / (d * math.log(2)))
    assert r["neg_elbo_bits_per_dim"] == pytest.approx(r["neg_elbo"] / (d * math.log(2)))
    assert r["nll_bits_per_dim_se"] == pytest.approx(r["nll_se"] / (d * math.log(2)))
    assert 0 < r["nll_bits_per_dim"] <= r["neg_elbo_bits_per_dim"] + 1e-6 and r["nll"] > 0
    assert r["anchors"] == ["vdberg-frey-diag"]
    row = _md_rows(results / "frey8-check-cpu.md")[cell.id]
    assert _pm(row["NLL bits/dim ± se (IS)"]) == pytest.approx((r["nll_bits_per_dim"], r["nll_bits_per_dim_se"]),
                                                               abs=0.0006)
    assert row["published bits/dim (ANCHORS.md)"].startswith("vdB no flow: −ELBO 4.53 [1] (ours +")


def _cifar_layout(root: Path, per_batch: int = 12, test: int = 10) -> Path:
    """A small CIFAR-10 in torchvision's layout: five training batches and a test batch, pickled."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        n = test if name == "test_batch" else per_batch
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": list(rng.integers(0, 10, n))}
        (folder / name).write_bytes(pickle.dumps(batch))
    return root


def test_cifar_cells_are_skipped_with_their_reason_where_the_data_are_absent(tmp_path, monkeypatch, capsys):
    def forbidden(config, **kwargs):
        raise AssertionError(f"{config.out} was trained without its data")

    monkeypatch.setattr(nll, "fit", forbidden)
    empty = tmp_path / "data"
    empty.mkdir()
    results = tmp_path / "results"
    assert _run(["--tier", "paper", "--only", "cifar10", "--data-dir", str(empty)], results, tmp_path / "work") == 0
    out = capsys.readouterr().out
    ids = [i for i in EIGHT_BIT_IDS["paper"] if i.startswith("cifar10")]
    for cell_id in ids:
        assert f"{cell_id}: skipped, cifar10 not found under {empty}" in out
    assert out.count("cifar-10-batches-py") >= len(ids) and "a GPU" in out
    assert _records(results, "paper", "cpu") == []
    text = (results / "paper-cpu.md").read_text()
    needs = next(line for line in text.splitlines() if line.startswith("Declared for a machine with CIFAR-10"))
    assert all(f"`{i}`" in needs for i in ids)
    waiting = next(line for line in text.splitlines() if line.startswith("Declared but not yet"))
    assert not any(i in waiting for i in ids)


def test_a_cifar_cell_runs_where_the_files_are(tmp_path, monkeypatch):
    """The same path on a small file in CIFAR-10's layout: not skipped, bits/dim over D = 3072."""
    _tiny_net(monkeypatch, "tiny-resnet", nll.Net("resnet", (16,), "elu", 4,
                                                  arch_options={"channels": 4, "blocks": 1, "downsample": 1}))
    cell = nll.make_cell("cifar10", "tiny-resnet", "iaf", 2, "elbo", 1,
                         nll.Budget(epochs=1, batch_size=8, iw_samples=3))
    assert cell.id == "cifar10-dlogistic.resnet16-c4-b1-d1-elu-z4.iaf2.elbo1"
    monkeypatch.setitem(nll.TIERS, "cifar-check", [cell])
    data = _cifar_layout(tmp_path / "data")
    results = tmp_path / "results"
    assert _run(["--tier", "cifar-check", "--threads", "1", "--data-dir", str(data)], results, tmp_path / "work") == 0
    (r,) = _records(results, "cifar-check", "cpu")
    assert r["test"]["n"] == 10 and r["dims"] == 3072 and r["likelihood_levels"] == 256
    assert r["nll_bits_per_dim"] == pytest.approx(r["nll"] / (3072 * math.log(2)))
    assert r["anchors"] == ["kingma-cifar10-iaf"]
    row = _md_rows(results / "cifar-check-cpu.md")[cell.id]
    assert row["published bits/dim (ANCHORS.md)"].startswith("Kingma ResNet VAE + IAF: NLL 3.11 [1] (ours +")
    json.dumps(r)  # the line is plain JSON
