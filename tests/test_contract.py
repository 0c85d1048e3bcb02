"""The model contract: a user's own two-site Pyro model, written here outside every registry,
evaluated and diagnosed by the suite exactly as its own models are.

z2 -> z1 -> x, all linear-Gaussian, so log p(x) is known in closed form and so is the posterior,
which factorizes as p(z1|x) p(z2|z1): a guide q(z1|x) q(z2|z1) can be exact.
"""

import ast
import math
import subprocess
import sys
from pathlib import Path

import pyro
import pyro.distributions as dist
import pytest
import torch

import pyro_vae
from pyro_vae import contract
from pyro_vae.errors import PyroVAEError
from pyro_vae.evaluate import log_weight_terms, trace_weight_terms

D, L1, L2 = 5, 3, 2
PACKAGE = Path(pyro_vae.__file__).parent


def _gaussian_conditional(joint_cov, joint_mean, a: slice, b: slice):
    """For (u, v) jointly Gaussian: v | u = N(mean_v + K (u - mean_u), cov_v - K cov_uv), K = cov_vu cov_u^-1."""
    k = joint_cov[b, a] @ torch.linalg.inv(joint_cov[a, a])
    return k, joint_mean[b] - k @ joint_mean[a], joint_cov[b, b] - k @ joint_cov[a, b]


class Truth:
    """Parameters of z2 ~ N(0, I), z1 | z2 ~ N(A z2 + a, s1^2 I), x | z1 ~ N(B z1 + b, s0^2 I)."""

    def __init__(self, seed=0):
        g = torch.Generator().manual_seed(seed)
        r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
        self.A, self.a, self.B, self.b = r(L1, L2), r(L1) * 0.3, r(D, L1), r(D) * 0.3
        self.s1, self.s0 = 0.6, 0.4
        cov_z1 = self.A @ self.A.T + self.s1 ** 2 * torch.eye(L1, dtype=torch.float64)
        # joint of (z2, z1, x): the blocks of a linear-Gaussian chain
        self.mean = torch.cat([torch.zeros(L2, dtype=torch.float64), self.a, self.B @ self.a + self.b])
        c21, c2x = self.A.T, self.A.T @ self.B.T
        c11, c1x = cov_z1, cov_z1 @ self.B.T
        cxx = self.B @ cov_z1 @ self.B.T + self.s0 ** 2 * torch.eye(D, dtype=torch.float64)
        top = torch.cat([torch.eye(L2, dtype=torch.float64), c21, c2x], 1)
        mid = torch.cat([c21.T, c11, c1x], 1)
        bottom = torch.cat([c2x.T, c1x.T, cxx], 1)
        self.cov = torch.cat([top, mid, bottom])
        z2, z1, x = slice(0, L2), slice(L2, L2 + L1), slice(L2 + L1, L2 + L1 + D)
        self.px = dist.MultivariateNormal(self.mean[x], cxx)
        # exact posterior factors: z1 | x and z2 | z1 (x carries nothing more about z2 given z1)
        self.k1, self.c1, self.cov1 = _gaussian_conditional(self.cov, self.mean, x, z1)
        self.k2, self.c2, self.cov2 = _gaussian_conditional(self.cov, self.mean, z1, z2)

    def sample_x(self, n, seed=1):
        g = torch.Generator().manual_seed(seed)
        return self.px.mean + torch.randn(n, D, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(
            self.px.covariance_matrix).T


def make_model(t: Truth):
    def model(x, y=None):
        with pyro.plate("data", x.shape[0]):
            z2 = pyro.sample("z2", dist.Normal(torch.zeros(L2, dtype=x.dtype), 1.0).to_event(1))
            z1 = pyro.sample("z1", dist.Normal(z2 @ t.A.T + t.a, t.s1).to_event(1))
            pyro.sample("x", dist.Normal(z1 @ t.B.T + t.b, t.s0).to_event(1), obs=x)
    return model


def make_guide(t: Truth, mean_field: bool):
    """q(z1|x) q(z2|z1): the exact posterior factors, or their mean-field versions (each factor's
    covariance cut to its diagonal: the exact marginal variances, so q still covers the posterior)."""
    def diagonal(cov):
        return torch.diag_embed(torch.diagonal(cov))

    cov1, cov2 = (diagonal(t.cov1), diagonal(t.cov2)) if mean_field else (t.cov1, t.cov2)

    def guide(x, y=None):
        with pyro.plate("data", x.shape[0]):
            z1 = pyro.sample("z1", dist.MultivariateNormal(x @ t.k1.T + t.c1, cov1))
            pyro.sample("z2", dist.MultivariateNormal(z1 @ t.k2.T + t.c2, cov2))
    return guide


@pytest.fixture
def truth():
    return Truth()


def test_exact_guide_gives_exact_nll(truth):
    x = truth.sample_x(40)
    result = pyro_vae.evaluate(make_model(truth), make_guide(truth, mean_field=False), x, iw_samples=50)
    exact = -truth.px.log_prob(x).mean().item()
    assert abs(result["nll"] - exact) < 1e-6
    assert abs(result["elbo"] + exact) < 1e-6  # every importance weight is p(x) itself
    assert set(result["kl_per_site"]) == {"z1", "z2"}
    assert result["recon"] - sum(result["kl_per_site"].values()) == pytest.approx(result["elbo"], abs=1e-9)
    assert result["latent_dims"] == {"z1": L1, "z2": L2} and result["latent_dim"] == L1 + L2
    assert set(result["active_units_per_site"]) == {"z1", "z2"}


def test_mean_field_guide_bounds(truth):
    x = truth.sample_x(40, seed=2)
    exact = -truth.px.log_prob(x).mean().item()
    result = pyro_vae.evaluate(make_model(truth), make_guide(truth, mean_field=True), x, iw_samples=5000)
    assert abs(result["nll"] - exact) < 0.05
    # the ELBO sits below log p(x) by KL(q || p(z|x)), far more than its Monte-Carlo error here
    assert -result["elbo"] - exact > 5 * result["elbo_se"] / math.sqrt(5000) + 1e-3
    assert result["elbo"] < -exact


def test_per_site_kl_matches_closed_form(truth):
    """E_q[log q(z1|x) - log p(z1|z2)] and the z2 term, against the suite's per-site estimate
    with many samples: the split of the KL between sites is the right one."""
    x = truth.sample_x(4, seed=3)
    model, guide = make_model(truth), make_guide(truth, mean_field=True)
    result = pyro_vae.evaluate(model, guide, x, iw_samples=20000, batch_size=4)
    terms = trace_weight_terms(model, guide, x, 20000)
    for name in ("z1", "z2"):
        log_p, log_q = terms["sites"][name]
        assert result["kl_per_site"][name] == pytest.approx((log_q - log_p).mean().item(), abs=0.05)
    assert result["kl_per_site"]["z2"] > 0.0


def test_diagnose_on_a_users_pair(truth):
    x = truth.sample_x(3, seed=4)
    model = make_model(truth)
    guides = {"exact": make_guide(truth, False), "meanfield": make_guide(truth, True)}
    report = pyro_vae.diagnose_guides(model, guides, x, chains=2, warmup=150, draws=200, iw_samples=2000,
                                      is_samples=500, seed=0)
    assert report["latent_sites"] == {"z2": [L2], "z1": [L1]}
    assert report["latent_dim"] == L1 + L2
    rows = {(r["guide"], r["image"]): r for r in report["per_image"]}
    assert len(rows) == 2 * x.shape[0]
    log_px = truth.px.log_prob(x)
    for i in range(x.shape[0]):
        assert rows[("exact", i)]["elbo"] == pytest.approx(log_px[i].item(), abs=1e-6)
        assert rows[("meanfield", i)]["elbo"] < log_px[i].item() - 1e-3
        assert rows[("exact", i)]["kl_gap"] < rows[("meanfield", i)]["kl_gap"]
    # the NUTS reference is p(z2, z1 | x): its means are the exact posterior means, in the model's order
    ref = report["draws"]["reference"].reshape(-1, x.shape[0], L1 + L2)
    m1 = x @ truth.k1.T + truth.c1
    m2 = m1 @ truth.k2.T + truth.c2
    exact_mean = torch.cat([m2, m1], -1).numpy()
    sd = ref.std(0)
    assert (abs(ref.mean(0) - exact_mean) < 6 * sd / math.sqrt(100)).all()
    assert report["per_dimension"]["meanfield"]["site"] == ["z1"] * L1 + ["z2"] * L2


def test_sites_outside_the_data_plate_are_refused(truth):
    def model(x, y=None):
        w = pyro.sample("w", dist.Normal(torch.zeros((), dtype=x.dtype), 1.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(w[..., None] * torch.ones(D, dtype=x.dtype), 1.0).to_event(1), obs=x)

    def guide(x, y=None):
        pyro.sample("w", dist.Normal(torch.zeros((), dtype=x.dtype), 1.0))

    with pytest.raises(PyroVAEError, match="outside pyro.plate"):
        pyro_vae.evaluate(model, guide, truth.sample_x(3), iw_samples=4)


def test_model_and_guide_sites_must_match(truth):
    def guide(x, y=None):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z1", dist.Normal(torch.zeros(L1, dtype=x.dtype), 1.0).to_event(1))

    with pytest.raises(PyroVAEError, match="'z2'"):
        pyro_vae.evaluate(make_model(truth), guide, truth.sample_x(3), iw_samples=4)


def test_fast_path_equals_trace_path():
    """The suite's single-site fast path gives the trace path's numbers from the same random stream."""
    from pyro_vae import RunConfig, build

    for model_name in ("vae", "cvae"):
        config = RunConfig(model=model_name, classes=3, latent_dim=3, hidden=[7], likelihood="gaussian", guide="iaf")
        pair = build(config, (1, 2, 3)).double()
        x = torch.randn(5, 1, 2, 3, dtype=torch.float64)
        y = torch.tensor([0, 1, 2, 1, 0]) if model_name == "cvae" else None
        pyro.set_rng_seed(3)
        fast = log_weight_terms(pair.model, pair.guide, x, 7, y)
        pyro.set_rng_seed(3)
        traced = trace_weight_terms(pair.model, pair.guide, x, 7, y)
        for key in ("log_lik", "log_prior", "log_q"):
            torch.testing.assert_close(fast[key], traced[key], rtol=1e-10, atol=1e-10)


def test_latent_scale_scales_only_latent_sites(truth):
    x = truth.sample_x(2)
    with contract.ScaleLatents(0.25):
        guide_trace, model_trace = contract.traces(make_model(truth), make_guide(truth, True), x)
    scales = {name: site["scale"] for name, site in model_trace.nodes.items() if site["type"] == "sample"}
    assert scales["x"] == 1.0 and scales["z1"] == 0.25 and scales["z2"] == 0.25
    assert all(site["scale"] == 0.25 for site in contract.sample_sites(guide_trace))


def test_diagnose_does_not_load_training():
    code = "import sys, pyro_vae.diagnose, pyro_vae.plots, pyro_vae.exact; " \
           "assert 'pyro_vae.train' not in sys.modules, sorted(m for m in sys.modules if m.startswith('pyro_vae'))"
    subprocess.run([sys.executable, "-c", code], check=True)


def _module_imports(path: Path) -> set[str]:
    """Package modules imported at module level (relative imports), not inside functions."""
    tree = ast.parse(path.read_text())
    package = path.relative_to(PACKAGE.parent).with_suffix("").parts
    if package[-1] == "__init__":
        package = package[:-1]
        base = package
    else:
        base = package[:-1]
    found = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.level:
            root = base[: len(base) - node.level + 1]
            if node.module:
                found.add(".".join(root + tuple(node.module.split("."))))
            else:  # from . import a, b: the modules a and b
                found.update(".".join(root + (alias.name,)) for alias in node.names)
    return found


def test_package_has_no_import_cycle():
    modules = {".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__"): p
               for p in PACKAGE.rglob("*.py")}
    graph = {name: {m for m in _module_imports(path) if m in modules and m != name} for name, path in modules.items()}
    assert graph["pyro_vae.diagnose"], "the import graph was not read"
    state: dict[str, int] = {}

    def visit(node, stack):
        state[node] = 1
        for dep in graph[node]:
            if state.get(dep) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack + [node, dep]))
            if dep not in state:
                visit(dep, stack + [node])
        state[node] = 2

    for name in graph:
        if name not in state:
            visit(name, [])
