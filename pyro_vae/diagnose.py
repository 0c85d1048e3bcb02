"""How good is each guide? q(z|x) against a reference posterior, with the Bayesian workflow's
diagnostics (through the ArviZ adapter in :mod:`pyro_vae.diagnostics`).

For N test images and the model (decoder and prior) of the first run, held fixed:

- a reference posterior p(z|x): NUTS on all N images jointly (they are independent, so the
  joint is their product) over all latent sites, or for one 2-D latent site exact draws from
  p(z|x) tabulated on a grid;
- per image and guide: the Pareto k-hat of the importance weights log p(x, z) - log q(z|x)
  (Yao et al. 2018, arXiv:1802.02538), the importance-sampling ESS, the gap log p(x) - ELBO
  = KL(q || p(z|x)), and distances between q draws and reference draws;
- per run, the aggregate posterior q(z) = mean_x q(z|x) on the test split: the variance law
  E_x[sigma^2(x)] + Var_x[mu(x)] (about 1 for active units; Asperti 2019, "About generative
  aspects of variational autoencoders", arXiv:1909.10379), its moments, and collapsed dimensions.

Every guide is scored against the first run's model: for runs with different decoders, this asks
how well each q fits *that* model's posterior; to score each run against its own model, diagnose
it on its own.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pyro
import torch
from pyro.distributions import constraints
from pyro.infer import MCMC, NUTS
from pyro.infer.autoguide.initialization import init_to_sample
from scipy import stats

from . import contract, diagnostics
from .errors import PyroVAEError
from .evaluate import ACTIVE_UNIT_THRESHOLD, log_weight_terms, per_datapoint
from .exact import grid_posterior, posterior_window
from .io import write_text_atomic
from .models import MODELS
from .run import load_data, load_run, resolve_device

RHAT_LIMIT = 1.01
ESS_PER_CHAIN_MIN = 100  # Vehtari et al. 2021 ask for bulk and tail ESS above 100 per chain
KHAT_GOOD, KHAT_BAD = 0.5, 0.7


def _overdispersed(site):
    """NUTS starts: a draw from the model's prior, doubled on unconstrained sites (r-hat needs
    starts more spread than the posterior)."""
    value = init_to_sample(site)
    return 2.0 * value if site["fn"].support in (constraints.real, constraints.real_vector) else value


def nuts_reference(model, x: torch.Tensor, chains: int, warmup: int, draws: int, seed: int, y=None) -> np.ndarray:
    """NUTS draws from p(z|x) over all latent sites of every image at once (they are independent,
    so the joint is their product): (chains, draws, N, L), the sites flattened and joined in the
    model's order (``contract.layout``).

    Pyro's NUTS runs on the model itself, conditioned on x (and y), so any model of the contract
    qualifies; chains run one after another from overdispersed starts.
    """
    shapes = contract.latent_shapes(model, x, y)
    frozen = [p for p in model.parameters() if p.requires_grad] if isinstance(model, torch.nn.Module) else []
    for p in frozen:  # gradients are wanted with respect to z only
        p.requires_grad_(False)
    out = []
    try:
        for chain in range(chains):
            pyro.set_rng_seed(seed + chain)
            kernel = NUTS(lambda: contract.call(model, x, y), max_tree_depth=8, init_strategy=_overdispersed)
            mcmc = MCMC(kernel, num_samples=draws, warmup_steps=warmup, disable_progbar=True)
            mcmc.run()
            out.append(contract.flatten(mcmc.get_samples(), shapes, 2).cpu().numpy())
    finally:
        for p in frozen:
            p.requires_grad_(True)
    return np.stack(out)


@torch.no_grad()
def grid_reference(model, x: torch.Tensor, chains: int, draws: int, n: int = 200, y=None) -> np.ndarray:
    """Exact draws from p(z|x) for a model with one 2-D latent site: a cell of a fine grid around
    each posterior, chosen with its probability, then a uniform point in the cell.
    Returns (chains, draws, N, 2)."""
    out = []
    for i in range(x.shape[0]):
        yi = None if y is None else y[i:i + 1]
        # six posterior standard deviations: the tails of a skewed posterior stay inside the grid
        bounds = posterior_window(model, x[i:i + 1], width=6.0, y=yi)
        axes, log_post, _ = grid_posterior(model, x[i:i + 1], n, bounds=bounds, y=yi)
        cells = torch.multinomial(log_post[0].exp().flatten(), chains * draws, replacement=True)
        step = torch.tensor([axes[0, 1] - axes[0, 0], axes[1, 1] - axes[1, 0]], device=x.device)
        centres = torch.stack([axes[0][cells % n], axes[1][cells // n]], -1)
        out.append((centres + (torch.rand_like(centres) - 0.5) * step).reshape(chains, draws, 2))
    return torch.stack(out, 2).cpu().numpy()


def energy_distance(a: np.ndarray, b: np.ndarray) -> float:
    """2 E|A - B| - E|A - A'| - E|B - B'| for samples (n, L) and (m, L): zero iff equal laws."""
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    return (2 * torch.cdist(a, b).mean() - torch.cdist(a, a).mean() - torch.cdist(b, b).mean()).item()


@torch.no_grad()
def guide_diagnostics(model, guide, x: torch.Tensor, is_samples: int, y=None) -> dict:
    """Per image: PSIS k-hat, IS effective sample size (fraction of draws) and the ELBO, all with
    importance weights log p(x, z) - log q(z|x) of ``is_samples`` draws (z: all latent sites)."""
    terms = log_weight_terms(model, guide, x, is_samples, y)
    log_w = (terms["log_lik"] + terms["log_prior"] - terms["log_q"]).T.double()  # (N, S)
    normalized = torch.softmax(log_w, -1)
    return {"khat": diagnostics.psis_khat(log_w.cpu().numpy()),
            "ess_fraction": (1.0 / normalized.pow(2).sum(-1) / is_samples).cpu().numpy(),
            "elbo": log_w.mean(-1).cpu().numpy()}


@torch.no_grad()
def aggregate_posterior(guide, x: torch.Tensor, draws_per_image: int = 10, batch_size: int = 500, y=None) -> dict:
    """Per latent dimension (all sites, flattened and joined in the guide's order): the variance
    law, moments of the aggregate q(z), the active flag, and the site each dimension belongs to."""
    means, variances, draws = [], [], []
    for i in range(0, x.shape[0], batch_size):
        rows, labels = x[i:i + batch_size], None if y is None else y[i:i + batch_size]
        moments = contract.site_moments(guide, rows, labels)
        means.append(torch.cat([m for m, _ in moments.values()], -1))
        variances.append(torch.cat([v for _, v in moments.values()], -1))
        drawn = contract.guide_draws(guide, rows, labels, draws_per_image)
        draws.append(torch.cat([d.reshape(-1, m.shape[-1]) for d, (m, _) in zip(drawn.values(), moments.values())], -1))
    sites = [name for name, (m, _) in moments.items() for _ in range(m.shape[-1])]
    mu, var, z = torch.cat(means).double(), torch.cat(variances).double(), torch.cat(draws).double().cpu().numpy()
    spread = mu.var(0)
    return {"site": sites, "variance_law": (var.mean(0) + spread).tolist(), "mean_variance": var.mean(0).tolist(),
            "variance_of_means": spread.tolist(), "active": (spread > ACTIVE_UNIT_THRESHOLD).tolist(),
            "aggregate_mean": z.mean(0).tolist(), "aggregate_variance": z.var(0, ddof=1).tolist(),
            "aggregate_skewness": stats.skew(z, axis=0).tolist(),
            "aggregate_excess_kurtosis": stats.kurtosis(z, axis=0).tolist(), "samples": z}


def _check_counts(reference: str, images: int, chains: int, warmup: int, draws: int, iw_samples: int,
                  is_samples: int) -> None:
    if reference not in ("nuts", "grid"):
        raise PyroVAEError(f"unknown --reference {reference!r}; choose from nuts, grid")
    for name, value in (("--images", images), ("--chains", chains), ("--draws", draws), ("--iw-samples", iw_samples),
                        ("--is-samples", is_samples)):
        if not isinstance(value, int) or value <= 0:
            raise PyroVAEError(f"{name} must be a positive integer, got {value}")
    if not isinstance(warmup, int) or warmup < 0:
        raise PyroVAEError(f"--warmup must be a non-negative integer, got {warmup}")


def diagnose_guides(model, guides: dict, x: torch.Tensor, y=None, x_all: torch.Tensor | None = None, y_all=None,
                    images: list[int] | None = None, reference: str = "nuts", chains: int = 2, warmup: int = 300,
                    draws: int = 300, iw_samples: int = 5000, is_samples: int = 2000, seed: int = 0) -> dict:
    """Each guide's q(z|x) against a reference posterior of ``model`` on the images ``x`` (with
    side information ``y`` where the pair takes it), for any model and guides of the contract.

    ``guides`` maps names to guides; ``x_all`` (default ``x``) is the split the aggregate
    posterior is taken over; ``images`` labels the rows of ``x`` in the report. Returns the report
    (``per_image``, ``per_dimension``, ``reference``, ``warnings``, ...) with the draws under
    ``draws`` (source -> (chains, draws, N, L)); writes nothing.
    """
    _check_counts(reference, x.shape[0], chains, warmup, draws, iw_samples, is_samples)
    x_all = x if x_all is None else x_all
    y_all = y if x_all is x else y_all
    images = list(range(x.shape[0])) if images is None else list(images)
    discrete = contract.discrete_sites(model, x, y)
    if discrete:
        raise PyroVAEError(f"diagnose compares continuous posteriors, and the model's sites {', '.join(discrete)} are "
                           "discrete: pass their values as y (a semi-supervised model is diagnosed given the label)")
    shapes = contract.latent_shapes(model, x, y)
    total = sum(math.prod(s) for s in shapes.values())
    planar = len(shapes) == 1 and total == 2
    if reference == "grid" and not planar:
        raise PyroVAEError(f"--reference grid needs one 2-D latent site; the model has {dict(shapes)}")
    for module in [model, *guides.values()]:
        if isinstance(module, torch.nn.Module):
            module.eval()

    pyro.set_rng_seed(seed)
    ref = (nuts_reference(model, x, chains, warmup, draws, seed, y) if reference == "nuts"
           else grid_reference(model, x, chains, draws, y=y))
    warn = []
    ref_report = {"method": reference, "chains": chains, "draws": draws, "warmup": warmup if reference == "nuts" else 0}
    if reference == "nuts":
        rhat, bulk, tail = diagnostics.rhat(ref), diagnostics.ess(ref, "bulk"), diagnostics.ess(ref, "tail")
        ref_report.update(max_rhat=float(np.max(rhat)), min_ess_bulk=float(np.min(bulk)),
                          min_ess_tail=float(np.min(tail)), rhat=rhat.tolist(), ess_bulk=bulk.tolist(),
                          ess_tail=tail.tolist())
        if np.max(rhat) > RHAT_LIMIT:
            warn.append(f"NUTS reference: max r-hat {np.max(rhat):.3f} > {RHAT_LIMIT}: the chains disagree; "
                        "raise --warmup/--draws")
        if min(np.min(bulk), np.min(tail)) < ESS_PER_CHAIN_MIN * chains:
            warn.append(f"NUTS reference: min ESS (bulk {np.min(bulk):.0f}, tail {np.min(tail):.0f}) below "
                        f"{ESS_PER_CHAIN_MIN} per chain: raise --draws")
    for w in warn:
        warnings.warn(w, stacklevel=2)

    # log p(x): the tightest importance-weighted estimate over the guides (each is a stochastic
    # lower bound), or the grid quadrature when the latent is 2-D
    log_px = np.full(len(images), -np.inf)
    per_guide, q_draws = {}, {}
    for name, guide in guides.items():
        pyro.set_rng_seed(seed)
        est = per_datapoint(model, guide, x, iw_samples, y=y)
        log_px = np.maximum(log_px, est["log_px"].double().cpu().numpy())
        per_guide[name] = guide_diagnostics(model, guide, x, is_samples, y)
        drawn = contract.guide_draws(guide, x, y, chains * draws)
        q_draws[name] = contract.flatten(drawn, shapes, 2).cpu().numpy().reshape((chains, draws, len(images), -1))
    if planar:
        log_px = grid_posterior(model, x, y=y)[2].double().cpu().numpy()
    ref_flat = ref.reshape(chains * draws, len(images), -1)
    rows = []
    for name, d in per_guide.items():
        q_flat = q_draws[name].reshape(chains * draws, len(images), -1)
        for i, image in enumerate(images):
            a, b = q_flat[:, i], ref_flat[:, i]
            rows.append({"image": image, "guide": name, "khat": float(d["khat"][i]),
                         "ess_fraction": float(d["ess_fraction"][i]), "elbo": float(d["elbo"][i]),
                         "log_px": float(log_px[i]), "kl_gap": float(log_px[i] - d["elbo"][i]),
                         "energy_distance": energy_distance(a[:1000], b[:1000]),
                         "mean_error": float(np.linalg.norm(a.mean(0) - b.mean(0))),
                         "cov_error": float(np.linalg.norm(np.atleast_2d(np.cov(a.T) - np.cov(b.T))))})
    aggregate = {name: aggregate_posterior(guide, x_all, y=y_all) for name, guide in guides.items()}
    # a guide on an extended space (the hamiltonian guide's (z, rho)) is weighed by its augmented weights
    notes = [f"{name}: k-hat, ESS and the KL gap are those of the augmented importance weights "
             "p(x, z_K) N(rho_K; 0, I) / q(z_K, rho_K|x) of its extended space (z, rho), not of q(z|x) alone"
             for name, guide in guides.items() if getattr(guide, "extended_space", False)]
    return {"latent_dim": total, "notes": notes, "latent_sites": {k: list(v) for k, v in shapes.items()}, "images": images,
            "reference": ref_report, "warnings": warn, "iw_samples": iw_samples, "is_samples": is_samples,
            "per_image": rows, "per_dimension": {n: {k: v for k, v in a.items() if k != "samples"}
                                                 for n, a in aggregate.items()},
            "draws": {"reference": ref, **q_draws},
            "aggregate_samples": {n: a["samples"] for n, a in aggregate.items()}}


def diagnose(run_dirs: list[str], out: str | Path, images: int = 8, reference: str = "nuts", chains: int = 2,
             warmup: int = 300, draws: int = 300, iw_samples: int = 5000, is_samples: int = 2000,
             device: str = "auto", seed: int = 0, data_dir: str | None = None) -> dict:
    """Diagnose trained runs on test images, the first run's model held fixed: write
    ``diagnose.md``, ``diagnose.json``, ``posteriors.nc`` and figures into ``out``."""
    _check_counts(reference, images, chains, warmup, draws, iw_samples, is_samples)
    dev = resolve_device(device)
    runs = {}
    for d in run_dirs:
        name = Path(d).name or str(d)
        runs[name if name not in runs else str(d)] = load_run(d, dev)
    first = next(iter(runs.values()))
    for d, run in zip(run_dirs, runs.values()):
        if (run.config.dataset, run.obs_shape, run.config.latent_dim, run.config.model) != (
                first.config.dataset, first.obs_shape, first.config.latent_dim, first.config.model):
            raise PyroVAEError(f"run {d} has another dataset, model or latent size than {run_dirs[0]}")
    data = load_data(first.config, data_dir)
    x_all = data.observations("test", dev)
    spec = MODELS[first.config.model]
    # a semi-supervised model is diagnosed given the test label: q(z|x, y) against p(z|x, y)
    y_all = data.labels("test", dev) if spec.conditional or spec.semi_supervised else None
    # spread over the test split: some test sets are sorted by class
    index = np.linspace(0, x_all.shape[0] - 1, min(images, x_all.shape[0])).round().astype(int).tolist()
    report = diagnose_guides(first.pair.model, {name: run.pair.guide for name, run in runs.items()}, x_all[index],
                             None if y_all is None else y_all[index], x_all, y_all, index, reference, chains, warmup,
                             draws, iw_samples, is_samples, seed)
    report = {"runs": dict(zip(runs, map(str, run_dirs))), "model_of": run_dirs[0], "dataset": first.config.dataset,
              **report}
    write_report(report, out)
    return report


def write_report(report: dict, out: str | Path) -> None:
    """``diagnose.json`` and ``diagnose.md``, ``posteriors.nc`` (ArviZ) and the figures, into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    q_draws, index = dict(report.pop("draws")), report["images"]
    ref = q_draws.pop("reference")
    aggregate = report.pop("aggregate_samples")
    shapes = {k: tuple(v) for k, v in report["latent_sites"].items()}
    idata = diagnostics.inference_data({"reference": ref, **q_draws}, index, contract.layout(shapes), shapes)
    diagnostics.save_netcdf(idata, out / "posteriors.nc")
    write_text_atomic(out / "diagnose.json", json.dumps(report, indent=2) + "\n")
    write_text_atomic(out / "diagnose.md", markdown(report))
    from .plots import aggregate_histograms, khat_plot, variance_law_bars

    chains, draws = ref.shape[:2]
    ref_flat = ref.reshape(chains * draws, len(index), -1)
    for i in range(min(2, len(index))):
        diagnostics.pair_plot(ref_flat[:, i], {n: q[:, :, i].reshape(-1, q.shape[-1]) for n, q in q_draws.items()},
                              out / f"pairs_image{index[i]}.png", f"test image {index[i]}: q(z|x) over the reference")
    khat_plot(report["per_image"], out / "khat.png", KHAT_GOOD, KHAT_BAD)
    variance_law_bars(report["per_dimension"], out / "variance_law.png")
    aggregate_histograms(aggregate, out / "aggregate.png")


def markdown(report: dict) -> str:
    ref = report["reference"]
    lines = [f"# Posterior diagnostics ({report['dataset']}, latent dim {report['latent_dim']})", "",
             f"Model (decoder and prior) of `{report['model_of']}`, held fixed; test images {report['images']}.", ""]
    if ref["method"] == "nuts":
        lines.append(f"Reference: NUTS, {ref['chains']} chains x {ref['draws']} draws after {ref['warmup']} warm-up "
                     f"steps; max r-hat {ref['max_rhat']:.3f}, min bulk ESS {ref['min_ess_bulk']:.0f}, "
                     f"min tail ESS {ref['min_ess_tail']:.0f}.")
    else:
        lines.append(f"Reference: exact draws of p(z|x) from a fine grid ({ref['chains'] * ref['draws']} per image).")
    lines += [f"**Warning:** {w}" for w in report["warnings"]]
    lines += [f"**Note:** {n}" for n in report.get("notes", [])]
    lines += ["", "## Per image and guide", "",
              f"k-hat: Pareto shape of the importance weights p(x,z)/q(z|x) over {report['is_samples']} draws of q "
              "(Yao et al. 2018). Below 0.5 the weights have finite variance: q covers the posterior and importance "
              "sampling from it is reliable. Between 0.5 and 0.7 the variance is infinite but PSIS still gives usable "
              "estimates. Above 0.7 q misses mass the posterior has (tails too light or the wrong shape): estimates "
              "built on q cannot be trusted.", "",
              "ESS: importance-sampling effective sample size as a fraction of the draws. KL gap: log p(x) - ELBO = "
              f"KL(q || p(z|x)), with log p(x) by {'grid quadrature' if report['latent_dim'] == 2 else 'the tightest importance-weighted estimate over the guides, K = ' + str(report['iw_samples'])}. "
              "Energy distance and mean/covariance errors compare q draws with reference draws.", "",
              "| image | guide | k-hat | ESS | KL gap (nats) | energy distance | mean error | cov error |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in report["per_image"]:
        flag = "" if r["khat"] < KHAT_GOOD else (" (ok)" if r["khat"] < KHAT_BAD else " (bad)")
        lines.append(f"| {r['image']} | {r['guide']} | {r['khat']:.2f}{flag} | {r['ess_fraction']:.2f} | "
                     f"{r['kl_gap']:.3f} | {r['energy_distance']:.3f} | {r['mean_error']:.3f} | {r['cov_error']:.3f} |")
    lines += ["", "## Aggregate posterior per dimension (test split)", "",
              "Variance law: E_x[sigma^2(x)] + Var_x[mu(x)] is about 1 for an active unit under a N(0, I) prior "
              "(Asperti 2019); the first two moments of q(z) then match the prior while higher ones need not. "
              f"A dimension is active when Var_x[mu(x)] > {ACTIVE_UNIT_THRESHOLD}.", ""]
    for name, d in report["per_dimension"].items():
        lines += [f"### {name}", "", "| dim | variance law | E[sigma^2] | Var[mu] | mean | variance | skewness | "
                  "excess kurtosis | active |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for j in range(len(d["variance_law"])):
            lines.append(f"| {j} | {d['variance_law'][j]:.3f} | {d['mean_variance'][j]:.3f} | "
                         f"{d['variance_of_means'][j]:.3f} | {d['aggregate_mean'][j]:.3f} | "
                         f"{d['aggregate_variance'][j]:.3f} | {d['aggregate_skewness'][j]:.3f} | "
                         f"{d['aggregate_excess_kurtosis'][j]:.3f} | {'yes' if d['active'][j] else 'collapsed'} |")
        lines.append("")
    lines += ["Figures: `pairs_image*.png`, `khat.png`, `variance_law.png`, `aggregate.png`; all draws in "
              "`posteriors.nc` (ArviZ InferenceData, one variable per latent site, e.g. `z` with dims chain, draw, "
              "source, image, z_dim)."]
    return "\n".join(lines) + "\n"
