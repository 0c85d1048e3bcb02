"""The Pyro model p(z) p(x|z): priors and likelihoods registries, and the VAE model module.

Every sample site sits inside one ``pyro.plate("data", N)`` so bounds are per datapoint, and the
KL weight beta scales the latent site in model and guide alike (``poutine.scale``), which gives
the beta-VAE objective E_q[log p(x|z)] - beta KL(q||p).
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pyro.distributions.transforms as T
import torch
import torch.nn.functional as F
from pyro import poutine
from torch import nn

from .errors import PyroVAEError


class Bernoulli(nn.Module):
    """Independent Bernoulli pixels; the decoder gives logits."""

    outputs_per_pixel = 1

    def forward(self, out: torch.Tensor) -> dist.TorchDistribution:
        return dist.Bernoulli(logits=out).to_event(1)

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(out)


class Gaussian(nn.Module):
    """Independent Gaussian pixels with a decoded, learned scale kept above ``min_scale``:
    a continuous density is unbounded as its scale shrinks, so the floor keeps the bound finite."""

    outputs_per_pixel = 2

    def __init__(self, min_scale: float = 0.01):
        super().__init__()
        self.min_scale = float(min_scale)

    def forward(self, out: torch.Tensor) -> dist.TorchDistribution:
        loc, raw_scale = out.chunk(2, dim=-1)
        return dist.Normal(loc, self.min_scale + F.softplus(raw_scale)).to_event(1)

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        return out.chunk(2, dim=-1)[0]


LIKELIHOODS = {
    "bernoulli": lambda config: Bernoulli(),
    "gaussian": lambda config: Gaussian(config.min_scale),
}


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


PRIORS = {
    "standard": lambda config: StandardNormal(config.latent_dim),
    "realnvp": lambda config: RealNVPPrior(config.latent_dim),
}


def _lookup(table: dict, kind: str, name: str):
    if name not in table:
        raise PyroVAEError(f"unknown {kind} {name!r}; choose from {', '.join(table)}")
    return table[name]


def likelihood(name: str, config) -> nn.Module:
    return _lookup(LIKELIHOODS, "likelihood", name)(config)


def prior(name: str, config) -> nn.Module:
    return _lookup(PRIORS, "prior", name)(config)


class VAE(nn.Module):
    """The generative model: z ~ prior, x | z ~ likelihood(decoder(z))."""

    def __init__(self, decoder: nn.Module, likelihood: nn.Module, prior: nn.Module, latent_dim: int):
        super().__init__()
        self.decoder, self.likelihood, self.prior = decoder, likelihood, prior
        self.latent_dim = latent_dim

    def forward(self, x: torch.Tensor, beta=1.0):
        with pyro.plate("data", x.shape[0]):
            with poutine.scale(scale=beta):
                z = pyro.sample("z", self.prior())
            pyro.sample("x", self.likelihood(self.decoder(z)), obs=x)
        return z

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        """Mean images E[x|z] for z drawn from the prior, shape (n, D)."""
        z = self.prior().sample((n,))
        return self.likelihood.mean(self.decoder(z))

    @torch.no_grad()
    def decode_mean(self, z: torch.Tensor) -> torch.Tensor:
        return self.likelihood.mean(self.decoder(z))
