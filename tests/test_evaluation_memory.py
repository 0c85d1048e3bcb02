"""The evaluation's chunks of samples count what the guide holds per particle, not only the model.

The measured checks count the tensors a chunk holds at once, op by op (benchmarks/live_memory.py),
on small pairs whose flow hypernetworks are wider than the images, so a guide's draws outweigh
the model's scoring as a flow's do on MNIST.
"""

import json
import sys
from pathlib import Path

import pyro
import pytest
import torch
from torch import nn

from pyro_vae import contract, guides, run
from pyro_vae.config import RunConfig
from pyro_vae.evaluate import (_chunk_size, _elements_per_sample, active_units_per_site, guide_elements,
                               log_weight_terms, model_elements, per_datapoint)
from pyro_vae.guides.base import MEAN_CHUNK

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import evaluation as evaluation_bench  # noqa: E402
from live_memory import LiveTensors  # noqa: E402

SHAPE, N, K = (1, 8, 8), 8, 64
evaluate_module = sys.modules["pyro_vae.evaluate"]


def small_pair(guide: str, **config):
    declared = guides.GUIDES[guide].options()
    options = {"flows": 2, "flow_hidden": [128, 128]} if "flow_hidden" in declared else {}
    config = RunConfig(**{"arch": "mlp", "hidden": [32], "latent_dim": 4, "likelihood": "bernoulli", "guide": guide,
                          "guide_options": options, **config}).validate()
    return run.build(config, SHAPE).eval()


def images(n=N):
    return torch.bernoulli(torch.rand(n, *SHAPE, generator=torch.Generator().manual_seed(0)))


def chunk_of(pair, x, samples=5000, max_elements=2**23):
    return _chunk_size(samples, x.shape[0], _elements_per_sample(pair.model, x, pair.guide), max_elements)


@pytest.mark.parametrize("name", list(guides.GUIDES))
def test_declared_counts_bound_the_tensors_a_chunk_holds(name):
    pyro.set_rng_seed(0)
    pair, x = small_pair(name), images()
    with torch.no_grad(), pyro.validation_enabled(False), pair.guide.reuse_features(x):
        with LiveTensors() as live:
            log_weight_terms(pair.model, pair.guide, x, K)
        with LiveTensors() as drawn:
            q = pair.guide.dist(x)
            q.log_prob(q.rsample((K,)))
    per_particle = 4 * K * N  # float32 bytes per number, over particles and datapoints
    assert live.peak <= per_particle * _elements_per_sample(pair.model, x, pair.guide)
    assert drawn.peak <= per_particle * guide_elements(pair.guide, x)
    if name in ("coupling", "iaf", "spline", "hamiltonian"):
        # counted by the model alone, as before, these chunks held more than the budget allowed
        assert live.peak > per_particle * model_elements(pair.model, x)


def test_flow_guides_get_smaller_chunks_than_the_diagonal_guide():
    x = images(100)
    chunks = {name: chunk_of(small_pair(name), x) for name in ("diag", "planar", "iaf", "coupling", "spline")}
    diag = chunks.pop("diag")
    assert diag == 2**23 // (100 * (4 * 64 + 16))  # 4 per pixel and the diagonal draw's 4 per dimension
    assert chunks["planar"] <= diag and all(chunks[n] < diag / 2 for n in ("iaf", "coupling", "spline"))
    # the hypernetworks' widths enter the count
    narrow = small_pair("iaf").guide.elements_per_sample(x)
    wide = small_pair("iaf", guide_options={"flows": 2, "flow_hidden": [256, 256]}).guide.elements_per_sample(x)
    assert wide == narrow + 2 * (2 * 256 - 2 * 128)  # each hidden layer counted twice


class PlainGuide(nn.Module):
    """A user's guide of the contract: no declared count."""

    def __init__(self):
        super().__init__()
        self.net = nn.Linear(64, 8)

    def forward(self, x, y=None):
        loc, raw = self.net(x.flatten(1)).chunk(2, -1)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", pyro.distributions.Normal(loc, nn.functional.softplus(raw) + 1e-3).to_event(1))


class UndeclaredAmortized(guides.AmortizedGuide):
    def __init__(self):
        super().__init__(nn.Flatten(), 4)
        self.net = nn.Linear(64, 8)

    def dist(self, x, y=None):
        loc, raw = self.net(self.features(x, y)).chunk(2, -1)
        return pyro.distributions.Normal(loc, nn.functional.softplus(raw) + 1e-3).to_event(1)


@pytest.mark.parametrize("guide", [PlainGuide(), UndeclaredAmortized()], ids=["plain", "amortized"])
def test_a_guide_without_a_count_is_chunked_by_the_model_alone(guide, monkeypatch):
    model, x = small_pair("diag").model, images(20)
    assert _elements_per_sample(model, x, guide) == _elements_per_sample(model, x) == 4 * 64
    draws, rows = [], []
    original, means = evaluate_module.log_weight_terms, contract.site_means
    monkeypatch.setattr(evaluate_module, "log_weight_terms",
                        lambda *a, **k: draws.append(a[3]) or original(*a, **k))
    monkeypatch.setattr(contract, "site_means", lambda g, xb, y=None: rows.append(len(xb)) or means(g, xb, y))
    budget = 20 * 4 * 64 * 30  # 30 samples per chunk as the model alone counts them
    per_datapoint(model, guide, x, 100, max_elements=budget)
    assert draws == [30, 30, 30, 10]
    active_units_per_site(guide, images(1200), max_elements=budget)
    assert rows == [500, 500, 200]  # the batches of the means as before


def test_a_declared_count_may_be_an_int_and_nonsense_is_ignored():
    guide, x = PlainGuide(), images()
    for value, counted in ((100, 100), (True, 0), (-5, 0), (2.5, 0), (lambda x: 7, 7)):
        guide.elements_per_sample = value
        assert guide_elements(guide, x) == counted


def test_active_units_means_are_drawn_within_the_budget(monkeypatch):
    pair, x = small_pair("iaf"), images(60)
    count = guide_elements(pair.guide, x)
    budget = MEAN_CHUNK * count * 8  # eight rows' draws at a time
    rows = []
    means = contract.site_means

    def recorded(guide, xb, y=None):
        rows.append(len(xb))
        with LiveTensors() as live:
            out = means(guide, xb, y)
        assert live.peak <= 4 * budget
        return out

    monkeypatch.setattr(contract, "site_means", recorded)
    with pyro.validation_enabled(False):
        active_units_per_site(pair.guide, x, max_elements=budget)
    assert rows == [8] * 7 + [4]
    # a guide with a closed-form mean keeps the batches of 500 rows at the default budget
    rows.clear()
    monkeypatch.setattr(contract, "site_means", lambda g, xb, y=None: rows.append(len(xb)) or means(g, xb, y))
    active_units_per_site(small_pair("diag").guide, images(600))
    assert rows == [500, 100]


def test_m2_counts_every_enumerated_class_and_bottom_up_layers_count_their_flow():
    x = images()
    m2 = small_pair("iaf", model="m2", classes=3)
    labelled = _elements_per_sample(m2.model, x, m2.guide, y=torch.zeros(N, dtype=torch.long))
    assert labelled == model_elements(m2.model, x) + guide_elements(m2.guide.z_guide, x)
    assert _elements_per_sample(m2.model, x, m2.guide) == 3 * labelled  # y summed out over 3 classes
    with torch.no_grad(), pyro.validation_enabled(False), LiveTensors() as live:
        log_weight_terms(m2.model, m2.guide, x, K)
    assert live.peak <= 4 * K * N * 3 * labelled
    deep = small_pair("iaf", latent_dim=[4, 2])
    assert guide_elements(deep.guide, x) > guide_elements(deep.guide.bottom, x) == \
        guides.GUIDES["iaf"].build(nn.Identity(), 32, 4, flows=2, flow_hidden=[128, 128]).elements_per_sample(x)


def test_memory_benchmark_reports_every_registered_guide(tmp_path, monkeypatch):
    seen = []

    def in_process(names, n, samples, threads=0):
        seen.extend(names)
        # the real run gives each guide a fresh process; two suffice to check the report
        return {name: evaluation_bench.memory(name, n, samples) for name in names[:2]}

    monkeypatch.setattr(evaluation_bench, "run_memory", in_process)
    assert evaluation_bench.main(["--memory", "3", "--iw-samples", "2", "--out", str(tmp_path)]) == 0
    assert seen == list(guides.GUIDES)
    (report_file,) = tmp_path.glob("evaluation-memory-cpu-*.json")
    report = json.loads(report_file.read_text())
    r = report["results"]["diag"]
    assert r["above_mib"] == pytest.approx(r["peak_rss_mib"] - r["rss_loaded_mib"])
    assert r["chunk"] == 2 and r["elements_per_sample"] == {"model": 4 * 784, "guide": 4 * 32}
    text = (tmp_path / "evaluation-memory-cpu.md").read_text()
    assert "| diag † |" in text and "machine and software" in text
    with pytest.raises(SystemExit):
        evaluation_bench.main(["--memory", "3", "--guide", "nonesuch", "--out", str(tmp_path)])


@pytest.mark.parametrize("name", ["iaf", "spline"])
def test_the_estimate_does_not_depend_on_the_chunking(name):
    """A flow guide's draws are all its base's standard normals, which the CPU generator fills in
    blocks of 16 from one stream: chunks of whole blocks (N L = 32 numbers per sample here) draw the
    numbers one chunk would, so the estimates agree to float rounding."""
    pair, x = small_pair(name), images()
    per_sample = N * _elements_per_sample(pair.model, x, pair.guide)
    estimates = []
    for chunk in (60, 7):
        pyro.set_rng_seed(3)
        with pyro.validation_enabled(False):
            estimates.append(per_datapoint(pair.model, pair.guide, x, 60, max_elements=chunk * per_sample))
    for key in ("log_px", "elbo", "kl"):
        torch.testing.assert_close(estimates[0][key], estimates[1][key], rtol=1e-5, atol=1e-4)
