"""The training bounds of the suite's single-site pairs, computed without Pyro's traces.

A pair on the evaluation's fast path (``evaluate.fast_path``: a model with ``log_terms(x, z, y)``
and a guide with ``dist(x, y)`` for its one site) has the same bounds as its Pyro traces give, from
the same random stream: z drawn by the guide's distribution, then log p(z), log p(x|z) and log q(z|x)
read off the densities the traces would hold. The KL weight beta scales log p(z) and log q(z|x), as
``contract.ScaleLatents`` scales the latent sites. The tests check loss and gradients against
Pyro's estimators for every registered guide.

Why not the traces: on a 784-500-500-32 MLP the trace bookkeeping (messengers, plates, site
dictionaries) cost about 10% of a training step over a hand-written one, and its dictionaries break
``torch.compile``'s graph at every site; written directly, a step is one graph. Any other pair (a
user's model, several latent layers, the semi-supervised model's enumerated label) trains through
Pyro's ELBOs as before.
"""

from __future__ import annotations

import math

import torch
from pyro.distributions.kl import kl_divergence
from torch import nn

from .errors import PyroVAEError
from .evaluate import single_site_draw


def _shape(particles: int) -> tuple:
    # no sample dimension for one particle, as the traces draw it without a particle plate
    return (particles,) if particles > 1 else ()


def _check(q) -> None:
    if not q.has_rsample:
        raise PyroVAEError("the direct bounds need a reparameterized guide; train this pair through Pyro's ELBO "
                           "(objectives.loss_fn(..., direct=False))")


def _log_weight(log_lik, log_prior, log_q, beta) -> torch.Tensor:
    # log p(x|z) + beta (log p(z) - log q(z|x)): the Monte-Carlo term every bound here averages
    return log_lik + beta * (log_prior - log_q)


def _draw(model, guide, x, particles: int, y):
    """``evaluate.single_site_draw`` of ``particles`` samples per row, reparameterized."""
    terms = single_site_draw(model, guide, x, _shape(particles), y)
    _check(terms[3])
    return terms


def elbo(model, guide, x, beta, particles: int, y=None) -> torch.Tensor:
    """The negative Monte-Carlo ELBO, summed over rows, averaged over particles (``Trace_ELBO``)."""
    log_lik, log_prior, log_q, _, _ = _draw(model, guide, x, particles, y)
    return -_log_weight(log_lik, log_prior, log_q, beta).sum() / particles


def meanfield(model, guide, x, beta, particles: int, y=None) -> torch.Tensor:
    """The negative ELBO with KL(q || p) in closed form where the pair has one, else its Monte-Carlo
    term, as ``TraceMeanField_ELBO`` decides per site."""
    q = guide.dist(x, y)  # then the draw single_site_draw makes
    _check(q)
    z = q.rsample(_shape(particles))
    try:
        kl = kl_divergence(q, model.prior())
    except NotImplementedError:
        log_prior, log_lik = model.log_terms(x, z, y)
        return -_log_weight(log_lik, log_prior, q.log_prob(z), beta).sum() / particles
    # log p(x|z) alone: log p(z) and log q(z|x) would cost a tenth of the suite's margin over a
    # hand-written step, for nothing (a user's model on the fast path may have log_terms only)
    scorer = getattr(model, "log_likelihood", None)
    log_lik = scorer(x, z, y) if scorer is not None else model.log_terms(x, z, y)[1]
    return -(log_lik.sum() / particles - beta * kl.sum())


def iwae(model, guide, x, beta, particles: int, y=None) -> torch.Tensor:
    """The negative importance-weighted bound with ``particles`` samples, summed over rows."""
    log_lik, log_prior, log_q, _, _ = _draw(model, guide, x, particles, y)
    log_w = _log_weight(log_lik, log_prior, log_q, beta).reshape(particles, -1)
    return -(torch.logsumexp(log_w, dim=0) - math.log(particles)).sum()


class DirectLoss(nn.Module):
    """``loss(x, beta[, y])`` of ``bound`` for a single-site pair: a module holding model and guide,
    so an optimizer, ``DistributedDataParallel`` and ``torch.compile`` take it as they take Pyro's
    ELBO modules."""

    def __init__(self, bound, model, guide, particles: int):
        super().__init__()
        self.bound, self.model, self.guide, self.particles = bound, model, guide, particles

    def forward(self, x, beta, y=None):
        return self.bound(self.model, self.guide, x, beta, self.particles, y)
