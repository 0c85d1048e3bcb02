"""``benchmarks/nll.py``: the smoke tier end to end, its results files, resuming, and bits/dim.

The whole smoke tier (7 cells on the bundled digits) runs once per module, about 2 minutes on a
busy 2-core machine, so it stays in the default test run.
"""

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
