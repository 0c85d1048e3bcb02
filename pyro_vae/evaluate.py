"""Bounds and likelihood estimates of a trained model, in nats per datapoint.

Everything is computed from one set of importance weights w_k = p(x, z_k) / q(z_k|x), z_k ~ q,
with the very distributions the model's and guide's sample sites use, so the estimate is that of
the model and guide actually trained:

- ELBO = mean_k log w_k (a lower bound on log p(x)); reconstruction E_q log p(x|z) and
  KL = E_q[log q(z|x) - log p(z)] are its two terms, estimated from the same samples;
- log p(x) ~ log (1/K) sum_k w_k (the IWAE bound with K samples, consistent as K grows), so the
  NLL reported is an upper bound in expectation, given with K and its standard error over data.

Samples are drawn in chunks and combined with a running log-sum-exp, so memory stays bounded
whatever K is.
"""

from __future__ import annotations

import ctypes
import functools
import math
from contextlib import nullcontext

import torch

# Active units (Burda et al. 2016): a latent dimension whose posterior mean varies with x.
ACTIVE_UNIT_THRESHOLD = 0.01


def log_weight_terms(model, guide, x: torch.Tensor, samples: int) -> dict[str, torch.Tensor]:
    """One vectorized draw of ``samples`` particles: each term has shape (samples, N).

    Returns log p(x|z) ("log_lik", observed sites), log p(z) ("log_prior", latent sites of the
    model) and log q(z|x) ("log_q"), unscaled: bounds are reported at beta = 1.
    """
    # Scored directly rather than read from Pyro traces (``objectives.trace_log_probs``, which gives
    # the same numbers; a test checks it for every model and guide): at thousands of particles the
    # trace bookkeeping per chunk, and terms such as log sigma that a plate-expanded distribution
    # recomputes for every particle, made the estimator ~8% slower than plain tensor code.
    q = guide.dist(x)
    z = q.rsample((samples,)) if q.has_rsample else q.sample((samples,))
    log_prior, log_lik = model.log_terms(x, z)
    return {"log_lik": log_lik, "log_prior": log_prior, "log_q": q.log_prob(z)}


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


def _chunk_size(samples: int, batch: int, elements_per_sample: int, max_elements: int) -> int:
    return max(1, min(samples, max_elements // max(1, batch * elements_per_sample)))


@torch.no_grad()
def per_datapoint(model, guide, x: torch.Tensor, samples: int, max_elements: int = 2**23) -> dict[str, torch.Tensor]:
    """Per-datapoint ELBO, its two terms and the K-sample log p(x) estimate, each of shape (N,)."""
    retain_freed_memory()
    chunk = _chunk_size(samples, x.shape[0], 4 * x.shape[-1], max_elements)
    lse = torch.full((x.shape[0],), -math.inf, dtype=x.dtype, device=x.device)
    sums = {"log_lik": 0.0, "log_prior": 0.0, "log_q": 0.0}
    done = 0
    reuse = guide.reuse_features(x) if hasattr(guide, "reuse_features") else nullcontext()
    with reuse:
        while done < samples:
            k = min(chunk, samples - done)
            terms = log_weight_terms(model, guide, x, k)
            log_w = terms["log_lik"] + terms["log_prior"] - terms["log_q"]
            lse = torch.logaddexp(lse, torch.logsumexp(log_w, dim=0))
            for key in sums:
                sums[key] = sums[key] + terms[key].sum(0)
            done += k
    recon = sums["log_lik"] / samples
    kl = (sums["log_q"] - sums["log_prior"]) / samples
    return {"log_px": lse - math.log(samples), "elbo": recon - kl, "recon": recon, "kl": kl}


def _mean_se(values: torch.Tensor) -> tuple[float, float]:
    n = values.numel()
    se = values.std(unbiased=True).item() / math.sqrt(n) if n > 1 else float("nan")
    return values.mean().item(), se


@torch.no_grad()
def active_units(guide, x: torch.Tensor, batch_size: int = 500) -> tuple[int, torch.Tensor]:
    """Number of latent dimensions with Cov_x(E_q[z_i|x]) > 0.01, and those variances."""
    means = torch.cat([guide.mean(x[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)])
    variances = means.var(0, unbiased=True) if means.shape[0] > 1 else torch.zeros_like(means[0])
    return int((variances > ACTIVE_UNIT_THRESHOLD).sum()), variances


@torch.no_grad()
def evaluate(model, guide, x: torch.Tensor, iw_samples: int = 5000, batch_size: int = 100,
             max_elements: int = 2**23) -> dict:
    """Test bounds of (model, guide) on ``x`` (N, D), nats per datapoint.

    Returns ``elbo`` (a lower bound: negative for discrete data) with ``elbo_se``, ``recon``,
    ``kl``, ``nll`` = -log p(x) estimated with ``iw_samples`` importance samples and its standard
    error ``nll_se`` over datapoints, ``active_units``, ``latent_dim`` and ``n``.
    """
    modes = model.training, guide.training
    model.eval()
    guide.eval()
    parts = [per_datapoint(model, guide, x[i:i + batch_size], iw_samples, max_elements)
             for i in range(0, x.shape[0], batch_size)]
    per = {key: torch.cat([p[key] for p in parts]) for key in parts[0]}
    elbo, elbo_se = _mean_se(per["elbo"])
    log_px, log_px_se = _mean_se(per["log_px"])
    au, _ = active_units(guide, x)
    model.train(modes[0])
    guide.train(modes[1])
    return {
        "elbo": elbo, "elbo_se": elbo_se,
        "recon": per["recon"].mean().item(), "kl": per["kl"].mean().item(),
        "nll": -log_px, "nll_se": log_px_se, "iw_samples": iw_samples,
        "active_units": au, "latent_dim": guide.latent_dim, "n": int(x.shape[0]),
    }
