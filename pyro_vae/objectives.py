"""Objectives registry: name -> a Pyro ELBO, used as a differentiable ``torch.nn.Module`` loss.

``loss_fn(name, model, guide)`` returns a callable ``loss(x, beta)`` (``loss(x, beta, y)`` with
side information) giving the negative bound summed over the batch, differentiable, so plain
torch optimizers train model and guide (Pyro's "ELBO as a module" interface). The KL weight beta
scales every latent site of model and guide (``contract.ScaleLatents``). Model and guide keep
their parameters as ordinary module state: nothing lives in Pyro's global parameter store,
except under ``elbo-jit`` (see there). For the suite's single-site pairs ``elbo``, ``meanfield``
and ``iwae`` are computed in their direct form (``pyro_vae.direct``: the same numbers from the same
draws, without traces); ``compiled`` is the ``--compile`` of a loss.
"""

from __future__ import annotations

import itertools
import math
import types
from typing import Callable

import pyro
import torch
from pyro import poutine
from pyro.distributions.kl import kl_divergence
from torch import nn
from pyro.infer import JitTrace_ELBO, RenyiELBO, Trace_ELBO, TraceMeanField_ELBO
from pyro.util import warn_if_nan

from . import contract
from . import direct as _direct  # loss_fn's flag is named direct
from .contract import ScaleLatents, call
from .errors import PyroVAEError
from .evaluate import fast_path
from .registry import Registry


def trace_log_probs(model, guide, *args, particles: int | None = None, scaled: bool = True, **kwargs) -> dict:
    """One joint draw: run the guide, replay the model on it, and return log p(x|z) ("log_lik",
    observed sites), log p(z) ("log_prior") and log q(z|x) ("log_q"), each summed over event
    dimensions, with the batch shape of the sites: (N,), or (particles, N) with a particle plate.

    ``scaled`` applies each site's ``poutine.scale`` (the KL weight beta). Also returns whether
    every guide site is reparameterized.
    """
    model, guide = contract.with_particles(model, particles), contract.with_particles(guide, particles)
    guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
    terms = {"log_lik": 0.0, "log_prior": 0.0, "log_q": 0.0, "reparameterized": True}
    for trace, is_guide in ((model_trace, False), (guide_trace, True)):
        for site in contract.sample_sites(trace):
            log_prob = site["fn"].log_prob(site["value"])
            if scaled:
                log_prob = log_prob * site["scale"]
            key = "log_q" if is_guide else ("log_lik" if site["is_observed"] else "log_prior")
            terms[key] = terms[key] + log_prob
            if is_guide and not site["fn"].has_rsample:
                terms["reparameterized"] = False
    return terms


class ReparameterizedELBO(Trace_ELBO):
    """``Trace_ELBO`` for reparameterized guides, computed from one guide trace and one replayed
    model trace. For such guides Pyro's surrogate objective equals the ELBO itself, so the
    bookkeeping ``Trace_ELBO`` does for score-function sites (and its per-step host syncs) can be
    skipped: in the throughput benchmark this is most of the suite's overhead over plain PyTorch.
    Guides with non-reparameterized sites fall back to ``Trace_ELBO``.
    """

    def differentiable_loss(self, model, guide, *args, **kwargs):
        k = self.num_particles
        if not self.vectorize_particles and k > 1:
            return super().differentiable_loss(model, guide, *args, **kwargs)
        terms = trace_log_probs(model, guide, *args, particles=k if k > 1 else None, **kwargs)
        if not terms["reparameterized"]:
            return super().differentiable_loss(model, guide, *args, **kwargs)
        return -(terms["log_lik"] + terms["log_prior"] - terms["log_q"]).sum() / k


class IWAE(RenyiELBO):
    """The importance-weighted bound log (1/K) sum_k p(x, z_k) / q(z_k|x), per datapoint.

    This is ``RenyiELBO(alpha=0)`` with vectorized particles. Pyro's RenyiELBO only implements
    ``loss_and_grads``; the module interface needs ``differentiable_loss``, added here for
    reparameterized guides (all of the suite's), whose gradient is that of the bound itself.

    References: Burda, Grosse & Salakhutdinov 2016, "Importance Weighted Autoencoders",
    arXiv:1509.00519; Li & Turner 2016, "Renyi Divergence Variational Inference", arXiv:1602.02311.
    """

    def __init__(self, num_particles: int = 1):
        super().__init__(alpha=0, num_particles=num_particles, vectorize_particles=True, max_plate_nesting=1)

    def differentiable_loss(self, model, guide, *args, **kwargs):
        terms = trace_log_probs(model, guide, *args, particles=self.num_particles, **kwargs)
        if not terms["reparameterized"]:
            raise PyroVAEError("iwae needs a reparameterized guide")
        log_w = terms["log_lik"] + terms["log_prior"] - terms["log_q"]
        return -(torch.logsumexp(log_w, dim=0) - math.log(self.num_particles)).sum()


class _ParamStoreJit(JitTrace_ELBO):
    """``JitTrace_ELBO`` compiles a trace whose inputs are the parameters it finds in Pyro's
    parameter store, so here model and guide register their modules there first, under a name
    unique to this objective so that two runs in one process never share parameters."""

    _ids = itertools.count()

    def __call__(self, model, guide):
        prefix = f"pyro_vae_jit{next(self._ids)}"

        def registered(name, module):
            def fn(*args, **kwargs):
                pyro.module(f"{prefix}.{name}", module)
                return module(*args, **kwargs)
            return fn

        return _Loss(self, registered("model", model), registered("guide", guide))

    def differentiable_loss(self, model, guide, *args, **kwargs):
        # Pyro's version returns loss + (surrogate - surrogate.detach()), but under the JIT the
        # loss itself keeps its graph, so every gradient came out twice that of Trace_ELBO.
        loss, surrogate_loss = self.loss_and_surrogate_loss(model, guide, *args, **kwargs)
        loss = warn_if_nan(loss.detach(), "loss")
        return loss + (surrogate_loss - surrogate_loss.detach())


class _Loss:
    """Pyro's ``ELBOModule`` for callables that are not modules."""

    def __init__(self, elbo, model, guide):
        self.elbo, self.model, self.guide = elbo, model, guide

    def __call__(self, *args, **kwargs):
        return self.elbo.differentiable_loss(self.model, self.guide, *args, **kwargs)


def _vectorized(cls):
    return lambda k: cls(num_particles=k, vectorize_particles=True, max_plate_nesting=1)


OBJECTIVES = Registry("objective")
# ``direct``: the same bound for the suite's single-site pairs, without traces (pyro_vae.direct)
OBJECTIVES.add("elbo", _vectorized(ReparameterizedELBO), "Monte-Carlo ELBO (Trace_ELBO), K particles averaged",
               direct=_direct.elbo)
OBJECTIVES.add("elbo-jit", lambda k: _ParamStoreJit(num_particles=k, vectorize_particles=True, max_plate_nesting=1,
                                                    ignore_jit_warnings=True),
               "the same ELBO compiled with the PyTorch JIT (JitTrace_ELBO)")
OBJECTIVES.add("meanfield", _vectorized(TraceMeanField_ELBO),
               "ELBO with the KL term in closed form where q and p have one (TraceMeanField_ELBO); the default "
               "when every latent site has it", direct=_direct.meanfield)
OBJECTIVES.add("iwae", IWAE, "importance-weighted bound with K samples (RenyiELBO alpha=0)",
               reference="Burda et al. 2016, arXiv:1509.00519", direct=_direct.iwae)


def check_name(name: str):
    return OBJECTIVES[name]


def build(name: str, particles: int = 1) -> pyro.infer.ELBO:
    """The Pyro ELBO registered as ``name`` with ``particles`` vectorized samples."""
    return OBJECTIVES[name].build(particles)


class Scaled(nn.Module):
    """``fn(x, y)`` with every latent site scaled by the KL weight ``beta``, called as
    ``(x, beta)`` or ``(x, beta, y)``: positional tensors, as the JIT objective needs."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x, beta, y=None):
        with ScaleLatents(beta):
            return call(self.fn, x, y)


def loss_fn(name: str, model, guide, particles: int = 1, direct: bool = True) -> Callable:
    """``loss(x, beta[, y])``: the negative bound summed over the batch, differentiable. A pair of
    the suite's single-site kind gets the objective's direct form (``pyro_vae.direct``, the same
    numbers without traces) unless ``direct`` is False; any other pair, Pyro's ELBO."""
    bound = getattr(OBJECTIVES[name], "direct", None)
    if direct and bound is not None and fast_path(model, guide):
        return _direct.DirectLoss(bound, model, guide, particles)
    return build(name, particles)(Scaled(model), Scaled(guide))


# entries per function in dynamo's graph cache: the functions a graph break leaves (the spline's,
# the hamiltonian dynamics') are shared by every pair of their guide compiled in one process
RECOMPILE_LIMIT = 64


def _own_frame(loss):
    """A function calling ``loss``, with a code object of its own.

    Dynamo keeps compiled graphs per code object, and every pair's loss runs the same one
    (``DirectLoss.forward``, or Pyro's ELBO module's): with several pairs compiled in one process
    each call searched the others' entries first (guards on every parameter), which made the
    compiled flow guides of ``benchmarks/guides.py`` 1.14 times their eager hand-written steps
    instead of 0.88, and the ninth pair ran eagerly, silently (dynamo's limit of 8 entries).
    A fresh copy of the code gives each loss a cache of its own."""

    def call(*args):
        return loss(*args)

    return types.FunctionType(call.__code__.replace(), call.__globals__, call.__name__, call.__defaults__,
                              call.__closure__)


def compiled(loss):
    """``loss`` compiled with ``torch.compile``. Its random numbers are drawn by torch's own kernels
    (inductor's ``fallback_random``), in eager order from the same generator: a compiled run makes
    the draws of an eager one, so seeds, resumes and tests mean the same with and without it.

    It always runs unvalidated, whatever the caller's ``pyro.validation_enabled``: validation's
    checks (``if not valid.all(): raise``) branch on data and break the graph at every
    distribution, and graphs broken by one validated call were reused by unvalidated calls after
    it (a compiled step then ran 1.2 times slower than eager). Training validates the eager step
    once before compiling it (``train._prime``). Each compiled loss keeps its own graphs
    (``_own_frame``)."""
    import torch._dynamo  # loaded by torch.compile anyway; its config is set first here

    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    graphs = torch.compile(_own_frame(loss), options={"fallback_random": True})

    def step(*args):
        with pyro.validation_enabled(False):
            return graphs(*args)

    step.graphs = graphs
    return step


def analytic_kl_order(guide_trace, model_trace) -> bool:
    """Whether the guide samples its latent sites in the model's order. The closed-form KL of
    ``TraceMeanField_ELBO`` holds each site's parents at their sampled values: exact when the guide
    draws in the model's order (a ladder guide, one site), biased when a guide site depends on
    one the model draws later (bottom-up inference, q(z_2|z_1) under p(z_1|z_2))."""
    latent = lambda trace: [s["name"] for s in contract.sample_sites(trace) if not s["is_observed"]]  # noqa: E731
    return latent(guide_trace) == latent(model_trace)


@torch.no_grad()
def default_objective(model, guide, x: torch.Tensor, y=None) -> str:
    """``meanfield`` when every latent site of the guide has a closed-form KL to its site in the
    model and the guide draws them in the model's order (one draw on ``x`` tells), ``elbo``
    (Monte-Carlo KL) otherwise.

    On static binarized MNIST (784-400-400-40, batch 100, 10 epochs) the analytic KL gave NLL 97.3
    with 26 active units against 99.8 with 10 for the Monte-Carlo one (benchmarks/objectives.py):
    users get the better estimator without asking.
    """
    guide_trace, model_trace = contract.traces(model, guide, x, y)
    if not analytic_kl_order(guide_trace, model_trace):
        return "elbo"
    for site in contract.sample_sites(guide_trace):
        if site["is_observed"] or site["name"] not in model_trace.nodes:
            continue
        if isinstance(site["fn"], pyro.distributions.Delta):  # its "KL" is the Monte-Carlo term itself
            return "elbo"
        try:
            kl_divergence(site["fn"], model_trace.nodes[site["name"]]["fn"])
        except NotImplementedError:
            return "elbo"
    return "meanfield"


@torch.no_grad()
def check_objective(name: str, model, guide, x: torch.Tensor, y=None) -> None:
    """Refuse ``meanfield`` for a guide whose closed-form KL would be biased (see ``analytic_kl_order``)."""
    if name == "elbo-jit" and not getattr(guide, "jit_compatible", True):
        raise PyroVAEError("--objective elbo-jit traces the guide once with torch.jit, and this guide differentiates "
                           "the model inside itself (the hamiltonian guide's leapfrog steps); use --objective elbo "
                           "or iwae")
    if name != "meanfield":
        return
    guide_trace, model_trace = contract.traces(model, guide, x, y)
    if any(isinstance(site["fn"], pyro.distributions.Delta) for site in contract.sample_sites(guide_trace)):
        # Pyro's closed form KL(Delta || p) = -log p(v) drops the Delta's log_density, the extended
        # bound's log q of the hamiltonian guide: the bound would lose its entropy term
        raise PyroVAEError("--objective meanfield has no closed-form KL for a guide that places its draw as a point "
                           "with a log-density (the hamiltonian guide); use --objective elbo (the same bound here) "
                           "or iwae")
    if not analytic_kl_order(guide_trace, model_trace):
        raise PyroVAEError("--objective meanfield needs a guide that draws its latent sites in the model's order "
                           "(its closed-form KL holds each site's parents fixed); this guide does not (bottom-up "
                           "inference): use --objective elbo or iwae, or --inference ladder")
