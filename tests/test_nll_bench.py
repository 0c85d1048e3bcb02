"""``benchmarks/nll.py``: the smoke tier end to end, its results files, resuming, and bits/dim.

The whole smoke tier (7 cells on the bundled digits) runs once per module, about 2 minutes on a
busy 2-core machine, so it stays in the default test run.
"""

import dataclasses
import importlib.util
import math
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
    value, se = text.split(" (")[0].split(" ± ")
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
    row = _md_rows(results / "frey-check-cpu.md")[cell.id]
    shown = [float(v) for v in row["bits/dim (−ELBO / NLL)"].split(" / ")]
    assert shown == pytest.approx([r["neg_elbo_bits_per_dim"], r["nll_bits_per_dim"]], abs=0.0006)


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
