"""The 2-D test-energy benchmark (benchmarks/energies.py) on a reduced grid, its tanh box, and the
unconditional flows it builds from the guides' families."""

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from torch.autograd.functional import jacobian

from pyro_vae.errors import PyroVAEError
from pyro_vae.guides import GUIDES, unconditional_flow
from pyro_vae.guides.flows import FAMILIES

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import energies  # noqa: E402

# Published reference values, not results of this code: log Z_B = log of the integral of exp(-U)
# over B = (-4, 4)^2, from ANCHORS.md beside the checkout, "Two-dimensional test energies".
ANCHORS_LOG_Z = {"U1": 1.8775016, "U2": 2.0820893, "U3": 2.6417051, "U4": 2.6845680}
INVERTIBLE = [name for name, spec in FAMILIES.items() if spec.invertible]


@pytest.fixture(scope="module")
def reduced(tmp_path_factory):
    out = tmp_path_factory.mktemp("energies")
    report = energies.run_grid(targets=("U1", "U3"), flows=("planar", "coupling"), ks=(2,), steps=100, batch=128,
                               samples=4000, seed=0, jobs=1, out=out, log=lambda *_: None)
    return report, out


def test_reduced_grid_has_every_cell_with_a_valid_kl(reduced):
    report, out = reduced
    lines = [json.loads(line) for line in next(out.glob("energies-cpu-*.jsonl")).read_text().splitlines()]
    assert {(c["target"], c["flow"], c["K"]) for c in lines} == {(t, f, 2) for t in ("U1", "U3")
                                                                for f in ("planar", "coupling")}
    assert len(lines) == 4 and lines == report["cells"]
    for cell in lines:
        assert math.isfinite(cell["kl"]) and math.isfinite(cell["kl_se"]) and cell["kl_se"] > 0
        # KL(q||p) >= 0 on B: a negative estimate beyond its standard error is a bug (ANCHORS.md)
        assert cell["kl"] >= -3 * cell["kl_se"], cell
        assert cell["steps"] == 100 and cell["params"] > 0 and cell["seconds"] > 0


def test_markdown_table_matches_the_json_lines(reduced):
    report, out = reduced
    rows = {}
    for line in (out / "energies-cpu.md").read_text().splitlines():
        parts = [p.strip() for p in line.strip().strip("|").split("|")]
        if len(parts) == 3 and parts[0] in ("U1", "U3") and parts[1] in ("planar", "coupling"):
            rows[parts[0], parts[1]] = parts[2]
    cells = [json.loads(line) for line in next(out.glob("energies-cpu-*.jsonl")).read_text().splitlines()]
    assert rows == {(c["target"], c["flow"]): f"{c['kl']:.3f} ± {c['kl_se']:.3f}" for c in cells}


def test_figure_written(reduced):
    _, out = reduced
    png = out / "energies.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_log_z_matches_anchors(reduced):
    report, out = reduced
    for target, value in report["log_z"].items():
        assert value == pytest.approx(ANCHORS_LOG_Z[target], abs=1e-6)
    assert f"| U3 | {ANCHORS_LOG_Z['U3']:.7f} |" in (out / "energies-cpu.md").read_text()


@pytest.mark.parametrize("target", ["U2", "U4"])
def test_log_z_of_the_other_targets(target):
    assert energies.log_z_box(energies.ENERGIES[target]) == pytest.approx(ANCHORS_LOG_Z[target], abs=1e-6)


def test_box_log_det_matches_autograd():
    box = energies.box_transforms()
    x = torch.tensor([[0.3, -1.2], [2.5, 0.0], [-4.0, 6.0]], dtype=torch.float64)
    for point in x:
        y = point
        log_det = torch.zeros((), dtype=torch.float64)
        for t in box:
            log_det = log_det + t.log_abs_det_jacobian(y, t(y)).sum()
            y = t(y)

        def f(v):
            return box[1](box[0](v))

        assert torch.allclose(y, 4 * torch.tanh(point))
        assert log_det.item() == pytest.approx(torch.linalg.slogdet(jacobian(f, point))[1].item(), rel=1e-10)


@pytest.mark.parametrize("name", INVERTIBLE)
def test_flow_log_q_matches_autograd_and_integrates_to_one_on_the_box(name):
    torch.manual_seed(0)
    model = energies.BoxFlow(name, 2, hidden=(8,)).double()
    # the flow away from the identity, so the checks see a real change of variables; the base
    # narrow (scale 0.5), or q piles mass against the edges of B, where no grid of this size resolves it
    with torch.no_grad():
        for p in model.flow.parameters():
            p.add_(0.1 * torch.randn_like(p))
        model.raw_scale.fill_(math.log(math.expm1(0.5)))
    q = model.dist()
    x = q.base_dist.sample((3,))
    transforms = q.transforms

    def f(v):
        for t in transforms:
            v = t(v)
        return v

    for point in x:
        by_autograd = q.base_dist.log_prob(point) - torch.linalg.slogdet(jacobian(f, point))[1]
        assert q.log_prob(f(point)).item() == pytest.approx(by_autograd.item(), abs=1e-8)

    # float32: Pyro's autoregressive inverses start from float32 zeros whatever their input's dtype
    model.float()
    points, area = energies.midpoints(400, torch.float32)
    with torch.no_grad():
        mass = model.dist().log_prob(points).exp().double().sum().item() * area
    assert mass == pytest.approx(1.0, abs=0.01)


def test_unconditional_flows_share_the_guide_families():
    flow_guides = [name for name, spec in GUIDES.items() if "flows" in spec.options()]
    assert set(flow_guides) == set(FAMILIES)
    coupling = unconditional_flow("coupling", 2, flows=3, hidden=(8,))
    kinds = [type(t).__name__ for t in coupling.transforms()]
    assert kinds == ["AffineCoupling", "Permute", "AffineCoupling", "Permute", "AffineCoupling"]
    assert [type(t).__name__ for t in unconditional_flow("planar", 2, flows=2).transforms()] == ["Planar", "Planar"]
    assert not unconditional_flow("radial", 2, flows=1).invertible
    with pytest.raises(PyroVAEError, match="unknown flow"):
        unconditional_flow("glow")


def test_planar_scores_its_own_samples():
    model = energies.BoxFlow("planar", 3)
    z, log_q = model.sample_and_score(16)
    assert z.shape == (16, 2) and torch.isfinite(log_q).all() and (z.abs() < 4).all()
