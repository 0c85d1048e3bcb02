"""Objectives registry: name -> a Pyro ELBO, used as a differentiable ``torch.nn.Module`` loss.

``Objective.loss_module(model, guide)`` returns a callable ``loss(x, beta)`` giving the negative
bound summed over the batch, differentiable, so plain torch optimizers train model and guide
(Pyro's "ELBO as a module" interface). Model and guide keep their parameters as ordinary module
state: nothing lives in Pyro's global parameter store, except under ``elbo-jit`` (see there).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Callable

import pyro
import torch
from pyro.infer import JitTrace_ELBO, RenyiELBO, Trace_ELBO, TraceMeanField_ELBO
from pyro.infer.util import get_dependent_plate_dims, torch_sum
from pyro.util import warn_if_nan

from .errors import PyroVAEError


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
        (model_trace, guide_trace), = self._get_traces(model, guide, args, kwargs)
        sum_dims = get_dependent_plate_dims(model_trace.nodes.values())
        log_w = 0.0
        for trace, sign in ((model_trace, 1.0), (guide_trace, -1.0)):
            for site in trace.nodes.values():
                if site["type"] != "sample":
                    continue
                if sign < 0 and not site["fn"].has_rsample:
                    raise PyroVAEError(f"iwae needs a reparameterized guide; site {site['name']!r} is not")
                log_w = log_w + sign * torch_sum(site["log_prob"], sum_dims)
        if self.num_particles == 1:
            log_w = log_w.unsqueeze(0)
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


@dataclass
class ObjectiveSpec:
    build: Callable[[int], pyro.infer.ELBO]
    about: str


def _vectorized(cls):
    return lambda k: cls(num_particles=k, vectorize_particles=True, max_plate_nesting=1)


OBJECTIVES: dict[str, ObjectiveSpec] = {
    "elbo": ObjectiveSpec(_vectorized(Trace_ELBO), "Monte-Carlo ELBO (Trace_ELBO), K particles averaged"),
    "elbo-jit": ObjectiveSpec(lambda k: _ParamStoreJit(num_particles=k, vectorize_particles=True, max_plate_nesting=1,
                                                       ignore_jit_warnings=True),
                              "the same ELBO compiled with the PyTorch JIT (JitTrace_ELBO)"),
    "meanfield": ObjectiveSpec(_vectorized(TraceMeanField_ELBO), "ELBO with the KL term in closed form (TraceMeanField_ELBO)"),
    "iwae": ObjectiveSpec(IWAE, "importance-weighted bound with K samples (RenyiELBO alpha=0)"),
}


def check_name(name: str) -> ObjectiveSpec:
    if name not in OBJECTIVES:
        raise PyroVAEError(f"unknown objective {name!r}; choose from {', '.join(OBJECTIVES)}")
    return OBJECTIVES[name]


def build(name: str, particles: int = 1) -> pyro.infer.ELBO:
    """The Pyro ELBO registered as ``name`` with ``particles`` vectorized samples."""
    return check_name(name).build(particles)


def loss_fn(name: str, model, guide, particles: int = 1) -> Callable:
    """``loss(x, beta)``: the negative bound summed over the batch, differentiable."""
    return build(name, particles)(model, guide)
