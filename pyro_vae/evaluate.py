"""Bounds and likelihood estimates of a trained model, in nats per datapoint.

Everything is computed from one set of importance weights w_k = p(x, z_k) / q(z_k|x), z_k ~ q,
read from the Pyro traces of the model's and guide's sample sites (any pair of the model
contract, :mod:`pyro_vae.contract`; z stands for all latent sites together), so the estimate is
that of the model and guide actually trained:

- ELBO = mean_k log w_k (a lower bound on log p(x)); reconstruction E_q log p(x|z) and
  KL = E_q[log q(z|x) - log p(z)] are its two terms, estimated from the same samples;
- log p(x) ~ log (1/K) sum_k w_k (the IWAE bound with K samples, consistent as K grows), so the
  NLL reported is an upper bound in expectation, given with K and its standard error over data.

A discrete guide site enumerated in parallel (the label of a semi-supervised model) is summed out
exactly rather than sampled: each w_k is then sum_y p(x, y, z_k,y) / q(z_k,y|x, y), the ELBO
sum_y q(y|x) E_q[log p(x, y, z) - log q(y, z|x)] (see ``marginalize``).

Samples are drawn in chunks and combined with a running log-sum-exp, so memory stays bounded
whatever K is: a chunk holds about ``max_elements`` numbers, counted per particle and datapoint
from the likelihood's outputs, the prior's and the guide's declared counts (``elements_per_sample``
of a prior or guide; see ``_elements_per_sample``), and the Monte-Carlo posterior means behind the
active units are drawn within the same budget.
"""

from __future__ import annotations

import ctypes
import functools
import math
from contextlib import nullcontext

import torch

from . import contract
from .errors import PyroVAEError
from .guides.base import MEAN_CHUNK

# Active units (Burda et al. 2016): a latent dimension whose posterior mean varies with x.
ACTIVE_UNIT_THRESHOLD = 0.01


def fast_path(model, guide) -> bool:
    """Whether the pair is the suite's single-site kind, scored directly (see ``log_weight_terms``):
    a model with ``log_terms(x, z, y)`` and a guide with ``dist(x, y)`` for its one site ``site_name``."""
    return (callable(getattr(model, "log_terms", None)) and callable(getattr(guide, "dist", None))
            and getattr(guide, "site_name", None) is not None)


def single_site_draw(model, guide, x: torch.Tensor, sample_shape=(), y=None) -> tuple:
    """(log p(x|z), log p(z), log q(z|x), q, z) for one draw z of ``sample_shape`` per row from a pair
    on the fast path, reparameterized where q allows: the terms its traces would hold, read directly
    (the evaluation's chunks and the direct training bounds, ``pyro_vae.direct``)."""
    q = guide.dist(x, y)
    z = q.rsample(sample_shape) if q.has_rsample else q.sample(sample_shape)
    log_prior, log_lik = model.log_terms(x, z, y)
    return log_lik, log_prior, q.log_prob(z), q, z


def log_weight_terms(model, guide, x: torch.Tensor, samples: int, y=None) -> dict:
    """One vectorized draw of ``samples`` particles: each term has shape (samples, N).

    Returns log p(x|z) ("log_lik", the observed sites), log p(z) ("log_prior", the latent sites of
    the model) and log q(z|x) ("log_q"), each summed over sites, and per latent site ("sites":
    name -> (log p, log q)); unscaled: bounds are reported at beta = 1.
    """
    if fast_path(model, guide):
        # The suite's single-site models are scored directly rather than through the traces of
        # ``contract.site_terms`` (the same numbers from the same random stream; a test checks it
        # for every model and guide): at thousands of particles the trace bookkeeping per chunk,
        # and terms such as log sigma that a plate-expanded distribution recomputes for every
        # particle, made the estimator slower (benchmarks/evaluation.py measures both paths).
        log_lik, log_prior, log_q, _, _ = single_site_draw(model, guide, x, (samples,), y)
        return {"log_lik": log_lik, "log_prior": log_prior, "log_q": log_q,
                "sites": {guide.site_name: (log_prior, log_q)}}
    return trace_weight_terms(model, guide, x, samples, y)


def trace_weight_terms(model, guide, x: torch.Tensor, samples: int, y=None) -> dict:
    """``log_weight_terms`` through Pyro's traces: the path for any pair of the model contract."""
    terms = contract.site_terms(model, guide, x, y, particles=samples)
    if terms["enumerated"]:
        return marginalize(terms["log_lik"], terms["latent"], terms["enumerated"], (samples, x.shape[0]))
    sites = terms["latent"]
    return {"log_lik": terms["log_lik"], "log_prior": sum(p for p, _ in sites.values()),
            "log_q": sum(q for _, q in sites.values()), "sites": sites}


def marginalize(log_lik, sites: dict, enumerated: list, shape: tuple) -> dict:
    """Terms of ``log_weight_terms`` (each of ``shape``) with the ``enumerated`` guide sites summed
    out: each term its expectation under q of the enumerated values (their probabilities
    exp(sum log q) over all combinations, the dimensions left of ``shape``), and ``log_w``, the log
    of sum over the combinations of p(x, all sites) / q(sampled sites), the importance weight of
    the sampled sites with the enumerated ones summed exactly."""
    log_q_enum = sum(sites[name][1] for name in enumerated)
    log_w = log_lik + sum(p for p, _ in sites.values()) - sum(q for n, (_, q) in sites.items() if n not in enumerated)
    full = torch.broadcast_shapes(log_w.shape, log_q_enum.shape)

    def combos(t):  # (combinations, *shape)
        return torch.as_tensor(t).expand(full).reshape((-1,) + tuple(shape))

    weight = combos(log_q_enum).exp()

    def expect(t):
        return (weight * combos(t)).sum(0)

    expected = {name: (expect(p), expect(q)) for name, (p, q) in sites.items()}
    return {"log_lik": expect(log_lik), "log_prior": sum(p for p, _ in expected.values()),
            "log_q": sum(q for _, q in expected.values()), "sites": expected,
            "log_w": torch.logsumexp(combos(log_w), 0)}


@functools.cache
def retain_freed_memory() -> bool:
    """Ask glibc to keep freed buffers up to 32 MiB in the process's heap, and not to return free
    heap below 256 MiB to the kernel. Process-wide and lasting; returns whether it took effect
    (not on other C libraries).

    An importance-sampled estimate allocates and frees the same few large buffers for every chunk
    of samples. With glibc's adaptive defaults these are often handed back to the kernel and
    faulted in again, page by page, on the next chunk, by chance of the allocation order: the NLL
    estimate of benchmarks/evaluation.py ran about 1.45x slower, and its time varied by 20% from
    run to run. The cost is that the process keeps its peak memory until it ends.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError, TypeError):  # no such symbol, or no process handle (Windows)
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    return bool(mallopt(m_mmap_threshold, 32 * 2**20)) and bool(mallopt(m_trim_threshold, 256 * 2**20))


def model_elements(model, x: torch.Tensor) -> int:
    """Numbers the model's scoring holds per particle and datapoint, about: 4 per pixel, or twice the
    likelihood's parameters per pixel where a model says (a 256-way categorical decodes 256 per
    pixel, and sized as a Bernoulli its chunks took 64 times the memory budget), and what the prior
    declares."""
    likelihood = getattr(model, "likelihood", None)
    channels = x.shape[1] if x.dim() == 4 else 1
    sized = callable(getattr(likelihood, "out_channels", None))
    per_pixel = likelihood.out_channels(channels) / channels if sized else 0
    # a mixture prior scores every draw against each of its components
    prior = getattr(getattr(model, "prior", None), "elements_per_sample", 0)
    return int(max(4, 2 * per_pixel) * x[0].numel() + (prior if isinstance(prior, int) else 0))


def guide_elements(guide, x: torch.Tensor) -> int:
    """Numbers a draw of the guide and its log-density hold per particle and datapoint, as the guide
    declares them: ``elements_per_sample``, an int or a method of the observations. The suite's
    guides declare theirs (a flow's hypernetworks run on every particle, with h(x) joined to each
    draw); 0 for a guide that declares none, which is then sized as before, by the model alone."""
    count = getattr(guide, "elements_per_sample", 0)
    count = count(x) if callable(count) else count
    return count if isinstance(count, int) and not isinstance(count, bool) and count > 0 else 0


def _elements_per_sample(model, x: torch.Tensor, guide=None, y=None) -> int:
    """Numbers held per particle and datapoint: the model's and the guide's, summed (their peaks
    need not coincide, so this errs on the side of smaller chunks), times the values a guide
    enumerates in parallel (``enumerated_values(y)``: the classes of M2's unobserved label, at each
    of which the model scores every particle)."""
    copies = getattr(guide, "enumerated_values", None)
    copies = copies(y) if callable(copies) else 1
    return int(max(1, copies) * (model_elements(model, x) + guide_elements(guide, x)))


def _chunk_size(samples: int, batch: int, elements_per_sample: int, max_elements: int) -> int:
    return max(1, min(samples, max_elements // max(1, batch * elements_per_sample)))


@torch.no_grad()
def per_datapoint(model, guide, x: torch.Tensor, samples: int, max_elements: int = 2**23, y=None,
                  weight_terms=None) -> dict[str, torch.Tensor]:
    """Per-datapoint ELBO, its two terms, the KL of each latent site ("kl_sites") and the K-sample
    log p(x) estimate, each of shape (N,). ``weight_terms`` replaces ``log_weight_terms``."""
    retain_freed_memory()
    weight_terms = weight_terms or log_weight_terms
    chunk = _chunk_size(samples, x.shape[0], _elements_per_sample(model, x, guide, y), max_elements)
    lse = torch.full((x.shape[0],), -math.inf, dtype=x.dtype, device=x.device)
    sums = {"log_lik": 0.0, "log_prior": 0.0, "log_q": 0.0}
    kl_sites: dict = {}
    done = 0
    reuse = guide.reuse_features(x, y) if hasattr(guide, "reuse_features") else nullcontext()
    with reuse:
        while done < samples:
            k = min(chunk, samples - done)
            terms = weight_terms(model, guide, x, k, y)
            log_w = terms["log_w"] if "log_w" in terms else terms["log_lik"] + terms["log_prior"] - terms["log_q"]
            lse = torch.logaddexp(lse, torch.logsumexp(log_w, dim=0))
            for key in sums:
                sums[key] = sums[key] + terms[key].sum(0)
            for name, (log_p, log_q) in terms["sites"].items():
                kl_sites[name] = kl_sites.get(name, 0.0) + (log_q - log_p).sum(0)
            done += k
    recon = sums["log_lik"] / samples
    kl = (sums["log_q"] - sums["log_prior"]) / samples
    return {"log_px": lse - math.log(samples), "elbo": recon - kl, "recon": recon, "kl": kl,
            "kl_sites": {name: v / samples for name, v in kl_sites.items()}}


def mean_se(values: torch.Tensor) -> tuple[float, float]:
    """The mean of ``values`` and its standard error (nan for a single value)."""
    n = values.numel()
    se = values.std(unbiased=True).item() / math.sqrt(n) if n > 1 else float("nan")
    return values.mean().item(), se


def _rows(y, i: int, j: int):
    return None if y is None else y[i:j]


@torch.no_grad()
def active_units_per_site(guide, x: torch.Tensor, y=None, batch_size: int = 500,
                          max_elements: int = 2**23) -> dict[str, tuple[int, torch.Tensor]]:
    """Per latent site: the number of dimensions with Cov_x(E_q[z_i|x]) > 0.01, and those variances."""
    # A guide without a closed-form mean (a flow, the hamiltonian dynamics) draws MEAN_CHUNK samples
    # for every row of a batch at once: at 500 rows the spline flow's draws held 600 MiB and the
    # hamiltonian guide's 840 MiB, twenty times a chunk of the estimate above, so the rows per batch
    # keep those draws within the same budget.
    rows = _chunk_size(batch_size, MEAN_CHUNK, guide_elements(guide, x), max_elements)
    parts = [contract.site_means(guide, x[i:i + rows], _rows(y, i, i + rows)) for i in range(0, x.shape[0], rows)]
    out = {}
    for name in parts[0]:
        means = torch.cat([p[name] for p in parts])
        variances = means.var(0, unbiased=True) if means.shape[0] > 1 else torch.zeros_like(means[0])
        out[name] = (int((variances > ACTIVE_UNIT_THRESHOLD).sum()), variances)
    return out


@torch.no_grad()
def active_units(guide, x: torch.Tensor, batch_size: int = 500, y=None) -> tuple[int, torch.Tensor]:
    """Active units over all latent sites, and the variances of their posterior means (concatenated)."""
    per_site = active_units_per_site(guide, x, y, batch_size)
    return sum(n for n, _ in per_site.values()), torch.cat([v for _, v in per_site.values()])


def bits_per_dim(result: dict, dims: int) -> dict:
    """The bounds of an ``evaluate`` result in bits per dimension, as the field reports 8-bit
    images: nats / (D ln 2) of the negative ELBO and of the NLL, with their standard errors."""
    per = 1.0 / (dims * math.log(2))
    return {"elbo_bits_per_dim": -result["elbo"] * per, "elbo_bits_per_dim_se": result["elbo_se"] * per,
            "nll_bits_per_dim": result["nll"] * per, "nll_bits_per_dim_se": result["nll_se"] * per}


@torch.no_grad()
def evaluate(model, guide, x: torch.Tensor, y=None, iw_samples: int = 5000, batch_size: int = 100,
             max_elements: int = 2**23) -> dict:
    """Test bounds of any (model, guide) pair of the model contract on ``x`` (N, ...), with side
    information ``y`` (N,) where the pair takes it; nats per datapoint.

    Returns ``elbo`` (a lower bound: negative for discrete data) with ``elbo_se``, its terms
    ``recon`` (all observed sites) and ``kl`` (all latent sites), ``kl_per_site``, ``nll`` =
    -log p(x) estimated with ``iw_samples`` importance samples and its standard error ``nll_se``
    over datapoints, ``active_units`` (and ``active_units_per_site``), ``latent_dim`` (summed
    over sites; ``latent_dims`` per site) and ``n``. ``max_elements``: about how many numbers a chunk
    of importance samples, or a batch of Monte-Carlo posterior means, holds at once.
    """
    if not isinstance(iw_samples, int) or iw_samples <= 0:
        raise PyroVAEError(f"iw_samples must be a positive integer, got {iw_samples!r}")
    if not torch.is_tensor(x) or not x.is_floating_point():
        raise PyroVAEError(f"evaluate needs floating-point observations, got {getattr(x, 'dtype', type(x).__name__)}; "
                           "a dataset's stored uint8 split becomes them through data.observations(split)")
    if y is not None and len(y) != x.shape[0]:
        raise PyroVAEError(f"y has {len(y)} rows for {x.shape[0]} observations")
    modules = [m for m in (model, guide) if isinstance(m, torch.nn.Module)]
    modes = [m.training for m in modules]
    for m in modules:
        m.eval()
    try:
        parts = [per_datapoint(model, guide, x[i:i + batch_size], iw_samples, max_elements,
                               y=_rows(y, i, i + batch_size)) for i in range(0, x.shape[0], batch_size)]
        units = active_units_per_site(guide, x, y, max_elements=max_elements)
    finally:
        for m, mode in zip(modules, modes):
            m.train(mode)
    per = {key: torch.cat([p[key] for p in parts]) for key in ("log_px", "elbo", "recon", "kl")}
    elbo, elbo_se = mean_se(per["elbo"])
    log_px, log_px_se = mean_se(per["log_px"])
    kl_sites = {name: torch.cat([p["kl_sites"][name] for p in parts]).mean().item() for name in parts[0]["kl_sites"]}
    return {
        "elbo": elbo, "elbo_se": elbo_se,
        "recon": per["recon"].mean().item(), "kl": per["kl"].mean().item(), "kl_per_site": kl_sites,
        "nll": -log_px, "nll_se": log_px_se, "iw_samples": iw_samples,
        "active_units": sum(n for n, _ in units.values()),
        "active_units_per_site": {name: n for name, (n, _) in units.items()},
        "latent_dim": sum(v.numel() for _, v in units.values()),
        "latent_dims": {name: v.numel() for name, (_, v) in units.items()}, "n": int(x.shape[0]),
    }
