"""Priors p(z) registry.

A prior is a module whose call returns the distribution of one latent site (batch shape (),
event shape (L,)). It is built with the modules it may need, ``guide`` among them (a VampPrior
mixes the guide's q(z|u) over learned pseudo-inputs), not from the config alone; nothing
outside a prior reads its internals: callers draw from it and score under it.
"""

from __future__ import annotations

import pyro.distributions as dist
import pyro.distributions.transforms as T
import torch
from torch import nn

from .errors import PyroVAEError
from .registry import Registry


class StandardNormal(nn.Module):
    """p(z) = N(0, I)."""

    def __init__(self, latent_dim: int):
        super().__init__()
        self.register_buffer("loc", torch.zeros(latent_dim))
        self.register_buffer("scale", torch.ones(latent_dim))

    def forward(self) -> dist.TorchDistribution:
        return dist.Normal(self.loc, self.scale).to_event(1)


class RealNVPPrior(StandardNormal):
    """A learned prior: N(0, I) pushed through K affine couplings, reversed between steps.

    The model scores guide samples under p(z), which needs log p at arbitrary z, so only flows
    with an analytic inverse qualify; affine couplings invert in one pass.

    References: Xu et al. 2019, "Learning Priors for Variational Autoencoders" / "On the
    necessity and effectiveness of learning the prior of variational auto-encoders",
    arXiv:1905.13452; Dinh et al. 2017, arXiv:1605.08803.
    """

    def __init__(self, latent_dim: int, flows: int = 4, hidden: tuple = (64, 64)):
        if latent_dim < 2:
            raise PyroVAEError("--prior realnvp needs --latent-dim of at least 2 (a coupling splits z in two)")
        super().__init__(latent_dim)
        self.couplings = nn.ModuleList(T.affine_coupling(latent_dim, hidden_dims=list(hidden)) for _ in range(flows))
        self.register_buffer("reverse", torch.arange(latent_dim - 1, -1, -1))

    def forward(self) -> dist.TorchDistribution:
        transforms = []
        for i, coupling in enumerate(self.couplings):
            if i > 0:
                transforms.append(T.Permute(self.reverse))
            transforms.append(coupling)
        return dist.TransformedDistribution(super().forward(), transforms)


def _standard(latent_dim: int, guide=None) -> StandardNormal:
    return StandardNormal(latent_dim)


def _realnvp(latent_dim: int, guide=None) -> RealNVPPrior:
    return RealNVPPrior(latent_dim)


PRIORS = Registry("prior")
PRIORS.add("standard", _standard, "N(0, I)")
PRIORS.add("realnvp", _realnvp, "N(0, I) through 4 learned affine couplings (a learned flow prior)",
           reference="Xu et al. 2019, arXiv:1905.13452")


def build(name: str, latent_dim: int, guide=None) -> nn.Module:
    """The prior ``name`` over R^latent_dim; ``guide`` is there for priors built on the encoder."""
    return PRIORS[name].build(latent_dim, guide=guide)
