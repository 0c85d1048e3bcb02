"""``benchmarks/generative.py``: its tiers, the published figures of ``generative_table``, and the
smoke tier end to end on the bundled digits.

The smoke tier (four priors, two refits and a two-stage model on the 8x8 digits) runs once per
module, about 15 seconds on a busy 2-core machine, so it stays in the default test run.
"""

import dataclasses
import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch

from pyro_vae.errors import PyroVAEError
from pyro_vae.refit import codes_seed

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("generative_bench", ROOT / "benchmarks" / "generative.py")
gen = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = gen  # dataclasses look their module up while the file executes
_spec.loader.exec_module(gen)
table = gen.table

IDS = ["standard", "mog", "vamp", "realnvp", "refit-gmm", "refit-realnvp", "two-stage"]
NON_STANDARD = {"mog", "vamp", "realnvp", "refit-gmm", "refit-realnvp"}  # rows whose prior is not N(0, I)


def test_the_paper_tier_declares_tomczak_and_wellings_rows_and_budgets():
    spec = gen.TIERS["paper"]
    assert [r.id for r in spec.rows] == IDS
    assert (spec.dataset, spec.binarize, spec.iw_samples, spec.test_stride) == ("mnist", "dynamic", 5000, 1)
    assert (spec.samples, spec.codes, spec.mixture) == (10000, 2000, None)
    trained = [r for r in spec.rows if r.kind == "prior"]
    assert [(r.prior, dict(r.options)) for r in trained] == [
        ("standard", {}), ("mog", {"components": 10, "covariance": "diag"}), ("vamp", {"pseudo_inputs": 500}),
        ("realnvp", {})]
    for r in trained:
        assert r.net == gen.Net((300, 300), 40, "relu") and r.source is None
        assert r.budget == gen.Budget(epochs=2000, batch_size=100, lr=5e-4, warmup_epochs=100, patience=50,
                                      objective="elbo")
    refits = {r.id: r for r in spec.rows if r.kind == "refit"}
    assert {k: (r.density, r.prior, r.source, r.budget) for k, r in refits.items()} == {
        "refit-gmm": ("gmm", "mog", "standard", None), "refit-realnvp": ("realnvp", "realnvp", "standard", None)}
    assert dict(refits["refit-gmm"].options) == {"components": 10}
    two = spec.row("two-stage")
    assert (two.kind, two.source, two.net) == ("two-stage", "standard", gen.Net((1024, 1024, 1024), 40))
    assert two.budget == gen.Budget(800, 64, 1e-4, 0, 800)  # Dai & Wipf's demo.py: --epochs2 800, --lr2 1e-4


def test_the_cpu_tier_has_the_papers_networks_and_one_short_budget():
    cpu, paper = gen.TIERS["cpu"], gen.TIERS["paper"]
    assert [r.id for r in cpu.rows] == IDS
    for a, b in zip(cpu.rows, paper.rows):
        assert (a.kind, a.prior, a.options, a.source, a.density) == (b.kind, b.prior, b.options, b.source, b.density)
        if a.kind == "prior":
            assert a.net == b.net and a.budget.epochs < 100
    assert len({r.budget for r in cpu.rows if r.kind == "prior"}) == 1
    assert cpu.row("two-stage").net.latent_dim == 40 and cpu.threads == 1
    assert (cpu.samples, cpu.codes, cpu.iw_samples) == (10000, 2000, 1000)


def test_published_figures_attach_to_the_standard_and_vamp_rows_of_mnist_only():
    for name in ("paper", "cpu"):
        spec = gen.TIERS[name]
        figures = {r.id: table.published(spec, r) for r in spec.rows}
        assert figures["standard"] == {"nll": 88.56, "iw_samples": 5000, "source": table.TOMCZAK}
        assert figures["vamp"]["nll"] == 85.57
        assert all(figures[i] is None for i in IDS if i not in ("standard", "vamp")), figures
    spec = gen.TIERS["paper"]
    vamp = spec.row("vamp")
    assert table.published(spec, dataclasses.replace(vamp, options=(("pseudo_inputs", 20),))) is None
    assert table.published(spec, dataclasses.replace(vamp, net=gen.Net((500,), 40))) is None
    assert table.published(dataclasses.replace(spec, binarize="static"), vamp) is None
    smoke = gen.TIERS["smoke"]
    assert all(table.published(smoke, r) is None for r in smoke.rows)  # the digits: no published setting


def test_results_names_follow_the_rule_and_bad_lines_are_named(tmp_path):
    assert table.results_name("cpu", "cpu") == "generative-cpu"
    assert table.results_name("cpu", "cuda") == "generative-cpu-cuda"
    assert table.results_name("paper", "cuda") == "generative-paper-cuda"
    assert table.lines_name("cpu", "cpu") == "generative-cpu-cpu"
    (tmp_path / "generative-cpu-cpu-2026-01-01.jsonl").write_text(json.dumps({"id": "a", "finished": "1"}) + "\n")
    (tmp_path / "generative-cpu-cuda-2026-01-01.jsonl").write_text("not json\n")
    (tmp_path / "generative-smoke-cpu-2026-01-02.jsonl").write_text("not json\n")
    assert [r["id"] for r in table.read_records(tmp_path, "cpu", "cpu")] == ["a"]
    with pytest.raises(PyroVAEError, match=r"generative-smoke-cpu-2026-01-02\.jsonl, line 1, is not JSON"):
        table.read_records(tmp_path, "smoke", "cpu")
    assert table.read_records(tmp_path / "missing", "cpu", "cpu") == []


def test_the_markdown_in_the_repository_is_what_its_results_lines_give(tmp_path):
    results = ROOT / "benchmarks" / "results"
    md = results / "generative-cpu.md"
    lines = sorted(results.glob("generative-cpu-cpu-*.jsonl"))
    if not md.is_file() or not lines:
        pytest.skip("no cpu-tier results in the repository")
    for path in lines:
        (tmp_path / path.name).write_text(path.read_text())
    assert gen.write_markdown(tmp_path, "cpu", "cpu").read_text() == md.read_text()


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, request):
    """The smoke tier run once on ``--device`` into fresh folders: (results, work, device, argv)."""
    device = request.config.getoption("--device")
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("--device cuda asked for but no GPU is available")
    folder = tmp_path_factory.mktemp("generative")
    argv = ["--tier", "smoke", "--device", device, "--out", str(folder / "results"), "--work", str(folder / "work")]
    assert gen.main(argv) == 0
    return folder / "results", folder / "work", device, argv


def test_the_smoke_tier_runs_end_to_end(smoke):
    results, work, device, _ = smoke
    files = list(results.glob(f"generative-smoke-{device}-*.jsonl"))
    assert len(files) == 1
    text = files[0].read_text()
    # the lines name runs, codes and folders without the paths of the machine that measured them
    assert str(work) not in text and str(results) not in text and str(ROOT) not in text
    lines = [json.loads(line) for line in text.splitlines()]
    assert [r["id"] for r in lines] == IDS  # one line per row, in the tier's order
    spec = gen.TIERS["smoke"]
    for r in lines:
        q = r["quality"]
        for key in ("fid", "mutual_information", "marginal_kl", "prior_hole", "precision", "recall"):
            assert math.isfinite(q[key]), (r["id"], key)
        assert ("prior_hole_standard" in q) == (r["id"] in NON_STANDARD), r["id"]
        assert q["features"]["name"] == "digits-cnn-v1"
        assert q["kl"] == pytest.approx(q["mutual_information"] + q["marginal_kl"], abs=1e-6)
        assert r["published"] is None and r["command"].startswith("python benchmarks/generative.py --tier smoke")
        if r["kind"] == "two-stage":
            assert r["nll"] is None and r["neg_elbo"] is None and r["nll_na"] == table.TWO_STAGE_NLL
            assert q["two_stage"] and math.isfinite(r["code_space"]["nll"]) and r["codes"]["dims"] == 4
            assert 0 <= r["composite_hole"]["fraction"] <= 1
        else:
            assert math.isfinite(r["nll"]) and r["nll"] <= r["neg_elbo"] + 1e-4, r["id"]
            assert (r["iw_samples"], r["test"]["n"]) == (spec.iw_samples, 359)
    by = {r["id"]: r for r in lines}
    assert {by[i]["prior"] for i in ("refit-gmm", "refit-realnvp")} == {"mog", "realnvp"}
    assert by["refit-gmm"]["prior_options"] == {"components": 10, "covariance": "full"}
    # the refits keep the standard run's encoder: the same codes, the same I(x;z)
    for i in ("refit-gmm", "refit-realnvp"):
        assert by[i]["quality"]["mutual_information"] == pytest.approx(by["standard"]["quality"]["mutual_information"])
        # and draw the codes they fit from a stream of their own, not the one quality draws from
        assert codes_seed(by[i]["refit"]["seed"]) != by[i]["quality"]["seed"]
    # one budget for the rows trained from scratch; the second stage's is its own
    trained = [r for r in lines if r["kind"] == "prior"]
    assert len({(r["budget"]["epochs"], r["budget"]["batch_size"], r["budget"]["lr"]) for r in trained}) == 1
    assert all(r["epochs"] == r["budget"]["epochs"] for r in trained)
    assert by["two-stage"]["budget"] == dataclasses.asdict(spec.row("two-stage").budget)
    assert all(by[i]["budget"] is None for i in ("refit-gmm", "refit-realnvp"))
    assert (work / device / "two-stage.codes.npz").is_file()
    text = (results / f"generative-smoke-{device}.md").read_text()
    for i in IDS:
        assert text.count(f"| `{i}` |") == 2, i  # the main table and the per-row table
    assert table.TWO_STAGE_NLL in text and "not comparable with Inception FIDs" in text
    assert "Declared in this tier but not" not in text and "Left unmeasured" not in text


def test_a_second_run_skips_every_row(smoke, monkeypatch, capsys):
    results, _, device, argv = smoke
    before = table.read_records(results, "smoke", device)
    md = results / f"generative-smoke-{device}.md"
    md_before = md.read_text()

    def forbidden(*args, **kwargs):
        raise AssertionError("a row was run again")

    monkeypatch.setattr(gen, "fit", forbidden)
    monkeypatch.setattr(gen, "refit", forbidden)
    assert gen.main(argv) == 0
    assert table.read_records(results, "smoke", device) == before and md.read_text() == md_before
    assert capsys.readouterr().out.count("skipped") == len(IDS)


def test_list_prints_the_tier_and_runs_nothing(tmp_path, capsys):
    assert gen.main(["--tier", "paper", "--list", "--out", str(tmp_path / "r"), "--work", str(tmp_path / "w")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == ("standard: prior, prior standard; hidden [300, 300], z 40, 2000 epochs, batch 100, lr 0.0005, "
                      "warm-up 100, patience 50")
    assert out[4] == "refit-gmm: refit, prior mog (components 10), on the standard run"
    assert out[-1] == "bounds: K 5000, test[::1]; quality: 10000 samples, 2000 codes, mixture all"
    assert len(out) == len(IDS) + 1 and not (tmp_path / "r").exists() and not (tmp_path / "w").exists()


def test_bad_input_prints_one_line_and_exits_2_before_writing_anything(tmp_path, capsys):
    folders = ["--out", str(tmp_path / "r"), "--work", str(tmp_path / "w")]
    cases = {"unknown --tier 'huge'; choose from smoke, cpu, paper": ["--tier", "huge"],
             "--only no-such-row matches no cell of tier smoke": ["--tier", "smoke", "--only", "no-such-row"],
             "--threads must be a positive integer, got 0": ["--tier", "cpu", "--threads", "0"]}
    for message, argv in cases.items():
        assert gen.main(argv + folders) == 2, argv
        assert capsys.readouterr().err == f"generative.py: error: {message}\n"
    assert not (tmp_path / "r").exists() and not (tmp_path / "w").exists()
