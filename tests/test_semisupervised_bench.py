"""``benchmarks/semisupervised.py``: its tiers, the markdown of ``semisupervised_table``, and the
smoke tier end to end on the bundled digits.

The smoke tier (an M1 and two M2 cells on the 8x8 digits) runs once per module, about 10 seconds
on a busy 2-core machine, so it stays in the default test run.
"""

import dataclasses
import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch

from pyro_vae.data import load
from pyro_vae.errors import PyroVAEError
from pyro_vae.semisupervised import TrainingPlan

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("semisupervised_bench", ROOT / "benchmarks" / "semisupervised.py")
ss = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = ss  # dataclasses look their module up while the file executes
_spec.loader.exec_module(ss)
table = ss.table

N_TRAIN = 50000  # the suite's MNIST training split
KINGMA_ALPHA = 0.1 * N_TRAIN
PYRO_ALPHA = 46 * 3000


def _plan(cell) -> TrainingPlan:
    """The batches and alpha the package would train ``cell`` with on a class-balanced MNIST-sized split."""
    config = dataclasses.replace(cell.config(None, "cpu", Path("unused"), Path("codes.npz")), classes=10)
    return TrainingPlan.make(config, torch.arange(N_TRAIN) % 10)


def test_the_paper_tier_declares_table_1_and_pyros_example():
    spec = ss.TIERS["paper"]
    kingma = [c for c in spec.cells if c.family == "kingma"]
    assert {(c.model, c.labelled, c.seed) for c in kingma} == \
        {(m, n, s) for m in ("m2", "m1m2") for n in (100, 600, 1000, 3000) for s in (0, 1, 2)}
    assert len(kingma) == 24 and len(spec.cells) == 27
    for c in kingma:
        assert (c.epochs, c.lr, c.latent_dim, c.activation, c.alpha) == (3000, 3e-4, 50, "softplus", None)
        assert c.batch_size == (500 if c.labelled == 100 else 250) and c.labelled_share == c.labelled / N_TRAIN
        assert c.hidden == ((300,) if c.model == "m1m2" and c.labelled == 100 else (500,))
        assert (c.iw_samples, c.test_stride) == (5000, 1)
    pyro = [c for c in spec.cells if c.family == "pyro"]
    assert [(c.model, c.labelled, c.seed) for c in pyro] == [("m2", 3000, s) for s in (0, 1, 2)]
    for c in pyro:
        assert (c.epochs, c.batch_size, c.lr, c.hidden) == (50, 200, 4.2e-4, (500,))
        assert c.alpha == PYRO_ALPHA == 46 * c.labelled
    m2_100 = next(c for c in kingma if (c.model, c.labelled) == ("m2", 100))
    assert table.published(m2_100) == {"error_pct": 11.97, "sd_pct": 1.71, "source": table.KINGMA}
    assert table.published(dataclasses.replace(m2_100, dataset="digits")) is None  # MNIST's figure only
    m1 = spec.m1
    assert (m1.hidden, m1.latent_dim, m1.epochs, m1.batch_size, m1.keep_sd) == ((600, 600), 50, 3000, 1000, 0.1)
    assert m1.id == "m1.mnist-dynamic.mlp600-600-softplus-z50"


@pytest.mark.parametrize("tier", ["smoke", "cpu", "paper"])
def test_every_cell_of_a_tier_is_well_formed(tier):
    spec = ss.TIERS[tier]
    ids = [c.id for c in spec.cells]
    assert len(set(ids)) == len(ids) and spec.cells
    for c in spec.cells:
        assert c.id == f"{c.family}.{c.model}.n{c.labelled}.s{c.seed}"
        assert c.family in ("kingma", "pyro") and c.model in ("m2", "m1m2")
        assert c.seed >= 0 and 0 < c.labelled_share < 1 and c.epochs >= 1 and c.iw_samples >= 1
        config = c.config(None, "cpu", Path("run"), Path("codes.npz"))
        assert (config.model, config.labelled, config.alpha, config.patience) == ("m2", c.labelled, c.alpha, c.epochs)
        if c.model == "m2":
            assert (config.dataset, config.likelihood) == (c.dataset, "bernoulli")
        else:  # M2 on the tier's M1 codes
            assert config.dataset == str(Path("codes.npz").resolve()) and config.likelihood == "gaussian"
            assert spec.m1 is not None and spec.m1.dataset == c.dataset
        published = table.published(c)
        assert (published is not None) == (c.dataset == "mnist" and c.labelled in (100, 600, 1000, 3000))
    assert spec.about and spec.about == table.ABOUT[tier]
    # --list names the M1 and every cell, one line each
    assert [line.split(":")[0] for line in table.tier_lines(spec)] == [spec.m1.id, *ids]


@pytest.mark.parametrize("tier", ["cpu", "paper"])
def test_the_package_trains_each_mnist_cell_with_its_alpha_and_labelled_rows(tier):
    for c in ss.TIERS[tier].cells:
        plan = _plan(c)
        assert plan.labelled.numel() == c.labelled
        assert plan.alpha == (KINGMA_ALPHA if c.family == "kingma" else PYRO_ALPHA), c.id
        assert plan.labelled_batch == min(c.labelled, max(1, round(c.labelled_share * c.batch_size)))
        assert plan.labelled_batch + plan.unlabelled_batch == c.batch_size
    pyro = next(c for c in ss.TIERS[tier].cells if c.family == "pyro")
    assert (_plan(pyro).labelled_batch, _plan(pyro).unlabelled_batch) == (12, 188)  # Pyro's 15 of 250 batches


def _line(cell, error, finished, **extra) -> dict:
    """A synthetic results line of ``cell`` with the fields the markdown reads."""
    return {"id": cell.id, "kind": "cell", "family": cell.family, "model": cell.model, "labelled": cell.labelled,
            "seed": cell.seed, "published": table.published(cell), "test_error": error,
            "test_error_last_epoch": error + 0.01, "valid_error_best_epoch": error - 0.01,
            "neg_elbo": 101.234, "neg_elbo_se": 0.5, "nll": 97.5, "nll_se": 0.25, "iw_samples": 100, "n": 1000,
            "epochs": cell.epochs, "best_epoch": cell.epochs, "seconds_per_epoch": 12.34, "contended": False,
            "alpha": cell.alpha or KINGMA_ALPHA, "labelled_batch": 50, "unlabelled_batch": 450,
            "steps_per_epoch": 110, "train_seconds": 37.0, "eval_seconds": 9.0, "parameters": {"total": 1234567},
            "finished": finished, "date": finished[:10], "machine": {"processor": "Synthetic CPU", "torch": "x"},
            "git": {"commit": "abc"}, **extra}


def _m1_line(m1, finished) -> dict:
    return {"id": m1.id, "kind": "m1", "epochs": m1.epochs, "best_epoch": m1.epochs, "seconds_per_epoch": 10.0,
            "neg_elbo": 139.76, "neg_elbo_se": 1.31, "nll": 134.99, "nll_se": 1.29, "iw_samples": 100, "n": 1000,
            "encode_seconds": 3.9, "codes": {"rows": 70000, "dims_kept": 48, "dims": 50, "keep_sd": 0.1},
            "finished": finished, "date": finished[:10], "machine": {"processor": "Synthetic CPU"},
            "git": {"commit": "abc"}}


def test_the_markdown_sets_the_published_figures_beside_the_measured_ones_and_lists_the_rest():
    spec = ss.TIERS["cpu"]
    by_id = {c.id: c for c in spec.cells}
    lines = [_m1_line(spec.m1, "2026-01-01T00:00:00+00:00"),
             _line(by_id["kingma.m2.n100.s0"], 0.4205, "2026-01-01T00:01:00+00:00"),
             _line(by_id["pyro.m2.n3000.s0"], 0.1333, "2026-01-01T00:02:00+00:00", contended=True)]
    text = table.markdown("cpu", "cpu", spec, table.latest(lines), "CMD", ss.TIERS["paper"])
    rows = {line.split(" | ")[0] + " | " + line.split(" | ")[1]: line for line in text.splitlines()
            if line.startswith("| M")}
    # measured error beside Kingma et al.'s Table 1 figure of the same model and label count
    assert "| 42.05 | 11.97 ± 1.71 |" in rows["| M2 | kingma"]
    assert "| 13.33 | 3.92 ± 0.63 |" in rows["| M2 | pyro"] and "12.3 †" in rows["| M2 | pyro"]
    assert "101.23 ± 0.50" in rows["| M2 | kingma"] and "97.50 ± 0.25 (100, 1000)" in rows["| M2 | kingma"]
    assert "| `kingma.m2.n100.s0` | 42.05 (43.05) | 41.05 | 5,000 | 50 + 450 | 110 | 37 | 9 | 1,234,567 |" in text
    assert "| `pyro.m2.n3000.s0` | 13.33 (14.33) | 12.33 | 138,000 |" in text
    assert "48 of 50 code dimensions kept (standard deviation of the mean over the training split > 0.1)" in text
    # the declared cells without a line, and the paper tier with its budgets
    assert ("Declared in this tier but not in the results: `kingma.m1m2.n100.s0`, `kingma.m2.n1000.s0`, "
            "`kingma.m1m2.n1000.s0`.") in text
    assert "Left unmeasured: the whole `paper` tier (below), 27 runs and their M1." in text
    paper_rows = [line for line in text.splitlines() if " labels | 0, 1, 2 |" in line]
    assert len(paper_rows) == 9
    assert "| M2 pyro 3000 labels | 0, 1, 2 | 50 | 200 (12) | 12,500 | 0.00042 | 138,000 |" in text
    assert "| M2 kingma 100 labels | 0, 1, 2 | 3000 | 500 (1) | 300,000 | 0.0003 | 0.1 N = 5,000 |" in text
    assert "| processor | Synthetic CPU |" in text and "† other processes competed" in text
    assert text.startswith("# Semi-supervised MNIST: `cpu` tier, cpu\n\nGenerated by `CMD` from "
                           "`semisupervised-cpu-*.jsonl`")
    # no unmeasured tier asked for: no such section
    assert "Left unmeasured" not in table.markdown("cpu", "cpu", spec, table.latest(lines), "CMD")


def test_seeds_of_one_group_show_their_mean_and_sd_and_the_newest_line_wins():
    spec = ss.TIERS["paper"]
    c0, c1 = (c for c in spec.cells if c.group == ("kingma", "m2", 600) and c.seed in (0, 1))
    # the lines in another order than they finished: the newest of c0 is not its last
    lines = [_line(c1, 0.20, "2026-01-02T00:00:00+00:00"), _line(c0, 0.10, "2026-01-03T00:00:00+00:00"),
             _line(c0, 0.99, "2026-01-01T00:00:00+00:00")]
    records = table.latest(lines)
    assert records[c0.id]["test_error"] == 0.10
    text = table.markdown("paper", "cuda", spec, records, "CMD")
    (row,) = [line for line in text.splitlines() if line.startswith("| M2 | kingma | 600 |")]
    assert f"| 0, 1 | {15.0:.2f} ± {math.sqrt(50):.2f} | 4.94 ± 0.13 |" in row
    assert text.count("Declared in this tier but not in the results") == 1


def test_results_files_are_read_by_tier_and_device_and_bad_lines_named(tmp_path):
    cell = ss.TIERS["cpu"].cells[0]
    (tmp_path / "semisupervised-cpu-2026-01-01.jsonl").write_text(
        json.dumps(_line(cell, 0.5, "2026-01-01T00:00:00+00:00")) + "\n\n")
    (tmp_path / "semisupervised-cpu-2026-01-02.jsonl").write_text(
        json.dumps(_line(cell, 0.4, "2026-01-02T00:00:00+00:00")) + "\n")
    (tmp_path / "semisupervised-cpu-cuda-2026-01-03.jsonl").write_text("not json\n")  # tier cpu on cuda
    (tmp_path / "semisupervised-smoke-cpu-2026-01-03.jsonl").write_text("not json\n")
    assert table.results_name("cpu", "cpu") == "semisupervised-cpu"
    assert table.results_name("cpu", "cuda") == "semisupervised-cpu-cuda"
    assert [r["test_error"] for r in table.read_records(tmp_path, "cpu", "cpu")] == [0.5, 0.4]
    assert table.latest(table.read_records(tmp_path, "cpu", "cpu"))[cell.id]["test_error"] == 0.4
    with pytest.raises(PyroVAEError, match=r"semisupervised-smoke-cpu-2026-01-03\.jsonl, line 1, is not JSON"):
        table.read_records(tmp_path, "smoke", "cpu")
    assert table.read_records(tmp_path / "missing", "cpu", "cpu") == []


def test_the_markdown_in_the_repository_is_what_its_results_lines_give(tmp_path):
    results = ROOT / "benchmarks" / "results"
    md = results / "semisupervised-cpu.md"
    lines = sorted(results.glob("semisupervised-cpu-*.jsonl"))
    if not md.is_file() or not lines:
        pytest.skip("no cpu-tier results in the repository")
    for path in lines:
        (tmp_path / path.name).write_text(path.read_text())
    assert ss.write_markdown(tmp_path, "cpu", "cpu").read_text() == md.read_text()


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, request):
    """The smoke tier run once on ``--device`` into fresh folders: (results, work, device, argv)."""
    device = request.config.getoption("--device")
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("--device cuda asked for but no GPU is available")
    folder = tmp_path_factory.mktemp("semisupervised")
    argv = ["--tier", "smoke", "--device", device, "--out", str(folder / "results"), "--work", str(folder / "work")]
    assert ss.main(argv) == 0
    return folder / "results", folder / "work", device, argv


def test_the_smoke_tier_runs_end_to_end(smoke):
    results, work, device, _ = smoke
    records = table.latest(table.read_records(results, "smoke", device))
    spec = ss.TIERS["smoke"]
    assert set(records) == {spec.m1.id, *(c.id for c in spec.cells)}
    m1 = records[spec.m1.id]
    assert m1["kind"] == "m1" and m1["codes"]["dims_kept"] == m1["codes"]["dims"] == 8  # keep_sd None: all
    assert (work / device / spec.m1.id / "codes.npz").is_file()
    n_train = load("digits").observations("train").shape[0]
    for c in spec.cells:
        r = records[c.id]
        assert 0 <= r["test_error"] <= 1 and 0 <= r["test_error_last_epoch"] <= 1, c.id
        assert math.isfinite(r["nll"]) and r["nll"] <= r["neg_elbo"] + 1e-4, c.id
        assert r["epochs"] == c.epochs and r["published"] is None and r["iw_samples"] == c.iw_samples
        assert r["labelled_batch"] == round(c.labelled_share * c.batch_size) == 32
        assert r["alpha"] == pytest.approx(0.1 * n_train)  # the suite's default: 0.1 N_train
    assert records["kingma.m1m2.n50.s0"]["obs_dim"] == 8 and records["kingma.m2.n50.s0"]["obs_dim"] == 64
    text = (results / f"semisupervised-smoke-{device}.md").read_text()
    for c in spec.cells:
        r = records[c.id]
        assert f"| `{c.id}` | {100 * r['test_error']:.2f} ({100 * r['test_error_last_epoch']:.2f}) |" in text
    assert "| — |" in text and "Declared in this tier but not" not in text and "Left unmeasured" not in text


def test_a_second_run_skips_every_cell_and_the_m1(smoke, monkeypatch, capsys):
    results, _, device, argv = smoke
    before = table.read_records(results, "smoke", device)
    md = results / f"semisupervised-smoke-{device}.md"
    md_before = md.read_text()

    def forbidden(config, **kwargs):
        raise AssertionError(f"{config.out} was trained again")

    monkeypatch.setattr(ss, "fit", forbidden)
    assert ss.main(argv) == 0
    assert table.read_records(results, "smoke", device) == before and md.read_text() == md_before
    assert capsys.readouterr().out.count("skipped") == len(ss.TIERS["smoke"].cells)


def test_list_prints_the_tier_and_runs_nothing(tmp_path, capsys):
    assert ss.main(["--tier", "cpu", "--list", "--out", str(tmp_path / "r"), "--work", str(tmp_path / "w")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("m1.mnist-dynamic.mlp600-600-softplus-z50: 5 epochs, batch 500")
    assert out[-1] == ("pyro.m2.n3000.s0: hidden [500] softplus, z 50, 2 epochs, batch 200 (labelled share 0.06), "
                       "lr 0.00042, alpha 138000, K 100, test[::10]")
    assert len(out) == 6 and not (tmp_path / "r").exists() and not (tmp_path / "w").exists()


def test_bad_input_prints_one_line_and_exits_2_before_writing_anything(tmp_path, capsys):
    """The shared flags' checks are nll.py's (tests/test_nll_bench.py): here that this script names
    itself and its tiers, and that a --out it cannot create is one line too."""
    folders = ["--out", str(tmp_path / "r"), "--work", str(tmp_path / "w")]
    cases = {"unknown --tier 'huge'; choose from smoke, cpu, paper": ["--tier", "huge"],
             "--only no-such-cell matches no cell of tier smoke": ["--tier", "smoke", "--only", "no-such-cell"],
             "--threads must be a positive integer, got 0": ["--tier", "cpu", "--threads", "0"],
             "unrecognized arguments: --results-dir x": ["--tier", "cpu", "--results-dir", "x"]}
    for message, argv in cases.items():
        assert ss.main(argv + folders) == 2, argv
        assert capsys.readouterr().err == f"semisupervised.py: error: {message}\n"
    assert not (tmp_path / "r").exists() and not (tmp_path / "w").exists()
    (tmp_path / "file").write_text("")
    assert ss.main(["--tier", "smoke", "--out", str(tmp_path / "file" / "r"), "--work", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("semisupervised.py: error: ") and err.count("\n") == 1 and "file" in err
